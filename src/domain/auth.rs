//! API keys and principals: who is calling, and what they may see.
//!
//! Tokens are `tdm_` + 43 random base62 characters (~256 bits). Only their SHA-256 hash is
//! stored; the token itself is shown once, when the key is created.

use chrono::Utc;
use rand::{Rng, distr::Alphanumeric};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};

pub use crate::db::states::ApiKeyRole;
use crate::{
    db::states::PartnerStatus,
    db::{
        ALIAS_PREFIX, Db, MaybeAliased, NativeRow,
        entities::{api_key, partner},
    },
    domain::ids::new_id,
    error::{ApiError, ApiResult},
};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A program manager.
    Admin {
        /// The key used.
        key_id: String,
    },
    /// A partner, limited to its own data.
    Partner {
        /// The key used.
        key_id: String,
        /// The partner the key is bound to.
        partner_id: String,
        /// That partner's program.
        program_id: String,
        /// The partner is SUSPENDED: its keys read but cannot change anything.
        suspended: bool,
    },
    /// A technology-integration partner.
    Integration {
        /// The key used.
        key_id: String,
        /// The programs whose events the key may read.
        program_ids: Vec<String>,
    },
}

impl Principal {
    /// The role behind this principal.
    pub fn role(&self) -> ApiKeyRole {
        match self {
            Principal::Admin { .. } => ApiKeyRole::Admin,
            Principal::Partner { .. } => ApiKeyRole::Partner,
            Principal::Integration { .. } => ApiKeyRole::Integration,
        }
    }

    /// The partner a partner key is bound to; `None` for other roles.
    pub fn partner_scope(&self) -> Option<&str> {
        match self {
            Principal::Partner { partner_id, .. } => Some(partner_id),
            _ => None,
        }
    }

    /// Whether this caller may see an event of `program_id` concerning `partner_id`: admins
    /// all, partners events about themselves, integrations events of the programs granted.
    pub fn sees_event(&self, program_id: &str, partner_id: Option<&str>) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Partner {
                partner_id: own, ..
            } => partner_id == Some(own.as_str()),
            Principal::Integration { program_ids, .. } => {
                program_ids.iter().any(|p| p == program_id)
            }
        }
    }

    /// Whether this caller acts on `program_id` as a program's own systems do (`recordEngagement`,
    /// `recordCertification`): admins on every program, integration keys on those granted.
    pub fn operates(&self, program_id: &str) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Integration { program_ids, .. } => {
                program_ids.iter().any(|p| p == program_id)
            }
            Principal::Partner { .. } => false,
        }
    }

    /// The key behind this principal.
    pub fn key_id(&self) -> &str {
        match self {
            Principal::Admin { key_id }
            | Principal::Partner { key_id, .. }
            | Principal::Integration { key_id, .. } => key_id,
        }
    }

    /// Fails with `FORBIDDEN` unless this is an admin.
    pub fn require_admin(&self) -> ApiResult<()> {
        match self {
            Principal::Admin { .. } => Ok(()),
            _ => Err(ApiError::Forbidden(
                "this operation requires an admin key".to_string(),
            )),
        }
    }

    /// Fails with `FORBIDDEN` for integration keys, which read no partner data.
    pub fn require_admin_or_partner(&self) -> ApiResult<()> {
        match self {
            Principal::Integration { .. } => Err(ApiError::Forbidden(
                "integration keys cannot read partner program data".to_string(),
            )),
            _ => Ok(()),
        }
    }
}

/// SHA-256 of a token, hex-encoded: what is stored and looked up.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token.
pub fn generate_token() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(43)
        .map(char::from)
        .collect();
    format!("tdm_{random}")
}

/// A key just created, with its token (the only time the token is available).
pub struct CreatedKey {
    /// The stored key.
    pub key: api_key::Model,
    /// The token to hand to its holder.
    pub token: String,
}

