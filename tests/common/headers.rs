//! Kafka record headers exactly as they travel: in order, repeated names and null values
//! included (`manymodel::local::read` keeps only the last value of each name, as text).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One header: its name and its value (`None` for a null value).
pub type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// Headers no dead letter of manymodel should lose: a repeated name, bytes that are not
/// UTF-8, a null value, an empty one, and one named like a header manymodel sets itself
/// (`error-kind`), which its dead letters replace.
pub fn producer_headers() -> HeaderList {
    [
        ("trace-id", Some(&b"abc-1"[..])),
        ("binary", Some(&[0u8, 0x9f, 0xff][..])),
        ("nothing", None),
        ("empty", Some(&b""[..])),
        ("trace-id", Some(&b"abc-2"[..])),
        ("error-kind", Some(&b"forged"[..])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
    .collect()
}

/// Produces `records` (key, value) to Kafka partition 0 of `topic`, each with `headers`, and
/// waits until all are acknowledged.
pub fn produce(
    brokers: &str,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
    headers: &HeaderList,
) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer created");
    for (key, value) in records {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, v) in headers {
            owned = owned.insert(Header {
                key: name,
                value: v.as_deref(),
            });
        }
        let mut record = BaseRecord::<Vec<u8>, Vec<u8>>::to(topic)
            .partition(0)
            .payload(value)
            .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record)
            .map_err(|(e, _)| e)
            .expect("record queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("records acknowledged");
}

/// The headers of the first `count` records of `topic`, in arrival order (offset order
/// within each Kafka partition); fewer if `timeout` passes first.
pub fn read(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<HeaderList> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("headers-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader created");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("partition added");
    }
    consumer.assign(&tpl).expect("partitions assigned");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let list = m.headers().map_or_else(Vec::new, |h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        });
        out.push(list);
    }
    out
}

/// What a dead letter of a record with `input` headers should carry: those headers in their
/// order, less any named like manymodel's own, followed by manymodel's five.
pub fn expected_dead_letter_names(input: &HeaderList) -> Vec<String> {
    const OURS: [&str; 5] = [
        "error-kind",
        "error-message",
        "source-topic",
        "source-partition",
        "source-offset",
    ];
    input
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| !OURS.contains(&name.as_str()))
        .chain(OURS.iter().map(|s| (*s).to_owned()))
        .collect()
}
