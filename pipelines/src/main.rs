//! The `touchpoint` command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use touchpoint::{PipelineConfig, RunOptions};
use touchpoint_connectors::clickhouse::migrate;
use touchpoint_connectors::kafka::{ensure_topics, read_all, AckedProducer};
use touchpoint_generate::{produce_generated, Expected, GeneratorConfig, Target};
use touchpoint_operators::watermark::LatePolicy;

// Events allocate many small strings and maps on every worker thread: with glibc's allocator, malloc and
// free took about half of the operator chain's time; mimalloc made the chain 1.85× and the pipeline end to
// end 1.3× faster (benches/README.md, "Profiling"; docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "touchpoint", version, about = "Stream processing for marketing automation on Kafka")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads per process.
        #[arg(long, short, default_value_t = 1)]
        workers: usize,
        /// Processes in the computation.
        #[arg(long, short = 'n', default_value_t = 1)]
        processes: usize,
        /// This process's index.
        #[arg(long, short, default_value_t = 0)]
        process: usize,
        /// host:port of every process, one per line.
        #[arg(long)]
        hostfile: Option<PathBuf>,
        /// Stop when the source topic is drained.
        #[arg(long)]
        until_drained: bool,
        /// Start even when a state changelog or the journey versions cannot be read completely (deadline,
        /// unreadable record): the subjects whose state is missing start afresh. Without it, such a
        /// restore stops the start and names the topic, partition and offset.
        #[arg(long)]
        accept_partial_restore: bool,
    },
    /// Re-process a range of the source topic with the pipeline's state: the same idempotency keys, so
    /// no send already emitted goes out again (needs `processing.guarantee: exactly_once_keys`). Commits
    /// no offsets; stop the running pipeline first.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Start: an RFC 3339 time (2026-11-30T18:00:00Z), a duration ago (1h), or partition:offset,...
        #[arg(long)]
        from: String,
        /// End (exclusive), in the same forms; default: the end of the log when the replay starts.
        #[arg(long)]
        to: Option<String>,
        /// Worker threads.
        #[arg(long, short, default_value_t = 1)]
        workers: usize,
    },
    /// Run a channel connector worker: deliver `connector.<channel>` through the channel's provider.
    /// Start several (same pipeline file) to spread the topic's partitions over them.
    Connect {
        #[arg(long, short)]
        config: PathBuf,
        /// email, webhook, push or sms.
        #[arg(long)]
        channel: String,
        /// A stable name for this worker (e.g. the pod name of a StatefulSet): static group membership,
        /// so a worker restarted after a crash takes its partitions back at once, without waiting for the
        /// group to notice that the old one is gone.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Load delivery outcomes (`marketing.deliveries`) into ClickHouse and accept provider status
    /// callbacks on `channels.callbacks_listen`.
    Deliveries {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve the ingestion API (`POST /automation/events`) on `ingest.listen`: events checked with the
    /// pipeline's normalizer, produced to the events topic; API keys from `ingest.api_keys`.
    Ingest {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Why did a subject (not) get a message? Its path through journeys and every decision, with reasons.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        subject: String,
        /// Default: the pipeline's `normalize.default_tenant`.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        journey: Option<String>,
    },
    /// Check a pipeline file and print what is wrong with it.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create the ClickHouse database and apply pending migrations (idempotent).
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create the pipeline's Kafka topics (idempotent).
    Topics {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Produce a realistic demo stream to the source topic.
    Generate {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 1_000)]
        subjects: usize,
        #[arg(long, default_value_t = 0.05)]
        malformed_share: f64,
        #[arg(long, default_value_t = 0.02)]
        duplicate_share: f64,
        #[arg(long, default_value_t = 0.5)]
        avro_share: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Event mix as canonical type=weight pairs, e.g. `page_viewed=50,order_completed=5`
        /// (default: the built-in realistic mix).
        #[arg(long, value_parser = touchpoint_generate::parse_mix)]
        mix: Option<std::collections::BTreeMap<String, u32>>,
        /// Write what the pipeline should do with each record (JSON lines) to this file.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Share of subjects granted email and push marketing consent (records to the consent topic).
        #[arg(long, default_value_t = 0.6)]
        consent_share: f64,
        /// Share of valid events that arrive 2 to 6 hours behind the stream (late under the local
        /// profile's 1 h allowed lateness).
        #[arg(long, default_value_t = 0.0)]
        late_share: f64,
    },
    /// Produce records from standard input, one per line, to the source topic (or --topic). The key is
    /// the line's `subject_id` when the line is a JSON object that has one.
    Produce {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        topic: Option<String>,
    },
    /// Print every record of a topic as JSON lines (key, value, headers).
    Tail {
        #[arg(long, short)]
        config: PathBuf,
        /// Topic name (default: the dead-letter topic).
        #[arg(long)]
        topic: Option<String>,
    },
}

