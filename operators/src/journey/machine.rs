//! The per-subject journey state machine.
//!
//! A subject's state ([`SubjectJourneys`]) holds one [`Enrollment`] per journey it is inside, the last
//! entry time per journey (for the re-entry policy) and a short history of the event types that
//! `happened(...)` asks about. Two things move it, both on event time:
//!
//! - an event of the subject ([`Journeys::on_event`]): goal exits, `wait_for` matches, then entries;
//! - time ([`Journeys::on_time`]): waits and `wait_for` timeouts due at or before the watermark.
//!
//! From a moved step the machine runs on until it reaches a wait (a timer), an exit or the end: sends
//! are decided on the spot by the caller (consent, then caps), and the step's rule picks the next step
//! by the outcome. Every movement is a [`Transition`] for the audit table.
//!
//! Subjects continue on the version they entered with, unless the current version says `migrate: true`
//! and still has their step; then they move to it (a transition with cause `migrated`).

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use touchpoint_schemas::{NormalizedEvent, SourcePosition, AUTOMATION_TRIGGERED, TRIGGER_JOURNEY_ATTRIBUTE};

use crate::decode::event::string_fields;

use super::definition::{EventMatch, Journey, Reentry, Send as SendStep, StepIx, StepKind};
use super::expr::Context;
use crate::fast_hash::KeyBytes;
use crate::fast_hash::{FastHashMap, FastHashSet};
use crate::intent::{JourneyStepRef, SendIntent};
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

/// Most events of one type a subject's history keeps for `happened(...)` (the oldest go first). Per
/// type, so a frequent type never pushes a rare one out; the history is bounded by this times the
/// number of types the loaded journeys ask about.
pub const HISTORY_PER_TYPE: usize = 8;
/// Most bytes an enrollment keeps of its trigger event and variables (compact JSON): a subject's
/// journey state is written whole to the journey changelog, so one event with a huge attribute must not
/// make it a record the broker refuses. A trigger over it does not enter (transition `context too
/// large`), with the size in the cause.
pub const MAX_ENROLLMENT_CONTEXT_BYTES: usize = 16 * 1024;
/// Most steps one movement may run through (validation refuses waitless cycles; this is a backstop).
const STEP_BUDGET: usize = 256;

/// A subject inside a journey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub journey: String,
    pub version: String,
    /// The step the subject is at (a wait or `wait_for`, after a movement).
    pub step: String,
    pub entered_at_ms: i64,
    /// The event that brought the subject in: part of every send's idempotency key.
    pub entry_event_id: String,
    /// The trigger event's type, id and the attributes the journey reads (`event.*` after a wait), as
    /// compact JSON: a parsed map would cost several hundred bytes per subject, and it is only read
    /// when a timer moves the subject.
    pub trigger: String,
    /// When the current wait ends (or the `wait_for` times out), event time.
    pub due_ms: Option<i64>,
    /// Steps run so far: tells repeated visits of one step apart in idempotency keys.
    pub steps_run: u32,
    /// The journey's variables captured at entry, as compact JSON (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vars: String,
}

/// An enrollment's variables from their compact JSON (empty: none).
fn parse_vars(json: &str) -> Value {
    if json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(json).unwrap_or(Value::Null)
    }
}

/// The journey state of one subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectJourneys {
    pub active: Vec<Enrollment>,
    /// Journey id → event time of the last entry.
    pub entries: Vec<(String, i64)>,
    /// Recent events of the types `happened(...)` asks about: (type, event time).
    pub history: Vec<(String, i64)>,
}

impl SubjectJourneys {
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.entries.is_empty() && self.history.is_empty()
    }

    /// The earliest timer of this subject.
    pub fn next_due(&self) -> Option<i64> {
        self.active.iter().filter_map(|e| e.due_ms).min()
    }
}

/// One movement of a subject, for `journey_transitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub subject: SubjectRef,
    pub journey: String,
    pub version: String,
    /// `None`: entering.
    pub from_step: Option<String>,
    /// `None`: leaving the journey.
    pub to_step: Option<String>,
    pub cause: Cause,
    pub event_time_ms: i64,
    /// The event that caused it (`None` for timers).
    pub event_id: Option<String>,
    /// Orders the movements of one stay in a journey (several share an event time).
    #[serde(default)]
    pub seq: u32,
}

