//! What this process holds in memory, as the kernel counts it (Linux `/proc/self/status`):
//! the figures `bench` prints; and handing freed memory back to the kernel.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
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

/// Turns transparent huge pages off for this process, except for the memory manymodel asks
/// them for (a large bundle's models, [`huge_pages_for`]), unless `MIMALLOC_ALLOW_THP` is set
/// (then the system's setting applies). Called first thing by `main`.
///
/// The daemon's memory churns: every fetched batch and every produced message is allocated
/// and freed, and freed memory goes back to the kernel after a second, sooner when a worker
/// idles ([`on_idle`]). Taking such memory again costs the kernel zeroing a whole 2 MiB page
/// when it is backed by huge pages, rather than the 4 KiB pages touched: in `perf record` of
/// `manymodel bench` a quarter of the passthrough's CPU was the kernel clearing pages while
/// mimalloc asked for huge pages for its arenas (it no longer does: its `no_thp` feature).
/// Without them both pipelines spend less CPU per event (passthrough 2.1–2.6 µs instead of
/// 3.1–3.4, scoring 3.9–4.2 instead of 4.4–5.2, side by side at 1,000 stores) and hold about 60
/// MiB less.
///
/// A large bundle is the opposite: hundreds of MiB read at random and never freed while it is
/// active, where 4 KiB pages make nearly every store's weights a TLB miss as well as a cache
/// miss. Since Linux 6.18 the process can keep huge pages for the regions it advises
/// (`PR_THP_DISABLE_EXCEPT_ADVISED`); on older kernels huge pages are simply off.
pub fn without_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        ADVISED_HUGE_PAGES.store(true, Ordering::Relaxed);
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    unsafe {
        if libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1,
            PR_THP_DISABLE_EXCEPT_ADVISED,
            0,
            0,
        ) == 0
        {
            ADVISED_HUGE_PAGES.store(true, Ordering::Relaxed);
        } else {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// `prctl(PR_SET_THP_DISABLE)`'s flag (Linux 6.18): huge pages stay on where `madvise` asked
/// for them.
#[cfg(target_os = "linux")]
const PR_THP_DISABLE_EXCEPT_ADVISED: libc::c_ulong = 1 << 1;

/// Whether [`huge_pages_for`] can get huge pages: set by [`without_huge_pages`].
static ADVISED_HUGE_PAGES: AtomicBool = AtomicBool::new(false);

/// The size of a transparent huge page on x86-64 and most ARM systems.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the memory of `regions` (address and length) with 2 MiB pages, and
/// answers whether it was asked. Meant for long-lived data read at random, such as a large
/// bundle's weights: each 2 MiB page holding part of a region is advised (`MADV_HUGEPAGE`) and
/// collapsed into a huge page (`MADV_COLLAPSE`, Linux 6.1), so neighbours sharing those pages
/// get huge pages too, which changes nothing they can see.
///
/// Collapsing copies the memory (about 2 s for the 400 MiB of a million stores), so it runs on
/// a thread of its own, after the caller has gone on: a bundle is served at once, with 4 KiB
/// pages until its pages are collapsed. A newer request replaces one still waiting. Does
/// nothing (and answers false) unless [`without_huge_pages`] kept advised huge pages possible;
/// a page the kernel cannot collapse (memory too fragmented, a hole in the range) stays as it
/// was, and so does memory freed in the meantime.
pub fn huge_pages_for(regions: impl IntoIterator<Item = (usize, usize)>) -> bool {
    static WORKER: std::sync::Once = std::sync::Once::new();
    if !ADVISED_HUGE_PAGES.load(Ordering::Relaxed) {
        return false;
    }
    let runs = huge_page_runs(regions);
    match PENDING.lock() {
        Ok(mut pending) => *pending = Some(runs),
        Err(_) => return false,
    }
    WORKER.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("huge-pages".into())
            .spawn(advise_pending);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for huge pages: the bundle stays in 4 KiB pages");
        }
    });
    WAKE.notify_one();
    true
}

/// Regions waiting for the huge-pages thread, as runs of whole 2 MiB pages.
static PENDING: Mutex<Option<Vec<(usize, usize)>>> = Mutex::new(None);
/// Wakes the huge-pages thread.
static WAKE: Condvar = Condvar::new();

