//! CRM sync benchmark: `cargo bench --bench crm_sync -- [sqlite|postgres] [deals]`.
//!
//! A local fake HubSpot (a poem server in the same process) holds 100,000 deals (or `deals`) and
//! answers the list endpoint 100 per page, like HubSpot's `GET /crm/v3/objects/deals`, with every
//! fifth deal associated to a company whose domain matches a referral. The hub syncs them into a
//! fresh database with `syncCrmConnection` (backfill: fetch, map, apply through the deal mirror
//! and attribution, checkpoint per page). Reported: deals/s end to end, the part spent fetching
//! and mapping (the same pages read by the connector alone, without the database), and the
//! process's peak RSS. Results: `bench/results/crm-sync-<backend>.json`.

use std::time::{Duration, Instant};

use poem::{
    Request, Response, Server,
    listener::{Acceptor, Listener, TcpListener},
};
use serde_json::{Value, json};
use tandem::config::Config;
use tandem_connectors::{
    CrmConnector,
    http::{Credentials, CrmHttp, RetryPolicy, Vendor},
    hubspot::HubSpot,
};

mod support;
use support::gql;

fn deal(i: usize) -> Value {
    let modified = chrono::DateTime::from_timestamp_millis(1_767_225_600_000 + i as i64 * 1000)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let won = i.is_multiple_of(4);
    json!({
        "id": i.to_string(),
        "properties": {
            "amount": format!("{}.50", 1000 + i % 9000),
            "closedate": if won { json!(modified) } else { Value::Null },
            "createdate": modified, "deal_currency_code": "USD",
            "dealname": format!("Deal {i}"), "dealstage": if won { "closedwon" } else { "appointmentscheduled" },
            "hs_is_closed": if won { "true" } else { "false" },
            "hs_is_closed_won": if won { "true" } else { "false" },
            "hs_lastmodifieddate": modified, "hs_object_id": i.to_string(), "pipeline": "default",
            "tandem_referral_code": Value::Null,
        },
        "createdAt": modified, "updatedAt": modified, "archived": false,
    })
}

/// The fake HubSpot: list pages, associations (every fifth deal → company `c<i % 50>`), company
/// domains, empty searches.
async fn fake_hubspot(total: usize) -> String {
    let endpoint = poem::endpoint::make(move |req: Request| async move {
        let path = req.uri().path().to_string();
        let query: std::collections::HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let body: Value =
            serde_json::from_slice(&req.into_body().into_vec().await.unwrap_or_default())
                .unwrap_or(Value::Null);
        let json_response = |v: Value| {
            Response::builder()
                .content_type("application/json")
                .body(v.to_string())
        };
        let ids = || -> Vec<String> {
            body["inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        };
        match path.as_str() {
            "/crm/v3/objects/deals" => {
                let after: usize = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                let limit: usize = query
                    .get("limit")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(100);
                let results: Vec<Value> =
                    (after + 1..=(after + limit).min(total)).map(deal).collect();
                let mut out = json!({"results": results});
                if after + limit < total {
                    out["paging"] = json!({"next": {"after": (after + limit).to_string()}});
                }
                json_response(out)
            }
            "/crm/v3/objects/deals/search" => json_response(json!({"total": 0, "results": []})),
            "/crm/v4/associations/deals/companies/batch/read" => {
                let results: Vec<Value> = ids()
                    .into_iter()
                    .filter(|id| id.parse::<usize>().unwrap_or(1) % 5 == 0)
                    .map(|id| {
                        let company = format!("c{}", id.parse::<usize>().unwrap() % 50);
                        json!({"from": {"id": id}, "to": [{"toObjectId": company, "associationTypes": []}]})
                    })
                    .collect();
                json_response(json!({"status": "COMPLETE", "results": results}))
            }
            "/crm/v4/associations/deals/contacts/batch/read" => {
                json_response(json!({"status": "COMPLETE", "results": []}))
            }
            "/crm/v3/objects/companies/batch/read" => {
                let results: Vec<Value> = ids()
                    .into_iter()
                    .map(|id| json!({"id": id, "properties": {"domain": format!("{id}.example")}}))
                    .collect();
                json_response(json!({"status": "COMPLETE", "results": results}))
            }
            _ => json_response(json!({"status": "COMPLETE", "results": []})),
        }
    });
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint));
    format!("http://{addr}")
}

