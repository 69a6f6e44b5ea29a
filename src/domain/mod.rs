//! Domain rules shared by GraphQL, webhooks and jobs: who may do what, how identifiers are
//! normalised, and how programs, partners and referrals change (with their events).

pub mod applications;
pub mod auth;
pub mod billing;
pub mod certifications;
pub mod commission;
pub mod crm;
pub mod deals;
pub mod endpoints;
pub mod events;
pub mod groups;
pub mod ids;
pub mod inbox;
pub mod kpis;
pub mod ledger;
pub mod normalize;
pub mod partners;
pub mod payout_methods;
pub mod payout_runs;
pub mod programs;
pub mod reconcile;
pub mod referrals;
pub mod registration;
pub mod retention;
pub mod secrets;
pub mod sessions;
pub mod stripe_transfers;
pub mod sweeps;
pub mod webhooks;
