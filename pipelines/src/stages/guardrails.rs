//! Send intents and their guardrails: consent join and frequency caps, on keyed state.
//!
//! State is keyed by subject (tenant + subject id). Records are routed with a timely exchange on a
//! stable hash of the key into one of [`KEY_GROUPS`] key groups, and key group `g` lives on worker
//! `g mod W`. Co-location therefore does not depend on how producers partitioned the topics, and a fixed
//! number of key groups lets a pipeline restart with another worker count (state is restored per key).
//!
//! Per epoch, once both inputs are complete, the operator first applies the epoch's consent changes,
//! then decides the epoch's intents in competition order (priority, event time, key). A revocation
//! processed in the same or an earlier epoch therefore blocks every later decision.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use touchpoint_operators::consent::{ConsentChange, ConsentConfig, ConsentTable, SubjectRef};
use touchpoint_operators::decision::{decide, Decision, DecisionKind};
use touchpoint_operators::frequency_cap::{CapVerdict, FrequencyCaps, SubjectCaps};
use touchpoint_operators::intent::{IntentRules, SendIntent};
use touchpoint_schemas::NormalizedEvent;

use super::Epoch;

/// Fixed number of key groups (like Flink's max parallelism).
pub const KEY_GROUPS: u64 = 256;

pub fn key_group(subject: &SubjectRef) -> u64 {
    let mut buf = Vec::with_capacity(subject.tenant_id.len() + subject.subject_id.len() + 1);
    buf.extend_from_slice(subject.tenant_id.as_bytes());
    buf.push(0);
    buf.extend_from_slice(subject.subject_id.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&buf) % KEY_GROUPS
}

/// The worker that owns a subject's state.
pub fn owner(subject: &SubjectRef, peers: usize) -> usize {
    (key_group(subject) % peers as u64) as usize
}

/// A subject's cap counters after an epoch, for the changelog (`None`: nothing left, forget it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSnapshot {
    pub subject: SubjectRef,
    pub caps: Option<SubjectCaps>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuardrailOutput {
    Decision(Box<Decision>),
    Snapshot(CapSnapshot),
}

/// Intents triggered by events (rules from the pipeline file).
pub fn intents<'s>(
    events: Stream<'s, Epoch, Vec<NormalizedEvent>>,
    rules: IntentRules,
) -> Stream<'s, Epoch, Vec<SendIntent>> {
    events.unary::<timely::container::CapacityContainerBuilder<Vec<SendIntent>>, _, _, _>(
        Pipeline,
        "SendIntents",
        move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for event in batch.iter() {
                            session.give_iterator(rules.intents_for(event).into_iter());
                        }
                    }
                });
            }
        },
    )
}

/// What arrived for one epoch: its capability, the intents and the consent changes.
type EpochInputs = (Capability<Epoch>, Vec<SendIntent>, Vec<ConsentChange>);

/// The keyed state one worker holds.
#[derive(Default)]
pub struct GuardrailState {
    pub consent: ConsentTable,
    pub caps: HashMap<SubjectRef, SubjectCaps>,
}

pub fn guardrails<'s>(
    intents: Stream<'s, Epoch, Vec<SendIntent>>,
    consent: Stream<'s, Epoch, Vec<ConsentChange>>,
    mut state: GuardrailState,
    consent_config: ConsentConfig,
    caps: FrequencyCaps,
) -> Stream<'s, Epoch, Vec<GuardrailOutput>> {
    intents.binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<GuardrailOutput>>, _, _, _, _>(
        consent,
        Exchange::new(|i: &SendIntent| key_group(&i.subject)),
        Exchange::new(|c: &ConsentChange| key_group(c.subject())),
        "Guardrails",
        move |_, _| {
            let mut pending: BTreeMap<Epoch, EpochInputs> = BTreeMap::new();
            let mut newest_event_ms = i64::MIN;
            let mut epochs_since_sweep = 0u32;
            move |(intents_in, intents_frontier), (consent_in, consent_frontier), output| {
                intents_in.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry =
                        pending.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new(), Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                consent_in.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry =
                        pending.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new(), Vec::new()));
                    for batch in data {
                        entry.2.append(batch);
                    }
                });
                while let Some((&epoch, _)) = pending.first_key_value() {
                    if intents_frontier.frontier().less_equal(&epoch) || consent_frontier.frontier().less_equal(&epoch)
                    {
                        break;
                    }
                    let Some((cap, mut epoch_intents, changes)) = pending.remove(&epoch) else { break };
                    for change in &changes {
                        state.consent.apply(change);
                    }
                    epoch_intents.sort_by(SendIntent::compete_order);
                    let mut session = output.session(&cap);
                    let mut touched = HashSet::new();
                    for intent in epoch_intents {
                        newest_event_ms = newest_event_ms.max(intent.occurred_at_ms);
                        let subject = intent.subject.clone();
                        let cap_state = state.caps.entry(subject.clone()).or_default();
                        let decision = decide(intent, &state.consent, &consent_config, &caps, cap_state);
                        // Only counted sends change the state (and need a changelog record).
                        if decision.kind == DecisionKind::Allowed && decision.cap == Some(CapVerdict::Allowed) {
                            touched.insert(subject);
                        }
                        session.give(GuardrailOutput::Decision(Box::new(decision)));
                    }
                    for subject in touched {
                        let keep = state.caps.get_mut(&subject).is_some_and(|s| !caps.expire(s, newest_event_ms));
                        let snapshot = if keep {
                            state.caps.get(&subject).cloned()
                        } else {
                            state.caps.remove(&subject);
                            None
                        };
                        session.give(GuardrailOutput::Snapshot(CapSnapshot { subject, caps: snapshot }));
                    }
                    // Now and then, drop the counters of subjects that went quiet.
                    epochs_since_sweep += 1;
                    if epochs_since_sweep >= 1_000 {
                        epochs_since_sweep = 0;
                        let before = state.caps.len();
                        state.caps.retain(|_, s| !caps.expire(s, newest_event_ms));
                        tracing::debug!(
                            expired = before - state.caps.len(),
                            subjects = state.caps.len(),
                            "swept cap state"
                        );
                    }
                }
            }
        },
    )
}