/// The huge-pages thread: advises and collapses each request, for as long as the process runs.
fn advise_pending() {
    loop {
        let runs = {
            let Ok(mut pending) = PENDING.lock() else {
                return;
            };
            loop {
                if let Some(runs) = pending.take() {
                    break runs;
                }
                pending = match WAKE.wait(pending) {
                    Ok(p) => p,
                    Err(_) => return,
                };
            }
        };
        let started = Instant::now();
        let mut advised = 0;
        for (start, len) in runs {
            #[cfg(target_os = "linux")]
            // SAFETY: madvise with MADV_HUGEPAGE and MADV_COLLAPSE changes how the kernel backs
            // these pages, never their contents, whoever uses them; a range that is no longer
            // mapped fails with ENOMEM.
            unsafe {
                let at = start as *mut libc::c_void;
                if libc::madvise(at, len, libc::MADV_HUGEPAGE) == 0 {
                    advised += len;
                }
                libc::madvise(at, len, libc::MADV_COLLAPSE);
            }
            #[cfg(not(target_os = "linux"))]
            let _ = (start, len);
        }
        tracing::debug!(
            mib = advised >> 20,
            ms = started.elapsed().as_millis() as u64,
            "huge pages asked for a bundle's models"
        );
    }
}

/// The 2 MiB-aligned runs of huge pages that cover `regions`, merged where they touch.
fn huge_page_runs(regions: impl IntoIterator<Item = (usize, usize)>) -> Vec<(usize, usize)> {
    let mut pages: Vec<usize> = Vec::new();
    for (address, len) in regions {
        if len == 0 {
            continue;
        }
        let first = address / HUGE_PAGE;
        let last = address.saturating_add(len - 1) / HUGE_PAGE;
        pages.extend(first..=last);
    }
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == page * HUGE_PAGE => *len += HUGE_PAGE,
            _ => runs.push((page * HUGE_PAGE, HUGE_PAGE)),
        }
    }
    runs
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
    /// (the kernel's own account of it, `THP_enabled` in /proc/self/status), except where it
    /// advises them: memory it touched gets 4 KiB pages, a region given to `huge_pages_for`
    /// 2 MiB pages, where the kernel can keep huge pages for advised regions (Linux 6.18).
    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_only_where_advised() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        without_huge_pages();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            // 1 when the kernel keeps them for advised regions, 0 when they are off entirely.
            let expected = if ADVISED_HUGE_PAGES.load(Ordering::Relaxed) {
                "1"
            } else {
                "0"
            };
            assert_eq!(line.split_whitespace().nth(1), Some(expected), "{line}");
        }
        let touched: Vec<u8> = vec![1; 16 * HUGE_PAGE];
        let address = touched.as_ptr() as usize;
        assert_eq!(
            huge_pages_in(address, touched.len()),
            0,
            "huge pages unasked"
        );
        let asked = huge_pages_for([(address, touched.len())]);
        assert_eq!(asked, ADVISED_HUGE_PAGES.load(Ordering::Relaxed));
        if asked {
            // The vector holds at least 14 whole 2 MiB pages; the kernel collapses what it
            // can (a fragmented machine may not give all of them at once), on the
            // huge-pages thread.
            let by = Instant::now() + Duration::from_secs(30);
            while huge_pages_in(address, touched.len()) < HUGE_PAGE && Instant::now() < by {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                huge_pages_in(address, touched.len()) >= HUGE_PAGE,
                "{} bytes in huge pages",
                huge_pages_in(address, touched.len())
            );
        }
        assert!(touched.iter().all(|&b| b == 1), "contents unchanged");
    }

    /// Bytes of `[address, address + len)`'s mappings backed by huge pages
    /// (`AnonHugePages` of the mappings it overlaps, from /proc/self/smaps).
    fn huge_pages_in(address: usize, len: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut total = 0;
        let mut overlaps = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            if let Some((from, to)) = first.split_once('-') {
                if let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                ) {
                    overlaps = from < address + len && address < to;
                    continue;
                }
            }
            if overlaps && line.starts_with("AnonHugePages:") {
                let kib: usize = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(0);
                total += kib * 1024;
            }
        }
        total
    }

    #[test]
    fn huge_page_runs_cover_and_merge() {
        const H: usize = HUGE_PAGE;
        // Two small regions in one page, one spanning two pages, one far away, one empty.
        let runs = huge_page_runs([
            (H + 10, 100),
            (H + 5000, 8),
            (3 * H - 1, 2),
            (10 * H, H),
            (20 * H, 0),
        ]);
        assert_eq!(runs, [(H, 3 * H), (10 * H, H)]);
    }

    #[test]
    fn the_peak_is_at_least_what_is_resident_now() {
        let (now, peak) = (rss().unwrap_or(0), peak_rss().unwrap_or(0));
        assert!(peak >= now, "{peak} < {now}");
    }
}
