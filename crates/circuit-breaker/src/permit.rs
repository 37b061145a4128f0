//! [`Permit`]: permission to make one call, and what it holds until it is recorded.

use std::fmt;
use std::time::Duration;

use crate::breaker::CircuitBreaker;
use crate::outcome::Outcome;
use crate::store::Lease;

/// What a permit is, packed in one integer: bits 0-1 the variant of [`View`], bit 2
/// `may_trip`, bits 8.. the generation (21 bits, as in the state word). One integer is
/// written and read whole (docs/benchmarks.md says why it is not an enum with fields).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind(u32);

/// A [`Kind`] taken apart, for matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// Disabled: nothing is recorded.
    Pass,
    /// Closed or metrics-only: recorded in the window of generation `generation`.
    Normal { generation: u32, may_trip: bool },
    /// A half-open probe of generation `generation`.
    Probe { generation: u32 },
}

impl Kind {
    pub(crate) const PASS: Self = Self(0);

    #[inline]
    pub(crate) const fn normal(generation: u32, may_trip: bool) -> Self {
        Self(1 | (may_trip as u32) << 2 | generation << 8)
    }

    #[inline]
    pub(crate) const fn probe(generation: u32) -> Self {
        Self(2 | generation << 8)
    }

    #[inline]
    pub(crate) const fn is_probe(self) -> bool {
        self.0 & 3 == 2
    }

    #[inline]
    pub(crate) const fn view(self) -> View {
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
/// [`Outcome::Ignored`] (a half-open probe slot is given back, and a fleet-wide lease too).
#[must_use = "a permit must be recorded, or dropping it gives a probe slot back"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// Set to `Kind::PASS` once recorded, so that dropping a recorded permit does nothing.
    kind: Kind,
    /// Clock reading at admission, taken only when slow-call detection is on.
    started: Option<Duration>,
    /// A shared breaker's probe: the fleet-wide lease it runs under.
    lease: Option<Box<Lease>>,
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("kind", &self.kind)
            .field("leased", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Permit<'a> {
    #[inline]
    pub(crate) fn new(breaker: &'a CircuitBreaker, kind: Kind, started: Option<Duration>) -> Self {
        Self {
            breaker,
            kind,
            started,
            lease: None,
        }
    }

    pub(crate) fn set_lease(&mut self, lease: Lease) {
        self.lease = Some(Box::new(lease));
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.kind.is_probe()
    }

    /// Record how the call went. For a shared breaker's probe the result is reported to the
    /// store by a task of the breaker's runtime; [`CircuitBreaker::call`] waits for it.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        if let Some(report) = self.record_or_report(outcome) {
            drop(report); // detached: the report reaches the store all the same
        }
    }

    /// Record `outcome`: at once, or, for a leased probe, by a report to the store that runs
    /// as a task of its own (so a caller that stops waiting loses neither the outcome nor
    /// the lease); the handle tells when the store has answered.
    #[inline]
    pub(crate) fn record_or_report(self, outcome: Outcome) -> Option<tokio::task::JoinHandle<()>> {
        // Recorded now, so never abandoned: `Drop` is skipped, and the cold helper takes
        // fields by value so that the permit's address never escapes the hot path.
        let mut this = std::mem::ManuallyDrop::new(self);
        let (breaker, kind, elapsed) = (this.breaker, this.kind, this.elapsed());
        if let Some(lease) = this.lease.take() {
            return Some(report(breaker, lease, outcome, elapsed));
        }
        breaker.finish(kind, outcome, elapsed);
        None
    }

    #[inline]
    fn elapsed(&self) -> Option<Duration> {
        self.started
            .map(|start| self.breaker.inner.clock.now().saturating_sub(start))
    }
}

#[cold]
fn report(
    breaker: &CircuitBreaker,
    lease: Box<Lease>,
    outcome: Outcome,
    elapsed: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    breaker.report(lease, outcome, elapsed)
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.kind.is_probe() || self.lease.is_some() {
            abandon(self.breaker, self.kind, self.lease.take());
        }
    }
}

/// Give back what an unrecorded permit holds (fields by value, as in `record_or_report`).
#[cold]
fn abandon(breaker: &CircuitBreaker, kind: Kind, lease: Option<Box<Lease>>) {
    if let View::Probe { generation } = kind.view() {
        breaker.release_probe(generation);
    }
    if let Some(lease) = lease {
        drop(breaker.report(lease, Outcome::Ignored, None));
    }
}
