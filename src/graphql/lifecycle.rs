//! The partner lifecycle (DESIGN §13): applications (the one operation that needs no key, and
//! their review), partner groups and certifications.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use crate::{
    db::{
        Db,
        entities::{certification, partner, partner_application, partner_group_membership},
        pages::Direction,
        states::{ApplicationStatus, CertificationSource, GroupChangeReason},
    },
    domain::{
        applications::{
            ApplyLimiter, ApplyToProgramInput, ReviewApplicationInput, Reviewed, apply_to_program,
            review_application,
        },
        auth::Principal,
        certifications::{RecordCertificationInput, record_certification},
        groups::{
            self, CreatePartnerGroupInput, Group, GroupRules, SetPartnerGroupInput,
            UpdatePartnerGroupInput,
        },
        programs::CommissionPlan,
    },
    error::ApiError,
    graphql::{
        ClientAddress, admin_db, caller,
        connection::{EqIf, connection},
        loaders::Loaders,
        principal,
        types::Partner,
        types::page_complexity,
    },
};

/// A company's application to join a program.
pub struct PartnerApplication(pub partner_application::Model);

/// A company's application to join a program.
#[tandem_derive::plain_object]
#[Object]
impl PartnerApplication {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The program applied to.
    async fn program_id(&self) -> ID {
        ID(self.0.program_id.clone())
    }
    /// The company's name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Its normalised domain.
    async fn domain(&self) -> &str {
        &self.0.domain
    }
    /// The contact's address.
    async fn contact_email(&self) -> &str {
        &self.0.contact_email
    }
    /// The contact's name.
    async fn contact_name(&self) -> Option<&str> {
        self.0.contact_name.as_deref()
    }
    /// The applicant's message.
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    /// `PENDING`, `APPROVED` or `REJECTED`.
    async fn status(&self) -> ApplicationStatus {
        self.0.status
    }
    /// The reviewer's reason (a rejection's is told to the applicant).
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// The partner an approval created.
    async fn partner_id(&self) -> Option<ID> {
        self.0.partner_id.clone().map(ID)
    }
    /// When it was received.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it was reviewed.
    async fn reviewed_at(&self) -> Option<DateTime<Utc>> {
        self.0.reviewed_at
    }
}

connection!(
    PartnerApplicationConnection,
    PartnerApplicationEdge,
    PartnerApplication,
    "applications"
);

/// Filters for `applications`.
#[derive(Debug, Default, InputObject)]
pub struct ApplicationFilter {
    /// Only applications to this program.
    pub program_id: Option<ID>,
    /// Only applications in this state.
    pub status: Option<ApplicationStatus>,
}

/// A ranked group of a program's partners with its own commission plan, hold period and
/// promotion rules (DESIGN §13).
pub struct PartnerGroup(pub Group);

/// A ranked group of a program's partners with its own commission plan, hold period and
/// promotion rules (DESIGN §13).
#[Object]
impl PartnerGroup {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.model.id.clone())
    }
    /// The program.
    async fn program_id(&self) -> ID {
        ID(self.0.model.program_id.clone())
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.model.name
    }
    /// 0 for the default group; higher ranks are better groups.
    async fn rank(&self) -> i32 {
        self.0.model.rank
    }
    /// Whether this is the program's default group (rank 0).
    async fn is_default(&self) -> bool {
        self.0.model.rank == 0
    }
    /// The plan the group's partners earn on the deals they close while in it (the program's
    /// recurring terms apply to every group).
    async fn commission(&self) -> &CommissionPlan {
        &self.0.plan
    }
    /// How long the group's accruals stay pending.
    async fn hold_days(&self) -> i32 {
        self.0.model.hold_days
    }
    /// What a partner must reach over the trailing window to be placed in the group.
    async fn rules(&self) -> &GroupRules {
        &self.0.rules
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.model.created_at
    }
    /// When it last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.model.updated_at
    }
}

/// One period of a partner's group membership.
pub struct GroupMembership(pub partner_group_membership::Model);

