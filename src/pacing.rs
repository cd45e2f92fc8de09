//! Sending at a steady rate, for the tools that load Kafka (`generate --brokers`, the
//! benchmark's loader, the tests).
//!
//! A [`Pacer`] says when the n-th event is due and sleeps only when the sender is at least a
//! [`TICK`] ahead of that schedule, so the events due within a tick go together and the sender
//! wakes up once a tick, not once an event: at 100,000 events a second a sleep before every
//! event costs the machine more than sending does, and takes that CPU from the pipeline being
//! loaded.
//!
//! A paced producer serves its delivery reports with [`serve_reports`], all that are waiting,
//! through the [`Reports`] context.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use crate::metrics::PipelineStats;

/// How far ahead of its schedule a sender must be before it sleeps.
pub const TICK: Duration = Duration::from_millis(1);

/// A steady rate, counted from when the pacer was made.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    /// Events per second.
    rate: u64,
    started: Instant,
}

impl Pacer {
    /// Starts the clock for `rate` events per second (at least 1).
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate: rate.max(1),
            started: Instant::now(),
        }
    }

    /// When event `n` (from 0) is due, after the start.
    pub fn due(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / self.rate as f64)
    }

    /// Returns once event `n` may be sent: at once unless the sender is at least a [`TICK`]
    /// ahead of the schedule, else after sleeping until `n` is due, having called `idle` (for
    /// a producer: serve its delivery reports) just before.
    pub fn wait(&self, n: u64, idle: impl FnOnce()) {
        if let Some(ahead) = self.due(n).checked_sub(self.started.elapsed()) {
            if ahead >= TICK {
                idle();
                std::thread::sleep(ahead);
            }
        }
    }
}

/// How many events a paced producer sends at most between two servings of its delivery
/// reports, when it is behind its schedule and never sleeps.
pub const SERVE_EVERY: u64 = 1024;

impl Pacer {
    /// [`Pacer::wait`] for a producer: `serve` (serving its delivery reports) runs before
    /// each sleep and before every [`SERVE_EVERY`]-th event, so a sender that cannot keep up
    /// and never sleeps does not fill the producer's queue with unserved reports.
    pub fn wait_serving(&self, n: u64, mut serve: impl FnMut()) {
        if n % SERVE_EVERY == 0 {
            serve();
        }
        self.wait(n, serve);
    }
}

/// A loading producer's context: counts the delivery reports served, for [`serve_reports`],
/// and tells the benchmark's stats, when given, when the broker acknowledged each record
/// ([`PipelineStats::input_acknowledged`]).
#[derive(Default)]
pub struct Reports {
    served: AtomicU64,
    acked: Option<Arc<PipelineStats>>,
}

impl Reports {
    /// A context that tells `acked`, when given, when each record was acknowledged.
    pub fn new(acked: Option<Arc<PipelineStats>>) -> Self {
        Reports {
            served: AtomicU64::new(0),
            acked,
        }
    }

    /// Delivery reports served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.served.fetch_add(1, Ordering::Relaxed);
        // Timed from the producer's own timestamp only: a broker that stamps records with
        // its append time (a topic's `LogAppendTime`, the MockCluster) returns that instead.
        if let (Some(stats), Ok(record)) = (&self.acked, result) {
            if let Timestamp::CreateTime(ms) = record.timestamp() {
                stats.input_acknowledged(Some(ms));
            }
        }
    }
}

/// Serves every delivery report waiting, without waiting for more. `BaseProducer::poll` with
/// no timeout serves one event, the reports of one acknowledged batch, so a sender that polled
/// once a tick would serve a few hundred batches a second while the broker acknowledges
/// thousands (a batch per Kafka partition every `linger.ms`): the reports would pile up, and
/// each record stays in the producer's queue until its report is served, until the queue
/// fills.
pub fn serve_reports(producer: &BaseProducer<Reports>) {
    loop {
        let before = producer.context().served();
        producer.poll(Duration::ZERO);
        if producer.context().served() == before {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 400 events at 2,000 a second take the 199.5 ms their schedule spans, less at most the
    /// tick within which the last is sent early, and the sender sleeps about once a tick, not
    /// once an event.
    #[test]
    fn keeps_to_the_rate_and_sleeps_once_a_tick() {
        let pacer = Pacer::new(2_000);
        let mut sleeps = 0;
        for n in 0..400 {
            pacer.wait(n, || sleeps += 1);
        }
        let took = pacer.started.elapsed();
        assert!(took + TICK >= pacer.due(399), "took only {took:?}");
        // A sleep ends when its event is due and the next starts only for an event due a
        // tick later: at most one per tick of the schedule (200 of them), however busy the
        // machine, where a sleep per event would be 400.
        assert!(
            sleeps <= 201,
            "{sleeps} sleeps for 400 events over 200 ticks"
        );
    }

    /// A sender behind its schedule never sleeps.
    #[test]
    fn a_late_sender_does_not_sleep() {
        let pacer = Pacer::new(1_000);
        std::thread::sleep(Duration::from_millis(20));
        let mut sleeps = 0;
        for n in 0..10 {
            pacer.wait(n, || sleeps += 1);
        }
        assert_eq!(sleeps, 0);
    }

    /// A producer behind its schedule never sleeps, yet serves its delivery reports before
    /// every [`SERVE_EVERY`]-th event.
    #[test]
    fn a_late_producer_still_serves_its_reports() {
        // A billion a second: every event is due by the time it is sent.
        let late = Pacer::new(1_000_000_000);
        std::thread::sleep(Duration::from_millis(20));
        let mut served = Vec::new();
        for n in 0..20 {
            let event = n * SERVE_EVERY / 4;
            late.wait_serving(event, || served.push(event));
        }
        let every = SERVE_EVERY;
        assert_eq!(served, [0, every, 2 * every, 3 * every, 4 * every]);
    }

    /// Reports acknowledged one batch each are all served by one call. The MockCluster
    /// returns its own append time as each record's timestamp, which the benchmark's stats
    /// do not take for the producer's.
    #[test]
    fn one_serving_serves_every_report_waiting() {
        use rdkafka::config::ClientConfig;
        use rdkafka::producer::BaseRecord;

        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("acked", 1, 1).expect("topic");
        let stats = Arc::new(PipelineStats::printing_latency());
        let producer: BaseProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create_with_context(Reports::new(Some(stats.clone())))
            .expect("producer");
        let timestamp = crate::clock::now_ms();
        for i in 0..50 {
            let payload = format!("event {i}");
            let record = BaseRecord::<str, str>::to("acked")
                .payload(&payload)
                .timestamp(timestamp);
            producer.send(record).map_err(|(e, _)| e).expect("queued");
        }
        // The reports wait on the producer's queue until served. librdkafka's out-queue
        // length counts each record until its report is served, plus each report waiting:
        // at twice the records, every batch has been acknowledged.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while producer.in_flight_count() < 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "the mock acknowledged the batches: out queue {}",
                producer.in_flight_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve_reports(&producer);
        assert_eq!(producer.context().served(), 50, "served in one call");
        let acked = stats.input_acked(false).expect("kept by printing stats");
        assert_eq!(acked.len(), 0, "no producer's timestamp came back");
    }
}
