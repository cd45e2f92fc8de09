//! `manymodel demo`: the whole product in one command, with no services.
//!
//! It starts librdkafka's MockCluster in-process, generates a sales history and a stream of
//! events, trains a bundle, serves it, produces the events, reads the predictions back and
//! reports throughput, latency and error against the generator's noise-free truth
//! ([`truth`]). Half-way it publishes a second version and shows the swap. Meanwhile a few
//! stores change behaviour, and [`accuracy_loop`] shows the daemon finding them from their
//! actuals, `retrain` refitting them and the delta it publishes bringing their error back down.

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::control::publish::{publish_bytes, PublishOptions, DEFAULT_CHUNK_BYTES};
use crate::control::reader::ControlOptions;
use crate::control::ActiveBundle;
use crate::error::{Error, Result};
use crate::local;
use crate::metrics::PipelineStats;
use crate::serve::{self, Mode};
use accuracy_loop::{LoopReport, Plan, Retrained};
use truth::{Errors, Truth};

pub mod accuracy_loop;
pub mod truth;

/// The demo's control topic.
const CONTROL: &str = "manymodel-control";
/// The version the demo publishes half-way through the stream.
const SECOND: &str = "demo-v2";
/// The generator's seed.
const SEED: u64 = 7;
/// How long a published version may take to be swapped in.
const SWAP_PATIENCE: Duration = Duration::from_secs(30);

