//! The neutral Deal: the one shape every CRM deal is mapped onto before Tandem stores it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Whether a deal is still open, won or lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DealStatus {
    /// Still in the pipeline.
    Open,
    /// Closed-won.
    Won,
    /// Closed-lost (a deleted deal also counts as lost).
    Lost,
}

impl DealStatus {
    /// The upper-case name used in the database and in GraphQL.
    pub fn as_str(self) -> &'static str {
        match self {
            DealStatus::Open => "OPEN",
            DealStatus::Won => "WON",
            DealStatus::Lost => "LOST",
        }
    }

    /// Parses the upper-case database form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OPEN" => Some(DealStatus::Open),
            "WON" => Some(DealStatus::Won),
            "LOST" => Some(DealStatus::Lost),
            _ => None,
        }
    }
}

/// A CRM deal in Tandem's neutral form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeutralDeal {
    /// The CRM's own id for the deal.
    pub external_id: String,
    /// Deal name.
    pub name: String,
    /// Deal amount in `currency`.
    pub amount: Decimal,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Open, won or lost.
    pub status: DealStatus,
    /// The CRM's stage label.
    pub stage: Option<String>,
    /// When the deal closed (won or lost).
    pub closed_at: Option<DateTime<Utc>>,
    /// When the deal was created in the CRM.
    pub created_at: DateTime<Utc>,
    /// The CRM's modification time: newer updates win.
    pub updated_at: DateTime<Utc>,
    /// The customer's company domain, if the CRM knows it.
    pub company_domain: Option<String>,
    /// The CRM's id of the customer's company (HubSpot company, Salesforce Account, Pipedrive
    /// organization), if the deal has one.
    #[serde(default)]
    pub company_id: Option<String>,
    /// Contact emails associated with the deal.
    pub contact_emails: Vec<String>,
    /// A Tandem referral code carried by the deal, if any.
    pub referral_code: Option<String>,
    /// Whether the CRM deleted the deal.
    pub deleted: bool,
}

impl NeutralDeal {
    /// Checks the deal's money against Tandem's bounds ([`crate::money`]): the amount, and the
    /// currency as an active ISO 4217 code (in any case; the deal mirror stores it upper-case).
    /// The error names the field at fault.
    pub fn check(&self) -> Result<(), String> {
        crate::money::check_amount(self.amount)
            .map_err(|rule| format!("amount {} {rule}", self.amount))?;
        crate::money::currency(&self.currency).ok_or_else(|| {
            format!(
                "currency {:?} is not an active ISO 4217 code",
                self.currency.chars().take(16).collect::<String>()
            )
        })?;
        Ok(())
    }
}
