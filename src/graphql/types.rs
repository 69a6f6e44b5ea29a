//! GraphQL object types wrapping stored rows.

use async_graphql::{Context, ID, InputType, Json, Object, Result, SimpleObject, Value};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::{
    db::{
        entities::{api_key, attribution, deal, event, partner, program, referral},
        pages::{Page, PageArgs},
        states::{EngagementSource, SlaState},
    },
    domain::{
        auth::{ApiKeyRole, Principal},
        commission::CommissionState,
        deals::AttributionMethod,
        partners::PartnerStatus,
        programs::{CommissionPlan, ProgramKind, Registration, parse_stored_decimal, plan_of},
        referrals::ReferralStatus,
    },
    error::ApiError,
    graphql::{
        batch::BatchLoader,
        commissions::{load_partner, load_program},
        connection::{TotalCount, connection},
        inline::{Inline, PlainObject, Prefetched},
        loaders::{
            ChildCountKey, ChildKind, ChildPageKey, ChildPageLoader, ChildRow, Loaders,
            ReferralDeal,
        },
        principal,
    },
};

/// Complexity of a paginated field: its children count once per requested item.
pub fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    first.unwrap_or(20).clamp(1, 100) as usize * child_complexity.max(1) + 1
}

/// One page of a parent's child list through its loader (an absent parent has an empty page),
/// whether it was asked for after a cursor, and how to count the whole list.
pub(crate) async fn child_page<M: ChildRow>(
    loader: &BatchLoader<ChildPageKey, ChildPageLoader<M>>,
    kind: ChildKind,
    parent: &str,
    args: PageArgs,
) -> Result<(Page<M>, bool, TotalCount)> {
    let had_cursor = args.after.is_some();
    let parent = parent.to_string();
    let page = loader
        .load_one(ChildPageKey {
            parent: parent.clone(),
            args,
        })
        .await?
        .unwrap_or(Page {
            items: Vec::new(),
            has_next: false,
        });
    Ok((
        page,
        had_cursor,
        TotalCount::Child(ChildCountKey { kind, parent }),
    ))
}

/// A partner program.
pub struct Program(pub program::Model);

/// A partner program.
#[tandem_derive::plain_object]
#[Object]
impl Program {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Kind of partnership.
    async fn kind(&self) -> ProgramKind {
        self.0.kind
    }
    /// ISO 4217 currency of commissions.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// How commissions are computed.
    async fn commission(&self) -> Result<CommissionPlan> {
        Ok(plan_of(&self.0)?)
    }
    /// Days a referral may lead to an attributed deal.
    async fn attribution_window_days(&self) -> i32 {
        self.0.attribution_window_days
    }
    /// Days an accrual stays pending.
    async fn hold_days(&self) -> i32 {
        self.0.hold_days
    }
    /// Days after closing during which a won deal can be clawed back.
    async fn clawback_days(&self) -> i32 {
        self.0.clawback_days
    }
    /// How deal registrations are approved and protected (DESIGN §12).
    async fn registration(&self) -> Registration {
        Registration::of(&self.0)
    }
    /// Minutes within which sales must engage an accepted referral (null: no SLA).
    async fn lead_sla_minutes(&self) -> Option<i32> {
        self.0.lead_sla_minutes
    }
    /// When partner groups are reviewed (demotions happen only then), a 6-field cron.
    async fn group_review_schedule(&self) -> &str {
        self.0
            .group_review_schedule
            .as_deref()
            .unwrap_or(crate::domain::programs::DEFAULT_REVIEW_SCHEDULE)
    }
    /// When the partner groups were last reviewed.
    async fn groups_reviewed_at(&self) -> Option<DateTime<Utc>> {
        self.0.groups_reviewed_at
    }
    /// Accruals above this amount are HELD for a manager's review (null: none).
    async fn manual_review_above(&self) -> Result<Option<rust_decimal::Decimal>> {
        Ok(self
            .0
            .manual_review_above
            .as_deref()
            .map(crate::domain::programs::parse_stored_decimal)
            .transpose()?)
    }
    /// The account the program pays from (its SEPA files' debtor), masked (null until set).
    async fn payout_account(&self) -> Option<&str> {
        self.0.payout_account_masked.as_deref()
    }
    /// The program's partner groups by rank (empty: no groups).
    async fn partner_groups(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<crate::graphql::lifecycle::PartnerGroup>> {
        Box::pin(crate::graphql::lifecycle::groups_of_program(
            ctx, &self.0.id,
        ))
        .await
    }
    /// Whether companies may apply to join without a key (`applyToProgram`), and which email
    /// domains are approved at once.
    async fn applications(&self) -> crate::domain::programs::Applications {
        crate::domain::programs::Applications::of(&self.0)
    }
    /// When the program was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// The program's partners, oldest first (a partner key sees only itself).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn partners(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<PartnerConnection> {
        let principal = principal(ctx).await?;
        let args = PageArgs::parse(first, after)?;
        let had_cursor = args.after.is_some();
        if let Principal::Partner { partner_id, .. } = principal {
            // A partner sees its own record only.
            let loaders = ctx.data_unchecked::<Loaders>();
            let own = loaders.partners.load_one(partner_id.clone()).await?;
            let items: Vec<partner::Model> = own
                .filter(|p| p.program_id == self.0.id)
                .filter(|p| args.after.as_ref().is_none_or(|a| p.id > *a))
                .into_iter()
                .take(args.first as usize)
                .collect();
            let total = TotalCount::Known(items.len() as u64);
            let page = Page {
                items,
                has_next: false,
            };
            return Ok(PartnerConnection::build(
                page,
                had_cursor,
                |p| p.id.clone(),
                Partner,
                total,
            ));
        }
        let loaders = ctx.data_unchecked::<Loaders>();
        let (page, _, total) = child_page(
            &loaders.program_partners,
            ChildKind::ProgramPartners,
            &self.0.id,
            args,
        )
        .await?;
        Ok(PartnerConnection::build(
            page,
            had_cursor,
            |p| p.id.clone(),
            Partner,
            total,
        ))
    }
}

