//! Event time: per-partition watermarks, combined as the minimum across partitions, with idle-partition
//! detection, and the late-event verdict.
//!
//! Two halves, because the partitions of the source topic are read by different workers while every
//! worker judges events (after the exchange by event id):
//!
//! - [`PartitionClocks`] lives with the worker that reads a partition. It keeps the partition's largest
//!   event time so far and decides whether the partition is *idle*: no event for `idle_timeout` (processing
//!   time) **and** read up to the broker's end. The second condition matters: a partition whose reader is
//!   held back (backpressure, a slow worker) has data waiting and must keep holding time back.
//! - [`Watermark`] is replicated on every worker. It receives every partition's [`PartitionReport`] and
//!   computes `min over non-idle partitions of (max event time − allowed lateness)`. Because idleness is
//!   decided by the owner and reports are applied epoch by epoch, all replicas hold the same watermark
//!   for the same epoch.
//!
//! The watermark never moves back: a partition that wakes up with old events does not pull time back, its
//! events are late. While every partition is idle, event time goes on at wall-clock speed from where the
//! data left it (so journey waits fire in a quiet stream); see [`Watermark::advance`].
//! See `docs/guardrails.md` ("Event time").

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `event_time:` section of the pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// How far behind the newest event of its partition an event may be and still be on time.
    #[serde(default = "default_allowed_lateness", with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A partition with no event for this long (processing time) that has been read to its end stops
    /// holding the watermark back until it has events again.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// What happens to an event older than the watermark.
    #[serde(default)]
    pub late_events: LatePolicy,
    /// How far ahead of the processing clock an event may move its partition's clock. Normalization
    /// accepts events up to `max_future_skew` (24 h) ahead; without this bound one such event per
    /// partition moved the watermark a day ahead (journey waits fired early, rolling caps expired, real
    /// traffic turned late). Such events are processed; they just do not move time further than this.
    #[serde(default = "default_max_clock_lead", with = "humantime_serde")]
    pub max_clock_lead: Duration,
}

fn default_max_clock_lead() -> Duration {
    Duration::from_secs(300)
}

fn default_allowed_lateness() -> Duration {
    Duration::from_secs(3600)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        EventTimeConfig {
            allowed_lateness: default_allowed_lateness(),
            idle_timeout: default_idle_timeout(),
            late_events: LatePolicy::default(),
            max_clock_lead: default_max_clock_lead(),
        }
    }
}

/// The late-event policy. Either way a late event is counted; it is never dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Process it like any other event, marked `late` (in the events table and on its decisions).
    #[default]
    Flag,
    /// Route it to the late-events topic instead: not stored in `events`, no decisions.
    Route,
}

impl LatePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            LatePolicy::Flag => "flag",
            LatePolicy::Route => "route",
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the reader of a partition says about it at the end of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub partition: i32,
    /// Largest event time seen on the partition so far (UTC ms), `None` before its first event.
    pub max_event_ms: Option<i64>,
    /// No event for `idle_timeout` and read to the end: does not hold the watermark back.
    pub idle: bool,
    /// Processing time since the partition's last event (or the start), as of the report, in ms.
    #[serde(default)]
    pub quiet_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct ReadClock {
    max_event_ms: Option<i64>,
    /// Processing time (ms) of the last event, or of the start.
    last_event_at_ms: i64,
}

/// The reader-side clocks of the partitions one worker reads.
#[derive(Debug, Clone)]
pub struct PartitionClocks {
    idle_timeout_ms: i64,
    /// An event moves its partition's clock at most this far past the processing time it is read at.
    max_lead_ms: i64,
    clocks: BTreeMap<i32, ReadClock>,
}

impl PartitionClocks {
    /// Clocks for `partitions`, started at processing time `now_ms` (a partition cannot be idle before
    /// `idle_timeout` has passed since the start).
    pub fn new(partitions: &[i32], idle_timeout: Duration, now_ms: i64) -> Self {
        let clocks =
            partitions.iter().map(|&p| (p, ReadClock { max_event_ms: None, last_event_at_ms: now_ms })).collect();
        PartitionClocks { idle_timeout_ms: duration_ms(idle_timeout), max_lead_ms: i64::MAX, clocks }
    }

