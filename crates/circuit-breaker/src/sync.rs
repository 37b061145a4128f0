//! Glue between a breaker's lock-free local state and its [`Store`]: the pending batch,
//! the flush task and how a shared state is applied locally.
//!
//! The protected call never waits on the store in `Closed` or `Open`: outcomes go into three
//! relaxed counters that the flush task swaps out every `flush_interval`, and the flush's
//! answer moves the local state word. Only half-open probes make a round trip (to lease a
//! fleet-wide permit and to report its result).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tracing::Instrument;

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::event::Event;
use crate::store::{Batch, Lease, ManualOp, ProbeGrant, SharedPolicy, SharedState, Store};
use crate::{Outcome, State, TripReason};

const NO_GENERATION: u64 = u64::MAX;

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    instance: String,
    policy: SharedPolicy,
    healthy: AtomicBool,
    /// Set after an outage: the next successful flush pushes the local window.
    resync: AtomicBool,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
    manual: AtomicU8,
    generation: AtomicU64,
    lease_seq: AtomicU64,
    /// The runtime the breaker was built in: probe leases and reports run as its tasks, so
    /// they finish even when the call that started them is dropped.
    runtime: tokio::runtime::Handle,
}

pub(crate) enum LeaseAnswer {
    Granted(Lease),
    Denied { retry_after: Duration },
    StoreDown,
}

