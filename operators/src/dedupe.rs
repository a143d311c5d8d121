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
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig { ttl: default_ttl() }
    }
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
    /// key → expiry (processing time, ms).
    seen: FastHashMap<u128, i64>,
    /// (expiry, key) in insertion order; processing time only moves forward, so this is sorted.
    expiries: VecDeque<(i64, u128)>,
}

impl EventDeduplicator {
    pub fn new(config: &DedupeConfig) -> Self {
        EventDeduplicator {
            ttl_ms: i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX),
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
        self.remember(key, now_ms);
        true
    }

    /// Records an id as seen at `seen_at_ms` without testing it (restoring state after a restart).
    pub fn remember(&mut self, key: u128, seen_at_ms: i64) {
        let expiry = seen_at_ms.saturating_add(self.ttl_ms);
        // Restored ids may arrive out of order; keep the deque sorted by clamping to its tail, which
        // can only make an id live longer, never shorter.
        let expiry = self.expiries.back().map_or(expiry, |&(last, _)| expiry.max(last));
        self.seen.insert(key, expiry);
        self.expiries.push_back((expiry, key));
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(&(expiry, key)) = self.expiries.front() {
            if expiry > now_ms {
                break;
            }
            self.expiries.pop_front();
            if self.seen.get(&key) == Some(&expiry) {
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

    fn dedup(ttl_secs: u64) -> EventDeduplicator {
        EventDeduplicator::new(&DedupeConfig { ttl: Duration::from_secs(ttl_secs) })
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
