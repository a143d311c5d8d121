//! Journey scenarios: files of events in and expected sends and transitions out
//! (`pipelines/scenarios/*.yaml`), run through the pipeline's subject-keyed timely operator
//! ([`crate::stages::guardrails::guardrails`]) with the real consent, caps and journey logic. Inputs
//! come from the file instead of Kafka, outputs are collected instead of written; a `restart` step
//! rebuilds the dataflow from the state changelog records the first one emitted, as a real restart
//! restores them. See `docs/journeys.md`.
//!
//! ```yaml
//! name: welcome series, email opened
//! start: 2026-11-20T10:00:00Z          # `+<duration>` / `-<duration>` times are relative to it
//! journeys: [welcome-series]           # files of pipelines/journeys, or inline definitions
//! segments: [inactive-3d]              # files of pipelines/segments, or inline definitions
//! consent: [{subject: ann, channel: email}]   # granted (marketing) unless `status` says otherwise
//! profiles: [{subject: ann, email: ann@example.com, devices: [ann-phone], time_zone: Europe/Berlin}]
//! recipients: {default: profile_only}         # `profiles.recipients` of the pipeline file
//! steps:
//!   - event: {id: e1, subject: ann, type: signed_up, at: +0s, attributes: {plan: pro}}
//!   - watermark: +2d                   # event time reaches this
//!   - consent: {subject: ann, channel: email, status: denied, at: +3d}
//!   - profile: {subject: ann, at: +1h, email: new@example.com}   # or {subject: ann, at: +2h, forget: true}
//!   - restart: {journeys: [...]}       # state survives; new journey files (versions); `segments: [...]` too
//! expect:
//!   sends: [{subject: ann, template: welcome, recipient: ann@example.com}]  # allowed, in decision order
//!   suppressed: [{subject: bob, template: x, decision: suppressed_cap}]
//!   transitions: {ann: [">welcome:trigger:signed_up", ...]}   # from>to:cause, in order
//!   memberships: {ann: ["entered inactive-3d at +3d 1ms"]}   # segment entries and exits, in order
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use timely::dataflow::operators::{Input as _, Inspect, Probe};
use timely::dataflow::ProbeHandle;
use touchpoint_operators::consent::{ConsentChange, ConsentConfig, ConsentStatus};
use touchpoint_operators::decision::{Decision, DecisionKind};
use touchpoint_operators::evaluate::EvaluateRequest;
use touchpoint_operators::frequency_cap::{CapsConfig, FrequencyCaps};
use touchpoint_operators::intent::{IntentRules, IntentsConfig};
use touchpoint_operators::journey::{Journey, Journeys, SubjectJourneys, Transition};
use touchpoint_operators::read_event::ReadEvent;
use touchpoint_schemas::{Channel, Purpose, SubjectRef};
use touchpoint_schemas::{NormalizedEvent, SourcePosition};

use touchpoint_operators::guardrails::{
    CapSnapshot, GuardrailRules, GuardrailState, JourneySnapshot, ProfileSnapshot, SegmentSnapshot, SubjectSendState,
    DEFAULT_SEND_LEDGER_TTL,
};
use touchpoint_operators::profile::{
    parse_profile_record, parse_profile_tombstone, ProfileChange, ProfileTable, ProfilesConfig, RecipientsConfig,
    SubjectProfile,
};
use touchpoint_operators::quiet_hours::{QuietHours, QuietHoursConfig};
use touchpoint_operators::segment::{Segment, SegmentChange, Segments, SubjectSegments};

use crate::stages::guardrails::guardrails;

pub const TENANT: &str = "acme";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub start: String,
    pub journeys: Vec<serde_yaml::Value>,
    /// Segment files of `pipelines/segments` (by id) or inline definitions.
    #[serde(default)]
    pub segments: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub consent: Vec<ConsentEntry>,
    /// The subjects' profiles at the start (`marketing.profiles`).
    #[serde(default)]
    pub profiles: Vec<ProfileEntry>,
    /// Who may choose a recipient (`profiles.recipients` of the pipeline file; default `profile_only`).
    #[serde(default)]
    pub recipients: RecipientsConfig,
    #[serde(default)]
    pub caps: CapsConfig,
    /// `quiet_hours` of the pipeline file.
    #[serde(default)]
    pub quiet_hours: QuietHoursConfig,
    #[serde(default)]
    pub intents: IntentsConfig,
    /// `processing.guarantee` of the run (default `exactly_once_keys`).
    #[serde(default)]
    pub guarantee: touchpoint_operators::send_ledger::ProcessingGuarantee,
    pub steps: Vec<StepEntry>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentEntry {
    pub subject: String,
    pub channel: String,
    #[serde(default = "marketing")]
    pub purpose: String,
    #[serde(default = "granted")]
    pub status: String,
    #[serde(default)]
    pub at: Option<String>,
}

