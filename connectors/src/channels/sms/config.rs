use std::time::Duration;

use serde::Deserialize;

use crate::channels::config::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// Base URL of the provider API (e.g. `https://api.twilio.com`).
    pub url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    /// Sender number (E.164) or messaging service id.
    pub from: String,
    /// Where the provider reports delivery (`touchpoint deliveries` serves `/callbacks/sms`).
    #[serde(default)]
    pub status_callback: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
