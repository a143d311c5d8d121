//! The connector worker (`touchpoint connect --channel <c>`): consumes `connector.<channel>` in a
//! consumer group and delivers each message exactly once through a [`ChannelClient`].
//!
//! Per round: fetch up to `batch` records; per partition (several partitions at once, one message at a
//! time within a partition, so a subject's messages keep their order) look the idempotency key up in
//! the [`Ledger`], then rate limit → breaker → `attempting` in the ledger → send → outcome (ledger
//! `done`, `marketing.deliveries`, and on failure `connector.<channel>.dlq`) acknowledged by the broker
//! → next message. Offsets are committed only after every outcome of the round is durable.
//!
//! A round never outlasts [`ROUND_BUDGET`]: Kafka hands a consumer's partitions to another worker when
//! it has not polled for `max.poll.interval.ms` (5 min by default), and a worker that kept sending
//! after that would race the new owner. A message that would wait past the budget (breaker open, a
//! long `Retry-After`) is handed back: the round commits what is done and the rest is read again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use touchpoint_schemas::{delivery_id, DeliverySource};
use touchpoint_schemas::{headers, ChannelMessage, Delivery, DeliveryStatus};

use super::breaker::{BreakerConfig, SharedBreaker};
use super::envelope;
use super::ledger::{Ledger, LedgerEntry, LEDGER_TTL};
use super::rate_limit::{RateLimitConfig, RateLimiter};
use super::retry::RetryPolicy;
use super::{now_ms, ChannelClient, DeliveryRef, ProviderStatus, SendError};
use crate::kafka::{bounded_text, recv_batch, AckedProducer, KafkaConfig, OutgoingRecord, TopicSpec, MAX_REASON_BYTES};

/// The longest a round works before it commits and polls Kafka again (well inside the default
/// `max.poll.interval.ms` of 5 minutes).
pub const ROUND_BUDGET: Duration = Duration::from_secs(60);

/// How far a round got in one partition.
#[derive(Debug, Default)]
struct Progress {
    /// The offset to commit (after the last record handled), if any was.
    next: Option<i64>,
    /// Where to read again (the first record not handled), if the round stopped early.
    read_again_from: Option<i64>,
}

/// What became of one record in a round.
enum Handled {
    Done,
    /// Not finished within the round's budget: to be read again from this record.
    Deferred,
}

/// The topics of one channel's connector.
#[derive(Debug, Clone)]
pub struct WorkerTopics {
    /// `connector.<channel>`.
    pub source: String,
    /// `connector.<channel>.dlq`: messages that could not be delivered, with the reason in headers.
    pub dead_letter: String,
    /// `connector.<channel>.ledger`: the dedupe ledger (compacted, partitions aligned with `source`).
    pub ledger: String,
    /// `marketing.deliveries`.
    pub deliveries: String,
}

impl WorkerTopics {
    pub fn new(prefix: &str, channel: touchpoint_schemas::Channel, deliveries: &str) -> Self {
        let source = format!("{prefix}{channel}");
        WorkerTopics {
            dead_letter: format!("{source}.dlq"),
            ledger: format!("{source}.ledger"),
            source,
            deliveries: deliveries.to_string(),
        }
    }

    /// The topics a worker writes, for `ensure_topics` (the ledger with the source's partitions).
    pub fn specs(&self, partitions: i32) -> Vec<TopicSpec> {
        vec![
            TopicSpec::new(&self.dead_letter, partitions),
            // Compacted, and trimmed after the ledger's TTL (see `ledger`).
            TopicSpec { name: self.ledger.clone(), partitions, retention: Some(LEDGER_TTL), compacted: true },
        ]
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub retry: RetryPolicy,
    pub rate_limit: Option<RateLimitConfig>,
    pub breaker: BreakerConfig,
    pub concurrency: usize,
    pub batch: usize,
}

/// Counters of a worker's run (logged at the end, and per round at debug level).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
    /// Records whose key the ledger had as done (re-read after a restart): not sent again.
    pub already_done: AtomicU64,
    /// In-doubt attempts the provider confirmed: not sent again.
    pub reconciled: AtomicU64,
    /// In-doubt attempts sent again because the provider could not say (SMTP, webhooks).
    pub resent_in_doubt: AtomicU64,
}

