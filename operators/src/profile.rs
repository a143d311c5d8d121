//! Subject profiles: where a message goes (email, phone, push devices), the subject's time zone and
//! locale, and the custom attributes templates merge, kept per subject next to consent and caps.
//!
//! - Every field carries the time it was set (`updated_at` of the record, or the event time of a
//!   `profile_updated` event), and the newest wins **per field**: records may arrive out of order and
//!   partial records never erase what they do not name. On equal times the larger value wins, so the
//!   result does not depend on the order records are applied in (a restore applies the pipeline's
//!   changelog first, then replays `marketing.profiles`).
//! - A cleared field (JSON `null`) keeps its time, so an older write arriving later cannot bring it
//!   back; a removed device likewise (`active: false`).
//! - A tombstone forgets the subject: every field set at or before the tombstone's record timestamp
//!   goes, and an update dated at or before it is ignored afterwards.
//! - Bounded per subject: at most [`MAX_DEVICES`] devices (the least recently set go first) and
//!   [`MAX_PROFILE_BYTES`] in all; custom attributes that do not fit are cut, and said so.
//!
//! A producer never chooses a recipient unless the pipeline file allows it for the purpose
//! ([`RecipientPolicy`]); see `docs/profiles.md`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use touchpoint_schemas::{Channel, Purpose, RejectReason, SubjectRef};

use crate::decode::event::FieldValue;
use crate::fast_hash::FastHashMap;
use crate::normalize::{parse_event_time_field, Rejection};
pub use crate::small_map::SmallMap;

/// A subject's profile is at most this large (its fields' text, as [`SubjectProfile::approx_bytes`]
/// counts it): custom attributes beyond it are cut.
pub const MAX_PROFILE_BYTES: usize = 16 * 1024;
/// Push devices per subject (active or removed): the least recently set are forgotten first.
pub const MAX_DEVICES: usize = 10;
const MAX_EMAIL_BYTES: usize = 254;
const MAX_PHONE_BYTES: usize = 32;
const MAX_LOCALE_BYTES: usize = 35;
const MAX_TOKEN_BYTES: usize = 512;
const MAX_PLATFORM_BYTES: usize = 32;
const MAX_ATTRIBUTE_NAME_BYTES: usize = 128;

/// A value with the time it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<T> {
    #[serde(rename = "v")]
    pub value: T,
    #[serde(rename = "at")]
    pub at_ms: i64,
}

/// A push device of a subject (its token is the key it is held under).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Device {
    // Always written: profile changes cross timely processes in bincode, which needs every field.
    #[serde(default)]
    pub platform: Option<String>,
}

/// One subject's profile, as the guardrails hold it and `<group>.profiles-changelog` stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Stamped<Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Stamped<Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<Stamped<Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Stamped<Option<String>>>,
    /// By token; `None`: removed (kept with its time so an older registration does not revive it).
    #[serde(default, skip_serializing_if = "SmallMap::is_empty")]
    pub devices: SmallMap<Stamped<Option<Device>>>,
    /// Custom attributes; `null`: cleared.
    #[serde(default, skip_serializing_if = "SmallMap::is_empty")]
    pub attributes: SmallMap<Stamped<Value>>,
    /// A tombstone's time: nothing dated at or before it is taken any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten_at_ms: Option<i64>,
}

/// Whether `(at, value)` replaces `old`: newer wins; on a tie, the larger value (order-independent).
fn replaces<T: PartialEq>(at_ms: i64, value: &T, old: Option<&Stamped<T>>, larger: impl Fn(&T, &T) -> bool) -> bool {
    match old {
        None => true,
        Some(old) => at_ms > old.at_ms || (at_ms == old.at_ms && value != &old.value && larger(value, &old.value)),
    }
}

fn set_text(slot: &mut Option<Stamped<Option<String>>>, at_ms: i64, value: &Option<String>) -> bool {
    if replaces(at_ms, value, slot.as_ref(), |a, b| a > b) {
        *slot = Some(Stamped { value: value.clone(), at_ms });
        true
    } else {
        false
    }
}

fn text_of(slot: &Option<Stamped<Option<String>>>) -> Option<&str> {
    slot.as_ref().and_then(|s| s.value.as_deref())
}

impl SubjectProfile {
    pub fn email(&self) -> Option<&str> {
        text_of(&self.email)
    }

    pub fn phone(&self) -> Option<&str> {
        text_of(&self.phone)
    }

    pub fn time_zone(&self) -> Option<&str> {
        text_of(&self.time_zone)
    }

    pub fn locale(&self) -> Option<&str> {
        text_of(&self.locale)
    }

    /// Active device tokens, the most recently set first.
    pub fn device_tokens(&self) -> Vec<&str> {
        let mut active: Vec<(&str, i64)> =
            self.devices.iter().filter(|(_, d)| d.value.is_some()).map(|(t, d)| (t.as_str(), d.at_ms)).collect();
        active.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        active.into_iter().map(|(t, _)| t).collect()
    }

