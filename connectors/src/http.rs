//! Resilient HTTP to a CRM: bearer auth (a fixed access token, or OAuth with refresh on expiry
//! or on one 401, reporting a rotated refresh token), rate-limit signals honoured, 5xx and
//! timeouts retried with jittered exponential backoff, all within a bounded retry budget.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::{ConnectorError, Result};

/// Which CRM's limit signals to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// HubSpot: 429 with `policyName` (`DAILY` cannot be waited out) and
    /// `X-HubSpot-RateLimit-*` headers.
    HubSpot,
    /// Salesforce: 403 `REQUEST_LIMIT_EXCEEDED` (a rolling 24 h limit), `Sforce-Limit-Info`.
    Salesforce,
    /// Pipedrive: 429 with `x-ratelimit-reset` / `Retry-After`, daily token budget headers.
    Pipedrive,
}

/// Retry and timeout bounds.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Per-request timeout (connect and whole response).
    pub timeout: Duration,
    /// Total time one call may spend retrying.
    pub budget: Duration,
    /// First backoff delay (doubled each retry, ±50 % jitter).
    pub base_delay: Duration,
    /// Largest backoff delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(30),
            budget: Duration::from_secs(120),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// OAuth client credentials and the current refresh token.
#[derive(Clone)]
pub struct OAuthClient {
    /// Token endpoint (absolute URL).
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Current refresh token.
    pub refresh_token: String,
    /// Send the client credentials as HTTP Basic (Pipedrive) instead of form fields.
    pub basic_auth: bool,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// How a connection authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// A fixed access token (HubSpot private app token, Pipedrive API token sent as
    /// `x-api-token`, a Salesforce session).
    AccessToken(String),
    /// OAuth 2 refresh-token flow.
    OAuth(OAuthClient),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::AccessToken(_) => f.write_str("AccessToken([redacted])"),
            Credentials::OAuth(o) => write!(f, "OAuth({o:?})"),
        }
    }
}

/// A token set obtained by a refresh: the caller persists a rotated refresh token.
#[derive(Clone)]
pub struct Refreshed {
    /// The new refresh token, when the provider rotated it.
    pub refresh_token: Option<String>,
    /// Salesforce `instance_url` / Pipedrive `api_domain`, when returned.
    pub api_base: Option<String>,
}

type OnRefresh = Arc<dyn Fn(Refreshed) + Send + Sync>;

struct AuthState {
    access_token: Option<String>,
    /// Tokens replaced by refreshes (the last few): a late echo of one is redacted too.
    retired: Vec<String>,
    expires_at: Option<Instant>,
    oauth: Option<OAuthClient>,
    api_base: Option<String>,
}

/// A CRM's HTTP endpoint with its credentials.
pub struct CrmHttp {
    client: reqwest::Client,
    base_url: String,
    vendor: Vendor,
    policy: RetryPolicy,
    /// Pipedrive API tokens travel in `x-api-token`, not as bearer tokens.
    api_token_header: bool,
    auth: Mutex<AuthState>,
    on_refresh: Option<OnRefresh>,
    /// No request before this instant: the CRM said its window's budget is spent.
    not_before: std::sync::Mutex<Option<Instant>>,
    /// Requests only to public addresses ([`CrmHttp::public_only`]).
    public_only: bool,
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    Retry { wait: Option<Duration>, why: String },
    Refresh(String),
}

