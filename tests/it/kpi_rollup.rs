//! The referral figures the database keeps for the KPIs (migration `m20261207_000014`: the
//! day counts `referral_days`, `referrals.first_deal_hours` and `engagement_hours`) agree with
//! the referrals themselves after every kind of write: inserts, status and SLA changes, a
//! referral moved to another day or program or deleted, attributions added, moved and removed,
//! a deal's creation time changed. And the KPIs computed from them equal the figures computed
//! here, in Rust, from the rows, for ranges of whole days, of part days and for one partner.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, Statement, Value};
use serde_json::json;
use tandem::{
    db::{
        entities::{attribution, deal, referral},
        states::{AttributionMethod, DealStatus, ReferralStatus, SlaState},
    },
    domain::{
        ids::new_id,
        kpis::{KpiQuery, kpis},
    },
};

use crate::{db_tests, helpers::TestApp};

db_tests!(kept_referral_figures_follow_every_write);

/// A small deterministic generator (the test must fail the same way every time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const STATUSES: [ReferralStatus; 7] = [
    ReferralStatus::Submitted,
    ReferralStatus::Conflict,
    ReferralStatus::Accepted,
    ReferralStatus::Duplicate,
    ReferralStatus::Rejected,
    ReferralStatus::Converted,
    ReferralStatus::Expired,
];

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap()
}

async fn write(app: &TestApp, sql: &str, values: Vec<Value>) {
    app.db.execute_write(sql.into(), values).await.unwrap();
}

/// `?n` or `$n`.
fn p(app: &TestApp, n: usize) -> String {
    app.db.numbered(n)
}

