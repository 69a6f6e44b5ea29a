//! Referred customers and the billing mirror (DESIGN §11): a partner's first won deal makes its
//! company a customer; Stripe events keep customers, paid invoices, refunds and credit notes;
//! an invoice is linked to a referred customer by the billing customer's referral code, its
//! company domain, or its email's domain, and an unlinked invoice waits until its customer
//! appears. Everything here runs inside the caller's transaction and buffers its events.

use chrono::{DateTime, Months, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr,
    EntityTrait, QueryFilter, QueryOrder, sea_query::OnConflict,
};
use serde_json::json;
use tandem_connectors::stripe::{
    BillingCustomer, BillingEvent, BillingFact, InvoiceReduction, PaidInvoice,
};

use crate::{
    db::{
        entities::{
            attribution, billing_customer, customer, deal, event, invoice, invoice_adjustment,
            partner, program,
        },
        states::{AdjustmentKind, RecurringBasis},
    },
    domain::{
        events::{self, EventType},
        ids::new_id,
        normalize::{company_domain, email_domain, normalize_domain, normalize_email},
    },
};

/// What applying a billing event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillingOutcome {
    /// The mirror holds it.
    Applied,
    /// Older than what is stored (the reason): recorded, not applied.
    Stale(String),
    /// Nothing Tandem acts on (the reason).
    Ignored(String),
}

/// When a customer stops earning: `firstWonAt + months`; `None` for the customer's lifetime.
/// A program without a recurring plan earns nothing recurring (`firstWonAt` itself).
pub fn recurring_until(
    program: &program::Model,
    first_won_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match (program.recurring_basis, program.recurring_months) {
        (None, _) => Some(first_won_at),
        (Some(_), None) => None,
        (Some(_), Some(months)) => {
            first_won_at.checked_add_months(Months::new(months.max(0) as u32))
        }
    }
}

/// Whether `at` falls in the customer's recurring period.
pub fn within_recurring(
    program: &program::Model,
    first_won_at: DateTime<Utc>,
    at: DateTime<Utc>,
) -> bool {
    program.recurring_basis.is_some()
        && recurring_until(program, first_won_at).is_none_or(|u| at < u)
}

/// The domain an invoice links on: the billing customer's `metadata.company_domain`, else its
/// (or the invoice's) email domain; never a free-mail domain.
fn link_domain(
    billing: Option<&billing_customer::Model>,
    invoice_email: Option<&str>,
) -> Option<String> {
    if let Some(domain) = billing.and_then(|b| b.company_domain.clone()) {
        return Some(domain);
    }
    let email = billing
        .and_then(|b| b.email.as_deref())
        .or(invoice_email)
        .and_then(normalize_email)?;
    company_domain(email_domain(&email).map(str::to_string))
}

/// How an invoice found its customer.
#[derive(Debug, Clone, Copy)]
enum LinkedBy {
    ReferralCode,
    BillingCustomer,
    CompanyDomain,
    EmailDomain,
}

impl LinkedBy {
    fn as_str(self) -> &'static str {
        match self {
            LinkedBy::ReferralCode => "REFERRAL_CODE",
            LinkedBy::BillingCustomer => "BILLING_CUSTOMER",
            LinkedBy::CompanyDomain => "COMPANY_DOMAIN",
            LinkedBy::EmailDomain => "EMAIL_DOMAIN",
        }
    }
}

async fn customer_by_domain(
    conn: &impl ConnectionTrait,
    program_id: &str,
    domain: &str,
) -> Result<Option<customer::Model>, DbErr> {
    customer::Entity::find()
        .filter(customer::Column::ProgramId.eq(program_id))
        .filter(customer::Column::Domain.eq(domain))
        .one(conn)
        .await
}

fn referred_event(
    program: &program::Model,
    found: &customer::Model,
    via: &str,
) -> event::ActiveModel {
    events::new_event(
        EventType::CustomerReferred,
        &program.id,
        Some(&found.partner_id),
        json!({
            "customerId": found.id,
            "domain": found.domain,
            "name": found.name,
            "dealId": found.deal_id,
            "billingCustomerId": found.billing_customer_id,
            "firstWonAt": found.first_won_at,
            "recurringUntil": recurring_until(program, found.first_won_at),
            "via": via,
        }),
    )
}

