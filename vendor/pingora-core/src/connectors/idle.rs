// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The keep-alive pool of idle upstream connections.
//!
//! An idle connection has no task of its own. It is checked when it is
//! taken (closed by the server, unexpected data, past its idle timeout),
//! and one sweeper task per pool looks over every idle connection once a
//! second, so that a connection the server closed does not linger.
//!
//! Taking and returning a connection is a short critical section: no task
//! is spawned, no channel is created and the taker never waits for another
//! task to hand the connection over.

use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the sweeper looks over the idle connections.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One idle connection.
pub(crate) struct Idle {
    pub(crate) stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    pub(crate) fn new(stream: Stream, timeout: Option<Duration>) -> Self {
        Idle {
            stream,
            since: Instant::now(),
            timeout,
        }
    }

    /// How long the connection has been idle.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// Whether the connection has been idle for its whole idle timeout.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.timeout.is_some_and(|t| self.idle_for(now) >= t)
    }

    /// [`Self::expired`] now; the clock is read only when there is an
    /// idle timeout.
    pub(crate) fn expired_now(&self) -> bool {
        self.timeout.is_some_and(|t| self.since.elapsed() >= t)
    }
}

/// Hashes a reuse hash to itself: the key is already a hash of the peer
/// (which comes from the configuration, not from a client), so hashing it
/// again would only cost a hash per pool operation.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed (below); any other input is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

#[derive(Default)]
struct State {
    /// Idle connections by peer (reuse hash), oldest first. A peer's queue
    /// is kept when it empties, so that a connection taken and returned
    /// for every request does not free and allocate a queue each time; the
    /// sweeper removes empty queues.
    by_peer: HashMap<u64, VecDeque<Idle>, BuildHasherDefault<KeyHasher>>,
    count: usize,
}

/// Idle upstream connections by peer, at most `capacity` in all.
pub(crate) struct IdlePool {
    state: Mutex<State>,
    capacity: usize,
    sweeping: AtomicBool,
}

impl IdlePool {
    pub(crate) fn new(capacity: usize) -> Self {
        IdlePool {
            state: Mutex::new(State::default()),
            capacity,
            sweeping: AtomicBool::new(false),
        }
    }

    /// Take the most recently returned idle connection to the peer, if any.
    ///
    /// The most recent one is the least likely to have been closed by the
    /// server; the older ones age out.
    pub(crate) fn take(&self, key: u64) -> Option<Idle> {
        let mut state = self.state.lock();
        let idle = state.by_peer.get_mut(&key)?.pop_back();
        if idle.is_some() {
            state.count -= 1;
        }
        idle
    }

    /// Keep an idle connection. When the pool is full, the connection that
    /// has been idle the longest makes room and is handed back to be closed
    /// (the new one itself, when the pool holds none).
    pub(crate) fn put(&self, key: u64, idle: Idle) -> Option<Idle> {
        if self.capacity == 0 {
            return Some(idle);
        }
        let mut state = self.state.lock();
        let evicted = if state.count >= self.capacity {
            Self::pop_oldest(&mut state)
        } else {
            None
        };
        state.by_peer.entry(key).or_default().push_back(idle);
        state.count += 1;
        evicted
    }

    fn pop_oldest(state: &mut State) -> Option<Idle> {
        let key = state
            .by_peer
            .iter()
            .filter_map(|(key, queue)| queue.front().map(|idle| (idle.since, *key)))
            .min()
            .map(|(_, key)| key)?;
        let queue = state.by_peer.get_mut(&key)?;
        let oldest = queue.pop_front();
        if queue.is_empty() {
            state.by_peer.remove(&key);
        }
        if oldest.is_some() {
            state.count -= 1;
        }
        oldest
    }

    /// Remove every idle connection that `keep` refuses, and return them.
    pub(crate) fn remove_unless(&self, mut keep: impl FnMut(&mut Idle) -> bool) -> Vec<Idle> {
        let mut removed = Vec::new();
        let mut state = self.state.lock();
        state.by_peer.retain(|_, queue| {
            let mut i = 0;
            while i < queue.len() {
                let kept = queue.get_mut(i).is_none_or(|idle| keep(idle));
                if kept {
                    i += 1;
                } else {
                    removed.extend(queue.remove(i));
                }
            }
            !queue.is_empty()
        });
        state.count -= removed.len();
        removed
    }

    /// Start the sweeper unless one is running. It holds the pool weakly and
    /// ends with it; if its runtime shuts down, the next returned connection
    /// starts a new one.
    pub(crate) fn ensure_sweeper<F>(self: &Arc<Self>, make_sweep: impl FnOnce() -> F)
    where
        F: FnMut(&IdlePool) + Send + 'static,
    {
        if self.sweeping.load(Ordering::Acquire) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut sweep = make_sweep();
        let pool = Arc::downgrade(self);
        let guard = SweeperRunning(pool.clone());
        pingora_runtime::current_handle().spawn(async move {
            let _guard = guard;
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(pool) = Weak::upgrade(&pool) else {
                    return;
                };
                sweep(&pool);
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().count
    }
}

/// Marks the sweeper as gone when its task ends or is dropped.
struct SweeperRunning(Weak<IdlePool>);

impl Drop for SweeperRunning {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.sweeping.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Idle {
        Idle::new(Box::new(tokio_test::io::Builder::new().build()), None)
    }

    fn queues(pool: &IdlePool) -> usize {
        pool.state.lock().by_peer.len()
    }

    #[test]
    fn a_peers_queue_outlives_its_connections_until_the_sweep() {
        let pool = IdlePool::new(8);
        assert!(pool.put(7, idle()).is_none());
        assert!(pool.put(9, idle()).is_none());
        assert!(pool.take(7).is_some());
        assert!(pool.take(7).is_none());
        // Taken and empty, the queue is kept for the connection's return.
        assert_eq!((pool.len(), queues(&pool)), (1, 2));
        assert!(pool.put(7, idle()).is_none());
        assert_eq!((pool.len(), queues(&pool)), (2, 2));
        assert!(pool.take(7).is_some());
        // The sweep drops empty queues and keeps the others.
        assert!(pool.remove_unless(|_| true).is_empty());
        assert_eq!((pool.len(), queues(&pool)), (1, 1));
        assert!(pool.take(9).is_some());
        assert!(pool.take(9).is_none());
    }

    #[test]
    fn keys_hash_to_themselves() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHasher>::default();
        for key in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(build.hash_one(key), key);
        }
        // Any other input still spreads over the hash.
        assert_ne!(build.hash_one([1u8, 2]), build.hash_one([2u8, 1]));
    }

    #[test]
    fn the_oldest_connection_makes_room_across_peers() {
        let pool = IdlePool::new(2);
        assert!(pool.put(1, idle()).is_none());
        std::thread::sleep(Duration::from_millis(2));
        assert!(pool.put(2, idle()).is_none());
        assert!(pool.take(1).is_some());
        assert!(pool.put(2, idle()).is_none());
        // Full: the oldest (peer 2's first) makes room; peer 1's empty
        // queue is skipped.
        let evicted = pool.put(3, idle()).expect("the pool is full");
        assert!(evicted.since <= pool.state.lock().by_peer[&2][0].since);
        assert_eq!(pool.len(), 2);
    }
}