impl WorkerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn bump_by(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
    }

    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "received={} sent={} dead_lettered={} retries={} already_done={} reconciled={} resent_in_doubt={}",
            g(&self.received),
            g(&self.sent),
            g(&self.dead_lettered),
            g(&self.retries),
            g(&self.already_done),
            g(&self.reconciled),
            g(&self.resent_in_doubt)
        )
    }
}

/// Remembers partitions taken away in a rebalance, so their ledgers are read again if they come back.
#[derive(Default)]
struct RevokeTracker {
    revoked: Mutex<HashSet<i32>>,
}

impl ClientContext for RevokeTracker {}

impl ConsumerContext for RevokeTracker {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if let Ok(mut r) = self.revoked.lock() {
                r.extend(tpl.elements().iter().map(|e| e.partition()));
            }
        }
    }
}

/// A record as read, owned.
#[derive(Debug, Clone)]
struct Incoming {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    idempotency_header: Option<String>,
}

pub struct ConnectorWorker<C: ChannelClient> {
    client: Arc<C>,
    kafka: KafkaConfig,
    group_id: String,
    topics: WorkerTopics,
    settings: WorkerSettings,
    producer: AckedProducer,
    limiter: RateLimiter,
    breaker: SharedBreaker,
    pub stats: Arc<WorkerStats>,
}

impl<C: ChannelClient> ConnectorWorker<C> {
    pub fn new(
        client: C,
        kafka: &KafkaConfig,
        group_id: &str,
        topics: WorkerTopics,
        settings: WorkerSettings,
    ) -> Result<Self> {
        Ok(ConnectorWorker {
            client: Arc::new(client),
            kafka: kafka.clone(),
            group_id: group_id.to_string(),
            limiter: RateLimiter::new(settings.rate_limit.as_ref()),
            breaker: SharedBreaker::new(settings.breaker.clone()),
            producer: AckedProducer::new(kafka)?,
            topics,
            settings,
            stats: Arc::default(),
        })
    }

    /// Runs until `stop` is set (SIGTERM): the round in progress is finished and committed first.
    ///
    /// A consumer that librdkafka declares fatally failed is replaced by a new one (its partitions'
    /// ledgers are restored again when they come back). Seen after a broker restart: a static member
    /// (`--instance`) was fenced (`FENCED_INSTANCE_ID`) by a join of its own that the restarted
    /// coordinator had recorded, and the worker sat there owning nothing
    /// (`pipelines/tests/broker_faults_e2e.rs`).
    pub async fn run(&self, stop: Arc<AtomicBool>) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let consumer: StreamConsumer<RevokeTracker> = self
                .kafka
                .consumer_config(&self.group_id)
                .create_with_context(RevokeTracker::default())
                .context("creating the connector's consumer")?;
            consumer.subscribe(&[&self.topics.source]).context("subscribing")?;
            tracing::info!(
                channel = %self.client.channel(),
                topic = %self.topics.source,
                group = %self.group_id,
                "connector worker started",
            );
            self.consume(&consumer, &stop).await?;
            if let Some((code, reason)) = consumer.client().fatal_error() {
                tracing::error!(?code, %reason, "the connector's consumer failed fatally; replacing it");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tracing::info!(channel = %self.client.channel(), stats = %self.stats.summary(), "connector worker stopped");
        Ok(())
    }

