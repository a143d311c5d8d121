//! Kafka connector against the real broker (Apache Kafka locally, or TOUCHPOINT_KAFKA_BROKERS).

use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use touchpoint_connectors::kafka::{
    ensure_topics, read_all, AckedProducer, KafkaConfig, OutgoingRecord, PartitionSource, SourceError, TopicSpec,
};
use touchpoint_connectors::testing::{unique_name, ServiceAddresses};

fn runtime() -> tokio::runtime::Runtime {
    touchpoint_connectors::io_runtime("test-io").expect("runtime")
}

/// Touchpoint's own client defaults (idempotent producers, librdkafka's batching), as in production.
fn config() -> KafkaConfig {
    KafkaConfig::new(ServiceAddresses::from_env().kafka_brokers)
}

fn records(topic: &str, n: usize) -> Vec<OutgoingRecord> {
    (0..n)
        .map(|i| OutgoingRecord {
            partition: None,
            topic: topic.into(),
            key: Some(b"k".to_vec()),
            payload: Some(format!("v{i}").into_bytes()),
            headers: vec![("h".into(), format!("{i}").into_bytes())],
        })
        .collect()
}

fn read_n(source: &mut PartitionSource, n: usize) -> Result<Vec<i64>, SourceError> {
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while offsets.len() < n && Instant::now() < deadline {
        if let Some(r) = source.poll(Duration::from_millis(100))? {
            offsets.push(r.offset);
        }
    }
    Ok(offsets)
}

#[test]
fn acked_records_are_read_back_with_headers() {
    let c = config();
    let topic = unique_name("it_kafka");
    let rt = runtime();
    rt.block_on(ensure_topics(&c, &[TopicSpec::new(&topic, 2)])).unwrap();
    let acks = rt.block_on(AckedProducer::new(&c).unwrap().send_all(&records(&topic, 50))).unwrap();
    assert_eq!(acks.len(), 50);
    let back = read_all(&c, &topic, Duration::from_millis(500), Duration::from_secs(60)).unwrap();
    assert_eq!(back.len(), 50);
    let mut payloads: Vec<String> =
        back.iter().map(|r| String::from_utf8(r.payload.clone().unwrap()).unwrap()).collect();
    payloads.sort_unstable();
    let mut want: Vec<String> = (0..50).map(|i| format!("v{i}")).collect();
    want.sort_unstable();
    assert_eq!(payloads, want);
    assert!(back.iter().all(|r| r.header("h").is_some()));
}

#[test]
fn the_source_resumes_exactly_at_the_committed_offset() {
    let c = config();
    let topic = unique_name("it_resume");
    let group = unique_name("it_group");
    let rt = runtime();
    rt.block_on(ensure_topics(&c, &[TopicSpec::new(&topic, 1)])).unwrap();
    rt.block_on(AckedProducer::new(&c).unwrap().send_all(&records(&topic, 20))).unwrap();

    let mut first = PartitionSource::open(&c, &group, &topic, vec![0], true).unwrap();
    assert_eq!(read_n(&mut first, 8).unwrap(), (0..8).collect::<Vec<_>>());
    first.commit(&[(0, 8)], CommitMode::Sync).unwrap();
    drop(first);

    let mut second = PartitionSource::open(&c, &group, &topic, vec![0], true).unwrap();
    assert_eq!(second.positions(), vec![(0, 8)]);
    assert_eq!(read_n(&mut second, 12).unwrap(), (8..20).collect::<Vec<_>>());
}

/// Resuming inside a multi-record producer batch: the broker answers from the batch's start and the
/// client drops the records before the requested offset, so the first record is the requested one.
/// (A broker that skipped the rest of the batch would make the source stop with `SkippedRecords` or
/// `NoRecordsAfterResume`: the guard stays, and this test holds the real broker to exactness.)
#[test]
fn resuming_inside_a_batch_is_exact() {
    let mut c = config();
    c.producer.insert("batch.num.messages".into(), "1000".into());
    c.producer.insert("linger.ms".into(), "100".into());
    let topic = unique_name("it_batched");
    let group = unique_name("it_group");
    let rt = runtime();
    rt.block_on(ensure_topics(&c, &[TopicSpec::new(&topic, 1)])).unwrap();
    rt.block_on(AckedProducer::new(&c).unwrap().send_all(&records(&topic, 20))).unwrap();

    let setup = PartitionSource::open(&c, &group, &topic, vec![0], false).unwrap();
    setup.commit(&[(0, 7)], CommitMode::Sync).unwrap();
    drop(setup);

    let mut source = PartitionSource::open(&c, &group, &topic, vec![0], true).unwrap();
    assert_eq!(read_n(&mut source, 13).unwrap(), (7..20).collect::<Vec<_>>(), "every record from the resume offset");
}

