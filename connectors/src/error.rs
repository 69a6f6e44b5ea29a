//! The connector crate's error type.

/// What can go wrong talking to a CRM or mapping its data.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The CRM answered with data that does not map onto the neutral model.
    #[error("malformed CRM data: {0}")]
    Malformed(String),
    /// The CRM rejected the credentials.
    #[error("CRM rejected the credentials: {0}")]
    Unauthorized(String),
    /// The CRM has no such object (404).
    #[error("CRM object not found: {0}")]
    NotFound(String),
    /// Any other CRM-side failure.
    #[error("CRM request failed: {0}")]
    Remote(String),
    /// The CRM's rate limit cannot be waited out within the retry budget (a daily limit, or a
    /// wait longer than the budget).
    #[error("CRM rate limit reached: {0}")]
    RateLimited(String),
    /// Retries (5xx, timeouts, short rate limits) used up the retry budget.
    #[error("CRM unavailable after retrying for {seconds} s: {last}")]
    GaveUp {
        /// The budget spent.
        seconds: u64,
        /// The last failure.
        last: String,
    },
}

/// Result alias for the connector crate.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
