//! The initial schema: programs, partners, referrals, deals, attributions, the commission
//! ledger, payouts, exchange rates, API keys, the event outbox and job runs.
//!
//! Money columns are TEXT holding a canonical decimal string: SQLite has no exact decimal
//! type, and money must never pass through a float.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000001_initial"
    }
}

#[derive(DeriveIden)]
enum Programs {
    Table,
    Id,
    Name,
    Kind,
    Currency,
    CommissionType,
    CommissionRate,
    CommissionFlatAmount,
    CommissionTiers,
    CapPerDeal,
    MinDealAmount,
    AttributionWindowDays,
    HoldDays,
    ClawbackDays,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Partners {
    Table,
    Id,
    ProgramId,
    Name,
    Domain,
    ContactEmail,
    Status,
    ReferralCode,
    TerminatedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Referrals {
    Table,
    Id,
    ProgramId,
    PartnerId,
    CompanyName,
    CompanyDomain,
    ContactName,
    ContactEmail,
    Notes,
    Status,
    DuplicateOfId,
    SubmittedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Deals {
    Table,
    Id,
    ProgramId,
    SourceId,
    ExternalId,
    Name,
    Amount,
    Currency,
    Status,
    Stage,
    ClosedAt,
    CreatedAt,
    UpdatedAt,
    CompanyDomain,
    ContactEmails,
    ReferralCode,
    Deleted,
    FirstSeenAt,
    LastAppliedAt,
}

#[derive(DeriveIden)]
enum Attributions {
    Table,
    DealId,
    PartnerId,
    ReferralId,
    Method,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Payouts {
    Table,
    Id,
    PartnerId,
    ProgramId,
    Currency,
    Total,
    Status,
    Reference,
    CreatedAt,
    PaidAt,
}

#[derive(DeriveIden)]
enum LedgerEntries {
    Table,
    Id,
    PartnerId,
    ProgramId,
    DealId,
    PayoutId,
    Kind,
    Amount,
    Currency,
    Status,
    CreatedAt,
    AvailableAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ExchangeRates {
    Table,
    Id,
    Base,
    Quote,
    Rate,
    EffectiveAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    Name,
    Role,
    PartnerId,
    ProgramIds,
    TokenHash,
    TokenPrefix,
    CreatedAt,
    RevokedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    Id,
    Type,
    ProgramId,
    PartnerId,
    Data,
    CreatedAt,
}

#[derive(DeriveIden)]
enum JobRuns {
    Table,
    Id,
    Name,
    Status,
    StartedAt,
    FinishedAt,
    Stats,
    Error,
}

fn fk(
    from_table: impl IntoIden,
    from_col: impl IntoIden,
    to_table: impl IntoIden,
    to_col: impl IntoIden,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from_table, from_col)
        .to(to_table, to_col)
        .on_delete(ForeignKeyAction::Restrict)
        .to_owned()
}

fn index(name: &str, table: impl IntoIden, cols: Vec<DynIden>) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(col);
    }
    stmt.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Programs::Table)
                    .col(string(Programs::Id).primary_key())
                    .col(text(Programs::Name))
                    .col(string(Programs::Kind))
                    .col(string(Programs::Currency))
                    .col(string(Programs::CommissionType))
                    .col(string_null(Programs::CommissionRate))
                    .col(string_null(Programs::CommissionFlatAmount))
                    .col(json(Programs::CommissionTiers))
                    .col(string_null(Programs::CapPerDeal))
                    .col(string_null(Programs::MinDealAmount))
                    .col(integer(Programs::AttributionWindowDays))
                    .col(integer(Programs::HoldDays))
                    .col(integer(Programs::ClawbackDays))
                    .col(timestamp_with_time_zone(Programs::CreatedAt))
                    .col(timestamp_with_time_zone(Programs::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Partners::Table)
                    .col(string(Partners::Id).primary_key())
                    .col(string(Partners::ProgramId))
                    .col(text(Partners::Name))
                    .col(string_null(Partners::Domain))
                    .col(string(Partners::ContactEmail))
                    .col(string(Partners::Status))
                    .col(string_uniq(Partners::ReferralCode))
                    .col(timestamp_with_time_zone_null(Partners::TerminatedAt))
                    .col(timestamp_with_time_zone(Partners::CreatedAt))
                    .col(timestamp_with_time_zone(Partners::UpdatedAt))
                    .foreign_key(&mut fk(
                        Partners::Table,
                        Partners::ProgramId,
                        Programs::Table,
                        Programs::Id,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_partners_program",
                Partners::Table,
                vec![Partners::ProgramId.into_iden(), Partners::Id.into_iden()],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Referrals::Table)
                    .col(string(Referrals::Id).primary_key())
                    .col(string(Referrals::ProgramId))
                    .col(string(Referrals::PartnerId))
                    .col(text(Referrals::CompanyName))
                    .col(string_null(Referrals::CompanyDomain))
                    .col(text_null(Referrals::ContactName))
                    .col(string_null(Referrals::ContactEmail))
                    .col(text_null(Referrals::Notes))
                    .col(string(Referrals::Status))
                    .col(string_null(Referrals::DuplicateOfId))
                    .col(timestamp_with_time_zone(Referrals::SubmittedAt))
                    .col(timestamp_with_time_zone(Referrals::UpdatedAt))
                    .foreign_key(&mut fk(
                        Referrals::Table,
                        Referrals::ProgramId,
                        Programs::Table,
                        Programs::Id,
                    ))
                    .foreign_key(&mut fk(
                        Referrals::Table,
                        Referrals::PartnerId,
                        Partners::Table,
                        Partners::Id,
                    ))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (
                "idx_referrals_partner",
                vec![Referrals::PartnerId.into_iden(), Referrals::Id.into_iden()],
            ),
            (
                "idx_referrals_program",
                vec![Referrals::ProgramId.into_iden(), Referrals::Id.into_iden()],
            ),
            (
                "idx_referrals_program_domain",
                vec![
                    Referrals::ProgramId.into_iden(),
                    Referrals::CompanyDomain.into_iden(),
                ],
            ),
            (
                "idx_referrals_program_email",
                vec![
                    Referrals::ProgramId.into_iden(),
                    Referrals::ContactEmail.into_iden(),
                ],
            ),
        ] {
            manager
                .create_index(index(name, Referrals::Table, cols))
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Deals::Table)
                    .col(string(Deals::Id).primary_key())
                    .col(string(Deals::ProgramId))
                    .col(string(Deals::SourceId))
                    .col(string(Deals::ExternalId))
                    .col(text(Deals::Name))
                    .col(string(Deals::Amount))
                    .col(string(Deals::Currency))
                    .col(string(Deals::Status))
                    .col(string_null(Deals::Stage))
                    .col(timestamp_with_time_zone_null(Deals::ClosedAt))
                    .col(timestamp_with_time_zone(Deals::CreatedAt))
                    .col(timestamp_with_time_zone(Deals::UpdatedAt))
                    .col(string_null(Deals::CompanyDomain))
                    .col(json(Deals::ContactEmails))
                    .col(string_null(Deals::ReferralCode))
                    .col(boolean(Deals::Deleted))
                    .col(timestamp_with_time_zone(Deals::FirstSeenAt))
                    .col(timestamp_with_time_zone(Deals::LastAppliedAt))
                    .foreign_key(&mut fk(
                        Deals::Table,
                        Deals::ProgramId,
                        Programs::Table,
                        Programs::Id,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index(
                    "uq_deals_source_external",
                    Deals::Table,
                    vec![Deals::SourceId.into_iden(), Deals::ExternalId.into_iden()],
                )
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_deals_program",
                Deals::Table,
                vec![Deals::ProgramId.into_iden(), Deals::Id.into_iden()],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Attributions::Table)
                    .col(string(Attributions::DealId).primary_key())
                    .col(string(Attributions::PartnerId))
                    .col(string_null(Attributions::ReferralId))
                    .col(string(Attributions::Method))
                    .col(timestamp_with_time_zone(Attributions::CreatedAt))
                    .col(timestamp_with_time_zone(Attributions::UpdatedAt))
                    .foreign_key(&mut fk(
                        Attributions::Table,
                        Attributions::DealId,
                        Deals::Table,
                        Deals::Id,
                    ))
                    .foreign_key(&mut fk(
                        Attributions::Table,
                        Attributions::PartnerId,
                        Partners::Table,
                        Partners::Id,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_attributions_partner",
                Attributions::Table,
                vec![
                    Attributions::PartnerId.into_iden(),
                    Attributions::DealId.into_iden(),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_attributions_referral",
                Attributions::Table,
                vec![
                    Attributions::ReferralId.into_iden(),
                    Attributions::DealId.into_iden(),
                ],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Payouts::Table)
                    .col(string(Payouts::Id).primary_key())
                    .col(string(Payouts::PartnerId))
                    .col(string(Payouts::ProgramId))
                    .col(string(Payouts::Currency))
                    .col(string(Payouts::Total))
                    .col(string(Payouts::Status))
                    .col(text_null(Payouts::Reference))
                    .col(timestamp_with_time_zone(Payouts::CreatedAt))
                    .col(timestamp_with_time_zone_null(Payouts::PaidAt))
                    .foreign_key(&mut fk(
                        Payouts::Table,
                        Payouts::PartnerId,
                        Partners::Table,
                        Partners::Id,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(LedgerEntries::Table)
                    .col(string(LedgerEntries::Id).primary_key())
                    .col(string(LedgerEntries::PartnerId))
                    .col(string(LedgerEntries::ProgramId))
                    .col(string_null(LedgerEntries::DealId))
                    .col(string_null(LedgerEntries::PayoutId))
                    .col(string(LedgerEntries::Kind))
                    .col(string(LedgerEntries::Amount))
                    .col(string(LedgerEntries::Currency))
                    .col(string(LedgerEntries::Status))
                    .col(timestamp_with_time_zone(LedgerEntries::CreatedAt))
                    .col(timestamp_with_time_zone(LedgerEntries::AvailableAt))
                    .col(timestamp_with_time_zone(LedgerEntries::UpdatedAt))
                    .foreign_key(&mut fk(
                        LedgerEntries::Table,
                        LedgerEntries::PartnerId,
                        Partners::Table,
                        Partners::Id,
                    ))
                    .foreign_key(&mut fk(
                        LedgerEntries::Table,
                        LedgerEntries::ProgramId,
                        Programs::Table,
                        Programs::Id,
                    ))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (
                "idx_ledger_partner",
                vec![
                    LedgerEntries::PartnerId.into_iden(),
                    LedgerEntries::Id.into_iden(),
                ],
            ),
            (
                "idx_ledger_deal",
                vec![
                    LedgerEntries::DealId.into_iden(),
                    LedgerEntries::Id.into_iden(),
                ],
            ),
        ] {
            manager
                .create_index(index(name, LedgerEntries::Table, cols))
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(ExchangeRates::Table)
                    .col(string(ExchangeRates::Id).primary_key())
                    .col(string(ExchangeRates::Base))
                    .col(string(ExchangeRates::Quote))
                    .col(string(ExchangeRates::Rate))
                    .col(timestamp_with_time_zone(ExchangeRates::EffectiveAt))
                    .col(timestamp_with_time_zone(ExchangeRates::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index(
                    "uq_exchange_rates_pair_time",
                    ExchangeRates::Table,
                    vec![
                        ExchangeRates::Base.into_iden(),
                        ExchangeRates::Quote.into_iden(),
                        ExchangeRates::EffectiveAt.into_iden(),
                    ],
                )
                .unique()
                .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(string(ApiKeys::Id).primary_key())
                    .col(text(ApiKeys::Name))
                    .col(string(ApiKeys::Role))
                    .col(string_null(ApiKeys::PartnerId))
                    .col(json_null(ApiKeys::ProgramIds))
                    .col(string_uniq(ApiKeys::TokenHash))
                    .col(string(ApiKeys::TokenPrefix))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::LastUsedAt))
                    .foreign_key(&mut fk(
                        ApiKeys::Table,
                        ApiKeys::PartnerId,
                        Partners::Table,
                        Partners::Id,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_pk_auto(Events::Seq))
                    .col(string_uniq(Events::Id))
                    .col(string(Events::Type))
                    .col(string(Events::ProgramId))
                    .col(string_null(Events::PartnerId))
                    .col(json(Events::Data))
                    .col(timestamp_with_time_zone(Events::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_events_program",
                Events::Table,
                vec![Events::ProgramId.into_iden(), Events::Seq.into_iden()],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(JobRuns::Table)
                    .col(string(JobRuns::Id).primary_key())
                    .col(string(JobRuns::Name))
                    .col(string(JobRuns::Status))
                    .col(timestamp_with_time_zone(JobRuns::StartedAt))
                    .col(timestamp_with_time_zone_null(JobRuns::FinishedAt))
                    .col(json_null(JobRuns::Stats))
                    .col(text_null(JobRuns::Error))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_job_runs_name",
                JobRuns::Table,
                vec![JobRuns::Name.into_iden(), JobRuns::StartedAt.into_iden()],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            JobRuns::Table.into_iden(),
            Events::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            ExchangeRates::Table.into_iden(),
            LedgerEntries::Table.into_iden(),
            Payouts::Table.into_iden(),
            Attributions::Table.into_iden(),
            Deals::Table.into_iden(),
            Referrals::Table.into_iden(),
            Partners::Table.into_iden(),
            Programs::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
