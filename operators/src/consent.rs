//! The consent table: the latest consent per subject × channel × purpose, built from the compacted
//! `marketing.consent` topic, and the verdict a send intent gets from it. No consent, no send.
//!
//! - The topic is the table's changelog, keyed by the table's key: `tenant/subject/channel/purpose`
//!   ([`consent_key`]), a record's key naming exactly what its value says. So log compaction, which
//!   keeps the last record per key, keeps the whole table: every channel and purpose of a subject, and
//!   every revocation (a key per subject would keep only the newest channel of a subject).
//! - The last record of a key in log order wins, as in a Kafka Streams `KTable`: that is the record
//!   compaction keeps, so the table replayed after the cleaner ran is the table before it. `updated_at`
//!   is kept for the audit; a write whose `updated_at` is older than the one it replaces still wins
//!   (the log says it came later) and is reported ([`Applied::ReplacedNewer`]).
//! - A tombstone (null value) under a key clears that channel × purpose; to forget a subject, tombstone
//!   each of its keys ([`subject_keys`]). A tombstone keyed by the subject alone would not remove the
//!   other keys' records from the log, so it is rejected with a reason instead of half-erasing.
//! - A subject with no record for a channel and purpose gets the configured default, which is **deny**
//!   for marketing out of the box.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use touchpoint_schemas::RejectReason;

use crate::decode::event::{json_slots, FieldSlots, FieldValue};
use crate::fast_hash::FastHashMap;
use crate::normalize::{parse_event_time_field, Rejection};

use touchpoint_schemas::{Channel, Purpose, SubjectRef};

/// Ordered by restrictiveness: on equal `updated_at`, the larger wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    Granted,
    Pending,
    Denied,
}

impl ConsentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Granted => "granted",
            ConsentStatus::Pending => "pending",
            ConsentStatus::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<ConsentStatus> {
        [ConsentStatus::Granted, ConsentStatus::Pending, ConsentStatus::Denied]
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// What to assume when a subject has no consent record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenMissing {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Default per purpose for subjects without a record.
    #[serde(default = "default_when_missing")]
    pub when_missing: HashMap<Purpose, WhenMissing>,
    /// Per-channel exceptions to `when_missing`, e.g. `sms: {transactional: deny}`.
    #[serde(default)]
    pub channel_overrides: HashMap<Channel, HashMap<Purpose, WhenMissing>>,
}

fn default_when_missing() -> HashMap<Purpose, WhenMissing> {
    [(Purpose::Marketing, WhenMissing::Deny), (Purpose::Transactional, WhenMissing::Allow)].into_iter().collect()
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig { when_missing: default_when_missing(), channel_overrides: HashMap::new() }
    }
}

impl ConsentConfig {
    pub fn when_missing(&self, channel: Channel, purpose: Purpose) -> WhenMissing {
        self.channel_overrides
            .get(&channel)
            .and_then(|m| m.get(&purpose))
            .or_else(|| self.when_missing.get(&purpose))
            .copied()
            // Not configured at all: marketing is never sent without consent.
            .unwrap_or(if purpose == Purpose::Marketing { WhenMissing::Deny } else { WhenMissing::Allow })
    }
}

/// One record of the consent topic, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentChange {
    Set {
        subject: SubjectRef,
        channel: Channel,
        purpose: Purpose,
        status: ConsentStatus,
        updated_at_ms: i64,
        source: String,
    },
    /// Tombstone: the subject has no record for this channel and purpose any more (the default applies).
    Clear { subject: SubjectRef, channel: Channel, purpose: Purpose },
}

impl ConsentChange {
    pub fn subject(&self) -> &SubjectRef {
        match self {
            ConsentChange::Set { subject, .. } | ConsentChange::Clear { subject, .. } => subject,
        }
    }

    /// The record key this change belongs under ([`consent_key`]).
    pub fn key(&self) -> String {
        match self {
            ConsentChange::Set { subject, channel, purpose, .. }
            | ConsentChange::Clear { subject, channel, purpose } => consent_key(subject, *channel, *purpose),
        }
    }
}

