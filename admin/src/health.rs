//! Liveness and readiness probes; neither needs credentials.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// A probe's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` for liveness, `ready` for readiness.
    status: String,
}

/// Liveness probe.
///
/// Answers as long as the admin listener serves requests.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process is alive", body = Health))
)]
pub(crate) async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness probe.
///
/// 200 while the broker accepts clients and its history store works; 503
/// once it is shutting down, or while the store fails (a full disk: it
/// refuses writes to stored topics and recovers by itself once it can
/// flush again).
#[utoipa::path(
    get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "The broker accepts clients", body = Health),
        (status = 503, description = "The broker is shutting down (`unavailable`), or its history store fails (`storage_failed`)", body = ErrorBody),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    if state.broker.is_draining() {
        return Err(ApiError::Unavailable);
    }
    let store = state.broker.store_health();
    if store.failing {
        return Err(ApiError::StoreFailing {
            message: format!(
                "the history store fails: {}",
                store.failure.unwrap_or_default()
            ),
        });
    }
    Ok(axum::Json(Health {
        status: "ready".into(),
    }))
}
