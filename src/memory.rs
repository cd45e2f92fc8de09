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

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set (then
/// mimalloc does as it says). Called first thing by `main`.
///
/// mimalloc asks the kernel for 2 MiB pages for its arenas. The daemon's memory churns: every
/// fetched batch and every produced message is allocated and freed, and freed memory goes back
/// to the kernel after a second, sooner when a worker idles ([`on_idle`]). Taking such memory
/// again then costs the kernel zeroing a whole 2 MiB page rather than the 4 KiB pages touched:
/// in `perf record` of `manymodel bench` a quarter of the passthrough's CPU was the kernel
/// clearing pages. Without huge pages both pipelines spend less CPU per event (passthrough 2.1–2.6
/// µs instead of 3.1–3.4, scoring 3.9–4.2 instead of 4.4–5.2, side by side at 1,000 stores; at
/// 1,000,000 the weights' lookups were no slower) and hold about 60 MiB less.
pub fn without_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
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

    /// Unless the environment asks for them, the process runs without transparent huge pages
    /// (the kernel's own account of it, `THP_enabled` in /proc/self/status).
    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_turned_off() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        without_huge_pages();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }

    #[test]
    fn the_peak_is_at_least_what_is_resident_now() {
        let (now, peak) = (rss().unwrap_or(0), peak_rss().unwrap_or(0));
        assert!(peak >= now, "{peak} < {now}");
    }
}
