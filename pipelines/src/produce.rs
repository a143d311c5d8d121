//! `touchpoint produce`: standard input to a topic, one record per line. A line is a record whatever
//! its bytes (the pipeline dead-letters what is malformed, with the reason); errors name the line.

use touchpoint_connectors::kafka::OutgoingRecord;

/// One record per non-blank line of `input` (`\n` or `\r\n` ends a line), with its 1-based line number.
/// The key is the line's `subject_id` when the line is a JSON object that has one.
pub fn records_from_lines(input: &[u8], topic: &str) -> Vec<(usize, OutgoingRecord)> {
    input
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(number, line)| {
            let key = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("subject_id").and_then(|s| s.as_str()).map(|s| s.trim().as_bytes().to_vec()));
            let record = OutgoingRecord {
                partition: None,
                topic: topic.to_string(),
                key,
                payload: Some(line.to_vec()),
                headers: vec![],
            };
            (number, record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_a_record_whatever_its_bytes() {
        let input = b"{\"subject_id\": \"u1\", \"event_type\": \"x\"}\r\n\n\xff\xfe not utf-8\n   \nplain text";
        let records = records_from_lines(input, "t");
        let lines: Vec<usize> = records.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [1, 3, 5], "blank lines are skipped, numbering is kept");
        assert_eq!(records[0].1.key.as_deref(), Some(&b"u1"[..]));
        assert_eq!(records[0].1.payload.as_deref(), Some(&b"{\"subject_id\": \"u1\", \"event_type\": \"x\"}"[..]));
        assert_eq!(records[1].1.payload.as_deref(), Some(&b"\xff\xfe not utf-8"[..]));
        assert_eq!(records[1].1.key, None);
        assert_eq!(records[2].1.payload.as_deref(), Some(&b"plain text"[..]));
    }
}
