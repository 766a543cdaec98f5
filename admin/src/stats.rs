//! The stats route: broker-wide counters, rates over a sliding window,
//! store size, uptime and memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use serde::{Deserialize, Serialize};
use sockeye_broker::auth::AuthError;
use sockeye_broker::{Broker, Stats};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ApiError;

/// The span the rates of `GET /v1/stats` are averaged over, at least.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Samples for the rates are taken at most this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Broker-wide statistics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct StatsView {
    /// Seconds since the broker started.
    uptime_seconds: u64,
    /// WebSocket connections open now.
    connections: u64,
    /// Connections accepted since start.
    connections_total: u64,
    /// Handshakes refused at the connection limit (`server.max_connections`).
    connections_refused: u64,
    /// Handshakes refused because their IP address holds
    /// `server.max_connections_per_ip` connections.
    per_ip_refused: u64,
    /// Handshakes refused by `server.handshake_rate`.
    handshake_rate_refused: u64,
    /// Handshakes refused because of their `Origin` (`server.allowed_origins`).
    origin_refused: u64,
    /// TCP connections closed for not finishing the TLS handshake or the
    /// upgrade request within `server.handshake_timeout`.
    handshake_timeouts: u64,
    /// TLS handshakes that failed.
    tls_failures: u64,
    /// Subscriptions held now (exact and wildcard).
    subscriptions: u64,
    /// Wildcard subscriptions held now.
    wildcard_subscriptions: u64,
    /// Topics with state (stored, or live with subscribers).
    topics: u64,
    /// Messages published.
    messages_in: u64,
    /// Payload bytes published.
    bytes_in: u64,
    /// Message frames queued to subscribers (live and replayed).
    deliveries: u64,
    /// Bytes written to WebSockets.
    bytes_out: u64,
    /// Messages replayed from the store.
    replayed: u64,
    /// Rates over the last few seconds.
    rates: RatesView,
    /// Slow-consumer events.
    slow_consumers: SlowConsumersView,
    /// Publishes refused by the per-connection rate limit
    /// (`limits.publish_rate`).
    rate_limited: u64,
    /// Publishes refused by the per-connection byte-rate limit
    /// (`limits.publish_bytes_rate`).
    bytes_rate_limited: u64,
    /// Error replies sent to clients.
    error_replies: u64,
    /// WebSocket handshakes refused, by reason (the `code` of the refusal).
    auth_failures: BTreeMap<String, u64>,
    /// Bytes the history store occupies on disk.
    store_bytes_on_disk: u64,
    /// The history store's health and failure counters.
    store: StoreView,
    /// Resident memory of the process, in bytes (null where the platform
    /// does not tell).
    memory_resident_bytes: Option<u64>,
}

/// Rates per second.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RatesView {
    /// The span the rates are averaged over, in seconds: about the last 10
    /// seconds, or since the broker started when it started less than 10
    /// seconds ago, or since the previous request when there was none in
    /// the last 10 seconds.
    window_seconds: f64,
    /// Messages published per second.
    messages_in_per_second: f64,
    /// Payload bytes published per second.
    bytes_in_per_second: f64,
    /// Deliveries per second.
    deliveries_per_second: f64,
    /// Bytes written to WebSockets per second.
    bytes_out_per_second: f64,
    /// Connections accepted per second.
    connections_per_second: f64,
}

/// The history store's health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct StoreView {
    /// True while the store fails (writes to stored topics are refused with
    /// `storage_failed`; `/readyz` answers 503).
    failing: bool,
    /// What the current failure is, while failing.
    failure: Option<String>,
    /// Topics whose history is stored.
    stored_topics: u64,
    /// Flushes that failed since start.
    flush_failures: u64,
    /// Times the store was reopened to recover from a failure.
    reopens: u64,
    /// Stored topics found to have lost acknowledged messages and given a
    /// new epoch (at start with `store.on_damage = "new_epoch"`, or after a
    /// reopen).
    damaged_topics: u64,
}

/// Slow-consumer events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct SlowConsumersView {
    /// Subscribers switched to catching up from the store.
    catch_ups: u64,
    /// Subscribers disconnected with close code 4002.
    disconnects: u64,
}

/// The counters rates are computed from.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    messages_in: u64,
    bytes_in: u64,
    deliveries: u64,
    bytes_out: u64,
    connections: u64,
}

impl Totals {
    fn read(stats: &Stats) -> Self {
        Self {
            messages_in: Stats::get(&stats.messages_in),
            bytes_in: Stats::get(&stats.bytes_in),
            deliveries: Stats::get(&stats.deliveries),
            bytes_out: Stats::get(&stats.bytes_out),
            connections: Stats::get(&stats.connections_total),
        }
    }
}

/// Samples of the counters, taken when stats are read (no background task),
/// spaced at least [`SAMPLE_EVERY`] apart and spanning [`RATE_WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct RateWindow {
    /// A std mutex: held only to update a short deque.
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

