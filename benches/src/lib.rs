//! Benchmarks of Touchpoint: criterion micro-benchmarks (`benches/operators.rs`) and the end-to-end
//! harness (`src/bin/e2e.rs`). Results and the commands that produced them: `benches/README.md`.

use touchpoint_operators::consent::Channel;
use touchpoint_operators::frequency_cap::{CalendarUnit, CapRule, CapWindow, CapsConfig, FrequencyCaps};

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
