//! `manymodel generate`: synthetic sales data with store-specific effects, for the demo, the
//! tests and the benchmarks.
//!
//! Each store has its own base level, price elasticity, promotion lift, temperature effect,
//! weekday pattern and hourly profile, plus Gaussian noise. The history covers `days` days of
//! opening hours (08:00–21:00 UTC); the events follow it, each carrying the noise-free
//! `expected_sales` so a report can measure error against the truth.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Number of stores.
    pub stores: usize,
    /// Days of history.
    pub days: usize,
    /// Events after the history.
    pub events: usize,
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// Random seed; the same seed gives the same files.
    pub seed: u64,
}

/// First history day: Monday 2025-01-06 00:00 UTC, in epoch milliseconds.
const START_MS: i64 = 1_736_121_600_000;
const HOUR_MS: i64 = 3_600_000;
const OPEN: std::ops::RangeInclusive<i64> = 8..=21;
const WEATHER: [&str; 3] = ["sunny", "cloudy", "rainy"];

/// The spec `generate` writes beside its data.
pub const TRAIN_TOML: &str = r#"# Written by `manymodel generate`: one linear model per store.
partition_column = "store_id"
target = "sales"
model = "linear"
min_rows = 30

[[features]]
column = "price"
kind = "numeric"

[[features]]
column = "promo"
kind = "bool"

[[features]]
column = "temperature"
kind = "numeric"

[[features]]
column = "weather"
kind = "one_hot"

[[features]]
column = "ts"
kind = "hour_of_day"

[[features]]
column = "ts"
kind = "day_of_week"
"#;

/// One store's true effects.
struct Store {
    id: String,
    base: f64,
    list_price: f64,
    elasticity: f64,
    promo_lift: f64,
    temp_effect: f64,
    weather: [f64; 3],
    weekday: [f64; 7],
    hour_scale: f64,
    noise: f64,
}

/// The shared shape of a day: a lunch peak and an evening peak.
fn hour_profile(hour: i64) -> f64 {
    let h = hour as f64;
    25.0 * (-(h - 12.5).powi(2) / 4.0).exp() + 35.0 * (-(h - 18.0).powi(2) / 3.0).exp()
}

/// One observation's inputs.
struct Row {
    ts_ms: i64,
    price: f64,
    promo: bool,
    temperature: f64,
    weather: usize,
}

impl Store {
    fn random(i: usize, width: usize, rng: &mut StdRng) -> Self {
        let wd = normal(12.0);
        Store {
            id: format!("S{:0width$}", i + 1),
            base: rng.random_range(80.0..300.0),
            list_price: rng.random_range(3.0..12.0),
            elasticity: rng.random_range(-9.0..-2.0),
            promo_lift: rng.random_range(8.0..40.0),
            temp_effect: rng.random_range(-1.5..2.5),
            weather: [
                0.0,
                rng.random_range(-10.0..5.0),
                rng.random_range(-25.0..0.0),
            ],
            weekday: std::array::from_fn(|d| if d >= 5 { 20.0 } else { 0.0 } + wd.sample(rng)),
            hour_scale: rng.random_range(0.5..1.6),
            noise: rng.random_range(3.0..9.0),
        }
    }

