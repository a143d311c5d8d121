//! Streaming segments: who is in an audience, maintained per subject as events arrive and as event
//! time passes. One YAML file per segment (`pipelines/segments/`):
//!
//! ```yaml
//! id: pro-buyers-gone-quiet
//! label: v1
//! description: Pro customers who ordered this month but have not opened the app for two weeks.
//! condition: profile.plan == "pro" and count(order_completed, 30d) >= 1 and not happened(app_opened, 14d)
//! ```
//!
//! A condition is an expression of the journey language (`journey::expr`) over the subject's profile
//! (`profile.<field>`) and its behaviour in event-time windows (`count(type, window)`,
//! `happened(type[, window])`). It reads nothing of the event at hand, so membership depends only on
//! the subject's state and the time: the same at every replay.
//!
//! Per subject the segments keep, for each event type a condition counts, the event times within the
//! longest window any condition uses (at most [`MAX_TIMES_PER_TYPE`], the newest; `count` stops there)
//! and whether the type was ever seen. A window that empties is a change in time alone:
//! [`Segments::next_change`] says when, and the caller sets a timer on the watermark, so a subject
//! joins `inactive-3d` without any event.
//!
//! The guardrails (`crate::guardrails`) hold [`SubjectSegments`] next to the journeys, evaluate on events
//! of counted types, profile changes and timers, and feed each [`SegmentChange`] to the journeys and the
//! intent rules as a `segment_entered` / `segment_exited` event ([`SegmentChange::event`]).
//!
//! Replays are idempotent: two events of one type at the same millisecond count once (a re-processed
//! event finds its time recorded), and the id of a change's event is its subject, segment and ordinal
//! (the n-th entry or exit), never the instant it was evaluated at, so a send it triggers keeps its
//! idempotency key when a restart evaluates it at another watermark.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use touchpoint_schemas::{Channel, NormalizedEvent, Purpose, SourcePosition, SubjectRef};

use crate::journey::expr::{Context, Expr};
use crate::profile::SubjectProfile;
use crate::small_map::SmallMap;

/// Event times kept per subject and event type: `count(...)` saturates here.
pub const MAX_TIMES_PER_TYPE: usize = 256;

/// A segment file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentFile {
    pub id: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub description: String,
    pub condition: String,
}

/// A segment, checked: its condition parsed, its windows known, its version the hash of its file.
#[derive(Debug, Clone)]
pub struct Segment {
    pub id: String,
    /// `<label>-<content hash>` (or the hash alone): a changed file is a new version.
    pub version: String,
    pub condition: Expr,
    pub source: SegmentFile,
}

/// Problems of one segment file, one per line: `path:line: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(|(line, p)| format!("{}:{line}: {p}", .path)).collect::<Vec<_>>().join("\n"))]
pub struct SegmentError {
    pub path: String,
    pub problems: Vec<(usize, String)>,
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.trim_start().starts_with(needle)).map_or(1, |i| i + 1)
}

impl Segment {
    /// Parses and checks a segment file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Segment, SegmentError> {
        let fail = |problems| SegmentError { path: origin.display().to_string(), problems };
        let file: SegmentFile = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map_or(1, |l| l.line());
            let message = e.to_string();
            fail(vec![(line, message.split(" at line ").next().unwrap_or(&message).to_string())])
        })?;
        let mut problems = Vec::new();
        let id_ok = !file.id.is_empty() && file.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            problems.push((line_of(text, "id:"), format!("segment id {:?} must be letters, digits, - and _", file.id)));
        }
        let line = line_of(text, "condition:");
        let condition = match Expr::parse(&file.condition) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push((line, format!("in `{}`: {e}", file.condition)));
                None
            }
        };
        if let Some(c) = &condition {
            let mut paths = Vec::new();
            c.paths(&mut paths);
            for p in paths {
                if p.first().is_none_or(|f| f != "profile") {
                    problems.push((
                        line,
                        format!(
                            "`{}`: a segment reads the subject's profile (profile.*) and its history \
                             (count, happened), not one event",
                            p.join(".")
                        ),
                    ));
                }
            }
            let mut segments = Vec::new();
            c.segments(&mut segments);
            if !segments.is_empty() {
                problems.push((line, "in_segment(...) is for journeys and intent rules, not segments".into()));
            }
            if uses_consent(c) {
                problems.push((line, "consent(...) is decided at send time, not in a segment".into()));
            }
        }
        match condition {
            Some(condition) if problems.is_empty() => {
                let hash =
                    crate::version::config_version("segment", &file).map_err(|e| fail(vec![(1, e.to_string())]))?;
                let version = match &file.label {
                    Some(l) => format!("{l}-{}", hash.trim_start_matches("segment-")),
                    None => hash,
                };
                Ok(Segment { id: file.id.clone(), version, condition, source: file })
            }
            _ => Err(fail(problems)),
        }
    }

    /// Reads and checks a segment file.
    pub fn load(path: &Path) -> Result<Segment, SegmentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SegmentError { path: path.display().to_string(), problems: vec![(1, e.to_string())] })?;
        Segment::parse(&text, path)
    }
}

