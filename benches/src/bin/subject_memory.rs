//! Memory of one worker's keyed state per active subject, as subjects grow (default 100k, 1M, 5M): the
//! real operator ([`GuardrailWorker`]) with the shipped pipeline file's rules, caps and journeys.
//!
//!   cargo run --release -p touchpoint-benches --bin subject_memory -- --subjects 100000,1000000,5000000
//!
//! Every subject has email and push consent (2 consent records) and a profile (email, push device,
//! locale, two attributes, as the generator writes them), signs up, updates a cart and opens the app
//! (entering the welcome series and the abandoned cart: a decided welcome email and a daily-deal push in
//! the send ledger, counted sends in the cap state, two journeys waiting; the shipped segments keep the
//! app open for `inactive-3d` and a third of the subjects are `pro-customers`), and the dedupe state holds
//! its three event ids. Live heap bytes
//! are counted by a counting global allocator: the whole state after the events minus before, and each
//! part by the bytes a deep copy of it allocates ("rest": the dedupe ids and the journey timers).

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use touchpoint_benches::chain::local_config;
use touchpoint_benches::live_bytes;
use touchpoint_operators::consent::{ConsentChange, ConsentStatus};
use touchpoint_operators::dedupe::dedupe_key;
use touchpoint_operators::dedupe::EventDeduplicator;
use touchpoint_operators::guardrails::{GuardrailState, GuardrailWorker};
use touchpoint_operators::journey::Journeys;
use touchpoint_operators::profile::parse_profile_record;
use touchpoint_operators::read_event::ReadEvent;
use touchpoint_schemas::NormalizedEvent;
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

#[global_allocator]
static ALLOCATOR: touchpoint_benches::CountingAllocator = touchpoint_benches::CountingAllocator;

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000,5000000")]
    subjects: Vec<usize>,
    /// Above this many subjects, only the total is measured: the deep copies that size each part
    /// would need another 40% of the state's memory (5M subjects: about 15 GiB of state).
    #[arg(long, default_value_t = 1_000_000)]
    parts_up_to: usize,
}

const T0: i64 = 1_795_168_800_000;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = local_config();
    println!(
        "{:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>14} {:>12}",
        "subjects",
        "consent B/s",
        "profile B/s",
        "sends B/s",
        "journeys B/s",
        "segments B/s",
        "rest* B/s",
        "total B/s",
        "total MiB"
    );
    for &n in &args.subjects {
        let started = Instant::now();
        let base = live_bytes();
        let journeys = Journeys::new(config.journeys()?, &config.intents.time_zone_attribute);
        let rules = config.guardrail_rules(journeys, config.segments()?)?;
        let mut worker = GuardrailWorker::new(GuardrailState::default(), rules);
        let mut dedupe = EventDeduplicator::new(&config.dedupe);
        for i in 0..n {
            for channel in [Channel::Email, Channel::Push] {
                worker.apply_consent(&ConsentChange::Set {
                    subject: SubjectRef::new("acme", &format!("user-{i}")),
                    channel,
                    purpose: Purpose::Marketing,
                    status: ConsentStatus::Granted,
                    updated_at_ms: 1,
                    source: "crm".into(),
                });
            }
        }
        let after_consent = live_bytes();
        // A profile each, as the generator writes them (email, a push device, locale, two attributes):
        // recipients come from profiles.
        for record in touchpoint_generate::subject_profiles(n, "marketing.profiles") {
            if record.key.as_deref().is_some_and(|k| k.starts_with(b"acme/")) {
                let fields: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(record.payload.as_deref().unwrap_or_default())?;
                worker.apply_profile(
                    &parse_profile_record(&fields, record.key.as_deref(), "default")
                        .map_err(|r| anyhow::anyhow!("{}", r.message))?,
                );
            }
        }
        let after_profiles = live_bytes();
        let mut sends = 0usize;
        const PER_EPOCH: usize = 50_000;
        for (kind, offset_ms) in [("signed_up", 0), ("cart_updated", 60_000), ("app_opened", 120_000)] {
            for start in (0..n).step_by(PER_EPOCH) {
                let events: Vec<NormalizedEvent> = (start..(start + PER_EPOCH).min(n))
                    .map(|i| touchpoint_benches::subject_event(i, kind, T0 + offset_ms + i as i64))
                    .filter(|e| dedupe.first_seen(dedupe_key(&e.tenant_id, &e.event_id), e.occurred_at_ms))
                    .collect();
                worker.advance_watermark(T0 + offset_ms + start as i64 - 3_600_000);
                let out = worker.process_epoch(vec![events.into_iter().map(ReadEvent::new).collect()], T0 + offset_ms);
                sends += out.counts.allowed as usize;
            }
        }
        let total = live_bytes() - base;
        let consent = after_consent - base;
        let profiles = after_profiles - after_consent;
        // A part's size: what a deep copy of it allocates.
        let size_of_copy = |copy: &dyn Fn() -> Box<dyn std::any::Any>| {
            let before = live_bytes();
            let copy = copy();
            let bytes = live_bytes() - before;
            drop(copy);
            bytes
        };
        let (send_state, journeys, segments) = if n <= args.parts_up_to {
            (
                size_of_copy(&|| Box::new(worker.state().caps.clone())),
                size_of_copy(&|| Box::new(worker.state().journeys.clone())),
                size_of_copy(&|| Box::new(worker.state().segments.clone())),
            )
        } else {
            (0, 0, 0)
        };
        let rest = total.saturating_sub(consent + profiles + send_state + journeys + segments);
        let per = |b: usize| b as f64 / n as f64;
        if n > args.parts_up_to {
            println!(
                "{:>10} {:>12.0} {:>12.0} {:>12} {:>12} {:>12} {:>12} {:>14.0} {:>12.1}",
                n,
                per(consent),
                per(profiles),
                "-",
                "-",
                "-",
                "-",
                per(total),
                mib(total)
            );
            eprintln!("{n} subjects: {sends} sends allowed, built in {:.1?}", started.elapsed());
            continue;
        }
        println!(
            "{:>10} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>14.0} {:>12.1}",
            n,
            per(consent),
            per(profiles),
            per(send_state),
            per(journeys),
            per(segments),
            per(rest),
            per(total),
            mib(total)
        );
        eprintln!(
            "{n} subjects: {sends} sends allowed, {} with send state, {} in journeys, {} with segment state, built in {:.1?}",
            worker.state().caps.len(),
            worker.state().journeys.len(),
            worker.state().segments.len(),
            started.elapsed()
        );
        drop(worker);
        drop(dedupe);
    }
    Ok(())
}
