//! `manymodel demo`: the whole product in one command, with no services.
//!
//! It starts librdkafka's MockCluster in-process, generates a sales history and a stream of
//! events, trains a bundle, serves it, produces the events, reads the predictions back and
//! reports throughput, latency and error against the generator's noise-free truth.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::control::publish::{publish_bytes, PublishOptions, DEFAULT_CHUNK_BYTES};
use crate::control::reader::ControlOptions;
use crate::error::{Error, Result};

/// The demo's control topic.
const CONTROL: &str = "manymodel-control";
/// The version the demo publishes half-way through the stream.
const SECOND: &str = "demo-v2";
use crate::local;
use crate::metrics::PipelineStats;
use crate::serve::{self, Mode};

/// Runs the demo and writes its report to `out`.
pub async fn run(stores: usize, events: usize, out: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let say = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    let work = local::workload(stores, 28, events, 7, "demo-v1", Default::default())?;
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
    let bundle = Arc::new(work.bundle);

    let cluster = MockCluster::new(1)
        .map_err(|e| Error::Kafka(format!("cannot start the MockCluster: {e}")))?;
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [
        ("sales", 6),
        ("predictions", 6),
        ("sales-dlq", 1),
        (CONTROL, 1),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .map_err(|e| Error::Kafka(format!("creating topic {topic} on the MockCluster: {e}")))?;
    }
    say(
        out,
        format!("in-process Kafka (librdkafka MockCluster) at {brokers}"),
    );

    let config = local::serve_config(
        &brokers,
        "manymodel-demo",
        "sales",
        "predictions",
        "sales-dlq",
    );
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

    let text = work.events;
    let mut payloads: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let truth: HashMap<String, f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                v.get("event_id")?.as_str()?.to_owned(),
                v.get("expected_sales")?.as_f64()?,
            ))
        })
        .collect();

    // Wait for the consumer group to hand out the input's Kafka partitions, so the figures
    // measure scoring, not the group join.
    let join_deadline = Instant::now() + Duration::from_secs(30);
    while stats.assigned.load(Ordering::Relaxed) == 0 && Instant::now() < join_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first half of the stream, a hot reload, the second half.
    let half = payloads.len() / 2;
    let second_half = payloads.split_off(half);
    let mut elapsed = stream(&brokers, payloads, &stats, half).await?;
    let second = local::reversioned(&bundle, SECOND)?;
    let swap_started = Instant::now();
    {
        let publish = publish.clone();
        tokio::task::spawn_blocking(move || publish_bytes(&second, &publish, None))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
    }
    let swapped = tokio::time::timeout(Duration::from_secs(30), async {
        while watch
            .borrow_and_update()
            .as_ref()
            .map(|b| b.version.as_str())
            != Some(SECOND)
        {
            if watch.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let reload_ms = swap_started.elapsed().as_secs_f64() * 1e3;
    elapsed += stream(&brokers, second_half, &stats, events).await?;
    let latency = stats
        .latency(false)
        .ok_or_else(|| Error::Internal("the demo's stats keep no latency histogram".into()))?;

    let records = local::read(&brokers, "predictions", events, Duration::from_secs(30)).await?;
    let (mut n, mut abs, mut sq, mut fallback) = (0usize, 0.0, 0.0, 0usize);
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
        if let Some(v) = p.get("model_version").and_then(|v| v.as_str()) {
            *by_version.entry(v.to_owned()).or_default() += 1;
        }
        if p.get("model").and_then(|v| v.as_str()) == Some("fallback") {
            fallback += 1;
        }
        if let Some(t) = truth.get(id) {
            n += 1;
            abs += (pred - t).abs();
            sq += (pred - t).powi(2);
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
            "  throughput:             {:.0} events/s end to end ({elapsed:.2}s for all events)",
            events as f64 / elapsed
        ),
    );
    say(out, format!(
        "  latency (produce → prediction acknowledged): p50 {:.1} ms, p99 {:.1} ms  (all events produced at once, so this includes queueing behind the backlog)",
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0
    ));
    if n > 0 {
        say(
            out,
            format!(
                "  error against the generator's truth: MAE {:.3}, RMSE {:.3} over {n} predictions",
                abs / n as f64,
                (sq / n as f64).sqrt()
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

/// Produces `payloads` and waits until `done_at` events in all are finished (predicted or
/// dead-lettered); returns the seconds it took.
async fn stream(
    brokers: &str,
    payloads: Vec<Vec<u8>>,
    stats: &PipelineStats,
    done_at: usize,
) -> Result<f64> {
    let started = Instant::now();
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        local::produce(
            &brokers,
            "sales",
            &payloads,
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
