//! The publishing side: `manymodel publish` and `manymodel control activate|rollback`.
//!
//! Everything goes to Kafka partition 0 of the control topic through an idempotent producer,
//! so the daemons read chunks, manifest and commands in the order they were sent. When a
//! chunks topic `<control topic>-chunks` exists, the chunks go to its partition 0 instead and
//! the manifest, sent once they are all acknowledged, says at which offsets they are: the
//! control topic stays small, and a restart fetches only the chunks it needs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::assembly::sha256_hex;
use super::message::{chunk_headers, ChunkLocation, ControlMessage, Manifest};
use super::signing::BundleSigner;
use crate::error::{Error, Result};
use crate::kafka::connection::Connection;
use crate::model::bundle::Bundle;
use crate::plural::count;

/// The chunk size `publish` uses unless told otherwise: well below the 1 MB default message
/// limit of Kafka brokers.
pub const DEFAULT_CHUNK_BYTES: usize = 512 * 1024;

/// What `publish` was asked to do.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Bootstrap servers and librdkafka options.
    pub connection: Connection,
    /// The control topic.
    pub control_topic: String,
    /// The secret key to sign with.
    pub signing_key: Option<PathBuf>,
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// Activate on arrival (otherwise only held, for `control activate`).
    pub activate: bool,
}

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    /// The manifest sent after the chunks.
    pub manifest: Manifest,
    /// Partitions in the bundle.
    pub partitions: usize,
    /// Wall time until the broker acknowledged everything.
    pub seconds: f64,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "published {}{} ({}, {} bytes in {}, sha256 {}{}) in {:.2}s{}",
            m.version,
            m.base_version
                .as_ref()
                .map(|b| format!(", a delta of {b}"))
                .unwrap_or_default(),
            count(self.partitions, "partition"),
            m.size,
            count(m.chunks as usize, "chunk"),
            m.sha256,
            if m.signature.is_some() {
                ", signed"
            } else {
                ""
            },
            self.seconds,
            if m.activate {
                ""
            } else {
                "; held, not activated"
            }
        )?;
        if m.chunks_at.is_none() {
            writeln!(
                f,
                "note: the chunks went into the control topic itself, because it has no chunks topic beside it; every daemon replays them at each restart. Create the chunks topic (`<control topic>-chunks`, 1 Kafka partition) so that restarts fetch only the active version (README, Hot reload)"
            )?;
        }
        Ok(())
    }
}

/// Publishes a bundle file: its chunks, then its manifest.
pub fn publish(opts: &PublishOptions) -> Result<Published> {
    let bytes = std::fs::read(&opts.bundle).map_err(|e| Error::io(&opts.bundle, e))?;
    let signer = opts
        .signing_key
        .as_deref()
        .map(BundleSigner::load)
        .transpose()?;
    publish_bytes(&bytes, opts, signer.as_ref()).map_err(|e| match e {
        Error::Usage(reason) => Error::Usage(format!(
            "not publishing {}: {reason}",
            opts.bundle.display()
        )),
        other => other,
    })
}

