//! Recurring revenue share (DESIGN §11): referred customers, the billing mirror of a Stripe
//! source (customers, invoices, refunds and credit notes), what the reconciler last computed
//! per invoice, ledger entries that point at an invoice, and the recurring part of a plan.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000002_recurring"
    }
}

use crate::helpers::{Kind, add, column, drop_columns, index, name, table};

/// The columns of `invoice_commissions` (rekeyed, not changed, by a later migration).
pub(crate) fn invoice_commission_columns() -> Vec<ColumnDef> {
    vec![
        column("invoice_id", Kind::Id, false),
        column("partner_id", Kind::Id, false),
        column("program_id", Kind::Id, false),
        column("customer_id", Kind::Id, true),
        column("amount_program", Kind::Text, true),
        column("amount_program_cents", Kind::BigInt, true),
        column("paid_at", Kind::Time, false),
        column("state", Kind::Text, false),
        column("expected_cents", Kind::BigInt, false),
        column("computed_at", Kind::Time, false),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        manager
            .create_table(table(
                "customers",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("partner_id", Id, false),
                    column("domain", Text, true),
                    column("name", Text, false),
                    column("crm_company_id", Text, true),
                    column("billing_customer_id", Text, true),
                    column("deal_id", Id, true),
                    column("first_won_at", Time, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        // One customer per company in a program: the first partner to bring it keeps it.
        manager
            .create_index(index(
                "idx_customers_domain",
                "customers",
                &["program_id", "domain"],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_customers_partner",
                "customers",
                &["partner_id", "id"],
                false,
            ))
            .await?;
        manager
            .create_table(table(
                "billing_customers",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("source_id", Id, false),
                    column("program_id", Id, false),
                    column("external_id", Text, false),
                    column("email", Text, true),
                    column("name", Text, true),
                    column("referral_code", Text, true),
                    column("company_domain", Text, true),
                    column("event_at", Time, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_billing_customers_external",
                "billing_customers",
                &["source_id", "external_id"],
                true,
            ))
            .await?;
        manager
            .create_table(table(
                "invoices",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("source_id", Id, false),
                    column("external_id", Text, false),
                    column("billing_customer", Text, true),
                    column("customer_email", Text, true),
                    column("link_domain", Text, true),
                    column("customer_id", Id, true),
                    column("partner_id", Id, true),
                    column("currency", Text, false),
                    column("amount_paid", Text, false),
                    column("amount_excluding_tax", Text, false),
                    column("paid_at", Time, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        for (idx, columns, unique) in [
            (
                "idx_invoices_external",
                &["source_id", "external_id"][..],
                true,
            ),
            ("idx_invoices_customer", &["customer_id", "id"][..], false),
            ("idx_invoices_partner", &["partner_id", "id"][..], false),
            (
                "idx_invoices_billing_customer",
                &["source_id", "billing_customer"][..],
                false,
            ),
            ("idx_invoices_updated", &["updated_at"][..], false),
            (
                "idx_invoices_link_domain",
                &["program_id", "link_domain"][..],
                false,
            ),
            ("idx_invoices_program", &["program_id", "id"][..], false),
        ] {
            manager
                .create_index(index(idx, "invoices", columns, unique))
                .await?;
        }
        manager
            .create_table(table(
                "invoice_adjustments",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("source_id", Id, false),
                    column("invoice_external_id", Text, false),
                    column("kind", Text, false),
                    column("external_id", Text, false),
                    column("currency", Text, false),
                    column("amount", Text, false),
                    column("occurred_at", Time, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_invoice_adjustments_external",
                "invoice_adjustments",
                &["source_id", "kind", "external_id"],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_invoice_adjustments_invoice",
                "invoice_adjustments",
                &["source_id", "invoice_external_id"],
                false,
            ))
            .await?;
        manager
            .create_table(table(
                "invoice_commissions",
                &["invoice_id", "partner_id"],
                invoice_commission_columns(),
            ))
            .await?;
        manager
            .create_index(index(
                "idx_invoice_commissions_partner",
                "invoice_commissions",
                &["partner_id", "paid_at"],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_invoice_commissions_program",
                "invoice_commissions",
                &["program_id", "partner_id", "paid_at"],
                false,
            ))
            .await?;
        for statement in [
            add("ledger_entries", column("invoice_id", Id, true)),
            add("ledger_entries", column("invoice_seq", Int, true)),
            add("programs", column("recurring_basis", Text, true)),
            add("programs", column("recurring_months", Int, true)),
            add("programs", column("recurring_rate", Text, true)),
        ] {
            manager.alter_table(statement).await?;
        }
        // Entry n of a (partner, invoice) is written once, whatever the number of reconcilers;
        // invoice first, so that the same index finds an invoice's entries.
        manager
            .create_index(index(
                "idx_ledger_entries_invoice_seq",
                "ledger_entries",
                &["invoice_id", "partner_id", "invoice_seq"],
                true,
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_ledger_entries_invoice_seq")
                    .table(name("ledger_entries"))
                    .to_owned(),
            )
            .await?;
        drop_columns(
            manager,
            &[
                ("programs", "recurring_rate"),
                ("programs", "recurring_months"),
                ("programs", "recurring_basis"),
                ("ledger_entries", "invoice_seq"),
                ("ledger_entries", "invoice_id"),
            ],
        )
        .await?;
        for t in [
            "invoice_commissions",
            "invoice_adjustments",
            "invoices",
            "billing_customers",
            "customers",
        ] {
            manager
                .drop_table(Table::drop().table(name(t)).to_owned())
                .await?;
        }
        Ok(())
    }
}