    fn expected(&self, r: &Row) -> f64 {
        let hour = (r.ts_ms / HOUR_MS).rem_euclid(24);
        let weekday = ((r.ts_ms / (24 * HOUR_MS)) + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
        self.base
            + self.elasticity * r.price
            + if r.promo { self.promo_lift } else { 0.0 }
            + self.temp_effect * r.temperature
            + self.weather[r.weather]
            + self.weekday[weekday]
            + self.hour_scale * hour_profile(hour)
    }

    /// One event at `ts_ms`, with its noise-free truth as `expected_sales`.
    fn event(&self, event_id: String, ts_ms: i64, rng: &mut StdRng) -> serde_json::Value {
        let r = self.row(ts_ms, rng);
        serde_json::json!({
            "event_id": event_id,
            "store_id": self.id,
            "ts": rfc3339(ts_ms),
            "price": r.price,
            "promo": r.promo,
            "temperature": r.temperature,
            "weather": WEATHER[r.weather],
            "expected_sales": (self.expected(&r) * 1000.0).round() / 1000.0,
        })
    }

    fn row(&self, ts_ms: i64, rng: &mut StdRng) -> Row {
        let day = (ts_ms - START_MS) as f64 / (24.0 * HOUR_MS as f64);
        let hour = (ts_ms / HOUR_MS).rem_euclid(24) as f64;
        let promo = rng.random_bool(0.2);
        let discount = if promo {
            rng.random_range(0.7..0.9)
        } else {
            1.0
        };
        Row {
            ts_ms,
            price: (self.list_price * discount * rng.random_range(0.95..1.05) * 100.0).round()
                / 100.0,
            promo,
            temperature: ((12.0
                + 8.0 * (day / 58.0).sin()
                + 4.0 * ((hour - 14.0) / 4.0).cos()
                + rng.random_range(-3.0..3.0))
                * 10.0)
                .round()
                / 10.0,
            weather: rng.random_range(0..3),
        }
    }
}

/// A centred normal; every caller passes a positive constant or a drawn positive `sd`.
fn normal(sd: f64) -> Normal<f64> {
    Normal::new(0.0, sd).expect("a positive standard deviation is valid")
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Counts of what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateReport {
    /// History rows.
    pub history_rows: usize,
    /// Events.
    pub events: usize,
}

/// Writes `history.csv`, `events.jsonl` and `train.toml` into `opts.out`.
pub fn run(opts: &GenerateOptions) -> Result<GenerateReport> {
    if opts.stores == 0 {
        return Err(Error::Usage("--stores must be at least 1".into()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let width = opts.stores.to_string().len().max(3);
    let stores: Vec<Store> = (0..opts.stores)
        .map(|i| Store::random(i, width, &mut rng))
        .collect();

    let path = opts.out.join("history.csv");
    let mut w = writer(&path)?;
    let io = |e| Error::io(&path, e);
    writeln!(w, "ts,store_id,price,promo,temperature,weather,sales").map_err(io)?;
    let mut history_rows = 0;
    for day in 0..opts.days as i64 {
        for hour in OPEN {
            let ts = START_MS + day * 24 * HOUR_MS + hour * HOUR_MS;
            for s in &stores {
                let r = s.row(ts, &mut rng);
                let sales = s.expected(&r) + normal(s.noise).sample(&mut rng);
                writeln!(
                    w,
                    "{},{},{},{},{},{},{:.3}",
                    rfc3339(r.ts_ms),
                    s.id,
                    r.price,
                    u8::from(r.promo),
                    r.temperature,
                    WEATHER[r.weather],
                    sales
                )
                .map_err(io)?;
                history_rows += 1;
            }
        }
    }
    w.flush().map_err(io)?;

    let path = opts.out.join("events.jsonl");
    let mut w = writer(&path)?;
    let io = |e| Error::io(&path, e);
    let after = START_MS + opts.days as i64 * 24 * HOUR_MS;
    for i in 0..opts.events {
        let s = &stores[rng.random_range(0..stores.len())];
        let day = rng.random_range(0..28);
        let hour = rng.random_range(OPEN);
        let ts = after + day * 24 * HOUR_MS + hour * HOUR_MS + rng.random_range(0..HOUR_MS);
        let event = s.event(format!("ev-{i}"), ts, &mut rng);
        serde_json::to_writer(&mut w, &event).map_err(|e| Error::io(&path, e.into()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)?;

    let path = opts.out.join("train.toml");
    std::fs::write(&path, TRAIN_TOML).map_err(|e| Error::io(&path, e))?;
    Ok(GenerateReport {
        history_rows,
        events: opts.events,
    })
}

/// What `generate --brokers` streams.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Number of stores (with `seed`, the same stores the files describe).
    pub stores: usize,
    /// Random seed.
    pub seed: u64,
    /// Bootstrap servers and librdkafka options.
    pub connection: crate::kafka::connection::Connection,
    /// Topic to produce to.
    pub topic: String,
    /// Events per second.
    pub rate: u64,
    /// Stop after this many; `None` streams until killed.
    pub events: Option<usize>,
}

/// Streams events, timestamped now, at a steady rate to a Kafka topic, keyed by store.
pub fn stream(opts: &StreamOptions) -> Result<u64> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    if opts.stores == 0 || opts.rate == 0 {
        return Err(Error::Usage(
            "--stores and --rate must be at least 1".into(),
        ));
    }
    let producer: BaseProducer = opts
        .connection
        .client_config()
        .set("linger.ms", "5")
        .create()
        .map_err(|e| Error::Kafka(format!("producer for {}: {e}", opts.connection.brokers)))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let width = opts.stores.to_string().len().max(3);
    let stores: Vec<Store> = (0..opts.stores)
        .map(|i| Store::random(i, width, &mut rng))
        .collect();
    let started = std::time::Instant::now();
    let mut sent: u64 = 0;
    let mut last_report = started;
    while opts.events.is_none_or(|n| (sent as usize) < n) {
        let due = std::time::Duration::from_secs_f64(sent as f64 / opts.rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            producer.poll(std::time::Duration::ZERO);
            std::thread::sleep(wait);
        }
        let s = &stores[rng.random_range(0..stores.len())];
        let ts = crate::clock::now_ms();
        let event = s
            .event(format!("gen-{}-{sent}", opts.seed), ts, &mut rng)
            .to_string();
        let record = BaseRecord::<str, str>::to(&opts.topic)
            .key(&s.id)
            .payload(&event);
        if let Err((e, _)) = producer.send(record) {
            tracing::warn!(error = %e, "event not enqueued; slowing down");
            producer.poll(std::time::Duration::from_millis(100));
            continue;
        }
        sent += 1;
        if last_report.elapsed() >= std::time::Duration::from_secs(10) {
            last_report = std::time::Instant::now();
            tracing::info!(sent, topic = %opts.topic, "streaming events");
        }
    }
    producer
        .flush(std::time::Duration::from_secs(30))
        .map_err(|e| Error::Kafka(format!("flushing to {}: {e}", opts.topic)))?;
    Ok(sent)
}

fn writer(path: &Path) -> Result<BufWriter<std::fs::File>> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}
