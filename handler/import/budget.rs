//! A bound on the bytes some kind of work holds in memory at once: Bundles being planned, a
//! zip's Bundle entries in flight, NDJSON batches being sent. Work waits for its share before
//! it starts, so memory stays bounded however large the input and however many parts run.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::work::ImportError;

/// Permits of `1 << unit_shift` bytes each; cheap to clone (clones share the permits).
#[derive(Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    unit_shift: u32,
    total_units: u32,
}

impl MemoryBudget {
    /// A budget of `total_bytes`, counted in units of `1 << unit_shift` bytes (at least one).
    pub fn new(total_bytes: u64, unit_shift: u32) -> Self {
        let total_units = u32::try_from(total_bytes >> unit_shift)
            .unwrap_or(u32::MAX)
            .max(1);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            unit_shift,
            total_units,
        }
    }

    /// A budget of `mib` MiB, counted in MiB.
    pub fn mib(mib: u32) -> Self {
        MemoryBudget::new(u64::from(mib) << 20, 20)
    }

    /// Waits until `bytes` fit: the whole units they cover, plus one. Work larger than the
    /// whole budget waits for all of it, and so runs alone.
    pub async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, ImportError> {
        let units = u32::try_from(bytes >> self.unit_shift)
            .unwrap_or(u32::MAX)
            .saturating_add(1)
            .min(self.total_units);
        self.permits
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|e| ImportError::transient(format!("a memory budget is closed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_waits_for_room_and_work_over_the_whole_budget_runs_alone() {
        let budget = MemoryBudget::mib(4);
        let first = budget.reserve(2 << 20).await.unwrap(); // 3 of 4 MiB
        assert_eq!(budget.permits.available_permits(), 1);
        let waiting = budget.reserve(1 << 20); // 2 MiB: must wait
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(first);
        let second = waiting.await.unwrap();
        assert_eq!(budget.permits.available_permits(), 2);
        drop(second);
        let all = budget.reserve(100 << 20).await.unwrap();
        assert_eq!(
            budget.permits.available_permits(),
            0,
            "clamped to the whole budget"
        );
        drop(all);
        let kib = MemoryBudget::new(32 << 10, 10);
        let _small = kib.reserve(2 * 1000).await.unwrap();
        assert_eq!(kib.permits.available_permits(), 32 - 2);
    }
}