    /// A custom attribute (`None` when absent or cleared).
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name).map(|a| &a.value).filter(|v| !v.is_null())
    }

    /// Where a message on `channel` goes: the email address, the phone number, or the most recently
    /// set active push device. Webhooks have no recipient in a profile (the connector's URL).
    pub fn recipient(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Email => self.email(),
            Channel::Sms => self.phone(),
            Channel::Push => self.device_tokens().first().copied(),
            Channel::Webhook => None,
        }
    }

    /// The fields templates merge (`profile.<name>`): custom attributes, then email, phone, locale and
    /// time zone (which win over an attribute of the same name).
    pub fn merge_fields(&self) -> Map<String, Value> {
        let mut out = self.custom_attributes();
        for (name, value) in [
            ("email", self.email()),
            ("phone", self.phone()),
            ("locale", self.locale()),
            ("time_zone", self.time_zone()),
        ] {
            if let Some(v) = value {
                out.insert(name.into(), Value::String(v.into()));
            }
        }
        out
    }

    /// The custom attributes that are set (cleared ones left out).
    pub fn custom_attributes(&self) -> Map<String, Value> {
        self.attributes.iter().filter(|(_, v)| !v.value.is_null()).map(|(k, v)| (k.clone(), v.value.clone())).collect()
    }

    /// One merge field by path (`profile.first_name`, `profile.address.city` in conditions), as
    /// [`Self::merge_fields`] has it, without building them all.
    pub fn field(&self, path: &[String]) -> Option<Value> {
        let (name, rest) = path.split_first()?;
        let standard = match name.as_str() {
            "email" => self.email(),
            "phone" => self.phone(),
            "locale" => self.locale(),
            "time_zone" => self.time_zone(),
            _ => None,
        };
        if let Some(text) = standard {
            // A text has no fields.
            return rest.is_empty().then(|| Value::String(text.into()));
        }
        let mut value = self.attribute(name)?;
        for key in rest {
            value = value.get(key)?;
        }
        Some(value.clone())
    }

    /// Nothing known, nothing to remember.
    pub fn is_empty(&self) -> bool {
        *self == SubjectProfile::default()
    }

    /// The newest time of any field (the version of the profile's ClickHouse row).
    pub fn updated_at_ms(&self) -> i64 {
        let texts = [&self.email, &self.phone, &self.time_zone, &self.locale].into_iter().flatten().map(|s| s.at_ms);
        texts
            .chain(self.devices.values().map(|d| d.at_ms))
            .chain(self.attributes.values().map(|a| a.at_ms))
            .chain(self.forgotten_at_ms)
            .max()
            .unwrap_or(0)
    }

    /// The bytes the profile's content takes, roughly as held: its text plus a stamp per field.
    pub fn approx_bytes(&self) -> usize {
        const STAMP: usize = 16;
        let text = |s: &Option<Stamped<Option<String>>>| {
            s.as_ref().map_or(0, |s| STAMP + s.value.as_ref().map_or(0, String::len))
        };
        let devices: usize = self
            .devices
            .iter()
            .map(|(t, d)| STAMP + t.len() + d.value.as_ref().and_then(|d| d.platform.as_ref()).map_or(0, String::len))
            .sum();
        let attributes: usize = self.attributes.iter().map(|(k, v)| STAMP + k.len() + json_bytes(&v.value)).sum();
        text(&self.email) + text(&self.phone) + text(&self.time_zone) + text(&self.locale) + devices + attributes
    }

    /// Applies an update field by field (newest wins); returns what changed and what was cut.
    pub fn apply(&mut self, update: &ProfileUpdate) -> Applied {
        let at = update.updated_at_ms;
        let mut applied = Applied::default();
        if self.forgotten_at_ms.is_some_and(|f| at <= f) {
            applied.ignored_as_forgotten = true;
            return applied;
        }
        let mut changed = false;
        for (slot, value) in [
            (&mut self.email, &update.email),
            (&mut self.phone, &update.phone),
            (&mut self.time_zone, &update.time_zone),
            (&mut self.locale, &update.locale),
        ] {
            if let Some(value) = value {
                changed |= set_text(slot, at, value);
            }
        }
        for (token, device) in &update.devices {
            if replaces(at, device, self.devices.get(token), |a, b| a > b) {
                self.devices.insert(token.clone(), Stamped { value: device.clone(), at_ms: at });
                changed = true;
            }
        }
        self.bound_devices();
        for (name, value) in &update.attributes {
            let old = self.attributes.get(name);
            if !replaces(at, value, old, larger_json) {
                continue;
            }
            let previous = self.attributes.insert(name.clone(), Stamped { value: value.clone(), at_ms: at });
            if self.approx_bytes() > MAX_PROFILE_BYTES {
                // Put back what was there: the profile stays as it was for this attribute.
                match previous {
                    Some(p) => self.attributes.insert(name.clone(), p),
                    None => self.attributes.remove(name),
                };
                applied.cut.push(name.clone());
            } else {
                changed = true;
            }
        }
        // Profiles change rarely and are held long: no spare room per subject.
        self.devices.shrink_to_fit();
        self.attributes.shrink_to_fit();
        applied.changed = changed;
        applied
    }

    /// Forgets every field set at or before `at_ms`, and takes nothing dated at or before it later.
    pub fn forget(&mut self, at_ms: i64) -> bool {
        let before = self.clone();
        for slot in [&mut self.email, &mut self.phone, &mut self.time_zone, &mut self.locale] {
            if slot.as_ref().is_some_and(|s| s.at_ms <= at_ms) {
                *slot = None;
            }
        }
        self.devices.retain(|_, d| d.at_ms > at_ms);
        self.attributes.retain(|_, a| a.at_ms > at_ms);
        self.forgotten_at_ms = Some(self.forgotten_at_ms.map_or(at_ms, |f| f.max(at_ms)));
        *self != before
    }

    /// Keeps at most [`MAX_DEVICES`]: removed devices go first, then the least recently set.
    fn bound_devices(&mut self) {
        while self.devices.len() > MAX_DEVICES {
            let oldest = self
                .devices
                .iter()
                .min_by(|a, b| (a.1.value.is_some(), a.1.at_ms, a.0).cmp(&(b.1.value.is_some(), b.1.at_ms, b.0)))
                .map(|(t, _)| t.clone());
            match oldest {
                Some(t) => self.devices.remove(&t),
                None => break,
            };
        }
    }
}