/// Runs the demo and writes its report to `out`.
pub async fn run(stores: usize, events: usize, out: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let say = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    // Above the stores `workload` fits, most models are copies of other stores': no store's
    // actuals would fit its model, so there is no accuracy to show.
    let plan = (stores <= local::FITTED_STORES).then(|| Plan::new(stores, events));
    let drift = plan.map_or(crate::generate::Drift::NONE, |p| p.drift);
    let work = local::workload(stores, 28, events, SEED, "demo-v1", drift)?;
    say(
        out,
        format!(
            "generated {stores} stores: {} history rows and {events} events",
            work.history_rows
        ),
    );
    say(
        out,
        format!(
            "trained bundle {}: {} partition models + fallback in {:.2}s",
            work.bundle.version,
            work.bundle.partitions.len(),
            work.train_seconds
        ),
    );
    if let Some(p) = &plan {
        say(
            out,
            format!(
                "{} of the stores change behaviour after event {}; their actuals will show it",
                work.drifted.len(),
                p.drift.after
            ),
        );
    }
    let bundle = Arc::new(work.bundle);

    let cluster = MockCluster::new(1)
        .map_err(|e| Error::Kafka(format!("cannot start the MockCluster: {e}")))?;
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [
        ("sales", 6),
        ("predictions", 6),
        ("sales-dlq", 1),
        (CONTROL, 1),
        (accuracy_loop::ACTUALS, 2),
        (accuracy_loop::DRIFT, 1),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .map_err(|e| Error::Kafka(format!("creating topic {topic} on the MockCluster: {e}")))?;
    }
    say(
        out,
        format!("in-process Kafka (librdkafka MockCluster) at {brokers}"),
    );

    let mut config = local::serve_config(
        &brokers,
        "manymodel-demo",
        "sales",
        "predictions",
        "sales-dlq",
    );
    config.actuals = plan.map(|_| accuracy_loop::actuals_config());
    let stats = Arc::new(PipelineStats::printing_latency());
    let shutdown = CancellationToken::new();

    // Bundles reach the pipeline the way they do in production: published on the control
    // topic, read back, validated and swapped in.
    let publish = PublishOptions {
        bundle: Default::default(),
        connection: crate::kafka::connection::Connection::plain(&brokers),
        control_topic: CONTROL.into(),
        signing_key: None,
        chunk_bytes: DEFAULT_CHUNK_BYTES,
        activate: true,
    };
    let first = bundle.to_avro()?;
    publish_bytes(&first, &publish, None)?;
    let (bundles, reader) = crate::control::reader::start(
        ControlOptions {
            brokers: brokers.clone(),
            topic: CONTROL.into(),
            librdkafka_options: Default::default(),
            trusted: Default::default(),
            keep_versions: 4,
            max_bundle_bytes: 1 << 30,
            formats: Default::default(),
        },
        None,
        shutdown.clone(),
    );
    let mut watch = bundles.clone();
    let pipeline = {
        let (config, stats, shutdown) = (config.clone(), stats.clone(), shutdown.clone());
        tokio::spawn(
            async move { serve::run(&config, bundles, Mode::Score, stats, shutdown).await },
        )
    };

    let truth = Truth::parse(&work.events);
    let lines = |text: &str| -> Arc<Vec<Vec<u8>>> {
        Arc::new(text.lines().map(|l| l.as_bytes().to_vec()).collect())
    };
    let payloads = lines(&work.events);
    let actuals = lines(if plan.is_some() { &work.actuals } else { "" });
    drop(work.events);
    drop(work.actuals);
    let stream = Stream {
        brokers: &brokers,
        events: payloads,
        actuals,
        stats: &stats,
    };

    // Wait for the consumer group to hand out the input's Kafka partitions, so the figures
    // measure scoring, not the group join.
    let join_deadline = Instant::now() + Duration::from_secs(30);
    while stats.assigned.load(Ordering::Relaxed) == 0 && Instant::now() < join_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream in batches, with the actuals of each after it: up to the drift, up to the
    // hot reload half-way, up to the retrain, the rest.
    let half = events / 2;
    let (drift_at, retrain_at) = plan.map_or((half, half), |p| {
        (p.drift.after.min(half), p.retrain_at.max(half))
    });
    let mut elapsed = stream.batch(0..drift_at).await?;
    elapsed += stream.batch(drift_at..half).await?;
    let second = local::reversioned(&bundle, SECOND)?;
    let swap_started = Instant::now();
    {
        let publish = publish.clone();
        tokio::task::spawn_blocking(move || publish_bytes(&second, &publish, None))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
    }
    let swapped = wait_for_version(&mut watch, SECOND).await;
    let reload_ms = swap_started.elapsed().as_secs_f64() * 1e3;
    elapsed += stream.batch(half..retrain_at).await?;
    // The daemon has judged every actual so far: what did it flag, and what does a retrain
    // make of it?
    let looped = match plan {
        Some(_) => {
            let detection = accuracy_loop::detect(&brokers, &stats).await?;
            let run = accuracy_loop::retrain(&brokers, CONTROL).await;
            let delta = run
                .as_ref()
                .ok()
                .and_then(|r| r.published.as_ref())
                .map(|p| p.manifest.version.clone());
            let swapped = match &delta {
                Some(v) => wait_for_version(&mut watch, v).await,
                None => false,
            };
            Some((
                detection,
                Retrained {
                    run,
                    delta,
                    swapped,
                },
            ))
        }
        None => None,
    };
    elapsed += stream.batch(retrain_at..events).await?;
    let after = match plan {
        Some(_) => accuracy_loop::accuracy(&stats).await?,
        None => Default::default(),
    };
    let latency = stats
        .latency(false)
        .ok_or_else(|| Error::Internal("the demo's stats keep no latency histogram".into()))?;

    let records = local::read(&brokers, "predictions", events, Duration::from_secs(30)).await?;
    let shifted: std::collections::HashSet<&str> = plan
        .map(|_| work.drifted.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let delta = looped.as_ref().and_then(|(_, r)| r.delta.as_deref());
    let (mut all, mut stale, mut refit, mut fallback) = (
        Errors::default(),
        Errors::default(),
        Errors::default(),
        0usize,
    );
    let mut by_version: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &records {
        let Ok(p) = serde_json::from_slice::<serde_json::Value>(&r.value) else {
            continue;
        };
        let (Some(id), Some(pred)) = (
            p.get("event_id").and_then(|v| v.as_str()),
            p.get("prediction").and_then(|v| v.as_f64()),
        ) else {
            continue;
        };
        let version = p.get("model_version").and_then(|v| v.as_str());
        if let Some(v) = version {
            *by_version.entry(v.to_owned()).or_default() += 1;
        }
        if p.get("model").and_then(|v| v.as_str()) == Some("fallback") {
            fallback += 1;
        }
        if let Some(t) = truth.get(id) {
            let error = pred - t.sales;
            all.add(error);
            if t.index >= drift_at && shifted.contains(t.store.as_str()) {
                match (version, delta) {
                    (Some(v), Some(d)) if v == d => refit.add(error),
                    _ => stale.add(error),
                }
            }
        }
    }
    shutdown.cancel();
    let clean = pipeline.await.map_err(|e| Error::Internal(e.to_string()))?;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;

    say(out, String::new());
    say(out, "manymodel demo report".into());
    say(out, format!("  events produced:        {events}"));
    say(
        out,
        format!(
            "  predictions read back:  {} ({} by the fallback model)",
            records.len(),
            fallback
        ),
    );
    say(
        out,
        if swapped {
            format!("  hot reload:             {SECOND} published after {half} events; validated and swapped in {reload_ms:.0} ms after publishing began")
        } else {
            format!(
                "  hot reload:             {SECOND} was not swapped in within 30 s (see the log)"
            )
        },
    );
    let versions: Vec<String> = by_version
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    say(
        out,
        format!("  predictions by version: {}", versions.join(", ")),
    );
    say(
        out,
        format!(
            "  dead letters:           {}",
            stats.dead_lettered.load(Ordering::Relaxed)
        ),
    );
    say(
        out,
        format!(
            "  throughput:             {:.0} events/s end to end ({elapsed:.2}s streaming, the reload's and retrain's waits left out)",
            events as f64 / elapsed
        ),
    );
    say(out, format!(
        "  latency (produce → prediction acknowledged): p50 {:.1} ms, p99 {:.1} ms  (each batch of events produced at once, so this includes queueing behind the backlog)",
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0
    ));
    if all.n > 0 {
        say(
            out,
            format!(
                "  error against the generator's truth: MAE {:.3}, RMSE {:.3} over {} predictions{}",
                all.mae(),
                all.rmse(),
                all.n,
                if stale.n > 0 {
                    " (the truth of a store that changed is its new behaviour: see the accuracy loop)"
                } else {
                    ""
                }
            ),
        );
    }
    say(
        out,
        format!(
            "  clean shutdown:         {}",
            if clean.is_ok() {
                "yes, offsets committed"
            } else {
                "no"
            }
        ),
    );
    if let (Some(plan), Some((detection, retrained))) = (plan, &looped) {
        let noise = crate::generate::drift_plan(stores, SEED, plan.drift.fraction)?.noise_sd;
        let section = LoopReport {
            plan,
            stores,
            shifted: &work.drifted,
            noise: &noise,
            detection,
            retrained,
            after: &after,
            stale,
            refit,
        };
        let _ = write!(out, "{section}");
    } else {
        say(
            out,
            format!(
                "  accuracy loop:          off above {} stores (most of their models are copies of other stores')",
                local::FITTED_STORES
            ),
        );
    }
    say(
        out,
        format!(
            "  total time:             {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
    clean?;
    if records.len() < events {
        return Err(Error::Internal(format!(
            "only {} of {events} predictions arrived",
            records.len()
        )));
    }
    Ok(())
}

/// Waits (at most [`SWAP_PATIENCE`]) until `version` is the active bundle.
async fn wait_for_version(watch: &mut ActiveBundle, version: &str) -> bool {
    tokio::time::timeout(SWAP_PATIENCE, async {
        while watch
            .borrow_and_update()
            .as_ref()
            .map(|b| b.version.as_str())
            != Some(version)
        {
            if watch.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// The events and their actuals, streamed in batches.
struct Stream<'a> {
    brokers: &'a str,
    /// Every event, in order.
    events: Arc<Vec<Vec<u8>>>,
    /// Their actuals, one per event; empty when the accuracy loop is off.
    actuals: Arc<Vec<Vec<u8>>>,
    stats: &'a PipelineStats,
}

impl Stream<'_> {
    /// Streams the events of `range` and waits until every event so far is finished; then
    /// their actuals, until every actual so far is scored. Returns the seconds the events
    /// took.
    async fn batch(&self, range: Range<usize>) -> Result<f64> {
        if range.is_empty() {
            return Ok(0.0);
        }
        let seconds = stream(self.brokers, self.events.clone(), range.clone(), self.stats).await?;
        if !self.actuals.is_empty() {
            accuracy_loop::feed(self.brokers, self.actuals.clone(), range, self.stats).await?;
        }
        Ok(seconds)
    }
}

/// Produces the events of `range` and waits until `range.end` events in all are finished
/// (predicted or dead-lettered); returns the seconds it took.
async fn stream(
    brokers: &str,
    payloads: Arc<Vec<Vec<u8>>>,
    range: Range<usize>,
    stats: &PipelineStats,
) -> Result<f64> {
    let started = Instant::now();
    let brokers = brokers.to_owned();
    let done_at = range.end;
    tokio::task::spawn_blocking(move || {
        local::produce(
            &brokers,
            "sales",
            &payloads[range],
            local::json_key("store_id"),
            None,
        )
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |s: &PipelineStats| {
        s.produced.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed)
    };
    while done(stats) < done_at as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}
