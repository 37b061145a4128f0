//! What a shared breaker keeps about its [`Store`]: the pending batch, the store's health,
//! the fleet's generation, and the answers of store operations turned into values (a
//! [`Transition`] to make, a [`LeaseAnswer`], what [`WhileDown`] means for a call). Nothing
//! here reads or changes the breaker's own state: the breaker (`crate::breaker`) applies what
//! these functions return.
//!
//! The protected call never waits on the store in `Closed` or `Open`: outcomes go into three
//! relaxed counters that the flush task swaps out every `flush_interval`, and the flush's
//! answer moves the local state word. Only half-open probes make a round trip (to lease a
//! fleet-wide permit and to report its result).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tracing::Instrument;

use crate::config::{Config, FailureMode};
use crate::error::Result;
use crate::store::{Batch, Lease, ManualOp, ProbeGrant, SharedPolicy, SharedState, Store};
use crate::window::Snapshot;
use crate::{Outcome, State, TripReason};

const NO_GENERATION: u64 = u64::MAX;

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    instance: String,
    policy: SharedPolicy,
    failure_mode: FailureMode,
    flush_interval: Duration,
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

/// A change of the local state that the store's answer calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) to: State,
    pub(crate) deadline_ms: u64,
    pub(crate) reason: Option<TripReason>,
}

/// The store's answer to a probe-lease request.
#[derive(Debug)]
pub(crate) enum LeaseAnswer {
    /// The probe may run.
    Granted(Lease),
    /// No permit: the fleet's state to follow, and when to come back.
    Denied {
        state: SharedState,
        retry_after: Duration,
    },
    /// The store did not answer.
    StoreDown(crate::Error),
}

/// What a call does while the store fails: the one place the failure mode is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WhileDown {
    /// Decide on local state alone (`FallbackToMemory`).
    Local,
    /// Admit, record locally, never trip (`FailOpen`); manual states still hold.
    Admit,
    /// Reject, with this retry-after (`FailClosed`).
    Reject(Duration),
}

/// How the store's health changed with one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HealthChange {
    Unchanged,
    Recovered,
    Failed,
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
            failure_mode: config.shared.failure_mode,
            flush_interval: config.shared.flush_interval,
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

    /// Whether the store answered its last operation; while it does, it decides transitions.
    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// What a call does while the store is down, by the configured [`FailureMode`].
    #[inline]
    pub(crate) fn while_down(&self) -> WhileDown {
        match self.failure_mode {
            FailureMode::FailOpen => WhileDown::Admit,
            FailureMode::FailClosed => WhileDown::Reject(self.flush_interval),
            // `FallbackToMemory` and any mode added later: the breaker keeps protecting.
            _ => WhileDown::Local,
        }
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

    /// Note whether the store answered; an outage also asks the next flush to resync.
    pub(crate) fn note_health(&self, healthy: bool) -> HealthChange {
        if self.healthy.swap(healthy, Relaxed) == healthy {
            return HealthChange::Unchanged;
        }
        if healthy {
            HealthChange::Recovered
        } else {
            self.resync.store(true, Relaxed);
            HealthChange::Failed
        }
    }

    /// One flush: manual control first (if any is queued), then the pending batch. `local`
    /// is the breaker's window and `config` its rules (to tell the store whether this
    /// instance sees its own window failing, for the quorum). Each answer is returned in
    /// order, for the breaker to follow.
    pub(crate) async fn flush(
        &self,
        name: &str,
        local: Snapshot,
        config: &Config,
    ) -> Vec<Result<SharedState>> {
        let mut answers = Vec::with_capacity(2);
        if let Some(op) = ManualOp::from_code(self.manual.swap(0, Relaxed)) {
            let span =
                tracing::debug_span!("circuit_breaker.apply", breaker = %name, op = op.as_str());
            let answer = self
                .store
                .apply(name, &self.policy, op)
                .instrument(span)
                .await;
            let failed = answer.is_err();
            answers.push(answer);
            if failed {
                self.manual.store(op.code(), Relaxed);
                return answers;
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
        if resync {
            // Back from an outage: what this instance saw meanwhile counts fleet-wide.
            batch.calls = local.calls;
            batch.failures = local.failures;
            batch.slow = local.slow;
        }
        batch.failing = local.failures > 0 && local.failure_rate() >= config.failure_rate_threshold
            || config
                .slow_call
                .is_some_and(|s| local.slow > 0 && local.slow_rate() >= s.rate_threshold);
        let span =
            tracing::debug_span!("circuit_breaker.flush", breaker = %name, calls = batch.calls);
        let answer = self
            .store
            .flush(name, &self.policy, &batch)
            .instrument(span)
            .await;
        if answer.is_err() && resync {
            self.resync.store(true, Relaxed);
        }
        answers.push(answer);
        answers
    }

    /// The transition that makes a local state `local` follow the fleet's `shared` state at
    /// local time `now_ms`; `None` when there is nothing to do.
    pub(crate) fn follow(
        &self,
        local: State,
        now_ms: u64,
        shared: &SharedState,
    ) -> Option<Transition> {
        let previous = self.generation.swap(shared.generation, Relaxed);
        if previous == shared.generation && local == shared.state {
            return None;
        }
        if previous == shared.generation && shared.state == State::Open && local == State::HalfOpen
        {
            // Our local wait ended first; the store moves on at the next probe request.
            return None;
        }
        if local == shared.state
            && matches!(local, State::Closed | State::Disabled | State::MetricsOnly)
        {
            return None;
        }
        let deadline_ms = match shared.state {
            State::Open => now_ms
                .saturating_add(u64::try_from(shared.retry_after.as_millis()).unwrap_or(u64::MAX)),
            State::HalfOpen => now_ms.saturating_add(self.policy.max_half_open_ms),
            _ => 0,
        };
        Some(Transition {
            to: shared.state,
            deadline_ms,
            reason: (shared.state == State::Open).then_some(TripReason::Shared),
        })
    }

    /// Ask the store for a fleet-wide probe lease for breaker `name`.
    pub(crate) async fn lease_probe(&self, name: &str, local_generation: u32) -> LeaseAnswer {
        let id = format!("{}:{}", self.instance, self.lease_seq.fetch_add(1, Relaxed));
        let span =
            tracing::debug_span!("circuit_breaker.lease_probe", breaker = %name, lease = %id);
        match self
            .store
            .acquire_probe(name, &self.policy, &id)
            .instrument(span)
            .await
        {
            Ok(ProbeGrant::Granted { generation }) => {
                self.generation.store(generation, Relaxed);
                LeaseAnswer::Granted(Lease {
                    id,
                    generation,
                    local_generation,
                })
            }
            Ok(ProbeGrant::Denied(state)) => {
                let retry_after = if state.state == State::Open {
                    state.retry_after
                } else {
                    Duration::from_millis(self.policy.open_wait_ms.min(1000))
                };
                LeaseAnswer::Denied { state, retry_after }
            }
            Err(e) => LeaseAnswer::StoreDown(e),
        }
    }

    /// Report a probe's outcome (and give its lease back).
    pub(crate) async fn complete_probe(
        &self,
        name: &str,
        lease: &Lease,
        outcome: Outcome,
    ) -> Result<SharedState> {
        let span = tracing::debug_span!(
            "circuit_breaker.complete_probe",
            breaker = %name,
            lease = %lease.id,
            ?outcome
        );
        self.store
            .complete_probe(name, &self.policy, lease.generation, &lease.id, outcome)
            .instrument(span)
            .await
    }
}