/// Why a subject moved: the `cause` of a [`Transition`]. Its text ([`Display`](std::fmt::Display)) is
/// what the `journey_transitions` table holds and scenario files match on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// `trigger:<type>`: entered on an event of that type.
    Trigger(String),
    /// `event:<type>`: the awaited event of a `wait_for` step arrived.
    Event(String),
    /// `goal:<type>`: an `exit_on` event took the subject out.
    Goal(String),
    /// `condition:<true|false>`.
    Condition(bool),
    /// `split:<bucket><<upper>`: the subject's bucket (0–99) fell under the branch's upper bound.
    Split { bucket: u32, upper: u32 },
    /// `wait elapsed`.
    WaitElapsed,
    /// `timeout`: a `wait_for` step's timeout fired.
    Timeout,
    /// `sent`.
    Sent,
    /// `suppressed (<reason>)`: the decision's reason.
    Suppressed(String),
    /// `held (<reason>)`: quiet hours hold the send until the window ends; the journey moves on (the
    /// send goes out, or not, when it is decided again at the end of the window).
    Held(String),
    /// `<cause>; end`: a send step without a next step: its outcome, and the journey ends.
    Ended(Box<Cause>),
    /// `exit`.
    Exit,
    /// `migrated from <version>`: moved to the current version at the same step.
    Migrated { from_version: String },
    /// `version unavailable`: the enrollment's version is no longer loaded.
    VersionUnavailable,
    /// `step unavailable`: a timer fired on a step that is not a wait.
    StepUnavailable,
    /// `step budget exhausted`: too many steps in one movement.
    StepBudgetExhausted,
    /// `context too large (<n> bytes > <max>); not entered`: the trigger's attributes and variables the
    /// journey keeps exceed [`MAX_ENROLLMENT_CONTEXT_BYTES`].
    ContextTooLarge { bytes: usize },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Trigger(t) => write!(f, "trigger:{t}"),
            Cause::Event(t) => write!(f, "event:{t}"),
            Cause::Goal(t) => write!(f, "goal:{t}"),
            Cause::Condition(holds) => write!(f, "condition:{holds}"),
            Cause::Split { bucket, upper } => write!(f, "split:{bucket}<{upper}"),
            Cause::WaitElapsed => f.write_str("wait elapsed"),
            Cause::Timeout => f.write_str("timeout"),
            Cause::Sent => f.write_str("sent"),
            Cause::Suppressed(why) => write!(f, "suppressed ({why})"),
            Cause::Held(why) => write!(f, "held ({why})"),
            Cause::Ended(cause) => write!(f, "{cause}; end"),
            Cause::Exit => f.write_str("exit"),
            Cause::Migrated { from_version } => write!(f, "migrated from {from_version}"),
            Cause::VersionUnavailable => f.write_str("version unavailable"),
            Cause::StepUnavailable => f.write_str("step unavailable"),
            Cause::StepBudgetExhausted => f.write_str("step budget exhausted"),
            Cause::ContextTooLarge { bytes } => {
                write!(f, "context too large ({bytes} bytes > {MAX_ENROLLMENT_CONTEXT_BYTES}); not entered")
            }
        }
    }
}

/// The outcome of a send a journey asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    /// Not sent, with the decision's reason (e.g. `consent denied`, `cap promo-daily: 2 of 2 per
    /// calendar day`).
    Suppressed(String),
    /// Held by quiet hours until the window ends, with the decision's reason: the journey goes on as if
    /// sent (the send is decided again at the end of the window, without the journey).
    Held(String),
}

/// What a movement needs from the subject's other state, provided by the caller.
pub trait Guardrails {
    /// Consent for `channel` and `purpose` now (for `consent(...)` in conditions).
    fn consent(&self, channel: Channel, purpose: Purpose) -> bool;
    /// Decides a send (consent, then caps) and records the decision.
    fn send(&mut self, intent: SendIntent) -> SendOutcome;
    /// A field of the subject's profile (`profile.<name>...` in conditions): email, phone, locale,
    /// time_zone or a custom attribute.
    fn profile_value(&self, _path: &[String]) -> Option<Value> {
        None
    }
    /// Whether the subject is a member of the segment now (`in_segment(...)` in conditions).
    fn in_segment(&self, _name: &str) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
struct Versions {
    current: Arc<Journey>,
    archived: FastHashMap<String, Arc<Journey>>,
}

/// The loaded journeys: the current version of each, plus archived versions that subjects may still be
/// on.
#[derive(Debug, Clone, Default)]
pub struct Journeys {
    by_id: BTreeMap<String, Versions>,
    /// Event types `happened(...)` asks about: kept in the subjects' history.
    remembered: FastHashSet<String>,
    /// Event types any journey reacts to (triggers, goals, awaited events): others skip the machine.
    interesting: FastHashSet<String>,
    /// Per version: the trigger attributes its steps can read after a wait (`None`: all of them).
    keep: FastHashMap<String, Option<BTreeSet<String>>>,
    /// Event attribute holding the subject's IANA time zone (for calendar caps on journey sends).
    time_zone_attribute: String,
}

impl Journeys {
    pub fn new(current: Vec<Journey>, time_zone_attribute: &str) -> Self {
        let mut journeys = Journeys { time_zone_attribute: time_zone_attribute.to_string(), ..Default::default() };
        for j in current {
            journeys.index(&j);
            let j = Arc::new(j);
            let mut archived = FastHashMap::default();
            archived.insert(j.version.clone(), j.clone());
            journeys.by_id.insert(j.id.clone(), Versions { current: j, archived });
        }
        journeys
    }

