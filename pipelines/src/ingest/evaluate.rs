//! `POST /internal/automation/evaluate`: the API side of a dry run. The keyed state lives in the
//! pipeline's timely workers, so the API asks them through Kafka: a request record to
//! `<group>.evaluate-requests` (read by the dataflow like a consent change, exchanged to the worker that
//! owns the subject, answered after its epoch), and the answer back on `<group>.evaluate-replies`, which
//! every API process reads from its end and hands to the request waiting for that correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use touchpoint_connectors::kafka::{ensure_topics, partition_count, AckedProducer, OutgoingRecord, PartitionSource};
use touchpoint_operators::evaluate::{EvaluateReply, EvaluateRequest};

/// Requests waiting for their answer, by correlation id.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<EvaluateReply>>>>;

pub struct Evaluator {
    producer: AckedProducer,
    requests_topic: String,
    waiting: Waiting,
    next: AtomicU64,
    /// This process's prefix of correlation ids (several API processes read the same replies).
    prefix: String,
    stop: Arc<AtomicBool>,
}

/// Why a dry run has no answer.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("the request could not be produced: {0}")]
    Produce(String),
    #[error("the pipeline did not answer within {0:?} (is `touchpoint run` up?)")]
    NoAnswer(Duration),
}

impl Evaluator {
    /// Creates the topics if missing, assigns every replies partition at its end (before any request
    /// goes out, so no answer can be missed) and starts the thread that reads them.
    pub async fn start(config: &crate::PipelineConfig, producer: AckedProducer) -> Result<Self> {
        let group = &config.pipeline.group_id;
        let (requests, replies) = (config.topics.evaluate_requests(group), config.topics.evaluate_replies(group));
        ensure_topics(&config.kafka, &[requests.clone(), replies.clone()]).await?;
        let partitions = partition_count(&config.kafka, &replies.name)?;
        let mut source = PartitionSource::open_from_end(
            &config.kafka,
            &format!("{group}.ingest"),
            &replies.name,
            (0..partitions).collect(),
        )
        .context("reading the evaluate replies")?;
        let waiting: Waiting = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (waiting.clone(), stop.clone());
        std::thread::Builder::new().name("evaluate-replies".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match source.poll(Duration::from_millis(100)) {
                    Ok(Some(record)) => {
                        let Ok(reply) =
                            serde_json::from_slice::<EvaluateReply>(record.payload.as_deref().unwrap_or_default())
                        else {
                            continue;
                        };
                        // Another process's request, or one that timed out: nobody waits.
                        let waiter = w.lock().unwrap_or_else(|p| p.into_inner()).remove(&reply.correlation_id);
                        if let Some(tx) = waiter {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "reading evaluate replies"),
                }
            }
        })?;
        let prefix = format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(format!("{}-{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes())
        );
        Ok(Evaluator { producer, requests_topic: requests.name, waiting, next: AtomicU64::new(0), prefix, stop })
    }

    /// A fresh correlation id.
    pub fn correlation_id(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Asks the worker that owns the subject and waits for its answer.
    pub async fn ask(&self, request: EvaluateRequest, timeout: Duration) -> Result<EvaluateReply, EvaluateError> {
        let id = request.correlation_id.clone();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), tx);
        let forget = || self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let record = OutgoingRecord {
            topic: self.requests_topic.clone(),
            partition: None,
            key: Some(format!("{}/{}", request.tenant_id, request.subject_id).into_bytes()),
            payload: Some(serde_json::to_vec(&request).unwrap_or_default()),
            headers: Vec::new(),
        };
        let produced = tokio::time::timeout(timeout, self.producer.send_all(std::slice::from_ref(&record))).await;
        match produced {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                forget();
                return Err(EvaluateError::Produce(e.to_string()));
            }
            Err(_) => {
                forget();
                return Err(EvaluateError::Produce(format!("no acknowledgement within {timeout:?}")));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(EvaluateError::NoAnswer(timeout))
            }
        }
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
