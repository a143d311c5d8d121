//! Send intents from simple rules in the pipeline file ("on event type X send on channel Y with
//! category Z"), until journeys replace this source. Each intent carries a deterministic idempotency
//! key, so a replayed event never yields a second, different send.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use touchpoint_schemas::{NormalizedEvent, SourcePosition};

use crate::decode::event::string_fields;
use crate::fast_hash::FastHashMap;
use crate::normalize::snake_case;
use touchpoint_schemas::{Channel, Purpose, SubjectRef, AUTOMATION_TRIGGERED, TRIGGER_RULE_ATTRIBUTE};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentRule {
    pub id: String,
    /// Canonical event type that triggers the send.
    pub on: String,
    pub channel: Channel,
    #[serde(default = "marketing")]
    pub purpose: Purpose,
    pub category: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Higher wins when several intents of one subject compete in the same epoch.
    #[serde(default)]
    pub priority: i32,
    pub template: String,
    /// A segment (`pipelines/segments/`): only its members at the moment of the event get the send;
    /// for the others the rule does not fire (no intent, no decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

fn marketing() -> Purpose {
    Purpose::Marketing
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentsConfig {
    /// Event attribute holding the subject's IANA time zone (for calendar caps).
    #[serde(default = "default_tz_attribute")]
    pub time_zone_attribute: String,
    #[serde(default)]
    pub rules: Vec<IntentRule>,
}

fn default_tz_attribute() -> String {
    "time_zone".into()
}

impl Default for IntentsConfig {
    fn default() -> Self {
        IntentsConfig { time_zone_attribute: default_tz_attribute(), rules: vec![] }
    }
}

/// A message the pipeline would like to send; consent and caps decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendIntent {
    pub subject: SubjectRef,
    pub channel: Channel,
    pub purpose: Purpose,
    pub category: String,
    pub tags: Vec<String>,
    pub priority: i32,
    pub template: String,
    pub rule_id: String,
    pub ruleset_version: String,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at_ms: i64,
    pub time_zone: Option<String>,
    /// Where to deliver: the `email`, `phone` or `device_token` attribute (by channel), if present.
    pub recipient: Option<String>,
    pub idempotency_key: String,
    pub position: SourcePosition,
    /// The triggering event was late (see `crate::watermark`).
    #[serde(default)]
    pub late: bool,
    /// The journey step that emitted this intent (`None` for rule-driven intents).
    #[serde(default)]
    pub journey: Option<JourneyStepRef>,
    /// Message fields for the connector, from the send step's `payload` paths.
    #[serde(default)]
    pub payload: std::collections::BTreeMap<String, Value>,
    /// A send held by quiet hours, decided again: the instant of that decision (the window's end).
    /// Caps count and quiet hours look at this instant instead of the triggering event's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<i64>,
}

/// Which journey, version and step made an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyStepRef {
    pub journey: String,
    pub version: String,
    pub step: String,
}

impl SendIntent {
    /// The event time the intent is decided at: its triggering event's, or its release from quiet hours.
    pub fn decided_at_ms(&self) -> i64 {
        self.released_at_ms.unwrap_or(self.occurred_at_ms)
    }

    /// Competing intents of one subject are decided in this order: priority (high first), event time,
    /// then the idempotency key (so the order never depends on arrival).
    pub fn compete_order(a: &SendIntent, b: &SendIntent) -> std::cmp::Ordering {
        b.priority
            .cmp(&a.priority)
            .then(a.occurred_at_ms.cmp(&b.occurred_at_ms))
            .then_with(|| a.idempotency_key.cmp(&b.idempotency_key))
    }
}

/// The deterministic idempotency key of a rule-driven send: subject, rule, rule-set version and the
/// triggering event id.
pub fn idempotency_key(subject: &SubjectRef, rule_id: &str, version: &str, event_id: &str) -> String {
    let key = crate::fast_hash::KeyBytes::with_capacity(64)
        .part(&subject.tenant_id)
        .part(&subject.subject_id)
        .part(rule_id)
        .part(version)
        .part(event_id);
    crate::fast_hash::hex_id("tpk-", key.hash128())
}

/// An `intents` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IntentsError {
    #[error("intents.rules: rule id {0:?} is used twice")]
    DuplicateId(String),
    #[error("intents.rules.{0}: `on` names no event type")]
    NoEventType(String),
    #[error("intents: cannot compute the rule set's version: {0}")]
    Version(#[from] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct IntentRules {
    by_type: FastHashMap<String, Vec<IntentRule>>,
    /// Every rule by id, for direct triggers (`automation_triggered` naming a rule).
    by_id: FastHashMap<String, IntentRule>,
    time_zone_attribute: String,
    version: String,
}