impl CrmHttp {
    /// A client for `base_url` (no trailing slash needed).
    pub fn new(
        vendor: Vendor,
        base_url: &str,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> Result<CrmHttp> {
        let client = http_client(&policy, false)?;
        let (access_token, oauth) = match credentials {
            Credentials::AccessToken(token) => (Some(token), None),
            Credentials::OAuth(oauth) => (None, Some(oauth)),
        };
        Ok(CrmHttp {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            vendor,
            policy,
            api_token_header: vendor == Vendor::Pipedrive && oauth.is_none(),
            auth: Mutex::new(AuthState {
                access_token,
                retired: Vec::new(),
                expires_at: None,
                oauth,
                api_base: None,
            }),
            on_refresh: None,
            not_before: std::sync::Mutex::new(None),
            public_only: false,
        })
    }

    /// Sends requests only to public addresses ([`crate::net`]): every URL's literal host is
    /// checked (including token endpoints and API domains a token answer names), names are
    /// resolved to public addresses only, and redirects are not followed.
    pub fn public_only(mut self) -> Result<CrmHttp> {
        self.client = http_client(&self.policy, true)?;
        self.public_only = true;
        Ok(self)
    }

    /// Refuses `url` when only public targets are allowed and its host is not one.
    fn check_target(&self, url: &str) -> Result<()> {
        if !self.public_only {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ConnectorError::Remote(format!("invalid CRM URL: {e}")))?;
        if crate::net::literal_host_is_public(&parsed) {
            Ok(())
        } else {
            Err(ConnectorError::Remote(format!(
                "refused to call {}: not a public address",
                parsed.host_str().unwrap_or_default()
            )))
        }
    }

    /// Called after every OAuth refresh (to persist a rotated refresh token).
    pub fn on_refresh(mut self, f: impl Fn(Refreshed) + Send + Sync + 'static) -> CrmHttp {
        self.on_refresh = Some(Arc::new(f));
        self
    }

    /// The base URL requests go to (an OAuth `instance_url`/`api_domain` once known).
    pub async fn api_base(&self) -> String {
        self.auth
            .lock()
            .await
            .api_base
            .clone()
            .unwrap_or_else(|| self.base_url.clone())
    }

    /// The configured base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends a JSON request to `path` (relative to the API base, or an absolute URL) and
    /// returns the JSON answer, retrying as the policy allows.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        // Every error leaves redacted, whatever produced it: CRMs echo requests (headers,
        // form bodies) in 400 and 403 answers and in failed token refreshes.
        match self.json_unredacted(method, path, query, body).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.redact_error(err).await),
        }
    }

    async fn json_unredacted(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let started = Instant::now();
        let mut failures: u32 = 0;
        let mut refreshed = false;
        loop {
            let token = self.token(false).await?;
            let url = if path.starts_with("http://") || path.starts_with("https://") {
                path.to_string()
            } else {
                format!("{}{path}", self.api_base().await)
            };
            self.check_target(&url)?;
            let mut request = self.client.request(method.clone(), &url).query(query);
            request = if self.api_token_header {
                request.header("x-api-token", &token)
            } else {
                request.bearer_auth(&token)
            };
            if let Some(body) = body {
                request = request.json(body);
            }
            let wait = self
                .not_before
                .lock()
                .expect("pacing state")
                .take()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                tokio::time::sleep(wait).await;
            }
            let attempt = match request.send().await {
                Err(err) => Attempt::Retry {
                    wait: None,
                    why: describe(&err),
                },
                Ok(response) => self.classify(response).await?,
            };
            match attempt {
                Attempt::Done(value) => return Ok(value),
                Attempt::Refresh(message) => {
                    let can_refresh = self.auth.lock().await.oauth.is_some();
                    if refreshed || !can_refresh {
                        return Err(ConnectorError::Unauthorized(message));
                    }
                    refreshed = true;
                    self.token(true).await?;
                }
                Attempt::Retry { wait, why } => {
                    failures += 1;
                    let wait = wait.unwrap_or_else(|| self.backoff(failures));
                    if started.elapsed() + wait > self.policy.budget {
                        return Err(ConnectorError::GaveUp {
                            seconds: self.policy.budget.as_secs(),
                            last: why,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Reads the vendor's remaining-budget headers: when the current window is spent, the next
    /// request waits for it to end instead of drawing a 429.
    fn pace(&self, headers: &HeaderMap) {
        let wait = match self.vendor {
            Vendor::HubSpot => (header_u64(headers, "x-hubspot-ratelimit-remaining") == Some(0))
                .then(|| header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds"))
                .flatten()
                .map(Duration::from_millis),
            Vendor::Pipedrive => (header_u64(headers, "x-ratelimit-remaining") == Some(0))
                .then(|| header_u64(headers, "x-ratelimit-reset"))
                .flatten()
                .map(Duration::from_secs),
            Vendor::Salesforce => None,
        };
        if let Some(wait) = wait {
            *self.not_before.lock().expect("pacing state") =
                Some(Instant::now() + wait.min(Duration::from_secs(60)));
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .policy
            .base_delay
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)));
        let capped = exp.min(self.policy.max_delay);
        capped.mul_f64(rand::random_range(0.5..=1.5))
    }

    /// Removes every credential of this connection from an error's text.
    async fn redact_error(&self, err: ConnectorError) -> ConnectorError {
        let auth = self.auth.lock().await;
        let mut secrets: Vec<String> = Vec::new();
        if let Some(t) = &auth.access_token {
            secrets.push(t.clone());
        }
        secrets.extend(auth.retired.iter().cloned());
        if let Some(o) = &auth.oauth {
            secrets.push(o.client_secret.clone());
            secrets.push(o.refresh_token.clone());
            // As an HTTP Basic credential, the way a token endpoint may echo it.
            secrets.push(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", o.client_id, o.client_secret)),
            );
        }
        drop(auth);
        let clean = |text: String| redact(&text, &secrets);
        match err {
            ConnectorError::Malformed(m) => ConnectorError::Malformed(clean(m)),
            ConnectorError::Unauthorized(m) => ConnectorError::Unauthorized(clean(m)),
            ConnectorError::NotFound(m) => ConnectorError::NotFound(clean(m)),
            ConnectorError::Remote(m) => ConnectorError::Remote(clean(m)),
            ConnectorError::RateLimited(m) => ConnectorError::RateLimited(clean(m)),
            ConnectorError::GaveUp { seconds, last } => ConnectorError::GaveUp {
                seconds,
                last: clean(last),
            },
        }
    }

    async fn classify(&self, response: reqwest::Response) -> Result<Attempt> {
        let status = response.status();
        let headers = response.headers().clone();
        self.pace(&headers);
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Attempt::Done(Value::Null));
            }
            return serde_json::from_str(&text)
                .map(Attempt::Done)
                .map_err(|e| ConnectorError::Malformed(format!("response is not JSON: {e}")));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = error_message(&body).unwrap_or_else(|| {
            let t: String = text.chars().take(200).collect();
            if t.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {t}")
            }
        });
        let retry_after = retry_after(&headers);
        match (self.vendor, status) {
            (_, StatusCode::UNAUTHORIZED) => Ok(Attempt::Refresh(message)),
            (Vendor::Salesforce, StatusCode::FORBIDDEN)
                if text.contains("REQUEST_LIMIT_EXCEEDED") =>
            {
                Err(ConnectorError::RateLimited(format!(
                    "Salesforce API request limit exceeded ({message}){}",
                    headers
                        .get("sforce-limit-info")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| format!("; {v}"))
                        .unwrap_or_default()
                )))
            }
            (_, StatusCode::TOO_MANY_REQUESTS) => {
                if self.vendor == Vendor::HubSpot
                    && body.get("policyName").and_then(Value::as_str) == Some("DAILY")
                {
                    return Err(ConnectorError::RateLimited(format!(
                        "HubSpot daily limit reached: {message}"
                    )));
                }
                if self.vendor == Vendor::Pipedrive
                    && header_u64(&headers, "x-daily-requests-left") == Some(0)
                {
                    return Err(ConnectorError::RateLimited(format!(
                        "Pipedrive daily token budget used up: {message}"
                    )));
                }
                let wait = retry_after.or_else(|| vendor_window(self.vendor, &headers));
                Ok(Attempt::Retry {
                    wait: Some(wait.unwrap_or(Duration::from_secs(1))),
                    why: format!("rate limited: {message}"),
                })
            }
            (_, s) if s.is_server_error() => Ok(Attempt::Retry {
                wait: retry_after,
                why: message,
            }),
            (_, StatusCode::FORBIDDEN) => Err(ConnectorError::Unauthorized(message)),
            (_, StatusCode::NOT_FOUND) => Err(ConnectorError::NotFound(message)),
            _ => Err(ConnectorError::Remote(message)),
        }
    }

    /// The access token, refreshed when `force` or when it is missing or about to expire.
    async fn token(&self, force: bool) -> Result<String> {
        let mut auth = self.auth.lock().await;
        let fresh = auth
            .expires_at
            .is_none_or(|at| at > Instant::now() + Duration::from_secs(30));
        if let Some(token) = &auth.access_token
            && fresh
            && !force
        {
            return Ok(token.clone());
        }
        let Some(oauth) = auth.oauth.clone() else {
            return auth
                .access_token
                .clone()
                .ok_or_else(|| ConnectorError::Unauthorized("no access token".into()));
        };
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", oauth.refresh_token.clone()),
        ];
        self.check_target(&oauth.token_url)?;
        let mut request = self.client.post(&oauth.token_url);
        if oauth.basic_auth {
            request = request.basic_auth(&oauth.client_id, Some(&oauth.client_secret));
        } else {
            form.push(("client_id", oauth.client_id.clone()));
            form.push(("client_secret", oauth.client_secret.clone()));
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| ConnectorError::Remote(format!("token refresh: {}", describe(&e))))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = error_message(&body).unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ConnectorError::Unauthorized(format!(
                "token refresh failed: {message}"
            )));
        }
        let access = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::Malformed("token response without access_token".into()))?
            .to_string();
        let expires_in = body.get("expires_in").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        });
        let rotated = body
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|r| *r != oauth.refresh_token)
            .map(str::to_string);
        let api_base = body
            .get("instance_url")
            .or_else(|| body.get("api_domain"))
            .and_then(Value::as_str)
            .map(|s| s.trim_end_matches('/').to_string());
        if let Some(old) = auth.access_token.replace(access.clone()) {
            auth.retired.push(old);
        }
        // Salesforce returns no expires_in: its sessions last hours; a 401 refreshes.
        auth.expires_at = expires_in.map(|s| Instant::now() + Duration::from_secs(s));
        if let Some(r) = &rotated
            && let Some(o) = auth.oauth.as_mut()
        {
            let old = std::mem::replace(&mut o.refresh_token, r.clone());
            auth.retired.push(old);
        }
        let excess = auth.retired.len().saturating_sub(8);
        auth.retired.drain(..excess);
        if api_base.is_some() {
            auth.api_base = api_base.clone();
        }
        drop(auth);
        if let Some(f) = &self.on_refresh {
            f(Refreshed {
                refresh_token: rotated,
                api_base,
            });
        }
        Ok(access)
    }
}

