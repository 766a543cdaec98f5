//! Topic routes: list, one topic, its history (read and delete), and
//! publishing over HTTP.

use axum::Extension;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize};
use sockeye_broker::{PublishError, TopicInfo};
use sockeye_protocol::{Payload, TopicName};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody, Json, Path, Query};
use crate::pagination::{checked_after, checked_limit, split_page};

/// One topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TopicView {
    /// The topic name.
    name: String,
    /// Whether its history is stored (false: live delivery only).
    stored: bool,
    /// Exact subscribers, live and catching up (wildcard subscribers are not
    /// counted per topic).
    subscribers: u64,
    /// Subscribers currently catching up from the store.
    catching_up: u64,
    /// The current epoch of its stored stream (0 when not stored). A history
    /// reset starts a new epoch; offsets restart at 1.
    epoch: u64,
    /// Oldest retained offset (0 when nothing is retained).
    first_offset: u64,
    /// Newest offset (0 when nothing was published in this epoch).
    last_offset: u64,
    /// Messages retained.
    stored_messages: u64,
    /// Bytes of retained messages.
    stored_bytes: u64,
    /// Messages published since the broker started.
    published: u64,
    /// Time of the last publish since the broker started, unix milliseconds.
    last_publish_ms: Option<u64>,
    /// Publishes in the last complete second.
    publish_rate: u64,
}

impl From<TopicInfo> for TopicView {
    fn from(info: TopicInfo) -> Self {
        Self {
            name: info.name,
            stored: info.stored,
            subscribers: info.subscribers as u64,
            catching_up: info.catching_up as u64,
            epoch: info.epoch,
            first_offset: info.first_offset,
            last_offset: info.last_offset,
            stored_messages: info.stored_messages,
            stored_bytes: info.stored_bytes,
            published: info.published,
            last_publish_ms: (info.last_publish_ms > 0).then_some(info.last_publish_ms),
            publish_rate: info.publish_rate,
        }
    }
}

/// A page of topics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TopicPage {
    /// Topics in name order.
    items: Vec<TopicView>,
    /// Pass as `after` to get the next page; null on the last page.
    next: Option<String>,
}

/// Query of `GET /v1/topics`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TopicListParams {
    /// Only topics whose names start with this text.
    prefix: Option<String>,
    /// Cursor: the `next` of the previous page (topics after this name).
    after: Option<String>,
    /// Topics per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
}

/// Path of the routes of one topic.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TopicPath {
    /// The topic name, like `orders.eu.created`: segments of `A-Z a-z 0-9
    /// _ - :` separated by dots, at most `limits.max_topic_length` bytes
    /// (the served document states the configured length).
    #[param(pattern = r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$", max_length = 255)]
    topic: String,
}

/// Writes the configured longest topic name into every `topic` path
/// parameter of `document`, so a name the document allows is one the
/// routes accept.
pub(crate) fn document_topic_length(document: &mut utoipa::openapi::OpenApi, max: usize) {
    use utoipa::openapi::{RefOr, Schema};
    let operations = document.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    });
    for operation in operations {
        for parameter in operation.parameters.iter_mut().flatten() {
            let RefOr::T(parameter) = parameter else {
                continue;
            };
            if parameter.name != "topic" {
                continue;
            }
            if let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut() {
                schema.max_length = Some(max);
            }
        }
    }
}

/// How a payload is represented in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PayloadEncoding {
    /// `payload` is the JSON form of the MessagePack value (maps with
    /// string keys, arrays, strings, numbers, booleans, null).
    #[default]
    Json,
    /// `payload` is a base64 string of raw bytes, carried as a MessagePack
    /// `bin` value.
    Binary,
    /// `payload` is a base64 string of one complete MessagePack value, for
    /// values JSON cannot show exactly (binary inside a map, non-string map
    /// keys, extension types).
    Msgpack,
}

