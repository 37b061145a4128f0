//! The in-memory [`Store`]: breakers of one process (or tests standing in for several
//! instances) share state through it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::Outcome;
use crate::clock::{Clock, Time};
use crate::error::Result;
use crate::store::{Batch, ManualOp, ProbeGrant, SharedMachine, SharedPolicy, SharedState, Store};

/// Shared state in this process's memory, decided by [`SharedMachine`] on the store's own
/// [`Clock`]. The mutex is held only for the few microseconds of one operation, never around
/// a protected call. Memory grows with the number of distinct breaker names (a few hundred
/// bytes each) and each breaker's window of at most `window_seconds` buckets.
#[derive(Debug, Default)]
pub struct MemoryStore {
    clock: Time,
    machines: Mutex<HashMap<String, SharedMachine>>,
}

impl MemoryStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store on `clock` (a [`FakeClock`](crate::FakeClock) in tests).
    pub fn with_clock(clock: impl Clock + 'static) -> Self {
        Self {
            clock: Time::absolute(clock),
            machines: Mutex::default(),
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut SharedMachine, u64) -> R) -> R {
        let now = self.clock.now_ms();
        let mut machines = self
            .machines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let machine = machines.entry(name.to_owned()).or_default();
        f(machine, now)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn flush(&self, name: &str, policy: &SharedPolicy, batch: &Batch) -> Result<SharedState> {
        Ok(self.with(name, |m, now| m.flush(policy, now, batch)))
    }

    async fn acquire_probe(
        &self,
        name: &str,
        policy: &SharedPolicy,
        lease_id: &str,
    ) -> Result<ProbeGrant> {
        Ok(self.with(name, |m, now| m.acquire_probe(policy, now, lease_id)))
    }

    async fn complete_probe(
        &self,
        name: &str,
        policy: &SharedPolicy,
        generation: u64,
        lease_id: &str,
        outcome: Outcome,
    ) -> Result<SharedState> {
        Ok(self.with(name, |m, now| {
            m.complete_probe(policy, now, generation, lease_id, outcome)
        }))
    }

    async fn apply(&self, name: &str, policy: &SharedPolicy, op: ManualOp) -> Result<SharedState> {
        Ok(self.with(name, |m, now| m.apply(policy, now, op)))
    }
}
