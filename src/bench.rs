//! `manymodel bench`: the serving path end to end, next to a passthrough baseline that uses
//! the same consumer, producer and offset handling but copies records instead of scoring.
//!
//! Two measurements per mode, in one run:
//! * throughput: N events are loaded first, then the pipeline drains them; events/s from the
//!   first record read to the last output acknowledged;
//! * latency: events are produced at a steady rate while the pipeline runs; each one's
//!   latency is from its produce timestamp to its output being acknowledged (millisecond
//!   resolution: Kafka timestamps are milliseconds).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::producer::now_ms;
use crate::local;
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::serve::{self, Mode};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Bootstrap servers; `None` starts an in-process MockCluster.
    pub brokers: Option<String>,
    /// Events for the throughput run.
    pub events: usize,
    /// Stores in the generated data.
    pub stores: usize,
    /// Kafka partitions of the input topics.
    pub kafka_partitions: i32,
    /// Events per second for the latency run (5 seconds of it).
    pub latency_rate: u64,
}

/// One mode's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Events per second, draining a backlog.
    pub events_per_sec: f64,
    /// Median latency at the steady rate, ms.
    pub p50_ms: f64,
    /// 99th percentile latency at the steady rate, ms.
    pub p99_ms: f64,
}

struct Setup<'a> {
    brokers: &'a str,
    bundle: Arc<Bundle>,
    run_id: i64,
}

