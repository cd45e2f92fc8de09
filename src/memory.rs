//! What this process holds in memory, as the kernel counts it (Linux `/proc/self/status`):
//! the figures `bench` prints; and handing freed memory back to the kernel.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The peak resident set size of this process (`VmHWM`), in bytes; Linux only.
pub fn peak_rss() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// The resident set size of this process now (`VmRSS`), in bytes; Linux only.
pub fn rss() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns the memory this thread has freed to the operating system now. The daemon's
/// allocator (mimalloc) keeps freed pages for reuse and hands them back only as the thread
/// that freed them goes on allocating; the control reader decodes a bundle and then idles, so
/// without this it held the decoding's scratch for as long as it idled (1,000,000 stores:
/// 1.24 GiB resident after the load instead of 0.62). Harmless under another allocator.
pub fn return_freed() {
    // SAFETY: mi_collect only walks and purges the calling thread's own heap (and, forced,
    // abandoned segments); it takes no pointers from us.
    unsafe { mi_collect(true) }
}

/// Called by a runtime worker about to idle: at most once a second per thread, returns what
/// the thread freed to the operating system.
pub fn on_idle() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        return_freed();
    }
}

// mimalloc's C library, which libmimalloc-sys builds and links (its Rust bindings declare
// `mi_collect` only with a feature that needs another crate).
use libmimalloc_sys as _;
extern "C" {
    fn mi_collect(force: bool);
}

/// Bytes as MiB, for people.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_at_least_what_is_resident_now() {
        let (now, peak) = (rss().unwrap_or(0), peak_rss().unwrap_or(0));
        assert!(peak >= now, "{peak} < {now}");
    }
}
