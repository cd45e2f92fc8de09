//! Kafka record headers exactly as they travel: in order, repeated names, null values and
//! names that are not UTF-8 included (`manymodel::local::read` keeps only the last value of
//! each name, as text). Records are written through librdkafka's own produce call, because
//! rdkafka's `OwnedHeaders` takes names as `&str` only.

use std::ffi::{c_char, c_void, CString};
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The headers of one record: each name and value (`None` for a null value), as bytes.
pub type HeaderList = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Headers no dead letter of manymodel should lose: a repeated name, a name and a value that
/// are not UTF-8, a null value, an empty one, and one named like a header manymodel sets
/// itself (`error-kind`), which its dead letters replace.
pub fn producer_headers() -> HeaderList {
    [
        (&b"trace-id"[..], Some(&b"abc-1"[..])),
        (b"binary", Some(&[0u8, 0x9f, 0xff][..])),
        (b"\xffname\xfe", Some(b"not UTF-8")),
        (b"nothing", None),
        (b"empty", Some(b"")),
        (b"trace-id", Some(b"abc-2")),
        (b"error-kind", Some(b"forged")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
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
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer created");
    let topic = CString::new(topic).expect("a topic name");
    let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
    let mem = |b: &[u8]| rd::rd_kafka_vu_s__bindgen_ty_1 {
        mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: b.as_ptr() as *mut c_void,
            size: b.len(),
        },
    };
    for (key, value) in records {
        // SAFETY: a new headers object, given to librdkafka by the produce call below (which
        // copies the value, key and topic, RD_KAFKA_MSG_F_COPY).
        let native = unsafe { rd::rd_kafka_headers_new(headers.len()) };
        for (name, v) in headers {
            let (ptr, len) = v.as_ref().map_or((std::ptr::null(), 0), |v| {
                (v.as_ptr() as *const c_void, v.len() as isize)
            });
            let err = unsafe {
                rd::rd_kafka_header_add(
                    native,
                    name.as_ptr() as *const c_char,
                    name.len() as isize,
                    ptr,
                    len,
                )
            };
            assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
        }
        use rd::rd_kafka_vtype_t::*;
        let mut vus = vec![
            vu(
                RD_KAFKA_VTYPE_TOPIC,
                rd::rd_kafka_vu_s__bindgen_ty_1 {
                    cstr: topic.as_ptr(),
                },
            ),
            vu(
                RD_KAFKA_VTYPE_PARTITION,
                rd::rd_kafka_vu_s__bindgen_ty_1 { i32_: 0 },
            ),
            vu(RD_KAFKA_VTYPE_VALUE, mem(value)),
            vu(
                RD_KAFKA_VTYPE_MSGFLAGS,
                rd::rd_kafka_vu_s__bindgen_ty_1 {
                    i: rd::RD_KAFKA_MSG_F_COPY,
                },
            ),
            vu(
                RD_KAFKA_VTYPE_HEADERS,
                rd::rd_kafka_vu_s__bindgen_ty_1 { headers: native },
            ),
        ];
        if let Some(key) = key {
            vus.push(vu(RD_KAFKA_VTYPE_KEY, mem(key)));
        }
        let error = unsafe {
            rd::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len())
        };
        assert!(error.is_null(), "record not queued");
        producer.poll(Duration::ZERO);
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
        let list = m
            .headers()
            .into_iter()
            .flat_map(manymodel::kafka::headers::each)
            .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
            .collect();
        out.push(list);
    }
    out
}

/// The names a dead letter of a record with `input` headers should carry: those headers'
/// in their order, less any named like manymodel's own, followed by manymodel's five.
pub fn expected_dead_letter_names(input: &HeaderList) -> Vec<Vec<u8>> {
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
        .filter(|name| !OURS.iter().any(|o| o.as_bytes() == name.as_slice()))
        .chain(OURS.iter().map(|s| s.as_bytes().to_vec()))
        .collect()
}
