//! The deal mirror and attribution (DESIGN §4): applying a CRM deal change (stale updates are
//! recorded, not applied), attributing the deal (MANUAL > CODE > DOMAIN), converting the
//! referral on a win, and writing `deal.attributed`, `deal.won`, `deal.lost` in the caller's
//! transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr,
    EntityTrait, QueryFilter, QuerySelect, Statement, TryIntoModel,
};
use serde_json::json;
use tandem_connectors::{DealStatus, NeutralDeal, inbound::DealChange};

pub use crate::db::states::AttributionMethod;
use crate::{
    db::{
        Db,
        entities::{attribution, deal, event, partner, program, referral},
    },
    domain::{
        billing,
        events::{self, EventType},
        ids::new_id,
        normalize::{email_domain, is_free_mail, normalize_domain, normalize_email},
        referrals::ReferralStatus,
        registration,
    },
    error::{ApiError, ApiResult},
};

/// What applying a deal change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    /// The mirror now holds the change (the deal id).
    Applied(String),
    /// The change is older than the stored deal: recorded, not applied.
    Stale(String),
    /// A deletion of a deal Tandem never mirrored: nothing to do.
    UnknownDeal,
    /// The deal's money is outside Tandem's bounds (the reason): not stored.
    Invalid(String),
}

/// The status a deal counts as: a deleted deal counts as lost.
pub fn effective_status(model: &deal::Model) -> DealStatus {
    if model.deleted {
        DealStatus::Lost
    } else {
        model.status.into()
    }
}

/// The status a stored deal (`status` column, `deleted` flag) counts as.
pub fn counted_status(status: &str, deleted: bool) -> Option<DealStatus> {
    if deleted {
        Some(DealStatus::Lost)
    } else {
        DealStatus::parse(status)
    }
}

/// Lower-cased contact emails, de-duplicated, invalid ones dropped.
fn normalized_emails(emails: &[String]) -> Vec<String> {
    let mut out: Vec<String> = emails.iter().filter_map(|e| normalize_email(e)).collect();
    out.sort();
    out.dedup();
    out
}

/// The company domains a deal can match referrals on: its own domain and its contacts' email
/// domains, never free-mail domains.
fn candidate_domains(model: &deal::Model) -> Vec<String> {
    let emails = model.contact_emails.as_array().into_iter().flatten();
    domains_of(
        model.company_domain.as_deref(),
        emails.filter_map(|e| e.as_str()),
    )
}

/// [`candidate_domains`] of the row that `deal` is stored as.
fn incoming_candidate_domains(deal: &NeutralDeal) -> Vec<String> {
    let domain = deal.company_domain.as_deref().and_then(normalize_domain);
    let emails = normalized_emails(&deal.contact_emails);
    domains_of(domain.as_deref(), emails.iter().map(String::as_str))
}

fn domains_of<'a>(domain: Option<&str>, emails: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut domains: Vec<String> = domain.map(str::to_string).into_iter().collect();
    domains.extend(emails.filter_map(email_domain).map(str::to_string));
    domains.retain(|d| !is_free_mail(d));
    domains.sort();
    domains.dedup();
    domains
}

/// Whether `referral` (accepted or converted, of a candidate domain) may claim `model`: submitted
/// at most the attribution window before the deal was created and still protected when it was
/// created (DESIGN §12: a deal created after `protectedUntil` is not the registration's, even
/// before the expiry job marks it `EXPIRED`), and of `partner_id` if given.
fn referral_matches(
    referral: &referral::Model,
    program: &program::Model,
    model: &deal::Model,
    partner_id: Option<&str>,
) -> bool {
    let window_start =
        model.created_at - Duration::days(i64::from(program.attribution_window_days));
    referral.submitted_at <= model.created_at
        && referral.submitted_at >= window_start
        && referral
            .protected_until
            .is_none_or(|until| until >= model.created_at)
        && partner_id.is_none_or(|p| referral.partner_id == p)
}

