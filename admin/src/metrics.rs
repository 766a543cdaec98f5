//! Prometheus metrics at `/metrics`, in the Prometheus text format 0.0.4.
//!
//! The broker counts with its own relaxed atomics ([`sockeye_broker::Stats`]);
//! a `prometheus-client` [`Collector`] reads them at scrape time, so the hot
//! path pays nothing for the exporter, and `prometheus-client` takes care of
//! the format (names, `_total` suffixes, label escaping, histogram buckets).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sockeye_broker::HistogramSnapshot;
use sockeye_broker::{Broker, Stats};

use crate::AppState;
use crate::auth::AuthFailures;
use crate::error::{ApiError, ErrorBody};

/// The registry with the one collector of broker metrics.
pub(crate) fn registry(broker: Broker, admin_auth_failures: Arc<AuthFailures>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector {
        broker,
        admin_auth_failures,
    }));
    registry
}

/// Reads the broker's counters at each scrape.
#[derive(Debug)]
struct BrokerCollector {
    broker: Broker,
    admin_auth_failures: Arc<AuthFailures>,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge<T>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: T,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<T>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    snapshot: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    // The encoder wants per-bucket counts (it accumulates them itself) and
    // an explicit +Inf bucket for observations above the last bound.
    let mut buckets = Vec::with_capacity(snapshot.buckets.len() + 1);
    let mut below = 0;
    for (bound, cumulative) in &snapshot.buckets {
        buckets.push((*bound, cumulative - below));
        below = *cumulative;
    }
    // The buckets and the count are read one after the other while
    // observations go on; never report fewer observations than buckets hold.
    let count = snapshot.count.max(below);
    buckets.push((f64::INFINITY, count - below));
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(snapshot.sum_seconds, count, &buckets, None)
}

