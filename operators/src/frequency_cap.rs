//! Frequency caps: per subject, channel and category, over rolling and calendar windows.
//!
//! - A rule caps sends matching its scope (a channel or all, optionally a category and a tag) to
//!   `limit` per window. Windows are rolling durations (`1h`, `7d`) or calendar units (day, week) in the
//!   subject's time zone (IANA), so "2 per day" means per local day, DST included.
//! - Exempt categories (e.g. transactional) are neither counted nor capped.
//! - Only sends that were allowed are counted, at the decision's event time.
//! - Memory per subject is bounded: rolling windows keep the counted sends' own times (no window holds
//!   more than `limit` of them, so about twice the limit per rule survive expiry), calendar windows one
//!   counter per period, and both drop what lies beyond twice the window before the time
//!   [`FrequencyCaps::expire`] is given (the pipeline passes the watermark).
//!
//! Exact, and safe under out-of-order event times: a send at `t` lies in every window `[a, a + w)` with
//! `t - w < a <= t`. It is allowed when each of those windows holds fewer than `limit` counted sends, so
//! after it no window of length `w` holds more than `limit`, whatever the order. For in-order streams
//! that is the count in `(t - w, t]`: a weekly message sent exactly a week after the last one is allowed.
//! (Until 2026-12 rolling windows were 60 buckets, and a bucket straddling the edge suppressed up to
//! 1/60 of the window early: "1 per rolling 7d" capped every other week of a weekly send. State written
//! then is read as bucket-end times, which can only suppress, never over-send.)

use std::collections::HashSet;
use std::time::Duration;

use chrono::{Datelike, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::fast_hash::FastHashSet;
use touchpoint_schemas::Channel;

/// Buckets per rolling window in state written before windows were exact (read by [`FrequencyCaps::upgrade`]).
pub const ROLLING_BUCKETS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalendarUnit {
    Day,
    Week,
}

/// Written `rolling <duration>` (e.g. `rolling 1h`, `rolling 7d`) or `calendar day|week` in pipeline files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CapWindow {
    Rolling(Duration),
    Calendar(CalendarUnit),
}

/// A cap window that is neither `rolling <duration>` nor `calendar day|week`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {text:?}: expected `rolling <duration>` (e.g. rolling 1h) or `calendar day|week`{}",
    .duration.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct CapWindowError {
    text: String,
    /// Why the duration of a `rolling` window did not parse.
    duration: Option<String>,
}

impl TryFrom<String> for CapWindow {
    type Error = CapWindowError;

    fn try_from(text: String) -> Result<Self, CapWindowError> {
        let bad = |duration: Option<String>| CapWindowError { text: text.clone(), duration };
        let (kind, arg) = text.trim().split_once(char::is_whitespace).ok_or_else(|| bad(None))?;
        match (kind, arg.trim()) {
            ("rolling", d) => {
                humantime::parse_duration(d).map(CapWindow::Rolling).map_err(|e| bad(Some(e.to_string())))
            }
            ("calendar", "day") => Ok(CapWindow::Calendar(CalendarUnit::Day)),
            ("calendar", "week") => Ok(CapWindow::Calendar(CalendarUnit::Week)),
            _ => Err(bad(None)),
        }
    }
}

/// A `caps` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("caps.default_time_zone: {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("caps.rules: rule id {0:?} is used twice")]
    DuplicateId(String),
    #[error("caps.rules.{0}: limit must be at least 1 (exempt the category instead)")]
    ZeroLimit(String),
    #[error("caps.rules.{0}: a rolling window must be at least 1s")]
    WindowTooShort(String),
    #[error("caps: cannot compute the rule set's version: {0}")]
    Version(#[from] serde_json::Error),
}

impl From<CapWindow> for String {
    fn from(w: CapWindow) -> String {
        w.describe()
    }
}

