//! `manymodel generate`: synthetic sales data with store-specific effects, for the demo, the
//! tests and the benchmarks.
//!
//! Each store has its own base level, price elasticity, promotion lift, temperature effect,
//! weekday pattern and hourly profile, plus Gaussian noise. The history covers `days` days of
//! opening hours (08:00–21:00 UTC); the events follow it, each carrying the noise-free
//! `expected_sales` so a report can measure error against the truth, and each with its
//! **actual**: the event plus the realised `sales` (truth plus the store's noise), as it would
//! be known later. With [`Drift`] some stores change behaviour part-way through the events
//! ([`drift`]).
//!
//! What a seed gives never changes with the features added later: the stores, the history and
//! the events' inputs come from one RNG in one order, and the drift and the actuals' noise from
//! RNGs of their own.

pub mod drift;

pub use drift::{drift_plan, Drift, DriftPlan};

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};
use drift::Regimes;

/// Mixed into the seed for the actuals' noise ("actual" in ASCII).
const ACTUALS_STREAM: u64 = 0x6163_7475_616c;

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
    /// Which stores change behaviour, from which event ([`Drift::NONE`]: none).
    pub drift: Drift,
}

/// First history day: Monday 2025-01-06 00:00 UTC, in epoch milliseconds.
const START_MS: i64 = 1_736_121_600_000;
const HOUR_MS: i64 = 3_600_000;
const OPEN: std::ops::RangeInclusive<i64> = 8..=21;
const WEATHER: [&str; 3] = ["sunny", "cloudy", "rainy"];