/// A stored message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct HistoryMessage {
    /// Its offset in the epoch.
    offset: u64,
    /// When the broker accepted it, unix milliseconds.
    timestamp_ms: u64,
    /// The `sub` of the publisher (`admin-api` for HTTP publishes made with
    /// an API key).
    publisher: String,
    /// How `payload` is represented.
    encoding: PayloadEncoding,
    /// The payload, as `encoding` says.
    payload: serde_json::Value,
}

/// A page of a topic's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct HistoryPage {
    /// The topic.
    topic: String,
    /// The epoch the offsets belong to. If it differs from the previous
    /// page's, the history was reset in between: start again from `after=0`.
    epoch: u64,
    /// Messages in offset order. Trimmed offsets are absent.
    items: Vec<HistoryMessage>,
    /// Pass as `after` to get the next page; null when this page reached
    /// the newest message.
    next: Option<u64>,
}

/// How history payloads are shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HistoryEncoding {
    /// JSON where the value converts, otherwise `binary` or `msgpack`.
    #[default]
    Auto,
    /// Always the exact MessagePack bytes, base64.
    Msgpack,
}

/// Query of `GET /v1/topics/{topic}/history`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Cursor: messages with offsets after this one (0 or absent: from the
    /// oldest retained).
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    after: Option<u64>,
    /// Messages per page. A page also stops at `admin.max_history_page_bytes`
    /// (4 MiB by default) of stored messages, counting each whole stored
    /// record (payload, topic, publisher, offset, timestamp), but always
    /// holds at least one message.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// How payloads are shown.
    #[param(inline)]
    encoding: Option<HistoryEncoding>,
}

/// The new epoch after a history reset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ResetResult {
    /// The topic.
    topic: String,
    /// The new epoch; offsets restart at 1. Live subscribers receive a
    /// `reset` frame and continue in it.
    epoch: u64,
}

/// A message to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payload": {"order": 42, "status": "paid"}}))]
pub(crate) struct PublishRequest {
    /// The payload, as `encoding` says. With `json` (the default) any JSON
    /// value, sent to subscribers as the equivalent MessagePack value.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true)]
    payload: Option<serde_json::Value>,
    /// How `payload` is given.
    #[serde(default)]
    encoding: PayloadEncoding,
}

/// Where a published message went.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct PublishResult {
    /// The topic.
    topic: String,
    /// Whether it was stored (false for topics without stored history, which
    /// reach only the subscribers connected now).
    stored: bool,
    /// The topic's epoch (0 when not stored).
    epoch: u64,
    /// The message's offset (0 when not stored).
    offset: u64,
}

/// Keeps an explicit JSON `null` as `Some(Null)`, so that "no payload" and
/// "a null payload" differ.
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

fn parse_topic(state: &AppState, topic: &str) -> Result<TopicName, ApiError> {
    Ok(TopicName::parse(
        topic,
        state.broker.config().limits.max_topic_length,
    )?)
}

fn topic_not_found(topic: &str) -> ApiError {
    ApiError::NotFound {
        code: "topic_not_found",
        message: format!("no topic named `{topic}`"),
    }
}

fn not_stored(topic: &str) -> ApiError {
    ApiError::NotFound {
        code: "not_stored",
        message: format!("topic `{topic}` has no stored history (its retention rule is live-only)"),
    }
}

/// List topics.
///
/// Topics with state: every stored topic, and live-only topics while they
/// have subscribers. In name order, paginated.
#[utoipa::path(
    get, path = "/v1/topics", tag = "topics",
    params(TopicListParams),
    responses(
        (status = 200, description = "A page of topics", body = TopicPage),
        (status = 400, description = "Bad parameter", body = ErrorBody),
    )
)]
pub(crate) async fn list_topics(
    State(state): State<AppState>,
    Query(params): Query<TopicListParams>,
) -> Result<axum::Json<TopicPage>, ApiError> {
    let limit = checked_limit(params.limit)?;
    let topics = state
        .broker
        .list_topics(
            params.prefix.as_deref().unwrap_or(""),
            params.after.as_deref(),
            limit + 1,
        )
        .await?;
    let (items, next) = split_page(topics, limit, |topic| topic.name.clone());
    Ok(axum::Json(TopicPage {
        items: items.into_iter().map(TopicView::from).collect(),
        next,
    }))
}