/// The earliest referral (by submission, then id) that [`referral_matches`] the deal, among the
/// program's accepted or converted referrals of the deal's candidate domains.
async fn matching_referral(
    conn: &impl ConnectionTrait,
    cache: &mut DealCache,
    program: &program::Model,
    model: &deal::Model,
    partner_id: Option<&str>,
) -> Result<Option<referral::Model>, DbErr> {
    let domains = candidate_domains(model);
    if domains.is_empty() {
        return Ok(None);
    }
    cache.load_referrals(conn, &program.id, &domains).await?;
    Ok(domains
        .iter()
        .filter_map(|d| cache.referrals.get(&(program.id.clone(), d.clone())))
        .flatten()
        .filter(|r| referral_matches(r, program, model, partner_id))
        .min_by(|a, b| (a.submitted_at, &a.id).cmp(&(b.submitted_at, &b.id)))
        .cloned())
}

/// An attribution the rules arrived at.
struct Candidate {
    partner_id: String,
    referral_id: Option<String>,
    method: AttributionMethod,
}

/// CODE, then CUSTOMER (a later deal of a customer the partner brought, DESIGN §11), then
/// DOMAIN.
async fn automatic_attribution(
    conn: &impl ConnectionTrait,
    cache: &mut DealCache,
    program: &program::Model,
    model: &deal::Model,
) -> Result<Option<Candidate>, DbErr> {
    if let Some(code) = model.referral_code.as_deref()
        && let Some(partner) = cache.partner_by_code(conn, &program.id, code).await?
    {
        let referral = matching_referral(conn, cache, program, model, Some(&partner.id)).await?;
        return Ok(Some(Candidate {
            partner_id: partner.id,
            referral_id: referral.map(|r| r.id),
            method: AttributionMethod::Code,
        }));
    }
    if let Some(customer) =
        billing::customer_for_deal(conn, program, model, &candidate_domains(model)).await?
    {
        return Ok(Some(Candidate {
            partner_id: customer.partner_id,
            referral_id: None,
            method: AttributionMethod::Customer,
        }));
    }
    Ok(matching_referral(conn, cache, program, model, None)
        .await?
        .map(|r| Candidate {
            partner_id: r.partner_id,
            referral_id: Some(r.id),
            method: AttributionMethod::Domain,
        }))
}

/// Stores `candidate` as the deal's attribution when it differs from `current`; writes
/// `deal.attributed`. Returns the attribution in force and whether its partner changed.
async fn store_attribution(
    conn: &impl ConnectionTrait,
    model: &deal::Model,
    current: Option<attribution::Model>,
    candidate: Candidate,
    events: &mut Vec<event::ActiveModel>,
    deferred: Option<&mut Deferred>,
) -> Result<(attribution::Model, bool), DbErr> {
    let now = Utc::now();
    if let Some(current) = &current
        && current.partner_id == candidate.partner_id
        && current.method == candidate.method
        && current.referral_id == candidate.referral_id
    {
        return Ok((current.clone(), false));
    }
    let previous_partner = current.as_ref().map(|c| c.partner_id.clone());
    let previous_referral = current.as_ref().and_then(|c| c.referral_id.clone());
    let stored = match current {
        Some(current) => {
            let mut active: attribution::ActiveModel = current.into();
            active.partner_id = Set(candidate.partner_id.clone());
            active.referral_id = Set(candidate.referral_id.clone());
            active.method = Set(candidate.method);
            active.updated_at = Set(now);
            active.update(conn).await?
        }
        None => {
            let row = attribution::ActiveModel {
                deal_id: Set(model.id.clone()),
                partner_id: Set(candidate.partner_id.clone()),
                referral_id: Set(candidate.referral_id.clone()),
                method: Set(candidate.method),
                created_at: Set(now),
                updated_at: Set(now),
            };
            match deferred {
                Some(deferred) => {
                    let stored = row.clone().try_into_model()?;
                    deferred.attributions.push(row);
                    stored
                }
                None => row.insert(conn).await?,
            }
        }
    };
    let partner_changed = previous_partner.as_deref() != Some(stored.partner_id.as_str());
    events.push(events::new_event(
        EventType::DealAttributed,
        &model.program_id,
        Some(&stored.partner_id),
        json!({
            "dealId": model.id,
            "externalId": model.external_id,
            "method": stored.method,
            "referralId": stored.referral_id,
            // Whether the deal moved from another partner. Who that was is not said: the
            // event is the new partner's to read (admins see the earlier `deal.attributed`).
            "reattributed": previous_partner.is_some() && partner_changed,
        }),
    ));
    // A deal attributed to a referral is sales engaging the lead: it stops the SLA clock.
    if let Some(referral_id) = &stored.referral_id
        && previous_referral.as_ref() != Some(referral_id)
    {
        registration::engaged_by_deal(conn, referral_id, model.created_at, events).await?;
    }
    Ok((stored, partner_changed))
}

