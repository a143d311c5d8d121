//! The pipeline file (YAML). Every section refuses unknown keys; every error names the file, the line
//! and what is wrong, e.g. `pipelines/config/local.yaml:12:5: normalize: unknown field `skew` ...`.
//!
//! `${NAME}` and `${NAME:-default}` are replaced by environment variables before parsing, so one file
//! serves local runs, CI and production (line numbers are preserved).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use touchpoint_connectors::clickhouse::ClickHouseConfig;
use touchpoint_connectors::kafka::{KafkaConfig, TopicSpec};
use touchpoint_connectors::schema_registry::SchemaRegistryConfig;
use touchpoint_operators::consent::ConsentConfig;
use touchpoint_operators::dedupe::DedupeConfig;
use touchpoint_operators::frequency_cap::{CapsConfig, FrequencyCaps};
use touchpoint_operators::intent::{IntentRules, IntentsConfig};
use touchpoint_operators::journey::{load_dir, Journey, JourneyError};
use touchpoint_operators::normalize::{NormalizeConfig, Normalizer};
use touchpoint_operators::profile::ProfilesConfig;
use touchpoint_operators::quiet_hours::{QuietHours, QuietHoursConfig};
use touchpoint_operators::segment::{load_segments, Segments};
use touchpoint_operators::watermark::EventTimeConfig;
use touchpoint_schemas::Channel;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub pipeline: PipelineSection,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub clickhouse: ClickHouseConfig,
    /// What re-processing may repeat: `exactly_once_keys` (default) or `at_least_once`.
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub epochs: EpochConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub normalize: NormalizeConfig,
    #[serde(default)]
    pub dedupe: DedupeConfig,
    /// Send intents from rules (journeys make their own). No rules: no rule-driven intents.
    #[serde(default)]
    pub intents: IntentsConfig,
    /// Defaults for subjects without a consent record.
    #[serde(default)]
    pub consent: ConsentConfig,
    /// Which events update profiles, and whether an event may choose a send's recipient.
    #[serde(default)]
    pub profiles: ProfilesConfig,
    #[serde(default)]
    pub caps: CapsConfig,
    /// Local-time windows in which sends are held or dropped (docs/quiet-hours.md).
    #[serde(default)]
    pub quiet_hours: QuietHoursConfig,
    /// Watermarks and the late-event policy.
    #[serde(default)]
    pub event_time: EventTimeConfig,
    /// Journey definition files.
    #[serde(default)]
    pub journeys: JourneysConfig,
    /// Segment definition files (docs/segments.md).
    #[serde(default)]
    pub segments: SegmentsConfig,
    /// The ingestion API (`touchpoint ingest`): listen address, limits, API keys.
    #[serde(default)]
    pub ingest: crate::ingest::IngestConfig,
    /// Channel connectors (`touchpoint connect`) and provider callbacks (`touchpoint deliveries`).
    #[serde(default)]
    pub channels: touchpoint_connectors::channels::config::ChannelsConfig,
    /// What recipients do about their consent: one-click unsubscribe links (docs/compliance.md).
    #[serde(default)]
    pub compliance: ComplianceConfig,
    /// The normalizer, intent rules and caps built from the sections above by [`Self::parse`], once:
    /// validating them is building them, and the run uses what was validated.
    #[serde(skip)]
    built: Option<Arc<BuiltRules>>,
}

