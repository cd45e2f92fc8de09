//! Kafka helpers for the demo, the benchmark and the tests: an in-process MockCluster, topic
//! creation, loading events, reading a topic back. Never used by `serve`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode as Code;

use crate::clock::now_ms;
use crate::config::{KafkaConfig, MetricsConfig, ModelConfig, PipelineConfig, ServeConfig};
use crate::error::{Error, Result};
use crate::kafka::connection::Connection;
use crate::metrics::PipelineStats;
use crate::pacing::{serve_reports, Reports};

/// Creates topics with the given Kafka partition counts; existing topics are left as they are.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<()> {
    create_topics_with(&Connection::plain(brokers), topics, 1).await
}

/// [`create_topics`] on a broker that needs librdkafka options (TLS, SASL), each topic
/// replicated `replication` times (-1: the broker's `default.replication.factor`).
pub async fn create_topics_with(
    connection: &Connection,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<()> {
    let brokers = &connection.brokers;
    let admin: AdminClient<DefaultClientContext> = connection
        .producer_side_config(&[])
        .create()
        .map_err(|e| Error::Kafka(format!("admin client for {brokers}: {e}")))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| Error::Kafka(format!("creating topics on {brokers}: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, Code::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Kafka(format!("creating topic {name}: {code}")))
            }
        }
    }
    Ok(())
}

/// Records for a producer to send: the `distinct` ones in turn until `count` have gone, so a
/// long stream holds only its distinct records in memory (the bench's 30-second latency runs
/// would otherwise hold millions, and count them in the RSS they print).
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    /// The records, sent in this order, again from the first when `count` is larger.
    pub distinct: &'a [Vec<u8>],
    /// How many to send in all.
    pub count: usize,
}

impl<'a> From<&'a [Vec<u8>]> for Records<'a> {
    /// Each record once.
    fn from(distinct: &'a [Vec<u8>]) -> Self {
        Records {
            distinct,
            count: distinct.len(),
        }
    }
}

impl<'a> From<&'a Vec<Vec<u8>>> for Records<'a> {
    /// Each record once.
    fn from(distinct: &'a Vec<Vec<u8>>) -> Self {
        Records::from(distinct.as_slice())
    }
}

impl<'a> From<&'a Cycle> for Records<'a> {
    fn from(cycle: &'a Cycle) -> Self {
        Records {
            distinct: &cycle.distinct,
            count: cycle.count,
        }
    }
}

/// [`Records`] that own their distinct records, for producers on another thread.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// The records, sent in this order, again from the first when `count` is larger.
    pub distinct: Arc<Vec<Vec<u8>>>,
    /// How many to send in all.
    pub count: usize,
}

impl Cycle {
    /// Each record once.
    pub fn once(records: Arc<Vec<Vec<u8>>>) -> Self {
        let count = records.len();
        Cycle {
            distinct: records,
            count,
        }
    }
}

/// Produces each payload to `topic` with the current time as its timestamp, keyed by
/// `key(payload)`, at most `rate` per second when given (the events due within a
/// [`crate::pacing::TICK`] go together); returns once all are acknowledged.
pub fn produce(
    brokers: &str,
    topic: &str,
    payloads: &[Vec<u8>],
    key: impl Fn(&[u8]) -> Option<Vec<u8>>,
    rate: Option<u64>,
) -> Result<()> {
    produce_with(brokers, topic, payloads, key, rate, &[], None)
}

/// [`produce`] with extra librdkafka producer `options`, telling `acked`, when given, when
/// the broker acknowledged each record ([`PipelineStats::input_acknowledged`]).
pub fn produce_with<'a>(
    brokers: &str,
    topic: &str,
    payloads: impl Into<Records<'a>>,
    key: impl Fn(&[u8]) -> Option<Vec<u8>>,
    rate: Option<u64>,
    options: &[(&str, &str)],
    acked: Option<Arc<PipelineStats>>,
) -> Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in options {
        config.set(*k, *v);
    }
    let producer: BaseProducer<Reports> = config
        .create_with_context(Reports::new(acked))
        .map_err(|e| Error::Kafka(format!("producer for {brokers}: {e}")))?;
    // The keys are worked out before the clock starts: at a steady rate the loader should
    // cost the machine no more than sending does, or it takes the CPU the pipeline it loads
    // is measured on.
    let Records { distinct, count } = payloads.into();
    let keys: Vec<Option<Vec<u8>>> = distinct.iter().map(|p| key(p)).collect();
    let pacer = rate.map(crate::pacing::Pacer::new);
    let stream = distinct.iter().zip(&keys).cycle().take(count);
    for (i, (payload, k)) in stream.enumerate() {
        match &pacer {
            Some(pacer) => pacer.wait_serving(i as u64, || serve_reports(&producer)),
            // As fast as possible: delivery reports are served before every event.
            None => serve_reports(&producer),
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(payload.as_slice())
            .timestamp(now_ms());
        if let Some(k) = k {
            record = record.key(k.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(Error::Kafka(format!("producing to {topic}: {e}"))),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| Error::Kafka(format!("flushing to {topic}: {e}")))
}

/// [`produce`] on a blocking thread, keyed by the JSON field `store_id`, for async callers.
pub async fn produce_events(
    brokers: &str,
    topic: &str,
    payloads: std::sync::Arc<Vec<Vec<u8>>>,
    rate: Option<u64>,
) -> Result<()> {
    produce_events_with(
        brokers,
        topic,
        Cycle::once(payloads),
        rate,
        Vec::new(),
        None,
    )
    .await
}

/// [`produce_events`] of a [`Cycle`], with extra librdkafka producer `options`, telling
/// `acked`, when given, when the broker acknowledged each event.
pub async fn produce_events_with(
    brokers: &str,
    topic: &str,
    payloads: Cycle,
    rate: Option<u64>,
    options: Vec<(String, String)>,
    acked: Option<Arc<PipelineStats>>,
) -> Result<()> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let options: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        produce_with(
            &brokers,
            &topic,
            &payloads,
            json_key("store_id"),
            rate,
            &options,
            acked,
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("producer thread: {e}")))?
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// The Kafka partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
    /// Header name → value (text).
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `count` records arrived or `timeout` passed.
pub async fn read(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("manymodel-reader-{}-{}", std::process::id(), now_ms()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| Error::Kafka(format!("reader for {brokers}: {e}")))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| Error::Kafka(format!("subscribing to {topic}: {e}")))?;
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < count {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => tracing::debug!(error = %e, "reader error"),
            Ok(Ok(m)) => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let headers = m
                    .headers()
                    .into_iter()
                    .flat_map(crate::kafka::headers::each)
                    .map(|h| (text(h.name), text(h.value.unwrap_or_default())))
                    .collect();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }
    Ok(out)
}