#[tokio::main]
async fn main() {
    tandem::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = if args.iter().any(|a| a == "postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let total: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(100_000);
    let crm = fake_hubspot(total).await;

    // The connector alone: fetch and map every page (no database).
    let http = CrmHttp::new(
        Vendor::HubSpot,
        &crm,
        Credentials::AccessToken("pat-bench".into()),
        RetryPolicy::default(),
    )
    .unwrap();
    let connector = HubSpot::new(http, "USD");
    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut fetched = 0;
    loop {
        let page = connector.sync_page(cursor.as_deref()).await.unwrap();
        fetched += page.deals.len();
        cursor = Some(page.cursor);
        if !page.more {
            break;
        }
    }
    let fetch_seconds = started.elapsed().as_secs_f64();
    assert_eq!(fetched, total);

    let database = support::BenchDb::fresh(backend).await;
    let url = database.url.clone();
    let config = Config {
        // The fake HubSpot listens on loopback.
        webhook_allow_private_targets: true,
        ..support::config(&url)
    };
    let support::Hub {
        base, admin, stop, ..
    } = support::start_hub(config).await;
    let program = gql(
        &base,
        &admin,
        "mutation { createProgram(input: {name: \"Bench\", kind: CHANNEL, currency: \"USD\", commission: {type: PERCENT, rate: \"10\"}}) { program { id } } }",
        json!({}),
    )
    .await["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Partners with accepted referrals for some of the domains, so attribution does real work.
    for i in 0..10 {
        let partner = gql(
            &base,
            &admin,
            "mutation($p: ID!, $n: String!, $e: String!) { createPartner(input: {programId: $p, name: $n, contactEmail: $e}) { partner { id } } }",
            json!({"p": program, "n": format!("Partner {i}"), "e": format!("p{i}@partners.example")}),
        )
        .await["createPartner"]["partner"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        gql(
            &base,
            &admin,
            "mutation($p: ID!, $d: String!) { submitReferral(input: {partnerId: $p, companyName: $d, companyDomain: $d}) { referral { id } } }",
            json!({"p": partner, "d": format!("c{i}.example")}),
        )
        .await;
    }
    let connection = gql(
        &base,
        &admin,
        "mutation($p: ID!, $u: String!) { createCrmConnection(input: {name: \"Bench\", kind: HUBSPOT, programId: $p, baseUrl: $u, accessToken: \"pat-bench\"}) { connection { id } } }",
        json!({"p": program, "u": crm}),
    )
    .await["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let run = gql(
        &base,
        &admin,
        "mutation($id: ID!) { syncCrmConnection(input: {id: $id}) { syncRun { status pages dealsSeen dealsChanged durationMs error } } }",
        json!({"id": connection}),
    )
    .await["syncCrmConnection"]["syncRun"]
        .clone();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["dealsChanged"].as_u64().unwrap() as usize, total);
    let attributed = gql(
        &base,
        &admin,
        "{ deals(first: 1, filter: {}) { totalCount } }",
        json!({}),
    )
    .await;
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    database.remove().await;
    let result = json!({
        "backend": backend,
        "deals": total,
        "pages": run["pages"],
        "sync_seconds": seconds,
        "deals_per_second": total as f64 / seconds,
        "fetch_and_map_only_seconds": fetch_seconds,
        "fetch_and_map_share": fetch_seconds / seconds,
        "deals_stored": attributed["deals"]["totalCount"],
        "peak_rss_mib_whole_process": support::peak_rss_mib(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "at": chrono::Utc::now().to_rfc3339(),
    });
    println!("{result}");
    std::fs::create_dir_all("bench/results").unwrap();
    let out = format!("bench/results/crm-sync-{backend}.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("results in {out}");
}