    /// Rounds on one consumer until `stop` is set or the consumer has failed fatally.
    async fn consume(&self, consumer: &StreamConsumer<RevokeTracker>, stop: &Arc<AtomicBool>) -> Result<()> {
        let mut ledgers: HashMap<i32, Ledger> = HashMap::new();
        let mut last_expiry = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Entries past the TTL go, about once a minute (a pass over every entry).
            if last_expiry.elapsed() >= Duration::from_secs(60) {
                last_expiry = Instant::now();
                let now_ms = crate::now_ms();
                let expired: usize = ledgers.values_mut().map(|l| l.expire(now_ms, LEDGER_TTL)).sum();
                if expired > 0 {
                    tracing::info!(topic = %self.topics.ledger, expired, "ledger entries past their TTL forgotten");
                }
            }
            if consumer.client().fatal_error().is_some() {
                return Ok(());
            }
            let mut batch = self.fetch(consumer).await?;
            // Partitions taken away during this fetch: their records go to the new owner, who reads
            // them from the committed offset; this worker must not send them too.
            let revoked: HashSet<i32> = match consumer.context().revoked.lock() {
                Ok(mut r) => r.drain().collect(),
                Err(_) => HashSet::new(),
            };
            if !revoked.is_empty() {
                let assigned: HashSet<i32> = consumer
                    .assignment()
                    .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                for p in &revoked {
                    ledgers.remove(p);
                    let first = batch.iter().filter(|r| r.partition == *p).map(|r| r.offset).min();
                    batch.retain(|r| r.partition != *p);
                    // Revoked and given back within the fetch: read again from the first dropped record.
                    if let (Some(offset), true) = (first, assigned.contains(p)) {
                        self.seek(consumer, *p, offset);
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let deadline = Instant::now() + ROUND_BUDGET;
            let mut by_partition: BTreeMap<i32, Vec<Incoming>> = BTreeMap::new();
            for r in batch {
                by_partition.entry(r.partition).or_default().push(r);
            }
            let missing: Vec<i32> = by_partition.keys().copied().filter(|p| !ledgers.contains_key(p)).collect();
            if !missing.is_empty() {
                ledgers.extend(self.restore_ledgers(missing).await?);
            }
            let mut work = Vec::new();
            for (p, records) in by_partition {
                work.push((p, ledgers.remove(&p).unwrap_or_default(), records));
            }
            let stop_ref = &stop;
            let outcomes: Vec<(i32, Ledger, Result<Progress>)> = futures::stream::iter(work)
                .map(|(p, mut ledger, records)| async move {
                    let result = self.process_partition(p, &mut ledger, &records, deadline, stop_ref).await;
                    (p, ledger, result)
                })
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await;
            let mut commit = TopicPartitionList::new();
            let mut read_again = Vec::new();
            for (p, ledger, result) in outcomes {
                let progress = result.with_context(|| format!("{} partition {p}", self.topics.source))?;
                ledgers.insert(p, ledger);
                if let Some(next) = progress.next {
                    commit.add_partition_offset(&self.topics.source, p, Offset::Offset(next))?;
                }
                if let Some(offset) = progress.read_again_from {
                    read_again.push((p, offset));
                }
            }
            // Every outcome of the round is acknowledged by the broker: now the offsets may move.
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                    tracing::warn!(error = %e, "committing offsets failed (a rebalance?); the ledger covers a re-read");
                }
            }
            if !stop.load(Ordering::Relaxed) {
                for (p, offset) in read_again {
                    self.seek(consumer, p, offset);
                }
            }
            tracing::debug!(stats = %self.stats.summary(), "round done");
        }
        Ok(())
    }

    async fn fetch(&self, consumer: &StreamConsumer<RevokeTracker>) -> Result<Vec<Incoming>> {
        let out: Vec<Incoming> = recv_batch(consumer, self.settings.batch, Duration::from_millis(20))
            .await
            .iter()
            .map(|m| Incoming {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                idempotency_header: m.headers().and_then(|hs| {
                    hs.iter()
                        .find(|h| h.key == headers::IDEMPOTENCY_KEY)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                }),
            })
            .collect();
        WorkerStats::bump_by(&self.stats.received, out.len());
        Ok(out)
    }

    /// Reads the ledger of partitions this worker got (at start, or after a rebalance).
    async fn restore_ledgers(&self, partitions: Vec<i32>) -> Result<HashMap<i32, Ledger>> {
        let kafka = self.kafka.clone();
        let topic = self.topics.ledger.clone();
        let started = std::time::Instant::now();
        let now_ms = crate::now_ms();
        let ledgers = tokio::task::spawn_blocking(move || Ledger::restore(&kafka, &topic, &partitions, now_ms))
            .await
            .context("restoring the ledger")??;
        for (p, l) in &ledgers {
            tracing::info!(
                topic = %self.topics.ledger,
                partition = p,
                keys = l.len(),
                elapsed = ?started.elapsed(),
                "ledger restored",
            );
        }
        Ok(ledgers)
    }

    fn seek(&self, consumer: &StreamConsumer<RevokeTracker>, partition: i32, offset: i64) {
        if let Err(e) = consumer.seek(&self.topics.source, partition, Offset::Offset(offset), Duration::from_secs(10)) {
            tracing::warn!(
                partition,
                offset,
                error = %e,
                "seek failed; the partition is read again from its committed offset after the next rebalance",
            );
        }
    }

