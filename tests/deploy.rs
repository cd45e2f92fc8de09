//! The local stack, checked statically (no Docker engine here): docker-compose.yml, the
//! Dockerfile, the Prometheus config and the Grafana provisioning parse, the files they mount
//! exist, and ports, hosts and topic names agree with config/ and with each other.

use std::path::Path;

use manymodel::config::ServeConfig;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join(path)).unwrap())
        .unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

#[test]
fn the_compose_stack_agrees_with_its_configs() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    for name in [
        "kafka",
        "topics",
        "trainer",
        "manymodel",
        "loadgen",
        "prometheus",
        "grafana",
    ] {
        assert!(services.get(name).is_some(), "service {name} is missing");
    }
    assert!(services["kafka"]["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka"));
    assert_eq!(
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft, single node"
    );

    // Every bind mount exists in the repository.
    for (name, service) in services.as_mapping().unwrap() {
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    root().join(source).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    assert!(services["trainer"]["build"].as_str() == Some("."));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    // The binary copied out of the build stage is the one its `cargo build` made, with a
    // profile Cargo.toml defines.
    let build = dockerfile
        .lines()
        .find(|l| l.starts_with("RUN cargo build"))
        .expect("the build stage runs cargo build");
    let words: Vec<&str> = build.split_whitespace().collect();
    let profile = match words.iter().position(|w| *w == "--profile") {
        // Cargo's `dev` profile builds into `target/debug`.
        Some(i) if words.get(i + 1) == Some(&"dev") => "debug",
        Some(i) => words.get(i + 1).expect("--profile names a profile"),
        None if words.contains(&"--release") => "release",
        None => "debug",
    };
    if !["release", "debug"].contains(&profile) {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("[profile.{profile}]")),
            "the Dockerfile builds with profile {profile}, which Cargo.toml does not define"
        );
    }
    let binary = format!("/src/target/{profile}/manymodel ");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY --from=build ") && l.contains(&binary)),
        "the Dockerfile does not copy {binary}out of its build stage"
    );
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(
            root().join(source).exists(),
            "Dockerfile copies {source}, which does not exist"
        );
    }

    // The daemon's config is the one mounted, and it matches the stack.
    let mount = strings(&services["manymodel"]["volumes"])
        .into_iter()
        .find(|v| v.ends_with("/etc/manymodel/serve.toml:ro"))
        .expect("the serve config is mounted");
    let config = ServeConfig::load(&root().join(mount.split(':').next().unwrap())).unwrap();
    assert_eq!(config.kafka.brokers, "kafka:9092");
    let command = strings(&services["topics"]["command"]).join(" ");
    for topic in [
        &config.kafka.input_topic,
        &config.kafka.output_topic,
        &config.kafka.dlq_topic,
    ] {
        assert!(
            command.contains(topic.as_str()),
            "topic {topic} is not created by the topics service"
        );
    }
    let loadgen = strings(&services["loadgen"]["command"]);
    let arg = |flag: &str| {
        loadgen
            .iter()
            .position(|a| a == flag)
            .map(|i| loadgen[i + 1].clone())
    };
    assert_eq!(
        arg("--topic").as_deref(),
        Some(config.kafka.input_topic.as_str())
    );
    assert_eq!(
        arg("--brokers").as_deref(),
        Some(config.kafka.brokers.as_str())
    );
    // Bundles reach the daemon through the control topic the trainer publishes on.
    let control = config
        .kafka
        .control_topic
        .as_deref()
        .expect("a control topic");
    assert!(
        command.contains(&format!("--topic {control} --partitions 1")),
        "the control topic is created with one Kafka partition: {command}"
    );
    let trainer = strings(&services["trainer"]["command"]).join(" ");
    assert!(
        trainer.contains(&format!(
            "manymodel publish --bundle /data/bundle.avro --brokers {} --control-topic {control}",
            config.kafka.brokers
        )),
        "the trainer publishes its bundle: {trainer}"
    );

    // Ports: the metrics listener, what compose publishes and what Prometheus scrapes.
    let metrics_port = config.metrics.listen.rsplit(':').next().unwrap().to_owned();
    assert!(strings(&services["manymodel"]["ports"])
        .iter()
        .any(|p| p.ends_with(&format!(":{metrics_port}"))));
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let targets = strings(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, vec![format!("manymodel:{metrics_port}")]);

    // Grafana: the datasource points at the prometheus service, the dashboard uses it.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["url"], "http://prometheus:9090");
    assert!(strings(&services["prometheus"]["ports"])
        .iter()
        .any(|p| p.ends_with(":9090")));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/manymodel.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            ds["uid"].as_str(),
            "panel {}",
            panel["title"]
        );
    }
    let providers = yaml("deploy/grafana/provisioning/dashboards/manymodel.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(strings(&services["grafana"]["volumes"])
        .iter()
        .any(|v| v.contains(&format!("{path}/manymodel.json"))));
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(root().join("deploy/prometheus/prometheus.yml"))
        .output()
    else {
        panic!("promtool is missing (scripts/test installs Debian's prometheus package)");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The runtime image installs the Debian package of every shared library the binary links
/// beyond glibc's (libssl and libcrypto for TLS and SASL, libz), so it starts in the image.
#[test]
fn the_runtime_image_installs_every_library_the_binary_links() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let ldd = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_manymodel"))
        .output()
        .expect("ldd runs");
    let linked = String::from_utf8_lossy(&ldd.stdout);
    let packages = [
        ("libssl.so.3", "libssl3"),
        ("libcrypto.so.3", "libssl3"),
        ("libz.so.1", "zlib1g"),
    ];
    for line in linked.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        if lib.starts_with("linux-vdso")
            || lib.contains("ld-linux")
            || [
                "libc.so",
                "libm.so",
                "libgcc_s.so",
                "libpthread.so",
                "libdl.so",
                "librt.so",
            ]
            .iter()
            .any(|g| lib.starts_with(g))
        {
            continue;
        }
        let package = packages
            .iter()
            .find(|(l, _)| *l == lib)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| {
                panic!("the binary links {lib}: name its Debian package here and in the Dockerfile")
            });
        assert!(
            runtime.contains(package),
            "the runtime stage does not install {package} (for {lib}):\n{runtime}"
        );
    }
}
