//! Stripe billing events (DESIGN §11) mapped onto neutral billing facts. Pure functions: the
//! event envelope (`{"id": "evt_…", "type", "created", "data": {"object": {…}}}`) and the
//! objects Tandem acts on — `invoice.paid` (an Invoice), `charge.refunded` (a Charge),
//! `credit_note.created` (a CreditNote), `customer.created|updated` (a Customer). Amounts are
//! integers in the currency's minor unit (ISO 4217 exponent), currencies lower-case, times
//! unix seconds, as Stripe sends them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::{inbound::PayloadError, money};

/// A paid invoice.
#[derive(Debug, Clone, PartialEq)]
pub struct PaidInvoice {
    /// `in_…`.
    pub external_id: String,
    /// The Stripe customer (`cus_…`).
    pub customer: Option<String>,
    /// `customer_email`.
    pub customer_email: Option<String>,
    /// Upper-case ISO 4217.
    pub currency: String,
    /// `amount_paid`, in major units.
    pub amount_paid: Decimal,
    /// `total_excluding_tax`, in major units.
    pub amount_excluding_tax: Decimal,
    /// `status_transitions.paid_at` (the event's creation when absent).
    pub paid_at: DateTime<Utc>,
}

/// What no longer counts as paid on an invoice: a charge's refunds or a credit note.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceReduction {
    /// The invoice (`in_…`).
    pub invoice: String,
    /// The charge (`ch_…`) or credit note (`cn_…`).
    pub external_id: String,
    /// Upper-case ISO 4217.
    pub currency: String,
    /// In major units, tax included: a charge's `amount_refunded` (cumulative), a credit note's
    /// post-payment amount less the refunds it links (those arrive as `charge.refunded`).
    pub amount: Decimal,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// A Stripe customer.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingCustomer {
    /// `cus_…`.
    pub external_id: String,
    /// Lower-cased email.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// `metadata.tandem_referral_code`.
    pub referral_code: Option<String>,
    /// `metadata.company_domain`.
    pub company_domain: Option<String>,
}

/// What a Stripe event asks Tandem to do.
#[derive(Debug, Clone, PartialEq)]
pub enum BillingFact {
    /// `invoice.paid`.
    InvoicePaid(PaidInvoice),
    /// `charge.refunded`.
    Refund(InvoiceReduction),
    /// `credit_note.created`.
    CreditNote(InvoiceReduction),
    /// `customer.created` / `customer.updated`.
    Customer(BillingCustomer),
    /// `transfer.reversed`: a Stripe Connect transfer (`tr_…`) was reversed.
    TransferReversed(String),
    /// A verified event Tandem does not act on (the reason).
    Ignored(String),
}

/// One Stripe event.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingEvent {
    /// `evt_…`.
    pub id: String,
    /// `type`.
    pub event_type: String,
    /// `created`.
    pub created: DateTime<Utc>,
    /// What it means.
    pub fact: BillingFact,
}

fn malformed(reason: impl Into<String>) -> PayloadError {
    PayloadError(reason.into())
}

/// The event id of a Stripe payload (for the inbox's de-duplication), if it carries one.
pub fn event_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_string)
}

