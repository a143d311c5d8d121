//! The normalization operator: decode, validate, canonicalize. Runs where the record was read (no
//! exchange): it needs no state, only the schema registry (cached lookups).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;
use timely::progress::operate::FrontierInterest;
use touchpoint_connectors::kafka::{bounded_text, OutgoingRecord, SourceRecord, MAX_REASON_BYTES};
use touchpoint_connectors::Backoff;
use touchpoint_operators::decode::{DecodeError, RecordDecoder, SchemaLookup};
use touchpoint_operators::normalize::{Normalizer, Rejection};
use touchpoint_operators::read_event::ReadEvent;
use touchpoint_schemas::headers;
use touchpoint_schemas::{RejectReason, SourcePosition};

use super::sinks::TopicRecord;
use super::tally::TallyBook;
use super::{vec_output, Epoch};

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
    pub fn of(outcome: &Result<ReadEvent, DeadLetter>) -> Self {
        match outcome {
            Ok(ReadEvent { event, .. }) => ClockReading {
                partition: event.position.partition,
                offset: event.position.offset,
                event_ms: Some(event.occurred_at_ms),
            },
            Err(d) => ClockReading { partition: d.position.partition, offset: d.position.offset, event_ms: None },
        }
    }
}

/// Decodes a payload (JSON or Confluent Avro). A schema registry outage blocks here and retries with
/// backoff: the record is not at fault, and later records of its partition must not overtake it.
pub fn decode_with_retry<T>(
    position: &SourcePosition,
    mut decode: impl FnMut() -> Result<T, DecodeError>,
) -> Result<T, Rejection> {
    const REGISTRY_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        match decode() {
            Ok(fields) => return Ok(fields),
            Err(DecodeError::Reject(r)) => return Err(r),
            Err(DecodeError::Retry(why)) => {
                tracing::warn!(%why, topic = %position.topic, partition = position.partition, offset = position.offset,
                    "schema registry unavailable; retrying");
                std::thread::sleep(REGISTRY_RETRY.delay(attempt));
                attempt += 1;
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
            // A producer chooses what a rejection quotes (an event type, a field): bounded.
            message: bounded_text(&rejection.message, MAX_REASON_BYTES),
            rejected_at_ms,
        }
    }
}

/// Decodes and normalizes one record; `now_ms` is the pipeline's clock (ingestion time, future skew).
/// A record that is not a valid event becomes its dead letter.
#[allow(clippy::result_large_err, reason = "the dead letter is an outcome that carries the record, not an error path")]
pub fn normalize_record<L: SchemaLookup>(
    decoder: &RecordDecoder<L>,
    normalizer: &Normalizer,
    topic: &str,
    record: SourceRecord,
    now_ms: i64,
) -> Result<ReadEvent, DeadLetter> {
    let position = SourcePosition { topic: topic.to_string(), partition: record.partition, offset: record.offset };
    let payload = record.payload.as_deref().unwrap_or_default();
    let decoded = decode_with_retry(&position, || decoder.decode_event(payload));
    match decoded.and_then(|fields| normalizer.normalize(fields, position.clone(), now_ms)) {
        Ok(event) => Ok(ReadEvent { event, already_stored: record.already_stored }),
        Err(rejection) => Err(DeadLetter::of(record, position, rejection, now_ms)),
    }
}

/// The normalize stage's outputs.
pub struct NormalizedStreams<'s> {
    pub events: Stream<'s, Epoch, Vec<ReadEvent>>,
    /// Rejected records, for the dead-letter topic.
    pub rejected: Stream<'s, Epoch, Vec<DeadLetter>>,
    /// One reading per record, valid or not, for the partition clocks.
    pub clocks: Stream<'s, Epoch, Vec<ClockReading>>,
}

pub fn normalize<'s, L: SchemaLookup + 'static>(
    records: Stream<'s, Epoch, Vec<SourceRecord>>,
    decoder: RecordDecoder<L>,
    normalizer: Normalizer,
    topic: String,
    tally: TallyBook,
) -> NormalizedStreams<'s> {
    let mut builder = OperatorBuilder::new("Normalize".to_owned(), records.scope());
    let mut input = builder.new_input(records, Pipeline);
    // Stateless: it works on what arrives and never waits for a frontier.
    builder.set_notify_for(0, FrontierInterest::Never);
    let (mut events_out, events) = vec_output::<ReadEvent>(&mut builder);
    let (mut rejected_out, rejected) = vec_output::<DeadLetter>(&mut builder);
    let (mut clocks_out, clocks) = vec_output::<ClockReading>(&mut builder);
    builder.build(move |_| {
        move |_frontiers| {
            let (mut events_out, mut rejected_out, mut clocks_out) =
                (events_out.activate(), rejected_out.activate(), clocks_out.activate());
            input.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let mut events = events_out.session(&cap);
                let mut rejected = rejected_out.session(&cap);
                let mut clocks = clocks_out.session(&cap);
                // One clock reading per container: `ingested_at` and the future-skew check need
                // milliseconds, not a system call per record.
                for batch in data {
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    for record in batch.drain(..) {
                        let outcome = normalize_record(&decoder, &normalizer, &topic, record, now_ms);
                        clocks.give(ClockReading::of(&outcome));
                        match outcome {
                            Ok(event) => events.give(event),
                            Err(dead) => {
                                if let Some(reason) = RejectReason::from_code(&dead.reason_code) {
                                    tally.with(epoch, |t| t.reject(reason));
                                }
                                rejected.give(dead);
                            }
                        }
                    }
                }
            });
        }
    });
    NormalizedStreams { events, rejected, clocks }
}
