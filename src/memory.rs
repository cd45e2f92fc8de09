//! What this process holds in memory, as the kernel counts it (Linux `/proc/self/status`):
//! the figures `bench` prints; and handing freed memory back to the kernel.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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
    kib_in("/proc/self/status", field)
}

/// The KiB figure of `field` in a /proc file of `field value kB` lines.
fn kib_in(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
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
///
/// A large bundle is the exception: [`into_huge_pages`] moves it into huge pages once loaded.
pub fn without_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    set_huge_pages_off(true);
}

/// Whether [`without_huge_pages`] turned huge pages off for the process.
static HUGE_PAGES_OFF: AtomicBool = AtomicBool::new(false);

/// Turns transparent huge pages off for this process, or back on.
fn set_huge_pages_off(off: bool) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    let done =
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, libc::c_ulong::from(off), 0, 0, 0) } == 0;
    #[cfg(not(target_os = "linux"))]
    let done = false;
    HUGE_PAGES_OFF.store(off && done, Ordering::Release);
}

/// The size of a huge page on x86-64 and most ARM systems.
const HUGE_PAGE: usize = 2 << 20;

/// Moves the memory of a large structure that is read at random and lives long (a bundle of a
/// million stores) into 2 MiB pages, and answers how many of the 2 MiB regions its `ranges`
/// (address and length) touch were moved, and how many were not.
///
/// Scoring an event at random among a million stores reads its store's index slot, entry and
/// weights, three places in some 400 MB: with 4 KiB pages each read also misses the
/// processor's table of address translations, and the lookups of the translations themselves
/// miss the cache when other threads share the core. With 2 MiB pages the whole bundle's
/// translations fit in that table (`manymodel bench --stores 1000000`, docs/benchmarks.md,
/// "4 December 2026, night").
///
/// The rest of the process keeps small pages ([`without_huge_pages`]): the kernel's
/// synchronous collapse (`MADV_COLLAPSE`, Linux 6.1) is asked for these regions only, with
/// huge pages allowed for the process just while it runs. Elsewhere, or when the kernel
/// refuses, the memory stays as it was; nothing else changes. It copies the memory (about 2
/// ms per MiB), so it belongs where a bundle is loaded, never on the consumer loop.
pub fn into_huge_pages(ranges: impl IntoIterator<Item = (usize, usize)>) -> (usize, usize) {
    let mut regions: Vec<usize> = Vec::new();
    for (start, len) in ranges.into_iter().filter(|&(_, len)| len > 0) {
        let first = start / HUGE_PAGE;
        let last = (start + len - 1) / HUGE_PAGE;
        regions.extend(first..=last);
    }
    regions.sort_unstable();
    regions.dedup();
    let _one = COLLAPSING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let was_off = HUGE_PAGES_OFF.load(Ordering::Acquire);
    if was_off {
        set_huge_pages_off(false);
    }
    let moved = regions.iter().filter(|&&r| collapse(r * HUGE_PAGE)).count();
    if was_off {
        set_huge_pages_off(true);
    }
    (moved, regions.len() - moved)
}

/// Held while huge pages are on for a move: one move at a time, each turning them back off
/// when it is done.
static COLLAPSING: Mutex<()> = Mutex::new(());

/// Asks the kernel to back the 2 MiB region at `address` with one huge page now.
fn collapse(address: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: madvise with MADV_COLLAPSE changes how the region is backed, never its
        // contents; on an address range that is not mapped it fails with ENOMEM.
        unsafe { libc::madvise(address as *mut libc::c_void, HUGE_PAGE, libc::MADV_COLLAPSE) == 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = address;
        false
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
    /// (the kernel's own account of it, `THP_enabled` in /proc/self/status); memory moved
    /// into them keeps its contents, and the rest of the process stays without. One test, as
    /// the move turns them on for the process while it runs.
    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_off_but_for_what_is_moved_into_them() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        let off = || {
            // Not while another test moves memory.
            let _none_moving = COLLAPSING.lock().unwrap_or_else(|p| p.into_inner());
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
                assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
            }
        };
        without_huge_pages();
        off();

        // 8 MiB: four whole 2 MiB regions, or three and parts of two more.
        let data: Vec<u64> = (0..(8 << 20) / 8).collect();
        let huge_before = anon_huge_kib();
        let (moved, kept) = into_huge_pages([(data.as_ptr() as usize, 8 << 20)]);
        assert!(
            (4..=5).contains(&(moved + kept)),
            "{moved} + {kept} regions"
        );
        assert!(data.iter().enumerate().all(|(i, &x)| x == i as u64));
        off();
        // Where the kernel collapses on request (Linux 6.1 on), it shows.
        if moved > 0 {
            assert!(anon_huge_kib() > huge_before, "{moved} moved, {kept} kept");
        }
    }

    /// Anonymous memory in huge pages, KiB.
    #[cfg(target_os = "linux")]
    fn anon_huge_kib() -> u64 {
        kib_in("/proc/self/smaps_rollup", "AnonHugePages:").unwrap_or(0)
    }

    #[test]
    fn the_peak_is_at_least_what_is_resident_now() {
        let (now, peak) = (rss().unwrap_or(0), peak_rss().unwrap_or(0));
        assert!(peak >= now, "{peak} < {now}");
    }
}
