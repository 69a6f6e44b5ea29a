//! Query root: every read is scoped to the caller's key.

use async_graphql::{Context, ID, InputObject, Object, Result};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Query as SeaQuery};

use crate::{
    db::{
        Db,
        entities::{api_key, attribution, deal, partner, program, referral},
        pages::{Direction, Page, PageArgs},
    },
    domain::{
        auth::Principal,
        events::list_events,
        ids::is_valid_id,
        partners::{PartnerStatus, find_visible_partner},
        referrals::ReferralStatus,
    },
    error::ApiError,
    graphql::{
        connection::{TotalCount, id_page},
        principal,
        types::{
            ApiKey, ApiKeyConnection, Deal, DealConnection, DealStatus, Event, EventConnection,
            Partner, PartnerConnection, Program, ProgramConnection, Referral, ReferralConnection,
            Viewer, page_complexity,
        },
    },
};

/// Filters for `partners`.
#[derive(Debug, Default, InputObject)]
pub struct PartnerFilter {
    /// Only partners of this program.
    pub program_id: Option<ID>,
    /// Only partners with this status.
    pub status: Option<PartnerStatus>,
}

/// Filters for `referrals`.
#[derive(Debug, Default, InputObject)]
pub struct ReferralFilter {
    /// Only referrals in this program.
    pub program_id: Option<ID>,
    /// Only referrals of this partner.
    pub partner_id: Option<ID>,
    /// Only referrals with this status.
    pub status: Option<ReferralStatus>,
}

/// Filters for `deals`.
#[derive(Debug, Default, InputObject)]
pub struct DealFilter {
    /// Only deals in this program.
    pub program_id: Option<ID>,
    /// Only deals attributed to this partner.
    pub partner_id: Option<ID>,
    /// Only deals with this status.
    pub status: Option<DealStatus>,
}

/// Core queries: programs, partners, referrals, deals, keys and events.
#[derive(Default)]
pub struct CoreQuery;

fn ids_valid(id: &ID) -> bool {
    is_valid_id(id.as_str())
}

