//! Configuration of the normalizer, as written under `normalize:` in a pipeline file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// What to do with an `event_type` that is not in [`EventTypesConfig::known`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownEventTypes {
    /// Accept any well-formed type (the default: product teams add events without a deploy).
    #[default]
    Allow,
    /// Dead-letter types that are not listed.
    Reject,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventTypesConfig {
    /// Producer spelling → canonical name, e.g. `"Email Opened": email_opened`. Both sides are matched
    /// after snake_casing, so `"email-opened"` and `"EmailOpened"` hit the same alias.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Canonical types the pipeline knows. Only consulted when `unknown: reject`.
    #[serde(default)]
    pub known: Vec<String>,
    #[serde(default)]
    pub unknown: UnknownEventTypes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    #[serde(default)]
    pub event_types: EventTypesConfig,
    /// How far in the future `occurred_at` may lie before the event is rejected (producer clock skew).
    #[serde(default = "default_max_future_skew", with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Longest accepted `subject_id`, in characters, after trimming.
    #[serde(default = "default_max_subject_id_len")]
    pub max_subject_id_len: usize,
    /// Tenant of events that carry none.
    #[serde(default = "default_tenant")]
    pub default_tenant: String,
    /// Source of events that carry none.
    #[serde(default = "default_source")]
    pub default_source: String,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            event_types: EventTypesConfig::default(),
            max_future_skew: default_max_future_skew(),
            max_subject_id_len: default_max_subject_id_len(),
            default_tenant: default_tenant(),
            default_source: default_source(),
        }
    }
}

fn default_max_future_skew() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_subject_id_len() -> usize {
    256
}
fn default_tenant() -> String {
    "default".into()
}
fn default_source() -> String {
    "unknown".into()
}
