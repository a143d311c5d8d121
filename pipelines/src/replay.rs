//! `touchpoint replay --from <time|offsets> [--to <time|offsets>]`: re-process a range of
//! `marketing.events` through the same dataflow, with the pipeline's restored state.
//!
//! Every send the range produces carries the key it carried the first time, so the send ledger
//! (`processing.guarantee: exactly_once_keys`) drops the ones already emitted: a replay only sends what
//! was never sent (e.g. sends a bug suppressed, once the bug is fixed). Events already stored are not
//! stored again (the source-offset fence); decisions already made are not made again (the ledger holds
//! the keys of allowed ones; suppressed ones are re-decided and replace their row).
//!
//! A replay commits no offsets (the live pipeline's position is untouched) and refuses to run without
//! the ledger, or further back than the ledger remembers. Stop the live pipeline first: two processes
//! owning the same subjects would each hold only their own view of the ledger. See docs/exactly-once.md.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use touchpoint_connectors::kafka::log_bounds;
use touchpoint_operators::send_ledger::ProcessingGuarantee;

use crate::config::PipelineConfig;

/// One end of a replay range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayPoint {
    /// Record timestamp, UTC ms: the first offset whose timestamp is at or after it.
    Time(i64),
    /// Explicit offsets per partition.
    Offsets(Vec<(i32, i64)>),
}