/// The consent topic's record key for one table entry: `tenant/subject/channel/purpose`, channel and
/// purpose in their canonical lower-case names. The tenant is always written (no default-tenant
/// shorthand): a subject id may contain `/`, and the key must name one entry unambiguously.
pub fn consent_key(subject: &SubjectRef, channel: Channel, purpose: Purpose) -> String {
    let mut key = String::with_capacity(subject.tenant_id.len() + subject.subject_id.len() + 24);
    for part in [&*subject.tenant_id, "/", &*subject.subject_id, "/", channel.as_str(), "/", purpose.as_str()] {
        key.push_str(part);
    }
    key
}

/// Every key a subject can have in the consent topic (4 channels × 2 purposes): what to tombstone to
/// forget the subject.
pub fn subject_keys(subject: &SubjectRef) -> Vec<String> {
    Channel::ALL
        .into_iter()
        .flat_map(|c| [Purpose::Marketing, Purpose::Transactional].map(|p| consent_key(subject, c, p)))
        .collect()
}

fn invalid_key(message: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidKey, message)
}

/// Parses a tombstone's key (`tenant/subject/channel/purpose`) into the entry it clears.
pub fn parse_tombstone_key(key: &[u8]) -> Result<ConsentChange, Rejection> {
    let text = std::str::from_utf8(key).map_err(|_| invalid_key("tombstone key is not UTF-8"))?;
    let shape = || {
        invalid_key(format!(
            "tombstone key {text:?} is not tenant/subject/channel/purpose: a consent tombstone clears one \
             channel and purpose; to forget a subject, tombstone each of its eight keys"
        ))
    };
    let mut from_right = text.rsplitn(3, '/');
    let (Some(purpose), Some(channel), Some(rest)) = (from_right.next(), from_right.next(), from_right.next()) else {
        return Err(shape());
    };
    let Some((tenant, subject)) = rest.split_once('/') else { return Err(shape()) };
    crate::normalize::check_tenant_id(tenant)?;
    let (Some(channel), Some(purpose)) = (Channel::parse(channel), Purpose::parse(purpose)) else {
        return Err(shape());
    };
    if tenant.is_empty() || subject.trim().is_empty() {
        return Err(shape());
    }
    let change = ConsentChange::Clear { subject: SubjectRef::new(tenant, subject), channel, purpose };
    // Canonical spelling only: compaction compares key bytes, so `Email` and `email` would be two keys.
    if change.key().as_bytes() != key {
        return Err(invalid_key(format!("tombstone key {text:?} is not canonical: write {:?}", change.key())));
    }
    Ok(change)
}

/// A record with a value must sit under the key of the entry it sets: otherwise compaction would keep
/// or drop it by a key that is not its own, and the table after the cleaner would differ from before.
pub fn check_record_key(change: &ConsentChange, key: Option<&[u8]>) -> Result<(), Rejection> {
    let expected = change.key();
    match key {
        Some(k) if k == expected.as_bytes() => Ok(()),
        Some(k) => Err(invalid_key(format!(
            "record key {:?} does not name the entry its value sets: expected {expected:?}",
            String::from_utf8_lossy(k)
        ))),
        None => Err(invalid_key(format!("consent record without a key: expected {expected:?}"))),
    }
}

/// Parses a decoded consent record (JSON or Avro field map).
/// The fields of a consent record that the table reads, as the producer sent them (strings borrowed
/// from the payload where the JSON path could). Same semantics as a `serde_json::Map`: a repeated
/// field's last value wins, `null` counts as absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsentFields<'a> {
    pub subject_id: Option<FieldValue<'a>>,
    pub tenant_id: Option<FieldValue<'a>>,
    pub channel: Option<FieldValue<'a>>,
    pub purpose: Option<FieldValue<'a>>,
    pub status: Option<FieldValue<'a>>,
    pub updated_at: Option<FieldValue<'a>>,
    pub source: Option<FieldValue<'a>>,
}