/// One topic.
#[utoipa::path(
    get, path = "/v1/topics/{topic}", tag = "topics",
    params(TopicPath),
    responses(
        (status = 200, description = "The topic", body = TopicView),
        (status = 400, description = "Invalid topic name", body = ErrorBody),
        (status = 404, description = "No such topic (`topic_not_found`)", body = ErrorBody),
    )
)]
pub(crate) async fn get_topic(
    State(state): State<AppState>,
    Path(path): Path<TopicPath>,
) -> Result<axum::Json<TopicView>, ApiError> {
    let name = parse_topic(&state, &path.topic)?;
    let info = state
        .broker
        .topic(&name)
        .await?
        .ok_or_else(|| topic_not_found(&path.topic))?;
    Ok(axum::Json(info.into()))
}

/// Read a topic's stored history.
///
/// Stored messages in offset order, paginated by offset: pass the `next` of
/// a page as `after` to get the following one.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/history", tag = "topics",
    params(TopicPath, HistoryParams),
    responses(
        (status = 200, description = "A page of stored messages", body = HistoryPage),
        (status = 400, description = "Bad parameter or topic name", body = ErrorBody),
        (status = 404, description = "No such topic (`topic_not_found`), or it is live-only (`not_stored`)", body = ErrorBody),
        (status = 500, description = "The store failed (`storage_failed`)", body = ErrorBody),
    )
)]
pub(crate) async fn get_history(
    State(state): State<AppState>,
    Path(path): Path<TopicPath>,
    Query(params): Query<HistoryParams>,
) -> Result<axum::Json<HistoryPage>, ApiError> {
    let limit = checked_limit(params.limit)?;
    let name = parse_topic(&state, &path.topic)?;
    let info = state
        .broker
        .topic(&name)
        .await?
        .ok_or_else(|| topic_not_found(&path.topic))?;
    if !info.stored {
        return Err(not_stored(&path.topic));
    }
    let from = checked_after(params.after)?.unwrap_or(0).saturating_add(1);
    let max_bytes = usize::try_from(state.broker.config().admin.max_history_page_bytes.as_u64())
        .unwrap_or(usize::MAX);
    // `None` only if the stream went away since `topic`.
    let history = state
        .broker
        .history(&name, from, limit, max_bytes)
        .await?
        .ok_or_else(|| not_stored(&path.topic))?;
    let (epoch, deliveries, newest) = (history.epoch, history.messages, history.last_offset);
    let encoding = params.encoding.unwrap_or_default();
    let items: Vec<HistoryMessage> = deliveries
        .into_iter()
        .map(|delivery| {
            let (encoding, payload) = show_payload(&delivery.payload, encoding);
            HistoryMessage {
                offset: delivery.offset,
                timestamp_ms: delivery.timestamp_ms,
                publisher: delivery.publisher,
                encoding,
                payload,
            }
        })
        .collect();
    // Another page follows if the stream (still in this epoch) has newer
    // messages than the last one returned.
    let next = items
        .last()
        .map(|last| last.offset)
        .filter(|last| *last < newest);
    Ok(axum::Json(HistoryPage {
        topic: name.to_string(),
        epoch,
        items,
        next,
    }))
}

/// Shows a payload in JSON: as its JSON form when it has one, otherwise as
/// base64 (`binary` for a plain `bin` value, `msgpack` for anything else).
fn show_payload(
    payload: &Payload,
    wanted: HistoryEncoding,
) -> (PayloadEncoding, serde_json::Value) {
    let base64 = |bytes: &[u8]| serde_json::Value::String(BASE64.encode(bytes));
    if wanted == HistoryEncoding::Msgpack {
        return (PayloadEncoding::Msgpack, base64(payload.as_msgpack()));
    }
    if let Some(bytes) = payload.as_binary() {
        return (PayloadEncoding::Binary, base64(bytes));
    }
    match rmp_serde::from_slice::<serde_json::Value>(payload.as_msgpack()) {
        Ok(value) if !lossy_in_json(payload.as_msgpack(), &value) => (PayloadEncoding::Json, value),
        _ => (PayloadEncoding::Msgpack, base64(payload.as_msgpack())),
    }
}