/// Writes `deal.won` / `deal.lost` when an attributed deal enters that state (or moves to a new
/// partner while in it), and converts the attributed referral on a win.
async fn record_outcome(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    model: &deal::Model,
    attribution: &attribution::Model,
    previous_status: Option<DealStatus>,
    partner_changed: bool,
    events: &mut Vec<event::ActiveModel>,
) -> Result<(), DbErr> {
    let status = effective_status(model);
    let entered = |target: DealStatus| {
        status == target && (previous_status != Some(target) || partner_changed)
    };
    let data = json!({
        "dealId": model.id,
        "externalId": model.external_id,
        "name": model.name,
        "amount": model.amount,
        "currency": model.currency,
        "closedAt": model.closed_at,
        "deleted": model.deleted,
    });
    if entered(DealStatus::Won) {
        events.push(events::new_event(
            EventType::DealWon,
            &model.program_id,
            Some(&attribution.partner_id),
            data,
        ));
        if let Some(referral_id) = &attribution.referral_id {
            convert_referral(conn, referral_id, &model.id, events).await?;
        }
        billing::customer_from_won_deal(
            conn,
            program,
            model,
            attribution,
            &candidate_domains(model),
            events,
        )
        .await?;
    } else if entered(DealStatus::Lost) {
        events.push(events::new_event(
            EventType::DealLost,
            &model.program_id,
            Some(&attribution.partner_id),
            data,
        ));
    }
    Ok(())
}

async fn convert_referral(
    conn: &impl ConnectionTrait,
    referral_id: &str,
    deal_id: &str,
    events: &mut Vec<event::ActiveModel>,
) -> Result<(), DbErr> {
    let Some(found) = referral::Entity::find_by_id(referral_id.to_string())
        .one(conn)
        .await?
    else {
        return Ok(());
    };
    if found.status != ReferralStatus::Accepted {
        return Ok(());
    }
    let (program_id, partner_id) = (found.program_id.clone(), found.partner_id.clone());
    let mut active: referral::ActiveModel = found.into();
    active.status = Set(ReferralStatus::Converted);
    active.updated_at = Set(Utc::now());
    active.update(conn).await?;
    events.push(events::new_event(
        EventType::ReferralStatusChanged,
        &program_id,
        Some(&partner_id),
        json!({
            "referralId": referral_id,
            "status": ReferralStatus::Converted.as_str(),
            "previousStatus": ReferralStatus::Accepted.as_str(),
            "dealId": deal_id,
        }),
    ));
    Ok(())
}

fn deal_row(
    id: String,
    program_id: &str,
    source_id: &str,
    deal: &NeutralDeal,
    now: DateTime<Utc>,
) -> deal::ActiveModel {
    deal::ActiveModel {
        id: Set(id),
        program_id: Set(program_id.to_string()),
        source_id: Set(source_id.to_string()),
        external_id: Set(deal.external_id.clone()),
        name: Set(deal.name.clone()),
        amount: Set(deal.amount.to_string()),
        currency: Set(deal.currency.trim().to_ascii_uppercase()),
        status: Set(deal.status.into()),
        stage: Set(deal.stage.clone()),
        closed_at: Set(deal.closed_at),
        created_at: Set(deal.created_at),
        updated_at: Set(deal.updated_at),
        company_domain: Set(deal.company_domain.as_deref().and_then(normalize_domain)),
        crm_company_id: Set(deal
            .company_id
            .as_ref()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())),
        contact_emails: Set(json!(normalized_emails(&deal.contact_emails))),
        referral_code: Set(deal
            .referral_code
            .as_ref()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())),
        deleted: Set(deal.deleted),
        first_seen_at: Set(now),
        last_applied_at: Set(now),
        // The clawback lock is left as stored (an update must not lift it); a new deal sets
        // it empty.
        ..Default::default()
    }
}

/// New deals and attributions a batch has made but not yet written: inserted together by
/// [`DealCache::flush`] with a few multi-row statements instead of one round trip each (on
/// PostgreSQL the round trips were most of the apply time).
#[derive(Default)]
struct Deferred {
    deals: Vec<deal::ActiveModel>,
    /// Their (source id, external id) keys: a later change of one flushes first.
    keys: HashSet<(String, String)>,
    attributions: Vec<attribution::ActiveModel>,
}

