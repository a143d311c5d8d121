use std::time::Duration;

use serde::Deserialize;

use crate::channels::config::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Base URL of the provider API (e.g. `https://fcm.googleapis.com`).
    pub url: String,
    pub project: String,
    /// Bearer token.
    pub token: Secret,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
