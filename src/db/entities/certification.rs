//! Entity for the `certifications` table: a person at a partner certified on a course
//! (DESIGN §13).

use sea_orm::entity::prelude::*;

/// One row of `certifications`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "certifications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub partner_id: String,
    /// Lower-cased.
    pub person_email: String,
    pub course_key: String,
    pub issued_at: DateTimeUtc,
    /// Null: does not expire.
    pub expires_at: Option<DateTimeUtc>,
    /// When `certification.expiring` was written for the current `expires_at`.
    pub expiring_notified_at: Option<DateTimeUtc>,
    pub source: crate::db::states::CertificationSource,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