    /// Adds an older version (from the archive), so subjects on it can continue.
    pub fn archive(&mut self, j: Journey) {
        self.index(&j);
        if let Some(v) = self.by_id.get_mut(&j.id) {
            v.archived.entry(j.version.clone()).or_insert_with(|| Arc::new(j));
        }
    }

    /// Indexes a loaded version: the event types it reacts to or remembers, and the trigger attributes
    /// it reads after a wait.
    fn index(&mut self, j: &Journey) {
        self.interesting.insert(j.trigger.event_type.clone());
        // A direct trigger (`automation_triggered` naming the journey) can enter any journey.
        self.interesting.insert(AUTOMATION_TRIGGERED.to_string());
        self.interesting.extend(j.exit_on.iter().map(|m| m.event_type.clone()));
        let mut paths: Vec<&[String]> = Vec::new();
        for s in &j.steps {
            match &s.kind {
                StepKind::WaitFor { event, .. } => {
                    self.interesting.insert(event.event_type.clone());
                    if let Some(c) = &event.condition {
                        c.paths(&mut paths);
                    }
                }
                StepKind::Condition { condition, .. } => condition.paths(&mut paths),
                StepKind::Send { send, .. } => paths.extend(send.payload.iter().map(|(_, p)| p.as_slice())),
                _ => {}
            }
        }
        // What a send reads besides its payload: the recipient and the time zone.
        let mut keys: BTreeSet<String> =
            ["email", "phone", "device_token", "webhook_url", self.time_zone_attribute.as_str()]
                .into_iter()
                .map(str::to_string)
                .collect();
        let mut all = false;
        for p in paths {
            match p {
                [root, attrs, key, ..] if root == "event" && attrs == "attributes" => {
                    keys.insert(key.clone());
                }
                [root, attrs] if root == "event" && attrs == "attributes" => all = true,
                [root] if root == "event" => all = true,
                _ => {}
            }
        }
        self.keep.insert(j.version.clone(), (!all).then_some(keys));
        let mut types = Vec::new();
        for s in &j.steps {
            match &s.kind {
                StepKind::Condition { condition, .. } => condition.happened_types(&mut types),
                StepKind::WaitFor { event: EventMatch { condition: Some(c), .. }, .. } => c.happened_types(&mut types),
                _ => {}
            }
        }
        for m in std::iter::once(&j.trigger).chain(&j.exit_on) {
            if let Some(c) = &m.condition {
                c.happened_types(&mut types);
            }
        }
        for t in types {
            self.remembered.insert(t);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn current(&self) -> impl Iterator<Item = &Journey> {
        self.by_id.values().map(|v| v.current.as_ref())
    }

    /// Every version loaded (current and archived).
    pub fn versions(&self) -> impl Iterator<Item = &Journey> {
        self.by_id.values().flat_map(|v| v.archived.values().map(|j| j.as_ref()))
    }

    /// An event of the subject: goals, `wait_for` matches, then entries. Returns the transitions.
    pub fn on_event(
        &self,
        subject: &SubjectRef,
        state: &mut SubjectJourneys,
        event: &NormalizedEvent,
        guardrails: &mut dyn Guardrails,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let now = event.occurred_at_ms;
        // History for `happened(...)`: the event being reacted to has happened.
        if self.remembered.contains(&event.event_type) {
            state.history.push((event.event_type.clone(), now));
            let same_type = state.history.iter().filter(|(t, _)| *t == event.event_type).count();
            if same_type > HISTORY_PER_TYPE {
                let oldest = state
                    .history
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, _))| *t == event.event_type)
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(i, _)| i);
                if let Some(i) = oldest {
                    state.history.remove(i);
                }
            }
        }

        // Most events concern no journey: no trigger, goal or awaited event has their type.
        if !self.interesting.contains(&event.event_type) {
            return out;
        }
        // The subject's own timers due by this event's time act first: a `wait_for` event after its
        // timeout does not match, and a goal after a wait comes after the wait's send.
        if state.next_due().is_some_and(|d| d <= now) {
            out.extend(self.on_time(subject, state, now, guardrails));
        }
        let moving = Moving::new(event);
        let moment = Some(&moving);

