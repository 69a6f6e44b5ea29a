//! Mutation root: each mutation takes one `input` and returns a payload object.

use crate::graphql::admin_db;
use crate::graphql::caller;
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};

use crate::{
    domain::{
        auth::{ApiKeyRole, create_key, revoke_key},
        partners::{
            CreatePartnerInput, UpdatePartnerInput, UpdatePartnerStatusInput, create_partner,
            update_partner, update_partner_status,
        },
        programs::{CreateProgramInput, UpdateProgramInput, create_program, update_program},
        referrals::{
            ExtendReferralInput, ReviewReferralInput, SubmitReferralInput,
            UpdateReferralStatusInput, extend_referral, review_referral, submit_referral,
            update_referral_status,
        },
        registration::{RecordEngagementInput, record_engagement},
    },
    graphql::types::{ApiKey, Partner, Program, Referral},
};

/// Result of `createProgram`.
#[derive(SimpleObject)]
pub struct CreateProgramPayload {
    /// The new program.
    pub program: Program,
}

/// Result of `updateProgram`.
#[derive(SimpleObject)]
pub struct UpdateProgramPayload {
    /// The changed program.
    pub program: Program,
}

/// Result of `createPartner`.
#[derive(SimpleObject)]
pub struct CreatePartnerPayload {
    /// The new partner, with its referral code.
    pub partner: Partner,
}

/// Result of `updatePartner`.
#[derive(SimpleObject)]
pub struct UpdatePartnerPayload {
    /// The partner as it is now.
    pub partner: Partner,
}

/// Result of `updatePartnerStatus`.
#[derive(SimpleObject)]
pub struct UpdatePartnerStatusPayload {
    /// The partner.
    pub partner: Partner,
}

/// Input of `createApiKey`.
#[derive(Debug, InputObject)]
pub struct CreateApiKeyInput {
    /// A label for the key.
    pub name: String,
    /// Its role.
    pub role: ApiKeyRole,
    /// The partner a PARTNER key is bound to (required for PARTNER, refused otherwise).
    pub partner_id: Option<ID>,
    /// Programs an INTEGRATION key may read events of (required for INTEGRATION).
    pub program_ids: Option<Vec<ID>>,
}

/// Result of `createApiKey`.
#[derive(SimpleObject)]
pub struct CreateApiKeyPayload {
    /// The key's metadata.
    pub api_key: ApiKey,
    /// The bearer token: shown this once, stored only as a hash.
    pub token: String,
}

/// Input of `revokeApiKey`.
#[derive(Debug, InputObject)]
pub struct RevokeApiKeyInput {
    /// The key to revoke.
    pub id: ID,
}

/// Result of `revokeApiKey`.
#[derive(SimpleObject)]
pub struct RevokeApiKeyPayload {
    /// The revoked key.
    pub api_key: ApiKey,
}

/// Result of `submitReferral`.
#[derive(SimpleObject)]
pub struct SubmitReferralPayload {
    /// The referral: `ACCEPTED`, or `DUPLICATE` when the company was already registered.
    pub referral: Referral,
}

/// Result of `updateReferralStatus`.
#[derive(SimpleObject)]
pub struct UpdateReferralStatusPayload {
    /// The referral.
    pub referral: Referral,
}

/// Result of `reviewReferral`.
#[derive(SimpleObject)]
pub struct ReviewReferralPayload {
    /// The referral, `ACCEPTED` or `REJECTED`.
    pub referral: Referral,
}

/// Result of `extendReferral`.
#[derive(SimpleObject)]
pub struct ExtendReferralPayload {
    /// The referral with its new `protectedUntil`.
    pub referral: Referral,
}

/// Result of `recordEngagement`.
#[derive(SimpleObject)]
pub struct RecordEngagementPayload {
    /// The referral with its `engagedAt` and SLA.
    pub referral: Referral,
}

/// Core mutations: programs, partners, keys and referrals.
#[derive(Default)]
pub struct CoreMutation;

/// Core mutations: programs, partners, keys and referrals.
#[Object]
impl CoreMutation {
    /// Creates a partner program (admins).
    async fn create_program(
        &self,
        ctx: &Context<'_>,
        input: CreateProgramInput,
    ) -> Result<CreateProgramPayload> {
        let program = create_program(admin_db(ctx).await?, input).await?;
        Ok(CreateProgramPayload {
            program: Program(program),
        })
    }

    /// Changes a program's name, kind, commission plan or windows (admins).
    async fn update_program(
        &self,
        ctx: &Context<'_>,
        input: UpdateProgramInput,
    ) -> Result<UpdateProgramPayload> {
        let program = update_program(admin_db(ctx).await?, input).await?;
        Ok(UpdateProgramPayload {
            program: Program(program),
        })
    }

