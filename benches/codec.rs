//! `cargo bench --bench codec`: nanoseconds per event of the scoring pipeline's own work on
//! one core, apart from Kafka: decoding a JSON event and encoding its features (into a
//! recycled buffer, as `serve` does), scoring it, and writing its prediction record. The events
//! and the bundle are `manymodel bench`'s (generated history, 1,000 stores); each figure is
//! the best of several passes over 20,000 events. Last, looking up and scoring again with
//! 1,000,000 stores, where nearly every event's store is a cache miss: one event after
//! another, with nothing overlapping the misses, then in batches with the misses overlapped
//! as the partition actor overlaps them, and that again once the bundle is in huge pages
//! (`Bundle::into_huge_pages`, as `serve` moves a large bundle).

use std::hint::black_box;
use std::time::Instant;

use manymodel::codec::json::{decode_json, decode_json_into};
use manymodel::event::Event;
use manymodel::model::bundle::Bundle;
use manymodel::model::Model;
use manymodel::scoring::ModelSource;

const PASSES: usize = 15;

fn main() -> manymodel::Result<()> {
    // As `main` does.
    manymodel::memory::without_huge_pages();
    let work = manymodel::local::workload(1000, 14, 20_000, 11, "bench", Default::default())?;
    let bundle = work.bundle;
    let lines: Vec<&[u8]> = work.events.lines().map(str::as_bytes).collect();
    let column = bundle.spec.partition_column.clone();
    let encoder = bundle.encoder();
    let events: Vec<_> = lines
        .iter()
        .filter_map(|l| decode_json(l, &column, encoder).ok())
        .collect();
    println!("{} events, {} inputs each", events.len(), encoder.width());

    // As the consumer loop does: each event's inputs go into a recycled buffer.
    let mut spare = Vec::new();
    let decode = best_ns(lines.len(), || {
        for line in &lines {
            let buffer = std::mem::take(&mut spare);
            if let Ok(event) = decode_json_into(black_box(line), &column, encoder, buffer) {
                spare = black_box(event).inputs;
            }
        }
    });
    let score = best_ns(events.len(), || look_up_and_score(&bundle, &events));
    let mut buf = Vec::with_capacity(256);
    let write = best_ns(events.len(), || {
        for event in &events {
            buf.clear();
            manymodel::prediction::write_json(
                &mut buf,
                &column,
                black_box(event),
                1.5,
                &bundle.version,
                ModelSource::Partition,
            );
            black_box(&buf);
        }
    });
    println!("decode and encode features: {decode:7.1} ns/event");
    println!("look up and score:          {score:7.1} ns/event");
    println!("write the prediction:       {write:7.1} ns/event");

    let many = manymodel::local::workload(1_000_000, 3, 200_000, 11, "bench", Default::default())?;
    let bundle = many.bundle;
    let events: Vec<_> = many
        .events
        .lines()
        .filter_map(|l| decode_json(l.as_bytes(), &column, bundle.encoder()).ok())
        .collect();
    let score = best_ns(events.len(), || look_up_and_score(&bundle, &events));
    println!(
        "look up and score, {} stores, {} events in random order: {score:7.1} ns/event",
        bundle.partitions.len(),
        events.len()
    );
    let hashed: Vec<(u64, Event)> = events
        .into_iter()
        .map(|e| (manymodel::model::index::id_hash(&e.partition), e))
        .collect();
    let score = best_ns(hashed.len(), || as_the_actor_does(&bundle, &hashed));
    println!("the same, as the partition actor overlaps the misses: {score:7.1} ns/event");
    // As `serve` does with a bundle it loads: then the same again.
    bundle.into_huge_pages();
    let score = best_ns(hashed.len(), || as_the_actor_does(&bundle, &hashed));
    println!("the same, the bundle moved into huge pages: {score:7.1} ns/event");
    Ok(())
}

/// Events in batches of 64, as the partition actor takes them: every batch's index slots
/// hinted, then every store found, then each event scored while the model of the one three
/// places on is hinted.
fn as_the_actor_does(bundle: &Bundle, events: &[(u64, Event)]) {
    const AHEAD: usize = 3;
    let mut models = Vec::with_capacity(64);
    for batch in events.chunks(64) {
        for (hash, _) in batch {
            bundle.prefetch_partition(*hash);
        }
        models.clear();
        models.extend(batch.iter().map(|(hash, event)| {
            model_at(
                bundle,
                bundle.partition_index_hashed(*hash, &event.partition),
            )
        }));
        for (i, ((_, event), model)) in batch.iter().zip(&models).enumerate() {
            if let Some(later) = models.get(i + AHEAD) {
                later.prefetch();
            }
            black_box(model.predict(black_box(&event.inputs)));
        }
    }
}

/// Looks each event's store up in `bundle` and scores it, one event after another.
fn look_up_and_score(bundle: &Bundle, events: &[Event]) {
    for event in events {
        let model = model_at(bundle, bundle.partition_index(&event.partition));
        black_box(model.predict(black_box(&event.inputs)));
    }
}

/// The model at `position` in `bundle`, or its fallback for a store without one.
fn model_at(bundle: &Bundle, position: Option<usize>) -> &Model {
    position
        .and_then(|i| bundle.partitions.get(i))
        .map_or(&bundle.fallback.model, |m| &m.model)
}

/// The fastest of [`PASSES`] runs of `pass`, in nanoseconds per item.
fn best_ns(items: usize, mut pass: impl FnMut()) -> f64 {
    (0..PASSES)
        .map(|_| {
            let started = Instant::now();
            pass();
            started.elapsed().as_nanos() as f64 / items.max(1) as f64
        })
        .fold(f64::INFINITY, f64::min)
}
