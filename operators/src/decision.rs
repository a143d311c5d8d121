//! The guardrails every send intent passes: consent first, then frequency caps. Every intent gets a
//! decision; only allowed ones are counted by the caps and sent.

use serde::{Deserialize, Serialize};

use crate::consent::{ConsentConfig, ConsentTable, ConsentVerdict};
use crate::frequency_cap::{CapQuery, CapVerdict, FrequencyCaps, SubjectCaps};
use crate::intent::SendIntent;
use crate::profile::{Recipient, RecipientSource};
use crate::quiet_hours::{Quiet, QuietAction, QuietHours};

/// Held sends a subject may have waiting for the end of quiet hours; more are dropped
/// (`suppressed_quiet_hours`), so a flood cannot grow a subject's state.
pub const MAX_HELD_SENDS: usize = 32;

/// The rules a decision applies, besides the subject's state.
#[derive(Clone, Copy)]
pub struct DecisionRules<'a> {
    pub consent: &'a ConsentConfig,
    pub caps: &'a FrequencyCaps,
    pub quiet: &'a QuietHours,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allowed,
    SuppressedConsent,
    SuppressedCap,
    /// The subject's send ledger is full ([`crate::send_ledger::MAX_LEDGER_KEYS`] keys within its TTL):
    /// a flood of intents for one subject; none is sent until old keys expire.
    SuppressedLedgerFull,
    /// Nowhere to send: the subject's profile has no address for the channel, and the pipeline file
    /// does not let the event name one ([`crate::profile::RecipientPolicy`]).
    SuppressedNoRecipient,
    /// In a quiet-hours window whose rule holds: kept until the window ends, then decided again (a
    /// second decision row, at the release instant).
    HeldQuietHours,
    /// In a quiet-hours window whose rule drops (or the subject's held sends are at their bound).
    SuppressedQuietHours,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allowed => "allowed",
            DecisionKind::SuppressedConsent => "suppressed_consent",
            DecisionKind::SuppressedCap => "suppressed_cap",
            DecisionKind::SuppressedLedgerFull => "suppressed_ledger_full",
            DecisionKind::SuppressedNoRecipient => "suppressed_no_recipient",
            DecisionKind::HeldQuietHours => "held_quiet_hours",
            DecisionKind::SuppressedQuietHours => "suppressed_quiet_hours",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub intent: SendIntent,
    pub kind: DecisionKind,
    pub consent: ConsentVerdict,
    /// `None` when consent already suppressed the intent (caps were not consulted).
    pub cap: Option<CapVerdict>,
    /// Version of the cap rule set that decided.
    pub caps_version: String,
    /// The same intent was allowed and counted before (decided again after a restart): allowed
    /// again, not counted again.
    #[serde(default)]
    pub replayed: bool,
    /// Where the intent's recipient came from.
    #[serde(default)]
    pub recipient: RecipientSource,
    /// The event named a recipient the policy did not let it choose (`profile_only`).
    #[serde(default)]
    pub event_recipient_ignored: bool,
    /// The quiet-hours window that held or dropped the intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<Quiet>,
}

impl Decision {
    /// A human explanation: which consent state, or which cap rule with its count and window.
    pub fn reason(&self) -> String {
        let mut reason = self.base_reason();
        if self.event_recipient_ignored {
            reason.push_str("; the event's recipient is not used (recipients: profile_only)");
        }
        reason
    }

    fn base_reason(&self) -> String {
        if self.replayed {
            return "already allowed and counted before a restart; not counted again".into();
        }
        match (&self.kind, &self.cap) {
            (DecisionKind::SuppressedLedgerFull, _) => format!(
                "send ledger full: {} decisions for this subject within the ledger TTL; none until older ones expire",
                crate::send_ledger::MAX_LEDGER_KEYS
            ),
            (DecisionKind::SuppressedConsent, _) => format!("consent {}", self.consent.describe()),
            (DecisionKind::HeldQuietHours | DecisionKind::SuppressedQuietHours, _) => match &self.quiet {
                Some(q) if q.action == QuietAction::Hold && self.kind == DecisionKind::SuppressedQuietHours => format!(
                    "consent {}; {q}, but the subject already holds {} sends: dropped",
                    self.consent.describe(),
                    MAX_HELD_SENDS
                ),
                Some(q) => format!("consent {}; {q}", self.consent.describe()),
                None => format!("consent {}; quiet hours", self.consent.describe()),
            },
            (DecisionKind::SuppressedNoRecipient, _) => format!(
                "consent {}; no {} in the profile",
                self.consent.describe(),
                crate::profile::recipient_noun(self.intent.channel)
            ),
            (_, Some(CapVerdict::Capped { rule_id, count, limit, window })) => {
                format!("cap {rule_id}: {count} of {limit} per {window}")
            }
            (_, Some(CapVerdict::Exempt)) => format!("consent {}; category exempt from caps", self.consent.describe()),
            _ => format!("consent {}; within caps", self.consent.describe()),
        }
    }
}

