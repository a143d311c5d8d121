//! End to end on the real services: 20,000 events (JSON and Avro, 5% malformed across every rejection
//! reason, 2% duplicates) through the pipeline with 2 workers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::{end_offsets, TestPipeline};
use touchpoint::RunOptions;
use touchpoint_connectors::kafka::read_all;
use touchpoint_generate::Expected;
use touchpoint_schemas::headers;
use touchpoint_schemas::RejectReason;

#[test]
fn events_land_in_clickhouse_once_and_rejects_in_the_dead_letter_topic() {
    let tp = TestPipeline::new("it_e2e", &[]);
    tp.prepare();
    let produced = tp.produce(20_000, 7);

    let mut valid = BTreeSet::new();
    let mut duplicates = 0u64;
    let mut rejected: HashMap<(i32, i64), (String, Vec<u8>)> = HashMap::new();
    for (record, (partition, offset)) in &produced {
        match &record.expected {
            Expected::Valid { event_id } => assert!(valid.insert(event_id.clone()), "generator repeated {event_id}"),
            Expected::Duplicate { .. } => duplicates += 1,
            Expected::Rejected { reason } => {
                rejected.insert((*partition, *offset), (reason.clone(), record.payload.clone()));
            }
        }
    }
    assert!(rejected.len() > 800 && duplicates > 300, "{} rejected, {duplicates} duplicates", rejected.len());

    let report =
        touchpoint::run(tp.config.clone(), RunOptions { workers: 2, until_drained: true, ..Default::default() })
            .expect("pipeline run");

    // ClickHouse holds exactly the valid unique events, each once.
    let stored = tp.stored_ids();
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    let stored: BTreeSet<String> = stored.into_keys().collect();
    assert_eq!(stored.len(), valid.len());
    assert!(
        stored == valid,
        "missing: {:?}, unexpected: {:?}",
        valid.difference(&stored).take(5).collect::<Vec<_>>(),
        stored.difference(&valid).take(5).collect::<Vec<_>>()
    );

    // The dead-letter topic holds exactly the malformed records, with reason and original bytes.
    let dlq = read_all(
        &tp.config.kafka,
        &tp.config.topics.dead_letter.name,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .unwrap();
    let mut seen = HashMap::new();
    for r in &dlq {
        let partition: i32 = r.header(headers::SOURCE_PARTITION).unwrap().parse().unwrap();
        let offset: i64 = r.header(headers::SOURCE_OFFSET).unwrap().parse().unwrap();
        assert_eq!(r.header(headers::SOURCE_TOPIC), Some(tp.config.topics.events.name.as_str()));
        assert!(!r.header(headers::ERROR_MESSAGE).unwrap_or_default().is_empty());
        assert!(r.header(headers::REJECTED_AT).is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
        let code = r.header(headers::ERROR_CODE).unwrap().to_string();
        assert!(
            seen.insert((partition, offset), (code, r.payload.clone().unwrap_or_default())).is_none(),
            "dead-lettered twice: {partition}/{offset}"
        );
    }
    assert_eq!(seen.len(), rejected.len());
    for (position, (reason, payload)) in &rejected {
        let (code, bytes) = seen.get(position).unwrap_or_else(|| panic!("{position:?} ({reason}) not in the DLQ"));
        assert_eq!(code, reason, "{position:?}");
        assert_eq!(bytes, payload, "{position:?}: dead letter must carry the original bytes");
    }
    let reasons: BTreeSet<&str> = seen.values().map(|(c, _)| c.as_str()).collect();
    assert_eq!(reasons.len(), RejectReason::EVENT.len(), "every reason covered: {reasons:?}");

    // Offsets: committed up to the end of every partition.
    assert_eq!(tp.committed_offsets(), end_offsets(&produced));

    // The run's accounting balances and matches.
    let t = &report.totals;
    assert_eq!(t.unbalanced_epochs, 0);
    assert_eq!(t.tally.received, 20_000);
    assert_eq!(t.tally.normalized, valid.len() as u64);
    assert_eq!(t.tally.duplicates, duplicates);
    assert_eq!(t.tally.dead_lettered_total(), rejected.len() as u64);
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, _) in rejected.values() {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    assert_eq!(t.tally.dead_lettered, by_reason);
}

#[test]
fn a_second_run_over_a_drained_topic_changes_nothing() {
    let tp = TestPipeline::new("it_rerun", &[]);
    tp.prepare();
    let produced = tp.produce(2_000, 3);
    let first = touchpoint::run(tp.config.clone(), RunOptions { until_drained: true, ..Default::default() }).unwrap();
    let stored = tp.stored_ids();
    let second = touchpoint::run(tp.config.clone(), RunOptions { until_drained: true, ..Default::default() }).unwrap();
    assert_eq!(first.totals.tally.received, 2_000);
    assert_eq!(second.totals.tally.received, 0, "resumed from the committed offsets");
    assert_eq!(tp.stored_ids(), stored);
    assert_eq!(tp.committed_offsets(), end_offsets(&produced));
}

/// The dataflow a run builds is the one `docs/topology.txt` describes (timely's own record of the
/// operators and channels it created, `touchpoint::describe`), for both ways of writing to Kafka. A
/// change to the dataflow fails here until the description is regenerated:
/// `TOUCHPOINT_BLESS_TOPOLOGY=1 cargo test -p touchpoint --features services --test pipeline_e2e topology`.
#[test]
fn the_built_dataflow_is_the_one_docs_topology_describes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/topology.txt");
    let mut described = String::new();
    for guarantee in ["exactly_once_keys", "exactly_once_v2"] {
        let tp =
            TestPipeline::new("it_topology", &[("guarantee: exactly_once_keys", &format!("guarantee: {guarantee}"))]);
        tp.prepare();
        tp.produce(10, 1);
        let options = RunOptions { workers: 1, until_drained: true, describe: true, ..Default::default() };
        let report = touchpoint::run(tp.config.clone(), options).expect("pipeline run");
        let topology = report.topology.expect("worker 0 describes the dataflow");
        assert!(topology.contains("Guardrails") && topology.contains("Normalize"), "{topology}");
        described.push_str(&format!("# processing.guarantee: {guarantee}\n{topology}\n"));
    }
    if std::env::var_os("TOUCHPOINT_BLESS_TOPOLOGY").is_some() {
        std::fs::write(&path, &described).expect("writing docs/topology.txt");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == described,
        "the built dataflow differs from docs/topology.txt (regenerate it with \
            TOUCHPOINT_BLESS_TOPOLOGY=1):\n{described}"
    );
}

/// ClickHouse down at start-up is said as such, not taken for a database that needs `migrate`.
#[test]
fn an_unreachable_clickhouse_is_named_at_start() {
    let tp = TestPipeline::new("it_ch_down", &[]);
    tp.prepare();
    let mut config = tp.config.clone();
    config.clickhouse.url = format!("http://127.0.0.1:{}", common::free_port());
    let error = touchpoint::run(config, RunOptions { until_drained: true, ..Default::default() })
        .expect_err("no ClickHouse, no run");
    let message = format!("{error:#}");
    assert!(message.contains("is unreachable") && !message.contains("migrate"), "{message}");
}
