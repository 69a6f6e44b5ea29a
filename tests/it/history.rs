//! Seeds what ingesting many deals leaves behind, directly in SQL (fast enough for a million):
//! per deal an applied webhook receipt, the deal, its attribution, a referral of the deal's
//! domain, two events (`deal.attributed`, `deal.won`) and, with an endpoint, their delivered
//! deliveries. Shared by the apply-cost test and the apply benchmark (`benches/apply.rs`).

use sea_orm::{ConnectionTrait, DbErr};
use tandem::db::Db;

/// The rows the seeded history belongs to.
pub struct History<'a> {
    pub program: &'a str,
    pub partner: &'a str,
    /// The webhook source (the deals' `source_id`).
    pub source: &'a str,
    /// The partner's referral code.
    pub code: &'a str,
    /// An endpoint that received every seeded event.
    pub endpoint: Option<&'a str>,
}

/// Seeds deals numbered `from + 1 ..= to` in one transaction (PostgreSQL: then ANALYZE, as
/// autovacuum does after a bulk load).
pub async fn seed_history(db: &Db, ids: &History<'_>, from: i64, to: i64) -> Result<(), DbErr> {
    let pg = db.is_postgres();
    let ts = if pg {
        "TIMESTAMPTZ '2026-01-01 00:00:00+00'"
    } else {
        "'2026-01-01T00:00:00+00:00'"
    };
    let json_empty = if pg { "'[]'::json" } else { "'[]'" };
    let json_data = if pg {
        "json_build_object('dealId', 'seed-' || i)"
    } else {
        "json_object('dealId', 'seed-' || i)"
    };
    let first = from + 1;
    let series = format!(
        "WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n WHERE i < {to})"
    );
    let History {
        program,
        partner,
        source,
        code,
        endpoint,
    } = ids;
    let mut statements = vec![
        format!(
            "INSERT INTO deals (id, program_id, source_id, external_id, name, amount, currency, \
             status, stage, closed_at, created_at, updated_at, company_domain, contact_emails, \
             referral_code, deleted, first_seen_at, last_applied_at) \
             {series} SELECT 'seed-' || i, '{program}', '{source}', 'seed-' || i, 'Seeded', \
             '1000.00', 'USD', 'WON', 'won', {ts}, {ts}, {ts}, 'seed-' || i || '.example', \
             {json_empty}, '{code}', FALSE, {ts}, {ts} FROM n"
        ),
        format!(
            "INSERT INTO attributions (deal_id, partner_id, referral_id, method, created_at, \
             updated_at) {series} SELECT 'seed-' || i, '{partner}', NULL, 'CODE', {ts}, {ts} FROM n"
        ),
        format!(
            "INSERT INTO referrals (id, program_id, partner_id, company_name, company_domain, \
             contact_name, contact_email, notes, status, duplicate_of_id, submitted_at, \
             updated_at) {series} SELECT 'seed-ref-' || i, '{program}', '{partner}', 'Seeded', \
             'seed-' || i || '.example', NULL, NULL, NULL, 'CONVERTED', NULL, {ts}, {ts} FROM n"
        ),
        format!(
            "INSERT INTO webhook_receipts (id, source_id, program_id, provider_event_id, \
             dedupe_key, payload, status, reason, deal_id, attempts, available_at_ms, \
             received_at, processed_at) {series} SELECT 'seed-rcpt-' || i, '{source}', \
             '{program}', 'seed-msg-' || i, 'seed-msg-' || i, '{{}}', 'APPLIED', NULL, \
             'seed-' || i, 1, NULL, {ts}, {ts} FROM n"
        ),
        format!(
            "INSERT INTO events (id, type, program_id, partner_id, data, created_at) \
             {series} SELECT 'evt_seed_' || i || '_' || k, \
             CASE k WHEN 0 THEN 'deal.attributed' ELSE 'deal.won' END, '{program}', \
             '{partner}', {json_data}, {ts} \
             FROM n CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1) AS kinds"
        ),
    ];
    if let Some(endpoint) = endpoint {
        statements.push(format!(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, \
             attempt, status_code, latency_ms, last_error, last_attempt_at, delivered_at, \
             next_attempt_at_ms, claim_token, created_at) \
             {series} SELECT 'seed-dlv-' || i || '_' || k, '{endpoint}', \
             'evt_seed_' || i || '_' || k, \
             CASE k WHEN 0 THEN 'deal.attributed' ELSE 'deal.won' END, 'SUCCEEDED', 1, 204, 3, \
             NULL, {ts}, {ts}, NULL, NULL, {ts} \
             FROM n CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1) AS kinds"
        ));
    }
    let tx = db.begin_write().await?;
    if pg {
        // Bulk load without per-row triggers and foreign-key checks (the rows are consistent
        // by construction): the referral counter trigger would update one row 250,000 times in
        // one transaction, each update walking the row's growing version chain.
        tx.execute_unprepared("SET LOCAL session_replication_role = replica")
            .await?;
        statements.push(format!(
            "INSERT INTO referral_counts (partner_id, total) VALUES ('{partner}', {count}) \
             ON CONFLICT (partner_id) DO UPDATE SET total = referral_counts.total + {count}",
            count = to - from
        ));
    }
    for sql in statements {
        tx.execute_unprepared(&sql).await?;
    }
    tx.commit().await?;
    if pg {
        db.execute_unprepared("ANALYZE").await?;
    }
    Ok(())
}
