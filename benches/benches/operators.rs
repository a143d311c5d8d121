//! Criterion micro-benchmarks of every operator: decode (JSON, Avro), normalize, dedupe, consent
//! join, frequency caps, event time, journey step. The whole chain: `benches/chain.rs`.
//!
//!   cargo bench -p touchpoint-benches --bench operators

use std::sync::Arc;

use apache_avro::Schema;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use touchpoint_benches::chain::CachedSchema;
use touchpoint_generate::{generate, AvroWriter, Expected, GeneratorConfig};
use touchpoint_operators::decode::RecordDecoder;
use touchpoint_operators::dedupe::dedupe_key;
use touchpoint_operators::dedupe::{DedupeConfig, EventDeduplicator};
use touchpoint_operators::normalize::{NormalizeConfig, Normalizer};
use touchpoint_schemas::SourcePosition;

// The `touchpoint` binary's allocator (mimalloc), as in the pipeline.
touchpoint_benches::pipeline_allocator!();

fn payloads(avro_share: f64) -> (Vec<Vec<u8>>, Arc<Schema>) {
    let schema = Arc::new(Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).unwrap());
    let config =
        GeneratorConfig { count: 10_000, malformed_share: 0.0, duplicate_share: 0.0, avro_share, ..Default::default() };
    let records = generate(&config, Some(&AvroWriter { schema_id: 1, schema: &schema }));
    (records.into_iter().filter(|r| matches!(r.expected, Expected::Valid { .. })).map(|r| r.payload).collect(), schema)
}

