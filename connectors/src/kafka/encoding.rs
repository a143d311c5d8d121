//! Records the pipeline writes to Kafka, owned so they can travel between threads and be retried.

use rdkafka::message::{Header, OwnedHeaders};

/// Serializable: under `exactly_once_v2` every worker's records travel to the one committing worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutgoingRecord {
    pub topic: String,
    /// `None`: the partitioner picks one from the key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutgoingRecord {
    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(OwnedHeaders::new_with_capacity(self.headers.len()), |h, (k, v)| {
            h.insert(Header { key: k, value: Some(v) })
        })
    }
}
