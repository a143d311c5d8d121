//! The vocabulary every crate shares: channels, purposes, subjects. Connectors, the pipeline and the
//! wire types (`channel`) use these types, never their names as strings.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The event a trusted service's direct trigger (`POST /internal/automation/trigger`) becomes: its
/// attribute `journey` enters the subject into that journey (whatever the journey's own trigger), or
/// `rule` fires that intent rule. An event like any other: normalized, deduped, stored, audited.
pub const AUTOMATION_TRIGGERED: &str = "automation_triggered";
/// The attributes of an [`AUTOMATION_TRIGGERED`] event naming what it starts.
pub const TRIGGER_JOURNEY_ATTRIBUTE: &str = "journey";
pub const TRIGGER_RULE_ATTRIBUTE: &str = "rule";

/// How a message reaches a subject; each has its connector and its `connector.<channel>` topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Push, Channel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Self::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message is sent; consent is given per channel and purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Marketing,
    Transactional,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Marketing => "marketing",
            Purpose::Transactional => "transactional",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        [Purpose::Marketing, Purpose::Transactional].into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subject: its tenant and id.
///
/// Shared strings, because the keyed operator hands a subject to every map, set, timer, decision and
/// transition it touches (up to ten copies per event): a clone is two reference counts, not two
/// allocations. Serialized as two plain strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubjectRef {
    pub tenant_id: Arc<str>,
    pub subject_id: Arc<str>,
}

impl SubjectRef {
    pub fn new(tenant_id: &str, subject_id: &str) -> Self {
        SubjectRef { tenant_id: tenant_id.into(), subject_id: subject_id.into() }
    }
}
