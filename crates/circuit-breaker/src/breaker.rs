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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::config::{
    Backoff, Config, FailureMode, Quorum, SlidingWindow, SlowCallRule, TripReason,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::state::{State, Word};
use crate::store::Store;
use crate::sync::Shared;
use crate::window::{Mark, Snapshot, Window};

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Does not count at all (for example a client error such as "invalid request"); a
    /// half-open probe that ends ignored gives its permit back.
    Ignored,
}

/// Decides how a call's result counts. Implemented for every
/// `Fn(&Result<T, E>) -> Outcome`; [`DefaultClassifier`] counts `Err` as failure.
pub trait Classifier<T, E> {
    /// Classify one result.
    fn classify(&self, result: &std::result::Result<T, E>) -> Outcome;
}

impl<T, E, F> Classifier<T, E> for F
where
    F: Fn(&std::result::Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &std::result::Result<T, E>) -> Outcome {
        self(result)
    }
}

/// `Ok` is a success, `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl<T, E> Classifier<T, E> for DefaultClassifier {
    fn classify(&self, result: &std::result::Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

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

#[derive(Debug)]
struct Metrics {
    success: Counter,
    failure: Counter,
    ignored: Counter,
    timeout: Counter,
    rejected: Counter,
    slow: Counter,
    state: Gauge,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let n = name.to_owned();
        let calls = |outcome: &'static str| metrics::counter!("palisade_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => outcome);
        Self {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            timeout: calls("timeout"),
            rejected: metrics::counter!("palisade_circuit_breaker_rejected_total", "name" => n.clone()),
            slow: metrics::counter!("palisade_circuit_breaker_slow_calls_total", "name" => n.clone()),
            state: metrics::gauge!("palisade_circuit_breaker_state", "name" => n),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) name: Arc<str>,
    pub(crate) config: Config,
    pub(crate) clock: Clock,
    /// Read by every call, written only on transitions: on a cache line of its own.
    word: crate::window::Padded<AtomicU64>,
    probes: AtomicU64,
    successes: AtomicU64,
    trips: AtomicU32,
    consecutive: AtomicU32,
    window: Window,
    window_needs_clock: bool,
    slow_nanos: u64,
    events: broadcast::Sender<Event>,
    observed: AtomicBool,
    metrics: Metrics,
    pub(crate) shared: Option<Shared>,
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

/// What a permit is, packed in one integer: bits 0-1 the variant of [`View`], bit 2
/// `may_trip`, bits 8.. the generation (21 bits, as in the state word). One integer is
/// written and read whole; a small enum with fields was assembled byte by byte on the stack
/// and read back as a word, which stalled the CPU's store forwarding on the hot path.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Kind(u32);

/// A [`Kind`] taken apart, for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// Disabled: nothing is recorded.
    Pass,
    /// Closed or metrics-only: recorded in the window of generation `generation`.
    Normal { generation: u32, may_trip: bool },
    /// A half-open probe of generation `generation`.
    Probe { generation: u32 },
}

impl Kind {
    const PASS: Self = Self(0);

    #[inline]
    const fn normal(generation: u32, may_trip: bool) -> Self {
        Self(1 | (may_trip as u32) << 2 | generation << 8)
    }

    #[inline]
    const fn probe(generation: u32) -> Self {
        Self(2 | generation << 8)
    }

    #[inline]
    const fn is_probe(self) -> bool {
        self.0 & 3 == 2
    }

    #[inline]
    const fn view(self) -> View {
        let generation = self.0 >> 8;
        match self.0 & 3 {
            1 => View::Normal {
                generation,
                may_trip: self.0 & 4 != 0,
            },
            2 => View::Probe { generation },
            _ => View::Pass,
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`]. Report how the call
/// went with [`record`](Self::record); a permit dropped without a record counts as
/// [`Outcome::Ignored`] (a half-open probe slot is given back).
#[must_use = "a permit must be recorded, or dropping it gives a probe slot back"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// Set to `Kind::PASS` once recorded, so that dropping a recorded permit does nothing
    /// (no separate flag: a smaller permit moves in fewer, whole-word copies).
    kind: Kind,
    /// Clock reading at admission, taken only when slow-call detection is on. (An `Option`
    /// of a `Duration` also gives `Result<Permit, Error>` a niche, so it needs no tag.)
    started: Option<Duration>,
    lease: Option<Box<crate::store::Lease>>,
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Permit<'_> {
    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.kind.is_probe()
    }

    /// Record how the call went. For a shared breaker's probe the result is reported to the
    /// store in a background task; [`CircuitBreaker::call`] awaits it instead.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        // Recorded now, so never abandoned: `Drop` is skipped (it would only look at fields
        // this consumes), which also lets the common path keep the permit in registers.
        // The cold helpers take fields by value, never `&mut self`: a permit whose address
        // never escapes stays in registers instead of being spilled and copied around.
        let mut this = std::mem::ManuallyDrop::new(self);
        let (breaker, kind, elapsed) = (this.breaker, this.kind, this.elapsed());
        if let Some(lease) = this.lease.take() {
            Self::record_leased(breaker, lease, kind, outcome, elapsed);
            return;
        }
        breaker.finish(kind, outcome, elapsed);
    }

    #[cold]
    fn record_leased(
        breaker: &CircuitBreaker,
        lease: Box<crate::store::Lease>,
        _kind: Kind,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) {
        // Detached: the report reaches the store even though nobody waits for it.
        drop(breaker.report(lease, outcome, elapsed));
    }

    /// Record a leased probe's `outcome`: the report to the store runs as a task of its own,
    /// so a caller that stops waiting (a dropped call future) loses neither the outcome nor
    /// the lease; the handle only tells when the store has answered.
    #[cold]
    fn record_detached(mut self, outcome: Outcome) -> tokio::task::JoinHandle<()> {
        let elapsed = self.elapsed();
        self.kind = Kind::PASS;
        let lease = self.lease.take().expect("only leased permits are reported");
        self.breaker.report(lease, outcome, elapsed)
    }

    #[inline]
    fn elapsed(&self) -> Option<Duration> {
        self.started
            .map(|start| self.breaker.inner.clock.now().saturating_sub(start))
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.kind.is_probe() || self.lease.is_some() {
            abandon(self.breaker, self.kind, self.lease.take());
        }
    }
}

/// Give back what an unrecorded permit holds (fields by value, as in `Permit::record`).
#[cold]
fn abandon(breaker: &CircuitBreaker, kind: Kind, lease: Option<Box<crate::store::Lease>>) {
    if let View::Probe { generation } = kind.view() {
        breaker.release_probe(generation);
    }
    if let Some(lease) = lease {
        drop(breaker.report(lease, Outcome::Ignored, None));
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
    fn word(&self) -> Word {
        Word::unpack(self.inner.word.load(Ordering::Acquire))
    }

    /// Run `fut` through the breaker: rejected at once when open, counted when it finishes
    /// (`Err` is a failure), cut off after the per-call timeout if one is configured.
    ///
    /// # Errors
    /// [`Error::Rejected`] without running `fut`, [`Error::Timeout`], or the call's own error
    /// as [`Error::Inner`].
    pub fn call<F, T, E>(&self, fut: F) -> impl Future<Output = Result<T, Error<E>>>
    where
        F: Future<Output = std::result::Result<T, E>>,
    {
        Call::new(self, fut, DefaultClassifier)
    }

    /// [`call`](Self::call) with a classifier that decides which results count as failures
    /// and which are ignored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use palisade_circuit_breaker::{CircuitBreaker, Outcome};
    ///
    /// let breaker = CircuitBreaker::builder("db").build().unwrap();
    /// // A "not found" is the caller's problem, not the database's: don't count it.
    /// let r = breaker
    ///     .call_classified(async { Err::<(), _>("not found") }, |r: &Result<(), &str>| match r {
    ///         Err(e) if *e == "not found" => Outcome::Ignored,
    ///         Err(_) => Outcome::Failure,
    ///         Ok(_) => Outcome::Success,
    ///     })
    ///     .await;
    /// assert!(r.is_err());
    /// assert_eq!(breaker.snapshot().calls, 0);
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub fn call_classified<F, T, E, C>(
        &self,
        fut: F,
        classifier: C,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        F: Future<Output = std::result::Result<T, E>>,
        C: Classifier<T, E>,
    {
        Call::new(self, fut, classifier)
    }

    /// [`call_classified`](Self::call_classified) with the call's future made by `make` only
    /// once the breaker admits the call, so that a rejected call has no side effect at all
    /// (what the tower layer needs: a service's `call` may start work before it is polled).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_with<M, F, T, E, C>(&self, make: M, classifier: C) -> Result<T, Error<E>>
    where
        M: FnOnce() -> F,
        F: Future<Output = std::result::Result<T, E>>,
        C: Classifier<T, E>,
    {
        let kind = self.acquire_kind::<E>()?;
        let mut permit = self.permit(kind);
        if self.needs_lease(kind) {
            permit = Box::pin(self.lease(permit)).await.map_err(Error::widen)?;
        }
        let fut = make();
        let result = match self.inner.config.call_timeout {
            None => fut.await,
            Some(limit) => match self.with_timeout(limit, fut).await {
                Ok(result) => result,
                Err(timeout) => {
                    if permit.lease.is_some() {
                        let _ = permit.record_detached(Outcome::Failure).await;
                    } else {
                        permit.record(Outcome::Failure);
                    }
                    return Err(timeout);
                }
            },
        };
        let outcome = classifier.classify(&result);
        if permit.lease.is_some() {
            let _ = permit.record_detached(outcome).await;
        } else {
            permit.record(outcome);
        }
        result.map_err(Error::Inner)
    }

    /// Admit one call: the local decision, plus a fleet-wide lease for a shared probe (that
    /// rare path is boxed so the common path's future stays small).
    #[inline]
    async fn admit(&self) -> Result<Permit<'_>> {
        let kind = self.acquire_kind()?;
        let permit = self.permit(kind);
        if self.needs_lease(kind) {
            return Box::pin(self.lease(permit)).await;
        }
        Ok(permit)
    }

    /// Run `fut` under the per-call timeout. The timer lives in a box: one allocation per
    /// call when a timeout is configured, and a small future for every call.
    async fn with_timeout<F, T, E>(
        &self,
        limit: Duration,
        fut: F,
    ) -> Result<std::result::Result<T, E>, Error<E>>
    where
        F: Future<Output = std::result::Result<T, E>>,
    {
        match Box::pin(tokio::time::timeout(limit, fut)).await {
            Ok(result) => Ok(result),
            Err(_) => {
                self.inner.metrics.timeout.increment(1);
                Err(Error::Timeout(limit))
            }
        }
    }

    /// [`call`](Self::call), answering with `fallback(error)` when the breaker rejects the
    /// call, it times out or fails.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use palisade_circuit_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::builder("anthropic").build().unwrap();
    /// breaker.force_open();
    /// let answer = breaker
    ///     .call_with_fallback(async { Ok::<_, std::io::Error>("live answer") }, |_err| async {
    ///         "cached answer"
    ///     })
    ///     .await;
    /// assert_eq!(answer, "cached answer");
    /// # }
    /// ```
    pub async fn call_with_fallback<F, T, E, FB, FF>(&self, fut: F, fallback: FB) -> T
    where
        F: Future<Output = std::result::Result<T, E>>,
        FB: FnOnce(Error<E>) -> FF,
        FF: Future<Output = T>,
    {
        match self.call(fut).await {
            Ok(v) => v,
            Err(e) => fallback(e).await,
        }
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
        self.admit().await
    }

    #[inline]
    fn needs_lease(&self, kind: Kind) -> bool {
        kind.is_probe() && self.inner.shared.as_ref().is_some_and(Shared::is_active)
    }

    /// Lease a fleet-wide probe permit for a local probe `permit`.
    async fn lease<'a>(&'a self, mut permit: Permit<'a>) -> Result<Permit<'a>> {
        if let Some(shared) = &self.inner.shared {
            match self.lease_detached(shared).await {
                crate::sync::LeaseAnswer::Granted(lease) => permit.lease = Some(Box::new(lease)),
                crate::sync::LeaseAnswer::Denied { retry_after } => {
                    drop(permit);
                    return Err(self.reject(State::HalfOpen, retry_after));
                }
                crate::sync::LeaseAnswer::StoreDown => {
                    match self.inner.config.shared.failure_mode {
                        FailureMode::FallbackToMemory => {}
                        FailureMode::FailOpen => {
                            drop(permit);
                            return Ok(self.permit(Kind::PASS));
                        }
                        FailureMode::FailClosed => {
                            drop(permit);
                            return Err(
                                self.reject(State::Open, self.inner.config.shared.flush_interval)
                            );
                        }
                    }
                }
            }
        }
        Ok(permit)
    }

    /// Ask the store for a fleet-wide probe lease in a task of its own: when the caller
    /// stops waiting (a dropped call future), the task gives a lease granted meanwhile back
    /// at once instead of leaving it taken until it expires.
    #[cold]
    fn lease_detached(
        &self,
        shared: &Shared,
    ) -> impl Future<Output = crate::sync::LeaseAnswer> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let breaker = self.clone();
        shared.spawn(async move {
            let Some(shared) = &breaker.inner.shared else {
                return;
            };
            let answer = shared.lease_probe(&breaker).await;
            if let Err(crate::sync::LeaseAnswer::Granted(lease)) = tx.send(answer) {
                shared
                    .complete_probe(&breaker, lease, Outcome::Ignored)
                    .await;
            }
        });
        async move { rx.await.unwrap_or(crate::sync::LeaseAnswer::StoreDown) }
    }

    /// Report a leased probe's outcome to the store in a task of its own (see
    /// [`Permit::record_detached`]).
    fn report(
        &self,
        lease: Box<crate::store::Lease>,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) -> tokio::task::JoinHandle<()> {
        let breaker = self.clone();
        let Some(shared) = &self.inner.shared else {
            unreachable!("only a shared breaker leases probes")
        };
        shared.spawn(async move { breaker.finish_shared_probe(lease, outcome, elapsed).await })
    }

    #[inline]
    fn permit(&self, kind: Kind) -> Permit<'_> {
        let started = if self.inner.slow_nanos != 0 && kind != Kind::PASS {
            Some(self.inner.clock.now())
        } else {
            None
        };
        Permit {
            breaker: self,
            kind,
            started,
            lease: None,
        }
    }

    #[inline(always)]
    fn acquire_kind<E>(&self) -> Result<Kind, Error<E>> {
        let inner = &*self.inner;
        if let Some(shared) = &inner.shared
            && !shared.is_healthy()
        {
            match inner.config.shared.failure_mode {
                FailureMode::FallbackToMemory => {}
                FailureMode::FailOpen => {
                    // Manual states still win over the failure mode.
                    let w = self.word();
                    return match w.state {
                        State::ForcedOpen => {
                            Err(self.reject(State::ForcedOpen, inner.config.open_wait))
                        }
                        State::Disabled => Ok(Kind::PASS),
                        _ => Ok(Kind::normal(w.generation, false)),
                    };
                }
                FailureMode::FailClosed => {
                    return Err(self.reject(State::Open, inner.config.shared.flush_interval));
                }
            }
        }
        loop {
            let w = self.word();
            match w.state {
                State::Closed => {
                    let may_trip = inner.shared.as_ref().is_none_or(|s| !s.is_active());
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

    fn release_probe(&self, generation: u32) {
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

    /// A rejection. The error is built here, inline, and only the counting is out of line:
    /// an error returned through memory from a cold function came back through a
    /// store-to-load stall that cost more than the rest of the rejection.
    #[inline]
    fn reject<E>(&self, state: State, retry_after: Duration) -> Error<E> {
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
    fn finish(&self, kind: Kind, outcome: Outcome, elapsed: Option<Duration>) {
        let inner = &*self.inner;
        let slow = self.note_slow(outcome, elapsed);
        match outcome {
            Outcome::Success => inner.metrics.success.increment(1),
            Outcome::Failure => inner.metrics.failure.increment(1),
            Outcome::Ignored => inner.metrics.ignored.increment(1),
        }
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
    fn note_slow(&self, outcome: Outcome, elapsed: Option<Duration>) -> bool {
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

    async fn finish_shared_probe(
        &self,
        lease: Box<crate::store::Lease>,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) {
        let slow = if outcome == Outcome::Ignored {
            false
        } else {
            self.note_slow(outcome, elapsed)
        };
        let outcome = if slow && outcome == Outcome::Success {
            Outcome::Failure
        } else {
            outcome
        };
        match outcome {
            Outcome::Success => self.inner.metrics.success.increment(1),
            Outcome::Failure => self.inner.metrics.failure.increment(1),
            Outcome::Ignored => self.inner.metrics.ignored.increment(1),
        }
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let generation = lease.local_generation;
        if !shared.complete_probe(self, *lease, outcome).await {
            // The store did not answer: decide locally, as if there were no store.
            self.finish(Kind::probe(generation), outcome, None);
        } else if outcome == Outcome::Ignored {
            self.release_probe(generation);
        }
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

    pub(crate) fn local_generation(&self) -> u32 {
        self.word().generation
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.inner.events.send(event);
    }
}

pin_project_lite::pin_project! {
    /// The future of [`CircuitBreaker::call`] and [`call_classified`](CircuitBreaker::call_classified).
    ///
    /// Written by hand rather than as an `async fn` so that it stays small (the call's own
    /// future, a reference, the classifier and a permit) and allocation-free: an `async fn`
    /// lays out every await point's locals side by side, and the rare paths (per-call
    /// timeout, fleet-wide probe lease, reporting a leased probe to the store) made that
    /// future several times larger than the call it wraps, all of which is copied whenever
    /// the future moves. Those rare paths live in boxes that only they allocate.
    struct Call<'a, F, C, T, E> {
        breaker: &'a CircuitBreaker,
        #[pin]
        fut: F,
        classifier: C,
        stage: Stage<'a, T, E>,
    }
}

enum Stage<'a, T, E> {
    /// Not admitted yet: admission happens on the first poll, not when the future is made.
    Start,
    /// Waiting for a fleet-wide probe lease from the store.
    Leasing(Pin<Box<dyn Future<Output = Result<Permit<'a>>> + Send + 'a>>),
    /// Admitted: the call runs, under `timer` when a per-call timeout is configured.
    Running {
        permit: Permit<'a>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// A leased probe is being reported to the store (by a task of its own, which goes on
    /// if this future is dropped); `result` is returned once it is.
    Reporting {
        report: tokio::task::JoinHandle<()>,
        result: Result<T, Error<E>>,
    },
    /// Finished (or given up): polling again stays pending.
    Done,
}

impl<'a, F, C, T, E> Call<'a, F, C, T, E> {
    fn new(breaker: &'a CircuitBreaker, fut: F, classifier: C) -> Self {
        Self {
            breaker,
            fut,
            classifier,
            stage: Stage::Start,
        }
    }
}

impl<'a, T, E> Stage<'a, T, E> {
    #[inline]
    fn running(breaker: &CircuitBreaker, permit: Permit<'a>) -> Self {
        let timer = breaker
            .inner
            .config
            .call_timeout
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        Stage::Running { permit, timer }
    }

    /// Record `outcome` on `permit` and answer `result`: at once, or after the store has
    /// heard about a leased probe.
    #[inline]
    fn finish(
        &mut self,
        permit: Permit<'a>,
        outcome: Outcome,
        result: Result<T, Error<E>>,
    ) -> Option<Result<T, Error<E>>> {
        if permit.lease.is_none() {
            permit.record(outcome);
            return Some(result);
        }
        *self = Stage::Reporting {
            report: permit.record_detached(outcome),
            result,
        };
        None
    }
}

impl<'a, F, C, T, E> Future for Call<'a, F, C, T, E>
where
    F: Future<Output = std::result::Result<T, E>>,
    C: Classifier<T, E>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let breaker: &'a CircuitBreaker = this.breaker;
        // Stages are matched in place and only taken apart when they end: moving a stage
        // (permit and all) in and out on every poll costs more than the rest of the path.
        loop {
            match this.stage {
                Stage::Start => {
                    let kind = match breaker.acquire_kind::<E>() {
                        Ok(kind) => kind,
                        Err(rejected) => {
                            *this.stage = Stage::Done;
                            return Poll::Ready(Err(rejected));
                        }
                    };
                    let permit = breaker.permit(kind);
                    if breaker.needs_lease(kind) {
                        *this.stage = Stage::Leasing(Box::pin(breaker.lease(permit)));
                        continue;
                    }
                    if breaker.inner.config.call_timeout.is_some() {
                        *this.stage = Stage::running(breaker, permit);
                        continue;
                    }
                    // The common case (no lease, no timer): run the call now, with the permit
                    // kept local; it is stored only if the call has to wait.
                    return match this.fut.as_mut().poll(cx) {
                        Poll::Ready(result) => {
                            *this.stage = Stage::Done;
                            permit.record(this.classifier.classify(&result));
                            Poll::Ready(result.map_err(Error::Inner))
                        }
                        Poll::Pending => {
                            *this.stage = Stage::Running {
                                permit,
                                timer: None,
                            };
                            Poll::Pending
                        }
                    };
                }
                Stage::Leasing(lease) => match lease.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        *this.stage = Stage::Done;
                        return Poll::Ready(Err(e.widen()));
                    }
                    Poll::Ready(Ok(permit)) => *this.stage = Stage::running(breaker, permit),
                },
                Stage::Running { timer, .. } => {
                    let (outcome, result) = match this.fut.as_mut().poll(cx) {
                        Poll::Ready(result) => (
                            this.classifier.classify(&result),
                            result.map_err(Error::Inner),
                        ),
                        // As `tokio::time::timeout`: the call first, then its deadline.
                        Poll::Pending => {
                            let expired = match timer {
                                Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
                                None => false,
                            };
                            if !expired {
                                return Poll::Pending;
                            }
                            breaker.inner.metrics.timeout.increment(1);
                            let limit = breaker.inner.config.call_timeout.unwrap_or_default();
                            (Outcome::Failure, Err(Error::Timeout(limit)))
                        }
                    };
                    let Stage::Running { permit, .. } = std::mem::replace(this.stage, Stage::Done)
                    else {
                        return Poll::Pending; // matched as `Running` just above
                    };
                    match this.stage.finish(permit, outcome, result) {
                        Some(result) => return Poll::Ready(result),
                        None => continue,
                    }
                }
                Stage::Reporting { report, .. } => {
                    if Pin::new(report).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let Stage::Reporting { result, .. } =
                        std::mem::replace(this.stage, Stage::Done)
                    {
                        return Poll::Ready(result);
                    }
                }
                Stage::Done => return Poll::Pending,
            }
        }
    }
}

/// Builds a [`CircuitBreaker`]; every setter changes one [`Config`] field.
#[derive(Debug)]
pub struct CircuitBreakerBuilder {
    name: String,
    config: Config,
    clock: Clock,
    store: Option<Arc<dyn Store>>,
    instance_id: Option<String>,
}

impl CircuitBreakerBuilder {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: Config::default(),
            clock: Clock::system(),
            store: None,
            instance_id: None,
        }
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The sliding window.
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// A count-based window over the last `size` calls.
    pub fn count_window(self, size: u32) -> Self {
        self.window(SlidingWindow::Count { size })
    }

    /// A time-based window over the last `seconds` seconds.
    pub fn time_window(self, seconds: u32) -> Self {
        self.window(SlidingWindow::Time { seconds })
    }

    /// Calls needed in the window before a rate rule may trip.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Failure percentage that trips the breaker.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Trip after `n` failures in a row.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Calls taking at least `duration` are slow; trip at `rate_threshold` percent slow calls.
    pub fn slow_call(mut self, duration: Duration, rate_threshold: f64) -> Self {
        self.config.slow_call = Some(SlowCallRule {
            duration,
            rate_threshold,
        });
        self
    }

    /// How long to stay open before probing.
    pub fn open_wait(mut self, wait: Duration) -> Self {
        self.config.open_wait = wait;
        self
    }

    /// Multiply the open wait by `multiplier` on each repeated trip, up to `max_wait`.
    pub fn backoff(mut self, multiplier: f64, max_wait: Duration) -> Self {
        self.config.backoff = Some(Backoff {
            multiplier,
            max_wait,
        });
        self
    }

    /// Probe calls admitted per half-open period.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// Successful probes needed to close.
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.config.success_threshold = successes;
        self
    }

    /// Longest half-open period before opening again.
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.config.max_half_open_wait = wait;
        self
    }

    /// Per-call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = Some(timeout);
        self
    }

    /// The clock (default: [`Clock::system`]).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Share state with other instances through `store`. [`build`](Self::build) must then run
    /// inside a tokio runtime: it spawns the task that flushes every
    /// [`flush_interval`](Self::flush_interval).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// How often a shared breaker flushes to its store.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.shared.flush_interval = interval;
        self
    }

    /// What a shared breaker does while its store fails.
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.config.shared.failure_mode = mode;
        self
    }

    /// Open fleet-wide only with a quorum of failing instances.
    pub fn quorum(mut self, quorum: Quorum) -> Self {
        self.config.shared.quorum = Some(quorum);
        self
    }

    /// Length of the shared time window in seconds.
    pub fn shared_window_seconds(mut self, seconds: u32) -> Self {
        self.config.shared.window_seconds = seconds;
        self
    }

    /// The id this instance uses in the store (default: random).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Build the breaker.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the configuration is invalid, or when a store is set and no
    /// tokio runtime is running.
    pub fn build(self) -> Result<CircuitBreaker> {
        self.config.validate()?;
        if self.name.is_empty() {
            return Err(Error::InvalidConfig(
                "a circuit breaker needs a non-empty name".into(),
            ));
        }
        let name: Arc<str> = Arc::from(self.name.as_str());
        let window = Window::new(self.config.window);
        let slow_nanos = self.config.slow_call.map_or(0, |s| {
            u64::try_from(s.duration.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        let runtime = if self.store.is_some() {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::InvalidConfig(
                    "a circuit breaker with a store must be built inside a tokio runtime".into(),
                )
            })?)
        } else {
            None
        };
        let shared = match (self.store, &runtime) {
            (Some(store), Some(runtime)) => Some(Shared::new(
                store,
                self.instance_id,
                &self.config,
                runtime.clone(),
            )),
            _ => None,
        };
        let metrics = Metrics::new(&name);
        metrics.state.set(State::Closed.as_gauge());
        let breaker = CircuitBreaker {
            inner: Arc::new(Inner {
                window_needs_clock: window.needs_clock(),
                name,
                config: self.config,
                clock: self.clock,
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
                metrics,
                shared,
            }),
        };
        if let Some(runtime) = runtime {
            crate::sync::spawn_flusher(&breaker, &runtime);
        }
        Ok(breaker)
    }
}
