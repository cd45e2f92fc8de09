//! What the delivery tests break things with, and how they account for every record: a tansu
//! broker that can be killed and started again on the same port with its data, a proxy that
//! slows or holds the Produce requests going through it, readers that see every record of a
//! topic up to its end, the group's committed offsets, and the daemon's memory from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::tansu_binary;

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a [`Tansu`] keeps its data.
pub enum Storage {
    /// In memory: gone when the process is.
    Memory,
    /// SQLite in this folder (`sqlite://tansu.db`, which tansu resolves against its working
    /// directory): survives a restart.
    Sqlite(PathBuf),
}

/// A tansu broker that a test can kill and start again on the same port.
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    advertised: u16,
    args: Vec<String>,
    cwd: PathBuf,
    log: PathBuf,
}

impl Tansu {
    /// Starts a broker on a free port; clients are told to connect to `advertised` (a proxy's
    /// port) when given, else to the broker itself.
    pub fn start(storage: Storage, advertised: Option<u16>, log_dir: &Path) -> Tansu {
        let port = super::port();
        let advertised = advertised.unwrap_or(port);
        let (engine, cwd) = match storage {
            Storage::Memory => ("memory://tansu/".to_owned(), log_dir.to_owned()),
            Storage::Sqlite(dir) => ("sqlite://tansu.db".to_owned(), dir),
        };
        let args = vec![
            "broker".to_owned(),
            "--listener-url".to_owned(),
            format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url".to_owned(),
            format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine".to_owned(),
            engine,
        ];
        let mut broker = Tansu {
            child: None,
            port,
            advertised,
            args,
            cwd,
            log: log_dir.join(format!("tansu-{port}.log")),
        };
        broker.resume();
        broker
    }

    /// Starts the broker process again with the same port, storage and log.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tansu log file");
        let child = Command::new(tansu_binary())
            .args(&self.args)
            .current_dir(&self.cwd)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts (scripts/test installs it)");
        self.child = Some(child);
        wait_listening(self.port, "tansu");
    }

    /// Kills the broker process (SIGKILL): no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The bootstrap address clients use: the advertised one.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// The broker's own port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a topic with `partitions` Kafka partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        super::tansu_create_topic(self.port, name, partitions);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a [`ProduceThrottle`] does with Produce requests (Kafka API key 0). Every other request,
/// and every byte from the broker, passes at full speed, so consumers fetch as fast as ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Forwarded as they come.
    Open,
    /// Forwarded at this many bytes per second.
    Slow(u64),
    /// Held until the mode changes.
    Held,
}

/// A TCP proxy in front of a broker that slows or holds the Produce requests going through it:
/// a slow or unwritable output, as the daemon sees it, without touching its input.
pub struct ProduceThrottle {
    port: u16,
    mode: Arc<(Mutex<Throttle>, Condvar)>,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicU64>,
}