/// The deal rows (with their attributions) and partners a batch of deal changes reads, loaded
/// with one statement per kind for the whole batch, and kept current as the batch applies.
#[derive(Default)]
pub struct DealCache {
    /// Deals by (source id, external id): present when loaded and existing.
    deals: HashMap<(String, String), deal::Model>,
    /// Keys whose state is known (an absent deal in `deals` then means "does not exist").
    known: HashSet<(String, String)>,
    /// Attributions of known deals, by deal id.
    attributions: HashMap<String, attribution::Model>,
    partners_by_code: HashMap<(String, String), Option<partner::Model>>,
    /// Accepted or converted referrals by (program id, company domain), for every domain
    /// looked up (empty when it has none).
    referrals: HashMap<(String, String), Vec<referral::Model>>,
    lock: bool,
    /// With [`DealCache::defer_inserts`]: new rows waiting for [`DealCache::flush`].
    deferred: Option<Deferred>,
}

/// PostgreSQL: plans the rest of the transaction's statements for their actual values. A batch's
/// wide `IN (…)` lookups (attributions by deal, referrals by domain) are otherwise planned
/// generically after a few runs, with the statistics of a table that has grown since: during a
/// CRM backfill such a plan of the deals lookup scanned the whole deals table once per page
/// (100,000 deals synced at 460/s instead of thousands). That lookup has since become one probe
/// per key ([`DealCache::load`]), which no plan turns into a scan.
pub const PLAN_FOR_VALUES: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

impl DealCache {
    /// Loads the deals with these (source id, external id) keys and their attributions. With
    /// `lock` (PostgreSQL) the deal rows are locked, in external-id order so that concurrent
    /// workers take locks in the same order.
    pub async fn load(
        conn: &impl ConnectionTrait,
        keys: &[(String, String)],
        lock: bool,
    ) -> Result<DealCache, DbErr> {
        let mut cache = DealCache {
            lock,
            ..DealCache::default()
        };
        let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (source, external) in keys {
            by_source.entry(source).or_default().push(external);
        }
        for (source, mut externals) in by_source {
            externals.sort_unstable();
            externals.dedup();
            for chunk in externals.chunks(500) {
                let found = if conn.get_database_backend() == DbBackend::Postgres {
                    // One unique-index probe per key, locked in the keys' order. The plain
                    // `external_id IN (…)` form let PostgreSQL, with statistics from when the
                    // table was small, scan every deal of the source through the index and
                    // filter them (13 ms a batch after 60,000 webhooks, growing with the
                    // table); a lateral probe per key has no such plan.
                    let keys: Vec<String> = (0..chunk.len())
                        .map(|i| format!("(${}::text)", i + 2))
                        .collect();
                    let mut values: Vec<sea_orm::Value> = vec![source.into()];
                    values.extend(chunk.iter().map(|e| sea_orm::Value::from(*e)));
                    deal::Entity::find()
                        .from_raw_sql(Statement::from_sql_and_values(
                            DbBackend::Postgres,
                            format!(
                                "SELECT d.* FROM (VALUES {}) AS k(external_id) CROSS JOIN LATERAL \
                             (SELECT * FROM deals WHERE source_id = $1 \
                             AND external_id = k.external_id{}) AS d",
                                keys.join(", "),
                                if lock { " FOR UPDATE" } else { "" }
                            ),
                            values,
                        ))
                        .all(conn)
                        .await?
                } else {
                    deal::Entity::find()
                        .filter(deal::Column::SourceId.eq(source))
                        .filter(deal::Column::ExternalId.is_in(chunk.iter().copied()))
                        .all(conn)
                        .await?
                };
                for found in found {
                    cache
                        .deals
                        .insert((found.source_id.clone(), found.external_id.clone()), found);
                }
            }
        }
        cache.known.extend(keys.iter().cloned());
        let ids: Vec<String> = cache.deals.values().map(|d| d.id.clone()).collect();
        for chunk in ids.chunks(500) {
            for found in attribution::Entity::find()
                .filter(attribution::Column::DealId.is_in(chunk.iter().cloned()))
                .all(conn)
                .await?
            {
                cache.attributions.insert(found.deal_id.clone(), found);
            }
        }
        Ok(cache)
    }

