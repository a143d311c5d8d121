//! Shared helpers of the pipeline's integration tests. They talk to the real services of
//! `deploy/scripts/stack.sh` (addresses from `ServiceAddresses::from_env`), each test in its own
//! topics, consumer group and ClickHouse database.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use touchpoint::PipelineConfig;
use touchpoint_connectors::clickhouse::{migrate, EventStore};
use touchpoint_connectors::kafka::ensure_topics;
use touchpoint_connectors::testing::{unique_name, ServiceAddresses};
use touchpoint_generate::{produce_generated, GeneratorConfig, ProducedRecord, Target};

pub fn runtime() -> tokio::runtime::Runtime {
    touchpoint_connectors::io_runtime("test-io").expect("runtime")
}

/// What the journeys directory of a test pipeline file reads by default: none.
pub const JOURNEYS_OFF: &str = "  dir: null";
/// The segments section's line in a test pipeline file: no segments unless a test asks for them.
/// (Not `JOURNEYS_OFF`, which a test replaces to turn journeys on.)
pub const SEGMENTS_OFF: &str = "  dir: ~";

/// The override that runs the journeys of `dir` (relative to the `pipelines` crate).
pub fn journeys_in(dir: &str) -> String {
    format!("  dir: {}", Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).display())
}

/// The rule-driven intents the guardrail tests exercise (the shipped file sends these through journeys).
pub const RULES: (&str, &str) = (
    "    - {id: daily-deal-push,",
    "    - {id: welcome-email, on: signed_up, channel: email, category: onboarding, template: welcome, priority: 10}
    - {id: cart-reminder, on: cart_updated, channel: email, category: promotional, template: cart_reminder}
    - {id: daily-deal-push,",
);

/// A test pipeline: the shipped local pipeline file with this test's own names.
pub struct TestPipeline {
    pub name: String,
    pub yaml: String,
    pub config: PipelineConfig,
    pub path: PathBuf,
}

impl TestPipeline {
    pub fn new(prefix: &str, overrides: &[(&str, &str)]) -> Self {
        let name = unique_name(prefix);
        let services = ServiceAddresses::from_env();
        let mut yaml = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.yaml"))
            .expect("reading config/local.yaml")
            .replace("name: marketing.events.dlq", &format!("name: {name}.dlq"))
            .replace("name: marketing.events.late", &format!("name: {name}.late"))
            .replace("name: marketing.deliveries", &format!("name: {name}.deliveries"))
            .replace(
                "templates: ../../schemas/templates",
                &format!("templates: {}", Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/templates").display()),
            )
            .replace("name: marketing.profiles.dlq", &format!("name: {name}.profiles.dlq"))
            .replace("name: marketing.profiles", &format!("name: {name}.profiles"))
            .replace("name: marketing.consent.dlq", &format!("name: {name}.consent.dlq"))
            .replace("name: marketing.consent", &format!("name: {name}.consent"))
            .replace("prefix: connector.", &format!("prefix: {name}.connector."))
            .replace("name: marketing.events", &format!("name: {name}.events"))
            .replace("group_id: touchpoint.normalization", &format!("group_id: {name}.group"))
            .replace("${TOUCHPOINT_CLICKHOUSE_DATABASE:-touchpoint}", &name)
            // Many pipelines run at once: each on its own metrics port.
            .replace("${TOUCHPOINT_METRICS_LISTEN:-127.0.0.1:19464}", &format!("127.0.0.1:{}", free_port()))
            // No journeys unless a test asks for them (`JOURNEYS_OFF` → a directory).
            .replace("  dir: ../journeys", JOURNEYS_OFF)
            .replace("  dir: ../segments", SEGMENTS_OFF)
            .replace("${TOUCHPOINT_KAFKA_BROKERS:-127.0.0.1:19092}", &services.kafka_brokers)
            .replace("${TOUCHPOINT_CLICKHOUSE_URL:-http://127.0.0.1:18123}", &services.clickhouse_url)
            .replace("${TOUCHPOINT_SCHEMA_REGISTRY_URL:-http://127.0.0.1:18081}", &services.schema_registry_url);
        for (from, to) in overrides {
            assert!(yaml.contains(from), "override {from:?} does not match the pipeline file");
            yaml = yaml.replace(from, to);
        }
        let path = std::env::temp_dir().join(format!("{name}.yaml"));
        std::fs::write(&path, &yaml).expect("writing the test pipeline file");
        let config = PipelineConfig::load(&path).expect("test pipeline file");
        TestPipeline { name, yaml, config, path }
    }

    /// Creates the topics and the ClickHouse database.
    pub fn prepare(&self) {
        let rt = runtime();
        rt.block_on(ensure_topics(&self.config.kafka, &self.config.topics.all())).expect("creating topics");
        rt.block_on(migrate(&self.config.clickhouse)).expect("migrating");
    }

    /// Generates `count` events (5% malformed of every kind, 2% duplicates, half Avro) and produces them
    /// to the source topic. Returns each record with the (partition, offset) it got.
    pub fn produce(&self, count: usize, seed: u64) -> Vec<ProducedRecord> {
        let config = GeneratorConfig { count, subjects: 2_000, seed, ..Default::default() };
        let rt = runtime();
        let c = &self.config;
        let target = Target::new(&c.schema_registry, &c.topics.events.name, c.topics.all());
        self.produce_profiles(config.subjects);
        produce_generated(&target, &c.kafka, &config, rt.handle()).expect("producing generated events").1
    }

    /// A profile (email, push device) for each of the generator's first `subjects` subjects: recipients
    /// come from profiles only, so without them every send would be `suppressed_no_recipient`.
    pub fn produce_profiles(&self, subjects: usize) {
        let profiles = touchpoint_generate::subject_profiles(subjects, &self.config.topics.profiles.name);
        runtime()
            .block_on(
                touchpoint_connectors::kafka::AckedProducer::new(&self.config.kafka)
                    .expect("producer")
                    .send_all(&profiles),
            )
            .expect("producing profiles");
    }

    pub fn store(&self) -> EventStore {
        EventStore::new(&self.config.clickhouse)
    }

    /// Every event id in ClickHouse, with how often it is stored.
    pub fn stored_ids(&self) -> BTreeMap<String, usize> {
        let ids = runtime().block_on(self.store().all_event_ids()).expect("reading events");
        let mut counts = BTreeMap::new();
        for id in ids {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// The group's committed offsets per partition of the source topic. Read without `require_stable`
    /// (a `read_uncommitted` handle): a `read_committed` one waits while a killed pipeline's transaction
    /// is pending, until the broker aborts it; offsets still pending are not committed either way.
    pub fn committed_offsets(&self) -> HashMap<i32, i64> {
        let topic = &self.config.topics.events.name;
        let consumer: BaseConsumer = self
            .config
            .kafka
            .consumer_config(&self.config.pipeline.group_id)
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.config.topics.events.partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(30)).expect("committed offsets");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

impl Drop for TestPipeline {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// End offset per partition, from the producer's acknowledgements (what was written, whatever a broker's
/// ListOffsets says).
pub fn end_offsets(produced: &[ProducedRecord]) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for (_, (p, o)) in produced {
        let e = ends.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    ends
}

/// RFC 3339 (UTC) of epoch milliseconds, for event payloads.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// Produces JSON values to `topic`, each under its key, with the pipeline's own producer settings, and
/// waits until the broker acknowledged them all.
pub fn produce_json(tp: &TestPipeline, topic: &str, records: Vec<(String, serde_json::Value)>) {
    let records: Vec<touchpoint_connectors::kafka::OutgoingRecord> = records
        .into_iter()
        .map(|(key, value)| touchpoint_connectors::kafka::OutgoingRecord {
            partition: None,
            topic: topic.to_string(),
            key: Some(key.into_bytes()),
            payload: Some(value.to_string().into_bytes()),
            headers: vec![],
        })
        .collect();
    let producer = touchpoint_connectors::kafka::AckedProducer::new(&tp.config.kafka).expect("producer");
    runtime().block_on(producer.send_all(&records)).expect("producing");
}

/// One string per row of `sql`, which must select a single String column named `line` (e.g.
/// `SELECT concat(a, '|', b) AS line FROM ...`): for comparing whole tables between runs.
pub fn query_lines(tp: &TestPipeline, sql: &str) -> Vec<String> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Line {
        line: String,
    }
    runtime()
        .block_on(tp.store().client().query(sql).fetch_all::<Line>())
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|l| l.line)
        .collect()
}

/// The single number `sql` selects (0 when the query fails, e.g. before the table has rows).
pub fn count(tp: &TestPipeline, sql: &str) -> u64 {
    runtime().block_on(tp.store().client().query(sql).fetch_one::<u64>()).unwrap_or(0)
}

/// Polls `sql` until it counts `at_least` or `within` passed; returns the last count.
pub fn wait_for_count(tp: &TestPipeline, sql: &str, at_least: u64, within: Duration) -> u64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = count(tp, sql);
        if n >= at_least || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every send record on the pipeline's connector topics: its idempotency key (the header, checked
/// against the payload) and channel.
pub fn connector_keys(tp: &TestPipeline) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for channel in ["email", "push", "sms", "webhook"] {
        let topic = format!("{}{channel}", tp.config.topics.connectors.prefix);
        let records = touchpoint_connectors::kafka::read_all(
            &tp.config.kafka,
            &topic,
            Duration::from_secs(1),
            Duration::from_secs(300),
        )
        .expect("reading a connector topic");
        for r in records {
            let key = r.header("tp.idempotency_key").expect("idempotency key header").to_string();
            out.push((key, channel.to_string()));
        }
    }
    out
}

/// Under `exactly_once_v2`: every send on the connector topics once, and exactly the allowed decisions
/// (more than 100 of them: the input must send). `why` says what makes "once" hard in the calling test.
pub fn assert_allowed_sent_once(tp: &TestPipeline, why: &str) {
    let sends = connector_keys(tp);
    let distinct: std::collections::BTreeSet<String> = sends.iter().map(|(k, _)| k.clone()).collect();
    assert!(distinct.len() > 100, "the input sends: {}", distinct.len());
    assert_eq!(sends.len(), distinct.len(), "no send on its topic twice, {why}");
    let allowed: std::collections::BTreeSet<String> =
        query_lines(tp, "SELECT idempotency_key AS line FROM decisions FINAL WHERE decision = 'allowed'")
            .into_iter()
            .collect();
    assert_eq!(distinct, allowed, "the committed sends are exactly the allowed decisions");
}

impl TestPipeline {
    /// Reads another test pipeline's source topic instead of its own (same input, separate everything
    /// else: group, state, connector topics, database).
    pub fn reading_events_of(mut self, other: &TestPipeline) -> Self {
        let own = format!("name: {}.events", self.name);
        assert!(self.yaml.contains(&own));
        self.yaml = self.yaml.replace(&own, &format!("name: {}.events", other.name));
        std::fs::write(&self.path, &self.yaml).expect("writing the test pipeline file");
        self.config = PipelineConfig::load(&self.path).expect("test pipeline file");
        self
    }

    /// The shipped file serves metrics on a fixed port; tests serve them on a free one (or none).
    pub fn metrics_port(&self) -> Option<u16> {
        self.config.pipeline.metrics_listen.as_deref().and_then(|l| l.rsplit(':').next()?.parse().ok())
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Child processes a test started, SIGKILLed when the test ends however it ends (a failed assertion must
/// not leave a pipeline running into the next tests).
#[derive(Default)]
pub struct KillOnDrop(pub Vec<u32>);

impl KillOnDrop {
    pub fn watch(&mut self, child: &std::process::Child) {
        self.0.push(child.id());
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// `touchpoint run` of `tp`'s pipeline file with 2 workers, as its own process: stdout discarded, the
/// log (stderr) to `log`.
pub fn spawn_run(tp: &TestPipeline, log: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("starting touchpoint")
}

/// A profile for each of `subjects` of `tenant`: `<subject>@example.com` and the push device
/// `tok-<subject>` (recipients come from profiles only). Produced before the events that need them.
#[allow(dead_code, reason = "not every test binary makes its own subjects")]
pub fn produce_profiles_of(tp: &TestPipeline, tenant: &str, subjects: impl IntoIterator<Item = String>) {
    let records = subjects
        .into_iter()
        .map(|s| {
            (
                format!("{tenant}/{s}"),
                serde_json::json!({"subject_id": s, "tenant_id": tenant, "updated_at": "2026-01-01T00:00:00Z",
                                   "email": format!("{s}@example.com"), "devices": [{"token": format!("tok-{s}")}]}),
            )
        })
        .collect();
    produce_json(tp, &tp.config.topics.profiles.name, records);
}
