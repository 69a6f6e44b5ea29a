//! Partner groups (DESIGN §13): ranked groups per program (rank 0 is the default one), each with
//! its own commission plan, hold period and promotion rules over a trailing window (won deals,
//! won revenue, required certifications, certified people).
//!
//! Membership is historised in `partner_group_memberships` (the row without `until` is the
//! current one): the reconciler computes a deal with the plan of the group the partner was in
//! when the deal closed. The `evaluate-groups` job (daily, and after each reconcile) promotes a
//! partner as soon as a higher group's rules hold, and demotes only when the program's group
//! review is due (`groupReviewSchedule`, quarterly by default). An admin's `setPartnerGroup`
//! wins over the rules until it is cleared.
//!
//! Won deals and revenue are read from what the reconciler last computed (`deal_commissions`:
//! WON deals attributed to the partner, amounts already in the program currency), so an
//! evaluation sees the deals of the last reconcile; certifications count while unexpired.

use std::collections::{BTreeSet, HashMap, HashSet};

use async_graphql::{ID, InputObject, SimpleObject};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    QueryFilter, QueryOrder, Statement, sea_query::Expr,
};
use serde::Serialize;
use serde_json::json;

use crate::{
    config::parse_cron,
    db::{
        Db,
        entities::{event, partner, partner_group, partner_group_membership, program},
        states::{GroupChangeReason, PartnerStatus},
    },
    domain::{
        certifications::{COURSE_KEY_RULE, is_course_key},
        commission::{from_cents, to_cents},
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::optional_text,
        programs::{
            CommissionPlan, CommissionPlanInput, DEFAULT_REVIEW_SCHEDULE, check_days, check_money,
            find_program, validated_name,
        },
    },
    error::{ApiError, ApiResult},
};

/// The trailing window of a group's rules when none is given.
pub const DEFAULT_WINDOW_DAYS: i32 = 365;

/// Group changes written per transaction.
const CHANGE_CHUNK: usize = 500;

/// What a partner must reach, over the trailing window, to be placed in a group.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct GroupRules {
    /// Won deals attributed to the partner, closed within the window.
    pub min_deals_won: i32,
    /// Their revenue in the program currency.
    pub min_won_revenue: Decimal,
    /// The trailing window, in days.
    pub window_days: i32,
    /// Courses the partner must hold unexpired certifications of (each by at least one person).
    pub required_certifications: Vec<String>,
    /// Distinct people holding an unexpired certification (of one of the required courses,
    /// or of any course when none is required).
    pub min_certified_people: i32,
}

impl GroupRules {
    /// No rules: the default group's.
    fn none() -> GroupRules {
        GroupRules {
            min_deals_won: 0,
            min_won_revenue: Decimal::ZERO,
            window_days: DEFAULT_WINDOW_DAYS,
            required_certifications: Vec::new(),
            min_certified_people: 0,
        }
    }

    fn is_none(&self) -> bool {
        self.min_deals_won == 0
            && self.min_won_revenue.is_zero()
            && self.required_certifications.is_empty()
            && self.min_certified_people == 0
    }
}

/// Rules as given to `createPartnerGroup` / `updatePartnerGroup`: absent fields are 0, none,
/// or 365 days (on update: keep their value).
#[derive(Debug, Clone, Default, InputObject)]
pub struct GroupRulesInput {
    /// Won deals within the window (0 to 1,000,000).
    pub min_deals_won: Option<i32>,
    /// Won revenue within the window, in the program currency.
    pub min_won_revenue: Option<Decimal>,
    /// The trailing window in days (1 to 3650, default 365).
    pub window_days: Option<i32>,
    /// Course keys each held by at least one person (at most 20).
    pub required_certifications: Option<Vec<String>>,
    /// Distinct certified people (0 to 10,000).
    pub min_certified_people: Option<i32>,
}