/// A serve configuration for the local topics `input`, `output` and `dlq`.
pub fn serve_config(
    brokers: &str,
    group: &str,
    input: &str,
    output: &str,
    dlq: &str,
) -> ServeConfig {
    ServeConfig {
        kafka: KafkaConfig {
            brokers: brokers.to_owned(),
            group_id: group.to_owned(),
            input_topic: input.to_owned(),
            output_topic: output.to_owned(),
            dlq_topic: dlq.to_owned(),
            librdkafka_options: BTreeMap::new(),
            commit_interval_ms: 500,
            control_topic: None,
            processing: Default::default(),
            transactional_id: None,
        },
        model: ModelConfig {
            bundle: None,
            unknown_partition: Default::default(),
            trusted_keys: Vec::new(),
            keep_versions: 8,
            max_bundle_bytes: 1 << 30,
        },
        pipeline: PipelineConfig::default(),
        metrics: MetricsConfig::default(),
        input: Default::default(),
        output: Default::default(),
        actuals: None,
    }
}

/// The value of `field` in a JSON payload, as key bytes (the partition id).
pub fn json_key(field: &str) -> impl Fn(&[u8]) -> Option<Vec<u8>> + '_ {
    move |payload| {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        crate::field::partition_id(v.get(field)?).map(|s| s.as_bytes().to_vec())
    }
}

/// Generated data with its trained bundle, for the demo and the benchmark.
#[derive(Debug)]
pub struct Workload {
    /// The trained bundle.
    pub bundle: crate::model::bundle::Bundle,
    /// The events, one JSON object per line.
    pub events: String,
    /// Their actuals (each event with its realised `sales`), one JSON object per line.
    pub actuals: String,
    /// The stores whose behaviour shifts (`drift`), sorted.
    pub drifted: Vec<String>,
    /// History rows the bundle was trained on.
    pub history_rows: usize,
    /// Training time, seconds.
    pub train_seconds: f64,
    /// Stores fitted from history; the bundle's other stores reuse their models.
    pub fitted_stores: usize,
}

/// The most stores a workload fits from generated history; above it, the bundle is widened
/// with [`widen`], so that a benchmark of a million stores needs no million fits.
pub const FITTED_STORES: usize = 20_000;

/// `bundle` with `stores` partitions named as `generate --stores {stores}` names them, each a
/// fitted model of `bundle` with its weights moved a little, so that no two are equal.
pub fn widen(
    bundle: &crate::model::bundle::Bundle,
    stores: usize,
) -> Result<crate::model::bundle::Bundle> {
    use crate::model::Model;
    let width = stores.to_string().len().max(3);
    let fitted = &bundle.partitions;
    if fitted.is_empty() {
        return Err(Error::Internal(
            "no fitted store to widen the bundle with".into(),
        ));
    }
    let partitions = (0..stores)
        .map(|i| {
            let mut m = fitted[i % fitted.len()].clone();
            m.partition = format!("S{:0width$}", i + 1).into();
            if let Model::Linear(l) = &mut m.model {
                // Weights of its own, as a fitted store has (not shared with its template).
                let shift = (i / fitted.len()) as f64 * 1e-3;
                l.intercept += shift;
                l.coefficients = l.coefficients.iter().map(|c| c + shift * 1e-3).collect();
            }
            m
        })
        .collect();
    crate::model::bundle::Bundle::new(
        bundle.version.clone(),
        None,
        bundle.created_at_ms,
        bundle.spec.clone(),
        bundle.rows_used,
        bundle.rows_rejected,
        bundle.fallback.clone(),
        partitions,
    )
    .map_err(|e| Error::Internal(format!("widening the bundle: {e}")))
}

