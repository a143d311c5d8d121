//! Parsing the profiles topic: decode (JSON or Avro), check against the record key, or dead-letter.
//! The changes go to the guardrails like consent changes (`crate::stages::guardrails`).

use timely::dataflow::Stream;
use touchpoint_connectors::kafka::SourceRecord;
use touchpoint_operators::decode::{RecordDecoder, SchemaLookup, CONFLUENT_MAGIC};
use touchpoint_operators::normalize::Rejection;
use touchpoint_operators::profile::{avro_nulls_unset, parse_profile_record, parse_profile_tombstone, ProfileChange};
use touchpoint_schemas::{RejectReason, SourcePosition};

use super::consent::parse_table;
use super::normalize::{decode_or_wait, DeadLetter, RegistryUnavailable};
use super::Epoch;

/// A profile record: the change it makes, or its dead letter; or the record back when its schema
/// cannot be fetched now. A tombstone forgets the subject as of the record's timestamp.
#[allow(clippy::result_large_err, reason = "both sides carry the record: an outcome, or the record to retry")]
pub fn parse_profile<L: SchemaLookup>(
    decoder: &RecordDecoder<L>,
    topic: &str,
    default_tenant: &str,
    record: SourceRecord,
) -> Result<Result<ProfileChange, DeadLetter>, RegistryUnavailable> {
    let position = SourcePosition { topic: topic.to_string(), partition: record.partition, offset: record.offset };
    let now = chrono::Utc::now().timestamp_millis();
    let parsed = match (record.payload.as_deref(), record.key.as_deref()) {
        (None, Some(key)) => parse_profile_tombstone(key, record.timestamp_ms.unwrap_or(now)),
        (None, None) => Err(Rejection::new(RejectReason::InvalidKey, "tombstone without a key")),
        (Some(payload), key) => match decode_or_wait(|| decoder.decode(payload)) {
            Ok(decoded) => decoded.and_then(|fields| {
                let fields = if payload.first() == Some(&CONFLUENT_MAGIC) { avro_nulls_unset(fields) } else { fields };
                parse_profile_record(&fields, key, default_tenant)
            }),
            Err(why) => return Err(RegistryUnavailable { record, position, why }),
        },
    };
    Ok(parsed.map_err(|rejection| DeadLetter::of(record, position, rejection, now)))
}

/// Changes go to the guardrails, dead letters to the profiles dead-letter topic.
#[allow(clippy::result_large_err, reason = "both sides carry the record: an outcome, or the record to retry")]
pub fn parse_profile_stream<'s, L: SchemaLookup + 'static>(
    records: Stream<'s, Epoch, Vec<SourceRecord>>,
    decoder: RecordDecoder<L>,
    topic: String,
    default_tenant: String,
) -> (Stream<'s, Epoch, Vec<ProfileChange>>, Stream<'s, Epoch, Vec<DeadLetter>>) {
    parse_table("ParseProfiles", records, move |record| parse_profile(&decoder, &topic, &default_tenant, record))
}

#[cfg(test)]
mod tests {
    use touchpoint_operators::profile::{parse_profile_record, ProfileChange};

    /// Profile changes are exchanged between timely processes (by subject key group) in bincode, which
    /// cannot read a self-describing `serde_json::Value`: found by the multi-process test.
    #[test]
    fn profile_changes_cross_processes_in_timelys_format() {
        let serde_json::Value::Object(fields) = serde_json::json!({"subject_id": "u-1", "tenant_id": "acme",
            "updated_at": 1_795_600_800_000i64, "email": "ann@example.com", "devices": [{"token": "t-1"}],
            "attributes": {"plan": "pro", "score": 4.5, "tags": ["a", "b"], "gone": null}})
        else {
            unreachable!()
        };
        let change = parse_profile_record(&fields, Some(b"acme/u-1"), "default").expect("valid");
        let bytes = bincode::serialize(&vec![change.clone()]).expect("serialize");
        let back: Vec<ProfileChange> = bincode::deserialize(&bytes).expect("deserialize");
        assert_eq!(back, vec![change]);
    }
}