/// A total order on JSON values for ties (equal times): by their text.
fn larger_json(a: &Value, b: &Value) -> bool {
    let (a, b) = (a.to_string(), b.to_string());
    a > b
}

fn json_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 16,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|v| json_bytes(v) + 1).sum::<usize>(),
        Value::Object(o) => 2 + o.iter().map(|(k, v)| k.len() + 4 + json_bytes(v)).sum::<usize>(),
    }
}

/// What applying a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub changed: bool,
    /// Custom attributes not taken: the profile would have grown past [`MAX_PROFILE_BYTES`].
    pub cut: Vec<String>,
    /// The update is dated at or before the subject's tombstone.
    pub ignored_as_forgotten: bool,
}

/// A partial update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    pub subject: SubjectRef,
    pub updated_at_ms: i64,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub time_zone: Option<Option<String>>,
    pub locale: Option<Option<String>>,
    /// Token → the device (`None`: removed).
    pub devices: Vec<(String, Option<Device>)>,
    /// Name → value (`null`: cleared). Carried as JSON text: changes cross timely processes in
    /// bincode, which cannot read a self-describing `Value`.
    #[serde(with = "json_text")]
    pub attributes: Vec<(String, Value)>,
}

/// `(name, value)` pairs with each value as its JSON text, for formats that are not self-describing.
mod json_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(pairs: &[(String, Value)], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.to_string())).collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Value)>, D::Error> {
        let texts: Vec<(String, String)> = Vec::deserialize(d)?;
        texts.into_iter().map(|(k, t)| serde_json::from_str(&t).map(|v| (k, v)).map_err(D::Error::custom)).collect()
    }
}

/// One record of `marketing.profiles`, or a `profile_updated` event, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProfileChange {
    Update(ProfileUpdate),
    /// A tombstone: forget the subject (as of `at_ms`, the record's timestamp).
    Forget {
        subject: SubjectRef,
        at_ms: i64,
    },
}

impl ProfileChange {
    pub fn subject(&self) -> &SubjectRef {
        match self {
            ProfileChange::Update(u) => &u.subject,
            ProfileChange::Forget { subject, .. } => subject,
        }
    }
}

/// One worker's profiles.
#[derive(Debug, Default)]
pub struct ProfileTable {
    profiles: FastHashMap<SubjectRef, SubjectProfile>,
}

impl ProfileTable {
    pub fn new(profiles: FastHashMap<SubjectRef, SubjectProfile>) -> Self {
        ProfileTable { profiles }
    }

    pub fn get(&self, subject: &SubjectRef) -> Option<&SubjectProfile> {
        self.profiles.get(subject)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// The subjects with a profile.
    pub fn subjects(&self) -> impl Iterator<Item = &SubjectRef> {
        self.profiles.keys()
    }

    /// Applies a change; a subject left with nothing (and no tombstone time) is dropped.
    pub fn apply(&mut self, change: &ProfileChange) -> Applied {
        let subject = change.subject();
        let profile = self.profiles.entry(subject.clone()).or_default();
        let applied = match change {
            ProfileChange::Update(u) => profile.apply(u),
            ProfileChange::Forget { at_ms, .. } => Applied { changed: profile.forget(*at_ms), ..Applied::default() },
        };
        if profile.is_empty() {
            self.profiles.remove(subject);
        }
        applied
    }
}

/// Whether an event may name the recipient of the sends it triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientPolicy {
    /// Only the profile says where a message goes; a recipient on the event is ignored.
    #[default]
    ProfileOnly,
    /// The event's recipient (`email`, `phone`, `device_token`, `webhook_url`) wins when present,
    /// else the profile's.
    EventMayOverride,
}

impl RecipientPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientPolicy::ProfileOnly => "profile_only",
            RecipientPolicy::EventMayOverride => "event_may_override",
        }
    }
}

/// `profiles:` in the pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Events of this type update the subject's profile with their attributes.
    #[serde(default = "default_update_event")]
    pub update_event: String,
    #[serde(default)]
    pub recipients: RecipientsConfig,
}