    /// Events move their partition's clock at most `lead` past the processing time they are read at
    /// (unbounded by default: replays and tests pass their own clock).
    pub fn with_max_lead(mut self, lead: Duration) -> Self {
        self.max_lead_ms = duration_ms(lead);
        self
    }

    /// An event of `partition` with event time `event_ms`, read at processing time `now_ms`. A producer
    /// cannot push the clock further than `max_lead` past `now_ms`, whatever time it writes.
    pub fn observe(&mut self, partition: i32, event_ms: i64, now_ms: i64) {
        let event_ms = event_ms.min(now_ms.saturating_add(self.max_lead_ms));
        let clock = self.clocks.entry(partition).or_insert(ReadClock { max_event_ms: None, last_event_at_ms: now_ms });
        clock.max_event_ms = Some(clock.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
        clock.last_event_at_ms = clock.last_event_at_ms.max(now_ms);
    }

    /// One report per partition. `read_to_end(p)` is only asked for partitions quiet for `idle_timeout`
    /// (it may cost a broker round trip).
    pub fn reports(&self, now_ms: i64, mut read_to_end: impl FnMut(i32) -> bool) -> Vec<PartitionReport> {
        self.clocks
            .iter()
            .map(|(&partition, clock)| {
                let quiet_ms = now_ms.saturating_sub(clock.last_event_at_ms).max(0);
                let idle = quiet_ms >= self.idle_timeout_ms && read_to_end(partition);
                PartitionReport { partition, max_event_ms: clock.max_event_ms, idle, quiet_ms }
            })
            .collect()
    }
}

/// Whether an event is on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timeliness {
    OnTime,
    /// Older than the watermark: by how much, and the watermark it was judged against.
    Late {
        watermark_ms: i64,
        behind_ms: i64,
    },
}

impl Timeliness {
    pub fn is_late(self) -> bool {
        matches!(self, Timeliness::Late { .. })
    }
}

/// The combined watermark, as every worker holds it.
#[derive(Debug, Clone)]
pub struct Watermark {
    allowed_lateness_ms: i64,
    partitions: BTreeMap<i32, PartitionReport>,
    current: Option<i64>,
}

impl Watermark {
    pub fn new(allowed_lateness: Duration) -> Self {
        Watermark { allowed_lateness_ms: duration_ms(allowed_lateness), partitions: BTreeMap::new(), current: None }
    }

    /// Takes a partition's report (the newest report of a partition replaces the older one; a partition's
    /// largest event time never shrinks).
    pub fn apply(&mut self, report: PartitionReport) {
        let entry = self.partitions.entry(report.partition).or_insert(report);
        let max_event_ms = entry.max_event_ms.max(report.max_event_ms);
        *entry = PartitionReport { max_event_ms, ..report };
    }

    /// Recomputes the combined watermark from the reports applied so far and returns it.
    ///
    /// `min` over the non-idle partitions of `max event time − allowed lateness`; a non-idle partition
    /// without any event yet holds it where it is (its first event may be arbitrarily old). It never
    /// moves back.
    ///
    /// With every partition idle, every partition has been read to its end and nothing is pending, so
    /// no partition needs holding back: event time is the newest event read, and goes on at the speed of
    /// the wall clock from there: `max` over the partitions with events of `max event time + quiet time
    /// − allowed lateness`. So timers fire in a quiet stream (a live stream's watermark trails the wall
    /// clock by the allowed lateness), while a replay of old data never jumps to today. The quiet times
    /// come from the reports, so every replica computes the same value.
    pub fn advance(&mut self) -> Option<i64> {
        let mut candidate: Option<i64> = None;
        let mut any_active = false;
        for report in self.partitions.values().filter(|r| !r.idle) {
            any_active = true;
            let Some(max_event_ms) = report.max_event_ms else { return self.current };
            let mark = max_event_ms.saturating_sub(self.allowed_lateness_ms);
            candidate = Some(candidate.map_or(mark, |c| c.min(mark)));
        }
        if !any_active {
            candidate = self
                .partitions
                .values()
                .filter_map(|r| r.max_event_ms.map(|m| m.saturating_add(r.quiet_ms)))
                .max()
                .map(|m| m.saturating_sub(self.allowed_lateness_ms));
        }
        self.current = self.current.max(candidate);
        self.current
    }

