//! The publisher task: takes publishes in the order they were made,
//! pipelines them to Redis in batches (one script call per stored publish,
//! one `PUBLISH` per ephemeral one), and answers each with the position
//! the script returned, or with the error. One batch is in flight at a
//! time, so a connection's publishes are applied in the order it sent
//! them; concurrent publishers share a round trip.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::ConnectionManager;
use redis::{ServerErrorKind, Value};
use sockeye_protocol::{PositionSlots, StreamPosition, TopicName};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{PUBLISH_TRIM_BUDGET, RedisEngine, random_epoch, random_id, unavailable};
use crate::config::RetentionRule;
use crate::engine::{StoreError, now_ms};

/// One publish waiting for Redis.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) topic: TopicName,
    /// The `message` body, with its position slots zeroed.
    pub(super) body: Vec<u8>,
    pub(super) slots: PositionSlots,
    pub(super) timestamp_ms: u64,
    /// The topic's rule, for a stored topic; `None` for an ephemeral one.
    pub(super) retention: Option<Arc<RetentionRule>>,
    /// Where the outcome goes: the position (`None` for an ephemeral
    /// topic), or why it failed.
    pub(super) done: oneshot::Sender<Result<Option<StreamPosition>, StoreError>>,
}

/// What one script call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScriptResult {
    position: StreamPosition,
    created: bool,
    oldest_ms: u64,
}

pub(super) async fn run(
    engine: Arc<RedisEngine>,
    mut commands: ConnectionManager,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let max_batch = engine.config.publish_batch;
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            request = requests.recv() => request,
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            return;
        };
        batch.push(first);
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        send_batch(&engine, &mut commands, &mut batch).await;
    }
}

fn envelope(body: &[u8]) -> Vec<u8> {
    let mut envelope = Vec::with_capacity(25 + body.len());
    envelope.push(1);
    envelope.extend_from_slice(&random_id());
    envelope.extend_from_slice(&[0; 16]);
    envelope.extend_from_slice(body);
    envelope
}

async fn send_batch(
    engine: &RedisEngine,
    commands: &mut ConnectionManager,
    batch: &mut Vec<Request>,
) {
    let started = Instant::now();
    let now = now_ms();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for request in batch.iter() {
        let topic = request.topic.as_str();
        let channel = engine.keys.channel(topic);
        match &request.retention {
            Some(rule) => {
                let max_age = u64::try_from(rule.max_age.as_millis()).unwrap_or(u64::MAX);
                pipe.cmd("EVALSHA")
                    .arg(engine.scripts.publish.get_hash())
                    .arg(2)
                    .arg(engine.keys.meta(topic))
                    .arg(engine.keys.stream(topic))
                    .arg(random_epoch())
                    .arg(&request.body[..])
                    .arg(request.slots.epoch)
                    .arg(request.slots.offset)
                    .arg(request.timestamp_ms)
                    .arg(rule.max_messages)
                    .arg(rule.max_bytes.as_u64())
                    .arg(now.saturating_sub(max_age))
                    .arg(channel)
                    .arg(&random_id()[..])
                    .arg(PUBLISH_TRIM_BUDGET);
            }
            None => {
                pipe.cmd("PUBLISH")
                    .arg(channel)
                    .arg(envelope(&request.body));
            }
        }
    }
    let timeout = engine.config.command_timeout;
    let mut answer = tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(commands)).await;
    if let Ok(Ok(values)) = &answer
        && values.iter().any(is_noscript)
    {
        // Redis lost its scripts (a restart): load and send the batch
        // again. None of it ran: every script call failed with NOSCRIPT.
        let reloaded = engine
            .scripts
            .publish
            .prepare_invoke()
            .load_async(commands)
            .await;
        if reloaded.is_ok() {
            answer = tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(commands)).await;
        }
    }
    engine.metrics.script_latency.observe(started.elapsed());
    engine.metrics.batch_size.observe_count(batch.len() as u64);
    let values = match answer {
        Ok(Ok(values)) if values.len() == batch.len() => values,
        Ok(Ok(values)) => {
            let err = unavailable(format!(
                "Redis answered {} of {} publishes",
                values.len(),
                batch.len()
            ));
            fail_all(engine, batch, &err);
            return;
        }
        Ok(Err(err)) => {
            fail_all(engine, batch, &unavailable(err));
            return;
        }
        Err(_) => {
            fail_all(
                engine,
                batch,
                &unavailable(format!("Redis did not answer within {timeout:?}")),
            );
            return;
        }
    };
    engine.worked();
    let mut schedule = Vec::new();
    let mut created = Vec::new();
    for (request, value) in batch.drain(..).zip(values) {
        let outcome = match (&request.retention, value) {
            (None, Value::ServerError(err)) => Err(unavailable(format!("{err:?}"))),
            (None, _) => Ok(None),
            (Some(rule), value) => match parse_script_result(value) {
                Ok(result) => {
                    if result.created {
                        created.push(request.topic.to_string());
                    }
                    // The stream went from empty to this message: its age
                    // limit now has a due time.
                    if result.oldest_ms == request.timestamp_ms || result.created {
                        let max_age = u64::try_from(rule.max_age.as_millis()).unwrap_or(u64::MAX);
                        schedule.push((
                            request.topic.to_string(),
                            result.oldest_ms.saturating_add(max_age),
                        ));
                    }
                    Ok(Some(result.position))
                }
                Err(err) => Err(err),
            },
        };
        let _ = request.done.send(outcome);
    }
    if !created.is_empty() || !schedule.is_empty() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if !created.is_empty() {
            let mut add = redis::cmd("ZADD");
            add.arg(engine.keys.topics());
            for topic in &created {
                add.arg(0).arg(topic);
            }
            pipe.add_command(add);
        }
        for (topic, due) in &schedule {
            pipe.cmd("ZADD")
                .arg(engine.keys.age())
                .arg("NX")
                .arg(*due)
                .arg(topic);
        }
        let listed = tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(commands)).await;
        if !matches!(listed, Ok(Ok(_))) {
            tracing::debug!("could not list new topics or schedule their trimming");
        }
    }
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if err.kind() == Some(ServerErrorKind::NoScript))
}

fn parse_script_result(value: Value) -> Result<ScriptResult, StoreError> {
    if let Value::ServerError(err) = &value {
        return Err(unavailable(format!("the publish script failed: {err:?}")));
    }
    let (epoch, offset, created, oldest_ms): (u64, u64, u64, u64) = redis::from_redis_value(value)
        .map_err(|err| StoreError::Corrupt {
            what: format!("the publish script's answer: {err}"),
        })?;
    Ok(ScriptResult {
        position: StreamPosition { epoch, offset },
        created: created == 1,
        oldest_ms,
    })
}

fn fail_all(engine: &RedisEngine, batch: &mut Vec<Request>, err: &StoreError) {
    engine.failed(err);
    for request in batch.drain(..) {
        let _ = request.done.send(Err(unavailable(err)));
    }
}
