//! Quiet hours: local-time windows, per channel and category, in which sends are not made. A send
//! that falls in one is held until the window ends (then consent, recipient and caps are decided again
//! at that instant) or dropped, as the rule says.
//!
//! Windows are read on the subject's local wall clock (its profile's time zone): `21:00-08:00` is
//! quiet from 21:00 until 08:00 the next morning, whatever the offset does in between. The end of a
//! window is the first instant at or after which the local clock leaves it, so a window across a
//! daylight-saving night ends at 08:00 local on either side of the change (an hour more or less of
//! quiet), and an end that falls into a spring-forward gap ends at the first local time that exists.
//! A rule's `days` are the local days a window *starts* on (`[fri, sat]`: the nights after Friday and
//! Saturday).

use std::fmt;

use chrono::{Datelike, Duration as Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use touchpoint_schemas::Channel;

use crate::fast_hash::FastHashSet;

/// What to do with a send in a quiet window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuietAction {
    /// Keep it until the window ends, then decide again.
    #[default]
    Hold,
    /// Do not send it (a `suppressed_quiet_hours` decision).
    Drop,
}

impl QuietAction {
    pub fn as_str(self) -> &'static str {
        match self {
            QuietAction::Hold => "hold",
            QuietAction::Drop => "drop",
        }
    }
}

/// `quiet_hours.rules[]` of the pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietRule {
    pub id: String,
    /// The channel it quiets; absent: every channel.
    #[serde(default)]
    pub channel: Option<Channel>,
    /// The category it quiets; absent: every category not exempt.
    #[serde(default)]
    pub category: Option<String>,
    /// `HH:MM-HH:MM`, local time; crossing midnight when the end is not after the start.
    pub window: String,
    /// Local days a window starts on (`mon`..`sun`); absent: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    #[serde(default)]
    pub action: QuietAction,
    /// Apply to the exempt categories too (transactional messages are exempt unless a rule says so).
    #[serde(default)]
    pub include_exempt: bool,
}

/// `quiet_hours:` of the pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    /// The zone of subjects whose profile (and event) names none.
    #[serde(default = "utc")]
    pub default_time_zone: String,
    /// Categories no rule applies to unless it says `include_exempt`.
    #[serde(default = "transactional")]
    pub exempt_categories: Vec<String>,
    #[serde(default)]
    pub rules: Vec<QuietRule>,
}

fn utc() -> String {
    "UTC".into()
}

fn transactional() -> Vec<String> {
    vec!["transactional".into()]
}

impl Default for QuietHoursConfig {
    fn default() -> Self {
        QuietHoursConfig { default_time_zone: utc(), exempt_categories: transactional(), rules: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietHoursError {
    #[error("quiet_hours.default_time_zone: {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("quiet_hours.rules: rule id {0:?} is used twice")]
    DuplicateId(String),
    #[error("quiet_hours.rules.{id}: window {window:?} is not HH:MM-HH:MM (e.g. 21:00-08:00)")]
    Window { id: String, window: String },
    #[error("quiet_hours.rules.{id}: {day:?} is not a day (mon, tue, wed, thu, fri, sat, sun)")]
    Day { id: String, day: String },
    #[error("quiet_hours.rules.{0}: the window is empty (start and end are equal)")]
    Empty(String),
}

/// A rule, checked.
#[derive(Debug, Clone)]
struct Rule {
    id: String,
    channel: Option<Channel>,
    category: Option<String>,
    start: NaiveTime,
    end: NaiveTime,
    /// Bit per weekday (Monday = bit 0) a window may start on.
    days: u8,
    action: QuietAction,
    include_exempt: bool,
    /// As written, for reasons.
    window: String,
}

/// The quiet-hours rules of a pipeline, checked.
#[derive(Debug, Clone)]
pub struct QuietHours {
    rules: Vec<Rule>,
    default_tz: Tz,
    exempt: FastHashSet<String>,
}

/// A send that falls in a quiet window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiet {
    pub rule_id: String,
    pub action: QuietAction,
    /// The instant the window ends (UTC ms): when a held send is decided again.
    pub until_ms: i64,
    /// `21:00-08:00 Europe/Berlin`, for reasons.
    pub window: String,
}

impl fmt::Display for Quiet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let until = utc_text(self.until_ms);
        match self.action {
            QuietAction::Hold => write!(f, "quiet hours {} ({}): held until {until}", self.rule_id, self.window),
            QuietAction::Drop => write!(f, "quiet hours {} ({}): dropped", self.rule_id, self.window),
        }
    }
}

/// A release instant as reasons write it: RFC 3339, UTC, to the second.
pub fn utc_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").ok()
}

/// `mon` or `monday` (any case), ...
fn parse_day(s: &str) -> Option<Weekday> {
    s.trim().parse().ok()
}

