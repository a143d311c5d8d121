//! The normalization operator: decode, validate, canonicalize. Runs where the record was read (no
//! exchange): it needs no state, only the schema registry (cached lookups).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;
use touchpoint_connectors::kafka::{OutgoingRecord, SourceRecord};
use touchpoint_operators::{DecodeError, Normalizer, RecordDecoder, Rejection, SchemaLookup};
use touchpoint_schemas::reject::headers;
use touchpoint_schemas::{NormalizedEvent, RejectReason, SourcePosition};

use super::sinks::TopicRecord;
use super::tally::TallyBook;
use super::Epoch;

/// A rejected record on its way to the dead-letter topic: the original bytes, untouched, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub position: SourcePosition,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason_code: String,
    pub message: String,
    pub rejected_at_ms: i64,
}

impl TopicRecord for DeadLetter {
    /// The dead-letter record: same key and value as the original, the reason in headers.
    fn to_record(&self, topic: &str) -> OutgoingRecord {
        let rejected_at = chrono::DateTime::from_timestamp_millis(self.rejected_at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        OutgoingRecord {
            partition: None,
            topic: topic.to_string(),
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers: vec![
                (headers::ERROR_CODE.into(), self.reason_code.clone().into_bytes()),
                (headers::ERROR_MESSAGE.into(), self.message.clone().into_bytes()),
                (headers::SOURCE_TOPIC.into(), self.position.topic.clone().into_bytes()),
                (headers::SOURCE_PARTITION.into(), self.position.partition.to_string().into_bytes()),
                (headers::SOURCE_OFFSET.into(), self.position.offset.to_string().into_bytes()),
                (headers::REJECTED_AT.into(), rejected_at.into_bytes()),
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// A valid event; `true` when a previous run already stored it (see `SourceRecord::already_stored`).
    Event(NormalizedEvent, bool),
    Rejected(DeadLetter),
}

/// Where a record was read and, for a valid event, its event time: all the partition clocks read of an
/// outcome. They get this instead of a copy of the outcome (timely clones every record of a stream read
/// by two operators: a second deep copy of every event and dead letter, per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReading {
    pub partition: i32,
    pub offset: i64,
    /// `None` for a rejected record: it moves the partition's read position, not its clock.
    pub event_ms: Option<i64>,
}

impl ClockReading {
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Event(e, _) => ClockReading {
                partition: e.position.partition,
                offset: e.position.offset,
                event_ms: Some(e.occurred_at_ms),
            },
            Outcome::Rejected(d) => {
                ClockReading { partition: d.position.partition, offset: d.position.offset, event_ms: None }
            }
        }
    }
}

/// What the normalize operator emits for each record: its outcome, then its clock reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Normalized {
    /// A valid event; `true` when a previous run already stored it.
    Event(NormalizedEvent, bool),
    Rejected(DeadLetter),
    Clock(ClockReading),
}

impl Normalized {
    /// Output streams, in [`crate::topology`]: events, dead letters, clock readings.
    pub const PARTS: u64 = 3;

    pub fn part(&self) -> u64 {
        match self {
            Normalized::Event(..) => 0,
            Normalized::Rejected(_) => 1,
            Normalized::Clock(_) => 2,
        }
    }

    pub fn into_event(self) -> Option<(NormalizedEvent, bool)> {
        if let Normalized::Event(e, already_stored) = self {
            Some((e, already_stored))
        } else {
            None
        }
    }

    pub fn into_rejected(self) -> Option<DeadLetter> {
        if let Normalized::Rejected(d) = self {
            Some(d)
        } else {
            None
        }
    }

    pub fn into_clock(self) -> Option<ClockReading> {
        if let Normalized::Clock(c) = self {
            Some(c)
        } else {
            None
        }
    }
}

impl From<Outcome> for Normalized {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Event(e, already_stored) => Normalized::Event(e, already_stored),
            Outcome::Rejected(d) => Normalized::Rejected(d),
        }
    }
}

/// Decodes a payload (JSON or Confluent Avro). A schema registry outage blocks here and retries with
/// backoff: the record is not at fault, and later records of its partition must not overtake it.
pub fn decode_with_retry<T>(
    position: &SourcePosition,
    mut decode: impl FnMut() -> Result<T, DecodeError>,
) -> Result<T, Rejection> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match decode() {
            Ok(fields) => return Ok(fields),
            Err(DecodeError::Reject(r)) => return Err(r),
            Err(DecodeError::Retry(why)) => {
                tracing::warn!(%why, topic = %position.topic, partition = position.partition, offset = position.offset,
                    "schema registry unavailable; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl DeadLetter {
    /// The dead letter of a source record: its original key and bytes, and why it was rejected.
    pub fn of(record: SourceRecord, position: SourcePosition, rejection: Rejection, rejected_at_ms: i64) -> Self {
        DeadLetter {
            position,
            key: record.key,
            payload: record.payload,
            reason_code: rejection.reason.code().to_string(),
            message: rejection.message,
            rejected_at_ms,
        }
    }
}

/// Decodes and normalizes one record; `now_ms` is the pipeline's clock (ingestion time, future skew).
pub fn normalize_record<L: SchemaLookup>(
    decoder: &RecordDecoder<L>,
    normalizer: &Normalizer,
    topic: &str,
    record: SourceRecord,
    now_ms: i64,
) -> Outcome {
    let position = SourcePosition { topic: topic.to_string(), partition: record.partition, offset: record.offset };
    let payload = record.payload.as_deref().unwrap_or_default();
    let decoded = decode_with_retry(&position, || decoder.decode_event(payload));
    let normalized = decoded.and_then(|fields| normalizer.normalize(fields, position.clone(), now_ms));
    match normalized {
        Ok(event) => Outcome::Event(event, record.already_stored),
        Err(rejection) => Outcome::Rejected(DeadLetter::of(record, position, rejection, now_ms)),
    }
}

pub fn normalize<'s, L: SchemaLookup + 'static>(
    records: Stream<'s, Epoch, Vec<SourceRecord>>,
    decoder: RecordDecoder<L>,
    normalizer: Normalizer,
    topic: String,
    tally: TallyBook,
) -> Stream<'s, Epoch, Vec<Normalized>> {
    records.unary::<timely::container::CapacityContainerBuilder<Vec<Normalized>>, _, _, _>(
        Pipeline,
        "Normalize",
        move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    // One clock reading per container: `ingested_at` and the future-skew check need
                    // milliseconds, not a system call per record.
                    for batch in data {
                        let now_ms = chrono::Utc::now().timestamp_millis();
                        for record in batch.drain(..) {
                            let outcome = normalize_record(&decoder, &normalizer, &topic, record, now_ms);
                            if let Outcome::Rejected(d) = &outcome {
                                let reason = RejectReason::from_code(&d.reason_code);
                                tally.with(epoch, |t| {
                                    if let Some(r) = reason {
                                        t.reject(r);
                                    }
                                });
                            }
                            let reading = ClockReading::of(&outcome);
                            session.give(Normalized::from(outcome));
                            session.give(Normalized::Clock(reading));
                        }
                    }
                });
            }
        },
    )
}