        // Subjects inside: goal events take them out; a `wait_for` event moves them on.
        let mut i = 0;
        while i < state.active.len() {
            let Some(journey) = self.resolve(subject, state, i, now, &mut out) else { continue };
            let enrollment = &state.active[i];
            let ctx = EvalCtx::new(subject, EventSource::Moving(&moving), state, now, &*guardrails)
                .with_vars(&enrollment.vars);
            if let Some(goal) = journey.exit_on.iter().find(|m| matches(m, event, &ctx)) {
                out.push(transition(subject, enrollment, None, Cause::Goal(goal.event_type.clone()), now, Some(event)));
                state.active.remove(i);
                continue;
            }
            let step = journey.steps.iter().position(|s| s.id == enrollment.step);
            if let Some(ix) = step {
                if let StepKind::WaitFor { event: wanted, next, .. } = &journey.steps[ix].kind {
                    if matches(wanted, event, &ctx) {
                        let cause = Some(Cause::Event(event.event_type.clone()));
                        if !self.run(&journey, subject, state, i, *next, cause, now, moment, guardrails, &mut out) {
                            continue;
                        }
                    }
                }
            }
            i += 1;
        }

        // Entries: by the journey's trigger, or directly (`automation_triggered` naming the journey; the
        // re-entry rule still holds).
        let direct = if event.event_type == AUTOMATION_TRIGGERED {
            let [named] = string_fields(&event.attributes_json, [TRIGGER_JOURNEY_ATTRIBUTE]);
            named.map(|n| n.into_owned())
        } else {
            None
        };
        for versions in self.by_id.values() {
            let journey = &versions.current;
            if state.active.iter().any(|e| e.journey == journey.id) {
                continue;
            }
            let last_entry = state.entries.iter().find(|(id, _)| *id == journey.id).map(|(_, at)| *at);
            let allowed = match (journey.reentry, last_entry) {
                (_, None) | (Reentry::Always, _) => true,
                (Reentry::Once, Some(_)) => false,
                (Reentry::After { cooldown_ms }, Some(at)) => now >= at.saturating_add(cooldown_ms),
            };
            let ctx = EvalCtx::new(subject, EventSource::Moving(&moving), state, now, &*guardrails);
            let triggered = direct.as_deref() == Some(journey.id.as_str()) || matches(&journey.trigger, event, &ctx);
            if !allowed || !triggered {
                continue;
            }
            let trigger = compact_json(&self.snapshot(journey, moving.value()));
            let vars = capture_vars(journey, subject, moving.value());
            let context_bytes = trigger.len() + vars.len();
            if context_bytes > MAX_ENROLLMENT_CONTEXT_BYTES {
                out.push(Transition {
                    subject: subject.clone(),
                    journey: journey.id.clone(),
                    version: journey.version.clone(),
                    from_step: None,
                    to_step: None,
                    cause: Cause::ContextTooLarge { bytes: context_bytes },
                    event_time_ms: now,
                    event_id: Some(event.event_id.clone()),
                    seq: 0,
                });
                continue;
            }
            match state.entries.iter_mut().find(|(id, _)| *id == journey.id) {
                Some(entry) => entry.1 = now,
                None => state.entries.push((journey.id.clone(), now)),
            }
            state.active.push(Enrollment {
                journey: journey.id.clone(),
                version: journey.version.clone(),
                step: journey.steps[0].id.clone(),
                entered_at_ms: now,
                entry_event_id: event.event_id.clone(),
                trigger,
                due_ms: None,
                steps_run: 0,
                vars,
            });
            let i = state.active.len() - 1;
            out.push(Transition {
                subject: subject.clone(),
                journey: journey.id.clone(),
                version: journey.version.clone(),
                from_step: None,
                to_step: Some(journey.steps[0].id.clone()),
                cause: Cause::Trigger(event.event_type.clone()),
                event_time_ms: now,
                event_id: Some(event.event_id.clone()),
                seq: 0,
            });
            let journey = journey.clone();
            self.run(&journey, subject, state, i, 0, None, now, moment, guardrails, &mut out);
        }

