//! Inbound payload parsing: real shapes map onto neutral deal changes, and no input makes a
//! parser panic.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::str::FromStr;
use tandem_connectors::{
    DealStatus,
    inbound::{
        DealChange, HubSpotDealEvent, hubspot_deal_event, pipedrive_deal_change,
        salesforce_deal_change, split_hubspot, split_pipedrive, split_salesforce,
        standard_deal_change,
    },
    verify,
};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn standard_deal_updated_maps_every_field() {
    let body = br#"{"type":"deal.updated","data":{"id":"D-1","name":"Acme","amount":12500.5,
        "currency":"EUR","status":"won","stage":"closedwon","closedAt":"2026-05-01T07:25:37Z",
        "createdAt":"2026-04-01T00:00:00Z","updatedAt":"2026-05-01T07:25:37.000+0000",
        "companyDomain":"acme.com","contactEmails":["Jo@Acme.com"],"referralCode":"ABCD1234"}}"#;
    let DealChange::Upsert(deal) = standard_deal_change(body, "USD", now()).unwrap() else {
        panic!("expected an upsert");
    };
    assert_eq!(deal.external_id, "D-1");
    assert_eq!(deal.amount, Decimal::from_str("12500.5").unwrap());
    assert_eq!(deal.currency, "EUR");
    assert_eq!(deal.status, DealStatus::Won);
    assert_eq!(deal.contact_emails, vec!["Jo@Acme.com"]);
    assert_eq!(deal.referral_code.as_deref(), Some("ABCD1234"));
    assert_eq!(
        deal.closed_at.unwrap().to_rfc3339(),
        "2026-05-01T07:25:37+00:00"
    );
}

#[test]
fn standard_rejections_name_the_field() {
    let cases: [(&[u8], &str); 5] = [
        (b"{", "not valid JSON"),
        (br#"{"type":"deal.updated","data":{"id":"1","status":"won"}}"#, "data.updatedAt"),
        (
            br#"{"type":"deal.updated","data":{"id":"1","status":"maybe","updatedAt":"2026-01-01T00:00:00Z"}}"#,
            "data.status",
        ),
        (
            br#"{"type":"deal.updated","data":{"id":"1","status":"won","amount":"lots","updatedAt":"2026-01-01T00:00:00Z"}}"#,
            "data.amount",
        ),
        (br#"{"type":"invoice.paid","data":{"id":"1"}}"#, "unsupported event type"),
    ];
    for (body, expected) in cases {
        let err = standard_deal_change(body, "USD", now()).unwrap_err();
        assert!(
            err.0.contains(expected),
            "{} should mention {expected}",
            err.0
        );
    }
}

#[test]
fn hubspot_batches_split_per_event() {
    let body = br#"[{"eventId":1,"subscriptionType":"deal.propertyChange","objectId":77,"occurredAt":1764000000000,"propertyName":"dealstage","propertyValue":"closedwon"},
                   {"eventId":2,"subscriptionType":"deal.deletion","objectId":78,"occurredAt":1764000000000}]"#;
    let events = split_hubspot(body);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_id.as_deref(), Some("1"));
    assert!(events.iter().all(|e| e.error.is_none()));
    assert_eq!(
        hubspot_deal_event(events[0].payload.as_bytes()).unwrap(),
        HubSpotDealEvent::NeedsFetch {
            external_id: "77".into()
        }
    );
    assert!(matches!(
        hubspot_deal_event(events[1].payload.as_bytes()).unwrap(),
        HubSpotDealEvent::Deleted(DealChange::Delete { ref external_id, .. }) if external_id == "78"
    ));
    assert!(split_hubspot(b"{}")[0].error.is_some());
}