fn uses_consent(e: &Expr) -> bool {
    match e {
        Expr::And(t) | Expr::Or(t) => t.iter().any(uses_consent),
        Expr::Not(e) => uses_consent(e),
        Expr::Consent(..) => true,
        _ => false,
    }
}

/// Every segment file (`*.yaml`) of a directory, checked; every problem of every file at once.
pub fn load_segments(dir: &Path) -> Result<Vec<Segment>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let (mut segments, mut problems) = (Vec::new(), Vec::new());
    for f in files {
        match Segment::load(&f) {
            Ok(s) => segments.push(s),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut ids = BTreeSet::new();
    for s in &segments {
        if !ids.insert(s.id.clone()) {
            problems.push(format!("segment id {:?} is used by two files", s.id));
        }
    }
    if problems.is_empty() {
        Ok(segments)
    } else {
        Err(problems.join("\n"))
    }
}

/// One event type's history for segments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeHistory {
    /// Event times within the longest window, ascending, at most [`MAX_TIMES_PER_TYPE`].
    pub times: Vec<i64>,
    /// Seen at least once (for `happened(type)` without a window).
    pub ever: bool,
}

/// A subject's membership of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub version: String,
    pub entered_at_ms: i64,
    /// Which of the subject's memberships of this segment this is (1 for the first).
    #[serde(default = "first")]
    pub ordinal: u32,
}

fn first() -> u32 {
    1
}

/// What the segments keep of one subject. Sorted vectors, not B-trees: a subject has a few counted types
/// and memberships, and a B-tree node holds room for eleven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSegments {
    #[serde(default, skip_serializing_if = "SmallMap::is_empty")]
    pub history: SmallMap<TypeHistory>,
    #[serde(default, skip_serializing_if = "SmallMap::is_empty")]
    pub members: SmallMap<Membership>,
    /// Per segment, how many memberships of the subject ended (the next entry's ordinal is one more).
    #[serde(default, skip_serializing_if = "SmallMap::is_empty")]
    pub exits: SmallMap<u32>,
    /// The event time of the last change (an event recorded, a membership changed): membership never
    /// moves back in time (a late event is evaluated at this instant, not its own). An evaluation that
    /// changes nothing leaves it, so that when a subject is evaluated (a restart's check, a profile
    /// change at the watermark) does not move the instants of its later changes.
    #[serde(default = "never")]
    pub at_ms: i64,
    /// When its memberships change next by time alone (the subject's timer); derived, not stored.
    #[serde(skip)]
    pub next_ms: Option<i64>,
}

fn never() -> i64 {
    i64::MIN
}

impl SubjectSegments {
    /// Nothing worth keeping (the evaluation instant alone is not).
    pub fn is_empty(&self) -> bool {
        self.history.is_empty() && self.members.is_empty() && self.exits.is_empty()
    }
}

impl Default for SubjectSegments {
    fn default() -> Self {
        SubjectSegments {
            history: SmallMap::default(),
            members: SmallMap::default(),
            exits: SmallMap::default(),
            at_ms: never(),
            next_ms: None,
        }
    }
}

/// A subject entered or left a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentChange {
    pub subject: SubjectRef,
    pub segment: String,
    pub version: String,
    pub entered: bool,
    /// Event time of the change.
    pub at_ms: i64,
    /// When the membership began (the change's own instant for an entry).
    pub entered_at_ms: i64,
    /// Which of the subject's memberships of the segment (1 for the first): with `entered`, what makes
    /// the change's event id.
    pub ordinal: u32,
}

