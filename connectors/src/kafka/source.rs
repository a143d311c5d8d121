//! The pipeline's Kafka source: one consumer per timely worker, manually assigned a fixed share of the
//! topic's partitions, resuming from the consumer group's committed offsets.
//!
//! Why manual assignment rather than group subscription: the dataflow decides which worker owns which
//! partition (partition p → worker p mod W), and its commits must cover exactly what its sinks made
//! durable. Offsets are still committed under the pipeline's group id, so lag tools see them.
//!
//! Resume check: on a non-compacted topic the first record after an assignment must carry exactly the
//! requested offset. A cheap guard (one comparison per partition after an assignment): a broker or
//! client that silently skipped records would otherwise look like success; here it stops the pipeline
//! with an error. (The stand-in broker of earlier versions did skip records on mid-batch fetches.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka client error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(
        "{topic}/{partition}: asked to resume at offset {expected} but the first record fetched has offset \
         {got}; the broker skipped records, refusing to continue"
    )]
    SkippedRecords { topic: String, partition: i32, expected: i64, got: i64 },
    #[error(
        "{topic}/{partition}: asked to resume at offset {expected}, the broker reports records up to {high}, but \
         none arrived within {waited:?}; the broker skipped records, refusing to continue"
    )]
    NoRecordsAfterResume { topic: String, partition: i32, expected: i64, high: i64, waited: Duration },
}

/// How long a resumed partition may deliver nothing while the broker reports records past the resume
/// offset, before the source declares the records lost.
pub const RESUME_STALL_LIMIT: Duration = Duration::from_secs(5);

/// One record as read from the source topic, owned so it can travel through the dataflow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    /// Set by the pipeline: a previous run already stored this record's event (re-read after a crash).
    /// It must still drive decisions whose effects may not have been durable, but not be stored again.
    pub already_stored: bool,
}

pub struct PartitionSource {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read per partition (the position).
    next: HashMap<i32, i64>,
    /// Partitions whose first record after assignment has not arrived yet, with the expected offset.
    unverified: HashMap<i32, i64>,
    opened: Instant,
    last_stall_check: Instant,
    /// Replays: per partition, the offset to stop before (records from it on are not returned).
    end: HashMap<i32, i64>,
}

impl PartitionSource {
    /// Assigns `partitions` of `topic`, starting at the group's committed offsets (or the earliest
    /// available offset for partitions the group never committed).
    pub fn open(
        config: &KafkaConfig,
        group_id: &str,
        topic: &str,
        partitions: Vec<i32>,
        verify_resume: bool,
    ) -> Result<Self, SourceError> {
        Self::open_at(config, group_id, topic, partitions, verify_resume, false)
    }

    /// Assigns `partitions` of `topic` from their earliest offset, whatever the group committed: for
    /// tables (compacted topics) that are replayed into state at every start. No resume check: offsets of
    /// compacted topics have gaps.
    pub fn open_from_beginning(
        config: &KafkaConfig,
        group_id: &str,
        topic: &str,
        partitions: Vec<i32>,
    ) -> Result<Self, SourceError> {
        Self::open_at(config, group_id, topic, partitions, false, true)
    }