impl IntentRules {
    pub fn new(config: &IntentsConfig) -> Result<Self, IntentsError> {
        let mut by_type: FastHashMap<String, Vec<IntentRule>> = FastHashMap::default();
        let mut ids = std::collections::HashSet::new();
        for r in &config.rules {
            if !ids.insert(r.id.as_str()) {
                return Err(IntentsError::DuplicateId(r.id.clone()));
            }
            let on = snake_case(&r.on);
            if on.is_empty() {
                return Err(IntentsError::NoEventType(r.id.clone()));
            }
            by_type.entry(on).or_default().push(r.clone());
        }
        let by_id = config.rules.iter().map(|r| (r.id.clone(), r.clone())).collect();
        let version = crate::version::config_version("intents", config)?;
        Ok(IntentRules { by_type, by_id, time_zone_attribute: config.time_zone_attribute.clone(), version })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// Whether a rule of this id exists (what a direct trigger may name).
    pub fn has_rule(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The segments the rules' `audience` names.
    pub fn audiences(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_type.values().flatten().filter_map(|r| Some((r.id.as_str(), r.audience.as_deref()?)))
    }

    /// The intents an event triggers (none for most events); `in_segment` says whether the event's
    /// subject is a member of a segment now (for rules with an `audience`). An `automation_triggered`
    /// event also fires the rule its `rule` attribute names (a direct trigger; audiences still apply).
    pub fn intents_for(&self, event: &NormalizedEvent, in_segment: impl Fn(&str) -> bool) -> Vec<SendIntent> {
        let on_type = self.by_type.get(&event.event_type).map(Vec::as_slice).unwrap_or_default();
        if event.event_type == AUTOMATION_TRIGGERED {
            let [named] = string_fields(&event.attributes_json, [TRIGGER_RULE_ATTRIBUTE]);
            // A rule that is itself `on: automation_triggered` fires once, not twice.
            let named =
                named.as_deref().and_then(|id| self.by_id.get(id)).filter(|r| !on_type.iter().any(|o| o.id == r.id));
            return self.intents_of(event, on_type.iter().chain(named), in_segment);
        }
        if on_type.is_empty() {
            return Vec::new();
        }
        self.intents_of(event, on_type.iter(), in_segment)
    }

    fn intents_of<'r>(
        &self,
        event: &NormalizedEvent,
        rules: impl Iterator<Item = &'r IntentRule> + Clone,
        in_segment: impl Fn(&str) -> bool,
    ) -> Vec<SendIntent> {
        if rules.clone().all(|r| r.audience.as_deref().is_some_and(|a| !in_segment(a))) {
            return Vec::new();
        }
        // Attributes are read only for triggering events, and only the ones an intent carries.
        let [time_zone, email, phone, device_token, webhook_url] = string_fields(
            &event.attributes_json,
            [self.time_zone_attribute.as_str(), "email", "phone", "device_token", "webhook_url"],
        );
        let text = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_string);
        let subject = SubjectRef::new(&event.tenant_id, &event.subject_id);
        rules
            .filter(|r| r.audience.as_deref().is_none_or(&in_segment))
            .map(|r| SendIntent {
                subject: subject.clone(),
                channel: r.channel,
                purpose: r.purpose,
                category: r.category.clone(),
                tags: r.tags.clone(),
                priority: r.priority,
                template: r.template.clone(),
                rule_id: r.id.clone(),
                ruleset_version: self.version.clone(),
                event_id: event.event_id.clone(),
                event_type: event.event_type.clone(),
                occurred_at_ms: event.occurred_at_ms,
                time_zone: text(&time_zone),
                recipient: match r.channel {
                    Channel::Email => text(&email),
                    Channel::Sms => text(&phone),
                    Channel::Push => text(&device_token),
                    Channel::Webhook => text(&webhook_url),
                },
                idempotency_key: idempotency_key(&subject, &r.id, &self.version, &event.event_id),
                position: event.position.clone(),
                late: event.late,
                journey: None,
                payload: Default::default(),
                released_at_ms: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, id: &str) -> NormalizedEvent {
        NormalizedEvent {
            event_id: id.into(),
            event_type: event_type.into(),
            occurred_at_ms: 1_795_600_800_000,
            subject_id: "u-1".into(),
            tenant_id: "acme".into(),
            source: "web".into(),
            attributes_json: r#"{"email":"ann@example.com","time_zone":"Europe/Berlin"}"#.into(),
            ingested_at_ms: 0,
            position: SourcePosition { topic: "t".into(), partition: 0, offset: 1 },
            late: false,
        }
    }

    impl IntentRules {
        fn intents_for_all(&self, event: &NormalizedEvent) -> Vec<SendIntent> {
            self.intents_for(event, |_| true)
        }
    }

    #[test]
    fn a_direct_trigger_fires_the_rule_it_names_once() {
        let config: IntentsConfig = serde_json::from_value(serde_json::json!({"rules": [
            {"id": "welcome", "on": "signed_up", "channel": "email", "category": "onboarding", "template": "welcome"},
            {"id": "on-trigger", "on": "automation_triggered", "channel": "push", "category": "ops", "template": "t"},
            {"id": "vip-offer", "on": "signed_up", "channel": "email", "category": "promo", "template": "offer", "audience": "vip"}
        ]}))
        .unwrap();
        let r = IntentRules::new(&config).unwrap();
        assert!(r.has_rule("welcome") && !r.has_rule("nope"));
        let direct = |rule: &str, member: bool| {
            let mut e = event(AUTOMATION_TRIGGERED, "t1");
            e.attributes_json = format!(r#"{{"rule":"{rule}","email":"ann@example.com"}}"#);
            let mut ids: Vec<String> =
                r.intents_for(&e, |s| member && s == "vip").into_iter().map(|i| i.rule_id).collect();
            ids.sort();
            ids
        };
        assert_eq!(direct("welcome", false), ["on-trigger", "welcome"], "the named rule, whatever its `on`");
        assert_eq!(direct("on-trigger", false), ["on-trigger"], "once, not twice");
        assert_eq!(direct("nope", false), ["on-trigger"]);
        assert_eq!(direct("vip-offer", false), ["on-trigger"], "an audience still applies");
        assert_eq!(direct("vip-offer", true), ["on-trigger", "vip-offer"]);
    }

    #[test]
    fn an_audience_limits_a_rule_to_the_segments_members() {
        let config: IntentsConfig = serde_json::from_value(serde_json::json!({"rules": [
            {"id": "vip-offer", "on": "signed_up", "channel": "email", "category": "promo", "template": "offer", "audience": "vip"},
            {"id": "welcome", "on": "signed_up", "channel": "email", "category": "onboarding", "template": "welcome"}
        ]}))
        .unwrap();
        let r = IntentRules::new(&config).unwrap();
        let rules_of = |member: bool| -> Vec<String> {
            r.intents_for(&event("signed_up", "e1"), |s| member && s == "vip").into_iter().map(|i| i.rule_id).collect()
        };
        assert_eq!(rules_of(true), ["vip-offer", "welcome"]);
        assert_eq!(rules_of(false), ["welcome"]);
        assert_eq!(r.audiences().collect::<Vec<_>>(), [("vip-offer", "vip")]);
    }

    fn rules() -> IntentRules {
        let yaml = serde_json::json!({"rules": [
            {"id": "welcome", "on": "Signed Up", "channel": "email", "category": "onboarding", "template": "welcome", "priority": 5},
            {"id": "welcome-push", "on": "signed_up", "channel": "push", "category": "onboarding", "template": "hi"},
            {"id": "receipt", "on": "order_completed", "channel": "email", "purpose": "transactional", "category": "transactional", "template": "receipt"}
        ]});
        IntentRules::new(&serde_json::from_value(yaml).unwrap()).unwrap()
    }

    #[test]
    fn matching_events_trigger_one_intent_per_rule() {
        let r = rules();
        let intents = r.intents_for_all(&event("signed_up", "e1"));
        assert_eq!(intents.len(), 2);
        let email = &intents[0];
        assert_eq!(
            (email.rule_id.as_str(), email.channel, email.purpose),
            ("welcome", Channel::Email, Purpose::Marketing)
        );
        assert_eq!(email.recipient.as_deref(), Some("ann@example.com"));
        assert_eq!(email.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(intents[1].recipient, None, "no device token attribute");
        assert!(r.intents_for_all(&event("page_viewed", "e2")).is_empty());
        assert_eq!(r.intents_for_all(&event("order_completed", "e3"))[0].purpose, Purpose::Transactional);
    }

    #[test]
    fn idempotency_keys_are_deterministic_and_distinct() {
        let r = rules();
        let a = r.intents_for_all(&event("signed_up", "e1"));
        let b = r.intents_for_all(&event("signed_up", "e1"));
        let c = r.intents_for_all(&event("signed_up", "e2"));
        assert_eq!(a[0].idempotency_key, b[0].idempotency_key);
        assert_ne!(a[0].idempotency_key, a[1].idempotency_key, "per rule");
        assert_ne!(a[0].idempotency_key, c[0].idempotency_key, "per triggering event");
    }

    #[test]
    fn competing_intents_are_ordered_by_priority_then_time_then_key() {
        let r = rules();
        let mut intents = r.intents_for_all(&event("signed_up", "e1"));
        intents.reverse();
        intents.sort_by(SendIntent::compete_order);
        assert_eq!(intents[0].rule_id, "welcome", "priority 5 first");
        let mut later = r.intents_for_all(&event("signed_up", "e9"));
        later[0].occurred_at_ms += 1;
        let mut all = [later[0].clone(), intents[0].clone()];
        all.sort_by(SendIntent::compete_order);
        assert_eq!(all[0].event_id, "e1", "same priority: earlier event first");
    }

    #[test]
    fn duplicate_rule_ids_are_refused() {
        let rule = serde_json::json!({"id": "x", "on": "a", "channel": "sms", "category": "c", "template": "t"});
        let cfg: IntentsConfig = serde_json::from_value(serde_json::json!({"rules": [rule.clone(), rule]})).unwrap();
        assert!(IntentRules::new(&cfg).is_err());
    }
}