/// Event types of membership changes, fed to journeys and intent rules.
pub const SEGMENT_ENTERED: &str = "segment_entered";
pub const SEGMENT_EXITED: &str = "segment_exited";

impl SegmentChange {
    pub fn event_type(&self) -> &'static str {
        if self.entered {
            SEGMENT_ENTERED
        } else {
            SEGMENT_EXITED
        }
    }

    /// The change's event id: subject, segment, kind and ordinal (not the instant, see the module).
    pub fn event_id(&self) -> String {
        let key = crate::fast_hash::KeyBytes::with_capacity(64)
            .part(&self.subject.tenant_id)
            .part(&self.subject.subject_id)
            .part(&self.segment)
            .part(self.event_type())
            .part(&self.ordinal.to_string());
        crate::fast_hash::hex_id("seg-", key.hash128())
    }

    /// The change as an event of the subject (`segment_entered` / `segment_exited`, attributes
    /// `segment` and `version`), for the journeys (`trigger`, `exit_on`) and the intent rules (`on`).
    /// `ingested_at_ms` is the wall clock of the epoch that made it.
    pub fn event(&self, ingested_at_ms: i64) -> NormalizedEvent {
        let attributes = serde_json::json!({"segment": self.segment, "version": self.version});
        NormalizedEvent {
            event_id: self.event_id(),
            event_type: self.event_type().to_string(),
            occurred_at_ms: self.at_ms,
            subject_id: self.subject.subject_id.to_string(),
            tenant_id: self.subject.tenant_id.to_string(),
            source: "touchpoint.segments".into(),
            attributes_json: attributes.to_string(),
            ingested_at_ms,
            position: SourcePosition { topic: String::new(), partition: -1, offset: -1 },
            late: false,
        }
    }
}

