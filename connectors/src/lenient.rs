//! Lenient readers for CRM JSON: CRMs send numbers as strings, nulls where their specs say
//! non-null, and timestamps in several formats. Every reader returns `None` rather than failing
//! on a shape it does not know, and never panics.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

/// A string, or the text of a number or boolean; `None` for null, empty or structured values.
pub fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A decimal from a JSON number or a numeric string (`"1234.50"`, `1e3`).
pub fn decimal(value: Option<&Value>) -> Option<Decimal> {
    let raw = text(value)?;
    Decimal::from_str(&raw)
        .or_else(|_| Decimal::from_scientific(&raw))
        .ok()
}

/// A boolean from `true`/`false`, `"true"`/`"false"` or 0/1.
pub fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    }
}

/// A point in time from RFC 3339 (`Z`, `+00:00` or Salesforce's `+0000`), `YYYY-MM-DD HH:MM:SS`
/// (UTC), a bare date (midnight UTC), or epoch milliseconds (number or digit string).
pub fn time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    match value? {
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        Value::String(s) => parse_time(s),
        _ => None,
    }
}

/// Parses the textual forms accepted by [`time`].
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// The host of a website or URL as a bare lower-case domain (`https://www.Acme.example/x` →
/// `acme.example`); `None` when nothing is left.
pub fn domain_of(website: &str) -> Option<String> {
    let host = website
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_start_matches("www.")
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_forms_crms_send() {
        let t = |v: Value| time(Some(&v)).map(|t| t.to_rfc3339());
        assert_eq!(
            t(json!("2026-05-01T07:25:37.000+0000")).as_deref(),
            Some("2026-05-01T07:25:37+00:00")
        );
        assert_eq!(
            t(json!("2026-05-15 10:16:44")).as_deref(),
            Some("2026-05-15T10:16:44+00:00")
        );
        assert_eq!(
            t(json!("2026-06-30")).as_deref(),
            Some("2026-06-30T00:00:00+00:00")
        );
        assert_eq!(
            t(json!(1564113600000_i64)).as_deref(),
            Some("2019-07-26T04:00:00+00:00")
        );
        assert_eq!(t(json!("soon")), None);
        assert_eq!(
            decimal(Some(&json!("12500.50"))),
            Decimal::from_str("12500.50").ok()
        );
        assert_eq!(
            decimal(Some(&json!(12500.5))),
            Decimal::from_str("12500.5").ok()
        );
        assert_eq!(decimal(Some(&json!(null))), None);
        assert_eq!(boolean(Some(&json!("true"))), Some(true));
    }
}