impl Setup<'_> {
    async fn start(
        &self,
        mode: Mode,
        input: &str,
        output: &str,
    ) -> (
        Arc<PipelineStats>,
        CancellationToken,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let name = format!("bench-{mode:?}-{input}-{}", self.run_id).to_lowercase();
        let config = local::serve_config(
            self.brokers,
            &name,
            input,
            output,
            &format!("bench-dlq-{}", self.run_id),
        );
        let stats = Arc::new(PipelineStats::default());
        let shutdown = CancellationToken::new();
        let handle = {
            let (bundle, stats, shutdown) = (self.bundle.clone(), stats.clone(), shutdown.clone());
            tokio::spawn(async move {
                serve::run(
                    &config,
                    crate::control::fixed(bundle),
                    mode,
                    stats,
                    shutdown,
                )
                .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while stats.assigned.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (stats, shutdown, handle)
    }
}

async fn wait_outputs(stats: &PipelineStats, n: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut report = Instant::now();
    while stats.produced.load(Ordering::Relaxed) < n {
        if report.elapsed() > Duration::from_secs(5) {
            report = Instant::now();
            tracing::info!(
                consumed = stats.consumed.load(Ordering::Relaxed),
                acknowledged = stats.produced.load(Ordering::Relaxed),
                failed = stats.delivery_failures.load(Ordering::Relaxed),
                "waiting for outputs"
            );
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "only {} of {n} outputs acknowledged within {timeout:?}",
                stats.produced.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

use local::produce_events as produce;

async fn produce_owned(
    brokers: String,
    topic: String,
    payloads: Arc<Vec<Vec<u8>>>,
    rate: u64,
) -> Result<()> {
    produce(&brokers, &topic, payloads, Some(rate)).await
}

/// Runs the benchmark and prints its table to `out`.
pub async fn run(opts: &BenchOptions, out: &mut dyn Write) -> Result<()> {
    let run_id = now_ms();
    let mock = match &opts.brokers {
        None => Some(
            MockCluster::new(1)
                .map_err(|e| Error::Kafka(format!("cannot start the MockCluster: {e}")))?,
        ),
        Some(_) => None,
    };
    let brokers = match (&mock, &opts.brokers) {
        (Some(m), _) => m.bootstrap_servers(),
        (None, Some(b)) => b.clone(),
        (None, None) => unreachable!("one of the two is set above"),
    };
    let live_events = (opts.latency_rate * 5) as usize;
    // librdkafka's MockCluster keeps at most 5 MB per Kafka partition and drops older records
    // beyond that, which would strand a large backlog; spread it over enough partitions.
    let kafka_partitions = if mock.is_some() {
        let needed = (opts.events.max(live_events) * 200 / (4 << 20) + 1) as i32;
        opts.kafka_partitions.max(needed)
    } else {
        opts.kafka_partitions
    };
    let t = |s: &str| format!("bench-{s}-{run_id}");
    let topics = [
        (t("in"), kafka_partitions),
        (t("out-score"), kafka_partitions),
        (t("out-pass"), kafka_partitions),
        (t("live-score"), kafka_partitions),
        (t("live-pass"), kafka_partitions),
        (t("dlq"), 1),
    ];
    match &mock {
        Some(m) => {
            for (name, n) in &topics {
                m.create_topic(name, *n, 1)
                    .map_err(|e| Error::Kafka(format!("creating {name}: {e}")))?;
            }
        }
        None => {
            let list: Vec<(&str, i32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
            local::create_topics(&brokers, &list).await?;
        }
    }

    let work = local::workload(opts.stores, 14, opts.events.max(live_events), 11, "bench")?;
    let bundle = Arc::new(work.bundle);
    let lines: Vec<Vec<u8>> = work.events.lines().map(|l| l.as_bytes().to_vec()).collect();
    let backlog = Arc::new(lines[..opts.events].to_vec());
    let live = Arc::new(lines[..live_events].to_vec());

    let _ = writeln!(
        out,
        "manymodel bench: {} events, {} stores, {} Kafka partitions, broker {}",
        opts.events,
        opts.stores,
        kafka_partitions,
        if mock.is_some() {
            "MockCluster (in-process)".to_owned()
        } else {
            brokers.clone()
        }
    );
    let load = Instant::now();
    produce(&brokers, &t("in"), backlog.clone(), None).await?;
    let _ = writeln!(
        out,
        "loaded {} events in {:.2}s",
        opts.events,
        load.elapsed().as_secs_f64()
    );

    let setup = Setup {
        brokers: &brokers,
        bundle,
        run_id,
    };
    let mut figures = Vec::new();
    for (mode, output, live_in) in [
        (Mode::Passthrough, t("out-pass"), t("live-pass")),
        (Mode::Score, t("out-score"), t("live-score")),
    ] {
        let mut f = Figures::default();
        // Throughput: drain the backlog.
        let (stats, stop, handle) = setup.start(mode, &t("in"), &output).await;
        while stats.consumed.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        wait_outputs(&stats, opts.events as u64, Duration::from_secs(600)).await?;
        f.events_per_sec = opts.events as f64 / started.elapsed().as_secs_f64();
        stop.cancel();
        handle.await.map_err(|e| Error::Internal(e.to_string()))??;

        // Latency: a steady stream; the first fifth warms up (fetch positions, connections)
        // and is not measured.
        let (stats, stop, handle) = setup.start(mode, &live_in, &output).await;
        let producing = tokio::spawn(produce_owned(
            brokers.clone(),
            live_in.clone(),
            live.clone(),
            opts.latency_rate,
        ));
        wait_outputs(&stats, live_events as u64 / 5, Duration::from_secs(120)).await?;
        stats.latency(true);
        producing
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        wait_outputs(&stats, live_events as u64, Duration::from_secs(120)).await?;
        let h = stats.latency(false);
        f.p50_ms = h.value_at_quantile(0.5) as f64 / 1000.0;
        f.p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
        stop.cancel();
        handle.await.map_err(|e| Error::Internal(e.to_string()))??;
        figures.push((mode, f));
    }

    let _ = writeln!(
        out,
        "\n{:<12} {:>12} {:>10} {:>10}",
        "pipeline", "events/s", "p50 ms", "p99 ms"
    );
    for (mode, f) in &figures {
        let name = if *mode == Mode::Score {
            "scoring"
        } else {
            "passthrough"
        };
        let _ = writeln!(
            out,
            "{name:<12} {:>12.0} {:>10.1} {:>10.1}",
            f.events_per_sec, f.p50_ms, f.p99_ms
        );
    }
    let ratio = figures[1].1.events_per_sec / figures[0].1.events_per_sec;
    let _ = writeln!(
        out,
        "\nscoring / passthrough throughput: {:.2} (scoring costs {:.0}% of the passthrough rate; goal: under 20%)",
        ratio,
        (1.0 - ratio).max(0.0) * 100.0
    );
    let _ = writeln!(
        out,
        "latency measured at {} events/s over the last {} of {} events (the first fifth warms up), from produce timestamp to acknowledgement",
        opts.latency_rate,
        live_events - live_events / 5,
        live_events
    );
    Ok(())
}
