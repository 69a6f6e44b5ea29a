//! Inbound webhook verification as pure functions `(secret, request parts, raw body) -> Result`.
//! Every comparison of a secret-derived value is constant-time; nothing here logs or formats a
//! secret.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a request failed verification. Messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header or parameter is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A header or parameter is not in the expected form.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The timestamp is outside the accepted window.
    #[error("timestamp outside the accepted window")]
    TimestampOutOfRange,
    /// No signature matched.
    #[error("signature mismatch")]
    BadSignature,
    /// Credentials did not match.
    #[error("invalid credentials")]
    BadCredentials,
}

/// Standard Webhooks tolerance, in seconds.
pub const STANDARD_TOLERANCE_SECS: i64 = 300;
/// HubSpot v3 maximum age, in milliseconds.
pub const HUBSPOT_MAX_AGE_MS: i64 = 5 * 60 * 1000;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Decodes a `whsec_…` Standard Webhooks secret into its key bytes.
pub fn decode_standard_secret(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::Malformed("secret"))
}

/// Signs like a Standard Webhooks sender: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign_standard(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Verifies a Standard Webhooks request: `webhook-id`, `webhook-timestamp` (within
/// ±`tolerance_secs` of `now_secs`, or unchecked when `tolerance_secs` is `None`) and
/// `webhook-signature` (space-separated `v1,<base64>` entries; any match passes).
pub fn verify_standard(
    keys: &[Vec<u8>],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: Option<i64>,
) -> Result<(), VerifyError> {
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::Missing("webhook-id"))?;
    let ts_text = timestamp.ok_or(VerifyError::Missing("webhook-timestamp"))?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("webhook-timestamp"))?;
    if let Some(tolerance) = tolerance_secs
        && (now_secs.saturating_sub(ts)).abs() > tolerance
    {
        return Err(VerifyError::TimestampOutOfRange);
    }
    let header = signatures.ok_or(VerifyError::Missing("webhook-signature"))?;
    let ts_bytes = ts.to_string();
    for entry in header.split(' ').filter(|e| !e.is_empty()) {
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        if version != "v1" {
            continue;
        }
        let Ok(candidate) = STANDARD.decode(encoded) else {
            continue;
        };
        for key in keys {
            let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts_bytes.as_bytes(), b".", body]);
            if mac.verify_slice(&candidate).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::BadSignature)
}

/// Characters HubSpot percent-encodes in the URI it signs but decodes before hashing
/// (HubSpot's request-validation docs list them).
const HUBSPOT_DECODED: &[(&str, &str)] = &[
    ("%3A", ":"),
    ("%2F", "/"),
    ("%3F", "?"),
    ("%40", "@"),
    ("%21", "!"),
    ("%24", "$"),
    ("%27", "'"),
    ("%28", "("),
    ("%29", ")"),
    ("%2A", "*"),
    ("%2C", ","),
    ("%3B", ";"),
];

/// Decodes the percent-escapes HubSpot decodes before signing a URI.
pub fn hubspot_decode_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let escape = rest.get(pos..pos + 3).unwrap_or("");
        match HUBSPOT_DECODED
            .iter()
            .find(|(code, _)| code.eq_ignore_ascii_case(escape))
        {
            Some((_, plain)) => {
                out.push_str(plain);
                rest = &rest[pos + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Which HubSpot signature scheme a source accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubSpotSignatureVersion {
    /// `X-HubSpot-Signature`: hex SHA-256 of secret + body.
    V1,
    /// `X-HubSpot-Signature`: hex SHA-256 of secret + method + URI + body.
    V2,
    /// `X-HubSpot-Signature-v3`: base64 HMAC-SHA256 of method + URI + body + timestamp.
    V3,
}

/// The parts of a HubSpot request that are signed.
#[derive(Clone, Copy)]
pub struct HubSpotRequest<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The full URI HubSpot called (scheme, host, path, query).
    pub uri: &'a str,
    /// `X-HubSpot-Signature-v3` or `X-HubSpot-Signature`.
    pub signature: Option<&'a str>,
    /// `X-HubSpot-Request-Timestamp` (milliseconds), for v3.
    pub timestamp_ms: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
}

/// Verifies a HubSpot webhook with the app's client secret. `max_age_ms` of `None` skips the
/// timestamp check (for published vectors with old timestamps).
pub fn verify_hubspot(
    client_secret: &str,
    version: HubSpotSignatureVersion,
    request: HubSpotRequest<'_>,
    now_ms: i64,
    max_age_ms: Option<i64>,
) -> Result<(), VerifyError> {
    let signature = request
        .signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::Missing("X-HubSpot-Signature"))?;
    match version {
        HubSpotSignatureVersion::V1 | HubSpotSignatureVersion::V2 => {
            let mut digest = Sha256::new();
            digest.update(client_secret.as_bytes());
            if version == HubSpotSignatureVersion::V2 {
                digest.update(request.method.as_bytes());
                digest.update(request.uri.as_bytes());
            }
            digest.update(request.body);
            let expected = hex_lower(&digest.finalize());
            let given = signature.to_ascii_lowercase();
            if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
                Ok(())
            } else {
                Err(VerifyError::BadSignature)
            }
        }
        HubSpotSignatureVersion::V3 => {
            let ts_text = request
                .timestamp_ms
                .ok_or(VerifyError::Missing("X-HubSpot-Request-Timestamp"))?;
            let ts: i64 = ts_text
                .trim()
                .parse()
                .map_err(|_| VerifyError::Malformed("X-HubSpot-Request-Timestamp"))?;
            if let Some(max_age) = max_age_ms
                && (now_ms - ts > max_age || ts - now_ms > max_age)
            {
                return Err(VerifyError::TimestampOutOfRange);
            }
            let candidate = STANDARD
                .decode(signature)
                .map_err(|_| VerifyError::BadSignature)?;
            let uri = hubspot_decode_uri(request.uri);
            let mac = hmac_sha256(
                client_secret.as_bytes(),
                &[
                    request.method.as_bytes(),
                    uri.as_bytes(),
                    request.body,
                    ts_text.trim().as_bytes(),
                ],
            );
            mac.verify_slice(&candidate)
                .map_err(|_| VerifyError::BadSignature)
        }
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0x0f) as usize] as char);
    }
    out
}

