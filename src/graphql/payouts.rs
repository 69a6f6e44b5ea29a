//! Reward distribution (DESIGN §14): partners' payout methods, payout runs and their exports.

use async_graphql::{Context, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::{
    db::entities::payout_run,
    domain::{
        commission::from_cents,
        payout_methods::{PayoutMethod, SetPayoutMethodInput, set_payout_method},
        payout_runs::{
            self, CreatePayoutRunInput, ExportPayoutRunInput, MarkPayoutRunPaidInput, PayoutExport,
            PayoutRunStatus, SetProgramPayoutAccountInput, Skipped,
        },
        programs::find_program,
    },
    graphql::{admin_db, caller, commissions::Payout, outbound::OutboundContext, types::Program},
};

/// One payment of a program's partners in one currency: a payout per partner, and the
/// partners left out with the reason.
pub struct PayoutRun(pub payout_run::Model);

/// One payment of a program's partners in one currency: a payout per partner, and the
/// partners left out with the reason.
#[Object]
impl PayoutRun {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The program.
    async fn program_id(&self) -> ID {
        ID(self.0.program_id.clone())
    }
    /// ISO 4217 code.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// Entries available at this time were paid.
    async fn cutoff(&self) -> DateTime<Utc> {
        self.0.cutoff
    }
    /// Partners below this amount were left for a later run.
    async fn minimum_amount(&self) -> Decimal {
        from_cents(self.0.minimum_cents)
    }
    /// `DRAFT` until paid: `PAID` when every payout is, `PARTIALLY_PAID` when some are.
    async fn status(&self) -> PayoutRunStatus {
        self.0.status
    }
    /// The sum of its payouts.
    async fn total(&self) -> Decimal {
        from_cents(self.0.total_cents)
    }
    /// How many payouts it made.
    async fn payout_count(&self) -> i32 {
        self.0.payout_count
    }
    /// Its payouts, by partner.
    async fn payouts(&self, ctx: &Context<'_>) -> Result<Vec<Payout>> {
        let db = admin_db(ctx).await?;
        Ok(payout_runs::payouts_of(db.reads(), &self.0.id)
            .await?
            .into_iter()
            .map(Payout)
            .collect())
    }
    /// Partners with money to pay that the run left out, and why.
    async fn skipped(&self) -> Result<Vec<Skipped>> {
        Ok(payout_runs::skipped_of(&self.0)?)
    }
    /// When it was made.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When its status last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// `Partner.payoutMethod`: the partner's method, masked (admins and the partner itself).
pub async fn partner_payout_method(
    ctx: &Context<'_>,
    partner_id: &str,
) -> Result<Option<PayoutMethod>> {
    let (principal, db) = caller(ctx).await?;
    principal.require_admin_or_partner()?;
    Ok(
        crate::domain::payout_methods::payout_method_of(db, partner_id)
            .await?
            .map(PayoutMethod::from),
    )
}

/// Input of `sendPayoutRun`.
#[derive(async_graphql::InputObject)]
pub struct SendPayoutRunInput {
    /// The run.
    pub id: ID,
}

/// Result of `setPayoutMethod`.
#[derive(SimpleObject)]
pub struct SetPayoutMethodPayload {
    /// The method as stored, masked.
    pub payout_method: PayoutMethod,
}

/// Result of `createPayoutRun` and `markPayoutRunPaid`.
#[derive(SimpleObject)]
pub struct PayoutRunPayload {
    /// The run.
    pub payout_run: PayoutRun,
}

/// Result of `setProgramPayoutAccount`.
#[derive(SimpleObject)]
pub struct ProgramPayload {
    /// The program.
    pub program: Program,
}

/// Result of `exportPayoutRun`.
#[derive(SimpleObject)]
pub struct ExportPayoutRunPayload {
    /// The file.
    pub export: PayoutExport,
}

/// Payout queries.
#[derive(Default)]
pub struct PayoutQuery;

/// Payout queries.
#[Object]
impl PayoutQuery {
    /// A program's payout runs, newest first (admins).
    async fn payout_runs(&self, ctx: &Context<'_>, program_id: ID) -> Result<Vec<PayoutRun>> {
        let db = admin_db(ctx).await?;
        find_program(db.reads(), program_id.as_str()).await?;
        Ok(payout_runs::runs_of(db, program_id.as_str())
            .await?
            .into_iter()
            .map(PayoutRun)
            .collect())
    }

    /// A program's balances per currency, summed over its partners: pending, approved (what
    /// the next payout run would gather), in payout, paid and held (admins).
    async fn program_balances(
        &self,
        ctx: &Context<'_>,
        program_id: ID,
    ) -> Result<Vec<crate::domain::ledger::Balance>> {
        let db = admin_db(ctx).await?;
        find_program(db.reads(), program_id.as_str()).await?;
        Ok(crate::domain::ledger::program_balances(db, program_id.as_str()).await?)
    }

    /// A payout run (admins).
    async fn payout_run(&self, ctx: &Context<'_>, id: ID) -> Result<PayoutRun> {
        let db = admin_db(ctx).await?;
        Ok(PayoutRun(
            payout_runs::find_run(db.reads(), id.as_str()).await?,
        ))
    }
}

/// Payout mutations.
#[derive(Default)]
pub struct PayoutMutation;

/// Payout mutations.
#[Object]
impl PayoutMutation {
    /// Sets how a partner is paid (admins; a partner key for its own partner). The details
    /// are sealed at rest and only shown masked.
    async fn set_payout_method(
        &self,
        ctx: &Context<'_>,
        input: SetPayoutMethodInput,
    ) -> Result<SetPayoutMethodPayload> {
        let (principal, db) = caller(ctx).await?;
        let key = &ctx.data_unchecked::<OutboundContext>().key;
        let stored = set_payout_method(db, key, principal, input).await?;
        Ok(SetPayoutMethodPayload {
            payout_method: stored.into(),
        })
    }

    /// Sets the account a program pays from: the debtor of its SEPA files (admins).
    async fn set_program_payout_account(
        &self,
        ctx: &Context<'_>,
        input: SetProgramPayoutAccountInput,
    ) -> Result<ProgramPayload> {
        let db = admin_db(ctx).await?;
        let key = &ctx.data_unchecked::<OutboundContext>().key;
        Ok(ProgramPayload {
            program: Program(payout_runs::set_program_account(db, key, input).await?),
        })
    }

    /// Pays a program's partners in one currency (admins): one payout per partner whose
    /// approved entries available at the cutoff reach the minimum; the others are listed in
    /// `skipped`. Writes `payout.created` for each payout.
    async fn create_payout_run(
        &self,
        ctx: &Context<'_>,
        input: CreatePayoutRunInput,
    ) -> Result<PayoutRunPayload> {
        let db = admin_db(ctx).await?;
        Ok(PayoutRunPayload {
            payout_run: PayoutRun(payout_runs::create_payout_run(db, input).await?),
        })
    }

    /// The run's unpaid payouts as a file for the bank or PayPal (admins): `SEPA_PAIN_001`
    /// (its SEPA payouts; EUR runs, after `setProgramPayoutAccount`), `PAYPAL_PAYOUTS_CSV`
    /// (its PayPal payouts), `CSV` (every payout).
    async fn export_payout_run(
        &self,
        ctx: &Context<'_>,
        input: ExportPayoutRunInput,
    ) -> Result<ExportPayoutRunPayload> {
        let db = admin_db(ctx).await?;
        let key = &ctx.data_unchecked::<OutboundContext>().key;
        Ok(ExportPayoutRunPayload {
            export: payout_runs::export_run(db, key, input).await?,
        })
    }

    /// Sends the run's unpaid STRIPE_CONNECT payouts as Stripe Connect transfers (admins; needs
    /// `TANDEM_STRIPE_API_KEY`): one `POST /v1/transfers` per payout with the payout id as
    /// `Idempotency-Key`, so sending again never pays twice. Each success marks the payout
    /// PAID with the transfer id (`payout.sent`); a Stripe error leaves it FAILED with the
    /// message (`payout.failed`), retried by the next send.
    async fn send_payout_run(
        &self,
        ctx: &Context<'_>,
        input: SendPayoutRunInput,
    ) -> Result<PayoutRunPayload> {
        let db = admin_db(ctx).await?;
        let key = &ctx.data_unchecked::<OutboundContext>().key;
        let stripe = ctx
            .data_unchecked::<crate::graphql::StripeClient>()
            .0
            .as_deref();
        Ok(PayoutRunPayload {
            payout_run: PayoutRun(
                crate::domain::stripe_transfers::send_payout_run(
                    db,
                    key,
                    stripe,
                    input.id.as_str(),
                )
                .await?,
            ),
        })
    }

    /// Marks every unpaid payout of a run, and its entries, PAID with the bank's or PayPal's
    /// reference (admins); writes `payout.paid` for each.
    async fn mark_payout_run_paid(
        &self,
        ctx: &Context<'_>,
        input: MarkPayoutRunPaidInput,
    ) -> Result<PayoutRunPayload> {
        let db = admin_db(ctx).await?;
        Ok(PayoutRunPayload {
            payout_run: PayoutRun(payout_runs::mark_run_paid(db, input).await?),
        })
    }
}