fn marketing() -> String {
    "marketing".into()
}
fn granted() -> String {
    "granted".into()
}

/// A record of `marketing.profiles`: the fields it sets (as the topic's JSON has them), or a tombstone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    pub subject: String,
    /// `updated_at` (default: the scenario's start); a tombstone's record time.
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub email: Option<Value>,
    #[serde(default)]
    pub phone: Option<Value>,
    /// Device tokens (active), or `{token, platform, active}` objects.
    #[serde(default)]
    pub devices: Vec<Value>,
    #[serde(default)]
    pub time_zone: Option<Value>,
    #[serde(default)]
    pub locale: Option<Value>,
    #[serde(default)]
    pub attributes: Option<serde_json::Map<String, Value>>,
    /// A tombstone: forget the subject.
    #[serde(default)]
    pub forget: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEntry {
    pub id: String,
    pub subject: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: String,
    #[serde(default)]
    pub attributes: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartEntry {
    pub journeys: Vec<serde_yaml::Value>,
    /// The segments after the restart (new versions); absent: the same as before.
    #[serde(default)]
    pub segments: Option<Vec<serde_yaml::Value>>,
}

/// One step: exactly one of `event`, `watermark`, `consent`, `restart`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepEntry {
    #[serde(default)]
    pub event: Option<EventEntry>,
    #[serde(default)]
    pub watermark: Option<String>,
    #[serde(default)]
    pub consent: Option<ConsentEntry>,
    #[serde(default)]
    pub profile: Option<ProfileEntry>,
    #[serde(default)]
    pub restart: Option<RestartEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedSend {
    pub subject: String,
    pub template: String,
    #[serde(default)]
    pub decision: Option<String>,
    /// Where it went (checked when the file names it).
    #[serde(default)]
    pub recipient: Option<String>,
    /// The decision's reason (checked when the file names it).
    #[serde(default)]
    pub reason: Option<String>,
}

impl ExpectedSend {
    /// `got` is what `expected` says, element by element, in order.
    pub fn all_match(expected: &[ExpectedSend], got: &[ExpectedSend]) -> bool {
        expected.len() == got.len() && expected.iter().zip(got).all(|(e, g)| e.matches(g))
    }

    /// `got` is what this expects (a recipient the file does not name is not compared).
    fn matches(&self, got: &ExpectedSend) -> bool {
        self.subject == got.subject
            && self.template == got.template
            && self.decision == got.decision
            && (self.recipient.is_none() || self.recipient == got.recipient)
            && (self.reason.is_none() || self.reason == got.reason)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub sends: Vec<ExpectedSend>,
    #[serde(default)]
    pub suppressed: Vec<ExpectedSend>,
    #[serde(default)]
    pub transitions: BTreeMap<String, Vec<String>>,
    /// Per subject, its segment entries and exits: `entered <segment> at <time>` / `exited ...`, the
    /// time as the steps write it (`+14d1ms`) or RFC 3339.
    #[serde(default)]
    pub memberships: BTreeMap<String, Vec<String>>,
}

impl ScenarioFile {
    /// `start`, in epoch milliseconds.
    pub fn start_ms(&self) -> Result<i64> {
        time(0, &self.start)
    }
}

/// What a scenario produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    pub transitions: Vec<Transition>,
    pub memberships: Vec<SegmentChange>,
}

impl Outcome {
    pub fn sends(&self) -> Vec<ExpectedSend> {
        self.of(|d| d.kind == DecisionKind::Allowed, false)
    }

    pub fn suppressed(&self) -> Vec<ExpectedSend> {
        self.of(|d| d.kind != DecisionKind::Allowed, true)
    }

    fn of(&self, keep: impl Fn(&Decision) -> bool, with_kind: bool) -> Vec<ExpectedSend> {
        self.decisions
            .iter()
            .filter(|d| keep(d))
            .map(|d| ExpectedSend {
                subject: d.intent.subject.subject_id.to_string(),
                template: d.intent.template.clone(),
                decision: with_kind.then(|| d.kind.as_str().to_string()),
                recipient: d.intent.recipient.clone(),
                reason: Some(d.reason()),
            })
            .collect()
    }

    /// Per subject, its movements as `from>to:cause`, in order.
    pub fn paths(&self) -> BTreeMap<String, Vec<String>> {
        let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &self.transitions {
            paths.entry(t.subject.subject_id.to_string()).or_default().push(format!(
                "{}>{}:{}",
                t.from_step.as_deref().unwrap_or_default(),
                t.to_step.as_deref().unwrap_or_default(),
                t.cause
            ));
        }
        paths
    }
}

fn time(start_ms: i64, text: &str) -> Result<i64> {
    let relative = |offset: &str| -> Result<i64> {
        let d = humantime::parse_duration(offset.trim()).with_context(|| format!("`{text}` is not ±<duration>"))?;
        Ok(i64::try_from(d.as_millis())?)
    };
    if let Some(offset) = text.strip_prefix('+') {
        Ok(start_ms + relative(offset)?)
    } else if let Some(offset) = text.strip_prefix('-') {
        Ok(start_ms - relative(offset)?)
    } else {
        Ok(chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("`{text}` is not RFC 3339"))?
            .timestamp_millis())
    }
}

