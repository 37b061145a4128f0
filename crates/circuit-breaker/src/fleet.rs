//! A shared breaker's side of its [`Store`](crate::Store): following the store's answers,
//! probe leases and reports as tasks of the breaker's runtime, and the flush task. The
//! values come from `crate::sync`; this is where they reach the breaker's state.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::CircuitBreaker;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::outcome::Outcome;
use crate::permit::{Kind, Permit};
use crate::state::State;
use crate::store::{Lease, SharedState};
use crate::sync::{HealthChange, LeaseAnswer, Shared, Transition, WhileDown};

impl CircuitBreaker {
    /// Make the local state what the store's `answer` calls for, and note whether the store
    /// answered (event, log, metric). The one place where a store's answer reaches the
    /// breaker's state.
    pub(crate) fn follow(&self, answer: Result<&SharedState, &Error>) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let change = shared.note_health(answer.is_ok());
        let name = &self.inner.name;
        match (&change, answer) {
            (HealthChange::Recovered, _) => {
                tracing::info!(breaker = %name, "circuit breaker store answers again; resynchronising");
            }
            (HealthChange::Failed, Err(error)) => {
                tracing::warn!(breaker = %name, %error, source = ?std::error::Error::source(error), "circuit breaker store failed; deciding by the failure mode");
            }
            _ => {}
        }
        if change != HealthChange::Unchanged {
            self.emit(Event::Store {
                name: name.clone(),
                healthy: change == HealthChange::Recovered,
            });
        }
        match answer {
            Ok(state) => {
                let now = self.inner.clock.now_ms();
                if let Some(Transition {
                    to,
                    deadline_ms,
                    reason,
                }) = shared.follow(self.state(), now, state)
                {
                    self.set_state(to, deadline_ms, reason);
                }
            }
            Err(_) => {
                metrics::counter!("palisade_circuit_breaker_store_errors_total", "name" => name.to_string())
                    .increment(1);
            }
        }
    }

    #[inline]
    pub(crate) fn needs_lease(&self, kind: Kind) -> bool {
        kind.is_probe() && self.inner.shared.as_ref().is_some_and(Shared::is_healthy)
    }

    /// Ask the store for a fleet-wide probe lease in a task of its own: when the caller stops
    /// waiting (a dropped call future), the task gives a lease granted meanwhile back at once
    /// instead of leaving it taken until it expires. The receiver is the answer.
    #[cold]
    pub(crate) fn request_lease(&self) -> tokio::sync::oneshot::Receiver<LeaseAnswer> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let breaker = self.clone();
        let Some(shared) = &self.inner.shared else {
            drop(tx); // answered as a lost task: the caller decides locally
            return rx;
        };
        shared.spawn(async move {
            let Some(shared) = &breaker.inner.shared else {
                return;
            };
            let answer = shared
                .lease_probe(&breaker.inner.name, breaker.word().generation)
                .await;
            match &answer {
                LeaseAnswer::Granted(_) => breaker.follow_health_only(true),
                LeaseAnswer::Denied { state, .. } => breaker.follow(Ok(state)),
                LeaseAnswer::StoreDown(e) => breaker.follow(Err(e)),
            }
            if let Err(LeaseAnswer::Granted(lease)) = tx.send(answer) {
                let answer = shared
                    .complete_probe(&breaker.inner.name, &lease, Outcome::Ignored)
                    .await;
                breaker.follow(answer.as_ref());
            }
        });
        rx
    }

    /// Note that the store answered, without a state to follow (a granted lease).
    fn follow_health_only(&self, healthy: bool) {
        if let Some(shared) = &self.inner.shared
            && shared.note_health(healthy) == HealthChange::Recovered
        {
            tracing::info!(breaker = %self.inner.name, "circuit breaker store answers again; resynchronising");
            self.emit(Event::Store {
                name: self.inner.name.clone(),
                healthy: true,
            });
        }
    }

    /// Turn the store's answer to a lease request into the permit a probe runs with, or a
    /// rejection.
    pub(crate) fn settle_lease<'a>(
        &'a self,
        mut permit: Permit<'a>,
        answer: LeaseAnswer,
    ) -> Result<Permit<'a>> {
        match answer {
            LeaseAnswer::Granted(lease) => {
                permit.set_lease(lease);
                Ok(permit)
            }
            LeaseAnswer::Denied { retry_after, .. } => {
                drop(permit);
                Err(self.reject(State::HalfOpen, retry_after))
            }
            LeaseAnswer::StoreDown(_) => {
                let Some(shared) = &self.inner.shared else {
                    return Ok(permit);
                };
                match shared.while_down() {
                    WhileDown::Local => Ok(permit),
                    WhileDown::Admit => {
                        drop(permit);
                        let kind = self.admit_while_down()?;
                        Ok(self.permit(kind))
                    }
                    WhileDown::Reject(retry_after) => {
                        drop(permit);
                        Err(self.reject(State::Open, retry_after))
                    }
                }
            }
        }
    }

    /// Report a leased probe's outcome to the store in a task of its own, so that the report
    /// reaches the store (and the lease and the local probe slot are given back) whoever
    /// waits for it; the handle tells when it has.
    pub(crate) fn report(
        &self,
        lease: Box<Lease>,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) -> tokio::task::JoinHandle<()> {
        let breaker = self.clone();
        match &self.inner.shared {
            Some(shared) => shared.spawn(async move {
                breaker.finish_shared_probe(lease, outcome, elapsed).await;
            }),
            None => unreachable!("only a shared breaker leases probes"),
        }
    }

    async fn finish_shared_probe(
        &self,
        lease: Box<Lease>,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) {
        let slow = outcome != Outcome::Ignored && self.note_slow(outcome, elapsed);
        let outcome = if slow && outcome == Outcome::Success {
            Outcome::Failure
        } else {
            outcome
        };
        self.inner.metrics.count(outcome);
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let answer = shared
            .complete_probe(&self.inner.name, &lease, outcome)
            .await;
        self.follow(answer.as_ref());
        let generation = lease.local_generation;
        if answer.is_err() {
            // The store did not answer: decide locally, as if there were no store.
            self.finish(Kind::probe(generation), outcome, None);
        } else if outcome == Outcome::Ignored {
            self.release_probe(generation);
        }
    }

    /// For a shared breaker: flush to the store now instead of waiting for the next tick
    /// (tests and graceful shutdown). Does nothing for a local breaker.
    pub async fn flush(&self) {
        if let Some(shared) = &self.inner.shared {
            for answer in shared
                .flush(&self.inner.name, self.snapshot(), &self.inner.config)
                .await
            {
                self.follow(answer.as_ref());
            }
        }
    }
}

/// The lease task ended without answering (its runtime shut down): as a store that did not
/// answer.
pub(crate) fn lease_task_lost(_: tokio::sync::oneshot::error::RecvError) -> LeaseAnswer {
    LeaseAnswer::StoreDown(Error::backend(
        "the probe lease task ended without an answer",
        true,
    ))
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
            CircuitBreaker { inner }.flush().await;
        }
    });
}
