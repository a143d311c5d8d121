//! Journey definition files: parsing, validation and versions.
//!
//! ```yaml
//! id: welcome-series
//! label: november-launch            # human label; the version is `<label>-<content hash>`
//! trigger:
//!   event: signed_up
//!   where: "event.attributes.plan in ['free', 'pro']"
//! reentry: once                     # once | always | after 30d
//! exit_on:                          # goal events: the subject leaves the journey
//!   - event: order_completed
//! migrate: false                    # true: subjects inside older versions move to this one
//! steps:                            # the first step is the entry
//!   - id: welcome
//!     send: {channel: email, template: welcome, category: onboarding, payload: {plan: event.attributes.plan}}
//!     next: wait-2d
//!   - id: wait-2d
//!     wait: 2d
//!     next: opened
//!   - id: opened
//!     condition: happened(email_opened, 2d)
//!     then: done
//!     else: nudge
//!   - id: nudge
//!     wait_for: {event: email_opened, timeout: 1d}
//!     next: done
//!     on_timeout: done
//!   - id: done
//!     exit: true
//! ```
//!
//! Every error names the file, the line and the problem; validation reports all of them at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::expr::Expr;
use touchpoint_schemas::{Channel, Purpose};

/// The file as written (before validation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyFile {
    pub id: String,
    #[serde(default)]
    pub label: String,
    pub trigger: EventMatchFile,
    #[serde(default = "reentry_once")]
    pub reentry: String,
    #[serde(default)]
    pub exit_on: Vec<EventMatchFile>,
    #[serde(default)]
    pub migrate: bool,
    /// Variables captured at entry: name → path (`event.attributes.coupon`, `subject.id`), read later as
    /// `vars.<name>` by conditions and payloads (after waits, whatever events come in between).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    pub steps: Vec<StepFile>,
}

