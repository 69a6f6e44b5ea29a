//! sea-orm entities, one file per table. Column meanings are documented in the migration.
#![allow(missing_docs)]

pub mod api_key;
pub mod attribution;
pub mod crm_connection;
pub mod crm_referral_push;
pub mod deal;
pub mod deal_commission;
pub mod event;
pub mod exchange_rate;
pub mod job_lease;
pub mod job_run;
pub mod ledger_entry;
pub mod partner;
pub mod payout;
pub mod program;
pub mod referral;
pub mod sync_run;
pub mod webhook_delivery;
pub mod webhook_endpoint;
pub mod webhook_receipt;
pub mod webhook_source;
