//! Console sessions (DESIGN §16): an ADMIN or PARTNER key exchanged for a session token carried
//! in an HttpOnly cookie. Only the token's SHA-256 is stored. A session resolves to the principal
//! of its key on every request, in one statement: a revoked key, or a terminated partner, ends
//! its sessions at once, on every instance.
//!
//! Each session has a CSRF token derived from its own secret token (SHA-256 over a label and the
//! token): a page can carry it in its forms, a cross-site page cannot learn it, and nothing more
//! is stored.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, Statement};
use sha2::{Digest, Sha256};

use crate::{
    db::Db,
    domain::auth::{
        ApiKeyRole, Authenticated, authenticate_caller, caller_of_key, generate_token, hash_token,
    },
    error::{ApiError, ApiResult},
};

/// How long a session lasts after sign-in.
pub const SESSION_HOURS: i64 = 12;

/// A session just opened.
pub struct OpenedSession {
    /// The session token (for the cookie; shown to no one else).
    pub token: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
    /// Who signed in.
    pub caller: Authenticated,
}

/// Exchanges an API key for a session. Integration keys cannot sign in (they read no partner
/// program data); unknown, revoked and malformed keys are all `UNAUTHENTICATED`.
pub async fn open(db: &Db, api_key: &str) -> ApiResult<OpenedSession> {
    let caller = authenticate_caller(db, api_key.trim()).await?;
    if caller.principal.role() == ApiKeyRole::Integration {
        return Err(ApiError::Forbidden(
            "integration keys cannot sign in to the console".into(),
        ));
    }
    let now = Utc::now();
    let expires_at = now + Duration::hours(SESSION_HOURS);
    // A session token looks like a key (same alphabet and length) but is never accepted as one:
    // it is looked up only among sessions.
    let token = generate_token().replacen("tdm_", "tds_", 1);
    let [id, key, created, expires] = db.params();
    let [cutoff] = db.params();
    let tx = db.begin_write().await?;
    tx.execute_raw(Statement::from_sql_and_values(
        db.backend(),
        format!(
            "INSERT INTO console_sessions (id, key_id, created_at, expires_at) \
             VALUES ({id}, {key}, {created}, {expires})"
        ),
        [
            hash_token(&token).into(),
            caller.principal.key_id().to_string().into(),
            now.into(),
            expires_at.into(),
        ],
    ))
    .await?;
    // Expired sessions go with each sign-in: there are never many.
    tx.execute_raw(Statement::from_sql_and_values(
        db.backend(),
        format!("DELETE FROM console_sessions WHERE expires_at <= {cutoff}"),
        [now.into()],
    ))
    .await?;
    tx.commit().await?;
    Ok(OpenedSession {
        token,
        expires_at,
        caller,
    })
}

/// The caller of a session token: `UNAUTHENTICATED` when the session is unknown, expired or
/// ended, or its key is revoked.
pub async fn caller(db: &Db, token: &str) -> ApiResult<Authenticated> {
    if !token.starts_with("tds_") || token.len() > 128 {
        return Err(ApiError::Unauthenticated);
    }
    let [hash, now] = db.params();
    caller_of_key(
        db,
        format!(
            "k.id = (SELECT s.key_id FROM console_sessions s WHERE s.id = {hash} \
             AND s.expires_at > {now})"
        ),
        vec![hash_token(token).into(), Utc::now().into()],
    )
    .await
}

/// Ends a session (logout). Ending an unknown session is not an error.
pub async fn close(db: &Db, token: &str) -> ApiResult<()> {
    let [hash] = db.params();
    db.execute_write(
        format!("DELETE FROM console_sessions WHERE id = {hash}"),
        vec![hash_token(token).into()],
    )
    .await?;
    Ok(())
}

/// The CSRF token of a session: what its forms carry.
pub fn csrf_token(session_token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tandem console csrf\0");
    hasher.update(session_token.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether `given` is the session's CSRF token (compared in constant time).
pub fn csrf_matches(session_token: &str, given: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(csrf_token(session_token).as_bytes(), given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = csrf_token("tds_a");
        assert_eq!(a.len(), 64);
        assert!(csrf_matches("tds_a", &a));
        assert!(!csrf_matches("tds_b", &a));
        assert!(!csrf_matches("tds_a", ""));
        assert!(!csrf_matches("tds_a", &a[..63]));
    }
}