/// A partner in a program.
pub struct Partner(pub partner::Model);

/// A partner in a program.
#[tandem_derive::plain_object]
#[Object]
impl Partner {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Standing in the program.
    async fn status(&self) -> PartnerStatus {
        self.0.status
    }
    /// Code a CRM deal can carry to be attributed to this partner.
    async fn referral_code(&self) -> &str {
        &self.0.referral_code
    }
    /// The partner's own company domain.
    async fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }
    /// Contact email.
    async fn contact_email(&self) -> &str {
        &self.0.contact_email
    }
    /// When the partner joined.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When the partner was terminated, if it was.
    async fn terminated_at(&self) -> Option<DateTime<Utc>> {
        self.0.terminated_at
    }
    /// The program the partner belongs to.
    async fn program(&self, ctx: &Context<'_>) -> Result<Program> {
        load_program(ctx, &self.0.program_id).await?.ok_or_else(|| {
            ApiError::Internal(format!("partner {} has no program", self.0.id)).into()
        })
    }
    /// How the partner is paid, masked (null until set).
    async fn payout_method(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<crate::domain::payout_methods::PayoutMethod>> {
        Box::pin(crate::graphql::payouts::partner_payout_method(
            ctx, &self.0.id,
        ))
        .await
    }
    /// The partner's current group (null when its program has no groups).
    async fn group(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<crate::graphql::lifecycle::PartnerGroup>> {
        Box::pin(crate::graphql::lifecycle::partner_group(ctx, &self.0)).await
    }
    /// The partner's group memberships, newest first.
    async fn group_history(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<crate::graphql::lifecycle::GroupMembership>> {
        Box::pin(crate::graphql::lifecycle::partner_group_history(
            ctx, &self.0,
        ))
        .await
    }
    /// What the partner still needs, over the trailing window, to be promoted to the next
    /// group up (null: no groups, or already in the highest).
    async fn next_group_progress(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<crate::graphql::lifecycle::GroupProgress>> {
        Box::pin(crate::graphql::lifecycle::partner_group_progress(
            ctx, &self.0,
        ))
        .await
    }
    /// People at the partner certified on courses, newest first (at most 500); `active`:
    /// only unexpired ones.
    async fn certifications(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = false)] active: bool,
    ) -> Result<Vec<crate::graphql::lifecycle::Certification>> {
        let db = ctx.data_unchecked::<crate::db::Db>();
        Ok(Box::pin(crate::domain::certifications::certifications_of(
            db, &self.0.id, active,
        ))
        .await?
        .into_iter()
        .map(crate::graphql::lifecycle::Certification)
        .collect())
    }
    /// The partner's referrals, newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn referrals(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ReferralConnection> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let args = PageArgs::parse(first, after)?;
        let referrals = &loaders.partner_referrals;
        let (page, had_cursor, total) =
            child_page(referrals, ChildKind::PartnerReferrals, &self.0.id, args).await?;
        ReferralConnection::build(page, had_cursor, |r| r.id.clone(), Referral::from, total)
            .with_deals(ctx)
            .await
    }
    /// Deals attributed to the partner, newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn deals(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<DealConnection> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let args = PageArgs::parse(first, after)?;
        let (page, had_cursor, total) = child_page(
            &loaders.partner_deals,
            ChildKind::PartnerDeals,
            &self.0.id,
            args,
        )
        .await?;
        Ok(DealConnection::build(
            page,
            had_cursor,
            |d| d.id.clone(),
            Deal::from,
            total,
        ))
    }
    /// Companies the partner brought (its referred customers), newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<crate::graphql::billing::CustomerConnection> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let args = PageArgs::parse(first, after)?;
        let (page, had_cursor, total) = child_page(
            &loaders.partner_customers,
            ChildKind::PartnerCustomers,
            &self.0.id,
            args,
        )
        .await?;
        Ok(crate::graphql::billing::CustomerConnection::build(
            page,
            had_cursor,
            |c| c.id.clone(),
            crate::graphql::billing::Customer,
            total,
        ))
    }
}

