//! The one guarded-call path: [`CircuitBreaker::call`], [`call_classified`] and
//! [`call_with`] all return a [`Call`] future, which admits the call, leases a fleet-wide
//! probe when a shared breaker is half-open, runs the call under the per-call timeout,
//! classifies its result and records it (or reports a leased probe to the store).
//!
//! [`call_classified`]: CircuitBreaker::call_classified
//! [`call_with`]: CircuitBreaker::call_with

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::breaker::CircuitBreaker;
use crate::error::Error;
use crate::fleet::lease_task_lost;
use crate::outcome::{Classifier, DefaultClassifier, Outcome};
use crate::permit::Permit;
use crate::sync::LeaseAnswer;

pin_project_lite::pin_project! {
    /// The future of every guarded call. A hand-written future rather than an `async fn`:
    /// it holds the call's own future, a reference, the classifier and a permit, and the
    /// rare paths (per-call timeout, fleet-wide probe lease, report to the store) keep what
    /// they need in boxes or handles that only they create, so the common call stays small
    /// and allocation-free (docs/benchmarks.md has the figures).
    struct Call<'a, M, F, C, T, E> {
        breaker: &'a CircuitBreaker,
        #[pin]
        body: Body<M, F>,
        classifier: C,
        stage: Stage<'a, T, E>,
    }
}

pin_project_lite::pin_project! {
    /// The call's own future, or what makes it once the call is admitted.
    #[project = BodyProj]
    enum Body<M, F> {
        /// [`CircuitBreaker::call_with`]: made only once admitted.
        Make { make: Option<M> },
        /// The call's future.
        Run { #[pin] fut: F },
    }
}

impl<M, F> Body<M, F>
where
    M: FnOnce() -> F,
{
    /// The call's future, made on first use (only ever after admission).
    #[inline]
    fn fut(mut self: Pin<&mut Self>) -> Option<Pin<&mut F>> {
        if let BodyProj::Make { make } = self.as_mut().project() {
            let make = make.take()?;
            self.set(Body::Run { fut: make() });
        }
        match self.project() {
            BodyProj::Run { fut } => Some(fut),
            BodyProj::Make { .. } => None,
        }
    }
}

enum Stage<'a, T, E> {
    /// Not admitted yet: admission happens on the first poll, not when the future is made.
    Start,
    /// Waiting for the store's answer to a fleet-wide probe lease (asked by a task of its
    /// own, which gives the lease back if this future is dropped meanwhile).
    Leasing {
        permit: Permit<'a>,
        answer: oneshot::Receiver<LeaseAnswer>,
    },
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
}

impl<'a, M, F, C, T, E> Call<'a, M, F, C, T, E> {
    fn new(breaker: &'a CircuitBreaker, body: Body<M, F>, classifier: C) -> Self {
        Self {
            breaker,
            body,
            classifier,
            stage: Stage::Start,
        }
    }
}

impl<'a, M, F, C, T, E> Future for Call<'a, M, F, C, T, E>
where
    M: FnOnce() -> F,
    F: Future<Output = Result<T, E>>,
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
                        let answer = breaker.request_lease();
                        *this.stage = Stage::Leasing { permit, answer };
                        continue;
                    }
                    if breaker.inner.config.call_timeout.is_some() {
                        *this.stage = Stage::running(breaker, permit);
                        continue;
                    }
                    // The common case (no lease, no timer): run the call now, with the permit
                    // kept local; it is stored only if the call has to wait.
                    let Some(fut) = this.body.as_mut().fut() else {
                        return Poll::Pending; // unreachable: the body is made once, here
                    };
                    return match fut.poll(cx) {
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
                Stage::Leasing { answer, .. } => {
                    let answer = match Pin::new(answer).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(answer) => answer.unwrap_or_else(lease_task_lost),
                    };
                    let Stage::Leasing { permit, .. } = std::mem::replace(this.stage, Stage::Done)
                    else {
                        return Poll::Pending; // matched as `Leasing` just above
                    };
                    match breaker.settle_lease(permit, answer) {
                        Ok(permit) => *this.stage = Stage::running(breaker, permit),
                        Err(rejected) => return Poll::Ready(Err(rejected.widen())),
                    }
                }
                Stage::Running { timer, .. } => {
                    let Some(fut) = this.body.as_mut().fut() else {
                        return Poll::Pending; // unreachable: the body is made once, here
                    };
                    let (outcome, result) = match fut.poll(cx) {
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
                    match permit.record_or_report(outcome) {
                        None => return Poll::Ready(result),
                        Some(report) => *this.stage = Stage::Reporting { report, result },
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

impl CircuitBreaker {
    /// Run `fut` through the breaker: rejected at once when open, counted when it finishes
    /// (`Err` is a failure), cut off after the per-call timeout if one is configured.
    ///
    /// # Errors
    /// [`Error::Rejected`] without running `fut`, [`Error::Timeout`], or the call's own error
    /// as [`Error::Inner`].
    pub fn call<F, T, E>(&self, fut: F) -> impl Future<Output = Result<T, Error<E>>>
    where
        F: Future<Output = Result<T, E>>,
    {
        Call::new(self, Body::<fn() -> F, F>::Run { fut }, DefaultClassifier)
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
        F: Future<Output = Result<T, E>>,
        C: Classifier<T, E>,
    {
        Call::new(self, Body::<fn() -> F, F>::Run { fut }, classifier)
    }

    /// [`call_classified`](Self::call_classified) with the call's future made by `make` only
    /// once the breaker admits the call, so that a rejected call has no side effect at all
    /// (what the tower layer needs: a service's `call` may start work before it is polled).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub fn call_with<M, F, T, E, C>(
        &self,
        make: M,
        classifier: C,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<T, E>>,
        C: Classifier<T, E>,
    {
        Call::new(self, Body::Make { make: Some(make) }, classifier)
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
        F: Future<Output = Result<T, E>>,
        FB: FnOnce(Error<E>) -> FF,
        FF: Future<Output = T>,
    {
        match self.call(fut).await {
            Ok(v) => v,
            Err(e) => fallback(e).await,
        }
    }
}