fn load_segments(specs: &[serde_yaml::Value], segments_dir: &Path, origin: &Path) -> Result<Vec<Segment>> {
    specs
        .iter()
        .map(|spec| match spec {
            serde_yaml::Value::String(name) => {
                Segment::load(&segments_dir.join(format!("{name}.yaml"))).map_err(|e| anyhow!("{e}"))
            }
            inline => {
                let text = serde_yaml::to_string(inline)?;
                Segment::parse(&text, origin).map_err(|e| anyhow!("inline segment: {e}"))
            }
        })
        .collect()
}

/// `pipelines/segments`, beside the journeys' directory.
fn segments_dir(journeys_dir: &Path) -> PathBuf {
    journeys_dir.with_file_name("segments")
}

fn load_journeys(specs: &[serde_yaml::Value], journeys_dir: &Path, origin: &Path) -> Result<Vec<Journey>> {
    specs
        .iter()
        .map(|spec| match spec {
            serde_yaml::Value::String(name) => {
                let path = journeys_dir.join(format!("{name}.yaml"));
                Journey::load(&path).map_err(|e| anyhow!("{e}"))
            }
            inline => {
                let text = serde_yaml::to_string(inline)?;
                Journey::parse(&text, origin).map_err(|e| anyhow!("inline journey: {e}"))
            }
        })
        .collect()
}

fn consent_change(c: &ConsentEntry, start_ms: i64) -> Result<ConsentChange> {
    Ok(ConsentChange::Set {
        subject: SubjectRef::new(TENANT, &c.subject),
        channel: Channel::parse(&c.channel).ok_or_else(|| anyhow!("unknown channel {}", c.channel))?,
        purpose: Purpose::parse(&c.purpose).ok_or_else(|| anyhow!("unknown purpose {}", c.purpose))?,
        status: ConsentStatus::parse(&c.status).ok_or_else(|| anyhow!("unknown status {}", c.status))?,
        updated_at_ms: c.at.as_deref().map(|a| time(start_ms, a)).transpose()?.unwrap_or(start_ms),
        source: "scenario".into(),
    })
}

/// A profile entry as the change the pipeline would read from `marketing.profiles` (checked by the
/// pipeline's own parser).
fn profile_change(p: &ProfileEntry, start_ms: i64) -> Result<ProfileChange> {
    let ProfileRecord { key, value, at_ms } = profile_record(p, start_ms)?;
    let parsed = match value {
        None => parse_profile_tombstone(key.as_bytes(), at_ms),
        Some(record) => parse_profile_record(&record, Some(key.as_bytes()), TENANT),
    };
    parsed.map_err(|r| anyhow!("profile of {}: {}", p.subject, r.message))
}

