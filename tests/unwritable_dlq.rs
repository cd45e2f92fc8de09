//! When the dead-letter topic cannot be written, the daemon stops consuming the Kafka
//! partition of the refused dead letter and retries it, rather than committing past an event
//! it has not handled; once the topic can be written, everything flows again.

mod common;

use std::time::Duration;

use common::{generate_and_train, http_get, metric_sum, wait_for, Broker, Daemon, ServeConfigFile};
use manymodel::local;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const GOOD: &str = r#"{"event_id":"EV","store_id":"S001","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#;

/// The group's committed offset of `in` Kafka partition 0, if any.
fn committed(brokers: &str, group: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("in", 0);
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match c.find_partition("in", 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_dead_letter_pauses_its_kafka_partition_and_is_retried_until_delivered() {
    let broker = Broker::start();
    broker.create_topic("in", 1);
    broker.create_topic("out", 1);
    // "dlq" does not exist yet: the dead letter is refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = generate_and_train(dir.path(), 3, 10, "v-dlq");
    let config = ServeConfigFile::new(&broker.brokers(), "dlqdown")
        .librdkafka("message.timeout.ms", "1500")
        .librdkafka("topic.metadata.propagation.max.ms", "100")
        .bundle(&bundle)
        .write(dir.path(), "dlqdown");
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();

    // Offsets 0-4 good, 5 bad, 6-10 good.
    let mut payloads: Vec<Vec<u8>> = (0..5)
        .map(|i| GOOD.replace("EV", &format!("a{i}")).into_bytes())
        .collect();
    payloads.push(b"{not json".to_vec());
    payloads.extend((0..5).map(|i| GOOD.replace("EV", &format!("b{i}")).into_bytes()));
    local::produce_events(&broker.brokers(), "in", std::sync::Arc::new(payloads), None)
        .await
        .expect("produced");

    let brokers = broker.brokers();
    wait_for(
        Duration::from_secs(60),
        "the refused dead letter pauses its Kafka partition",
        || {
            let m = http_get(&addr, "/metrics").1;
            metric_sum(&m, "manymodel_delivery_failures_total") >= 1.0
                && metric_sum(&m, "manymodel_paused_kafka_partitions") == 1.0
        },
    );
    // The good events before it are scored and committed; nothing past it is committed.
    wait_for(
        Duration::from_secs(30),
        "the prefix before the bad record is committed",
        || committed(&brokers, "dlqdown") == Some(5),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        committed(&brokers, "dlqdown"),
        Some(5),
        "no commit past the event whose dead letter was refused"
    );

    // The topic appears: the retried dead letter is delivered, with its reason, the Kafka
    // partition resumes and the commit moves to the end.
    broker.create_topic("dlq", 1);
    let dead = local::read(&brokers, "dlq", 1, Duration::from_secs(90))
        .await
        .expect("dlq read");
    assert_eq!(dead.len(), 1, "{}", daemon.log_text());
    assert_eq!(dead[0].value, b"{not json");
    assert_eq!(dead[0].headers["error-kind"], "invalid_json");
    assert_eq!(dead[0].headers["source-offset"], "5");
    wait_for(Duration::from_secs(60), "every offset is committed", || {
        committed(&brokers, "dlqdown") == Some(11)
    });
    let m = http_get(&addr, "/metrics").1;
    assert_eq!(metric_sum(&m, "manymodel_paused_kafka_partitions"), 0.0);
    let out = local::read(&brokers, "out", 10, Duration::from_secs(30))
        .await
        .expect("out read");
    assert_eq!(out.len(), 10, "every good event has its prediction");
    assert!(daemon.terminate().success());
}
