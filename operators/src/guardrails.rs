//! The subject-keyed operator: consent join, journeys, send intents and frequency caps.
//!
//! State is keyed by subject (tenant + subject id); [`crate::key_groups`] says which worker holds a
//! subject. This module is the logic of one worker's share, without the dataflow around it: the timely
//! stage (`pipelines/src/stages/guardrails.rs`) routes records to their owner, feeds a
//! [`GuardrailWorker`] one complete epoch at a time and forwards the [`EpochOutput`] on typed outputs.
//!
//! Per epoch, once every input is complete, the operator
//! 1. applies the epoch's consent changes (a revocation processed in this or an earlier epoch blocks
//!    every later decision), then the profile updates its events carry;
//! 2. evaluates the segments of the subjects whose history (events of counted types, by event time),
//!    profile or time (segment timers due by the watermark) moved them; each entry or exit becomes a
//!    `segment_entered` / `segment_exited` event of the epoch for steps 4 and 5;
//! 3. fires the journey timers due at or before the watermark (in due-time order), then the releases
//!    of sends held by quiet hours;
//! 4. decides the intents of the rules in the pipeline file, in competition order (priority, event time,
//!    key);
//! 5. moves subjects through journeys by the epoch's events, in event-time order; a journey's sends are
//!    decided on the spot, so the journey can follow the outcome;
//! 6. emits the changed state of every touched subject for the changelogs, and the membership changes.
//!
//! Under `processing.guarantee: exactly_once_keys` every send intent is first looked up in the
//! subject's send ledger ([`SubjectSends`]): a key already decided is skipped (no decision row, no send);
//! a journey follows the recorded outcome (sent, or suppressed with the recorded reason). The ledger travels in the
//! same changelog record
//! as the cap counters ([`SubjectSendState`]), written only once the epoch's sends and decision rows are
//! durable (`pipelines/src/topology.rs`), so a restored ledger never names a send that is not out.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use touchpoint_schemas::NormalizedEvent;

use crate::consent::{Applied, ConsentChange, ConsentConfig, ConsentTable};

use crate::decision::{decide, suppress_ledger_full, Decision, DecisionKind, DecisionRules, MAX_HELD_SENDS};
use crate::evaluate::{EvaluateReply, EvaluateRequest};
use crate::fast_hash::FastHashMap;
use crate::frequency_cap::{CapVerdict, FrequencyCaps, SubjectCaps};
use crate::intent::{IntentRules, SendIntent};
use crate::journey::{Guardrails, Journeys, SendOutcome, SubjectJourneys, Transition};
use crate::profile::{resolve_recipient, ProfileChange, ProfileTable, ProfilesConfig, SubjectProfile};
use crate::quiet_hours::{utc_text, QuietHours};
use crate::read_event::ReadEvent;
use crate::segment::{SegmentChange, Segments, SubjectSegments};
use crate::send_ledger::{Decided, ProcessingGuarantee, SubjectSends};
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

fn subject_of(e: &NormalizedEvent) -> SubjectRef {
    SubjectRef::new(&e.tenant_id, &e.subject_id)
}

/// Event time, then id: the order in which the segments and the journeys take an epoch's events (the
/// same in every run; events of one subject share its tenant, so their ids differ).
fn by_event_time(a: &&NormalizedEvent, b: &&NormalizedEvent) -> std::cmp::Ordering {
    a.occurred_at_ms.cmp(&b.occurred_at_ms).then_with(|| a.event_id.cmp(&b.event_id))
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
    /// Sends held by quiet hours, each with the instant it is decided again (at most
    /// [`MAX_HELD_SENDS`]). In the same record as the ledger, so a restore finds a held send either
    /// held or decided, never both or neither.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldSend>,
}

/// A send held until the end of a quiet-hours window: the intent as it was first decided (before its
/// recipient was resolved, so the release resolves it again from the profile of that moment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSend {
    pub until_ms: i64,
    pub intent: SendIntent,
}

impl SubjectSendState {
    /// Drops cap counters no window can see at event time `event_now_ms` and ledger keys older than the
    /// TTL at wall-clock `wall_now_ms`. Returns true when nothing is left.
    fn expire(&mut self, rules: &GuardrailRules, event_now_ms: i64, wall_now_ms: i64) -> bool {
        let caps_empty = rules.caps.expire(&mut self.caps, event_now_ms);
        let sends_empty = self.sends.expire(wall_now_ms, rules.send_ledger_ttl);
        caps_empty && sends_empty && self.held.is_empty()
    }
}

pub type CapSnapshot = SubjectSnapshot<SubjectSendState>;
pub type JourneySnapshot = SubjectSnapshot<SubjectJourneys>;
pub type ProfileSnapshot = SubjectSnapshot<SubjectProfile>;
pub type SegmentSnapshot = SubjectSnapshot<SubjectSegments>;

