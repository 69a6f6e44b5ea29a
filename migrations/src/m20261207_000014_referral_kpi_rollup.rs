//! Referral KPIs kept as the referrals change, so that a program's figures after a write read a
//! few rows instead of every referral (the console overview right after a change took ~300 ms
//! on the 200,000-referral benchmark program; DESIGN §16 asks < 50 ms):
//!
//! - `referral_days`: per program and UTC day of submission, how many referrals were submitted,
//!   are accepted (ACCEPTED, CONVERTED or EXPIRED), duplicate, and met or breached their lead SLA
//!   as recorded. Kept by triggers in the transaction that inserts, deletes or changes a
//!   referral, like `referral_counts`.
//! - `referrals.first_deal_hours`: hours from the submission to the creation of the first deal
//!   attributed to the referral (never negative; NULL without one), kept by triggers on
//!   attributions, deals' creation time and the referral's submission time.
//! - `referrals.engagement_hours`: hours from acceptance to engagement (never negative; NULL
//!   unless both are set), a generated column.
//!
//! The hours use the expressions the KPI scan used, so the medians are the same numbers; both
//! have an index led by the program and ordered by the hours, so a median is found by counting
//! and stepping to the middle. `idx_referrals_pending` finds a program's pending lead SLAs (the
//! ones past due count as breached before the sweep records it).

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000014_referral_kpi_rollup"
    }
}

const CREATE_TABLE: &str = "CREATE TABLE referral_days (\
     program_id VARCHAR NOT NULL, day VARCHAR NOT NULL, \
     submitted BIGINT NOT NULL, accepted BIGINT NOT NULL, duplicate BIGINT NOT NULL, \
     sla_met BIGINT NOT NULL, sla_breached BIGINT NOT NULL, \
     PRIMARY KEY (program_id, day))";

/// The counted categories, as SQL over a referral row `r` (`OLD`, `NEW` or a table alias).
fn categories(r: &str) -> [String; 4] {
    [
        format!("CASE WHEN {r}.status IN ('ACCEPTED', 'CONVERTED', 'EXPIRED') THEN 1 ELSE 0 END"),
        format!("CASE WHEN {r}.status = 'DUPLICATE' THEN 1 ELSE 0 END"),
        format!("CASE WHEN {r}.sla_state = 'MET' THEN 1 ELSE 0 END"),
        format!("CASE WHEN {r}.sla_state = 'BREACHED' THEN 1 ELSE 0 END"),
    ]
}

