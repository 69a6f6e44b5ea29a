//! GraphQL for recurring revenue share (DESIGN §11): `customers`, `invoices`, `Customer`,
//! `Invoice` with its commission. A partner key sees its own customers and invoices only.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::{
    db::{
        entities::{customer, invoice, invoice_commission},
        pages::{Direction, PageArgs},
        states::CommissionState,
    },
    domain::{
        billing::recurring_until,
        commission::{from_cents, round_money},
        programs::parse_stored_decimal,
    },
    graphql::{
        commissions::{load_partner, load_program},
        connection::{EqIf, connection},
        loaders::{ChildKind, Loaders},
        principal,
        types::{Partner, Program, child_page, page_complexity},
    },
};

connection!(
    CustomerConnection,
    CustomerEdge,
    Customer,
    "referred customers"
);
connection!(InvoiceConnection, InvoiceEdge, Invoice, "invoices");

/// A company a partner brought: its first won attributed deal (or a billing customer carrying
/// the partner's referral code) made it the partner's customer.
pub struct Customer(pub customer::Model);

/// A company a partner brought: its first won attributed deal (or a billing customer carrying
/// the partner's referral code) made it the partner's customer.
#[tandem_derive::plain_object]
#[Object]
impl Customer {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Normalised company domain (null when known only by its billing customer).
    async fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }
    /// The CRM's id of the company (HubSpot company, Salesforce Account, Pipedrive
    /// organization), from the won deal that made it a customer; its later deals are
    /// recognised by it too.
    async fn crm_company_id(&self) -> Option<&str> {
        self.0.crm_company_id.as_deref()
    }
    /// Company name (the won deal's, or the billing customer's).
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The billing system's customer id it is linked to (Stripe `cus_…`).
    async fn billing_customer_id(&self) -> Option<&str> {
        self.0.billing_customer_id.as_deref()
    }
    /// The won deal that made it a customer.
    async fn deal_id(&self) -> Option<ID> {
        self.0.deal_id.clone().map(ID)
    }
    /// When it became a customer: its first won deal's close (or first paid invoice).
    async fn first_won_at(&self) -> DateTime<Utc> {
        self.0.first_won_at
    }
    /// When its recurring commission ends (`firstWonAt + recurring.months`); null for the
    /// customer's lifetime; `firstWonAt` itself when the plan pays nothing recurring.
    async fn recurring_until(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let program = loaders.programs.load_one(self.0.program_id.clone()).await?;
        Ok(program.and_then(|p| recurring_until(&p, self.0.first_won_at)))
    }
    /// Its invoice revenue so far: paid amounts excluding tax, net of refunds and credit notes,
    /// in the program currency (invoices without an exchange rate yet are not counted).
    async fn revenue_to_date(&self, ctx: &Context<'_>) -> Result<Decimal> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let cents = loaders
            .customer_revenue
            .load_one(self.0.id.clone())
            .await?
            .unwrap_or(0);
        Ok(from_cents(cents))
    }
    /// The partner that brought it.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        load_partner(ctx, &self.0.partner_id).await
    }
    /// The program.
    async fn program(&self, ctx: &Context<'_>) -> Result<Option<Program>> {
        load_program(ctx, &self.0.program_id).await
    }
    /// Its paid invoices, newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn invoices(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<InvoiceConnection> {
        let loaders = ctx.data_unchecked::<Loaders>();
        let args = PageArgs::parse(first, after)?;
        let (page, had_cursor, total) = child_page(
            &loaders.customer_invoices,
            ChildKind::CustomerInvoices,
            &self.0.id,
            args,
        )
        .await?;
        Ok(InvoiceConnection::build(
            page,
            had_cursor,
            |i| i.id.clone(),
            Invoice,
            total,
        ))
    }
}

/// What an invoice earns its partner, as last reconciled.
#[derive(SimpleObject)]
pub struct InvoiceCommission {
    /// EARNED, NOT_EARNED (outside the recurring period, or a plan that pays on deals),
    /// MISSING_FX_RATE (waits for a rate at `paidAt`), LOCKED (a refund after the clawback
    /// period was not reversed).
    pub state: CommissionState,
    /// Expected commission in the program currency.
    pub expected: Decimal,
    /// The invoice's net amount excluding tax in the program currency (null without a rate).
    pub amount_program: Option<Decimal>,
    /// When it was computed.
    pub computed_at: DateTime<Utc>,
}

impl InvoiceCommission {
    fn from_model(model: invoice_commission::Model) -> Result<InvoiceCommission> {
        Ok(InvoiceCommission {
            state: model.state,
            expected: from_cents(model.expected_cents),
            // Shown like money (the exact value is kept for the computation).
            amount_program: model
                .amount_program
                .as_deref()
                .map(parse_stored_decimal)
                .transpose()?
                .map(|amount| {
                    let mut shown = round_money(amount);
                    shown.rescale(2);
                    shown
                }),
            computed_at: model.computed_at,
        })
    }
}