        out
    }

    /// Time has reached `now_ms` (the watermark): every wait and `wait_for` due by then moves on, in
    /// the order of its due time.
    pub fn on_time(
        &self,
        subject: &SubjectRef,
        state: &mut SubjectJourneys,
        now_ms: i64,
        guardrails: &mut dyn Guardrails,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        while let Some((i, due)) = state
            .active
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.due_ms.filter(|d| *d <= now_ms).map(|d| (i, d)))
            .min_by_key(|(_, d)| *d)
        {
            state.active[i].due_ms = None;
            let Some(journey) = self.resolve(subject, state, i, due, &mut out) else { continue };
            let kind = journey.steps.iter().find(|s| s.id == state.active[i].step).map(|s| &s.kind);
            let (target, cause) = match kind {
                Some(StepKind::Wait { next, .. }) => (*next, Cause::WaitElapsed),
                Some(StepKind::WaitFor { on_timeout, .. }) => (*on_timeout, Cause::Timeout),
                // Never left waiting on a step that is not a wait (or is gone): leave, visibly.
                _ => {
                    out.push(transition(subject, &state.active[i], None, Cause::StepUnavailable, due, None));
                    state.active.remove(i);
                    continue;
                }
            };
            self.run(&journey, subject, state, i, target, Some(cause), due, None, guardrails, &mut out);
        }
        out
    }

    /// The journey version of enrollment `i`, migrating it when the current version asks for that.
    /// An enrollment whose version is not loaded leaves the journey (visibly, with a transition).
    fn resolve(
        &self,
        subject: &SubjectRef,
        state: &mut SubjectJourneys,
        i: usize,
        now: i64,
        out: &mut Vec<Transition>,
    ) -> Option<Arc<Journey>> {
        let enrollment = &state.active[i];
        let versions = self.by_id.get(&enrollment.journey);
        let current = versions.map(|v| &v.current);
        if let Some(current) = current {
            // Only onto a step of the same kind: a subject waiting must find a wait there.
            let old_kind = versions
                .and_then(|v| v.archived.get(&enrollment.version))
                .and_then(|old| old.steps.iter().find(|s| s.id == enrollment.step))
                .map(|s| std::mem::discriminant(&s.kind));
            let migrate = current.version != enrollment.version
                && current.migrate
                && current
                    .steps
                    .iter()
                    .any(|s| s.id == enrollment.step && Some(std::mem::discriminant(&s.kind)) == old_kind);
            if migrate {
                let e = &mut state.active[i];
                out.push(Transition {
                    subject: subject.clone(),
                    journey: e.journey.clone(),
                    version: current.version.clone(),
                    from_step: Some(e.step.clone()),
                    to_step: Some(e.step.clone()),
                    cause: Cause::Migrated { from_version: e.version.clone() },
                    event_time_ms: now,
                    event_id: None,
                    seq: e.steps_run,
                });
                e.version = current.version.clone();
                return Some(current.clone());
            }
        }
        match versions.and_then(|v| v.archived.get(&enrollment.version)) {
            Some(j) => Some(j.clone()),
            None => {
                tracing::warn!(journey = %enrollment.journey, version = %enrollment.version,
                    "journey version not loaded; the subject leaves the journey");
                out.push(transition(subject, enrollment, None, Cause::VersionUnavailable, now, None));
                state.active.remove(i);
                None
            }
        }
    }

    /// Runs enrollment `i` from step `start` until a wait, an exit or the end. `cause` is why the subject
    /// moves to `start` (`None` when it already stands there, at entry). Returns false when the
    /// enrollment ended (and was removed).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        journey: &Journey,
        subject: &SubjectRef,
        state: &mut SubjectJourneys,
        i: usize,
        start: StepIx,
        cause: Option<Cause>,
        now: i64,
        moment: Moment<'_>,
        guardrails: &mut dyn Guardrails,
        out: &mut Vec<Transition>,
    ) -> bool {
        let event = moment.map(|m| m.event);
        // The enrollment's trigger snapshot, parsed once per movement and only if a step reads it (a
        // condition on `event.*` after a wait, a send's payload or recipient).
        let trigger = OnceCell::new();
        let mut at = start;
        let mut cause = cause;
        for _ in 0..STEP_BUDGET {
            if let Some(cause) = cause.take() {
                let from = state.active[i].step.clone();
                let to = journey.steps[at].id.clone();
                out.push(transition(subject, &state.active[i], Some(to.clone()), cause, now, event).from(from));
                state.active[i].step = to;
            }
            state.active[i].steps_run += 1;
            let step = &journey.steps[at];
            let moved: Option<(StepIx, Cause)> = match &step.kind {
                StepKind::Wait { duration_ms, .. } => {
                    state.active[i].due_ms = Some(now.saturating_add(*duration_ms));
                    return true;
                }
                StepKind::WaitFor { timeout_ms, .. } => {
                    state.active[i].due_ms = Some(now.saturating_add(*timeout_ms));
                    return true;
                }
                StepKind::Condition { condition, then_step, else_step } => {
                    let event_value = match moment {
                        Some(m) => EventSource::Moving(m),
                        None => EventSource::Trigger { json: &state.active[i].trigger, parsed: &trigger },
                    };
                    let ctx =
                        EvalCtx::new(subject, event_value, state, now, &*guardrails).with_vars(&state.active[i].vars);
                    let holds = condition.eval(&ctx);
                    Some((if holds { *then_step } else { *else_step }, Cause::Condition(holds)))
                }
                StepKind::Split { branches } => {
                    let bucket = split_bucket(subject, &journey.id);
                    let (upper, target) =
                        branches.iter().find(|(upper, _)| bucket < *upper).copied().unwrap_or((100, at));
                    Some((target, Cause::Split { bucket, upper }))
                }
                StepKind::Send { send, next, on_suppressed } => {
                    let intent = self.intent(journey, subject, &state.active[i], &step.id, send, now, moment, &trigger);
                    let (target, cause) = match guardrails.send(intent) {
                        SendOutcome::Sent => (*next, Cause::Sent),
                        SendOutcome::Held(why) => (*next, Cause::Held(why)),
                        SendOutcome::Suppressed(why) => (on_suppressed.or(*next), Cause::Suppressed(why)),
                    };
                    match target {
                        Some(t) => Some((t, cause)),
                        None => {
                            let e = &state.active[i];
                            out.push(transition(subject, e, None, Cause::Ended(Box::new(cause)), now, event));
                            state.active.remove(i);
                            return false;
                        }
                    }
                }
                StepKind::Exit => {
                    out.push(transition(subject, &state.active[i], None, Cause::Exit, now, event));
                    state.active.remove(i);
                    return false;
                }
            };
            if let Some((next, why)) = moved {
                at = next;
                cause = Some(why);
            }
        }
        tracing::error!(
            journey = %journey.id,
            subject = %subject.subject_id,
            "step budget exhausted; the subject leaves",
        );
        out.push(transition(subject, &state.active[i], None, Cause::StepBudgetExhausted, now, event));
        state.active.remove(i);
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn intent(
        &self,
        journey: &Journey,
        subject: &SubjectRef,
        enrollment: &Enrollment,
        step: &str,
        send: &SendStep,
        now: i64,
        moment: Moment<'_>,
        trigger: &OnceCell<Value>,
    ) -> SendIntent {
        let event = moment.map(|m| m.event);
        let trigger = EventSource::Trigger { json: &enrollment.trigger, parsed: trigger };
        let event_value = match moment {
            Some(m) => m.value(),
            None => trigger.value(),
        };
        let vars = parse_vars(&enrollment.vars);
        let ctx_value = |path: &[String]| lookup(subject, event_value, &vars, path);
        let payload =
            send.payload.iter().filter_map(|(name, path)| ctx_value(path).map(|v| (name.clone(), v))).collect();
        // Recipient and time zone: from the current event, else from the trigger (an awaited event
        // rarely repeats the address).
        let text = |key: &str| {
            let of =
                |v: &Value| v.get("attributes").and_then(|a| a.get(key)).and_then(Value::as_str).map(str::to_string);
            of(event_value).or_else(|| moment.and_then(|_| of(trigger.value())))
        };
        let key = journey_send_key(
            subject,
            &journey.id,
            &enrollment.version,
            step,
            &enrollment.entry_event_id,
            enrollment.steps_run,
        );
        SendIntent {
            released_at_ms: None,
            subject: subject.clone(),
            channel: send.channel,
            purpose: send.purpose,
            category: send.category.clone(),
            tags: send.tags.clone(),
            priority: send.priority,
            template: send.template.clone(),
            rule_id: format!("{}/{}", journey.id, step),
            ruleset_version: enrollment.version.clone(),
            event_id: event.map_or_else(|| enrollment.entry_event_id.clone(), |e| e.event_id.clone()),
            event_type: event.map_or_else(|| "timer".to_string(), |e| e.event_type.clone()),
            occurred_at_ms: now,
            time_zone: text(&self.time_zone_attribute),
            recipient: match send.channel {
                Channel::Email => text("email"),
                Channel::Sms => text("phone"),
                Channel::Push => text("device_token"),
                Channel::Webhook => text("webhook_url"),
            },
            idempotency_key: key,
            position: event.map_or_else(
                || SourcePosition { topic: String::new(), partition: -1, offset: -1 },
                |e| e.position.clone(),
            ),
            late: event.is_some_and(|e| e.late),
            journey: Some(JourneyStepRef {
                journey: journey.id.clone(),
                version: enrollment.version.clone(),
                step: step.to_string(),
            }),
            payload,
        }
    }
}

