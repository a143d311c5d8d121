//! CPU time of this process and of the local stack's services over a measured stretch, from
//! `/proc/<pid>/stat` (user + system time of every thread of the process). On this machine the broker,
//! ClickHouse and the pipeline share the cores, so a rate alone does not say whose work limits it; CPU
//! seconds per event do.

use std::time::Duration;

/// Linux reports process times in clock ticks of `USER_HZ`, which is 100 on every mainstream
/// configuration (`getconf CLK_TCK`).
const TICKS_PER_SECOND: u64 = 100;

/// User + system CPU time of a process so far, or `None` if it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')' come field 3 (state) … field 14 (utime) and 15 (stime).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SECOND))
}

/// The processes whose CPU a stretch is charged to: this process and the local stack's broker and
/// ClickHouse, found by the PID files `deploy/scripts/stack.sh` writes.
#[derive(Clone)]
pub struct Processes {
    pub this: u32,
    pub broker: Option<u32>,
    pub clickhouse: Option<u32>,
}

impl Processes {
    pub fn of_local_stack() -> Self {
        let home = crate::touchpoint_home();
        let pid = |name: &str| -> Option<u32> {
            std::fs::read_to_string(home.join("run").join(format!("{name}.pid"))).ok()?.trim().parse().ok()
        };
        Processes { this: std::process::id(), broker: pid("kafka"), clickhouse: pid("clickhouse") }
    }

    pub fn start(&self) -> CpuStretch {
        CpuStretch { processes: self.clone(), at_start: self.read() }
    }

    fn read(&self) -> [Option<Duration>; 3] {
        [cpu_time(self.this), self.broker.and_then(cpu_time), self.clickhouse.and_then(cpu_time)]
    }
}

/// CPU used since [`Processes::start`].
pub struct CpuStretch {
    processes: Processes,
    at_start: [Option<Duration>; 3],
}

/// CPU seconds a stretch cost each process (`None`: the process was not found).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub this: Option<Duration>,
    pub broker: Option<Duration>,
    pub clickhouse: Option<Duration>,
}

impl CpuStretch {
    pub fn stop(&self) -> CpuUse {
        let now = self.processes.read();
        let used = |i: usize| Some(now[i]?.saturating_sub(self.at_start[i]?));
        CpuUse { this: used(0), broker: used(1), clickhouse: used(2) }
    }
}

impl CpuUse {
    /// "CPU per event: this process 12.3 µs, broker 1.2 µs, ClickHouse 8.0 µs"
    pub fn per_event(&self, events: usize) -> String {
        self.per(events, "event")
    }

    /// [`CpuUse::per_event`] for another unit of work ("record").
    pub fn per(&self, count: usize, unit: &str) -> String {
        let each = |d: Option<Duration>| {
            d.map_or("n/a".to_string(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6 / count.max(1) as f64))
        };
        format!(
            "CPU per {unit}: this process {}, broker {}, ClickHouse {}",
            each(self.this),
            each(self.broker),
            each(self.clickhouse)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_charged_for_work_it_does() {
        let pid = std::process::id();
        let before = cpu_time(pid).expect("this process has a /proc entry");
        // Busy for about 300 ms of CPU (several clock ticks), then read again.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_time(pid).expect("still there");
        // (Process-wide: other test threads may add to it, so only growth is checked.)
        assert!(after > before, "CPU time did not grow: {before:?} → {after:?}");
    }

    #[test]
    fn a_process_that_is_not_there_has_no_cpu_time() {
        // PIDs are at most 2^22 on Linux.
        assert_eq!(cpu_time(u32::MAX), None);
    }

    #[test]
    fn per_event_figures_divide_by_the_events() {
        let used = CpuUse { this: Some(Duration::from_millis(15)), broker: None, clickhouse: Some(Duration::ZERO) };
        assert_eq!(used.per_event(1_000), "CPU per event: this process 15.0 µs, broker n/a, ClickHouse 0.0 µs");
    }
}
