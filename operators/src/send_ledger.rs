//! The send ledger: which idempotency keys of a subject were already decided, and how.
//!
//! Every send has a deterministic idempotency key (rule-driven: subject, rule, rule-set version,
//! triggering event; journey: subject, journey, version, step, entry event, step count). Under
//! `processing.guarantee: exactly_once_keys` the subject-keyed operator looks the key up here before it
//! decides: a key already decided is neither decided nor sent again, whatever re-processing brought it
//! back (a restart that re-reads past the committed offsets, or `touchpoint replay`). An allowed key
//! stays sent; a suppressed key stays suppressed (a replay days later would otherwise re-decide it
//! against cap counters that have since expired, and send what a cap once held back — found by the
//! demo's replay). A new decision needs a new key: a new rule-set or journey version.
//!
//! The ledger is part of the subject's keyed state, written to the state changelog only once the epoch's
//! sends and decision rows are durable (see `docs/exactly-once.md`): a key in a restored ledger always
//! means "its send is on the connector topic and its decision is in ClickHouse".
//!
//! Entries expire by processing (wall-clock) time after `send_ledger_ttl`, which must be longer than any
//! replay window: `touchpoint replay` refuses a range older than the TTL.
//!
//! A subject's ledger holds at most [`MAX_LEDGER_KEYS`] keys, so that one subject flooded with events
//! (a hostile or broken producer) cannot grow its changelog record without bound. A full ledger never
//! forgets a key early (a forgotten key could be sent twice); instead the subject's further intents are
//! suppressed as `suppressed_ledger_full` until old keys expire: failing closed, not open.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What re-processing may emit again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// No ledger: input re-read after a crash decides and produces its sends again (same keys; the
    /// channel connectors' own ledger drops the repeats before delivery).
    AtLeastOnce,
    /// The pipeline's send ledger keeps every decided key: none is decided or sent again.
    #[default]
    ExactlyOnceKeys,
    /// Kafka transactions (EOS v2): an epoch's sends, changelog records, dead letters, late records
    /// and source offsets commit atomically, so re-processed input never reaches a `read_committed`
    /// reader twice. No ledger (smaller state); `touchpoint replay` needs `exactly_once_keys`.
    ExactlyOnceV2,
}

impl ProcessingGuarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
            ProcessingGuarantee::ExactlyOnceKeys => "exactly_once_keys",
            ProcessingGuarantee::ExactlyOnceV2 => "exactly_once_v2",
        }
    }
}

/// One subject's decided keys: (hash of the idempotency key, wall-clock ms when it was decided), in
/// decision order. Small vectors: a subject holds a handful of decisions per TTL, and this is kept for
/// millions of subjects. 64-bit hashes: a false hit needs two keys of one subject to collide (about
/// 2^-64 per pair).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSends {
    /// Allowed: the send was emitted.
    keys: Vec<(u64, i64)>,
    /// Suppressed (consent or cap).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    suppressed: Vec<(u64, i64)>,
    /// For suppressed journey sends: the reason, which the journey followed (it is part of the
    /// transition it recorded, so a re-run must see the same text). Rule-driven intents keep none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<(u64, String)>,
}

/// Most keys one subject's ledger holds (sent and suppressed): 16 bytes each in memory, about 36 in the
/// changelog record, so at most ~74 KB per subject. Thousands of decisions for one person within the
/// TTL is a flood, not marketing.
pub const MAX_LEDGER_KEYS: usize = 2048;

/// What the ledger knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided<'a> {
    Sent,
    /// Suppressed, with the reason when one was kept.
    Suppressed(Option<&'a str>),
}

fn key_hash(idempotency_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(idempotency_key.as_bytes())
}

