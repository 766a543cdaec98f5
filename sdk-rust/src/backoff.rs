//! The reconnect delay schedule: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// How long the client waits before each reconnect attempt.
///
/// Attempt `n` (counting from 0) waits a uniformly random time in
/// `[0, min(max, initial * multiplier^n)]`: exponential backoff with *full
/// jitter*, so a fleet of clients that lost the same broker does not come
/// back in lockstep. The attempt counter starts again at 0 once a connection
/// is established (the broker sent `welcome`).
///
/// ```
/// use std::time::Duration;
/// use sockeye_sdk::Backoff;
///
/// let backoff = Backoff::default();
/// assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
/// assert_eq!(backoff.ceiling(30), Duration::from_secs(30)); // capped at `max`
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// Ceiling of the first delay. Default 100 ms.
    pub initial: Duration,
    /// Largest delay ever waited, including a broker's `retry_after_ms`
    /// hint. Default 30 s.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt (values below 1 count as 1).
    /// Default 2.
    pub multiplier: f64,
    /// Give up (the client becomes `Closed`) after this many consecutive
    /// failed attempts; `None` retries for ever. Default `None`.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// A schedule with the given first ceiling and cap, doubling per attempt
    /// and retrying for ever.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }

    /// Sets [`Backoff::max_attempts`].
    pub fn with_max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The upper bound of the delay before attempt `attempt` (0-based):
    /// `min(max, initial * multiplier^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let ceiling = self.initial.as_secs_f64() * factor;
        if !ceiling.is_finite() || ceiling >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(ceiling)
        }
    }

    /// A random delay in `[0, ceiling(attempt)]`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn every_delay_stays_within_zero_and_the_capped_exponential_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let ceiling = backoff.ceiling(attempt);
            let expected = Duration::from_millis(50)
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(Duration::from_secs(5));
            assert_eq!(ceiling, expected, "attempt {attempt}");
            for _ in 0..200 {
                let delay = backoff.delay(attempt, &mut rng);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn delays_are_spread_over_the_whole_window_not_pinned_to_an_end() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(42);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(0, &mut rng)).collect();
        let low = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(250))
            .count();
        let high = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(750))
            .count();
        // Uniform over [0, 1 s]: about 250 in each quarter.
        assert!((150..350).contains(&low), "low quarter held {low}");
        assert!((150..350).contains(&high), "high quarter held {high}");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let backoff = Backoff::default();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10)
                .map(|attempt| backoff.delay(attempt, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn degenerate_settings_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(1);
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(10, &mut rng), Duration::ZERO);
        let shrinking = Backoff {
            multiplier: 0.5,
            ..Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
        };
        assert_eq!(shrinking.ceiling(5), Duration::from_millis(10));
        let inverted = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(inverted.ceiling(0), Duration::from_secs(1));
        assert_eq!(
            Backoff::default().ceiling(u32::MAX),
            Duration::from_secs(30)
        );
    }
}
