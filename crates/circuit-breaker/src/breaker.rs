//! The circuit breaker: a lock-free hot path over the packed state word and the window.
//!
//! # Memory ordering
//! * The state word (state + generation + deadline) is read with `Acquire` and changed only
//!   by `compare_exchange` with `AcqRel`. The caller whose exchange succeeds owns the
//!   transition: it alone emits the event, updates the gauge and resets what the new state
//!   starts from (window, consecutive failures, trip count). A caller that loses simply
//!   re-reads the word. Acquire/Release pairs make the winner's earlier writes (for example
//!   the trip count used for backoff) visible to whoever observes the new word.
//! * Probe admission and probe successes are `(generation << 32) | count` words updated by
//!   compare-and-swap (`AcqRel`): a word stamped with an older generation reads as zero, so
//!   a new half-open period needs no reset step, and a late result of an older generation
//!   can never change the count of the current one.
//! * Window counters, the consecutive-failure run and the trip count are statistics and use
//!   `Relaxed` (see [`window`](crate::window) for why a torn snapshot is harmless).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::broadcast;

use crate::builder::CircuitBreakerBuilder;
use crate::clock::Time;
use crate::config::{Config, TripReason};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::fleet::lease_task_lost;
use crate::outcome::Outcome;
use crate::permit::{Kind, Permit, View};
use crate::state::{State, Word};
use crate::sync::{Shared, WhileDown};
use crate::window::{Mark, Snapshot, Window};

/// A point-in-time view of one breaker, as returned by [`CircuitBreaker::health`] and
/// [`Registry::health`](crate::Registry::health).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The breaker's name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Failure percentage in the current window.
    pub failure_rate: f64,
    /// Slow-call percentage in the current window.
    pub slow_rate: f64,
    /// The window's counts.
    pub window: Snapshot,
    /// For a shared breaker: whether its store answered the last flush.
    pub store_healthy: Option<bool>,
}

const EVENT_CAPACITY: usize = 1024;

/// The counter handles of one breaker, registered when it is built.
#[derive(Debug)]
pub(crate) struct Metrics {
    success: Counter,
    failure: Counter,
    ignored: Counter,
    pub(crate) timeout: Counter,
    rejected: Counter,
    slow: Counter,
    state: Gauge,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Self {
        let n = name.to_owned();
        let calls = |outcome: &'static str| metrics::counter!("palisade_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => outcome);
        let metrics = Self {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            timeout: calls("timeout"),
            rejected: metrics::counter!("palisade_circuit_breaker_rejected_total", "name" => n.clone()),
            slow: metrics::counter!("palisade_circuit_breaker_slow_calls_total", "name" => n.clone()),
            state: metrics::gauge!("palisade_circuit_breaker_state", "name" => n),
        };
        metrics.state.set(State::Closed.as_gauge());
        metrics
    }

    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.success.increment(1),
            Outcome::Failure => self.failure.increment(1),
            Outcome::Ignored => self.ignored.increment(1),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) name: Arc<str>,
    pub(crate) config: Config,
    pub(crate) clock: Time,
    /// Read by every call, written only on transitions: on a cache line of its own.
    word: crate::window::Padded<AtomicU64>,
    probes: AtomicU64,
    successes: AtomicU64,
    trips: AtomicU32,
    consecutive: AtomicU32,
    window: Window,
    window_needs_clock: bool,
    pub(crate) slow_nanos: u64,
    events: broadcast::Sender<Event>,
    observed: AtomicBool,
    pub(crate) metrics: Metrics,
    pub(crate) shared: Option<Shared>,
}