impl<'a> ConsentFields<'a> {
    const NAMES: [&'static str; 7] =
        ["subject_id", "tenant_id", "channel", "purpose", "status", "updated_at", "source"];

    /// The fields of a decoded record (Avro, or JSON the direct reader did not take).
    pub fn of_map(map: &'a Map<String, Value>) -> Self {
        let mut fields = ConsentFields::default();
        for name in Self::NAMES {
            if let (Some(slot), Some(value)) = (fields.slot(name), map.get(name)) {
                *slot = Some(FieldValue::of(value));
            }
        }
        fields
    }

    /// Reads a JSON object payload straight into the fields (other fields skipped unbuilt): the consent
    /// table is replayed from its topic at every start, a record each per subject, channel and purpose.
    /// `None` for anything but a well-formed JSON object (an Avro frame, broken JSON): the generic path
    /// decodes those and words the rejection.
    pub fn from_json(payload: &'a [u8]) -> Option<Self> {
        json_slots(payload, ConsentFields::default())
    }
}

impl<'a> FieldSlots<'a> for ConsentFields<'a> {
    fn slot(&mut self, name: &str) -> Option<&mut Option<FieldValue<'a>>> {
        Some(match name {
            "subject_id" => &mut self.subject_id,
            "tenant_id" => &mut self.tenant_id,
            "channel" => &mut self.channel,
            "purpose" => &mut self.purpose,
            "status" => &mut self.status,
            "updated_at" => &mut self.updated_at,
            "source" => &mut self.source,
            _ => return None,
        })
    }
}

/// A consent change from a decoded record (see [`parse_consent_fields`]).
pub fn parse_consent(fields: &Map<String, Value>, default_tenant: &str) -> Result<ConsentChange, Rejection> {
    parse_consent_fields(&ConsentFields::of_map(fields), default_tenant)
}

/// Validates a consent record's fields into a change, or says what is wrong with them.
pub fn parse_consent_fields(fields: &ConsentFields<'_>, default_tenant: &str) -> Result<ConsentChange, Rejection> {
    fn text<'f>(name: &str, field: &'f Option<FieldValue<'_>>) -> Result<&'f str, Rejection> {
        match field {
            None | Some(FieldValue::Null) => {
                Err(Rejection::new(RejectReason::MissingField, format!("required field `{name}` is missing")))
            }
            Some(FieldValue::Str(s)) => Ok(s),
            Some(_) => Err(Rejection::new(RejectReason::InvalidFieldType, format!("`{name}` must be a string"))),
        }
    }
    let subject_id = text("subject_id", &fields.subject_id)?.trim();
    if subject_id.is_empty() {
        return Err(Rejection::new(RejectReason::InvalidSubjectId, "`subject_id` is empty"));
    }
    let tenant_id = match &fields.tenant_id {
        Some(FieldValue::Str(t)) if !t.trim().is_empty() => t.trim(),
        _ => default_tenant,
    };
    // The consent key is `tenant/subject/channel/purpose`: a `/` in the tenant would let two entries
    // share one key, and compaction keep only one of them.
    crate::normalize::check_tenant_id(tenant_id)?;
    let raw_channel = text("channel", &fields.channel)?;
    let channel = Channel::parse(raw_channel)
        .ok_or_else(|| Rejection::new(RejectReason::UnknownChannel, format!("unknown channel {raw_channel:?}")))?;
    let raw_purpose = text("purpose", &fields.purpose)?;
    let purpose = Purpose::parse(raw_purpose)
        .ok_or_else(|| Rejection::new(RejectReason::UnknownPurpose, format!("unknown purpose {raw_purpose:?}")))?;
    let raw_status = text("status", &fields.status)?;
    let status = ConsentStatus::parse(raw_status).ok_or_else(|| {
        Rejection::new(RejectReason::UnknownConsentStatus, format!("unknown consent status {raw_status:?}"))
    })?;
    let updated_at_ms = match &fields.updated_at {
        None | Some(FieldValue::Null) => {
            return Err(Rejection::new(RejectReason::MissingField, "required field `updated_at` is missing"))
        }
        Some(v) => parse_event_time_field(v)
            .map_err(|m| Rejection::new(RejectReason::InvalidTimestamp, format!("updated_at: {m}")))?,
    };
    let source = match &fields.source {
        Some(FieldValue::Str(s)) => s.to_string(),
        _ => String::new(),
    };
    Ok(ConsentChange::Set {
        subject: SubjectRef { tenant_id: tenant_id.into(), subject_id: subject_id.into() },
        channel,
        purpose,
        status,
        updated_at_ms,
        source,
    })
}

