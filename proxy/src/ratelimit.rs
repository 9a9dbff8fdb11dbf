//! Per-client request rate limits: a token bucket per client address,
//! refilled at `requests_per_second` up to `burst`. Buckets live in shards
//! behind their own locks, so clients on different shards never contend,
//! and a shard forgets clients whose bucket has refilled once it grows
//! large, so memory stays bounded by the number of clients active in the
//! last `burst / requests_per_second` seconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// A shard larger than this is swept of full buckets.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by client address; the rate and burst come with each call,
/// so a reload that changes them applies at once.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
    hasher: ahash::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl RateLimiter {
    /// Takes one token from `client`'s bucket. `Err` holds how long until
    /// the next token.
    pub fn take(
        &self,
        client: IpAddr,
        rate: f64,
        burst: f64,
        now: Instant,
    ) -> Result<(), Duration> {
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= SWEEP_AT {
            // Clients whose bucket would be full again are as good as new.
            let full_after = Duration::from_secs_f64(burst / rate);
            map.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        let bucket = map.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let limiter = RateLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.take(a, 2.0, 5.0, t0).is_ok());
        }
        let wait = limiter.take(a, 2.0, 5.0, t0).expect_err("limited");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(
            limiter.take(b, 2.0, 5.0, t0).is_ok(),
            "others are unaffected"
        );
        assert!(limiter
            .take(a, 2.0, 5.0, t0 + Duration::from_millis(500))
            .is_ok());
        assert!(limiter
            .take(a, 2.0, 5.0, t0 + Duration::from_millis(500))
            .is_err());
    }
}

/// Open connections per client address, for `http.max_connections_per_client`.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
    hasher: ahash::RandomState,
}

impl ConnectionCounts {
    fn shard(&self, client: IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS]
    }

    /// Counts a new connection from `client` unless it already has `max`;
    /// the guard uncounts it when dropped.
    pub fn open(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ConnectionGuard> {
        let mut map = match self.shard(client).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = map.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnectionGuard {
            counts: self.clone(),
            client,
        })
    }

    /// Open connections from `client`.
    pub fn of(&self, client: IpAddr) -> usize {
        self.shard(client)
            .lock()
            .map(|m| m.get(&client).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// One counted connection.
#[derive(Debug)]
pub struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    client: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut map = match self.counts.shard(self.client).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let counts = Arc::new(ConnectionCounts::default());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let one = counts.open(a, 2).expect("first");
        let two = counts.open(a, 2).expect("second");
        assert!(counts.open(a, 2).is_none(), "third over the cap");
        drop(one);
        assert_eq!(counts.of(a), 1);
        let _three = counts.open(a, 2).expect("room again");
        drop(two);
        assert_eq!(counts.of(a), 1);
    }
}
