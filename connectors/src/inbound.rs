//! Inbound webhook payloads: splitting a verified request into provider events (each with the
//! provider's event id) and mapping each event onto a neutral deal change. Pure functions, no
//! I/O; every failure is a [`PayloadError`] whose message is safe to store and show.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use crate::{
    deal::{DealStatus, NeutralDeal},
    lenient,
};

/// Why a verified payload cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

fn malformed(reason: impl Into<String>) -> PayloadError {
    PayloadError(reason.into())
}

/// What an inbound event asks Tandem to do to its deal mirror.
// Nearly every change is an upsert: boxing the deal would allocate once per change for the
// sake of the rare deletion.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DealChange {
    /// Create or update the deal with this state.
    Upsert(NeutralDeal),
    /// The CRM deleted the deal (it then counts as lost).
    Delete {
        /// The CRM's id for the deal.
        external_id: String,
        /// When the deletion happened (orders it against other updates).
        updated_at: DateTime<Utc>,
    },
}

impl DealChange {
    /// The CRM id of the deal concerned.
    pub fn external_id(&self) -> &str {
        match self {
            DealChange::Upsert(deal) => &deal.external_id,
            DealChange::Delete { external_id, .. } => external_id,
        }
    }
}

/// One provider event split out of a request: its id and the payload to store for it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// The provider's event id; `None` when the payload is too broken to carry one.
    pub event_id: Option<String>,
    /// The payload to store (the whole body, or this event's part of a batch).
    pub payload: String,
    /// Set when the request could not be split: the receipt is stored as failed.
    pub error: Option<PayloadError>,
}

fn parse_json(body: &[u8]) -> Result<Value, PayloadError> {
    serde_json::from_slice(body).map_err(|e| malformed(format!("body is not valid JSON: {e}")))
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

// ---------------------------------------------------------------------------------------------
// STANDARD: Tandem's own events
// ---------------------------------------------------------------------------------------------

/// What a STANDARD source's event asks for: a deal change (`deal.updated`, `deal.deleted`),
/// or sales engaging a referred lead (`lead.engaged`, DESIGN §12), or a certification
/// (`certification.issued`, DESIGN §13).
#[derive(Debug, Clone, PartialEq)]
pub enum StandardEvent {
    /// A deal change.
    Deal(DealChange),
    /// Sales engaged a referred lead.
    LeadEngaged(LeadEngagement),
    /// A person at a partner completed a course.
    CertificationIssued(CertificationIssued),
}

/// Reads a STANDARD event (`{"type": …, "data": {…}}`), parsing the payload once whatever its
/// type. `received_at` dates a deletion that carries no `updatedAt`.
pub fn standard_event(
    payload: &[u8],
    default_currency: &str,
    received_at: DateTime<Utc>,
) -> Result<StandardEvent, PayloadError> {
    let value = parse_json(payload)?;
    let event_type = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("missing field `type`"))?;
    let data = value
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("missing object `data`"))?;
    match event_type {
        "lead.engaged" => lead_engaged(data).map(StandardEvent::LeadEngaged),
        "certification.issued" => {
            certification_issued(data).map(StandardEvent::CertificationIssued)
        }
        other => deal_change(other, data, default_currency, received_at).map(StandardEvent::Deal),
    }
}

/// Maps a Tandem deal event (`{"type": "deal.updated" | "deal.deleted", "data": {…}}`); any
/// other STANDARD event is an error here (see [`standard_event`]).
pub fn standard_deal_change(
    payload: &[u8],
    default_currency: &str,
    received_at: DateTime<Utc>,
) -> Result<DealChange, PayloadError> {
    match standard_event(payload, default_currency, received_at)? {
        StandardEvent::Deal(change) => Ok(change),
        StandardEvent::LeadEngaged(_) | StandardEvent::CertificationIssued(_) => {
            Err(malformed("not a deal event"))
        }
    }
}