fn random_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{:x}-{n:016x}", std::process::id())
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        instance: Option<String>,
        config: &Config,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            store,
            instance: instance.unwrap_or_else(random_id),
            policy: SharedPolicy::from_config(config),
            healthy: AtomicBool::new(true),
            resync: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            manual: AtomicU8::new(0),
            generation: AtomicU64::new(NO_GENERATION),
            lease_seq: AtomicU64::new(0),
            runtime,
        }
    }

    /// Run `task` on the breaker's runtime, detached from whoever started it.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(task)
    }

    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Whether the store decides transitions right now.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.is_healthy()
    }

    #[inline]
    pub(crate) fn add_pending(&self, failure: bool, slow: bool) {
        self.calls.fetch_add(1, Relaxed);
        if failure {
            self.failures.fetch_add(1, Relaxed);
        }
        if slow {
            self.slow.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn queue_manual(&self, op: ManualOp) {
        self.manual.store(op.code(), Relaxed);
    }

    fn set_health(&self, breaker: &CircuitBreaker, healthy: bool, error: Option<&crate::Error>) {
        if self.healthy.swap(healthy, Relaxed) != healthy {
            if healthy {
                tracing::info!(breaker = %breaker.name(), "circuit breaker store answers again; resynchronising");
            } else {
                self.resync.store(true, Relaxed);
                tracing::warn!(breaker = %breaker.name(), error = ?error, "circuit breaker store failed; deciding locally");
            }
            breaker.emit(Event::Store {
                name: Arc::from(breaker.name()),
                healthy,
            });
        }
        if error.is_some() {
            metrics::counter!("palisade_circuit_breaker_store_errors_total", "name" => breaker.name().to_owned())
                .increment(1);
        }
    }

    /// One flush: push manual control, then the pending batch, then apply the answer.
    pub(crate) async fn flush(&self, breaker: &CircuitBreaker) {
        let name = breaker.name();
        if let Some(op) = ManualOp::from_code(self.manual.swap(0, Relaxed)) {
            let span =
                tracing::debug_span!("circuit_breaker.apply", breaker = %name, op = op.as_str());
            match self
                .store
                .apply(name, &self.policy, op)
                .instrument(span)
                .await
            {
                Ok(state) => self.apply(breaker, &state),
                Err(e) => {
                    self.manual.store(op.code(), Relaxed);
                    self.set_health(breaker, false, Some(&e));
                    return;
                }
            }
        }
        let resync = self.resync.swap(false, Relaxed);
        let mut batch = Batch::new(
            self.instance.clone(),
            self.calls.swap(0, Relaxed),
            self.failures.swap(0, Relaxed),
            self.slow.swap(0, Relaxed),
            false,
        );
        let local = breaker.snapshot();
        if resync {
            // Back from an outage: what this instance saw meanwhile counts fleet-wide.
            batch.calls = local.calls;
            batch.failures = local.failures;
            batch.slow = local.slow;
        }
        let config = breaker.config();
        batch.failing = local.failures > 0 && local.failure_rate() >= config.failure_rate_threshold
            || config
                .slow_call
                .is_some_and(|s| local.slow > 0 && local.slow_rate() >= s.rate_threshold);
        let span =
            tracing::debug_span!("circuit_breaker.flush", breaker = %name, calls = batch.calls);
        match self
            .store
            .flush(name, &self.policy, &batch)
            .instrument(span)
            .await
        {
            Ok(state) => {
                self.set_health(breaker, true, None);
                self.apply(breaker, &state);
            }
            Err(e) => {
                if resync {
                    self.resync.store(true, Relaxed);
                }
                self.set_health(breaker, false, Some(&e));
            }
        }
    }

    /// Make the local state follow the shared one.
    pub(crate) fn apply(&self, breaker: &CircuitBreaker, shared: &SharedState) {
        let previous = self.generation.swap(shared.generation, Relaxed);
        let local = breaker.state();
        if previous == shared.generation && local == shared.state {
            return;
        }
        if previous == shared.generation && shared.state == State::Open && local == State::HalfOpen
        {
            // Our local wait ended first; the store moves on at the next probe request.
            return;
        }
        let now = breaker.inner.clock.now_ms();
        let deadline = match shared.state {
            State::Open => now.saturating_add(shared.retry_after.as_millis() as u64),
            State::HalfOpen => now.saturating_add(self.policy.max_half_open_ms),
            _ => 0,
        };
        let reason = (shared.state == State::Open).then_some(TripReason::Shared);
        if local == shared.state
            && matches!(local, State::Closed | State::Disabled | State::MetricsOnly)
        {
            return;
        }
        breaker.set_state(shared.state, deadline, reason);
    }

    pub(crate) async fn lease_probe(&self, breaker: &CircuitBreaker) -> LeaseAnswer {
        let id = format!("{}:{}", self.instance, self.lease_seq.fetch_add(1, Relaxed));
        let local_generation = breaker.local_generation();
        match self
            .store
            .acquire_probe(breaker.name(), &self.policy, &id)
            .instrument(tracing::debug_span!(
                "circuit_breaker.lease_probe",
                breaker = %breaker.name(),
                lease = %id
            ))
            .await
        {
            Ok(ProbeGrant::Granted { generation }) => {
                self.set_health(breaker, true, None);
                self.generation.store(generation, Relaxed);
                LeaseAnswer::Granted(Lease {
                    id,
                    generation,
                    local_generation,
                })
            }
            Ok(ProbeGrant::Denied(state)) => {
                self.set_health(breaker, true, None);
                let retry_after = if state.state == State::Open {
                    state.retry_after
                } else {
                    self.policy_flush_hint()
                };
                self.apply(breaker, &state);
                LeaseAnswer::Denied { retry_after }
            }
            Err(e) => {
                self.set_health(breaker, false, Some(&e));
                LeaseAnswer::StoreDown
            }
        }
    }

    fn policy_flush_hint(&self) -> Duration {
        Duration::from_millis(self.policy.open_wait_ms.min(1000))
    }

    /// Report a probe; `false` when the store did not answer.
    pub(crate) async fn complete_probe(
        &self,
        breaker: &CircuitBreaker,
        lease: Lease,
        outcome: Outcome,
    ) -> bool {
        match self
            .store
            .complete_probe(
                breaker.name(),
                &self.policy,
                lease.generation,
                &lease.id,
                outcome,
            )
            .instrument(tracing::debug_span!(
                "circuit_breaker.complete_probe",
                breaker = %breaker.name(),
                lease = %lease.id,
                ?outcome
            ))
            .await
        {
            Ok(state) => {
                self.set_health(breaker, true, None);
                self.apply(breaker, &state);
                true
            }
            Err(e) => {
                self.set_health(breaker, false, Some(&e));
                false
            }
        }
    }
}

/// Spawn the task that flushes `breaker` every `flush_interval` until the breaker is dropped.
pub(crate) fn spawn_flusher(breaker: &CircuitBreaker, runtime: &tokio::runtime::Handle) {
    let weak = Arc::downgrade(&breaker.inner);
    let every = breaker.config().shared.flush_interval;
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let breaker = CircuitBreaker { inner };
            if let Some(shared) = &breaker.inner.shared {
                shared.flush(&breaker).await;
            }
        }
    });
}

impl CircuitBreaker {
    /// For a shared breaker: flush to the store now instead of waiting for the next tick
    /// (tests and graceful shutdown). Does nothing for a local breaker.
    pub async fn flush(&self) {
        if let Some(shared) = &self.inner.shared {
            shared.flush(self).await;
        }
    }
}