/// One period of a partner's group membership.
#[Object]
impl GroupMembership {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The group.
    async fn group(&self, ctx: &Context<'_>) -> Result<PartnerGroup> {
        group_by_id(ctx, &self.0.group_id).await
    }
    /// When the partner entered the group.
    async fn since(&self) -> DateTime<Utc> {
        self.0.since
    }
    /// When it left (null: its current group).
    async fn until(&self) -> Option<DateTime<Utc>> {
        self.0.until
    }
    /// `JOINED`, `PROMOTED`, `DEMOTED`, `MANUAL` or `OVERRIDE_CLEARED`.
    async fn reason(&self) -> GroupChangeReason {
        self.0.reason
    }
    /// Set by an admin: the rules leave the partner here until the override is cleared.
    async fn manual(&self) -> bool {
        self.0.manual
    }
    /// The admin's note on a manual change (admins only; null for partner keys).
    async fn note(&self, ctx: &Context<'_>) -> Result<Option<&str>> {
        Ok(match principal(ctx).await? {
            Principal::Admin { .. } => self.0.note.as_deref(),
            _ => None,
        })
    }
}

async fn group_by_id(ctx: &Context<'_>, id: &str) -> Result<PartnerGroup> {
    let db = ctx.data_unchecked::<Db>();
    let model = <crate::db::entities::partner_group::Entity as sea_orm::EntityTrait>::find_by_id(
        id.to_string(),
    )
    .one(db.reads())
    .await
    .map_err(ApiError::from)?
    .ok_or_else(|| ApiError::Internal(format!("partner group {id} is missing")))?;
    Ok(PartnerGroup(Group::of(model).map_err(ApiError::from)?))
}

/// A partner's distance to the next group up (what earns the next tier).
#[derive(SimpleObject)]
pub struct GroupProgress {
    /// The next group up.
    pub group: PartnerGroup,
    /// Won deals still needed within its window.
    pub deals_won_needed: i32,
    /// Won revenue still needed within its window (program currency).
    pub revenue_needed: rust_decimal::Decimal,
    /// The fewest new certifications that would meet its certification rules (one person
    /// certified on a missing course counts towards both the course and the people).
    pub certifications_needed: i32,
    /// Its required courses the partner holds no unexpired certification of.
    pub missing_certifications: Vec<String>,
    /// More certified people needed.
    pub certified_people_needed: i32,
}

/// `Partner.group`, `Partner.groupHistory` and `Partner.nextGroupProgress`.
pub async fn partner_group(
    ctx: &Context<'_>,
    partner: &partner::Model,
) -> Result<Option<PartnerGroup>> {
    let db = ctx.data_unchecked::<Db>();
    match groups::current_membership(db.reads(), &partner.id)
        .await
        .map_err(ApiError::from)?
    {
        Some(m) => Ok(Some(group_by_id(ctx, &m.group_id).await?)),
        None => Ok(None),
    }
}

/// A partner's memberships, newest first.
pub async fn partner_group_history(
    ctx: &Context<'_>,
    partner: &partner::Model,
) -> Result<Vec<GroupMembership>> {
    let db = ctx.data_unchecked::<Db>();
    Ok(groups::group_history(db, &partner.id)
        .await?
        .into_iter()
        .map(GroupMembership)
        .collect())
}

/// A partner's progress towards the next group up.
pub async fn partner_group_progress(
    ctx: &Context<'_>,
    partner: &partner::Model,
) -> Result<Option<GroupProgress>> {
    let db = ctx.data_unchecked::<Db>();
    let Some(progress) = groups::next_group_progress(db, partner).await? else {
        return Ok(None);
    };
    Ok(Some(GroupProgress {
        group: PartnerGroup(Group::of(progress.group).map_err(ApiError::from)?),
        deals_won_needed: progress.deals_won_needed,
        revenue_needed: progress.revenue_needed,
        certifications_needed: progress.certifications_needed,
        missing_certifications: progress.missing_certifications,
        certified_people_needed: progress.certified_people_needed,
    }))
}

