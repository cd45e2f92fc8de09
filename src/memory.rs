//! What this process holds in memory, as the kernel counts it (Linux `/proc/self/status`):
//! the figures `bench` prints.

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