/// True if converting to JSON lost something: serde_json turns NaN and the
/// infinities into `null`, so a value with more nulls than its MessagePack
/// has nils was changed.
fn lossy_in_json(msgpack: &[u8], value: &serde_json::Value) -> bool {
    fn nulls(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Null => 1,
            serde_json::Value::Array(items) => items.iter().map(nulls).sum(),
            serde_json::Value::Object(map) => map.values().map(nulls).sum(),
            _ => 0,
        }
    }
    let json_nulls = nulls(value);
    // Nil is the single byte 0xc0; it can also occur inside strings,
    // numbers and binaries, so this count is an upper bound of the nils:
    // fewer nulls than this cannot prove a loss, more can.
    json_nulls > 0 && json_nulls > msgpack.iter().filter(|byte| **byte == 0xc0).count()
}

/// Delete a topic's stored history.
///
/// Deletes every stored message and starts a new epoch (offsets restart at
/// 1). Live subscribers receive a `reset` frame and continue in the new
/// epoch.
#[utoipa::path(
    delete, path = "/v1/topics/{topic}/history", tag = "topics",
    params(TopicPath),
    responses(
        (status = 200, description = "The history was deleted; the new epoch", body = ResetResult),
        (status = 400, description = "Invalid topic name", body = ErrorBody),
        (status = 404, description = "No such topic (`topic_not_found`), or it is live-only (`not_stored`)", body = ErrorBody),
        (status = 500, description = "The store failed (`storage_failed`)", body = ErrorBody),
    )
)]
pub(crate) async fn delete_history(
    State(state): State<AppState>,
    Path(path): Path<TopicPath>,
) -> Result<axum::Json<ResetResult>, ApiError> {
    let name = parse_topic(&state, &path.topic)?;
    let info = state
        .broker
        .topic(&name)
        .await?
        .ok_or_else(|| topic_not_found(&path.topic))?;
    if !info.stored {
        return Err(not_stored(&path.topic));
    }
    let epoch = state
        .broker
        .reset_topic(&name)
        .await?
        .ok_or_else(|| topic_not_found(&path.topic))?;
    tracing::info!(topic = %name, epoch, "history deleted through the admin API");
    Ok(axum::Json(ResetResult {
        topic: name.to_string(),
        epoch,
    }))
}

/// Publish a message.
///
/// Publishes to every subscriber of the topic, like a WebSocket `publish`
/// with `ack: true`: for stored topics the reply comes once the message is
/// durable under the store's durability mode. The publisher is the admin
/// token's `sub`, or `admin-api` for an API key.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/messages", tag = "topics",
    params(TopicPath),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published", body = PublishResult),
        (status = 400, description = "Invalid topic name or body", body = ErrorBody),
        (status = 413, description = "The payload is larger than `limits.max_frame_size`", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 409, description = "The topic would be stored and `store.max_topics` topics are stored already (`too_many_topics`)", body = ErrorBody),
        (status = 500, description = "The store failed (`storage_failed`)", body = ErrorBody),
        (status = 503, description = "The broker is shutting down (`unavailable`), or the store fails and refuses writes until it recovers (`storage_failed`)", body = ErrorBody),
    )
)]
pub(crate) async fn publish(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(path): Path<TopicPath>,
    Json(request): Json<PublishRequest>,
) -> Result<axum::Json<PublishResult>, ApiError> {
    let payload = payload_from_request(request)?;
    let max = state.broker.config().limits.max_frame_size.as_u64();
    if payload.len() as u64 > max {
        return Err(ApiError::PayloadTooLarge {
            message: format!(
                "the payload is {} bytes as MessagePack; at most {max} (limits.max_frame_size)",
                payload.len()
            ),
        });
    }
    // A publish after shutdown would wait for a flush that never comes.
    if state.broker.is_draining() {
        return Err(ApiError::Unavailable);
    }
    // An invalid name is the documented 400 `invalid_topic`.
    let name = parse_topic(&state, &path.topic)?;
    let position = state
        .broker
        .publish(&name, &payload, &principal.name)
        .await
        .map_err(|error| match error {
            PublishError::Store(error) => error.into(),
            PublishError::TooManyTopics { max } => ApiError::TooManyTopics {
                message: format!("the broker stores at most {max} topics (store.max_topics)"),
            },
            PublishError::ShuttingDown => ApiError::Unavailable,
            other => ApiError::Internal {
                cause: other.to_string(),
            },
        })?;
    // A live-only publish answers (0, 0).
    let (epoch, offset) = position.map_or((0, 0), |position| (position.epoch, position.offset));
    Ok(axum::Json(PublishResult {
        topic: path.topic,
        stored: position.is_some(),
        epoch,
        offset,
    }))
}

