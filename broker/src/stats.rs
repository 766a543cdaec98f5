//! Broker-wide counters and latency histograms, updated with relaxed atomics
//! on the hot path and read by the admin API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::auth::AuthError;

/// A latency histogram with fixed bucket bounds, lock-free to update.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Bucket upper bounds in seconds, from 50 us to 5 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Bucket upper bounds for counts (how many items a batch held).
pub const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

impl Histogram {
    /// An empty histogram with `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records one observation of a count (for histograms of batch sizes;
    /// the sum is then in items, not seconds).
    pub fn observe_count(&self, count: u64) {
        let value = count as f64;
        if let Some(index) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        // Stored in millionths, like durations in microseconds, so that
        // `snapshot().sum_seconds` reads back the plain count.
        self.sum_micros
            .fetch_add(count.saturating_mul(1_000_000), Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus `le` buckets), the total count
    /// and the sum in seconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`.
    pub buckets: Vec<(f64, u64)>,
    /// All observations.
    pub count: u64,
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
}

/// Broker-wide counters.
#[derive(Debug)]
pub struct Stats {
    /// When the broker started.
    pub started: Instant,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Handshakes refused because of the connection limit.
    pub connections_refused: AtomicU64,
    /// Handshakes refused because their IP holds too many connections.
    pub per_ip_refused: AtomicU64,
    /// Handshakes refused by the handshake rate limit.
    pub handshake_rate_refused: AtomicU64,
    /// Handshakes refused because of their `Origin`.
    pub origin_refused: AtomicU64,
    /// TCP connections closed for not finishing the TLS handshake or the
    /// upgrade request in time.
    pub handshake_timeouts: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
    /// Publishes refused by the byte-rate limit.
    pub bytes_rate_limited: AtomicU64,
    /// Subscriptions held now.
    pub subscriptions: AtomicU64,
    /// Messages published.
    pub messages_in: AtomicU64,
    /// Payload bytes published.
    pub bytes_in: AtomicU64,
    /// Message frames queued to subscribers (live and replayed).
    pub deliveries: AtomicU64,
    /// Bytes written to WebSockets.
    pub bytes_out: AtomicU64,
    /// Subscribers switched to catching up from the store.
    pub slow_consumer_catch_ups: AtomicU64,
    /// Subscribers disconnected as slow consumers.
    pub slow_consumer_disconnects: AtomicU64,
    /// Messages replayed from the store.
    pub replayed: AtomicU64,
    /// Topics whose live subscribers were moved to a replay because this
    /// node missed deliveries (a skipped offset, a lost route to the
    /// engine).
    pub repairs: AtomicU64,
    /// Publishes refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Error replies sent.
    pub error_replies: AtomicU64,
    /// Handshakes refused, by [`AuthError::CODES`] index.
    pub auth_failures: [AtomicU64; AuthError::CODES.len()],
    /// Time from upgrade request to the 101 response.
    pub handshake_latency: Histogram,
    /// Time from a publish being accepted to its frame being queued to a
    /// subscriber (live fan-out only).
    pub fanout_latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            per_ip_refused: AtomicU64::new(0),
            handshake_rate_refused: AtomicU64::new(0),
            origin_refused: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            bytes_rate_limited: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            slow_consumer_catch_ups: AtomicU64::new(0),
            slow_consumer_disconnects: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            error_replies: AtomicU64::new(0),
            auth_failures: Default::default(),
            handshake_latency: Histogram::new(LATENCY_BOUNDS),
            fanout_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Stats {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a refused handshake.
    pub(crate) fn auth_failed(&self, error: &AuthError) {
        self.auth_failures[error.index()].fetch_add(1, Ordering::Relaxed);
    }
}