/// A record of `marketing.profiles`.
pub struct ProfileRecord {
    pub key: String,
    /// `None`: a tombstone.
    pub value: Option<serde_json::Map<String, Value>>,
    /// `updated_at`, or the tombstone's record time.
    pub at_ms: i64,
}

/// A profile entry as the record of `marketing.profiles`.
pub fn profile_record(p: &ProfileEntry, start_ms: i64) -> Result<ProfileRecord> {
    let at_ms = p.at.as_deref().map(|a| time(start_ms, a)).transpose()?.unwrap_or(start_ms);
    let key = touchpoint_operators::profile::profile_key(&SubjectRef::new(TENANT, &p.subject));
    if p.forget {
        return Ok(ProfileRecord { key, value: None, at_ms });
    }
    let mut record = serde_json::Map::new();
    record.insert("subject_id".into(), p.subject.clone().into());
    record.insert("tenant_id".into(), TENANT.into());
    record.insert("updated_at".into(), at_ms.into());
    for (name, value) in [("email", &p.email), ("phone", &p.phone), ("time_zone", &p.time_zone), ("locale", &p.locale)]
    {
        if let Some(v) = value {
            record.insert(name.into(), v.clone());
        }
    }
    if !p.devices.is_empty() {
        let devices = p
            .devices
            .iter()
            .map(|d| match d {
                Value::String(token) => serde_json::json!({"token": token}),
                other => other.clone(),
            })
            .collect();
        record.insert("devices".into(), Value::Array(devices));
    }
    if let Some(a) = &p.attributes {
        record.insert("attributes".into(), Value::Object(a.clone()));
    }
    Ok(ProfileRecord { key, value: Some(record), at_ms })
}

/// A scenario step, ready to feed.
pub enum ScenarioInput {
    Event(NormalizedEvent),
    Watermark(i64),
    Consent(ConsentChange),
    Profile(ProfileChange),
    /// Restart the pipeline with these journeys and, if given, segments (state restored from the
    /// changelog records).
    Restart(Vec<Journey>, Option<Vec<Segment>>),
}

/// The journeys a scenario starts with.
pub fn scenario_journeys(file: &ScenarioFile, journeys_dir: &Path, origin: &Path) -> Result<Vec<Journey>> {
    load_journeys(&file.journeys, journeys_dir, origin)
}

/// Reads a scenario file and its steps; `journeys_dir` holds the journey files it names.
pub fn parse_file(path: &Path, journeys_dir: &Path) -> Result<(ScenarioFile, Vec<ScenarioInput>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ScenarioFile = serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let start_ms = file.start_ms()?;
    let mut inputs = Vec::new();
    for (n, step) in file.steps.iter().enumerate() {
        let profile = step.profile.as_ref().map(|p| profile_change(p, start_ms)).transpose()?;
        inputs.push(match (&step.event, &step.watermark, &step.consent, &step.restart) {
            (None, None, None, None) if profile.is_some() => {
                ScenarioInput::Profile(profile.ok_or_else(|| anyhow!("unreachable"))?)
            }
            _ if profile.is_some() => {
                bail!("{}: steps[{n}] needs exactly one of event, watermark, consent, profile, restart", path.display())
            }
            (Some(e), None, None, None) => ScenarioInput::Event(NormalizedEvent {
                event_id: e.id.clone(),
                event_type: e.event_type.clone(),
                occurred_at_ms: time(start_ms, &e.at)?,
                subject_id: e.subject.clone(),
                tenant_id: TENANT.into(),
                source: "scenario".into(),
                attributes_json: Value::Object(e.attributes.clone()).to_string(),
                ingested_at_ms: 0,
                position: SourcePosition { topic: "scenario".into(), partition: 0, offset: n as i64 },
                late: false,
            }),
            (None, Some(w), None, None) => ScenarioInput::Watermark(time(start_ms, w)?),
            (None, None, Some(c), None) => ScenarioInput::Consent(consent_change(c, start_ms)?),
            (None, None, None, Some(r)) => ScenarioInput::Restart(
                load_journeys(&r.journeys, journeys_dir, path)?,
                r.segments.as_ref().map(|s| load_segments(s, &segments_dir(journeys_dir), path)).transpose()?,
            ),
            _ => {
                bail!("{}: steps[{n}] needs exactly one of event, watermark, consent, profile, restart", path.display())
            }
        });
    }
    Ok((file, inputs))
}

