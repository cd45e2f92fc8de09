//! Exactly-once mode (`[kafka] processing = "exactly_once"`) on librdkafka's MockCluster,
//! which, unlike tansu, has transactions. A failure is injected between produce and commit,
//! once as a crash of the instance and once as refused offset commits; either way the
//! committed output holds exactly one prediction per event and one dead letter per bad record.
//!
//! The MockCluster keeps transactions (fencing, `TxnOffsetCommit`, `EndTxn`) but writes no
//! abort markers, so its `read_committed` consumers see aborted records too. The tests
//! therefore identify the records of aborted transactions by their offsets, which is what a
//! real broker's `read_committed` consumer filters out: in each output Kafka partition the
//! aborted attempts come first, and the committed transaction's records follow them. Nor
//! does it store the offsets sent to a transaction, so a rewind there always goes back to the
//! beginning of the input; each test is built so that this is also what a real broker would do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use manymodel::config::{Processing, ServeConfig};
use manymodel::control;
use manymodel::local;
use manymodel::metrics::PipelineStats;
use manymodel::model::bundle::Bundle;
use manymodel::serve::{self, Mode};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 3000;
const BAD: usize = 20;

struct Setup {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bundle: Arc<Bundle>,
    /// event_id of every good event.
    ids: Vec<String>,
}

/// `version` names the workload's temporary folder too, so each test has its own.
fn setup(version: &str) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = MockCluster::new(1).expect("MockCluster starts");
    for (topic, n) in [("in", 3), ("out", 3), ("dlq", 1)] {
        cluster.create_topic(topic, n, 1).expect("topic created");
    }
    let work = local::workload(12, 60, EVENTS, 11, version, Default::default()).expect("workload");
    let mut payloads: Vec<Vec<u8>> = work.events.lines().map(|l| l.as_bytes().to_vec()).collect();
    let ids = work
        .events
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("generated JSON");
            v["event_id"].as_str().expect("event_id").to_owned()
        })
        .collect();
    // Bad records in between, so dead letters are part of the transactions too.
    for i in 0..BAD {
        payloads.insert(
            i * 100 + 7,
            format!(r#"{{"store_id":"S001","bad":{i}"#).into_bytes(),
        );
    }
    local::produce(
        &cluster.bootstrap_servers(),
        "in",
        &payloads,
        local::json_key("store_id"),
        None,
    )
    .expect("events produced");
    Setup {
        bundle: Arc::new(work.bundle),
        ids,
        cluster,
    }
}

fn config(brokers: &str, commit_interval_ms: u64) -> ServeConfig {
    let mut c = local::serve_config(brokers, "eos", "in", "out", "dlq");
    c.kafka.processing = Processing::ExactlyOnce;
    c.kafka.transactional_id = Some("manymodel-eos-test".into());
    c.kafka.commit_interval_ms = commit_interval_ms;
    c
}

/// One output record: Kafka partition, offset, value.
type Out = (i32, i64, Vec<u8>);

/// Every record of `topic`, read from the beginning of each Kafka partition (assigned, no
/// group) until `quiet` passes with none.
async fn read_all(brokers: &str, topic: &str, quiet: Duration) -> Vec<Out> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", rand_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assigned");
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(quiet, consumer.recv()).await {
        out.push((
            m.partition(),
            m.offset(),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    out.sort_by_key(|(p, o, _)| (*p, *o));
    out
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Starts a pipeline; the handle ends with its result.
fn start(
    config: ServeConfig,
    bundle: Arc<Bundle>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<manymodel::Result<()>> {
    tokio::spawn(async move {
        let stats = Arc::new(PipelineStats::default());
        serve::run(
            &config,
            control::fixed(bundle),
            Mode::Score,
            stats,
            shutdown,
        )
        .await
    })
}

/// Waits until `topic` holds at least `count` records.
async fn wait_for(brokers: &str, topic: &str, count: usize) {
    for _ in 0..120 {
        if read_all(brokers, topic, Duration::from_secs(1)).await.len() >= count {
            return;
        }
    }
    panic!("{topic} never held {count} records");
}

/// The records of the committed transaction: in each Kafka partition, those after the first
/// `aborted` of every `attempts` equal shares (each attempt scored the same events, so each
/// wrote the same number of records to each Kafka partition).
fn committed_share(records: Vec<Out>, attempts: usize) -> Vec<Vec<u8>> {
    let mut by_partition: HashMap<i32, Vec<Vec<u8>>> = HashMap::new();
    for (p, _, v) in records {
        by_partition.entry(p).or_default().push(v);
    }
    let mut out = Vec::new();
    for (p, values) in by_partition {
        assert_eq!(
            values.len() % attempts,
            0,
            "Kafka partition {p}: {} records is not {attempts} equal attempts",
            values.len()
        );
        let share = values.len() / attempts;
        out.extend(values.into_iter().skip(share * (attempts - 1)));
    }
    out
}

/// Exactly one committed prediction per event and one dead letter per bad record, with
/// `attempts` scorings of everything, all but the last aborted.
async fn assert_exactly_once(brokers: &str, ids: &[String], attempts: usize) {
    let predictions = read_all(brokers, "out", Duration::from_secs(3)).await;
    assert_eq!(
        predictions.len(),
        attempts * ids.len(),
        "every attempt scored every event"
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in committed_share(predictions, attempts) {
        let v: Value = serde_json::from_slice(&p).expect("prediction JSON");
        *seen
            .entry(v["event_id"].as_str().expect("event_id").to_owned())
            .or_default() += 1;
    }
    let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(missing, 0, "events without a committed prediction");
    assert_eq!(
        duplicated, 0,
        "events with more than one committed prediction"
    );
    let dead = read_all(brokers, "dlq", Duration::from_secs(2)).await;
    assert_eq!(dead.len(), attempts * BAD);
    assert_eq!(
        committed_share(dead, attempts).len(),
        BAD,
        "one committed dead letter per bad record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_produce_and_commit_leaves_one_committed_prediction_per_event() {
    let s = setup("eos-crash");
    let brokers = s.cluster.bootstrap_servers();

    // The first instance never reaches a commit: it scores and produces everything into its
    // open transaction, then dies.
    let crashed = start(
        config(&brokers, 3_600_000),
        s.bundle.clone(),
        CancellationToken::new(),
    );
    wait_for(&brokers, "out", EVENTS).await;
    crashed.abort();
    let _ = crashed.await;

    // Its successor has the same transactional.id: it fences the dead one, whose
    // transaction is aborted, and scores every event again from the committed offsets.
    let shutdown = CancellationToken::new();
    let successor = start(config(&brokers, 300), s.bundle.clone(), shutdown.clone());
    wait_for(&brokers, "out", 2 * EVENTS).await;
    shutdown.cancel();
    successor.await.expect("joined").expect("clean shutdown");
    assert_exactly_once(&brokers, &s.ids, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_offset_commits_abort_the_transaction_and_the_events_are_scored_again() {
    let s = setup("eos-refused");
    let brokers = s.cluster.bootstrap_servers();
    // The first two offset commits are refused as if the group had moved on: each aborts
    // its transaction, and the instance rewinds to the committed offsets and tries again.
    s.cluster.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION; 2],
    );
    let shutdown = CancellationToken::new();
    // One transaction holds every event: the input is there before the instance starts.
    let instance = start(config(&brokers, 2_000), s.bundle.clone(), shutdown.clone());
    wait_for(&brokers, "out", 3 * EVENTS).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    instance.await.expect("joined").expect("clean shutdown");
    assert_exactly_once(&brokers, &s.ids, 3).await;
}