fn text(object: &Value, field: &str) -> Option<String> {
    object
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn required_text(object: &Value, what: &str, field: &str) -> Result<String, PayloadError> {
    text(object, field).ok_or_else(|| malformed(format!("{what}.{field} is missing")))
}

/// An expandable reference: the id string, or the expanded object's `id`.
fn reference(object: &Value, field: &str) -> Option<String> {
    match object.get(field)? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Object(expanded) => expanded
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(value?.as_i64()?, 0)
}

fn currency(object: &Value, what: &str) -> Result<String, PayloadError> {
    let raw = required_text(object, what, "currency")?;
    money::currency(&raw).ok_or_else(|| {
        malformed(format!(
            "{what}.currency {raw:?} is not an active ISO 4217 code"
        ))
    })
}

/// A non-negative minor-unit integer field in major units, within Tandem's money bounds.
fn amount(object: &Value, what: &str, field: &str, code: &str) -> Result<Decimal, PayloadError> {
    let minor = object
        .get(field)
        .ok_or_else(|| malformed(format!("{what}.{field} is missing")))?
        .as_i64()
        .ok_or_else(|| {
            malformed(format!(
                "{what}.{field} must be an integer amount in minor units"
            ))
        })?;
    optional_amount(minor, what, field, code)
}

fn optional_amount(
    minor: i64,
    what: &str,
    field: &str,
    code: &str,
) -> Result<Decimal, PayloadError> {
    let value = money::from_minor_units(minor, code);
    money::check_amount(value).map_err(|rule| malformed(format!("{what}.{field} {rule}")))
}

/// Parses a verified Stripe event body.
pub fn parse_event(body: &[u8]) -> Result<BillingEvent, PayloadError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("body is not valid JSON: {e}")))?;
    let id = required_text(&value, "event", "id")?;
    let event_type = required_text(&value, "event", "type")?;
    let created = time(value.get("created"))
        .ok_or_else(|| malformed("event.created must be a unix timestamp"))?;
    let object = value
        .get("data")
        .and_then(|d| d.get("object"))
        .filter(|o| o.is_object());
    let fact = match event_type.as_str() {
        "invoice.paid"
        | "charge.refunded"
        | "credit_note.created"
        | "customer.created"
        | "customer.updated" => {
            let object =
                object.ok_or_else(|| malformed("event.data.object is missing or not an object"))?;
            match event_type.as_str() {
                "invoice.paid" => invoice(object, created)?,
                "charge.refunded" => refund(object, created)?,
                "credit_note.created" => credit_note(object, created)?,
                _ => BillingFact::Customer(customer(object)?),
            }
        }
        "transfer.reversed" => {
            let object =
                object.ok_or_else(|| malformed("event.data.object is missing or not an object"))?;
            BillingFact::TransferReversed(required_text(object, "transfer", "id")?)
        }
        other => BillingFact::Ignored(format!("event type {other} is not one Tandem acts on")),
    };
    Ok(BillingEvent {
        id,
        event_type,
        created,
        fact,
    })
}

fn invoice(object: &Value, created: DateTime<Utc>) -> Result<BillingFact, PayloadError> {
    const WHAT: &str = "invoice";
    let code = currency(object, WHAT)?;
    let amount_paid = amount(object, WHAT, "amount_paid", &code)?;
    let amount_excluding_tax = match object.get("total_excluding_tax") {
        Some(Value::Null) | None => {
            // Older API versions: total less the tax.
            let total = object.get("total").and_then(Value::as_i64).ok_or_else(|| {
                malformed("invoice.total_excluding_tax is missing (and no total to derive it)")
            })?;
            let tax = object.get("tax").and_then(Value::as_i64).unwrap_or(0);
            optional_amount(total - tax, WHAT, "total_excluding_tax", &code)?
        }
        Some(_) => amount(object, WHAT, "total_excluding_tax", &code)?,
    };
    let paid_at = time(
        object
            .get("status_transitions")
            .and_then(|s| s.get("paid_at")),
    )
    .unwrap_or(created);
    Ok(BillingFact::InvoicePaid(PaidInvoice {
        external_id: required_text(object, WHAT, "id")?,
        customer: reference(object, "customer"),
        customer_email: text(object, "customer_email").map(|e| e.to_ascii_lowercase()),
        currency: code,
        amount_paid,
        amount_excluding_tax,
        paid_at,
    }))
}

fn refund(object: &Value, created: DateTime<Utc>) -> Result<BillingFact, PayloadError> {
    const WHAT: &str = "charge";
    let Some(invoice) = reference(object, "invoice") else {
        return Ok(BillingFact::Ignored(
            "the refunded charge is not linked to an invoice".into(),
        ));
    };
    let code = currency(object, WHAT)?;
    Ok(BillingFact::Refund(InvoiceReduction {
        invoice,
        external_id: required_text(object, WHAT, "id")?,
        amount: amount(object, WHAT, "amount_refunded", &code)?,
        currency: code,
        occurred_at: created,
    }))
}

