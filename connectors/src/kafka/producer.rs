//! A producer whose writes complete only when the broker acknowledged every record.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{KafkaConfig, OutgoingRecord};

/// How often a record librdkafka could not deliver (after its own retries) is sent again.
const DELIVERY_ATTEMPTS: u32 = 5;
/// How long a record may wait for room in the local producer queue before the attempt fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AckedProducer {
    inner: Arc<RwLock<FutureProducer>>,
    config: Arc<ClientConfig>,
}

impl AckedProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let client_config = config.producer_config();
        let inner = client_config.create().context("creating the Kafka producer")?;
        Ok(AckedProducer { inner: Arc::new(RwLock::new(inner)), config: Arc::new(client_config) })
    }

    fn producer(&self) -> FutureProducer {
        self.inner.read().map_or_else(|poisoned| poisoned.into_inner().clone(), |p| p.clone())
    }

    /// An idempotent producer that hit a fatal error (the local broker answers some produce requests
    /// with `PRODUCER_FENCED`, see docs/broker-quirks.md) refuses every later record. Replace it: the
    /// unacknowledged records are sent again by a new producer (at-least-once, as for any resend).
    fn replace_if_fatal(&self) {
        let current = self.producer();
        let Some((code, reason)) = current.client().fatal_error() else { return };
        tracing::warn!(?code, %reason, "Kafka producer hit a fatal error; replacing it");
        match self.config.create::<FutureProducer>() {
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
    /// [`DELIVERY_ATTEMPTS`] the whole call fails.
    pub async fn send_all(&self, records: &[OutgoingRecord]) -> Result<Vec<(i32, i64)>> {
        let mut acked: Vec<Option<(i32, i64)>> = vec![None; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        for attempt in 1..=DELIVERY_ATTEMPTS {
            let producer = self.producer();
            // Enqueue every record first (librdkafka batches them), then wait for the acknowledgements:
            // only the small delivery futures are awaited, not one `send` future per record (moving
            // thousands of those around took a sixth of the sink threads' time in a profile).
            let mut sends = Vec::with_capacity(pending.len());
            for &i in &pending {
                let r = &records[i];
                let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic).headers(r.kafka_headers());
                if let Some(p) = r.partition {
                    fr = fr.partition(p);
                }
                if let Some(k) = &r.key {
                    fr = fr.key(k.as_slice());
                }
                if let Some(p) = &r.payload {
                    fr = fr.payload(p.as_slice());
                }
                let queued = Instant::now();
                let delivery = loop {
                    match producer.send_result(fr) {
                        Ok(delivery) => break Ok(delivery),
                        // The local queue is full: wait for acknowledgements to make room.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                            if queued.elapsed() < QUEUE_TIMEOUT =>
                        {
                            fr = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => break Err(e),
                    }
                };
                sends.push(async move {
                    let outcome = match delivery {
                        Ok(delivery) => match delivery.await {
                            Ok(Ok(d)) => Ok(d),
                            Ok(Err((e, _))) => Err(e),
                            Err(_canceled) => Err(KafkaError::Canceled),
                        },
                        Err(e) => Err(e),
                    };
                    (i, outcome)
                });
            }
            let outcomes = join_all(sends).await;
            pending.clear();
            for (i, outcome) in outcomes {
                match outcome {
                    Ok(d) => acked[i] = Some((d.partition, d.offset)),
                    Err(e) => {
                        tracing::warn!(topic = %records[i].topic, attempt, error = %e, "record not acknowledged; will resend");
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
        if !pending.is_empty() {
            bail!(
                "{} of {} records were not acknowledged after {DELIVERY_ATTEMPTS} attempts",
                pending.len(),
                records.len()
            );
        }
        Ok(acked.into_iter().flatten().collect())
    }

    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer().flush(timeout).context("flushing the Kafka producer")
    }
}