/// Publishes bundle file bytes; `opts.bundle` and `opts.signing_key` are not read.
pub fn publish_bytes(
    bytes: &[u8],
    opts: &PublishOptions,
    signer: Option<&BundleSigner>,
) -> Result<Published> {
    let started = Instant::now();
    let bundle = Bundle::from_avro(bytes).map_err(|e| Error::Usage(e.to_string()))?;
    let chunk_bytes = opts.chunk_bytes.max(1);
    let digest_hex = sha256_hex(bytes);
    let (signature, signer_hex) = match signer {
        Some(s) => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&digest_hex, &mut digest)
                .map_err(|e| Error::Internal(format!("digest: {e}")))?;
            (Some(s.sign(&digest)), Some(s.public_hex()))
        }
        None => (None, None),
    };
    let chunks: Vec<&[u8]> = bytes.chunks(chunk_bytes).collect();
    let manifest = Manifest {
        publish_id: random_id(),
        version: bundle.version.clone(),
        base_version: bundle.base_version.clone(),
        size: bytes.len() as u64,
        chunks: chunks.len() as u32,
        sha256: digest_hex,
        signature,
        signer: signer_hex,
        activate: opts.activate,
        published_at_ms: chrono::Utc::now().timestamp_millis(),
        chunks_at: None,
    };
    let mut manifest = manifest;
    let producer = ControlProducer::new(&opts.connection, &opts.control_topic, chunk_bytes)?;
    let chunks_topic = chunks_topic(&opts.control_topic);
    let separate = producer.topic_exists(&chunks_topic);
    let to = if separate {
        chunks_topic.as_str()
    } else {
        opts.control_topic.as_str()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        producer.send(
            BaseRecord::to(to)
                .partition(0)
                .key(manifest.version.as_bytes())
                .payload(*chunk)
                .headers(chunk_headers(&manifest.publish_id, i as u32)),
        )?;
    }
    if separate {
        producer.flush()?;
        let (first, last) = producer
            .delivered_range(&chunks_topic)
            .ok_or_else(|| Error::Kafka(format!("{chunks_topic} acknowledged no chunk offsets")))?;
        manifest.chunks_at = Some(ChunkLocation {
            topic: chunks_topic.clone(),
            partition: 0,
            first_offset: first,
            last_offset: last,
        });
    }
    let text = serde_json::to_vec(&ControlMessage::Manifest(manifest.clone()))
        .map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    producer.send(
        BaseRecord::to(&opts.control_topic)
            .partition(0)
            .key(manifest.version.as_bytes())
            .payload(&text),
    )?;
    producer.finish()?;
    Ok(Published {
        partitions: bundle.partitions.len(),
        manifest,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Sends one command (`activate`, `rollback`) to the control topic.
pub fn command(
    connection: &Connection,
    control_topic: &str,
    message: &ControlMessage,
) -> Result<()> {
    let text = serde_json::to_vec(message).map_err(|e| Error::Internal(format!("command: {e}")))?;
    let producer = ControlProducer::new(connection, control_topic, 0)?;
    producer.send(
        BaseRecord::<[u8], [u8]>::to(control_topic)
            .partition(0)
            .payload(&text),
    )?;
    producer.finish()
}

/// The chunks topic beside `control_topic`, used when it exists.
pub fn chunks_topic(control_topic: &str) -> String {
    format!("{control_topic}-chunks")
}

fn random_id() -> String {
    let mut id = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut id);
    hex::encode(id)
}

/// Remembers the first failed delivery, and the offsets delivered per topic.
#[derive(Default)]
struct FirstError(
    Mutex<Option<String>>,
    Mutex<std::collections::HashMap<String, (i64, i64)>>,
);

impl ClientContext for FirstError {}

impl ProducerContext for FirstError {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Err((e, _)) => {
                if let Ok(mut first) = self.0.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
            Ok(m) => {
                use rdkafka::Message;
                if let Ok(mut ranges) = self.1.lock() {
                    let r = ranges
                        .entry(m.topic().to_owned())
                        .or_insert((m.offset(), m.offset()));
                    *r = (r.0.min(m.offset()), r.1.max(m.offset()));
                }
            }
        }
    }
}

/// A producer that sends in order and reports the first failure.
struct ControlProducer {
    producer: BaseProducer<FirstError>,
    brokers: String,
    topic: String,
}

impl ControlProducer {
    fn new(connection: &Connection, topic: &str, chunk_bytes: usize) -> Result<Self> {
        let brokers = &connection.brokers;
        let producer: BaseProducer<FirstError> = connection
            .producer_side_config(&[])
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set(
                "message.max.bytes",
                (chunk_bytes + 64 * 1024).max(1_000_000).to_string(),
            )
            .create_with_context(FirstError::default())
            .map_err(|e| Error::Kafka(format!("producer for {brokers}: {e}")))?;
        Ok(ControlProducer {
            producer,
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
        })
    }

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(Error::Kafka(format!(
                        "sending to {} on {}: {e}",
                        self.topic, self.brokers
                    )))
                }
            }
        }
    }

    /// True when `topic` exists on the cluster.
    fn topic_exists(&self, topic: &str) -> bool {
        self.producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.error().is_none() && !t.partitions().is_empty())
            })
            .unwrap_or(false)
    }

    /// The lowest and highest offsets delivered to `topic`.
    fn delivered_range(&self, topic: &str) -> Option<(i64, i64)> {
        self.producer
            .context()
            .1
            .lock()
            .ok()
            .and_then(|r| r.get(topic).copied())
    }

    /// Waits until everything sent is acknowledged; the first failure, if any.
    fn flush(&self) -> Result<()> {
        self.settle(|e| format!("a control record was refused on {}: {e}", self.brokers))
    }

    fn finish(self) -> Result<()> {
        self.settle(|e| {
            format!(
                "the control topic {} on {} refused a record: {e} (does the topic exist? create it with 1 Kafka partition)",
                self.topic, self.brokers
            )
        })
    }

    /// Flushes, then reports the first refused record with `refused`.
    fn settle(&self, refused: impl FnOnce(&str) -> String) -> Result<()> {
        self.producer.flush(Duration::from_secs(60)).map_err(|e| {
            Error::Kafka(format!(
                "flushing to {} on {}: {e}",
                self.topic, self.brokers
            ))
        })?;
        let first = self
            .producer
            .context()
            .0
            .lock()
            .ok()
            .and_then(|f| f.clone());
        match first {
            None => Ok(()),
            Some(e) => Err(Error::Kafka(refused(&e))),
        }
    }
}