/// Inserts a customer unless its domain is already one in the program; returns the customer
/// that holds the domain afterwards and whether it is the new one.
async fn insert_customer(
    conn: &impl ConnectionTrait,
    row: customer::Model,
) -> Result<(customer::Model, bool), DbErr> {
    let inserted = customer::Entity::insert(customer::ActiveModel::from(row.clone()))
        .on_conflict(
            OnConflict::columns([customer::Column::ProgramId, customer::Column::Domain])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    if inserted == 1 {
        return Ok((row, true));
    }
    let domain = row.domain.as_deref().unwrap_or_default();
    let existing = customer_by_domain(conn, &row.program_id, domain)
        .await?
        .ok_or_else(|| DbErr::Custom(format!("customer of domain {domain} vanished")))?;
    Ok((existing, false))
}

/// A won deal attributed to a partner makes its company a customer of that partner (unless
/// the company already is one in the program); invoices waiting for that company are linked.
pub async fn customer_from_won_deal(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    model: &deal::Model,
    attribution: &attribution::Model,
    domains: &[String],
    events: &mut Vec<event::ActiveModel>,
) -> Result<(), DbErr> {
    // The deal's own company domain first, else its first contact domain.
    let Some(domain) = model
        .company_domain
        .clone()
        .filter(|d| domains.contains(d))
        .or_else(|| domains.first().cloned())
    else {
        return Ok(());
    };
    let now = Utc::now();
    let row = customer::Model {
        id: new_id(),
        program_id: program.id.clone(),
        partner_id: attribution.partner_id.clone(),
        domain: Some(domain.clone()),
        name: model.name.clone(),
        crm_company_id: model.crm_company_id.clone(),
        billing_customer_id: None,
        deal_id: Some(model.id.clone()),
        first_won_at: model.closed_at.unwrap_or(model.updated_at),
        created_at: now,
        updated_at: now,
    };
    let (found, created) = insert_customer(conn, row).await?;
    if !created {
        return Ok(());
    }
    events.push(referred_event(program, &found, "DEAL"));
    // Invoices that arrived before their customer did.
    let waiting = invoice::Entity::find()
        .filter(invoice::Column::ProgramId.eq(program.id.as_str()))
        .filter(invoice::Column::LinkDomain.eq(domain.as_str()))
        .filter(invoice::Column::CustomerId.is_null())
        .order_by_asc(invoice::Column::PaidAt)
        .all(conn)
        .await?;
    for waiting in waiting {
        // Its link domain came from its email, or else from the billing customer's metadata.
        let by = if waiting
            .customer_email
            .as_deref()
            .and_then(email_domain)
            .is_some_and(|d| d == domain)
        {
            LinkedBy::EmailDomain
        } else {
            LinkedBy::CompanyDomain
        };
        link(conn, program, waiting, &found, by, events).await?;
    }
    Ok(())
}

/// Links an invoice to a customer and says so.
async fn link(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    found: invoice::Model,
    customer: &customer::Model,
    by: LinkedBy,
    events: &mut Vec<event::ActiveModel>,
) -> Result<invoice::Model, DbErr> {
    let mut row: invoice::ActiveModel = found.into();
    row.customer_id = Set(Some(customer.id.clone()));
    row.partner_id = Set(Some(customer.partner_id.clone()));
    row.updated_at = Set(Utc::now());
    let linked = row.update(conn).await?;
    events.push(events::new_event(
        EventType::InvoiceAttributed,
        &program.id,
        Some(&customer.partner_id),
        json!({
            "invoiceId": linked.id,
            "externalId": linked.external_id,
            "customerId": customer.id,
            "currency": linked.currency,
            "amountPaid": linked.amount_paid,
            "amountExcludingTax": linked.amount_excluding_tax,
            "paidAt": linked.paid_at,
            "linkedBy": by.as_str(),
        }),
    ));
    Ok(linked)
}

/// Finds (or, for a referral code, creates) the customer an unlinked invoice belongs to, in
/// DESIGN §11's order, and links it.
async fn try_link(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    found: invoice::Model,
    billing: Option<&billing_customer::Model>,
    events: &mut Vec<event::ActiveModel>,
) -> Result<invoice::Model, DbErr> {
    if found.customer_id.is_some() {
        return Ok(found);
    }
    let domain = found.link_domain.clone();
    // 1. The billing customer's referral code: that partner's customer, created if needed.
    if let Some(code) = billing.and_then(|b| b.referral_code.as_deref())
        && let Some(partner) = partner::Entity::find()
            .filter(partner::Column::ProgramId.eq(program.id.as_str()))
            .filter(partner::Column::ReferralCode.eq(code))
            .one(conn)
            .await?
    {
        let cus = billing.map(|b| b.external_id.clone());
        let mut mine = Condition::any();
        if let Some(cus) = &cus {
            mine = mine.add(customer::Column::BillingCustomerId.eq(cus.as_str()));
        }
        if let Some(domain) = &domain {
            mine = mine.add(customer::Column::Domain.eq(domain.as_str()));
        }
        let existing = customer::Entity::find()
            .filter(customer::Column::ProgramId.eq(program.id.as_str()))
            .filter(customer::Column::PartnerId.eq(partner.id.as_str()))
            .filter(mine)
            .one(conn)
            .await?;
        let target = match existing {
            Some(existing) => existing,
            None => {
                let now = Utc::now();
                let name = billing
                    .and_then(|b| b.name.clone().or_else(|| b.email.clone()))
                    .or_else(|| domain.clone())
                    .unwrap_or_else(|| cus.clone().unwrap_or_default());
                let row = customer::Model {
                    id: new_id(),
                    program_id: program.id.clone(),
                    partner_id: partner.id.clone(),
                    domain: domain.clone(),
                    name,
                    crm_company_id: None,
                    billing_customer_id: cus.clone(),
                    deal_id: None,
                    first_won_at: found.paid_at,
                    created_at: now,
                    updated_at: now,
                };
                // A domain another partner brought first stays that partner's customer.
                let (target, created) = insert_customer(conn, row).await?;
                if created {
                    events.push(referred_event(program, &target, "BILLING_REFERRAL_CODE"));
                }
                target
            }
        };
        return link(
            conn,
            program,
            found,
            &target,
            LinkedBy::ReferralCode,
            events,
        )
        .await;
    }
    // 2. A customer this billing customer was linked to before.
    if let Some(cus) = billing.map(|b| b.external_id.as_str())
        && let Some(existing) = customer::Entity::find()
            .filter(customer::Column::ProgramId.eq(program.id.as_str()))
            .filter(customer::Column::BillingCustomerId.eq(cus))
            .one(conn)
            .await?
    {
        return link(
            conn,
            program,
            found,
            &existing,
            LinkedBy::BillingCustomer,
            events,
        )
        .await;
    }
    // 3./4. The company domain, else the email domain.
    if let Some(domain) = &domain
        && let Some(existing) = customer_by_domain(conn, &program.id, domain).await?
    {
        let by = if billing.and_then(|b| b.company_domain.as_deref()) == Some(domain.as_str()) {
            LinkedBy::CompanyDomain
        } else {
            LinkedBy::EmailDomain
        };
        if existing.billing_customer_id.is_none()
            && let Some(cus) = billing.map(|b| b.external_id.clone())
        {
            let mut row: customer::ActiveModel = existing.clone().into();
            row.billing_customer_id = Set(Some(cus));
            row.updated_at = Set(Utc::now());
            row.update(conn).await?;
        }
        return link(conn, program, found, &existing, by, events).await;
    }
    Ok(found)
}

async fn billing_customer(
    conn: &impl ConnectionTrait,
    source_id: &str,
    external_id: Option<&str>,
) -> Result<Option<billing_customer::Model>, DbErr> {
    let Some(external_id) = external_id else {
        return Ok(None);
    };
    billing_customer::Entity::find()
        .filter(billing_customer::Column::SourceId.eq(source_id))
        .filter(billing_customer::Column::ExternalId.eq(external_id))
        .one(conn)
        .await
}

/// Applies one verified Stripe event of `source_id` to the billing mirror of `program`.
pub async fn apply_billing_event(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    source_id: &str,
    event: &BillingEvent,
    events: &mut Vec<event::ActiveModel>,
) -> Result<BillingOutcome, DbErr> {
    match &event.fact {
        BillingFact::Ignored(reason) => Ok(BillingOutcome::Ignored(reason.clone())),
        BillingFact::Customer(customer) => {
            apply_customer(conn, program, source_id, customer, event.created, events).await
        }
        BillingFact::InvoicePaid(paid) => {
            apply_invoice(conn, program, source_id, paid, events).await
        }
        BillingFact::Refund(reduction) => {
            apply_reduction(conn, source_id, AdjustmentKind::Refund, reduction).await
        }
        BillingFact::CreditNote(reduction) => {
            apply_reduction(conn, source_id, AdjustmentKind::CreditNote, reduction).await
        }
        BillingFact::TransferReversed(transfer) => {
            if crate::domain::stripe_transfers::reopen_reversed(conn, transfer, events).await? {
                Ok(BillingOutcome::Applied)
            } else {
                Ok(BillingOutcome::Ignored(format!(
                    "no paid payout was sent as transfer {transfer}"
                )))
            }
        }
    }
}

async fn apply_customer(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    source_id: &str,
    incoming: &BillingCustomer,
    event_at: DateTime<Utc>,
    events: &mut Vec<event::ActiveModel>,
) -> Result<BillingOutcome, DbErr> {
    let now = Utc::now();
    let existing = billing_customer(conn, source_id, Some(&incoming.external_id)).await?;
    if let Some(existing) = &existing
        && existing.event_at > event_at
    {
        return Ok(BillingOutcome::Stale(format!(
            "older than the stored customer {} (event created {event_at})",
            incoming.external_id
        )));
    }
    let domain = incoming
        .company_domain
        .as_deref()
        .and_then(normalize_domain);
    let stored = match existing {
        Some(existing) => {
            let mut row: billing_customer::ActiveModel = existing.into();
            row.email = Set(incoming.email.clone());
            row.name = Set(incoming.name.clone());
            row.referral_code = Set(incoming.referral_code.clone());
            row.company_domain = Set(company_domain(domain));
            row.event_at = Set(event_at);
            row.updated_at = Set(now);
            row.update(conn).await?
        }
        None => {
            billing_customer::ActiveModel {
                id: Set(new_id()),
                source_id: Set(source_id.to_string()),
                program_id: Set(program.id.clone()),
                external_id: Set(incoming.external_id.clone()),
                email: Set(incoming.email.clone()),
                name: Set(incoming.name.clone()),
                referral_code: Set(incoming.referral_code.clone()),
                company_domain: Set(company_domain(domain)),
                event_at: Set(event_at),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(conn)
            .await?
        }
    };
    // Invoices of this billing customer still waiting for theirs: what they link on may have
    // changed, and a referral code links them now.
    let waiting = invoice::Entity::find()
        .filter(invoice::Column::SourceId.eq(source_id))
        .filter(invoice::Column::BillingCustomer.eq(stored.external_id.as_str()))
        .filter(invoice::Column::CustomerId.is_null())
        .order_by_asc(invoice::Column::PaidAt)
        .all(conn)
        .await?;
    for waiting in waiting {
        let domain = link_domain(Some(&stored), waiting.customer_email.as_deref());
        let waiting = if waiting.link_domain != domain {
            let mut row: invoice::ActiveModel = waiting.into();
            row.link_domain = Set(domain);
            row.update(conn).await?
        } else {
            waiting
        };
        try_link(conn, program, waiting, Some(&stored), events).await?;
    }
    Ok(BillingOutcome::Applied)
}

async fn apply_invoice(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    source_id: &str,
    paid: &PaidInvoice,
    events: &mut Vec<event::ActiveModel>,
) -> Result<BillingOutcome, DbErr> {
    let now = Utc::now();
    let billing = billing_customer(conn, source_id, paid.customer.as_deref()).await?;
    let domain = link_domain(billing.as_ref(), paid.customer_email.as_deref());
    let existing = invoice::Entity::find()
        .filter(invoice::Column::SourceId.eq(source_id))
        .filter(invoice::Column::ExternalId.eq(paid.external_id.as_str()))
        .one(conn)
        .await?;
    let amount_paid = paid.amount_paid.to_string();
    let excluding_tax = paid.amount_excluding_tax.to_string();
    let stored = match existing {
        Some(existing)
            if existing.amount_paid == amount_paid
                && existing.amount_excluding_tax == excluding_tax
                && existing.currency == paid.currency
                && existing.paid_at == paid.paid_at =>
        {
            existing
        }
        Some(existing) => {
            let mut row: invoice::ActiveModel = existing.into();
            row.currency = Set(paid.currency.clone());
            row.amount_paid = Set(amount_paid);
            row.amount_excluding_tax = Set(excluding_tax);
            row.paid_at = Set(paid.paid_at);
            row.updated_at = Set(now);
            row.update(conn).await?
        }
        None => {
            invoice::ActiveModel {
                id: Set(new_id()),
                program_id: Set(program.id.clone()),
                source_id: Set(source_id.to_string()),
                external_id: Set(paid.external_id.clone()),
                billing_customer: Set(paid.customer.clone()),
                customer_email: Set(paid.customer_email.clone()),
                link_domain: Set(domain),
                customer_id: Set(None),
                partner_id: Set(None),
                currency: Set(paid.currency.clone()),
                amount_paid: Set(amount_paid),
                amount_excluding_tax: Set(excluding_tax),
                paid_at: Set(paid.paid_at),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(conn)
            .await?
        }
    };
    try_link(conn, program, stored, billing.as_ref(), events).await?;
    Ok(BillingOutcome::Applied)
}

async fn apply_reduction(
    conn: &impl ConnectionTrait,
    source_id: &str,
    kind: AdjustmentKind,
    reduction: &InvoiceReduction,
) -> Result<BillingOutcome, DbErr> {
    let now = Utc::now();
    let existing = invoice_adjustment::Entity::find()
        .filter(invoice_adjustment::Column::SourceId.eq(source_id))
        .filter(invoice_adjustment::Column::Kind.eq(kind))
        .filter(invoice_adjustment::Column::ExternalId.eq(reduction.external_id.as_str()))
        .one(conn)
        .await?;
    match existing {
        Some(existing) => {
            let stored: rust_decimal::Decimal = existing.amount.parse().unwrap_or_default();
            // A charge's `amount_refunded` only grows; an older event says less.
            if kind == AdjustmentKind::CreditNote || reduction.amount <= stored {
                return Ok(BillingOutcome::Stale(format!(
                    "{} {} is already recorded",
                    if kind == AdjustmentKind::Refund {
                        "the refund of charge"
                    } else {
                        "credit note"
                    },
                    reduction.external_id
                )));
            }
            let mut row: invoice_adjustment::ActiveModel = existing.into();
            row.amount = Set(reduction.amount.to_string());
            row.occurred_at = Set(reduction.occurred_at);
            row.updated_at = Set(now);
            row.update(conn).await?;
        }
        None => {
            invoice_adjustment::ActiveModel {
                id: Set(new_id()),
                source_id: Set(source_id.to_string()),
                invoice_external_id: Set(reduction.invoice.clone()),
                kind: Set(kind),
                external_id: Set(reduction.external_id.clone()),
                currency: Set(reduction.currency.clone()),
                amount: Set(reduction.amount.to_string()),
                occurred_at: Set(reduction.occurred_at),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(conn)
            .await?;
        }
    }
    // The invoice (if it arrived) changed for the reconciler.
    invoice::Entity::update_many()
        .col_expr(invoice::Column::UpdatedAt, now.into())
        .filter(invoice::Column::SourceId.eq(source_id))
        .filter(invoice::Column::ExternalId.eq(reduction.invoice.as_str()))
        .exec(conn)
        .await?;
    Ok(BillingOutcome::Applied)
}

/// Whether the program pays recurring commission on later deals of its customers.
pub fn pays_customer_deals(program: &program::Model) -> bool {
    program.recurring_basis == Some(RecurringBasis::Deals)
}

/// The customer a later deal of the program belongs to, for `CUSTOMER` attribution: same
/// normalised domain, not the deal that made it a customer, and the deal (closed, or while
/// open created) before the customer's recurring period ends.
pub async fn customer_for_deal(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    model: &deal::Model,
    domains: &[String],
) -> Result<Option<customer::Model>, DbErr> {
    if !pays_customer_deals(program) || (domains.is_empty() && model.crm_company_id.is_none()) {
        return Ok(None);
    }
    let at = model.closed_at.unwrap_or(model.created_at);
    // The company by its domain, or by the CRM's company id (a deal may carry no domain).
    let mut company = Condition::any().add(customer::Column::Domain.is_in(domains.iter().cloned()));
    if let Some(company_id) = &model.crm_company_id {
        company = company.add(customer::Column::CrmCompanyId.eq(company_id.as_str()));
    }
    let found = customer::Entity::find()
        .filter(customer::Column::ProgramId.eq(program.id.as_str()))
        .filter(company)
        .order_by_asc(customer::Column::FirstWonAt)
        .order_by_asc(customer::Column::Id)
        .all(conn)
        .await?;
    Ok(found.into_iter().find(|c| {
        c.deal_id.as_deref() != Some(model.id.as_str())
            && within_recurring(program, c.first_won_at, at)
    }))
}
