//! Histogram samples stay raw until they are folded into buckets. A scrape folds them, and so
//! does a background thread: a daemon that nobody scrapes (Prometheus down, or not configured
//! yet) keeps a bounded memory instead of growing by 16 bytes for every sample it records.

mod common;

use std::time::Duration;

use common::chaos::memory_kib;

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    memory_kib(std::process::id()).0 * 1024
}

#[test]
fn histogram_samples_do_not_pile_up_when_nobody_scrapes() {
    let _handle = manymodel::metrics::install_with_upkeep(Duration::from_millis(100)).unwrap();
    let histogram = metrics::histogram!("manymodel_end_to_end_latency_seconds");
    const SAMPLES: u64 = 2_000_000; // 32 MB a round if they were kept
    const CHUNK: u64 = 500_000;
    // Each chunk is followed by two runs of the upkeep thread, the first perhaps begun before
    // the chunk ended: on a busy machine that thread runs late, and the test waits for it
    // instead of guessing how long it takes.
    let round = || {
        for chunk in 0..SAMPLES / CHUNK {
            for i in 0..CHUNK {
                histogram.record(((chunk * CHUNK + i) % 1000) as f64 * 1e-5);
            }
            let seen = manymodel::metrics::upkeep_runs();
            common::wait_for(Duration::from_secs(60), "two upkeep runs", || {
                manymodel::metrics::upkeep_runs() >= seen + 2
            });
        }
    };
    round();
    round();
    let settled = resident_bytes();
    assert!(settled > 0, "no VmRSS in /proc/self/status");
    round();
    round();
    let grown = resident_bytes().saturating_sub(settled);
    assert!(
        grown < 24 << 20,
        "two more rounds of {SAMPLES} samples grew the process by {} MB; kept samples would be 64 MB",
        grown >> 20
    );
}