    /// The watermark (UTC ms), `None` until every active partition has shown an event.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// An event is late when its event time is before the watermark.
    pub fn judge(&self, event_ms: i64) -> Timeliness {
        match self.current {
            Some(watermark_ms) if event_ms < watermark_ms => {
                Timeliness::Late { watermark_ms, behind_ms: watermark_ms - event_ms }
            }
            _ => Timeliness::OnTime,
        }
    }

    /// Partitions reported so far, and how many of them are idle.
    pub fn partitions(&self) -> (usize, usize) {
        (self.partitions.len(), self.partitions.values().filter(|r| r.idle).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn report(partition: i32, max_event_ms: Option<i64>, idle: bool) -> PartitionReport {
        PartitionReport { partition, max_event_ms, idle, quiet_ms: 0 }
    }

    fn watermark(lateness_ms: u64) -> Watermark {
        Watermark::new(Duration::from_millis(lateness_ms))
    }

    #[test]
    fn the_watermark_is_the_slowest_partition_minus_the_allowed_lateness() {
        let mut w = watermark(5 * MIN as u64);
        w.apply(report(0, Some(10 * HOUR), false));
        w.apply(report(1, Some(12 * HOUR), false));
        assert_eq!(w.advance(), Some(10 * HOUR - 5 * MIN));
        assert_eq!(
            w.judge(10 * HOUR - 6 * MIN),
            Timeliness::Late { watermark_ms: 10 * HOUR - 5 * MIN, behind_ms: MIN }
        );
        assert_eq!(w.judge(10 * HOUR - 5 * MIN), Timeliness::OnTime, "exactly at the watermark is on time");
        assert_eq!(w.judge(11 * HOUR), Timeliness::OnTime);
    }

    #[test]
    fn a_partition_without_events_holds_time_until_it_is_idle() {
        let mut w = watermark(0);
        w.apply(report(0, Some(10 * HOUR), false));
        w.apply(report(1, None, false));
        assert_eq!(w.advance(), None, "partition 1 may still bring old events");
        assert_eq!(w.judge(0), Timeliness::OnTime, "no watermark: nothing is late");
        w.apply(report(1, None, true));
        assert_eq!(w.advance(), Some(10 * HOUR), "an idle partition does not stall time");
    }

    #[test]
    fn an_idle_partition_does_not_stall_time_and_its_old_events_are_late_when_it_wakes() {
        let mut w = watermark(0);
        w.apply(report(0, Some(10 * HOUR), false));
        w.apply(report(1, Some(2 * HOUR), true));
        assert_eq!(w.advance(), Some(10 * HOUR));
        // Partition 1 wakes up with an event at 3h: the watermark does not move back.
        w.apply(report(1, Some(3 * HOUR), false));
        assert_eq!(w.advance(), Some(10 * HOUR));
        assert!(w.judge(3 * HOUR).is_late());
    }

    #[test]
    fn with_every_partition_idle_event_time_goes_on_at_wall_speed_from_the_data() {
        let mut w = watermark(5 * MIN as u64);
        w.apply(report(0, Some(10 * HOUR), false));
        w.apply(report(1, Some(8 * HOUR), false));
        assert_eq!(w.advance(), Some(8 * HOUR - 5 * MIN));
        // Both quiet: partition 0 for 30 s, partition 1 for 2 h of wall time.
        w.apply(PartitionReport { partition: 0, max_event_ms: Some(10 * HOUR), idle: true, quiet_ms: 30_000 });
        w.apply(PartitionReport { partition: 1, max_event_ms: Some(8 * HOUR), idle: true, quiet_ms: 2 * HOUR });
        assert_eq!(w.advance(), Some(10 * HOUR + 30_000 - 5 * MIN), "the newer of 10h+30s and 8h+2h, minus lateness");
        // More quiet time: it goes on.
        w.apply(PartitionReport { partition: 0, max_event_ms: Some(10 * HOUR), idle: true, quiet_ms: 60_000 });
        assert_eq!(w.advance(), Some(10 * HOUR + 60_000 - 5 * MIN));
        // Nothing read at all: no time to go on from.
        let mut empty = watermark(0);
        empty.apply(PartitionReport { partition: 0, max_event_ms: None, idle: true, quiet_ms: 10 * HOUR });
        assert_eq!(empty.advance(), None);
    }

    #[test]
    fn a_partition_max_never_shrinks_and_the_watermark_never_moves_back() {
        let mut w = watermark(0);
        w.apply(report(0, Some(10 * HOUR), false));
        assert_eq!(w.advance(), Some(10 * HOUR));
        // A stale report (reordered) cannot lower the partition's maximum.
        w.apply(report(0, Some(9 * HOUR), false));
        assert_eq!(w.advance(), Some(10 * HOUR));
        // A new, slower partition appears: the minimum would drop, the watermark stays.
        w.apply(report(1, Some(HOUR), false));
        assert_eq!(w.advance(), Some(10 * HOUR));
    }

    #[test]
    fn reader_clocks_report_idle_only_when_quiet_and_read_to_the_end() {
        let timeout = Duration::from_secs(30);
        let mut clocks = PartitionClocks::new(&[0, 1, 2], timeout, 0);
        clocks.observe(0, 5 * HOUR, 1_000);
        let mut asked = Vec::new();
        let early = clocks.reports(10_000, |p| {
            asked.push(p);
            true
        });
        assert!(early.iter().all(|r| !r.idle), "nothing is idle before idle_timeout");
        assert!(asked.is_empty(), "the end of a partition is only asked for when it is quiet");

        clocks.observe(0, 4 * HOUR, 40_000);
        let later = clocks.reports(40_000, |p| p != 2);
        assert_eq!(
            (later[0].max_event_ms, later[0].idle),
            (Some(5 * HOUR), false),
            "keeps the largest event time; not quiet"
        );
        assert_eq!(later[0].quiet_ms, 0);
        assert_eq!(
            later[1],
            PartitionReport { partition: 1, max_event_ms: None, idle: true, quiet_ms: 40_000 },
            "quiet and read to its end"
        );
        assert!(!later[2].idle, "quiet but with records waiting: holds time back");
    }

    #[test]
    fn policies_read_from_the_pipeline_file() {
        let c: EventTimeConfig =
            serde_json::from_str(r#"{"allowed_lateness":"10m","idle_timeout":"5s","late_events":"route"}"#)
                .expect("config");
        assert_eq!(c.allowed_lateness, Duration::from_secs(600));
        assert_eq!(c.late_events, LatePolicy::Route);
        let d: EventTimeConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(d.late_events, LatePolicy::Flag);
        assert!(serde_json::from_str::<EventTimeConfig>(r#"{"late_events":"drop"}"#).is_err(), "no silent drops");
    }

    /// One event a day ahead on every partition does not move the watermark a day ahead: the clocks
    /// stop at the processing time plus the allowed lead, so waits do not fire and caps do not expire.
    #[test]
    fn a_future_dated_event_moves_a_clock_no_further_than_the_lead() {
        let now = 100 * HOUR;
        let mut clocks =
            PartitionClocks::new(&[0, 1], Duration::from_secs(30), now).with_max_lead(Duration::from_secs(300));
        for p in [0, 1] {
            clocks.observe(p, now - 10_000, now);
            clocks.observe(p, now + 24 * HOUR, now);
        }
        let mut w = Watermark::new(Duration::ZERO);
        for r in clocks.reports(now, |_| false) {
            assert_eq!(r.max_event_ms, Some(now + 300_000), "{r:?}");
            w.apply(r);
        }
        assert_eq!(w.advance(), Some(now + 300_000));
        // Unbounded clocks (the default) take event times as they come.
        let mut free = PartitionClocks::new(&[0], Duration::from_secs(30), now);
        free.observe(0, now + 24 * HOUR, now);
        assert_eq!(free.reports(now, |_| false)[0].max_event_ms, Some(now + 24 * HOUR));
    }
}