/// A program's groups by rank.
pub async fn groups_of_program(ctx: &Context<'_>, program_id: &str) -> Result<Vec<PartnerGroup>> {
    let db = ctx.data_unchecked::<Db>();
    Ok(groups::groups_of(db.reads(), Some(program_id))
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(PartnerGroup)
        .collect())
}

/// Partner lifecycle queries.
#[derive(Default)]
pub struct LifecycleQuery;

/// Partner lifecycle queries.
#[Object]
impl LifecycleQuery {
    /// Partner applications, newest first (admins).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn applications(
        &self,
        ctx: &Context<'_>,
        filter: Option<ApplicationFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<PartnerApplicationConnection> {
        admin_db(ctx).await?;
        let filter = filter.unwrap_or_default();
        let query = <partner_application::Entity as sea_orm::EntityTrait>::find()
            .eq_if(
                partner_application::Column::ProgramId,
                filter.program_id.map(|id| id.0),
            )
            .eq_if(
                partner_application::Column::Status,
                filter.status.map(|s| s.as_str()),
            );
        PartnerApplicationConnection::page(
            ctx,
            query,
            Direction::Descending,
            (first, after),
            PartnerApplication,
        )
        .await
    }

    /// A program's partner groups by rank (admins, and the program's partners: they see what
    /// earns each group). `NOT_FOUND` for an unknown program, or another program's.
    async fn partner_groups(&self, ctx: &Context<'_>, program_id: ID) -> Result<Vec<PartnerGroup>> {
        let (principal, db) = caller(ctx).await?;
        principal.require_admin_or_partner()?;
        if let Principal::Partner {
            program_id: own, ..
        } = principal
            && *own != program_id.0
        {
            return Err(ApiError::NotFound("program").into());
        }
        crate::domain::programs::find_program(db.reads(), &program_id.0).await?;
        groups_of_program(ctx, &program_id.0).await
    }
}

/// A person at a partner certified on a course.
pub struct Certification(pub certification::Model);

/// A person at a partner certified on a course.
#[Object]
impl Certification {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The partner the person works for (its id).
    async fn partner_id(&self) -> ID {
        ID(self.0.partner_id.clone())
    }
    /// The partner the person works for. Null for integration keys, which read no partner
    /// data (an LMS knows the partner by the id it sent).
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        if principal(ctx).await?.require_admin_or_partner().is_err() {
            return Ok(None);
        }
        let loaders = ctx.data_unchecked::<Loaders>();
        Ok(
            Box::pin(loaders.partners.load_one(self.0.partner_id.clone()))
                .await?
                .map(Partner),
        )
    }
    /// The certified person (lower-cased).
    async fn person_email(&self) -> &str {
        &self.0.person_email
    }
    /// The course.
    async fn course_key(&self) -> &str {
        &self.0.course_key
    }
    /// When it was issued.
    async fn issued_at(&self) -> DateTime<Utc> {
        self.0.issued_at
    }
    /// When it expires (null: never).
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }
    /// Whether it counts now (not expired).
    async fn active(&self) -> bool {
        self.0.expires_at.is_none_or(|e| e > Utc::now())
    }
    /// `API` or `WEBHOOK`.
    async fn source(&self) -> CertificationSource {
        self.0.source
    }
}

/// Result of `recordCertification`.
#[derive(SimpleObject)]
pub struct RecordCertificationPayload {
    /// The certification as recorded.
    pub certification: Certification,
}

/// Result of `createPartnerGroup` and `updatePartnerGroup`.
#[derive(SimpleObject)]
pub struct PartnerGroupPayload {
    /// The group as stored.
    pub group: PartnerGroup,
}

impl PartnerGroupPayload {
    fn of(model: crate::db::entities::partner_group::Model) -> Result<PartnerGroupPayload> {
        Ok(PartnerGroupPayload {
            group: PartnerGroup(Group::of(model).map_err(ApiError::from)?),
        })
    }
}

/// Result of `setPartnerGroup`.
#[derive(SimpleObject)]
pub struct SetPartnerGroupPayload {
    /// The partner's current membership.
    pub membership: GroupMembership,
}