impl Inner {
    /// A closed breaker's state.
    pub(crate) fn new(
        name: Arc<str>,
        config: Config,
        clock: &Time,
        shared: Option<Shared>,
    ) -> Self {
        let window = Window::new(config.window);
        let slow_nanos = config.slow_call.map_or(0, |s| {
            u64::try_from(s.duration.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        Self {
            window_needs_clock: window.needs_clock(),
            metrics: Metrics::new(&name),
            name,
            config,
            clock: clock.starting_now(),
            word: crate::window::Padded(AtomicU64::new(
                Word {
                    state: State::Closed,
                    generation: 0,
                    deadline_ms: 0,
                }
                .pack(),
            )),
            probes: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window,
            slow_nanos,
            events: broadcast::channel(EVENT_CAPACITY).0,
            observed: AtomicBool::new(false),
            shared,
        }
    }
}

/// A circuit breaker. Cheap to clone (one `Arc`); clones share the same state.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use palisade_circuit_breaker::{CircuitBreaker, Error, State};
///
/// let breaker = CircuitBreaker::builder("openai")
///     .count_window(20)
///     .minimum_calls(5)
///     .failure_rate_threshold(50.0)
///     .open_wait(Duration::from_secs(10))
///     .build()
///     .unwrap();
///
/// for _ in 0..5 {
///     let r: Result<(), Error<&str>> = breaker.call(async { Err("upstream 503") }).await;
///     assert!(matches!(r, Err(Error::Inner(_))));
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let r = breaker.call(async { Ok::<_, &str>(()) }).await;
/// assert!(r.unwrap_err().is_rejected());
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("window", &self.snapshot())
            .finish_non_exhaustive()
    }
}

#[inline]
fn join(generation: u32, count: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(count)
}

#[inline]
fn split(raw: u64) -> (u32, u32) {
    ((raw >> 32) as u32, raw as u32)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl CircuitBreaker {
    /// A builder for a breaker called `name` (used in events, metrics and shared-state keys).
    pub fn builder(name: impl Into<String>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new(name)
    }

    /// A breaker with `config`, the system clock and no shared state.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `config` is invalid.
    pub fn new(name: impl Into<String>, config: Config) -> Result<Self> {
        Self::builder(name).config(config).build()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The current state (one atomic load). An `Open` breaker whose wait is over reports
    /// `Open` until the next call moves it to `HalfOpen`.
    pub fn state(&self) -> State {
        self.word().state
    }

    /// The window's counts right now (O(1)).
    pub fn snapshot(&self) -> Snapshot {
        let now = if self.inner.window_needs_clock {
            self.inner.clock.now_ms()
        } else {
            0
        };
        self.inner.window.snapshot(now)
    }

    /// State, rates and counts in one value.
    pub fn health(&self) -> Health {
        let window = self.snapshot();
        Health {
            name: self.inner.name.to_string(),
            state: self.state(),
            failure_rate: window.failure_rate(),
            slow_rate: window.slow_rate(),
            window,
            store_healthy: self.inner.shared.as_ref().map(Shared::is_healthy),
        }
    }

    /// The current run of consecutive failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive.load(Ordering::Relaxed)
    }

    /// A receiver for this breaker's [`Event`]s. Rejection and slow-call events are
    /// produced from the first subscription on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.observed.store(true, Ordering::Relaxed);
        self.inner.events.subscribe()
    }

    #[inline]
    pub(crate) fn word(&self) -> Word {
        Word::unpack(self.inner.word.load(Ordering::Acquire))
    }

    /// Ask for permission to make one call, deciding on local state only (no store round
    /// trip: a shared breaker's half-open probe is leased from the store only by
    /// [`acquire`](Self::acquire) and [`call`](Self::call)).
    ///
    /// # Errors
    /// [`Error::Rejected`] when the call must not be made.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>> {
        let kind = self.acquire_kind()?;
        Ok(self.permit(kind))
    }

