//! Loaders: every nested reference or list is batched into one statement per level, so a
//! query's statement count does not grow with page size.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::{
    db::{
        ALIAS_PREFIX, Aliased, Db, Decode, NativeRow,
        entities::{
            attribution, customer, deal, deal_commission, invoice, invoice_commission, partner,
            program, referral, webhook_source,
        },
        pages::{ChildList, Direction, Page, PageArgs, child_counts, child_pages},
    },
    error::ApiError,
    graphql::batch::{BatchLoader, Batches},
};

type LoadResult<V> = Result<HashMap<String, V>, async_graphql::Error>;

fn db_error(err: sea_orm::DbErr) -> async_graphql::Error {
    ApiError::from(err).into()
}

/// Defines a loader of rows by their string primary key `id`.
macro_rules! by_id_loader {
    ($(#[$doc:meta])* $name:ident, $entity:ident) => {
        $(#[$doc])*
        pub struct $name(Db);

        impl Loader<String> for $name {
            type Value = $entity::Model;
            type Error = async_graphql::Error;

            async fn load(&self, keys: &[String]) -> LoadResult<$entity::Model> {
                let rows = self
                    .0
                    .select_all(
                        $entity::Entity::find()
                            .filter($entity::Column::Id.is_in(keys.iter().cloned())),
                    )
                    .await
                    .map_err(db_error)?;
                Ok(rows.into_iter().map(|m| (m.id.clone(), m)).collect())
            }
        }
    };
}

by_id_loader!(
    /// Programs by id.
    ProgramLoader,
    program
);
by_id_loader!(
    /// Partners by id.
    PartnerLoader,
    partner
);
by_id_loader!(
    /// Deals by id.
    DealLoader,
    deal
);
by_id_loader!(
    /// Referred customers by id.
    CustomerLoader,
    customer
);
by_id_loader!(
    /// Invoices by id.
    InvoiceLoader,
    invoice
);

/// What the reconciler last computed for invoices, by invoice id.
pub struct InvoiceCommissionLoader(Db);

impl Loader<String> for InvoiceCommissionLoader {
    type Value = invoice_commission::Model;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> LoadResult<invoice_commission::Model> {
        use sea_orm::Statement;
        // Through the invoice's partner: the table is keyed by (partner, invoice).
        let (cond, values) = self.0.in_list("i.id", keys, 1);
        let rows = invoice_commission::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                self.0.backend(),
                format!(
                    "SELECT ic.* FROM invoices i JOIN invoice_commissions ic \
                     ON ic.partner_id = i.partner_id AND ic.invoice_id = i.id WHERE {cond}"
                ),
                values,
            ))
            .all(self.0.reads())
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|m| (m.invoice_id.clone(), m))
            .collect())
    }
}

/// A customer's invoice revenue to date (net amounts in the program currency, cents), by
/// customer id.
pub struct CustomerRevenueLoader(Db);

impl Loader<String> for CustomerRevenueLoader {
    type Value = i64;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> LoadResult<i64> {
        use sea_orm::{ConnectionTrait, Statement};
        // Through the customer's partner (a customer never changes partner): the rows are
        // then found by the partner index instead of a scan of every invoice computation.
        let (cond, values) = self.0.in_list("c.id", keys, 1);
        let rows = self
            .0
            .reads()
            .query_all_raw(Statement::from_sql_and_values(
                self.0.backend(),
                format!(
                    "SELECT c.id AS customer_id, \
                     CAST(SUM(ic.amount_program_cents) AS BIGINT) AS cents \
                     FROM customers c JOIN invoice_commissions ic \
                     ON ic.partner_id = c.partner_id AND ic.customer_id = c.id \
                     WHERE {cond} GROUP BY c.id"
                ),
                values,
            ))
            .await
            .map_err(db_error)?;
        let mut out = HashMap::new();
        for row in rows {
            let id: String = row.try_get("", "customer_id").map_err(db_error)?;
            let cents: Option<i64> = row.try_get("", "cents").map_err(db_error)?;
            out.insert(id, cents.unwrap_or(0));
        }
        Ok(out)
    }
}

