//! The prediction record, the same in a JSONL file and on Kafka:
//!
//! ```json
//! {"event_id": "ev-1", "store_id": "S1", "prediction": 123.4, "model_version": "v7", "model": "partition"}
//! ```
//!
//! The partition column keeps its own name and the value the event gave it; `event_id` is
//! written when the event had one. On Kafka the record key is the partition id and the header
//! `model-version` carries the version.

use std::io::Write;

use crate::event::Event;
use crate::model::bundle::ModelSource;

/// The Kafka header that carries the model version.
pub const VERSION_HEADER: &str = "model-version";

/// Appends the JSON prediction record for `event` to `buf` (no newline).
pub fn write_json(
    buf: &mut Vec<u8>,
    partition_column: &str,
    event: &Event,
    prediction: f64,
    version: &str,
    source: ModelSource,
) {
    // Writing JSON values into a Vec cannot fail, so the results are ignored.
    buf.push(b'{');
    if let Some(id) = &event.event_id {
        buf.extend_from_slice(b"\"event_id\":");
        let _ = serde_json::to_writer(&mut *buf, id);
        buf.push(b',');
    }
    let _ = serde_json::to_writer(&mut *buf, partition_column);
    buf.push(b':');
    let _ = serde_json::to_writer(&mut *buf, &event.partition_value);
    let _ = write!(buf, ",\"prediction\":");
    let _ = serde_json::to_writer(&mut *buf, &prediction);
    buf.extend_from_slice(b",\"model_version\":");
    let _ = serde_json::to_writer(&mut *buf, version);
    let _ = write!(buf, ",\"model\":\"{}\"}}", source.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_record_keeps_the_partition_column_name_and_event_id() {
        let event = Event {
            partition: "S1".into(),
            partition_value: json!("S1"),
            event_id: Some(json!("ev-1")),
            inputs: vec![],
        };
        let mut buf = Vec::new();
        write_json(
            &mut buf,
            "store_id",
            &event,
            123.4,
            "v7",
            ModelSource::Partition,
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            json!({"event_id": "ev-1", "store_id": "S1", "prediction": 123.4, "model_version": "v7", "model": "partition"})
        );
    }
}