    /// Assigns `partitions` of `topic` at their current end, whatever the group committed: for requests
    /// that only matter to someone waiting now (dry runs); never committed.
    pub fn open_from_end(
        config: &KafkaConfig,
        group_id: &str,
        topic: &str,
        partitions: Vec<i32>,
    ) -> Result<Self, SourceError> {
        let consumer: BaseConsumer = config.consumer_config(group_id).create()?;
        let bounds = log_bounds(&consumer, topic, &partitions, Duration::from_secs(30))?;
        let mut next = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let end = bounds.get(&p).map_or(0, |&(_, end)| end);
            assignment.add_partition_offset(topic, p, Offset::Offset(end))?;
            next.insert(p, end);
        }
        if !partitions.is_empty() {
            consumer.assign(&assignment)?;
        }
        tracing::info!(topic, group_id, ?next, "assigned partitions at their end");
        Ok(Self::assigned(consumer, topic, partitions, next, HashMap::new(), HashMap::new()))
    }

    /// Assigns the partitions of `start` at the given offsets, whatever the group committed, and reads
    /// each up to (not including) its offset in `end` (to the end of the log where `end` has none): a
    /// range to re-process (`touchpoint replay`). Resume check on: the first record must be the start.
    pub fn open_range(
        config: &KafkaConfig,
        group_id: &str,
        topic: &str,
        start: Vec<(i32, i64)>,
        end: HashMap<i32, i64>,
    ) -> Result<Self, SourceError> {
        let consumer: BaseConsumer = config.consumer_config(group_id).create()?;
        let mut assignment = TopicPartitionList::new();
        let mut next = HashMap::new();
        let mut unverified = HashMap::new();
        let mut partitions = Vec::new();
        for &(p, o) in &start {
            partitions.push(p);
            next.insert(p, o);
            // Nothing to read in an empty range: no first record to verify (the partition is paused below).
            if end.get(&p).is_none_or(|e| *e > o) {
                unverified.insert(p, o);
            }
            assignment.add_partition_offset(topic, p, Offset::Offset(o))?;
        }
        if !partitions.is_empty() {
            consumer.assign(&assignment)?;
        }
        tracing::info!(topic, ?next, ?end, "assigned partitions for a replay");
        let source = Self::assigned(consumer, topic, partitions, next, unverified, end);
        for (p, o) in start {
            if source.end.get(&p).is_some_and(|e| *e <= o) {
                source.pause(p)?;
            }
        }
        Ok(source)
    }

    fn pause(&self, partition: i32) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        self.consumer.pause(&tpl)?;
        Ok(())
    }

    fn open_at(
        config: &KafkaConfig,
        group_id: &str,
        topic: &str,
        partitions: Vec<i32>,
        verify_resume: bool,
        from_beginning: bool,
    ) -> Result<Self, SourceError> {
        let consumer: BaseConsumer = config.consumer_config(group_id).create()?;
        let timeout = Duration::from_secs(30);
        let mut next = HashMap::new();
        if !partitions.is_empty() {
            let mut wanted = TopicPartitionList::new();
            for &p in &partitions {
                wanted.add_partition(topic, p);
            }
            let committed =
                if from_beginning { TopicPartitionList::new() } else { consumer.committed_offsets(wanted, timeout)? };
            let uncommitted: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|&p| !matches!(committed.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(_))))
                .collect();
            let bounds = log_bounds(&consumer, topic, &uncommitted, timeout)?;
            let mut assignment = TopicPartitionList::new();
            for &p in &partitions {
                let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => bounds.get(&p).map_or(0, |&(start, _)| start),
                };
                assignment.add_partition_offset(topic, p, Offset::Offset(start))?;
                next.insert(p, start);
            }
            consumer.assign(&assignment)?;
            tracing::info!(topic, group_id, ?next, "assigned partitions");
        }
        let unverified = if verify_resume { next.clone() } else { HashMap::new() };
        Ok(Self::assigned(consumer, topic, partitions, next, unverified, HashMap::new()))
    }

    /// A source over an assigned consumer: `next` per partition, the ones still to verify, the ends.
    fn assigned(
        consumer: BaseConsumer,
        topic: &str,
        partitions: Vec<i32>,
        next: HashMap<i32, i64>,
        unverified: HashMap<i32, i64>,
        end: HashMap<i32, i64>,
    ) -> Self {
        let now = Instant::now();
        PartitionSource {
            consumer,
            topic: topic.to_string(),
            partitions,
            next,
            unverified,
            opened: now,
            last_stall_check: now,
            end,
        }
    }

    /// Calls `wake` whenever the consumer's queue goes from empty to non-empty, so that an idle reader
    /// can sleep instead of polling (the dataflow parks its worker thread and `wake` unparks it).
    pub fn set_wakeup(&mut self, wake: impl Fn() + Send + Sync + 'static) {
        self.consumer.set_nonempty_callback(wake);
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Reads the next record, waiting at most `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<SourceRecord>, SourceError> {
        if self.partitions.is_empty() {
            std::thread::sleep(timeout);
            return Ok(None);
        }
        let message = match self.consumer.poll(timeout) {
            None => {
                self.check_resume_stall()?;
                return Ok(None);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => m,
        };
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(expected) = self.unverified.remove(&partition) {
            if offset != expected {
                let low = self.consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10))?.0;
                if expected >= low {
                    return Err(SourceError::SkippedRecords {
                        topic: self.topic.clone(),
                        partition,
                        expected,
                        got: offset,
                    });
                }
                tracing::warn!(topic = %self.topic, partition, expected, got = offset, low,
                    "resume offset was deleted by retention; continuing from the log start");
            }
        }
        if let Some(&end) = self.end.get(&partition) {
            if offset >= end {
                // Past the replay's range: stop reading this partition (its position stays at the end).
                self.next.insert(partition, end);
                self.pause(partition)?;
                return Ok(None);
            }
        }
        self.next.insert(partition, offset + 1);
        Ok(Some(SourceRecord {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
            already_stored: false,
        }))
    }

    /// A broker that drops the rest of a batch when a fetch starts inside it may return nothing at all
    /// for a resumed partition: no record arrives to compare with the expected offset. Detect that by
    /// the high watermark: records exist past the resume point, yet none came.
    ///
    /// The end comes from the last Fetch response (cached, no round trip). Asking the broker instead
    /// (ListOffsets) blocked the polling thread: the request queues behind the consumer's own long-poll
    /// Fetch on the same connection (a broker answers one connection's requests in order), up to
    /// `fetch.wait.max.ms` per partition, so an idle 4-partition source stalled its timely worker ~2 s
    /// every second (found with `benches/src/bin/evaluate_latency.rs`). A stalled partition has had
    /// Fetch responses, which carry the end, so the check loses nothing.
    fn check_resume_stall(&mut self) -> Result<(), SourceError> {
        if self.unverified.is_empty()
            || self.opened.elapsed() < RESUME_STALL_LIMIT
            || self.last_stall_check.elapsed() < Duration::from_secs(1)
        {
            return Ok(());
        }
        self.last_stall_check = Instant::now();
        for (&partition, &expected) in &self.unverified {
            let Some(high) = self.cached_high_watermark(partition) else { continue };
            if high > expected {
                return Err(SourceError::NoRecordsAfterResume {
                    topic: self.topic.clone(),
                    partition,
                    expected,
                    high,
                    waited: self.opened.elapsed(),
                });
            }
        }
        Ok(())
    }

    /// The partition's high watermark: the larger of what ListOffsets reports and what the last Fetch
    /// response carried. (Some brokers under-report the end in ListOffsets; the Fetch value is exact.)
    pub fn high_watermark(&self, partition: i32) -> Result<i64, SourceError> {
        Ok(high_watermark(&self.consumer, &self.topic, partition)?)
    }

    /// The next offset to read, per assigned partition.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        let mut v: Vec<(i32, i64)> = self.next.iter().map(|(&p, &o)| (p, o)).collect();
        v.sort_unstable();
        v
    }

    /// Commits `offsets` (next offset to read, per partition) under the group id.
    pub fn commit(&self, offsets: &[(i32, i64)], mode: CommitMode) -> Result<(), SourceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
        }
        self.consumer.commit(&tpl, mode)?;
        Ok(())
    }

    /// True when `partition` has been read up to its end. Uses the end the last Fetch response carried
    /// (no broker round trip) when there is one, else asks the broker; an error counts as "not at the end"
    /// (the caller then keeps treating the partition as active, the safe side).
    pub fn partition_read_to_end(&self, partition: i32) -> bool {
        if let Some(&end) = self.end.get(&partition) {
            if self.next.get(&partition).copied().unwrap_or(0) >= end {
                return true;
            }
        }
        let end = match fetched_high_watermark(&self.consumer, &self.topic, partition) {
            Some(end) => Ok(end),
            None => self.high_watermark(partition),
        };
        end.is_ok_and(|end| self.next.get(&partition).copied().unwrap_or(0) >= end)
    }

    /// The end of `partition` as the last Fetch response carried it (no broker round trip), if any.
    pub fn cached_high_watermark(&self, partition: i32) -> Option<i64> {
        fetched_high_watermark(&self.consumer, &self.topic, partition)
    }

    /// True when every assigned partition has been read up to the broker's high watermark (or, in a
    /// replay, up to the range's end).
    /// "Read up to": see [`read_up_to`].
    pub fn caught_up(&self) -> Result<bool, SourceError> {
        let position = self.consumer.position().ok();
        for &p in &self.partitions {
            let read = read_up_to(position.as_ref(), &self.topic, p, self.next.get(&p).copied().unwrap_or(0));
            let high = match self.end.get(&p) {
                Some(&end) if read >= end => continue,
                Some(&end) => end.min(self.high_watermark(p)?),
                None => self.high_watermark(p)?,
            };
            if read < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// How far `partition` has been read: the consumer's `position` where it is past `next` (the offset
/// after the last record handed out). A topic written by transactional producers ends with a commit
/// marker, an offset no reader is handed, which the position moves past; comparing `next` with the high
/// watermark would never see the end.
pub(super) fn read_up_to(position: Option<&TopicPartitionList>, topic: &str, partition: i32, next: i64) -> i64 {
    match position.and_then(|tpl| tpl.find_partition(topic, partition)).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o.max(next),
        _ => next,
    }
}

/// Where each of `partitions` starts and ends, as (start, end): the broker's log start and log end
/// (`ListOffsets` earliest and latest; callers reading to the end still compare the end with what
/// fetches report, see [`high_watermark`]).
pub fn log_bounds(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, (i64, i64)>, SourceError> {
    let mut bounds = HashMap::new();
    for &p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        bounds.insert(p, (low.max(0), high));
    }
    Ok(bounds)
}

/// A partition's high watermark: the larger of what ListOffsets reports and what the last Fetch response
/// carried. (Some brokers under-report the end in ListOffsets; the Fetch value is exact.)
pub fn high_watermark(consumer: &BaseConsumer, topic: &str, partition: i32) -> rdkafka::error::KafkaResult<i64> {
    let (_, listed) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    Ok(listed.max(fetched_high_watermark(consumer, topic, partition).unwrap_or(-1)))
}

/// The high watermark librdkafka cached from the last Fetch response for `partition`, if any.
fn fetched_high_watermark(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `native_ptr` is the live handle owned by `consumer`; `topic` is a valid NUL-terminated
    // string for the duration of the call; `low`/`high` are valid out-pointers.
    // rd_kafka_get_watermark_offsets only reads librdkafka's cache (no callbacks, no blocking).
    let err = unsafe {
        rdkafka_sys::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// The partitions of a topic owned by `worker` out of `workers`: p → worker p mod W.
pub fn owned_partitions(partition_count: i32, worker: usize, workers: usize) -> Vec<i32> {
    (0..partition_count).filter(|p| (*p as usize) % workers == worker).collect()
}

/// Number of partitions of `topic` according to the cluster metadata.
pub fn partition_count(config: &KafkaConfig, topic: &str) -> Result<i32, SourceError> {
    let consumer: BaseConsumer = config.consumer_config("touchpoint-metadata").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::owned_partitions;

    #[test]
    fn partitions_are_spread_modulo_workers() {
        assert_eq!(owned_partitions(4, 0, 2), vec![0, 2]);
        assert_eq!(owned_partitions(4, 1, 2), vec![1, 3]);
        assert_eq!(owned_partitions(2, 2, 3), Vec::<i32>::new());
        let all: Vec<i32> = (0..3).flat_map(|w| owned_partitions(8, w, 3)).collect();
        assert_eq!(all.len(), 8);
    }
}
