//! A producer whose writes complete only when the broker acknowledged every record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::channel::oneshot;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{KafkaConfig, OutgoingRecord};

/// How often a record librdkafka could not deliver (after its own retries) is sent again.
const DELIVERY_ATTEMPTS: u32 = 5;
/// How long a record may wait for room in the local producer queue before the attempt fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the broker said of one record: where it was stored, or why not.
type Outcome = Result<(i32, i64), KafkaError>;

/// Errors no resend can cure: the record itself is refused (too large, malformed). Sending it again
/// would stall the caller forever on one record.
pub fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

/// Why [`AckedProducer::send_all`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker (or librdkafka, before sending) refuses these records for good; the others were
    /// acknowledged. Not retried.
    #[error("{} record(s) refused for good, the first (#{}) for {}: {}", .refused.len(), .refused[0].0, .topic, .refused[0].1)]
    Refused {
        topic: String,
        /// (index in the call's records, error).
        refused: Vec<(usize, KafkaError)>,
        /// Per record: where it was stored, `None` for a refused one.
        acked: Vec<Option<(i32, i64)>>,
    },
    #[error("{pending} of {total} records were not acknowledged after {DELIVERY_ATTEMPTS} attempts")]
    NotAcknowledged { pending: usize, total: usize },
}

/// The acknowledgements of one round of [`AckedProducer::send_all`]. librdkafka's polling thread fills a
/// record's slot as its delivery report comes in, and wakes the waiting task once, when the last one is
/// in. (rdkafka's `FutureProducer` gives every record a oneshot channel and so wakes the task once per
/// record: in a profile of the pipeline, those wake-ups and the thread switches behind them were the
/// largest part of producing; benches/README.md, "Profiling" 19.)
struct Round {
    /// Records whose outcome is not in yet, plus one while records are still being enqueued.
    outstanding: AtomicUsize,
    outcomes: Mutex<Vec<Option<Outcome>>>,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Round {
    fn new(records: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (done, finished) = oneshot::channel();
        let round = Round {
            outstanding: AtomicUsize::new(1),
            outcomes: Mutex::new(vec![None; records]),
            done: Mutex::new(Some(done)),
        };
        (Arc::new(round), finished)
    }

    /// One more record is on its way (called before it is handed to librdkafka, whose report may come
    /// back before `send` returns).
    fn expect_one(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    fn settle(&self, slot: usize, outcome: Outcome) {
        if let Some(s) = lock(&self.outcomes).get_mut(slot) {
            *s = Some(outcome);
        }
        self.release();
    }

    /// Drops one count; the last one wakes the waiting task.
    fn release(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(done) = lock(&self.done).take() {
                let _ = done.send(());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands each delivery report to the round its record belongs to (client callbacks as rdkafka's
/// defaults: errors and logs go to the log).
struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<(Arc<Round>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (round, slot) = *opaque;
        let outcome = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        round.settle(slot, outcome);
    }
}

type Inner = ThreadedProducer<AckContext>;

#[derive(Clone)]
pub struct AckedProducer {
    inner: Arc<RwLock<Inner>>,
    config: Arc<ClientConfig>,
}

impl AckedProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let client_config = config.producer_config();
        let inner = client_config.create_with_context(AckContext).context("creating the Kafka producer")?;
        Ok(AckedProducer { inner: Arc::new(RwLock::new(inner)), config: Arc::new(client_config) })
    }

    fn producer(&self) -> Inner {
        self.inner.read().map_or_else(|poisoned| poisoned.into_inner().clone(), |p| p.clone())
    }

    /// An idempotent producer that hit a fatal error (e.g. `OUT_OF_ORDER_SEQUENCE_NUMBER` after the broker
    /// lost acknowledged records, or a fenced epoch) refuses every later record. Replace it: the
    /// unacknowledged records are sent again by a new producer (at-least-once, as for any resend).
    fn replace_if_fatal(&self) {
        let current = self.producer();
        let Some((code, reason)) = current.client().fatal_error() else { return };
        tracing::warn!(?code, %reason, "Kafka producer hit a fatal error; replacing it");
        match self.config.create_with_context::<_, Inner>(AckContext) {
            Ok(fresh) => {
                if let Ok(mut guard) = self.inner.write() {
                    *guard = fresh;
                }
            }
            Err(e) => tracing::error!(error = %e, "could not create a new Kafka producer"),
        }
    }

    /// Sends every record and returns their (partition, offset) once all are acknowledged. A record
    /// that fails is sent again on its own (the others are not repeated); after
    /// [`DELIVERY_ATTEMPTS`] the whole call fails. A record refused for good ([`is_permanent`]) is not
    /// sent again: the call ends with [`ProduceError::Refused`], naming it.
    pub async fn send_all(&self, records: &[OutgoingRecord]) -> Result<Vec<(i32, i64)>, ProduceError> {
        let mut acked: Vec<Option<(i32, i64)>> = vec![None; records.len()];
        let mut refused: Vec<(usize, KafkaError)> = Vec::new();
        let mut pending: Vec<usize> = (0..records.len()).collect();
        for attempt in 1..=DELIVERY_ATTEMPTS {
            let producer = self.producer();
            // Enqueue every record first (librdkafka batches them), then wait once for the whole round.
            let (round, finished) = Round::new(pending.len());
            for (slot, &i) in pending.iter().enumerate() {
                let r = &records[i];
                let mut record: BaseRecord<'_, [u8], [u8], _> =
                    BaseRecord::with_opaque_to(&r.topic, Box::new((round.clone(), slot))).headers(r.kafka_headers());
                if let Some(p) = r.partition {
                    record = record.partition(p);
                }
                if let Some(k) = &r.key {
                    record = record.key(k.as_slice());
                }
                if let Some(p) = &r.payload {
                    record = record.payload(p.as_slice());
                }
                round.expect_one();
                let queued = Instant::now();
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        // The local queue is full: wait for acknowledgements to make room.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                            if queued.elapsed() < QUEUE_TIMEOUT =>
                        {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => {
                            round.settle(slot, Err(e));
                            break;
                        }
                    }
                }
            }
            round.release();
            // The sender goes only with a value (the round is held here), so this ends when all are in.
            let _ = finished.await;
            let outcomes = std::mem::take(&mut *lock(&round.outcomes));
            let sent = std::mem::take(&mut pending);
            for (i, outcome) in sent.into_iter().zip(outcomes) {
                match outcome {
                    Some(Ok(position)) => acked[i] = Some(position),
                    Some(Err(e)) if is_permanent(&e) => {
                        tracing::error!(topic = %records[i].topic, error = %e, "record refused for good; not sent again");
                        refused.push((i, e));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(
                            topic = %records[i].topic,
                            attempt,
                            error = %e,
                            "record not acknowledged; will resend",
                        );
                        pending.push(i);
                    }
                    None => {
                        tracing::warn!(
                            topic = %records[i].topic,
                            attempt,
                            "record without a delivery report; will resend",
                        );
                        pending.push(i);
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            self.replace_if_fatal();
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        if !refused.is_empty() {
            let topic = records[refused[0].0].topic.clone();
            return Err(ProduceError::Refused { topic, refused, acked });
        }
        if !pending.is_empty() {
            return Err(ProduceError::NotAcknowledged { pending: pending.len(), total: records.len() });
        }
        Ok(acked.into_iter().flatten().collect())
    }

    /// [`Self::send_all`] where a reference may stand for a record: records refused for good, if
    /// `may_reference` accepts each of them, go again as their references
    /// ([`OutgoingRecord::into_reference`]) instead of failing the call. Only for topics that are not
    /// compacted: there a record without a value is a tombstone.
    pub async fn send_all_or_references(
        &self,
        records: &[OutgoingRecord],
        may_reference: impl Fn(&OutgoingRecord) -> bool,
    ) -> Result<(), ProduceError> {
        match self.send_all(records).await {
            Ok(_) => Ok(()),
            Err(ProduceError::Refused { refused, .. }) if refused.iter().all(|(i, _)| may_reference(&records[*i])) => {
                tracing::error!(records = refused.len(), "records refused for good; writing their references");
                let references: Vec<_> =
                    refused.into_iter().map(|(i, _)| records[i].clone().into_reference()).collect();
                self.send_all(&references).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer().flush(timeout).context("flushing the Kafka producer")
    }
}
