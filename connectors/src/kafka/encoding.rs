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

/// The largest record a sink writes in full: under librdkafka's default `message.max.bytes`
/// (1,000,000) and the broker's (1,048,588), with room for the batch framing. A larger record (a dead
/// letter of a near-limit event, with its headers) is written as a reference ([`OutgoingRecord::bounded`]).
pub const MAX_RECORD_BYTES: usize = 900_000;

/// A reason or message written into a header is cut to this many bytes (a producer chooses what a
/// rejection message quotes: an event type of 600 KB must not make a 1.2 MB dead letter).
pub const MAX_REASON_BYTES: usize = 1_000;

/// `text` cut to at most `max` bytes on a character boundary, saying how long it was.
pub fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(32);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

impl OutgoingRecord {
    /// Bytes of key, value and headers: what the record weighs against `message.max.bytes`.
    pub fn encoded_len(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    /// The record without its key and value, with a header saying how large it was: what a sink
    /// writes instead of a record the broker would refuse. Its other headers (reason, source topic,
    /// partition and offset) say where the original is.
    pub fn into_reference(self) -> Self {
        let bytes = self.encoded_len();
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .into_iter()
            .map(|(k, v)| {
                let v = if v.len() > MAX_REASON_BYTES {
                    bounded_text(&String::from_utf8_lossy(&v), MAX_REASON_BYTES).into_bytes()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        headers.push((touchpoint_schemas::headers::ORIGINAL_BYTES.into(), bytes.to_string().into_bytes()));
        OutgoingRecord { topic: self.topic, partition: self.partition, key: None, payload: None, headers }
    }

    /// The record, or its reference when it exceeds [`MAX_RECORD_BYTES`].
    pub fn bounded(self) -> Self {
        let bytes = self.encoded_len();
        if bytes <= MAX_RECORD_BYTES {
            return self;
        }
        tracing::warn!(topic = %self.topic, bytes, "record too large to write in full; writing a reference");
        self.into_reference()
    }

    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(OwnedHeaders::new_with_capacity(self.headers.len()), |h, (k, v)| {
            h.insert(Header { key: k, value: Some(v) })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: usize, reason: usize) -> OutgoingRecord {
        OutgoingRecord {
            topic: "t.dlq".into(),
            partition: None,
            key: Some(b"k".to_vec()),
            payload: Some(vec![b'x'; payload]),
            headers: vec![
                ("tp.error.message".into(), "é".repeat(reason).into_bytes()),
                ("tp.source.offset".into(), b"7".to_vec()),
            ],
        }
    }

    #[test]
    fn texts_are_cut_on_a_character_boundary_and_say_their_length() {
        assert_eq!(bounded_text("short", 10), "short");
        let long = "é".repeat(1_000);
        let cut = bounded_text(&long, 100);
        assert!(cut.len() <= 100 && cut.ends_with("… (2000 bytes)"), "{cut}");
    }

    #[test]
    fn a_record_over_the_bound_becomes_a_reference_that_keeps_its_position() {
        let small = record(10, 10);
        assert_eq!(small.clone().bounded(), small);
        let large = record(MAX_RECORD_BYTES, 5_000);
        let size = large.encoded_len();
        let reference = large.bounded();
        assert_eq!((reference.key.as_ref(), reference.payload.as_ref()), (None, None));
        assert!(reference.encoded_len() < 2 * MAX_REASON_BYTES + 100, "{}", reference.encoded_len());
        let header = |name: &str| reference.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(header("tp.source.offset"), Some(b"7".to_vec()));
        assert_eq!(header(touchpoint_schemas::headers::ORIGINAL_BYTES), Some(size.to_string().into_bytes()));
    }
}
