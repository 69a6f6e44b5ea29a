//! Entity for the `partner_group_memberships` table: the history of a partner's groups; the
//! row without `until` is the current one (DESIGN §13).

use sea_orm::entity::prelude::*;

/// One row of `partner_group_memberships`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "partner_group_memberships")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub partner_id: String,
    pub group_id: String,
    pub since: DateTimeUtc,
    /// Null: the current membership.
    pub until: Option<DateTimeUtc>,
    pub reason: crate::db::states::GroupChangeReason,
    /// Set by an admin: evaluations leave the partner alone until it is cleared.
    pub manual: bool,
    /// The admin's note on a manual change.
    pub note: Option<String>,
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