fn default_update_event() -> String {
    "profile_updated".into()
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig { update_event: default_update_event(), recipients: RecipientsConfig::default() }
    }
}

/// `profiles.recipients`: the policy per purpose.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientsConfig {
    #[serde(default)]
    pub default: RecipientPolicy,
    #[serde(default)]
    pub by_purpose: HashMap<Purpose, RecipientPolicy>,
}

impl RecipientsConfig {
    pub fn policy(&self, purpose: Purpose) -> RecipientPolicy {
        self.by_purpose.get(&purpose).copied().unwrap_or(self.default)
    }
}

/// Where a send's recipient came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientSource {
    #[default]
    Profile,
    /// The event named it and the policy allows that.
    Event,
    /// The channel needs none (a webhook goes to the connector's URL).
    NotNeeded,
    /// Nowhere: the send is suppressed.
    Missing,
}

impl RecipientSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientSource::Profile => "profile",
            RecipientSource::Event => "event",
            RecipientSource::NotNeeded => "not_needed",
            RecipientSource::Missing => "missing",
        }
    }
}

/// The recipient of a send: its address, where it came from, and whether the event named one that was
/// not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: Option<String>,
    pub source: RecipientSource,
    pub event_ignored: bool,
}

/// Resolves where a send on `channel` goes: the profile's address, or (when `policy` allows) the one
/// the event named.
pub fn resolve_recipient(
    profile: Option<&SubjectProfile>,
    channel: Channel,
    policy: RecipientPolicy,
    from_event: Option<&str>,
) -> Recipient {
    let from_profile = profile.and_then(|p| p.recipient(channel));
    let from_event = from_event.filter(|s| !s.trim().is_empty());
    match (policy, from_event, from_profile) {
        (RecipientPolicy::EventMayOverride, Some(e), _) => {
            Recipient { address: Some(e.to_string()), source: RecipientSource::Event, event_ignored: false }
        }
        // Said only when the event named another address than the profile's (an override attempt).
        (_, event, Some(p)) => Recipient {
            address: Some(p.to_string()),
            source: RecipientSource::Profile,
            event_ignored: event.is_some_and(|e| !e.trim().eq_ignore_ascii_case(p))
                && policy == RecipientPolicy::ProfileOnly,
        },
        (_, event, None) => Recipient {
            address: None,
            source: if channel == Channel::Webhook { RecipientSource::NotNeeded } else { RecipientSource::Missing },
            event_ignored: event.is_some(),
        },
    }
}

/// What a profile names as a channel's recipient, for reasons ("no email address").
pub fn recipient_noun(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email address",
        Channel::Sms => "phone number",
        Channel::Push => "active push device",
        Channel::Webhook => "webhook URL",
    }
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidProfileField, message)
}

fn check_email(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = s.len() <= MAX_EMAIL_BYTES
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("`email` {:?} is not an email address", truncate(s)))
    }
}

fn check_phone(s: &str) -> Result<String, String> {
    let s = s.trim();
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let ok = s.len() <= MAX_PHONE_BYTES
        && (4..=15).contains(&digits)
        && s.chars().enumerate().all(|(i, c)| c.is_ascii_digit() || " -().".contains(c) || (i == 0 && c == '+'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("`phone` {:?} is not a phone number (E.164: + and 4 to 15 digits)", truncate(s)))
    }
}

fn check_time_zone(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.parse::<chrono_tz::Tz>() {
        Ok(_) => Ok(s.to_string()),
        Err(_) => Err(format!("`time_zone` {:?} is not an IANA time zone", truncate(s))),
    }
}

fn check_locale(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty()
        && s.len() <= MAX_LOCALE_BYTES
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(s.to_string())
    } else {
        Err(format!("`locale` {:?} is not a locale tag (e.g. de-DE)", truncate(s)))
    }
}

fn check_token(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= MAX_TOKEN_BYTES && !s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(s.to_string())
    } else {
        Err(format!("device token {:?} is empty, longer than {MAX_TOKEN_BYTES} bytes or has spaces", truncate(s)))
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A text field of an update: absent, `null` (clear) or a checked string.
fn text_field(
    map: &Map<String, Value>,
    name: &str,
    check: fn(&str) -> Result<String, String>,
) -> Result<Option<Option<String>>, String> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => check(s).map(|v| Some(Some(v))),
        Some(_) => Err(format!("`{name}` must be a string or null")),
    }
}

/// `devices: [{token, platform?, active?}]` (active defaults to true; false removes the device).
fn devices_field(value: &Value) -> Result<Vec<(String, Option<Device>)>, String> {
    let Value::Array(items) = value else { return Err("`devices` must be a list of {token, platform, active}".into()) };
    if items.len() > MAX_DEVICES {
        return Err(format!("`devices` names {} devices; at most {MAX_DEVICES}", items.len()));
    }
    items
        .iter()
        .map(|item| {
            let Value::Object(d) = item else {
                return Err("each of `devices` must be an object with a `token`".into());
            };
            let token = match d.get("token") {
                Some(Value::String(t)) => check_token(t)?,
                _ => return Err("each of `devices` needs a string `token`".into()),
            };
            let platform = match d.get("platform") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if p.len() <= MAX_PLATFORM_BYTES => Some(p.trim().to_string()),
                Some(_) => return Err(format!("`platform` of device {token:?} must be a string of at most 32 bytes")),
            };
            let active = match d.get("active") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(format!("`active` of device {token:?} must be true or false")),
            };
            Ok((token, active.then_some(Device { platform })))
        })
        .collect()
}