    /// Ask for permission to make one call; for a shared breaker in half-open this leases a
    /// fleet-wide probe permit from the store (one round trip).
    ///
    /// # Errors
    /// [`Error::Rejected`] when the call must not be made.
    pub async fn acquire(&self) -> Result<Permit<'_>> {
        let kind = self.acquire_kind()?;
        let permit = self.permit(kind);
        if !self.needs_lease(kind) {
            return Ok(permit);
        }
        let answer = self.request_lease().await;
        self.settle_lease(permit, answer.unwrap_or_else(lease_task_lost))
    }

    #[inline]
    pub(crate) fn permit(&self, kind: Kind) -> Permit<'_> {
        let started = if self.inner.slow_nanos != 0 && kind != Kind::PASS {
            Some(self.inner.clock.now())
        } else {
            None
        };
        Permit::new(self, kind, started)
    }

    /// The local admission decision: the hot path of every call.
    #[inline(always)]
    pub(crate) fn acquire_kind<E>(&self) -> Result<Kind, Error<E>> {
        let inner = &*self.inner;
        if let Some(shared) = &inner.shared
            && !shared.is_healthy()
        {
            match shared.while_down() {
                WhileDown::Local => {}
                WhileDown::Admit => return self.admit_while_down(),
                WhileDown::Reject(retry_after) => return Err(self.reject(State::Open, retry_after)),
            }
        }
        loop {
            let w = self.word();
            match w.state {
                State::Closed => {
                    let may_trip = inner.shared.as_ref().is_none_or(|s| !s.is_healthy());
                    return Ok(Kind::normal(w.generation, may_trip));
                }
                State::MetricsOnly => {
                    return Ok(Kind::normal(w.generation, false));
                }
                State::Disabled => return Ok(Kind::PASS),
                State::ForcedOpen => {
                    return Err(self.reject(State::ForcedOpen, inner.config.open_wait));
                }
                State::Open => {
                    let now = inner.clock.now_ms();
                    if now < w.deadline_ms {
                        return Err(
                            self.reject(State::Open, Duration::from_millis(w.deadline_ms - now))
                        );
                    }
                    let until = now.saturating_add(ms(inner.config.max_half_open_wait));
                    self.transition(w, State::HalfOpen, until, None);
                }
                State::HalfOpen => {
                    let now = inner.clock.now_ms();
                    if now >= w.deadline_ms {
                        self.trip(w, now, TripReason::HalfOpenTimeout);
                        continue;
                    }
                    if self.take_probe(w.generation) {
                        return Ok(Kind::probe(w.generation));
                    }
                    let retry =
                        Duration::from_millis(w.deadline_ms - now).min(inner.config.open_wait);
                    return Err(self.reject(State::HalfOpen, retry));
                }
            }
        }
    }

    /// Admission while the store is down under `FailOpen`: every call passes and is recorded
    /// without tripping, except that manual states still hold.
    #[cold]
    pub(crate) fn admit_while_down<E>(&self) -> Result<Kind, Error<E>> {
        let w = self.word();
        match w.state {
            State::ForcedOpen => Err(self.reject(State::ForcedOpen, self.inner.config.open_wait)),
            State::Disabled => Ok(Kind::PASS),
            _ => Ok(Kind::normal(w.generation, false)),
        }
    }

    fn take_probe(&self, generation: u32) -> bool {
        let limit = self.inner.config.half_open_probes;
        let mut cur = self.inner.probes.load(Ordering::Acquire);
        loop {
            let (g, n) = split(cur);
            let n = if g == generation { n } else { 0 };
            if n >= limit {
                return false;
            }
            match self.inner.probes.compare_exchange_weak(
                cur,
                join(generation, n + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    pub(crate) fn release_probe(&self, generation: u32) {
        let mut cur = self.inner.probes.load(Ordering::Acquire);
        loop {
            let (g, n) = split(cur);
            if g != generation || n == 0 {
                return;
            }
            match self.inner.probes.compare_exchange_weak(
                cur,
                join(generation, n - 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Count one successful probe of `generation`; the new count.
    fn add_success(&self, generation: u32) -> u32 {
        let mut cur = self.inner.successes.load(Ordering::Acquire);
        loop {
            let (g, n) = split(cur);
            let next = if g == generation { n + 1 } else { 1 };
            match self.inner.successes.compare_exchange_weak(
                cur,
                join(generation, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    /// A rejection. The error is built inline and only the counting is out of line (see
    /// docs/benchmarks.md for why).
    #[inline]
    pub(crate) fn reject<E>(&self, state: State, retry_after: Duration) -> Error<E> {
        self.count_rejection(state, retry_after);
        Error::Rejected { state, retry_after }
    }

    #[cold]
    #[inline(never)]
    fn count_rejection(&self, state: State, retry_after: Duration) {
        self.inner.metrics.rejected.increment(1);
        if self.inner.observed.load(Ordering::Relaxed) {
            let _ = self.inner.events.send(Event::Rejected {
                name: self.inner.name.clone(),
                state,
                retry_after,
            });
        }
    }

    #[inline]
    pub(crate) fn finish(&self, kind: Kind, outcome: Outcome, elapsed: Option<Duration>) {
        let inner = &*self.inner;
        let slow = self.note_slow(outcome, elapsed);
        inner.metrics.count(outcome);
        match kind.view() {
            View::Pass => {}
            View::Normal {
                generation,
                may_trip,
            } => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let failure = outcome == Outcome::Failure;
                let w = self.word();
                if w.generation != generation {
                    return; // a late result from before the last transition
                }
                // The clock is read only when the window is time-based.
                let now = if inner.window_needs_clock {
                    inner.clock.now_ms()
                } else {
                    0
                };
                let risen =
                    inner
                        .window
                        .record(now, Mark::new(failure, slow), inner.config.minimum_calls);
                let run = if failure {
                    inner
                        .consecutive
                        .fetch_add(1, Ordering::Relaxed)
                        .saturating_add(1)
                } else {
                    if inner.consecutive.load(Ordering::Relaxed) != 0 {
                        inner.consecutive.store(0, Ordering::Relaxed);
                    }
                    0
                };
                if let Some(shared) = &inner.shared {
                    shared.add_pending(failure, slow);
                }
                // A success that left the window's rates where they were cannot trip a
                // breaker that did not trip on the previous call: skip the rule.
                if !may_trip || w.state != State::Closed || !(risen || failure) {
                    return;
                }
                if let Some(reason) = inner.config.should_trip(inner.window.snapshot(now), run) {
                    let now = inner.clock.now_ms();
                    self.trip(w, now, reason);
                }
            }
            View::Probe { generation } => {
                if outcome == Outcome::Ignored {
                    self.release_probe(generation);
                    return;
                }
                let failure = outcome == Outcome::Failure || slow;
                let w = self.word();
                if w.state != State::HalfOpen || w.generation != generation {
                    return; // late: its half-open period is over
                }
                if failure {
                    self.trip(w, inner.clock.now_ms(), TripReason::ProbeFailed);
                } else if self.add_success(generation) >= inner.config.success_threshold {
                    self.transition(w, State::Closed, 0, None);
                }
            }
        }
    }

    /// Count a slow call (metrics and event); whether it was slow.
    #[inline]
    pub(crate) fn note_slow(&self, outcome: Outcome, elapsed: Option<Duration>) -> bool {
        let Some(elapsed) = elapsed else { return false };
        if outcome == Outcome::Ignored || (elapsed.as_nanos() as u64) < self.inner.slow_nanos {
            return false;
        }
        self.inner.metrics.slow.increment(1);
        if self.inner.observed.load(Ordering::Relaxed) {
            let _ = self.inner.events.send(Event::SlowCall {
                name: self.inner.name.clone(),
                elapsed,
            });
        }
        true
    }

    /// Open the breaker from `w` (closed or half-open), with the backoff of the next trip.
    fn trip(&self, w: Word, now_ms: u64, reason: TripReason) -> bool {
        let trips = if w.state == State::Closed {
            1
        } else {
            self.inner.trips.load(Ordering::Relaxed).saturating_add(1)
        };
        let until = now_ms.saturating_add(ms(self.inner.config.open_wait_for(trips)));
        if self.transition(w, State::Open, until, Some(reason)) {
            self.inner.trips.store(trips, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Move from exactly `from` to `to`. Only the caller whose compare-and-swap succeeds
    /// returns `true`, resets what the new state starts from and emits the event.
    pub(crate) fn transition(
        &self,
        from: Word,
        to: State,
        deadline_ms: u64,
        reason: Option<TripReason>,
    ) -> bool {
        let next = from.next(to, deadline_ms);
        if self
            .inner
            .word
            .compare_exchange(
                from.pack(),
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        let inner = &*self.inner;
        if to == State::Closed {
            inner.window.reset();
            inner.consecutive.store(0, Ordering::Relaxed);
            inner.trips.store(0, Ordering::Relaxed);
        }
        inner.metrics.state.set(to.as_gauge());
        if from.state != to {
            metrics::counter!("palisade_circuit_breaker_transitions_total",
                "name" => inner.name.to_string(), "from" => from.state.as_str(), "to" => to.as_str())
            .increment(1);
            match to {
                State::Open | State::ForcedOpen => {
                    tracing::warn!(breaker = %inner.name, from = %from.state, to = %to, ?reason, "circuit breaker opened");
                }
                _ => {
                    tracing::info!(breaker = %inner.name, from = %from.state, to = %to, "circuit breaker state changed");
                }
            }
            let _ = inner.events.send(Event::Transition {
                name: inner.name.clone(),
                from: from.state,
                to,
                reason,
            });
        }
        true
    }

    /// Move to `to` from whatever the state is now (manual control and shared state).
    pub(crate) fn set_state(&self, to: State, deadline_ms: u64, reason: Option<TripReason>) {
        loop {
            let w = self.word();
            if self.transition(w, to, deadline_ms, reason) {
                return;
            }
        }
    }

    /// Reject every call until [`close`](Self::close) or [`reset`](Self::reset). A shared
    /// breaker passes this to the store on its next flush, so the whole fleet follows.
    pub fn force_open(&self) {
        self.manual(State::ForcedOpen, crate::store::ManualOp::ForceOpen);
    }

    /// Close the breaker now (keeps the backoff history).
    pub fn close(&self) {
        self.manual(State::Closed, crate::store::ManualOp::Close);
    }

    /// Close the breaker and forget everything: window, failure run, backoff history.
    pub fn reset(&self) {
        self.manual(State::Closed, crate::store::ManualOp::Reset);
        self.inner.window.reset();
    }

    /// Let every call through without recording anything.
    pub fn disable(&self) {
        self.manual(State::Disabled, crate::store::ManualOp::Disable);
    }

    /// Let every call through and record it, but never trip.
    pub fn metrics_only(&self) {
        self.manual(State::MetricsOnly, crate::store::ManualOp::MetricsOnly);
    }

    fn manual(&self, to: State, op: crate::store::ManualOp) {
        let trips = self.inner.trips.load(Ordering::Relaxed);
        self.set_state(to, 0, None);
        if op == crate::store::ManualOp::Close {
            self.inner.trips.store(trips, Ordering::Relaxed);
        }
        if let Some(shared) = &self.inner.shared {
            shared.queue_manual(op);
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.inner.events.send(event);
    }
}