/// Runs a scenario file through the subject-keyed operator; `journeys_dir` holds the journey files it
/// names.
pub fn run_file(path: &Path, journeys_dir: &Path) -> Result<(ScenarioFile, Outcome)> {
    let (file, inputs) = parse_file(path, journeys_dir)?;
    let start_ms = time(0, &file.start)?;
    // Cut the steps into runs separated by restarts.
    let first_segments = load_segments(&file.segments, &segments_dir(journeys_dir), path)?;
    let mut runs: Vec<(Vec<Journey>, Vec<Segment>, Vec<ScenarioInput>)> =
        vec![(scenario_journeys(&file, journeys_dir, path)?, first_segments, Vec::new())];
    for input in inputs {
        match input {
            ScenarioInput::Restart(journeys, segments) => {
                let segments = segments.or_else(|| runs.last().map(|r| r.1.clone())).unwrap_or_default();
                runs.push((journeys, segments, Vec::new()));
            }
            other => {
                if let Some(run) = runs.last_mut() {
                    run.2.push(other);
                }
            }
        }
    }
    let mut initial_consent = Vec::new();
    for c in &file.consent {
        initial_consent.push(consent_change(c, start_ms)?);
    }
    let mut profile_topic = Vec::new();
    for p in &file.profiles {
        profile_topic.push(profile_change(p, start_ms)?);
    }

    let caps = FrequencyCaps::new(&file.caps).map_err(|e| anyhow!("caps: {e}"))?;
    let quiet = QuietHours::new(&file.quiet_hours).map_err(|e| anyhow!("{e}"))?;
    let intents = IntentRules::new(&file.intents).map_err(|e| anyhow!("intents: {e}"))?;
    let mut outcome = Outcome::default();
    // State carried across restarts exactly as the changelogs carry it: latest snapshot per subject.
    let mut cap_log: HashMap<SubjectRef, Option<SubjectSendState>> = HashMap::new();
    let mut journey_log: HashMap<SubjectRef, Option<SubjectJourneys>> = HashMap::new();
    let mut profile_log: HashMap<SubjectRef, Option<SubjectProfile>> = HashMap::new();
    let mut segment_log: HashMap<SubjectRef, Option<SubjectSegments>> = HashMap::new();
    let mut archive: Vec<Journey> = Vec::new();
    let mut consent_log = initial_consent;
    for (journey_files, segment_files, inputs) in runs {
        let mut journeys = Journeys::new(journey_files.clone(), "time_zone");
        for old in &archive {
            journeys.archive(old.clone());
        }
        archive.extend(journey_files);
        let state = GuardrailState {
            consent: Default::default(),
            profiles: ProfileTable::new(
                profile_log.iter().filter_map(|(s, p)| p.clone().map(|p| (s.clone(), p))).collect(),
            ),
            caps: cap_log.iter().filter_map(|(s, c)| c.clone().map(|c| (s.clone(), c))).collect(),
            journeys: journey_log.iter().filter_map(|(s, j)| j.clone().map(|j| (s.clone(), j))).collect(),
            segments: segment_log.iter().filter_map(|(s, g)| g.clone().map(|g| (s.clone(), g))).collect(),
        };
        let rules = GuardrailRules {
            intents: intents.clone(),
            consent: ConsentConfig::default(),
            caps: caps.clone(),
            quiet: quiet.clone(),
            segments: Segments::new(segment_files),
            journeys,
            profiles: ProfilesConfig { recipients: file.recipients.clone(), ..ProfilesConfig::default() },
            guarantee: file.guarantee,
            send_ledger_ttl: DEFAULT_SEND_LEDGER_TTL,
        };
        let tables = Tables { consent: &consent_log, profiles: &profile_topic };
        let outputs = run_dataflow(state, rules, tables, inputs.iter().map(clone_step).collect())?;
        outcome.decisions.extend(outputs.decisions.into_iter().map(Arc::unwrap_or_clone));
        outcome.transitions.extend(outputs.transitions);
        outcome.memberships.extend(outputs.memberships);
        segment_log.extend(outputs.segments.into_iter().map(|s| (s.subject, s.state)));
        cap_log.extend(outputs.caps.into_iter().map(|s| (s.subject, s.state)));
        journey_log.extend(outputs.journeys.into_iter().map(|s| (s.subject, s.state)));
        profile_log.extend(outputs.profiles.into_iter().map(|s| (s.subject, s.state)));
        // The consent topic is replayed at every start.
        consent_log.extend(inputs.iter().filter_map(|i| match i {
            ScenarioInput::Consent(c) => Some(c.clone()),
            _ => None,
        }));
        // So is the profiles topic (on top of the restored profiles changelog).
        profile_topic.extend(inputs.iter().filter_map(|i| match i {
            ScenarioInput::Profile(p) => Some(p.clone()),
            _ => None,
        }));
    }
    Ok((file, outcome))
}