/// Several producers writing new partitions at once: every acknowledged record is read back, by
/// `read_all` and by a table source reading from the beginning, and the broker reports every log as
/// starting at 0 (the stand-in broker of earlier versions reported a later start in about 1 of 100
/// rounds, and a reader trusting it skipped offset 0). Many small rounds, since a race needs unlucky
/// timing.
#[test]
fn records_produced_concurrently_to_new_partitions_are_all_read_back() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::collections::BTreeSet;

    const ROUNDS: usize = 25;
    const PARTITIONS: i32 = 2;
    let c = config();
    let rt = runtime();
    let producers: Vec<AckedProducer> = (0..4).map(|_| AckedProducer::new(&c).unwrap()).collect();
    let watcher: BaseConsumer = c.consumer_config("it-log-start").create().unwrap();
    let (mut misreported, started) = (0, Instant::now());
    for round in 0..ROUNDS {
        let topic = unique_name("it_kafka_first");
        rt.block_on(ensure_topics(&c, &[TopicSpec::new(&topic, PARTITIONS)])).unwrap();
        let batches: Vec<Vec<OutgoingRecord>> = (0..producers.len())
            .map(|w| {
                (0..6)
                    .map(|i| OutgoingRecord {
                        partition: Some(i % PARTITIONS),
                        topic: topic.clone(),
                        key: None,
                        payload: Some(format!("p{w}-r{i}").into_bytes()),
                        headers: vec![],
                    })
                    .collect()
            })
            .collect();
        let acked = rt.block_on(futures::future::join_all(producers.iter().zip(&batches).map(|(p, b)| p.send_all(b))));
        let acked: BTreeSet<(i32, i64)> = acked.into_iter().flat_map(|a| a.unwrap()).collect();
        for p in 0..PARTITIONS {
            if watcher.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().0 > 0 {
                misreported += 1;
            }
        }

        let read: BTreeSet<(i32, i64)> = read_all(&c, &topic, Duration::from_millis(50), Duration::from_secs(30))
            .unwrap()
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect();
        assert_eq!(read, acked, "round {round}: read_all returns every acknowledged record");

        let mut table =
            PartitionSource::open_from_beginning(&c, &unique_name("g"), &topic, (0..PARTITIONS).collect()).unwrap();
        let mut from_table = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while from_table.len() < acked.len() && Instant::now() < deadline {
            if let Some(r) = table.poll(Duration::from_millis(100)).unwrap() {
                from_table.insert((r.partition, r.offset));
            }
        }
        assert_eq!(from_table, acked, "round {round}: a table source reads every acknowledged record");
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
    assert_eq!(misreported, 0, "partitions whose reported log start was above 0");
}

/// `send_all` waits for one round of delivery reports: acknowledged positions come back in the order of
/// the records, a record the broker cannot take fails the call after its attempts (its neighbours are
/// acknowledged, not repeated), and an empty call returns at once.
#[test]
fn send_all_reports_every_record_of_a_round() {
    let c = config();
    let topic = unique_name("it_kafka_round");
    let rt = runtime();
    rt.block_on(ensure_topics(&c, &[TopicSpec::new(&topic, 1)])).unwrap();
    let producer = AckedProducer::new(&c).unwrap();

    assert_eq!(rt.block_on(producer.send_all(&[])).unwrap(), vec![]);

    let acks = rt.block_on(producer.send_all(&records(&topic, 20))).unwrap();
    let offsets: Vec<i64> = acks
        .iter()
        .map(|&(partition, offset)| {
            assert_eq!(partition, 0);
            offset
        })
        .collect();
    let mut sorted = offsets.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "20 distinct positions: {offsets:?}");

    // Partition 7 of a one-partition topic: librdkafka refuses the record (at once or by report).
    let mut mixed = records(&topic, 3);
    mixed[1].partition = Some(7);
    let error = rt.block_on(producer.send_all(&mixed)).unwrap_err();
    assert!(format!("{error:#}").contains("1 of 3 records were not acknowledged"), "{error:#}");
    let back = read_all(&c, &topic, Duration::from_millis(500), Duration::from_secs(60)).unwrap();
    assert_eq!(back.len(), 22, "the 20, then the two good records of the mixed call once each");
}
