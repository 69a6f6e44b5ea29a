//! Query root: every read is scoped to the caller's key.

use crate::graphql::caller;
use crate::graphql::connection::EqIf;
use crate::graphql::connection::one_or_not_found;
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

/// Filters for `programs`.
#[derive(Debug, Default, InputObject)]
pub struct ProgramFilter {
    /// Only programs whose name contains this text (case-insensitive).
    pub search: Option<String>,
}

/// Filters for `partners`.
#[derive(Debug, Default, InputObject)]
pub struct PartnerFilter {
    /// Only partners of this program.
    pub program_id: Option<ID>,
    /// Only partners with this status.
    pub status: Option<PartnerStatus>,
    /// Only partners whose name or domain contains this text (case-insensitive).
    pub search: Option<String>,
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
    /// Only referrals whose lead-engagement SLA was recorded in this state (`BREACHED` once
    /// the `lead-sla` job has run).
    pub sla_state: Option<crate::db::states::SlaState>,
    /// Only referrals whose company name or domain contains this text (case-insensitive).
    pub search: Option<String>,
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
    /// Only deals whose name, company domain or CRM id contains this text (case-insensitive).
    pub search: Option<String>,
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
        one_or_not_found(
            db,
            program::Entity::find_by_id(id.to_string()),
            "program",
            Program,
        )
        .await
    }

    /// Programs, oldest first (a partner key sees only its own).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn programs(
        &self,
        ctx: &Context<'_>,
        filter: Option<ProgramFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ProgramConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let own_program = match principal {
            Principal::Partner { program_id, .. } => Some(program_id.as_str()),
            _ => None,
        };
        let search = filter.and_then(|f| f.search);
        let query = program::Entity::find()
            .eq_if(program::Column::Id, own_program)
            .search_if(&[program::Column::Name], search.as_deref(), "filter.search")?;
        ProgramConnection::page(ctx, query, Direction::Ascending, (first, after), Program).await
    }

    /// One partner by id (a partner key sees only itself).
    async fn partner(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Partner>> {
        let (principal, db) = caller(ctx).await?;
        if let Some(own) = crate::graphql::own_partner(ctx)
            && principal.partner_scope() == Some(id.as_str())
        {
            return Ok(Some(Partner(own.clone())));
        }
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
        let filter = filter.unwrap_or_default();
        let query = partner::Entity::find()
            .eq_if(partner::Column::Id, principal.partner_scope())
            .eq_if(partner::Column::ProgramId, filter.program_id.map(|id| id.0))
            .eq_if(partner::Column::Status, filter.status.map(|s| s.as_str()))
            .search_if(
                &[partner::Column::Name, partner::Column::Domain],
                filter.search.as_deref(),
                "filter.search",
            )?;
        PartnerConnection::page(ctx, query, Direction::Ascending, (first, after), Partner).await
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
        one_or_not_found(db, query, "referral", Referral::from).await
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
        let query = referral::Entity::find()
            .eq_if(referral::Column::PartnerId, principal.partner_scope())
            .eq_if(
                referral::Column::ProgramId,
                filter.program_id.map(|id| id.0),
            )
            .eq_if(
                referral::Column::PartnerId,
                filter.partner_id.map(|id| id.0),
            )
            .eq_if(referral::Column::Status, filter.status.map(|s| s.as_str()))
            .eq_if(
                referral::Column::SlaState,
                filter.sla_state.map(|s| s.as_str()),
            )
            .search_if(
                &[
                    referral::Column::CompanyName,
                    referral::Column::CompanyDomain,
                ],
                filter.search.as_deref(),
                "filter.search",
            )?;
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
        one_or_not_found(db, query, "deal", Deal::from).await
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
        let filter = filter.unwrap_or_default();
        let mut query = deal::Entity::find()
            .eq_if(deal::Column::ProgramId, filter.program_id.map(|id| id.0))
            .search_if(
                &[
                    deal::Column::Name,
                    deal::Column::CompanyDomain,
                    deal::Column::ExternalId,
                ],
                filter.search.as_deref(),
                "filter.search",
            )?;
        for partner_id in [
            principal.partner_scope(),
            filter.partner_id.as_ref().map(|id| id.as_str()),
        ]
        .into_iter()
        .flatten()
        {
            query = query.filter(deal::Column::Id.in_subquery(attributed_to(partner_id)));
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
        DealConnection::page(
            ctx,
            query,
            Direction::Descending,
            (first, after),
            Deal::from,
        )
        .await
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
        let query = api_key::Entity::find();
        ApiKeyConnection::page(ctx, query, Direction::Ascending, (first, after), ApiKey).await
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