/// Verifies HTTP Basic credentials (Pipedrive webhooks) against the expected `user:password`.
pub fn verify_basic(expected: &str, authorization: Option<&str>) -> Result<(), VerifyError> {
    let header = authorization.ok_or(VerifyError::Missing("Authorization"))?;
    let (scheme, encoded) = header
        .trim()
        .split_once(' ')
        .ok_or(VerifyError::Malformed("Authorization"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(VerifyError::Malformed("Authorization"));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| VerifyError::Malformed("Authorization"))?;
    if bool::from(decoded.as_slice().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(VerifyError::BadCredentials)
    }
}

/// Extracts the text of the first `<OrganizationId>` (any namespace prefix) of a Salesforce
/// Outbound Message.
pub fn salesforce_organization_id(body: &str) -> Option<&str> {
    let mut rest = body;
    while let Some(pos) = rest.find("OrganizationId>") {
        let before = &rest[..pos];
        let after = &rest[pos + "OrganizationId>".len()..];
        let is_open = before
            .rfind('<')
            .is_some_and(|lt| !before[lt..].starts_with("</"));
        if is_open {
            let end = after.find('<')?;
            return Some(after[..end].trim());
        }
        rest = after;
    }
    None
}

fn salesforce_ids_equal(a: &str, b: &str) -> bool {
    // 18-character ids extend the 15-character form with a case-safe checksum.
    let (a, b) = match (a.len(), b.len()) {
        (18, 15) => (&a[..15], b),
        (15, 18) => (a, &b[..15]),
        _ => (a, b),
    };
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Verifies a Salesforce Outbound Message: the `token` query parameter must equal the source
/// secret and the body's `OrganizationId` the configured org id.
pub fn verify_salesforce(
    expected_token: &str,
    expected_org_id: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let token = token.ok_or(VerifyError::Missing("token"))?;
    if !bool::from(token.as_bytes().ct_eq(expected_token.as_bytes())) {
        return Err(VerifyError::BadCredentials);
    }
    let text = std::str::from_utf8(body).map_err(|_| VerifyError::Malformed("body"))?;
    let org = salesforce_organization_id(text).ok_or(VerifyError::Missing("OrganizationId"))?;
    if salesforce_ids_equal(org, expected_org_id) {
        Ok(())
    } else {
        Err(VerifyError::BadCredentials)
    }
}

/// Stripe's default tolerance for `t=`, in seconds.
pub const STRIPE_TOLERANCE_SECS: i64 = 300;

/// Signs like Stripe: `t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">`, keyed with the endpoint
/// secret string as is (`whsec_…` included).
pub fn sign_stripe(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(secret.as_bytes(), &[ts.as_bytes(), b".", body]);
    format!("t={ts},v1={}", hex_lower(&mac.finalize().into_bytes()))
}

/// Verifies a Stripe webhook as Stripe documents it: the `Stripe-Signature` header is a
/// comma-separated list of `key=value` elements with one `t` (unix seconds, within
/// ±`tolerance_secs` of `now_secs`, unchecked when `None`) and one or more `v1` (hex
/// HMAC-SHA256 of `"{t}.{raw body}"` keyed with the secret string); any `v1` may match, other
/// schemes (`v0`) are ignored. Comparisons are constant-time.
pub fn verify_stripe(
    secrets: &[&str],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: Option<i64>,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::Missing("Stripe-Signature"))?;
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for element in header.split(',') {
        let Some((key, value)) = element.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            "v1" => {
                if let Some(bytes) = decode_hex(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let ts: i64 = timestamp
        .ok_or(VerifyError::Missing("Stripe-Signature timestamp"))?
        .parse()
        .map_err(|_| VerifyError::Malformed("Stripe-Signature timestamp"))?;
    if signatures.is_empty() {
        return Err(VerifyError::Missing("Stripe-Signature v1 signature"));
    }
    if let Some(tolerance) = tolerance_secs
        && now_secs.saturating_sub(ts).abs() > tolerance
    {
        return Err(VerifyError::TimestampOutOfRange);
    }
    let ts_text = ts.to_string();
    for secret in secrets {
        let expected = hmac_sha256(secret.as_bytes(), &[ts_text.as_bytes(), b".", body])
            .finalize()
            .into_bytes();
        let mut matched = false;
        for candidate in &signatures {
            // Every candidate is compared (no early exit on the first match).
            matched |= bool::from(candidate.as_slice().ct_eq(expected.as_slice()));
        }
        if matched {
            return Ok(());
        }
    }
    Err(VerifyError::BadSignature)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}
