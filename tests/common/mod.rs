//! Shared test harness: Apache Kafka brokers ([`kafka`]), tansu for what only it shows
//! ([`chaos`]), and the `manymodel` binary as a user runs it.
#![allow(dead_code)]

pub mod chaos;
pub mod headers;
pub mod kafka;
pub mod serve_config;

pub use serve_config::ServeConfigFile;

/// The broker the integration tests run on: Apache Kafka.
pub use kafka::Kafka as Broker;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `manymodel` binary under test.
pub fn manymodel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_manymodel"))
}

/// Runs `manymodel args...` to completion.
pub fn run(args: &[&str]) -> Output {
    manymodel().args(args).output().expect("manymodel runs")
}

/// Runs and asserts success, returning stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "manymodel {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = Path::new(&home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from("tansu")
}

/// A running `manymodel serve`, stopped with SIGKILL on drop unless stopped before.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `manymodel serve --config config`, logging to a file beside it.
    pub fn start(config: &Path) -> Daemon {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = manymodel()
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("manymodel serve starts");
        Daemon { child, log }
    }

    /// Waits until the daemon logs that it has Kafka partitions assigned, failing at once
    /// (with its log) if it exits first, e.g. on a config it refuses.
    pub fn wait_assigned(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.log_text();
            if text.contains("Kafka partitions assigned") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) before any assignment:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "daemon never got an assignment:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address of the metrics and health listener, from the log.
    pub fn metrics_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.log_text();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                if let Some(addr) = rest.split('/').next() {
                    return addr.to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no metrics listener in the log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("daemon exits");
        std::mem::forget(self);
        status
    }

    /// Waits until `/readyz` names `version` as the active bundle.
    pub fn wait_active(&self, version: &str) {
        let addr = self.metrics_addr();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = http_get(&addr, "/readyz");
            let v: serde_json::Value =
                serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            if code == 200 && v["bundle_version"] == version {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{version} never became active: /readyz {code} {body}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, polling every 200 ms; panics with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The events/s a `manymodel bench` report gives for `pipeline` ("passthrough" or
/// "scoring"); 0 when the line is missing.
pub fn bench_rate(report: &str, pipeline: &str) -> f64 {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pipeline))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0)
}

/// Writes a serve config `DIR/NAME.toml` for the given topics and bundle, consumer group
/// `name`, with per-store metrics for S001.
pub fn write_config(
    dir: &Path,
    name: &str,
    brokers: &str,
    topics: (&str, &str, &str),
    bundle: &Path,
    unknown: &str,
) -> PathBuf {
    ServeConfigFile::new(brokers, name)
        .topics(topics.0, topics.1, topics.2)
        .bundle(bundle)
        .unknown_partition(unknown)
        .metrics(r#"per_partition_metrics = ["S001"]"#)
        .write(dir, name)
}

/// Generates data and trains a bundle in `dir`; returns the bundle path.
pub fn generate_and_train(dir: &Path, stores: usize, events: usize, version: &str) -> PathBuf {
    let d = dir.to_str().expect("utf-8 temp dir");
    run_ok(&[
        "generate",
        "--stores",
        &stores.to_string(),
        "--days",
        "21",
        "--events",
        &events.to_string(),
        "--out",
        d,
    ]);
    train(dir, "bundle.avro", version)
}

/// Trains `dir/history.csv` under `dir/train.toml` (as `generate` writes them) into
/// `dir/NAME`, stamped `version`; returns the bundle path.
pub fn train(dir: &Path, name: &str, version: &str) -> PathBuf {
    let bundle = dir.join(name);
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    run_ok(&[
        "train",
        "--spec",
        &path(&dir.join("train.toml")),
        "--input",
        &path(&dir.join("history.csv")),
        "--output",
        &path(&bundle),
        "--version",
        version,
    ]);
    bundle
}

/// A plain HTTP GET: status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("listener reachable");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The value of one sample line of Prometheus text output (`name{labels} value`), summing all
/// series whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a URL query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn port() -> u16 {
    free_port()
}

/// The usual test setup: a broker with topics `in`, `out` and `dlq`, a bundle trained on
/// generated data, and a daemon serving it (`unknown_partition = "fallback"`), assigned.
pub struct Stack {
    /// The daemon (first, so it stops before the broker).
    pub daemon: Daemon,
    /// The broker.
    pub broker: Broker,
    /// Where the data, the bundle and the config live.
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Starts it all; `name` names the consumer group and the config file.
    pub fn start(
        name: &str,
        kafka_partitions: i32,
        stores: usize,
        events: usize,
        version: &str,
    ) -> Stack {
        let broker = Broker::start();
        for t in ["in", "out", "dlq"] {
            broker.create_topic(t, kafka_partitions);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = generate_and_train(dir.path(), stores, events, version);
        let config = write_config(
            dir.path(),
            name,
            &broker.brokers(),
            ("in", "out", "dlq"),
            &bundle,
            "fallback",
        );
        let mut daemon = Daemon::start(&config);
        daemon.wait_assigned();
        Stack {
            daemon,
            broker,
            dir,
        }
    }
}

/// A Python interpreter (`$PYTHON`, else `python3`) that can import `modules` (e.g.
/// `"sklearn, numpy"`); the pip `packages` are installed first when it cannot.
pub fn python_with(modules: &str, packages: &[&str]) -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has = || {
        Command::new(&python)
            .args(["-c", &format!("import {modules}")])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has() {
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .expect("pip runs");
        assert!(status.success(), "installing {packages:?} failed");
    }
    python
}

/// Creates a topic with `partitions` Kafka partitions on the tansu broker at `port`.
pub fn tansu_create_topic(port: u16, name: &str, partitions: i32) {
    let out = Command::new(tansu_binary())
        .args([
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
            "--broker",
            &format!("tcp://127.0.0.1:{}", port),
        ])
        .output()
        .expect("tansu topic create runs");
    assert!(
        out.status.success(),
        "creating {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