fn deal_change(
    event_type: &str,
    data: &Map<String, Value>,
    default_currency: &str,
    received_at: DateTime<Utc>,
) -> Result<DealChange, PayloadError> {
    let external_id =
        lenient::text(data.get("id")).ok_or_else(|| malformed("missing `data.id`"))?;
    match event_type {
        "deal.updated" => {
            let updated_at = required_time(data, "updatedAt", "data.updatedAt")?;
            let status = match lenient::text(data.get("status"))
                .map(|s| s.to_ascii_lowercase())
                .as_deref()
            {
                Some("open") => DealStatus::Open,
                Some("won") => DealStatus::Won,
                Some("lost") => DealStatus::Lost,
                Some(other) => {
                    return Err(malformed(format!(
                        "`data.status` must be open, won or lost, not `{other}`"
                    )));
                }
                None => return Err(malformed("missing `data.status`")),
            };
            let amount = match data.get("amount") {
                None | Some(Value::Null) => Decimal::ZERO,
                some => lenient::decimal(some)
                    .ok_or_else(|| malformed("`data.amount` is not a decimal"))?,
            };
            let closed_at = optional_time(data, "closedAt", "data.closedAt")?
                .or((status != DealStatus::Open).then_some(updated_at));
            let created_at =
                optional_time(data, "createdAt", "data.createdAt")?.unwrap_or(updated_at);
            let contact_emails = match data.get("contactEmails") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(_) => return Err(malformed("`data.contactEmails` must be a list")),
            };
            Ok(DealChange::Upsert(NeutralDeal {
                external_id,
                name: lenient::text(data.get("name")).unwrap_or_default(),
                amount,
                currency: lenient::text(data.get("currency"))
                    .unwrap_or_else(|| default_currency.to_string()),
                status,
                stage: lenient::text(data.get("stage")),
                closed_at,
                created_at,
                updated_at,
                company_domain: lenient::text(data.get("companyDomain")),
                company_id: lenient::text(data.get("companyId")),
                contact_emails,
                referral_code: lenient::text(data.get("referralCode")),
                deleted: false,
            }))
        }
        "deal.deleted" => Ok(DealChange::Delete {
            external_id,
            updated_at: optional_time(data, "updatedAt", "data.updatedAt")?.unwrap_or(received_at),
        }),
        other => Err(malformed(format!(
            "unsupported event type `{other}` (expected deal.updated, deal.deleted, \
             lead.engaged or certification.issued)"
        ))),
    }
}

/// Sales engaged a referred lead (DESIGN §12): a STANDARD source's
/// `{"type": "lead.engaged", "data": {"companyDomain", "referralCode"?, "kind"?, "at"?,
/// "note"?}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadEngagement {
    /// The referred company's domain (as sent; normalised when matched).
    pub company_domain: String,
    /// The referring partner's code, when the sender knows it.
    pub referral_code: Option<String>,
    /// What sales did (`call`, `email`, …); `other` when not said.
    pub kind: String,
    /// When; the time the webhook was received when not said.
    pub at: Option<DateTime<Utc>>,
    /// A note for the program's managers.
    pub note: Option<String>,
}

/// A person at a partner completed a course (DESIGN §13): a STANDARD source's
/// `{"type": "certification.issued", "data": {"personEmail", "courseKey", "issuedAt"?,
/// "expiresAt"?, "partnerId"? | "referralCode"?}}` (an LMS). Without a partner id or code, the
/// partner is the one whose domain is the person's email domain.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificationIssued {
    /// The person (as sent).
    pub person_email: String,
    /// The course.
    pub course_key: String,
    /// When it was issued (default: when received).
    pub issued_at: Option<DateTime<Utc>>,
    /// When it expires (none: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// The partner, by Tandem id.
    pub partner_id: Option<String>,
    /// The partner, by referral code.
    pub referral_code: Option<String>,
}

fn certification_issued(data: &Map<String, Value>) -> Result<CertificationIssued, PayloadError> {
    let required = |key: &str| {
        lenient::text(data.get(key))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| malformed(format!("missing `data.{key}`")))
    };
    Ok(CertificationIssued {
        person_email: required("personEmail")?,
        course_key: required("courseKey")?,
        issued_at: optional_time(data, "issuedAt", "data.issuedAt")?,
        expires_at: optional_time(data, "expiresAt", "data.expiresAt")?,
        partner_id: lenient::text(data.get("partnerId")).filter(|v| !v.trim().is_empty()),
        referral_code: lenient::text(data.get("referralCode")).filter(|v| !v.trim().is_empty()),
    })
}

fn lead_engaged(data: &Map<String, Value>) -> Result<LeadEngagement, PayloadError> {
    let company_domain = lenient::text(data.get("companyDomain"))
        .filter(|d| !d.trim().is_empty())
        .ok_or_else(|| malformed("missing `data.companyDomain`"))?;
    let kind = lenient::text(data.get("kind"))
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "other".to_string());
    if kind.chars().count() > 64 {
        return Err(malformed("`data.kind` must be at most 64 characters"));
    }
    let note = lenient::text(data.get("note"))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(malformed("`data.note` must be at most 2000 characters"));
    }
    Ok(LeadEngagement {
        company_domain,
        referral_code: lenient::text(data.get("referralCode")).filter(|c| !c.trim().is_empty()),
        kind,
        at: optional_time(data, "at", "data.at")?,
        note,
    })
}

