//! Authentication of admin requests: `Authorization: Bearer <credential>`
//! where the credential is an admin token signed by the broker's key (claim
//! `admin: true`, minted with `sockeye token --admin`) or one of the
//! configured `admin.api_keys`.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sockeye_broker::auth::AuthError;

use crate::AppState;
use crate::error::ApiError;

/// The publisher name of requests authenticated with an API key.
pub const API_KEY_PUBLISHER: &str = "admin-api";

/// Who made an authenticated request; put in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The token's `sub`, or [`API_KEY_PUBLISHER`] for an API key.
    pub(crate) name: String,
}

/// Refused admin requests by reason (the `code` of the 401/403 body), for
/// the metrics: one counter per [`AuthError::CODES`] entry, at the same
/// index, then one for `not_admin` ([`ApiError::NotAdmin`]). Every reason
/// is always listed, as for the broker's handshake failures.
#[derive(Debug, Default)]
pub(crate) struct AuthFailures {
    counts: [AtomicU64; AuthError::CODES.len() + 1],
}

impl AuthFailures {
    fn count(&self, failure: &Failure) {
        let index = match failure {
            Failure::Token(error) => error.index(),
            Failure::NotAdmin => AuthError::CODES.len(),
        };
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count, in a fixed order.
    pub(crate) fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        AuthError::CODES
            .iter()
            .copied()
            .chain([ApiError::NotAdmin.code()])
            .zip(&self.counts)
            .map(|(code, count)| (code, count.load(Ordering::Relaxed)))
    }
}

/// Why a request was refused, before it becomes an [`ApiError`].
enum Failure {
    /// No usable credentials (401).
    Token(AuthError),
    /// A valid token without the `admin` claim (403).
    NotAdmin,
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Token(AuthError::Missing) => ApiError::Unauthorized {
                code: AuthError::Missing.code(),
                message: "no credentials: send `Authorization: Bearer <admin token or API key>`"
                    .into(),
            },
            Failure::Token(error) => ApiError::Unauthorized {
                code: error.code(),
                message: format!("not a configured API key, and not a valid admin token: {error}"),
            },
            Failure::NotAdmin => ApiError::NotAdmin,
        }
    }
}

/// Middleware for every protected route: authenticates the request or
/// answers 401/403 itself.
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match authenticate(&state, request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            Ok(next.run(request).await)
        }
        Err(failure) => {
            state.auth_failures.count(&failure);
            Err(failure.into())
        }
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, Failure> {
    let missing = || Failure::Token(AuthError::Missing);
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let credential = match value.split_once(' ') {
        Some((scheme, credential)) if scheme.eq_ignore_ascii_case("bearer") => credential.trim(),
        _ => return Err(missing()),
    };
    if credential.is_empty() {
        return Err(missing());
    }
    let config = state.broker.config();
    if config
        .admin
        .api_keys
        .iter()
        .any(|key| !key.is_empty() && same_secret(key.as_bytes(), credential.as_bytes()))
    {
        return Ok(Principal {
            name: API_KEY_PUBLISHER.to_owned(),
        });
    }
    match state.broker.authenticator().verify(credential) {
        Ok(identity) if identity.admin => Ok(Principal {
            name: identity.subject,
        }),
        Ok(_) => Err(Failure::NotAdmin),
        Err(error) => Err(Failure::Token(error)),
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
