//! The send ledger: which idempotency keys a subject's sends were already emitted under.
//!
//! Every send has a deterministic idempotency key (rule-driven: subject, rule, rule-set version,
//! triggering event; journey: subject, journey, version, step, entry event, step count). Under
//! `processing.guarantee: exactly_once_keys` the subject-keyed operator looks the key up here before it
//! decides: a key already emitted is neither decided nor sent again, whatever re-processing brought it
//! back (a restart that re-reads past the committed offsets, or `touchpoint replay`).
//!
//! The ledger is part of the subject's keyed state, written to the state changelog only once the epoch's
//! sends and decision rows are durable (see `docs/exactly-once.md`): a key in a restored ledger always
//! means "its send is on the connector topic and its decision is in ClickHouse".
//!
//! Entries expire by processing (wall-clock) time after `send_ledger_ttl`, which must be longer than any
//! replay window: `touchpoint replay` refuses a range older than the TTL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What re-processing may emit again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// No ledger: input re-read after a crash decides and produces its sends again (same keys; the
    /// channel connectors' own ledger drops the repeats before delivery).
    AtLeastOnce,
    /// The pipeline's send ledger drops every send whose key was already emitted.
    #[default]
    ExactlyOnceKeys,
}

impl ProcessingGuarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
            ProcessingGuarantee::ExactlyOnceKeys => "exactly_once_keys",
        }
    }
}

/// One subject's emitted keys: (hash of the idempotency key, wall-clock ms when it was emitted), in
/// emission order. A small vector: a subject holds a handful of sends per TTL, and this is kept for
/// millions of subjects. 64-bit hashes: a false "already sent" needs two keys of one subject to collide
/// (about 2^-64 per pair).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSends {
    keys: Vec<(u64, i64)>,
}

fn key_hash(idempotency_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(idempotency_key.as_bytes())
}

impl SubjectSends {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Was a send with this key already emitted?
    pub fn contains(&self, idempotency_key: &str) -> bool {
        let h = key_hash(idempotency_key);
        self.keys.iter().any(|(k, _)| *k == h)
    }

    /// Remembers that the send with this key was emitted at `now_ms` (wall clock).
    pub fn record(&mut self, idempotency_key: &str, now_ms: i64) {
        let h = key_hash(idempotency_key);
        if !self.keys.iter().any(|(k, _)| *k == h) {
            self.keys.push((h, now_ms));
        }
    }

    /// Forgets keys emitted more than `ttl` before `now_ms`. Returns true when nothing is left.
    pub fn expire(&mut self, now_ms: i64, ttl: Duration) -> bool {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let keep_from = now_ms.saturating_sub(ttl_ms);
        self.keys.retain(|(_, at)| *at >= keep_from);
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_key_is_found_and_others_are_not() {
        let mut s = SubjectSends::default();
        assert!(!s.contains("tpk-1"));
        s.record("tpk-1", 1_000);
        assert!(s.contains("tpk-1"));
        assert!(!s.contains("tpk-2"));
        s.record("tpk-1", 2_000);
        assert_eq!(s.len(), 1, "recording a key twice keeps one entry");
    }

    #[test]
    fn keys_expire_after_the_ttl_by_wall_clock() {
        let mut s = SubjectSends::default();
        s.record("old", 0);
        s.record("new", 5_000);
        assert!(!s.expire(10_000, Duration::from_secs(6)));
        assert!(!s.contains("old"));
        assert!(s.contains("new"));
        assert!(s.expire(20_000, Duration::from_secs(6)));
    }

    #[test]
    fn guarantee_is_written_like_kafka_streams() {
        let g: ProcessingGuarantee = serde_json::from_str("\"at_least_once\"").unwrap();
        assert_eq!(g, ProcessingGuarantee::AtLeastOnce);
        assert_eq!(ProcessingGuarantee::default().as_str(), "exactly_once_keys");
        assert!(serde_json::from_str::<ProcessingGuarantee>("\"exactly_once\"").is_err());
    }
}