by_id_loader!(
    /// Webhook sources by id.
    WebhookSourceLoader,
    webhook_source
);

/// A deal's attribution, by deal id.
pub struct AttributionLoader(Db);

impl Loader<String> for AttributionLoader {
    type Value = attribution::Model;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> LoadResult<attribution::Model> {
        let rows = self
            .0
            .select_all(
                attribution::Entity::find()
                    .filter(attribution::Column::DealId.is_in(keys.iter().cloned())),
            )
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().map(|m| (m.deal_id.clone(), m)).collect())
    }
}

/// What the reconciler last computed for deals, by deal id (one row per partner the deal was
/// ever attributed to).
pub struct DealCommissionLoader(Db);

impl Loader<String> for DealCommissionLoader {
    type Value = Vec<deal_commission::Model>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> LoadResult<Vec<deal_commission::Model>> {
        let rows = deal_commission::Entity::find()
            .filter(deal_commission::Column::DealId.is_in(keys.iter().cloned()))
            .all(self.0.reads())
            .await
            .map_err(db_error)?;
        let mut by_deal: HashMap<String, Vec<deal_commission::Model>> = HashMap::new();
        for row in rows {
            by_deal.entry(row.deal_id.clone()).or_default().push(row);
        }
        Ok(by_deal)
    }
}

/// The deal attributed to a referral (its earliest), with the partner it is attributed to.
pub struct DealByReferralLoader(Db);

/// A referral's deal as the loader hands it out: shared, because a loader hands each caller
/// its own copy (a page of deals would otherwise be cloned field by field).
pub type ReferralDeal = (
    std::sync::Arc<deal::View>,
    std::sync::Arc<attribution::Model>,
);

impl Loader<String> for DealByReferralLoader {
    type Value = ReferralDeal;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> LoadResult<ReferralDeal> {
        // One join: the deal's columns as they are, the attribution's prefixed `a_`.
        let db = &self.0;
        let (ins, values) = db.in_list("a.referral_id", keys, 1);
        let attribution_columns: Vec<String> = attribution::Model::COLUMNS
            .iter()
            .map(|c| format!("a.{c} AS {ALIAS_PREFIX}{c}"))
            .collect();
        let deal_columns: Vec<String> = deal::View::COLUMNS
            .iter()
            .map(|c| format!("d.{c}"))
            .collect();
        let sql = format!(
            "SELECT {}, {} FROM attributions a JOIN deals d ON d.id = a.deal_id WHERE {ins}",
            deal_columns.join(", "),
            attribution_columns.join(", ")
        );
        let pairs: Vec<(deal::View, Aliased<attribution::Model>)> =
            db.rows(sql, values).await.map_err(db_error)?;
        Ok(earliest_deal_per_referral(pairs))
    }
}

/// Each referral's earliest deal (by id) among `(deal, attribution)` pairs.
fn earliest_deal_per_referral(
    pairs: Vec<(deal::View, Aliased<attribution::Model>)>,
) -> HashMap<String, ReferralDeal> {
    let mut out: HashMap<String, ReferralDeal> = HashMap::with_capacity(pairs.len());
    for (deal, Aliased(attribution)) in pairs {
        let Some(referral_id) = attribution.referral_id.clone() else {
            continue;
        };
        let keep_existing = out
            .get(&referral_id)
            .is_some_and(|(existing, _)| existing.id <= deal.id);
        if !keep_existing {
            out.insert(
                referral_id,
                (std::sync::Arc::new(deal), std::sync::Arc::new(attribution)),
            );
        }
    }
    out
}

/// Which child list a page or count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// A program's partners (oldest first).
    ProgramPartners,
    /// A partner's referrals (newest first).
    PartnerReferrals,
    /// Deals attributed to a partner (newest first).
    PartnerDeals,
    /// A delivery's attempts (oldest first).
    DeliveryAttempts,
    /// A partner's referred customers (newest first).
    PartnerCustomers,
    /// A customer's invoices (newest first).
    CustomerInvoices,
}

