//! The normalization operator: decode, validate, canonicalize. Runs where the record was read (no
//! exchange): it needs no state, only the schema registry (cached lookups).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;
use timely::progress::operate::FrontierInterest;
use touchpoint_connectors::kafka::{bounded_text, OutgoingRecord, SourceRecord, MAX_REASON_BYTES};
use touchpoint_operators::decode::{DecodeError, RecordDecoder, SchemaLookup};
use touchpoint_operators::normalize::{Normalizer, Rejection};
use touchpoint_operators::read_event::ReadEvent;
use touchpoint_schemas::headers;
use touchpoint_schemas::{RejectReason, SourcePosition};

use super::registry_wait::RegistryWait;
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

/// The schema registry did not answer for a record: it is handed back whole, to be tried again later
/// (`super::registry_wait`); it is not at fault and is never dead-lettered for it.
#[derive(Debug)]
pub struct RegistryUnavailable {
    pub record: SourceRecord,
    pub position: SourcePosition,
    pub why: String,
}

/// Decodes a payload (JSON or Confluent Avro): the fields, a rejection, or "try again later".
pub fn decode_or_wait<T>(decode: impl FnOnce() -> Result<T, DecodeError>) -> Result<Result<T, Rejection>, String> {
    match decode() {
        Ok(fields) => Ok(Ok(fields)),
        Err(DecodeError::Reject(r)) => Ok(Err(r)),
        Err(DecodeError::Retry(why)) => Err(why),
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

/// A record's outcome: the event, or its dead letter.
pub type Outcome = Result<ReadEvent, DeadLetter>;

/// Decodes and normalizes one record; `now_ms` is the pipeline's clock (ingestion time, future skew).
/// A record that is not a valid event becomes its dead letter; one whose schema cannot be fetched now
/// comes back as [`RegistryUnavailable`].
#[allow(clippy::result_large_err, reason = "both sides carry the record: an outcome, or the record to retry")]
pub fn normalize_record<L: SchemaLookup>(
    decoder: &RecordDecoder<L>,
    normalizer: &Normalizer,
    topic: &str,
    record: SourceRecord,
    now_ms: i64,
) -> Result<Outcome, RegistryUnavailable> {
    let position = SourcePosition { topic: topic.to_string(), partition: record.partition, offset: record.offset };
    let payload = record.payload.as_deref().unwrap_or_default();
    let decoded = match decode_or_wait(|| decoder.decode_event(payload)) {
        Ok(decoded) => decoded,
        Err(why) => return Err(RegistryUnavailable { record, position, why }),
    };
    Ok(match decoded.and_then(|fields| normalizer.normalize(fields, position.clone(), now_ms)) {
        Ok(event) => Ok(ReadEvent { event, already_stored: record.already_stored }),
        Err(rejection) => Err(DeadLetter::of(record, position, rejection, now_ms)),
    })
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
    let scope = records.scope();
    let mut builder = OperatorBuilder::new("Normalize".to_owned(), records.scope());
    let mut input = builder.new_input(records, Pipeline);
    // Stateless: it works on what arrives and never waits for a frontier.
    builder.set_notify_for(0, FrontierInterest::Never);
    let (mut events_out, events) = vec_output::<ReadEvent>(&mut builder);
    let (mut rejected_out, rejected) = vec_output::<DeadLetter>(&mut builder);
    let (mut clocks_out, clocks) = vec_output::<ClockReading>(&mut builder);
    let activator = scope.activator_for(builder.operator_info().address);
    builder.build(move |_| {
        // Records behind one whose schema the registry cannot serve now.
        let mut wait = RegistryWait::default();
        move |_frontiers| {
            let (mut events_out, mut rejected_out, mut clocks_out) =
                (events_out.activate(), rejected_out.activate(), clocks_out.activate());
            // Everything goes through the queue, in arrival order: a record never overtakes one that
            // waits for the registry.
            input.for_each_stamp(|cap, data| {
                for batch in data {
                    wait.hold(&cap, 3, VecDeque::from(std::mem::take(batch)));
                }
            });
            wait.run_due(&activator, |caps, records| {
                let epoch = *caps[0].time();
                let mut events = events_out.session(&caps[0]);
                let mut rejected = rejected_out.session(&caps[1]);
                let mut clocks = clocks_out.session(&caps[2]);
                // One clock reading per container: `ingested_at` and the future-skew check need
                // milliseconds, not a system call per record.
                let now_ms = chrono::Utc::now().timestamp_millis();
                while let Some(record) = records.pop_front() {
                    let outcome = match normalize_record(&decoder, &normalizer, &topic, record, now_ms) {
                        Ok(outcome) => outcome,
                        Err(blocked) => return Some(blocked),
                    };
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
                None
            });
        }
    });
    NormalizedStreams { events, rejected, clocks }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use apache_avro::Schema;
    use timely::dataflow::operators::{Input, Inspect, Probe};
    use touchpoint_operators::decode::{confluent_encode, SchemaLookupError};
    use touchpoint_operators::normalize::NormalizeConfig;

    use super::*;

    /// The registry is down while the flag is set; afterwards it knows no schema (the record is then
    /// dead-lettered as `unknown_schema`, which is enough to see it come out).
    struct Registry(Arc<AtomicBool>);

    impl SchemaLookup for Registry {
        fn schema(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
            if self.0.load(Ordering::SeqCst) {
                Err(SchemaLookupError::Unavailable("connection refused".into()))
            } else {
                Err(SchemaLookupError::NotFound(id))
            }
        }
    }

    fn record(offset: i64, payload: Vec<u8>) -> SourceRecord {
        SourceRecord {
            partition: 0,
            offset,
            key: None,
            payload: Some(payload),
            timestamp_ms: None,
            already_stored: false,
        }
    }

    /// Used to sleep in the operator until the registry answered: the worker's `step` never returned,
    /// so this test would hang at its first step. Now the record, and the valid event behind it, wait in
    /// the operator while the worker steps on; they come out in order once the registry answers.
    #[test]
    fn a_registry_outage_holds_records_in_order_without_blocking_the_worker() {
        timely::execute_directly(|worker| {
            let down = Arc::new(AtomicBool::new(true));
            let seen: Rc<RefCell<Vec<(i64, bool)>>> = Rc::default();
            let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, records) = scope.new_input::<Vec<SourceRecord>>();
                let normalizer = Normalizer::new(NormalizeConfig::default()).expect("a normalizer");
                let streams = normalize(
                    records,
                    RecordDecoder::new(Registry(down.clone())),
                    normalizer,
                    "t".into(),
                    TallyBook::default(),
                );
                // The clock readings come one per record, in the order the records went through.
                let seen = seen.clone();
                let clocks = streams.clocks.inspect(move |c| seen.borrow_mut().push((c.offset, c.event_ms.is_some())));
                let (probe, _) = clocks.probe();
                (input, probe)
            });
            let valid = br#"{"event_id":"e1","event_type":"app_opened","occurred_at":1764000000000,"subject_id":"s","tenant_id":"acme","attributes":{}}"#;
            input.send(record(0, confluent_encode(7, b"\x02")));
            input.send(record(1, valid.to_vec()));
            input.advance_to(1);
            for _ in 0..50 {
                worker.step();
            }
            assert!(seen.borrow().is_empty(), "nothing overtakes the record that waits");
            assert!(probe.less_than(&1), "its epoch cannot complete");

            down.store(false, Ordering::SeqCst);
            while probe.less_than(&1) {
                worker.step();
            }
            assert_eq!(*seen.borrow(), [(0, false), (1, true)], "in order once the registry answers");
        });
    }
}