    async fn deal(
        &mut self,
        conn: &impl ConnectionTrait,
        source_id: &str,
        external_id: &str,
    ) -> Result<Option<deal::Model>, DbErr> {
        let key = (source_id.to_string(), external_id.to_string());
        if !self.known.contains(&key) {
            let loaded = DealCache::load(conn, std::slice::from_ref(&key), self.lock).await?;
            self.deals.extend(loaded.deals);
            self.attributions.extend(loaded.attributions);
            self.known.insert(key.clone());
        }
        Ok(self.deals.get(&key).cloned())
    }

    async fn partner_by_code(
        &mut self,
        conn: &impl ConnectionTrait,
        program_id: &str,
        code: &str,
    ) -> Result<Option<partner::Model>, DbErr> {
        let key = (program_id.to_string(), code.trim().to_ascii_uppercase());
        if let Some(found) = self.partners_by_code.get(&key) {
            return Ok(found.clone());
        }
        let found = partner::Entity::find()
            .filter(partner::Column::ProgramId.eq(key.0.as_str()))
            .filter(partner::Column::ReferralCode.eq(key.1.as_str()))
            .one(conn)
            .await?;
        self.partners_by_code.insert(key, found.clone());
        Ok(found)
    }

    /// Loads the referrals of those of `domains` not yet looked up in `program_id`, with one
    /// statement.
    async fn load_referrals(
        &mut self,
        conn: &impl ConnectionTrait,
        program_id: &str,
        domains: &[String],
    ) -> Result<(), DbErr> {
        let missing: Vec<String> = domains
            .iter()
            .filter(|d| {
                !self
                    .referrals
                    .contains_key(&(program_id.to_string(), d.to_string()))
            })
            .cloned()
            .collect();
        for chunk in missing.chunks(500) {
            for domain in chunk {
                self.referrals
                    .insert((program_id.to_string(), domain.clone()), Vec::new());
            }
            let found = referral::Entity::find()
                .filter(referral::Column::ProgramId.eq(program_id))
                .filter(referral::Column::Status.is_in([
                    ReferralStatus::Accepted.as_str(),
                    ReferralStatus::Converted.as_str(),
                ]))
                .filter(referral::Column::CompanyDomain.is_in(chunk.iter().cloned()))
                .all(conn)
                .await?;
            for referral in found {
                if let Some(domain) = referral.company_domain.clone() {
                    self.referrals
                        .entry((program_id.to_string(), domain))
                        .or_default()
                        .push(referral);
                }
            }
        }
        Ok(())
    }

    /// Loads the referrals the incoming deals of `program_id` can match on, with one statement
    /// for the batch instead of one per deal (an optimisation only: a domain not loaded here
    /// is loaded when a deal needs it).
    pub async fn load_referrals_for<'a>(
        &mut self,
        conn: &impl ConnectionTrait,
        program_id: &str,
        deals: impl IntoIterator<Item = &'a NeutralDeal>,
    ) -> Result<(), DbErr> {
        let mut domains: Vec<String> = deals
            .into_iter()
            .flat_map(incoming_candidate_domains)
            .collect();
        domains.sort();
        domains.dedup();
        self.load_referrals(conn, program_id, &domains).await
    }

    /// From now on new deals and attributions are kept in memory until [`DealCache::flush`],
    /// which the caller must run before its transaction reads them or commits.
    pub fn defer_inserts(&mut self) {
        self.deferred.get_or_insert_with(Deferred::default);
    }

    /// Inserts the deferred new deals, then their attributions, with multi-row statements.
    pub async fn flush(&mut self, conn: &impl ConnectionTrait) -> Result<(), DbErr> {
        let Some(deferred) = self.deferred.as_mut() else {
            return Ok(());
        };
        let deals = std::mem::take(&mut deferred.deals);
        let attributions = std::mem::take(&mut deferred.attributions);
        deferred.keys.clear();
        crate::db::insert_all(conn, deals, None).await?;
        crate::db::insert_all(conn, attributions, None).await?;
        Ok(())
    }

    /// Records the state a successfully applied change left behind.
    pub fn remember(&mut self, applied: AppliedDeal) {
        let key = (
            applied.deal.source_id.clone(),
            applied.deal.external_id.clone(),
        );
        match applied.attribution {
            Some(attribution) => {
                self.attributions
                    .insert(applied.deal.id.clone(), attribution);
            }
            None => {
                self.attributions.remove(&applied.deal.id);
            }
        }
        self.known.insert(key.clone());
        self.deals.insert(key, applied.deal);
    }
}

