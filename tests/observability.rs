//! Metrics and health of a running daemon against Apache Kafka: every metric exists and moves as
//! events flow, bundles load and bad records arrive; /healthz and /readyz say why.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, metric_sum, Stack};
use manymodel::local;

/// Every metric the daemon must expose, by name.
const METRICS: &[&str] = &[
    "manymodel_events_consumed_total",
    "manymodel_events_scored_total",
    "manymodel_predictions_produced_total",
    "manymodel_events_dead_lettered_total",
    "manymodel_delivery_failures_total",
    "manymodel_offset_commits_total",
    "manymodel_scoring_latency_seconds_bucket",
    "manymodel_end_to_end_latency_seconds_bucket",
    "manymodel_consumer_lag",
    "manymodel_bundle_info",
    "manymodel_bundle_activated_timestamp_seconds",
    "manymodel_bundle_partitions",
    "manymodel_bundle_loads_total",
    "manymodel_partition_actors",
    "manymodel_mailbox_depth",
    "manymodel_producer_queue_depth",
    "manymodel_paused_kafka_partitions",
    "manymodel_assigned_kafka_partitions",
    "manymodel_build_info",
    "manymodel_partition_events_scored_total",
    "manymodel_bundle_rejections_total",
    "manymodel_bundle_swap_pause_seconds",
    "manymodel_in_flight_events",
    "manymodel_stalled",
];

fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    body
}

/// Waits until `check` holds for a fresh scrape.
fn eventually(addr: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(addr);
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never held; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_exist_and_move_and_health_says_why() {
    let Stack {
        daemon,
        broker,
        dir,
    } = Stack::start("obs", 2, 10, 2000, "v-obs");
    let addr = daemon.metrics_addr();

    let (status, body) = http_get(&addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["bundle_version"], "v-obs");
    assert_eq!(http_get(&addr, "/nope").0, 404);

    let before = scrape(&addr);
    assert_eq!(
        metric_sum(&before, "manymodel_bundle_info{version=\"v-obs\"}"),
        1.0
    );
    assert_eq!(metric_sum(&before, "manymodel_bundle_loads_total"), 1.0);
    assert_eq!(metric_sum(&before, "manymodel_bundle_partitions"), 10.0);
    assert!(before.contains("manymodel_build_info{"), "{before}");
    assert!(
        before.contains("# HELP manymodel_events_consumed_total"),
        "metrics are described"
    );

    let mut payloads: Vec<Vec<u8>> = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    payloads.extend((0..7).map(|_| b"{broken".to_vec()));
    let brokers = broker.brokers();
    // Keyed by store, so both Kafka partitions get events: keyless records all go to one
    // partition while librdkafka's sticky partitioner holds it (10 ms), and a Kafka partition
    // that never had a record reports no lag.
    tokio::task::spawn_blocking(move || {
        local::produce(&brokers, "in", &payloads, local::json_key("store_id"), None)
    })
    .await
    .unwrap()
    .unwrap();

    let text = eventually(&addr, "all events handled and lag reported", |t| {
        metric_sum(t, "manymodel_predictions_produced_total") >= 2000.0
            && metric_sum(
                t,
                "manymodel_events_dead_lettered_total{reason=\"invalid_json\"}",
            ) >= 7.0
            && t.contains("manymodel_consumer_lag{")
    });
    for name in METRICS {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} is missing from /metrics:\n{text}"
        );
    }
    assert_eq!(metric_sum(&text, "manymodel_events_consumed_total"), 2007.0);
    assert_eq!(metric_sum(&text, "manymodel_events_scored_total"), 2000.0);
    assert!(metric_sum(&text, "manymodel_events_scored_total{model=\"partition\"}") == 2000.0);
    assert!(metric_sum(&text, "manymodel_end_to_end_latency_seconds_count") >= 2000.0);
    assert!(metric_sum(&text, "manymodel_scoring_latency_seconds_count") >= 2000.0);
    // Ten stores share the partition actors (by default one per core but one, as
    // `tests/config_files.rs` checks), whatever their number.
    let actors = manymodel::config::PipelineConfig::default().actors() as f64;
    assert_eq!(metric_sum(&text, "manymodel_partition_actors"), actors);
    assert!(
        metric_sum(
            &text,
            "manymodel_partition_events_scored_total{partition=\"S001\"}"
        ) > 0.0
    );
    assert!(
        !text.contains("partition=\"S002\""),
        "only listed stores get a partition label"
    );
    eventually(&addr, "an offset commit succeeds", |t| {
        metric_sum(t, "manymodel_offset_commits_total{result=\"ok\"}") >= 1.0
    });
    // librdkafka reports a Kafka partition's lag once it knows both its position and its
    // high watermark, not necessarily in the same statistics window for every partition: wait
    // for Kafka partition 1's gauge as well as for the sum to reach zero.
    let lag = eventually(&addr, "lag drains to zero", |t| {
        t.lines().any(|l| {
            l.starts_with("manymodel_consumer_lag{") && l.contains("kafka_partition=\"1\"")
        }) && metric_sum(t, "manymodel_consumer_lag{") == 0.0
    });
    assert!(
        lag.contains("kafka_partition=\"1\""),
        "lag per Kafka partition"
    );
    assert!(
        daemon.log_text().contains("dead-letter topic"),
        "one log line for the DLQ burst"
    );
    assert!(daemon.terminate().success());
}
