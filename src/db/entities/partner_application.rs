//! Entity for the `partner_applications` table: companies asking to join a program through the
//! public `applyToProgram` (DESIGN §13).

use sea_orm::entity::prelude::*;

/// One row of `partner_applications`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "partner_applications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub name: String,
    /// Normalised company domain.
    pub domain: String,
    pub contact_email: String,
    pub contact_name: Option<String>,
    pub message: Option<String>,
    pub status: crate::db::states::ApplicationStatus,
    /// Why it was rejected (told to the applicant), or a reviewer's note.
    pub reason: Option<String>,
    /// The partner an approval created.
    pub partner_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub reviewed_at: Option<DateTimeUtc>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
