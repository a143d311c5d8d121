//! Memory of the guardrails' keyed state per subject, and the time to restore cap state from its
//! changelog, for N subjects (default 1,000,000).
//!
//!   cargo run --release -p touchpoint-benches --bin state_memory -- --subjects 1000000 [--restore]
//!
//! Memory is counted by a counting global allocator (live heap bytes before and after building the
//! state). `--restore` needs the local stack: it writes one changelog record per subject and times
//! the restore the pipeline performs at start-up.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use touchpoint_operators::consent::{ConsentChange, ConsentStatus, ConsentTable};
use touchpoint_operators::frequency_cap::{CapQuery, SubjectCaps};
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

#[global_allocator]
static ALLOCATOR: touchpoint_benches::CountingAllocator = touchpoint_benches::CountingAllocator;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    subjects: usize,
    /// Also measure the restore of cap state from a changelog on the local stack.
    #[arg(long)]
    restore: bool,
}

fn subject(i: usize) -> SubjectRef {
    SubjectRef::new("acme", &format!("user-{i}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.subjects;

    let before = touchpoint_benches::live_bytes();
    let mut table = ConsentTable::new();
    for i in 0..n {
        for channel in [Channel::Email, Channel::Push] {
            table.apply(&ConsentChange::Set {
                subject: subject(i),
                channel,
                purpose: Purpose::Marketing,
                status: ConsentStatus::Granted,
                updated_at_ms: 1,
                source: "bench".into(),
            });
        }
    }
    let consent_bytes = touchpoint_benches::live_bytes() - before;

    // Each subject: one promotional email and one push today (2 counted sends, 3 rules).
    let caps = touchpoint_benches::sample_caps();
    let before = touchpoint_benches::live_bytes();
    let mut states: std::collections::HashMap<SubjectRef, SubjectCaps> = std::collections::HashMap::new();
    for i in 0..n {
        let state = states.entry(subject(i)).or_default();
        for (channel, k) in [(Channel::Email, "e"), (Channel::Push, "p")] {
            let q = CapQuery { channel, category: "promotional", tags: &[], at_ms: 1_795_600_800_000, time_zone: None };
            caps.decide_keyed(state, &q, &format!("tpk-{i}-{k}"));
        }
    }
    let caps_bytes = touchpoint_benches::live_bytes() - before;
    println!("subjects                         {n}");
    println!(
        "consent table (2 records each)   {:>8.1} MiB  {:>6.0} bytes/subject",
        mib(consent_bytes),
        consent_bytes as f64 / n as f64
    );
    println!(
        "cap state (2 sends, 3 rules)     {:>8.1} MiB  {:>6.0} bytes/subject",
        mib(caps_bytes),
        caps_bytes as f64 / n as f64
    );

    if args.restore {
        restore(&states)?;
    }
    Ok(())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn restore(states: &std::collections::HashMap<SubjectRef, SubjectCaps>) -> Result<()> {
    use touchpoint_connectors::kafka::{ensure_topics, AckedProducer, OutgoingRecord};
    let name = touchpoint_connectors::testing::unique_name("bench_restore");
    let text = std::fs::read_to_string("pipelines/config/local.yaml")?
        .replace("group_id: touchpoint.normalization", &format!("group_id: {name}"));
    let config = touchpoint::PipelineConfig::parse(&text, std::path::Path::new("pipelines/config/local.yaml"))?;
    let topic = config.topics.caps_changelog(&config.pipeline.group_id);
    let rt = touchpoint_connectors::io_runtime("bench-io")?;
    rt.block_on(ensure_topics(&config.kafka, std::slice::from_ref(&topic)))?;
    // Large batches: the producer is not what is measured.
    let mut kafka = config.kafka.clone();
    kafka.producer.insert("batch.num.messages".into(), "10000".into());
    kafka.producer.insert("linger.ms".into(), "5".into());
    let producer = AckedProducer::new(&kafka)?;
    let records: Vec<OutgoingRecord> = states
        .iter()
        .map(|(s, caps)| OutgoingRecord {
            partition: None,
            topic: topic.name.clone(),
            key: Some(format!("{}/{}", s.tenant_id, s.subject_id).into_bytes()),
            payload: serde_json::to_vec(caps).ok(),
            headers: vec![],
        })
        .collect();
    for chunk in records.chunks(50_000) {
        rt.block_on(producer.send_all(chunk))?;
    }
    drop(records);
    let started = Instant::now();
    let restored = touchpoint::restore_caps(&config, 1, 0..1, touchpoint::PartialRestore::Refuse)?;
    let elapsed = started.elapsed();
    let subjects: usize = restored.values().map(|m| m.len()).sum();
    println!(
        "restore from changelog           {subjects} subjects in {elapsed:.1?} ({:.0} subjects/s)",
        subjects as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