/// The state a change left behind, for [`DealCache::remember`].
pub struct AppliedDeal {
    deal: deal::Model,
    attribution: Option<attribution::Model>,
}

/// Applies one CRM deal change from `source_id` to the mirror of `program`, inside the caller's
/// transaction: upsert (unless stale), attribution and conversion. The events it causes are
/// appended to `events` for the caller to write in the same transaction. The caller passes the
/// returned state to [`DealCache::remember`] once the change is kept.
pub async fn apply_deal_change(
    conn: &impl ConnectionTrait,
    cache: &mut DealCache,
    program: &program::Model,
    source_id: &str,
    change: &DealChange,
    events: &mut Vec<event::ActiveModel>,
) -> Result<(ApplyResult, Option<AppliedDeal>), DbErr> {
    // Every path (webhooks, CRM sync, fetched deals) meets the same money bounds here.
    if let DealChange::Upsert(deal) = change
        && let Err(reason) = deal.check()
    {
        return Ok((ApplyResult::Invalid(reason), None));
    }
    let key = (source_id.to_string(), change.external_id().to_string());
    if cache
        .deferred
        .as_ref()
        .is_some_and(|d| d.keys.contains(&key))
    {
        // A second change of a deal this batch created: its rows are written first, so that
        // the change updates them like any stored deal.
        cache.flush(conn).await?;
    }
    let existing = cache.deal(conn, source_id, change.external_id()).await?;
    let incoming_time = match change {
        DealChange::Upsert(deal) => deal.updated_at,
        DealChange::Delete { updated_at, .. } => *updated_at,
    };
    if let Some(existing) = &existing
        && incoming_time < existing.updated_at
    {
        return Ok((ApplyResult::Stale(existing.id.clone()), None));
    }
    let now = Utc::now();
    let previous_status = existing.as_ref().map(effective_status);
    let current = existing
        .as_ref()
        .and_then(|d| cache.attributions.get(&d.id).cloned());
    let model = match (change, existing) {
        (DealChange::Upsert(deal), None) => {
            let mut row = deal_row(new_id(), &program.id, source_id, deal, now);
            row.locked_at = Set(None);
            row.locked_amount = Set(None);
            row.locked_currency = Set(None);
            row.locked_closed_at = Set(None);
            match cache.deferred.as_mut() {
                Some(deferred) => {
                    let model = row.clone().try_into_model()?;
                    deferred.deals.push(row);
                    deferred.keys.insert(key.clone());
                    model
                }
                None => row.insert(conn).await?,
            }
        }
        (DealChange::Upsert(deal), Some(existing)) => {
            let mut row = deal_row(existing.id.clone(), &program.id, source_id, deal, now);
            row.first_seen_at = Set(existing.first_seen_at);
            let status = if deal.deleted {
                DealStatus::Lost
            } else {
                deal.status
            };
            set_clawback_lock(&mut row, &existing, status, deal.updated_at, program, now);
            row.update(conn).await?
        }
        (DealChange::Delete { .. }, None) => return Ok((ApplyResult::UnknownDeal, None)),
        (DealChange::Delete { updated_at, .. }, Some(existing)) => {
            let mut row: deal::ActiveModel = existing.clone().into();
            row.deleted = Set(true);
            row.updated_at = Set(*updated_at);
            row.last_applied_at = Set(now);
            set_clawback_lock(
                &mut row,
                &existing,
                DealStatus::Lost,
                *updated_at,
                program,
                now,
            );
            row.update(conn).await?
        }
    };
    let manual = current
        .as_ref()
        .is_some_and(|c| c.method == AttributionMethod::Manual);
    let (attribution, partner_changed) = if manual {
        (current, false)
    } else {
        match automatic_attribution(conn, cache, program, &model).await? {
            Some(candidate) => {
                let (stored, changed) = store_attribution(
                    conn,
                    &model,
                    current,
                    candidate,
                    events,
                    cache.deferred.as_mut(),
                )
                .await?;
                (Some(stored), changed)
            }
            // A customer's later deal is its partner's only while the customer's recurring
            // period lasts (DESIGN §11): closed after it, the deal is no longer attributed (the
            // reconciler reverses what it had earned, as for any deal attributed elsewhere).
            None if current
                .as_ref()
                .is_some_and(|c| c.method == AttributionMethod::Customer) =>
            {
                // The attribution may still be waiting in this batch's deferred inserts.
                cache.flush(conn).await?;
                attribution::Entity::delete_by_id(model.id.clone())
                    .exec(conn)
                    .await?;
                (None, false)
            }
            // Any other attribution stays once made: a later update that no longer matches (a
            // code removed in the CRM) does not take the deal away from its partner.
            None => (current, false),
        }
    };
    if let Some(attribution) = &attribution {
        record_outcome(
            conn,
            program,
            &model,
            attribution,
            previous_status,
            partner_changed,
            events,
        )
        .await?;
    }
    let id = model.id.clone();
    Ok((
        ApplyResult::Applied(id),
        Some(AppliedDeal {
            deal: model,
            attribution,
        }),
    ))
}

