//! Delivery under failure, against Apache Kafka: instances killed, stopped, joining
//! late, a broker restarted under them, an output too slow or unwritable. Every event keeps
//! at least one prediction; duplicates only come from what was read and not yet committed;
//! memory and in-flight events stay bounded while the output is slow; a stalled pipeline says
//! so on `/healthz`.
//!
//! Each test starts its own broker; instances are real `manymodel serve` processes.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::chaos::{
    assignments, committed_offsets, input_positions, memory_kib, watermarks, ProduceThrottle, Seen,
    Storage, Tansu, Throttle, TopicReader,
};
use common::kafka::{Kafka, Options};
use common::{generate_and_train, http_get, metric_sum, wait_for, Daemon, ServeConfigFile};
use manymodel::local;

/// Generated events (each with a unique `event_id`, `ev-N`) and a bundle trained on their
/// history.
struct Workload {
    bundle: PathBuf,
    events: Arc<Vec<Vec<u8>>>,
}

fn workload(dir: &Path, stores: usize, events: usize) -> Workload {
    let bundle = generate_and_train(dir, stores, events, "v-delivery");
    let events: Vec<Vec<u8>> = std::fs::read_to_string(dir.join("events.jsonl"))
        .expect("events written")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let mut ids = HashSet::new();
    for e in &events {
        let v: serde_json::Value = serde_json::from_slice(e).expect("JSON event");
        assert!(
            ids.insert(v["event_id"].as_str().expect("event_id").to_owned()),
            "event ids are unique"
        );
    }
    Workload {
        bundle,
        events: Arc::new(events),
    }
}

/// Produces the events keyed by store id, at most `rate` per second, on a thread of its own.
fn produce_in_background(
    brokers: &str,
    events: &Arc<Vec<Vec<u8>>>,
    rate: Option<u64>,
) -> JoinHandle<()> {
    let (brokers, events) = (brokers.to_owned(), events.clone());
    std::thread::spawn(move || {
        // A producer that batches, as real ones do (linger.ms 5, batches of many records).
        local::produce(&brokers, "in", &events, local::json_key("store_id"), rate)
            .expect("events produced");
    })
}

fn produce_all(brokers: &str, events: &Arc<Vec<Vec<u8>>>) {
    produce_in_background(brokers, events, None)
        .join()
        .expect("producer thread");
}

/// Topics `in` and `out` with `partitions` Kafka partitions each, and `dlq`.
fn create_topics(broker: &Kafka, partitions: i32) {
    broker.create_topic("in", partitions);
    broker.create_topic("out", partitions);
    broker.create_topic("dlq", 1);
}

/// A serve config `NAME.toml` in `dir` for topics `in` → `out`, consumer group `group`;
/// `kafka` and `pipeline` are extra lines for those tables.
fn config(
    dir: &Path,
    name: &str,
    brokers: &str,
    group: &str,
    bundle: &Path,
    kafka: &str,
    pipeline: &str,
) -> PathBuf {
    let mut c = ServeConfigFile::new(brokers, group)
        .bundle(bundle)
        .unknown_partition("fallback");
    for line in kafka.lines().filter(|l| !l.trim().is_empty()) {
        c = c.kafka(line);
    }
    for line in pipeline.lines().filter(|l| !l.trim().is_empty()) {
        c = c.pipeline(line);
    }
    c.write(dir, name)
}

/// A metric's value, `None` while the daemon has not exported it.
fn gauge(addr: &str, name: &str) -> Option<f64> {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .any(|l| l.starts_with(name))
        .then(|| metric_sum(&text, name))
}