/// The keyed state one worker holds.
#[derive(Default)]
pub struct GuardrailState {
    pub consent: ConsentTable,
    pub profiles: ProfileTable,
    /// Cap counters and send ledger.
    pub caps: FastHashMap<SubjectRef, SubjectSendState>,
    pub journeys: FastHashMap<SubjectRef, SubjectJourneys>,
    /// Segment memberships and the event history their conditions count.
    pub segments: FastHashMap<SubjectRef, SubjectSegments>,
}

/// The rules the operator applies.
pub struct GuardrailRules {
    pub intents: IntentRules,
    pub consent: ConsentConfig,
    pub caps: FrequencyCaps,
    pub journeys: Journeys,
    /// Which events update profiles (canonical type), and who may choose a recipient.
    pub profiles: ProfilesConfig,
    /// Windows in which sends are held or dropped.
    pub quiet: QuietHours,
    /// Streaming segments (`segments.dir`).
    pub segments: Segments,
    pub guarantee: ProcessingGuarantee,
    /// How long the send ledger remembers a key (wall clock); longer than any replay window.
    pub send_ledger_ttl: Duration,
}

impl GuardrailRules {
    fn decision_rules(&self) -> DecisionRules<'_> {
        DecisionRules { consent: &self.consent, caps: &self.caps, quiet: &self.quiet }
    }
}

/// The send ledger's default memory: longer than any replay a team would run after an incident.
pub const DEFAULT_SEND_LEDGER_TTL: Duration = Duration::from_secs(7 * 86_400);

/// What one epoch of a worker produced, by kind: each goes to its own output of the timely stage.
#[derive(Debug, Default)]
pub struct EpochOutput {
    /// Every decision, allowed or suppressed (shared: the decision rows and the sends both read them).
    pub decisions: Vec<Arc<Decision>>,
    pub transitions: Vec<Transition>,
    /// The changed subjects' cap counters and send ledger (`None`: forget the subject).
    pub caps: Vec<CapSnapshot>,
    /// The changed subjects' journey state.
    pub journeys: Vec<JourneySnapshot>,
    /// The changed subjects' profiles (`None`: forgotten).
    pub profiles: Vec<ProfileSnapshot>,
    /// The changed subjects' segment state (`None`: nothing left).
    pub segments: Vec<SegmentSnapshot>,
    /// Segment entries and exits, in the order they were evaluated.
    pub memberships: Vec<SegmentChange>,
    /// The epoch's events to store (those a previous run stored are left out).
    pub events: Vec<NormalizedEvent>,
    pub counts: EpochCounts,
}

/// What the caller reports of an epoch (metrics, logs); the operator itself updates none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EpochCounts {
    /// Allowed decisions: sends to emit.
    pub allowed: u64,
    /// Intents skipped because the send ledger had their key, as sent or as suppressed.
    pub already_sent: u64,
    pub already_suppressed: u64,
}

/// Consent and caps for one subject, as the journey machine sees them; collects the decisions.
struct SubjectGuardrails<'a> {
    subject: &'a SubjectRef,
    consent: &'a ConsentTable,
    profile: Option<&'a SubjectProfile>,
    segments: Option<&'a SubjectSegments>,
    rules: &'a GuardrailRules,
    state: &'a mut SubjectSendState,
    /// Shared from the start (the sinks receive them as `Arc`s): a growing vector of pointers moves
    /// 8 bytes per decision when it doubles, not the whole decision.
    decisions: &'a mut Vec<Arc<Decision>>,
    /// Sends held in this epoch: (release instant, subject), for the release timers.
    held: &'a mut Vec<(i64, SubjectRef)>,
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

    fn profile_value(&self, path: &[String]) -> Option<serde_json::Value> {
        self.profile?.field(path)
    }

    fn in_segment(&self, name: &str) -> bool {
        Segments::is_member(self.segments, name)
    }

    fn send(&mut self, mut intent: SendIntent) -> SendOutcome {
        // Held already (the triggering event processed again): it waits for its release.
        if let Some(h) = self.state.held.iter().find(|h| h.intent.idempotency_key == intent.idempotency_key) {
            return SendOutcome::Held(format!("held before, until {}", utc_text(h.until_ms)));
        }
        // Kept as it came, should quiet hours hold it.
        let original = (!self.rules.quiet.is_empty()).then(|| intent.clone());
        // Where it goes, in which zone its calendar caps count, and the profile fields templates merge.
        let policy = self.rules.profiles.recipients.policy(intent.purpose);
        let recipient = resolve_recipient(self.profile, intent.channel, policy, intent.recipient.as_deref());
        if let Some(profile) = self.profile {
            if let Some(zone) = profile.time_zone() {
                intent.time_zone = Some(zone.to_string());
            }
            let fields = profile.merge_fields();
            if !fields.is_empty() {
                intent.payload.insert("profile".into(), serde_json::Value::Object(fields));
            }
        }
        let ledger = self.rules.guarantee == ProcessingGuarantee::ExactlyOnceKeys;
        if ledger {
            // Decided before (and its decision row stored): re-processing; the outcome stands.
            match self.state.sends.lookup(&intent.idempotency_key) {
                Some(Decided::Sent) => {
                    self.already_sent += 1;
                    return SendOutcome::Sent;
                }
                Some(Decided::Suppressed(reason)) => {
                    self.already_suppressed += 1;
                    return SendOutcome::Suppressed(reason.unwrap_or("suppressed before (send ledger)").to_string());
                }
                None => {}
            }
        }
        if ledger && self.state.sends.is_full() {
            // Not recorded (there is no room): a re-run decides the same while the ledger stays full.
            let decision = suppress_ledger_full(intent, recipient, self.consent, &self.rules.decision_rules());
            let outcome = SendOutcome::Suppressed(decision.reason());
            self.decisions.push(Arc::new(decision));
            return outcome;
        }
        let can_hold = self.state.held.len() < MAX_HELD_SENDS;
        let rules = self.rules.decision_rules();
        let decision = decide(intent, recipient, self.consent, &rules, &mut self.state.caps, can_hold);
        if decision.kind == DecisionKind::HeldQuietHours {
            // Not in the ledger: the held list is its record until the release decides it.
            if let (Some(intent), Some(quiet)) = (original, &decision.quiet) {
                self.state.held.push(HeldSend { until_ms: quiet.until_ms, intent });
                self.held.push((quiet.until_ms, self.subject.clone()));
            }
            self.changed = true;
            let outcome = SendOutcome::Held(decision.reason());
            self.decisions.push(Arc::new(decision));
            return outcome;
        }
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
        let outcome = if allowed { SendOutcome::Sent } else { SendOutcome::Suppressed(decision.reason()) };
        self.decisions.push(Arc::new(decision));
        outcome
    }
}