impl GroupRulesInput {
    fn apply(self, base: GroupRules, path: &str) -> ApiResult<GroupRules> {
        let field = |name: &str| format!("{path}.{name}");
        let count = |name: &str, value: Option<i32>, default: i32, max: i32| match value {
            Some(v) if !(0..=max).contains(&v) => Err(ApiError::bad_input(
                field(name),
                format!("must be between 0 and {max}"),
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let min_won_revenue = match self.min_won_revenue {
            Some(revenue) => {
                check_money(&field("minWonRevenue"), revenue)?;
                if revenue < Decimal::ZERO {
                    return Err(ApiError::bad_input(
                        field("minWonRevenue"),
                        "must not be negative",
                    ));
                }
                revenue.normalize()
            }
            None => base.min_won_revenue,
        };
        let required_certifications = match self.required_certifications {
            Some(keys) => {
                if keys.len() > 20 {
                    return Err(ApiError::bad_input(
                        field("requiredCertifications"),
                        "at most 20 courses",
                    ));
                }
                let mut set = BTreeSet::new();
                for (i, key) in keys.iter().enumerate() {
                    let key = key.trim();
                    if !is_course_key(key) {
                        return Err(ApiError::bad_input(
                            format!("{path}.requiredCertifications[{i}]"),
                            COURSE_KEY_RULE,
                        ));
                    }
                    set.insert(key.to_string());
                }
                set.into_iter().collect()
            }
            None => base.required_certifications,
        };
        Ok(GroupRules {
            min_deals_won: count(
                "minDealsWon",
                self.min_deals_won,
                base.min_deals_won,
                1_000_000,
            )?,
            min_won_revenue,
            window_days: check_days(&field("windowDays"), self.window_days, base.window_days, 1)?,
            required_certifications,
            min_certified_people: count(
                "minCertifiedPeople",
                self.min_certified_people,
                base.min_certified_people,
                10_000,
            )?,
        })
    }
}

/// A group with its plan and rules read.
#[derive(Debug, Clone)]
pub struct Group {
    /// The stored row.
    pub model: partner_group::Model,
    /// Its commission plan.
    pub plan: CommissionPlan,
    /// Its rules.
    pub rules: GroupRules,
}

impl Group {
    /// Reads a stored group.
    pub fn of(model: partner_group::Model) -> Result<Group, DbErr> {
        let bad = |what: &str, e: String| {
            DbErr::Custom(format!("partner group {} {what}: {e}", model.id))
        };
        let plan: CommissionPlan = serde_json::from_value(model.commission.clone())
            .map_err(|e| bad("commission", e.to_string()))?;
        let required_certifications: Vec<String> =
            serde_json::from_value(model.required_certifications.clone())
                .map_err(|e| bad("required certifications", e.to_string()))?;
        let min_won_revenue = model
            .min_won_revenue
            .parse()
            .map_err(|e: rust_decimal::Error| bad("minimum revenue", e.to_string()))?;
        let rules = GroupRules {
            min_deals_won: model.min_deals_won,
            min_won_revenue,
            window_days: model.window_days,
            required_certifications,
            min_certified_people: model.min_certified_people,
        };
        Ok(Group { model, plan, rules })
    }
}

/// The groups of a program by rank (or of every program, when `program_id` is `None`).
pub async fn groups_of(
    conn: &impl ConnectionTrait,
    program_id: Option<&str>,
) -> Result<Vec<Group>, DbErr> {
    let mut query = partner_group::Entity::find();
    if let Some(program_id) = program_id {
        query = query.filter(partner_group::Column::ProgramId.eq(program_id));
    }
    query
        .order_by_asc(partner_group::Column::ProgramId)
        .order_by_asc(partner_group::Column::Rank)
        .all(conn)
        .await?
        .into_iter()
        .map(Group::of)
        .collect()
}

/// Input of `createPartnerGroup`.
#[derive(Debug, Clone, InputObject)]
pub struct CreatePartnerGroupInput {
    /// The program.
    pub program_id: ID,
    /// Display name (unique in the program).
    pub name: String,
    /// 0 for the default group (a program's first group), higher for better groups (unique in
    /// the program, at most 1000).
    pub rank: i32,
    /// The commission plan of the group's partners (the program's recurring terms apply to
    /// every group).
    pub commission: CommissionPlanInput,
    /// How long the group's accruals stay pending (default: the program's).
    pub hold_days: Option<i32>,
    /// What earns the group (none for the default group).
    pub rules: Option<GroupRulesInput>,
}

/// Input of `updatePartnerGroup`: absent fields keep their value. A new plan or hold period
/// applies to the deals the group's members close while in it, at the next reconcile.
#[derive(Debug, Clone, InputObject)]
pub struct UpdatePartnerGroupInput {
    /// The group.
    pub id: ID,
    /// New name.
    pub name: Option<String>,
    /// New commission plan.
    pub commission: Option<CommissionPlanInput>,
    /// New hold period.
    pub hold_days: Option<i32>,
    /// New rules (absent fields keep their value).
    pub rules: Option<GroupRulesInput>,
}

/// Input of `setPartnerGroup`.
#[derive(Debug, Clone, InputObject)]
pub struct SetPartnerGroupInput {
    /// The partner.
    pub partner_id: ID,
    /// The group to hold the partner in, whatever the rules say; null clears the override and
    /// places the partner by the rules at once.
    pub group_id: Option<ID>,
    /// Why (kept in the membership history, at most 1000 characters).
    pub note: Option<String>,
}

fn check_plan(input: CommissionPlanInput, path: &str) -> ApiResult<CommissionPlan> {
    if input.recurring.is_some() {
        return Err(ApiError::bad_input(
            format!("{path}.recurring"),
            "recurring terms are the program's (they apply to every group)",
        ));
    }
    input.validate(path)
}

fn plan_json(plan: &CommissionPlan) -> ApiResult<serde_json::Value> {
    serde_json::to_value(plan).map_err(|e| ApiError::Internal(format!("plan: {e}")))
}

/// Writes a group's rules onto its row.
fn apply_rules(model: &mut partner_group::ActiveModel, rules: &GroupRules) {
    model.min_deals_won = Set(rules.min_deals_won);
    model.min_won_revenue = Set(rules.min_won_revenue.to_string());
    model.window_days = Set(rules.window_days);
    model.required_certifications = Set(json!(rules.required_certifications));
    model.min_certified_people = Set(rules.min_certified_people);
}

/// `createPartnerGroup`: a program's first group must be its default (rank 0); creating it
/// places every partner of the program in it (`JOINED`).
pub async fn create_partner_group(
    db: &Db,
    input: CreatePartnerGroupInput,
) -> ApiResult<partner_group::Model> {
    let name = validated_name("input.name", &input.name)?;
    if !(0..=1000).contains(&input.rank) {
        return Err(ApiError::bad_input(
            "input.rank",
            "must be between 0 and 1000",
        ));
    }
    let plan = check_plan(input.commission, "input.commission")?;
    let rules = input
        .rules
        .unwrap_or_default()
        .apply(GroupRules::none(), "input.rules")?;
    if input.rank == 0 && !rules.is_none() {
        return Err(ApiError::bad_input(
            "input.rules",
            "the default group (rank 0) has no rules: every partner qualifies for it",
        ));
    }
    let program_id = input.program_id.to_string();
    let tx = db.begin_write().await?;
    let program = find_program(&*tx, &program_id).await?;
    let existing = groups_of(&*tx, Some(&program_id)).await?;
    if existing.is_empty() && input.rank != 0 {
        return Err(ApiError::bad_input(
            "input.rank",
            "a program's first group is its default group: rank 0",
        ));
    }
    if existing.iter().any(|g| g.model.rank == input.rank) {
        return Err(ApiError::Conflict(format!(
            "the program already has a group of rank {}",
            input.rank
        )));
    }
    if existing.iter().any(|g| g.model.name == name) {
        return Err(ApiError::Conflict(format!(
            "the program already has a group named {name:?}"
        )));
    }
    let hold_days = check_days("input.holdDays", input.hold_days, program.hold_days, 0)?;
    let now = Utc::now();
    let mut model = partner_group::ActiveModel {
        id: Set(new_id()),
        program_id: Set(program_id.clone()),
        name: Set(name),
        rank: Set(input.rank),
        commission: Set(plan_json(&plan)?),
        hold_days: Set(hold_days),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    apply_rules(&mut model, &rules);
    let created = model.insert(&*tx).await.map_err(|e| {
        if crate::db::is_unique_violation(&e) {
            ApiError::Conflict("the program already has a group of this rank or name".into())
        } else {
            e.into()
        }
    })?;
    if input.rank == 0 {
        let partners = partner::Entity::find()
            .filter(partner::Column::ProgramId.eq(program_id.as_str()))
            .all(&*tx)
            .await?;
        let mut caused = Vec::new();
        let mut rows = Vec::new();
        for p in &partners {
            rows.push(membership_row(
                p,
                &created,
                now,
                GroupChangeReason::Joined,
                false,
                None,
            ));
            caused.push(changed_event(
                p,
                None,
                &created,
                GroupChangeReason::Joined,
                now,
            ));
        }
        crate::db::insert_all(&*tx, rows, None).await?;
        events::record_all(&*tx, caused).await?;
        // Demotions wait for the first review after the groups began.
        program::Entity::update_many()
            .col_expr(program::Column::GroupsReviewedAt, Expr::value(now))
            .filter(program::Column::Id.eq(program_id.as_str()))
            .exec(&*tx)
            .await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// `updatePartnerGroup`.
pub async fn update_partner_group(
    db: &Db,
    input: UpdatePartnerGroupInput,
) -> ApiResult<partner_group::Model> {
    let id = input.id.to_string();
    if !is_valid_id(&id) {
        return Err(ApiError::NotFound("partner group"));
    }
    let tx = db.begin_write().await?;
    let found = partner_group::Entity::find_by_id(id)
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner group"))?;
    let group = Group::of(found.clone())?;
    let mut model: partner_group::ActiveModel = found.clone().into();
    if let Some(name) = &input.name {
        let name = validated_name("input.name", name)?;
        let taken = partner_group::Entity::find()
            .filter(partner_group::Column::ProgramId.eq(found.program_id.as_str()))
            .filter(partner_group::Column::Name.eq(name.as_str()))
            .filter(partner_group::Column::Id.ne(found.id.as_str()))
            .one(&*tx)
            .await?
            .is_some();
        if taken {
            return Err(ApiError::Conflict(format!(
                "the program already has a group named {name:?}"
            )));
        }
        model.name = Set(name);
    }
    if let Some(plan) = input.commission {
        model.commission = Set(plan_json(&check_plan(plan, "input.commission")?)?);
    }
    if input.hold_days.is_some() {
        model.hold_days = Set(check_days(
            "input.holdDays",
            input.hold_days,
            found.hold_days,
            0,
        )?);
    }
    if let Some(rules) = input.rules {
        let rules = rules.apply(group.rules, "input.rules")?;
        if found.rank == 0 && !rules.is_none() {
            return Err(ApiError::bad_input(
                "input.rules",
                "the default group (rank 0) has no rules: every partner qualifies for it",
            ));
        }
        apply_rules(&mut model, &rules);
    }
    model.updated_at = Set(Utc::now());
    let updated = model.update(&*tx).await?;
    tx.commit().await?;
    Ok(updated)
}

fn membership_row(
    partner: &partner::Model,
    group: &partner_group::Model,
    since: DateTime<Utc>,
    reason: GroupChangeReason,
    manual: bool,
    note: Option<String>,
) -> partner_group_membership::ActiveModel {
    partner_group_membership::ActiveModel {
        id: Set(new_id()),
        program_id: Set(partner.program_id.clone()),
        partner_id: Set(partner.id.clone()),
        group_id: Set(group.id.clone()),
        since: Set(since),
        until: Set(None),
        reason: Set(reason),
        manual: Set(manual),
        note: Set(note),
        created_at: Set(Utc::now()),
    }
}

fn group_ref(group: &partner_group::Model) -> serde_json::Value {
    json!({"id": group.id, "name": group.name, "rank": group.rank})
}

fn changed_event(
    partner: &partner::Model,
    from: Option<&partner_group::Model>,
    to: &partner_group::Model,
    reason: GroupChangeReason,
    since: DateTime<Utc>,
) -> event::ActiveModel {
    events::new_event(
        EventType::PartnerGroupChanged,
        &partner.program_id,
        Some(&partner.id),
        json!({
            "from": from.map(group_ref),
            "to": group_ref(to),
            "reason": reason,
            "since": since,
        }),
    )
}

/// Places a new partner in its program's default group, if the program has groups (inside
/// the caller's transaction); writes `partner.group_changed`.
pub async fn join_default_group(
    conn: &impl ConnectionTrait,
    partner: &partner::Model,
) -> Result<(), DbErr> {
    let default = partner_group::Entity::find()
        .filter(partner_group::Column::ProgramId.eq(partner.program_id.as_str()))
        .filter(partner_group::Column::Rank.eq(0))
        .one(conn)
        .await?;
    if let Some(group) = default {
        let since = partner.created_at;
        membership_row(
            partner,
            &group,
            since,
            GroupChangeReason::Joined,
            false,
            None,
        )
        .insert(conn)
        .await?;
        events::record_all(
            conn,
            vec![changed_event(
                partner,
                None,
                &group,
                GroupChangeReason::Joined,
                since,
            )],
        )
        .await?;
    }
    Ok(())
}

/// Ends `current` (unless another writer ended it first: then nothing is written and `None`
/// is returned) and opens a membership of `to`; writes `partner.group_changed` when the group
/// changes.
#[allow(clippy::too_many_arguments)]
async fn move_partner(
    conn: &impl ConnectionTrait,
    partner: &partner::Model,
    current: Option<&partner_group_membership::Model>,
    from: Option<&partner_group::Model>,
    to: &partner_group::Model,
    reason: GroupChangeReason,
    manual: bool,
    note: Option<String>,
    now: DateTime<Utc>,
    events_out: &mut Vec<event::ActiveModel>,
) -> Result<Option<partner_group_membership::Model>, DbErr> {
    if let Some(current) = current {
        let ended = partner_group_membership::Entity::update_many()
            .col_expr(partner_group_membership::Column::Until, Expr::value(now))
            .filter(partner_group_membership::Column::Id.eq(current.id.as_str()))
            .filter(partner_group_membership::Column::Until.is_null())
            .exec(conn)
            .await?;
        if ended.rows_affected != 1 {
            return Ok(None);
        }
    }
    let opened = membership_row(partner, to, now, reason, manual, note)
        .insert(conn)
        .await?;
    if from.is_none_or(|f| f.id != to.id) {
        events_out.push(changed_event(partner, from, to, reason, now));
    }
    Ok(Some(opened))
}

/// A partner's current membership.
pub async fn current_membership(
    conn: &impl ConnectionTrait,
    partner_id: &str,
) -> Result<Option<partner_group_membership::Model>, DbErr> {
    partner_group_membership::Entity::find()
        .filter(partner_group_membership::Column::PartnerId.eq(partner_id))
        .filter(partner_group_membership::Column::Until.is_null())
        .one(conn)
        .await
}

/// A partner's memberships, newest first.
pub async fn group_history(
    db: &Db,
    partner_id: &str,
) -> ApiResult<Vec<partner_group_membership::Model>> {
    Ok(partner_group_membership::Entity::find()
        .filter(partner_group_membership::Column::PartnerId.eq(partner_id))
        .order_by_desc(partner_group_membership::Column::Since)
        .order_by_desc(partner_group_membership::Column::CreatedAt)
        .all(db.reads())
        .await?)
}

/// What a partner has over the trailing windows of its program's rules.
#[derive(Debug, Default, Clone)]
struct Standing {
    /// (won deals, won revenue in cents) per window length in days.
    by_window: HashMap<i32, (i64, i64)>,
    /// (person, course) of its unexpired certifications.
    certifications: Vec<(String, String)>,
}

/// How far a partner is from a group's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shortfall {
    deals: i64,
    revenue_cents: i64,
    missing_courses: Vec<String>,
    people: i64,
}

impl Shortfall {
    fn of(rules: &GroupRules, standing: &Standing) -> Shortfall {
        let (deals, cents) = standing
            .by_window
            .get(&rules.window_days)
            .copied()
            .unwrap_or_default();
        let held: HashSet<&str> = standing
            .certifications
            .iter()
            .map(|(_, course)| course.as_str())
            .collect();
        let missing_courses: Vec<String> = rules
            .required_certifications
            .iter()
            .filter(|c| !held.contains(c.as_str()))
            .cloned()
            .collect();
        let people: HashSet<&str> = standing
            .certifications
            .iter()
            .filter(|(_, course)| {
                rules.required_certifications.is_empty()
                    || rules.required_certifications.contains(course)
            })
            .map(|(person, _)| person.as_str())
            .collect();
        Shortfall {
            deals: (i64::from(rules.min_deals_won) - deals).max(0),
            revenue_cents: (to_cents(rules.min_won_revenue).unwrap_or(i64::MAX) - cents).max(0),
            missing_courses,
            people: (i64::from(rules.min_certified_people) - people.len() as i64).max(0),
        }
    }

    fn met(&self) -> bool {
        self.deals == 0
            && self.revenue_cents == 0
            && self.missing_courses.is_empty()
            && self.people == 0
    }
}

/// The best group whose rules `standing` meets (the default group's are always met).
fn qualified<'a>(groups: &'a [Group], standing: &Standing) -> Option<&'a Group> {
    groups
        .iter()
        .rev()
        .find(|g| g.model.rank == 0 || Shortfall::of(&g.rules, standing).met())
}

/// The standings of a program's partners (or of one partner) at `now`.
async fn standings(
    db: &Db,
    program_id: &str,
    groups: &[Group],
    partner_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, Standing>, DbErr> {
    let mut out: HashMap<String, Standing> = HashMap::new();
    let windows: BTreeSet<i32> = groups
        .iter()
        .filter(|g| g.model.rank > 0)
        .map(|g| g.rules.window_days)
        .collect();
    // One partner is read by its own rows (a partner belongs to one program), a program by
    // its rows: each through its index.
    let (column, scope) = match partner_id {
        Some(id) => ("partner_id", id),
        None => ("program_id", program_id),
    };
    let [p1, p2, p3] = db.params();
    for window in windows {
        // WON deals attributed to the partner (its reconciler rows), closed in the window.
        let sql = format!(
            "SELECT partner_id, COUNT(*) AS deals, \
             CAST(COALESCE(SUM(amount_program_cents), 0) AS BIGINT) AS cents \
             FROM deal_commissions WHERE {column} = {p1} AND deal_status = 'WON' \
             AND closed_at >= {p2} AND closed_at <= {p3} AND state <> 'DETACHED' \
             GROUP BY partner_id"
        );
        let values = vec![
            scope.into(),
            (now - Duration::days(i64::from(window))).into(),
            now.into(),
        ];
        for row in db
            .reads()
            .query_all_raw(Statement::from_sql_and_values(db.backend(), sql, values))
            .await?
        {
            let partner: String = row.try_get("", "partner_id")?;
            let deals: i64 = row.try_get("", "deals")?;
            let cents: i64 = row.try_get("", "cents")?;
            out.entry(partner)
                .or_default()
                .by_window
                .insert(window, (deals, cents));
        }
    }
    let sql = format!(
        "SELECT partner_id, person_email, course_key FROM certifications \
         WHERE {column} = {p1} AND (expires_at IS NULL OR expires_at > {p2})"
    );
    for row in db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            sql,
            [scope.into(), now.into()],
        ))
        .await?
    {
        let partner: String = row.try_get("", "partner_id")?;
        out.entry(partner).or_default().certifications.push((
            row.try_get("", "person_email")?,
            row.try_get("", "course_key")?,
        ));
    }
    Ok(out)
}

/// Whether the program's group review is due at `now`: a tick of its schedule has passed
/// since the last review.
fn review_due(program: &program::Model, now: DateTime<Utc>) -> bool {
    let schedule = program
        .group_review_schedule
        .as_deref()
        .unwrap_or(DEFAULT_REVIEW_SCHEDULE);
    let Ok(cron) = parse_cron(schedule) else {
        return false;
    };
    let last = program.groups_reviewed_at.unwrap_or(program.created_at);
    cron.find_next_occurrence(&last, false)
        .is_ok_and(|next| next <= now)
}

/// What one `evaluate-groups` run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateStats {
    /// Programs with groups.
    pub programs: u64,
    /// Partners evaluated (manual placements and terminated partners are not).
    pub partners: u64,
    /// Partners placed in their program's default group.
    pub joined: u64,
    /// Partners promoted.
    pub promoted: u64,
    /// Partners demoted at a review.
    pub demoted: u64,
    /// Programs whose group review ran.
    pub reviewed: u64,
    /// Changes not written because another writer moved the partner first.
    pub conflicts: u64,
}

/// The `evaluate-groups` job: promotes every partner whose rules hold for a higher group, and,
/// in programs whose group review is due, demotes the partners whose group's rules no longer
/// hold (to the best group whose rules do).
pub async fn evaluate_groups(db: &Db, now: DateTime<Utc>) -> Result<EvaluateStats, DbErr> {
    let mut stats = EvaluateStats::default();
    let all = groups_of(db.reads(), None).await?;
    let mut by_program: Vec<(String, Vec<Group>)> = Vec::new();
    for group in all {
        match by_program.last_mut() {
            Some((program_id, groups)) if *program_id == group.model.program_id => {
                groups.push(group)
            }
            _ => by_program.push((group.model.program_id.clone(), vec![group])),
        }
    }
    for (program_id, groups) in by_program {
        let Some(program) = program::Entity::find_by_id(program_id)
            .one(db.reads())
            .await?
        else {
            continue;
        };
        stats.programs += 1;
        evaluate_program(db, &program, &groups, now, &mut stats).await?;
    }
    Ok(stats)
}

/// One planned group change.
struct Change {
    partner: partner::Model,
    current: Option<partner_group_membership::Model>,
    to: usize,
    reason: GroupChangeReason,
}

async fn evaluate_program(
    db: &Db,
    program: &program::Model,
    groups: &[Group],
    now: DateTime<Utc>,
    stats: &mut EvaluateStats,
) -> Result<(), DbErr> {
    let due = review_due(program, now);
    let standings = standings(db, &program.id, groups, None, now).await?;
    let current: HashMap<String, partner_group_membership::Model> =
        partner_group_membership::Entity::find()
            .filter(partner_group_membership::Column::ProgramId.eq(program.id.as_str()))
            .filter(partner_group_membership::Column::Until.is_null())
            .all(db.reads())
            .await?
            .into_iter()
            .map(|m| (m.partner_id.clone(), m))
            .collect();
    let partners = partner::Entity::find()
        .filter(partner::Column::ProgramId.eq(program.id.as_str()))
        .filter(partner::Column::Status.ne(PartnerStatus::Terminated))
        .all(db.reads())
        .await?;
    let index: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.model.id.as_str(), i))
        .collect();
    let empty = Standing::default();
    let mut changes: Vec<Change> = Vec::new();
    for partner in partners {
        let membership = current.get(&partner.id);
        if membership.is_some_and(|m| m.manual) {
            continue;
        }
        stats.partners += 1;
        let standing = standings.get(&partner.id).unwrap_or(&empty);
        let Some(best) = qualified(groups, standing) else {
            continue;
        };
        let best = index[best.model.id.as_str()];
        let now_in = membership.and_then(|m| index.get(m.group_id.as_str()).copied());
        let reason = match now_in {
            None if groups[best].model.rank == 0 => GroupChangeReason::Joined,
            None => GroupChangeReason::Promoted,
            Some(at) if groups[best].model.rank > groups[at].model.rank => {
                GroupChangeReason::Promoted
            }
            Some(at) if due && groups[best].model.rank < groups[at].model.rank => {
                GroupChangeReason::Demoted
            }
            Some(_) => continue,
        };
        changes.push(Change {
            current: membership.cloned(),
            partner,
            to: best,
            reason,
        });
    }
    for chunk in changes.chunks(CHANGE_CHUNK) {
        let tx = db.begin_write().await?;
        let mut caused = Vec::new();
        for change in chunk {
            let from = change
                .current
                .as_ref()
                .and_then(|m| index.get(m.group_id.as_str()))
                .map(|&i| &groups[i].model);
            let moved = move_partner(
                &*tx,
                &change.partner,
                change.current.as_ref(),
                from,
                &groups[change.to].model,
                change.reason,
                false,
                None,
                now,
                &mut caused,
            )
            .await?;
            match (moved, change.reason) {
                (None, _) => stats.conflicts += 1,
                (Some(_), GroupChangeReason::Joined) => stats.joined += 1,
                (Some(_), GroupChangeReason::Promoted) => stats.promoted += 1,
                (Some(_), _) => stats.demoted += 1,
            }
        }
        events::record_all(&*tx, caused).await?;
        tx.commit().await?;
    }
    if due {
        db.execute_write(
            format!(
                "UPDATE programs SET groups_reviewed_at = {} WHERE id = {}",
                db.placeholder(1),
                db.placeholder(2)
            ),
            vec![now.into(), program.id.clone().into()],
        )
        .await?;
        stats.reviewed += 1;
    }
    Ok(())
}