fn bench(c: &mut Criterion) {
    let normalizer = Normalizer::new(NormalizeConfig::default()).unwrap();
    let pos = SourcePosition { topic: "marketing.events".into(), partition: 0, offset: 0 };
    let now = chrono::Utc::now().timestamp_millis();
    for (name, share) in [("json", 0.0), ("avro", 1.0)] {
        let (payloads, schema) = payloads(share);
        let decoder = RecordDecoder::new(CachedSchema(schema));
        let mut group = c.benchmark_group(format!("normalize_{name}"));
        group.throughput(Throughput::Elements(payloads.len() as u64));
        group.bench_function("decode", |b| {
            b.iter(|| payloads.iter().filter(|p| decoder.decode_event(p).is_ok()).count())
        });
        group.bench_function("decode+normalize", |b| {
            b.iter(|| {
                payloads
                    .iter()
                    .filter(|p| {
                        decoder
                            .decode_event(p)
                            .ok()
                            .and_then(|f| normalizer.normalize(f, pos.clone(), now).ok())
                            .is_some()
                    })
                    .count()
            })
        });
        group.finish();
    }
    let ids: Vec<String> = (0..10_000).map(|i| format!("evt-{i}")).collect();
    let mut group = c.benchmark_group("dedupe");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("first_seen", |b| {
        b.iter_batched(
            || EventDeduplicator::new(&DedupeConfig::default()),
            |mut d| ids.iter().filter(|id| d.first_seen(dedupe_key("acme", id), now)).count(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn guardrails(c: &mut Criterion) {
    use touchpoint_operators::consent::{ConsentChange, ConsentConfig, ConsentStatus, ConsentTable};
    use touchpoint_operators::frequency_cap::{CapQuery, SubjectCaps};
    use touchpoint_schemas::{Channel, Purpose, SubjectRef};

    let subjects: Vec<SubjectRef> = (0..100_000).map(|i| SubjectRef::new("acme", &format!("user-{i}"))).collect();
    let mut table = ConsentTable::new();
    for (i, s) in subjects.iter().enumerate() {
        table.apply(&ConsentChange::Set {
            subject: s.clone(),
            channel: Channel::Email,
            purpose: Purpose::Marketing,
            status: if i % 3 == 0 { ConsentStatus::Denied } else { ConsentStatus::Granted },
            updated_at_ms: 1,
            source: String::new(),
        });
    }
    let config = ConsentConfig::default();
    let mut group = c.benchmark_group("consent");
    group.throughput(Throughput::Elements(subjects.len() as u64));
    group.bench_function("verdict", |b| {
        b.iter(|| {
            subjects.iter().filter(|s| table.verdict(s, Channel::Email, Purpose::Marketing, &config).allowed).count()
        })
    });
    // A consent record as the table replays it at start: the generic decoder (a `serde_json::Map`)
    // against the direct reader, on the same payloads.
    let records: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            serde_json::json!({"subject_id": format!("user-{i}"), "tenant_id": "acme", "channel": "email",
                "purpose": "marketing", "status": "granted", "updated_at": "2026-11-20T10:00:00Z", "source": "crm"})
            .to_string()
            .into_bytes()
        })
        .collect();
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("record: generic decode + parse", |b| {
        b.iter(|| {
            records
                .iter()
                .filter(|r| {
                    touchpoint_operators::decode::decode_json(r)
                        .ok()
                        .and_then(|m| touchpoint_operators::consent::parse_consent(&m, "acme").ok())
                        .is_some()
                })
                .count()
        })
    });
    group.bench_function("record: direct JSON read + parse", |b| {
        b.iter(|| {
            records
                .iter()
                .filter(|r| {
                    touchpoint_operators::consent::ConsentFields::from_json(r)
                        .and_then(|f| touchpoint_operators::consent::parse_consent_fields(&f, "acme").ok())
                        .is_some()
                })
                .count()
        })
    });
    group.finish();

    let caps = touchpoint_benches::sample_caps();
    let keys: Vec<String> = (0..10_000).map(|i| format!("tpk-{i}")).collect();
    let mut group = c.benchmark_group("frequency_caps");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("decide_keyed (1,000 subjects x 10 intents, Berlin days)", |b| {
        b.iter_batched(
            || vec![SubjectCaps::default(); 1_000],
            |mut states| {
                let mut allowed = 0;
                for (i, key) in keys.iter().enumerate() {
                    let q = CapQuery {
                        channel: Channel::Email,
                        category: "promotional",
                        tags: &[],
                        at_ms: 1_795_600_800_000 + (i as i64) * 60_000,
                        time_zone: Some("Europe/Berlin"),
                    };
                    allowed += usize::from(
                        caps.decide_keyed(&mut states[i % 1_000], &q, key)
                            == touchpoint_operators::frequency_cap::CapVerdict::Allowed,
                    );
                }
                allowed
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Event time: the reader side (observe each event, report every epoch) and the judge (apply 64
/// partitions' reports per epoch, judge each event).
fn event_time(c: &mut Criterion) {
    use std::time::Duration;
    use touchpoint_operators::watermark::{PartitionClocks, Watermark};

    const EVENTS: usize = 100_000;
    const PER_EPOCH: usize = 5_000;
    let partitions: Vec<i32> = (0..64).collect();
    let base = 1_795_600_800_000i64;
    // In order per partition with up to 2 minutes of disorder, 1% two hours behind.
    let times: Vec<(i32, i64)> = (0..EVENTS)
        .map(|i| {
            let jitter = ((i * 7919) % 120_000) as i64;
            let late = if i % 100 == 0 { 7_200_000 } else { 0 };
            ((i % 64) as i32, base + (i as i64) * 1_000 - jitter - late)
        })
        .collect();
    let mut group = c.benchmark_group("event_time");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("clocks observe+report (64 partitions)", |b| {
        b.iter_batched(
            || PartitionClocks::new(&partitions, Duration::from_secs(30), 0),
            |mut clocks| {
                let mut reports = 0;
                for chunk in times.chunks(PER_EPOCH) {
                    for &(p, t) in chunk {
                        clocks.observe(p, t, 1);
                    }
                    reports += clocks.reports(1, |_| false).len();
                }
                reports
            },
            BatchSize::SmallInput,
        )
    });
    let reports: Vec<Vec<_>> = {
        let mut clocks = PartitionClocks::new(&partitions, Duration::from_secs(30), 0);
        times
            .chunks(PER_EPOCH)
            .map(|chunk| {
                for &(p, t) in chunk {
                    clocks.observe(p, t, 1);
                }
                clocks.reports(1, |_| false)
            })
            .collect()
    };
    group.bench_function("watermark apply+judge (64 partitions, 1% late)", |b| {
        b.iter_batched(
            || Watermark::new(Duration::from_secs(3600)),
            |mut watermark| {
                let mut late = 0;
                for (chunk, epoch_reports) in times.chunks(PER_EPOCH).zip(&reports) {
                    late += chunk.iter().filter(|(_, t)| watermark.judge(*t).is_late()).count();
                    for r in epoch_reports {
                        watermark.apply(*r);
                    }
                    watermark.advance();
                }
                late
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// One journey step: subjects entering the shipped journeys on their events (welcome series on
/// `signed_up`: the welcome email decided, a 1-day wait armed; abandoned cart on `cart_updated`), then a
/// timer moving each of them on. Consent and caps are answered by a stand-in that allows every send, so
/// this is the journey machine alone (the real guardrails are in the `chain` bench).
fn journey_step(c: &mut Criterion) {
    use touchpoint_operators::intent::SendIntent;
    use touchpoint_operators::journey::{load_dir, Guardrails, Journeys, SendOutcome, SubjectJourneys};
    use touchpoint_schemas::NormalizedEvent;
    use touchpoint_schemas::{Channel, Purpose, SubjectRef};

    struct AllowAll;
    impl Guardrails for AllowAll {
        fn consent(&self, _: Channel, _: Purpose) -> bool {
            true
        }
        fn send(&mut self, _: SendIntent) -> SendOutcome {
            SendOutcome::Sent
        }
    }
    const SUBJECTS: usize = 10_000;
    const T0: i64 = 1_795_168_800_000;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/journeys");
    let journeys = Journeys::new(load_dir(&dir).expect("shipped journeys"), "time_zone");
    let subjects: Vec<SubjectRef> = (0..SUBJECTS).map(|i| SubjectRef::new("acme", &format!("user-{i}"))).collect();
    let events: Vec<NormalizedEvent> = (0..SUBJECTS)
        .flat_map(|i| [("signed_up", 0), ("cart_updated", 60_000)].map(move |(t, dt)| (i, t, dt)))
        .map(|(i, event_type, dt)| touchpoint_benches::subject_event(i, event_type, T0 + dt + i as i64))
        .collect();
    let mut group = c.benchmark_group("journey_step");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("on_event (enter both journeys)", |b| {
        b.iter_batched(
            || vec![SubjectJourneys::default(); SUBJECTS],
            |mut states| {
                let mut moved = 0;
                for (k, e) in events.iter().enumerate() {
                    moved += journeys.on_event(&subjects[k / 2], &mut states[k / 2], e, &mut AllowAll).len();
                }
                moved
            },
            BatchSize::LargeInput,
        )
    });
    let mut entered = vec![SubjectJourneys::default(); SUBJECTS];
    for (k, e) in events.iter().enumerate() {
        journeys.on_event(&subjects[k / 2], &mut entered[k / 2], e, &mut AllowAll);
    }
    group.throughput(Throughput::Elements(SUBJECTS as u64));
    group.bench_function("on_time (a day later: every wait fires)", |b| {
        b.iter_batched(
            || entered.clone(),
            |mut states| {
                let mut moved = 0;
                for (s, state) in subjects.iter().zip(states.iter_mut()) {
                    moved += journeys.on_time(s, state, T0 + 2 * 86_400_000, &mut AllowAll).len();
                }
                moved
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench, guardrails, event_time, journey_step);
criterion_main!(benches);