/// The event that moves a subject, or `None` for a timer.
type Moment<'a> = Option<&'a Moving<'a>>;

/// An event that moves a subject, with its value as expressions see it built on first use: most events
/// that reach the machine meet no condition, payload or snapshot of the subject's journeys (an
/// `order_completed` of a subject in no journey, a `cart_updated` of one already in the cart journey),
/// and parsing their attributes was most of what the machine did for them.
struct Moving<'a> {
    event: &'a NormalizedEvent,
    value: OnceCell<Value>,
}

impl<'a> Moving<'a> {
    fn new(event: &'a NormalizedEvent) -> Self {
        Moving { event, value: OnceCell::new() }
    }

    fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            let attributes: Map<String, Value> = serde_json::from_str(&self.event.attributes_json).unwrap_or_default();
            event_value(self.event, attributes)
        })
    }
}

/// What `event.*` refers to: the moving event, or after a wait the enrollment's trigger snapshot (its
/// compact JSON, parsed into `parsed` on first read).
#[derive(Clone, Copy)]
enum EventSource<'a> {
    Moving(&'a Moving<'a>),
    Trigger { json: &'a str, parsed: &'a OnceCell<Value> },
}

impl<'a> EventSource<'a> {
    fn value(self) -> &'a Value {
        match self {
            EventSource::Moving(m) => m.value(),
            EventSource::Trigger { json, parsed } => {
                parsed.get_or_init(|| serde_json::from_str(json).unwrap_or_default())
            }
        }
    }
}

