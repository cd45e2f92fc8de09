//! `manymodel bench --trees N`: how fast one core scores a tree ensemble, with no Kafka in the
//! way. The ensemble is synthetic (complete trees, so every prediction walks the full depth:
//! the worst case for a given depth) over as many inputs as the generated spec gives, and a
//! tenth of the inputs are missing (NaN), as in production data.

use std::io::Write;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::tree::TreeEnsemble;

/// What the tree benchmark measured.
#[derive(Debug, Clone, Copy)]
pub struct TreeBench {
    /// Trees in the ensemble.
    pub trees: usize,
    /// Depth of every tree.
    pub depth: usize,
    /// Nodes of all trees.
    pub nodes: usize,
    /// Predictions per second on one core.
    pub per_second: f64,
}

/// Model inputs per event: price, temperature, promo, 7 weekdays, 24 hours.
const WIDTH: usize = 34;

/// Scores distinct input vectors round-robin on the calling thread for about `duration`.
pub fn run(
    trees: usize,
    depth: usize,
    duration: Duration,
    out: &mut dyn Write,
) -> Result<TreeBench> {
    if trees == 0 || !(1..=20).contains(&depth) {
        return Err(Error::Usage(
            "bench --trees needs at least one tree and --depth between 1 and 20".into(),
        ));
    }
    let model = TreeEnsemble::synthetic(trees, depth, WIDTH, 42);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let rows: Vec<[f64; WIDTH]> = (0..4096)
        .map(|_| {
            std::array::from_fn(|_| {
                if rng.random_bool(0.1) {
                    f64::NAN
                } else {
                    rng.random_range(0.0..1.0)
                }
            })
        })
        .collect();
    // Warm the caches, then measure in batches so the clock is read rarely.
    let mut sink = 0.0;
    for r in &rows {
        sink += model.predict(r);
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration {
        for r in &rows {
            sink += model.predict(std::hint::black_box(r));
        }
        done += rows.len() as u64;
    }
    std::hint::black_box(sink);
    let per_second = done as f64 / started.elapsed().as_secs_f64();
    let result = TreeBench {
        trees,
        depth,
        nodes: model.nodes(),
        per_second,
    };
    let _ = writeln!(
        out,
        "tree ensemble: {trees} trees of depth {depth} ({} nodes, {} KiB), {WIDTH} inputs, 10% missing",
        result.nodes,
        result.nodes * 16 / 1024
    );
    let _ = writeln!(
        out,
        "  {:.0} predictions/s on one core ({:.2} µs per prediction)",
        per_second,
        1e6 / per_second
    );
    Ok(result)
}