fn main() {
    touchpoint::allocator::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn print_report(report: &touchpoint::RunReport, late_policy: &str) -> Result<()> {
    let t = &report.totals.tally;
    println!("pipeline finished: {} epochs ({} unbalanced)", report.totals.epochs, report.totals.unbalanced_epochs);
    println!("  in              {}", t.received);
    println!("  normalized      {}", t.normalized);
    println!("  duplicates      {}", t.duplicates);
    println!("  late            {} ({late_policy})", t.late);
    println!("  already stored  {}", t.already_stored);
    println!("  dead-lettered   {}", t.dead_lettered_total());
    for (code, n) in &t.dead_lettered {
        println!("    {code:<22}{n}");
    }
    anyhow::ensure!(report.totals.unbalanced_epochs == 0, "some epochs did not balance (see the log)");
    Ok(())
}

fn load(path: &Path) -> Result<PipelineConfig> {
    Ok(PipelineConfig::load(path)?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    touchpoint_connectors::io_runtime("touchpoint-io").context("async runtime")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, workers, processes, process, hostfile, until_drained, accept_partial_restore } => {
            let config = load(&config)?;
            let late_policy = match config.event_time.late_events {
                LatePolicy::Flag => "processed, flagged",
                LatePolicy::Route => "routed to the late-events topic",
            };
            let options = RunOptions {
                workers,
                processes,
                process,
                hostfile,
                until_drained,
                accept_partial_restore,
                ..RunOptions::default()
            };
            let report = touchpoint::run(config, options)?;
            print_report(&report, late_policy)?;
        }
        Command::Replay { config, from, to, workers } => {
            let config = load(&config)?;
            let now = chrono::Utc::now().timestamp_millis();
            let range = touchpoint::replay::ReplayRange {
                from: touchpoint::replay::ReplayPoint::parse(&from, now).context("--from")?,
                to: to.map(|t| touchpoint::replay::ReplayPoint::parse(&t, now).context("--to")).transpose()?,
            };
            let options = RunOptions { workers, replay: Some(range), ..RunOptions::default() };
            let report = touchpoint::run(config, options)?;
            print_report(&report, "processed")?;
            println!("  sends emitted   {}", touchpoint::metrics::SENDS_EMITTED.get());
            println!(
                "  already sent    {} (send ledger: not sent again)",
                touchpoint::metrics::SENDS_ALREADY_EMITTED.get()
            );
            println!(
                "  already suppressed {} (send ledger: not decided again)",
                touchpoint::metrics::SUPPRESSED_ALREADY_DECIDED.get()
            );
        }

        Command::Connect { config, channel, instance } => {
            let channel = touchpoint_schemas::Channel::parse(&channel)
                .ok_or_else(|| anyhow::anyhow!("unknown channel {channel:?} (email, webhook, push, sms)"))?;
            touchpoint::connect::connect(&load(&config)?, channel, instance.as_deref())?
        }
        Command::Deliveries { config } => touchpoint::connect::deliveries(&load(&config)?)?,
        Command::Ingest { config } => touchpoint::ingest::serve(&load(&config)?)?,
        Command::Explain { config, subject, tenant, journey } => {
            let c = load(&config)?;
            let tenant = tenant.unwrap_or_else(|| c.normalize.default_tenant.clone());
            let report = runtime()?.block_on(touchpoint::explain::explain(
                &c.clickhouse,
                &tenant,
                &subject,
                journey.as_deref(),
            ))?;
            print!("{report}");
        }
        Command::Validate { config } => {
            let c = load(&config)?;
            println!("{}: ok (pipeline {}, source {})", config.display(), c.pipeline.name, c.topics.events.name);
            for j in c.journeys()? {
                println!("  journey {} version {} ({} steps)", j.id, j.version, j.steps.len());
            }
            for s in c.segments()?.list() {
                println!("  segment {} version {}: {}", s.id, s.version, s.source.condition);
            }
        }
        Command::Migrate { config } => {
            let c = load(&config)?;
            let applied = runtime()?.block_on(migrate(&c.clickhouse))?;
            println!("database {}: {} migration(s) applied {:?}", c.clickhouse.database, applied.len(), applied);
        }
        Command::Topics { config } => {
            let c = load(&config)?;
            runtime()?.block_on(ensure_topics(&c.kafka, &c.topics.all()))?;
            for t in c.topics.all() {
                println!("{} ({} partitions)", t.name, t.partitions);
            }
        }
        Command::Generate {
            config,
            count,
            subjects,
            malformed_share,
            duplicate_share,
            avro_share,
            seed,
            mix,
            manifest,
            consent_share,
            late_share,
        } => {
            let c = load(&config)?;
            let topic = c.topics.events.name.clone();
            let gen_config = GeneratorConfig {
                count,
                subjects,
                malformed_share,
                duplicate_share,
                avro_share,
                seed,
                mix: mix.unwrap_or_default(),
                late_share,
                ..Default::default()
            };
            let rt = runtime()?;
            let consent = touchpoint_generate::consent_grants(subjects, consent_share, seed, &c.topics.consent.name);
            rt.block_on(ensure_topics(&c.kafka, &c.topics.all()))?;
            rt.block_on(AckedProducer::new(&c.kafka)?.send_all(&consent))?;
            println!("produced {} consent records to {}", consent.len(), c.topics.consent.name);
            let profiles = touchpoint_generate::subject_profiles(subjects, &c.topics.profiles.name);
            rt.block_on(AckedProducer::new(&c.kafka)?.send_all(&profiles))?;
            println!("produced {} profiles to {}", profiles.len(), c.topics.profiles.name);
            let target = Target::new(&c.schema_registry, &c.topics.events.name, c.topics.all());
            let (schema_id, produced) = produce_generated(&target, &c.kafka, &gen_config, rt.handle())?;
            if let Some(path) = manifest {
                let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
                for (r, (partition, offset)) in &produced {
                    let mut line = serde_json::to_value(&r.expected)?;
                    line["partition"] = (*partition).into();
                    line["offset"] = (*offset).into();
                    writeln!(f, "{line}")?;
                }
            }
            let count = |f: fn(&Expected) -> bool| produced.iter().filter(|(r, _)| f(&r.expected)).count();
            println!(
                "produced {} records to {topic} (schema id {schema_id}): {} valid, {} duplicates, {} malformed",
                produced.len(),
                count(|e| matches!(e, Expected::Valid { .. })),
                count(|e| matches!(e, Expected::Duplicate { .. })),
                count(|e| matches!(e, Expected::Rejected { .. })),
            );
        }
        Command::Produce { config, topic } => {
            let c = load(&config)?;
            let topic = topic.unwrap_or(c.topics.events.name.clone());
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut input).context("reading standard input")?;
            let (lines, records): (Vec<usize>, Vec<_>) =
                touchpoint::produce::records_from_lines(&input, &topic).into_iter().unzip();
            let rt = runtime()?;
            rt.block_on(ensure_topics(&c.kafka, &c.topics.all()))?;
            let acks = match rt.block_on(AckedProducer::new(&c.kafka)?.send_all(&records)) {
                Ok(acks) => acks,
                Err(touchpoint_connectors::kafka::ProduceError::Refused { refused, .. }) => {
                    let named: Vec<String> = refused.iter().map(|(i, e)| format!("line {}: {e}", lines[*i])).collect();
                    anyhow::bail!(
                        "the broker refused {} line(s) (the others were produced):\n{}",
                        named.len(),
                        named.join("\n")
                    );
                }
                Err(e) => return Err(e.into()),
            };
            for (partition, offset) in &acks {
                println!("{topic}/{partition}@{offset}");
            }
        }
        Command::Tail { config, topic } => {
            let c = load(&config)?;
            let topic = topic.unwrap_or(c.topics.dead_letter.name.clone());
            let out = std::io::stdout();
            let mut out = out.lock();
            for r in read_all(&c.kafka, &topic, Duration::from_secs(1), Duration::from_secs(120))? {
                let mut line = serde_json::json!({
                    "partition": r.partition,
                    "offset": r.offset,
                    "key": r.key.as_deref().map(String::from_utf8_lossy),
                    "headers": r.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                });
                // Text values (JSON) as they are; binary ones (Avro) as hex, byte for byte.
                match r.payload.as_deref().map(std::str::from_utf8) {
                    Some(Ok(text)) => line["value"] = text.into(),
                    Some(Err(_)) => {
                        let bytes = r.payload.as_deref().unwrap_or_default();
                        line["value_hex"] = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into();
                    }
                    None => line["value"] = serde_json::Value::Null,
                }
                if let Err(e) = writeln!(out, "{line}") {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break; // the reader (e.g. `head`) has seen enough
                    }
                    return Err(e.into());
                }
            }
        }
    }
    Ok(())
}
