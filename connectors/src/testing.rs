//! Where the local stack's services listen, for integration tests and the demo. The ports match
//! `deploy/scripts/stack.sh`; each can be overridden with an environment variable so the same tests run
//! against other servers (an official ClickHouse, Apache Kafka, Redpanda, a Confluent registry).

/// Addresses of the services integration tests talk to.
#[derive(Debug, Clone)]
pub struct ServiceAddresses {
    pub kafka_brokers: String,
    pub clickhouse_url: String,
    pub schema_registry_url: String,
    /// The channel peers of `deploy/peers/` (HTTP side: control, records, webhook/push/SMS providers).
    pub peers_url: String,
    pub smtp_host: String,
    pub smtp_port: u16,
}

impl ServiceAddresses {
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        ServiceAddresses {
            kafka_brokers: var("TOUCHPOINT_KAFKA_BROKERS", "127.0.0.1:19092"),
            clickhouse_url: var("TOUCHPOINT_CLICKHOUSE_URL", "http://127.0.0.1:18123"),
            schema_registry_url: var("TOUCHPOINT_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081"),
            peers_url: var("TOUCHPOINT_PEERS_URL", "http://127.0.0.1:18090"),
            smtp_host: var("TOUCHPOINT_SMTP_HOST", "127.0.0.1"),
            smtp_port: var("TOUCHPOINT_SMTP_PORT", "18025").parse().unwrap_or(18025),
        }
    }
}

/// The test side of the channel peers (`deploy/peers/README.md`): behaviour per bucket, and what the
/// peers received.
#[derive(Debug, Clone)]
pub struct Peers {
    pub url: String,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(services: &ServiceAddresses) -> Self {
        Peers { url: services.peers_url.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    /// Sets a bucket's behaviour, e.g. `{"fail_rate": 0.3, "fail_status": 503, "secret": "s"}`.
    pub async fn control(&self, bucket: &str, control: serde_json::Value) -> anyhow::Result<()> {
        self.http.put(format!("{}/_control/{bucket}", self.url)).json(&control).send().await?.error_for_status()?;
        Ok(())
    }

    /// Every provider request of the bucket (webhook, push, SMS), failed ones included.
    pub async fn records(&self, bucket: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self.http.get(format!("{}/_records/{bucket}", self.url)).send().await?.error_for_status()?.json().await?)
    }

    /// The mail accepted over SMTP for recipients in domain `bucket`.
    pub async fn mail(&self, bucket: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self.http.get(format!("{}/_mail/{bucket}", self.url)).send().await?.error_for_status()?.json().await?)
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