impl SubjectSends {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.suppressed.is_empty()
    }

    /// Keys held (sent and suppressed).
    pub fn len(&self) -> usize {
        self.keys.len() + self.suppressed.len()
    }

    /// No room for another key: new intents of this subject are suppressed until keys expire.
    pub fn is_full(&self) -> bool {
        self.len() >= MAX_LEDGER_KEYS
    }

    /// How was this key decided, if it was?
    pub fn lookup(&self, idempotency_key: &str) -> Option<Decided<'_>> {
        let h = key_hash(idempotency_key);
        if self.keys.iter().any(|(k, _)| *k == h) {
            return Some(Decided::Sent);
        }
        if self.suppressed.iter().any(|(k, _)| *k == h) {
            let reason = self.reasons.iter().find(|(k, _)| *k == h).map(|(_, r)| r.as_str());
            return Some(Decided::Suppressed(reason));
        }
        None
    }

    /// Remembers that the send with this key was emitted at `now_ms` (wall clock). The caller checks
    /// [`is_full`](Self::is_full) first; a full ledger takes no key.
    pub fn record_sent(&mut self, idempotency_key: &str, now_ms: i64) {
        if !self.is_full() && self.lookup(idempotency_key).is_none() {
            self.keys.push((key_hash(idempotency_key), now_ms));
        }
    }

    /// Remembers that the intent with this key was suppressed at `now_ms`, with the reason a journey
    /// followed (none for rule-driven intents).
    pub fn record_suppressed(&mut self, idempotency_key: &str, now_ms: i64, reason: Option<String>) {
        if !self.is_full() && self.lookup(idempotency_key).is_none() {
            let h = key_hash(idempotency_key);
            self.suppressed.push((h, now_ms));
            if let Some(r) = reason {
                self.reasons.push((h, r));
            }
        }
    }

    /// Forgets keys decided more than `ttl` before `now_ms`. Returns true when nothing is left.
    pub fn expire(&mut self, now_ms: i64, ttl: Duration) -> bool {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let keep_from = now_ms.saturating_sub(ttl_ms);
        self.keys.retain(|(_, at)| *at >= keep_from);
        self.suppressed.retain(|(_, at)| *at >= keep_from);
        let suppressed = &self.suppressed;
        self.reasons.retain(|(k, _)| suppressed.iter().any(|(s, _)| s == k));
        self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_key_is_found_with_its_outcome_and_others_are_not() {
        let mut s = SubjectSends::default();
        assert_eq!(s.lookup("tpk-1"), None);
        s.record_sent("tpk-1", 1_000);
        s.record_suppressed("tpk-2", 1_000, None);
        s.record_suppressed("tpj-3", 1_000, Some("cap push-hourly: 1 of 1 per rolling 1h".into()));
        assert_eq!(s.lookup("tpk-1"), Some(Decided::Sent));
        assert_eq!(s.lookup("tpk-2"), Some(Decided::Suppressed(None)));
        assert_eq!(s.lookup("tpj-3"), Some(Decided::Suppressed(Some("cap push-hourly: 1 of 1 per rolling 1h"))));
        assert_eq!(s.lookup("tpk-4"), None);
        s.record_sent("tpk-1", 2_000);
        s.record_sent("tpk-2", 2_000);
        assert_eq!(s.len(), 3, "a decided key is recorded once, with its first outcome");
        assert_eq!(s.lookup("tpk-2"), Some(Decided::Suppressed(None)));
    }

    #[test]
    fn keys_expire_after_the_ttl_by_wall_clock() {
        let mut s = SubjectSends::default();
        s.record_sent("old", 0);
        s.record_suppressed("old-suppressed", 0, Some("consent denied".into()));
        s.record_sent("new", 5_000);
        assert!(!s.expire(10_000, Duration::from_secs(6)));
        assert_eq!(s.lookup("old"), None);
        assert_eq!(s.lookup("old-suppressed"), None);
        assert!(s.reasons.is_empty(), "a reason goes with its key");
        assert_eq!(s.lookup("new"), Some(Decided::Sent));
        assert!(s.expire(20_000, Duration::from_secs(6)));
    }

    #[test]
    fn a_full_ledger_takes_no_key_and_frees_room_as_keys_expire() {
        let mut s = SubjectSends::default();
        for i in 0..MAX_LEDGER_KEYS {
            s.record_suppressed(&format!("k{i}"), i as i64, None);
        }
        assert!(s.is_full());
        s.record_sent("one-more", 10_000);
        assert_eq!(s.lookup("one-more"), None);
        assert_eq!(s.len(), MAX_LEDGER_KEYS);
        assert_eq!(s.lookup("k0"), Some(Decided::Suppressed(None)), "no key is forgotten to make room");
        let bytes = serde_json::to_vec(&s).unwrap().len();
        assert!(bytes < 100_000, "a full ledger is {bytes} bytes");
        // Keys decided at 0..=99 expire: room for new ones.
        s.expire(100 + 1_000, Duration::from_secs(1));
        assert!(!s.is_full());
        s.record_sent("one-more", 10_000);
        assert_eq!(s.lookup("one-more"), Some(Decided::Sent));
    }

    #[test]
    fn guarantee_is_written_like_kafka_streams() {
        let g: ProcessingGuarantee = serde_json::from_str("\"at_least_once\"").unwrap();
        assert_eq!(g, ProcessingGuarantee::AtLeastOnce);
        assert_eq!(ProcessingGuarantee::default().as_str(), "exactly_once_keys");
        assert!(serde_json::from_str::<ProcessingGuarantee>("\"exactly_once\"").is_err());
    }
}