/// The loaded segments.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    list: Vec<Segment>,
    /// Per counted event type: the longest window any condition uses (`None`: some condition asks
    /// whether it ever happened, which the `ever` flag answers).
    windows: BTreeMap<String, Option<i64>>,
    /// Every (type, window in ms) a condition counts in, for the timers.
    counted: Vec<(String, i64)>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Segments {
    pub fn new(list: Vec<Segment>) -> Self {
        let mut windows: BTreeMap<String, Option<i64>> = BTreeMap::new();
        let mut counted = Vec::new();
        for s in &list {
            let mut types = Vec::new();
            s.condition.happened_types(&mut types);
            for t in types {
                windows.entry(t).or_insert(None);
            }
            let mut ws = Vec::new();
            s.condition.windows(&mut ws);
            for (t, d) in ws {
                let w = ms(d);
                let slot = windows.entry(t.clone()).or_insert(None);
                *slot = Some(slot.map_or(w, |old| old.max(w)));
                counted.push((t, w));
            }
        }
        counted.sort();
        counted.dedup();
        Segments { list, windows, counted }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[Segment] {
        &self.list
    }

    /// Whether events of this type change any segment's view of a subject.
    pub fn concerns(&self, event_type: &str) -> bool {
        self.windows.contains_key(event_type)
    }

    /// Records an event of a type some condition counts; returns whether the history changed. A time
    /// already recorded is not recorded again: a re-processed event (after a restart) counts once, and
    /// so do two events of one type at the same millisecond.
    pub fn record(&self, state: &mut SubjectSegments, event_type: &str, at_ms: i64) -> bool {
        let Some(window) = self.windows.get(event_type) else { return false };
        let h = state.history.get_or_insert_with(event_type, TypeHistory::default);
        let mut changed = !h.ever;
        h.ever = true;
        if window.is_some() {
            let at = h.times.partition_point(|&t| t < at_ms);
            if h.times.get(at) != Some(&at_ms) {
                h.times.insert(at, at_ms);
                if h.times.len() > MAX_TIMES_PER_TYPE {
                    h.times.remove(0);
                }
                changed = true;
            }
        }
        if changed && at_ms > state.at_ms {
            state.at_ms = at_ms;
            self.trim(state, at_ms);
        }
        changed
    }

    /// Whether a segment of this id is loaded.
    pub fn contains(&self, id: &str) -> bool {
        self.list.iter().any(|s| s.id == id)
    }

    /// Drops event times no window can see any more at `now`.
    fn trim(&self, state: &mut SubjectSegments, now: i64) {
        for (t, h) in state.history.iter_mut() {
            match self.windows.get(t) {
                Some(Some(w)) => h.times.retain(|&at| at >= now.saturating_sub(*w)),
                _ => h.times.clear(),
            }
        }
    }

    /// Evaluates every segment for the subject at event time `now` (or the subject's last evaluation,
    /// if later); returns the entries and exits, in segment order, and updates the memberships. A
    /// member of an older version of a segment stays a member under the new version if the new
    /// condition holds (no exit and entry; `reversioned` says the state changed), else it exits.
    pub fn evaluate(
        &self,
        subject: &SubjectRef,
        state: &mut SubjectSegments,
        profile: Option<&SubjectProfile>,
        now: i64,
    ) -> Evaluation {
        let now = now.max(state.at_ms);
        let mut out = Evaluation { at_ms: now, ..Evaluation::default() };
        for s in &self.list {
            let holds = s.condition.eval(&SegmentCtx { state, profile, now });
            match (state.members.get_mut(&s.id), holds) {
                (None, true) => {
                    let ordinal = state.exits.get(&s.id).copied().unwrap_or(0).saturating_add(1);
                    state
                        .members
                        .insert(s.id.clone(), Membership { version: s.version.clone(), entered_at_ms: now, ordinal });
                    out.changes.push(SegmentChange {
                        subject: subject.clone(),
                        segment: s.id.clone(),
                        version: s.version.clone(),
                        entered: true,
                        at_ms: now,
                        entered_at_ms: now,
                        ordinal,
                    });
                }
                (Some(m), true) if m.version != s.version => {
                    m.version.clone_from(&s.version);
                    out.reversioned = true;
                }
                (Some(_), false) => {
                    if let Some(m) = state.members.remove(&s.id) {
                        out.changes.push(exit(subject, &mut state.exits, s.id.clone(), m, now));
                    }
                }
                _ => {}
            }
        }
        // Segments no longer loaded: their members leave.
        let gone: Vec<String> = if state.members.keys().any(|id| !self.contains(id)) {
            state.members.keys().filter(|id| !self.contains(id)).cloned().collect()
        } else {
            Vec::new()
        };
        for id in gone {
            if let Some(m) = state.members.remove(&id) {
                out.changes.push(exit(subject, &mut state.exits, id, m, now));
            }
        }
        // The exit counts of segments no longer loaded are not needed either.
        state.exits.retain(|id, _| self.contains(id));
        if !out.changes.is_empty() {
            state.at_ms = now;
            self.trim(state, now);
        }
        state.history.retain(|_, h| h.ever || !h.times.is_empty());
        out
    }

    /// The first instant after `now` at which a windowed count of the subject changes by time alone (an
    /// event leaves a window, or a future-dated one enters): when to evaluate again.
    pub fn next_change(&self, state: &SubjectSegments, now: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        for (t, w) in &self.counted {
            let Some(h) = state.history.get(t) else { continue };
            for &at in &h.times {
                let candidate = if at > now { at } else { at.saturating_add(*w).saturating_add(1) };
                if candidate > now {
                    next = Some(next.map_or(candidate, |n| n.min(candidate)));
                }
            }
        }
        next
    }

    /// Whether the subject is a member of `segment` (for `in_segment(...)`).
    pub fn is_member(state: Option<&SubjectSegments>, segment: &str) -> bool {
        state.is_some_and(|s| s.members.contains_key(segment))
    }
}

/// What one evaluation of a subject changed.
#[derive(Debug, Default)]
pub struct Evaluation {
    pub changes: Vec<SegmentChange>,
    /// The instant it was evaluated at (the one asked for, or the subject's last change if later): the
    /// next change by time alone is after it.
    pub at_ms: i64,
    /// A membership moved to a new version of its segment (no change to announce, but state to keep).
    pub reversioned: bool,
}

fn exit(subject: &SubjectRef, exits: &mut SmallMap<u32>, segment: String, m: Membership, now: i64) -> SegmentChange {
    exits.insert(segment.clone(), m.ordinal);
    SegmentChange {
        subject: subject.clone(),
        segment,
        version: m.version,
        entered: false,
        at_ms: now,
        entered_at_ms: m.entered_at_ms,
        ordinal: m.ordinal,
    }
}

/// What a segment condition reads: the profile and the subject's history, at `now`.
struct SegmentCtx<'a> {
    state: &'a SubjectSegments,
    profile: Option<&'a SubjectProfile>,
    now: i64,
}