/// A registered referral (deal registration).
pub struct Referral(
    pub referral::Model,
    /// The attributed deal as this request's principal may see it, once known: set for a
    /// whole page at once by [`ReferralConnection::with_deals`], or by the `deal` field.
    std::sync::OnceLock<Option<Inline<Deal>>>,
);

impl From<referral::Model> for Referral {
    fn from(model: referral::Model) -> Self {
        Referral(model, std::sync::OnceLock::new())
    }
}

/// The deal attributed to a referral, or `None` when there is none or it is attributed to
/// another partner than the one `principal` is scoped to.
fn visible_deal(principal: &Principal, found: Option<ReferralDeal>) -> Option<Inline<Deal>> {
    found
        .filter(|(_, a)| {
            principal
                .partner_scope()
                .is_none_or(|own| own == a.partner_id)
        })
        .map(|(d, a)| Inline(Deal(d, Some(a))))
}

impl Prefetched for Referral {
    fn prefetched_object(&self, name: &str) -> Option<Option<&dyn PlainObject>> {
        match name {
            // Set for a whole page by `with_deals`, for this request's principal.
            "deal" => self
                .1
                .get()
                .map(|deal| deal.as_ref().map(|d| d as &dyn PlainObject)),
            _ => None,
        }
    }
}

impl ReferralConnection {
    /// When the query asks for the referrals' deals, loads them for the whole page with one
    /// `load_many` (batched with the pages of sibling connections, as the per-referral loads
    /// would be) instead of one loader request per referral: the page's deals are then
    /// resolved without a key registration, channel and copy each.
    pub async fn with_deals(self, ctx: &Context<'_>) -> Result<Self> {
        let wanted = ctx
            .look_ahead()
            .field("edges")
            .field("node")
            .field("deal")
            .exists();
        if !wanted || self.edges.is_empty() {
            return Ok(self);
        }
        let principal = principal(ctx).await?;
        let loaders = ctx.data_unchecked::<Loaders>();
        let ids = self.edges.iter().map(|edge| edge.0.node.0.0.id.clone());
        let mut found = Box::pin(loaders.deal_by_referral.load_many(ids)).await?;
        for edge in &self.edges {
            let referral = &edge.0.node.0;
            let deal = visible_deal(principal, found.remove(&referral.0.id));
            // A fresh page: nothing has set it yet.
            let _ = referral.1.set(deal);
        }
        Ok(self)
    }
}

