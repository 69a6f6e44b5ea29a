//! The verifiers against the published vectors (a copy of `shared/fixtures/webhooks/vectors.json`
//! in `tests/fixtures/`), plus rejection cases and a property test that garbage never panics
//! or passes.

use base64::{Engine, engine::general_purpose::STANDARD};
use proptest::prelude::*;
use serde_json::Value;
use tandem_connectors::verify::*;

fn vectors() -> Value {
    // Embedded at compile time: a build cache shared between clones must not point the test at
    // another checkout's files.
    serde_json::from_str(include_str!("fixtures/webhook_vectors.json")).expect("json")
}

#[test]
fn standard_webhooks_vectors_verify_and_tampering_is_rejected() {
    for v in vectors()["standard_webhooks"].as_array().unwrap() {
        let key = decode_standard_secret(v["secret"].as_str().unwrap()).unwrap();
        let id = v["msg_id"].as_str().unwrap();
        let ts = v["timestamp"].as_i64().unwrap();
        let body = v["payload"].as_str().unwrap().as_bytes();
        let sig = v["signature"].as_str().unwrap();
        let ts_text = ts.to_string();
        let keys = vec![key.clone()];
        let check = |sig: &str, now: i64, tol: Option<i64>| {
            verify_standard(&keys, Some(id), Some(&ts_text), Some(sig), body, now, tol)
        };
        assert_eq!(check(sig, ts, Some(300)), Ok(()));
        assert_eq!(sign_standard(&key, id, ts, body), sig);
        // Several signatures, one valid.
        assert_eq!(
            check(&format!("v1,AAAA {sig} v2,zzz"), ts, Some(300)),
            Ok(())
        );
        for bad in v["must_reject"].as_array().unwrap() {
            assert_eq!(
                check(bad.as_str().unwrap(), ts, None),
                Err(VerifyError::BadSignature)
            );
        }
        assert_eq!(
            check(sig, ts + 301, Some(300)),
            Err(VerifyError::TimestampOutOfRange)
        );
        assert_eq!(
            check(sig, ts - 301, Some(300)),
            Err(VerifyError::TimestampOutOfRange)
        );
        assert_eq!(
            verify_standard(
                &keys,
                Some(id),
                Some(&ts_text),
                Some(sig),
                b"{\"test\": 1}",
                ts,
                None
            ),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_standard(&keys, None, Some(&ts_text), Some(sig), body, ts, None),
            Err(VerifyError::Missing("webhook-id"))
        );
        assert_eq!(
            verify_standard(&keys, Some(id), Some("soon"), Some(sig), body, ts, None),
            Err(VerifyError::Malformed("webhook-timestamp"))
        );
        // During rotation the old and the new key are both tried.
        let other = decode_standard_secret("whsec_dGVzdGluZ3Rlc3Rpbmd0ZXN0aW5n").unwrap();
        assert_eq!(
            verify_standard(
                &[other, key.clone()],
                Some(id),
                Some(&ts_text),
                Some(sig),
                body,
                ts,
                None
            ),
            Ok(())
        );
    }
}

#[test]
fn hubspot_vectors_verify() {
    for v in vectors()["hubspot"].as_array().unwrap() {
        let secret = v["client_secret"].as_str().unwrap();
        let version = match v["version"].as_str().unwrap() {
            "v1" => HubSpotSignatureVersion::V1,
            "v2" => HubSpotSignatureVersion::V2,
            _ => HubSpotSignatureVersion::V3,
        };
        let request = HubSpotRequest {
            method: v["method"].as_str().unwrap_or("POST"),
            uri: v["uri"].as_str().unwrap_or(""),
            signature: v["signature"].as_str(),
            timestamp_ms: v["timestamp_ms"].as_str(),
            body: v["body"].as_str().unwrap().as_bytes(),
        };
        let ts: i64 = request
            .timestamp_ms
            .map(|t| t.parse().unwrap())
            .unwrap_or(0);
        assert_eq!(
            verify_hubspot(secret, version, request, ts, Some(HUBSPOT_MAX_AGE_MS)),
            Ok(()),
            "{v}"
        );
        let tampered = HubSpotRequest {
            body: b"[]",
            ..request
        };
        assert_eq!(
            verify_hubspot(secret, version, tampered, ts, None),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_hubspot("another-secret", version, request, ts, None),
            Err(VerifyError::BadSignature)
        );
        if version == HubSpotSignatureVersion::V3 {
            assert_eq!(
                verify_hubspot(
                    secret,
                    version,
                    request,
                    ts + HUBSPOT_MAX_AGE_MS + 1,
                    Some(HUBSPOT_MAX_AGE_MS)
                ),
                Err(VerifyError::TimestampOutOfRange)
            );
        }
    }
}