fn distinct(records: &[Seen]) -> usize {
    records
        .iter()
        .map(|s| s.event_id.as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// Every event id read back, how many times.
fn prediction_counts(reader: &TopicReader) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for r in &reader.records {
        *counts.entry(r.event_id.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Asserts every event got at least one prediction; returns the duplicates (records beyond the
/// first per event). When some are missing, says which input offsets they were at and what
/// `group` committed, so a commit past an unprocessed record shows.
fn assert_all_predicted(
    brokers: &str,
    group: &str,
    reader: &TopicReader,
    events: usize,
    logs: &[(&str, String)],
) -> usize {
    let counts = prediction_counts(reader);
    let missing: Vec<String> = (0..events)
        .map(|i| format!("ev-{i}"))
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    if !missing.is_empty() {
        let positions = input_positions(brokers, "in");
        let partitions = positions.values().map(|(p, _)| p + 1).max().unwrap_or(1);
        let absent = missing
            .iter()
            .filter(|id| !positions.contains_key(*id))
            .count();
        println!(
            "{} event ids in the input topic, {absent} of the {} missing are not in it; \
             watermarks {:?}",
            positions.len(),
            missing.len(),
            watermarks(brokers, "in", partitions)
        );
        let committed = committed_offsets(brokers, group, "in", partitions);
        let mut lost: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for id in &missing {
            if let Some((p, o)) = positions.get(id) {
                lost.entry(*p).or_default().push(*o);
            }
        }
        let ranges: Vec<String> = lost
            .iter_mut()
            .map(|(p, offsets)| {
                offsets.sort_unstable();
                let mut runs: Vec<(i64, i64)> = Vec::new();
                for &o in offsets.iter() {
                    match runs.last_mut() {
                        Some((_, end)) if *end + 1 == o => *end = o,
                        _ => runs.push((o, o)),
                    }
                }
                let shown: Vec<String> = runs
                    .iter()
                    .take(5)
                    .map(|(a, b)| format!("{a}..={b}"))
                    .collect();
                format!(
                    "Kafka partition {p}: {} missing in {} runs {shown:?}, committed {:?}",
                    offsets.len(),
                    runs.len(),
                    committed.get(p)
                )
            })
            .collect();
        panic!(
            "{} of {events} events have no prediction (e.g. {:?}); by input offset: \
             {ranges:#?}\nlogs:\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            logs.iter()
                .map(|(who, log)| format!("----- {who}\n{log}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    reader.records.len() - counts.len()
}

fn assert_clean_log(daemon_log: &str, who: &str) {
    for line in daemon_log.lines() {
        assert!(
            !line.contains("panicked") && !line.contains(" ERROR "),
            "{who} logged a panic or an error: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A fleet of three, one killed, one late.

const FLEET_EVENTS: usize = 100_000;
const FLEET_KAFKA_PARTITIONS: i32 = 6;
/// The input arrives over about ten seconds, so the kill and the late start happen mid-stream.
const FLEET_RATE: u64 = 10_000;
/// `[pipeline] max_in_flight` of the fleet: events read and not yet acknowledged.
const FLEET_MAX_IN_FLIGHT: usize = 5_000;
/// `[kafka] commit_interval_ms` of the fleet.
const FLEET_COMMIT_INTERVAL_MS: usize = 100;
/// No instance on a 2-core test machine, sharing it with two others and the broker, finishes
/// events faster than this: a single instance alone on it drains a backlog at the rate the
/// slow-output test prints after its release, well below this.
const PEAK_EVENTS_PER_SEC: usize = 50_000;
/// A synchronous commit's round trip to the broker, at most (Kafka on localhost: ~10 ms).
const COMMIT_ROUND_TRIP_MS: usize = 200;
/// What a killed instance can have read and not committed, so what can be read again: the
/// events in flight (at most `max_in_flight`), plus those finished since its last commit
/// (commits start every `commit_interval_ms` and take up to a round trip, so at most
/// `PEAK_EVENTS_PER_SEC × (interval + round trip)` finished events wait for one). A graceful
/// revoke commits the finished prefix before giving Kafka partitions away, so it adds only
/// its own in-flight events, which the same bound covers per Kafka partition lost.
const UNCOMMITTED_WINDOW: usize = FLEET_MAX_IN_FLIGHT
    + PEAK_EVENTS_PER_SEC * (FLEET_COMMIT_INTERVAL_MS + COMMIT_ROUND_TRIP_MS) / 1000;

/// The Kafka partitions each instance held, from its log, from assignment line `from` on.
fn owners(logs: &[(&str, String)], from: &HashMap<&str, usize>) -> BTreeMap<i32, BTreeSet<String>> {
    let mut owners: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for (who, log) in logs {
        let lines = assignments(log);
        let start = from.get(who).copied().unwrap_or(0);
        for assigned in lines.iter().skip(start) {
            for p in assigned {
                owners.entry(*p).or_default().insert((*who).to_owned());
            }
        }
    }
    owners
}

#[test]
fn a_fleet_losing_one_instance_and_gaining_one_predicts_every_event_with_bounded_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Kafka::start_with(Some(dir.path()), Options::default());
    create_topics(&broker, FLEET_KAFKA_PARTITIONS);
    let w = workload(dir.path(), 50, FLEET_EVENTS);
    let kafka = format!(
        "commit_interval_ms = {FLEET_COMMIT_INTERVAL_MS}\n\
         [kafka.librdkafka_options]\n\
         \"session.timeout.ms\" = \"6000\"\n\
         \"heartbeat.interval.ms\" = \"500\""
    );
    let pipeline = format!("max_in_flight = {FLEET_MAX_IN_FLIGHT}");
    let start = |name: &str| {
        Daemon::start(&config(
            dir.path(),
            name,
            &broker.brokers(),
            "fleet",
            &w.bundle,
            &kafka,
            &pipeline,
        ))
    };
    let mut a = start("a");
    let mut b = start("b");
    let mut c = start("c");
    for d in [&mut a, &mut b, &mut c] {
        d.wait_assigned();
    }
    // The group settles: the latest assignments of the three split the Kafka partitions.
    wait_for(Duration::from_secs(60), "the group to settle", || {
        let latest: Vec<Vec<i32>> = [&a, &b, &c]
            .iter()
            .map(|d| assignments(&d.log_text()).pop().unwrap_or_default())
            .collect();
        let all: BTreeSet<i32> = latest.iter().flatten().copied().collect();
        latest.iter().all(|l| !l.is_empty())
            && all.len() == FLEET_KAFKA_PARTITIONS as usize
            && latest.iter().map(Vec::len).sum::<usize>() == all.len()
    });
    // Ownership counts from the assignment each holds when the stream starts.
    let mut from: HashMap<&str, usize> = HashMap::new();
    for (who, d) in [("a", &a), ("b", &b), ("c", &c)] {
        from.insert(who, assignments(&d.log_text()).len() - 1);
    }
    let killed_partitions = assignments(&c.log_text()).pop().unwrap_or_default();

    let producer = produce_in_background(&broker.brokers(), &w.events, Some(FLEET_RATE));
    let mut out = TopicReader::new(&broker.brokers(), "out");
    let progress = |n: usize| move |r: &[Seen]| r.len() >= n;
    assert!(out.read_until(Duration::from_secs(120), progress(FLEET_EVENTS * 3 / 10)));
    let _ = c.child.kill();
    let _ = c.child.wait();
    assert!(out.read_until(Duration::from_secs(120), progress(FLEET_EVENTS * 6 / 10)));
    let mut d = start("d");
    d.wait_assigned();
    let _ = out.read_until(Duration::from_secs(240), |r| distinct(r) >= FLEET_EVENTS);
    producer.join().expect("producer thread");

    let logs: Vec<(&str, String)> = vec![
        ("a", a.log_text()),
        ("b", b.log_text()),
        ("c", c.log_text()),
        ("d", d.log_text()),
    ];
    for (who, daemon) in [("a", a), ("b", b), ("d", d)] {
        let status = daemon.terminate();
        assert!(status.success(), "{who}: SIGTERM exits 0, got {status:?}");
    }
    out.read_to_end();
    let duplicates = assert_all_predicted(&broker.brokers(), "fleet", &out, FLEET_EVENTS, &logs);

    let owners = owners(&logs, &from);
    // The killed instance's Kafka partitions changed owner by definition, whether or not the
    // log lines of their next owner were caught.
    let changed: BTreeSet<i32> = owners
        .iter()
        .filter(|(_, o)| o.len() > 1)
        .map(|(p, _)| *p)
        .chain(killed_partitions.iter().copied())
        .collect();
    let positions = input_positions(&broker.brokers(), "in");
    let mut by_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for (id, n) in prediction_counts(&out) {
        if n > 1 {
            let (p, _) = positions[id];
            *by_partition.entry(p).or_default() += n - 1;
        }
    }
    // Instances that lost Kafka partitions after the stream started: the killed one, and any
    // whose assignment shrank in a rebalance.
    let mut losses = 1;
    for (who, log) in &logs {
        let lines = assignments(log);
        let start = from.get(who).copied().unwrap_or(0);
        for pair in lines[start.min(lines.len())..].windows(2) {
            if pair[0].iter().any(|p| !pair[1].contains(p)) {
                losses += 1;
            }
        }
    }
    println!(
        "fleet: {FLEET_EVENTS} events, {} predictions, {duplicates} duplicates by input Kafka \
         partition {by_partition:?}; killed instance held {killed_partitions:?}; Kafka \
         partitions that changed owner {changed:?}; owners {owners:?}; {losses} losses, bound \
         {} ({UNCOMMITTED_WINDOW} each)",
        out.records.len(),
        losses * UNCOMMITTED_WINDOW
    );
    for p in by_partition.keys() {
        assert!(
            changed.contains(p),
            "duplicates on Kafka partition {p}, which never changed owner (owners {owners:?})"
        );
    }
    assert!(
        duplicates <= losses * UNCOMMITTED_WINDOW,
        "{duplicates} duplicates exceed {losses} × the uncommitted window of {UNCOMMITTED_WINDOW}"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGTERM, then a restart.

#[test]
fn after_a_sigterm_a_restarted_instance_repeats_nothing_the_first_one_committed() {
    const EVENTS: usize = 20_000;
    const KAFKA_PARTITIONS: i32 = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Kafka::start_with(Some(dir.path()), Options::default());
    create_topics(&broker, KAFKA_PARTITIONS);
    let w = workload(dir.path(), 20, EVENTS);
    let kafka = "commit_interval_ms = 200";
    let mut first = Daemon::start(&config(
        dir.path(),
        "first",
        &broker.brokers(),
        "restart",
        &w.bundle,
        kafka,
        "",
    ));
    first.wait_assigned();
    // Ten seconds of input, so the stop comes mid-stream.
    let producer = produce_in_background(&broker.brokers(), &w.events, Some(2_000));
    let mut out = TopicReader::new(&broker.brokers(), "out");
    assert!(out.read_until(Duration::from_secs(120), |r| r.len() >= EVENTS / 4));
    let log = first.log_text();
    let status = first.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}:\n{log}");
    let first_log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
    assert!(
        first_log.contains("stopped cleanly"),
        "a clean stop is logged:\n{first_log}"
    );
    // ... as the last thing the daemon says: it left the group (revoking its Kafka
    // partitions) before.
    let stopped_at = first_log.rfind("stopped cleanly").unwrap_or(0);
    assert!(
        first_log[stopped_at..].trim_end().lines().count() == 1,
        "the clean stop is the log's last line:\n{first_log}"
    );
    assert!(
        first_log
            .rfind("Kafka partitions revoked")
            .is_some_and(|at| at < stopped_at),
        "the stop revokes the Kafka partitions before it is logged:\n{first_log}"
    );
    let committed = committed_offsets(&broker.brokers(), "restart", "in", KAFKA_PARTITIONS);
    out.read_to_end();
    let by_first = out.records.len();

    let mut second = Daemon::start(&config(
        dir.path(),
        "second",
        &broker.brokers(),
        "restart",
        &w.bundle,
        kafka,
        "",
    ));
    second.wait_assigned();
    producer.join().expect("producer thread");
    let _ = out.read_until(Duration::from_secs(120), |r| distinct(r) >= EVENTS);
    let second_log = second.log_text();
    assert!(second.terminate().success(), "SIGTERM exits 0");
    out.read_to_end();
    let duplicates = assert_all_predicted(
        &broker.brokers(),
        "restart",
        &out,
        EVENTS,
        &[("first", first_log), ("second", second_log)],
    );

    let positions = input_positions(&broker.brokers(), "in");
    let repeated: Vec<(String, i32, i64)> = out.records[by_first..]
        .iter()
        .filter_map(|r| {
            let (p, o) = positions[&r.event_id];
            (o < committed.get(&p).copied().unwrap_or(0)).then(|| (r.event_id.clone(), p, o))
        })
        .collect();
    println!(
        "sigterm: first instance made {by_first} predictions, committed {committed:?}; \
         {duplicates} duplicates overall"
    );
    assert!(
        repeated.is_empty(),
        "the restarted instance predicted {} events the first one had committed (committed \
         {committed:?}), e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------
// The broker goes away for half a minute.

#[test]
fn a_broker_restart_mid_stream_makes_the_daemon_unready_and_loses_nothing() {
    const EVENTS: usize = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = Kafka::start_with(Some(dir.path()), Options::default());
    create_topics(&broker, 3);
    let w = workload(dir.path(), 20, EVENTS);
    let mut daemon = Daemon::start(&config(
        dir.path(),
        "survivor",
        &broker.brokers(),
        "survivor",
        &w.bundle,
        "commit_interval_ms = 200",
        "",
    ));
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();
    // Twenty seconds of input: it keeps coming (into the producer's queue) while the broker
    // is down.
    let producer = produce_in_background(&broker.brokers(), &w.events, Some(1_000));
    let mut out = TopicReader::new(&broker.brokers(), "out");
    assert!(out.read_until(Duration::from_secs(120), |r| r.len() >= EVENTS / 5));

    broker.kill();
    // Readiness follows librdkafka's statistics, every five seconds.
    let down = Instant::now();
    let (mut unready, mut last_unready) = (None, None);
    while down.elapsed() < Duration::from_secs(30) {
        let (status, body) = http_get(&addr, "/readyz");
        if status == 503 && unready.is_none() {
            unready = Some(body.clone());
        }
        if status == 503 {
            last_unready = Some(body);
        }
        let (health, body) = http_get(&addr, "/healthz");
        assert_eq!(health, 200, "still alive with the broker down: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        daemon.child.try_wait().expect("daemon status").is_none(),
        "the daemon keeps running without a broker:\n{}",
        daemon.log_text()
    );
    let unready = unready.unwrap_or_else(|| {
        panic!(
            "/readyz never said 503 in 30 s without a broker:\n{}",
            daemon.log_text()
        )
    });
    println!("broker down: /readyz said {unready}");
    // Once librdkafka's statistics report it, the reason names the broker and its state.
    let last_unready = last_unready.unwrap_or_default();
    let address = format!("127.0.0.1:{}", broker.port());
    assert!(
        last_unready.contains("no broker is reachable") && last_unready.contains(&address),
        "/readyz names the unreachable broker {address}: {last_unready}"
    );

    broker.resume();
    wait_for(
        Duration::from_secs(60),
        "/readyz to answer 200 again",
        || http_get(&addr, "/readyz").0 == 200,
    );
    producer.join().expect("producer thread");
    let _ = out.read_until(Duration::from_secs(120), |r| distinct(r) >= EVENTS);
    let log = daemon.log_text();
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    out.read_to_end();
    let duplicates = assert_all_predicted(
        &broker.brokers(),
        "survivor",
        &out,
        EVENTS,
        &[("survivor", log)],
    );
    println!("broker restart: {duplicates} duplicates");
}

// ---------------------------------------------------------------------------------------------
// A slow output.

/// `[pipeline] max_in_flight` while the output is slow.
const SLOW_MAX_IN_FLIGHT: usize = 5_000;
/// Produce requests pass the proxy at this rate while throttled: a few hundred predictions a
/// second, far below what the daemon reads.
const SLOW_BYTES_PER_SEC: u64 = 64 * 1024;
/// Resident memory the daemon must stay under while its output is slow, in KiB. Measured on
/// the test machine: a daemon holding 50,000 of these events took 55 MiB, one holding
/// 200,000 took 160 MiB, so ~20 MiB at rest (binary, runtime threads, two librdkafka clients)
/// plus ~0.7 KiB per event read and not yet acknowledged (record, decoded event, queued job,
/// prediction and librdkafka's copy of it). With `max_in_flight` = 5,000 that is ~24 MiB;
/// librdkafka may also prefetch up to `queued.min.messages` = 100,000 records (~25 MiB of
/// these) before reading pauses. 128 MiB leaves room for allocator slack, and an instance
/// that kept reading the 200,000-event backlog into memory goes over it (160 MiB).
const SLOW_RSS_BOUND_KIB: u64 = 128 * 1024;

#[test]
fn a_slow_output_pauses_reading_and_keeps_memory_bounded_then_everything_arrives() {
    const EVENTS: usize = 200_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (proxy, listener) = ProduceThrottle::listen();
    let broker = Kafka::start_with(
        Some(dir.path()),
        Options {
            advertised: Some(proxy.port()),
            ..Options::default()
        },
    );
    proxy.connect_to(listener, broker.port());
    create_topics(&broker, 4);
    let w = workload(dir.path(), 50, EVENTS);
    produce_all(&broker.brokers(), &w.events);

    proxy.set(Throttle::Slow(SLOW_BYTES_PER_SEC));
    let mut daemon = Daemon::start(&config(
        dir.path(),
        "slow",
        &broker.brokers(),
        "slow",
        &w.bundle,
        "commit_interval_ms = 200",
        &format!("max_in_flight = {SLOW_MAX_IN_FLIGHT}"),
    ));
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();
    let pid = daemon.child.id();
    let mut max_in_flight: Option<f64> = None;
    let mut max_paused = 0.0f64;
    let mut max_rss = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(20) {
        let in_flight = gauge(&addr, "manymodel_in_flight_events");
        let paused = gauge(&addr, "manymodel_paused_kafka_partitions").unwrap_or(0.0);
        let (rss, _) = memory_kib(pid);
        if let Some(n) = in_flight {
            // The pause takes effect after the record that crossed the bound; records librdkafka
            // had already handed over by then still come in, a handful at most.
            assert!(
                n <= (SLOW_MAX_IN_FLIGHT + SLOW_MAX_IN_FLIGHT / 20) as f64,
                "{n} events in flight, over max_in_flight = {SLOW_MAX_IN_FLIGHT} plus 5%"
            );
            max_in_flight = Some(max_in_flight.unwrap_or(0.0).max(n));
        }
        max_paused = max_paused.max(paused);
        max_rss = max_rss.max(rss);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, hwm) = memory_kib(pid);
    let mut out = TopicReader::new(&broker.brokers(), "out");
    out.poll(Duration::from_secs(2));
    let while_slow = out.records.len();
    println!(
        "slow output: {while_slow} predictions out after 20 s throttled; in flight at most \
         {max_in_flight:?}, paused Kafka partitions at most {max_paused}; RSS at most {max_rss} \
         KiB, peak (VmHWM) {hwm} KiB, bound {SLOW_RSS_BOUND_KIB} KiB"
    );
    assert!(
        while_slow < EVENTS / 2,
        "the throttle did not slow the output ({while_slow} predictions)"
    );
    assert!(
        max_in_flight.is_some(),
        "manymodel_in_flight_events was never exported"
    );
    assert!(
        max_paused > 0.0,
        "reading never paused while the output was slow"
    );
    assert!(
        hwm <= SLOW_RSS_BOUND_KIB,
        "peak RSS {hwm} KiB over {SLOW_RSS_BOUND_KIB} KiB"
    );

    proxy.set(Throttle::Open);
    let released = Instant::now();
    let _ = out.read_until(Duration::from_secs(120), |r| distinct(r) >= EVENTS);
    println!(
        "slow output: the remaining {} events drained in {:.1} s once released",
        EVENTS - while_slow,
        released.elapsed().as_secs_f64()
    );
    let log = daemon.log_text();
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
    out.read_to_end();
    let duplicates =
        assert_all_predicted(&broker.brokers(), "slow", &out, EVENTS, &[("slow", log)]);
    println!("slow output: {duplicates} duplicates after release");
}

// ---------------------------------------------------------------------------------------------
// Cooperative-sticky assignment.

#[test]
fn cooperative_sticky_assignment_loses_nothing_when_instances_join_and_leave() {
    const EVENTS: usize = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Kafka::start_with(Some(dir.path()), Options::default());
    create_topics(&broker, 6);
    let w = workload(dir.path(), 30, EVENTS);
    let kafka = "commit_interval_ms = 200\n\
                 [kafka.librdkafka_options]\n\
                 \"partition.assignment.strategy\" = \"cooperative-sticky\"";
    let start = |name: &str| {
        Daemon::start(&config(
            dir.path(),
            name,
            &broker.brokers(),
            "cooperative",
            &w.bundle,
            kafka,
            "",
        ))
    };
    let mut first = start("coop-first");
    first.wait_assigned();
    let producer = produce_in_background(&broker.brokers(), &w.events, Some(2_000));
    let mut out = TopicReader::new(&broker.brokers(), "out");
    assert!(out.read_until(Duration::from_secs(120), |r| r.len() >= EVENTS * 3 / 10));
    let mut second = start("coop-second");
    second.wait_assigned();
    assert!(out.read_until(Duration::from_secs(120), |r| r.len() >= EVENTS * 6 / 10));
    let first_log = first.log_text();
    let status = first.terminate();
    let first_log = std::fs::read_to_string(dir.path().join("coop-first.log")).unwrap_or(first_log);
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status:?}:\n{first_log}"
    );
    producer.join().expect("producer thread");
    let _ = out.read_until(Duration::from_secs(120), |r| distinct(r) >= EVENTS);
    let second_log = second.log_text();
    assert!(second.terminate().success(), "SIGTERM exits 0");
    out.read_to_end();
    let duplicates = assert_all_predicted(
        &broker.brokers(),
        "cooperative",
        &out,
        EVENTS,
        &[("first", first_log.clone()), ("second", second_log.clone())],
    );
    println!(
        "cooperative-sticky: {duplicates} duplicates; first assigned {:?}, second assigned {:?}",
        assignments(&first_log),
        assignments(&second_log)
    );
    assert_clean_log(&first_log, "the first instance");
    assert_clean_log(&second_log, "the second instance");
    assert!(first_log.contains("stopped cleanly"), "{first_log}");
}

// ---------------------------------------------------------------------------------------------
// The stall watchdog.

#[test]
fn a_pipeline_that_cannot_write_reports_stalled_on_healthz_and_recovers() {
    const EVENTS: usize = 5_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (proxy, listener) = ProduceThrottle::listen();
    let broker = Kafka::start_with(
        Some(dir.path()),
        Options {
            advertised: Some(proxy.port()),
            ..Options::default()
        },
    );
    proxy.connect_to(listener, broker.port());
    create_topics(&broker, 2);
    let w = workload(dir.path(), 10, EVENTS);
    produce_all(&broker.brokers(), &w.events);

    // The output takes nothing: every Produce request is held at the proxy.
    proxy.set(Throttle::Held);
    let mut daemon = Daemon::start(&config(
        dir.path(),
        "stall",
        &broker.brokers(),
        "stall",
        &w.bundle,
        "commit_interval_ms = 200",
        "max_in_flight = 1000\nstall_timeout_secs = 5",
    ));
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();
    let mut stalled = String::new();
    wait_for(Duration::from_secs(60), "/healthz to answer 503", || {
        let (status, body) = http_get(&addr, "/healthz");
        stalled = body;
        status == 503
    });
    println!(
        "stalled: /healthz said {stalled}; {} Produce requests held",
        proxy.held_requests()
    );
    assert!(stalled.contains("stalled"), "the reason says so: {stalled}");
    let log = daemon.log_text();
    let stall_line = log
        .lines()
        .find(|l| l.to_lowercase().contains("stall"))
        .unwrap_or_else(|| panic!("the log says where it is stuck:\n{log}"));
    assert!(
        stall_line.contains("kafka_partition") || stall_line.contains("Kafka partition"),
        "the stall line names the Kafka partitions stuck: {stall_line}"
    );

    proxy.set(Throttle::Open);
    wait_for(
        Duration::from_secs(60),
        "/healthz to answer 200 again",
        || http_get(&addr, "/healthz").0 == 200,
    );
    let mut out = TopicReader::new(&broker.brokers(), "out");
    let _ = out.read_until(Duration::from_secs(120), |r| distinct(r) >= EVENTS);
    let log = daemon.log_text();
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
    out.read_to_end();
    assert_all_predicted(&broker.brokers(), "stall", &out, EVENTS, &[("stall", log)]);
}

// ---------------------------------------------------------------------------------------------
// A backlog from a producer that batches, far above `max_in_flight`, with no failure: every
// Kafka partition is paused and resumed many times, each time inside a record batch.

const BACKLOG_EVENTS: usize = 40_000;

/// Loads the backlog, then runs one daemon over it with `max_in_flight = 1000`; returns the
/// duplicates, after asserting that every event has a prediction.
fn backlog_run(brokers: &str, create: impl Fn(&str, i32), dir: &Path, who: &str) -> usize {
    create("in", 4);
    create("out", 4);
    create("dlq", 1);
    let w = workload(dir, 200, BACKLOG_EVENTS);
    produce_all(brokers, &w.events);
    let mut daemon = Daemon::start(&config(
        dir,
        who,
        brokers,
        who,
        &w.bundle,
        "commit_interval_ms = 200",
        "max_in_flight = 1000",
    ));
    daemon.wait_assigned();
    let mut out = TopicReader::new(brokers, "out");
    // Against tansu every resume lands inside a record batch, and finding the batch's start
    // again takes the daemon several seconds a step: on a busy machine the whole run takes
    // minutes, so wait as long as predictions keep arriving.
    let _ = out.read_while_arriving(Duration::from_secs(120), |r| distinct(r) >= BACKLOG_EVENTS);
    let addr = daemon.metrics_addr();
    let (_, metrics) = http_get(&addr, "/metrics");
    let log = daemon.log_text();
    assert!(daemon.terminate().success(), "SIGTERM exits 0");
    out.read_to_end();
    let duplicates =
        assert_all_predicted(brokers, who, &out, BACKLOG_EVENTS, &[(who, log.clone())]);
    println!(
        "{who}: {BACKLOG_EVENTS} events, {} predictions, 0 missing, {duplicates} duplicates; \
         pauses logged {}, read gaps {}, repeats dropped {}",
        out.records.len(),
        log.matches("pausing every Kafka partition").count(),
        metric_sum(&metrics, "manymodel_read_gaps_total"),
        metric_sum(&metrics, "manymodel_records_repeated_total"),
    );
    assert!(
        log.contains("pausing every Kafka partition"),
        "the backlog is far above max_in_flight, so reading paused:\n{log}"
    );
    assert_clean_log(&log, who);
    duplicates
}

#[test]
fn a_batched_backlog_far_above_max_in_flight_gets_exactly_one_prediction_per_event_on_kafka() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Kafka::start_with(Some(dir.path()), Options::default());
    let duplicates = backlog_run(
        &broker.brokers(),
        |t, n| broker.create_topic(t, n),
        dir.path(),
        "backlog-kafka",
    );
    assert_eq!(duplicates, 0, "no failure, so no duplicate");
}

/// tansu 0.6.0 answers a fetch from inside a record batch with the next batch (or nothing):
/// the daemon notices, seeks further back and drops what it reads twice.
#[test]
fn a_batched_backlog_on_tansu_loses_nothing_although_it_skips_records_after_a_seek() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Tansu::start(Storage::Memory, None, dir.path());
    let duplicates = backlog_run(
        &broker.brokers(),
        |t, n| broker.create_topic(t, n),
        dir.path(),
        "backlog-tansu",
    );
    assert_eq!(
        duplicates, 0,
        "records read twice are dropped, not scored again"
    );
}