impl RateWindow {
    fn rates(&self, started: Instant, now: Instant, current: Totals) -> RatesView {
        let (base_at, base) = {
            let mut samples = self
                .samples
                .lock()
                .expect("no code panics while holding the rate samples");
            if samples
                .back()
                .is_none_or(|(at, _)| now.duration_since(*at) >= SAMPLE_EVERY)
            {
                samples.push_back((now, current));
            }
            // Keep one sample at or before the window's start, so the rates
            // span the whole window once the broker has run that long.
            while samples.len() > 1 && samples[1].0 + RATE_WINDOW <= now {
                samples.pop_front();
            }
            match samples.front() {
                Some((at, totals)) if *at < now => (*at, *totals),
                _ => (started, Totals::default()),
            }
        };
        let seconds = now.duration_since(base_at).as_secs_f64();
        let per_second = |now: u64, then: u64| {
            if seconds > 0.0 {
                now.saturating_sub(then) as f64 / seconds
            } else {
                0.0
            }
        };
        RatesView {
            window_seconds: seconds,
            messages_in_per_second: per_second(current.messages_in, base.messages_in),
            bytes_in_per_second: per_second(current.bytes_in, base.bytes_in),
            deliveries_per_second: per_second(current.deliveries, base.deliveries),
            bytes_out_per_second: per_second(current.bytes_out, base.bytes_out),
            connections_per_second: per_second(current.connections, base.connections),
        }
    }
}

/// Resident memory of this process, from `/proc/self/status` (Linux).
pub(crate) fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Handshake refusals by reason, every reason listed.
pub(crate) fn auth_failures(stats: &Stats) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    AuthError::CODES
        .iter()
        .zip(&stats.auth_failures)
        .map(|(code, count)| (*code, Stats::get(count)))
}

fn stats_view(broker: &Broker, rates: &RateWindow) -> StatsView {
    let stats = broker.stats();
    let (subscriptions, wildcard_subscriptions) = broker.subscription_counts();
    let store = broker.store_health();
    let now = Instant::now();
    StatsView {
        uptime_seconds: now.duration_since(stats.started).as_secs(),
        connections: broker.connection_count() as u64,
        connections_total: Stats::get(&stats.connections_total),
        connections_refused: Stats::get(&stats.connections_refused),
        per_ip_refused: Stats::get(&stats.per_ip_refused),
        handshake_rate_refused: Stats::get(&stats.handshake_rate_refused),
        origin_refused: Stats::get(&stats.origin_refused),
        handshake_timeouts: Stats::get(&stats.handshake_timeouts),
        tls_failures: Stats::get(&stats.tls_failures),
        subscriptions,
        wildcard_subscriptions,
        topics: broker.topic_count() as u64,
        messages_in: Stats::get(&stats.messages_in),
        bytes_in: Stats::get(&stats.bytes_in),
        deliveries: Stats::get(&stats.deliveries),
        bytes_out: Stats::get(&stats.bytes_out),
        replayed: Stats::get(&stats.replayed),
        rates: rates.rates(stats.started, now, Totals::read(stats)),
        slow_consumers: SlowConsumersView {
            catch_ups: Stats::get(&stats.slow_consumer_catch_ups),
            disconnects: Stats::get(&stats.slow_consumer_disconnects),
        },
        rate_limited: Stats::get(&stats.rate_limited),
        bytes_rate_limited: Stats::get(&stats.bytes_rate_limited),
        error_replies: Stats::get(&stats.error_replies),
        auth_failures: auth_failures(stats)
            .map(|(code, count)| (code.to_owned(), count))
            .collect(),
        store_bytes_on_disk: store.size_on_disk,
        store: StoreView {
            failing: store.failing,
            failure: store.failure,
            stored_topics: store.stored_topics,
            flush_failures: store.flush_failures,
            reopens: store.reopens,
            damaged_topics: store.damaged_topics,
        },
        memory_resident_bytes: resident_memory_bytes(),
    }
}

/// Broker statistics.
///
/// Counters since the broker started, rates over about the last 10
/// seconds, store size, uptime and memory.
#[utoipa::path(
    get, path = "/v1/stats", tag = "stats",
    responses((status = 200, description = "Broker statistics", body = StatsView))
)]
pub(crate) async fn get_stats(
    State(state): State<AppState>,
) -> Result<axum::Json<StatsView>, ApiError> {
    let broker = state.broker.clone();
    let rates = std::sync::Arc::clone(&state.rates);
    // The store size walks sled's files: keep it off the async workers.
    tokio::task::spawn_blocking(move || axum::Json(stats_view(&broker, &rates)))
        .await
        .map_err(|err| ApiError::Internal {
            cause: format!("stats task failed: {err}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(messages_in: u64) -> Totals {
        Totals {
            messages_in,
            ..Totals::default()
        }
    }

    #[test]
    fn the_first_rate_is_since_start() {
        let started = Instant::now();
        let window = RateWindow::default();
        let rates = window.rates(started, started + Duration::from_secs(4), totals(40));
        assert_eq!(rates.window_seconds, 4.0);
        assert_eq!(rates.messages_in_per_second, 10.0);
    }

    #[test]
    fn rates_cover_the_window_then_slide() {
        let started = Instant::now();
        let window = RateWindow::default();
        let at = |s: u64| started + Duration::from_secs(s);
        for second in 1..=30 {
            window.rates(started, at(second), totals(second * 5));
        }
        let rates = window.rates(started, at(31), totals(31 * 5 + 20));
        assert_eq!(rates.window_seconds, 10.0);
        // 10 s at 5/s plus a burst of 20.
        assert_eq!(rates.messages_in_per_second, 7.0);
        assert!(window.samples.lock().unwrap().len() <= 12);
    }

    #[test]
    fn resident_memory_is_known_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_memory_bytes().unwrap() > 0);
        }
    }
}