/// A paid invoice of a billing source (Stripe).
pub struct Invoice(pub invoice::Model);

/// A paid invoice of a billing source (Stripe).
#[tandem_derive::plain_object]
#[Object]
impl Invoice {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The billing system's id (`in_…`).
    async fn external_id(&self) -> &str {
        &self.0.external_id
    }
    /// The billing system's customer id (`cus_…`).
    async fn billing_customer_id(&self) -> Option<&str> {
        self.0.billing_customer.as_deref()
    }
    /// ISO 4217 code.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// What was paid, tax included.
    async fn amount_paid(&self) -> Result<Decimal> {
        Ok(parse_stored_decimal(&self.0.amount_paid)?)
    }
    /// The invoice total excluding tax: what recurring commission is a percentage of.
    async fn amount_excluding_tax(&self) -> Result<Decimal> {
        Ok(parse_stored_decimal(&self.0.amount_excluding_tax)?)
    }
    /// When it was paid (`status_transitions.paid_at`).
    async fn paid_at(&self) -> DateTime<Utc> {
        self.0.paid_at
    }
    /// When Tandem first received it.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// The referred customer it is linked to; null while unlinked (it is linked when its
    /// customer appears).
    async fn customer(&self, ctx: &Context<'_>) -> Result<Option<Customer>> {
        let Some(id) = &self.0.customer_id else {
            return Ok(None);
        };
        let loaders = ctx.data_unchecked::<Loaders>();
        Ok(loaders.customers.load_one(id.clone()).await?.map(Customer))
    }
    /// The partner credited (its customer's).
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        match &self.0.partner_id {
            Some(id) => load_partner(ctx, id).await,
            None => Ok(None),
        }
    }
    /// What it earns, as last reconciled (null before its first reconcile, or unlinked).
    async fn commission(&self, ctx: &Context<'_>) -> Result<Option<InvoiceCommission>> {
        let loaders = ctx.data_unchecked::<Loaders>();
        loaders
            .invoice_commissions
            .load_one(self.0.id.clone())
            .await?
            .map(InvoiceCommission::from_model)
            .transpose()
    }
}

/// Filters for `customers`.
#[derive(Debug, Default, InputObject)]
pub struct CustomerFilter {
    /// Only this partner's customers.
    pub partner_id: Option<ID>,
    /// Only this program's customers.
    pub program_id: Option<ID>,
}

/// Filters for `invoices`.
#[derive(Debug, Default, InputObject)]
pub struct InvoiceFilter {
    /// Only invoices credited to this partner.
    pub partner_id: Option<ID>,
    /// Only this program's invoices.
    pub program_id: Option<ID>,
    /// Only this customer's invoices.
    pub customer_id: Option<ID>,
    /// Only linked (`true`) or only unlinked (`false`, admins) invoices.
    pub linked: Option<bool>,
}

/// Recurring revenue queries.
#[derive(Default)]
pub struct BillingQuery;

/// Recurring revenue queries.
#[Object]
impl BillingQuery {
    /// Referred customers, newest first. A partner key sees only its own.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        filter: Option<CustomerFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<CustomerConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let filter = filter.unwrap_or_default();
        let query = customer::Entity::find()
            .eq_if(customer::Column::PartnerId, principal.partner_scope())
            .eq_if(
                customer::Column::PartnerId,
                filter.partner_id.map(|id| id.0),
            )
            .eq_if(
                customer::Column::ProgramId,
                filter.program_id.map(|id| id.0),
            );
        CustomerConnection::page(ctx, query, Direction::Descending, (first, after), Customer).await
    }

    /// Paid invoices, newest first. A partner key sees only those credited to it.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn invoices(
        &self,
        ctx: &Context<'_>,
        filter: Option<InvoiceFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<InvoiceConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let filter = filter.unwrap_or_default();
        let mut query = invoice::Entity::find()
            .eq_if(invoice::Column::PartnerId, principal.partner_scope())
            .eq_if(invoice::Column::PartnerId, filter.partner_id.map(|id| id.0))
            .eq_if(invoice::Column::ProgramId, filter.program_id.map(|id| id.0))
            .eq_if(
                invoice::Column::CustomerId,
                filter.customer_id.map(|id| id.0),
            );
        match filter.linked {
            Some(true) => query = query.filter(invoice::Column::CustomerId.is_not_null()),
            Some(false) => query = query.filter(invoice::Column::CustomerId.is_null()),
            None => {}
        }
        InvoiceConnection::page(ctx, query, Direction::Descending, (first, after), Invoice).await
    }
}
