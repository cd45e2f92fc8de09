//! Production connectivity against Apache Kafka: a `SASL_SSL` listener with SCRAM-SHA-512 and
//! a test CA, which `serve`, `publish`, `generate` and `bench` reach with the settings of
//! config/serve-sasl-ssl.toml; wrong credentials make the daemon unready, never crash it; and
//! input batches in every compression codec are scored.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::chaos::TopicReader;
use common::kafka::{Kafka, Options, SCRAM_PASSWORD, SCRAM_USER};
use common::{generate_and_train, http_get, run_ok, wait_for, Broker, Daemon, ServeConfigFile};
use manymodel::local;

/// A serve config for `in` → `out` on the SASL_SSL listener with `password`, bundles from
/// `control`: the settings of config/serve-sasl-ssl.toml.
fn sasl_config(dir: &Path, name: &str, kafka: &Kafka, password: &str, bundle: &Path) -> PathBuf {
    ServeConfigFile::new(&kafka.sasl_ssl_brokers(), name)
        .kafka(r#"control_topic = "control""#)
        .librdkafka("security.protocol", "SASL_SSL")
        .librdkafka("sasl.mechanism", "SCRAM-SHA-512")
        .librdkafka("sasl.username", SCRAM_USER)
        .librdkafka("sasl.password", password)
        .librdkafka("ssl.ca.location", &kafka.ca_pem().display().to_string())
        .bundle(bundle)
        .unknown_partition("fallback")
        .write(dir, name)
}

#[test]
fn serve_publish_generate_and_bench_work_over_sasl_ssl_and_wrong_credentials_only_make_it_unready()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = Kafka::start_with(
        Some(dir.path()),
        Options {
            sasl_ssl: true,
            ..Options::default()
        },
    );
    for (t, n) in [("in", 2), ("out", 2), ("dlq", 1), ("control", 1)] {
        kafka.create_topic(t, n);
    }
    let bundle = generate_and_train(dir.path(), 20, 100, "v-sasl-1");
    // The tools take the same options from a client properties file.
    let properties = dir.path().join("client.properties");
    std::fs::write(
        &properties,
        format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username={SCRAM_USER}\n\
             sasl.password={SCRAM_PASSWORD}\nssl.ca.location={}\n",
            kafka.ca_pem().display()
        ),
    )
    .expect("properties written");
    let props = properties.to_str().expect("utf-8");
    let sasl = kafka.sasl_ssl_brokers();
    let published = run_ok(&[
        "publish",
        "--bundle",
        bundle.to_str().expect("utf-8"),
        "--brokers",
        &sasl,
        "--control-topic",
        "control",
        "--command-config",
        props,
    ]);
    assert!(published.contains("v-sasl-1"), "{published}");

    let mut daemon = Daemon::start(&sasl_config(
        dir.path(),
        "sasl",
        &kafka,
        SCRAM_PASSWORD,
        &bundle,
    ));
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();
    wait_for(Duration::from_secs(60), "ready over SASL_SSL", || {
        http_get(&addr, "/readyz").0 == 200
    });
    let streamed = run_ok(&[
        "generate",
        "--stores",
        "20",
        "--brokers",
        &sasl,
        "--topic",
        "in",
        "--events",
        "300",
        "--rate",
        "1000",
        "-X",
        "security.protocol=SASL_SSL",
        "-X",
        "sasl.mechanism=SCRAM-SHA-512",
        "-X",
        &format!("sasl.username={SCRAM_USER}"),
        "-X",
        &format!("sasl.password={SCRAM_PASSWORD}"),
        "-X",
        &format!("ssl.ca.location={}", kafka.ca_pem().display()),
    ]);
    assert!(streamed.contains("streamed 300 events"), "{streamed}");
    let mut out = TopicReader::new(&kafka.brokers(), "out");
    assert!(
        out.read_until(Duration::from_secs(60), |r| r.len() >= 300),
        "300 predictions over SASL_SSL, got {}:\n{}",
        out.records.len(),
        daemon.log_text()
    );
    assert!(daemon.terminate().success());

    // The benchmark reaches the same broker with the same properties, for every client it
    // creates, and prints the options without the password.
    let bench = run_ok(&[
        "bench",
        "--brokers",
        &sasl,
        "--command-config",
        props,
        "-X",
        "linger.ms=1",
        // The broker's default.replication.factor (1 on this single node).
        "--replication-factor",
        "-1",
        "--stores",
        "20",
        "--events",
        "2000",
        "--repeat",
        "1",
        "--latency-rate",
        "400",
    ]);
    assert!(bench.contains("\nscoring "), "a scoring row:\n{bench}");
    assert!(
        bench.contains("linger.ms=1") && bench.contains("sasl.password=(hidden)"),
        "the options are printed:\n{bench}"
    );
    assert!(
        !bench.contains(SCRAM_PASSWORD),
        "never the password:\n{bench}"
    );

    // The same daemon with a wrong password: it runs on, unready, and says why.
    let wrong = Daemon::start(&sasl_config(
        dir.path(),
        "wrong",
        &kafka,
        "not-the-password",
        &bundle,
    ));
    let addr = wrong.metrics_addr();
    std::thread::sleep(Duration::from_secs(10));
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "unready with wrong credentials: {body}");
    let log = wrong.log_text();
    assert!(
        log.to_lowercase().contains("authentication"),
        "the log names the authentication failure:\n{log}"
    );
    let mut wrong = wrong;
    assert!(
        wrong.child.try_wait().expect("status").is_none(),
        "the daemon keeps running (no crash loop):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_batches_in_every_compression_codec_are_scored() {
    let broker = Broker::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    for (t, n) in [("codec-in", 2), ("codec-out", 2), ("codec-dlq", 1)] {
        broker.create_topic(t, n);
    }
    let bundle = generate_and_train(dir.path(), 10, 400, "v-codecs");
    let events: Vec<Vec<u8>> = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let config = common::write_config(
        dir.path(),
        "codecs",
        &broker.brokers(),
        ("codec-in", "codec-out", "codec-dlq"),
        &bundle,
        "fallback",
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let codecs: [&'static str; 4] = ["gzip", "snappy", "lz4", "zstd"];
    for (i, codec) in codecs.into_iter().enumerate() {
        let chunk = events[i * 100..(i + 1) * 100].to_vec();
        let brokers = broker.brokers();
        tokio::task::spawn_blocking(move || {
            local::produce_with(
                &brokers,
                "codec-in",
                &chunk,
                local::json_key("store_id"),
                None,
                &[("compression.type", codec)],
                None,
            )
        })
        .await
        .expect("producer thread")
        .unwrap_or_else(|e| panic!("producing {codec}: {e}"));
    }
    let brokers = broker.brokers();
    let n = codecs.len() * 100;
    let out = tokio::task::spawn_blocking(move || {
        let mut out = TopicReader::new(&brokers, "codec-out");
        out.read_until(Duration::from_secs(60), |r| r.len() >= n);
        out
    })
    .await
    .expect("reader thread");
    assert_eq!(
        out.records.len(),
        n,
        "every event of every codec has one prediction:\n{}",
        daemon.log_text()
    );
}

/// The offsets and lengths of the record batches of a Kafka log segment file: base offset
/// (8 bytes) and batch length (4 bytes) lead each batch.
fn batches(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= segment.len() {
        let len = i32::from_be_bytes(segment[at + 8..at + 12].try_into().unwrap()) as usize;
        if len == 0 || at + 12 + len > segment.len() {
            break;
        }
        out.push((at, 12 + len));
        at += 12 + len;
    }
    out
}

#[test]
fn a_batch_that_cannot_be_decoded_makes_the_daemon_unready_and_counted_never_silent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut kafka = Kafka::start_with(Some(dir.path()), Options::default());
    for (t, n) in [("in", 1), ("out", 1), ("dlq", 1)] {
        kafka.create_topic(t, n);
    }
    let bundle = generate_and_train(dir.path(), 5, 300, "v-corrupt");
    let events: Vec<Vec<u8>> = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    // Three gzip batches of 100 events; the second is damaged on the broker's disk.
    for chunk in events.chunks(100) {
        local::produce_with(
            &kafka.brokers(),
            "in",
            chunk,
            local::json_key("store_id"),
            None,
            &[("compression.type", "gzip"), ("linger.ms", "100")],
            None,
        )
        .expect("produced");
    }
    kafka.stop();
    let segment = kafka.dir().join("data/in-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).expect("segment");
    let found = batches(&bytes);
    assert_eq!(found.len(), 3, "one batch per produce call");
    let (at, len) = found[1];
    // Inside the compressed records, past the batch header (61 bytes).
    for b in &mut bytes[at + 80..at + len - 8] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, bytes).expect("segment written");
    kafka.resume();

    let config = ServeConfigFile::new(&kafka.brokers(), "corrupt")
        .bundle(&bundle)
        .unknown_partition("fallback")
        .write(dir.path(), "corrupt");
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();
    let mut out = TopicReader::new(&kafka.brokers(), "out");
    assert!(
        out.read_until(Duration::from_secs(60), |r| r.len() >= 100),
        "the batch before the damaged one is scored:\n{}",
        daemon.log_text()
    );
    wait_for(
        Duration::from_secs(60),
        "the undecodable batch counted",
        || {
            common::metric_sum(
                &http_get(&addr, "/metrics").1,
                "manymodel_undecodable_batches_total",
            ) >= 1.0
        },
    );
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(
        status, 503,
        "unready while a batch cannot be decoded: {body}"
    );
    assert!(body.contains("cannot be decoded"), "{body}");
    println!("an undecodable batch: /readyz {status} {body}");
    assert!(
        daemon.child.try_wait().expect("status").is_none(),
        "the daemon keeps running:\n{}",
        daemon.log_text()
    );
    out.poll(Duration::from_secs(2));
    assert_eq!(
        out.records.len(),
        100,
        "nothing past the damaged batch is skipped to"
    );
}