/// The UTC day of a referral's submission, `YYYY-MM-DD`.
fn day(backend: DatabaseBackend, r: &str) -> String {
    match backend {
        DatabaseBackend::Postgres => {
            format!("to_char({r}.submitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
        }
        // Times are stored as UTC text, `YYYY-MM-DD…`.
        _ => format!("substr({r}.submitted_at, 1, 10)"),
    }
}

/// Adds `r`'s referral to its day (an upsert).
fn add(backend: DatabaseBackend, r: &str) -> String {
    let [accepted, duplicate, met, breached] = categories(r);
    format!(
        "INSERT INTO referral_days \
           (program_id, day, submitted, accepted, duplicate, sla_met, sla_breached) \
         VALUES ({r}.program_id, {}, 1, {accepted}, {duplicate}, {met}, {breached}) \
         ON CONFLICT (program_id, day) DO UPDATE SET \
           submitted = referral_days.submitted + excluded.submitted, \
           accepted = referral_days.accepted + excluded.accepted, \
           duplicate = referral_days.duplicate + excluded.duplicate, \
           sla_met = referral_days.sla_met + excluded.sla_met, \
           sla_breached = referral_days.sla_breached + excluded.sla_breached",
        day(backend, r)
    )
}

/// Takes `r`'s referral off its day.
fn remove(backend: DatabaseBackend, r: &str) -> String {
    let [accepted, duplicate, met, breached] = categories(r);
    format!(
        "UPDATE referral_days SET submitted = submitted - 1, accepted = accepted - {accepted}, \
           duplicate = duplicate - {duplicate}, sla_met = sla_met - {met}, \
           sla_breached = sla_breached - {breached} \
         WHERE program_id = {r}.program_id AND day = {}",
        day(backend, r)
    )
}

/// Whether an update changes what the referral counts for: a category, its program or its
/// submission time. A status change within a category (ACCEPTED → CONVERTED → EXPIRED, SUBMITTED
/// → REJECTED) writes no day row, so it takes no lock on it.
fn recounted() -> String {
    let changed = categories("OLD")
        .iter()
        .zip(categories("NEW"))
        .map(|(old, new)| format!("{old} <> {new}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    format!("{changed} OR OLD.program_id <> NEW.program_id OR OLD.submitted_at <> NEW.submitted_at")
}

/// Hours from `from` to `to` (time expressions), never negative, NULL when either is.
fn hours(backend: DatabaseBackend, from: &str, to: &str) -> String {
    match backend {
        DatabaseBackend::Postgres => format!(
            "CASE WHEN {from} IS NULL OR {to} IS NULL THEN NULL \
             ELSE GREATEST(EXTRACT(EPOCH FROM ({to} - {from})) / 3600.0, 0)::float8 END"
        ),
        // SQLite's MAX of several arguments is NULL when one is.
        _ => format!("MAX((julianday({to}) - julianday({from})) * 24.0, 0.0)"),
    }
}

/// Sets `first_deal_hours` of the referrals `WHERE {which}` (over `referrals`) from their
/// attributed deals.
fn first_deal(backend: DatabaseBackend, which: &str) -> String {
    format!(
        "UPDATE referrals SET first_deal_hours = (SELECT {} FROM attributions a \
           JOIN deals d ON d.id = a.deal_id WHERE a.referral_id = referrals.id) \
         WHERE {which}",
        hours(backend, "referrals.submitted_at", "MIN(d.created_at)")
    )
}

/// Lowers `first_deal_hours` of `referral` to the hours to `deal` when those are fewer: a new
/// attribution reads one deal, not all of the referral's (a referral code may bring thousands).
fn first_deal_added(backend: DatabaseBackend, deal: &str, referral: &str) -> String {
    let added = format!(
        "(SELECT {} FROM deals d WHERE d.id = {deal})",
        hours(backend, "referrals.submitted_at", "d.created_at")
    );
    format!(
        "UPDATE referrals SET first_deal_hours = {added} WHERE id = {referral} \
         AND {added} IS NOT NULL AND (first_deal_hours IS NULL OR first_deal_hours > {added})"
    )
}

fn sqlite_statements() -> Vec<String> {
    let b = DatabaseBackend::Sqlite;
    vec![
        "ALTER TABLE referrals ADD COLUMN first_deal_hours REAL".into(),
        format!(
            "ALTER TABLE referrals ADD COLUMN engagement_hours REAL GENERATED ALWAYS AS ({}) VIRTUAL",
            hours(b, "accepted_at", "engaged_at")
        ),
        format!(
            "CREATE TRIGGER referral_days_insert AFTER INSERT ON referrals BEGIN {}; END",
            add(b, "NEW")
        ),
        format!(
            "CREATE TRIGGER referral_days_delete AFTER DELETE ON referrals BEGIN {}; END",
            remove(b, "OLD")
        ),
        format!(
            "CREATE TRIGGER referral_days_update \
             AFTER UPDATE OF status, sla_state, program_id, submitted_at ON referrals \
             WHEN {} BEGIN {}; {}; END",
            recounted(),
            remove(b, "OLD"),
            add(b, "NEW")
        ),
        format!(
            "CREATE TRIGGER referral_first_deal_submitted AFTER UPDATE OF submitted_at ON referrals \
             WHEN OLD.submitted_at IS NOT NEW.submitted_at BEGIN {}; END",
            first_deal(b, "id = NEW.id")
        ),
        format!(
            "CREATE TRIGGER referral_first_deal_attributed AFTER INSERT ON attributions \
             WHEN NEW.referral_id IS NOT NULL BEGIN {}; END",
            first_deal_added(b, "NEW.deal_id", "NEW.referral_id")
        ),
        format!(
            "CREATE TRIGGER referral_first_deal_unattributed AFTER DELETE ON attributions \
             WHEN OLD.referral_id IS NOT NULL BEGIN {}; END",
            first_deal(b, "id = OLD.referral_id")
        ),
        format!(
            "CREATE TRIGGER referral_first_deal_reattributed \
             AFTER UPDATE OF referral_id, deal_id ON attributions \
             WHEN OLD.referral_id IS NOT NEW.referral_id OR OLD.deal_id IS NOT NEW.deal_id \
             BEGIN {}; END",
            first_deal(b, "id IN (OLD.referral_id, NEW.referral_id)")
        ),
        format!(
            "CREATE TRIGGER referral_first_deal_created AFTER UPDATE OF created_at ON deals \
             WHEN OLD.created_at IS NOT NEW.created_at BEGIN {}; END",
            first_deal(
                b,
                "id IN (SELECT referral_id FROM attributions WHERE deal_id = NEW.id)"
            )
        ),
    ]
}

fn postgres_statements() -> Vec<String> {
    let b = DatabaseBackend::Postgres;
    vec![
        "ALTER TABLE referrals ADD COLUMN first_deal_hours DOUBLE PRECISION".into(),
        format!(
            "ALTER TABLE referrals ADD COLUMN engagement_hours DOUBLE PRECISION \
             GENERATED ALWAYS AS ({}) STORED",
            hours(b, "accepted_at", "engaged_at")
        ),
        format!(
            "CREATE FUNCTION tandem_referral_days() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF TG_OP IN ('DELETE', 'UPDATE') THEN {}; END IF; \
               IF TG_OP IN ('INSERT', 'UPDATE') THEN {}; END IF; \
               IF TG_OP = 'UPDATE' AND OLD.submitted_at IS DISTINCT FROM NEW.submitted_at THEN \
                 {}; \
               END IF; \
               RETURN NULL; \
             END $$",
            remove(b, "OLD"),
            add(b, "NEW"),
            first_deal(b, "id = NEW.id")
        ),
        "CREATE TRIGGER referral_days_insert_delete AFTER INSERT OR DELETE ON referrals \
         FOR EACH ROW EXECUTE FUNCTION tandem_referral_days()"
            .into(),
        format!(
            "CREATE TRIGGER referral_days_update \
             AFTER UPDATE OF status, sla_state, program_id, submitted_at ON referrals \
             FOR EACH ROW WHEN ({}) EXECUTE FUNCTION tandem_referral_days()",
            recounted()
        ),
        format!(
            "CREATE FUNCTION tandem_referral_first_deal() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF TG_TABLE_NAME = 'deals' THEN {}; RETURN NULL; END IF; \
               IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.referral_id IS NOT NULL THEN {}; END IF; \
               IF TG_OP = 'UPDATE' AND NEW.referral_id IS NOT NULL THEN {}; END IF; \
               IF TG_OP = 'INSERT' AND NEW.referral_id IS NOT NULL THEN {}; END IF; \
               RETURN NULL; \
             END $$",
            first_deal(
                b,
                "id IN (SELECT referral_id FROM attributions WHERE deal_id = NEW.id)"
            ),
            first_deal(b, "id = OLD.referral_id"),
            first_deal(b, "id = NEW.referral_id"),
            first_deal_added(b, "NEW.deal_id", "NEW.referral_id"),
        ),
        "CREATE TRIGGER referral_first_deal_attributions \
         AFTER INSERT OR DELETE ON attributions \
         FOR EACH ROW EXECUTE FUNCTION tandem_referral_first_deal()"
            .into(),
        "CREATE TRIGGER referral_first_deal_reattributed \
         AFTER UPDATE OF referral_id, deal_id ON attributions \
         FOR EACH ROW WHEN (OLD.referral_id IS DISTINCT FROM NEW.referral_id \
           OR OLD.deal_id IS DISTINCT FROM NEW.deal_id) \
         EXECUTE FUNCTION tandem_referral_first_deal()"
            .into(),
        "CREATE TRIGGER referral_first_deal_created AFTER UPDATE OF created_at ON deals \
         FOR EACH ROW WHEN (OLD.created_at IS DISTINCT FROM NEW.created_at) \
         EXECUTE FUNCTION tandem_referral_first_deal()"
            .into(),
    ]
}

/// Fills the day counts and the first-deal hours from the referrals already there.
fn backfill(backend: DatabaseBackend) -> [String; 2] {
    let [accepted, duplicate, met, breached] = categories("r");
    [
        format!(
            "INSERT INTO referral_days \
               (program_id, day, submitted, accepted, duplicate, sla_met, sla_breached) \
             SELECT r.program_id, {day}, COUNT(*), SUM({accepted}), SUM({duplicate}), \
               SUM({met}), SUM({breached}) FROM referrals r GROUP BY r.program_id, {day}",
            day = day(backend, "r")
        ),
        first_deal(
            backend,
            "id IN (SELECT referral_id FROM attributions WHERE referral_id IS NOT NULL)",
        ),
    ]
}

const INDEXES: [&str; 3] = [
    "CREATE INDEX idx_referrals_first_deal ON referrals \
     (program_id, first_deal_hours, submitted_at) WHERE first_deal_hours IS NOT NULL",
    "CREATE INDEX idx_referrals_engagement ON referrals \
     (program_id, engagement_hours, submitted_at) WHERE engagement_hours IS NOT NULL",
    "CREATE INDEX idx_referrals_pending ON referrals \
     (program_id, sla_due_at, submitted_at) WHERE sla_state = 'PENDING'",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        let backend = manager.get_database_backend();
        conn.execute_unprepared(CREATE_TABLE).await?;
        let statements = match backend {
            DatabaseBackend::Postgres => postgres_statements(),
            _ => sqlite_statements(),
        };
        for statement in statements.iter().chain(&backfill(backend)) {
            conn.execute_unprepared(statement).await?;
        }
        for statement in INDEXES {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for index in [
            "idx_referrals_first_deal",
            "idx_referrals_engagement",
            "idx_referrals_pending",
        ] {
            conn.execute_unprepared(&format!("DROP INDEX {index}"))
                .await?;
        }
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                conn.execute_unprepared(
                    "DROP TRIGGER referral_days_insert_delete ON referrals; \
                     DROP TRIGGER referral_days_update ON referrals; \
                     DROP TRIGGER referral_first_deal_attributions ON attributions; \
                     DROP TRIGGER referral_first_deal_reattributed ON attributions; \
                     DROP TRIGGER referral_first_deal_created ON deals; \
                     DROP FUNCTION tandem_referral_days(); \
                     DROP FUNCTION tandem_referral_first_deal()",
                )
                .await?;
            }
            _ => {
                for name in [
                    "referral_days_insert",
                    "referral_days_delete",
                    "referral_days_update",
                    "referral_first_deal_submitted",
                    "referral_first_deal_attributed",
                    "referral_first_deal_unattributed",
                    "referral_first_deal_reattributed",
                    "referral_first_deal_created",
                ] {
                    conn.execute_unprepared(&format!("DROP TRIGGER {name}"))
                        .await?;
                }
            }
        }
        conn.execute_unprepared(
            "ALTER TABLE referrals DROP COLUMN engagement_hours; \
             ALTER TABLE referrals DROP COLUMN first_deal_hours",
        )
        .await?;
        conn.execute_unprepared("DROP TABLE referral_days").await?;
        Ok(())
    }
}
