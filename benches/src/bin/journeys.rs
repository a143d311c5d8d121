//! Journeys for N subjects (default 1,000,000), with the shipped journey files: throughput of entries
//! and of timers, and the memory of the journey state per subject.
//!
//!   cargo run --release -p touchpoint-benches --bin journeys -- --subjects 1000000
//!
//! Every subject signs up (enters the welcome series: welcome email, then a 1-day wait) and updates a
//! cart (enters the abandoned cart: waits for an order); then event time moves past every wait (tips or
//! nudge, reminders, exits). Sends are decided by the real consent and caps code (`decide`) with
//! consent granted. Baseline, measured in the same run on the same events: frequency caps alone
//! (`decide_keyed` of one intent per event). Memory by a counting global allocator.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};
use clap::Parser;
use touchpoint_operators::consent::{ConsentChange, ConsentConfig, ConsentStatus, ConsentTable};
use touchpoint_operators::decision::{decide, DecisionKind, DecisionRules};
use touchpoint_operators::frequency_cap::{CapQuery, FrequencyCaps, SubjectCaps};
use touchpoint_operators::intent::SendIntent;
use touchpoint_operators::journey::{load_dir, Guardrails, Journeys, SendOutcome, SubjectJourneys};
use touchpoint_operators::profile::{Recipient, RecipientSource};
use touchpoint_operators::quiet_hours::QuietHours;
use touchpoint_schemas::NormalizedEvent;
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

#[global_allocator]
static ALLOCATOR: touchpoint_benches::CountingAllocator = touchpoint_benches::CountingAllocator;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    subjects: usize,
}

const T0: i64 = 1_795_168_800_000;

struct Real<'a> {
    subject: &'a SubjectRef,
    consent: &'a ConsentTable,
    config: &'a ConsentConfig,
    caps: &'a FrequencyCaps,
    quiet: &'a QuietHours,
    state: &'a mut SubjectCaps,
    sent: &'a mut u64,
}

impl Guardrails for Real<'_> {
    fn consent(&self, channel: Channel, purpose: Purpose) -> bool {
        self.consent.verdict(self.subject, channel, purpose, self.config).allowed
    }
    fn send(&mut self, intent: SendIntent) -> SendOutcome {
        // The journey machine's cost, not the profile's: every intent has a recipient.
        let to = Recipient { address: intent.recipient.clone(), source: RecipientSource::Event, event_ignored: false };
        let rules = DecisionRules { consent: self.config, caps: self.caps, quiet: self.quiet };
        let d = decide(intent, to, self.consent, &rules, self.state, true);
        let allowed = d.kind == DecisionKind::Allowed;
        *self.sent += u64::from(allowed);
        if allowed {
            SendOutcome::Sent
        } else {
            SendOutcome::Suppressed(d.reason())
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.subjects;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/journeys");
    let journeys = Journeys::new(load_dir(&dir).map_err(|e| anyhow!("{e:?}"))?, "time_zone");
    let caps = touchpoint_benches::sample_caps();
    let quiet = QuietHours::new(&Default::default()).expect("no quiet hours");
    let config = ConsentConfig::default();
    let subjects: Vec<SubjectRef> = (0..n).map(|i| SubjectRef::new("acme", &format!("user-{i}"))).collect();
    let mut consent = ConsentTable::new();
    for s in &subjects {
        for channel in [Channel::Email, Channel::Push] {
            consent.apply(&ConsentChange::Set {
                subject: s.clone(),
                channel,
                purpose: Purpose::Marketing,
                status: ConsentStatus::Granted,
                updated_at_ms: 1,
                source: "bench".into(),
            });
        }
    }
    let signups: Vec<NormalizedEvent> =
        (0..n).map(|i| touchpoint_benches::subject_event(i, "signed_up", T0 + i as i64)).collect();
    let carts: Vec<NormalizedEvent> =
        (0..n).map(|i| touchpoint_benches::subject_event(i, "cart_updated", T0 + 60_000 + i as i64)).collect();

    // Baseline: frequency caps alone, one intent per event, same subjects.
    let mut baseline_states: HashMap<SubjectRef, SubjectCaps> = HashMap::with_capacity(n);
    let started = Instant::now();
    for (i, s) in subjects.iter().enumerate() {
        let q = CapQuery { channel: Channel::Email, category: "onboarding", tags: &[], at_ms: T0, time_zone: None };
        caps.decide_keyed(baseline_states.entry(s.clone()).or_default(), &q, &format!("tpk-{i}"));
    }
    let baseline_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(baseline_states);

    let mut cap_states: HashMap<SubjectRef, SubjectCaps> = HashMap::with_capacity(n);
    let mut sent = 0u64;
    let mut states: HashMap<SubjectRef, SubjectJourneys> = HashMap::with_capacity(n);
    let started = Instant::now();
    let mut transitions = 0usize;
    for batch in [&signups, &carts] {
        for (s, e) in subjects.iter().zip(batch.iter()) {
            let state = states.entry(s.clone()).or_default();
            let mut g = Real {
                subject: s,
                consent: &consent,
                config: &config,
                caps: &caps,
                quiet: &quiet,
                state: cap_states.entry(s.clone()).or_default(),
                sent: &mut sent,
            };
            transitions += journeys.on_event(s, state, e, &mut g).len();
        }
    }
    let entries = started.elapsed();
    // The journey state's heap: what a deep copy of it allocates (keys, map, enrollments, history).
    let before = touchpoint_benches::live_bytes();
    let copy = states.clone();
    let state_bytes = touchpoint_benches::live_bytes() - before;
    drop(copy);

    let started = Instant::now();
    let now = T0 + 2 * 86_400_000;
    for s in &subjects {
        let Some(state) = states.get_mut(s) else { continue };
        let mut g = Real {
            subject: s,
            consent: &consent,
            config: &config,
            caps: &caps,
            quiet: &quiet,
            state: cap_states.entry(s.clone()).or_default(),
            sent: &mut sent,
        };
        transitions += journeys.on_time(s, state, now, &mut g).len();
    }
    let timers = started.elapsed();
    let left = states.values().filter(|s| !s.active.is_empty()).count();

    let entry_rate = (2 * n) as f64 / entries.as_secs_f64();
    let timer_rate = n as f64 / timers.as_secs_f64();
    println!("subjects                               {n}");
    println!("baseline: caps decide_keyed            {baseline_rate:>12.0} events/s");
    println!(
        "journeys: events (2 entries/subject)   {entry_rate:>12.0} events/s  ratio {:.3}",
        entry_rate / baseline_rate
    );
    println!(
        "journeys: timers fired (per subject)   {timer_rate:>12.0} subjects/s ratio {:.3}",
        timer_rate / baseline_rate
    );
    println!("transitions {transitions}, sends allowed {sent}, subjects still inside {left}");
    println!(
        "journey state while waiting (2 journeys/subject, keys and map included): {:.1} MiB, {:.0} bytes/subject",
        state_bytes as f64 / (1024.0 * 1024.0),
        state_bytes as f64 / n as f64
    );
    Ok(())
}