/// The rule sections of a pipeline file, compiled.
#[derive(Debug, Clone)]
pub struct BuiltRules {
    pub normalizer: Normalizer,
    pub intents: IntentRules,
    pub caps: FrequencyCaps,
    pub quiet: QuietHours,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneysConfig {
    /// Directory of journey files (`*.yaml`); relative to the pipeline file. None: no journeys.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsConfig {
    /// Directory of segment files (`*.yaml`); relative to the pipeline file. None: no segments.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
    /// Consumer group under which source offsets are committed (what lag tools show).
    pub group_id: String,
    /// `host:port` to serve Prometheus metrics on (`GET /metrics`); none: no metrics endpoint.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// Processing guarantee, like Kafka Streams' `processing.guarantee`. See `docs/exactly-once.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// `exactly_once_keys`: a send ledger in the keyed state drops every send whose idempotency key was
    /// already emitted (after a crash or a `touchpoint replay`). `at_least_once`: no ledger; re-read
    /// input produces its sends again with the same keys, and the connectors drop the repeats.
    #[serde(default)]
    pub guarantee: touchpoint_operators::send_ledger::ProcessingGuarantee,
    /// How long the ledger remembers a key (wall clock). Must exceed any replay window.
    #[serde(default = "default_send_ledger_ttl", with = "humantime_serde")]
    pub send_ledger_ttl: Duration,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig { guarantee: Default::default(), send_ledger_ttl: default_send_ledger_ttl() }
    }
}

