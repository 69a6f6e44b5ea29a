//! Typed states: every status, kind or role column is one of these enums, declared once with
//! its stored form. [`stored_enum!`] gives each the sea-orm column type (entities use the enum
//! itself), the GraphQL enum, `as_str`/`parse` for the few places that build SQL text, and the
//! native reader's decoder.

/// Declares a stored enum: each variant with its documentation and stored text.
macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            async_graphql::Enum, sea_orm::EnumIter, sea_orm::DeriveActiveEnum,
            serde::Serialize, serde::Deserialize,
        )]
        #[sea_orm(rs_type = "String", db_type = "Text")]
        $(#[$meta])*
        pub enum $name {
            $( $(#[$vmeta])* #[sea_orm(string_value = $text)] #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// The stored form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Parses the stored form.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::db::native::FromColumn for $name {
            fn from_value(
                value: rusqlite::types::ValueRef<'_>,
                name: &str,
            ) -> rusqlite::Result<Self> {
                $crate::db::native::stored_text(value, name, $name::parse)
            }
        }
    };
}

stored_enum! {
    /// Deal status.
    pub enum DealStatus {
        /// Still open.
        Open = "OPEN",
        /// Won.
        Won = "WON",
        /// Lost (or deleted).
        Lost = "LOST",
    }
}

impl From<tandem_connectors::DealStatus> for DealStatus {
    fn from(status: tandem_connectors::DealStatus) -> DealStatus {
        match status {
            tandem_connectors::DealStatus::Open => DealStatus::Open,
            tandem_connectors::DealStatus::Won => DealStatus::Won,
            tandem_connectors::DealStatus::Lost => DealStatus::Lost,
        }
    }
}

impl From<DealStatus> for tandem_connectors::DealStatus {
    fn from(status: DealStatus) -> tandem_connectors::DealStatus {
        match status {
            DealStatus::Open => tandem_connectors::DealStatus::Open,
            DealStatus::Won => tandem_connectors::DealStatus::Won,
            DealStatus::Lost => tandem_connectors::DealStatus::Lost,
        }
    }
}

stored_enum! {
    /// Where a job run (or a CRM sync run) stands.
    pub enum JobRunStatus {
        /// In progress.
        Running = "RUNNING",
        /// Finished.
        Succeeded = "SUCCEEDED",
        /// Stopped with an error.
        Failed = "FAILED",
    }
}

stored_enum! {
    /// The role of an API key.
    pub enum ApiKeyRole {
        /// Program manager: everything.
        Admin = "ADMIN",
        /// Bound to one partner: sees and acts on its own data only.
        Partner = "PARTNER",
        /// Technology-integration partner: manages its webhook endpoints and reads events.
        Integration = "INTEGRATION",
    }
}

stored_enum! {
    /// Why a deal earns what it earns.
    pub enum CommissionState {
        /// WON and earning its computed commission.
        Earned = "EARNED",
        /// Not WON (or below the minimum, or closed after the partner's termination): earns 0.
        NotEarned = "NOT_EARNED",
        /// No exchange rate into the program currency at its close: nothing is written for it
        /// until one exists.
        MissingFxRate = "MISSING_FX_RATE",
        /// Taken out of WON after its clawback period: keeps the commission of its WON snapshot.
        Locked = "LOCKED",
        /// No longer attributed to this partner: earns 0 here.
        Detached = "DETACHED",
        /// The amount is out of the computable range: nothing is written for it.
        Invalid = "INVALID",
        /// A manager declined the commission (`declineLedgerEntry`): it stays at 0.
        Declined = "DECLINED",
    }
}

stored_enum! {
    /// Which CRM a connection talks to.
    pub enum CrmKind {
        /// HubSpot CRM v3.
        Hubspot = "HUBSPOT",
        /// Salesforce REST (SOQL).
        Salesforce = "SALESFORCE",
        /// Pipedrive API v2.
        Pipedrive = "PIPEDRIVE",
    }
}

stored_enum! {
    /// Whether a connection's last sync worked.
    #[graphql(name = "CrmConnectionStatus")]
    pub enum ConnectionStatus {
        /// The last sync succeeded (or none ran yet).
        Active = "ACTIVE",
        /// The last sync failed: `lastError` says why.
        Failing = "FAILING",
    }
}

stored_enum! {
    /// How a deal was attributed to its partner (the first matching rule wins).
    pub enum AttributionMethod {
        /// An admin attributed it with `attributeDeal`.
        Manual = "MANUAL",
        /// The deal carried the partner's referral code.
        Code = "CODE",
        /// The deal's company or contact domain matched an accepted referral.
        Domain = "DOMAIN",
        /// A later deal of a customer the partner brought, within its recurring period
        /// (DESIGN §11, `recurring.basis: DEALS`).
        Customer = "CUSTOMER",
    }
}

stored_enum! {
    /// What a recurring plan pays on (DESIGN §11).
    pub enum RecurringBasis {
        /// Later won deals of the customer, at the recurring rate.
        Deals = "DEALS",
        /// Every paid invoice of the customer, net of refunds and credit notes.
        Invoices = "INVOICES",
    }
}

stored_enum! {
    /// What reduces a paid invoice.
    pub enum AdjustmentKind {
        /// A refund of the invoice's charge (`charge.refunded`).
        Refund = "REFUND",
        /// A credit note (`credit_note.created`).
        CreditNote = "CREDIT_NOTE",
    }
}

stored_enum! {
    /// Whether an endpoint receives deliveries.
    #[graphql(name = "WebhookEndpointStatus")]
    pub enum EndpointStatus {
        /// Receives deliveries.
        Enabled = "ENABLED",
        /// Receives nothing (410 Gone, days of failure, or never re-enabled); pending deliveries
        /// wait until it is enabled again.
        Disabled = "DISABLED",
    }
}

stored_enum! {
    /// Whether an inbound webhook source accepts requests.
    #[graphql(name = "WebhookSourceStatus")]
    pub enum SourceStatus {
        /// Verifies and stores what arrives.
        Enabled = "ENABLED",
        /// Answers 410 Gone and stores nothing, until enabled again.
        Disabled = "DISABLED",
    }
}

stored_enum! {
    /// Where a delivery stands.
    #[graphql(name = "WebhookDeliveryStatus")]
    pub enum DeliveryStatus {
        /// Not delivered yet: due at `nextAttemptAt`.
        Pending = "PENDING",
        /// The endpoint answered 2xx.
        Succeeded = "SUCCEEDED",
        /// Given up (retries exhausted, or the endpoint answered 410); can be replayed.
        Failed = "FAILED",
        /// Not sent: its endpoint was deleted first.
        Cancelled = "CANCELLED",
    }
}

stored_enum! {
    /// Where a receipt stands.
    #[graphql(name = "WebhookReceiptStatus")]
    pub enum ReceiptStatus {
        /// Stored, not yet applied (or waiting, see `reason`).
        Received = "RECEIVED",
        /// Applied to the deal mirror.
        Applied = "APPLIED",
        /// Older than the stored deal: recorded, not applied.
        IgnoredStale = "IGNORED_STALE",
        /// A repeat of a provider event already received: acknowledged, not applied.
        Duplicate = "DUPLICATE",
        /// Verified and kept, but of a type Tandem does not act on.
        Ignored = "IGNORED",
        /// Cannot be applied; `reason` says why.
        Failed = "FAILED",
    }
}

stored_enum! {
    /// What a ledger entry records.
    pub enum LedgerEntryKind {
        /// Commission earned (positive), held `holdDays` before it can be paid.
        Accrual = "ACCRUAL",
        /// Commission taken back (negative), approved at once.
        Reversal = "REVERSAL",
        /// A manual correction.
        Adjustment = "ADJUSTMENT",
        /// A payment.
        Payout = "PAYOUT",
    }
}

stored_enum! {
    /// Where a ledger entry stands.
    pub enum LedgerEntryStatus {
        /// Held until `availableAt`.
        Pending = "PENDING",
        /// Available to pay.
        Approved = "APPROVED",
        /// Paid out.
        Paid = "PAID",
        /// Held for a manager's review (`holdReason`): never approved by `release-holds` nor
        /// paid until released.
        Held = "HELD",
    }
}

stored_enum! {
    /// Where a payout stands.
    pub enum PayoutStatus {
        /// Created: its entries are set aside, the money not yet sent.
        Pending = "PENDING",
        /// Marked paid with a reference.
        Paid = "PAID",
        /// Sending failed (`failure` says why); sending the run again retries it.
        Failed = "FAILED",
    }
}

stored_enum! {
    /// A partner's standing in its program.
    pub enum PartnerStatus {
        /// May submit referrals and earn commission.
        Active = "ACTIVE",
        /// Temporarily may not submit referrals.
        Suspended = "SUSPENDED",
        /// Permanently out; deals closed after termination earn nothing.
        Terminated = "TERMINATED",
    }
}

stored_enum! {
    /// The kind of partnership a program runs.
    pub enum ProgramKind {
        /// Agencies or resellers paid a share of the revenue they bring.
        RevenueShare = "REVENUE_SHARE",
        /// Joint marketing partners.
        CoMarketing = "CO_MARKETING",
        /// Strategic alliances.
        StrategicAlliance = "STRATEGIC_ALLIANCE",
        /// Technology-integration partners.
        TechnologyIntegration = "TECHNOLOGY_INTEGRATION",
        /// Channel resellers.
        Channel = "CHANNEL",
        /// Referral networks.
        ReferralNetwork = "REFERRAL_NETWORK",
    }
}

stored_enum! {
    /// How a won deal's commission is computed.
    pub enum CommissionType {
        /// A percentage of the deal amount (optionally tiered by the partner's prior revenue).
        Percent = "PERCENT",
        /// A fixed amount per won deal.
        Flat = "FLAT",
    }
}

stored_enum! {
    /// Where a referral stands.
    pub enum ReferralStatus {
        /// Waiting for a program manager's review (programs with `MANUAL` approval).
        Submitted = "SUBMITTED",
        /// The company already has a deal in the CRM or is a referred customer: held for review.
        Conflict = "CONFLICT",
        /// Registered and owned by this partner, protected until `protectedUntil`.
        Accepted = "ACCEPTED",
        /// Another registration for the same company was accepted within the attribution window.
        Duplicate = "DUPLICATE",
        /// Rejected by a program manager.
        Rejected = "REJECTED",
        /// A deal attributed to it was won.
        Converted = "CONVERTED",
        /// Its protection ended without an attributed deal: it no longer blocks or attributes.
        Expired = "EXPIRED",
    }
}

stored_enum! {
    /// How a program's new registrations are approved.
    pub enum RegistrationApproval {
        /// Accepted at once (unless a duplicate or a channel conflict).
        Auto = "AUTO",
        /// `SUBMITTED` until a program manager reviews it.
        Manual = "MANUAL",
    }
}

stored_enum! {
    /// Where a referral's lead-engagement SLA stands.
    pub enum SlaState {
        /// The clock runs: no engagement yet, due time not reached.
        Pending = "PENDING",
        /// Engaged by the due time.
        Met = "MET",
        /// Not engaged by the due time.
        Breached = "BREACHED",
    }
}

stored_enum! {
    /// What recorded an engagement with a referred lead.
    pub enum EngagementSource {
        /// `recordEngagement` (an admin, or a sales tool's integration key).
        Api = "API",
        /// A `lead.engaged` event on a STANDARD webhook source.
        Webhook = "WEBHOOK",
        /// A CRM deal attributed to the referral.
        Deal = "DEAL",
    }
}

stored_enum! {
    /// How a source's requests are verified and what they carry.
    pub enum WebhookSourceKind {
        /// Standard Webhooks signatures; Tandem deal events.
        Standard = "STANDARD",
        /// HubSpot app webhooks (signature v3, or v1/v2 when configured).
        Hubspot = "HUBSPOT",
        /// Pipedrive webhooks (v2 payloads) with HTTP Basic credentials.
        Pipedrive = "PIPEDRIVE",
        /// Salesforce Outbound Messages (SOAP) with an org id and a URL token.
        Salesforce = "SALESFORCE",
        /// Stripe billing events (`Stripe-Signature`): invoices, refunds, credit notes,
        /// customers.
        Stripe = "STRIPE",
    }
}

stored_enum! {
    /// How pushing a referral to a CRM went.
    pub enum PushStatus {
        /// Being pushed: the company exists in the CRM, the contact not yet (a retry resumes
        /// from the stored company).
        Pending = "PENDING",
        /// Created in the CRM.
        Pushed = "PUSHED",
        /// The CRM refused it (the error is kept; the next sync tries again).
        Failed = "FAILED",
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ActiveEnum;

    use super::*;

    #[test]
    fn stored_forms_round_trip() {
        use sea_orm::Iterable;
        for status in JobRunStatus::iter() {
            assert_eq!(JobRunStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.to_value(), status.as_str());
        }
        assert_eq!(JobRunStatus::parse("running"), None);
    }
}

stored_enum! {
    /// Where a partner application stands.
    pub enum ApplicationStatus {
        /// Waiting for a program manager's review.
        Pending = "PENDING",
        /// Approved: the partner exists.
        Approved = "APPROVED",
        /// Rejected, with the reason the applicant was given.
        Rejected = "REJECTED",
    }
}

stored_enum! {
    /// What recorded a certification.
    pub enum CertificationSource {
        /// `recordCertification` (an admin, or an LMS's integration key).
        Api = "API",
        /// A `certification.issued` event on a STANDARD webhook source.
        Webhook = "WEBHOOK",
    }
}

stored_enum! {
    /// Why a partner's group membership began (DESIGN §13).
    pub enum GroupChangeReason {
        /// Placed in the program's default group (rank 0): on joining, or when the default
        /// group was created.
        Joined = "JOINED",
        /// A higher group's rules held over their trailing window (`evaluate-groups`).
        Promoted = "PROMOTED",
        /// The current group's rules no longer held at the program's group review.
        Demoted = "DEMOTED",
        /// Set by an admin (`setPartnerGroup`): kept until the override is cleared.
        Manual = "MANUAL",
        /// The manual override was cleared: placed by the rules again.
        OverrideCleared = "OVERRIDE_CLEARED",
    }
}

stored_enum! {
    /// How a partner is paid (DESIGN §14).
    pub enum PayoutMethodKind {
        /// A SEPA credit transfer to an IBAN (EUR).
        Sepa = "SEPA",
        /// A PayPal payout to an email address.
        Paypal = "PAYPAL",
        /// A Stripe Connect transfer to a connected account.
        StripeConnect = "STRIPE_CONNECT",
    }
}

stored_enum! {
    /// Where a payout run stands.
    pub enum PayoutRunStatus {
        /// Made: its payouts wait to be exported or sent.
        Draft = "DRAFT",
        /// Being sent.
        Sending = "SENDING",
        /// Every payout paid.
        Paid = "PAID",
        /// Some payouts paid, others not (yet).
        PartiallyPaid = "PARTIALLY_PAID",
        /// Sending failed for every payout.
        Failed = "FAILED",
    }
}

stored_enum! {
    /// Why an accrual waits for a manager (DESIGN §14).
    pub enum HoldReason {
        /// The deal's company (or a contact's email domain), or the invoice's customer, is the
        /// partner's own domain.
        SelfReferral = "SELF_REFERRAL",
        /// The accrual is above the program's `manualReviewAbove`.
        AboveReviewThreshold = "ABOVE_REVIEW_THRESHOLD",
        /// The partner was suspended when it accrued.
        PartnerSuspended = "PARTNER_SUSPENDED",
    }
}
