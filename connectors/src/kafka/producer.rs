//! A producer whose writes complete only when the broker acknowledged every record.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{KafkaConfig, OutgoingRecord};

/// How often a record librdkafka could not deliver (after its own retries) is sent again.
const DELIVERY_ATTEMPTS: u32 = 5;

#[derive(Clone)]
pub struct AckedProducer {
    inner: FutureProducer,
}

impl AckedProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let inner = config.producer_config().create().context("creating the Kafka producer")?;
        Ok(AckedProducer { inner })
    }

    /// Sends every record and returns their (partition, offset) once all are acknowledged. A record
    /// that fails is sent again on its own (the others are not repeated); after
    /// [`DELIVERY_ATTEMPTS`] the whole call fails.
    pub async fn send_all(&self, records: &[OutgoingRecord]) -> Result<Vec<(i32, i64)>> {
        let mut acked: Vec<Option<(i32, i64)>> = vec![None; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        for attempt in 1..=DELIVERY_ATTEMPTS {
            let sends = pending.iter().map(|&i| {
                let r = &records[i];
                let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic).headers(r.kafka_headers());
                if let Some(k) = &r.key {
                    fr = fr.key(k.as_slice());
                }
                if let Some(p) = &r.payload {
                    fr = fr.payload(p.as_slice());
                }
                let send = self.inner.send(fr, Timeout::After(Duration::from_secs(30)));
                async move { (i, send.await) }
            });
            let outcomes = join_all(sends).await;
            pending.clear();
            for (i, outcome) in outcomes {
                match outcome {
                    Ok(d) => acked[i] = Some((d.partition, d.offset)),
                    Err((e, _)) => {
                        tracing::warn!(topic = %records[i].topic, attempt, error = %e, "record not acknowledged; will resend");
                        pending.push(i);
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
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
        self.inner.flush(timeout).context("flushing the Kafka producer")
    }
}
