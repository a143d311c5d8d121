//! Parsing the consent topic: decode (JSON or Avro, like events), validate, or dead-letter; and the
//! operator every table topic (consent, profiles) is parsed by.

use std::collections::VecDeque;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Stream;
use timely::progress::operate::FrontierInterest;
use touchpoint_connectors::kafka::SourceRecord;
use touchpoint_operators::consent::{
    check_record_key, parse_consent, parse_consent_fields, parse_tombstone_key, ConsentChange, ConsentFields,
};
use touchpoint_operators::decode::{RecordDecoder, SchemaLookup};
use touchpoint_schemas::SourcePosition;

use super::normalize::{decode_or_wait, DeadLetter, RegistryUnavailable};
use super::registry_wait::RegistryWait;
use super::{vec_output, Epoch};

/// A consent record: the change it makes, or its dead letter (bad payload, or a key that does not name
/// the entry it sets); or the record back when its schema cannot be fetched now.
#[allow(clippy::result_large_err, reason = "both sides carry the record: an outcome, or the record to retry")]
pub fn parse_consent_record<L: SchemaLookup>(
    decoder: &RecordDecoder<L>,
    topic: &str,
    default_tenant: &str,
    record: SourceRecord,
) -> Result<Result<ConsentChange, DeadLetter>, RegistryUnavailable> {
    let position = SourcePosition { topic: topic.to_string(), partition: record.partition, offset: record.offset };
    let parsed = match record.payload.as_deref() {
        // A tombstone: clear the entry named by the key.
        None => match record.key.as_deref() {
            Some(key) => parse_tombstone_key(key),
            None => Err(touchpoint_operators::normalize::Rejection::new(
                touchpoint_schemas::RejectReason::InvalidKey,
                "tombstone without a key",
            )),
        },
        // JSON records are read straight into the fields the table needs; Avro and anything the direct
        // reader does not take go through the decoder (same verdicts: tested in `consent`).
        Some(payload) => match ConsentFields::from_json(payload) {
            Some(fields) => parse_consent_fields(&fields, default_tenant),
            None => match decode_or_wait(|| decoder.decode(payload)) {
                Ok(decoded) => decoded.and_then(|fields| parse_consent(&fields, default_tenant)),
                Err(why) => return Err(RegistryUnavailable { record, position, why }),
            },
        }
        .and_then(|change| check_record_key(&change, record.key.as_deref()).map(|()| change)),
    };
    Ok(parsed.map_err(|rejection| DeadLetter::of(record, position, rejection, chrono::Utc::now().timestamp_millis())))
}

/// Changes go to the guardrails, dead letters to the consent dead-letter topic.
#[allow(clippy::result_large_err, reason = "both sides carry the record: an outcome, or the record to retry")]
pub fn parse_consent_stream<'s, L: SchemaLookup + 'static>(
    records: Stream<'s, Epoch, Vec<SourceRecord>>,
    decoder: RecordDecoder<L>,
    topic: String,
    default_tenant: String,
) -> (Stream<'s, Epoch, Vec<ConsentChange>>, Stream<'s, Epoch, Vec<DeadLetter>>) {
    parse_table("ParseConsent", records, move |record| parse_consent_record(&decoder, &topic, &default_tenant, record))
}

/// A table topic's records (consent, profiles) parsed by `parse` into changes and dead letters, in
/// order; a record whose schema the registry cannot serve now waits, with everything after it.
#[allow(clippy::type_complexity, reason = "two typed output streams")]
pub fn parse_table<'s, T: Clone + 'static>(
    name: &str,
    records: Stream<'s, Epoch, Vec<SourceRecord>>,
    mut parse: impl FnMut(SourceRecord) -> Result<Result<T, DeadLetter>, RegistryUnavailable> + 'static,
) -> (Stream<'s, Epoch, Vec<T>>, Stream<'s, Epoch, Vec<DeadLetter>>) {
    let scope = records.scope();
    let mut builder = OperatorBuilder::new(name.to_owned(), records.scope());
    let mut input = builder.new_input(records, Pipeline);
    // Stateless: it works on what arrives and never waits for a frontier.
    builder.set_notify_for(0, FrontierInterest::Never);
    let (mut changes_out, changes) = vec_output::<T>(&mut builder);
    let (mut rejected_out, rejected) = vec_output::<DeadLetter>(&mut builder);
    let activator = scope.activator_for(builder.operator_info().address);
    builder.build(move |_| {
        // Records behind one whose schema the registry cannot serve now (in order: a later change of an
        // entry must not overtake an earlier one).
        let mut wait = RegistryWait::default();
        move |_frontiers| {
            let (mut changes_out, mut rejected_out) = (changes_out.activate(), rejected_out.activate());
            input.for_each_stamp(|cap, data| {
                for batch in data {
                    wait.hold(&cap, 2, VecDeque::from(std::mem::take(batch)));
                }
            });
            wait.run_due(&activator, |caps, records| {
                let mut changes = changes_out.session(&caps[0]);
                let mut rejected = rejected_out.session(&caps[1]);
                while let Some(record) = records.pop_front() {
                    match parse(record) {
                        Ok(Ok(change)) => changes.give(change),
                        Ok(Err(dead)) => rejected.give(dead),
                        Err(blocked) => return Some(blocked),
                    }
                }
                None
            });
        }
    });
    (changes, rejected)
}
