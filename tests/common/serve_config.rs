//! One way for tests to write a serve config: what every test shares (topics `in`, `out`,
//! `dlq`, commits every 200 ms, metrics on a free port) and the lines each test adds.

use std::path::{Path, PathBuf};

/// A serve config being put together; [`ServeConfigFile::write`] writes it.
#[derive(Debug, Clone)]
pub struct ServeConfigFile {
    brokers: String,
    group: String,
    topics: (String, String, String),
    bundle: Option<PathBuf>,
    unknown_partition: Option<String>,
    kafka: Vec<String>,
    librdkafka: Vec<(String, String)>,
    model: Vec<String>,
    pipeline: Vec<String>,
    metrics: Vec<String>,
    actuals: Vec<String>,
}

impl ServeConfigFile {
    /// Topics `in` → `out` (dead letters to `dlq`) on `brokers`, consumer group `group`.
    pub fn new(brokers: &str, group: &str) -> Self {
        ServeConfigFile {
            brokers: brokers.to_owned(),
            group: group.to_owned(),
            topics: ("in".into(), "out".into(), "dlq".into()),
            bundle: None,
            unknown_partition: None,
            kafka: vec!["commit_interval_ms = 200".into()],
            librdkafka: Vec::new(),
            model: Vec::new(),
            pipeline: Vec::new(),
            metrics: vec![r#"listen = "127.0.0.1:0""#.into()],
            actuals: Vec::new(),
        }
    }

    /// Other input, output and dead-letter topics.
    pub fn topics(mut self, input: &str, output: &str, dlq: &str) -> Self {
        self.topics = (input.into(), output.into(), dlq.into());
        self
    }

    /// `[model] bundle`.
    pub fn bundle(mut self, bundle: &Path) -> Self {
        self.bundle = Some(bundle.to_owned());
        self
    }

    /// `[model] unknown_partition`.
    pub fn unknown_partition(mut self, what: &str) -> Self {
        self.unknown_partition = Some(what.to_owned());
        self
    }

    /// A line of `[kafka]`, e.g. `control_topic = "control"` (a later `commit_interval_ms`
    /// replaces the default one).
    pub fn kafka(mut self, line: &str) -> Self {
        if line.trim_start().starts_with("commit_interval_ms") {
            self.kafka.retain(|l| !l.starts_with("commit_interval_ms"));
        }
        self.kafka.push(line.to_owned());
        self
    }

    /// A librdkafka option (`[kafka.librdkafka_options]`).
    pub fn librdkafka(mut self, key: &str, value: &str) -> Self {
        self.librdkafka.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A line of `[model]`.
    pub fn model(mut self, line: &str) -> Self {
        self.model.push(line.to_owned());
        self
    }

    /// A line of `[pipeline]`.
    pub fn pipeline(mut self, line: &str) -> Self {
        self.pipeline.push(line.to_owned());
        self
    }

    /// A line of `[metrics]`.
    pub fn metrics(mut self, line: &str) -> Self {
        self.metrics.push(line.to_owned());
        self
    }

    /// A line of `[actuals]` (the table is written once it has a line).
    pub fn actuals(mut self, line: &str) -> Self {
        self.actuals.push(line.to_owned());
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let (input, output, dlq) = &self.topics;
        let mut t = format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\ninput_topic = \"{input}\"\n\
             output_topic = \"{output}\"\ndlq_topic = \"{dlq}\"\n",
            self.brokers, self.group
        );
        for line in &self.kafka {
            t.push_str(&format!("{line}\n"));
        }
        if !self.librdkafka.is_empty() {
            t.push_str("[kafka.librdkafka_options]\n");
            for (k, v) in &self.librdkafka {
                t.push_str(&format!("\"{k}\" = \"{v}\"\n"));
            }
        }
        t.push_str("[model]\n");
        if let Some(b) = &self.bundle {
            t.push_str(&format!("bundle = \"{}\"\n", b.display()));
        }
        if let Some(u) = &self.unknown_partition {
            t.push_str(&format!("unknown_partition = \"{u}\"\n"));
        }
        for (table, lines) in [("", &self.model), ("[pipeline]\n", &self.pipeline)] {
            if !lines.is_empty() || table.is_empty() {
                t.push_str(table);
                for line in lines {
                    t.push_str(&format!("{line}\n"));
                }
            }
        }
        t.push_str("[metrics]\n");
        for line in &self.metrics {
            t.push_str(&format!("{line}\n"));
        }
        if !self.actuals.is_empty() {
            t.push_str("[actuals]\n");
            for line in &self.actuals {
                t.push_str(&format!("{line}\n"));
            }
        }
        t
    }

    /// Writes `DIR/NAME.toml` (the daemon's log goes beside it, `NAME.log`).
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, self.text()).expect("config written");
        path
    }
}
