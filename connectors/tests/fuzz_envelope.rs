//! Fuzzing on stable (issue 21): the connector envelope decoder on arbitrary bytes, on mutated JSON
//! messages and on mutated Confluent-framed Avro messages. It must return (a message, or why not),
//! never panic. Cases: `TOUCHPOINT_FUZZ_CASES` (default 10,000). Needs no service.

use proptest::prelude::*;
use touchpoint_connectors::channels::envelope::{decode, to_avro};
use touchpoint_schemas::{Channel, ChannelMessage, Purpose};

fn message() -> ChannelMessage {
    ChannelMessage {
        idempotency_key: "k-1".into(),
        channel: Channel::Email,
        tenant_id: "acme".into(),
        subject_id: "u-1".into(),
        recipient: Some("u@example.com".into()),
        template: Some("welcome".into()),
        data: serde_json::json!({"first_name": "Ada", "n": [1, 2]}),
        metadata: Default::default(),
        category: "onboarding".into(),
        purpose: Purpose::Marketing,
        priority: 1,
        event_id: "e-1".into(),
        event_type: "signed_up".into(),
        occurred_at: 1_764_000_000_000,
        rule_id: "welcome".into(),
        intents_version: "intents-1".into(),
        caps_version: "caps-1".into(),
        journey: None,
    }
}

fn mutate(text: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = text.to_vec();
    for &(at, kind, byte) in edits {
        if out.is_empty() {
            break;
        }
        let at = at % out.len();
        match kind % 3 {
            0 => out[at] = byte,
            1 => out.insert(at, byte),
            _ => out.truncate(at),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TOUCHPOINT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn envelopes(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8),
    ) {
        let json = serde_json::to_vec(&message()).expect("a message");
        let avro = to_avro(&message(), 7).expect("a message");
        for input in [bytes, mutate(&json, &edits), mutate(&avro, &edits)] {
            let _ = decode(Some(&input));
        }
    }
}

#[test]
fn the_seeds_decode() {
    assert_eq!(decode(Some(&serde_json::to_vec(&message()).unwrap())).unwrap(), message());
    assert_eq!(decode(Some(&to_avro(&message(), 7).unwrap())).unwrap(), message());
}
