//! Poison records never stop the pipeline (issue 21). A producer chooses what a rejection message
//! quotes: an event type of 600 KB used to make a dead letter of 1.2 MB that the broker refused, and
//! the dead-letter sink retried it forever (no offset committed, SIGTERM not honoured, the same record
//! read again after a restart). Now the reason is cut, a dead letter too large to write goes as a
//! reference (position and size, no value), and the events after it are processed.

mod common;

use std::time::Duration;

use common::{produce_json, TestPipeline};
use serde_json::json;
use touchpoint::RunOptions;
use touchpoint_connectors::kafka::{read_all, MAX_REASON_BYTES, MAX_RECORD_BYTES};
use touchpoint_schemas::headers;

#[test]
fn an_oversized_rejection_is_dead_lettered_bounded_and_the_next_event_is_processed() {
    let tp = TestPipeline::new("it_poison", &[]);
    tp.prepare();
    let event = |id: &str, event_type: String| {
        json!({"event_id": id, "event_type": event_type, "occurred_at": 1_764_000_000_000i64,
               "subject_id": "s1", "tenant_id": "acme", "attributes": {}})
    };
    // One key: the three records are read in this order from one partition.
    produce_json(
        &tp,
        &tp.config.topics.events.name,
        vec![
            // Its dead letter keeps the 600 KB original; the quoted reason is cut.
            ("s1".into(), event("poison-600k", "x".repeat(600_000))),
            // Its dead letter would weigh ~950 KB: written as a reference.
            ("s1".into(), event("poison-950k", "y".repeat(950_000))),
            ("s1".into(), event("valid-after", "app_opened".into())),
        ],
    );

    let config = tp.config.clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(touchpoint::run(config, RunOptions { until_drained: true, ..Default::default() }));
    });
    let report = finished
        .recv_timeout(Duration::from_secs(180))
        .expect("the run ends: a poison record must not stall it")
        .expect("the run succeeds");
    assert_eq!(report.totals.tally.received, 3);

    let dead =
        read_all(&tp.config.kafka, &tp.config.topics.dead_letter.name, Duration::from_secs(2), Duration::from_secs(60))
            .expect("reading the dead-letter topic");
    assert_eq!(dead.len(), 2, "both poison records are dead-lettered, once each");
    let header = |r: &touchpoint_connectors::kafka::ReadRecord, name: &str| -> Option<String> {
        r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let by_offset = |offset: &str| {
        dead.iter().find(|r| header(r, headers::SOURCE_OFFSET).as_deref() == Some(offset)).expect("a dead letter")
    };
    let (first, second) = (by_offset("0"), by_offset("1"));
    // In full, with its reason cut.
    assert!(first.payload.as_ref().is_some_and(|p| p.len() > 600_000));
    let reason = header(first, headers::ERROR_MESSAGE).expect("a reason");
    assert!(reason.len() <= MAX_REASON_BYTES && reason.contains("bytes)"), "{reason}");
    assert_eq!(header(first, headers::ERROR_CODE).as_deref(), Some("unknown_event_type"));
    // As a reference: no value, its size and position in headers.
    assert_eq!(second.payload, None);
    let bytes: usize = header(second, headers::ORIGINAL_BYTES).expect("the original size").parse().expect("a number");
    assert!(bytes > MAX_RECORD_BYTES, "{bytes}");
    assert_eq!(header(second, headers::SOURCE_TOPIC).as_deref(), Some(tp.config.topics.events.name.as_str()));

    // The event after them is stored, and the offsets moved past all three.
    assert_eq!(tp.stored_ids().into_keys().collect::<Vec<_>>(), ["valid-after"]);
    assert_eq!(tp.committed_offsets().values().sum::<i64>(), 3);
}

/// One very hot subject: 30,000 `app_opened` events, each an intent of the daily-deal rule. Its send
/// ledger used to grow by one key per intent, until its changelog record passed 1 MB; now the ledger
/// stops at `MAX_LEDGER_KEYS` and the rest are suppressed as `suppressed_ledger_full`.
#[test]
fn one_very_hot_subject_keeps_a_bounded_changelog_record() {
    use touchpoint_operators::send_ledger::MAX_LEDGER_KEYS;
    const EVENTS: usize = 30_000;
    let tp = TestPipeline::new("it_hot_subject", &[]);
    tp.prepare();
    let events = (0..EVENTS)
        .map(|i| {
            let event = json!({"event_id": format!("hot-{i}"), "event_type": "app_opened",
                "occurred_at": 1_764_000_000_000i64 + i as i64 * 1_000, "subject_id": "hot", "tenant_id": "acme",
                "attributes": {}});
            ("hot".to_string(), event)
        })
        .collect();
    produce_json(&tp, &tp.config.topics.events.name, events);

    let config = tp.config.clone();
    let report = touchpoint::run(config, RunOptions { until_drained: true, ..Default::default() }).expect("the run");
    assert_eq!(report.totals.tally.received, EVENTS as u64);

    let changelog = tp.config.topics.caps_changelog(&tp.config.pipeline.group_id).name;
    let records = read_all(&tp.config.kafka, &changelog, Duration::from_secs(2), Duration::from_secs(60))
        .expect("reading the caps changelog");
    let largest = records.iter().filter_map(|r| r.payload.as_ref().map(Vec::len)).max().expect("a changelog record");
    assert!(largest < 100_000, "the hot subject's changelog record weighs {largest} bytes");

    let kinds = common::query_lines(
        &tp,
        "SELECT concat(decision, '|', toString(count())) AS line FROM decisions FINAL GROUP BY decision ORDER BY decision",
    );
    assert_eq!(
        kinds,
        [
            format!("suppressed_consent|{MAX_LEDGER_KEYS}"),
            format!("suppressed_ledger_full|{}", EVENTS - MAX_LEDGER_KEYS)
        ],
        "every intent has a decision; once the ledger is full, none is sent"
    );
}

/// Epochs are bounded in bytes, not only in records (issue 21): 60 events of 20 KB each, with ticks too
/// slow to cut them (10 s) and `epochs.max_bytes` at 100 KB, make at least 10 epochs. A full epoch used
/// to be 50,000 records, whatever they weighed (50 GB of 1 MB records, times the epochs in flight).
/// Checked: with `max_bytes` at 1 GB this test fails.
#[test]
fn epochs_close_at_their_byte_bound() {
    let tp = TestPipeline::new(
        "it_epoch_bytes",
        &[("interval: 200ms", "interval: 10s"), ("max_bytes: 67108864", "max_bytes: 100000")],
    );
    tp.prepare();
    let blob = "x".repeat(20_000);
    let events = (0..60)
        .map(|i| {
            let event = json!({"event_id": format!("big-{i}"), "event_type": "page_viewed",
                "occurred_at": 1_764_000_000_000i64 + i * 1_000, "subject_id": "s", "tenant_id": "acme",
                "attributes": {"blob": blob}});
            ("s".to_string(), event)
        })
        .collect();
    produce_json(&tp, &tp.config.topics.events.name, events);
    let report =
        touchpoint::run(tp.config.clone(), RunOptions { until_drained: true, ..Default::default() }).expect("the run");
    assert_eq!(report.totals.tally.received, 60);
    assert!(report.totals.epochs >= 10, "{} epochs for 1.2 MB at 100 KB per epoch", report.totals.epochs);
    assert_eq!(tp.stored_ids().len(), 60);
}