#[test]
fn hubspot_uri_escapes_are_decoded_before_hashing() {
    assert_eq!(
        hubspot_decode_uri("https://h.example/webhooks/a%3Ab?x=%40y%2Cz&q=%20"),
        "https://h.example/webhooks/a:b?x=@y,z&q=%20"
    );
    assert_eq!(hubspot_decode_uri("%"), "%");
    assert_eq!(hubspot_decode_uri("a%2"), "a%2");
}

#[test]
fn basic_credentials_are_checked() {
    let header = format!("Basic {}", STANDARD.encode("tandem:s3cret"));
    assert_eq!(verify_basic("tandem:s3cret", Some(&header)), Ok(()));
    assert_eq!(
        verify_basic("tandem:other", Some(&header)),
        Err(VerifyError::BadCredentials)
    );
    assert_eq!(
        verify_basic("tandem:s3cret", None),
        Err(VerifyError::Missing("Authorization"))
    );
    assert_eq!(
        verify_basic("tandem:s3cret", Some("Bearer x")),
        Err(VerifyError::Malformed("Authorization"))
    );
}

#[test]
fn salesforce_org_and_token_are_checked() {
    let body = br#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>00D5e000000AbCdEAK</OrganizationId><ActionId>04k</ActionId></notifications></soapenv:Body></soapenv:Envelope>"#;
    let ok = |org: &str, token: Option<&str>| verify_salesforce("tok", org, token, body);
    assert_eq!(ok("00D5e000000AbCdEAK", Some("tok")), Ok(()));
    assert_eq!(ok("00D5e000000AbCd", Some("tok")), Ok(()));
    assert_eq!(
        ok("00D5e000000XXXXEAK", Some("tok")),
        Err(VerifyError::BadCredentials)
    );
    assert_eq!(
        ok("00D5e000000AbCdEAK", Some("nope")),
        Err(VerifyError::BadCredentials)
    );
    assert_eq!(
        ok("00D5e000000AbCdEAK", None),
        Err(VerifyError::Missing("token"))
    );
    assert_eq!(
        verify_salesforce("tok", "00D", Some("tok"), b"<x/>"),
        Err(VerifyError::Missing("OrganizationId"))
    );
}

proptest! {
    #[test]
    fn garbage_never_panics_or_passes(
        id in ".{0,40}",
        ts in ".{0,20}",
        sig in ".{0,120}",
        body in proptest::collection::vec(any::<u8>(), 0..512),
        auth in ".{0,80}",
        uri in ".{0,80}",
    ) {
        let key = decode_standard_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        prop_assert!(verify_standard(&[key], Some(&id), Some(&ts), Some(&sig), &body, 0, None).is_err());
        let request = HubSpotRequest {
            method: "POST",
            uri: &uri,
            signature: Some(&sig),
            timestamp_ms: Some(&ts),
            body: &body,
        };
        for version in [HubSpotSignatureVersion::V1, HubSpotSignatureVersion::V2, HubSpotSignatureVersion::V3] {
            prop_assert!(verify_hubspot("secret", version, request, 0, None).is_err());
        }
        prop_assert!(verify_basic("user:pass", Some(&auth)).is_err());
        prop_assert!(verify_salesforce("token", "00D000000000001", Some(&sig), &body).is_err());
    }
}

/// Stripe's scheme: `t=…,v1=…`, any `v1` may match, `t` within the tolerance, the secret
/// string used as is. The signature below was computed independently with
/// `printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test_secret`
/// (verified here against Tandem's signer and verifier).
#[test]
fn stripe_signatures() {
    use tandem_connectors::verify::{VerifyError, sign_stripe, verify_stripe};
    let body = br#"{"id":"evt_1"}"#;
    let expected =
        "t=1700000000,v1=248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";
    let signed = sign_stripe("whsec_test_secret", 1_700_000_000, body);
    assert_eq!(signed, expected);
    let verify = |header: &str, now: i64| {
        verify_stripe(&["whsec_test_secret"], Some(header), body, now, Some(300))
    };
    assert_eq!(verify(&signed, 1_700_000_000), Ok(()));
    assert_eq!(verify(&signed, 1_700_000_300), Ok(()));
    assert_eq!(
        verify(&signed, 1_700_000_301),
        Err(VerifyError::TimestampOutOfRange)
    );
    let (t, v1) = signed.split_once(",v1=").unwrap();
    let two = format!("{t},v1={},v1={v1},v0={v1}", "ab".repeat(32));
    assert_eq!(verify(&two, 1_700_000_000), Ok(()));
    assert_eq!(
        verify(&format!("{t},v0={v1}"), 1_700_000_000),
        Err(VerifyError::Missing("Stripe-Signature v1 signature"))
    );
    assert_eq!(
        verify_stripe(
            &["whsec_other"],
            Some(&signed),
            body,
            1_700_000_000,
            Some(300)
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify_stripe(
            &["whsec_test_secret"],
            Some(&signed),
            b"{}",
            1_700_000_000,
            Some(300)
        ),
        Err(VerifyError::BadSignature)
    );
}