impl ChildKind {
    fn list(self) -> ChildList {
        match self {
            ChildKind::ProgramPartners => ChildList {
                from: "partners t",
                parent: "t.program_id",
                order_key: "t.id",
                direction: Direction::Ascending,
                counted_in: None,
            },
            ChildKind::PartnerReferrals => ChildList {
                from: "referrals t",
                parent: "t.partner_id",
                order_key: "t.id",
                direction: Direction::Descending,
                counted_in: Some(("referral_counts", "partner_id")),
            },
            ChildKind::PartnerDeals => ChildList {
                from: "deals t JOIN attributions a ON a.deal_id = t.id",
                parent: "a.partner_id",
                order_key: "a.deal_id",
                direction: Direction::Descending,
                counted_in: None,
            },
            ChildKind::DeliveryAttempts => ChildList {
                from: "webhook_delivery_attempts t",
                parent: "t.delivery_id",
                order_key: "t.id",
                direction: Direction::Ascending,
                counted_in: None,
            },
            ChildKind::PartnerCustomers => ChildList {
                from: "customers t",
                parent: "t.partner_id",
                order_key: "t.id",
                direction: Direction::Descending,
                counted_in: None,
            },
            ChildKind::CustomerInvoices => ChildList {
                from: "invoices t",
                parent: "t.customer_id",
                order_key: "t.id",
                direction: Direction::Descending,
                counted_in: None,
            },
        }
    }
}

/// Key of a child page: the parent and the page arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChildPageKey {
    /// The parent's id.
    pub parent: String,
    /// The page.
    pub args: PageArgs,
}

/// Key of a child count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChildCountKey {
    /// Which list.
    pub kind: ChildKind,
    /// The parent's id.
    pub parent: String,
}

/// A row a child page can hold: read through sqlx or natively, and handed to every requester.
pub trait ChildRow: Decode + Clone + Send + Sync + 'static {}

impl<M: Decode + Clone + Send + Sync + 'static> ChildRow for M {}

/// Loads child pages of one kind; keys with the same page arguments share one statement.
pub struct ChildPageLoader<M> {
    db: Db,
    kind: ChildKind,
    _model: std::marker::PhantomData<fn() -> M>,
}

impl<M: ChildRow> Loader<ChildPageKey> for ChildPageLoader<M> {
    type Value = Page<M>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[ChildPageKey],
    ) -> Result<HashMap<ChildPageKey, Page<M>>, async_graphql::Error> {
        let mut groups: HashMap<&PageArgs, Vec<String>> = HashMap::new();
        for key in keys {
            groups
                .entry(&key.args)
                .or_default()
                .push(key.parent.clone());
        }
        let list = self.kind.list();
        let mut out = HashMap::new();
        for (args, parents) in groups {
            let mut pages = child_pages::<M>(&self.db, &list, &parents, args)
                .await
                .map_err(db_error)?;
            for parent in parents {
                let page = pages.remove(&parent).unwrap_or(Page {
                    items: Vec::new(),
                    has_next: false,
                });
                out.insert(
                    ChildPageKey {
                        parent,
                        args: args.clone(),
                    },
                    page,
                );
            }
        }
        Ok(out)
    }
}

/// Counts children; keys of the same kind share one statement.
pub struct ChildCountLoader(Db);

impl Loader<ChildCountKey> for ChildCountLoader {
    type Value = i64;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[ChildCountKey],
    ) -> Result<HashMap<ChildCountKey, i64>, async_graphql::Error> {
        let mut groups: HashMap<ChildKind, Vec<String>> = HashMap::new();
        for key in keys {
            groups.entry(key.kind).or_default().push(key.parent.clone());
        }
        let mut out = HashMap::new();
        for (kind, parents) in groups {
            let counts = child_counts(&self.0, &kind.list(), &parents)
                .await
                .map_err(db_error)?;
            for parent in parents {
                let n = counts.get(&parent).copied().unwrap_or(0);
                out.insert(ChildCountKey { kind, parent }, n);
            }
        }
        Ok(out)
    }
}

