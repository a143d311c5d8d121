//! The durable dedupe ledger of a channel connector: what happened to each idempotency key.
//!
//! Kept in the compacted topic `connector.<channel>.ledger`, partition for partition with the
//! connector topic (a record of `connector.email` partition 3 is ledgered in partition 3), so the worker
//! that owns a partition restores exactly its part. Two kinds of entries, both written and acknowledged
//! by the broker before the worker goes on:
//!
//! - `attempting` (with the attempt number) just before a message is handed to the provider;
//! - `retrying` when that attempt failed transiently (so a restart continues the count, no lookup);
//! - `done` (sent or dead-lettered) as soon as the provider answered.
//!
//! Entries expire after [`LEDGER_TTL`] (wall clock, from when they were written): in memory, at restore,
//! and on the broker (the topic is `compact,delete` with that retention). A key only needs its entry
//! while its message can be read again from the connector topic, so the TTL is longer than that topic's
//! retention (the broker default, 7 days). Without it the ledger grew with every key ever sent.
//!
//! After a crash, a key that is `done` is never sent again; a key that is `attempting` is *in doubt*:
//! the provider may or may not have it. The worker asks the provider (`ChannelClient::status`); only
//! if the provider does not know it (or cannot say, SMTP) is it sent again, with the same idempotency
//! key / Message-ID / webhook-id. See docs/channels.md.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use touchpoint_schemas::DeliveryStatus;

use crate::kafka::{visit_partitions, KafkaConfig, OutgoingRecord};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LedgerEntry {
    /// Attempt `attempt` (1-based) is being made: after a crash, in doubt.
    Attempting { attempt: u32 },
    /// Attempt `attempt` failed transiently (the provider did not take it); the next one follows.
    Retrying { attempt: u32 },
    /// Final: `sent`, `dead_lettered`, or `failed` (an in-doubt attempt the provider had, then failed),
    /// after `attempt` attempts.
    Done {
        attempt: u32,
        outcome: DeliveryStatus,
        #[serde(default)]
        provider_message_id: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
}

/// How long a ledger entry is kept: longer than a connector topic's retention (broker default 7 days),
/// so a message that can still be read again always finds its entry.
pub const LEDGER_TTL: Duration = Duration::from_secs(14 * 86_400);

/// The ledger of one partition: per key, its entry and when it was written (wall-clock ms).
#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<String, (LedgerEntry, i64)>,
}

impl Ledger {
    pub fn get(&self, key: &str) -> Option<&LedgerEntry> {
        self.entries.get(key).map(|(e, _)| e)
    }

    /// Records `entry` for `key`, written at `at_ms` (wall clock).
    pub fn apply(&mut self, key: &str, entry: LedgerEntry, at_ms: i64) {
        self.entries.insert(key.to_string(), (entry, at_ms));
    }

    /// Forgets entries written more than `ttl` before `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: i64, ttl: Duration) -> usize {
        let keep_from = now_ms.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let before = self.entries.len();
        self.entries.retain(|_, (_, at)| *at >= keep_from);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The record that makes `entry` durable. An entry that cannot be encoded is an error, never an
    /// empty value (a tombstone on this compacted topic: the key's history would be erased).
    pub fn record(
        topic: &str,
        partition: i32,
        key: &str,
        entry: &LedgerEntry,
    ) -> Result<OutgoingRecord, serde_json::Error> {
        Ok(OutgoingRecord {
            topic: topic.to_string(),
            partition: Some(partition),
            key: Some(key.as_bytes().to_vec()),
            payload: Some(serde_json::to_vec(entry)?),
            headers: vec![],
        })
    }

    /// Reads `partitions` of the ledger topic to their end (blocking: run it off the async threads).
    /// The last entry per key wins, as compaction would keep it; entries older than [`LEDGER_TTL`] at
    /// `now_ms` are left out. Folded as read: memory holds the live entries, not the log.
    pub fn restore(
        kafka: &KafkaConfig,
        topic: &str,
        partitions: &[i32],
        now_ms: i64,
    ) -> anyhow::Result<HashMap<i32, Ledger>> {
        let mut ledgers: HashMap<i32, Ledger> = partitions.iter().map(|&p| (p, Ledger::default())).collect();
        let mut unreadable = 0usize;
        visit_partitions(kafka, topic, partitions, Duration::ZERO, Duration::from_secs(600), true, |r| {
            let (Some(key), Some(payload)) = (r.key, r.payload) else { return Ok(()) };
            match (String::from_utf8(key), serde_json::from_slice::<LedgerEntry>(&payload)) {
                // A record without a timestamp counts as written now: kept for a full TTL.
                (Ok(k), Ok(e)) => {
                    ledgers.entry(r.partition).or_default().apply(&k, e, r.timestamp_ms.unwrap_or(now_ms))
                }
                _ => unreadable += 1,
            }
            Ok(())
        })?;
        if unreadable > 0 {
            tracing::warn!(topic, unreadable, "ledger records that could not be read were skipped");
        }
        for ledger in ledgers.values_mut() {
            ledger.expire(now_ms, LEDGER_TTL);
        }
        Ok(ledgers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_as_tagged_json() {
        let e = LedgerEntry::Done {
            attempt: 2,
            outcome: DeliveryStatus::Sent,
            provider_message_id: Some("SM1".into()),
            reason: None,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""state":"done""#), "{json}");
        assert_eq!(serde_json::from_str::<LedgerEntry>(&json).unwrap(), e);
        let a = LedgerEntry::Attempting { attempt: 1 };
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"state":"attempting","attempt":1}"#);
    }

    #[test]
    fn entries_expire_after_the_ttl_from_when_they_were_written() {
        let mut l = Ledger::default();
        let done =
            LedgerEntry::Done { attempt: 1, outcome: DeliveryStatus::Sent, provider_message_id: None, reason: None };
        l.apply("old", done.clone(), 1_000);
        l.apply("new", done, 9_000);
        assert_eq!(l.expire(10_000, Duration::from_secs(5)), 1);
        assert_eq!(l.get("old"), None);
        assert!(l.get("new").is_some());
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_last_entry_of_a_key_wins_and_records_keep_their_partition() {
        let mut l = Ledger::default();
        l.apply("k", LedgerEntry::Attempting { attempt: 1 }, 0);
        l.apply(
            "k",
            LedgerEntry::Done { attempt: 1, outcome: DeliveryStatus::Sent, provider_message_id: None, reason: None },
            0,
        );
        assert!(matches!(l.get("k"), Some(LedgerEntry::Done { .. })));
        let r = Ledger::record("connector.email.ledger", 3, "k", &LedgerEntry::Attempting { attempt: 2 }).unwrap();
        assert_eq!(r.partition, Some(3));
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
    }
}