/// The idempotency key of a journey send: subject, journey, version, step, the entry event and the
/// step count (a step visited again in a loop through a wait is a new send; a replay is not).
pub fn journey_send_key(
    subject: &SubjectRef,
    journey: &str,
    version: &str,
    step: &str,
    entry_event_id: &str,
    steps_run: u32,
) -> String {
    let key = KeyBytes::with_capacity(96)
        .part(&subject.tenant_id)
        .part(&subject.subject_id)
        .part(journey)
        .part(version)
        .part(step)
        .part(entry_event_id)
        .raw(&steps_run.to_le_bytes());
    crate::fast_hash::hex_id("tpj-", key.hash128())
}

/// The subject's bucket (0..100) for `split` steps of a journey: stable across restarts and versions.
pub fn split_bucket(subject: &SubjectRef, journey: &str) -> u32 {
    let key = KeyBytes::with_capacity(64).part(&subject.tenant_id).part(&subject.subject_id).part(journey);
    (key.hash64() % 100) as u32
}

fn transition(
    subject: &SubjectRef,
    e: &Enrollment,
    to: Option<String>,
    cause: Cause,
    now: i64,
    event: Option<&NormalizedEvent>,
) -> Transition {
    Transition {
        subject: subject.clone(),
        journey: e.journey.clone(),
        version: e.version.clone(),
        from_step: Some(e.step.clone()),
        to_step: to,
        cause,
        event_time_ms: now,
        event_id: event.map(|e| e.event_id.clone()),
        seq: e.steps_run,
    }
}

impl Transition {
    fn from(mut self, step: String) -> Self {
        self.from_step = Some(step);
        self
    }
}

/// The event as expressions see it (`event.type`, `event.attributes.plan`, …). The attributes are moved
/// in, not copied: `json!` would serialize them into a second tree.
fn event_value(e: &NormalizedEvent, attributes: Map<String, Value>) -> Value {
    let mut event = Map::new();
    event.insert("type".into(), Value::String(e.event_type.clone()));
    event.insert("id".into(), Value::String(e.event_id.clone()));
    event.insert("source".into(), Value::String(e.source.clone()));
    event.insert("occurred_at_ms".into(), Value::from(e.occurred_at_ms));
    event.insert("attributes".into(), Value::Object(attributes));
    Value::Object(event)
}

fn matches(m: &EventMatch, event: &NormalizedEvent, ctx: &EvalCtx<'_>) -> bool {
    m.event_type == event.event_type && m.condition.as_ref().is_none_or(|c| c.eval(ctx))
}

fn capture_vars(journey: &Journey, subject: &SubjectRef, event: &Value) -> String {
    if journey.vars.is_empty() {
        return String::new();
    }
    let vars: Map<String, Value> = journey
        .vars
        .iter()
        .map(|(name, path)| (name.clone(), lookup(subject, event, &Value::Null, path).unwrap_or(Value::Null)))
        .collect();
    compact_json(&Value::Object(vars))
}

/// A value as compact JSON, the text `Display` gives, written into a byte buffer: `Display` goes through
/// the formatter one token at a time (~7,000 instructions for a trigger snapshot, 3% of the chain).
fn compact_json(value: &Value) -> String {
    // A `Value` always serializes (its keys are strings).
    serde_json::to_string(value).unwrap_or_default()
}

fn lookup(subject: &SubjectRef, event: &Value, vars: &Value, path: &[String]) -> Option<Value> {
    lookup_with(subject, || event, || vars, path)
}

