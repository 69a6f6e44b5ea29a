//! The partner lifecycle (DESIGN §13): applications (the one operation that needs no key, and
//! their review) and certifications.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use crate::{
    db::{
        Db,
        entities::{certification, partner_application},
        pages::Direction,
        states::{ApplicationStatus, CertificationSource},
    },
    domain::{
        applications::{
            ApplyLimiter, ApplyToProgramInput, ReviewApplicationInput, Reviewed, apply_to_program,
            review_application,
        },
        certifications::{RecordCertificationInput, record_certification},
    },
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