/// `setPartnerGroup` (admins): holds the partner in a group whatever the rules say, or, with
/// no group, clears the override and places the partner by the rules at once. Returns the
/// partner's current membership.
pub async fn set_partner_group(
    db: &Db,
    input: SetPartnerGroupInput,
) -> ApiResult<partner_group_membership::Model> {
    let note = optional_text("input.note", input.note.as_deref(), 1000)?;
    let partner_id = input.partner_id.to_string();
    if !is_valid_id(&partner_id) {
        return Err(ApiError::NotFound("partner"));
    }
    let partner = partner::Entity::find_by_id(partner_id.clone())
        .one(db.reads())
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    let groups = groups_of(db.reads(), Some(&partner.program_id)).await?;
    if groups.is_empty() {
        return Err(ApiError::Conflict(
            "the partner's program has no groups (create its default group first)".into(),
        ));
    }
    let now = Utc::now();
    let (target, reason, manual) = match input.group_id {
        Some(group_id) => {
            let group = groups
                .iter()
                .find(|g| g.model.id == group_id.as_str())
                .ok_or(ApiError::NotFound("partner group"))?;
            (group, GroupChangeReason::Manual, true)
        }
        None => {
            let standing = standings(db, &partner.program_id, &groups, Some(&partner.id), now)
                .await?
                .remove(&partner.id)
                .unwrap_or_default();
            let best = qualified(&groups, &standing).unwrap_or(&groups[0]);
            (best, GroupChangeReason::OverrideCleared, false)
        }
    };
    let tx = db.begin_write().await?;
    let current = current_membership(&*tx, &partner.id).await?;
    if let Some(current) = &current {
        let unchanged = current.group_id == target.model.id && current.manual == manual;
        // Clearing an override that is not set changes nothing either.
        if unchanged || (!manual && !current.manual) {
            return Ok(current.clone());
        }
    }
    let from = current
        .as_ref()
        .and_then(|m| groups.iter().find(|g| g.model.id == m.group_id))
        .map(|g| &g.model);
    let mut caused = Vec::new();
    let opened = move_partner(
        &*tx,
        &partner,
        current.as_ref(),
        from,
        &target.model,
        reason,
        manual,
        note,
        now,
        &mut caused,
    )
    .await?
    .ok_or_else(|| ApiError::Conflict("the partner's group changed meanwhile: retry".into()))?;
    events::record_all(&*tx, caused).await?;
    tx.commit().await?;
    Ok(opened)
}