fn labelled_counters<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let broker = &self.broker;
        let stats = broker.stats();
        let (subscriptions, wildcard_subscriptions) = broker.subscription_counts();
        let store = broker.store_health();
        let e = &mut encoder;
        gauge(
            e,
            "sockeye_uptime_seconds",
            "Seconds since the broker started.",
            Instant::now().duration_since(stats.started).as_secs_f64(),
        )?;
        gauge(
            e,
            "sockeye_connections",
            "WebSocket connections open now.",
            broker.connection_count() as u64,
        )?;
        counter(
            e,
            "sockeye_connections_accepted",
            "WebSocket connections accepted.",
            Stats::get(&stats.connections_total),
        )?;
        counter(
            e,
            "sockeye_connections_refused",
            "WebSocket handshakes refused at the connection limit.",
            Stats::get(&stats.connections_refused),
        )?;
        counter(
            e,
            "sockeye_per_ip_refused",
            "WebSocket handshakes refused at the per-IP connection limit.",
            Stats::get(&stats.per_ip_refused),
        )?;
        counter(
            e,
            "sockeye_handshake_rate_refused",
            "WebSocket handshakes refused by the handshake rate limit.",
            Stats::get(&stats.handshake_rate_refused),
        )?;
        counter(
            e,
            "sockeye_origin_refused",
            "WebSocket handshakes refused because of their Origin.",
            Stats::get(&stats.origin_refused),
        )?;
        counter(
            e,
            "sockeye_handshake_timeouts",
            "TCP connections closed for not finishing the TLS handshake or upgrade request in time.",
            Stats::get(&stats.handshake_timeouts),
        )?;
        counter(
            e,
            "sockeye_tls_failures",
            "TLS handshakes that failed.",
            Stats::get(&stats.tls_failures),
        )?;
        gauge(
            e,
            "sockeye_subscriptions",
            "Subscriptions held now (exact and wildcard).",
            subscriptions,
        )?;
        gauge(
            e,
            "sockeye_wildcard_subscriptions",
            "Wildcard subscriptions held now.",
            wildcard_subscriptions,
        )?;
        gauge(
            e,
            "sockeye_topics",
            "Topics with state (stored, or live with subscribers).",
            broker.topic_count() as u64,
        )?;
        counter(
            e,
            "sockeye_messages_in",
            "Messages published.",
            Stats::get(&stats.messages_in),
        )?;
        counter(
            e,
            "sockeye_bytes_in",
            "Payload bytes published.",
            Stats::get(&stats.bytes_in),
        )?;
        counter(
            e,
            "sockeye_deliveries",
            "Message frames queued to subscribers, live and replayed.",
            Stats::get(&stats.deliveries),
        )?;
        counter(
            e,
            "sockeye_bytes_out",
            "Bytes written to WebSockets.",
            Stats::get(&stats.bytes_out),
        )?;
        counter(
            e,
            "sockeye_replayed_messages",
            "Messages replayed from the store.",
            Stats::get(&stats.replayed),
        )?;
        counter(
            e,
            "sockeye_slow_consumer_catch_ups",
            "Subscribers switched to catching up from the store.",
            Stats::get(&stats.slow_consumer_catch_ups),
        )?;
        counter(
            e,
            "sockeye_slow_consumer_disconnects",
            "Subscribers disconnected as slow consumers (close 4002).",
            Stats::get(&stats.slow_consumer_disconnects),
        )?;
        counter(
            e,
            "sockeye_rate_limited",
            "Publishes refused by the per-connection rate limit.",
            Stats::get(&stats.rate_limited),
        )?;
        counter(
            e,
            "sockeye_bytes_rate_limited",
            "Publishes refused by the per-connection byte-rate limit.",
            Stats::get(&stats.bytes_rate_limited),
        )?;
        counter(
            e,
            "sockeye_error_replies",
            "Error replies sent to clients.",
            Stats::get(&stats.error_replies),
        )?;
        labelled_counters(
            e,
            "sockeye_auth_failures",
            "WebSocket handshakes refused, by reason.",
            "reason",
            crate::stats::auth_failures(stats),
        )?;
        labelled_counters(
            e,
            "sockeye_admin_auth_failures",
            "Admin API requests refused with 401 or 403, by reason.",
            "reason",
            self.admin_auth_failures.counts(),
        )?;
        gauge(
            e,
            "sockeye_store_size_bytes",
            "Bytes the history store occupies on disk.",
            store.size_on_disk,
        )?;
        gauge(
            e,
            "sockeye_store_failing",
            "1 while the history store fails and refuses writes, else 0.",
            u64::from(store.failing),
        )?;
        counter(
            e,
            "sockeye_store_flush_failures",
            "History store flushes that failed.",
            store.flush_failures,
        )?;
        counter(
            e,
            "sockeye_store_reopens",
            "Times the history store was reopened to recover from a failure.",
            store.reopens,
        )?;
        counter(
            e,
            "sockeye_store_damaged_topics",
            "Stored topics found to have lost acknowledged messages and given a new epoch.",
            store.damaged_topics,
        )?;
        gauge(
            e,
            "sockeye_stored_topics",
            "Topics whose history is stored.",
            store.stored_topics,
        )?;
        if let Some(bytes) = crate::stats::resident_memory_bytes() {
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                bytes,
            )?;
        }
        histogram(
            e,
            "sockeye_handshake_duration_seconds",
            "Time from a WebSocket upgrade request to its 101 response.",
            &stats.handshake_latency.snapshot(),
        )?;
        if store.engine == "redis" {
            histogram(
                e,
                "sockeye_redis_publish_batch_seconds",
                "Time of each pipelined batch of publish scripts sent to Redis.",
                &store.flush_latency,
            )?;
            histogram(
                e,
                "sockeye_redis_publish_batch_size",
                "Publishes per batch sent to Redis.",
                &store.flush_batch,
            )?;
            counter(
                e,
                "sockeye_redis_pubsub_reconnects",
                "Times the PUB/SUB connection to Redis came back after being lost.",
                store.reopens,
            )?;
        } else {
            histogram(
                e,
                "sockeye_store_flush_duration_seconds",
                "Time of each history store flush (sled flush plus fdatasync).",
                &store.flush_latency,
            )?;
            histogram(
                e,
                "sockeye_store_flush_batch_writes",
                "Appends made durable by each flush: how many publishes share one fsync.",
                &store.flush_batch,
            )?;
        }
        counter(
            e,
            "sockeye_repairs",
            "Topics whose live subscribers were moved to a replay because this node missed deliveries.",
            Stats::get(&stats.repairs),
        )?;
        histogram(
            e,
            "sockeye_publish_to_deliver_seconds",
            "Time from a publish being accepted to its frame being queued to every live subscriber.",
            &stats.fanout_latency.snapshot(),
        )?;
        Ok(())
    }
}

/// Prometheus metrics.
///
/// The Prometheus text format 0.0.4. Needs the same credentials as the
/// rest of the API: configure the scrape job with a bearer API key.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses(
        (status = 200, description = "Metrics in the Prometheus text format", body = String,
         content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 500, description = "Encoding failed", body = ErrorBody),
    )
)]
pub(crate) async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let registry = Arc::clone(&state.metrics);
    // The store size walks sled's files: keep it off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).map(|()| text)
    })
    .await
    .map_err(|err| ApiError::Internal {
        cause: format!("metrics task failed: {err}"),
    })?
    .map_err(|_| ApiError::Internal {
        cause: "encoding the metrics failed".into(),
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}