/// The per-request set of loaders (fresh per request, so nothing is cached across callers).
pub struct Loaders {
    /// Programs by id.
    pub programs: BatchLoader<String, ProgramLoader>,
    /// Partners by id.
    pub partners: BatchLoader<String, PartnerLoader>,
    /// Deals by id.
    pub deals: BatchLoader<String, DealLoader>,
    /// Webhook sources by id.
    pub webhook_sources: BatchLoader<String, WebhookSourceLoader>,
    /// Attributions by deal id.
    pub attributions: BatchLoader<String, AttributionLoader>,
    /// Attributed deal by referral id.
    pub deal_by_referral: BatchLoader<String, DealByReferralLoader>,
    /// Reconciler rows by deal id.
    pub deal_commissions: BatchLoader<String, DealCommissionLoader>,
    /// Partner pages of programs.
    pub program_partners: BatchLoader<ChildPageKey, ChildPageLoader<partner::Model>>,
    /// Referral pages of partners.
    pub partner_referrals: BatchLoader<ChildPageKey, ChildPageLoader<referral::Model>>,
    /// Deal pages of partners.
    pub partner_deals: BatchLoader<ChildPageKey, ChildPageLoader<deal::Model>>,
    /// Attempt pages of deliveries.
    pub delivery_attempts: BatchLoader<
        ChildPageKey,
        ChildPageLoader<crate::db::entities::webhook_delivery_attempt::Model>,
    >,
    /// Customer pages of partners.
    pub partner_customers: BatchLoader<ChildPageKey, ChildPageLoader<customer::Model>>,
    /// Invoice pages of customers.
    pub customer_invoices: BatchLoader<ChildPageKey, ChildPageLoader<invoice::Model>>,
    /// Customers by id.
    pub customers: BatchLoader<String, CustomerLoader>,
    /// Invoices by id.
    pub invoices: BatchLoader<String, InvoiceLoader>,
    /// Reconciler rows by invoice id.
    pub invoice_commissions: BatchLoader<String, InvoiceCommissionLoader>,
    /// Invoice revenue by customer id.
    pub customer_revenue: BatchLoader<String, CustomerRevenueLoader>,
    /// Child counts.
    pub child_counts: BatchLoader<ChildCountKey, ChildCountLoader>,
}

impl Loaders {
    /// Fresh loaders for one request, batching on the request's `batches` (see
    /// [`super::batch`]).
    pub fn new(db: &Db, batches: &Batches) -> Loaders {
        fn child<M: ChildRow>(
            db: &Db,
            kind: ChildKind,
            batches: &Batches,
        ) -> BatchLoader<ChildPageKey, ChildPageLoader<M>> {
            BatchLoader::new(
                ChildPageLoader {
                    db: db.clone(),
                    kind,
                    _model: std::marker::PhantomData,
                },
                batches,
            )
        }
        Loaders {
            programs: BatchLoader::new(ProgramLoader(db.clone()), batches),
            partners: BatchLoader::new(PartnerLoader(db.clone()), batches),
            deals: BatchLoader::new(DealLoader(db.clone()), batches),
            webhook_sources: BatchLoader::new(WebhookSourceLoader(db.clone()), batches),
            attributions: BatchLoader::new(AttributionLoader(db.clone()), batches),
            deal_by_referral: BatchLoader::new(DealByReferralLoader(db.clone()), batches),
            deal_commissions: BatchLoader::new(DealCommissionLoader(db.clone()), batches),
            program_partners: child(db, ChildKind::ProgramPartners, batches),
            partner_referrals: child(db, ChildKind::PartnerReferrals, batches),
            partner_deals: child(db, ChildKind::PartnerDeals, batches),
            delivery_attempts: child(db, ChildKind::DeliveryAttempts, batches),
            partner_customers: child(db, ChildKind::PartnerCustomers, batches),
            customer_invoices: child(db, ChildKind::CustomerInvoices, batches),
            customers: BatchLoader::new(CustomerLoader(db.clone()), batches),
            invoices: BatchLoader::new(InvoiceLoader(db.clone()), batches),
            invoice_commissions: BatchLoader::new(InvoiceCommissionLoader(db.clone()), batches),
            customer_revenue: BatchLoader::new(CustomerRevenueLoader(db.clone()), batches),
            child_counts: BatchLoader::new(ChildCountLoader(db.clone()), batches),
        }
    }
}