/// The HTTP client of a CRM connection; `public_only` resolves names to public addresses only
/// and follows no redirects (a redirect could lead to a literal private address).
fn http_client(policy: &RetryPolicy, public_only: bool) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .user_agent(concat!("Tandem/", env!("CARGO_PKG_VERSION")));
    if public_only {
        builder = builder
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(crate::net::PublicOnlyResolver));
    }
    builder
        .build()
        .map_err(|e| ConnectorError::Remote(format!("HTTP client: {e}")))
}

/// `text` with every secret (of at least 6 characters) replaced by `[redacted]`, in the forms
/// a server may echo it: as is, form-urlencoded and percent-encoded.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 6) {
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let percent = form.replace('+', "%20");
        for form in [secret.as_str(), form.as_str(), percent.as_str()] {
            out = out.replace(form, "[redacted]");
        }
    }
    out
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "could not connect".to_string()
    } else {
        format!("request failed: {err}")
    }
}

/// The message of a CRM error body (HubSpot `message`, Salesforce `[{"message"}]`, Pipedrive
/// `error`, OAuth `error_description`).
fn error_message(body: &Value) -> Option<String> {
    let first = body.as_array().and_then(|a| a.first()).unwrap_or(body);
    ["message", "error_description", "error"]
        .iter()
        .find_map(|k| first.get(k).and_then(Value::as_str))
        .map(str::to_string)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `Retry-After` of a response.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

/// A `Retry-After` value: whole seconds or an HTTP date (a past date is no wait).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The wait a vendor's own headers ask for when it sends no `Retry-After`.
fn vendor_window(vendor: Vendor, headers: &HeaderMap) -> Option<Duration> {
    match vendor {
        // The rolling window's length; waiting one window lets the count fall.
        Vendor::HubSpot => header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds")
            .map(Duration::from_millis),
        // Seconds until the window resets.
        Vendor::Pipedrive => header_u64(headers, "x-ratelimit-reset").map(Duration::from_secs),
        Vendor::Salesforce => None,
    }
}

/// A timestamp as HubSpot filters expect it (epoch milliseconds as a string).
pub fn epoch_ms(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A public-only client refuses literal private hosts (a base URL, a token endpoint or an
    /// API domain a token answer names) before any request leaves, and names that resolve to
    /// no public address.
    #[tokio::test]
    async fn public_only_clients_refuse_private_targets() {
        let policy = RetryPolicy {
            timeout: Duration::from_secs(2),
            budget: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for base in [
            "http://169.254.169.254",
            "http://[64:ff9b::a9fe:a9fe]",
            "http://127.0.0.1:9",
            "http://localhost:9",
        ] {
            let http = CrmHttp::new(
                Vendor::HubSpot,
                base,
                Credentials::AccessToken("pat-secret-token".into()),
                policy,
            )
            .unwrap()
            .public_only()
            .unwrap();
            let err = http
                .json(Method::GET, "/crm/v3/objects/deals", &[], None)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("not a public address"),
                "{base}: {err}"
            );
        }
        let oauth = CrmHttp::new(
            Vendor::Salesforce,
            "https://login.example.com",
            Credentials::OAuth(OAuthClient {
                client_id: "id".into(),
                client_secret: "secret-value".into(),
                refresh_token: "refresh-value".into(),
                token_url: "http://10.0.0.1/services/oauth2/token".into(),
                basic_auth: false,
            }),
            policy,
        )
        .unwrap()
        .public_only()
        .unwrap();
        let err = oauth
            .json(Method::GET, "/services/data", &[], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a public address"), "{err}");
    }

    #[test]
    fn retry_after_is_whole_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        // Not delay-seconds: ignored (the backoff applies), never a panic on huge values.
        for odd in ["1.5", "1e400", "-4", "soon"] {
            assert_eq!(parse_retry_after(odd), None, "{odd}");
        }
    }
}
