//! ClickHouse connector against the real server (`deploy/scripts/stack.sh`, or TOUCHPOINT_CLICKHOUSE_URL).

use touchpoint_connectors::clickhouse::batch_token;
use touchpoint_connectors::clickhouse::{migrate, ClickHouseConfig, EventStore};
use touchpoint_connectors::testing::{unique_name, ServiceAddresses};
use touchpoint_schemas::{NormalizedEvent, SourcePosition};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn config() -> ClickHouseConfig {
    ClickHouseConfig::new(ServiceAddresses::from_env().clickhouse_url, unique_name("it_ch"))
}

fn event(partition: i32, offset: i64) -> NormalizedEvent {
    NormalizedEvent {
        event_id: format!("e-{partition}-{offset}"),
        event_type: "email_opened".into(),
        occurred_at_ms: 1_795_600_800_123,
        subject_id: format!("user-{offset}"),
        tenant_id: "acme".into(),
        source: "web".into(),
        attributes_json: r#"{"campaign":"x"}"#.into(),
        ingested_at_ms: 1_795_600_900_000 + offset,
        position: SourcePosition { topic: "marketing.events".into(), partition, offset },
        late: offset % 2 == 1,
    }
}

#[test]
fn migrate_is_idempotent() {
    let rt = runtime();
    let c = config();
    let first = rt.block_on(migrate(&c)).unwrap();
    assert_eq!(
        first,
        vec![
            "0001_events",
            "0002_decisions",
            "0003_events_late",
            "0004_decisions_late",
            "0005_decisions_journey",
            "0006_journey_transitions",
            "0007_deliveries",
            "0008_profiles",
            "0009_decisions_recipient",
            "0010_decisions_quiet_hours",
            "0011_segment_memberships"
        ]
    );
    let second = rt.block_on(migrate(&c)).unwrap();
    assert!(second.is_empty(), "{second:?}");
}

#[test]
fn a_retried_batch_with_the_same_token_is_stored_once() {
    let rt = runtime();
    let c = config();
    rt.block_on(migrate(&c)).unwrap();
    let store = EventStore::new(&c);
    let batch: Vec<_> = (0..100).map(|o| event(1, o)).collect();
    let token = batch_token("events", &batch);
    rt.block_on(store.insert(&batch, &token)).unwrap();
    rt.block_on(store.insert(&batch, &token)).unwrap();
    assert_eq!(rt.block_on(store.count()).unwrap(), 100, "same token: deduplicated");

    let other: Vec<_> = (100..150).map(|o| event(1, o)).collect();
    let other_token = batch_token("events", &other);
    assert_ne!(token, other_token);
    rt.block_on(store.insert(&other, &other_token)).unwrap();
    assert_eq!(rt.block_on(store.count()).unwrap(), 150);
}

#[test]
fn rows_round_trip_with_millisecond_times() {
    let rt = runtime();
    let c = config();
    rt.block_on(migrate(&c)).unwrap();
    let store = EventStore::new(&c);
    let e = event(0, 7);
    rt.block_on(store.insert(std::slice::from_ref(&e), "t1")).unwrap();
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Back {
        occurred_ms: i64,
        event_type: String,
        attributes: String,
        kafka_offset: u64,
    }
    let back: Back = rt
        .block_on(
            store
                .client()
                .query(
                    "SELECT toUnixTimestamp64Milli(occurred_at) AS occurred_ms, event_type, attributes, \
                    kafka_offset FROM events",
                )
                .fetch_one(),
        )
        .unwrap();
    assert_eq!(back.occurred_ms, e.occurred_at_ms);
    assert_eq!(back.event_type, "email_opened");
    assert_eq!(back.attributes, e.attributes_json);
    assert_eq!(back.kafka_offset, 7);
}

#[test]
fn stored_offsets_and_recent_ids_are_what_a_restart_needs() {
    let rt = runtime();
    let c = config();
    rt.block_on(migrate(&c)).unwrap();
    let store = EventStore::new(&c);
    let batch: Vec<_> = [(0, 5), (0, 9), (0, 12), (1, 3), (1, 30)].iter().map(|&(p, o)| event(p, o)).collect();
    rt.block_on(store.insert(&batch, "t")).unwrap();
    let mut got = rt.block_on(store.stored_offsets("marketing.events", &[(0, 9), (1, 0)])).unwrap();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 9), (0, 12), (1, 3), (1, 30)]);
    assert!(rt.block_on(store.stored_offsets("other.topic", &[(0, 0)])).unwrap().is_empty());

    let recent = rt.block_on(store.event_ids_since(1_795_600_900_000 + 10)).unwrap();
    let mut ids: Vec<_> = recent.iter().map(|r| (r.event_id.as_str(), r.ingested_at_ms)).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![("e-0-12", 1_795_600_900_012), ("e-1-30", 1_795_600_900_030)]);
}
