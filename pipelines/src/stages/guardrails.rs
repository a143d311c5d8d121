//! The subject-keyed operator: consent join, journeys, send intents and frequency caps.
//!
//! State is keyed by subject (tenant + subject id). Records are routed with a timely exchange on a
//! stable hash of the key into one of [`KEY_GROUPS`] key groups, and key group `g` lives on worker
//! `g mod W`. Co-location therefore does not depend on how producers partitioned the topics, and a fixed
//! number of key groups lets a pipeline restart with another worker count (state is restored per key).
//!
//! Per epoch, once every input is complete, the operator
//! 1. applies the epoch's consent changes (a revocation processed in this or an earlier epoch blocks
//!    every later decision);
//! 2. fires the journey timers due at or before the watermark (in due-time order);
//! 3. decides the intents of the rules in the pipeline file, in competition order (priority, event time,
//!    key);
//! 4. moves subjects through journeys by the epoch's events, in event-time order; a journey's sends are
//!    decided on the spot, so the journey can follow the outcome;
//! 5. emits the changed state of every touched subject for the changelogs.
//!
//! Under `processing.guarantee: exactly_once_keys` every send intent is first looked up in the
//! subject's send ledger ([`SubjectSends`]): a key already decided is skipped (no decision row, no send);
//! a journey follows the recorded outcome (sent, or suppressed with the recorded reason). The ledger travels in the same changelog record
//! as the cap counters ([`SubjectSendState`]), written only once the epoch's sends and decision rows are
//! durable (`crate::topology`), so a restored ledger never names a send that is not out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat};
use timely::dataflow::Stream;
use touchpoint_operators::consent::{
    Applied, Channel, ConsentChange, ConsentConfig, ConsentTable, Purpose, SubjectRef,
};
use touchpoint_operators::decision::{decide, Decision, DecisionKind};
use touchpoint_operators::frequency_cap::{CapVerdict, FrequencyCaps, SubjectCaps};
use touchpoint_operators::intent::{IntentRules, SendIntent};
use touchpoint_operators::journey::{Guardrails, Journeys, SubjectJourneys, Transition};
use touchpoint_operators::send_ledger::{Decided, ProcessingGuarantee, SubjectSends};
use touchpoint_schemas::NormalizedEvent;

use super::Epoch;
use touchpoint_operators::FastHashMap;

/// Fixed number of key groups (like Flink's max parallelism).
pub const KEY_GROUPS: u64 = 256;

pub fn key_group(subject: &SubjectRef) -> u64 {
    key_group_of(&subject.tenant_id, &subject.subject_id)
}

/// [`key_group`] of a subject given by its parts: the hash of `tenant \0 subject`, on the stack for
/// ids of usual length (the exchange routes every event by it; building a `SubjectRef` and a buffer
/// for that were three allocations per event).
pub fn key_group_of(tenant_id: &str, subject_id: &str) -> u64 {
    const INLINE: usize = 256;
    let len = tenant_id.len() + subject_id.len() + 1;
    let fill = |buf: &mut [u8]| {
        buf[..tenant_id.len()].copy_from_slice(tenant_id.as_bytes());
        buf[tenant_id.len()] = 0;
        buf[tenant_id.len() + 1..].copy_from_slice(subject_id.as_bytes());
    };
    let hash = if len <= INLINE {
        let mut buf = [0u8; INLINE];
        fill(&mut buf[..len]);
        xxhash_rust::xxh3::xxh3_64(&buf[..len])
    } else {
        let mut buf = vec![0u8; len];
        fill(&mut buf);
        xxhash_rust::xxh3::xxh3_64(&buf)
    };
    hash % KEY_GROUPS
}

/// The worker that owns a subject's state.
pub fn owner(subject: &SubjectRef, peers: usize) -> usize {
    (key_group(subject) % peers as u64) as usize
}

fn subject_of(e: &NormalizedEvent) -> SubjectRef {
    SubjectRef::new(&e.tenant_id, &e.subject_id)
}

/// A subject's state of one kind after an epoch, for its changelog (`None`: nothing left, forget it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSnapshot<T> {
    pub subject: SubjectRef,
    pub state: Option<T>,
}