/// How far a partner is from the next group up.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The next group up.
    pub group: partner_group::Model,
    /// Won deals still needed within its window.
    pub deals_won_needed: i32,
    /// Won revenue still needed within its window (program currency).
    pub revenue_needed: Decimal,
    /// The fewest new certifications that would meet its certification rules (each person
    /// certified on a missing course counts towards both).
    pub certifications_needed: i32,
    /// Its required courses the partner holds no unexpired certification of.
    pub missing_certifications: Vec<String>,
    /// More certified people needed.
    pub certified_people_needed: i32,
}

/// The partner's progress towards the group above its current one (`None`: no groups, or
/// already in the highest).
pub async fn next_group_progress(db: &Db, partner: &partner::Model) -> ApiResult<Option<Progress>> {
    let groups = groups_of(db.reads(), Some(&partner.program_id)).await?;
    if groups.is_empty() {
        return Ok(None);
    }
    let current_rank = match current_membership(db.reads(), &partner.id).await? {
        Some(m) => groups
            .iter()
            .find(|g| g.model.id == m.group_id)
            .map_or(-1, |g| g.model.rank),
        None => -1,
    };
    let Some(next) = groups.iter().find(|g| g.model.rank > current_rank) else {
        return Ok(None);
    };
    let standing = standings(
        db,
        &partner.program_id,
        std::slice::from_ref(next),
        Some(&partner.id),
        Utc::now(),
    )
    .await?
    .remove(&partner.id)
    .unwrap_or_default();
    let short = Shortfall::of(&next.rules, &standing);
    let clamp = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    Ok(Some(Progress {
        group: next.model.clone(),
        deals_won_needed: clamp(short.deals),
        revenue_needed: from_cents(short.revenue_cents),
        certifications_needed: clamp(short.people.max(short.missing_courses.len() as i64)),
        certified_people_needed: clamp(short.people),
        missing_certifications: short.missing_courses,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(deals: i32, revenue: i64, courses: &[&str], people: i32) -> GroupRules {
        GroupRules {
            min_deals_won: deals,
            min_won_revenue: Decimal::from(revenue),
            window_days: 365,
            required_certifications: courses.iter().map(|c| c.to_string()).collect(),
            min_certified_people: people,
        }
    }

    fn standing(deals: i64, revenue: i64, certs: &[(&str, &str)]) -> Standing {
        Standing {
            by_window: HashMap::from([(365, (deals, revenue * 100))]),
            certifications: certs
                .iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect(),
        }
    }

    #[test]
    fn every_rule_must_hold() {
        let gold = rules(3, 50_000, &["sales-101"], 2);
        let two_people = [("a@x.io", "sales-101"), ("b@x.io", "sales-101")];
        assert!(Shortfall::of(&gold, &standing(3, 50_000, &two_people)).met());
        let short = Shortfall::of(&gold, &standing(2, 49_999, &two_people[..1]));
        assert_eq!(
            short,
            Shortfall {
                deals: 1,
                revenue_cents: 100,
                missing_courses: vec![],
                people: 1
            }
        );
        // People certified on another course do not count when courses are required.
        let other = [("a@x.io", "sales-101"), ("b@x.io", "tech-201")];
        assert_eq!(Shortfall::of(&gold, &standing(3, 60_000, &other)).people, 1);
        // The same person twice is one person.
        let twice = [("a@x.io", "sales-101"), ("a@x.io", "sales-101")];
        assert_eq!(Shortfall::of(&gold, &standing(3, 60_000, &twice)).people, 1);
        let missing = Shortfall::of(&gold, &standing(3, 60_000, &[]));
        assert_eq!(missing.missing_courses, ["sales-101"]);
    }

    #[test]
    fn the_best_qualifying_group_wins_and_the_default_always_qualifies() {
        let group = |rank: i32, rules: GroupRules| Group {
            model: partner_group::Model {
                id: format!("g{rank}"),
                program_id: "p".into(),
                name: format!("G{rank}"),
                rank,
                commission: json!({}),
                hold_days: 30,
                min_deals_won: 0,
                min_won_revenue: "0".into(),
                window_days: 365,
                required_certifications: json!([]),
                min_certified_people: 0,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            },
            plan: CommissionPlan {
                commission_type: crate::db::states::CommissionType::Percent,
                rate: Some(Decimal::TEN),
                flat_amount: None,
                tiers: vec![],
                cap_per_deal: None,
                min_deal_amount: None,
                recurring: None,
            },
            rules,
        };
        let groups = [
            group(0, GroupRules::none()),
            group(1, rules(3, 0, &[], 0)),
            group(5, rules(10, 0, &[], 0)),
        ];
        let rank = |deals| qualified(&groups, &standing(deals, 0, &[])).map(|g| g.model.rank);
        assert_eq!(rank(0), Some(0));
        assert_eq!(rank(3), Some(1));
        assert_eq!(rank(12), Some(5));
    }
}