fn default_send_ledger_ttl() -> Duration {
    touchpoint_operators::guardrails::DEFAULT_SEND_LEDGER_TTL
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// The source, `marketing.events`.
    pub events: TopicSpec,
    /// Rejected records, `marketing.events.dlq`.
    pub dead_letter: TopicSpec,
    /// The consent table, `marketing.consent` (compacted).
    #[serde(default = "default_consent_topic")]
    pub consent: TopicSpec,
    /// Rejected consent records, `marketing.consent.dlq`.
    #[serde(default = "default_consent_dead_letter_topic")]
    pub consent_dead_letter: TopicSpec,
    /// Subject profiles, `marketing.profiles` (compacted; key `tenant/subject`).
    #[serde(default = "default_profiles_topic")]
    pub profiles: TopicSpec,
    /// Rejected profile records, `marketing.profiles.dlq`.
    #[serde(default = "default_profiles_dead_letter_topic")]
    pub profiles_dead_letter: TopicSpec,
    /// Allowed sends, one topic per channel: `<prefix>email`, `<prefix>sms`, ...
    #[serde(default)]
    pub connectors: ConnectorTopicsConfig,
    /// Events behind the watermark, with `event_time.late_events: route`: `marketing.events.late`.
    #[serde(default = "default_late_events_topic")]
    pub late_events: TopicSpec,
    /// Delivery outcomes from the channel connectors and provider callbacks: `marketing.deliveries`.
    #[serde(default = "default_deliveries_topic")]
    pub deliveries: TopicSpec,
    /// Partitions of the pipeline's state changelogs (`<group_id>.caps-changelog`).
    #[serde(default = "default_changelog_partitions")]
    pub changelog_partitions: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorTopicsConfig {
    #[serde(default = "default_connector_prefix")]
    pub prefix: String,
    #[serde(default = "default_connector_partitions")]
    pub partitions: i32,
}

impl Default for ConnectorTopicsConfig {
    fn default() -> Self {
        ConnectorTopicsConfig { prefix: default_connector_prefix(), partitions: default_connector_partitions() }
    }
}

fn default_connector_prefix() -> String {
    "connector.".into()
}
fn default_connector_partitions() -> i32 {
    4
}
fn default_changelog_partitions() -> i32 {
    8
}
fn default_consent_topic() -> TopicSpec {
    TopicSpec { name: "marketing.consent".into(), partitions: 2, retention: None, compacted: true }
}
fn default_profiles_topic() -> TopicSpec {
    TopicSpec { name: "marketing.profiles".into(), partitions: 2, retention: None, compacted: true }
}
fn default_profiles_dead_letter_topic() -> TopicSpec {
    TopicSpec::new("marketing.profiles.dlq", 2)
}
fn default_late_events_topic() -> TopicSpec {
    TopicSpec::new("marketing.events.late", 4)
}
fn default_deliveries_topic() -> TopicSpec {
    TopicSpec::new("marketing.deliveries", 4)
}
fn default_consent_dead_letter_topic() -> TopicSpec {
    TopicSpec::new("marketing.consent.dlq", 2)
}

impl TopicsConfig {
    pub fn all(&self) -> Vec<TopicSpec> {
        let mut all = vec![
            self.events.clone(),
            self.dead_letter.clone(),
            self.late_events.clone(),
            self.consent.clone(),
            self.consent_dead_letter.clone(),
            self.profiles.clone(),
            self.profiles_dead_letter.clone(),
            self.deliveries.clone(),
        ];
        for channel in Channel::ALL {
            let topics = self.channel(channel);
            all.push(TopicSpec::new(&topics.source, self.connectors.partitions));
            all.extend(topics.specs(self.connectors.partitions));
        }
        all
    }

    /// The topics of one channel's connector: `<prefix><channel>`, `.dlq`, `.ledger`.
    pub fn channel(&self, channel: Channel) -> touchpoint_connectors::channels::worker::WorkerTopics {
        touchpoint_connectors::channels::worker::WorkerTopics::new(
            &self.connectors.prefix,
            channel,
            &self.deliveries.name,
        )
    }

    /// The changelog of the frequency-cap state.
    pub fn caps_changelog(&self, group_id: &str) -> TopicSpec {
        TopicSpec {
            name: format!("{group_id}.caps-changelog"),
            partitions: self.changelog_partitions,
            retention: None,
            compacted: true,
        }
    }

    /// The changelog of the journey state (enrollments, timers, history).
    pub fn journeys_changelog(&self, group_id: &str) -> TopicSpec {
        TopicSpec { name: format!("{group_id}.journeys-changelog"), ..self.caps_changelog(group_id) }
    }

    /// The profiles as the pipeline merged them (from `marketing.profiles` and profile update events),
    /// one record per subject: what a restart restores.
    pub fn profiles_changelog(&self, group_id: &str) -> TopicSpec {
        TopicSpec { name: format!("{group_id}.profiles-changelog"), ..self.caps_changelog(group_id) }
    }

    /// Segment memberships and the event history their conditions count, one record per subject.
    pub fn segments_changelog(&self, group_id: &str) -> TopicSpec {
        TopicSpec { name: format!("{group_id}.segments-changelog"), ..self.caps_changelog(group_id) }
    }

    /// Dry-run requests (`POST /internal/automation/evaluate`), keyed by subject; read from the end at
    /// each start (a request nobody waits for any more is not answered), kept an hour.
    pub fn evaluate_requests(&self, group_id: &str) -> TopicSpec {
        TopicSpec {
            name: format!("{group_id}.evaluate-requests"),
            partitions: self.changelog_partitions,
            retention: Some(std::time::Duration::from_secs(3600)),
            compacted: false,
        }
    }

    /// The answers to [`Self::evaluate_requests`], matched by correlation id.
    pub fn evaluate_replies(&self, group_id: &str) -> TopicSpec {
        TopicSpec { name: format!("{group_id}.evaluate-replies"), ..self.evaluate_requests(group_id) }
    }

    /// Every journey version the pipeline ever ran (compacted; key `journey/version`, value the file):
    /// subjects keep running on the version they entered with after the file changes.
    pub fn journey_versions(&self, group_id: &str) -> TopicSpec {
        TopicSpec { name: format!("{group_id}.journey-versions"), partitions: 1, retention: None, compacted: true }
    }
}

/// How the source cuts the stream into epochs (timely timestamps). See `docs/time-and-delivery.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochConfig {
    /// A new epoch starts at least this often.
    #[serde(default = "default_epoch_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// ... or as soon as a worker has read this many records in the current one.
    #[serde(default = "default_epoch_max_records")]
    pub max_records: usize,
    /// ... or this many bytes (keys and values): with `max_in_flight`, a bound on the memory the epochs
    /// in flight hold, whatever the records weigh.
    #[serde(default = "default_epoch_max_bytes")]
    pub max_bytes: usize,
    /// Backpressure: a source stops reading while this many of its epochs are not yet durable in every
    /// sink (bounds memory and the work a crash repeats).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

impl Default for EpochConfig {
    fn default() -> Self {
        EpochConfig {
            interval: default_epoch_interval(),
            max_records: default_epoch_max_records(),
            max_bytes: default_epoch_max_bytes(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_epoch_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_epoch_max_records() -> usize {
    50_000
}
fn default_epoch_max_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_in_flight() -> usize {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Check that the first record after resuming carries the requested offset (stop otherwise).
    #[serde(default = "yes")]
    pub verify_resume_offsets: bool,
    /// With `--until-drained`: the source stops once it has read nothing for this long and is at the
    /// high watermark of every partition.
    #[serde(default = "default_drain_idle", with = "humantime_serde")]
    pub drain_idle: Duration,
    /// How long start-up may take to read a state changelog or the journey versions to their end; a
    /// restore that does not finish in time stops the start (see `RunOptions::accept_partial_restore`).
    #[serde(default = "default_restore_timeout", with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            verify_resume_offsets: true,
            drain_idle: default_drain_idle(),
            restore_timeout: default_restore_timeout(),
        }
    }
}

fn default_restore_timeout() -> Duration {
    Duration::from_secs(600)
}

fn yes() -> bool {
    true
}
fn default_drain_idle() -> Duration {
    Duration::from_millis(1500)
}

/// A pipeline file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", path.display())]
    Semantic { path: PathBuf, message: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Journeys(Vec<JourneyError>),
    /// Every problem of every segment file, one per line.
    #[error("{0}")]
    Segments(String),
}

/// The `compliance:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// Links in marketing emails that revoke consent in one click (RFC 8058), served by
    /// `touchpoint ingest` at `POST /u/{token}`; none: no such links.
    #[serde(default)]
    pub unsubscribe: Option<touchpoint_connectors::channels::unsubscribe::UnsubscribeConfig>,
}

impl ComplianceConfig {
    /// The links, checked (`None` when not configured).
    pub fn unsubscribe_links(
        &self,
    ) -> anyhow::Result<Option<touchpoint_connectors::channels::unsubscribe::UnsubscribeLinks>> {
        self.unsubscribe.as_ref().map(touchpoint_connectors::channels::unsubscribe::UnsubscribeLinks::new).transpose()
    }
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for dir in [config.journeys.dir.as_mut(), config.segments.dir.as_mut(), config.channels.templates.as_mut()]
            .into_iter()
            .flatten()
        {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        if let Some(tls) = config.ingest.tls.as_mut() {
            for file in [&mut tls.cert, &mut tls.key].into_iter().chain(tls.client_ca.as_mut()) {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        let journeys = config.journeys()?;
        let segments = config.segments()?;
        // Every segment a rule's audience or a journey's in_segment(...) names must exist: a typo would
        // otherwise make an audience silently empty.
        let named = config.built().map_err(|e| ConfigError::Semantic { path: path.into(), message: e.to_string() })?;
        let mut unknown: Vec<String> = named
            .intents
            .audiences()
            .filter(|(_, s)| !segments.contains(s))
            .map(|(rule, s)| format!("intents.rules.{rule}: audience {s:?} is not a segment of segments.dir"))
            .collect();
        for j in &journeys {
            for s in j.segments_named().into_iter().filter(|s| !segments.contains(s)) {
                unknown.push(format!("journey {}: in_segment({s:?}) names no segment of segments.dir", j.id));
            }
        }
        if !unknown.is_empty() {
            return Err(ConfigError::Semantic { path: path.into(), message: unknown.join("; ") });
        }
        config.templates().map_err(|e| ConfigError::Semantic { path: path.into(), message: format!("{e:#}") })?;
        Ok(config)
    }

    /// The rules the subject-keyed operator applies, with the journeys (current and archived versions)
    /// and the segments already loaded: once per process, so that every worker runs the same versions
    /// even if a file changes while they start.
    pub fn guardrail_rules(
        &self,
        journeys: touchpoint_operators::journey::Journeys,
        segments: Segments,
    ) -> anyhow::Result<touchpoint_operators::guardrails::GuardrailRules> {
        let built = self.built()?;
        Ok(touchpoint_operators::guardrails::GuardrailRules {
            intents: built.intents.clone(),
            consent: self.consent.clone(),
            caps: built.caps.clone(),
            quiet: built.quiet.clone(),
            segments,
            journeys,
            profiles: ProfilesConfig {
                update_event: touchpoint_operators::normalize::snake_case(&self.profiles.update_event),
                recipients: self.profiles.recipients.clone(),
            },
            guarantee: self.processing.guarantee,
            send_ledger_ttl: self.processing.send_ledger_ttl,
        })
    }

    /// What [`Self::parse`] built from the rule sections.
    pub fn built(&self) -> anyhow::Result<&BuiltRules> {
        self.built.as_deref().ok_or_else(|| anyhow::anyhow!("a pipeline config not made by PipelineConfig::parse"))
    }

    /// The journeys of `journeys.dir`, validated (every problem of every file at once).
    pub fn journeys(&self) -> Result<Vec<Journey>, ConfigError> {
        match &self.journeys.dir {
            None => Ok(Vec::new()),
            Some(dir) => load_dir(dir).map_err(ConfigError::Journeys),
        }
    }

    /// The segments of `segments.dir`, validated (every problem of every file at once).
    pub fn segments(&self) -> Result<Segments, ConfigError> {
        match &self.segments.dir {
            None => Ok(Segments::default()),
            Some(dir) => load_segments(dir).map(Segments::new).map_err(ConfigError::Segments),
        }
    }

    /// The message templates of `channels.templates` (none configured: none).
    pub fn templates(&self) -> anyhow::Result<touchpoint_connectors::channels::templates::Templates> {
        match &self.channels.templates {
            None => Ok(Default::default()),
            Some(dir) => touchpoint_connectors::channels::templates::Templates::load_dir(dir),
        }
    }

    /// Parses pipeline YAML; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let text = interpolate_env(text).map_err(|(line, message)| ConfigError::Invalid {
            path: path.into(),
            line,
            column: 1,
            message,
        })?;
        let mut config: PipelineConfig = serde_yaml::from_str(&text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            // serde_yaml appends " at line L column C" to some messages; the prefix already says it.
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            ConfigError::Invalid { path: path.into(), line, column, message }
        })?;
        let semantic = |message: String| ConfigError::Semantic { path: path.into(), message };
        config.built = Some(Arc::new(BuiltRules {
            normalizer: Normalizer::new(config.normalize.clone()).map_err(|e| semantic(e.to_string()))?,
            caps: FrequencyCaps::new(&config.caps).map_err(|e| semantic(e.to_string()))?,
            quiet: QuietHours::new(&config.quiet_hours).map_err(|e| semantic(e.to_string()))?,
            intents: IntentRules::new(&config.intents).map_err(|e| semantic(e.to_string()))?,
        }));
        config.validate().map_err(semantic)?;
        Ok(config)
    }

    /// The checks beyond the rule sections (which [`Self::parse`] builds, and so checks).
    fn validate(&self) -> Result<(), String> {
        if self.epochs.interval.is_zero() {
            return Err("epochs.interval must be greater than zero".into());
        }
        if self.epochs.max_in_flight == 0 {
            return Err("epochs.max_in_flight must be greater than zero".into());
        }
        if self.event_time.idle_timeout.is_zero() {
            return Err("event_time.idle_timeout must be greater than zero".into());
        }
        if self.processing.send_ledger_ttl < Duration::from_secs(60) {
            return Err(
                "processing.send_ledger_ttl must be at least 1m (it bounds how far back a replay may go)".into()
            );
        }
        if self.epochs.max_records == 0 {
            return Err("epochs.max_records must be greater than zero".into());
        }
        for t in self.topics.all() {
            if t.partitions < 1 {
                return Err(format!("topic {}: partitions must be at least 1", t.name));
            }
        }
        if !self.topics.consent.compacted {
            return Err(format!("topics.consent ({}) must be compacted: it is a table", self.topics.consent.name));
        }
        if !self.topics.profiles.compacted {
            return Err(format!("topics.profiles ({}) must be compacted: it is a table", self.topics.profiles.name));
        }
        if touchpoint_operators::normalize::snake_case(&self.profiles.update_event).is_empty() {
            return Err("profiles.update_event names no event type".into());
        }
        if self.topics.events.name == self.topics.dead_letter.name {
            return Err("topics.events and topics.dead_letter must be different topics".into());
        }
        Ok(())
    }
}