async fn kept_referral_figures_follow_every_write(app: TestApp) {
    let program = app.create_program("Kept figures").await;
    let other = app.create_program("Elsewhere").await;
    let partners = [
        app.create_partner(&program, "Alpha").await,
        app.create_partner(&program, "Beta").await,
    ];
    let stranger = app.create_partner(&other, "Gamma").await;
    let now = Utc::now();
    let mut rng = Lcg(7);

    // 80 referrals over ten days, at any hour, in every status and SLA state.
    let mut referrals = Vec::new();
    let mut rows = Vec::new();
    for i in 0..80u64 {
        let submitted = base()
            + Duration::minutes((rng.next(10 * 24 * 60)) as i64)
            + Duration::microseconds(rng.next(1_000_000) as i64);
        let accepted =
            (rng.next(3) > 0).then(|| submitted + Duration::minutes(rng.next(600) as i64));
        // Engaged now and then, sometimes before the acceptance (counts 0 hours).
        let engaged = match rng.next(4) {
            0 => Some(submitted + Duration::minutes(rng.next(3000) as i64)),
            1 => Some(submitted - Duration::minutes(5)),
            _ => None,
        };
        let (sla_state, sla_due) = match rng.next(5) {
            0 => (None, None),
            1 => (Some(SlaState::Pending), Some(now - Duration::hours(1))),
            2 => (
                Some(SlaState::Pending),
                Some(now + Duration::hours(rng.next(100) as i64 + 1)),
            ),
            3 => (Some(SlaState::Met), Some(submitted + Duration::hours(48))),
            _ => (
                Some(SlaState::Breached),
                Some(submitted + Duration::hours(48)),
            ),
        };
        let id = new_id();
        referrals.push(id.clone());
        rows.push(referral::ActiveModel {
            id: Set(id),
            program_id: Set(program.clone()),
            partner_id: Set(partners[(i % 2) as usize].clone()),
            company_name: Set(format!("Company {i}")),
            company_domain: Set(Some(format!("company{i}.example"))),
            status: Set(STATUSES[rng.next(7) as usize]),
            submitted_at: Set(submitted),
            updated_at: Set(submitted),
            accepted_at: Set(accepted),
            engaged_at: Set(engaged),
            sla_state: Set(sla_state),
            sla_due_at: Set(sla_due),
            ..Default::default()
        });
    }
    // Two of them in another program: never counted here.
    for i in 0..2 {
        rows.push(referral::ActiveModel {
            id: Set(new_id()),
            program_id: Set(other.clone()),
            partner_id: Set(stranger.clone()),
            company_name: Set(format!("Elsewhere {i}")),
            status: Set(ReferralStatus::Accepted),
            submitted_at: Set(base() + Duration::hours(30)),
            updated_at: Set(base()),
            ..Default::default()
        });
    }
    let tx = app.db.begin_write().await.unwrap();
    referral::Entity::insert_many(rows)
        .exec(&*tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Deals created at any time around the submissions; a third of the referrals get one or
    // two, in one statement.
    let deals = (0..40u64)
        .map(|i| {
            let referral = (i % 5 != 4).then(|| referrals[rng.next(80) as usize].clone());
            let created = base() + Duration::minutes(rng.next(12 * 24 * 60) as i64);
            (i, referral, created)
        })
        .collect();
    attribute(&app, &program, &partners[0], deals, now).await;
    agree(&app, &program, &partners).await;

    // Every kind of change, each in its own statement.
    let (p1, p2) = (p(&app, 1), p(&app, 2));
    for (i, referral) in referrals.iter().enumerate().take(30) {
        let id = Value::from(referral.clone());
        match i % 6 {
            0 => {
                let status = STATUSES[rng.next(7) as usize].as_str();
                write(
                    &app,
                    &format!("UPDATE referrals SET status = {p1} WHERE id = {p2}"),
                    vec![status.into(), id],
                )
                .await
            }
            1 => {
                write(
                    &app,
                    &format!("UPDATE referrals SET sla_state = {p1} WHERE id = {p2}"),
                    vec!["BREACHED".into(), id],
                )
                .await
            }
            2 => {
                let moved = base() + Duration::minutes(rng.next(10 * 24 * 60) as i64);
                write(
                    &app,
                    &format!("UPDATE referrals SET submitted_at = {p1} WHERE id = {p2}"),
                    vec![moved.into(), id],
                )
                .await
            }
            3 => {
                let engaged = base() + Duration::minutes(rng.next(10 * 24 * 60) as i64);
                write(
                    &app,
                    &format!(
                        "UPDATE referrals SET engaged_at = {p1}, sla_state = 'MET' WHERE id = {p2}"
                    ),
                    vec![engaged.into(), id],
                )
                .await
            }
            4 => {
                write(
                    &app,
                    &format!("UPDATE attributions SET referral_id = {p1} WHERE referral_id = {p2}"),
                    vec![referrals[79 - i].clone().into(), id],
                )
                .await
            }
            _ => write(
                &app,
                &format!(
                    "UPDATE referrals SET status = 'DUPLICATE', accepted_at = NULL WHERE id = {p1}"
                ),
                vec![id],
            )
            .await,
        }
    }
    agree(&app, &program, &partners).await;
    // More deals for referrals that have some, one statement each: earlier and later ones.
    for (i, days) in [(40u64, -3i64), (41, 9), (42, -1), (43, 20)] {
        let referral = first_attributed(&app).await;
        let created = base() + Duration::days(days);
        attribute(
            &app,
            &program,
            &partners[0],
            vec![(i, Some(referral), created)],
            now,
        )
        .await;
    }
    agree(&app, &program, &partners).await;
    // A referral moved to the other program, one deleted (with its attributions), an
    // attribution removed, deals' creation times moved.
    write(
        &app,
        &format!(
            "UPDATE referrals SET program_id = {p1}, partner_id = {p2} WHERE id = {}",
            p(&app, 3)
        ),
        vec![
            other.clone().into(),
            stranger.clone().into(),
            referrals[40].clone().into(),
        ],
    )
    .await;
    write(
        &app,
        &format!("DELETE FROM attributions WHERE referral_id = {p1}"),
        vec![referrals[41].clone().into()],
    )
    .await;
    write(
        &app,
        &format!("DELETE FROM referrals WHERE id = {p1}"),
        vec![referrals[41].clone().into()],
    )
    .await;
    write(&app, "DELETE FROM attributions WHERE deal_id IN (SELECT deal_id FROM attributions WHERE referral_id IS NOT NULL ORDER BY deal_id LIMIT 3)", vec![]).await;
    write(&app, &format!("UPDATE deals SET created_at = {p1} WHERE external_id IN ('kept-1', 'kept-2', 'kept-3', 'kept-7')"), vec![(base() - Duration::days(2)).into()]).await;
    agree(&app, &program, &partners).await;
}

/// Inserts the deals `(number, referral, created)` and their attributions (to `referral`, or
/// to none), in one transaction.
async fn attribute(
    app: &TestApp,
    program: &str,
    partner: &str,
    deals: Vec<(u64, Option<String>, DateTime<Utc>)>,
    now: DateTime<Utc>,
) {
    let mut rows = Vec::new();
    let mut attributions = Vec::new();
    for (i, referral, created) in deals {
        let id = new_id();
        rows.push(deal::ActiveModel {
            id: Set(id.clone()),
            program_id: Set(program.to_string()),
            source_id: Set("kept".into()),
            external_id: Set(format!("kept-{i}")),
            name: Set(format!("Deal {i}")),
            amount: Set("100.00".into()),
            currency: Set("USD".into()),
            status: Set(DealStatus::Open),
            created_at: Set(created),
            updated_at: Set(created),
            contact_emails: Set(json!([])),
            deleted: Set(false),
            first_seen_at: Set(now),
            last_applied_at: Set(now),
            ..Default::default()
        });
        attributions.push(attribution::ActiveModel {
            deal_id: Set(id),
            partner_id: Set(partner.to_string()),
            referral_id: Set(referral),
            method: Set(AttributionMethod::Domain),
            created_at: Set(now),
            updated_at: Set(now),
        });
    }
    let tx = app.db.begin_write().await.unwrap();
    deal::Entity::insert_many(rows).exec(&*tx).await.unwrap();
    attribution::Entity::insert_many(attributions)
        .exec(&*tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A referral with an attributed deal.
async fn first_attributed(app: &TestApp) -> String {
    query(
        app,
        "SELECT MIN(referral_id) AS id FROM attributions".into(),
        vec![],
    )
    .await[0]
        .try_get("", "id")
        .unwrap()
}

/// One referral as the KPIs see it.
struct Row {
    partner: String,
    submitted: DateTime<Utc>,
    status: String,
    sla_state: Option<String>,
    sla_due: Option<DateTime<Utc>>,
    accepted: Option<DateTime<Utc>>,
    engaged: Option<DateTime<Utc>>,
    first_deal: Option<DateTime<Utc>>,
}

fn hours(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap() as f64 / 3_600_000_000.0).max(0.0)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    })
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-4,
        (a, b) => a.is_none() && b.is_none(),
    }
}