#[test]
fn pipedrive_v2_webhook_carries_the_deal() {
    let body = br#"{"meta":{"action":"change","entity":"deal","entity_id":"2","id":"8d3c6a5b-1f0e-4a8b-9c7d-2e1f0a9b8c7d","timestamp":"2026-05-15T10:16:44.000Z","version":"2.0"},
      "data":{"id":2,"title":"Globex - Renewal","value":12500.5,"currency":"USD","status":"won","stage_id":5,
        "add_time":"2026-05-15T09:55:02Z","update_time":"2026-05-15T10:16:44Z","won_time":"2026-05-15T10:16:44Z",
        "custom_fields":{"abc123":"PARTNER1"}},
      "previous":{"status":"open"}}"#;
    let event = split_pipedrive(body);
    assert_eq!(
        event.event_id.as_deref(),
        Some("8d3c6a5b-1f0e-4a8b-9c7d-2e1f0a9b8c7d")
    );
    let DealChange::Upsert(deal) = pipedrive_deal_change(body, Some("abc123"), "EUR").unwrap()
    else {
        panic!("expected an upsert")
    };
    assert_eq!(deal.status, DealStatus::Won);
    assert_eq!(deal.referral_code.as_deref(), Some("PARTNER1"));
    assert_eq!(deal.amount, Decimal::from_str("12500.5").unwrap());

    let deleted = br#"{"meta":{"action":"delete","entity":"deal","entity_id":"2","id":"x","timestamp":"2026-05-16T00:00:00Z"},"data":null,"previous":{"id":2}}"#;
    assert!(matches!(
        pipedrive_deal_change(deleted, None, "EUR").unwrap(),
        DealChange::Delete { ref external_id, .. } if external_id == "2"
    ));
    let person = br#"{"meta":{"action":"change","entity":"person","id":"y"},"data":{}}"#;
    assert!(pipedrive_deal_change(person, None, "EUR").is_err());
}

const SALESFORCE_MESSAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D5e000000abcdEAA</OrganizationId>
   <ActionId>04k5e000000abcdAAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00D5e000000abcd</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00D5e000000abcd</PartnerUrl>
   <Notification>
    <Id>04l5e000000Xyz1AAC</Id>
    <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>0065e000001AbCdAAK</sf:Id>
     <sf:Amount>48000.0</sf:Amount>
     <sf:CloseDate>2026-05-01</sf:CloseDate>
     <sf:CreatedDate>2026-04-02T10:00:00.000Z</sf:CreatedDate>
     <sf:IsClosed>true</sf:IsClosed>
     <sf:IsWon>true</sf:IsWon>
     <sf:Name>Initech Platform</sf:Name>
     <sf:StageName>Closed Won</sf:StageName>
     <sf:SystemModstamp>2026-05-01T07:25:37.000Z</sf:SystemModstamp>
     <sf:Tandem_Referral_Code__c>ABCD1234</sf:Tandem_Referral_Code__c>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#;

#[test]
fn salesforce_outbound_message_maps_the_opportunity() {
    assert_eq!(
        verify::salesforce_organization_id(SALESFORCE_MESSAGE),
        Some("00D5e000000abcdEAA")
    );
    let events = split_salesforce(SALESFORCE_MESSAGE.as_bytes());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id.as_deref(), Some("04l5e000000Xyz1AAC"));
    let DealChange::Upsert(deal) = salesforce_deal_change(
        events[0].payload.as_bytes(),
        "Tandem_Referral_Code__c",
        "USD",
    )
    .unwrap() else {
        panic!("expected an upsert")
    };
    assert_eq!(deal.external_id, "0065e000001AbCdAAK");
    assert_eq!(deal.status, DealStatus::Won);
    assert_eq!(deal.amount, Decimal::from_str("48000.0").unwrap());
    assert_eq!(deal.referral_code.as_deref(), Some("ABCD1234"));
    assert_eq!(
        deal.closed_at.unwrap().to_rfc3339(),
        "2026-05-01T00:00:00+00:00"
    );
    assert!(split_salesforce(b"<not-xml")[0].error.is_some());
}

proptest! {
    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = standard_deal_change(&body, "USD", now());
        let _ = split_hubspot(&body);
        let _ = hubspot_deal_event(&body);
        let _ = split_pipedrive(&body);
        let _ = pipedrive_deal_change(&body, Some("f"), "USD");
        let _ = split_salesforce(&body);
        let _ = salesforce_deal_change(&body, "Tandem_Referral_Code__c", "USD");
    }

    #[test]
    fn parsers_never_panic_on_json_like_text(body in r#"[\[\]{}":,0-9a-zA-Z. \-]{0,200}"#) {
        let bytes = body.as_bytes();
        let _ = standard_deal_change(bytes, "USD", now());
        let _ = split_hubspot(bytes);
        let _ = pipedrive_deal_change(bytes, None, "USD");
        let _ = split_salesforce(bytes);
    }

    #[test]
    fn standard_deal_events_with_any_field_values_never_panic(
        id in ".{0,20}", amount in ".{0,20}", status in "(open|won|lost|.{0,5})", ts in ".{0,30}"
    ) {
        let body = serde_json::json!({"type": "deal.updated", "data": {
            "id": id, "amount": amount, "status": status, "updatedAt": ts, "closedAt": ts}});
        let _ = standard_deal_change(body.to_string().as_bytes(), "USD", now());
    }
}
