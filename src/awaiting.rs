//! Records set aside while the registry is asked for their writer schema.
//!
//! The consumer loop does not wait for the schema registry: a record whose writer schema id
//! is being looked up ([`crate::codec::lookups`]) is copied here with its offset's claim and
//! the loop goes on. When the registry answers, the loop takes that id's records back, in
//! read order, and decodes them again. The set is bounded ([`MAX_RECORDS`], [`MAX_BYTES`]):
//! while it is full the loop reads nothing more and waits for answers, so a registry outage
//! or a flood of unknown ids holds reading back instead of growing memory.
//!
//! Order: a record waiting here is scored after records of known writers read behind it,
//! so per-store order holds within one writer schema, and across a writer's first
//! appearance only up to one registry round trip.

use std::collections::HashMap;

use rdkafka::message::OwnedHeaders;

use crate::kafka::offsets::Ack;

/// Records held at most.
pub const MAX_RECORDS: usize = 4096;
/// Payload, key and header bytes held at most (one record larger than this is still taken, alone).
pub const MAX_BYTES: usize = 16 << 20;

/// One record waiting for its writer schema.
pub struct Waiting {
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub payload: Vec<u8>,
    /// The record's headers, for its dead letter if it becomes one.
    pub headers: Option<OwnedHeaders>,
    /// The claim on its offset.
    pub ack: Ack,
    /// Its Kafka timestamp.
    pub timestamp_ms: Option<i64>,
}

impl Waiting {
    fn bytes(&self) -> usize {
        let headers = self.headers.as_ref().map(OwnedHeaders::as_borrowed);
        let header_bytes = headers.map_or(0, crate::kafka::headers::byte_size);
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + header_bytes
    }
}

/// Records waiting, by writer schema id.
#[derive(Default)]
pub struct AwaitingSchema {
    by_id: HashMap<u32, Vec<Waiting>>,
    records: usize,
    bytes: usize,
}

impl AwaitingSchema {
    /// Sets `record` aside until `id` is answered.
    pub fn push(&mut self, id: u32, record: Waiting) {
        self.records += 1;
        self.bytes += record.bytes();
        self.by_id.entry(id).or_default().push(record);
    }

    /// The records of `id`, in read order.
    pub fn take(&mut self, id: u32) -> Vec<Waiting> {
        let records = self.by_id.remove(&id).unwrap_or_default();
        self.records -= records.len();
        self.bytes -= records.iter().map(Waiting::bytes).sum::<usize>();
        records
    }

    /// True when no more may be set aside.
    pub fn is_full(&self) -> bool {
        self.records >= MAX_RECORDS || self.bytes >= MAX_BYTES
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Drops every record (their offsets stay unfinished: read again by the next reader).
    pub fn clear(&mut self) {
        *self = AwaitingSchema::default();
    }
}
