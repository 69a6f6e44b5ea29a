//! `db::insert_all`, the one batch insert: writes exactly what sea-orm's own insert writes, on
//! conflict skips (counting only the rows written) or updates the named columns, and keeps the
//! order of events across statements.

use chrono::{TimeZone, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder, sea_query::OnConflict};
use serde_json::json;
use tandem::db::{
    entities::{event, ledger_entry},
    insert_all,
    states::{HoldReason, LedgerEntryKind, LedgerEntryStatus},
};

use crate::{db_tests, helpers::TestApp};

db_tests!(
    rows_read_back_as_a_values_insert_writes_them,
    conflicts_skip_or_update,
    events_keep_their_order
);

fn entry(
    id: &str,
    program: &str,
    partner: &str,
    deal_seq: i32,
    held: bool,
) -> ledger_entry::ActiveModel {
    // Nanoseconds: see the check below.
    let at = Utc.timestamp_opt(1_780_000_000, 123_456_789).unwrap();
    ledger_entry::ActiveModel {
        id: Set(id.to_string()),
        partner_id: Set(partner.to_string()),
        program_id: Set(program.to_string()),
        deal_id: Set(Some(format!("deal-{deal_seq}"))),
        payout_id: Set(None),
        kind: Set(LedgerEntryKind::Accrual),
        amount_cents: Set(-9_007_199_254_740_993),
        currency: Set("EUR".into()),
        status: Set(if held {
            LedgerEntryStatus::Held
        } else {
            LedgerEntryStatus::Pending
        }),
        created_at: Set(at),
        available_at: Set(at + chrono::Duration::days(30)),
        updated_at: Set(at),
        deal_seq: Set(Some(deal_seq)),
        invoice_id: Set(None),
        invoice_seq: Set(None),
        note: Set(Some("quote ' and \"json\" \\ ünïcode".into())),
        hold_reason: Set(held.then_some(HoldReason::SelfReferral)),
        declines: Set(None),
    }
}

async fn program_and_partner(app: &TestApp) -> (String, String) {
    let program = app.create_program("Bulk").await;
    let partner = app.create_partner(&program, "Bulk partner").await;
    (program, partner)
}

/// Every row of `E`, in `order`.
async fn all_by<E: EntityTrait>(app: &TestApp, order: E::Column) -> Vec<E::Model> {
    E::find()
        .order_by_asc(order)
        .all(app.db.reads())
        .await
        .unwrap()
}

async fn rows_read_back_as_a_values_insert_writes_them(app: TestApp) {
    let (program, partner) = program_and_partner(&app).await;
    let tx = app.db.begin_write().await.unwrap();
    // Through insert_all and through sea-orm's insert.
    let bulk = vec![
        entry("le_bulk_1", &program, &partner, 1, true),
        entry("le_bulk_2", &program, &partner, 2, false),
    ];
    assert_eq!(insert_all(&*tx, bulk, None).await.unwrap(), 2);
    let plain = vec![
        entry("le_plain_1", &program, &partner, 3, true),
        entry("le_plain_2", &program, &partner, 4, false),
    ];
    ledger_entry::Entity::insert_many(plain)
        .exec_without_returning(&*tx)
        .await
        .unwrap();
    assert_eq!(
        insert_all(&*tx, Vec::<ledger_entry::ActiveModel>::new(), None)
            .await
            .unwrap(),
        0
    );
    tx.commit().await.unwrap();
    let rows = all_by::<ledger_entry::Entity>(&app, ledger_entry::Column::DealSeq).await;
    assert_eq!(rows.len(), 4);
    for (bulk, plain) in [(&rows[0], &rows[2]), (&rows[1], &rows[3])] {
        let mut same = plain.clone();
        same.id = bulk.id.clone();
        same.deal_id = bulk.deal_id.clone();
        same.deal_seq = bulk.deal_seq;
        assert_eq!(bulk, &same);
    }
    // PostgreSQL keeps microseconds; SQLite keeps the text.
    let nanos = if app.db.is_postgres() {
        123_456_000
    } else {
        123_456_789
    };
    assert_eq!(rows[0].created_at.timestamp_subsec_nanos(), nanos);
    assert_eq!(rows[0].hold_reason, Some(HoldReason::SelfReferral));
    assert_eq!(rows[1].hold_reason, None);
    assert_eq!(
        rows[0].note.as_deref(),
        Some("quote ' and \"json\" \\ ünïcode")
    );
}

async fn conflicts_skip_or_update(app: TestApp) {
    let (program, partner) = program_and_partner(&app).await;
    let tx = app.db.begin_write().await.unwrap();
    // Do nothing on conflict: only the new row is written and counted.
    let skip = OnConflict::column(ledger_entry::Column::Id)
        .do_nothing()
        .to_owned();
    let entries = vec![entry("le_1", &program, &partner, 1, false)];
    assert_eq!(
        insert_all(&*tx, entries, Some(skip.clone())).await.unwrap(),
        1
    );
    let mut changed = entry("le_1", &program, &partner, 1, false);
    changed.amount_cents = Set(5);
    let entries = vec![changed, entry("le_2", &program, &partner, 2, false)];
    assert_eq!(insert_all(&*tx, entries, Some(skip)).await.unwrap(), 1);
    // Update on conflict: the named columns take the new values, the others stay.
    let upsert = OnConflict::column(ledger_entry::Column::Id)
        .update_columns([
            ledger_entry::Column::Status,
            ledger_entry::Column::AmountCents,
        ])
        .to_owned();
    let mut first = entry("le_2", &program, &partner, 2, true);
    first.amount_cents = Set(700);
    first.currency = Set("USD".into());
    let entries = vec![first, entry("le_3", &program, &partner, 3, false)];
    insert_all(&*tx, entries, Some(upsert)).await.unwrap();
    tx.commit().await.unwrap();
    let rows = all_by::<ledger_entry::Entity>(&app, ledger_entry::Column::Id).await;
    let got: Vec<(String, i64, LedgerEntryStatus, String)> = rows
        .into_iter()
        .map(|r| (r.id, r.amount_cents, r.status, r.currency))
        .collect();
    let big = -9_007_199_254_740_993;
    assert_eq!(
        got,
        vec![
            ("le_1".into(), big, LedgerEntryStatus::Pending, "EUR".into()),
            ("le_2".into(), 700, LedgerEntryStatus::Held, "EUR".into()),
            ("le_3".into(), big, LedgerEntryStatus::Pending, "EUR".into()),
        ]
    );
}

async fn events_keep_their_order(app: TestApp) {
    let (program, partner) = program_and_partner(&app).await;
    let before = app.count_rows("events").await;
    let events: Vec<event::ActiveModel> = (0..1_200)
        .map(|n| {
            tandem::domain::events::new_event(
                tandem::domain::events::EventType::CommissionAccrued,
                &program,
                Some(&partner),
                json!({ "n": n, "nested": { "list": [n, null, "x"] } }),
            )
        })
        .collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    let tx = app.db.begin_write().await.unwrap();
    tandem::domain::events::record_all(&*tx, events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let stored = all_by::<event::Entity>(&app, event::Column::Seq).await;
    let stored = &stored[before as usize..];
    assert_eq!(stored.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(stored[7].data["nested"], json!({ "list": [7, null, "x"] }));
    assert_eq!(stored[7].data["partnerId"], json!(partner));
    if app.db.is_postgres() {
        // The column default (the writing transaction) applies to columns not given.
        assert!(stored.iter().all(|e| e.tx_id.is_some_and(|t| t > 0)));
        assert!(stored.windows(2).all(|w| w[0].tx_id == w[1].tx_id));
    }
}
