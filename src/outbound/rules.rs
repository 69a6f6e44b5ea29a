//! The rules of delivery as pure functions: the envelope, retries and their delays,
//! `Retry-After`, how an error is described, and which endpoints recover, fail or are gone.

use super::*;

pub(super) fn describe_error(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        format!("could not connect: {}", root_cause(&err))
    } else {
        format!("request failed: {}", root_cause(&err))
    }
}

pub(super) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// The body of a delivery: `{"id","type","timestamp","data"}`.
pub fn envelope(event: &event::Model) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event.id,
        "type": event.event_type,
        "timestamp": event.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": event.data,
    }))
    .expect("JSON values serialise")
}

/// `Retry-After` as seconds or an HTTP date, capped at one day.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    tandem_connectors::http::parse_retry_after(value)
        .map(|wait| wait.min(Duration::from_secs(86_400)))
}

/// The delay before retry number `attempt` (1-based: after the first failed attempt), with
/// ±20 % jitter; `None` when the schedule is exhausted.
pub fn retry_delay(schedule: &[Duration], failed_attempts: i32) -> Option<Duration> {
    let step = schedule.get(usize::try_from(failed_attempts - 1).ok()?)?;
    let factor = rand::rng().random_range(0.8..=1.2);
    Some(step.mul_f64(factor))
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery_id: String,
    pub claim_token: String,
    pub endpoint_id: String,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    /// The first KiB of the answer's body (kept in the attempt log).
    pub response_snippet: Option<String>,
}

impl Outcome {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// How much of an answer's body the attempt log keeps.
pub const SNIPPET_BYTES: usize = 1024;

/// The first [`SNIPPET_BYTES`] of a body as text (invalid UTF-8 replaced), cut on a character
/// boundary; `None` for an empty body.
pub fn response_snippet(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES + 4)]);
    let mut end = text.len().min(SNIPPET_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (end > 0).then(|| text[..end].to_string())
}

/// Where a delivery goes after an attempt: its status, when it is next due (epoch ms) and
/// when it was delivered. A 2xx answer delivers it; 410 Gone fails it for good; otherwise it
/// is retried after the endpoint's `Retry-After` or the schedule's delay, until the schedule
/// is exhausted.
pub fn next_state(
    outcome: &Outcome,
    schedule: &[Duration],
) -> (DeliveryStatus, Option<i64>, Option<DateTime<Utc>>) {
    if outcome.succeeded() {
        return (DeliveryStatus::Succeeded, None, Some(outcome.attempted_at));
    }
    if outcome.status_code == Some(410) {
        return (DeliveryStatus::Failed, None, None);
    }
    let delay = outcome
        .retry_after
        .or_else(|| retry_delay(schedule, outcome.attempt));
    match delay {
        Some(delay) if outcome.attempt <= schedule.len() as i32 => (
            DeliveryStatus::Pending,
            Some(outcome.attempted_at.timestamp_millis() + delay.as_millis() as i64),
            None,
        ),
        _ => (DeliveryStatus::Failed, None, None),
    }
}

/// What a batch of outcomes says about its endpoints (the disable policy's input).
#[derive(Debug, Default, PartialEq)]
pub struct EndpointHealth<'a> {
    /// Endpoints whose latest attempt in the batch succeeded: no longer failing.
    pub recovered: Vec<&'a str>,
    /// Endpoints whose attempts in the batch failed since their latest success, with the time
    /// of the first such failure (when they started failing, if they were not already).
    pub failing: HashMap<&'a str, DateTime<Utc>>,
    /// Endpoints that answered 410 Gone: disabled at once.
    pub gone: Vec<&'a str>,
}

/// Sorts a batch's outcomes (in attempt order) into recovered, failing and gone endpoints.
pub fn endpoint_health(batch: &[Outcome]) -> EndpointHealth<'_> {
    let mut health = EndpointHealth::default();
    for outcome in batch {
        if outcome.succeeded() {
            health.recovered.push(&outcome.endpoint_id);
            health.failing.remove(outcome.endpoint_id.as_str());
        } else {
            if outcome.status_code == Some(410) {
                health.gone.push(&outcome.endpoint_id);
            }
            health
                .failing
                .entry(&outcome.endpoint_id)
                .or_insert(outcome.attempted_at);
        }
    }
    health
        .recovered
        .retain(|id| !health.failing.contains_key(id));
    health
}

