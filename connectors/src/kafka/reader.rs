//! Reads a whole topic from the beginning: for `touchpoint tail`, the demo's summary and tests.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::source::{high_watermark, partition_count};
use super::KafkaConfig;

/// A record read back, with its headers decoded as UTF-8 (lossy).
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads every record of `topic` (all partitions, from the earliest offset) until the reader has been
/// idle for `idle` and has reached the high watermark of every partition, or `deadline` passed.
pub fn read_all(config: &KafkaConfig, topic: &str, idle: Duration, deadline: Duration) -> Result<Vec<ReadRecord>> {
    let group = format!("touchpoint-reader-{}", std::process::id());
    let consumer: BaseConsumer = config.consumer_config(&group).create().context("creating reader")?;
    let partitions = partition_count(config, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last_record = Instant::now();
    let mut out = Vec::new();
    let mut next = vec![0i64; usize::try_from(partitions).unwrap_or(0)];
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
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
                if let Some(n) = next.get_mut(usize::try_from(m.partition()).unwrap_or(0)) {
                    *n = m.offset() + 1;
                }
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(e)) => return Err(e).context("reading topic"),
            None => {}
        }
        if started.elapsed() > deadline {
            tracing::warn!(topic, "read_all stopped at its deadline");
            break;
        }
        if last_record.elapsed() >= idle {
            let mut caught_up = true;
            for p in 0..partitions {
                let high = high_watermark(&consumer, topic, p)?;
                if next[usize::try_from(p).unwrap_or(0)] < high {
                    caught_up = false;
                }
            }
            if caught_up {
                break;
            }
        }
    }
    Ok(out)
}
