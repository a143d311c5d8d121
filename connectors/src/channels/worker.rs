//! The connector worker (`touchpoint connect --channel <c>`): consumes `connector.<channel>` in a
//! consumer group and delivers each message exactly once through a [`ChannelClient`].
//!
//! Per round: fetch up to `batch` records; per partition (several partitions at once, one message at a
//! time within a partition, so a subject's messages keep their order) look the idempotency key up in
//! the [`Ledger`], then rate limit → breaker → `attempting` in the ledger → send → outcome (ledger
//! `done`, `marketing.deliveries`, and on failure `connector.<channel>.dlq`) acknowledged by the broker
//! → next message. Offsets are committed only after every outcome of the round is durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use touchpoint_schemas::channel::{delivery_id, DeliverySource};
use touchpoint_schemas::{ChannelMessage, Delivery, DeliveryStatus};

use super::breaker::{BreakerConfig, SharedBreaker};
use super::envelope;
use super::ledger::{Ledger, LedgerEntry};
use super::rate_limit::{RateLimitConfig, RateLimiter};
use super::retry::RetryPolicy;
use super::{ChannelClient, DeliveryRef, ProviderStatus, SendError};
use crate::kafka::{AckedProducer, KafkaConfig, OutgoingRecord, TopicSpec};

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
    pub fn new(prefix: &str, channel: &str, deliveries: &str) -> Self {
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
            TopicSpec { name: self.ledger.clone(), partitions, retention: None, compacted: true },
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
    pub async fn run(&self, stop: Arc<AtomicBool>) -> Result<()> {
        let consumer: StreamConsumer<RevokeTracker> = self
            .kafka
            .consumer_config(&self.group_id)
            .create_with_context(RevokeTracker::default())
            .context("creating the connector's consumer")?;
        consumer.subscribe(&[&self.topics.source]).context("subscribing")?;
        tracing::info!(channel = self.client.channel(), topic = %self.topics.source, group = %self.group_id, "connector worker started");
        let mut ledgers: HashMap<i32, Ledger> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let batch = self.fetch(&consumer).await?;
            if let Ok(mut revoked) = consumer.context().revoked.lock() {
                for p in revoked.drain() {
                    ledgers.remove(&p);
                }
            }
            if batch.is_empty() {
                continue;
            }
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
            let outcomes: Vec<(i32, Ledger, Result<i64>)> = futures::stream::iter(work)
                .map(|(p, mut ledger, records)| async move {
                    let result = self.process_partition(p, &mut ledger, &records).await;
                    (p, ledger, result)
                })
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await;
            let mut commit = TopicPartitionList::new();
            for (p, ledger, result) in outcomes {
                let next = result.with_context(|| format!("{} partition {p}", self.topics.source))?;
                ledgers.insert(p, ledger);
                commit.add_partition_offset(&self.topics.source, p, Offset::Offset(next))?;
            }
            // Every outcome of the round is acknowledged by the broker: now the offsets may move.
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing offsets failed (a rebalance?); the ledger covers a re-read");
            }
            tracing::debug!(stats = %self.stats.summary(), "round done");
        }
        tracing::info!(channel = self.client.channel(), stats = %self.stats.summary(), "connector worker stopped");
        Ok(())
    }

    async fn fetch(&self, consumer: &StreamConsumer<RevokeTracker>) -> Result<Vec<Incoming>> {
        let mut out = Vec::new();
        let mut wait = Duration::from_millis(500);
        while out.len() < self.settings.batch.max(1) {
            let m = match tokio::time::timeout(wait, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Ok(Ok(m)) => m,
            };
            let idempotency_header = m.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == "tp.idempotency_key")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            });
            out.push(Incoming {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                idempotency_header,
            });
            wait = Duration::from_millis(20);
        }
        WorkerStats::bump_by(&self.stats.received, out.len());
        Ok(out)
    }

    /// Reads the ledger of partitions this worker got (at start, or after a rebalance).
    async fn restore_ledgers(&self, partitions: Vec<i32>) -> Result<HashMap<i32, Ledger>> {
        let kafka = self.kafka.clone();
        let topic = self.topics.ledger.clone();
        let started = std::time::Instant::now();
        let ledgers = tokio::task::spawn_blocking(move || Ledger::restore(&kafka, &topic, &partitions))
            .await
            .context("restoring the ledger")??;
        for (p, l) in &ledgers {
            tracing::info!(topic = %self.topics.ledger, partition = p, keys = l.len(), elapsed = ?started.elapsed(), "ledger restored");
        }
        Ok(ledgers)
    }

    /// Handles the records of one partition in order; returns the next offset to commit.
    async fn process_partition(&self, partition: i32, ledger: &mut Ledger, records: &[Incoming]) -> Result<i64> {
        let mut next = 0;
        for r in records {
            self.handle(partition, ledger, r).await?;
            next = r.offset + 1;
        }
        Ok(next)
    }

    async fn handle(&self, partition: i32, ledger: &mut Ledger, r: &Incoming) -> Result<()> {
        let message = match envelope::decode(r.payload.as_deref()) {
            Ok(m) => m,
            Err(reason) => {
                tracing::warn!(partition, offset = r.offset, %reason, "not a channel message; dead-lettered");
                let key = r.idempotency_header.clone().unwrap_or_default();
                let dlq = self.dead_letter_record(r, &key, "invalid", &reason, 0);
                self.durable(vec![dlq]).await?;
                WorkerStats::bump(&self.stats.dead_lettered);
                return Ok(());
            }
        };
        let key = message.idempotency_key.clone();
        let mut attempt = 1;
        match ledger.get(&key).cloned() {
            Some(LedgerEntry::Done { attempt, outcome, provider_message_id, reason }) => {
                // Delivered (or dead-lettered) before a restart: never again. Its delivery event is
                // produced again in case the crash came between the ledger and that event (the
                // `deliveries` table keeps one row per key, status and attempt).
                WorkerStats::bump(&self.stats.already_done);
                let d =
                    self.delivery(&message, outcome, attempt, provider_message_id, reason, DeliverySource::Connector);
                return self.durable(vec![self.delivery_record(&d)]).await;
            }
            Some(LedgerEntry::Attempting { attempt: in_doubt }) => {
                let lookup = DeliveryRef {
                    delivery_id: message.delivery_id(),
                    idempotency_key: key.clone(),
                    provider_message_id: None,
                };
                match self.client.status(&lookup).await {
                    Ok(ProviderStatus::Accepted) | Ok(ProviderStatus::Delivered) | Ok(ProviderStatus::Failed(_)) => {
                        tracing::info!(%key, "in-doubt attempt found at the provider; not sent again");
                        WorkerStats::bump(&self.stats.reconciled);
                        return self
                            .finish_sent(partition, ledger, &message, in_doubt, None, DeliverySource::Reconciled)
                            .await;
                    }
                    Ok(ProviderStatus::NotFound) => {}
                    Ok(ProviderStatus::Unknown) | Err(_) => {
                        tracing::warn!(%key, "in-doubt attempt the provider cannot confirm; sending again with the same id");
                        WorkerStats::bump(&self.stats.resent_in_doubt);
                    }
                }
                attempt = in_doubt + 1;
            }
            None => {}
        }
        self.deliver(partition, ledger, r, &message, attempt).await
    }

    async fn deliver(
        &self,
        partition: i32,
        ledger: &mut Ledger,
        r: &Incoming,
        message: &ChannelMessage,
        mut attempt: u32,
    ) -> Result<()> {
        let key = &message.idempotency_key;
        loop {
            // While the breaker is open messages wait here: not failed, no attempt spent.
            self.breaker.wait_for_permit().await;
            self.limiter.acquire().await;
            let entry = LedgerEntry::Attempting { attempt };
            self.durable(vec![Ledger::record(&self.topics.ledger, partition, key, &entry)]).await?;
            ledger.apply(key, entry);
            match self.client.send(message).await {
                Ok(receipt) => {
                    self.breaker.on_success();
                    return self
                        .finish_sent(
                            partition,
                            ledger,
                            message,
                            attempt,
                            receipt.provider_message_id,
                            DeliverySource::Connector,
                        )
                        .await;
                }
                Err(SendError::Permanent { reason, bounce }) => {
                    // The provider answered: it is healthy, the message is not.
                    self.breaker.on_success();
                    let status = if bounce { DeliveryStatus::Bounced } else { DeliveryStatus::Failed };
                    return self.dead_letter(partition, ledger, r, message, status, &reason, attempt).await;
                }
                Err(SendError::Transient { reason, retry_after }) => {
                    self.breaker.on_failure();
                    if self.settings.retry.exhausted(attempt) {
                        let reason = format!("gave up after {attempt} attempts: {reason}");
                        return self
                            .dead_letter(partition, ledger, r, message, DeliveryStatus::Failed, &reason, attempt)
                            .await;
                    }
                    let wait = self.settings.retry.backoff(attempt, retry_after, fastrand::f64());
                    tracing::debug!(%key, attempt, ?wait, %reason, "transient failure; will retry");
                    WorkerStats::bump(&self.stats.retries);
                    let d = self.delivery(
                        message,
                        DeliveryStatus::Retrying,
                        attempt,
                        None,
                        Some(reason),
                        DeliverySource::Connector,
                    );
                    self.durable(vec![self.delivery_record(&d)]).await?;
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn finish_sent(
        &self,
        partition: i32,
        ledger: &mut Ledger,
        message: &ChannelMessage,
        attempt: u32,
        provider_message_id: Option<String>,
        source: DeliverySource,
    ) -> Result<()> {
        let entry = LedgerEntry::Done {
            attempt,
            outcome: DeliveryStatus::Sent,
            provider_message_id: provider_message_id.clone(),
            reason: None,
        };
        let d = self.delivery(message, DeliveryStatus::Sent, attempt, provider_message_id, None, source);
        self.durable(vec![
            Ledger::record(&self.topics.ledger, partition, &message.idempotency_key, &entry),
            self.delivery_record(&d),
        ])
        .await?;
        ledger.apply(&message.idempotency_key, entry);
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
        let entry = LedgerEntry::Done {
            attempt,
            outcome: DeliveryStatus::DeadLettered,
            provider_message_id: None,
            reason: Some(reason.to_string()),
        };
        let failed = self.delivery(message, status, attempt, None, Some(reason.to_string()), DeliverySource::Connector);
        let placed = self.delivery(
            message,
            DeliveryStatus::DeadLettered,
            attempt,
            None,
            Some(reason.to_string()),
            DeliverySource::Connector,
        );
        self.durable(vec![
            self.dead_letter_record(r, key, status.as_str(), reason, attempt),
            self.delivery_record(&failed),
            self.delivery_record(&placed),
            Ledger::record(&self.topics.ledger, partition, key, &entry),
        ])
        .await?;
        ledger.apply(key, entry);
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
            channel: self.client.channel().to_string(),
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

    fn delivery_record(&self, d: &Delivery) -> OutgoingRecord {
        delivery_record(&self.topics.deliveries, d)
    }

    fn dead_letter_record(&self, r: &Incoming, key: &str, status: &str, reason: &str, attempts: u32) -> OutgoingRecord {
        OutgoingRecord {
            topic: self.topics.dead_letter.clone(),
            partition: None,
            key: r.key.clone(),
            payload: r.payload.clone(),
            headers: vec![
                ("tp.dlq.reason".into(), reason.as_bytes().to_vec()),
                ("tp.dlq.status".into(), status.as_bytes().to_vec()),
                ("tp.dlq.attempts".into(), attempts.to_string().into_bytes()),
                ("tp.idempotency_key".into(), key.as_bytes().to_vec()),
                ("tp.source.topic".into(), self.topics.source.clone().into_bytes()),
                ("tp.source.partition".into(), r.partition.to_string().into_bytes()),
                ("tp.source.offset".into(), r.offset.to_string().into_bytes()),
                ("tp.dlq.at".into(), now_ms().to_string().into_bytes()),
            ],
        }
    }

    /// Writes records and returns once the broker acknowledged all of them.
    async fn durable(&self, records: Vec<OutgoingRecord>) -> Result<()> {
        self.producer.send_all(&records).await.map(|_| ())
    }
}

impl WorkerStats {
    fn bump_by(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
    }
}

/// A delivery outcome as a `marketing.deliveries` record (key: the idempotency key).
pub fn delivery_record(topic: &str, d: &Delivery) -> OutgoingRecord {
    OutgoingRecord {
        topic: topic.to_string(),
        partition: None,
        key: Some(d.idempotency_key.as_bytes().to_vec()),
        payload: serde_json::to_vec(d).ok(),
        headers: vec![],
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
