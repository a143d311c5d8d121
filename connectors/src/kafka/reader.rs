//! Reads a whole topic from the beginning: for `touchpoint tail`, the demo's summary and tests.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::source::{high_watermark, log_bounds, partition_count, read_up_to};
use super::KafkaConfig;

/// A record read back, with its headers decoded as UTF-8 (lossy).
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (create or log-append time), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads every record of `topic` (all partitions, from the earliest offset) until the reader has been
/// idle for `idle` and has reached the high watermark of every partition, or `deadline` passed.
pub fn read_all(config: &KafkaConfig, topic: &str, idle: Duration, deadline: Duration) -> Result<Vec<ReadRecord>> {
    let partitions: Vec<i32> = (0..partition_count(config, topic)?).collect();
    read_partitions(config, topic, &partitions, idle, deadline, false)
}

/// [`read_all`] of some partitions only (a connector restores its ledger). `strict`: not reaching the
/// end before `deadline` is an error (a partial ledger would let done messages be sent again), instead
/// of a warning.
pub fn read_partitions(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    idle: Duration,
    deadline: Duration,
    strict: bool,
) -> Result<Vec<ReadRecord>> {
    let mut out = Vec::new();
    visit_partitions(config, topic, partitions, idle, deadline, strict, |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// [`read_partitions`], handing each record to `visit` as it is read instead of collecting them: a
/// restore folds a changelog into its state and holds the state, not the log (an uncompacted changelog
/// holds every version of every subject). An error from `visit` ends the read with it.
pub fn visit_partitions(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    idle: Duration,
    deadline: Duration,
    strict: bool,
    mut visit: impl FnMut(ReadRecord) -> Result<()>,
) -> Result<()> {
    let group = format!("touchpoint-reader-{}", std::process::id());
    let consumer: BaseConsumer = config.consumer_config(&group).create().context("creating reader")?;
    let mut next: std::collections::HashMap<i32, i64> =
        log_bounds(&consumer, topic, partitions, Duration::from_secs(10))?
            .into_iter()
            .map(|(p, (start, _))| (p, start))
            .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(next.get(&p).copied().unwrap_or(0)))?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last_record = Instant::now();
    loop {
        let mut got_record = false;
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                got_record = true;
                last_record = Instant::now();
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(n) = next.get_mut(&m.partition()) {
                    *n = m.offset() + 1;
                }
                visit(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp_ms: m.timestamp().to_millis(),
                })?;
            }
            Some(Err(e)) => return Err(e).context("reading topic"),
            None => {}
        }
        if started.elapsed() > deadline {
            if strict {
                let mut behind = Vec::new();
                for &p in partitions {
                    let at = next.get(&p).copied().unwrap_or(0);
                    let end = high_watermark(&consumer, topic, p)?;
                    if at < end {
                        behind.push(format!("partition {p} at offset {at} of {end}"));
                    }
                }
                // Every partition read to its end: complete, however late.
                if behind.is_empty() {
                    break;
                }
                anyhow::bail!("{topic}: not read to its end within {deadline:?} ({})", behind.join(", "));
            }
            tracing::warn!(topic, "read_all stopped at its deadline");
            break;
        }
        // Asking for the ends costs a broker round trip: only when nothing is waiting to be read.
        if !got_record && last_record.elapsed() >= idle {
            let position = consumer.position().ok();
            let mut caught_up = true;
            for &p in partitions {
                let high = high_watermark(&consumer, topic, p)?;
                if read_up_to(position.as_ref(), topic, p, next.get(&p).copied().unwrap_or(0)) < high {
                    caught_up = false;
                }
            }
            if caught_up {
                break;
            }
        }
    }
    Ok(())
}

/// One batch off a subscribed consumer: waits up to 500 ms for a first record, then takes records as
/// long as the next one comes within `gap`, up to `max`. A consumer error ends the batch after a short
/// pause (so a broker that keeps failing is not polled in a busy loop).
pub async fn recv_batch<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    max: usize,
    gap: Duration,
) -> Vec<rdkafka::message::BorrowedMessage<'_>> {
    let mut out = Vec::new();
    let mut wait = Duration::from_millis(500);
    while out.len() < max.max(1) {
        match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            Ok(Ok(m)) => out.push(m),
        }
        wait = gap;
    }
    out
}
