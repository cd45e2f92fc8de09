//! Production connectivity against Apache Kafka: a `SASL_SSL` listener with SCRAM-SHA-512 and
//! a test CA, which `serve`, `publish` and `generate` reach with the settings of
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
fn serve_publish_and_generate_work_over_sasl_ssl_and_wrong_credentials_only_make_it_unready() {
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

    let daemon = Daemon::start(&sasl_config(
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
    let daemon = Daemon::start(&config);
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
