//! The GraphQL gateway (async-graphql, no HTTP here): schema, types, loaders and limits.
//! The caller's token is injected by the HTTP layer; each request's loaders by
//! [`limits::LimitedSchema`], which drives their batches.

pub mod batch;
pub mod billing;
pub mod commissions;
pub mod connection;
pub mod crm;
pub mod inline;
pub mod lifecycle;
pub mod limits;
pub mod loaders;
pub mod mutation;
pub mod outbound;
pub mod payouts;
pub mod query;
pub mod types;
pub mod webhooks;

use async_graphql::{Context, MergedObject, Schema, SchemaBuilder};
use tokio::sync::OnceCell;

use crate::{
    db::Db,
    domain::{
        auth::{Authenticated, Principal, authenticate_caller},
        webhooks::Webhooks,
    },
    error::{ApiError, ApiResult},
    jobs::Jobs,
};

/// The query root: every domain's queries merged.
#[derive(MergedObject, Default)]
pub struct QueryRoot(
    query::CoreQuery,
    webhooks::WebhookQuery,
    commissions::CommissionQuery,
    outbound::OutboundQuery,
    crm::CrmQuery,
    billing::BillingQuery,
    lifecycle::LifecycleQuery,
    payouts::PayoutQuery,
);

/// The mutation root: every domain's mutations merged.
#[derive(MergedObject, Default)]
pub struct MutationRoot(
    mutation::CoreMutation,
    webhooks::WebhookMutation,
    commissions::CommissionMutation,
    outbound::OutboundMutation,
    crm::CrmMutation,
    lifecycle::LifecycleMutation,
    payouts::PayoutMutation,
);

/// The Tandem schema type.
pub type TandemSchema = Schema<QueryRoot, MutationRoot, outbound::SubscriptionRoot>;

/// Maximum query depth.
pub const MAX_DEPTH: usize = 12;
/// Maximum query complexity (list fields multiply their children by `first`).
pub const MAX_COMPLEXITY: usize = 10_000;
/// What one `kpis` field costs of [`MAX_COMPLEXITY`]: it aggregates a whole program (118–181 ms
/// at 200,000 deals), so a request may ask for three at most.
pub const KPI_COMPLEXITY: usize = 3_000;
/// Most root fields (aliases included) one operation may select.
pub const MAX_ROOT_FIELDS: usize = 32;

/// The schema without data: enough for SDL export and schema tests.
pub fn schema_builder() -> SchemaBuilder<QueryRoot, MutationRoot, outbound::SubscriptionRoot> {
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        outbound::SubscriptionRoot,
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
}

/// The base URL webhook source URLs are built on.
pub struct PublicBase(pub String);

/// The Stripe client of `sendPayoutRun` (none without `TANDEM_STRIPE_API_KEY`).
pub struct StripeClient(
    pub Option<std::sync::Arc<crate::domain::stripe_transfers::StripeTransfers>>,
);

/// The address a request came from (`applyToProgram` is limited per address).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

/// What the resolvers use besides the database.
pub struct Services {
    /// Webhook sources.
    pub webhooks: Webhooks,
    /// The job runner.
    pub jobs: Jobs,
    /// Events out.
    pub outbound: outbound::OutboundContext,
    /// The base URL clients reach this hub at.
    pub public_base: String,
    /// `applyToProgram`'s limit per address.
    pub apply_limiter: crate::domain::applications::ApplyLimiter,
    /// Stripe transfers, when configured.
    pub stripe: Option<std::sync::Arc<crate::domain::stripe_transfers::StripeTransfers>>,
    /// Kept KPI answers.
    pub kpis: crate::domain::kpis::KpiCache,
}

/// The schema with the database and services attached.
pub fn build_schema(db: Db, services: Services) -> TandemSchema {
    // No `.extension(…)` here: `inline::Inline` objects resolve their fields without the
    // extension hooks (and any extension would slow every field down; see `limits`).
    schema_builder()
        .data(db)
        .data(services.webhooks)
        .data(services.jobs)
        .data(services.outbound)
        .data(PublicBase(services.public_base))
        .data(services.apply_limiter)
        .data(StripeClient(services.stripe))
        .data(services.kpis)
        .finish()
}

/// The SDL of the schema, as committed in `schema/schema.graphql`.
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}