/// A subject's counting and sending state: its cap counters and its send ledger, one changelog record
/// (`<group>.caps-changelog`), so that a restore never finds one without the other. Records written
/// before the ledger existed (bare cap counters) read as an empty ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSendState {
    #[serde(flatten)]
    pub caps: SubjectCaps,
    #[serde(default, skip_serializing_if = "SubjectSends::is_empty")]
    pub sends: SubjectSends,
}

impl SubjectSendState {
    /// Drops cap counters no window can see at event time `event_now_ms` and ledger keys older than the
    /// TTL at wall-clock `wall_now_ms`. Returns true when nothing is left.
    fn expire(&mut self, rules: &GuardrailRules, event_now_ms: i64, wall_now_ms: i64) -> bool {
        let caps_empty = rules.caps.expire(&mut self.caps, event_now_ms);
        let sends_empty = self.sends.expire(wall_now_ms, rules.send_ledger_ttl);
        caps_empty && sends_empty
    }
}

pub type CapSnapshot = SubjectSnapshot<SubjectSendState>;
pub type JourneySnapshot = SubjectSnapshot<SubjectJourneys>;

#[derive(Debug, Clone, PartialEq)]
pub enum GuardrailOutput {
    /// Shared by the two sinks that read decisions (ClickHouse `decisions`, and the connector topics for
    /// allowed ones): timely hands a stream read by two operators a copy of every record, and a copy of an
    /// `Arc` is a count, not a deep copy of the intent's strings and payload.
    Decision(Arc<Decision>),
    Caps(CapSnapshot),
    Journeys(JourneySnapshot),
    Transition(Box<Transition>),
    /// An event of the epoch, passed on to ClickHouse `events` once it has driven the decisions (events
    /// a previous run stored are not passed on). The keyed operator only reads events, so they travel
    /// through it instead of being copied for the store before it.
    Event(NormalizedEvent),
}

impl GuardrailOutput {
    /// Output streams, in [`crate::topology`]: decisions, transitions, cap state, journey state, events.
    pub const PARTS: u64 = 5;

    pub fn part(&self) -> u64 {
        match self {
            GuardrailOutput::Decision(_) => 0,
            GuardrailOutput::Transition(_) => 1,
            GuardrailOutput::Caps(_) => 2,
            GuardrailOutput::Journeys(_) => 3,
            GuardrailOutput::Event(_) => 4,
        }
    }

    pub fn into_decision(self) -> Option<Arc<Decision>> {
        if let GuardrailOutput::Decision(d) = self {
            Some(d)
        } else {
            None
        }
    }

    pub fn into_transition(self) -> Option<Transition> {
        if let GuardrailOutput::Transition(t) = self {
            Some(*t)
        } else {
            None
        }
    }

    pub fn into_caps(self) -> Option<CapSnapshot> {
        if let GuardrailOutput::Caps(c) = self {
            Some(c)
        } else {
            None
        }
    }

    pub fn into_journeys(self) -> Option<JourneySnapshot> {
        if let GuardrailOutput::Journeys(j) = self {
            Some(j)
        } else {
            None
        }
    }

    pub fn into_event(self) -> Option<NormalizedEvent> {
        if let GuardrailOutput::Event(e) = self {
            Some(e)
        } else {
            None
        }
    }
}

/// The non-keyed side input: consent changes (exchanged by subject) and the watermark (local).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Side {
    Consent(ConsentChange),
    Watermark(i64),
}

/// The keyed state one worker holds.
#[derive(Default)]
pub struct GuardrailState {
    pub consent: ConsentTable,
    /// Cap counters and send ledger.
    pub caps: FastHashMap<SubjectRef, SubjectSendState>,
    pub journeys: FastHashMap<SubjectRef, SubjectJourneys>,
}

/// The rules the operator applies.
pub struct GuardrailRules {
    pub intents: IntentRules,
    pub consent: ConsentConfig,
    pub caps: FrequencyCaps,
    pub journeys: Journeys,
    pub guarantee: ProcessingGuarantee,
    /// How long the send ledger remembers a key (wall clock); longer than any replay window.
    pub send_ledger_ttl: Duration,
}

impl GuardrailRules {
    /// The rules of a pipeline file, with its journeys already loaded (current and archived versions).
    pub fn from_config(config: &crate::PipelineConfig, journeys: Journeys) -> anyhow::Result<Self> {
        Ok(GuardrailRules {
            intents: IntentRules::new(&config.intents).map_err(anyhow::Error::msg)?,
            consent: config.consent.clone(),
            caps: FrequencyCaps::new(&config.caps).map_err(anyhow::Error::msg)?,
            journeys,
            guarantee: config.processing.guarantee,
            send_ledger_ttl: config.processing.send_ledger_ttl,
        })
    }
}