impl CapWindow {
    pub fn describe(&self) -> String {
        match self {
            CapWindow::Rolling(d) => format!("rolling {}", humantime::format_duration(*d)),
            CapWindow::Calendar(CalendarUnit::Day) => "calendar day".into(),
            CapWindow::Calendar(CalendarUnit::Week) => "calendar week".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapRule {
    pub id: String,
    /// The channel capped; absent: all channels together.
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    pub limit: u32,
    pub window: CapWindow,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsConfig {
    /// Time zone of subjects whose events name none.
    #[serde(default = "utc")]
    pub default_time_zone: String,
    /// Categories that are neither counted nor capped.
    #[serde(default)]
    pub exempt_categories: Vec<String>,
    #[serde(default)]
    pub rules: Vec<CapRule>,
}

fn utc() -> String {
    "UTC".into()
}

impl Default for CapsConfig {
    fn default() -> Self {
        CapsConfig { default_time_zone: utc(), exempt_categories: vec!["transactional".into()], rules: vec![] }
    }
}

/// What is being decided.
#[derive(Debug, Clone, Copy)]
pub struct CapQuery<'a> {
    pub channel: Channel,
    pub category: &'a str,
    pub tags: &'a [String],
    /// Event time of the decision, UTC ms.
    pub at_ms: i64,
    /// The subject's IANA time zone, if known.
    pub time_zone: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CapVerdict {
    /// The category is exempt: not counted, not capped.
    Exempt,
    Allowed,
    Capped {
        rule_id: String,
        count: u32,
        limit: u32,
        window: String,
    },
}

/// Per-subject counters: per rule (keyed by a hash of rule id and window, so that counters survive
/// edits of other rules and a rule whose window changes starts afresh), slot → sends. Small sorted
/// vectors rather than maps: a subject holds a handful of slots, and this is kept for millions of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectCaps {
    /// Per rule: slot → sends. A rolling rule's slot is the send's event time (ms); a calendar rule's the
    /// local period.
    counters: Vec<(u64, Vec<(i64, u32)>)>,
    /// Hashes of the idempotency keys of counted sends still inside some window, with their event
    /// time. A decision made again after a restart (its input re-read past the last committed offset)
    /// finds its key here and is not counted twice.
    #[serde(default)]
    sent: Vec<(u64, i64)>,
    /// Rolling slots are event times. `false` in state written before (bucket numbers): converted on
    /// first use ([`FrequencyCaps::upgrade`]).
    #[serde(default, skip_serializing_if = "is_false")]
    exact: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for SubjectCaps {
    fn default() -> Self {
        SubjectCaps { counters: Vec::new(), sent: Vec::new(), exact: true }
    }
}

fn key_hash(idempotency_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(idempotency_key.as_bytes())
}

impl SubjectCaps {
    pub fn is_empty(&self) -> bool {
        self.counters.iter().all(|(_, c)| c.is_empty()) && self.sent.is_empty()
    }

    /// Was the send with this idempotency key already counted?
    pub fn already_counted(&self, idempotency_key: &str) -> bool {
        let h = key_hash(idempotency_key);
        self.sent.iter().any(|(k, _)| *k == h)
    }

    /// Number of counters held (for memory accounting).
    pub fn counter_count(&self) -> usize {
        self.counters.iter().map(|(_, c)| c.len()).sum()
    }

    fn slots(&self, rule: u64) -> Option<&Vec<(i64, u32)>> {
        self.counters.iter().find(|(k, _)| *k == rule).map(|(_, c)| c)
    }

    fn add(&mut self, rule: u64, slot: i64) {
        let slots = match self.counters.iter().position(|(k, _)| *k == rule) {
            Some(i) => &mut self.counters[i].1,
            None => {
                self.counters.push((rule, Vec::with_capacity(1)));
                let last = self.counters.len() - 1;
                &mut self.counters[last].1
            }
        };
        match slots.binary_search_by_key(&slot, |(s, _)| *s) {
            Ok(i) => slots[i].1 += 1,
            Err(i) => slots.insert(i, (slot, 1)),
        }
    }
}

/// The compiled rule set.
#[derive(Debug, Clone)]
pub struct FrequencyCaps {
    rules: Vec<CapRule>,
    /// Per rule: the key of its counters in [`SubjectCaps`].
    state_keys: Vec<u64>,
    default_tz: Tz,
    exempt: FastHashSet<String>,
    version: String,
}

impl FrequencyCaps {
    pub fn new(config: &CapsConfig) -> Result<Self, CapsError> {
        let default_tz: Tz =
            config.default_time_zone.parse().map_err(|_| CapsError::TimeZone(config.default_time_zone.clone()))?;
        let mut ids = HashSet::new();
        for r in &config.rules {
            if !ids.insert(r.id.as_str()) {
                return Err(CapsError::DuplicateId(r.id.clone()));
            }
            if r.limit == 0 {
                return Err(CapsError::ZeroLimit(r.id.clone()));
            }
            if let CapWindow::Rolling(d) = r.window {
                if d < Duration::from_secs(1) {
                    return Err(CapsError::WindowTooShort(r.id.clone()));
                }
            }
        }
        let version = crate::version::config_version("caps", config)?;
        Ok(FrequencyCaps {
            rules: config.rules.clone(),
            state_keys: config.rules.iter().map(|r| key_hash(&format!("{}@{}", r.id, r.window.describe()))).collect(),
            default_tz,
            exempt: config.exempt_categories.iter().cloned().collect(),
            version,
        })
    }

    /// Content hash of the rule set: recorded with every decision.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn rules(&self) -> &[CapRule] {
        &self.rules
    }

    /// Decides and, when allowed, counts the send.
    pub fn decide(&self, state: &mut SubjectCaps, q: &CapQuery<'_>) -> CapVerdict {
        self.upgrade(state);
        let verdict = self.check(state, q);
        if verdict == CapVerdict::Allowed {
            self.record(state, q);
        }
        verdict
    }

    /// Like [`Self::decide`], and remembers the send's idempotency key (see [`SubjectCaps::already_counted`]).
    pub fn decide_keyed(&self, state: &mut SubjectCaps, q: &CapQuery<'_>, idempotency_key: &str) -> CapVerdict {
        let verdict = self.decide(state, q);
        if verdict == CapVerdict::Allowed && !self.rules.is_empty() {
            state.sent.push((key_hash(idempotency_key), q.at_ms));
        }
        verdict
    }

    /// The verdict without counting.
    pub fn check(&self, state: &SubjectCaps, q: &CapQuery<'_>) -> CapVerdict {
        if self.exempt.contains(q.category) {
            return CapVerdict::Exempt;
        }
        let tz = self.time_zone(q.time_zone);
        for (i, rule) in self.rules.iter().enumerate() {
            if !applies(rule, q) {
                continue;
            }
            let count: u32 = match (state.slots(self.state_keys[i]), &rule.window) {
                (None, _) => 0,
                (Some(c), CapWindow::Rolling(w)) => busiest_window(c, q.at_ms, window_ms(*w)),
                (Some(c), CapWindow::Calendar(unit)) => {
                    let p = local_period(*unit, q.at_ms, tz);
                    c.iter().filter(|(s, _)| *s == p).map(|(_, n)| *n).sum()
                }
            };
            if count >= rule.limit {
                return CapVerdict::Capped {
                    rule_id: rule.id.clone(),
                    count,
                    limit: rule.limit,
                    window: rule.window.describe(),
                };
            }
        }
        CapVerdict::Allowed
    }

    fn record(&self, state: &mut SubjectCaps, q: &CapQuery<'_>) {
        let tz = self.time_zone(q.time_zone);
        for (rule, key) in self.rules.iter().zip(&self.state_keys) {
            if applies(rule, q) {
                state.add(*key, slot(&rule.window, q.at_ms, tz));
            }
        }
    }

    /// Drops counters that no window reaching `now_ms` or later can see. Returns true when the subject
    /// holds nothing any more (its state can be removed).
    pub fn expire(&self, state: &mut SubjectCaps, now_ms: i64) -> bool {
        self.upgrade(state);
        // Counters of rules that no longer exist are dropped.
        state.counters.retain(|(k, _)| self.state_keys.contains(k));
        for (rule, key) in self.rules.iter().zip(&self.state_keys) {
            let Some((_, counters)) = state.counters.iter_mut().find(|(k, _)| k == key) else { continue };
            let keep_from = match rule.window {
                CapWindow::Rolling(w) => now_ms.saturating_sub(2 * window_ms(w)),
                // Periods are local days or week-start days: keep two weeks back of day numbers.
                CapWindow::Calendar(_) => now_ms.saturating_sub(15 * 86_400_000).div_euclid(86_400_000),
            };
            counters.retain(|(slot, _)| *slot >= keep_from);
        }
        state.counters.retain(|(_, c)| !c.is_empty());
        let keep_sent_from = now_ms.saturating_sub(self.longest_reach_ms());
        state.sent.retain(|(_, at)| *at >= keep_sent_from);
        state.is_empty()
    }

    /// How far back counters are kept: twice the longest rolling window, 15 days for calendar units.
    fn longest_reach_ms(&self) -> i64 {
        self.rules
            .iter()
            .map(|r| match r.window {
                CapWindow::Rolling(w) => 2 * window_ms(w),
                CapWindow::Calendar(_) => 15 * 86_400_000,
            })
            .max()
            .unwrap_or(0)
    }

    /// State written with bucketed rolling counters: each bucket's sends moved to the bucket's last
    /// millisecond, the latest they can have happened, so a window counts them at least as long as
    /// before (nothing is allowed that the buckets capped).
    pub fn upgrade(&self, state: &mut SubjectCaps) {
        if state.exact {
            return;
        }
        for (rule, key) in self.rules.iter().zip(&self.state_keys) {
            let CapWindow::Rolling(w) = rule.window else { continue };
            let bucket = legacy_bucket_ms(w);
            if let Some((_, slots)) = state.counters.iter_mut().find(|(k, _)| k == key) {
                for (slot, _) in slots.iter_mut() {
                    *slot = slot.saturating_add(1).saturating_mul(bucket).saturating_sub(1);
                }
            }
        }
        state.exact = true;
    }

    fn time_zone(&self, name: Option<&str>) -> Tz {
        name.and_then(|n| n.parse().ok()).unwrap_or(self.default_tz)
    }
}

fn applies(rule: &CapRule, q: &CapQuery<'_>) -> bool {
    rule.channel.is_none_or(|c| c == q.channel)
        && rule.category.as_deref().is_none_or(|c| c == q.category)
        && rule.tag.as_ref().is_none_or(|t| q.tags.contains(t))
}

/// Window length, ms.
fn window_ms(w: Duration) -> i64 {
    i64::try_from(w.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The bucket width of state written before rolling windows were exact (60 buckets per window).
fn legacy_bucket_ms(w: Duration) -> i64 {
    (window_ms(w) / ROLLING_BUCKETS).max(1000)
}

/// The counter slot a send at `at_ms` goes to: its time for a rolling window, its local period for a
/// calendar one.
fn slot(window: &CapWindow, at_ms: i64, tz: Tz) -> i64 {
    match window {
        CapWindow::Rolling(_) => at_ms,
        CapWindow::Calendar(unit) => local_period(*unit, at_ms, tz),
    }
}

/// The most counted sends any window `[a, a + w)` holding `t` contains (`t - w < a <= t`); `times` is
/// sorted, each with its count. A send at `t` is allowed while this stays below the limit.
fn busiest_window(times: &[(i64, u32)], t: i64, w: i64) -> u32 {
    let lo = t.saturating_sub(w).saturating_add(1);
    let hi = t.saturating_add(w).saturating_sub(1);
    // Sorted: the sends that share a window with `t` are one slice, no copy per decision.
    let near = &times[times.partition_point(|(s, _)| *s < lo)..times.partition_point(|(s, _)| *s <= hi)];
    // Moving the start right, a window gains a send `s` when its end passes it (at `a = s - w + 1`) and
    // loses sends at its start: the busiest windows start at `lo` or where one gains a send.
    let starts = std::iter::once(lo).chain(near.iter().map(|(s, _)| s - w + 1).filter(|a| *a > lo && *a <= t));
    starts
        .map(|a| near.iter().filter(|(s, _)| *s >= a && *s < a.saturating_add(w)).map(|(_, n)| *n).sum::<u32>())
        .max()
        .unwrap_or(0)
}

/// The local calendar period of an instant: the local date (as days since 1970-01-01), or for weeks the
/// date of the ISO week's Monday.
fn local_period(unit: CalendarUnit, at_ms: i64, tz: Tz) -> i64 {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(at_ms) else { return 0 };
    let local = tz.from_utc_datetime(&utc.naive_utc()).date_naive();
    let date = match unit {
        CalendarUnit::Day => local,
        CalendarUnit::Week => local - chrono::Days::new(u64::from(local.weekday().num_days_from_monday())),
    };
    i64::from(date.num_days_from_ce()) - 719_163 // 1970-01-01 is day 719163 of the common era
}

#[cfg(test)]
mod tests;
