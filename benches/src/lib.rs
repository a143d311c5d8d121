//! Benchmarks of Touchpoint: criterion micro-benchmarks (`benches/operators.rs`) and the end-to-end
//! harness (`src/bin/e2e.rs`). Results and the commands that produced them: `benches/README.md`.

pub mod chain;
pub mod cpu;
pub mod scratch;
pub mod writes;

/// Where the local stack lives (`deploy/scripts/install-services.sh`, `stack.sh`): `$TOUCHPOINT_HOME`,
/// by default `~/.touchpoint`.
pub fn touchpoint_home() -> std::path::PathBuf {
    std::env::var("TOUCHPOINT_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".touchpoint"))
}

/// Declares the `touchpoint` binary's global allocator (mimalloc) in a benchmark binary, unless built with
/// `--features system-allocator` (to measure what the allocator is worth).
#[macro_export]
macro_rules! pipeline_allocator {
    () => {
        #[cfg(not(feature = "system-allocator"))]
        #[global_allocator]
        static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
    };
}

/// A valid event of subject `user-{i}` (tenant `acme`) of the given type at `at_ms`, with the
/// attributes the shipped journeys read (amount, country, email, plan).
pub fn subject_event(i: usize, event_type: &str, at_ms: i64) -> touchpoint_schemas::NormalizedEvent {
    touchpoint_schemas::NormalizedEvent {
        event_id: format!("{event_type}-{i}"),
        event_type: event_type.into(),
        occurred_at_ms: at_ms,
        subject_id: format!("user-{i}"),
        tenant_id: "acme".into(),
        source: "bench".into(),
        attributes_json: format!(
            r#"{{"amount":{},"country":"DE","currency":"EUR","email":"user{i}@example.com","plan":"pro"}}"#,
            50 + i % 100
        ),
        ingested_at_ms: 0,
        position: touchpoint_schemas::SourcePosition { topic: "bench".into(), partition: 0, offset: i as i64 },
        late: false,
    }
}

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::sync::atomic::{AtomicUsize, Ordering};

use touchpoint_operators::frequency_cap::{CalendarUnit, CapRule, CapWindow, CapsConfig, FrequencyCaps};
use touchpoint_schemas::Channel;

/// The cap rules the benchmarks use (those of `pipelines/config/local.yaml`): promotional email per
/// calendar day, push per rolling hour, everything per calendar week.
pub fn sample_caps() -> FrequencyCaps {
    let rule = |id: &str, channel, category: Option<&str>, limit, window| CapRule {
        id: id.into(),
        channel,
        category: category.map(str::to_string),
        tag: None,
        limit,
        window,
    };
    FrequencyCaps::new(&CapsConfig {
        rules: vec![
            rule(
                "email-promo-daily",
                Some(Channel::Email),
                Some("promotional"),
                2,
                CapWindow::Calendar(CalendarUnit::Day),
            ),
            rule("push-hourly", Some(Channel::Push), None, 1, CapWindow::Rolling(std::time::Duration::from_secs(3600))),
            rule("all-weekly", None, None, 10, CapWindow::Calendar(CalendarUnit::Week)),
        ],
        ..Default::default()
    })
    .expect("valid sample caps")
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live heap bytes, for the memory benchmarks. A binary installs it with
/// `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;` and reads
/// [`live_bytes`] before and after building some state.
pub struct CountingAllocator;

// SAFETY: delegates to mimalloc (the pipeline's allocator) and only counts sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `MiMalloc` with `layout`.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
}

/// Live heap bytes counted by [`CountingAllocator`] (0 when it is not the global allocator).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}