fn optional_time(
    data: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<DateTime<Utc>>, PayloadError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        some => lenient::time(some)
            .map(Some)
            .ok_or_else(|| malformed(format!("`{path}` is not an RFC 3339 time"))),
    }
}

fn required_time(
    data: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<DateTime<Utc>, PayloadError> {
    optional_time(data, key, path)?.ok_or_else(|| malformed(format!("missing `{path}`")))
}

// ---------------------------------------------------------------------------------------------
// HUBSPOT: batches of subscription events
// ---------------------------------------------------------------------------------------------

/// Splits a HubSpot webhook body (a JSON array of events) into one event per element.
pub fn split_hubspot(body: &[u8]) -> Vec<InboundEvent> {
    let failed = |reason: String| {
        vec![InboundEvent {
            event_id: None,
            payload: body_text(body),
            error: Some(PayloadError(reason)),
        }]
    };
    let items = match parse_json(body) {
        Ok(Value::Array(items)) => items,
        Ok(_) => return failed("a HubSpot webhook body is a JSON array of events".into()),
        Err(e) => return failed(e.0),
    };
    if items.is_empty() {
        return failed("the HubSpot webhook body holds no events".into());
    }
    items
        .into_iter()
        .map(|item| {
            let event_id = lenient::text(item.get("eventId"));
            let error = event_id
                .is_none()
                .then(|| malformed("HubSpot event without `eventId`"));
            InboundEvent {
                event_id,
                payload: item.to_string(),
                error,
            }
        })
        .collect()
}

/// What a single HubSpot event is about.
// Short-lived (one per stored receipt), like `DealChange`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum HubSpotDealEvent {
    /// The deal was created or changed: its current state must be fetched from HubSpot.
    NeedsFetch {
        /// HubSpot's deal id (`objectId`).
        external_id: String,
    },
    /// The deal was deleted.
    Deleted(DealChange),
}

