//! The one error type of the admin API, its JSON body, and the extractors
//! whose rejections become that body instead of axum's plain text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({"code": "topic_not_found", "message": "no topic named `orders.eu`"}))]
pub struct ErrorBody {
    /// Stable machine-readable code: `bad_parameter`, `bad_body`,
    /// `invalid_topic`, `token_missing` and the other `token_*` codes of the
    /// handshake, `not_admin`, `not_found`, `topic_not_found`, `not_stored`,
    /// `connection_not_found`, `method_not_allowed`, `payload_too_large`,
    /// `unsupported_media_type`, `unavailable`, `storage_failed`,
    /// `too_many_topics`, `internal`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// Everything a request to the admin API can fail with. Each variant maps to
/// one status code; the body is always [`ErrorBody`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A query or path parameter is missing or invalid (400).
    #[error("{message}")]
    BadParameter {
        /// What is wrong with it.
        message: String,
    },
    /// The request body is not what the route accepts (400).
    #[error("{message}")]
    BadBody {
        /// What is wrong with it.
        message: String,
    },
    /// A topic name breaks the naming rules (400).
    #[error("{message}")]
    InvalidTopic {
        /// What is wrong with it.
        message: String,
    },
    /// No usable credentials (401); `code` is `token_missing` or a `token_*`
    /// code of the handshake.
    #[error("{message}")]
    Unauthorized {
        /// The stable code.
        code: &'static str,
        /// Why the credentials were refused.
        message: String,
    },
    /// The credentials are valid but do not grant admin access (403).
    #[error("this token is valid but does not carry the `admin` claim")]
    NotAdmin,
    /// Nothing at this path (404).
    #[error("{message}")]
    NotFound {
        /// The stable code.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// The path exists but not with this method (405).
    #[error("{message}")]
    MethodNotAllowed {
        /// Which method and path.
        message: String,
    },
    /// The body is larger than the route accepts (413).
    #[error("{message}")]
    PayloadTooLarge {
        /// The limit that was exceeded.
        message: String,
    },
    /// The body is not `application/json` (415).
    #[error("{message}")]
    UnsupportedMediaType {
        /// What was expected.
        message: String,
    },
    /// The broker is shutting down (503).
    #[error("the broker is shutting down")]
    Unavailable,
    /// The history store fails and refuses writes until it recovers (503,
    /// `storage_failed`).
    #[error("{message}")]
    StoreFailing {
        /// What fails.
        message: String,
    },
    /// A publish would store one topic more than `store.max_topics` (409).
    #[error("{message}")]
    TooManyTopics {
        /// The limit.
        message: String,
    },
    /// The history store failed (500). The cause is logged, not sent.
    #[error("the history store failed")]
    Storage(#[source] sockeye_broker::StoreError),
    /// Any other server-side failure (500). The cause is logged, not sent.
    #[error("internal error")]
    Internal {
        /// What failed, for the log.
        cause: String,
    },
}

impl ApiError {
    /// A 400 for a bad query or path parameter.
    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::BadParameter {
            message: message.into(),
        }
    }

    /// A 400 for a bad body.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::BadBody {
            message: message.into(),
        }
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. }
            | ApiError::BadBody { .. }
            | ApiError::InvalidTopic { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotAdmin => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable | ApiError::StoreFailing { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyTopics { .. } => StatusCode::CONFLICT,
            ApiError::Storage(_) | ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `code` of the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadParameter { .. } => "bad_parameter",
            ApiError::BadBody { .. } => "bad_body",
            ApiError::InvalidTopic { .. } => "invalid_topic",
            ApiError::Unauthorized { code, .. } | ApiError::NotFound { code, .. } => code,
            ApiError::NotAdmin => "not_admin",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::Unavailable => "unavailable",
            ApiError::Storage(_) | ApiError::StoreFailing { .. } => "storage_failed",
            ApiError::TooManyTopics { .. } => "too_many_topics",
            ApiError::Internal { .. } => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // Only server-side failures are worth an operator's attention;
            // the cause stays in the log and out of the response.
            match &self {
                ApiError::Storage(cause) => {
                    tracing::error!(cause = %cause, "admin request failed in the store");
                }
                ApiError::Internal { cause } => {
                    tracing::error!(cause = %cause, "admin request failed");
                }
                // Reported where they happen (the flusher logs a failing
                // store once; shutdown is logged): not once per request.
                ApiError::StoreFailing { .. } | ApiError::Unavailable => {
                    tracing::debug!(code = self.code(), "admin request refused");
                }
                other => tracing::warn!(code = other.code(), "admin request failed"),
            }
        }
        let body = ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sockeye-admin\""),
            );
        }
        response
    }
}

impl From<sockeye_broker::StoreError> for ApiError {
    fn from(error: sockeye_broker::StoreError) -> Self {
        match error {
            sockeye_broker::StoreError::Failing
            | sockeye_broker::StoreError::Unavailable { .. } => ApiError::StoreFailing {
                message: error.to_string(),
            },
            other => ApiError::Storage(other),
        }
    }
}

impl From<sockeye_protocol::TopicError> for ApiError {
    fn from(error: sockeye_protocol::TopicError) -> Self {
        ApiError::InvalidTopic {
            message: format!("invalid topic name: {error}"),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_parameter(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_parameter(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType {
                message: "the body must be JSON, sent with `Content-Type: application/json`".into(),
            },
            JsonRejection::BytesRejection(rejection)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::PayloadTooLarge {
                    message: "the request body is larger than this route accepts".into(),
                }
            }
            other => ApiError::bad_body(other.body_text()),
        }
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

/// `axum::Json` whose rejection is an [`ApiError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Json<T>(pub(crate) T);
