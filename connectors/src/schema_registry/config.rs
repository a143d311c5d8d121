//! Schema Registry settings.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SchemaRegistryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        SchemaRegistryConfig { url: url.into(), timeout: default_timeout() }
    }
}
