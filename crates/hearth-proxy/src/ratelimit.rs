//! The per-microVM request rate limit: one token bucket per microVM id.
//!
//! A bucket holds up to twice the per-second rate and refills continuously;
//! each request takes one token. Checked from request tasks under one short
//! mutex (no await inside). Buckets that have refilled completely are dropped
//! when the map grows past [`PRUNE_ABOVE_BUCKETS`], so memory stays bounded
//! by the number of microVMs busy in the last couple of seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The map is pruned of full buckets when it holds more than this many.
const PRUNE_ABOVE_BUCKETS: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_sec` requests per second, bursts of `2 * per_sec`; 0 = no limit.
    pub(crate) fn new(per_sec: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: 2.0 * f64::from(per_sec),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `microvm_id` at `now`, or says how long until one
    /// is available.
    pub(crate) fn check(&self, microvm_id: &str, now: Instant) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE_BUCKETS && !buckets.contains_key(microvm_id) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| refilled(b, now, per_sec, burst) < burst);
        }
        let bucket = buckets.entry(microvm_id.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = refilled(bucket, now, self.per_sec, self.burst);
        bucket.updated = now.max(bucket.updated);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_sec,
            ))
        }
    }
}

fn refilled(b: &Bucket, now: Instant, per_sec: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
    (b.tokens + elapsed * per_sec).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_of_twice_the_rate_then_refused_with_a_wait_until_the_next_token() {
        let rl = RateLimiter::new(5);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(rl.check("a", t0).is_ok(), "request {i}");
        }
        let wait = rl.check("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Another microVM has its own bucket.
        assert!(rl.check("b", t0).is_ok());
        // A token comes back after 1/rate seconds.
        assert!(rl.check("a", t0 + Duration::from_millis(210)).is_ok());
        assert!(rl.check("a", t0 + Duration::from_millis(210)).is_err());
    }

    #[test]
    fn steady_rate_at_the_limit_is_never_refused() {
        let rl = RateLimiter::new(10);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            assert!(rl.check("a", t0 + Duration::from_millis(100 * i)).is_ok());
        }
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let rl = RateLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(rl.check("a", t0).is_ok());
        }
    }

    #[test]
    fn full_buckets_are_pruned_so_the_map_stays_bounded() {
        let rl = RateLimiter::new(1);
        let t0 = Instant::now();
        for i in 0..(PRUNE_ABOVE_BUCKETS * 3) {
            let now = t0 + Duration::from_secs(i as u64 / 100);
            let _ = rl.check(&format!("m{i}"), now);
        }
        let len = rl.buckets.lock().unwrap().len();
        assert!(len <= PRUNE_ABOVE_BUCKETS + 1, "{len}");
    }
}
