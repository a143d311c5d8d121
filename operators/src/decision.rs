//! The guardrails every send intent passes: consent first, then frequency caps. Every intent gets a
//! decision; only allowed ones are counted by the caps and sent.

use serde::{Deserialize, Serialize};

use crate::consent::{ConsentConfig, ConsentTable, ConsentVerdict};
use crate::frequency_cap::{CapQuery, CapVerdict, FrequencyCaps, SubjectCaps};
use crate::intent::SendIntent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allowed,
    SuppressedConsent,
    SuppressedCap,
    /// The subject's send ledger is full ([`crate::send_ledger::MAX_LEDGER_KEYS`] keys within its TTL):
    /// a flood of intents for one subject; none is sent until old keys expire.
    SuppressedLedgerFull,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allowed => "allowed",
            DecisionKind::SuppressedConsent => "suppressed_consent",
            DecisionKind::SuppressedCap => "suppressed_cap",
            DecisionKind::SuppressedLedgerFull => "suppressed_ledger_full",
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
}

impl Decision {
    /// A human explanation: which consent state, or which cap rule with its count and window.
    pub fn reason(&self) -> String {
        if self.replayed {
            return "already allowed and counted before a restart; not counted again".into();
        }
        match (&self.kind, &self.cap) {
            (DecisionKind::SuppressedLedgerFull, _) => format!(
                "send ledger full: {} decisions for this subject within the ledger TTL; none until older ones expire",
                crate::send_ledger::MAX_LEDGER_KEYS
            ),
            (DecisionKind::SuppressedConsent, _) => format!("consent {}", self.consent.describe()),
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
    intent: SendIntent,
    consent: &ConsentTable,
    consent_config: &ConsentConfig,
    caps: &FrequencyCaps,
) -> Decision {
    let verdict = consent.verdict(&intent.subject, intent.channel, intent.purpose, consent_config);
    let caps_version = caps.version().to_string();
    Decision {
        intent,
        kind: DecisionKind::SuppressedLedgerFull,
        consent: verdict,
        cap: None,
        caps_version,
        replayed: false,
    }
}

/// Consent then caps, for one intent. The caller passes the subject's keyed state.
pub fn decide(
    intent: SendIntent,
    consent: &ConsentTable,
    consent_config: &ConsentConfig,
    caps: &FrequencyCaps,
    cap_state: &mut SubjectCaps,
) -> Decision {
    let verdict = consent.verdict(&intent.subject, intent.channel, intent.purpose, consent_config);
    let caps_version = caps.version().to_string();
    if cap_state.already_counted(&intent.idempotency_key) {
        let cap = Some(CapVerdict::Allowed);
        return Decision { intent, kind: DecisionKind::Allowed, consent: verdict, cap, caps_version, replayed: true };
    }
    if !verdict.allowed {
        let kind = DecisionKind::SuppressedConsent;
        return Decision { intent, kind, consent: verdict, cap: None, caps_version, replayed: false };
    }
    let cap = caps.decide_keyed(
        cap_state,
        &CapQuery {
            channel: intent.channel,
            category: &intent.category,
            tags: &intent.tags,
            at_ms: intent.occurred_at_ms,
            time_zone: intent.time_zone.as_deref(),
        },
        &intent.idempotency_key,
    );
    let kind =
        if matches!(cap, CapVerdict::Capped { .. }) { DecisionKind::SuppressedCap } else { DecisionKind::Allowed };
    Decision { intent, kind, consent: verdict, cap: Some(cap), caps_version, replayed: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{ConsentChange, ConsentStatus};
    use crate::frequency_cap::{CalendarUnit, CapRule, CapWindow, CapsConfig};
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
        }
    }

    #[test]
    fn consent_then_caps_with_reasons() {
        let caps = FrequencyCaps::new(&CapsConfig {
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
        .unwrap();
        let cfg = ConsentConfig::default();
        let mut table = ConsentTable::new();
        let mut state = SubjectCaps::default();

        let d = decide(intent("1", Purpose::Marketing, "promo"), &table, &cfg, &caps, &mut state);
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
        let d = decide(intent("2", Purpose::Marketing, "promo"), &table, &cfg, &caps, &mut state);
        assert_eq!(d.kind, DecisionKind::Allowed);
        let d = decide(intent("3", Purpose::Marketing, "promo"), &table, &cfg, &caps, &mut state);
        assert_eq!(d.kind, DecisionKind::SuppressedCap);
        assert_eq!(d.reason(), "cap daily: 1 of 1 per calendar day");
        assert_eq!(d.caps_version, caps.version());

        let d = decide(intent("4", Purpose::Transactional, "transactional"), &table, &cfg, &caps, &mut state);
        assert_eq!(d.kind, DecisionKind::Allowed, "transactional: default allow, category exempt");

        // The allowed intent "2", decided again after a restart, is allowed again and not counted twice.
        let before = state.clone();
        let d = decide(intent("2", Purpose::Marketing, "promo"), &table, &cfg, &caps, &mut state);
        assert_eq!((d.kind, d.replayed), (DecisionKind::Allowed, true));
        assert_eq!(state, before);
        assert!(d.reason().starts_with("already allowed"));
    }
}
