//! What a run measures: the generator's clock, latency histograms that many
//! tasks record into without contending, and a process's CPU time and memory
//! read from `/proc`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`). It is 100
/// on every Linux architecture, whatever the kernel's internal `HZ`.
const USER_HZ: f64 = 100.0;

/// Highest latency a histogram holds, in nanoseconds (larger values are
/// clamped to it): one minute.
const LATENCY_CEILING_NS: u64 = 60_000_000_000;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the generator's clock started. Publishers and
/// subscribers live in one process, so this monotonic clock is all a
/// publish-to-deliver latency needs.
pub(crate) fn now_ns() -> u64 {
    let origin = ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) struct Percentiles {
    /// Number of samples.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Largest sample.
    pub(crate) max: f64,
}

static NEXT_RECORDER: AtomicU64 = AtomicU64::new(1);

/// One thread's part of a [`Latencies`].
type Shard = Arc<Mutex<Histogram<u64>>>;

thread_local! {
    /// This thread's shard of the recorder (by id) it last recorded into.
    static SHARD: RefCell<Option<(u64, Shard)>> = const { RefCell::new(None) };
}

/// A latency histogram sharded per worker thread: recording locks only the
/// current thread's shard, which nothing else touches until the end.
#[derive(Debug)]
pub(crate) struct Latencies {
    id: u64,
    shards: Mutex<Vec<Shard>>,
}

impl Latencies {
    /// An empty recorder.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_RECORDER.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::new(Vec::new()),
        })
    }

    /// Records one latency, in nanoseconds.
    pub(crate) fn record(&self, nanos: u64) {
        self.record_all(&[nanos]);
    }

    /// Records many latencies, in nanoseconds, under one lock.
    pub(crate) fn record_all(&self, nanos: &[u64]) {
        SHARD.with(|cell| {
            let mut slot = cell.borrow_mut();
            if !matches!(slot.as_ref(), Some((id, _)) if *id == self.id) {
                let shard = Arc::new(Mutex::new(new_histogram()));
                lock(&self.shards).push(Arc::clone(&shard));
                *slot = Some((self.id, shard));
            }
            let Some((_, shard)) = slot.as_ref() else {
                return;
            };
            let mut histogram = lock(shard);
            for value in nanos {
                histogram.saturating_record((*value).min(LATENCY_CEILING_NS));
            }
        });
    }

    /// The percentiles of everything recorded so far, or `None` if nothing was.
    pub(crate) fn percentiles(&self) -> Option<Percentiles> {
        let mut merged = new_histogram();
        for shard in lock(&self.shards).iter() {
            // Both histograms have the same bounds, so adding cannot fail.
            let _ = merged.add(&*lock(shard));
        }
        if merged.is_empty() {
            return None;
        }
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        Some(Percentiles {
            count: merged.len(),
            p50: micros(merged.value_at_quantile(0.50)),
            p90: micros(merged.value_at_quantile(0.90)),
            p99: micros(merged.value_at_quantile(0.99)),
            p999: micros(merged.value_at_quantile(0.999)),
            max: micros(merged.max()),
        })
    }
}

/// Latencies gathered by one task and handed to a [`Latencies`] a batch at a
/// time (and when dropped): a subscriber receiving millions of messages per
/// second then takes a lock once per batch, not once per message.
#[derive(Debug)]
pub(crate) struct LatencyBatch {
    target: Arc<Latencies>,
    pending: Vec<u64>,
}

impl LatencyBatch {
    /// Latencies recorded before they are handed over.
    const SIZE: usize = 64;

    /// An empty batch for `target`.
    pub(crate) fn new(target: Arc<Latencies>) -> Self {
        Self {
            target,
            pending: Vec::with_capacity(Self::SIZE),
        }
    }

    /// Records one latency, in nanoseconds.
    #[inline]
    pub(crate) fn record(&mut self, nanos: u64) {
        self.pending.push(nanos);
        if self.pending.len() >= Self::SIZE {
            self.flush();
        }
    }

    /// Hands everything recorded to the target.
    pub(crate) fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.target.record_all(&self.pending);
            self.pending.clear();
        }
    }
}

impl Drop for LatencyBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The generator's clock for a stream of receptions: read once when frames
/// arrive and then once per [`ReceiveClock::READS`] deliveries, since reading
/// the clock for every one of millions of deliveries per second is a
/// measurable part of the generator's CPU. Deliveries handled from one read
/// were in the socket together, so they share an arrival time; the error is
/// at most the time to decode a few of them (microseconds).
#[derive(Debug, Default)]
pub(crate) struct ReceiveClock {
    now: u64,
    left: u32,
}

impl ReceiveClock {
    /// Deliveries timed with one reading of the clock.
    const READS: u32 = 8;

    /// Frames arrived: the next [`ReceiveClock::now`] reads the clock.
    #[inline]
    pub(crate) fn woken(&mut self) {
        self.left = 0;
    }