/// Reads one stored HubSpot event (`deal.creation`, `deal.propertyChange`, `deal.deletion`,
/// `deal.restore`, `deal.merge`).
pub fn hubspot_deal_event(payload: &[u8]) -> Result<HubSpotDealEvent, PayloadError> {
    let value = parse_json(payload)?;
    let subscription = value
        .get("subscriptionType")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("missing `subscriptionType`"))?;
    let external_id =
        lenient::text(value.get("objectId")).ok_or_else(|| malformed("missing `objectId`"))?;
    match subscription {
        "deal.deletion" => Ok(HubSpotDealEvent::Deleted(DealChange::Delete {
            external_id,
            updated_at: lenient::time(value.get("occurredAt"))
                .ok_or_else(|| malformed("missing or invalid `occurredAt`"))?,
        })),
        "deal.creation"
        | "deal.propertyChange"
        | "deal.restore"
        | "deal.merge"
        | "deal.associationChange" => Ok(HubSpotDealEvent::NeedsFetch { external_id }),
        other => Err(malformed(format!(
            "unsupported HubSpot subscription `{other}` (only deal.* events are used)"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// PIPEDRIVE: one event per request, the deal inline
// ---------------------------------------------------------------------------------------------

/// Wraps a Pipedrive webhook body as one event, keyed by `meta.id`.
pub fn split_pipedrive(body: &[u8]) -> InboundEvent {
    let parsed = parse_json(body).and_then(|value| {
        lenient::text(value.get("meta").and_then(|m| m.get("id")))
            .ok_or_else(|| malformed("missing `meta.id`"))
    });
    match parsed {
        Ok(id) => InboundEvent {
            event_id: Some(id),
            payload: body_text(body),
            error: None,
        },
        Err(e) => InboundEvent {
            event_id: None,
            payload: body_text(body),
            error: Some(e),
        },
    }
}

/// Maps a Pipedrive v2 webhook (`meta` + `data` + `previous`) about a deal. `referral_code_field`
/// is the key of the custom field holding the referral code.
pub fn pipedrive_deal_change(
    payload: &[u8],
    referral_code_field: Option<&str>,
    default_currency: &str,
) -> Result<DealChange, PayloadError> {
    let value = parse_json(payload)?;
    let meta = value
        .get("meta")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("missing object `meta`"))?;
    let entity = lenient::text(meta.get("entity")).unwrap_or_default();
    if entity != "deal" {
        return Err(malformed(format!(
            "unsupported Pipedrive entity `{entity}` (only deal webhooks are used)"
        )));
    }
    let action = lenient::text(meta.get("action")).unwrap_or_default();
    let data = value.get("data").filter(|d| d.is_object());
    let meta_time = lenient::time(meta.get("timestamp"));
    match action.as_str() {
        "delete" | "deleted" => {
            let external_id = lenient::text(meta.get("entity_id"))
                .or_else(|| lenient::text(value.get("previous").and_then(|p| p.get("id"))))
                .ok_or_else(|| malformed("missing `meta.entity_id`"))?;
            Ok(DealChange::Delete {
                external_id,
                updated_at: meta_time.ok_or_else(|| malformed("missing `meta.timestamp`"))?,
            })
        }
        "create" | "change" | "added" | "updated" | "merged" => {
            let deal = data.ok_or_else(|| malformed("missing object `data`"))?;
            map_pipedrive_deal(deal, referral_code_field, default_currency, meta_time).map(|deal| {
                if deal.deleted {
                    DealChange::Delete {
                        external_id: deal.external_id,
                        updated_at: deal.updated_at,
                    }
                } else {
                    DealChange::Upsert(deal)
                }
            })
        }
        other => Err(malformed(format!("unsupported Pipedrive action `{other}`"))),
    }
}

/// Maps a Pipedrive deal object (API v2 and v2 webhooks; v1's field names are read too).
pub fn map_pipedrive_deal(
    deal: &Value,
    referral_code_field: Option<&str>,
    default_currency: &str,
    fallback_time: Option<DateTime<Utc>>,
) -> Result<NeutralDeal, PayloadError> {
    let external_id =
        lenient::text(deal.get("id")).ok_or_else(|| malformed("deal without `id`"))?;
    let raw_status = lenient::text(deal.get("status")).unwrap_or_else(|| "open".into());
    let status = match raw_status.as_str() {
        "won" => DealStatus::Won,
        "lost" | "deleted" => DealStatus::Lost,
        _ => DealStatus::Open,
    };
    let updated_at = lenient::time(deal.get("update_time"))
        .or(fallback_time)
        .ok_or_else(|| malformed("deal without `update_time`"))?;
    let closed_at = match status {
        DealStatus::Won => lenient::time(deal.get("won_time")),
        DealStatus::Lost => lenient::time(deal.get("lost_time")),
        DealStatus::Open => None,
    }
    .or_else(|| lenient::time(deal.get("close_time")))
    .or((status != DealStatus::Open).then_some(updated_at));
    let referral_code = referral_code_field.and_then(|key| {
        let field = deal
            .get("custom_fields")
            .and_then(|c| c.get(key))
            .or_else(|| deal.get(key))?;
        lenient::text(Some(field)).or_else(|| lenient::text(field.get("value")))
    });
    let person_emails = deal
        .get("person_id")
        .and_then(|p| p.get("email"))
        .and_then(Value::as_array)
        .map(|emails| {
            emails
                .iter()
                .filter_map(|e| lenient::text(e.get("value")).or_else(|| lenient::text(Some(e))))
                .collect()
        })
        .unwrap_or_default();
    Ok(NeutralDeal {
        external_id,
        name: lenient::text(deal.get("title")).unwrap_or_default(),
        amount: lenient::decimal(deal.get("value")).unwrap_or(Decimal::ZERO),
        currency: lenient::text(deal.get("currency")).unwrap_or_else(|| default_currency.into()),
        status,
        stage: lenient::text(deal.get("stage_id")).map(|id| format!("stage {id}")),
        closed_at,
        created_at: lenient::time(deal.get("add_time")).unwrap_or(updated_at),
        updated_at,
        company_domain: None,
        company_id: crate::pipedrive::org_id(deal),
        contact_emails: person_emails,
        referral_code,
        deleted: raw_status == "deleted" || lenient::boolean(deal.get("is_deleted")) == Some(true),
    })
}

// ---------------------------------------------------------------------------------------------
// SALESFORCE: Outbound Message SOAP notifications
// ---------------------------------------------------------------------------------------------

/// Splits a Salesforce Outbound Message into its notifications: each keeps its notification
/// `Id` and the sObject's fields, stored as `{"sObjectType": "...", "fields": {...}}`.
pub fn split_salesforce(body: &[u8]) -> Vec<InboundEvent> {
    let failed = |reason: String| {
        vec![InboundEvent {
            event_id: None,
            payload: body_text(body),
            error: Some(PayloadError(reason)),
        }]
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return failed("body is not UTF-8".into());
    };
    let document = match roxmltree::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => return failed(format!("body is not well-formed XML: {e}")),
    };
    let notifications: Vec<_> = document
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "Notification")
        .collect();
    if notifications.is_empty() {
        return failed("the Outbound Message holds no Notification".into());
    }
    notifications
        .into_iter()
        .map(|notification| {
            let child = |name: &str| {
                notification
                    .children()
                    .find(|c| c.is_element() && c.tag_name().name() == name)
            };
            let event_id = child("Id")
                .and_then(|n| n.text())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
            let mut fields = BTreeMap::new();
            let mut object_type = None;
            if let Some(object) = child("sObject") {
                object_type = object
                    .attributes()
                    .find(|a| a.name() == "type")
                    .map(|a| a.value().rsplit(':').next().unwrap_or_default().to_string());
                for field in object.children().filter(|c| c.is_element()) {
                    let nil = field
                        .attributes()
                        .any(|a| a.name() == "nil" && a.value() == "true");
                    let value = if nil {
                        Value::Null
                    } else {
                        Value::String(field.text().unwrap_or_default().trim().to_string())
                    };
                    fields.insert(field.tag_name().name().to_string(), value);
                }
            }
            let error = match (&event_id, object_type.is_some() || !fields.is_empty()) {
                (None, _) => Some(malformed("Notification without `Id`")),
                (_, false) => Some(malformed("Notification without `sObject`")),
                _ => None,
            };
            InboundEvent {
                event_id,
                payload: json!({"sObjectType": object_type, "fields": fields}).to_string(),
                error,
            }
        })
        .collect()
}

/// Maps one stored Salesforce notification about an Opportunity.
pub fn salesforce_deal_change(
    payload: &[u8],
    referral_code_field: &str,
    default_currency: &str,
) -> Result<DealChange, PayloadError> {
    let value = parse_json(payload)?;
    let object_type = value
        .get("sObjectType")
        .and_then(Value::as_str)
        .unwrap_or("Opportunity");
    if object_type != "Opportunity" {
        return Err(malformed(format!(
            "unsupported sObject `{object_type}` (only Opportunity notifications are used)"
        )));
    }
    let fields = value
        .get("fields")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("missing `fields`"))?;
    let deal = map_salesforce_opportunity(fields, referral_code_field, default_currency)?;
    Ok(if deal.deleted {
        DealChange::Delete {
            external_id: deal.external_id,
            updated_at: deal.updated_at,
        }
    } else {
        DealChange::Upsert(deal)
    })
}

