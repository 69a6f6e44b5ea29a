//! The service's error type: every failure a client can see, with its GraphQL code.

use async_graphql::ErrorExtensions;

/// What went wrong, in terms a client may be told.
///
/// Deliberately not `Display`: async-graphql converts any `Display` type into an error without
/// extensions, and every client-visible error must carry its `code`. Use [`ApiError::message`].
#[derive(Debug)]
pub enum ApiError {
    /// No key, or an unknown or revoked key.
    Unauthenticated,
    /// The key is valid but its role may not do this.
    Forbidden(String),
    /// The object does not exist, or is not visible to this key.
    NotFound(&'static str),
    /// An input field is invalid.
    BadInput {
        /// The input path at fault, e.g. `input.contactEmail`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request conflicts with the current state.
    Conflict(String),
    /// The caller sent too many requests of this kind (a per-address limit).
    TooManyRequests(String),
    /// A database failure; details go to the log only.
    Database(sea_orm::DbErr),
    /// Any other internal failure; details go to the log only.
    Internal(String),
}

impl ApiError {
    /// A `BAD_USER_INPUT` error naming the field at fault.
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The client-visible message (internal details are never included).
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated => {
                "a valid API key is required (Authorization: Bearer tdm_…)".to_string()
            }
            ApiError::Forbidden(message)
            | ApiError::Conflict(message)
            | ApiError::TooManyRequests(message) => message.clone(),
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::BadInput { field, message } => format!("{field}: {message}"),
            ApiError::Database(_) | ApiError::Internal(_) => "internal error".to_string(),
        }
    }

    /// For the CLI and start-up: the message with internal detail included.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            ApiError::Database(err) => anyhow::Error::new(err).context("database error"),
            ApiError::Internal(detail) => anyhow::anyhow!("internal error: {detail}"),
            other => anyhow::anyhow!("{}: {}", other.code(), other.message()),
        }
    }

    /// The `extensions.code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::BadInput { .. } => "BAD_USER_INPUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::TooManyRequests(_) => "TOO_MANY_REQUESTS",
            ApiError::Database(_) | ApiError::Internal(_) => "INTERNAL",
        }
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        match self {
            ApiError::Database(err) => tracing::error!(error = %err, "database error"),
            ApiError::Internal(err) => tracing::error!(error = %err, "internal error"),
            _ => {}
        }
        async_graphql::Error::new(self.message()).extend_with(|_, ext| {
            ext.set("code", self.code());
            if let ApiError::BadInput { field, .. } = self {
                ext.set("field", field.as_str());
            }
        })
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        err.extend()
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        ApiError::Database(err)
    }
}

/// Result alias for the service.
pub type ApiResult<T> = Result<T, ApiError>;