impl Context for SegmentCtx<'_> {
    fn value(&self, path: &[String]) -> Option<Value> {
        let (first, rest) = path.split_first()?;
        if first != "profile" {
            return None;
        }
        self.profile?.field(rest)
    }

    fn happened(&self, event_type: &str, within: Option<Duration>) -> bool {
        match within {
            None => self.state.history.get(event_type).is_some_and(|h| h.ever),
            Some(w) => self.count(event_type, w) > 0,
        }
    }

    fn consent(&self, _channel: Channel, _purpose: Purpose) -> bool {
        false
    }

    fn count(&self, event_type: &str, within: Duration) -> u64 {
        let since = self.now.saturating_sub(ms(within));
        self.state
            .history
            .get(event_type)
            .map_or(0, |h| h.times.iter().filter(|&&at| at >= since && at <= self.now).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_795_600_800_000;

    fn segment(text: &str) -> Segment {
        Segment::parse(text, Path::new("seg.yaml")).unwrap()
    }

    fn subject() -> SubjectRef {
        SubjectRef::new("acme", "u-1")
    }

    #[test]
    fn a_window_that_empties_moves_a_subject_by_time_alone() {
        let segs = Segments::new(vec![segment(
            "id: inactive-14d\ncondition: happened(app_opened) and not happened(app_opened, 14d)\n",
        )]);
        let mut s = SubjectSegments::default();
        segs.record(&mut s, "app_opened", T0);
        assert!(segs.evaluate(&subject(), &mut s, None, T0).changes.is_empty(), "active: not a member");
        let due = segs.next_change(&s, T0).unwrap();
        assert_eq!(due, T0 + 14 * DAY + 1, "the open leaves the 14-day window then");
        assert!(segs.evaluate(&subject(), &mut s, None, due - 1).changes.is_empty());
        let changes = segs.evaluate(&subject(), &mut s, None, due).changes;
        assert_eq!(changes.len(), 1);
        assert!(changes[0].entered && changes[0].segment == "inactive-14d");
        assert!(segs.next_change(&s, due).is_none(), "nothing left to leave a window");
        // Back in the app: out of the segment.
        segs.record(&mut s, "app_opened", due + DAY);
        let changes = segs.evaluate(&subject(), &mut s, None, due + DAY).changes;
        assert!(!changes[0].entered);
    }

    #[test]
    fn counts_and_profile_attributes_combine() {
        let segs = Segments::new(vec![segment(
            "id: pro-buyers\nlabel: v1\ncondition: profile.plan == \"pro\" and count(order_completed, 30d) >= 2\n",
        )]);
        assert!(segs.list()[0].version.starts_with("v1-"));
        let mut profile = SubjectProfile::default();
        let mut s = SubjectSegments::default();
        segs.record(&mut s, "order_completed", T0);
        segs.record(&mut s, "order_completed", T0 + DAY);
        assert!(segs.evaluate(&subject(), &mut s, Some(&profile), T0 + DAY).changes.is_empty(), "no plan yet");
        let Value::Object(m) = serde_json::json!({"subject_id": "u-1", "tenant_id": "acme", "updated_at": T0, "attributes": {"plan": "pro"}})
        else {
            unreachable!()
        };
        let crate::profile::ProfileChange::Update(u) =
            crate::profile::parse_profile_record(&m, Some(b"acme/u-1"), "default").unwrap()
        else {
            unreachable!()
        };
        profile.apply(&u);
        let changes = segs.evaluate(&subject(), &mut s, Some(&profile), T0 + DAY).changes;
        assert_eq!(changes.len(), 1);
        // 30 days after the first order, one is left: the count drops below 2 and the subject leaves.
        let due = segs.next_change(&s, T0 + DAY).unwrap();
        assert_eq!(due, T0 + 30 * DAY + 1);
        let changes = segs.evaluate(&subject(), &mut s, Some(&profile), due).changes;
        assert!(!changes[0].entered);
        assert_eq!(s.history["order_completed"].times, vec![T0 + DAY], "the old order is forgotten");
    }

    #[test]
    fn history_is_bounded() {
        let segs = Segments::new(vec![segment("id: busy\ncondition: count(page_viewed, 1d) >= 1000\n")]);
        let mut s = SubjectSegments::default();
        for i in 0..1_000 {
            segs.record(&mut s, "page_viewed", T0 + i);
        }
        assert_eq!(s.history["page_viewed"].times.len(), MAX_TIMES_PER_TYPE);
        assert!(segs.evaluate(&subject(), &mut s, None, T0 + 1_000).changes.is_empty(), "count saturates at the bound");
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        let e = Segment::parse("id: x\ndescription: d\ncondition: count(order_completed) >= 1\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.yaml:3: in `count(order_completed) >= 1`"), "{e}");
        let e = Segment::parse("id: x\ncondition: event.attributes.plan == \"pro\"\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.yaml:2:") && e.contains("not one event"), "{e}");
        let e = Segment::parse("id: x\ncondition: in_segment(y)\n", Path::new("x.yaml")).unwrap_err().to_string();
        assert!(e.contains("not segments"), "{e}");
        let e = Segment::parse("id: x\ncondtion: true\n", Path::new("x.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:"), "{e}");
    }

    #[test]
    fn a_new_version_keeps_members_that_still_qualify() {
        let v1 = Segments::new(vec![segment("id: s\nlabel: v1\ncondition: count(order_completed, 30d) >= 1\n")]);
        let v2 = Segments::new(vec![segment("id: s\nlabel: v2\ncondition: count(order_completed, 60d) >= 1\n")]);
        let mut s = SubjectSegments::default();
        v1.record(&mut s, "order_completed", T0);
        assert_eq!(v1.evaluate(&subject(), &mut s, None, T0).changes.len(), 1);
        assert!(
            v2.evaluate(&subject(), &mut s, None, T0 + DAY).changes.is_empty(),
            "still a member: no exit, no entry"
        );
        assert!(s.members["s"].version.starts_with("v2-"));
    }

    #[test]
    fn a_reprocessed_event_counts_once_and_ids_follow_the_ordinal() {
        let segs = Segments::new(vec![segment("id: twice\ncondition: count(order_completed, 7d) >= 2\n")]);
        let mut s = SubjectSegments::default();
        assert!(segs.record(&mut s, "order_completed", T0));
        assert!(!segs.record(&mut s, "order_completed", T0), "the same time again: a replay");
        assert!(segs.evaluate(&subject(), &mut s, None, T0).changes.is_empty());
        segs.record(&mut s, "order_completed", T0 + DAY);
        let first = segs.evaluate(&subject(), &mut s, None, T0 + DAY).changes;
        assert_eq!((first[0].ordinal, first[0].entered), (1, true));
        let left = segs.evaluate(&subject(), &mut s, None, T0 + 8 * DAY).changes;
        assert_eq!((left[0].ordinal, left[0].entered, left[0].entered_at_ms), (1, false, T0 + DAY));
        segs.record(&mut s, "order_completed", T0 + 9 * DAY);
        segs.record(&mut s, "order_completed", T0 + 10 * DAY);
        let again = segs.evaluate(&subject(), &mut s, None, T0 + 10 * DAY).changes;
        assert_eq!(again[0].ordinal, 2, "the second membership");
        // The id depends on the ordinal, not on the instant it was evaluated at.
        let mut later = again[0].clone();
        later.at_ms += 60_000;
        assert_eq!(later.event_id(), again[0].event_id());
        assert_ne!(first[0].event_id(), again[0].event_id());
        let event = again[0].event(0);
        assert_eq!(event.event_type, SEGMENT_ENTERED);
        assert!(event.attributes_json.contains("\"segment\":\"twice\""), "{}", event.attributes_json);
    }

    #[test]
    fn membership_never_moves_back_in_time() {
        let segs = Segments::new(vec![segment("id: any\ncondition: happened(app_opened, 1d)\n")]);
        let mut s = SubjectSegments::default();
        segs.record(&mut s, "app_opened", T0 + DAY);
        assert_eq!(segs.evaluate(&subject(), &mut s, None, T0 + DAY).changes.len(), 1);
        // A late event evaluated at its own time would see the open in the future and exit the subject.
        segs.record(&mut s, "app_opened", T0);
        assert!(segs.evaluate(&subject(), &mut s, None, T0).changes.is_empty());
        assert_eq!(s.at_ms, T0 + DAY);
    }
}