/// What one epoch's decisions collect, for every subject the operator lends its state to.
struct EpochDecisions {
    decisions: Vec<Arc<Decision>>,
    held: Vec<(i64, SubjectRef)>,
    already_sent: u64,
    already_suppressed: u64,
    /// Wall clock at the start of the epoch (ledger entries, ledger expiry).
    now_ms: i64,
}

/// What a decision reads of a worker's other state, once the epoch's profile and segment changes are
/// applied.
#[derive(Clone, Copy)]
struct Reads<'a> {
    consent: &'a ConsentTable,
    profiles: &'a ProfileTable,
    segments: &'a FastHashMap<SubjectRef, SubjectSegments>,
}

/// Runs `f` with the subject's consent, caps and send ledger as [`Guardrails`] (every send decided in
/// it lands in `epoch.decisions`) and returns its result and whether the subject's send state changed.
/// A subject without state gets a fresh one, kept only if used, so subjects that never had a counted or
/// ledgered send hold none.
fn with_guardrails<R>(
    caps: &mut FastHashMap<SubjectRef, SubjectSendState>,
    reads: Reads<'_>,
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
        consent: reads.consent,
        profile: reads.profiles.get(subject),
        segments: reads.segments.get(subject),
        rules,
        state,
        decisions: &mut epoch.decisions,
        held: &mut epoch.held,
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
/// journey timers and the watermark. The timely stage feeds it one complete epoch at a time; benchmarks
/// and tests can drive it directly.
pub struct GuardrailWorker {
    state: GuardrailState,
    rules: GuardrailRules,
    timers: Timers,
    /// Releases of sends held by quiet hours: (instant, subject), one per distinct instant.
    releases: BTreeSet<(i64, SubjectRef)>,
    watermark: i64,
    epochs_since_sweep: u32,
    /// Subjects whose profile changed since the last epoch's output (their changelog records are due).
    profiles_touched: BTreeSet<SubjectRef>,
    /// When a segment's window empties for a subject: (instant, subject), one per subject.
    segment_timers: Timers,
    /// Subjects whose profile changed while event time was still unknown: evaluated at the first
    /// watermark.
    segments_pending: BTreeSet<SubjectRef>,
    /// Every subject is evaluated once at the first watermark after a start, so that a new or changed
    /// segment file sees the members it has in the restored state (not only those an event touches).
    segments_unchecked: bool,
}

impl GuardrailWorker {
    pub fn new(mut state: GuardrailState, rules: GuardrailRules) -> Self {
        let mut timers = Timers::default();
        for (subject, j) in &state.journeys {
            timers.update(subject, None, j.next_due());
        }
        // Held sends survive a restart with their state: their releases are timers again.
        let releases = state.caps.iter().flat_map(|(s, c)| c.held.iter().map(|h| (h.until_ms, s.clone()))).collect();
        let mut segment_timers = Timers::default();
        for (subject, s) in state.segments.iter_mut() {
            s.next_ms = rules.segments.next_change(s, s.at_ms);
            segment_timers.update(subject, None, s.next_ms);
        }
        let segments_unchecked = !rules.segments.is_empty() || !state.segments.is_empty();
        GuardrailWorker {
            state,
            rules,
            timers,
            releases,
            watermark: i64::MIN,
            epochs_since_sweep: 0,
            profiles_touched: BTreeSet::new(),
            segment_timers,
            segments_pending: BTreeSet::new(),
            segments_unchecked,
        }
    }

    pub fn state(&self) -> &GuardrailState {
        &self.state
    }

    /// A consent change for one of this worker's subjects (applies to every later decision).
    pub fn apply_consent(&mut self, change: &ConsentChange) {
        if self.state.consent.apply(change) == Applied::ReplacedNewer {
            // The log order wins (it is what compaction keeps); a producer writing an older state later
            // is worth knowing about, since it may re-open a channel someone closed.
            tracing::warn!(
                key = %change.key(),
                "a consent record replaced one with a newer updated_at (the later write wins)",
            );
        }
    }

    /// A profile change for one of this worker's subjects (from `marketing.profiles`): applies to every
    /// later decision; the changed profile leaves with the next epoch's output.
    pub fn apply_profile(&mut self, change: &ProfileChange) {
        apply_profile(&mut self.state.profiles, &mut self.profiles_touched, change);
    }

    /// The watermark only moves forward.
    pub fn advance_watermark(&mut self, watermark: i64) {
        self.watermark = self.watermark.max(watermark);
    }

    /// A dry run: the decision a send would get now from this worker's state (consent, profile, caps,
    /// quiet hours), with the subject's segments, deciding on a copy of the subject's cap counters:
    /// nothing is counted, recorded, held or sent.
    pub fn evaluate(&self, request: &EvaluateRequest) -> EvaluateReply {
        let subject = request.subject();
        let correlation = &request.correlation_id;
        let mut intent = SendIntent {
            subject: subject.clone(),
            channel: request.channel,
            purpose: request.purpose,
            category: request.category.clone(),
            tags: Vec::new(),
            priority: request.priority,
            template: request.template.clone(),
            rule_id: "evaluate".into(),
            ruleset_version: String::new(),
            event_id: format!("evaluate:{correlation}"),
            event_type: "evaluate".into(),
            occurred_at_ms: request.at_ms,
            time_zone: None,
            recipient: None,
            // Never a key the counters know: a dry run is never "already counted".
            idempotency_key: format!("evaluate:{correlation}"),
            position: touchpoint_schemas::SourcePosition { topic: String::new(), partition: 0, offset: 0 },
            late: false,
            journey: None,
            payload: Default::default(),
            released_at_ms: None,
        };
        let profile = self.state.profiles.get(&subject);
        if let Some(zone) = profile.and_then(|p| p.time_zone()) {
            intent.time_zone = Some(zone.to_string());
        }
        let policy = self.rules.profiles.recipients.policy(intent.purpose);
        let recipient = resolve_recipient(profile, intent.channel, policy, None);
        let mut caps = self.state.caps.get(&subject).map(|s| s.caps.clone()).unwrap_or_default();
        let decision = decide(intent, recipient, &self.state.consent, &self.rules.decision_rules(), &mut caps, true);
        let segments = self.state.segments.get(&subject);
        let mut members: Vec<String> = self
            .rules
            .segments
            .list()
            .iter()
            .map(|s| s.id.clone())
            .filter(|id| Segments::is_member(segments, id))
            .collect();
        members.sort();
        EvaluateReply {
            correlation_id: correlation.clone(),
            decision: decision.kind.as_str().to_string(),
            reason: decision.reason(),
            consent: decision.consent.describe(),
            cap: match &decision.cap {
                Some(CapVerdict::Capped { rule_id, count, limit, window }) => {
                    Some(format!("{rule_id}: {count} of {limit} per {window}"))
                }
                _ => None,
            },
            held_until: decision
                .quiet
                .as_ref()
                .filter(|_| decision.kind == DecisionKind::HeldQuietHours)
                .map(|q| utc_text(q.until_ms)),
            recipient_source: decision.recipient.as_str().to_string(),
            segments: members,
            has_profile: profile.is_some(),
            watermark_ms: self.watermark,
        }
    }

    /// Processes one complete epoch (its consent changes and watermark already applied): fires due journey
    /// timers, decides the rules' intents, moves subjects by the events; returns the decisions,
    /// transitions, the changed subjects' state and the events to store, with the epoch's counts. Each
    /// event comes with its "already stored" flag (a previous run stored it: it drives decisions, and is
    /// not passed on to be stored again). The events come as the containers that brought them. `now_ms`
    /// is the wall clock of the epoch (send ledger).
    pub fn process_epoch(&mut self, epoch_events: Vec<Vec<ReadEvent>>, now_ms: i64) -> EpochOutput {
        let GuardrailWorker {
            state,
            rules,
            timers,
            releases,
            watermark,
            epochs_since_sweep,
            profiles_touched,
            segment_timers,
            segments_pending,
            segments_unchecked,
        } = self;
        let watermark = *watermark;
        let mut decided =
            EpochDecisions { decisions: Vec::new(), held: Vec::new(), already_sent: 0, already_suppressed: 0, now_ms };
        let mut transitions = Vec::new();
        // Ordered sets: the snapshot records come out in the same order in every run.
        let mut caps_touched = BTreeSet::new();
        let mut journeys_touched = BTreeSet::new();

        // 0. Profile updates carried by events (newest wins per field: their order does not matter), so
        //    that the epoch's sends already go where they say.
        let update_event = rules.profiles.update_event.as_str();
        for r in epoch_events.iter().flatten().filter(|r| r.event.event_type == update_event) {
            profile_update_of(&r.event, &mut state.profiles, profiles_touched);
        }

        // 0b. Segments: memberships moved by the epoch's events, profile changes and time; each change
        //     is an event of the epoch for the rules and journeys below.
        let mut segments_touched = BTreeSet::new();
        let mut memberships = Vec::new();
        if !rules.segments.is_empty() || *segments_unchecked {
            let mut pass = SegmentPass {
                segments: &rules.segments,
                states: &mut state.segments,
                profiles: &state.profiles,
                timers: segment_timers,
                touched: &mut segments_touched,
                changes: &mut memberships,
            };
            pass.on_events(&epoch_events);
            pass.on_time(watermark);
            if watermark == i64::MIN {
                // Event time unknown yet (the restore epoch): profile changes are evaluated at the first
                // watermark.
                segments_pending.extend(profiles_touched.iter().cloned());
            } else {
                // In subject order, so that the changes come out in the same order in every run. (A
                // sorted vector: the check after a start lists every subject once.)
                let mut due: Vec<SubjectRef> = std::mem::take(segments_pending).into_iter().collect();
                due.extend(profiles_touched.iter().cloned());
                if std::mem::take(segments_unchecked) {
                    due.extend(pass.profiles.subjects().cloned());
                    due.extend(pass.states.keys().cloned());
                }
                due.sort_unstable();
                due.dedup();
                for subject in &due {
                    pass.finish(subject, watermark, false);
                }
            }
        }
        let synthetic: Vec<NormalizedEvent> = memberships.iter().map(|c| c.event(now_ms)).collect();
        // What the decisions below read; the epoch's profile and segment changes are in.
        let reads = Reads { consent: &state.consent, profiles: &state.profiles, segments: &state.segments };
        // The epoch's events and the membership changes, as the rules and journeys see them.
        let all_events = || epoch_events.iter().flatten().map(|r| &r.event).chain(&synthetic);

        // 1. Journey timers due by the watermark.
        while let Some((due, subject)) = timers.0.first().cloned() {
            if due > watermark {
                break;
            }
            timers.0.remove(&(due, subject.clone()));
            let Some(journey_state) = state.journeys.get_mut(&subject) else { continue };
            let (moved, counted) = with_guardrails(&mut state.caps, reads, rules, &subject, &mut decided, |g| {
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

        // 1b. Sends held by quiet hours whose window ended by the watermark: decided again now (consent,
        //     recipient, quiet hours, caps at the release instant), in release order.
        while let Some((due, subject)) = releases.first().cloned() {
            if due > watermark {
                break;
            }
            releases.remove(&(due, subject.clone()));
            let Some(send_state) = state.caps.get_mut(&subject) else { continue };
            let (mut due_sends, waiting): (Vec<HeldSend>, Vec<HeldSend>) =
                std::mem::take(&mut send_state.held).into_iter().partition(|h| h.until_ms <= watermark);
            send_state.held = waiting;
            if due_sends.is_empty() {
                continue;
            }
            due_sends.sort_by(|a, b| {
                a.until_ms.cmp(&b.until_ms).then_with(|| a.intent.idempotency_key.cmp(&b.intent.idempotency_key))
            });
            let ((), _) = with_guardrails(&mut state.caps, reads, rules, &subject, &mut decided, |g| {
                for held in due_sends {
                    let mut intent = held.intent;
                    intent.released_at_ms = Some(held.until_ms);
                    // The outcome is in the decision; the journey moved on when the send was held.
                    let _ = g.send(intent);
                }
            });
            caps_touched.insert(subject);
        }

        // 2. Rule-driven intents, in competition order.
        let mut intents: Vec<SendIntent> = all_events()
            .flat_map(|e| {
                rules.intents.intents_for(e, |segment| Segments::is_member(reads.segments.get(&subject_of(e)), segment))
            })
            .collect();
        intents.sort_by(SendIntent::compete_order);
        for intent in intents {
            let subject = intent.subject.clone();
            let ((), counted) = with_guardrails(&mut state.caps, reads, rules, &subject, &mut decided, |g| {
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
            let mut ordered: Vec<&NormalizedEvent> =
                all_events().filter(|e| rules.journeys.concerns(&e.event_type)).collect();
            ordered.sort_unstable_by(by_event_time);
            for event in ordered {
                let subject = subject_of(event);
                let journey_state = state.journeys.entry(subject.clone()).or_default();
                let before = journey_state.next_due();
                let (moved, counted) = with_guardrails(&mut state.caps, reads, rules, &subject, &mut decided, |g| {
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

        // Sends held in this epoch (a release held again too): their releases are due later.
        releases.extend(std::mem::take(&mut decided.held));
        let counts = EpochCounts {
            allowed: decided.decisions.iter().filter(|d| d.kind == DecisionKind::Allowed).count() as u64,
            already_sent: decided.already_sent,
            already_suppressed: decided.already_suppressed,
        };
        let mut out = EpochOutput { decisions: decided.decisions, transitions, counts, ..EpochOutput::default() };
        // Cap counters expire against the watermark, not the newest event time: an epoch spans many
        // subjects, and its newest event may lie hours past a subject's next one (found by the chaos
        // test: a rolling-1h counter dropped between a subject's two sends ten minutes apart). Events at
        // or after the watermark never need a counter older than twice the window before it.
        out.caps.reserve(caps_touched.len());
        for subject in caps_touched {
            let keep = state.caps.get_mut(&subject).is_some_and(|s| !s.expire(rules, watermark, now_ms));
            let snapshot = if keep {
                state.caps.get(&subject).cloned()
            } else {
                state.caps.remove(&subject);
                None
            };
            out.caps.push(SubjectSnapshot { subject, state: snapshot });
        }
        out.journeys = journeys_touched
            .into_iter()
            .map(|subject| {
                let snapshot = state.journeys.get(&subject).filter(|j| !j.is_empty()).cloned();
                SubjectSnapshot { subject, state: snapshot }
            })
            .collect();
        out.profiles = std::mem::take(profiles_touched)
            .into_iter()
            .map(|subject| SubjectSnapshot { state: state.profiles.get(&subject).cloned(), subject })
            .collect();
        out.segments = segments_touched
            .into_iter()
            .map(|subject| SubjectSnapshot { state: state.segments.get(&subject).cloned(), subject })
            .collect();
        out.memberships = memberships;
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
            out.caps.extend(expired.into_iter().map(|subject| SubjectSnapshot { subject, state: None }));
            tracing::debug!(expired = before - state.caps.len(), subjects = state.caps.len(), "swept cap state");
        }
        // Sized once: events are large, and growing by doubling would copy each of them.
        out.events.reserve(epoch_events.iter().map(Vec::len).sum());
        out.events.extend(epoch_events.into_iter().flatten().filter(|r| !r.already_stored).map(|r| r.event));
        out
    }
}

/// One epoch's segment evaluations over a worker's segment state.
struct SegmentPass<'a> {
    segments: &'a Segments,
    states: &'a mut FastHashMap<SubjectRef, SubjectSegments>,
    profiles: &'a ProfileTable,
    timers: &'a mut Timers,
    /// Subjects whose segment state changed (their changelog records are due).
    touched: &'a mut BTreeSet<SubjectRef>,
    changes: &'a mut Vec<SegmentChange>,
}

impl SegmentPass<'_> {
    /// Events of counted types, by event time: each enters its subject's history and the subject is
    /// evaluated at its time. A change by time alone due before the event is evaluated first, at its own
    /// instant, as if its timer had fired: the memberships do not depend on whether the watermark passed
    /// that instant before the event arrived (the epochs a run happens to cut).
    fn on_events(&mut self, epoch_events: &[Vec<ReadEvent>]) {
        let mut counted: Vec<&NormalizedEvent> =
            epoch_events.iter().flatten().map(|r| &r.event).filter(|e| self.segments.concerns(&e.event_type)).collect();
        counted.sort_unstable_by(by_event_time);
        for e in counted {
            let subject = subject_of(e);
            while let Some(due) = self.states.get(&subject).and_then(|s| s.next_ms).filter(|&d| d < e.occurred_at_ms) {
                self.finish(&subject, due, false);
            }
            let state = self.states.entry(subject.clone()).or_default();
            let recorded = self.segments.record(state, &e.event_type, e.occurred_at_ms);
            self.finish(&subject, e.occurred_at_ms, recorded);
        }
    }

    /// Subjects whose windows changed by the watermark, at the instant they changed.
    fn on_time(&mut self, watermark: i64) {
        while let Some((due, subject)) = self.timers.0.first().cloned() {
            if due > watermark {
                break;
            }
            if self.states.get(&subject).and_then(|s| s.next_ms) == Some(due) {
                self.finish(&subject, due, false);
            } else {
                // Not the subject's timer any more (cannot happen: every update moves it); never loop.
                self.timers.0.remove(&(due, subject));
            }
        }
    }

    /// Evaluates the subject at `now` and moves its timer to the next change by time alone.
    fn finish(&mut self, subject: &SubjectRef, now: i64, recorded: bool) {
        let profile = self.profiles.get(subject);
        let evaluation = match self.states.get_mut(subject) {
            Some(state) => {
                let evaluation = self.segments.evaluate(subject, state, profile, now);
                let before = state.next_ms;
                state.next_ms = self.segments.next_change(state, evaluation.at_ms);
                self.timers.update(subject, before, state.next_ms);
                if state.is_empty() {
                    self.timers.update(subject, state.next_ms, None);
                    self.states.remove(subject);
                }
                evaluation
            }
            None => {
                // Most subjects a profile change or the check after a start evaluates have no segment
                // state and get none: kept only if they entered a segment.
                let mut state = SubjectSegments::default();
                let evaluation = self.segments.evaluate(subject, &mut state, profile, now);
                if !state.is_empty() {
                    state.next_ms = self.segments.next_change(&state, evaluation.at_ms);
                    self.timers.update(subject, None, state.next_ms);
                    self.states.insert(subject.clone(), state);
                }
                evaluation
            }
        };
        if recorded || evaluation.reversioned || !evaluation.changes.is_empty() {
            self.touched.insert(subject.clone());
        }
        self.changes.extend(evaluation.changes);
    }
}

/// Applies a profile change and notes the subject when its profile changed; says what was not taken.
fn apply_profile(profiles: &mut ProfileTable, touched: &mut BTreeSet<SubjectRef>, change: &ProfileChange) {
    let applied = profiles.apply(change);
    if applied.changed {
        touched.insert(change.subject().clone());
    }
    if !applied.cut.is_empty() {
        tracing::warn!(
            subject = ?change.subject(),
            attributes = ?applied.cut,
            max_bytes = crate::profile::MAX_PROFILE_BYTES,
            "profile attributes not taken: the profile would grow past its bound",
        );
    }
    if applied.ignored_as_forgotten {
        tracing::info!(subject = ?change.subject(), "profile update dated before the subject was forgotten: ignored");
    }
}

/// The profile update a `profile_updated` event makes (its attributes, at its event time).
fn profile_update_of(event: &NormalizedEvent, profiles: &mut ProfileTable, touched: &mut BTreeSet<SubjectRef>) {
    let attributes = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&event.attributes_json) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(event_id = %event.event_id, error = %e, "profile update event: attributes unreadable");
            return;
        }
    };
    let (update, problems) = crate::profile::update_from_event(subject_of(event), event.occurred_at_ms, &attributes);
    if !problems.is_empty() {
        tracing::warn!(event_id = %event.event_id, ?problems, "profile update event: fields left out");
    }
    apply_profile(profiles, touched, &ProfileChange::Update(update));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frequency_cap::CapsConfig;
    use crate::intent::IntentsConfig;
    use crate::quiet_hours::QuietHoursConfig;
    use crate::segment::Segment;
    use touchpoint_schemas::{Channel, Purpose};

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_795_600_800_000;

    fn worker() -> GuardrailWorker {
        let segment = Segment::parse(
            "id: inactive\ncondition: happened(app_opened) and not happened(app_opened, 3d)\n",
            std::path::Path::new("inactive.yaml"),
        )
        .unwrap();
        let rules = GuardrailRules {
            intents: IntentRules::new(&IntentsConfig::default()).unwrap(),
            consent: ConsentConfig::default(),
            caps: FrequencyCaps::new(&CapsConfig::default()).unwrap(),
            journeys: Journeys::default(),
            profiles: ProfilesConfig::default(),
            quiet: QuietHours::new(&QuietHoursConfig::default()).unwrap(),
            segments: Segments::new(vec![segment]),
            guarantee: ProcessingGuarantee::ExactlyOnceKeys,
            send_ledger_ttl: DEFAULT_SEND_LEDGER_TTL,
        };
        GuardrailWorker::new(GuardrailState::default(), rules)
    }

    fn opened(id: &str, at: i64) -> Vec<Vec<ReadEvent>> {
        let event = NormalizedEvent {
            event_id: id.into(),
            event_type: "app_opened".into(),
            occurred_at_ms: at,
            subject_id: "ann".into(),
            tenant_id: "acme".into(),
            source: "test".into(),
            attributes_json: "{}".into(),
            ingested_at_ms: 0,
            position: touchpoint_schemas::SourcePosition { topic: "t".into(), partition: 0, offset: 0 },
            late: false,
        };
        vec![vec![ReadEvent::new(event)]]
    }

    fn changes(w: &mut GuardrailWorker, epochs: Vec<(i64, Vec<Vec<ReadEvent>>)>) -> Vec<(bool, i64, String)> {
        let mut out = Vec::new();
        for (watermark, events) in epochs {
            w.advance_watermark(watermark);
            out.extend(w.process_epoch(events, 0).memberships.into_iter().map(|c| (c.entered, c.at_ms, c.event_id())));
        }
        out
    }

    /// A window that empties before the subject's next event is a change at its own instant, whether the
    /// watermark passed that instant before the event arrived or not: the epochs a run cuts (a restart
    /// cuts others) do not change the memberships or their events' ids.
    #[test]
    fn memberships_do_not_depend_on_where_epochs_end() {
        let timer_first = changes(
            &mut worker(),
            vec![(T0, opened("o1", T0)), (T0 + 4 * DAY, vec![]), (T0 + 4 * DAY, opened("o2", T0 + 5 * DAY))],
        );
        let event_first = changes(&mut worker(), vec![(T0, opened("o1", T0)), (T0, opened("o2", T0 + 5 * DAY))]);
        assert_eq!(timer_first.len(), 2, "{timer_first:?}");
        assert_eq!((timer_first[0].0, timer_first[0].1), (true, T0 + 3 * DAY + 1));
        assert_eq!((timer_first[1].0, timer_first[1].1), (false, T0 + 5 * DAY));
        assert_eq!(timer_first, event_first);
        // Evaluating every subject after a start (at a later watermark) moves no instant.
        let mut w = worker();
        let mut epochs = changes(&mut w, vec![(T0, opened("o1", T0))]);
        let mut restarted = GuardrailWorker::new(
            GuardrailState { segments: w.state().segments.clone(), ..GuardrailState::default() },
            worker().rules,
        );
        epochs.extend(changes(&mut restarted, vec![(T0 + DAY, vec![]), (T0 + DAY, opened("o2", T0 + 5 * DAY))]));
        assert_eq!(epochs, event_first);
    }

    /// A dry run answers from the live state and changes none of it: allowed twice in a row where one
    /// real send would use the cap, suppressed by the cap once a real send used it.
    #[test]
    fn a_dry_run_decides_like_a_send_and_counts_nothing() {
        use crate::evaluate::EvaluateRequest;
        let mut w = worker();
        w.rules.intents = IntentRules::new(
            &serde_json::from_value(serde_json::json!({"rules": [
                {"id": "hook", "on": "app_opened", "channel": "webhook", "category": "promo", "template": "t"}
            ]}))
            .unwrap(),
        )
        .unwrap();
        w.rules.caps = FrequencyCaps::new(
            &serde_json::from_value(serde_json::json!({"rules": [
                {"id": "hook-daily", "channel": "webhook", "limit": 1, "window": "rolling 1d"}
            ]}))
            .unwrap(),
        )
        .unwrap();
        let ask = |w: &GuardrailWorker, at: i64| {
            w.evaluate(&EvaluateRequest {
                correlation_id: "c1".into(),
                tenant_id: "acme".into(),
                subject_id: "ann".into(),
                channel: Channel::Webhook,
                purpose: Purpose::Marketing,
                category: "promo".into(),
                template: "t".into(),
                priority: 0,
                at_ms: at,
            })
        };
        let first = ask(&w, T0);
        assert_eq!((first.decision.as_str(), first.consent.as_str()), ("suppressed_consent", "missing(default deny)"));
        w.apply_consent(&ConsentChange::Set {
            subject: SubjectRef::new("acme", "ann"),
            channel: Channel::Webhook,
            purpose: Purpose::Marketing,
            status: crate::consent::ConsentStatus::Granted,
            updated_at_ms: T0,
            source: "test".into(),
        });
        assert_eq!(ask(&w, T0).decision, "allowed");
        assert_eq!(ask(&w, T0).decision, "allowed", "the first dry run counted nothing");
        assert!(w.state().caps.is_empty(), "no state for a subject only asked about");
        // A real send uses the cap; the dry run now says so, with the rule.
        w.advance_watermark(T0);
        let out = w.process_epoch(opened("o1", T0), 0);
        assert_eq!(out.decisions.iter().filter(|d| d.kind == DecisionKind::Allowed).count(), 1);
        let capped = ask(&w, T0 + 1_000);
        assert_eq!(capped.decision, "suppressed_cap", "{capped:?}");
        assert_eq!(capped.cap.as_deref(), Some("hook-daily: 1 of 1 per rolling 1day"));
        assert_eq!(ask(&w, T0 + DAY + 1_000).decision, "allowed", "the window moved on");
        let before = serde_json::to_string(&w.state().caps.values().collect::<Vec<_>>()).unwrap();
        let _ = ask(&w, T0 + 2_000);
        assert_eq!(serde_json::to_string(&w.state().caps.values().collect::<Vec<_>>()).unwrap(), before);
        // The segments it is a member of, and how current the state is.
        w.advance_watermark(T0 + 4 * DAY);
        let _ = w.process_epoch(vec![], 0);
        let now = ask(&w, T0 + 4 * DAY);
        assert_eq!(now.segments, ["inactive"]);
        assert_eq!(now.watermark_ms, T0 + 4 * DAY);
        assert!(!now.has_profile);
    }
}