fn credit_note(object: &Value, created: DateTime<Utc>) -> Result<BillingFact, PayloadError> {
    const WHAT: &str = "credit_note";
    let Some(invoice) = reference(object, "invoice") else {
        return Err(malformed("credit_note.invoice is missing"));
    };
    let code = currency(object, WHAT)?;
    // Only what is credited after payment reduces what was paid; the part refunded through
    // the charge arrives as `charge.refunded` and is not counted twice.
    let field = if object.get("post_payment_amount").is_some_and(Value::is_i64) {
        "post_payment_amount"
    } else {
        "amount"
    };
    let credited = object
        .get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("credit_note.amount is missing"))?;
    let refunded: i64 = object
        .get("refunds")
        .and_then(Value::as_array)
        .map(|refunds| {
            refunds
                .iter()
                .filter_map(|r| r.get("amount_refunded").and_then(Value::as_i64))
                .sum()
        })
        .unwrap_or(0);
    Ok(BillingFact::CreditNote(InvoiceReduction {
        invoice,
        external_id: required_text(object, WHAT, "id")?,
        amount: optional_amount((credited - refunded).max(0), WHAT, field, &code)?,
        currency: code,
        occurred_at: time(object.get("created")).unwrap_or(created),
    }))
}

fn customer(object: &Value) -> Result<BillingCustomer, PayloadError> {
    let metadata = object.get("metadata").cloned().unwrap_or(Value::Null);
    Ok(BillingCustomer {
        external_id: required_text(object, "customer", "id")?,
        email: text(object, "email").map(|e| e.to_ascii_lowercase()),
        name: text(object, "name"),
        referral_code: text(&metadata, "tandem_referral_code").map(|c| c.to_ascii_uppercase()),
        company_domain: text(&metadata, "company_domain"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_invoice_in_minor_units_becomes_major_units() {
        let body = json!({
            "id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1_767_225_600,
            "data": {"object": {
                "id": "in_1", "object": "invoice", "customer": "cus_1",
                "customer_email": "Ops@Acme.example", "currency": "eur",
                "amount_paid": 119_000, "total": 119_000, "total_excluding_tax": 100_000,
                "status_transitions": {"paid_at": 1_767_225_000}
            }}
        });
        let event = parse_event(body.to_string().as_bytes()).unwrap();
        let BillingFact::InvoicePaid(invoice) = event.fact else {
            panic!("not an invoice")
        };
        assert_eq!(invoice.currency, "EUR");
        assert_eq!(invoice.amount_paid.to_string(), "1190.00");
        assert_eq!(invoice.amount_excluding_tax.to_string(), "1000.00");
        assert_eq!(invoice.paid_at.timestamp(), 1_767_225_000);
        assert_eq!(invoice.customer_email.as_deref(), Some("ops@acme.example"));
    }

    #[test]
    fn malformed_objects_say_what_is_wrong() {
        let body = |object: Value| {
            json!({"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {"object": object}})
                .to_string()
        };
        let err = |object: Value| parse_event(body(object).as_bytes()).unwrap_err().0;
        assert!(err(json!({"id": "in_1", "currency": "eur"})).contains("amount_paid"));
        assert!(
            err(json!({"id": "in_1", "currency": "zzz", "amount_paid": 1})).contains("currency")
        );
        assert!(
            err(json!({"id": "in_1", "currency": "eur", "amount_paid": "12"}))
                .contains("integer amount")
        );
        assert!(parse_event(b"{}").unwrap_err().0.contains("event.id"));
    }

    #[test]
    fn other_event_types_are_ignored_not_failed() {
        let body =
            json!({"id": "evt_2", "type": "invoice.created", "created": 1, "data": {"object": {}}});
        let event = parse_event(body.to_string().as_bytes()).unwrap();
        assert!(matches!(event.fact, BillingFact::Ignored(_)));
    }

    #[test]
    fn a_credit_note_does_not_count_what_its_refunds_return() {
        let body = json!({"id": "evt_3", "type": "credit_note.created", "created": 5, "data": {"object": {
            "id": "cn_1", "invoice": "in_1", "currency": "usd", "amount": 5_000,
            "post_payment_amount": 5_000, "pre_payment_amount": 0,
            "refunds": [{"refund": "re_1", "amount_refunded": 2_000}]
        }}});
        let BillingFact::CreditNote(note) = parse_event(body.to_string().as_bytes()).unwrap().fact
        else {
            panic!("not a credit note")
        };
        assert_eq!(note.amount.to_string(), "30.00");
    }
}