    /// Handles the records of one partition in order, until the round's deadline or a stop.
    async fn process_partition(
        &self,
        partition: i32,
        ledger: &mut Ledger,
        records: &[Incoming],
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Progress> {
        let mut progress = Progress::default();
        for r in records {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                progress.read_again_from = Some(r.offset);
                break;
            }
            match self.handle(partition, ledger, r, deadline).await? {
                Handled::Done => progress.next = Some(r.offset + 1),
                Handled::Deferred => {
                    progress.read_again_from = Some(r.offset);
                    break;
                }
            }
        }
        Ok(progress)
    }

    async fn handle(&self, partition: i32, ledger: &mut Ledger, r: &Incoming, deadline: Instant) -> Result<Handled> {
        let message = match envelope::decode(r.payload.as_deref()) {
            Ok(m) if m.channel == self.client.channel() => m,
            Ok(m) => {
                let reason = format!("a {} message on the {} connector's topic", m.channel, self.client.channel());
                self.invalid(r, reason).await?;
                return Ok(Handled::Done);
            }
            Err(reason) => {
                self.invalid(r, reason.to_string()).await?;
                return Ok(Handled::Done);
            }
        };
        let key = message.idempotency_key.clone();
        let mut attempt = 1;
        match ledger.get(&key).cloned() {
            Some(LedgerEntry::Done { attempt, outcome, provider_message_id, reason }) => {
                // Delivered (or dead-lettered) before a restart: never again. Its delivery event is
                // produced again in case the crash came between the ledger and that event (the
                // `deliveries` table keeps one row per key, status, attempt and source).
                WorkerStats::bump(&self.stats.already_done);
                let d =
                    self.delivery(&message, outcome, attempt, provider_message_id, reason, DeliverySource::Connector);
                self.durable(vec![self.delivery_record(&d)?]).await?;
                return Ok(Handled::Done);
            }
            Some(LedgerEntry::Retrying { attempt: failed }) => attempt = failed + 1,
            Some(LedgerEntry::Attempting { attempt: in_doubt }) => {
                // Found at the provider (accepted, or failed there after accepting): not sent again.
                let found = match self.provider_status(&message).await {
                    ProviderStatus::Accepted | ProviderStatus::Delivered => Some((DeliveryStatus::Sent, None)),
                    ProviderStatus::Failed(reason) => Some((DeliveryStatus::Failed, Some(reason))),
                    ProviderStatus::NotFound => None,
                    ProviderStatus::Unknown => {
                        tracing::warn!(
                            %key,
                            "in-doubt attempt the provider cannot confirm; sending again with the same id",
                        );
                        WorkerStats::bump(&self.stats.resent_in_doubt);
                        None
                    }
                };
                if let Some((outcome, reason)) = found {
                    tracing::info!(
                        %key,
                        outcome = outcome.as_str(),
                        ?reason,
                        "in-doubt attempt found at the provider; not sent again",
                    );
                    WorkerStats::bump(&self.stats.reconciled);
                    let source = DeliverySource::Reconciled;
                    self.finish(partition, ledger, &message, in_doubt, outcome, None, reason, source).await?;
                    return Ok(Handled::Done);
                }
                attempt = in_doubt + 1;
            }
            None => {}
        }
        self.deliver(partition, ledger, r, &message, attempt, deadline).await
    }

    /// A record that is no message for this connector: dead-lettered with the reason, as it came.
    async fn invalid(&self, r: &Incoming, reason: String) -> Result<()> {
        tracing::warn!(partition = r.partition, offset = r.offset, %reason, "not a channel message; dead-lettered");
        let key = r.idempotency_header.clone().unwrap_or_default();
        self.durable(vec![self.dead_letter_record(r, &key, "invalid", &reason, 0)]).await?;
        WorkerStats::bump(&self.stats.dead_lettered);
        Ok(())
    }

