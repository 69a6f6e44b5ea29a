//! Stripe Connect payouts (DESIGN §14): one `POST /v1/transfers` per `STRIPE_CONNECT` payout of
//! a run, form-encoded as Stripe's API is, `amount` in the currency's minor units, the payout
//! id as `Idempotency-Key` (so a run sent again — after a crash, a timeout, a second click —
//! never pays twice: Stripe answers a replay with the first response), 429 and 5xx retried
//! with backoff within a bounded number of attempts. Stripe's error objects become the payout's
//! failure.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::{
    db::{
        Db,
        entities::{payout, payout_run},
        states::{PayoutMethodKind, PayoutRunStatus, PayoutStatus},
    },
    domain::{
        commission::from_cents,
        events::{self, EventType},
        ledger,
        payout_methods::MethodDetails,
        payout_runs::{find_run, payouts_of},
        secrets::SecretKey,
    },
    error::{ApiError, ApiResult},
};

/// Attempts per transfer (the first and the retries of 429 / 5xx / network errors).
const ATTEMPTS: u32 = 4;

/// A Stripe API client for transfers.
pub struct StripeTransfers {
    client: reqwest::Client,
    base: String,
    key: SecretString,
    /// First retry delay (doubled each retry).
    base_delay: Duration,
}

impl std::fmt::Debug for StripeTransfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeTransfers")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Why a transfer was not created.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferFailure {
    /// Stripe's `error.code` (or `error.type`), or `network` / `http_<status>`.
    pub code: String,
    /// Stripe's message, or what went wrong.
    pub message: String,
}

