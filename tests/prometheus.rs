//! The dashboard's queries against a real Prometheus scraping a running daemon: every PromQL
//! expression of `deploy/grafana/manymodel.json` must parse and return data.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, port, url_encode, Stack};
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

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_parses_and_returns_data() {
    let Stack {
        daemon,
        broker,
        dir,
    } = Stack::start("prom", 2, 8, 3000, "v-prom");
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
        let brokers = broker.brokers();
        tokio::task::spawn_blocking(move || {
            local::produce(&brokers, "in", &payloads, |_| None, Some(500))
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