/// The clawback rule of DESIGN §4: an update taking a WON deal out of WON more than
/// `clawbackDays` after it closed LOCKS it: it keeps the commission of its WON snapshot
/// (amount, currency, close), which is stored with the lock. Winning again lifts the lock;
/// otherwise a lock stays.
fn set_clawback_lock(
    row: &mut deal::ActiveModel,
    existing: &deal::Model,
    new_status: DealStatus,
    new_updated_at: DateTime<Utc>,
    program: &program::Model,
    now: DateTime<Utc>,
) {
    if new_status == DealStatus::Won {
        if existing.locked_at.is_some() {
            row.locked_at = Set(None);
            row.locked_amount = Set(None);
            row.locked_currency = Set(None);
            row.locked_closed_at = Set(None);
        }
        return;
    }
    if effective_status(existing) != DealStatus::Won {
        return;
    }
    let closed = existing.closed_at.unwrap_or(existing.updated_at);
    if new_updated_at > closed + Duration::days(i64::from(program.clawback_days)) {
        row.locked_at = Set(Some(now));
        row.locked_amount = Set(Some(existing.amount.clone()));
        row.locked_currency = Set(Some(existing.currency.clone()));
        row.locked_closed_at = Set(Some(closed));
    }
}

/// Input of `attributeDeal`.
#[derive(Debug, async_graphql::InputObject)]
pub struct AttributeDealInput {
    /// The deal.
    pub deal_id: async_graphql::ID,
    /// The partner to credit; must belong to the deal's program.
    pub partner_id: async_graphql::ID,
}

/// An admin attributes a deal to a partner (`MANUAL`, which automatic rules never override).
pub async fn attribute_deal(
    db: &Db,
    input: AttributeDealInput,
) -> ApiResult<(deal::Model, attribution::Model)> {
    let tx = db.begin_write().await?;
    let mut query = deal::Entity::find_by_id(input.deal_id.to_string());
    if db.is_postgres() {
        query = query.lock_exclusive();
    }
    let model = query.one(&*tx).await?.ok_or(ApiError::NotFound("deal"))?;
    let partner = partner::Entity::find_by_id(input.partner_id.to_string())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    if partner.program_id != model.program_id {
        return Err(ApiError::bad_input(
            "input.partnerId",
            "the partner belongs to another program than the deal",
        ));
    }
    let program = program::Entity::find_by_id(model.program_id.clone())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("program"))?;
    let mut cache = DealCache::default();
    let referral = matching_referral(&*tx, &mut cache, &program, &model, Some(&partner.id)).await?;
    let current = attribution::Entity::find_by_id(model.id.clone())
        .one(&*tx)
        .await?;
    let mut buffered = Vec::new();
    let (stored, partner_changed) = store_attribution(
        &*tx,
        &model,
        current,
        Candidate {
            partner_id: partner.id,
            referral_id: referral.map(|r| r.id),
            method: AttributionMethod::Manual,
        },
        &mut buffered,
        None,
    )
    .await?;
    let status = effective_status(&model);
    // The deal's state did not change; only a new partner learns of an outcome already reached.
    record_outcome(
        &*tx,
        &program,
        &model,
        &stored,
        Some(status),
        partner_changed,
        &mut buffered,
    )
    .await?;
    events::record_all(&*tx, buffered).await?;
    tx.commit().await?;
    Ok((model, stored))
}
