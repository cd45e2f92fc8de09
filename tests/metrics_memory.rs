//! Histogram samples stay raw until they are folded into buckets. A scrape folds them, and so
//! does a background thread: a daemon that nobody scrapes (Prometheus down, or not configured
//! yet) keeps a bounded memory instead of growing by 16 bytes for every sample it records.

use std::time::Duration;

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn histogram_samples_do_not_pile_up_when_nobody_scrapes() {
    let _handle = manymodel::metrics::install_with_upkeep(Duration::from_millis(100)).unwrap();
    let histogram = metrics::histogram!("manymodel_end_to_end_latency_seconds");
    const SAMPLES: u64 = 2_000_000; // 32 MB a round if they were kept
    let round = || {
        for i in 0..SAMPLES {
            histogram.record((i % 1000) as f64 * 1e-5);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    round();
    round();
    let settled = resident_bytes();
    round();
    round();
    let grown = resident_bytes().saturating_sub(settled);
    assert!(
        grown < 24 << 20,
        "two more rounds of {SAMPLES} samples grew the process by {} MB; kept samples would be 64 MB",
        grown >> 20
    );
}