/// The first instant at or after local `naive` that exists in `tz` (the earlier of two on a fall-back
/// night; the end of the gap on a spring-forward night).
fn first_instant(tz: Tz, naive: NaiveDateTime) -> Option<i64> {
    (0..=16).find_map(|quarter| {
        tz.from_local_datetime(&(naive + Days::minutes(15 * quarter))).earliest().map(|t| t.timestamp_millis())
    })
}

impl QuietHours {
    pub fn new(config: &QuietHoursConfig) -> Result<Self, QuietHoursError> {
        let default_tz: Tz = config
            .default_time_zone
            .parse()
            .map_err(|_| QuietHoursError::TimeZone(config.default_time_zone.clone()))?;
        let mut ids = std::collections::HashSet::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        for r in &config.rules {
            if !ids.insert(r.id.as_str()) {
                return Err(QuietHoursError::DuplicateId(r.id.clone()));
            }
            let bad_window = || QuietHoursError::Window { id: r.id.clone(), window: r.window.clone() };
            let (start, end) = r.window.split_once('-').ok_or_else(bad_window)?;
            let (start, end) = (parse_time(start).ok_or_else(bad_window)?, parse_time(end).ok_or_else(bad_window)?);
            if start == end {
                return Err(QuietHoursError::Empty(r.id.clone()));
            }
            let days = match &r.days {
                None => 0x7f,
                Some(days) => days.iter().try_fold(0u8, |bits, d| {
                    let day = parse_day(d).ok_or_else(|| QuietHoursError::Day { id: r.id.clone(), day: d.clone() })?;
                    Ok(bits | 1 << day.num_days_from_monday())
                })?,
            };
            rules.push(Rule {
                id: r.id.clone(),
                channel: r.channel,
                category: r.category.clone(),
                start,
                end,
                days,
                action: r.action,
                include_exempt: r.include_exempt,
                window: r.window.trim().to_string(),
            });
        }
        Ok(QuietHours { rules, default_tz, exempt: config.exempt_categories.iter().cloned().collect() })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The quiet window a send on `channel`/`category` at `at_ms` falls in, in the zone `time_zone`
    /// (else the default), if any: the first matching rule in file order.
    pub fn check(&self, channel: Channel, category: &str, at_ms: i64, time_zone: Option<&str>) -> Option<Quiet> {
        if self.rules.is_empty() {
            return None;
        }
        let tz: Tz = time_zone.and_then(|z| z.parse().ok()).unwrap_or(self.default_tz);
        let local = tz.timestamp_millis_opt(at_ms).single()?.naive_local();
        let exempt = self.exempt.contains(category);
        self.rules
            .iter()
            .filter(|r| r.channel.is_none_or(|c| c == channel))
            .filter(|r| r.category.as_deref().is_none_or(|c| c == category))
            .filter(|r| r.include_exempt || !exempt)
            .find_map(|r| {
                let end = r.window_end(local)?;
                // Past the local end already (an instant in a fall-back repeat after the end): not quiet.
                let until_ms = first_instant(tz, end)?;
                (until_ms > at_ms).then(|| Quiet {
                    rule_id: r.id.clone(),
                    action: r.action,
                    until_ms,
                    window: format!("{} {}", r.window, tz.name()),
                })
            })
    }
}

impl Rule {
    fn starts_on(&self, day: NaiveDate) -> bool {
        self.days & (1 << day.weekday().num_days_from_monday()) != 0
    }

