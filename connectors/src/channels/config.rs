//! The `channels` section of the pipeline file: one block per channel, each with the same shape
//! (`provider` settings of that channel, then `rate_limit`, `retry`, `breaker`, `concurrency`).

use std::path::PathBuf;

use serde::Deserialize;

use super::breaker::BreakerConfig;
use super::rate_limit::RateLimitConfig;
use super::retry::RetryPolicy;
use super::{email, push, sms, webhook};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Directory of message templates; relative to the pipeline file.
    #[serde(default)]
    pub templates: Option<PathBuf>,
    #[serde(default)]
    pub email: Option<ChannelConfig<email::EmailConfig>>,
    #[serde(default)]
    pub webhook: Option<ChannelConfig<webhook::WebhookConfig>>,
    #[serde(default)]
    pub push: Option<ChannelConfig<push::PushConfig>>,
    #[serde(default)]
    pub sms: Option<ChannelConfig<sms::SmsConfig>>,
    /// Where provider status callbacks are accepted (`touchpoint deliveries`), e.g. `127.0.0.1:18095`.
    #[serde(default)]
    pub callbacks_listen: Option<String>,
}

/// One channel: its provider, and the machinery every channel shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig<P> {
    pub provider: P,
    /// No limit when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Messages of one partition are sent in order, one at a time (per-subject order holds); this many
    /// partitions are worked on at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Records fetched per round before outcomes are made durable and offsets committed. Large enough
    /// that a round spans partitions (librdkafka hands out one partition's fetched records in a run),
    /// so `concurrency` partitions are really worked on at once.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_concurrency() -> usize {
    4
}
fn default_batch() -> usize {
    2000
}

/// A secret given inline (local profiles) or, better, by the name of an environment variable.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Secret {
    Env { env: String },
    Inline(String),
}

impl Secret {
    pub fn resolve(&self) -> anyhow::Result<String> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::Env { env } => {
                std::env::var(env).map_err(|_| anyhow::anyhow!("secret: environment variable {env} is not set"))
            }
        }
    }
}
