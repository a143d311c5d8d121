//! Accounting of one epoch: every record that entered the pipeline is either normalized, dead-lettered,
//! dropped as a duplicate, or skipped because a previous run already stored it. Nothing else may
//! happen to it, and the pipeline logs this balance for every epoch. Late events (behind the watermark)
//! are counted among the normalized ones: flagged, or routed to the late-events topic, never dropped.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use touchpoint_schemas::RejectReason;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochTally {
    /// Records read from the source topic.
    pub received: u64,
    /// Records skipped at the source because the sink already holds them (replay after a crash).
    pub already_stored: u64,
    /// Unique events handed to the events sink.
    pub normalized: u64,
    /// Events dropped because their id was seen within the TTL.
    pub duplicates: u64,
    /// Of the unique events, those behind the watermark (flagged, or routed to the late-events topic by
    /// the policy). A part of `normalized`, not an outcome of its own: late events are never dropped.
    #[serde(default)]
    pub late: u64,
    /// Records sent to the dead-letter topic, by reason code.
    pub dead_lettered: BTreeMap<String, u64>,
}

impl EpochTally {
    pub fn reject(&mut self, reason: RejectReason) {
        *self.dead_lettered.entry(reason.code().to_string()).or_default() += 1;
    }

    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// received = already_stored + normalized + duplicates + dead-lettered.
    pub fn is_balanced(&self) -> bool {
        self.received == self.already_stored + self.normalized + self.duplicates + self.dead_lettered_total()
    }

    pub fn merge(&mut self, other: &EpochTally) {
        self.received += other.received;
        self.already_stored += other.already_stored;
        self.normalized += other.normalized;
        self.duplicates += other.duplicates;
        self.late += other.late;
        for (code, n) in &other.dead_lettered {
            *self.dead_lettered.entry(code.clone()).or_default() += n;
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == EpochTally::default()
    }
}

impl fmt::Display for EpochTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in={} out={} dlq={} duplicates={} already_stored={}",
            self.received,
            self.normalized,
            self.dead_lettered_total(),
            self.duplicates,
            self.already_stored
        )?;
        if self.late > 0 {
            write!(f, " late={}", self.late)?;
        }
        if !self.dead_lettered.is_empty() {
            let reasons: Vec<String> = self.dead_lettered.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            write!(f, " dlq_by_reason=[{}]", reasons.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_counts_every_outcome() {
        let mut t = EpochTally { received: 10, normalized: 5, duplicates: 2, already_stored: 1, ..Default::default() };
        assert!(!t.is_balanced());
        t.reject(RejectReason::MissingField);
        t.reject(RejectReason::MissingField);
        assert!(t.is_balanced());
        t.reject(RejectReason::InvalidTimestamp);
        assert!(!t.is_balanced());
    }

    #[test]
    fn merge_adds_partial_tallies_from_several_operators() {
        let mut a = EpochTally { received: 3, ..Default::default() };
        let mut b = EpochTally { normalized: 2, late: 1, ..Default::default() };
        b.reject(RejectReason::UnknownSchema);
        a.merge(&b);
        assert!(a.is_balanced(), "late events are a part of the normalized ones");
        assert_eq!(
            a.to_string(),
            "in=3 out=2 dlq=1 duplicates=0 already_stored=0 late=1 dlq_by_reason=[unknown_schema:1]"
        );
    }
}
