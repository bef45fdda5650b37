//! A token bucket for ICMP errors and log lines; sans-IO, the caller passes
//! the time.

use std::time::{Duration, Instant};

const NANOS: u128 = 1_000_000_000;

/// A token bucket: `burst` tokens at most, refilled at `rate_per_sec`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u32,
    /// Capacity in tokens × 10^9.
    capacity: u128,
    /// Tokens × 10^9.
    tokens: u128,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least 1) refilled at `rate_per_sec`.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        let capacity = u128::from(burst.max(1)) * NANOS;
        Self {
            rate: rate_per_sec,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// How long one token takes to come back (one second for a bucket that
    /// never refills): after a refusal, asking again sooner is refused too.
    pub fn token_interval(&self) -> Duration {
        Duration::from_secs(1) / self.rate.max(1)
    }

    /// Takes one token if there is one at `now`. A `now` earlier than a
    /// previous call refills nothing.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let refill = elapsed.saturating_mul(u128::from(self.rate));
            self.tokens = self.tokens.saturating_add(refill).min(self.capacity);
            if now > last {
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
        if self.tokens >= NANOS {
            self.tokens -= NANOS;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!(b.allow(t0));
        assert!(b.allow(t0));
        assert!(b.allow(t0));
        assert!(!b.allow(t0));
        // 10/s: one token per 100 ms.
        assert!(!b.allow(t0 + Duration::from_millis(99)));
        assert!(b.allow(t0 + Duration::from_millis(100)));
        assert!(!b.allow(t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        let allowed = (0..10).filter(|_| b.allow(later)).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new(1000, 1);
        assert!(b.allow(t0));
        assert!(!b.allow(t0 - Duration::from_millis(500)));
        assert!(!b.allow(t0));
        assert!(b.allow(t0 + Duration::from_millis(1)));
    }

    #[test]
    fn zero_rate_is_burst_only() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 2);
        assert!(b.allow(t0));
        assert!(b.allow(t0));
        assert!(!b.allow(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn fractional_refill_accumulates() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 1);
        assert!(b.allow(t0));
        // 3/s: 333.33 ms per token; three steps of 111.2 ms make one.
        let mut t = t0;
        let mut got = 0;
        for _ in 0..3 {
            t += Duration::from_micros(111_112);
            got += usize::from(b.allow(t));
        }
        assert_eq!(got, 1);
    }
}