/// Result of `applyToProgram` and `reviewApplication`.
#[derive(SimpleObject)]
pub struct ApplicationPayload {
    /// The application as it stands.
    pub application: PartnerApplication,
    /// The partner an approval created (its id; the key below reads the rest).
    pub partner_id: Option<ID>,
    /// The new partner's first key (`tdm_…`), shown this once; null unless approved now.
    pub token: Option<String>,
}

impl From<Reviewed> for ApplicationPayload {
    fn from(reviewed: Reviewed) -> Self {
        ApplicationPayload {
            application: PartnerApplication(reviewed.application),
            partner_id: reviewed.partner.map(|p| ID(p.id)),
            token: reviewed.token,
        }
    }
}

/// Partner lifecycle mutations.
#[derive(Default)]
pub struct LifecycleMutation;

/// Partner lifecycle mutations.
#[Object]
impl LifecycleMutation {
    /// Applies to join a program whose applications are open. The one operation that needs no
    /// key; limited per client address (`TOO_MANY_REQUESTS`). An applicant whose email domain
    /// the program auto-approves becomes a partner at once and receives its first key here.
    /// Writes `partner.applied`.
    async fn apply_to_program(
        &self,
        ctx: &Context<'_>,
        input: ApplyToProgramInput,
    ) -> Result<ApplicationPayload> {
        let address = ctx
            .data_opt::<ClientAddress>()
            .and_then(|a| a.0)
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        ctx.data_unchecked::<ApplyLimiter>().check(address)?;
        let db = ctx.data_unchecked::<Db>();
        Ok(apply_to_program(db, input).await?.into())
    }

    /// Records that a person at a partner completed a course (admins, or an INTEGRATION key
    /// granted the partner's program: an LMS). The same person and course again renews it.
    /// Writes `certification.recorded`.
    async fn record_certification(
        &self,
        ctx: &Context<'_>,
        input: RecordCertificationInput,
    ) -> Result<RecordCertificationPayload> {
        let (principal, db) = caller(ctx).await?;
        Ok(RecordCertificationPayload {
            certification: Certification(record_certification(db, principal, input).await?),
        })
    }

    /// Creates a partner group (admins). A program's first group is its default (rank 0,
    /// no rules): every partner of the program joins it at once, and new partners join it.
    async fn create_partner_group(
        &self,
        ctx: &Context<'_>,
        input: CreatePartnerGroupInput,
    ) -> Result<PartnerGroupPayload> {
        let db = admin_db(ctx).await?;
        PartnerGroupPayload::of(groups::create_partner_group(db, input).await?)
    }

    /// Changes a partner group (admins): a new plan or hold period applies to the deals its
    /// members close while in it (the next reconcile recomputes them); new rules apply from
    /// the next evaluation.
    async fn update_partner_group(
        &self,
        ctx: &Context<'_>,
        input: UpdatePartnerGroupInput,
    ) -> Result<PartnerGroupPayload> {
        let db = admin_db(ctx).await?;
        PartnerGroupPayload::of(groups::update_partner_group(db, input).await?)
    }

    /// Holds a partner in a group whatever the rules say (admins), until cleared with
    /// `groupId: null`, which places the partner by the rules at once. Writes
    /// `partner.group_changed` when the group changes.
    async fn set_partner_group(
        &self,
        ctx: &Context<'_>,
        input: SetPartnerGroupInput,
    ) -> Result<SetPartnerGroupPayload> {
        let db = admin_db(ctx).await?;
        Ok(SetPartnerGroupPayload {
            membership: GroupMembership(groups::set_partner_group(db, input).await?),
        })
    }

    /// Approves a `PENDING` application (creates the partner, writes `partner.created`, and
    /// returns the partner's first key once) or rejects it (admins; `CONFLICT` for any other
    /// state, or when a partner of the program has taken the domain since).
    async fn review_application(
        &self,
        ctx: &Context<'_>,
        input: ReviewApplicationInput,
    ) -> Result<ApplicationPayload> {
        let db = admin_db(ctx).await?;
        Ok(review_application(db, input).await?.into())
    }
}
