//! The dashboard's queries against a real Prometheus scraping a running daemon: every PromQL
//! expression of `deploy/grafana/manymodel.json` must parse and return data. The daemon
//! reads actuals too (one store's shifted, so it drifts), for the accuracy panels.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{generate_and_train, http_get, port, url_encode, Broker, Daemon, ServeConfigFile};
use manymodel::local;

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/manymodel.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// The actual of a generated event: its expected sales, 40 more for store S002 (drifting).
fn actual(event: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(event).unwrap();
    let shift = if v["store_id"] == "S002" { 40.0 } else { 0.0 };
    v["sales"] = (v["expected_sales"].as_f64().unwrap() + shift).into();
    v.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_parses_and_returns_data() {
    let broker = Broker::start();
    for t in ["in", "out", "dlq", "actuals", "drift"] {
        broker.create_topic(t, 2);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = generate_and_train(dir.path(), 8, 3000, "v-prom");
    let config = ServeConfigFile::new(&broker.brokers(), "prom")
        .bundle(&bundle)
        .metrics(r#"per_partition_metrics = ["S001"]"#)
        .actuals(r#"topic = "actuals""#)
        .actuals(r#"drift_topic = "drift""#)
        .actuals("min_actuals = 10")
        .write(dir.path(), "prom");
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let metrics_addr = daemon.metrics_addr();

    let web = format!("127.0.0.1:{}", port());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: manymodel\n    static_configs:\n      - targets: [\"{metrics_addr}\"]\n"),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new(std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into()))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (scripts/test installs Debian's package)"),
    );

    // Traffic in two waves, so rates have samples on both sides.
    let lines: Vec<Vec<u8>> = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    for wave in lines.chunks(1500) {
        let mut payloads = wave.to_vec();
        payloads.push(b"not json".to_vec());
        let actuals: Vec<Vec<u8>> = wave.iter().map(|l| actual(l)).collect();
        let brokers = broker.brokers();
        tokio::task::spawn_blocking(move || {
            local::produce(&brokers, "in", &payloads, |_| None, Some(500))?;
            local::produce(&brokers, "actuals", &actuals, |_| None, None)
        })
        .await
        .unwrap()
        .unwrap();
    }

    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "the dashboard has its panels");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing = queries.clone();
    while !missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "queries without data: {missing:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
        missing.retain(|q| {
            let (status, body) = match std::panic::catch_unwind(|| {
                http_get(&web, &format!("/api/v1/query?query={}", url_encode(q)))
            }) {
                Ok(r) => r,
                Err(_) => return true,
            };
            let v: serde_json::Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(_) => return true,
            };
            assert_ne!(status, 400, "Prometheus refuses {q}: {body}");
            !(v["status"] == "success"
                && v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()))
        });
    }
    assert!(daemon.terminate().success());
}
