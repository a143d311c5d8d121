use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::channels::config::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where messages are POSTed, unless `url_from_recipient` and the message names one.
    pub url: String,
    /// Use the message's `recipient` as the URL when it is an http(s) URL (per-subject endpoints).
    #[serde(default)]
    pub url_from_recipient: bool,
    /// The signing secret (its UTF-8 bytes are the HMAC key).
    pub secret: Secret,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra headers on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