/// Endpoints failing since before this time are disabled.
pub fn disable_cutoff(now: DateTime<Utc>, disable_after: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(disable_after).unwrap_or(chrono::Duration::days(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        for _ in 0..100 {
            let first = retry_delay(&schedule, 1).unwrap();
            assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
            let second = retry_delay(&schedule, 2).unwrap();
            assert!(second >= Duration::from_secs(240) && second <= Duration::from_secs(360));
        }
        assert_eq!(retry_delay(&schedule, 3), None);
        assert_eq!(retry_delay(&schedule, 0), None);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    fn outcome(endpoint: &str, attempt: i32, status: Option<u16>, secs: i64) -> Outcome {
        Outcome {
            delivery_id: format!("d{attempt}"),
            claim_token: "c".into(),
            endpoint_id: endpoint.into(),
            attempt,
            attempted_at: DateTime::from_timestamp(secs, 0).unwrap(),
            status_code: status,
            latency_ms: 1,
            error: None,
            retry_after: None,
            response_snippet: None,
        }
    }

    #[test]
    fn snippets_keep_the_first_kib_on_a_character_boundary() {
        assert_eq!(response_snippet(b""), None);
        assert_eq!(response_snippet(b"ok").as_deref(), Some("ok"));
        let long = vec![b'x'; 5000];
        assert_eq!(response_snippet(&long).unwrap().len(), SNIPPET_BYTES);
        // 1023 ASCII bytes and a 2-byte character straddling the limit: the character goes.
        let mut straddling = vec![b'a'; 1023];
        straddling.extend_from_slice("é and more".as_bytes());
        assert_eq!(response_snippet(&straddling).unwrap().len(), 1023);
        assert_eq!(
            response_snippet(b"\xff\xfe").as_deref(),
            Some("\u{fffd}\u{fffd}")
        );
    }

    #[test]
    fn an_attempt_delivers_retries_or_fails() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        let ok = outcome("e", 1, Some(204), 1_000);
        assert_eq!(
            next_state(&ok, &schedule),
            (DeliveryStatus::Succeeded, None, Some(ok.attempted_at))
        );
        let gone = outcome("e", 1, Some(410), 1_000);
        assert_eq!(
            next_state(&gone, &schedule),
            (DeliveryStatus::Failed, None, None)
        );
        // A 500 on the first attempt: due again after the first step (±20 %).
        let (status, next, delivered) = next_state(&outcome("e", 1, Some(500), 1_000), &schedule);
        assert_eq!((status, delivered), (DeliveryStatus::Pending, None));
        let next = next.unwrap();
        assert!((1_008_000..=1_012_000).contains(&next), "{next}");
        // Retry-After wins over the schedule.
        let mut later = outcome("e", 2, Some(429), 1_000);
        later.retry_after = Some(Duration::from_secs(3));
        assert_eq!(
            next_state(&later, &schedule),
            (DeliveryStatus::Pending, Some(1_003_000), None)
        );
        // The schedule exhausted (even with a Retry-After): failed.
        let mut last = outcome("e", 3, None, 1_000);
        last.retry_after = Some(Duration::from_secs(3));
        assert_eq!(
            next_state(&last, &schedule),
            (DeliveryStatus::Failed, None, None)
        );
    }

    #[test]
    fn endpoints_recover_fail_or_are_gone() {
        let batch = [
            outcome("a", 1, Some(500), 10),
            outcome("a", 2, Some(200), 20),
            outcome("b", 1, Some(200), 10),
            outcome("b", 2, None, 30),
            outcome("b", 3, Some(503), 40),
            outcome("c", 1, Some(410), 50),
        ];
        let health = endpoint_health(&batch);
        assert_eq!(health.recovered, ["a"]);
        assert_eq!(
            health.failing,
            HashMap::from([
                ("b", DateTime::from_timestamp(30, 0).unwrap()),
                ("c", DateTime::from_timestamp(50, 0).unwrap()),
            ])
        );
        assert_eq!(health.gone, ["c"]);
        assert_eq!(
            disable_cutoff(
                DateTime::from_timestamp(1_000, 0).unwrap(),
                Duration::from_secs(100)
            ),
            DateTime::from_timestamp(900, 0).unwrap()
        );
    }
}
