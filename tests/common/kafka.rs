//! Apache Kafka for the tests: one KRaft node (broker and controller in one JVM) on free
//! 127.0.0.1 ports, with its data in a folder of its own so that it can be killed and started
//! again with everything it had. Its jars come from `scripts/kafka/install` (which
//! `scripts/test` runs); `KAFKA_LIBS` names their folder.
//!
//! A broker can also listen with `SASL_SSL` (SCRAM-SHA-512 and a test CA made here with
//! openssl), for the tests of production connectivity.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The SCRAM user every SASL_SSL broker knows.
pub const SCRAM_USER: &str = "manymodel";
/// Its password.
pub const SCRAM_PASSWORD: &str = "manymodel-test-secret";

/// The folder of the broker's jars.
fn libs() -> PathBuf {
    if let Ok(p) = std::env::var("KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kafka/install"
        ))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/kafka/install runs");
    assert!(out.status.success(), "scripts/kafka/install failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// What a broker listens with, besides PLAINTEXT.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Clients are told to connect to this port (a proxy's) instead of the broker's own.
    pub advertised: Option<u16>,
    /// A second listener with SASL_SSL and SCRAM-SHA-512.
    pub sasl_ssl: bool,
}

/// An Apache Kafka broker, killed on drop.
pub struct Kafka {
    child: Option<Child>,
    dir: PathBuf,
    /// Kept for its folder's lifetime when the broker made its own.
    _temp: Option<tempfile::TempDir>,
    port: u16,
    advertised: u16,
    sasl_port: Option<u16>,
    /// Whether a watchdog shell stops the JVM when the test process exits (for brokers held
    /// in statics, which are never dropped).
    watched: bool,
}

impl Kafka {
    /// A broker with its data in a temporary folder of its own.
    pub fn start() -> Kafka {
        Self::start_in(None, Options::default(), false)
    }

    /// A broker with options, its data and log in `dir` (a temporary folder when `None`).
    pub fn start_with(dir: Option<&Path>, options: Options) -> Kafka {
        Self::start_in(dir, options, false)
    }

    /// One broker for the whole test binary, for binaries whose tests each use topics and
    /// groups of their own.
    pub fn shared() -> &'static Kafka {
        static SHARED: std::sync::OnceLock<Kafka> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::start_in(None, Options::default(), true))
    }

    fn start_in(dir: Option<&Path>, options: Options, watched: bool) -> Kafka {
        let (temp, dir) = match dir {
            Some(d) => (None, d.join(format!("kafka-{}", super::port()))),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir).expect("broker folder");
        let port = super::port();
        let controller = super::port();
        let advertised = options.advertised.unwrap_or(port);
        let sasl_port = options.sasl_ssl.then(super::port);
        let mut listeners =
            format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}");
        let mut advertised_listeners = format!("PLAINTEXT://127.0.0.1:{advertised}");
        let mut protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned();
        let mut extra = String::new();
        if let Some(sp) = sasl_port {
            tls_files(&dir);
            listeners.push_str(&format!(",SASL_SSL://127.0.0.1:{sp}"));
            advertised_listeners.push_str(&format!(",SASL_SSL://127.0.0.1:{sp}"));
            protocols.push_str(",SASL_SSL:SASL_SSL");
            extra = format!(
                "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 ssl.keystore.type=PEM\n\
                 ssl.keystore.location={}\n",
                dir.join("broker.pem").display()
            );
        }
        let properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners={listeners}\n\
             advertised.listeners={advertised_listeners}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map={protocols}\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             auto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=4\n\
             group.initial.rebalance.delay.ms=0\n\
             transaction.abort.timed.out.transaction.cleanup.interval.ms=2000\n\
             {extra}",
            data = dir.join("data").display(),
        );
        std::fs::write(dir.join("server.properties"), properties).expect("server.properties");
        std::fs::write(
            dir.join("log4j2.properties"),
            "rootLogger.level=WARN\nrootLogger.appenderRef.out.ref=out\nappender.out.type=Console\n\
             appender.out.name=out\nappender.out.layout.type=PatternLayout\n\
             appender.out.layout.pattern=[%d] %p %m (%c)%n\n",
        )
        .expect("log4j2.properties");
        let mut format = Command::new("java");
        format
            .arg("-cp")
            .arg(classpath())
            .args([
                "kafka.tools.StorageTool",
                "format",
                "-t",
                "bWFueW1vZGVsLXRlc3RzMQ",
                "-c",
            ])
            .arg(dir.join("server.properties"));
        if sasl_port.is_some() {
            format.args([
                "--add-scram",
                &format!("SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"),
            ]);
        }
        let out = format.output().expect("java runs (Java 17 is needed)");
        assert!(
            out.status.success(),
            "formatting Kafka's storage failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut kafka = Kafka {
            child: None,
            dir,
            _temp: temp,
            port,
            advertised,
            sasl_port,
            watched,
        };
        kafka.resume();
        kafka
    }

    /// Starts the broker process again with the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kafka.log"))
            .expect("kafka log file");
        let java: Vec<String> = vec![
            "java".into(),
            "-Xms128m".into(),
            "-Xmx512m".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ),
            "-cp".into(),
            classpath(),
            "kafka.Kafka".into(),
            self.dir.join("server.properties").display().to_string(),
        ];
        let mut command = if self.watched {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#"p=$1; shift; "$@" & t=$!; while kill -0 "$p" 2>/dev/null; do sleep 1; done; kill -9 "$t""#)
                .arg("sh")
                .arg(std::process::id().to_string())
                .args(&java);
            c
        } else {
            let mut c = Command::new(&java[0]);
            c.args(&java[1..]);
            c
        };
        let child = command
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("java starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Kafka did not listen on {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("kafka.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker cleanly (SIGTERM), so that its logs need no recovery at the next start.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Kills the broker process (SIGKILL): no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The bootstrap address clients use (PLAINTEXT): the advertised one.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// The broker's own PLAINTEXT port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SASL_SSL bootstrap address, for a broker started with it.
    pub fn sasl_ssl_brokers(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.sasl_port.expect("started with sasl_ssl")
        )
    }

    /// The test CA's certificate (PEM), for a broker started with SASL_SSL.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The folder of the broker's data, properties and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a topic with `partitions` Kafka partitions, waiting for the broker to be ready.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        create_topics(&self.brokers(), &[(name, partitions)], &[]);
    }

    /// Creates a topic with extra topic configuration (e.g. `cleanup.policy`).
    pub fn create_topic_with(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        create_topics(&self.brokers(), &[(name, partitions)], config);
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.kill();
    }
}