/// `ms` with its hour folded into the opening hours (08:00–21:59 UTC; those stay as they
/// are), the same day: the sale time of a streamed event. The history has no sale outside them, so a model knows
/// nothing of other hours; a stream at 03:00 UTC would otherwise look drifted everywhere.
/// (The Kafka record keeps the real time.)
fn opening_hours(ms: i64) -> i64 {
    let (day, within_day) = (ms.div_euclid(24 * HOUR_MS), ms.rem_euclid(24 * HOUR_MS));
    let (hour, within_hour) = (within_day / HOUR_MS, within_day % HOUR_MS);
    let open_hours = OPEN.end() - OPEN.start() + 1;
    let folded = OPEN.start() + (hour - OPEN.start()).rem_euclid(open_hours);
    day * 24 * HOUR_MS + folded * HOUR_MS + within_hour
}

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
#[derive(Clone)]
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

    /// The event of `r`, with its noise-free truth under this behaviour as `expected_sales`.
    fn event(&self, event_id: String, r: &Row, expected: f64) -> serde_json::Value {
        serde_json::json!({
            "event_id": event_id,
            "store_id": self.id,
            "ts": rfc3339(r.ts_ms),
            "price": r.price,
            "promo": r.promo,
            "temperature": r.temperature,
            "weather": WEATHER[r.weather],
            "expected_sales": thousandths(expected),
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

/// `n` stores drawn from `rng`: the same stores for the same seed, in files and in a stream.
fn stores(n: usize, rng: &mut StdRng) -> Vec<Store> {
    let width = n.to_string().len().max(3);
    (0..n).map(|i| Store::random(i, width, rng)).collect()
}

/// The stores after their history: the behaviour each is in at each event, and the noise that
/// turns an event's truth into its actual.
struct Population {
    stores: Vec<Store>,
    regimes: Regimes,
    /// The actuals' noise, apart from the events' RNG so that the events are the same whether
    /// or not anyone reads the actuals.
    noise: StdRng,
}

impl Population {
    fn new(stores: Vec<Store>, seed: u64, drift: Drift) -> Self {
        Population {
            regimes: Regimes::new(&stores, seed, drift),
            stores,
            noise: StdRng::seed_from_u64(seed ^ ACTUALS_STREAM),
        }
    }

    /// Event number `index`, of store number `store` at `ts_ms`: its inputs drawn from `rng`,
    /// its truth from the behaviour in force, and its actual (the event plus `sales`).
    fn observe(
        &mut self,
        store: usize,
        index: usize,
        event_id: String,
        ts_ms: i64,
        rng: &mut StdRng,
    ) -> (serde_json::Value, serde_json::Value) {
        let r = self.stores[store].row(ts_ms, rng);
        let truth = self.regimes.in_force(&self.stores, store, index);
        let expected = truth.expected(&r);
        let event = truth.event(event_id, &r, expected);
        let mut actual = event.clone();
        actual["sales"] =
            thousandths(expected + normal(truth.noise).sample(&mut self.noise)).into();
        (event, actual)
    }

    fn plan(&self, seed: u64, fraction: f64) -> DriftPlan {
        self.regimes.plan(&self.stores, seed, fraction)
    }
}

fn thousandths(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
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
    /// Events (and as many actuals).
    pub events: usize,
    /// The ids of the stores that drift, sorted.
    pub drifted: Vec<String>,
}

/// Writes `history.csv`, `events.jsonl`, `actuals.jsonl`, `drift.json` and `train.toml` into
/// `opts.out`.
pub fn run(opts: &GenerateOptions) -> Result<GenerateReport> {
    if opts.stores == 0 {
        return Err(Error::Usage("--stores must be at least 1".into()));
    }
    opts.drift.validate()?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let stores = stores(opts.stores, &mut rng);

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

    let mut population = Population::new(stores, opts.seed, opts.drift);
    let mut events = JsonLines::create(opts.out.join("events.jsonl"))?;
    let mut actuals = JsonLines::create(opts.out.join("actuals.jsonl"))?;
    let after = START_MS + opts.days as i64 * 24 * HOUR_MS;
    for i in 0..opts.events {
        let store = rng.random_range(0..population.stores.len());
        let day = rng.random_range(0..28);
        let hour = rng.random_range(OPEN);
        let ts = after + day * 24 * HOUR_MS + hour * HOUR_MS + rng.random_range(0..HOUR_MS);
        let (event, actual) = population.observe(store, i, format!("ev-{i}"), ts, &mut rng);
        events.write(&event)?;
        actuals.write(&actual)?;
    }
    events.finish()?;
    actuals.finish()?;

    let plan = population.plan(opts.seed, opts.drift.fraction);
    let path = opts.out.join("drift.json");
    std::fs::write(&path, plan.to_json(opts.drift.after)).map_err(|e| Error::io(&path, e))?;
    let path = opts.out.join("train.toml");
    std::fs::write(&path, TRAIN_TOML).map_err(|e| Error::io(&path, e))?;
    Ok(GenerateReport {
        history_rows,
        events: opts.events,
        drifted: plan.drifted,
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
    /// Which stores change behaviour, from which event ([`Drift::NONE`]: none).
    pub drift: Drift,
    /// Where each event's actual goes, right after the event, keyed by store (JSON); `None`
    /// sends none.
    pub actuals_topic: Option<String>,
    /// Where to write the drift report (`drift.json`'s shape); `None` writes none.
    pub drift_report: Option<PathBuf>,
}

/// Streams events, timestamped now, at a steady rate to a Kafka topic, keyed by store, each
/// followed by its actual on `actuals_topic` when given.
pub fn stream(opts: &StreamOptions) -> Result<u64> {
    use crate::pacing::{serve_reports, Reports};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    if opts.stores == 0 || opts.rate == 0 {
        return Err(Error::Usage(
            "--stores and --rate must be at least 1".into(),
        ));
    }
    opts.drift.validate()?;
    let producer: BaseProducer<Reports> = opts
        .connection
        .producer_side_config(&[("linger.ms", "5")])
        .create_with_context(Reports::default())
        .map_err(|e| Error::Kafka(format!("producer for {}: {e}", opts.connection.brokers)))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut population = Population::new(stores(opts.stores, &mut rng), opts.seed, opts.drift);
    let plan = population.plan(opts.seed, opts.drift.fraction);
    if !plan.drifted.is_empty() {
        tracing::info!(
            after = opts.drift.after,
            stores = ?plan.drifted,
            "these stores drift from the event numbered `after` on"
        );
    }
    if let Some(path) = &opts.drift_report {
        std::fs::write(path, plan.to_json(opts.drift.after)).map_err(|e| Error::io(path, e))?;
    }
    let pacer = crate::pacing::Pacer::new(opts.rate);
    let mut sent: u64 = 0;
    let mut last_report = std::time::Instant::now();
    while opts.events.is_none_or(|n| (sent as usize) < n) {
        pacer.wait_serving(sent, || serve_reports(&producer));
        let store = rng.random_range(0..population.stores.len());
        let ts = opening_hours(crate::clock::now_ms());
        let id = format!("gen-{}-{sent}", opts.seed);
        let (event, actual) = population.observe(store, sent as usize, id, ts, &mut rng);
        let key = &population.stores[store].id;
        let event = event.to_string();
        let record = BaseRecord::<str, str>::to(&opts.topic)
            .key(key)
            .payload(&event);
        if let Err((e, _)) = producer.send(record) {
            tracing::warn!(error = %e, "event not enqueued; slowing down");
            producer.poll(std::time::Duration::from_millis(100));
            continue;
        }
        if let Some(topic) = &opts.actuals_topic {
            // The event is on its way, so its actual must follow it: wait for room, never drop.
            let actual = actual.to_string();
            let mut record = BaseRecord::<str, str>::to(topic).key(key).payload(&actual);
            while let Err((e, unsent)) = producer.send(record) {
                if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                    return Err(Error::Kafka(format!("producing an actual to {topic}: {e}")));
                }
                producer.poll(std::time::Duration::from_millis(100));
                record = unsent;
            }
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

/// A file of one JSON object per line.
struct JsonLines {
    path: PathBuf,
    w: BufWriter<std::fs::File>,
}

impl JsonLines {
    fn create(path: PathBuf) -> Result<Self> {
        Ok(JsonLines {
            w: writer(&path)?,
            path,
        })
    }

    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        serde_json::to_writer(&mut self.w, value).map_err(|e| Error::io(&self.path, e.into()))?;
        self.w
            .write_all(b"\n")
            .map_err(|e| Error::io(&self.path, e))
    }

    fn finish(mut self) -> Result<()> {
        self.w.flush().map_err(|e| Error::io(&self.path, e))
    }
}

fn writer(path: &Path) -> Result<BufWriter<std::fs::File>> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_sales_happen_in_opening_hours_on_the_same_day() {
        let day = START_MS + 100 * 24 * HOUR_MS;
        for hour in 0..24 {
            let now = day + hour * HOUR_MS + 1234;
            let t = opening_hours(now);
            let h = (t / HOUR_MS).rem_euclid(24);
            assert!(OPEN.contains(&h), "{hour} → {h}");
            assert_eq!(t.div_euclid(24 * HOUR_MS), now.div_euclid(24 * HOUR_MS));
            assert_eq!(t % HOUR_MS, 1234);
            if OPEN.contains(&hour) {
                assert_eq!(t, now, "opening hours stay as they are");
            }
        }
    }

    fn generate(dir: &Path, drift: Drift) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        run(&GenerateOptions {
            stores: 20,
            days: 2,
            events: 1500,
            out: dir.to_owned(),
            seed: 9,
            drift,
        })
        .unwrap();
        let lines = |name: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        (lines("events.jsonl"), lines("actuals.jsonl"))
    }

    #[test]
    fn drift_changes_only_the_truth_of_drifted_stores_from_the_drift_event_on() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (events, actuals) = generate(a.path(), Drift::NONE);
        let drift = Drift {
            fraction: 0.2,
            after: 400,
        };
        let (drifted_events, drifted_actuals) = generate(b.path(), drift);
        let history = |d: &Path| std::fs::read(d.join("history.csv")).unwrap();
        assert_eq!(history(a.path()), history(b.path()));
        let plan = drift_plan(20, 9, 0.2).unwrap();
        assert_eq!(plan.drifted.len(), 4);

        let mut changed = 0;
        for (i, (old, new)) in events.iter().zip(&drifted_events).enumerate() {
            let store = old["store_id"].as_str().unwrap();
            if i < drift.after || !plan.drifted.iter().any(|d| d == store) {
                assert_eq!(old, new, "event {i}");
                assert_eq!(actuals[i], drifted_actuals[i], "actual {i}");
                continue;
            }
            let mut same = new.clone();
            same["expected_sales"] = old["expected_sales"].clone();
            assert_eq!(old, &same, "only the truth moves: event {i}");
            assert_ne!(old["expected_sales"], new["expected_sales"], "event {i}");
            // The same noise on the new truth.
            let noise = |a: &serde_json::Value| {
                a["sales"].as_f64().unwrap() - a["expected_sales"].as_f64().unwrap()
            };
            assert!((noise(&actuals[i]) - noise(&drifted_actuals[i])).abs() < 0.0011);
            changed += 1;
        }
        assert!(
            changed > 100,
            "{changed} events of drifted stores after the drift"
        );
    }

    #[test]
    fn an_actual_is_its_event_plus_sales() {
        let dir = tempfile::tempdir().unwrap();
        let (events, actuals) = generate(dir.path(), Drift::NONE);
        assert_eq!(events.len(), actuals.len());
        for (event, actual) in events.iter().zip(&actuals) {
            let mut event = event.clone();
            event["sales"] = actual["sales"].clone();
            assert!(actual["sales"].is_f64());
            assert_eq!(&event, actual);
        }
    }

    #[test]
    fn drift_json_is_the_plan_of_the_library() {
        let dir = tempfile::tempdir().unwrap();
        let drift = Drift {
            fraction: 0.25,
            after: 10,
        };
        generate(dir.path(), drift);
        let text = std::fs::read_to_string(dir.path().join("drift.json")).unwrap();
        assert_eq!(text, drift_plan(20, 9, 0.25).unwrap().to_json(10));
    }
}