/// A registered referral (deal registration).
#[tandem_derive::plain_object(prefetched)]
#[Object]
impl Referral {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Where the referral stands.
    async fn status(&self) -> ReferralStatus {
        self.0.status
    }
    /// The referred company.
    async fn company_name(&self) -> &str {
        &self.0.company_name
    }
    /// Its normalised domain (free-mail domains are dropped).
    async fn company_domain(&self) -> Option<&str> {
        self.0.company_domain.as_deref()
    }
    /// Contact name.
    async fn contact_name(&self) -> Option<&str> {
        self.0.contact_name.as_deref()
    }
    /// Normalised contact email.
    async fn contact_email(&self) -> Option<&str> {
        self.0.contact_email.as_deref()
    }
    /// Notes from the submitter.
    async fn notes(&self) -> Option<&str> {
        self.0.notes.as_deref()
    }
    /// When it was submitted.
    async fn submitted_at(&self) -> DateTime<Utc> {
        self.0.submitted_at
    }
    /// When it was accepted (approved, or at once under `AUTO` approval).
    async fn accepted_at(&self) -> Option<DateTime<Utc>> {
        self.0.accepted_at
    }
    /// Until when the registration protects the company: a deal created later is not
    /// attributed to it, and without an attributed deal it then becomes `EXPIRED`.
    async fn protected_until(&self) -> Option<DateTime<Utc>> {
        self.0.protected_until
    }
    /// How many times `extendReferral` extended it.
    async fn extensions(&self) -> i32 {
        self.0.extensions
    }
    /// Why a program manager rejected it (shown to the partner).
    async fn rejection_reason(&self) -> Option<&str> {
        self.0.rejection_reason.as_deref()
    }
    /// Where the registration stands, in words a partner can be shown.
    async fn status_detail(&self) -> &'static str {
        status_detail(self.0.status)
    }
    /// When sales first engaged the lead (a recorded engagement or an attributed deal).
    async fn engaged_at(&self) -> Option<DateTime<Utc>> {
        self.0.engaged_at
    }
    /// The lead-engagement SLA, when the program had one at the acceptance.
    async fn sla(&self) -> Option<ReferralSla> {
        ReferralSla::of(&self.0, Utc::now())
    }
    /// What the registration conflicts with (`CONFLICT` referrals). Admins only: a partner
    /// sees only that the registration is under review.
    async fn conflict(&self, ctx: &Context<'_>) -> Result<Option<ReferralConflict>> {
        let principal = Box::pin(principal(ctx)).await?;
        Ok(match principal {
            Principal::Admin { .. }
                if self.0.conflict_deal_id.is_some() || self.0.conflict_customer_id.is_some() =>
            {
                Some(ReferralConflict {
                    deal_id: self.0.conflict_deal_id.clone().map(ID),
                    customer_id: self.0.conflict_customer_id.clone().map(ID),
                })
            }
            _ => None,
        })
    }
    /// Engagements recorded for the lead, earliest first (at most 200). Notes are for the
    /// program's managers: a partner key reads them as null.
    async fn engagements(&self, ctx: &Context<'_>) -> Result<Vec<ReferralEngagement>> {
        let principal = Box::pin(principal(ctx)).await?;
        let db = ctx.data_unchecked::<crate::db::Db>();
        let partner = principal.partner_scope().is_some();
        Ok(
            Box::pin(crate::domain::registration::engagements_of(db, &self.0.id))
                .await?
                .into_iter()
                .map(|mut e| {
                    if partner {
                        e.note = None;
                    }
                    ReferralEngagement(e)
                })
                .collect(),
        )
    }
    /// The earlier registration this one duplicates. Admins only: a partner is never told
    /// which registration (or partner) came first.
    async fn duplicate_of_id(&self, ctx: &Context<'_>) -> Result<Option<ID>> {
        let principal = Box::pin(principal(ctx)).await?;
        Ok(match principal {
            Principal::Admin { .. } => self.0.duplicate_of_id.clone().map(ID),
            _ => None,
        })
    }
    /// The submitting partner.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Partner> {
        let loaders = ctx.data_unchecked::<Loaders>();
        Box::pin(loaders.partners.load_one(self.0.partner_id.clone()))
            .await?
            .map(Partner)
            .ok_or_else(|| {
                ApiError::Internal(format!("referral {} has no partner", self.0.id)).into()
            })
    }
    /// The CRM deal attributed to this referral, if any.
    async fn deal(&self, ctx: &Context<'_>) -> Result<Option<&Inline<Deal>>> {
        if let Some(known) = self.1.get() {
            return Ok(known.as_ref());
        }
        // Boxed: the generated field dispatcher is as large as its largest field future, and
        // every field of every referral moves one onto the heap.
        Box::pin(async move {
            let principal = principal(ctx).await?;
            let loaders = ctx.data_unchecked::<Loaders>();
            let found = loaders.deal_by_referral.load_one(self.0.id.clone()).await?;
            Ok(self
                .1
                .get_or_init(|| visible_deal(principal, found))
                .as_ref())
        })
        .await
    }
}