    /// The time of a reception, nanoseconds on [`now_ns`]'s clock.
    #[inline]
    pub(crate) fn now(&mut self) -> u64 {
        if self.left == 0 {
            self.now = now_ns();
            self.left = Self::READS;
        }
        self.left -= 1;
        self.now
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // 3 significant figures), so construction cannot fail.
    Histogram::new_with_bounds(1_000, LATENCY_CEILING_NS, 3)
        .expect("constant histogram bounds are valid")
}

/// Locks a mutex, taking the data even if a panicking thread poisoned it
/// (a histogram stays meaningful whatever happened to its writer).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessSample {
    at: Instant,
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
    /// Resident set size, KiB.
    rss_kib: u64,
    /// Peak resident set size, KiB.
    peak_rss_kib: u64,
}

/// What a process used between two samples.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) struct ProcessUsage {
    /// The process id.
    pub(crate) pid: u32,
    /// CPU seconds (user + system) spent between the samples.
    pub(crate) cpu_seconds: f64,
    /// CPU used, in percent of one core (200 = two cores busy).
    pub(crate) cpu_percent: f64,
    /// Resident memory at the first sample, KiB.
    pub(crate) rss_before_kib: u64,
    /// Resident memory at the second sample, KiB.
    pub(crate) rss_after_kib: u64,
    /// Peak resident memory of the process so far, KiB.
    pub(crate) peak_rss_kib: u64,
}

impl ProcessUsage {
    /// Adds another process's usage over the same interval (a system under
    /// test of several processes); `pid` stays the first one's.
    pub(crate) fn add(&mut self, other: &ProcessUsage) {
        self.cpu_seconds += other.cpu_seconds;
        self.cpu_percent += other.cpu_percent;
        self.rss_before_kib += other.rss_before_kib;
        self.rss_after_kib += other.rss_after_kib;
        self.peak_rss_kib += other.peak_rss_kib;
    }
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub(crate) fn sample(pid: u32) -> anyhow::Result<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is process {pid} running?)"))?;
    // The command name is in parentheses and may hold spaces: fields are
    // counted from the last ')'. After it, field 3 (state) comes first, so
    // utime (field 14) and stime (field 15) are at indexes 11 and 12.
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .context("malformed /proc stat line")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .context("malformed /proc stat line")
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcessSample {
        at: Instant::now(),
        cpu_ticks,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

impl ProcessSample {
    /// Resident memory at this sample, KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.rss_kib
    }

    /// What the process used from this sample to `later`.
    pub(crate) fn usage_until(&self, pid: u32, later: &ProcessSample) -> ProcessUsage {
        let cpu_seconds = later.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / USER_HZ;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        ProcessUsage {
            pid,
            cpu_seconds,
            cpu_percent: if wall > 0.0 {
                100.0 * cpu_seconds / wall
            } else {
                0.0
            },
            rss_before_kib: self.rss_kib,
            rss_after_kib: later.rss_kib,
            peak_rss_kib: later.peak_rss_kib,
        }
    }
}

/// Samples a process if a pid was given; a failure is reported, not fatal
/// (the broker may have exited, and that shows up elsewhere).
pub(crate) fn try_sample(pid: Option<u32>) -> Option<(u32, ProcessSample)> {
    let pid = pid?;
    match sample(pid) {
        Ok(sample) => Some((pid, sample)),
        Err(err) => {
            tracing::warn!(pid, cause = %err, "cannot sample the broker process");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_from_many_threads_merge_into_one_histogram() {
        let latencies = Latencies::new();
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let latencies = &latencies;
                scope.spawn(move || {
                    for i in 1..=1000u64 {
                        latencies.record((thread * 1000 + i) * 1_000);
                    }
                });
            }
        });
        let p = latencies.percentiles().unwrap();
        assert_eq!(p.count, 4000);
        assert!((p.p50 - 2000.0).abs() < 5.0, "{p:?}");
        assert!((p.max - 4000.0).abs() < 5.0, "{p:?}");
        assert!(Latencies::new().percentiles().is_none());
    }

    #[test]
    fn batches_reach_the_histogram_when_full_and_when_dropped() {
        let latencies = Latencies::new();
        let mut batch = LatencyBatch::new(Arc::clone(&latencies));
        for i in 1..=100u64 {
            batch.record(i * 1_000_000);
        }
        assert_eq!(latencies.percentiles().unwrap().count, 64);
        drop(batch);
        let p = latencies.percentiles().unwrap();
        assert_eq!(p.count, 100);
        assert!((p.max - 100_000.0).abs() < 100.0, "{p:?}");
    }

    #[test]
    fn the_receive_clock_is_read_again_after_a_wake_up_and_every_few_reads() {
        let mut clock = ReceiveClock::default();
        let first = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        for _ in 1..ReceiveClock::READS {
            assert_eq!(clock.now(), first);
        }
        let second = clock.now();
        assert!(second > first);
        std::thread::sleep(std::time::Duration::from_millis(2));
        clock.woken();
        assert!(clock.now() > second);
    }

    #[test]
    fn samples_this_process() {
        let pid = std::process::id();
        let first = sample(pid).unwrap();
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(spin, 1);
        let second = sample(pid).unwrap();
        let usage = first.usage_until(pid, &second);
        assert!(usage.rss_after_kib > 0);
        assert!(usage.peak_rss_kib >= usage.rss_after_kib);
        assert!(usage.cpu_seconds < 60.0);
        assert!(sample(u32::MAX).is_err());
    }
}