/// `event.…`, `vars.…` or `subject.id`/`subject.tenant`; the event and the variables are asked for only
/// when the path reads them (an expression context parses them on first use).
fn lookup_with<'v>(
    subject: &SubjectRef,
    event: impl FnOnce() -> &'v Value,
    vars: impl FnOnce() -> &'v Value,
    path: &[String],
) -> Option<Value> {
    let (root, rest) = path.split_first()?;
    match root.as_str() {
        "event" => lookup_in(event(), rest),
        "vars" => lookup_in(vars(), rest),
        "subject" => subject_field(subject, rest),
        _ => None,
    }
}

fn lookup_in(mut v: &Value, path: &[String]) -> Option<Value> {
    for k in path {
        v = v.get(k)?;
    }
    Some(v.clone())
}

fn subject_field(subject: &SubjectRef, path: &[String]) -> Option<Value> {
    match path {
        [k] if k == "id" => Some(Value::String(subject.subject_id.to_string())),
        [k] if k == "tenant" => Some(Value::String(subject.tenant_id.to_string())),
        _ => None,
    }
}

/// What an expression sees. The event's value and the variables are parsed only when an expression
/// reads them (an event type that matches nothing reads neither).
struct EvalCtx<'a> {
    subject: &'a SubjectRef,
    event: EventSource<'a>,
    /// The enrollment's variables as compact JSON (empty: none), parsed on first read.
    vars_json: &'a str,
    vars: OnceCell<Value>,
    history: &'a [(String, i64)],
    now: i64,
    guardrails: &'a dyn Guardrails,
}

impl<'a> EvalCtx<'a> {
    fn new(
        subject: &'a SubjectRef,
        event: EventSource<'a>,
        state: &'a SubjectJourneys,
        now: i64,
        guardrails: &'a dyn Guardrails,
    ) -> Self {
        EvalCtx { subject, event, vars_json: "", vars: OnceCell::new(), history: &state.history, now, guardrails }
    }

    fn with_vars(mut self, vars_json: &'a str) -> Self {
        self.vars_json = vars_json;
        self
    }

    fn vars(&self) -> &Value {
        self.vars.get_or_init(|| parse_vars(self.vars_json))
    }
}

impl Context for EvalCtx<'_> {
    fn value(&self, path: &[String]) -> Option<Value> {
        if path.first().is_some_and(|p| p == "profile") {
            return self.guardrails.profile_value(&path[1..]);
        }
        lookup_with(self.subject, || self.event.value(), || self.vars(), path)
    }

    fn count(&self, event_type: &str, within: Duration) -> u64 {
        let since = self.now.saturating_sub(i64::try_from(within.as_millis()).unwrap_or(i64::MAX));
        self.history.iter().filter(|(t, at)| t == event_type && *at >= since && *at <= self.now).count() as u64
    }

    fn in_segment(&self, name: &str) -> bool {
        self.guardrails.in_segment(name)
    }

    fn happened(&self, event_type: &str, within: Option<Duration>) -> bool {
        let since =
            within.map_or(i64::MIN, |w| self.now.saturating_sub(i64::try_from(w.as_millis()).unwrap_or(i64::MAX)));
        self.history.iter().any(|(t, at)| t == event_type && *at >= since && *at <= self.now)
    }

    fn consent(&self, channel: Channel, purpose: Purpose) -> bool {
        self.guardrails.consent(channel, purpose)
    }
}

impl Journeys {
    /// What an enrollment keeps of its trigger event for `event.*` after a wait: type, id and the
    /// attributes the journey can read (so the state per subject stays small).
    fn snapshot(&self, journey: &Journey, value: &Value) -> Value {
        let Some(Some(keys)) = self.keep.get(&journey.version) else { return value.clone() };
        let mut attributes = Map::new();
        if let Some(all) = value.get("attributes").and_then(Value::as_object) {
            for k in keys {
                if let Some(v) = all.get(k) {
                    attributes.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::json!({"type": value.get("type"), "id": value.get("id"), "source": value.get("source"),
            "occurred_at_ms": value.get("occurred_at_ms"), "attributes": attributes})
    }

    /// Whether events of this type can change a subject's journey state at all: a journey reacts to
    /// them (trigger, goal, awaited event) or keeps them in the history. Other events leave it as is.
    pub fn concerns(&self, event_type: &str) -> bool {
        self.interesting.contains(event_type) || self.remembered.contains(event_type)
    }

    /// Whether events of this type are kept in the subjects' history (for `happened(...)`).
    pub fn remembers(&self, event_type: &str) -> bool {
        self.remembered.contains(event_type)
    }
}

#[cfg(test)]
mod tests;