fn clone_step(i: &ScenarioInput) -> ScenarioInput {
    match i {
        ScenarioInput::Event(e) => ScenarioInput::Event(e.clone()),
        ScenarioInput::Watermark(w) => ScenarioInput::Watermark(*w),
        ScenarioInput::Consent(c) => ScenarioInput::Consent(c.clone()),
        ScenarioInput::Profile(p) => ScenarioInput::Profile(p.clone()),
        ScenarioInput::Restart(j, s) => ScenarioInput::Restart(j.clone(), s.clone()),
    }
}

/// What one run of the dataflow emitted, by kind, each in order. (Events to store are not part of a
/// scenario's outcome, and none are emitted: every event is marked stored.)
#[derive(Default)]
struct RunOutputs {
    decisions: Vec<Arc<Decision>>,
    transitions: Vec<Transition>,
    caps: Vec<CapSnapshot>,
    journeys: Vec<JourneySnapshot>,
    profiles: Vec<ProfileSnapshot>,
    segments: Vec<SegmentSnapshot>,
    memberships: Vec<SegmentChange>,
}

/// The table topics as a start replays them.
struct Tables<'a> {
    consent: &'a [ConsentChange],
    profiles: &'a [ProfileChange],
}

/// One run: the tables replayed at epoch 0, then one epoch per step.
fn run_dataflow(
    state: GuardrailState,
    rules: GuardrailRules,
    tables: Tables<'_>,
    inputs: Vec<ScenarioInput>,
) -> Result<RunOutputs> {
    let (consent, profile_records) = (tables.consent.to_vec(), tables.profiles.to_vec());
    // `execute_directly` runs on this thread: the operators are the pipeline's own.
    let (mut state, mut rules) = (Some(state), Some(rules));
    let outputs = timely::execute_directly(move |worker| {
        let collected: Rc<RefCell<RunOutputs>> = Rc::default();
        let sink = collected.clone();
        let probe = ProbeHandle::new();
        let (mut events, mut changes, mut profiles, mut watermarks) = worker.dataflow::<u64, _, _>(|scope| {
            // Events carry the keyed operator's "already stored" flag: set, since a scenario stores nothing.
            let (events_in, events) = scope.new_input::<Vec<ReadEvent>>();
            let (changes_in, changes) = scope.new_input::<Vec<ConsentChange>>();
            let (profiles_in, profile_changes) = scope.new_input::<Vec<ProfileChange>>();
            let (watermarks_in, watermarks) = scope.new_input::<Vec<i64>>();
            let (Some(state), Some(rules)) = (state.take(), rules.take()) else {
                unreachable!("the dataflow is built once")
            };
            // No dry runs in a scenario: an input closed at once.
            let (requests_in, requests) = scope.new_input::<Vec<EvaluateRequest>>();
            drop(requests_in);
            let out = guardrails(events, changes, profile_changes, watermarks, requests, state, rules);
            let s = sink.clone();
            out.decisions.inspect(move |d| s.borrow_mut().decisions.push(d.clone())).probe_with(&probe);
            let s = sink.clone();
            out.transitions.inspect(move |t| s.borrow_mut().transitions.push(t.clone())).probe_with(&probe);
            let s = sink.clone();
            out.caps.inspect(move |c| s.borrow_mut().caps.push(c.clone())).probe_with(&probe);
            let s = sink.clone();
            out.journeys.inspect(move |j| s.borrow_mut().journeys.push(j.clone())).probe_with(&probe);
            let s = sink.clone();
            out.profiles.inspect(move |p| s.borrow_mut().profiles.push(p.clone())).probe_with(&probe);
            let s = sink.clone();
            out.segments.inspect(move |p| s.borrow_mut().segments.push(p.clone())).probe_with(&probe);
            let s = sink.clone();
            out.memberships.inspect(move |m| s.borrow_mut().memberships.push(m.clone())).probe_with(&probe);
            out.events.probe_with(&probe);
            (events_in, changes_in, profiles_in, watermarks_in)
        });
        for c in &consent {
            changes.send(c.clone());
        }
        for p in &profile_records {
            profiles.send(p.clone());
        }
        let mut epoch = 0u64;
        let mut steps = inputs.into_iter();
        loop {
            epoch += 1;
            events.advance_to(epoch);
            changes.advance_to(epoch);
            profiles.advance_to(epoch);
            watermarks.advance_to(epoch);
            while probe.less_than(&epoch) {
                worker.step();
            }
            match steps.next() {
                Some(ScenarioInput::Event(e)) => events.send(ReadEvent { event: e, already_stored: true }),
                Some(ScenarioInput::Watermark(w)) => watermarks.send(w),
                Some(ScenarioInput::Consent(c)) => changes.send(c),
                Some(ScenarioInput::Profile(p)) => profiles.send(p),
                // Restarts separate runs; a run never holds one.
                Some(ScenarioInput::Restart(..)) => {}
                None => break,
            }
        }
        // One worker processes epochs in order: each kind arrives in decision order.
        let outputs = std::mem::take(&mut *collected.borrow_mut());
        outputs
    });
    Ok(outputs)
}