/// The send ledger's default memory: longer than any replay a team would run after an incident.
pub const DEFAULT_SEND_LEDGER_TTL: Duration = Duration::from_secs(7 * 86_400);

/// What arrived for one epoch: its capability, the events and the side records.
/// An epoch's events as the containers that brought them (never copied into one vector).
type EpochInputs = (Capability<Epoch>, Vec<Vec<(NormalizedEvent, bool)>>, Vec<Side>);

/// Consent and caps for one subject, as the journey machine sees them; collects the decisions.
struct SubjectGuardrails<'a> {
    subject: &'a SubjectRef,
    consent: &'a ConsentTable,
    rules: &'a GuardrailRules,
    state: &'a mut SubjectSendState,
    /// Shared from the start (the sinks receive them as `Arc`s): a growing vector of pointers moves
    /// 8 bytes per decision when it doubles, not the whole decision.
    decisions: &'a mut Vec<Arc<Decision>>,
    /// A send was counted or entered in the ledger: the subject's record must be written.
    changed: bool,
    /// Sends skipped because the ledger had their key (allowed, suppressed).
    already_sent: u64,
    already_suppressed: u64,
    /// Wall clock of the epoch, for ledger entries.
    now_ms: i64,
}

impl Guardrails for SubjectGuardrails<'_> {
    fn consent(&self, channel: Channel, purpose: Purpose) -> bool {
        self.consent.verdict(self.subject, channel, purpose, &self.rules.consent).allowed
    }

    fn send(&mut self, intent: SendIntent) -> Result<(), String> {
        let ledger = self.rules.guarantee == ProcessingGuarantee::ExactlyOnceKeys;
        if ledger {
            // Decided before (and its decision row stored): re-processing; the outcome stands.
            match self.state.sends.lookup(&intent.idempotency_key) {
                Some(Decided::Sent) => {
                    self.already_sent += 1;
                    return Ok(());
                }
                Some(Decided::Suppressed(reason)) => {
                    self.already_suppressed += 1;
                    return Err(reason.unwrap_or("suppressed before (send ledger)").to_string());
                }
                None => {}
            }
        }
        let decision = decide(intent, self.consent, &self.rules.consent, &self.rules.caps, &mut self.state.caps);
        let allowed = decision.kind == DecisionKind::Allowed;
        self.changed |= allowed && decision.cap == Some(CapVerdict::Allowed);
        if ledger {
            let key = &decision.intent.idempotency_key;
            if allowed {
                self.state.sends.record_sent(key, self.now_ms);
            } else {
                // A journey followed the reason (it is in its transition): keep it for a re-run.
                let reason = decision.intent.journey.is_some().then(|| decision.reason());
                self.state.sends.record_suppressed(key, self.now_ms, reason);
            }
            self.changed = true;
        }
        let outcome = if allowed { Ok(()) } else { Err(decision.reason()) };
        self.decisions.push(Arc::new(decision));
        outcome
    }
}

/// What one epoch's decisions collect, for every subject the operator lends its state to.
struct EpochDecisions {
    decisions: Vec<Arc<Decision>>,
    already_sent: u64,
    already_suppressed: u64,
    /// Wall clock at the start of the epoch (ledger entries, ledger expiry).
    now_ms: i64,
}