fn reentry_once() -> String {
    "once".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMatchFile {
    pub event: String,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFile {
    pub channel: String,
    pub template: String,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Message fields: name → path (`event.attributes.plan`, `subject.first_name`, `vars.x`).
    #[serde(default)]
    pub payload: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForFile {
    pub event: String,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    pub timeout: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBranchFile {
    pub percent: u32,
    pub next: String,
}

/// One step: an `id`, exactly one kind (`send`, `wait`, `wait_for`, `condition`, `split`, `exit`) and
/// the references that kind uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitForFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitBranchFile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(default, rename = "then", skip_serializing_if = "Option::is_none")]
    pub then_step: Option<String>,
    #[serde(default, rename = "else", skip_serializing_if = "Option::is_none")]
    pub else_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
    /// After a send that consent or a cap suppressed (default: `next`, like a platform that moves a
    /// subject past a capped step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_suppressed: Option<String>,
}

/// Index of a step in [`Journey::steps`].
pub type StepIx = usize;

#[derive(Debug, Clone)]
pub struct EventMatch {
    pub event_type: String,
    pub condition: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct Send {
    pub channel: Channel,
    pub purpose: Purpose,
    pub template: String,
    pub category: String,
    pub priority: i32,
    pub tags: Vec<String>,
    pub payload: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    /// `next: None` ends the journey after the send.
    Send {
        send: Send,
        next: Option<StepIx>,
        on_suppressed: Option<StepIx>,
    },
    Wait {
        duration_ms: i64,
        next: StepIx,
    },
    WaitFor {
        event: EventMatch,
        timeout_ms: i64,
        next: StepIx,
        on_timeout: StepIx,
    },
    Condition {
        condition: Expr,
        then_step: StepIx,
        else_step: StepIx,
    },
    /// Cumulative upper bounds (exclusive) of the percentage buckets, with their targets.
    Split {
        branches: Vec<(u32, StepIx)>,
    },
    Exit,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
}

/// When a subject may enter a journey again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Never again once entered.
    Once,
    /// Whenever the trigger matches and the subject is not inside.
    Always,
    /// Once this long has passed since the last entry (event time), and the subject is not inside.
    After { cooldown_ms: i64 },
}

/// A validated journey, ready to run.
#[derive(Debug, Clone)]
pub struct Journey {
    pub id: String,
    pub label: String,
    /// `<label>-<hash of the definition>`: a new version whenever the definition changes (not its
    /// formatting or comments).
    pub version: String,
    pub trigger: EventMatch,
    pub reentry: Reentry,
    pub exit_on: Vec<EventMatch>,
    pub migrate: bool,
    /// Variables captured at entry: name → path.
    pub vars: Vec<(String, Vec<String>)>,
    pub steps: Vec<Step>,
    /// The definition as loaded (what is archived, so subjects on this version can continue after the
    /// file changed).
    pub source: JourneyFile,
}

impl Journey {
    /// The segments the journey's conditions name (`in_segment(...)`), for checking that they exist.
    pub fn segments_named(&self) -> Vec<String> {
        let mut out = Vec::new();
        let matches = std::iter::once(&self.trigger).chain(&self.exit_on);
        let waits = self.steps.iter().filter_map(|s| match &s.kind {
            StepKind::WaitFor { event, .. } => Some(event),
            _ => None,
        });
        for c in matches.chain(waits).filter_map(|m| m.condition.as_ref()) {
            c.segments(&mut out);
        }
        for s in &self.steps {
            if let StepKind::Condition { condition, .. } = &s.kind {
                condition.segments(&mut out);
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Problems found in one journey file, one line each: `path:line: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.lines().join("\n"))]
pub struct JourneyError {
    pub path: PathBuf,
    pub problems: Vec<(usize, String)>,
}

impl JourneyError {
    fn lines(&self) -> Vec<String> {
        self.problems.iter().map(|(line, p)| format!("{}:{line}: {p}", self.path.display())).collect()
    }
}

/// A duration in a journey file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration `{0}` must be greater than zero")]
    Zero(String),
    #[error("`{text}` is not a duration (e.g. 30m, 12h, 2d): {why}")]
    Invalid { text: String, why: String },
}

/// Parses a duration such as `30m`, `2d`, `1h 30m`; refuses zero.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(DurationError::Zero(text.to_string())),
        Err(e) => Err(DurationError::Invalid { text: text.to_string(), why: e.to_string() }),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Finds the line (1-based) of `key: value` in the text, preferring the occurrence after `from_line`.
struct Lines<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines { lines: text.lines().collect() }
    }

    /// First line at or after `from` (1-based) containing `needle`; `from` itself when none does.
    fn find(&self, from: usize, needle: &str) -> usize {
        self.lines
            .iter()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.contains(needle))
            .map_or(from.max(1), |(i, _)| i + 1)
    }

    /// The line of the step `id` (its `id:` entry).
    fn step(&self, id: &str) -> usize {
        let quoted = [format!("id: {id}"), format!("id: \"{id}\""), format!("id: '{id}'")];
        self.lines
            .iter()
            .position(|l| {
                let t = l.trim_start().trim_start_matches("- ").trim_end();
                quoted.iter().any(|q| t == q)
            })
            .map_or(1, |i| i + 1)
    }
}

impl Journey {
    /// Reads and validates a journey file.
    pub fn load(path: &Path) -> Result<Journey, JourneyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| JourneyError { path: path.into(), problems: vec![(1, format!("cannot read: {e}"))] })?;
        Journey::parse(&text, path)
    }

    /// Parses and validates the text of a journey file (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Journey, JourneyError> {
        let fail = |problems| JourneyError { path: path.into(), problems };
        let file: JourneyFile = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map_or(1, |l| l.line());
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            fail(vec![(line, message)])
        })?;
        validate(file, &Lines::new(text)).map_err(fail)
    }
}

fn validate(file: JourneyFile, lines: &Lines<'_>) -> Result<Journey, Vec<(usize, String)>> {
    let mut problems: Vec<(usize, String)> = Vec::new();
    if file.id.trim().is_empty() {
        problems.push((lines.find(1, "id:"), "journey id must not be empty".into()));
    }
    if file.steps.is_empty() {
        problems.push((lines.find(1, "steps:"), "a journey needs at least one step".into()));
    }
    let expression = |text: &str, line: usize, problems: &mut Vec<(usize, String)>| match Expr::parse(text) {
        Ok(e) => Some(e),
        Err(e) => {
            problems.push((line, format!("in `{text}`: {e}")));
            None
        }
    };
    let event_match = |m: &EventMatchFile, from: usize, problems: &mut Vec<(usize, String)>| {
        let line = lines.find(from, &format!("event: {}", m.event));
        let condition = m.condition.as_ref().and_then(|c| expression(c, lines.find(line, "where:"), problems));
        EventMatch { event_type: m.event.clone(), condition }
    };
    let trigger = event_match(&file.trigger, lines.find(1, "trigger:"), &mut problems);
    let exit_on: Vec<EventMatch> =
        file.exit_on.iter().map(|m| event_match(m, lines.find(1, "exit_on:"), &mut problems)).collect();
    let reentry = match file.reentry.trim() {
        "once" => Reentry::Once,
        "always" => Reentry::Always,
        other => match other.strip_prefix("after ").map(parse_duration) {
            Some(Ok(d)) => Reentry::After { cooldown_ms: millis(d) },
            Some(Err(e)) => {
                problems.push((lines.find(1, "reentry:"), format!("reentry: {e}")));
                Reentry::Once
            }
            None => {
                problems.push((
                    lines.find(1, "reentry:"),
                    format!("reentry: `{other}` is not one of: once, always, after <duration>"),
                ));
                Reentry::Once
            }
        },
    };

    let mut vars = Vec::new();
    for (name, path) in &file.vars {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        let valid_name = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
        if !valid_name
            || !matches!(parts.first().map(String::as_str), Some("event" | "subject"))
            || parts.iter().any(String::is_empty)
        {
            problems.push((
                lines.find(lines.find(1, "vars:"), &format!("{name}:")),
                format!("vars: `{name}: {path}`: a variable is a name and a path under event or subject"),
            ));
        }
        vars.push((name.clone(), parts));
    }

    // Step ids, then every reference.
    let mut index: HashMap<&str, StepIx> = HashMap::new();
    for (i, s) in file.steps.iter().enumerate() {
        if index.insert(s.id.as_str(), i).is_some() {
            problems.push((lines.step(&s.id), format!("step `{}` is defined twice", s.id)));
        }
    }
    let mut steps = Vec::with_capacity(file.steps.len());
    for s in &file.steps {
        let line = lines.step(&s.id);
        let resolve = |field: &str, target: &Option<String>, problems: &mut Vec<(usize, String)>| -> Option<StepIx> {
            let name = target.as_ref()?;
            match index.get(name.as_str()) {
                Some(&ix) => Some(ix),
                None => {
                    problems.push((
                        lines.find(line, &format!("{field}: {name}")),
                        format!("step `{}`: {field} refers to unknown step `{name}`", s.id),
                    ));
                    None
                }
            }
        };
        let kinds = [
            s.send.is_some(),
            s.wait.is_some(),
            s.wait_for.is_some(),
            s.condition.is_some(),
            s.split.is_some(),
            s.exit.is_some(),
        ];
        let count = kinds.iter().filter(|k| **k).count();
        if count != 1 {
            problems.push((
                line,
                format!(
                    "step `{}` must have exactly one of send, wait, wait_for, condition, split, exit (has {count})",
                    s.id
                ),
            ));
            steps.push(Step { id: s.id.clone(), kind: StepKind::Exit });
            continue;
        }
        let required = |field: &str, target: &Option<String>, problems: &mut Vec<(usize, String)>| {
            if target.is_none() {
                problems.push((line, format!("step `{}` needs `{field}`", s.id)));
            }
            resolve(field, target, problems)
        };
        let kind = if let Some(send) = &s.send {
            let channel = Channel::parse(&send.channel).unwrap_or_else(|| {
                problems.push((
                    lines.find(line, "channel:"),
                    format!("step `{}`: `{}` is not a channel (email, sms, push, webhook)", s.id, send.channel),
                ));
                Channel::Email
            });
            let purpose = match send.purpose.as_deref() {
                None => Purpose::Marketing,
                Some(p) => Purpose::parse(p).unwrap_or_else(|| {
                    problems.push((
                        lines.find(line, "purpose:"),
                        format!("step `{}`: `{p}` is not a purpose (marketing, transactional)", s.id),
                    ));
                    Purpose::Marketing
                }),
            };
            let mut payload = Vec::new();
            for (name, path) in &send.payload {
                let parts: Vec<String> = path.split('.').map(str::to_string).collect();
                if !matches!(parts.first().map(String::as_str), Some("event" | "subject" | "vars"))
                    || parts.iter().any(String::is_empty)
                {
                    problems.push((
                        lines.find(line, &format!("{name}:")),
                        format!(
                            "step `{}`: payload `{name}`: `{path}` is not a path under event, subject or vars",
                            s.id
                        ),
                    ));
                }
                payload.push((name.clone(), parts));
            }
            StepKind::Send {
                send: Send {
                    channel,
                    purpose,
                    template: send.template.clone(),
                    category: send.category.clone(),
                    priority: send.priority,
                    tags: send.tags.clone(),
                    payload,
                },
                next: resolve("next", &s.next, &mut problems),
                on_suppressed: resolve("on_suppressed", &s.on_suppressed, &mut problems),
            }
        } else if let Some(wait) = &s.wait {
            let duration_ms = parse_duration(wait).map(millis).unwrap_or_else(|e| {
                problems.push((lines.find(line, "wait:"), format!("step `{}`: wait: {e}", s.id)));
                0
            });
            StepKind::Wait { duration_ms, next: required("next", &s.next, &mut problems).unwrap_or(0) }
        } else if let Some(wait_for) = &s.wait_for {
            let timeout_ms = parse_duration(&wait_for.timeout).map(millis).unwrap_or_else(|e| {
                problems.push((lines.find(line, "timeout:"), format!("step `{}`: timeout: {e}", s.id)));
                0
            });
            let event = EventMatchFile { event: wait_for.event.clone(), condition: wait_for.condition.clone() };
            StepKind::WaitFor {
                event: event_match(&event, line, &mut problems),
                timeout_ms,
                next: required("next", &s.next, &mut problems).unwrap_or(0),
                on_timeout: required("on_timeout", &s.on_timeout, &mut problems).unwrap_or(0),
            }
        } else if let Some(condition) = &s.condition {
            let condition = expression(condition, lines.find(line, "condition:"), &mut problems);
            let then_step = required("then", &s.then_step, &mut problems).unwrap_or(0);
            let else_step = required("else", &s.else_step, &mut problems).unwrap_or(0);
            match condition {
                Some(condition) => StepKind::Condition { condition, then_step, else_step },
                None => StepKind::Exit,
            }
        } else if let Some(split) = &s.split {
            let total: u32 = split.iter().fold(0u32, |sum, b| sum.saturating_add(b.percent));
            if total != 100 || split.is_empty() {
                problems.push((
                    lines.find(line, "split:"),
                    format!("step `{}`: split percentages add up to {total}, not 100", s.id),
                ));
            }
            let mut upper: u32 = 0;
            let mut branches = Vec::new();
            for b in split {
                upper = upper.saturating_add(b.percent);
                if let Some(ix) = resolve("next", &Some(b.next.clone()), &mut problems) {
                    branches.push((upper, ix));
                }
            }
            StepKind::Split { branches }
        } else {
            StepKind::Exit
        };
        steps.push(Step { id: s.id.clone(), kind });
    }

    if problems.is_empty() {
        check_graph(&steps, lines, &mut problems);
    }
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(problems);
    }
    let hash = match crate::version::config_hash(&file) {
        Ok(hash) => format!("{hash:016x}"),
        Err(e) => return Err(vec![(1, format!("cannot compute the journey's version: {e}"))]),
    };
    let label = if file.label.trim().is_empty() { "v".to_string() } else { file.label.trim().to_string() };
    Ok(Journey {
        id: file.id.clone(),
        version: format!("{label}-{}", &hash[..12]),
        label,
        trigger,
        reentry,
        exit_on,
        migrate: file.migrate,
        vars,
        steps,
        source: file,
    })
}

/// Successors of a step.
pub fn successors(kind: &StepKind) -> Vec<StepIx> {
    match kind {
        StepKind::Send { next, on_suppressed, .. } => next.iter().chain(on_suppressed).copied().collect(),
        StepKind::Wait { next, .. } => vec![*next],
        StepKind::WaitFor { next, on_timeout, .. } => vec![*next, *on_timeout],
        StepKind::Condition { then_step, else_step, .. } => vec![*then_step, *else_step],
        StepKind::Split { branches } => branches.iter().map(|(_, s)| *s).collect(),
        StepKind::Exit => vec![],
    }
}

fn is_wait(kind: &StepKind) -> bool {
    matches!(kind, StepKind::Wait { .. } | StepKind::WaitFor { .. })
}

/// Unreachable steps, and cycles that pass no wait (they would loop forever at one instant).
fn check_graph(steps: &[Step], lines: &Lines<'_>, problems: &mut Vec<(usize, String)>) {
    let mut reached = HashSet::new();
    let mut stack = vec![0];
    while let Some(s) = stack.pop() {
        if reached.insert(s) {
            stack.extend(successors(&steps[s].kind));
        }
    }
    for (i, s) in steps.iter().enumerate() {
        if !reached.contains(&i) {
            problems.push((lines.step(&s.id), format!("step `{}` is unreachable from the entry step", s.id)));
        }
    }
    // Cycles in the graph without the edges out of waits: depth-first search with colours.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(s: StepIx, steps: &[Step], marks: &mut [Mark], path: &mut Vec<StepIx>) -> Option<Vec<StepIx>> {
        marks[s] = Mark::Open;
        path.push(s);
        if !is_wait(&steps[s].kind) {
            for n in successors(&steps[s].kind) {
                match marks[n] {
                    Mark::Open => {
                        let start = path.iter().position(|p| *p == n).unwrap_or(0);
                        return Some(path[start..].to_vec());
                    }
                    Mark::New => {
                        if let Some(cycle) = visit(n, steps, marks, path) {
                            return Some(cycle);
                        }
                    }
                    Mark::Done => {}
                }
            }
        }
        path.pop();
        marks[s] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; steps.len()];
    for s in 0..steps.len() {
        if marks[s] == Mark::New {
            if let Some(cycle) = visit(s, steps, &mut marks, &mut Vec::new()) {
                let names: Vec<&str> = cycle.iter().map(|i| steps[*i].id.as_str()).collect();
                problems.push((
                    lines.step(names[0]),
                    format!(
                        "cycle without a wait: {} -> {} (it would repeat forever at one instant)",
                        names.join(" -> "),
                        names[0]
                    ),
                ));
                return;
            }
        }
    }
}

/// All journeys of a directory (`*.yaml`, `*.yml`), sorted by file name; every file's problems at once.
pub fn load_dir(dir: &Path) -> Result<Vec<Journey>, Vec<JourneyError>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) => {
            return Err(vec![JourneyError { path: dir.into(), problems: vec![(1, format!("cannot read: {e}"))] }])
        }
    };
    files.sort();
    let mut journeys = Vec::new();
    let mut errors = Vec::new();
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    for f in files {
        match Journey::load(&f) {
            Ok(j) => {
                if let Some(other) = ids.insert(j.id.clone(), f.clone()) {
                    errors.push(JourneyError {
                        path: f.clone(),
                        problems: vec![(1, format!("journey id `{}` is also used by {}", j.id, other.display()))],
                    });
                }
                journeys.push(j);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(journeys)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests;
