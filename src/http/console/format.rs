//! Numbers and times as the console shows them.

use chrono::{DateTime, Utc};

/// `n` and the noun: "1 payout", "3 payouts" (`n` as the API gave it).
pub fn counted(n: &str, one: &str, many: &str) -> String {
    format!("{n} {}", if n == "1" { one } else { many })
}

/// A decimal string in a currency: `$12,000.00`, `€1,234.50`, `CHF 99.00`. The digits are the
/// API's (the currency's own minor units); only grouping and the symbol are added.
pub fn money(amount: &str, currency: &str) -> String {
    let (sign, digits) = match amount.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", amount),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if let Some(fraction) = fraction {
        grouped.push('.');
        grouped.push_str(fraction);
    }
    match currency {
        "USD" => format!("{sign}${grouped}"),
        "EUR" => format!("{sign}€{grouped}"),
        "GBP" => format!("{sign}£{grouped}"),
        "JPY" => format!("{sign}¥{grouped}"),
        other => format!("{sign}{other} {grouped}"),
    }
}

/// A share (0..1) as a percentage with one decimal.
pub fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// A time from the API (RFC 3339) as `2026-12-07 10:30 UTC`; other text as it is.
pub fn time(text: &str) -> String {
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => t
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string(),
        Err(_) => text.to_string(),
    }
}

/// An enum value from the API as words: `CONVERTED` → `Converted`, `IN_PAYOUT` → `In payout`.
pub fn words(value: &str) -> String {
    let lower = value.replace('_', " ").to_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_groups_thousands_and_keeps_the_digits() {
        assert_eq!(money("12000.00", "USD"), "$12,000.00");
        assert_eq!(money("-1234567.5", "EUR"), "-€1,234,567.5");
        assert_eq!(money("999", "CHF"), "CHF 999");
        assert_eq!(money("0.00", "GBP"), "£0.00");
        assert_eq!(money("100000", "JPY"), "¥100,000");
    }

    #[test]
    fn times_and_words() {
        assert_eq!(time("2026-12-07T10:30:00+00:00"), "2026-12-07 10:30 UTC");
        assert_eq!(time("not a time"), "not a time");
        assert_eq!(words("IN_PAYOUT"), "In payout");
        assert_eq!(percent(0.5), "50.0 %");
    }
}