fn attributes_field(value: &Value) -> Result<Vec<(String, Value)>, String> {
    let Value::Object(attrs) = value else { return Err("`attributes` must be an object".into()) };
    attrs
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.len() > MAX_ATTRIBUTE_NAME_BYTES || k.chars().any(char::is_control) {
                Err(format!("attribute name {:?} is empty, too long or has control characters", truncate(k)))
            } else {
                Ok((k.clone(), v.clone()))
            }
        })
        .collect()
}

/// The fields of a `marketing.profiles` record besides those an update sets.
const RECORD_FIELDS: [&str; 10] = [
    "subject_id",
    "tenant_id",
    "updated_at",
    "email",
    "phone",
    "time_zone",
    "locale",
    "devices",
    "attributes",
    "source",
];

/// The record key of a subject's profile: `tenant/subject` (the tenant always written).
pub fn profile_key(subject: &SubjectRef) -> String {
    format!("{}/{}", subject.tenant_id, subject.subject_id)
}

/// Parses a record of `marketing.profiles` (decoded JSON or Avro), checked against its key.
pub fn parse_profile_record(
    fields: &Map<String, Value>,
    key: Option<&[u8]>,
    default_tenant: &str,
) -> Result<ProfileChange, Rejection> {
    if let Some(unknown) = fields.keys().find(|k| !RECORD_FIELDS.contains(&k.as_str())) {
        return Err(Rejection::new(
            RejectReason::InvalidFieldType,
            format!("unknown profile field `{}`: custom attributes go under `attributes`", truncate(unknown)),
        ));
    }
    let subject_id = match fields.get("subject_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
        Some(Value::String(_)) => return Err(Rejection::new(RejectReason::InvalidSubjectId, "`subject_id` is empty")),
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectReason::MissingField, "required field `subject_id` is missing"))
        }
        Some(_) => return Err(Rejection::new(RejectReason::InvalidFieldType, "`subject_id` must be a string")),
    };
    let tenant_id = match fields.get("tenant_id") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.trim(),
        _ => default_tenant,
    };
    crate::normalize::check_tenant_id(tenant_id)?;
    let subject = SubjectRef::new(tenant_id, subject_id);
    let expected = profile_key(&subject);
    match key {
        Some(k) if k == expected.as_bytes() => {}
        Some(k) => {
            return Err(Rejection::new(
                RejectReason::InvalidKey,
                format!("record key {:?} is not the subject's: expected {expected:?}", String::from_utf8_lossy(k)),
            ))
        }
        None => {
            return Err(Rejection::new(
                RejectReason::InvalidKey,
                format!("profile record without a key: expected {expected:?}"),
            ))
        }
    }
    let updated_at_ms = match fields.get("updated_at") {
        None | Some(Value::Null) => {
            return Err(Rejection::new(RejectReason::MissingField, "required field `updated_at` is missing"))
        }
        Some(v) => parse_event_time_field(&FieldValue::of(v))
            .map_err(|m| Rejection::new(RejectReason::InvalidTimestamp, format!("updated_at: {m}")))?,
    };
    let mut update = ProfileUpdate {
        subject,
        updated_at_ms,
        email: text_field(fields, "email", check_email).map_err(invalid)?,
        phone: text_field(fields, "phone", check_phone).map_err(invalid)?,
        time_zone: text_field(fields, "time_zone", check_time_zone).map_err(invalid)?,
        locale: text_field(fields, "locale", check_locale).map_err(invalid)?,
        ..ProfileUpdate::default()
    };
    if let Some(d) = fields.get("devices").filter(|v| !v.is_null()) {
        update.devices = devices_field(d).map_err(invalid)?;
    }
    if let Some(a) = fields.get("attributes").filter(|v| !v.is_null()) {
        update.attributes = attributes_field(a).map_err(invalid)?;
    }
    Ok(ProfileChange::Update(update))
}

/// An Avro record's fields as an update reads them: every field of the schema is there, so a null means
/// "not set" (Avro cannot tell an absent field from a null one); a field is cleared with a JSON record.
pub fn avro_nulls_unset(mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.retain(|_, v| !v.is_null());
    fields
}

/// A tombstone of `marketing.profiles`: its key names the subject to forget, as of `at_ms`.
pub fn parse_profile_tombstone(key: &[u8], at_ms: i64) -> Result<ProfileChange, Rejection> {
    let text =
        std::str::from_utf8(key).map_err(|_| Rejection::new(RejectReason::InvalidKey, "tombstone key is not UTF-8"))?;
    let Some((tenant, subject)) = text.split_once('/').filter(|(t, s)| !t.is_empty() && !s.trim().is_empty()) else {
        return Err(Rejection::new(
            RejectReason::InvalidKey,
            format!("tombstone key {:?} is not tenant/subject", truncate(text)),
        ));
    };
    crate::normalize::check_tenant_id(tenant)?;
    Ok(ProfileChange::Forget { subject: SubjectRef::new(tenant, subject), at_ms })
}

