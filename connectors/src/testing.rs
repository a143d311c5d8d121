//! Where the local stack's services listen, for integration tests and the demo. The ports match
//! `deploy/scripts/stack.sh`; each can be overridden with an environment variable so the same tests run
//! against other servers (an official ClickHouse, Apache Kafka, Redpanda, a Confluent registry).

/// Addresses of the services integration tests talk to.
#[derive(Debug, Clone)]
pub struct ServiceAddresses {
    pub kafka_brokers: String,
    pub clickhouse_url: String,
    pub schema_registry_url: String,
}

impl ServiceAddresses {
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        ServiceAddresses {
            kafka_brokers: var("TOUCHPOINT_KAFKA_BROKERS", "127.0.0.1:19092"),
            clickhouse_url: var("TOUCHPOINT_CLICKHOUSE_URL", "http://127.0.0.1:18123"),
            schema_registry_url: var("TOUCHPOINT_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081"),
        }
    }
}

/// A name that no other test run uses, for topics, consumer groups and databases.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{prefix}_{}_{:x}_{}", std::process::id(), nanos % 0xffff_ffff, COUNTER.fetch_add(1, Ordering::Relaxed))
}
