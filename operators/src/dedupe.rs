//! Deduplication by `event_id`: the first occurrence of a (tenant, event_id) passes, repeats within the
//! time-to-live are dropped and counted.
//!
//! The TTL runs on processing time (when the pipeline first saw the id), not on event time: a producer
//! with a clock far in the future must not be able to expire every remembered id at once, and
//! duplicates come from retries and replays, which are close in processing time.
//!
//! State is keyed: the dataflow routes every (tenant, event_id) to one worker, so each worker's
//! deduplicator sees all occurrences of its keys. Ids are remembered as 128-bit hashes (16 bytes plus
//! the expiry), which keeps memory per id small and independent of id length.

use std::collections::VecDeque;
use std::time::Duration;

use crate::fast_hash::FastHashMap;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// How long an id is remembered after it was first seen.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Most ids one worker remembers (about 70 bytes each): beyond it the oldest are forgotten before
    /// their TTL, so the window shrinks under a flood instead of memory growing without bound. Counted
    /// and logged when it happens.
    #[serde(default = "default_max_ids")]
    pub max_ids: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig { ttl: default_ttl(), max_ids: default_max_ids() }
    }
}

fn default_max_ids() -> usize {
    5_000_000
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The key under which an event id is remembered.
pub fn dedupe_key(tenant_id: &str, event_id: &str) -> u128 {
    crate::fast_hash::KeyBytes::with_capacity(tenant_id.len() + event_id.len() + 1)
        .part(tenant_id)
        .raw(event_id.as_bytes())
        .hash128()
}

#[derive(Debug)]
pub struct EventDeduplicator {
    ttl_ms: i64,
    max_ids: usize,
    /// Ids forgotten before their TTL because `max_ids` was reached.
    evicted: u64,
    /// key → (expiry (processing time, ms), an event of this id went on in this run).
    seen: FastHashMap<u128, (i64, bool)>,
    /// (expiry, key) in insertion order; processing time only moves forward, so this is sorted.
    expiries: VecDeque<(i64, u128)>,
}

impl EventDeduplicator {
    pub fn new(config: &DedupeConfig) -> Self {
        EventDeduplicator {
            ttl_ms: i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX),
            max_ids: config.max_ids.max(1),
            evicted: 0,
            seen: FastHashMap::default(),
            expiries: VecDeque::new(),
        }
    }

    /// Returns true when this is the first occurrence of `key` within the TTL (the event passes).
    pub fn first_seen(&mut self, key: u128, now_ms: i64) -> bool {
        self.expire(now_ms);
        if self.seen.contains_key(&key) {
            return false;
        }
        self.insert(key, now_ms, true);
        true
    }

    /// For an event a previous run already stored (re-read after a restart): it goes on to drive
    /// decisions again (their effects may not have been durable), unless an event of the same id already
    /// went on in this run. Its id may be in the restored state (stored ids are restored), which does
    /// not count: only this run's. Without this, a duplicate of a stored event read earlier in this run
    /// (another partition, or stored after the restore read the ids) decided the same intents twice.
    pub fn first_in_run(&mut self, key: u128, now_ms: i64) -> bool {
        self.expire(now_ms);
        match self.seen.get_mut(&key) {
            Some((_, this_run)) if *this_run => false,
            Some((_, this_run)) => {
                *this_run = true;
                true
            }
            None => {
                self.insert(key, now_ms, true);
                true
            }
        }
    }

    /// Records an id as seen at `seen_at_ms` without testing it (restoring state after a restart).
    pub fn remember(&mut self, key: u128, seen_at_ms: i64) {
        self.insert(key, seen_at_ms, false);
    }

    fn insert(&mut self, key: u128, seen_at_ms: i64, this_run: bool) {
        let expiry = seen_at_ms.saturating_add(self.ttl_ms);
        // Restored ids may arrive out of order; keep the deque sorted by clamping to its tail, which
        // can only make an id live longer, never shorter.
        let expiry = self.expiries.back().map_or(expiry, |&(last, _)| expiry.max(last));
        // Full: the oldest id goes first, early (the window shrinks; memory does not grow).
        while self.seen.len() >= self.max_ids {
            let Some((old_expiry, old)) = self.expiries.pop_front() else { break };
            if self.seen.get(&old).is_some_and(|(e, _)| *e == old_expiry) {
                self.seen.remove(&old);
                self.evicted += 1;
            }
        }
        self.seen.insert(key, (expiry, this_run));
        self.expiries.push_back((expiry, key));
    }

    /// Ids forgotten before their TTL because the window was full (`max_ids`).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(&(expiry, key)) = self.expiries.front() {
            if expiry > now_ms {
                break;
            }
            self.expiries.pop_front();
            if self.seen.get(&key).is_some_and(|(e, _)| *e == expiry) {
                self.seen.remove(&key);
            }
        }
    }

    /// Number of ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a restart: a stored event re-read goes on once (even with its id restored), and a duplicate
    /// of it, before or after it in this run, does not go on as well.
    #[test]
    fn a_stored_event_and_its_duplicate_go_on_once_in_a_run() {
        let mut d = dedup(3600);
        let (x, y) = (dedupe_key("t", "x"), dedupe_key("t", "y"));
        d.remember(x, 0); // restored: stored by the previous run
        assert!(d.first_in_run(x, 1), "the stored event drives decisions again");
        assert!(!d.first_in_run(x, 2), "not twice");
        assert!(!d.first_seen(x, 3), "its duplicate is dropped");
        // The duplicate first, the stored one after (another partition): only one goes on.
        assert!(d.first_seen(y, 4));
        assert!(!d.first_in_run(y, 5));
    }

    fn dedup(ttl_secs: u64) -> EventDeduplicator {
        EventDeduplicator::new(&DedupeConfig { ttl: Duration::from_secs(ttl_secs), ..Default::default() })
    }

    #[test]
    fn a_full_window_forgets_its_oldest_ids_first() {
        let mut d = EventDeduplicator::new(&DedupeConfig { ttl: Duration::from_secs(3600), max_ids: 3 });
        let k = |i: u32| dedupe_key("t", &i.to_string());
        for i in 0..5 {
            assert!(d.first_seen(k(i), i64::from(i)));
        }
        assert_eq!((d.len(), d.evicted()), (3, 2));
        assert!(d.first_seen(k(0), 10), "the oldest was forgotten early");
        assert!(!d.first_seen(k(4), 11), "the newest is still remembered");
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn repeats_within_ttl_are_dropped() {
        let mut d = dedup(60);
        let k = dedupe_key("acme", "e1");
        assert!(d.first_seen(k, 1_000));
        assert!(!d.first_seen(k, 2_000));
        assert!(!d.first_seen(k, 60_999));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn ids_expire_after_ttl_and_then_pass_again() {
        let mut d = dedup(60);
        let k = dedupe_key("acme", "e1");
        assert!(d.first_seen(k, 1_000));
        assert!(d.first_seen(k, 61_000), "expired at first_seen + ttl");
        assert!(!d.first_seen(k, 61_001));
    }

    #[test]
    fn keys_are_scoped_by_tenant() {
        let mut d = dedup(60);
        assert!(d.first_seen(dedupe_key("acme", "e1"), 0));
        assert!(d.first_seen(dedupe_key("globex", "e1"), 0));
        assert_ne!(dedupe_key("a", "bc"), dedupe_key("ab", "c"));
    }

    #[test]
    fn state_stays_bounded_by_the_ttl() {
        let mut d = dedup(10);
        for i in 0..100_000i64 {
            assert!(d.first_seen(dedupe_key("t", &i.to_string()), i));
        }
        assert!(d.len() <= 10_001, "{} ids remembered", d.len());
    }

    #[test]
    fn remembered_ids_are_duplicates_until_they_expire() {
        let mut d = dedup(60);
        d.remember(dedupe_key("t", "old"), 10_000);
        d.remember(dedupe_key("t", "older"), 5_000);
        assert!(!d.first_seen(dedupe_key("t", "old"), 20_000));
        assert!(!d.first_seen(dedupe_key("t", "older"), 20_000));
        assert!(d.first_seen(dedupe_key("t", "old"), 70_000));
    }
}