/// The caller's credentials for one request, resolved to a principal on first use (so a
/// request rejected by validation never touches the database).
pub struct RequestAuth {
    token: TokenSource,
    /// The caller, with a partner key's partner as read with the key (see [`own_partner`]).
    caller: OnceCell<Option<Authenticated>>,
}

enum TokenSource {
    /// The request's own bearer token (HTTP), or none.
    Request(Option<String>),
    /// The token its websocket was opened with ([`SocketToken`]).
    Socket,
}

/// The key a websocket connection was initialised with. Kept as a token, not a principal:
/// every operation on the socket authenticates it again (a fresh [`RequestAuth`] per
/// operation), so a key revoked, or a partner terminated, while the socket is open loses its
/// rights with its next operation on any instance.
pub struct SocketToken(pub String);

impl RequestAuth {
    /// Credentials from a bearer token (or none).
    pub fn new(token: Option<String>) -> RequestAuth {
        RequestAuth {
            token: TokenSource::Request(token),
            caller: OnceCell::new(),
        }
    }

    /// Credentials from a bearer token already authenticated for this request as `principal`:
    /// its resolvers do not look the key up again.
    pub fn resolved(token: Option<String>, principal: Principal) -> RequestAuth {
        RequestAuth {
            token: TokenSource::Request(token),
            caller: OnceCell::new_with(Some(Some(Authenticated {
                principal,
                partner: None,
            }))),
        }
    }

    /// Credentials of a console session, its caller already resolved from the session (the
    /// console executes the schema in-process as the signed-in key).
    pub fn signed_in(caller: Authenticated) -> RequestAuth {
        RequestAuth {
            token: TokenSource::Request(None),
            caller: OnceCell::new_with(Some(Some(caller))),
        }
    }

    /// Credentials of one operation on a websocket: the connection's [`SocketToken`].
    pub fn from_socket() -> RequestAuth {
        RequestAuth {
            token: TokenSource::Socket,
            caller: OnceCell::new(),
        }
    }
}

/// The database, for an admin caller only (`UNAUTHENTICATED` / `FORBIDDEN` otherwise): the
/// prologue of every admin-only resolver.
pub async fn admin_db<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Db> {
    principal(ctx).await?.require_admin()?;
    Ok(ctx.data_unchecked::<Db>())
}

/// The authenticated caller and the database: the prologue of resolvers scoped by key.
pub async fn caller<'a>(ctx: &'a Context<'_>) -> ApiResult<(&'a Principal, &'a Db)> {
    Ok((principal(ctx).await?, ctx.data_unchecked::<Db>()))
}

/// A partner key's own partner as read when the key was authenticated in this request (after
/// [`principal`]), so that a request for it costs no second statement; `None` otherwise.
pub fn own_partner<'a>(ctx: &'a Context<'_>) -> Option<&'a crate::db::entities::partner::Model> {
    ctx.data_opt::<RequestAuth>()?
        .caller
        .get()?
        .as_ref()?
        .partner
        .as_ref()
}

/// The authenticated caller, or `UNAUTHENTICATED`.
pub async fn principal<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Principal> {
    let auth = ctx
        .data_opt::<RequestAuth>()
        .ok_or(ApiError::Unauthenticated)?;
    let db = ctx.data_unchecked::<Db>();
    let resolved = auth
        .caller
        .get_or_try_init(|| async {
            let token = match &auth.token {
                TokenSource::Request(token) => token.as_deref(),
                TokenSource::Socket => ctx.data_opt::<SocketToken>().map(|t| t.0.as_str()),
            };
            match token {
                None => Ok(None),
                Some(token) => match authenticate_caller(db, token).await {
                    Ok(caller) => Ok(Some(caller)),
                    Err(ApiError::Unauthenticated) => Ok(None),
                    Err(other) => Err(other),
                },
            }
        })
        .await?;
    let principal = &resolved
        .as_ref()
        .ok_or(ApiError::Unauthenticated)?
        .principal;
    if let Principal::Partner {
        suspended: true, ..
    } = principal
        && ctx.query_env.operation.node.ty == async_graphql::parser::types::OperationType::Mutation
    {
        // CONFLICT, as `submitReferral` has always answered a suspended partner: the
        // partner's state, not the key's role, refuses the change.
        return Err(ApiError::Conflict(
            "the partner is suspended: its keys can read but not create or change anything".into(),
        ));
    }
    Ok(principal)
}