/// Replaces `${NAME}` / `${NAME:-default}`. Errors carry the 1-based line.
fn interpolate_env(text: &str) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or((i + 1, "unterminated ${...}".to_string()))?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (std::env::var(name), default) {
                (Ok(v), _) => out.push_str(&v),
                (Err(_), Some(d)) => out.push_str(d),
                (Err(_), None) => {
                    return Err((i + 1, format!("environment variable {name} is not set and has no default")))
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = include_str!("../config/local.yaml");

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(text, Path::new("pipeline.yaml"))
    }

    #[test]
    fn the_shipped_local_pipeline_file_loads() {
        let c = parse(LOCAL).unwrap();
        assert_eq!(c.topics.events.name, "marketing.events");
        assert_eq!(c.topics.dead_letter.name, "marketing.events.dlq");
        assert_eq!(c.epochs.interval, Duration::from_millis(200));
    }

    #[test]
    fn unknown_keys_are_refused_with_file_line_and_key() {
        let bad = LOCAL.replacen("  max_future_skew: 24h", "  max_future_skew: 24h\n  skew: 1h", 1);
        let line = bad.lines().position(|l| l == "  skew: 1h").unwrap() + 1;
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with(&format!("pipeline.yaml:{line}:")), "{err}");
        assert!(err.contains("unknown field `skew`"), "{err}");
    }

    #[test]
    fn wrong_types_are_refused_with_file_line_and_expectation() {
        let bad = LOCAL.replacen("partitions: 4", "partitions: many", 1);
        let line = bad.lines().position(|l| l.contains("partitions: many")).unwrap() + 1;
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with(&format!("pipeline.yaml:{line}:")), "{err}");
        assert!(err.contains("invalid type") && err.contains("i32"), "{err}");

        let bad = LOCAL.replacen("interval: 200ms", "interval: soon", 1);
        let line = bad.lines().position(|l| l.contains("interval: soon")).unwrap() + 1;
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with(&format!("pipeline.yaml:{line}:")), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_file() {
        let bad = LOCAL.replacen("known: [page_viewed,", "known: []\n    ignored: [page_viewed,", 1).replacen(
            "    ignored: [",
            "    #",
            1,
        );
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.starts_with("pipeline.yaml: normalize.event_types"), "{err}");
    }

    #[test]
    fn environment_variables_are_interpolated() {
        std::env::set_var("TP_TEST_GROUP", "group-from-env");
        let text = LOCAL.replacen("group_id: touchpoint.normalization", "group_id: ${TP_TEST_GROUP}", 1);
        assert_eq!(parse(&text).unwrap().pipeline.group_id, "group-from-env");
        let text = LOCAL.replacen("group_id: touchpoint.normalization", "group_id: ${TP_TEST_UNSET_VAR:-fallback}", 1);
        assert_eq!(parse(&text).unwrap().pipeline.group_id, "fallback");
        let text = LOCAL.replacen("group_id: touchpoint.normalization", "group_id: ${TP_TEST_UNSET_VAR}", 1);
        let line = text.lines().position(|l| l.contains("TP_TEST_UNSET_VAR")).unwrap() + 1;
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with(&format!("pipeline.yaml:{line}:1: environment variable TP_TEST_UNSET_VAR")), "{err}");
    }
}