    /// The local end of the window `local` lies in, if it lies in one.
    fn window_end(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let (date, time) = (local.date(), local.time());
        if self.start < self.end {
            // Same day: [start, end).
            (self.starts_on(date) && time >= self.start && time < self.end).then(|| date.and_time(self.end))
        } else if time >= self.start && self.starts_on(date) {
            // Across midnight, evening part: ends tomorrow.
            Some((date + Days::days(1)).and_time(self.end))
        } else if time < self.end && self.starts_on(date - Days::days(1)) {
            // Across midnight, morning part of the window that started yesterday.
            Some(date.and_time(self.end))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc_ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn rules(yaml: serde_json::Value) -> QuietHours {
        QuietHours::new(&serde_json::from_value(yaml).unwrap()).unwrap()
    }

    fn night() -> QuietHours {
        rules(serde_json::json!({"rules": [{"id": "night", "channel": "push", "window": "21:00-08:00"}]}))
    }

    #[test]
    fn a_night_window_holds_until_the_local_morning() {
        let q = night();
        let berlin = Some("Europe/Berlin");
        // 23:00 in Berlin (UTC+1 in November): held until 08:00 Berlin = 07:00 UTC.
        let quiet = q.check(Channel::Push, "promotional", utc_ms("2026-11-20T22:00:00Z"), berlin).unwrap();
        assert_eq!(quiet.until_ms, utc_ms("2026-11-21T07:00:00Z"));
        assert_eq!(quiet.to_string(), "quiet hours night (21:00-08:00 Europe/Berlin): held until 2026-11-21T07:00:00Z");
        // 06:00 Berlin, the morning part: same end.
        let quiet = q.check(Channel::Push, "promotional", utc_ms("2026-11-21T05:00:00Z"), berlin).unwrap();
        assert_eq!(quiet.until_ms, utc_ms("2026-11-21T07:00:00Z"));
        // 08:00 sharp and 20:59 are not quiet; email is not quieted by a push rule.
        assert!(q.check(Channel::Push, "promotional", utc_ms("2026-11-21T07:00:00Z"), berlin).is_none());
        assert!(q.check(Channel::Push, "promotional", utc_ms("2026-11-21T19:59:00Z"), berlin).is_none());
        assert!(q.check(Channel::Email, "promotional", utc_ms("2026-11-20T22:00:00Z"), berlin).is_none());
        // Transactional is exempt unless the rule says so.
        assert!(q.check(Channel::Push, "transactional", utc_ms("2026-11-20T22:00:00Z"), berlin).is_none());
    }

    #[test]
    fn the_subjects_zone_decides_and_the_default_applies_without_one() {
        let q = night();
        let at = utc_ms("2026-11-20T22:00:00Z");
        let tokyo = q.check(Channel::Push, "p", at, Some("Asia/Tokyo")).unwrap();
        assert_eq!(tokyo.until_ms, utc_ms("2026-11-20T23:00:00Z"), "07:00 in Tokyo: until 08:00 there");
        assert!(q.check(Channel::Push, "p", at, Some("America/New_York")).is_none(), "17:00 in New York");
        let utc = q.check(Channel::Push, "p", at, None).unwrap();
        assert_eq!(utc.until_ms, utc_ms("2026-11-21T08:00:00Z"), "no zone: the default, UTC");
        assert_eq!(q.check(Channel::Push, "p", at, Some("Not/AZone")).unwrap(), utc, "an unknown zone: the default");
    }

    #[test]
    fn spring_forward_night_ends_at_eight_local() {
        // Europe/Berlin, 2026-03-29: 02:00 → 03:00. 23:00 the night before (UTC+1) → 08:00 (UTC+2).
        let q = night();
        let quiet = q.check(Channel::Push, "p", utc_ms("2026-03-28T22:00:00Z"), Some("Europe/Berlin")).unwrap();
        assert_eq!(quiet.until_ms, utc_ms("2026-03-29T06:00:00Z"), "08:00 CEST: 8 h of quiet, not 9");
    }

    #[test]
    fn fall_back_night_ends_at_eight_local() {
        // Europe/Berlin, 2026-10-25: 03:00 → 02:00. 23:00 the night before (UTC+2) → 08:00 (UTC+1).
        let q = night();
        let quiet = q.check(Channel::Push, "p", utc_ms("2026-10-24T21:00:00Z"), Some("Europe/Berlin")).unwrap();
        assert_eq!(quiet.until_ms, utc_ms("2026-10-25T07:00:00Z"), "08:00 CET: 10 h of quiet");
    }

    #[test]
    fn an_end_inside_the_spring_forward_gap_is_the_first_time_that_exists() {
        let q = rules(serde_json::json!({"rules": [{"id": "late", "window": "22:00-02:30"}]}));
        let quiet = q.check(Channel::Sms, "p", utc_ms("2026-03-28T22:00:00Z"), Some("Europe/Berlin")).unwrap();
        assert_eq!(quiet.until_ms, utc_ms("2026-03-29T01:00:00Z"), "02:30 does not exist: 03:00 CEST");
    }

    #[test]
    fn days_are_the_nights_a_window_starts_on() {
        let q = rules(serde_json::json!({"rules": [
            {"id": "weeknights", "window": "21:00-08:00", "days": ["mon", "tue", "wed", "thu", "sun"]},
            {"id": "weekend", "window": "23:00-10:00", "days": ["fri", "sat"], "action": "drop"}
        ]}));
        // Friday 22:00 UTC: not in the weekend window yet (23:00), not a weeknight.
        assert!(q.check(Channel::Email, "p", utc_ms("2026-11-20T22:00:00Z"), None).is_none());
        // Saturday 09:00 UTC: the morning of Friday's window, dropped.
        let quiet = q.check(Channel::Email, "p", utc_ms("2026-11-21T09:00:00Z"), None).unwrap();
        assert_eq!((quiet.rule_id.as_str(), quiet.action), ("weekend", QuietAction::Drop));
        // Monday 07:00 UTC: the morning of Sunday's weeknight window.
        let quiet = q.check(Channel::Email, "p", utc_ms("2026-11-23T07:00:00Z"), None).unwrap();
        assert_eq!(quiet.rule_id, "weeknights");
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule_named() {
        let bad = |rule: serde_json::Value| {
            QuietHours::new(&serde_json::from_value(serde_json::json!({"rules": [rule]})).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(serde_json::json!({"id": "x", "window": "9pm-8am"})).contains("quiet_hours.rules.x: window"));
        assert!(bad(serde_json::json!({"id": "x", "window": "21:00-21:00"})).contains("empty"));
        assert!(bad(serde_json::json!({"id": "x", "window": "21:00-08:00", "days": ["fryday"]})).contains("\"fryday\""));
    }
}