fn payload_from_request(request: PublishRequest) -> Result<Payload, ApiError> {
    let value = request
        .payload
        .ok_or_else(|| ApiError::bad_body("the body needs a `payload` field"))?;
    let base64_text = |value: serde_json::Value| match value {
        serde_json::Value::String(text) => BASE64
            .decode(text.as_bytes())
            .map_err(|err| ApiError::bad_body(format!("`payload` is not valid base64: {err}"))),
        _ => Err(ApiError::bad_body(
            "with this `encoding`, `payload` must be a base64 string",
        )),
    };
    match request.encoding {
        PayloadEncoding::Json => {
            let bytes = rmp_serde::to_vec_named(&value).map_err(|err| ApiError::Internal {
                cause: format!("encoding a JSON value as MessagePack failed: {err}"),
            })?;
            Payload::from_msgpack(bytes).map_err(|err| ApiError::Internal {
                cause: format!("a JSON value did not encode to one MessagePack value: {err}"),
            })
        }
        PayloadEncoding::Binary => Ok(Payload::binary(&base64_text(value)?)),
        PayloadEncoding::Msgpack => Payload::from_msgpack(base64_text(value)?).map_err(|err| {
            ApiError::bad_body(format!(
                "`payload` is not exactly one MessagePack value: {err}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgpack(value: &serde_json::Value) -> Payload {
        Payload::from_msgpack(rmp_serde::to_vec_named(value).unwrap()).unwrap()
    }

    #[test]
    fn json_payloads_show_as_json() {
        let value = serde_json::json!({"a": [1, -2, 2.5, "x", null, true]});
        assert_eq!(
            show_payload(&msgpack(&value), HistoryEncoding::Auto),
            (PayloadEncoding::Json, value)
        );
    }

    #[test]
    fn binary_payloads_show_as_base64() {
        let (encoding, shown) = show_payload(&Payload::binary(b"hi"), HistoryEncoding::Auto);
        assert_eq!(encoding, PayloadEncoding::Binary);
        assert_eq!(shown, serde_json::json!("aGk="));
    }

    #[test]
    fn values_json_cannot_hold_show_as_msgpack() {
        // {1: 2}: an integer map key.
        let payload = Payload::from_msgpack(vec![0x81, 0x01, 0x02]).unwrap();
        let (encoding, shown) = show_payload(&payload, HistoryEncoding::Auto);
        assert_eq!(encoding, PayloadEncoding::Msgpack);
        assert_eq!(shown, serde_json::json!(BASE64.encode([0x81, 0x01, 0x02])));
        // NaN, which JSON would turn into null.
        let mut nan = vec![0xcb];
        nan.extend_from_slice(&f64::NAN.to_be_bytes());
        let payload = Payload::from_msgpack(nan).unwrap();
        assert_eq!(
            show_payload(&payload, HistoryEncoding::Auto).0,
            PayloadEncoding::Msgpack
        );
    }

    #[test]
    fn msgpack_encoding_is_always_the_exact_bytes() {
        let payload = msgpack(&serde_json::json!([1, 2]));
        assert_eq!(
            show_payload(&payload, HistoryEncoding::Msgpack),
            (
                PayloadEncoding::Msgpack,
                serde_json::json!(BASE64.encode(payload.as_msgpack()))
            )
        );
    }
}