/// Creates an API key. Partner keys must name an existing partner; other roles must not.
pub async fn create_key(
    db: &Db,
    name: &str,
    role: ApiKeyRole,
    partner_id: Option<&str>,
    program_ids: &[String],
) -> ApiResult<CreatedKey> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad_input(
            "input.name",
            "name must be 1 to 200 characters",
        ));
    }
    match (role, partner_id) {
        (ApiKeyRole::Partner, None) => {
            return Err(ApiError::bad_input(
                "input.partnerId",
                "a PARTNER key needs partnerId",
            ));
        }
        (ApiKeyRole::Partner, Some(id)) => {
            let found = partner::Entity::find_by_id(id.to_string())
                .one(db.reads())
                .await?;
            if found.is_none() {
                return Err(ApiError::bad_input(
                    "input.partnerId",
                    "no partner has this id",
                ));
            }
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_input(
                "input.partnerId",
                "only PARTNER keys are bound to a partner",
            ));
        }
        (_, None) => {}
    }
    match (role, program_ids.is_empty()) {
        (ApiKeyRole::Integration, true) => {
            return Err(ApiError::bad_input(
                "input.programIds",
                "an INTEGRATION key needs the programs it may read (programIds)",
            ));
        }
        (ApiKeyRole::Integration, false) => {
            for (i, id) in program_ids.iter().enumerate() {
                let found = crate::db::entities::program::Entity::find_by_id(id.clone())
                    .one(db.reads())
                    .await?;
                if found.is_none() {
                    return Err(ApiError::bad_input(
                        format!("input.programIds[{i}]"),
                        "no program has this id",
                    ));
                }
            }
        }
        (_, false) => {
            return Err(ApiError::bad_input(
                "input.programIds",
                "only INTEGRATION keys are granted programs",
            ));
        }
        (_, true) => {}
    }
    // Through the writer, like every write (see `Db::begin_write`).
    let tx = db.begin_write().await?;
    let created = insert_key(&*tx, name, role, partner_id, program_ids).await?;
    tx.commit().await?;
    Ok(created)
}

/// Inserts a key inside the caller's transaction (its holder, role and programs already
/// checked) and returns it with its token.
pub async fn insert_key(
    conn: &impl sea_orm::ConnectionTrait,
    name: &str,
    role: ApiKeyRole,
    partner_id: Option<&str>,
    program_ids: &[String],
) -> ApiResult<CreatedKey> {
    let token = generate_token();
    let now = Utc::now();
    let key = api_key::ActiveModel {
        id: Set(new_id()),
        name: Set(name.to_string()),
        role: Set(role),
        partner_id: Set(partner_id.map(str::to_string)),
        program_ids: Set((!program_ids.is_empty()).then(|| serde_json::json!(program_ids))),
        token_hash: Set(hash_token(&token)),
        token_prefix: Set(token.chars().take(12).collect()),
        created_at: Set(now),
        revoked_at: Set(None),
        last_used_at: Set(None),
    };
    let key = key.insert(conn).await?;
    Ok(CreatedKey { key, token })
}

/// Resolves a bearer token to its principal. Unknown, malformed and revoked tokens are all
/// `UNAUTHENTICATED`, and indistinguishable from each other.
pub async fn authenticate(db: &Db, token: &str) -> ApiResult<Principal> {
    Ok(authenticate_caller(db, token).await?.principal)
}

/// An authenticated caller: its principal and, for a partner key, its partner as read with
/// the key (a request that asks for its own partner reads it no second time).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who is calling.
    pub principal: Principal,
    /// A partner key's partner.
    pub partner: Option<partner::Model>,
}

/// Like [`authenticate`], with the partner of a partner key: one statement.
pub async fn authenticate_caller(db: &Db, token: &str) -> ApiResult<Authenticated> {
    if !token.starts_with("tdm_") || token.len() > 128 {
        return Err(ApiError::Unauthenticated);
    }
    let [hash] = db.params();
    caller_of_key(
        db,
        format!("k.token_hash = {hash}"),
        vec![hash_token(token).into()],
    )
    .await
}

/// The caller of the one key (not revoked) matching `cond` (on `k`, the keys), with its partner:
/// one statement. `UNAUTHENTICATED` when none matches.
pub(crate) async fn caller_of_key(
    db: &Db,
    cond: String,
    values: Vec<sea_orm::Value>,
) -> ApiResult<Authenticated> {
    let keys = keys_with_partners(db, cond, values).await?;
    let (key, MaybeAliased(partner)) = keys.into_iter().next().ok_or(ApiError::Unauthenticated)?;
    let principal = principal_for_key(key, partner.as_ref())?;
    Ok(Authenticated { principal, partner })
}