/// Compares an outcome with the file's expectations; every difference, or nothing.
pub fn differences(file: &ScenarioFile, outcome: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let sends = outcome.sends();
    if !ExpectedSend::all_match(&file.expect.sends, &sends) {
        problems.push(format!("sends: expected {:?}\n       got      {:?}", file.expect.sends, sends));
    }
    let suppressed = outcome.suppressed();
    if !ExpectedSend::all_match(&file.expect.suppressed, &suppressed) {
        problems
            .push(format!("suppressed: expected {:?}\n            got      {:?}", file.expect.suppressed, suppressed));
    }
    let paths = outcome.paths();
    for (subject, expected) in &file.expect.transitions {
        let got = paths.get(subject).cloned().unwrap_or_default();
        if &got != expected {
            problems.push(format!("transitions of {subject}: expected {expected:?}\n    got {got:?}"));
        }
    }
    let start_ms = file.start_ms().unwrap_or_default();
    for (subject, expected) in &file.expect.memberships {
        let expected: Result<Vec<(bool, String, i64)>> =
            expected.iter().map(|e| membership_line(e, start_ms)).collect();
        let got: Vec<(bool, String, i64)> = outcome
            .memberships
            .iter()
            .filter(|m| &*m.subject.subject_id == subject.as_str())
            .map(|m| (m.entered, m.segment.clone(), m.at_ms))
            .collect();
        match expected {
            Ok(expected) if expected == got => {}
            Ok(expected) => problems.push(format!("memberships of {subject}: expected {expected:?}\n    got {got:?}")),
            Err(e) => problems.push(format!("memberships of {subject}: {e:#}")),
        }
    }
    problems
}

/// `entered <segment> at <time>` / `exited <segment> at <time>`.
fn membership_line(line: &str, start_ms: i64) -> Result<(bool, String, i64)> {
    let bad = || anyhow!("`{line}` is not `entered|exited <segment> at <time>`");
    let mut words = line.split_whitespace();
    let entered = match words.next() {
        Some("entered") => true,
        Some("exited") => false,
        _ => return Err(bad()),
    };
    let segment = words.next().ok_or_else(bad)?.to_string();
    if words.next() != Some("at") {
        return Err(bad());
    }
    let at = words.collect::<Vec<_>>().join(" ");
    if at.is_empty() {
        return Err(bad());
    }
    let at = time(start_ms, &at)?;
    Ok((entered, segment, at))
}

/// Every scenario file of a directory, sorted.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no scenario files in {}", dir.display());
    }
    Ok(files)
}