    /// The provider's word on an in-doubt attempt; a lookup that fails is tried again a few times
    /// (sending again on a failed lookup would repeat a message the provider may have).
    async fn provider_status(&self, m: &ChannelMessage) -> ProviderStatus {
        let lookup = DeliveryRef {
            delivery_id: m.delivery_id(),
            idempotency_key: m.idempotency_key.clone(),
            provider_message_id: None,
        };
        let mut wait = Duration::from_millis(200);
        for _ in 0..5 {
            match self.client.status(&lookup).await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!(key = %m.idempotency_key, error = %e, "status lookup failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        ProviderStatus::Unknown
    }

    async fn deliver(
        &self,
        partition: i32,
        ledger: &mut Ledger,
        r: &Incoming,
        message: &ChannelMessage,
        mut attempt: u32,
        deadline: Instant,
    ) -> Result<Handled> {
        let key = &message.idempotency_key;
        loop {
            // While the breaker is open messages wait here: no request, no attempt spent.
            if !self.breaker.wait_for_permit(deadline).await {
                return Ok(Handled::Deferred);
            }
            self.limiter.acquire().await;
            let entry = LedgerEntry::Attempting { attempt };
            self.durable(vec![Ledger::record(&self.topics.ledger, partition, key, &entry)?]).await?;
            ledger.apply(key, entry, crate::now_ms());
            match self.client.send(message).await {
                Ok(receipt) => {
                    self.breaker.on_success();
                    let pmid = receipt.provider_message_id;
                    self.finish(
                        partition,
                        ledger,
                        message,
                        attempt,
                        DeliveryStatus::Sent,
                        pmid,
                        None,
                        DeliverySource::Connector,
                    )
                    .await?;
                    return Ok(Handled::Done);
                }
                Err(SendError::Permanent { reason, bounce }) => {
                    // The provider answered: it is healthy, the message is not.
                    self.breaker.on_success();
                    let status = if bounce { DeliveryStatus::Bounced } else { DeliveryStatus::Failed };
                    self.dead_letter(partition, ledger, r, message, status, &reason, attempt).await?;
                    return Ok(Handled::Done);
                }
                Err(SendError::Transient { reason, retry_after }) => {
                    self.breaker.on_failure();
                    if self.settings.retry.exhausted(attempt) {
                        let reason = format!("gave up after {attempt} attempts: {reason}");
                        self.dead_letter(partition, ledger, r, message, DeliveryStatus::Failed, &reason, attempt)
                            .await?;
                        return Ok(Handled::Done);
                    }
                    let wait = self.settings.retry.backoff(attempt, retry_after, fastrand::f64());
                    tracing::debug!(%key, attempt, ?wait, %reason, "transient failure; will retry");
                    WorkerStats::bump(&self.stats.retries);
                    // Known not delivered: a restart continues with the next attempt, no lookup.
                    let entry = LedgerEntry::Retrying { attempt };
                    let d = self.delivery(
                        message,
                        DeliveryStatus::Retrying,
                        attempt,
                        None,
                        Some(reason),
                        DeliverySource::Connector,
                    );
                    self.durable(vec![
                        Ledger::record(&self.topics.ledger, partition, key, &entry)?,
                        self.delivery_record(&d)?,
                    ])
                    .await?;
                    ledger.apply(key, entry, crate::now_ms());
                    if Instant::now() + wait > deadline {
                        return Ok(Handled::Deferred);
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Records a final outcome the provider gave (`sent`, or `failed` found by a lookup).
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        partition: i32,
        ledger: &mut Ledger,
        message: &ChannelMessage,
        attempt: u32,
        outcome: DeliveryStatus,
        provider_message_id: Option<String>,
        reason: Option<String>,
        source: DeliverySource,
    ) -> Result<()> {
        let entry = LedgerEntry::Done {
            attempt,
            outcome,
            provider_message_id: provider_message_id.clone(),
            reason: reason.clone(),
        };
        let d = self.delivery(message, outcome, attempt, provider_message_id, reason, source);
        // One write: if the crash comes between the two records, a `done` without its event is
        // re-emitted when the record is read again (see `handle`).
        self.durable(vec![
            Ledger::record(&self.topics.ledger, partition, &message.idempotency_key, &entry)?,
            self.delivery_record(&d)?,
        ])
        .await?;
        ledger.apply(&message.idempotency_key, entry, crate::now_ms());
        WorkerStats::bump(&self.stats.sent);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        partition: i32,
        ledger: &mut Ledger,
        r: &Incoming,
        message: &ChannelMessage,
        status: DeliveryStatus,
        reason: &str,
        attempt: u32,
    ) -> Result<()> {
        tracing::warn!(key = %message.idempotency_key, status = status.as_str(), %reason, "dead-lettered");
        let key = &message.idempotency_key;
        let failed = self.delivery(message, status, attempt, None, Some(reason.to_string()), DeliverySource::Connector);
        let placed = self.delivery(
            message,
            DeliveryStatus::DeadLettered,
            attempt,
            None,
            Some(reason.to_string()),
            DeliverySource::Connector,
        );
        // The dead letter is durable before the ledger says `done`: a crash in between dead-letters the
        // message again (the send fails the same way), it never leaves it in no topic at all.
        self.durable(vec![
            self.dead_letter_record(r, key, status.as_str(), reason, attempt),
            self.delivery_record(&failed)?,
            self.delivery_record(&placed)?,
        ])
        .await?;
        let entry = LedgerEntry::Done {
            attempt,
            outcome: DeliveryStatus::DeadLettered,
            provider_message_id: None,
            reason: Some(reason.to_string()),
        };
        self.durable(vec![Ledger::record(&self.topics.ledger, partition, key, &entry)?]).await?;
        ledger.apply(key, entry, crate::now_ms());
        WorkerStats::bump(&self.stats.dead_lettered);
        Ok(())
    }

    fn delivery(
        &self,
        m: &ChannelMessage,
        status: DeliveryStatus,
        attempt: u32,
        provider_message_id: Option<String>,
        reason: Option<String>,
        source: DeliverySource,
    ) -> Delivery {
        Delivery {
            delivery_id: delivery_id(self.client.channel(), &m.idempotency_key),
            idempotency_key: m.idempotency_key.clone(),
            channel: self.client.channel(),
            tenant_id: m.tenant_id.clone(),
            subject_id: m.subject_id.clone(),
            status,
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
            provider_message_id,
            reason,
            source,
            at: now_ms(),
        }
    }

    fn delivery_record(&self, d: &Delivery) -> Result<OutgoingRecord, serde_json::Error> {
        delivery_record(&self.topics.deliveries, d)
    }

    /// The dead letter of `r`: its original key and value, why, where it was read. Bounded: the reason
    /// and key headers are cut, and a record too large to write goes as a reference.
    fn dead_letter_record(&self, r: &Incoming, key: &str, status: &str, reason: &str, attempts: u32) -> OutgoingRecord {
        OutgoingRecord {
            topic: self.topics.dead_letter.clone(),
            partition: None,
            key: r.key.clone(),
            payload: r.payload.clone(),
            headers: vec![
                (headers::DLQ_REASON.into(), bounded_text(reason, MAX_REASON_BYTES).into_bytes()),
                (headers::DLQ_STATUS.into(), status.as_bytes().to_vec()),
                (headers::DLQ_ATTEMPTS.into(), attempts.to_string().into_bytes()),
                (headers::IDEMPOTENCY_KEY.into(), bounded_text(key, MAX_REASON_BYTES).into_bytes()),
                (headers::SOURCE_TOPIC.into(), self.topics.source.clone().into_bytes()),
                (headers::SOURCE_PARTITION.into(), r.partition.to_string().into_bytes()),
                (headers::SOURCE_OFFSET.into(), r.offset.to_string().into_bytes()),
                (headers::DLQ_AT.into(), now_ms().to_string().into_bytes()),
            ],
        }
        .bounded()
    }

    /// Writes records and returns once the broker acknowledged all of them. A dead letter the broker
    /// refuses for good (its limit lower than ours) goes again as its reference: a worker that retried
    /// it would stop on it forever. Any other refused record (ledger, delivery) fails the call: on those
    /// compacted topics a reference would be a tombstone.
    async fn durable(&self, records: Vec<OutgoingRecord>) -> Result<()> {
        Ok(self.producer.send_all_or_references(&records, |r| r.topic == self.topics.dead_letter).await?)
    }
}

/// A delivery outcome as a `marketing.deliveries` record (key: the idempotency key). An outcome that
/// cannot be encoded is an error, never an empty value.
pub fn delivery_record(topic: &str, d: &Delivery) -> Result<OutgoingRecord, serde_json::Error> {
    Ok(OutgoingRecord {
        topic: topic.to_string(),
        partition: None,
        key: Some(d.idempotency_key.as_bytes().to_vec()),
        payload: Some(serde_json::to_vec(d)?),
        headers: vec![],
    })
}