/// Runs `f` with the subject's consent, caps and send ledger as [`Guardrails`] (every send decided in
/// it lands in `epoch.decisions`) and returns its result and whether the subject's send state changed.
/// A subject without state gets a fresh one, kept only if used, so subjects that never had a counted or
/// ledgered send hold none.
fn with_guardrails<R>(
    caps: &mut FastHashMap<SubjectRef, SubjectSendState>,
    consent: &ConsentTable,
    rules: &GuardrailRules,
    subject: &SubjectRef,
    epoch: &mut EpochDecisions,
    f: impl FnOnce(&mut SubjectGuardrails<'_>) -> R,
) -> (R, bool) {
    // Lent in place when the subject has state (one lookup); a fresh state is kept only if it was used.
    let mut fresh = SubjectSendState::default();
    let held = caps.get_mut(subject);
    let had_state = held.is_some();
    let state = held.unwrap_or(&mut fresh);
    let mut g = SubjectGuardrails {
        subject,
        consent,
        rules,
        state,
        decisions: &mut epoch.decisions,
        changed: false,
        already_sent: 0,
        already_suppressed: 0,
        now_ms: epoch.now_ms,
    };
    let result = f(&mut g);
    let changed = g.changed;
    epoch.already_sent += g.already_sent;
    epoch.already_suppressed += g.already_suppressed;
    // Deciding a send only adds to a state (expiry removes, elsewhere): a held state stays non-empty.
    if !had_state && fresh != SubjectSendState::default() {
        caps.insert(subject.clone(), fresh);
    }
    (result, changed)
}

/// Journey timers of this worker's subjects: (due, subject).
#[derive(Default)]
struct Timers(BTreeSet<(i64, SubjectRef)>);

impl Timers {
    fn update(&mut self, subject: &SubjectRef, before: Option<i64>, after: Option<i64>) {
        if before != after {
            if let Some(b) = before {
                self.0.remove(&(b, subject.clone()));
            }
            if let Some(a) = after {
                self.0.insert((a, subject.clone()));
            }
        }
    }
}

/// One worker's share of the subject-keyed work, without the dataflow around it: the keyed state, the
/// journey timers and the watermark. [`guardrails`] feeds it one complete epoch at a time; benchmarks
/// and tests can drive it directly.
pub struct GuardrailWorker {
    state: GuardrailState,
    rules: GuardrailRules,
    timers: Timers,
    watermark: i64,
    epochs_since_sweep: u32,
}

impl GuardrailWorker {
    pub fn new(state: GuardrailState, rules: GuardrailRules) -> Self {
        let mut timers = Timers::default();
        for (subject, j) in &state.journeys {
            timers.update(subject, None, j.next_due());
        }
        GuardrailWorker { state, rules, timers, watermark: i64::MIN, epochs_since_sweep: 0 }
    }

    pub fn state(&self) -> &GuardrailState {
        &self.state
    }

    /// A consent change for one of this worker's subjects (applies to every later decision).
    pub fn apply_consent(&mut self, change: &ConsentChange) {
        if self.state.consent.apply(change) == Applied::ReplacedNewer {
            // The log order wins (it is what compaction keeps); a producer writing an older state later
            // is worth knowing about, since it may re-open a channel someone closed.
            tracing::warn!(key = %change.key(), "a consent record replaced one with a newer updated_at (the later write wins)");
        }
    }

    /// The watermark only moves forward.
    pub fn advance_watermark(&mut self, watermark: i64) {
        self.watermark = self.watermark.max(watermark);
    }

    /// Processes one complete epoch (its consent changes and watermark already applied): fires due journey
    /// timers, decides the rules' intents, moves subjects by the events; appends decisions, transitions,
    /// the changed subjects' state and the events to store to `out`. Each event comes with its "already
    /// stored" flag (a previous run stored it: it drives decisions, and is not passed on to be stored
    /// again). The events come as the containers that brought them. `now_ms` is the wall clock of the
    /// epoch (send ledger).
    pub fn process_epoch(
        &mut self,
        epoch_events: Vec<Vec<(NormalizedEvent, bool)>>,
        now_ms: i64,
        out: &mut Vec<GuardrailOutput>,
    ) {
        let GuardrailWorker { state, rules, timers, watermark, epochs_since_sweep } = self;
        let watermark = *watermark;
        let mut decided = EpochDecisions { decisions: Vec::new(), already_sent: 0, already_suppressed: 0, now_ms };
        let mut transitions = Vec::new();
        // Ordered sets: the snapshot records come out in the same order in every run.
        let mut caps_touched = BTreeSet::new();
        let mut journeys_touched = BTreeSet::new();

        // 1. Journey timers due by the watermark.
        while let Some((due, subject)) = timers.0.first().cloned() {
            if due > watermark {
                break;
            }
            timers.0.remove(&(due, subject.clone()));
            let Some(journey_state) = state.journeys.get_mut(&subject) else { continue };
            let (moved, counted) =
                with_guardrails(&mut state.caps, &state.consent, rules, &subject, &mut decided, |g| {
                    rules.journeys.on_time(&subject, journey_state, watermark, g)
                });
            transitions.extend(moved);
            if counted {
                caps_touched.insert(subject.clone());
            }
            // Every timer of the subject due by the watermark has fired: the next is later.
            timers.update(&subject, None, journey_state.next_due());
            if journey_state.is_empty() {
                state.journeys.remove(&subject);
            }
            journeys_touched.insert(subject);
        }

        // 2. Rule-driven intents, in competition order.
        let mut intents: Vec<SendIntent> =
            epoch_events.iter().flatten().flat_map(|(e, _)| rules.intents.intents_for(e)).collect();
        intents.sort_by(SendIntent::compete_order);
        for intent in intents {
            let subject = intent.subject.clone();
            let ((), counted) = with_guardrails(&mut state.caps, &state.consent, rules, &subject, &mut decided, |g| {
                // The outcome is in the decision; a rule has nothing to follow up.
                let _ = g.send(intent);
            });
            // Only counted sends change the state (and need a changelog record).
            if counted {
                caps_touched.insert(subject);
            }
        }

        // 3. Journeys, by event time.
        if !rules.journeys.is_empty() {
            // Most events neither move a subject nor enter its history: only the others are ordered, by
            // reference (no event moves). Unstable: events of one subject share its tenant, so their ids
            // differ and the order is total where it matters.
            let mut ordered: Vec<&NormalizedEvent> = epoch_events
                .iter()
                .flatten()
                .map(|(e, _)| e)
                .filter(|e| rules.journeys.concerns(&e.event_type))
                .collect();
            ordered.sort_unstable_by(|a, b| {
                a.occurred_at_ms.cmp(&b.occurred_at_ms).then_with(|| a.event_id.cmp(&b.event_id))
            });
            for event in ordered {
                let subject = subject_of(event);
                let journey_state = state.journeys.entry(subject.clone()).or_default();
                let before = journey_state.next_due();
                let (moved, counted) =
                    with_guardrails(&mut state.caps, &state.consent, rules, &subject, &mut decided, |g| {
                        rules.journeys.on_event(&subject, journey_state, event, g)
                    });
                if counted {
                    caps_touched.insert(subject.clone());
                }
                timers.update(&subject, before, journey_state.next_due());
                // A remembered event type changes the history even when it is full.
                if !moved.is_empty() || rules.journeys.remembers(&event.event_type) {
                    journeys_touched.insert(subject.clone());
                }
                transitions.extend(moved);
                if journey_state.is_empty() {
                    state.journeys.remove(&subject);
                }
            }
        }

        if decided.already_sent + decided.already_suppressed > 0 {
            tracing::info!(
                sent = decided.already_sent,
                suppressed = decided.already_suppressed,
                "intents already decided before (send ledger): not decided or sent again"
            );
            crate::metrics::SENDS_ALREADY_EMITTED.add(decided.already_sent);
            crate::metrics::SUPPRESSED_ALREADY_DECIDED.add(decided.already_suppressed);
        }
        let allowed = decided.decisions.iter().filter(|d| d.kind == DecisionKind::Allowed).count();
        crate::metrics::SENDS_EMITTED.add(allowed as u64);
        // Sized once: outputs are large (an event inline) and growing by doubling copied each of them.
        let events: usize = epoch_events.iter().map(Vec::len).sum();
        out.reserve(decided.decisions.len() + transitions.len() + caps_touched.len() + journeys_touched.len() + events);
        out.extend(decided.decisions.into_iter().map(GuardrailOutput::Decision));
        out.extend(transitions.into_iter().map(|t| GuardrailOutput::Transition(Box::new(t))));
        // Cap counters expire against the watermark, not the newest event time: an epoch spans many
        // subjects, and its newest event may lie hours past a subject's next one (found by the chaos
        // test: a rolling-1h counter dropped between a subject's two sends ten minutes apart). Events at
        // or after the watermark never need a counter older than twice the window before it.
        for subject in caps_touched {
            let keep = state.caps.get_mut(&subject).is_some_and(|s| !s.expire(rules, watermark, now_ms));
            let snapshot = if keep {
                state.caps.get(&subject).cloned()
            } else {
                state.caps.remove(&subject);
                None
            };
            out.push(GuardrailOutput::Caps(SubjectSnapshot { subject, state: snapshot }));
        }
        for subject in journeys_touched {
            let snapshot = state.journeys.get(&subject).filter(|j| !j.is_empty()).cloned();
            out.push(GuardrailOutput::Journeys(SubjectSnapshot { subject, state: snapshot }));
        }
        // Now and then, drop the counters of subjects that went quiet (and tell the changelog).
        *epochs_since_sweep += 1;
        if *epochs_since_sweep >= 1_000 {
            *epochs_since_sweep = 0;
            let before = state.caps.len();
            let mut expired = Vec::new();
            state.caps.retain(|subject, s| {
                let keep = !s.expire(rules, watermark, now_ms);
                if !keep {
                    expired.push(subject.clone());
                }
                keep
            });
            for subject in expired {
                out.push(GuardrailOutput::Caps(SubjectSnapshot { subject, state: None }));
            }
            tracing::debug!(expired = before - state.caps.len(), subjects = state.caps.len(), "swept cap state");
        }
        out.extend(
            epoch_events
                .into_iter()
                .flatten()
                .filter(|(_, already_stored)| !already_stored)
                .map(|(e, _)| GuardrailOutput::Event(e)),
        );
    }
}

/// The keyed operator; `events` carry their "already stored" flag (see [`GuardrailWorker::process_epoch`]).
pub fn guardrails<'s>(
    events: Stream<'s, Epoch, Vec<(NormalizedEvent, bool)>>,
    consent: Stream<'s, Epoch, Vec<ConsentChange>>,
    watermarks: Stream<'s, Epoch, Vec<i64>>,
    state: GuardrailState,
    rules: GuardrailRules,
) -> Stream<'s, Epoch, Vec<GuardrailOutput>> {
    // Consent goes to the subject's owner; the watermark stays on this worker (every worker holds it).
    use timely::dataflow::operators::Exchange as _;
    let side = consent
        .exchange(|c: &ConsentChange| key_group(c.subject()))
        .map(Side::Consent)
        .concat(watermarks.map(Side::Watermark));
    let mut worker = GuardrailWorker::new(state, rules);
    events.binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<GuardrailOutput>>, _, _, _, _>(
        side,
        Exchange::new(|(e, _): &(NormalizedEvent, bool)| key_group_of(&e.tenant_id, &e.subject_id)),
        Pipeline,
        "Guardrails",
        move |_, _| {
            let mut pending: BTreeMap<Epoch, EpochInputs> = BTreeMap::new();
            let mut out = Vec::new();
            move |(events_in, events_frontier), (side_in, side_frontier), output| {
                events_in.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry =
                        pending.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new(), Vec::new()));
                    for batch in data {
                        entry.1.push(std::mem::take(batch));
                    }
                });
                side_in.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry =
                        pending.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new(), Vec::new()));
                    for batch in data {
                        entry.2.append(batch);
                    }
                });
                while let Some((&epoch, _)) = pending.first_key_value() {
                    if events_frontier.frontier().less_equal(&epoch) || side_frontier.frontier().less_equal(&epoch) {
                        break;
                    }
                    let Some((cap, epoch_events, sides)) = pending.remove(&epoch) else { break };
                    // Consent first (a revocation in this epoch blocks its decisions), then the watermark.
                    for side in sides {
                        match side {
                            Side::Consent(change) => worker.apply_consent(&change),
                            Side::Watermark(w) => worker.advance_watermark(w),
                        }
                    }
                    worker.process_epoch(epoch_events, chrono::Utc::now().timestamp_millis(), &mut out);
                    output.session(&cap).give_iterator(out.drain(..));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_the_hash_of_tenant_nul_subject_for_short_and_long_ids() {
        // Key groups decide which worker owns (and restores) a subject: they must not change.
        let reference = |tenant: &str, subject: &str| {
            let bytes = [tenant.as_bytes(), &[0], subject.as_bytes()].concat();
            xxhash_rust::xxh3::xxh3_64(&bytes) % KEY_GROUPS
        };
        let long = "x".repeat(300);
        for (tenant, subject) in [("acme", "user-42"), ("", ""), ("default", long.as_str()), (long.as_str(), "s")] {
            assert_eq!(key_group_of(tenant, subject), reference(tenant, subject), "{tenant:.10}/{subject:.10}");
            let s = SubjectRef { tenant_id: tenant.into(), subject_id: subject.into() };
            assert_eq!(key_group(&s), reference(tenant, subject));
        }
    }
}
