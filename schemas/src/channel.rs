//! The contract between the pipeline and the channel connectors: the message on `connector.<channel>`
//! ([`ChannelMessage`], `avro/channel_message.avsc`) and the outcome on `marketing.deliveries`
//! ([`Delivery`], `avro/delivery.avsc`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vocabulary::{Channel, Purpose};

/// An allowed send, as written to `connector.<channel>` (JSON; key `tenant/subject`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelMessage {
    pub idempotency_key: String,
    pub channel: Channel,
    pub tenant_id: String,
    pub subject_id: String,
    #[serde(default)]
    pub recipient: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    /// Merge fields for the template, or the raw content when there is none (a JSON object).
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub category: String,
    pub purpose: Purpose,
    #[serde(default)]
    pub priority: i32,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: i64,
    pub rule_id: String,
    pub intents_version: String,
    pub caps_version: String,
    #[serde(default)]
    pub journey: Option<JourneyStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyStep {
    pub journey: String,
    pub version: String,
    pub step: String,
}

/// A [`ChannelMessage`] of borrowed fields, written as the same JSON (field for field, in the same
/// order; tested). The pipeline writes one per allowed send from the decision it already holds: copying
/// every string into an owned message first was a third of that work (benches/README.md, "Profiling" 21).
/// Readers deserialize [`ChannelMessage`].
#[derive(Debug, Serialize)]
pub struct ChannelMessageRef<'a> {
    pub idempotency_key: &'a str,
    pub channel: Channel,
    pub tenant_id: &'a str,
    pub subject_id: &'a str,
    pub recipient: Option<&'a str>,
    pub template: Option<&'a str>,
    /// The `data` object.
    pub data: &'a BTreeMap<String, Value>,
    pub metadata: &'a BTreeMap<String, String>,
    pub category: &'a str,
    pub purpose: Purpose,
    pub priority: i32,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub occurred_at: i64,
    pub rule_id: &'a str,
    pub intents_version: &'a str,
    pub caps_version: &'a str,
    pub journey: Option<JourneyStepRef<'a>>,
}

/// [`JourneyStep`], borrowed.
#[derive(Debug, Serialize)]
pub struct JourneyStepRef<'a> {
    pub journey: &'a str,
    pub version: &'a str,
    pub step: &'a str,
}

/// No metadata (what the pipeline writes today), for [`ChannelMessageRef::metadata`].
pub static NO_METADATA: BTreeMap<String, String> = BTreeMap::new();

impl ChannelMessage {
    /// Our delivery id: deterministic from the idempotency key, so a resend after a crash carries the
    /// same id (SMTP Message-ID, webhook-id) and callbacks can always be matched.
    pub fn delivery_id(&self) -> String {
        delivery_id(self.channel, &self.idempotency_key)
    }

