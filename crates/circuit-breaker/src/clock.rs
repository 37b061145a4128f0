//! Injectable time: the system's monotonic clock, or a [`FakeClock`] that tests advance by hand.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The time source of a breaker: a monotonic clock measured from the clock's own epoch.
///
/// [`Clock::system`] (the default) reads the CPU's monotonic counter through [`quanta`]
/// (the TSC where it is reliable, else the OS monotonic clock): a few nanoseconds per read
/// instead of a `clock_gettime` call, which matters because a time window reads the clock on
/// every call and slow-call detection twice per call. A [`FakeClock`] turns into a
/// `Clock` with [`FakeClock::clock`] (or `From`) and only moves when told to, so tests and
/// benches never sleep. Cloning is cheap; clones share the same epoch.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    /// The counter and its raw reading at the epoch.
    System(quanta::Clock, u64),
    Fake(FakeClock),
}

impl Clock {
    /// The system's monotonic clock; its epoch is the moment of this call.
    ///
    /// The first call in a process calibrates the counter against the OS clock (quanta does
    /// this once, globally); later calls are cheap.
    pub fn system() -> Self {
        let counter = quanta::Clock::new();
        let epoch = counter.raw();
        Self(Source::System(counter, epoch))
    }

    /// The time elapsed since this clock's epoch.
    #[inline]
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }

    /// [`now`](Self::now) in whole nanoseconds (saturating after 584 years).
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        match &self.0 {
            // quanta only uses the TSC when the CPU reports it invariant (synchronised
            // across cores); `delta_as_nanos` also reads a counter below the epoch as zero.
            Source::System(counter, epoch) => counter.delta_as_nanos(*epoch, counter.raw()),
            Source::Fake(fake) => fake.now_ns(),
        }
    }

    /// [`now`](Self::now) in whole milliseconds.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System(..) => f.write_str("Clock::System"),
            Source::Fake(fake) => f.debug_tuple("Clock::Fake").field(&fake.now()).finish(),
        }
    }
}

impl From<FakeClock> for Clock {
    fn from(fake: FakeClock) -> Self {
        Self(Source::Fake(fake))
    }
}

/// A clock that stands still until [`advance`](Self::advance)d or [`set`](Self::set).
///
/// Clones share the same time, so a test keeps one handle and gives a clone to the breaker:
///
/// ```
/// use std::time::Duration;
/// use palisade_circuit_breaker::{Clock, FakeClock};
///
/// let fake = FakeClock::new();
/// let clock: Clock = fake.clock();
/// fake.advance(Duration::from_secs(3));
/// assert_eq!(clock.now(), Duration::from_secs(3));
/// ```
#[derive(Clone, Debug, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A fake clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current fake time.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }

    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Move the time forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(nanos))
            });
    }

    /// Set the time to `to` (it may move backwards; breakers treat that as no time passing).
    pub fn set(&self, to: Duration) {
        self.0.store(
            u64::try_from(to.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
    }

    /// A [`Clock`] reading this fake time.
    pub fn clock(&self) -> Clock {
        Clock::from(self.clone())
    }
}