/// The answer for one send intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentVerdict {
    pub allowed: bool,
    /// The recorded status, or `None` when the default applied.
    pub status: Option<ConsentStatus>,
}

impl ConsentVerdict {
    /// `granted`, `denied`, `pending`, or `missing(default allow|deny)`.
    pub fn describe(&self) -> String {
        match self.status {
            Some(s) => s.as_str().to_string(),
            None => format!("missing(default {})", if self.allowed { "allow" } else { "deny" }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    channel: Channel,
    purpose: Purpose,
    status: ConsentStatus,
    updated_at_ms: i64,
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table already said this (a repeated record, or a tombstone for an absent entry).
    Unchanged,
    Changed,
    /// Changed, replacing an entry whose `updated_at` was newer than the record's: the producer wrote
    /// the older state later. The log order wins (that is what compaction keeps); worth a warning.
    ReplacedNewer,
}

/// Keyed state: consent per subject. A subject holds at most one entry per channel × purpose (8).
#[derive(Debug, Default, Clone)]
pub struct ConsentTable {
    subjects: FastHashMap<SubjectRef, Vec<Entry>>,
}

impl ConsentTable {
    pub fn new() -> Self {
        ConsentTable::default()
    }

    /// Applies one change in log order (the last record of a key wins).
    pub fn apply(&mut self, change: &ConsentChange) -> Applied {
        match change {
            ConsentChange::Clear { subject, channel, purpose } => {
                let Some(entries) = self.subjects.get_mut(subject) else { return Applied::Unchanged };
                let before = entries.len();
                entries.retain(|e| !(e.channel == *channel && e.purpose == *purpose));
                let changed = entries.len() != before;
                if entries.is_empty() {
                    self.subjects.remove(subject);
                }
                if changed {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            }
            ConsentChange::Set { subject, channel, purpose, status, updated_at_ms, .. } => {
                let entries = self.subjects.entry(subject.clone()).or_default();
                let new =
                    Entry { channel: *channel, purpose: *purpose, status: *status, updated_at_ms: *updated_at_ms };
                match entries.iter_mut().find(|e| e.channel == *channel && e.purpose == *purpose) {
                    Some(e) if *e == new => Applied::Unchanged,
                    Some(e) => {
                        let older = new.updated_at_ms < e.updated_at_ms;
                        *e = new;
                        if older {
                            Applied::ReplacedNewer
                        } else {
                            Applied::Changed
                        }
                    }
                    None => {
                        entries.push(new);
                        Applied::Changed
                    }
                }
            }
        }
    }

    pub fn verdict(
        &self,
        subject: &SubjectRef,
        channel: Channel,
        purpose: Purpose,
        config: &ConsentConfig,
    ) -> ConsentVerdict {
        let recorded = self
            .subjects
            .get(subject)
            .and_then(|entries| entries.iter().find(|e| e.channel == channel && e.purpose == purpose));
        match recorded {
            Some(e) => ConsentVerdict { allowed: e.status == ConsentStatus::Granted, status: Some(e.status) },
            None => {
                ConsentVerdict { allowed: config.when_missing(channel, purpose) == WhenMissing::Allow, status: None }
            }
        }
    }

    /// Subjects with at least one record.
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subject(s: &str) -> SubjectRef {
        SubjectRef { tenant_id: "acme".into(), subject_id: s.into() }
    }

    fn set(s: &str, channel: Channel, purpose: Purpose, status: ConsentStatus, at: i64) -> ConsentChange {
        ConsentChange::Set { subject: subject(s), channel, purpose, status, updated_at_ms: at, source: "test".into() }
    }

    use Channel::*;
    use ConsentStatus::*;
    use Purpose::*;

    #[test]
    fn the_last_record_of_a_key_wins_and_an_older_updated_at_is_reported() {
        let cfg = ConsentConfig::default();
        let mut t = ConsentTable::new();
        assert_eq!(t.apply(&set("u", Email, Marketing, Granted, 100)), Applied::Changed);
        assert_eq!(t.apply(&set("u", Email, Marketing, Granted, 100)), Applied::Unchanged, "a repeated record");
        assert_eq!(t.apply(&set("u", Email, Marketing, Denied, 200)), Applied::Changed);
        assert_eq!(
            t.verdict(&subject("u"), Email, Marketing, &cfg),
            ConsentVerdict { allowed: false, status: Some(Denied) }
        );
        // Written later with an older updated_at: the log order wins (compaction keeps this record), and
        // the table says so.
        assert_eq!(t.apply(&set("u", Email, Marketing, Granted, 150)), Applied::ReplacedNewer);
        assert!(t.verdict(&subject("u"), Email, Marketing, &cfg).allowed);
    }

    /// What compaction does to a topic keyed by [`ConsentChange::key`]: it keeps the last record of
    /// every key (tombstones too, until they expire). Replaying the compacted log, with or without its
    /// tombstones, gives the table the whole log gave, for any mix of subjects, channels, purposes,
    /// statuses, update times and tombstones.
    #[test]
    fn a_compacted_log_replays_into_the_same_table() {
        use std::collections::HashMap;
        let mut seed = 0x5eed_u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let (statuses, purposes) = ([Granted, Denied, Pending], [Marketing, Transactional]);
        for round in 0..300 {
            let log: Vec<ConsentChange> = (0..40)
                .map(|_| {
                    let s = subject(&format!("u{}", next(3)));
                    let (channel, purpose) = (Channel::ALL[next(4) as usize], purposes[next(2) as usize]);
                    if next(6) == 0 {
                        ConsentChange::Clear { subject: s, channel, purpose }
                    } else {
                        let (status, at) = (statuses[next(3) as usize], next(1000) as i64);
                        ConsentChange::Set {
                            subject: s,
                            channel,
                            purpose,
                            status,
                            updated_at_ms: at,
                            source: "t".into(),
                        }
                    }
                })
                .collect();
            let last: HashMap<String, usize> = log.iter().enumerate().map(|(i, c)| (c.key(), i)).collect();
            let kept = log.iter().enumerate().filter(|(i, c)| last[&c.key()] == *i).map(|(_, c)| c);
            let mut full = ConsentTable::new();
            log.iter().for_each(|c| {
                full.apply(c);
            });
            let mut compacted = ConsentTable::new();
            kept.clone().for_each(|c| {
                compacted.apply(c);
            });
            let mut tombstones_expired = ConsentTable::new();
            kept.filter(|c| matches!(c, ConsentChange::Set { .. })).for_each(|c| {
                tombstones_expired.apply(c);
            });
            for s in ["u0", "u1", "u2"].map(subject) {
                for (channel, purpose) in Channel::ALL.into_iter().flat_map(|c| purposes.map(|p| (c, p))) {
                    let want = full.verdict(&s, channel, purpose, &ConsentConfig::default());
                    for t in [&compacted, &tombstones_expired] {
                        assert_eq!(
                            t.verdict(&s, channel, purpose, &ConsentConfig::default()),
                            want,
                            "round {round}: {s:?} {channel:?} {purpose:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn consent_is_per_channel_and_purpose_and_pending_is_not_consent() {
        let cfg = ConsentConfig::default();
        let mut t = ConsentTable::new();
        t.apply(&set("u", Email, Marketing, Granted, 1));
        t.apply(&set("u", Push, Marketing, Pending, 1));
        assert!(t.verdict(&subject("u"), Email, Marketing, &cfg).allowed);
        assert!(!t.verdict(&subject("u"), Push, Marketing, &cfg).allowed);
        assert_eq!(t.verdict(&subject("u"), Sms, Marketing, &cfg), ConsentVerdict { allowed: false, status: None });
        assert_eq!(t.verdict(&subject("u"), Sms, Transactional, &cfg), ConsentVerdict { allowed: true, status: None });
    }

    #[test]
    fn a_tombstone_clears_one_channel_and_purpose_and_keys_are_checked() {
        let cfg = ConsentConfig::default();
        let mut t = ConsentTable::new();
        t.apply(&set("u", Email, Transactional, Denied, 1));
        t.apply(&set("u", Push, Marketing, Granted, 1));
        t.apply(&set("v", Email, Transactional, Denied, 1));
        assert_eq!(t.apply(&parse_tombstone_key(b"acme/u/email/transactional").unwrap()), Applied::Changed);
        // Back to the default (allow for transactional); the subject's other entry and other subjects stay.
        assert_eq!(
            t.verdict(&subject("u"), Email, Transactional, &cfg),
            ConsentVerdict { allowed: true, status: None }
        );
        assert!(t.verdict(&subject("u"), Push, Marketing, &cfg).allowed);
        assert!(!t.verdict(&subject("v"), Email, Transactional, &cfg).allowed, "other subjects untouched");
        assert_eq!(t.apply(&parse_tombstone_key(b"acme/u/email/transactional").unwrap()), Applied::Unchanged);
        assert_eq!(t.apply(&parse_tombstone_key(b"acme/u/push/marketing").unwrap()), Applied::Changed);
        assert_eq!(t.len(), 1, "a subject without entries is gone");

        // A subject id may contain '/': channel and purpose are read from the right.
        assert_eq!(
            parse_tombstone_key(b"acme/team/u-1/sms/marketing").unwrap(),
            ConsentChange::Clear { subject: SubjectRef::new("acme", "team/u-1"), channel: Sms, purpose: Marketing }
        );
        let bad_keys: [&[u8]; 8] = [
            b"acme/u",
            b"u-1",
            b"acme/u/email",
            b"acme/u/pigeon/marketing",
            b"acme/ /email/marketing",
            b"/u/email/marketing",
            b"acme/u/Email/marketing",
            b"\xff/u/email/marketing",
        ];
        for bad in bad_keys {
            let r = parse_tombstone_key(bad).unwrap_err();
            assert_eq!(r.reason, RejectReason::InvalidKey, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(subject_keys(&subject("u")).len(), 8);
        assert!(subject_keys(&subject("u")).contains(&"acme/u/webhook/transactional".to_string()));

        let change = set("u", Email, Marketing, Granted, 1);
        assert!(check_record_key(&change, Some(b"acme/u/email/marketing")).is_ok());
        for bad in [Some(&b"acme/u"[..]), Some(b"acme/u/push/marketing"), Some(b"acme/v/email/marketing"), None] {
            assert_eq!(check_record_key(&change, bad).unwrap_err().reason, RejectReason::InvalidKey);
        }
    }

    #[test]
    fn defaults_are_configurable_per_purpose_and_channel() {
        let t = ConsentTable::new();
        let s = subject("nobody");
        let default = ConsentConfig::default();
        assert!(!t.verdict(&s, Email, Marketing, &default).allowed, "marketing defaults to deny");
        assert!(t.verdict(&s, Email, Transactional, &default).allowed);
        let cfg: ConsentConfig = serde_yaml_like(json!({
            "when_missing": {"marketing": "allow"},
            "channel_overrides": {"sms": {"marketing": "deny", "transactional": "deny"}}
        }));
        assert!(t.verdict(&s, Email, Marketing, &cfg).allowed);
        assert!(!t.verdict(&s, Sms, Marketing, &cfg).allowed);
        assert!(!t.verdict(&s, Sms, Transactional, &cfg).allowed);
        assert!(t.verdict(&s, Push, Transactional, &cfg).allowed, "unconfigured transactional allows");
    }

    fn serde_yaml_like(v: Value) -> ConsentConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn records_are_parsed_and_bad_ones_rejected_with_reasons() {
        let ok = json!({"subject_id": " u-1 ", "tenant_id": "acme", "channel": "Email", "purpose": "marketing",
                        "status": "granted", "updated_at": "2026-11-25T10:00:00Z", "source": "preference-center"});
        let Value::Object(ok) = ok else { unreachable!() };
        match parse_consent(&ok, "default").unwrap() {
            ConsentChange::Set { subject, channel, status, updated_at_ms, .. } => {
                assert_eq!(subject, SubjectRef { tenant_id: "acme".into(), subject_id: "u-1".into() });
                assert_eq!((channel, status, updated_at_ms), (Email, Granted, 1_795_600_800_000));
            }
            other => panic!("{other:?}"),
        }
        let bad = |field: &str, value: Value| {
            let mut m = ok.clone();
            m.insert(field.into(), value);
            parse_consent(&m, "default").unwrap_err().reason
        };
        assert_eq!(bad("channel", json!("pigeon")), RejectReason::UnknownChannel);
        assert_eq!(bad("purpose", json!("research")), RejectReason::UnknownPurpose);
        assert_eq!(bad("status", json!("maybe")), RejectReason::UnknownConsentStatus);
        assert_eq!(bad("updated_at", json!("soon")), RejectReason::InvalidTimestamp);
        assert_eq!(bad("subject_id", json!("  ")), RejectReason::InvalidSubjectId);
        assert_eq!(bad("tenant_id", json!("acme/eu")), RejectReason::InvalidId);
        assert_eq!(bad("subject_id", Value::Null), RejectReason::MissingField);
        assert_eq!(bad("channel", json!(3)), RejectReason::InvalidFieldType);
    }

    /// The JSON reader and the generic path (a `serde_json::Map`) give the same change or the same
    /// rejection, for valid records and for every kind of wrong field.
    #[test]
    fn json_records_read_directly_parse_like_the_generic_path() {
        let base = json!({"subject_id": "u-1", "tenant_id": "acme", "channel": "email", "purpose": "marketing",
            "status": "granted", "updated_at": "2026-11-20T10:00:00Z", "source": "crm", "extra": {"nested": [1, 2]}});
        let mut payloads: Vec<String> = vec![base.to_string()];
        let variants = [
            json!(null),
            json!(""),
            json!("  "),
            json!(3),
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!("sms"),
            json!("transactional"),
            json!("denied"),
            json!(1_795_168_800_000i64),
            json!("nope"),
            json!("Ünï \"quoted\" \u{e9}"),
        ];
        for name in ConsentFields::NAMES {
            let mut without = base.clone();
            without.as_object_mut().map(|o| o.remove(name));
            payloads.push(without.to_string());
            for v in &variants {
                let mut changed = base.clone();
                changed[name] = v.clone();
                payloads.push(changed.to_string());
            }
        }
        // Escapes in the JSON text (strings not borrowed), a repeated field (the last value wins, as in a map).
        payloads.push(base.to_string().replacen(r#""u-1""#, r#""u\u00e9\/1""#, 1));
        payloads.push(base.to_string().replacen('{', r#"{"status":"denied","#, 1));
        payloads.push(base.to_string().replacen('}', r#","status":"pending"}"#, 1));
        let mut checked = 0;
        for payload in &payloads {
            let map: Map<String, Value> = serde_json::from_str(payload).expect("test payloads are objects");
            let direct = ConsentFields::from_json(payload.as_bytes()).expect("a JSON object is read directly");
            let (a, b) = (parse_consent_fields(&direct, "default"), parse_consent(&map, "default"));
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(x, y, "{payload}"),
                (Err(x), Err(y)) => assert_eq!((x.reason, &x.message), (y.reason, &y.message), "{payload}"),
                _ => panic!("{payload}: direct {a:?}, generic {b:?}"),
            }
            checked += usize::from(a.is_ok());
        }
        assert!(checked > 10, "valid variants were among the cases ({checked})");
        // Not a JSON object: left to the generic path, which words the rejection.
        for bad in [&b"[1,2]"[..], b"{\"subject_id\": ", b"\x00\x00\x00\x00\x01\x02", b"\"text\""] {
            assert_eq!(ConsentFields::from_json(bad), None);
        }
    }
}
