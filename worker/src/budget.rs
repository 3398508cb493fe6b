//! The memory budget for masters: how many bytes of masters this worker holds at once, fetched,
//! waiting for a slot or rendering.
//!
//! Counting masters would let a worker with a few 24-bit/96 kHz album-length masters in its
//! prefetch run out of memory where the same count of 3-minute MP3s is harmless. So a task reserves
//! its master's size (from the store's metadata, before the download starts) and the reservation
//! rides with the bytes until the render thread lets go of them. A master larger than the whole
//! budget takes all of it and runs alone rather than never.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in these; a small master takes one.
const UNIT: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let units = u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        Self { permits: Arc::new(Semaphore::new(units as usize)), units }
    }

    /// The default: half of what this process may use, leaving the rest to decoded audio,
    /// renderer buffers and outputs.
    pub fn default_bytes(memory_bytes: u64) -> u64 {
        (memory_bytes / 2).max(UNIT)
    }

    /// Waits until `bytes` fit, then holds them until the permit is dropped.
    pub async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, AcquireError> {
        self.permits.clone().acquire_many_owned(self.units_for(bytes)).await
    }

    fn units_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).clamp(1, self.units)
    }

    /// Bytes not reserved right now.
    #[cfg(test)]
    fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_are_by_size_and_an_oversized_master_runs_alone() {
        let budget = MemoryBudget::new(10 * UNIT);
        let big = budget.reserve(6 * UNIT).await.expect("fits");
        let small = budget.reserve(100).await.expect("a small master takes one unit");
        assert_eq!(budget.available_bytes(), 3 * UNIT);
        // 4 MiB does not fit beside 7 reserved: it waits for the big one to go.
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(4 * UNIT)).await;
        assert!(waiting.is_err(), "a reservation over what is left must wait");
        drop(big);
        let second = budget.reserve(4 * UNIT).await.expect("fits once the big one is gone");
        drop((small, second));
        // Larger than the whole budget: takes all of it instead of waiting forever.
        let huge = tokio::time::timeout(Duration::from_millis(50), budget.reserve(100 * UNIT)).await;
        assert!(huge.is_ok_and(|p| p.is_ok()), "an oversized master must still run");
        assert_eq!(budget.available_bytes(), 10 * UNIT);
    }
}