/// Maps Salesforce Opportunity fields (REST JSON or Outbound Message text values).
pub fn map_salesforce_opportunity(
    fields: &Map<String, Value>,
    referral_code_field: &str,
    default_currency: &str,
) -> Result<NeutralDeal, PayloadError> {
    let external_id =
        lenient::text(fields.get("Id")).ok_or_else(|| malformed("Opportunity without `Id`"))?;
    let updated_at = lenient::time(fields.get("SystemModstamp"))
        .or_else(|| lenient::time(fields.get("LastModifiedDate")))
        .ok_or_else(|| malformed("Opportunity without `SystemModstamp` or `LastModifiedDate`"))?;
    let is_won = lenient::boolean(fields.get("IsWon")).unwrap_or(false);
    let is_closed = lenient::boolean(fields.get("IsClosed")).unwrap_or(false);
    let status = match (is_closed, is_won) {
        (true, true) => DealStatus::Won,
        (true, false) => DealStatus::Lost,
        _ => DealStatus::Open,
    };
    Ok(NeutralDeal {
        external_id,
        name: lenient::text(fields.get("Name")).unwrap_or_default(),
        amount: lenient::decimal(fields.get("Amount")).unwrap_or(Decimal::ZERO),
        currency: lenient::text(fields.get("CurrencyIsoCode"))
            .unwrap_or_else(|| default_currency.into()),
        status,
        stage: lenient::text(fields.get("StageName")),
        closed_at: if status == DealStatus::Open {
            None
        } else {
            lenient::time(fields.get("CloseDate")).or(Some(updated_at))
        },
        created_at: lenient::time(fields.get("CreatedDate")).unwrap_or(updated_at),
        updated_at,
        company_domain: None,
        company_id: lenient::text(fields.get("AccountId")),
        contact_emails: Vec::new(),
        referral_code: lenient::text(fields.get(referral_code_field)),
        deleted: lenient::boolean(fields.get("IsDeleted")).unwrap_or(false),
    })
}

/// The SOAP acknowledgement Salesforce expects after an Outbound Message was stored.
pub const SALESFORCE_ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
);