    /// Adds a partner to a program (admins). Writes `partner.created`.
    async fn create_partner(
        &self,
        ctx: &Context<'_>,
        input: CreatePartnerInput,
    ) -> Result<CreatePartnerPayload> {
        let partner = create_partner(admin_db(ctx).await?, input).await?;
        Ok(CreatePartnerPayload {
            partner: Partner(partner),
        })
    }

    /// Corrects a partner's name, domain or contact address (admins; a partner key its own name
    /// and contact address). Writes `partner.updated` naming the changed fields.
    async fn update_partner(
        &self,
        ctx: &Context<'_>,
        input: UpdatePartnerInput,
    ) -> Result<UpdatePartnerPayload> {
        let (principal, db) = caller(ctx).await?;
        let partner = update_partner(db, principal, input).await?;
        Ok(UpdatePartnerPayload {
            partner: Partner(partner),
        })
    }

    /// Suspends, reactivates or terminates a partner (admins). Writes `partner.updated`.
    async fn update_partner_status(
        &self,
        ctx: &Context<'_>,
        input: UpdatePartnerStatusInput,
    ) -> Result<UpdatePartnerStatusPayload> {
        let partner = update_partner_status(admin_db(ctx).await?, input).await?;
        Ok(UpdatePartnerStatusPayload {
            partner: Partner(partner),
        })
    }

    /// Creates an API key (admins). The token is in the payload, once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> Result<CreateApiKeyPayload> {
        let db = admin_db(ctx).await?;
        let program_ids: Vec<String> = input
            .program_ids
            .unwrap_or_default()
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        let partner_id = input.partner_id.map(|id| id.to_string());
        let created = create_key(
            db,
            &input.name,
            input.role,
            partner_id.as_deref(),
            &program_ids,
        )
        .await?;
        Ok(CreateApiKeyPayload {
            api_key: ApiKey(created.key),
            token: created.token,
        })
    }

    /// Revokes an API key: it stops working at once. Partner keys may revoke their own
    /// partner's keys.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        input: RevokeApiKeyInput,
    ) -> Result<RevokeApiKeyPayload> {
        let (principal, db) = caller(ctx).await?;
        Ok(RevokeApiKeyPayload {
            api_key: ApiKey(revoke_key(db, principal, input.id.as_str()).await?),
        })
    }

    /// Registers a referral (partners for themselves, admins on a partner's behalf).
    /// Writes `referral.submitted`.
    async fn submit_referral(
        &self,
        ctx: &Context<'_>,
        input: SubmitReferralInput,
    ) -> Result<SubmitReferralPayload> {
        let (principal, db) = caller(ctx).await?;
        Ok(SubmitReferralPayload {
            referral: Referral::from(submit_referral(db, principal, input).await?),
        })
    }

    /// Approves or rejects a `SUBMITTED` or `CONFLICT` registration (admins; `CONFLICT` for
    /// any other state). A rejection's reason is shown to the partner. Writes
    /// `referral.status_changed`.
    async fn review_referral(
        &self,
        ctx: &Context<'_>,
        input: ReviewReferralInput,
    ) -> Result<ReviewReferralPayload> {
        let referral = review_referral(admin_db(ctx).await?, input).await?;
        Ok(ReviewReferralPayload {
            referral: Referral::from(referral),
        })
    }

    /// Extends an `ACCEPTED` registration's protection by the program's `extensionDays`
    /// (admins; at most `maxExtensions` times, `CONFLICT` after).
    async fn extend_referral(
        &self,
        ctx: &Context<'_>,
        input: ExtendReferralInput,
    ) -> Result<ExtendReferralPayload> {
        let referral = extend_referral(admin_db(ctx).await?, input).await?;
        Ok(ExtendReferralPayload {
            referral: Referral::from(referral),
        })
    }

    /// Records that sales engaged a referred lead (admins, or an INTEGRATION key granted the
    /// referral's program: a sales tool). The first engagement stops the SLA clock.
    async fn record_engagement(
        &self,
        ctx: &Context<'_>,
        input: RecordEngagementInput,
    ) -> Result<RecordEngagementPayload> {
        let (principal, db) = caller(ctx).await?;
        let referral = record_engagement(db, principal, input).await?;
        Ok(RecordEngagementPayload {
            referral: Referral::from(referral),
        })
    }

    /// Accepts or rejects a referral (admins). Writes `referral.status_changed`.
    async fn update_referral_status(
        &self,
        ctx: &Context<'_>,
        input: UpdateReferralStatusInput,
    ) -> Result<UpdateReferralStatusPayload> {
        let referral = update_referral_status(admin_db(ctx).await?, input).await?;
        Ok(UpdateReferralStatusPayload {
            referral: Referral::from(referral),
        })
    }
}