/// Core queries: programs, partners, referrals, deals, keys and events.
#[Object]
impl CoreQuery {
    /// The caller: its role and, for partner keys, its partner.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        Ok(Viewer(principal(ctx).await?.clone()))
    }

    /// One program by id (a partner key sees only its own program; others are `NOT_FOUND`).
    async fn program(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Program>> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        if let Principal::Partner { program_id, .. } = principal
            && program_id != id.as_str()
        {
            return Err(ApiError::NotFound("program").into());
        }
        if !ids_valid(&id) {
            return Err(ApiError::NotFound("program").into());
        }
        let db = ctx.data_unchecked::<Db>();
        Ok(Some(
            db.select_one(program::Entity::find_by_id(id.to_string()))
                .await
                .map_err(ApiError::from)?
                .map(Program)
                .ok_or(ApiError::NotFound("program"))?,
        ))
    }

    /// Programs, oldest first (a partner key sees only its own).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn programs(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ProgramConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let args = PageArgs::parse(first, after)?;
        let mut query = program::Entity::find();
        if let Principal::Partner { program_id, .. } = principal {
            query = query.filter(program::Column::Id.eq(program_id.as_str()));
        }
        let db = ctx.data_unchecked::<Db>();
        Ok(ProgramConnection::by_id(db, query, Direction::Ascending, &args, Program).await?)
    }

    /// One partner by id (a partner key sees only itself).
    async fn partner(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Partner>> {
        let principal = principal(ctx).await?;
        let db = ctx.data_unchecked::<Db>();
        Ok(Some(
            find_visible_partner(db, principal, id.as_str())
                .await?
                .map(Partner)
                .ok_or(ApiError::NotFound("partner"))?,
        ))
    }

    /// Partners, oldest first (a partner key sees only itself).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn partners(
        &self,
        ctx: &Context<'_>,
        filter: Option<PartnerFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<PartnerConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let args = PageArgs::parse(first, after)?;
        let filter = filter.unwrap_or_default();
        let mut query = partner::Entity::find();
        if let Some(own) = principal.partner_scope() {
            query = query.filter(partner::Column::Id.eq(own));
        }
        if let Some(program_id) = &filter.program_id {
            query = query.filter(partner::Column::ProgramId.eq(program_id.as_str()));
        }
        if let Some(status) = filter.status {
            query = query.filter(partner::Column::Status.eq(status.as_str()));
        }
        let db = ctx.data_unchecked::<Db>();
        Ok(PartnerConnection::by_id(db, query, Direction::Ascending, &args, Partner).await?)
    }

    /// One referral by id (a partner key sees only its own).
    async fn referral(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Referral>> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        if !ids_valid(&id) {
            return Err(ApiError::NotFound("referral").into());
        }
        let db = ctx.data_unchecked::<Db>();
        let mut query = referral::Entity::find_by_id(id.to_string());
        if let Some(own) = principal.partner_scope() {
            query = query.filter(referral::Column::PartnerId.eq(own));
        }
        Ok(Some(
            db.select_one(query)
                .await
                .map_err(ApiError::from)?
                .map(Referral::from)
                .ok_or(ApiError::NotFound("referral"))?,
        ))
    }

    /// Referrals, newest first (a partner key sees only its own).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn referrals(
        &self,
        ctx: &Context<'_>,
        filter: Option<ReferralFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ReferralConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let args = PageArgs::parse(first, after)?;
        let filter = filter.unwrap_or_default();
        let mut query = referral::Entity::find();
        if let Some(own) = principal.partner_scope() {
            query = query.filter(referral::Column::PartnerId.eq(own));
        }
        if let Some(program_id) = &filter.program_id {
            query = query.filter(referral::Column::ProgramId.eq(program_id.as_str()));
        }
        if let Some(partner_id) = &filter.partner_id {
            query = query.filter(referral::Column::PartnerId.eq(partner_id.as_str()));
        }
        if let Some(status) = filter.status {
            query = query.filter(referral::Column::Status.eq(status.as_str()));
        }
        let db = ctx.data_unchecked::<Db>();
        let (page, total) = id_page(
            db,
            query,
            referral::Column::Id,
            Direction::Descending,
            &args,
        )
        .await?;
        ReferralConnection::build(
            page,
            args.after.is_some(),
            |r| r.id.clone(),
            Referral::from,
            total,
        )
        .with_deals(ctx)
        .await
    }

    /// One deal by id (a partner key sees only deals attributed to it).
    async fn deal(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Deal>> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        if !ids_valid(&id) {
            return Err(ApiError::NotFound("deal").into());
        }
        let db = ctx.data_unchecked::<Db>();
        let mut query = deal::Entity::find_by_id(id.to_string());
        if let Some(own) = principal.partner_scope() {
            query = query.filter(deal::Column::Id.in_subquery(attributed_to(own)));
        }
        Ok(Some(
            db.select_one(query)
                .await
                .map_err(ApiError::from)?
                .map(Deal::from)
                .ok_or(ApiError::NotFound("deal"))?,
        ))
    }

    /// Deals, newest first (a partner key sees only deals attributed to it).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn deals(
        &self,
        ctx: &Context<'_>,
        filter: Option<DealFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<DealConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let args = PageArgs::parse(first, after)?;
        let filter = filter.unwrap_or_default();
        let mut query = deal::Entity::find();
        if let Some(own) = principal.partner_scope() {
            query = query.filter(deal::Column::Id.in_subquery(attributed_to(own)));
        }
        if let Some(program_id) = &filter.program_id {
            query = query.filter(deal::Column::ProgramId.eq(program_id.as_str()));
        }
        if let Some(partner_id) = &filter.partner_id {
            query = query.filter(deal::Column::Id.in_subquery(attributed_to(partner_id.as_str())));
        }
        if let Some(status) = filter.status {
            let stored = tandem_connectors::DealStatus::from(status).as_str();
            query = match status {
                // A deleted deal counts as lost, whatever its stored status.
                DealStatus::Lost => query.filter(
                    sea_orm::Condition::any()
                        .add(deal::Column::Status.eq(stored))
                        .add(deal::Column::Deleted.eq(true)),
                ),
                DealStatus::Open | DealStatus::Won => query
                    .filter(deal::Column::Status.eq(stored))
                    .filter(deal::Column::Deleted.eq(false)),
            };
        }
        let db = ctx.data_unchecked::<Db>();
        Ok(DealConnection::by_id(db, query, Direction::Descending, &args, Deal::from).await?)
    }

    /// API keys, oldest first (admins only). Tokens are never shown again.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ApiKeyConnection> {
        principal(ctx).await?.require_admin()?;
        let args = PageArgs::parse(first, after)?;
        let query = api_key::Entity::find();
        let db = ctx.data_unchecked::<Db>();
        Ok(ApiKeyConnection::by_id(db, query, Direction::Ascending, &args, ApiKey).await?)
    }

    /// The event stream, oldest first, resumable from a cursor; scoped like the caller's key
    /// (admins: all; partners: events about themselves; integrations: granted programs).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        types: Option<Vec<String>>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
    ) -> Result<EventConnection> {
        let principal = principal(ctx).await?;
        let args = PageArgs::parse(first, after)?;
        let after_position = match &args.after {
            None => None,
            Some(position) => Some(
                crate::domain::events::EventPosition::parse(position)
                    .ok_or_else(|| ApiError::bad_input("after", "is not an event cursor"))?,
            ),
        };
        if let Some(types) = &types {
            crate::domain::events::check_types(types)?;
        }
        let db = ctx.data_unchecked::<Db>();
        let rows = list_events(db, principal, after_position, types.as_deref(), args.first).await?;
        let count_principal = principal.clone();
        Ok(EventConnection::build(
            Page::from_overfetch(rows, args.first),
            args.after.is_some(),
            |e| crate::domain::events::EventPosition::of(e).to_cursor(),
            Event,
            TotalCount::query(move |db| {
                let principal = count_principal.clone();
                let types = types.clone();
                async move {
                    crate::domain::events::count_events(
                        &db,
                        &principal,
                        after_position,
                        types.as_deref(),
                    )
                    .await
                }
            }),
        ))
    }
}

/// Ids of deals attributed to a partner, as a subquery.
fn attributed_to(partner_id: &str) -> sea_orm::sea_query::SelectStatement {
    SeaQuery::select()
        .column(attribution::Column::DealId)
        .from(attribution::Entity)
        .and_where(attribution::Column::PartnerId.eq(partner_id))
        .to_owned()
}