fn classpath() -> String {
    format!("{}/*", libs().display())
}

/// Creates topics through the admin API, retrying while the broker is still starting.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)], config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::types::RDKafkaErrorCode;
    let brokers = brokers.to_owned();
    let topics: Vec<(String, i32)> = topics.iter().map(|(t, n)| (t.to_string(), *n)).collect();
    let config: Vec<(String, String)> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // A thread of its own, so that async tests can call this too.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("admin client");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut pending = topics.clone();
            while !pending.is_empty() {
                let new: Vec<NewTopic<'_>> = pending
                    .iter()
                    .map(|(name, n)| {
                        config.iter().fold(
                            NewTopic::new(name, *n, TopicReplication::Fixed(1)),
                            |t, (k, v)| t.set(k, v),
                        )
                    })
                    .collect();
                let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                let mut failed = Vec::new();
                match admin.create_topics(&new, &opts).await {
                    Ok(results) => {
                        for r in results {
                            match r {
                                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                                Err((name, code)) => failed.push((name, code.to_string())),
                            }
                        }
                    }
                    Err(e) => {
                        failed.extend(pending.iter().map(|(n, _)| (n.clone(), e.to_string())))
                    }
                }
                pending.retain(|(n, _)| failed.iter().any(|(f, _)| f == n));
                if !pending.is_empty() {
                    assert!(
                        Instant::now() < deadline,
                        "creating topics on {brokers}: {failed:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    })
    .join()
    .expect("topics created");
}

/// A test CA and a broker certificate for 127.0.0.1 signed by it, made with openssl:
/// `ca.pem` for clients, `broker.pem` (PKCS#8 key and certificate) for the broker.
fn tls_files(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3",
        "-subj",
        "/CN=manymodel test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("san.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "broker.crt",
        "-days",
        "3",
        "-extfile",
        "san.ext",
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "broker.key",
        "-out",
        "broker.pk8",
    ]);
    let key = std::fs::read_to_string(dir.join("broker.pk8")).expect("key");
    let cert = std::fs::read_to_string(dir.join("broker.crt")).expect("cert");
    std::fs::write(dir.join("broker.pem"), format!("{key}{cert}")).expect("broker.pem");
}
