//! The cluster's nodes: `GET /v1/nodes` lists every live node of this
//! broker's cluster (each announces itself in Redis); a single broker is a
//! cluster of one.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// One node of the cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct NodeView {
    /// The node's name (`engine.redis.node_name`, by default host name and
    /// port).
    name: String,
    /// Its WebSocket listener's address.
    address: String,
    /// When it started, unix ms.
    started_ms: u64,
    /// When it last announced itself, unix ms (a node that stops
    /// announcing leaves the list after three intervals).
    heartbeat_ms: u64,
    /// Its WebSocket connections at that time.
    connections: u64,
    /// True for the node that answered this request.
    this_node: bool,
}

/// The nodes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct NodeList {
    /// Whether the broker runs in a cluster (`engine.kind = "redis"`).
    cluster: bool,
    /// Every live node, by name; for a single broker, just this one.
    items: Vec<NodeView>,
}

/// The cluster's nodes.
///
/// Lists every live node of the cluster (each announces itself every
/// `engine.redis.heartbeat_interval`); a broker that is not in a cluster
/// lists itself alone.
#[utoipa::path(
    get, path = "/v1/nodes", tag = "stats",
    responses(
        (status = 200, description = "The nodes", body = NodeList),
        (status = 503, description = "Redis did not answer (`storage_failed`)", body = ErrorBody),
    )
)]
pub(crate) async fn list_nodes(
    State(state): State<AppState>,
) -> Result<axum::Json<NodeList>, ApiError> {
    let broker = &state.broker;
    let Some(this) = broker.node_name() else {
        return Ok(axum::Json(NodeList {
            cluster: false,
            items: vec![NodeView {
                name: "local".into(),
                address: broker.config().server.listen.to_string(),
                started_ms: 0,
                heartbeat_ms: 0,
                connections: broker.connection_count() as u64,
                this_node: true,
            }],
        }));
    };
    let nodes = broker.nodes().await?;
    Ok(axum::Json(NodeList {
        cluster: true,
        items: nodes
            .into_iter()
            .map(|node| NodeView {
                this_node: node.name == this,
                name: node.name,
                address: node.address,
                started_ms: node.started_ms,
                heartbeat_ms: node.heartbeat_ms,
                connections: node.connections,
            })
            .collect(),
    }))
}