/// The principals of the given keys that are not revoked (revoked or unknown keys are left
/// out): what outbound webhook endpoints are scoped by.
pub async fn principals_of_keys(
    db: &Db,
    key_ids: Vec<String>,
) -> ApiResult<std::collections::HashMap<String, Principal>> {
    let mut principals = std::collections::HashMap::new();
    for chunk in key_ids.chunks(500) {
        let (cond, values) = db.in_list("k.id", chunk, 1);
        for (key, MaybeAliased(partner)) in keys_with_partners(db, cond, values).await? {
            let id = key.id.clone();
            match principal_for_key(key, partner.as_ref()) {
                Ok(principal) => {
                    principals.insert(id, principal);
                }
                Err(ApiError::Unauthenticated) => {}
                Err(other) => return Err(other),
            }
        }
    }
    Ok(principals)
}

/// The keys that are not revoked matching `cond` (on `k`, the keys), each with its partner
/// (partner keys): one statement.
async fn keys_with_partners(
    db: &Db,
    cond: String,
    values: Vec<sea_orm::Value>,
) -> ApiResult<Vec<(api_key::Model, MaybeAliased<partner::Model>)>> {
    // Every request authenticates: the statement's head is built once.
    static HEAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let partner_columns: Vec<String> = <partner::Model as NativeRow>::COLUMNS
            .iter()
            .map(|c| format!("p.{c} AS {ALIAS_PREFIX}{c}"))
            .collect();
        format!(
            "SELECT k.*, {} FROM api_keys k LEFT JOIN partners p ON p.id = k.partner_id WHERE ",
            partner_columns.join(", ")
        )
    });
    let sql = format!("{}{cond} AND k.revoked_at IS NULL", *HEAD);
    Ok(db.rows(sql, values).await?)
}

fn principal_for_key(
    key: api_key::Model,
    partner: Option<&partner::Model>,
) -> ApiResult<Principal> {
    Ok(match key.role {
        ApiKeyRole::Admin => Principal::Admin { key_id: key.id },
        ApiKeyRole::Integration => Principal::Integration {
            program_ids: key
                .program_ids
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            key_id: key.id,
        },
        ApiKeyRole::Partner => {
            let partner_id = key.partner_id.ok_or(ApiError::Unauthenticated)?;
            let partner = partner.ok_or(ApiError::Unauthenticated)?;
            // A TERMINATED partner's keys stop working altogether (reads included): the
            // relationship is over, and its history stays with the program's admins.
            if partner.status == PartnerStatus::Terminated {
                return Err(ApiError::Unauthenticated);
            }
            Principal::Partner {
                key_id: key.id,
                partner_id,
                program_id: partner.program_id.clone(),
                suspended: partner.status == PartnerStatus::Suspended,
            }
        }
    })
}

/// Whether any admin key that is not revoked exists (the server creates one on first start).
pub async fn has_admin_key(db: &Db) -> ApiResult<bool> {
    Ok(api_key::Entity::find()
        .filter(api_key::Column::Role.eq(ApiKeyRole::Admin.as_str()))
        .filter(api_key::Column::RevokedAt.is_null())
        .one(db.reads())
        .await?
        .is_some())
}

/// Revokes a key. Partner keys may revoke keys bound to their own partner.
pub async fn revoke_key(db: &Db, principal: &Principal, id: &str) -> ApiResult<api_key::Model> {
    let key = api_key::Entity::find_by_id(id.to_string())
        .one(db.reads())
        .await?
        .ok_or(ApiError::NotFound("api key"))?;
    let allowed = match principal {
        Principal::Admin { .. } => true,
        Principal::Partner { partner_id, .. } => key.partner_id.as_deref() == Some(partner_id),
        Principal::Integration { key_id, .. } => key_id == &key.id,
    };
    if !allowed {
        return Err(ApiError::NotFound("api key"));
    }
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    let mut active: api_key::ActiveModel = key.into();
    active.revoked_at = Set(Some(Utc::now()));
    let tx = db.begin_write().await?;
    let revoked = active.update(&*tx).await?;
    tx.commit().await?;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.starts_with("tdm_"));
        assert_eq!(a.len(), 47);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