/// Where a registration stands, said to its partner: never who or what it conflicts with.
pub fn status_detail(status: ReferralStatus) -> &'static str {
    match status {
        ReferralStatus::Submitted => "awaiting approval by the program manager",
        ReferralStatus::Conflict => "under review",
        ReferralStatus::Accepted => "accepted: the company is registered to you",
        ReferralStatus::Duplicate => "the company was already registered",
        ReferralStatus::Rejected => "rejected by the program manager",
        ReferralStatus::Converted => "converted: a deal with the company was won",
        ReferralStatus::Expired => "expired: the protection ended without a deal",
    }
}

/// A referral's lead-engagement SLA.
#[derive(SimpleObject)]
pub struct ReferralSla {
    /// When sales must have engaged the lead (acceptance + the program's `leadSlaMinutes`).
    pub due_at: DateTime<Utc>,
    /// `PENDING` until engaged or due; `MET` when engaged by `dueAt`; `BREACHED` otherwise.
    pub state: SlaState,
}

impl ReferralSla {
    /// The SLA of a stored referral as of `now`: a pending clock past its due time is breached
    /// (the `lead-sla` job records it, and writes the event, within its next run).
    pub fn of(model: &referral::Model, now: DateTime<Utc>) -> Option<ReferralSla> {
        let (state, due_at) = (model.sla_state?, model.sla_due_at?);
        Some(ReferralSla {
            due_at,
            state: if state == SlaState::Pending && due_at <= now {
                SlaState::Breached
            } else {
                state
            },
        })
    }
}

/// What a `CONFLICT` registration collided with (admins only).
#[derive(SimpleObject)]
pub struct ReferralConflict {
    /// The company's CRM deal that existed before the submission.
    pub deal_id: Option<ID>,
    /// The referred customer the company already is.
    pub customer_id: Option<ID>,
}

/// One engagement of sales with a referred lead.
pub struct ReferralEngagement(pub crate::db::entities::referral_engagement::Model);

/// One engagement of sales with a referred lead.
#[Object]
impl ReferralEngagement {
    /// What sales did (`call`, `email`, `meeting`, `deal`, …).
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// When.
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    /// `API`, `WEBHOOK` or `DEAL`.
    async fn source(&self) -> EngagementSource {
        self.0.source
    }
    /// A note for the program's managers (null for partner keys).
    async fn note(&self) -> Option<&str> {
        self.0.note.as_deref()
    }
}

pub use crate::db::states::DealStatus;

/// A CRM deal mirrored into Tandem.
///
/// The rows are shared: a loader copies each value it hands out, and a page of deals
/// reached through their referrals is then copied as reference counts, not field by field.
pub struct Deal(
    pub std::sync::Arc<deal::View>,
    pub Option<std::sync::Arc<attribution::Model>>,
);

impl Deal {
    /// A deal with its attribution when that is known already.
    pub fn new(model: deal::Model, attribution: Option<attribution::Model>) -> Deal {
        Deal(
            std::sync::Arc::new(model.into()),
            attribution.map(std::sync::Arc::new),
        )
    }

    /// The stored status as GraphQL shows it (a deleted deal counts as lost).
    fn stored_status(&self) -> DealStatus {
        if self.0.deleted {
            DealStatus::Lost
        } else {
            self.0.status
        }
    }

    /// The stored contact emails.
    fn stored_contact_emails(&self) -> Vec<String> {
        serde_json::from_value(self.0.contact_emails.clone()).unwrap_or_default()
    }
}

impl From<deal::Model> for Deal {
    fn from(model: deal::Model) -> Self {
        Deal::new(model, None)
    }
}

impl Prefetched for Deal {
    fn prefetched_scalar(&self, name: &str) -> Option<Value> {
        match name {
            // Known when the deal came with its attribution (reached through its referral).
            "attributionMethod" => Some(InputType::to_value(&self.1.as_ref()?.method)),
            _ => None,
        }
    }
}

impl Deal {
    /// The deal's attribution: already known when the deal was reached through its referral,
    /// otherwise batched through the attribution loader.
    async fn attribution(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<std::borrow::Cow<'_, attribution::Model>>> {
        if let Some(known) = &self.1 {
            return Ok(Some(std::borrow::Cow::Borrowed(&**known)));
        }
        let loaders = ctx.data_unchecked::<Loaders>();
        Ok(Box::pin(loaders.attributions.load_one(self.0.id.clone()))
            .await?
            .map(std::borrow::Cow::Owned))
    }
}

