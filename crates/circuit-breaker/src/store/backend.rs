//! The backend trait, public at the crate root as [`Store`].

use std::fmt;

use async_trait::async_trait;

use super::{Batch, ManualOp, ProbeGrant, SharedPolicy, SharedState};
use crate::Outcome;
use crate::error::Result;

/// Where breakers of many instances share their state. Each method is one atomic operation
/// of the backend (one Lua script for Redis) and decides transitions on the store's clock.
///
/// Names are passed as given; backends must encode them so that no name can collide with
/// another or escape its keys.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Add `batch` to the shared window, apply the trip rule and return the shared state
    /// (an empty batch is a plain read). One round trip.
    async fn flush(&self, name: &str, policy: &SharedPolicy, batch: &Batch) -> Result<SharedState>;

    /// Lease one half-open probe permit, fleet-wide; at most `policy.half_open_probes`
    /// permits (leased or successful) exist per half-open period. One round trip.
    async fn acquire_probe(
        &self,
        name: &str,
        policy: &SharedPolicy,
        lease_id: &str,
    ) -> Result<ProbeGrant>;

    /// Report the outcome of a probe and give its lease back. Only a report that holds a
    /// live lease of the current half-open period counts: one with a lease id that was never
    /// granted, already reported or expired, or of an older generation, changes nothing.
    /// One round trip.
    async fn complete_probe(
        &self,
        name: &str,
        policy: &SharedPolicy,
        generation: u64,
        lease_id: &str,
        outcome: Outcome,
    ) -> Result<SharedState>;

    /// Apply manual control fleet-wide. One round trip.
    async fn apply(&self, name: &str, policy: &SharedPolicy, op: ManualOp) -> Result<SharedState>;

    /// Whether the backend answers right now, for a `/health` endpoint: `Ok(())` from a store
    /// that needs no server (the default); the Redis store sends one `PING` within its
    /// operation timeout and returns the error a breaker operation would get.
    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