impl ProduceThrottle {
    /// Listens on a free port; [`connect_to`](Self::connect_to) says where to forward.
    pub fn listen() -> (ProduceThrottle, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = ProduceThrottle {
            port,
            mode: Arc::new((Mutex::new(Throttle::Open), Condvar::new())),
            stop: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicU64::new(0)),
        };
        (proxy, listener)
    }

    /// Forwards every connection accepted on `listener` to `upstream_port`.
    pub fn connect_to(&self, listener: TcpListener, upstream_port: u16) {
        let (mode, stop, held) = (self.mode.clone(), self.stop.clone(), self.held.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (c2, u2) = (
                    client.try_clone().expect("socket clone"),
                    upstream.try_clone().expect("socket clone"),
                );
                std::thread::spawn(move || {
                    let (mut from, mut to) = (u2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                });
                let (mode, held) = (mode.clone(), held.clone());
                std::thread::spawn(move || forward_requests(client, upstream, &mode, &held));
            }
        });
    }

    /// The proxy's port: what the broker advertises.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes what happens to Produce requests from now on.
    pub fn set(&self, throttle: Throttle) {
        let (lock, changed) = &*self.mode;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = throttle;
        changed.notify_all();
    }

    /// Produce requests that had to wait while held, so far.
    pub fn held_requests(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for ProduceThrottle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set(Throttle::Open);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies Kafka requests (4-byte size, then API key, version, ...) from `client` to
/// `upstream`, one whole request at a time, applying the throttle to Produce requests.
fn forward_requests(
    mut client: TcpStream,
    mut upstream: TcpStream,
    mode: &(Mutex<Throttle>, Condvar),
    held: &AtomicU64,
) {
    let mut frame = Vec::new();
    loop {
        let mut size = [0u8; 4];
        if client.read_exact(&mut size).is_err() {
            break;
        }
        let len = u32::from_be_bytes(size) as usize;
        frame.resize(len, 0);
        if client.read_exact(&mut frame).is_err() {
            break;
        }
        let produce = len >= 2 && frame[0] == 0 && frame[1] == 0;
        if produce {
            let (lock, changed) = mode;
            let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
            if *m == Throttle::Held {
                held.fetch_add(1, Ordering::Relaxed);
            }
            while *m == Throttle::Held {
                m = changed.wait(m).unwrap_or_else(|e| e.into_inner());
            }
            if let Throttle::Slow(rate) = *m {
                drop(m);
                std::thread::sleep(Duration::from_secs_f64((len + 4) as f64 / rate as f64));
            }
        }
        if upstream.write_all(&size).is_err() || upstream.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// One record read back, with where it was.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its Kafka partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The `event_id` of its JSON value (empty when it has none).
    pub event_id: String,
}

/// Reads every Kafka partition of a topic from the beginning, keeping what it read.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    /// Next offset to read, per Kafka partition.
    next: BTreeMap<i32, i64>,
    /// Everything read so far, in arrival order.
    pub records: Vec<Seen>,
}

impl TopicReader {
    /// A reader of `topic` (which must exist) from its first record.
    pub fn new(brokers: &str, topic: &str) -> TopicReader {
        Self::with_isolation(brokers, topic, "read_uncommitted")
    }

    /// A reader that sees only committed transactions, as consumers of exactly-once output
    /// do.
    pub fn read_committed(brokers: &str, topic: &str) -> TopicReader {
        Self::with_isolation(brokers, topic, "read_committed")
    }

    fn with_isolation(brokers: &str, topic: &str, isolation: &str) -> TopicReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("delivery-reader-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("reader created");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .expect("topic metadata");
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        assert!(!partitions.is_empty(), "{topic} has no Kafka partitions");
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition added");
        }
        consumer.assign(&tpl).expect("partitions assigned");
        TopicReader {
            consumer,
            topic: topic.to_owned(),
            next: partitions.into_iter().map(|p| (p, 0)).collect(),
            records: Vec::new(),
        }
    }

    /// Reads what arrives within `wait`.
    pub fn poll(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) => {
                    let event_id = m
                        .payload()
                        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    self.next.insert(m.partition(), m.offset() + 1);
                    self.records.push(Seen {
                        partition: m.partition(),
                        offset: m.offset(),
                        event_id,
                    });
                }
                Some(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                None => {}
            }
        }
    }

    /// Reads until `done(records)` holds or `timeout` passes; says whether it held.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&[Seen]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            self.poll(Duration::from_millis(200));
        }
    }

    /// Reads until `done(records)` holds, or until nothing new has arrived for `quiet`: a
    /// daemon that is slow (a busy machine, a broker that makes it seek back step by step)
    /// but still delivering is waited for, one that delivers nothing more is not. Says
    /// whether `done` held.
    pub fn read_while_arriving(&mut self, quiet: Duration, done: impl Fn(&[Seen]) -> bool) -> bool {
        let mut last_arrival = Instant::now();
        loop {
            if done(&self.records) {
                return true;
            }
            if last_arrival.elapsed() > quiet {
                return false;
            }
            let before = self.records.len();
            self.poll(Duration::from_millis(200));
            if self.records.len() > before {
                last_arrival = Instant::now();
            }
        }
    }

    /// Reads up to the high watermark of every Kafka partition, as it is now, and on until
    /// nothing more arrives for two seconds (tansu's in-memory engine has been seen
    /// answering a high watermark of 1 for a topic holding thousands of records).
    pub fn read_to_end(&mut self) {
        let mut high = BTreeMap::new();
        for &p in self.next.keys() {
            let (_, h) = self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(30))
                .expect("watermarks");
            high.insert(p, h);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let before = self.records.len();
            self.poll(Duration::from_secs(2));
            let behind = high.iter().any(|(p, h)| self.next[p] < *h);
            if !behind && self.records.len() == before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not read to its end: at {:?}, end {high:?}",
                self.topic,
                self.next
            );
        }
    }
}

/// Where each event went in the input topic: event id → (Kafka partition, offset).
pub fn input_positions(brokers: &str, topic: &str) -> HashMap<String, (i32, i64)> {
    let mut reader = TopicReader::new(brokers, topic);
    reader.read_to_end();
    reader
        .records
        .into_iter()
        .map(|r| (r.event_id, (r.partition, r.offset)))
        .collect()
}

/// The offsets `group` committed on `topic`'s Kafka partitions `0..partitions` (absent when
/// none was).
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offset reader created");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .expect("committed offsets readable");
    committed
        .elements_for_topic(topic)
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The daemon's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The Kafka partitions each "Kafka partitions assigned" line of a daemon's log lists, in
/// order (`kafka_partitions=[0, 3]`).
pub fn assignments(log: &str) -> Vec<Vec<i32>> {
    log.lines()
        .filter(|l| l.contains("Kafka partitions assigned"))
        .map(|l| {
            l.split("kafka_partitions=[")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .unwrap_or("")
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
        .collect()
}

/// Sends `signal` (e.g. `"KILL"`, `"TERM"`) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The (low, high) watermarks of `topic`'s Kafka partitions `0..partitions`.
pub fn watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("client created");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .unwrap_or((-1, -1))
        })
        .collect()
}
