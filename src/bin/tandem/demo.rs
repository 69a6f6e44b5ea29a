//! `tandem serve --demo`: seeds a demo program so a newcomer sees data at once. Runs only on a
//! database without programs.

use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, PaginatorTrait};
use serde_json::json;

use tandem::db::states::DealStatus;
use tandem::{
    db::{
        Db,
        entities::{attribution, deal, program},
    },
    domain::{
        auth::{ApiKeyRole, create_key},
        events::{self, EventType},
        ids::new_id,
        partners::{CreatePartnerInput, create_partner},
        programs::{
            CommissionPlanInput, CommissionType, CreateProgramInput, ProgramKind, Tier,
            create_program,
        },
        referrals::{SubmitReferralInput, submit_referral},
    },
    error::ApiError,
};

/// What the demo seeding created.
pub struct DemoSeed {
    /// The demo program.
    pub program_id: String,
    /// The partner whose key is returned.
    pub partner_name: String,
    /// A partner key for that partner.
    pub partner_token: String,
}

fn err(e: ApiError) -> anyhow::Error {
    e.into_anyhow().context("seeding the demo failed")
}

/// Seeds the demo program; `None` when the database already has programs.
pub async fn seed_demo(db: &Db) -> anyhow::Result<Option<DemoSeed>> {
    if program::Entity::find().count(db.reads()).await? > 0 {
        return Ok(None);
    }
    let program = create_program(
        db,
        CreateProgramInput {
            name: "Acme Cloud Partner Program".into(),
            kind: ProgramKind::RevenueShare,
            currency: "USD".into(),
            commission: CommissionPlanInput {
                commission_type: CommissionType::Percent,
                rate: Some(Decimal::from(20)),
                flat_amount: None,
                tiers: Some(vec![
                    Tier {
                        min_revenue: Decimal::ZERO,
                        rate: Decimal::from(20),
                    },
                    Tier {
                        min_revenue: Decimal::from(50_000),
                        rate: Decimal::from(25),
                    },
                ]),
                cap_per_deal: Some(Decimal::from(10_000)),
                min_deal_amount: Some(Decimal::from(1_000)),
                recurring: None,
            },
            attribution_window_days: None,
            hold_days: None,
            clawback_days: None,
            registration: None,
            // Sales engage a referred lead within a working day.
            lead_sla_minutes: Some(8 * 60),
            // Companies may apply to join (applyToProgram, without a key).
            applications: Some(tandem::domain::programs::ApplicationsInput {
                open: Some(true),
                auto_approve_domains: None,
            }),
            group_review_schedule: None,
            manual_review_above: None,
        },
    )
    .await
    .map_err(err)?;
    let mut partners = Vec::new();
    for (name, domain, email) in [
        (
            "Northwind Agency",
            "northwind.example",
            "alliances@northwind.example",
        ),
        (
            "Globex Resellers",
            "globex.example",
            "partners@globex.example",
        ),
        (
            "Initech Integrations",
            "initech.example",
            "bd@initech.example",
        ),
    ] {
        partners.push(
            create_partner(
                db,
                CreatePartnerInput {
                    program_id: program.id.clone().into(),
                    name: name.into(),
                    domain: Some(domain.into()),
                    contact_email: email.into(),
                },
            )
            .await
            .map_err(err)?,
        );
    }
    let admin = tandem::domain::auth::Principal::Admin {
        key_id: "demo-seed".into(),
    };
    let referrals = [
        (0, "Contoso Ltd", "contoso.example", "it@contoso.example"),
        (
            0,
            "Fabrikam Inc",
            "fabrikam.example",
            "cto@fabrikam.example",
        ),
        (
            1,
            "Tailspin Toys",
            "tailspin.example",
            "ops@tailspin.example",
        ),
        (1, "Contoso Ltd", "contoso.example", "buyer@contoso.example"),
        (
            2,
            "Wide World Importers",
            "wideworld.example",
            "it@wideworld.example",
        ),
    ];
    let mut submitted = Vec::new();
    for (partner, company, domain, email) in referrals {
        submitted.push(
            submit_referral(
                db,
                &admin,
                SubmitReferralInput {
                    program_id: None,
                    partner_id: Some(partners[partner].id.clone().into()),
                    company_name: company.into(),
                    company_domain: Some(domain.into()),
                    contact_name: None,
                    contact_email: Some(email.into()),
                    notes: Some("Seeded by --demo".into()),
                },
            )
            .await
            .map_err(err)?,
        );
    }
    // Two CRM deals: Contoso (won, attributed by domain to Northwind) and Tailspin (open).
    let now = Utc::now();
    let tx = db.begin_write().await?;
    for (referral, name, amount, won) in [
        (
            &submitted[0],
            "Contoso — annual plan",
            Decimal::from(12_000),
            true,
        ),
        (
            &submitted[2],
            "Tailspin — pilot",
            Decimal::from(4_500),
            false,
        ),
    ] {
        let deal = deal::ActiveModel {
            id: Set(new_id()),
            program_id: Set(program.id.clone()),
            source_id: Set("demo".into()),
            external_id: Set(format!("demo-{}", referral.id)),
            name: Set(name.into()),
            amount: Set(amount.to_string()),
            currency: Set("USD".into()),
            status: Set(if won {
                DealStatus::Won
            } else {
                DealStatus::Open
            }),
            stage: Set(Some(if won { "closedwon" } else { "qualified" }.into())),
            closed_at: Set(won.then_some(now - Duration::days(2))),
            created_at: Set(now - Duration::days(20)),
            updated_at: Set(now - Duration::days(2)),
            company_domain: Set(referral.company_domain.clone()),
            contact_emails: Set(json!([referral.contact_email])),
            referral_code: Set(None),
            deleted: Set(false),
            first_seen_at: Set(now),
            last_applied_at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
        attribution::ActiveModel {
            deal_id: Set(deal.id.clone()),
            partner_id: Set(referral.partner_id.clone()),
            referral_id: Set(Some(referral.id.clone())),
            method: Set(tandem::db::states::AttributionMethod::Domain),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&*tx)
        .await?;
        events::record(
            &*tx,
            EventType::DealAttributed,
            &program.id,
            Some(&referral.partner_id),
            json!({"dealId": deal.id, "method": "DOMAIN", "referralId": referral.id}),
        )
        .await?;
        // A deal attributed to a referral is sales engaging the lead (its SLA is met).
        let mut engaged = Vec::new();
        tandem::domain::registration::engaged_by_deal(&*tx, &referral.id, now, &mut engaged)
            .await?;
        events::record_all(&*tx, engaged).await?;
        if won {
            events::record(
                &*tx,
                EventType::DealWon,
                &program.id,
                Some(&referral.partner_id),
                json!({"dealId": deal.id, "amount": deal.amount, "currency": deal.currency}),
            )
            .await?;
            let mut converted: tandem::db::entities::referral::ActiveModel =
                referral.clone().into();
            converted.status = Set(tandem::db::states::ReferralStatus::Converted);
            converted.update(&*tx).await?;
        }
    }
    tx.commit().await?;
    // The won deal earns 20 % of 12,000 USD (first tier; below the 10,000 cap): the
    // reconciler books it, as it would for any CRM deal.
    tandem::domain::reconcile::reconcile(db, None).await?;
    let key = create_key(
        db,
        "demo partner key",
        ApiKeyRole::Partner,
        Some(&partners[0].id),
        &[],
    )
    .await
    .map_err(err)?;
    Ok(Some(DemoSeed {
        program_id: program.id,
        partner_name: partners[0].name.clone(),
        partner_token: key.token,
    }))
}
