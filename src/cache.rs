//! Cache hints: asking the CPU to start loading memory that will be read shortly, so that a
//! partition actor scoring one event does not stall on the next event's model and inputs.
//!
//! With a million stores a store's weights are rarely in cache, and an event's inputs were
//! written on the consumer loop's core; each is a handful of cache misses. A hint changes no
//! result; where the target has no prefetch instruction it does nothing.

/// The cache line size assumed for hints (x86-64 and most ARM cores).
const LINE: usize = 64;

/// Hints that the bytes of `value` will be read soon.
#[inline]
pub fn prefetch<T: ?Sized>(value: &T) {
    let start = (value as *const T).cast::<u8>();
    let len = std::mem::size_of_val(value);
    for i in 0..lines_touched(start as usize, len) {
        line(start.wrapping_add(i * LINE));
    }
}

/// The cache lines that `len` bytes from `start` touch (one for none): the last one included
/// when they do not start on a line.
#[inline]
fn lines_touched(start: usize, len: usize) -> usize {
    ((start % LINE) + len.max(1)).div_ceil(LINE)
}

/// Hints that the cache line holding `address` will be read soon.
#[inline(always)]
fn line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing the program sees, for
    // any address. SSE, which provides it, is part of every x86-64 target.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_change_nothing() {
        let weights: Vec<f64> = (0..37).map(f64::from).collect();
        prefetch(&weights[..]);
        prefetch(&weights);
        prefetch("");
        assert_eq!(weights.iter().sum::<f64>(), 666.0);
    }

    /// A linear store's 37 weights (296 bytes) take five lines from a line's start and six
    /// from 48 bytes into one; a hint covers them all.
    #[test]
    fn a_hint_covers_every_line_the_bytes_touch() {
        assert_eq!(lines_touched(0, 296), 5);
        assert_eq!(lines_touched(16, 296), 5);
        assert_eq!(lines_touched(48, 296), 6);
        assert_eq!(lines_touched(64 * 7 + 63, 2), 2);
        assert_eq!(lines_touched(5, 0), 1);
        assert_eq!(lines_touched(0, 64), 1);
        assert_eq!(lines_touched(1, 64), 2);
    }
}