/// The names of a `profile_updated` event's attributes that are not custom attributes.
const EVENT_PROFILE_FIELDS: [&str; 8] =
    ["email", "phone", "time_zone", "locale", "devices", "device_token", "platform", "attributes"];

/// The update a `profile_updated` event makes, dated at its event time: `email`, `phone`,
/// `time_zone`, `locale`, `devices` or `device_token` (+ `platform`), custom attributes under
/// `attributes` and every other attribute. Fields that do not check out are left out and named in
/// the second value (the event itself was valid; its other fields still apply).
pub fn update_from_event(
    subject: SubjectRef,
    occurred_at_ms: i64,
    attributes: &Map<String, Value>,
) -> (ProfileUpdate, Vec<String>) {
    let mut problems = Vec::new();
    let mut keep = |r: Result<Option<Option<String>>, String>| {
        r.unwrap_or_else(|e| {
            problems.push(e);
            None
        })
    };
    let mut update = ProfileUpdate {
        subject,
        updated_at_ms: occurred_at_ms,
        email: keep(text_field(attributes, "email", check_email)),
        phone: keep(text_field(attributes, "phone", check_phone)),
        time_zone: keep(text_field(attributes, "time_zone", check_time_zone)),
        locale: keep(text_field(attributes, "locale", check_locale)),
        ..ProfileUpdate::default()
    };
    match attributes.get("devices").filter(|v| !v.is_null()).map(devices_field) {
        Some(Ok(devices)) => update.devices = devices,
        Some(Err(e)) => problems.push(e),
        None => {}
    }
    if let Some(Value::String(token)) = attributes.get("device_token") {
        match check_token(token) {
            Ok(token) => {
                let platform = attributes
                    .get("platform")
                    .and_then(Value::as_str)
                    .map(|p| p.chars().take(MAX_PLATFORM_BYTES).collect());
                update.devices.push((token, Some(Device { platform })));
            }
            Err(e) => problems.push(e),
        }
    }
    let nested = match attributes.get("attributes").filter(|v| !v.is_null()).map(attributes_field) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            problems.push(e);
            Vec::new()
        }
        None => Vec::new(),
    };
    let flat = attributes.iter().filter(|(k, _)| !EVENT_PROFILE_FIELDS.contains(&k.as_str()));
    for (name, value) in flat.map(|(k, v)| (k.clone(), v.clone())).chain(nested) {
        if name.len() > MAX_ATTRIBUTE_NAME_BYTES || name.chars().any(char::is_control) {
            problems.push(format!("attribute name {:?} is too long or has control characters", truncate(&name)));
        } else {
            update.attributes.push((name, value));
        }
    }
    (update, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subject() -> SubjectRef {
        SubjectRef::new("acme", "u-1")
    }

    fn record(v: Value) -> Result<ProfileChange, Rejection> {
        let Value::Object(m) = v else { panic!("object") };
        parse_profile_record(&m, Some(b"acme/u-1"), "default")
    }

    fn update(v: Value) -> ProfileUpdate {
        match record(v).unwrap() {
            ProfileChange::Update(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn newest_wins_per_field_whatever_the_order() {
        let a =
            update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 2000, "email": "new@example.com"}));
        let b = update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1000, "email": "old@example.com", "phone": "+49 151 1234567"}),
        );
        let c = update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 3000, "attributes": {"plan": "pro"}}),
        );
        let mut results = Vec::new();
        for order in [[&a, &b, &c], [&c, &b, &a], [&b, &c, &a], [&b, &a, &c]] {
            let mut p = SubjectProfile::default();
            for u in order {
                p.apply(u);
            }
            // Applying any of them again changes nothing.
            for u in [&a, &b, &c] {
                assert!(!p.apply(u).changed);
            }
            results.push(p);
        }
        let p = &results[0];
        assert_eq!(p.email(), Some("new@example.com"), "the older record does not win because it came later");
        assert_eq!(p.phone(), Some("+49 151 1234567"), "a partial record erases nothing it does not name");
        assert_eq!(p.attribute("plan"), Some(&json!("pro")));
        assert!(results.iter().all(|r| r == p), "every order gives the same profile");
    }

    #[test]
    fn equal_times_settle_on_the_same_value_in_any_order() {
        let a = update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 5, "email": "a@example.com", "attributes": {"n": 1}}),
        );
        let b = update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 5, "email": "b@example.com", "attributes": {"n": 2}}),
        );
        let (mut x, mut y) = (SubjectProfile::default(), SubjectProfile::default());
        x.apply(&a);
        x.apply(&b);
        y.apply(&b);
        y.apply(&a);
        assert_eq!(x, y);
    }

    #[test]
    fn a_cleared_field_stays_cleared_against_older_writes() {
        let mut p = SubjectProfile::default();
        p.apply(&update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 10, "email": null})));
        p.apply(&update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 5, "email": "late@example.com"}),
        ));
        assert_eq!(p.email(), None);
        p.apply(&update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 11, "email": "back@example.com"}),
        ));
        assert_eq!(p.email(), Some("back@example.com"));
    }

    #[test]
    fn devices_newest_first_removal_and_bound() {
        let mut p = SubjectProfile::default();
        for i in 0..15 {
            let token = format!("tok-{i:02}");
            p.apply(&update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 100 + i, "devices": [{"token": token, "platform": "ios"}]})));
        }
        assert_eq!(p.devices.len(), MAX_DEVICES);
        assert_eq!(p.device_tokens()[0], "tok-14");
        assert!(!p.device_tokens().contains(&"tok-00"), "the least recently set went first");
        p.apply(&update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 200, "devices": [{"token": "tok-14", "active": false}]})));
        assert_eq!(p.recipient(Channel::Push), Some("tok-13"));
        // An older registration of the removed device does not revive it.
        p.apply(&update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 150, "devices": [{"token": "tok-14"}]}),
        ));
        assert_eq!(p.recipient(Channel::Push), Some("tok-13"));
    }

    #[test]
    fn attributes_past_the_byte_bound_are_cut_and_named() {
        let mut p = SubjectProfile::default();
        let big = "x".repeat(6_000);
        let a = p.apply(&update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1, "attributes": {"a": big, "b": big, "c": big, "d": "small"}})));
        assert_eq!(a.cut, vec!["c".to_string()], "{a:?}");
        assert!(p.approx_bytes() <= MAX_PROFILE_BYTES);
        assert_eq!(p.attribute("d"), Some(&json!("small")), "what still fits is taken");
        assert!(p.attribute("c").is_none());
    }

    #[test]
    fn a_tombstone_forgets_and_keeps_older_updates_out() {
        let mut t = ProfileTable::default();
        // Small `updated_at` numbers are epoch seconds: 10 is 10,000 ms.
        let set = |at: i64, email: &str| {
            ProfileChange::Update(update(
                json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": at, "email": email}),
            ))
        };
        t.apply(&set(10, "a@example.com"));
        assert!(t.apply(&parse_profile_tombstone(b"acme/u-1", 20_000).unwrap()).changed);
        assert_eq!(t.get(&subject()).and_then(|p| p.email()), None);
        assert!(t.apply(&set(15, "old@example.com")).ignored_as_forgotten);
        assert_eq!(t.get(&subject()).and_then(|p| p.email()), None);
        t.apply(&set(25, "new@example.com"));
        assert_eq!(t.get(&subject()).and_then(|p| p.email()), Some("new@example.com"));
        // Forgetting keeps what was set after the tombstone's time (a restore replays the tombstone).
        t.apply(&parse_profile_tombstone(b"acme/u-1", 20_000).unwrap());
        assert_eq!(t.get(&subject()).and_then(|p| p.email()), Some("new@example.com"));
    }

    #[test]
    fn records_are_checked_with_reasons() {
        let reason = |v: Value| record(v).unwrap_err();
        let r = reason(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1, "email": "nope"}));
        assert_eq!(r.reason, RejectReason::InvalidProfileField);
        assert!(r.message.contains("not an email address"), "{}", r.message);
        let r = reason(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1, "time_zone": "Mars/Base"}));
        assert!(r.message.contains("IANA"), "{}", r.message);
        let r = reason(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1, "plan": "pro"}));
        assert!(r.message.contains("under `attributes`"), "{}", r.message);
        assert_eq!(reason(json!({"subject_id": "u-1", "tenant_id": "acme"})).reason, RejectReason::MissingField);
        let Value::Object(m) = json!({"subject_id": "u-2", "tenant_id": "acme", "updated_at": 1}) else {
            unreachable!()
        };
        let r = parse_profile_record(&m, Some(b"acme/u-1"), "default").unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidKey);
        assert!(parse_profile_tombstone(b"no-slash", 1).is_err());
        assert!(record(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": "2026-12-01T10:00:00Z", "phone": "+1 (555) 010-9999", "locale": "en-US"})).is_ok());
    }

    #[test]
    fn events_update_what_checks_out_and_name_the_rest() {
        let Value::Object(attrs) = json!({"email": "ann@example.com", "time_zone": "Nowhere/Land", "device_token": "fcm-1",
                                           "platform": "android", "plan": "pro", "attributes": {"first_name": "Ann"}})
        else {
            unreachable!()
        };
        let (u, problems) = update_from_event(subject(), 42, &attrs);
        assert_eq!(u.email, Some(Some("ann@example.com".into())));
        assert_eq!(u.time_zone, None, "an invalid zone is left out");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(u.devices, vec![("fcm-1".to_string(), Some(Device { platform: Some("android".into()) }))]);
        let names: Vec<&str> = u.attributes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["plan", "first_name"]);
    }

    #[test]
    fn recipients_follow_the_policy() {
        let mut p = SubjectProfile::default();
        p.apply(&update(
            json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1, "email": "ann@example.com"}),
        ));
        let only = RecipientPolicy::ProfileOnly;
        let r = resolve_recipient(Some(&p), Channel::Email, only, Some("attacker@example.com"));
        assert_eq!(
            (r.address.as_deref(), r.source, r.event_ignored),
            (Some("ann@example.com"), RecipientSource::Profile, true)
        );
        let same = resolve_recipient(Some(&p), Channel::Email, only, Some("Ann@Example.com"));
        assert!(!same.event_ignored, "the event named the profile's own address: nothing to say");
        let r = resolve_recipient(Some(&p), Channel::Sms, only, Some("+15550100"));
        assert_eq!((r.address, r.source, r.event_ignored), (None, RecipientSource::Missing, true));
        let r = resolve_recipient(None, Channel::Email, RecipientPolicy::EventMayOverride, Some("x@example.com"));
        assert_eq!((r.address.as_deref(), r.source), (Some("x@example.com"), RecipientSource::Event));
        let r = resolve_recipient(None, Channel::Webhook, only, None);
        assert_eq!(r.source, RecipientSource::NotNeeded);
        let cfg: RecipientsConfig =
            serde_json::from_value(json!({"by_purpose": {"transactional": "event_may_override"}})).unwrap();
        assert_eq!(cfg.policy(Purpose::Marketing), RecipientPolicy::ProfileOnly);
        assert_eq!(cfg.policy(Purpose::Transactional), RecipientPolicy::EventMayOverride);
    }

    /// An Avro record of `schemas/avro/profile.avsc`, decoded as the pipeline decodes it, gives the same
    /// update as its JSON twin.
    #[test]
    fn avro_records_read_like_json() {
        use crate::decode::{confluent_encode, RecordDecoder, SchemaLookup, SchemaLookupError};
        use apache_avro::types::{Record, Value as Avro};
        use apache_avro::Schema;
        use std::sync::Arc;
        struct One(Arc<Schema>);
        impl SchemaLookup for One {
            fn schema(&self, _id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
                Ok(self.0.clone())
            }
        }
        let schema = Arc::new(Schema::parse_str(touchpoint_schemas::avro::PROFILE).unwrap());
        let some = |i: u32, v: Avro| Avro::Union(i, Box::new(v));
        let none = || Avro::Union(0, Box::new(Avro::Null));
        let mut rec = Record::new(&schema).unwrap();
        rec.put("subject_id", "u-1");
        rec.put("tenant_id", some(1, "acme".into()));
        rec.put("updated_at", some(1, 1_795_600_800_000i64.into()));
        rec.put("email", some(1, "ann@example.com".into()));
        rec.put("phone", none());
        rec.put("time_zone", some(1, "Europe/Berlin".into()));
        rec.put("locale", none());
        let device = Avro::Record(vec![
            ("token".into(), "fcm-1".into()),
            ("platform".into(), some(1, "android".into())),
            ("active".into(), none()),
        ]);
        rec.put("devices", some(1, Avro::Array(vec![device])));
        rec.put("attributes", some(1, Avro::Map([("plan".to_string(), some(1, "pro".into()))].into_iter().collect())));
        rec.put("source", none());
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(rec)
            .unwrap();
        let fields = RecordDecoder::new(One(schema)).decode(&confluent_encode(3, &body)).unwrap();
        let from_avro = parse_profile_record(&avro_nulls_unset(fields), Some(b"acme/u-1"), "default").unwrap();
        // Avro's nulls leave the phone and locale alone (JSON's would clear them).
        let Value::Object(json) = json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 1_795_600_800_000i64,
            "email": "ann@example.com", "time_zone": "Europe/Berlin",
            "devices": [{"token": "fcm-1", "platform": "android", "active": null}], "attributes": {"plan": "pro"}})
        else {
            unreachable!()
        };
        assert_eq!(from_avro, parse_profile_record(&json, Some(b"acme/u-1"), "default").unwrap());
    }

    #[test]
    fn one_field_reads_as_the_merge_fields_have_it() {
        let mut p = SubjectProfile::default();
        p.apply(&update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 7, "email": "a@example.com",
                               "attributes": {"email": "shadowed", "phone": "+49 30 123456", "address": {"city": "Kiel"}, "gone": null}})));
        let merged = p.merge_fields();
        for path in
            [&["email"][..], &["phone"], &["address"], &["address", "city"], &["email", "x"], &["gone"], &["nope"], &[]]
        {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            let expected = path
                .split_first()
                .and_then(|(first, rest)| rest.iter().try_fold(merged.get(first)?, |v, k| v.get(k)).cloned());
            assert_eq!(p.field(&path), expected, "{path:?}");
        }
        assert_eq!(p.field(&["email".into()]), Some(json!("a@example.com")), "the profile's own field wins");
        assert_eq!(p.field(&["phone".into()]), Some(json!("+49 30 123456")), "no phone set: the attribute");
    }

    #[test]
    fn the_changelog_form_round_trips() {
        let mut p = SubjectProfile::default();
        p.apply(&update(json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": 7, "email": "a@example.com",
                               "devices": [{"token": "t1", "platform": "ios"}], "attributes": {"plan": "pro", "gone": null}})));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<SubjectProfile>(&text).unwrap(), p);
        assert_eq!(p.merge_fields().get("plan"), Some(&json!("pro")));
        assert!(!p.merge_fields().contains_key("gone"));
        assert_eq!(p.updated_at_ms(), 7_000, "updated_at 7 is epoch seconds");
    }
}