async fn query(app: &TestApp, sql: String, values: Vec<Value>) -> Vec<sea_orm::QueryResult> {
    app.db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            app.db.backend(),
            sql,
            values,
        ))
        .await
        .unwrap()
}

/// The kept figures equal what the rows say.
async fn agree(app: &TestApp, program: &str, partners: &[String]) {
    // The day counts, day by day, against a GROUP BY over the referrals.
    let day = if app.db.is_postgres() {
        "to_char(submitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    } else {
        "substr(submitted_at, 1, 10)"
    };
    let counted = |table_sql: String| async move {
        let mut days = BTreeMap::new();
        for row in query(app, table_sql, vec![]).await {
            let figures: Vec<i64> = ["n", "a", "d", "m", "b"]
                .iter()
                .map(|c| row.try_get("", c).unwrap())
                .collect();
            if figures.iter().any(|n| *n != 0) {
                let key: (String, String) = (
                    row.try_get("", "p").unwrap(),
                    row.try_get("", "day").unwrap(),
                );
                days.insert(key, figures);
            }
        }
        days
    };
    let kept = counted(
        "SELECT program_id AS p, day, submitted AS n, accepted AS a, duplicate AS d, \
         sla_met AS m, sla_breached AS b FROM referral_days"
            .into(),
    )
    .await;
    let read = counted(format!(
        "SELECT program_id AS p, {day} AS day, COUNT(*) AS n, \
         SUM(CASE WHEN status IN ('ACCEPTED', 'CONVERTED', 'EXPIRED') THEN 1 ELSE 0 END) AS a, \
         SUM(CASE WHEN status = 'DUPLICATE' THEN 1 ELSE 0 END) AS d, \
         SUM(CASE WHEN sla_state = 'MET' THEN 1 ELSE 0 END) AS m, \
         SUM(CASE WHEN sla_state = 'BREACHED' THEN 1 ELSE 0 END) AS b \
         FROM referrals GROUP BY program_id, {day}"
    ))
    .await;
    assert_eq!(kept, read, "referral_days against the referrals");

    // The rows, with their first deal read through the attributions.
    let first_deals: BTreeMap<String, DateTime<Utc>> = query(
        app,
        "SELECT a.referral_id AS id, MIN(d.created_at) AS first FROM attributions a \
         JOIN deals d ON d.id = a.deal_id WHERE a.referral_id IS NOT NULL GROUP BY a.referral_id"
            .into(),
        vec![],
    )
    .await
    .into_iter()
    .map(|row| {
        (
            row.try_get("", "id").unwrap(),
            row.try_get("", "first").unwrap(),
        )
    })
    .collect();
    let mut rows = Vec::new();
    for row in query(
        app,
        format!(
            "SELECT id, partner_id, submitted_at, status, sla_state, sla_due_at, accepted_at, \
             engaged_at, first_deal_hours, engagement_hours FROM referrals WHERE program_id = {}",
            app.db.numbered(1)
        ),
        vec![program.into()],
    )
    .await
    {
        let id: String = row.try_get("", "id").unwrap();
        let r = Row {
            partner: row.try_get("", "partner_id").unwrap(),
            submitted: row.try_get("", "submitted_at").unwrap(),
            status: row.try_get("", "status").unwrap(),
            sla_state: row.try_get("", "sla_state").unwrap(),
            sla_due: row.try_get("", "sla_due_at").unwrap(),
            accepted: row.try_get("", "accepted_at").unwrap(),
            engaged: row.try_get("", "engaged_at").unwrap(),
            first_deal: first_deals.get(&id).copied(),
        };
        let kept: Option<f64> = row.try_get("", "first_deal_hours").unwrap();
        let expected = r.first_deal.map(|first| hours(r.submitted, first));
        assert!(
            close(kept, expected),
            "first_deal_hours of {id}: {kept:?}, expected {expected:?}"
        );
        let kept: Option<f64> = row.try_get("", "engagement_hours").unwrap();
        let expected = r.accepted.zip(r.engaged).map(|(a, e)| hours(a, e));
        assert!(
            close(kept, expected),
            "engagement_hours of {id}: {kept:?}, expected {expected:?}"
        );
        rows.push(r);
    }

    // The KPIs for ranges of whole days, part days, within one day, all time, one partner.
    let at =
        |days: i64, minutes: i64| Some(base() + Duration::days(days) + Duration::minutes(minutes));
    let ranges = [
        (None, None),
        (at(2, 0), None),
        (None, at(6, 0)),
        (at(2, 0), at(6, 0)),
        (at(1, 317), at(7, 901)),
        (at(3, 60), at(3, 600)),
        (at(3, 60), at(4, 0)),
        (at(-5, 0), at(30, 0)),
    ];
    let now = Utc::now();
    for partner in [None, Some(partners[1].clone())] {
        for (from, to) in ranges {
            let q = KpiQuery {
                program_id: program.to_string(),
                partner_id: partner.clone(),
                from,
                to,
                leaderboard_size: 5,
            };
            let got = kpis(&app.db, &q).await.unwrap();
            let chosen: Vec<&Row> = rows
                .iter()
                .filter(|r| partner.as_ref().is_none_or(|p| &r.partner == p))
                .filter(|r| from.is_none_or(|f| r.submitted >= f))
                .filter(|r| to.is_none_or(|t| r.submitted < t))
                .collect();
            let count = |f: &dyn Fn(&Row) -> bool| chosen.iter().filter(|r| f(r)).count() as i64;
            let accepted =
                count(&|r| ["ACCEPTED", "CONVERTED", "EXPIRED"].contains(&r.status.as_str()));
            let met = count(&|r| r.sla_state.as_deref() == Some("MET"));
            let breached = count(&|r| {
                r.sla_state.as_deref() == Some("BREACHED")
                    || (r.sla_state.as_deref() == Some("PENDING")
                        && r.sla_due.is_some_and(|d| d <= now))
            });
            let label = format!("{partner:?} {from:?}..{to:?}");
            assert_eq!(got.referrals_submitted, chosen.len() as i64, "{label}");
            assert_eq!(got.referrals_accepted, accepted, "{label}");
            assert_eq!(
                got.referrals_duplicate,
                count(&|r| r.status == "DUPLICATE"),
                "{label}"
            );
            let rate = (met + breached > 0).then(|| met as f64 / (met + breached) as f64);
            assert!(
                close(got.sla_met_rate, rate),
                "{label}: {:?} {rate:?}",
                got.sla_met_rate
            );
            let first = median(
                chosen
                    .iter()
                    .filter_map(|r| r.first_deal.map(|f| hours(r.submitted, f)))
                    .collect(),
            );
            assert!(
                close(got.median_hours_to_first_deal, first),
                "{label}: {:?} {first:?}",
                got.median_hours_to_first_deal
            );
            let engaged = median(
                chosen
                    .iter()
                    .filter_map(|r| r.accepted.zip(r.engaged).map(|(a, e)| hours(a, e)))
                    .collect(),
            );
            assert!(
                close(got.median_hours_to_engagement, engaged),
                "{label}: {:?} {engaged:?}",
                got.median_hours_to_engagement
            );
        }
    }
}