/// The decision for an intent of a subject whose send ledger is full: suppressed, neither counted nor
/// consulted against the caps.
pub fn suppress_ledger_full(
    mut intent: SendIntent,
    recipient: Recipient,
    consent: &ConsentTable,
    rules: &DecisionRules<'_>,
) -> Decision {
    let verdict = consent.verdict(&intent.subject, intent.channel, intent.purpose, rules.consent);
    let caps_version = rules.caps.version().to_string();
    intent.recipient = recipient.address;
    Decision {
        intent,
        kind: DecisionKind::SuppressedLedgerFull,
        consent: verdict,
        cap: None,
        caps_version,
        replayed: false,
        recipient: recipient.source,
        event_recipient_ignored: recipient.event_ignored,
        quiet: None,
    }
}

/// Consent, then a recipient, then quiet hours, then caps, for one intent whose recipient the caller
/// resolved (from the subject's profile, [`crate::profile::resolve_recipient`]). The caller passes the
/// subject's keyed state, and whether it has room to hold one more send.
pub fn decide(
    mut intent: SendIntent,
    recipient: Recipient,
    consent: &ConsentTable,
    rules: &DecisionRules<'_>,
    cap_state: &mut SubjectCaps,
    can_hold: bool,
) -> Decision {
    let verdict = consent.verdict(&intent.subject, intent.channel, intent.purpose, rules.consent);
    let caps = rules.caps;
    let caps_version = caps.version().to_string();
    let (source, event_recipient_ignored) = (recipient.source, recipient.event_ignored);
    intent.recipient = recipient.address;
    let decision = |intent, kind, cap, replayed| Decision {
        intent,
        kind,
        consent: verdict,
        cap,
        caps_version: caps_version.clone(),
        replayed,
        recipient: source,
        event_recipient_ignored,
        quiet: None,
    };
    if cap_state.already_counted(&intent.idempotency_key) {
        return decision(intent, DecisionKind::Allowed, Some(CapVerdict::Allowed), true);
    }
    if !verdict.allowed {
        return decision(intent, DecisionKind::SuppressedConsent, None, false);
    }
    // Not counted by the caps: a message that cannot go anywhere uses no budget.
    if source == RecipientSource::Missing {
        return decision(intent, DecisionKind::SuppressedNoRecipient, None, false);
    }
    // Not counted either: a held send is counted when it is decided again, at the window's end.
    let at_ms = intent.decided_at_ms();
    if let Some(quiet) = rules.quiet.check(intent.channel, &intent.category, at_ms, intent.time_zone.as_deref()) {
        let held = quiet.action == QuietAction::Hold && can_hold;
        let kind = if held { DecisionKind::HeldQuietHours } else { DecisionKind::SuppressedQuietHours };
        return Decision { quiet: Some(quiet), ..decision(intent, kind, None, false) };
    }
    let cap = caps.decide_keyed(
        cap_state,
        &CapQuery {
            channel: intent.channel,
            category: &intent.category,
            tags: &intent.tags,
            at_ms,
            time_zone: intent.time_zone.as_deref(),
        },
        &intent.idempotency_key,
    );
    let kind =
        if matches!(cap, CapVerdict::Capped { .. }) { DecisionKind::SuppressedCap } else { DecisionKind::Allowed };
    decision(intent, kind, Some(cap), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{ConsentChange, ConsentStatus};
    use crate::frequency_cap::{CalendarUnit, CapRule, CapWindow, CapsConfig};
    use crate::quiet_hours::QuietHours;
    use touchpoint_schemas::SourcePosition;
    use touchpoint_schemas::{Channel, Purpose, SubjectRef};

    fn intent(id: &str, purpose: Purpose, category: &str) -> SendIntent {
        SendIntent {
            subject: SubjectRef { tenant_id: "acme".into(), subject_id: "u".into() },
            channel: Channel::Email,
            purpose,
            category: category.into(),
            tags: vec![],
            priority: 0,
            template: "t".into(),
            rule_id: "r".into(),
            ruleset_version: "v".into(),
            event_id: id.into(),
            event_type: "signed_up".into(),
            occurred_at_ms: 1_795_600_800_000,
            time_zone: None,
            recipient: None,
            idempotency_key: format!("k-{id}"),
            position: SourcePosition { topic: "t".into(), partition: 0, offset: 0 },
            late: false,
            journey: None,
            payload: Default::default(),
            released_at_ms: None,
        }
    }

    fn rules<'a>(consent: &'a ConsentConfig, caps: &'a FrequencyCaps, quiet: &'a QuietHours) -> DecisionRules<'a> {
        DecisionRules { consent, caps, quiet }
    }

    /// One send a calendar day, any channel.
    fn one_a_day() -> FrequencyCaps {
        FrequencyCaps::new(&CapsConfig {
            rules: vec![CapRule {
                id: "daily".into(),
                channel: None,
                category: None,
                tag: None,
                limit: 1,
                window: CapWindow::Calendar(CalendarUnit::Day),
            }],
            ..Default::default()
        })
        .unwrap()
    }

    fn to() -> Recipient {
        Recipient { address: Some("ann@example.com".into()), source: RecipientSource::Profile, event_ignored: false }
    }

    #[test]
    fn a_send_without_recipient_is_suppressed_uncounted_with_a_reason() {
        let caps = FrequencyCaps::new(&CapsConfig::default()).unwrap();
        let (table, cfg, mut state) = (ConsentTable::new(), ConsentConfig::default(), SubjectCaps::default());
        let quiet = QuietHours::new(&Default::default()).unwrap();
        let nowhere = Recipient { address: None, source: RecipientSource::Missing, event_ignored: true };
        let d = decide(
            intent("1", Purpose::Transactional, "transactional"),
            nowhere,
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!(d.kind, DecisionKind::SuppressedNoRecipient);
        assert_eq!(
            d.reason(),
            "consent missing(default allow); no email address in the profile; the event's recipient is not used \
             (recipients: profile_only)"
        );
        assert!(state.is_empty());
        let d = decide(
            intent("2", Purpose::Transactional, "transactional"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!((d.kind, d.intent.recipient.as_deref()), (DecisionKind::Allowed, Some("ann@example.com")));
    }

    #[test]
    fn quiet_hours_hold_or_drop_before_the_caps_count() {
        let caps = one_a_day();
        let quiet = QuietHours::new(
            &serde_json::from_value(serde_json::json!({"rules": [{"id": "night", "window": "08:00-12:00"}]})).unwrap(),
        )
        .unwrap();
        let (table, cfg, mut state) = (ConsentTable::new(), ConsentConfig::default(), SubjectCaps::default());
        // 10:00 UTC, in the window: held until 12:00, not counted.
        let d = decide(
            intent("1", Purpose::Transactional, "promo"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!(d.kind, DecisionKind::HeldQuietHours);
        assert_eq!(
            d.reason(),
            "consent missing(default allow); quiet hours night (08:00-12:00 UTC): held until 2026-11-25T12:00:00Z"
        );
        assert!(state.is_empty());
        // No room to hold: dropped, with the reason.
        let d = decide(
            intent("2", Purpose::Transactional, "promo"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            false,
        );
        assert_eq!(d.kind, DecisionKind::SuppressedQuietHours);
        assert!(d.reason().ends_with("but the subject already holds 32 sends: dropped"), "{}", d.reason());
        // Released at 12:00: decided again there, and counted.
        let mut released = intent("1", Purpose::Transactional, "promo");
        let until = d.quiet.as_ref().map(|q| q.until_ms).unwrap();
        released.released_at_ms = Some(until);
        let d = decide(released, to(), &table, &rules(&cfg, &caps, &quiet), &mut state, true);
        assert_eq!(d.kind, DecisionKind::Allowed);
        assert!(!state.is_empty(), "counted at the release");
    }

    #[test]
    fn consent_then_caps_with_reasons() {
        let caps = one_a_day();
        let cfg = ConsentConfig::default();
        let quiet = QuietHours::new(&Default::default()).unwrap();
        let mut table = ConsentTable::new();
        let mut state = SubjectCaps::default();

        let d = decide(
            intent("1", Purpose::Marketing, "promo"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!(d.kind, DecisionKind::SuppressedConsent);
        assert_eq!(d.reason(), "consent missing(default deny)");
        assert!(state.is_empty(), "suppressed intents are not counted");

        table.apply(&ConsentChange::Set {
            subject: SubjectRef { tenant_id: "acme".into(), subject_id: "u".into() },
            channel: Channel::Email,
            purpose: Purpose::Marketing,
            status: ConsentStatus::Granted,
            updated_at_ms: 1,
            source: String::new(),
        });
        let d = decide(
            intent("2", Purpose::Marketing, "promo"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!(d.kind, DecisionKind::Allowed);
        let d = decide(
            intent("3", Purpose::Marketing, "promo"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!(d.kind, DecisionKind::SuppressedCap);
        assert_eq!(d.reason(), "cap daily: 1 of 1 per calendar day");
        assert_eq!(d.caps_version, caps.version());

        let d = decide(
            intent("4", Purpose::Transactional, "transactional"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!(d.kind, DecisionKind::Allowed, "transactional: default allow, category exempt");

        // The allowed intent "2", decided again after a restart, is allowed again and not counted twice.
        let before = state.clone();
        let d = decide(
            intent("2", Purpose::Marketing, "promo"),
            to(),
            &table,
            &rules(&cfg, &caps, &quiet),
            &mut state,
            true,
        );
        assert_eq!((d.kind, d.replayed), (DecisionKind::Allowed, true));
        assert_eq!(state, before);
        assert!(d.reason().starts_with("already allowed"));
    }
}
