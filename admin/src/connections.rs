//! Connection routes: list, one connection, and disconnecting one with
//! close code 4001 (`kicked`).

use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sockeye_broker::{ConnId, ConnectionInfo};
use sockeye_protocol::CloseCode;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, Path, Query};
use crate::pagination::{checked_after, checked_limit, split_page};

/// Longest close reason accepted, in bytes. A WebSocket close frame holds at
/// most 123 bytes of reason.
pub const MAX_CLOSE_REASON_BYTES: usize = 120;

/// The close reason sent when the request gives none.
const DEFAULT_CLOSE_REASON: &str = "disconnected by an operator";

/// One WebSocket connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ConnectionView {
    /// Broker-unique id.
    id: u64,
    /// The `sub` of the connection's token.
    sub: String,
    /// The client's address.
    remote: String,
    /// The `User-Agent` of the handshake, if any.
    user_agent: Option<String>,
    /// When the connection was accepted, unix milliseconds.
    connected_at_ms: u64,
    /// The filters it is subscribed to.
    subscriptions: Vec<String>,
    /// Messages it published.
    messages_in: u64,
    /// Messages delivered to it.
    messages_out: u64,
    /// Frames received from it.
    frames_in: u64,
    /// Frames sent to it.
    frames_out: u64,
    /// Bytes received from it.
    bytes_in: u64,
    /// Bytes sent to it.
    bytes_out: u64,
    /// Frames waiting in its outbound queue.
    queue_depth: u64,
    /// Bytes of the frames waiting in its outbound queue (bounded by
    /// `limits.outbound_queue_bytes`).
    queue_bytes: u64,
}

impl From<ConnectionInfo> for ConnectionView {
    fn from(info: ConnectionInfo) -> Self {
        Self {
            id: info.id.0,
            sub: info.subject,
            remote: info.remote.to_string(),
            user_agent: info.user_agent,
            connected_at_ms: info
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            subscriptions: info.subscriptions,
            messages_in: info.messages_in,
            messages_out: info.messages_out,
            frames_in: info.frames_in,
            frames_out: info.frames_out,
            bytes_in: info.bytes_in,
            bytes_out: info.bytes_out,
            queue_depth: info.queue_depth,
            queue_bytes: info.queue_bytes,
        }
    }
}

/// A page of connections.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ConnectionPage {
    /// Connections in id order.
    items: Vec<ConnectionView>,
    /// Pass as `after` to get the next page; null on the last page.
    next: Option<u64>,
}

/// Query of `GET /v1/connections`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConnectionListParams {
    /// Cursor: the `next` of the previous page (connections with larger ids).
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    after: Option<u64>,
    /// Connections per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
}

/// Path of the routes of one connection.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ConnectionPath {
    /// The connection id.
    id: u64,
}

/// Query of `DELETE /v1/connections/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DisconnectParams {
    /// The reason sent in the close frame (at most 120 bytes).
    #[param(max_length = 120, default = "disconnected by an operator")]
    reason: Option<String>,
    /// In a cluster, the node that holds the connection (a name from
    /// `GET /v1/nodes`); absent means this node. Another node is asked
    /// through Redis and acts when the request reaches it.
    #[param(max_length = 255)]
    node: Option<String>,
}

/// A disconnect that was started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DisconnectResult {
    /// The connection id.
    id: u64,
    /// The WebSocket close code sent: 4001 (`kicked`).
    close_code: u16,
    /// The close reason sent.
    reason: String,
}

fn connection_not_found(id: u64) -> ApiError {
    ApiError::NotFound {
        code: "connection_not_found",
        message: format!("no connection with id {id}"),
    }
}

/// List connections.
///
/// Open WebSocket connections in id order, paginated.
#[utoipa::path(
    get, path = "/v1/connections", tag = "connections",
    params(ConnectionListParams),
    responses(
        (status = 200, description = "A page of connections", body = ConnectionPage),
        (status = 400, description = "Bad parameter", body = ErrorBody),
    )
)]
pub(crate) async fn list_connections(
    State(state): State<AppState>,
    Query(params): Query<ConnectionListParams>,
) -> Result<axum::Json<ConnectionPage>, ApiError> {
    let limit = checked_limit(params.limit)?;
    let peers = state
        .broker
        .connections(checked_after(params.after)?.map(ConnId), limit + 1);
    let (peers, next) = split_page(peers, limit, |peer| peer.id.0);
    Ok(axum::Json(ConnectionPage {
        items: peers.into_iter().map(ConnectionView::from).collect(),
        next,
    }))
}

/// One connection.
#[utoipa::path(
    get, path = "/v1/connections/{id}", tag = "connections",
    params(ConnectionPath),
    responses(
        (status = 200, description = "The connection", body = ConnectionView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 404, description = "No such connection (`connection_not_found`)", body = ErrorBody),
    )
)]
pub(crate) async fn get_connection(
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
) -> Result<axum::Json<ConnectionView>, ApiError> {
    let peer = state
        .broker
        .connection(ConnId(path.id))
        .ok_or_else(|| connection_not_found(path.id))?;
    Ok(axum::Json(ConnectionView::from(peer)))
}

/// Disconnect a connection.
///
/// Closes the WebSocket with close code 4001 (`kicked`) and the given
/// reason. The close happens asynchronously: the connection may still be
/// listed for a moment.
#[utoipa::path(
    delete, path = "/v1/connections/{id}", tag = "connections",
    params(ConnectionPath, DisconnectParams),
    responses(
        (status = 202, description = "The close was started", body = DisconnectResult),
        (status = 400, description = "The id is not a number, or the reason is too long", body = ErrorBody),
        (status = 404, description = "No such connection (`connection_not_found`), or `node` names a node while this broker is not in a cluster (`not_in_cluster`)", body = ErrorBody),
        (status = 503, description = "The request for another node could not be sent (`storage_failed`)", body = ErrorBody),
    )
)]
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    Path(path): Path<ConnectionPath>,
    Query(params): Query<DisconnectParams>,
) -> Result<(StatusCode, axum::Json<DisconnectResult>), ApiError> {
    let reason = params
        .reason
        .unwrap_or_else(|| DEFAULT_CLOSE_REASON.to_owned());
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        return Err(ApiError::bad_parameter(format!(
            "reason is {} bytes; at most {MAX_CLOSE_REASON_BYTES}",
            reason.len()
        )));
    }
    let code = CloseCode::Kicked;
    if let Some(node) = params
        .node
        .filter(|node| Some(node) != state.broker.node_name().as_ref())
    {
        if state.broker.node_name().is_none() {
            return Err(ApiError::NotFound {
                code: "not_in_cluster",
                message: format!("this broker is not in a cluster, so it has no node `{node}`"),
            });
        }
        state
            .broker
            .disconnect_on(&node, ConnId(path.id), code, &reason)
            .await?;
        tracing::info!(conn = path.id, node = %node, reason = %reason, "asked another node to disconnect a connection");
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(DisconnectResult {
                id: path.id,
                close_code: code.code(),
                reason,
            }),
        ));
    }
    if !state.broker.disconnect(ConnId(path.id), code, &reason) {
        return Err(connection_not_found(path.id));
    }
    tracing::info!(conn = path.id, reason = %reason, "connection disconnected through the admin API");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DisconnectResult {
            id: path.id,
            close_code: code.code(),
            reason,
        }),
    ))
}
