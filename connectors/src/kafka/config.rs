//! Kafka connection settings and topic specifications.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// librdkafka consumer properties, applied after Touchpoint's own (so they can override them).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka producer properties, applied after Touchpoint's own.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// Replication factor of topics the pipeline creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How long a command waits at start-up for a broker to answer (logging what it waits for every
    /// few seconds) before it gives up with an error that names the brokers.
    #[serde(default = "default_startup_wait", with = "humantime_serde")]
    pub startup_wait: Duration,
}

fn default_replication_factor() -> i32 {
    1
}

fn default_startup_wait() -> Duration {
    Duration::from_secs(60)
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            replication_factor: default_replication_factor(),
            startup_wait: default_startup_wait(),
        }
    }

    /// Consumer settings: manual offset management (the pipeline commits only what its sinks made
    /// durable), reading from the earliest offset when the group has none, and only committed records of
    /// transactional producers (librdkafka's default, written out: `exactly_once_v2` depends on it, and
    /// committed offsets are then fetched only once no transaction on them is pending).
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.consumer {
            c.set(k, v);
        }
        c
    }

    /// Producer settings: idempotent writes with all acknowledgements, so an acknowledged record is
    /// durable and a librdkafka-internal retry never writes it twice.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "60000");
        for (k, v) in &self.producer {
            c.set(k, v);
        }
        c
    }

    pub fn admin_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }
}

/// A topic the pipeline reads or writes, created with explicit settings (brokers may not auto-create
/// topics, and some report no configuration for topics created without any).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// `retention.ms`; absent means the broker default.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// `cleanup.policy=compact` (tables such as consent) instead of `delete`.
    #[serde(default)]
    pub compacted: bool,
}

fn default_partitions() -> i32 {
    4
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            compacted: false,
        }
    }

    /// The topic-level configs sent at creation.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        // Compacted with a retention: the latest value per key, and no key older than the retention.
        let policy = match (self.compacted, self.retention.is_some()) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            (false, _) => "delete",
        };
        let mut out = vec![("cleanup.policy", policy.to_string())];
        if let Some(r) = self.retention {
            out.push(("retention.ms", r.as_millis().to_string()));
        }
        out
    }
}
