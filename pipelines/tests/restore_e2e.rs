//! Restores are complete, or the pipeline does not start (issue 21). A state record the pipeline cannot
//! read, or a changelog not read to its end in time, used to log a line and go on: the subjects
//! concerned started afresh (caps reset, sends repeated). Now the start fails and names the topic,
//! partition and offset, unless the operator accepts a partial restore.

mod common;

use common::TestPipeline;
use touchpoint::RunOptions;
use touchpoint_connectors::kafka::{AckedProducer, OutgoingRecord};

fn run(tp: &TestPipeline, accept_partial_restore: bool) -> anyhow::Result<touchpoint::RunReport> {
    touchpoint::run(tp.config.clone(), RunOptions { until_drained: true, accept_partial_restore, ..Default::default() })
}

#[test]
fn an_unreadable_state_record_stops_the_start_unless_a_partial_restore_is_accepted() {
    let tp = TestPipeline::new("it_restore_corrupt", &[]);
    tp.prepare();
    tp.produce(300, 5);
    run(&tp, false).expect("a first run writes the changelogs");
    let topic = tp.config.topics.caps_changelog(&tp.config.pipeline.group_id).name;
    let corrupt = OutgoingRecord {
        topic: topic.clone(),
        partition: None,
        key: Some(b"acme/u-corrupt".to_vec()),
        payload: Some(b"{not json".to_vec()),
        headers: vec![],
    };
    common::runtime().block_on(AckedProducer::new(&tp.config.kafka).unwrap().send_all(&[corrupt])).unwrap();

    let error = format!("{:#}", run(&tp, false).expect_err("an unreadable state record stops the start"));
    assert!(
        error.contains(&topic)
            && error.contains("partition")
            && error.contains("offset")
            && error.contains("unreadable"),
        "{error}"
    );
    assert!(error.contains("--accept-partial-restore"), "{error}");
    run(&tp, true).expect("with --accept-partial-restore the run goes on without the record");
}

#[test]
fn a_restore_that_cannot_finish_in_time_stops_the_start() {
    let tp = TestPipeline::new("it_restore_slow", &[("restore_timeout: 10m", "restore_timeout: 0s")]);
    tp.prepare();
    tp.produce(300, 6);
    // Empty changelogs are complete at once, however short the time.
    run(&tp, false).expect("a first run over empty changelogs");
    // State to restore: more records than one poll returns.
    let topic = tp.config.topics.caps_changelog(&tp.config.pipeline.group_id).name;
    let records: Vec<OutgoingRecord> = (0..50)
        .map(|i| OutgoingRecord {
            topic: topic.clone(),
            partition: None,
            key: Some(format!("acme/u-{i}").into_bytes()),
            payload: Some(b"{}".to_vec()),
            headers: vec![],
        })
        .collect();
    common::runtime().block_on(AckedProducer::new(&tp.config.kafka).unwrap().send_all(&records)).unwrap();
    let error = format!("{:#}", run(&tp, false).expect_err("the changelog cannot be read in no time"));
    assert!(error.contains("not read to its end") && error.contains("partition"), "{error}");
    run(&tp, true).expect("with --accept-partial-restore the run goes on");
}