    /// A merge field: `data.<path>` first, then the envelope's own fields (`recipient`, `subject_id`,
    /// `tenant_id`, `category`, `event_type`, `metadata.<k>`).
    pub fn field(&self, path: &str) -> Option<Value> {
        let mut cur = &self.data;
        let mut found = true;
        for part in path.split('.') {
            match cur.get(part) {
                Some(v) => cur = v,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found && !cur.is_null() {
            return Some(cur.clone());
        }
        let text = match path {
            "recipient" => self.recipient.clone(),
            "subject_id" => Some(self.subject_id.clone()),
            "tenant_id" => Some(self.tenant_id.clone()),
            "category" => Some(self.category.clone()),
            "event_type" => Some(self.event_type.clone()),
            "idempotency_key" => Some(self.idempotency_key.clone()),
            p => p.strip_prefix("metadata.").and_then(|k| self.metadata.get(k).cloned()),
        };
        text.map(Value::String)
    }
}

/// `<channel>-<32 hex>`: a stable hash of the idempotency key (FNV-1a 128, no dependency needed).
pub fn delivery_id(channel: Channel, idempotency_key: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in idempotency_key.as_bytes() {
        h ^= u128::from(*b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{channel}-{h:032x}")
}

/// What happened to a message (`marketing.deliveries`, ClickHouse `deliveries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by the provider (SMTP 250, HTTP 2xx).
    Sent,
    /// The provider reported it reached the recipient (callback).
    Delivered,
    /// The address does not exist / the recipient rejected it (permanent).
    Bounced,
    /// Any other permanent failure.
    Failed,
    /// A transient failure; another attempt follows after a backoff.
    Retrying,
    /// Placed on `connector.<channel>.dlq` (after a permanent failure or the last attempt).
    DeadLettered,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Bounced => "bounced",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::DeadLettered => "dead_lettered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverySource {
    /// The connector's own send.
    Connector,
    /// A provider's status callback.
    Callback,
    /// Found at the provider by a status lookup after a crash (not sent again).
    Reconciled,
}

/// One delivery outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: String,
    pub idempotency_key: String,
    pub channel: Channel,
    pub tenant_id: String,
    pub subject_id: String,
    pub status: DeliveryStatus,
    pub attempt: i32,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    pub source: DeliverySource,
    /// Epoch milliseconds.
    pub at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> ChannelMessage {
        serde_json::from_value(serde_json::json!({
            "idempotency_key": "k1", "channel": "email", "tenant_id": "t", "subject_id": "s",
            "recipient": "a@example.com", "template": "welcome", "data": {"first_name": "Ada", "cart": {"total": 12}},
            "metadata": {"campaign": "c1"}, "category": "onboarding", "purpose": "marketing", "priority": 0,
            "event_id": "e", "event_type": "signup", "occurred_at": 1, "rule_id": "r",
            "intents_version": "v", "caps_version": "c", "journey": null
        }))
        .unwrap()
    }

    /// The borrowed message as the pipeline builds it from `m`'s fields.
    fn borrowed<'a>(m: &'a ChannelMessage, data: &'a BTreeMap<String, Value>) -> ChannelMessageRef<'a> {
        ChannelMessageRef {
            idempotency_key: &m.idempotency_key,
            channel: m.channel,
            tenant_id: &m.tenant_id,
            subject_id: &m.subject_id,
            recipient: m.recipient.as_deref(),
            template: m.template.as_deref(),
            data,
            metadata: &m.metadata,
            category: &m.category,
            purpose: m.purpose,
            priority: m.priority,
            event_id: &m.event_id,
            event_type: &m.event_type,
            occurred_at: m.occurred_at,
            rule_id: &m.rule_id,
            intents_version: &m.intents_version,
            caps_version: &m.caps_version,
            journey: m.journey.as_ref().map(|j| JourneyStepRef {
                journey: &j.journey,
                version: &j.version,
                step: &j.step,
            }),
        }
    }

    #[test]
    fn the_borrowed_message_writes_the_same_json() {
        let mut variants = vec![message()];
        let mut m = message();
        m.recipient = None;
        m.template = None;
        m.metadata.clear();
        m.priority = -3;
        m.journey = Some(JourneyStep { journey: "welcome".into(), version: "v\"2\"".into(), step: "é\n\u{1}".into() });
        m.data = serde_json::json!({"z": [1, 2.5, null], "a": {"nested": "\"q\""}, "m": "ü\t"});
        variants.push(m);
        let mut m = message();
        m.data = serde_json::json!({});
        m.event_id = "line\u{2028}sep".into();
        variants.push(m);
        for m in variants {
            let data: BTreeMap<String, Value> =
                m.data.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let owned = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::to_string(&borrowed(&m, &data)).unwrap(), owned);
            assert_eq!(serde_json::from_str::<ChannelMessage>(&owned).unwrap(), m);
        }
    }

    #[test]
    fn fields_come_from_data_then_the_envelope() {
        let m = message();
        assert_eq!(m.field("first_name"), Some(Value::String("Ada".into())));
        assert_eq!(m.field("cart.total"), Some(serde_json::json!(12)));
        assert_eq!(m.field("recipient"), Some(Value::String("a@example.com".into())));
        assert_eq!(m.field("metadata.campaign"), Some(Value::String("c1".into())));
        assert_eq!(m.field("last_name"), None);
    }

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        assert_eq!(delivery_id(Channel::Email, "k1"), delivery_id(Channel::Email, "k1"));
        assert_ne!(delivery_id(Channel::Email, "k1"), delivery_id(Channel::Email, "k2"));
        assert!(delivery_id(Channel::Sms, "k1").starts_with("sms-"));
        assert_eq!(delivery_id(Channel::Sms, "k1").len(), 4 + 32);
    }

    #[test]
    fn statuses_serialize_as_the_avro_symbols() {
        let symbols: Vec<String> = [
            DeliveryStatus::Sent,
            DeliveryStatus::Delivered,
            DeliveryStatus::Bounced,
            DeliveryStatus::Failed,
            DeliveryStatus::Retrying,
            DeliveryStatus::DeadLettered,
        ]
        .iter()
        .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().to_string())
        .collect();
        let schema: Value = serde_json::from_str(crate::avro::DELIVERY).unwrap();
        let avro = schema["fields"].as_array().unwrap().iter().find(|f| f["name"] == "status").unwrap()["type"]
            ["symbols"]
            .clone();
        assert_eq!(serde_json::to_value(symbols).unwrap(), avro);
    }
}