/// A CRM deal mirrored into Tandem.
#[tandem_derive::plain_object(prefetched)]
#[Object]
impl Deal {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The CRM's id for the deal.
    async fn external_id(&self) -> &str {
        &self.0.external_id
    }
    /// Deal name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Amount in `currency`.
    async fn amount(&self) -> Result<Decimal> {
        Ok(parse_stored_decimal(&self.0.amount)?)
    }
    /// ISO 4217 currency of the amount.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// Open, won or lost (a deleted deal counts as lost).
    async fn status(&self) -> DealStatus {
        self.stored_status()
    }
    /// The CRM's stage label.
    async fn stage(&self) -> Option<&str> {
        self.0.stage.as_deref()
    }
    /// When the deal closed.
    async fn closed_at(&self) -> Option<DateTime<Utc>> {
        self.0.closed_at
    }
    /// When the deal was created in the CRM.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// The CRM's last modification time.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// The customer's company domain.
    async fn company_domain(&self) -> Option<&str> {
        self.0.company_domain.as_deref()
    }
    /// Contact emails on the deal.
    async fn contact_emails(&self) -> Vec<String> {
        self.stored_contact_emails()
    }
    /// Referral code carried by the deal.
    async fn referral_code(&self) -> Option<&str> {
        self.0.referral_code.as_deref()
    }
    /// Whether the CRM deleted the deal.
    async fn deleted(&self) -> bool {
        self.0.deleted
    }
    /// The partner the deal is attributed to.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        let Some(attribution) = self.attribution(ctx).await? else {
            return Ok(None);
        };
        let loaders = ctx.data_unchecked::<Loaders>();
        Ok(
            Box::pin(loaders.partners.load_one(attribution.partner_id.clone()))
                .await?
                .map(Partner),
        )
    }
    /// How the deal was attributed.
    async fn attribution_method(&self, ctx: &Context<'_>) -> Result<Option<AttributionMethod>> {
        let Some(attribution) = self.attribution(ctx).await? else {
            return Ok(None);
        };
        Ok(Some(attribution.method))
    }
    /// The commission as of the last reconciliation, for the partner the deal is attributed
    /// to (null before its first reconciliation or without attribution).
    async fn commission(&self, ctx: &Context<'_>) -> Result<Option<DealCommission>> {
        let Some(attribution) = self.attribution(ctx).await? else {
            return Ok(None);
        };
        let loaders = ctx.data_unchecked::<Loaders>();
        let rows = Box::pin(loaders.deal_commissions.load_one(self.0.id.clone()))
            .await?
            .unwrap_or_default();
        let Some(row) = rows
            .into_iter()
            .find(|r| r.partner_id == attribution.partner_id)
        else {
            return Ok(None);
        };
        Ok(Some(DealCommission {
            state: row.state,
            expected: crate::domain::commission::from_cents(row.expected_cents),
            amount_in_program_currency: row
                .amount_program
                .as_deref()
                .map(parse_stored_decimal)
                .transpose()?,
            computed_at: row.computed_at,
            currency: self.0.currency.clone(),
            program_id: row.program_id,
            converted_at: row.closed_at.unwrap_or(row.computed_at),
        }))
    }
}

/// What the reconciler computed for a deal.
#[derive(async_graphql::SimpleObject)]
#[graphql(complex)]
pub struct DealCommission {
    /// EARNED, NOT_EARNED (not won, below the minimum, or closed after the partner's
    /// termination), MISSING_FX_RATE (nothing is booked until a rate exists), LOCKED (lost
    /// after its clawback period: keeps its commission), DETACHED, INVALID.
    pub state: CommissionState,
    /// The commission the ledger is brought to.
    pub expected: Decimal,
    /// The deal amount in the program currency (at the rate effective when it closed; open
    /// deals at the latest rate); null without a rate.
    pub amount_in_program_currency: Option<Decimal>,
    /// When it was last computed.
    pub computed_at: DateTime<Utc>,
    #[graphql(skip)]
    pub currency: String,
    #[graphql(skip)]
    pub program_id: String,
    /// When the amount converts: the deal's close, else when it was computed.
    #[graphql(skip)]
    pub converted_at: DateTime<Utc>,
}

