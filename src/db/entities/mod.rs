//! sea-orm entities, one file per table. Column meanings are documented in the migration.
#![allow(missing_docs)]

pub mod api_key;
pub mod attribution;
pub mod billing_customer;
pub mod certification;
pub mod crm_connection;
pub mod crm_referral_push;
pub mod customer;
pub mod deal;
pub mod deal_commission;
pub mod event;
pub mod exchange_rate;
pub mod invoice;
pub mod invoice_adjustment;
pub mod invoice_commission;
pub mod job_lease;
pub mod job_run;
pub mod ledger_entry;
pub mod partner;
pub mod partner_application;
pub mod partner_group;
pub mod partner_group_membership;
pub mod payout;
pub mod payout_method;
pub mod payout_run;
pub mod program;
pub mod referral;
pub mod referral_engagement;
pub mod sync_run;
pub mod webhook_delivery;
pub mod webhook_delivery_attempt;
pub mod webhook_endpoint;
pub mod webhook_receipt;
pub mod webhook_source;

/// A row whose primary key is a text id (the keyset of its pages).
pub trait Keyed {
    /// The id.
    fn key(&self) -> String;
}

macro_rules! keyed {
    ($($entity:ident),* $(,)?) => {$(
        impl Keyed for $entity::Model {
            fn key(&self) -> String {
                self.id.clone()
            }
        }
    )*};
}

keyed!(
    api_key,
    certification,
    crm_connection,
    customer,
    deal,
    event,
    exchange_rate,
    invoice,
    job_run,
    ledger_entry,
    partner,
    partner_application,
    payout,
    payout_run,
    program,
    referral,
    referral_engagement,
    sync_run,
    webhook_delivery,
    webhook_delivery_attempt,
    webhook_endpoint,
    webhook_receipt,
    webhook_source,
);
