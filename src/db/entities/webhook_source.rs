//! Entity for the `webhook_sources` table.

use sea_orm::entity::prelude::*;

/// One row of `webhook_sources`. `secret_ciphertext` is sealed with the hub's secret key.
#[derive(Clone, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "webhook_sources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub name: String,
    pub kind: crate::db::states::WebhookSourceKind,
    pub connection_id: Option<String>,
    pub secret_ciphertext: String,
    pub salesforce_org_id: Option<String>,
    pub hubspot_signature_version: Option<String>,
    pub referral_code_field: Option<String>,
    pub created_at: DateTimeUtc,
    /// The secret before the last rotation, sealed; verifies until `previous_secret_expires_at`.
    pub previous_secret_ciphertext: Option<String>,
    pub previous_secret_expires_at: Option<DateTimeUtc>,
    /// ENABLED or DISABLED (answers 410 and stores nothing).
    pub status: crate::db::states::SourceStatus,
    /// When it was deleted (answers 410; its receipts stay as history).
    pub deleted_at: Option<DateTimeUtc>,
    pub updated_at: Option<DateTimeUtc>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sealed secret stays out of logs even though it is encrypted.
        f.debug_struct("WebhookSource")
            .field("id", &self.id)
            .field("program_id", &self.program_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
