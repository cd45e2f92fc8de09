//! Input buffers recycled between the consumer loop and the partition actors.
//!
//! Every event's model inputs are a `Vec<f64>` the consumer loop fills while decoding and a
//! partition actor reads while scoring. Instead of allocating one per event on the loop and
//! freeing it on the actor's thread, the actors hand their scored events' buffers back, a
//! batch at a time under one short lock, and the loop decodes into them again, taking the
//! whole shared stock at once when its own runs out. The stock is bounded in bytes, so it
//! never holds more than a few MiB whatever the rate or the number of stores; beyond that,
//! buffers are simply freed.

use std::sync::{Arc, Mutex, PoisonError};

/// The most bytes of buffers kept for reuse (at 37 inputs, about 14,000 buffers).
const KEEP_BYTES: usize = 4 << 20;
/// Buffers kept whatever their width, so even very wide models recycle a batch's worth.
const KEEP_AT_LEAST: usize = 256;

/// The shared stock: filled by the actors, emptied by the consumer loop.
#[derive(Debug, Default)]
pub struct InputSpares {
    pool: Mutex<Vec<Vec<f64>>>,
}

impl InputSpares {
    /// Keeps the buffers of `returned` for reuse, as many as the bound allows, and frees the
    /// rest; `returned` is left empty.
    pub fn give_back(&self, returned: &mut Vec<Vec<f64>>) {
        let Some(width) = returned.first().map(Vec::capacity) else {
            return;
        };
        let keep = (KEEP_BYTES / (width.max(1) * size_of::<f64>())).max(KEEP_AT_LEAST);
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let room = keep.saturating_sub(pool.len()).min(returned.len());
        pool.extend(returned.drain(..room));
        drop(pool);
        // Those over the bound are freed here, outside the lock.
        returned.clear();
    }

    /// Moves the whole stock into `stock` (which is empty).
    fn take_all(&self, stock: &mut Vec<Vec<f64>>) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *pool, stock);
    }

    /// Buffers in the shared stock now.
    pub fn len(&self) -> usize {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the shared stock is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The consumer loop's own stock of buffers, refilled from the shared one.
#[derive(Debug, Default)]
pub struct SpareStock {
    shared: Arc<InputSpares>,
    stock: Vec<Vec<f64>>,
}

impl SpareStock {
    /// A stock refilled from `shared`.
    pub fn new(shared: Arc<InputSpares>) -> Self {
        SpareStock {
            shared,
            stock: Vec::new(),
        }
    }

    /// A buffer to decode into: a returned one if there is any, else a new, empty one.
    pub fn take(&mut self) -> Vec<f64> {
        if self.stock.is_empty() {
            self.shared.take_all(&mut self.stock);
        }
        self.stock.pop().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers handed back come out again, with their capacity, and a loop with nothing
    /// returned gets new buffers.
    #[test]
    fn buffers_come_back() {
        let shared = Arc::new(InputSpares::default());
        let mut stock = SpareStock::new(shared.clone());
        assert_eq!(
            stock.take().capacity(),
            0,
            "nothing returned yet: a new buffer"
        );
        let mut returned: Vec<Vec<f64>> = (0..3).map(|_| Vec::with_capacity(37)).collect();
        shared.give_back(&mut returned);
        assert!(returned.is_empty());
        assert_eq!(shared.len(), 3);
        for _ in 0..3 {
            assert!(stock.take().capacity() >= 37);
        }
        assert!(shared.is_empty());
        assert_eq!(stock.take().capacity(), 0);
    }

    /// The stock keeps no more than its bound in bytes, or its floor of buffers for very
    /// wide ones.
    #[test]
    fn the_stock_stays_bounded() {
        let shared = InputSpares::default();
        let mut narrow: Vec<Vec<f64>> = (0..20_000).map(|_| Vec::with_capacity(37)).collect();
        shared.give_back(&mut narrow);
        assert!(narrow.is_empty());
        assert_eq!(shared.len(), KEEP_BYTES / (37 * size_of::<f64>()));

        let shared = InputSpares::default();
        let mut wide: Vec<Vec<f64>> = (0..KEEP_AT_LEAST + 10)
            .map(|_| Vec::with_capacity(100_000))
            .collect();
        shared.give_back(&mut wide);
        assert_eq!(shared.len(), KEEP_AT_LEAST);
    }
}