impl StripeTransfers {
    /// A client for `base` (Stripe's API, or a local stand-in) with the secret `key`.
    pub fn new(base: &str, key: &str) -> anyhow::Result<StripeTransfers> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(StripeTransfers {
            client,
            base: base.trim_end_matches('/').to_string(),
            key: SecretString::from(key.to_string()),
            base_delay: Duration::from_millis(250),
        })
    }

    /// Creates a transfer (or, for a key already used with the same parameters, gets the
    /// first response again); returns the transfer id.
    pub async fn transfer(
        &self,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<String, TransferFailure> {
        let mut delay = self.base_delay;
        let mut last = TransferFailure {
            code: "network".into(),
            message: "no attempt made".into(),
        };
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .client
                .post(format!("{}/v1/transfers", self.base))
                .bearer_auth(self.key.expose_secret())
                .header("Idempotency-Key", idempotency_key)
                .form(form)
                .send()
                .await;
            match sent {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if status.is_success() {
                        return body["id"]
                            .as_str()
                            .map(str::to_string)
                            .ok_or(TransferFailure {
                                code: "malformed_response".into(),
                                message: "Stripe's answer carries no transfer id".into(),
                            });
                    }
                    let error = &body["error"];
                    last = TransferFailure {
                        code: error["code"]
                            .as_str()
                            .or(error["type"].as_str())
                            .map_or_else(|| format!("http_{}", status.as_u16()), str::to_string),
                        message: error["message"]
                            .as_str()
                            .map_or_else(|| format!("Stripe answered {status}"), str::to_string),
                    };
                    let retryable = status.as_u16() == 429 || status.is_server_error();
                    if !retryable {
                        return Err(last);
                    }
                    if let Some(secs) = retry_after {
                        delay = delay.max(Duration::from_secs(secs.min(30)));
                    }
                }
                Err(e) => {
                    last = TransferFailure {
                        code: "network".into(),
                        message: format!("Stripe could not be reached: {}", e.without_url()),
                    };
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(last)
    }
}

/// `amount` in `currency`'s minor units from cents (2-place amounts), or `None` when it cannot
/// be expressed (cents in a zero-decimal currency).
pub fn minor_units(cents: i64, currency: &str) -> Option<i64> {
    match tandem_connectors::money::minor_unit_exponent(currency) {
        0 => (cents % 100 == 0).then_some(cents / 100),
        3 => cents.checked_mul(10),
        _ => Some(cents),
    }
}

async fn record_outcome(
    db: &Db,
    p: payout::Model,
    outcome: Result<String, TransferFailure>,
) -> ApiResult<()> {
    let now = Utc::now();
    let tx = db.begin_write().await?;
    let (program_id, partner_id) = (p.program_id.clone(), p.partner_id.clone());
    let total = from_cents(p.total_cents).to_string();
    let currency = p.currency.clone();
    let payout_id = p.id.clone();
    match outcome {
        Ok(transfer) => {
            ledger::pay_payout(&*tx, p, &transfer, now).await?;
            events::record(
                &*tx,
                EventType::PayoutSent,
                &program_id,
                Some(&partner_id),
                json!({"payoutId": payout_id, "transferId": transfer, "total": total,
                       "currency": currency}),
            )
            .await?;
        }
        Err(failure) => {
            let mut row: payout::ActiveModel = p.into();
            row.status = Set(PayoutStatus::Failed);
            row.failure = Set(Some(format!("{}: {}", failure.code, failure.message)));
            events::record(
                &*tx,
                EventType::PayoutFailed,
                &program_id,
                Some(&partner_id),
                json!({"payoutId": payout_id, "code": failure.code, "message": failure.message,
                       "total": total, "currency": currency}),
            )
            .await?;
            row.update(&*tx).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// `sendPayoutRun` (admins): creates a Stripe transfer for each unpaid `STRIPE_CONNECT` payout
/// of the run (`FAILED` ones are tried again), one after the other, recording each outcome as
/// it comes (`payout.sent`, `payout.failed`). Safe to call again at any point: the payout id is
/// the idempotency key.
pub async fn send_payout_run(
    db: &Db,
    key: &SecretKey,
    stripe: Option<&StripeTransfers>,
    run_id: &str,
) -> ApiResult<payout_run::Model> {
    let stripe = stripe.ok_or_else(|| {
        ApiError::Conflict(
            "Stripe is not configured: set TANDEM_STRIPE_API_KEY to send Stripe Connect payouts"
                .into(),
        )
    })?;
    let run = find_run(db.reads(), run_id).await?;
    let pending: Vec<payout::Model> = payouts_of(db.reads(), &run.id)
        .await?
        .into_iter()
        .filter(|p| p.method_kind == Some(PayoutMethodKind::StripeConnect))
        .filter(|p| p.status != PayoutStatus::Paid)
        .collect();
    if pending.is_empty() {
        return Err(ApiError::Conflict(
            "the run has no unpaid Stripe Connect payout".into(),
        ));
    }
    let tx = db.begin_write().await?;
    ledger::set_run_status(&*tx, &run.id, PayoutRunStatus::Sending).await?;
    tx.commit().await?;
    for p in pending {
        let destination = match p
            .method_details
            .as_deref()
            .map(|sealed| MethodDetails::open(key, sealed))
            .transpose()?
        {
            Some(MethodDetails::StripeConnect { account_id }) => account_id,
            _ => {
                return Err(ApiError::Internal(format!(
                    "payout {} has no Stripe account",
                    p.id
                )));
            }
        };
        let outcome = match minor_units(p.total_cents, &p.currency) {
            Some(amount) => {
                let form = [
                    ("amount", amount.to_string()),
                    ("currency", p.currency.to_ascii_lowercase()),
                    ("destination", destination),
                    ("transfer_group", run.id.clone()),
                    ("metadata[payout_id]", p.id.clone()),
                ];
                // A new request after a reversal; otherwise the payout id, so that sending
                // again replays the first answer instead of paying twice.
                let key = match p.send_generation.unwrap_or(0) {
                    0 => p.id.clone(),
                    n => format!("{}-{n}", p.id),
                };
                stripe.transfer(&key, &form).await
            }
            None => Err(TransferFailure {
                code: "amount_not_representable".into(),
                message: format!("{} has no minor unit below 1", p.currency),
            }),
        };
        record_outcome(db, p, outcome).await?;
    }
    // The run's status from all its payouts (DRAFT again when none was paid or failed).
    let tx = db.begin_write().await?;
    ledger::refresh_run_status(&*tx, &run.id, Some(PayoutRunStatus::Draft)).await?;
    tx.commit().await?;
    find_run(db.reads(), &run.id).await
}

/// Reopens the payout a reversed transfer paid (`transfer.reversed` from a STRIPE source):
/// the payout is `FAILED` with the reversal noted and its entries APPROVED again, so that the
/// next `sendPayoutRun` can pay it. Returns whether a payout matched.
pub async fn reopen_reversed(
    conn: &impl ConnectionTrait,
    transfer_id: &str,
    events_out: &mut Vec<crate::db::entities::event::ActiveModel>,
) -> Result<bool, sea_orm::DbErr> {
    let Some(found) = payout::Entity::find()
        .filter(payout::Column::Reference.eq(transfer_id))
        .filter(payout::Column::Status.eq(PayoutStatus::Paid))
        .one(conn)
        .await?
    else {
        return Ok(false);
    };
    ledger::set_entries_of_payout(
        conn,
        &found.id,
        crate::db::states::LedgerEntryStatus::Approved,
        Utc::now(),
    )
    .await?;
    events_out.push(events::new_event(
        EventType::PayoutFailed,
        &found.program_id,
        Some(&found.partner_id),
        json!({"payoutId": found.id, "code": "transfer_reversed",
               "message": format!("Stripe transfer {transfer_id} was reversed"),
               "total": from_cents(found.total_cents).to_string(), "currency": found.currency}),
    ));
    let found_generation = found.send_generation.unwrap_or(0);
    let mut row: payout::ActiveModel = found.into();
    let generation = found_generation + 1;
    row.status = Set(PayoutStatus::Failed);
    row.failure = Set(Some(format!(
        "transfer_reversed: {transfer_id} was reversed"
    )));
    row.paid_at = Set(None);
    row.send_generation = Set(Some(generation));
    let row = row.update(conn).await?;
    if let Some(run_id) = &row.run_id {
        ledger::refresh_run_status(conn, run_id, None).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_go_out_in_minor_units() {
        assert_eq!(minor_units(12_345, "EUR"), Some(12_345));
        assert_eq!(minor_units(120_000, "JPY"), Some(1_200));
        assert_eq!(minor_units(120_050, "JPY"), None);
        assert_eq!(minor_units(1_234, "KWD"), Some(12_340));
    }
}