impl ReplayPoint {
    /// `2026-11-30T18:00:00Z` (RFC 3339), `1h` (that long before now), or `0:120,1:98` (partition:offset).
    pub fn parse(text: &str, now_ms: i64) -> Result<Self> {
        let text = text.trim();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(ReplayPoint::Time(t.timestamp_millis()));
        }
        if text.contains(':') && !text.contains('T') {
            let mut offsets = Vec::new();
            for part in text.split(',') {
                let (p, o) = part.split_once(':').ok_or_else(|| anyhow!("{part:?}: expected partition:offset"))?;
                let p: i32 = p.trim().parse().with_context(|| format!("{part:?}: partition is not a number"))?;
                let o: i64 = o.trim().parse().with_context(|| format!("{part:?}: offset is not a number"))?;
                if p < 0 || o < 0 {
                    bail!("{part:?}: partition and offset must not be negative");
                }
                offsets.push((p, o));
            }
            return Ok(ReplayPoint::Offsets(offsets));
        }
        if let Ok(ago) = humantime::parse_duration(text) {
            let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
            return Ok(ReplayPoint::Time(now_ms.saturating_sub(ago)));
        }
        bail!(
            "{text:?}: expected an RFC 3339 time (2026-11-30T18:00:00Z), a duration ago (1h), or partition:offset,..."
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRange {
    pub from: ReplayPoint,
    pub to: Option<ReplayPoint>,
}

/// A range as offsets: each partition is read from `start` up to (not including) `end`.
#[derive(Debug, Clone, Default)]
pub struct ResolvedReplay {
    start: HashMap<i32, i64>,
    end: HashMap<i32, i64>,
}

impl ResolvedReplay {
    /// `(start, end)` of a partition the range covers; `None`: the partition is not replayed.
    pub fn range(&self, partition: i32) -> Option<(i64, i64)> {
        Some((*self.start.get(&partition)?, *self.end.get(&partition)?))
    }

    /// Records in the range, over all partitions.
    pub fn records(&self) -> i64 {
        self.start.iter().map(|(p, s)| (self.end.get(p).copied().unwrap_or(*s) - s).max(0)).sum()
    }
}

/// Checks the range against the pipeline's guarantee and ledger TTL and turns it into offsets.
pub fn resolve(config: &PipelineConfig, range: &ReplayRange, partitions: i32) -> Result<ResolvedReplay> {
    if config.processing.guarantee != ProcessingGuarantee::ExactlyOnceKeys {
        bail!(
            "replay needs processing.guarantee: exactly_once_keys (the send ledger is what keeps a replay from \
             sending again); this pipeline runs {}",
            config.processing.guarantee.as_str()
        );
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ttl_ms = i64::try_from(config.processing.send_ledger_ttl.as_millis()).unwrap_or(i64::MAX);
    if let ReplayPoint::Time(from) = range.from {
        if from < now_ms.saturating_sub(ttl_ms) {
            bail!(
                "replay from {} reaches further back than the send ledger remembers (processing.send_ledger_ttl = {}): \
                 sends older than that could go out again",
                chrono::DateTime::from_timestamp_millis(from).map_or_else(|| from.to_string(), |t| t.to_rfc3339()),
                humantime::format_duration(config.processing.send_ledger_ttl)
            );
        }
    }
    let topic = &config.topics.events.name;
    let consumer: BaseConsumer =
        config.kafka.consumer_config(&format!("{}.replay", config.pipeline.group_id)).create()?;
    let timeout = Duration::from_secs(30);
    // (log start, log end) per partition.
    let all: Vec<i32> = (0..partitions).collect();
    let log = log_bounds(&consumer, topic, &all, timeout)?;
    let log_end: HashMap<i32, i64> = log.iter().map(|(&p, &(_, high))| (p, high)).collect();
    let start = match &range.from {
        ReplayPoint::Offsets(o) => o.iter().copied().filter(|(p, _)| *p < partitions).collect(),
        ReplayPoint::Time(t) => offsets_for_time(&consumer, topic, *t, &log)?,
    };
    let mut end: HashMap<i32, i64> = match &range.to {
        None => log_end.clone(),
        Some(ReplayPoint::Offsets(o)) => {
            let mut end = log_end.clone();
            end.extend(o.iter().copied());
            end
        }
        Some(ReplayPoint::Time(t)) => offsets_for_time(&consumer, topic, *t, &log)?,
    };
    // Partitions the range does not name are not replayed.
    end.retain(|p, _| start.contains_key(p));
    let resolved = ResolvedReplay { start, end };
    tracing::info!(topic, start = ?resolved.start, end = ?resolved.end, records = resolved.records(), "replay range");
    Ok(resolved)
}

/// Per partition, the first offset whose record timestamp is at or after `at_ms` (the log end if none),
/// as the broker's time index answers it (offsets-for-times).
fn offsets_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    at_ms: i64,
    log: &HashMap<i32, (i64, i64)>,
) -> Result<HashMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for &p in log.keys() {
        tpl.add_partition_offset(topic, p, Offset::Offset(at_ms))?;
    }
    let found = consumer
        .offsets_for_times(tpl, Duration::from_secs(30))
        .with_context(|| format!("looking up the offsets of {topic} at {at_ms} ms"))?;
    let mut out = HashMap::new();
    for (&p, &(low, end)) in log {
        let offset = match found.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.clamp(low, end),
            // No record at or after the time: nothing of this partition is in the range.
            Some(Offset::End) | None => end,
            Some(other) => bail!("{topic}/{p}: the broker answered {other:?} for time {at_ms}"),
        };
        out.insert(p, offset);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_as_times_durations_or_offsets() {
        let now = 1_800_000_000_000;
        assert_eq!(ReplayPoint::parse("1h", now).unwrap(), ReplayPoint::Time(now - 3_600_000));
        assert_eq!(ReplayPoint::parse("2027-01-15T08:00:00Z", now).unwrap(), ReplayPoint::Time(1_800_000_000_000));
        assert_eq!(ReplayPoint::parse("0:120, 3:7", now).unwrap(), ReplayPoint::Offsets(vec![(0, 120), (3, 7)]));
        let err = ReplayPoint::parse("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("expected an RFC 3339 time"), "{err}");
        assert!(ReplayPoint::parse("0:-1", now).is_err());
        assert!(ReplayPoint::parse("x:1", now).unwrap_err().to_string().contains("partition is not a number"));
    }
}
