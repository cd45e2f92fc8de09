//! Exactly-once mode on Apache Kafka's transaction coordinator, with `manymodel serve`
//! processes: a `read_committed` reader of the output sees exactly one prediction or dead
//! letter per input record, across an instance killed (SIGKILL) between produce and commit,
//! across a zombie instance that was frozen while the group gave its Kafka partitions to
//! another instance, then woke up, and across an instance fenced by another that was given
//! its `transactional_id`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::chaos::{signal, TopicReader};
use common::kafka::{Kafka, Options};
use common::{generate_and_train, Daemon, ServeConfigFile};
use manymodel::local;

const GOOD: usize = 6_000;
const BAD: usize = 30;
/// Bad records sent after a second instance fenced the first.
const LATE: usize = 60;

/// The input: generated events and bad records mixed in, loaded before any daemon starts.
fn load(kafka: &Kafka, dir: &Path) -> PathBuf {
    for (t, n) in [("in", 3), ("out", 3), ("dlq", 1)] {
        kafka.create_topic(t, n);
    }
    let bundle = generate_and_train(dir, 30, GOOD, "v-eos");
    let mut records: Vec<Vec<u8>> = std::fs::read_to_string(dir.join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    for i in 0..BAD {
        records.insert(i * (GOOD / BAD), format!("not json {i}").into_bytes());
    }
    local::produce(&kafka.brokers(), "in", &Arc::new(records), |_| None, None)
        .expect("input produced");
    bundle
}

/// A broker of its own, in a folder of its own, with the input loaded: the folder, the broker,
/// the trained bundle and the broker's address.
fn loaded_broker() -> (tempfile::TempDir, Kafka, PathBuf, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = Kafka::start_with(Some(dir.path()), Options::default());
    let bundle = load(&kafka, dir.path());
    let brokers = kafka.brokers();
    (dir, kafka, bundle, brokers)
}

/// Starts instance `name` with `transactional_id` and waits until it is assigned and has
/// written outputs: 500 of them, with a transaction cut every second not all committed.
fn start_mid_work(
    dir: &Path,
    name: &str,
    brokers: &str,
    transactional_id: &str,
    bundle: &Path,
) -> Daemon {
    let mut daemon = Daemon::start(&config(dir, name, brokers, transactional_id, bundle));
    daemon.wait_assigned();
    let mut uncommitted = TopicReader::new(brokers, "out");
    assert!(uncommitted.read_until(Duration::from_secs(60), |r| r.len() >= 500));
    daemon
}

fn config(dir: &Path, name: &str, brokers: &str, transactional_id: &str, bundle: &Path) -> PathBuf {
    ServeConfigFile::new(brokers, "eos")
        .kafka(r#"processing = "exactly_once""#)
        .kafka(&format!("transactional_id = \"{transactional_id}\""))
        .kafka("commit_interval_ms = 1000")
        // A frozen instance leaves the group within seconds.
        .librdkafka("session.timeout.ms", "6000")
        .librdkafka("heartbeat.interval.ms", "1000")
        .bundle(bundle)
        .unknown_partition("fallback")
        .pipeline("max_in_flight = 2000")
        .write(dir, name)
}

/// Reads the committed output until every input record is accounted for, then a little
/// longer; asserts exactly one prediction per event and one dead letter per bad record (`bad`
/// of them).
fn assert_exactly_once(brokers: &str, logs: &[&Daemon], bad: usize) {
    let mut out = TopicReader::read_committed(brokers, "out");
    let mut dlq = TopicReader::read_committed(brokers, "dlq");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while out.records.len() < GOOD || dlq.records.len() < bad {
        out.poll(Duration::from_millis(300));
        dlq.poll(Duration::from_millis(100));
        assert!(
            std::time::Instant::now() < deadline,
            "committed output incomplete: {} predictions, {} dead letters\n{}",
            out.records.len(),
            dlq.records.len(),
            logs.iter()
                .map(|d| d.log_text())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
    }
    // Anything committed twice would be there by now.
    out.poll(Duration::from_secs(4));
    dlq.poll(Duration::from_secs(1));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &out.records {
        *counts.entry(r.event_id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "predictions committed twice: {twice:?}");
    assert_eq!(counts.len(), GOOD, "one prediction per event");
    assert_eq!(dlq.records.len(), bad, "one dead letter per bad record");
    println!(
        "exactly once: {} predictions for {GOOD} events, {} dead letters for {bad} bad records",
        out.records.len(),
        dlq.records.len()
    );
}

#[test]
fn a_sigkill_between_produce_and_commit_leaves_exactly_one_committed_output_per_record() {
    let (dir, _kafka, bundle, brokers) = loaded_broker();
    let mut first = start_mid_work(dir.path(), "first", &brokers, "eos-0", &bundle);
    signal(first.child.id(), "KILL");
    let _ = first.child.wait();
    // The restarted instance, with the same transactional.id, fences the dead one's open
    // transaction and starts from the committed offsets.
    let mut second = Daemon::start(&config(dir.path(), "second", &brokers, "eos-0", &bundle));
    second.wait_assigned();
    assert_exactly_once(&brokers, &[&first, &second], BAD);
}

#[test]
fn a_frozen_zombie_that_lost_its_kafka_partitions_commits_nothing_when_it_wakes() {
    let (dir, _kafka, bundle, brokers) = loaded_broker();
    let zombie = start_mid_work(dir.path(), "zombie", &brokers, "eos-a", &bundle);
    // Frozen mid-transaction: no heartbeats, so the group moves its Kafka partitions to the
    // other instance (its own transactional.id: only the group generation fences the zombie).
    signal(zombie.child.id(), "STOP");
    let mut other = Daemon::start(&config(dir.path(), "other", &brokers, "eos-b", &bundle));
    other.wait_assigned();
    let mut committed = TopicReader::read_committed(&brokers, "out");
    assert!(committed.read_until(Duration::from_secs(120), |r| r.len() >= GOOD / 2));
    signal(zombie.child.id(), "CONT");
    assert_exactly_once(&brokers, &[&zombie, &other], BAD);
    let log = zombie.log_text();
    println!(
        "zombie after waking:\n{}",
        log.lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
}

/// Two instances given one `transactional_id` (two on one host keep the default,
/// `GROUP_ID-HOSTNAME`): the second fences the first, which exits and says which setting
/// keeps instances apart, and the committed output still holds each record once.
#[test]
fn an_instance_fenced_by_another_with_its_transactional_id_exits_and_names_the_setting() {
    let (dir, _kafka, bundle, brokers) = loaded_broker();
    let mut first = start_mid_work(dir.path(), "first", &brokers, "eos-twin", &bundle);
    let mut second = Daemon::start(&config(dir.path(), "second", &brokers, "eos-twin", &bundle));
    // Assigned, the second has started its transactions and fenced the first, which finds out
    // at its next transactional call: new input, keyed over every Kafka partition, makes one.
    second.wait_assigned();
    let late: Vec<Vec<u8>> = (0..LATE)
        .map(|i| format!("late {i}").into_bytes())
        .collect();
    local::produce(&brokers, "in", &late, |p| Some(p.to_vec()), None).expect("late input");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = first.child.try_wait().expect("status") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fenced instance still runs:\n{}\n-----\n{}",
            first.log_text(),
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "a fenced instance exits with an error");
    let log = first.log_text();
    for says in ["\"eos-twin\"", "[kafka] transactional_id"] {
        assert!(
            log.contains(says),
            "{says} in the fenced instance's log:\n{log}"
        );
    }
    println!(
        "the fenced instance's last line:\n{}",
        log.lines().last().unwrap_or_default()
    );
    assert_exactly_once(&brokers, &[&first, &second], BAD + LATE);
}

/// A broker away for longer than the consumer session and the time-outs of the calls an abort
/// makes: the daemon loses its Kafka partitions, aborts its (empty) transaction and waits for
/// the broker to read its committed offsets and rewind, staying up and alive meanwhile (until
/// this was fixed it exited, unable to read them); when the broker is back it takes the new
/// events, exactly once.
#[test]
fn an_exactly_once_daemon_outlives_a_broker_outage_longer_than_its_session() {
    let (dir, mut kafka, bundle, brokers) = loaded_broker();
    let mut daemon = Daemon::start(&config(dir.path(), "outage", &brokers, "eos-o", &bundle));
    daemon.wait_assigned();
    assert_exactly_once(&brokers, &[&daemon], BAD);
    kafka.kill();
    let addr = daemon.metrics_addr();
    let away = std::time::Instant::now();
    while away.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            daemon.child.try_wait().expect("status").is_none(),
            "the daemon exited while the broker was away:\n{}",
            daemon.log_text()
        );
        let (code, body) = common::http_get(&addr, "/healthz");
        assert_eq!(code, 200, "alive while waiting for the broker: {body}");
    }
    kafka.resume();
    // The same events again, under ids of their own.
    let again: Vec<Vec<u8>> = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("an event");
            v["event_id"] = format!("{}-after", v["event_id"].as_str().expect("an id")).into();
            v.to_string().into_bytes()
        })
        .collect();
    local::produce(&brokers, "in", &again, |_| None, None).expect("input produced");
    let mut out = TopicReader::read_committed(&brokers, "out");
    let all = |r: &[common::chaos::Seen]| r.len() >= 2 * GOOD;
    assert!(
        out.read_until(Duration::from_secs(180), all),
        "{} predictions committed\n{}",
        out.records.len(),
        daemon.log_text()
    );
    out.poll(Duration::from_secs(4));
    let ids: std::collections::HashSet<&str> =
        out.records.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 2 * GOOD);
    assert_eq!(out.records.len(), 2 * GOOD, "each committed once");
    assert!(daemon.terminate().success());
}