#[async_graphql::ComplexObject]
impl DealCommission {
    /// The exchange rates that convert the deal amount into the program currency, in order:
    /// the direct pair, or its inverse (`inverted`: divided by), or two legs of a cross rate
    /// through another currency; each the rate effective at the deal's close. Empty when the
    /// currencies are the same or no rate converts (MISSING_FX_RATE).
    async fn exchange_rates(&self, ctx: &Context<'_>) -> Result<Vec<ExchangeRateUse>> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let Some(program) = loaders.programs.load_one(self.program_id.clone()).await? else {
            return Ok(Vec::new());
        };
        if program.currency == self.currency {
            return Ok(Vec::new());
        }
        let db = ctx.data_unchecked::<crate::db::Db>();
        let rates = crate::domain::ledger::rates_until(db, self.converted_at).await?;
        Ok(rates
            .path(&self.currency, &program.currency, self.converted_at)
            .unwrap_or_default()
            .into_iter()
            .map(|leg| ExchangeRateUse {
                base: leg.base,
                quote: leg.quote,
                rate: leg.rate.normalize(),
                effective_at: leg.effective_at,
                inverted: leg.inverted,
            })
            .collect())
    }
}

/// One exchange rate a conversion used.
#[derive(async_graphql::SimpleObject)]
pub struct ExchangeRateUse {
    /// The stored pair's base currency.
    pub base: String,
    /// The stored pair's quote currency.
    pub quote: String,
    /// One `base` is worth this many `quote`.
    pub rate: Decimal,
    /// From when the rate applies.
    pub effective_at: DateTime<Utc>,
    /// Whether the conversion went from `quote` to `base` (dividing by the rate).
    pub inverted: bool,
}

/// An API key (never its token, which is shown once at creation).
pub struct ApiKey(pub api_key::Model);

/// An API key (never its token, which is shown once at creation).
#[tandem_derive::plain_object]
#[Object]
impl ApiKey {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Label.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Role.
    async fn role(&self) -> ApiKeyRole {
        self.0.role
    }
    /// The partner a PARTNER key is bound to.
    async fn partner_id(&self) -> Option<ID> {
        self.0.partner_id.clone().map(ID)
    }
    /// Programs an INTEGRATION key may read events of.
    async fn program_ids(&self) -> Vec<ID> {
        self.0
            .program_ids
            .clone()
            .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
            .unwrap_or_default()
            .into_iter()
            .map(ID)
            .collect()
    }
    /// The first characters of the token, to recognise it.
    async fn token_prefix(&self) -> &str {
        &self.0.token_prefix
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it was revoked.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
}

/// An event from the outbox.
pub struct Event(pub event::Model);

/// An event from the outbox.
#[tandem_derive::plain_object]
#[Object]
impl Event {
    /// Stable id (the `webhook-id` of its deliveries).
    async fn id(&self) -> &str {
        &self.0.id
    }
    /// Type, such as `referral.submitted`.
    #[graphql(name = "type")]
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    /// When it happened.
    async fn timestamp(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Payload; always carries `programId`, and `partnerId` where a partner is concerned.
    async fn data(&self) -> Json<serde_json::Value> {
        Json(self.0.data.clone())
    }
    /// Its position in the stream: pass it as `after` (to the `events` query or subscription)
    /// to continue after this event.
    async fn cursor(&self) -> String {
        crate::domain::events::EventPosition::of(&self.0).to_cursor()
    }
}

/// Who is calling.
pub struct Viewer(pub Principal);

/// Who is calling.
#[Object]
impl Viewer {
    /// The key's role.
    async fn role(&self) -> ApiKeyRole {
        self.0.role()
    }
    /// The partner a PARTNER key is bound to.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        let Some(id) = self.0.partner_scope() else {
            return Ok(None);
        };
        load_partner(ctx, id).await
    }
}

// Reached through connections, resolved field by field.

connection!(ProgramConnection, ProgramEdge, Program, "programs");
connection!(PartnerConnection, PartnerEdge, Partner, "partners");
connection!(ReferralConnection, ReferralEdge, Referral, "referrals");
connection!(DealConnection, DealEdge, Deal, "deals");
connection!(ApiKeyConnection, ApiKeyEdge, ApiKey, "API keys");
connection!(EventConnection, EventEdge, Event, "events");