/// The Avro file bytes of `bundle` under another version: the demo and the benchmark publish
/// these to show and measure swaps.
pub fn reversioned(bundle: &crate::model::bundle::Bundle, version: &str) -> Result<Vec<u8>> {
    let b = crate::model::bundle::Bundle::assemble(
        version.to_owned(),
        None,
        now_ms(),
        bundle.spec.clone(),
        (bundle.rows_used, bundle.rows_rejected),
        bundle.fallback_model().cloned(),
        bundle.partitions.clone(),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    b.to_avro()
}

/// Generates `stores` × `days` of history and `events` events in a temporary folder, trains a
/// bundle stamped `version` on them, and cleans the folder up.
pub fn workload(
    stores: usize,
    days: usize,
    events: usize,
    seed: u64,
    version: &str,
    drift: crate::generate::Drift,
) -> Result<Workload> {
    use crate::generate::{self, GenerateOptions};
    use crate::train::{self, TrainOptions};
    let dir = std::env::temp_dir().join(format!("manymodel-{version}-{}", std::process::id()));
    let fitted = stores.min(FITTED_STORES);
    let result = (|| {
        let gen = generate::run(&GenerateOptions {
            stores: fitted,
            days,
            events,
            out: dir.clone(),
            seed,
            drift,
        })?;
        let report = train::run(&TrainOptions {
            spec: dir.join("train.toml"),
            input: dir.join("history.csv"),
            output: dir.join("bundle.avro"),
            version: Some(version.to_owned()),
            strict: false,
            progress: false,
            base: None,
            partitions: Vec::new(),
        })?;
        let mut bundle = report.bundle;
        if stores > fitted {
            // Events for every store (no history), and the fitted models spread over them.
            let wide = dir.join("wide");
            generate::run(&GenerateOptions {
                stores,
                days: 0,
                events,
                out: wide.clone(),
                seed,
                drift: generate::Drift::NONE,
            })?;
            for name in ["events.jsonl", "actuals.jsonl"] {
                std::fs::rename(wide.join(name), dir.join(name))
                    .map_err(|e| Error::io(&wide, e))?;
            }
            bundle = widen(&bundle, stores)?;
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
        };
        Ok(Workload {
            bundle,
            events: read("events.jsonl")?,
            actuals: read("actuals.jsonl")?,
            drifted: gen.drifted,
            history_rows: gen.history_rows,
            train_seconds: report.seconds,
            fitted_stores: fitted,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A paced load never runs ahead of its rate, although it sends the events due within a
    /// tick together, and every event keeps the key worked out for it before the clock
    /// started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paced_load_keeps_to_its_rate_and_its_keys() {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("paced", 1, 1).expect("topic");
        let brokers = mock.bootstrap_servers();
        let payloads: Vec<Vec<u8>> = (0..400)
            .map(|i| format!(r#"{{"store_id":"S{}","i":{i}}}"#, i % 7).into_bytes())
            .collect();
        let started = Instant::now();
        produce_events(&brokers, "paced", payloads.into(), Some(2_000))
            .await
            .expect("produced");
        // 400 events at 2,000 a second: the last is due 199.5 ms after the first.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(195), "took only {took:?}");
        let records = read(&brokers, "paced", 400, Duration::from_secs(30))
            .await
            .expect("read back");
        assert_eq!(records.len(), 400);
        for r in &records {
            let value: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
            let i = value["i"].as_u64().expect("i");
            assert_eq!(r.key.as_deref(), Some(format!("S{}", i % 7).as_bytes()));
        }
    }

    /// A cycle sends its distinct records in turn, each with its own key, until its count has
    /// gone: more than once when the count is larger, a prefix when it is smaller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cycle_sends_its_records_in_turn_until_its_count() {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let brokers = mock.bootstrap_servers();
        let distinct: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..3)
                .map(|i| format!(r#"{{"store_id":"S{i}","i":{i}}}"#).into_bytes())
                .collect(),
        );
        for (topic, count) in [("more", 7), ("fewer", 2)] {
            mock.create_topic(topic, 1, 1).expect("topic");
            let cycle = Cycle {
                distinct: distinct.clone(),
                count,
            };
            produce_events_with(&brokers, topic, cycle, None, Vec::new(), None)
                .await
                .expect("produced");
            let records = read(&brokers, topic, count, Duration::from_secs(30))
                .await
                .expect("read back");
            let sent: Vec<(String, u64)> = records
                .iter()
                .map(|r| {
                    let value: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
                    let key = String::from_utf8(r.key.clone().expect("a key")).expect("utf-8");
                    (key, value["i"].as_u64().expect("i"))
                })
                .collect();
            let expected: Vec<(String, u64)> = (0..count as u64)
                .map(|n| (format!("S{}", n % 3), n % 3))
                .collect();
            assert_eq!(sent, expected, "{topic}");
        }
    }
}
