//! Injectable time: the system clock, or a [`FakeClock`] that tests advance by hand.
//!
//! The public shape is the one every Palisade crate shares: a [`Clock`] trait counting
//! microseconds since the Unix epoch, [`SystemClock`] and [`FakeClock`]. Inside, a breaker
//! reads its clock through [`Time`], which calls the two built-in clocks without a virtual
//! call (a time window reads the clock on every call, slow-call detection twice per call).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now" for breakers, registries and stores, so that no test sleeps.
///
/// Time is counted in whole microseconds since the Unix epoch. A breaker only ever uses
/// differences of two readings (windows, open waits, call durations), so its clock needs to
/// be monotonic rather than exact; time that goes backwards counts as time standing still.
/// Stores that share state through Redis decide on Redis server time unless given a clock
/// ([`RedisStore::with_clock`](crate::RedisStore::with_clock)).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}

/// The system clock, made fast: the wall clock is read once (at first use in the process)
/// and then advanced with the CPU's monotonic counter through [`quanta`] (the TSC where it is
/// reliable, else the OS monotonic clock), so a reading costs a few nanoseconds instead of a
/// `clock_gettime` call, and it never goes backwards. Steps of the wall clock after the first
/// read (NTP corrections) are not followed.
#[derive(Debug, Clone, Copy, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a unit value users write by name"
)]
pub struct SystemClock;

struct Anchor {
    wall_micros: u64,
    counter: quanta::Clock,
    start: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

/// The wall clock, read directly (slow path, used once).
fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Clock for SystemClock {
    #[inline]
    fn now_micros(&self) -> u64 {
        // The first call in a process calibrates the counter against the OS clock (quanta
        // does this once, globally); later calls are one atomic load and a counter read.
        let a = ANCHOR.get_or_init(|| {
            let counter = quanta::Clock::new();
            let start = counter.raw();
            Anchor {
                wall_micros: wall_micros(),
                counter,
                start,
            }
        });
        // quanta only uses the TSC when the CPU reports it invariant (synchronised across
        // cores); `delta_as_nanos` also reads a counter below the start as zero.
        let elapsed = a.counter.delta_as_nanos(a.start, a.counter.raw()) / 1_000;
        a.wall_micros.saturating_add(elapsed)
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test keeps one
/// clone and hands another to the breaker:
///
/// ```
/// use std::time::Duration;
/// use palisade_circuit_breaker::{Clock, FakeClock};
///
/// let clock = FakeClock::new();
/// let t0 = clock.now_micros();
/// clock.advance(Duration::from_secs(3));
/// assert_eq!(clock.now_micros() - t0, 3_000_000);
/// ```
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock at 2023-11-15T00:00:00Z (Unix time 1 700 006 400 s).
    pub fn new() -> Self {
        Self::at_micros(1_700_006_400 * 1_000_000)
    }

    /// A fake clock at `micros` microseconds since the Unix epoch.
    pub fn at_micros(micros: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(micros)),
        }
    }

    /// Move time forward (saturating at the end of time).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Set the time (it may go backwards; breakers treat that as no time passing).
    pub fn set_micros(&self, micros: u64) {
        self.now.store(micros, Ordering::Release);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    #[inline]
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

/// How a breaker or store reads its [`Clock`]: the built-in clocks directly, any other one
/// through a virtual call.
#[derive(Clone)]
enum Source {
    System,
    /// The system clock as a breaker reads it: the CPU counter and its raw reading at the
    /// breaker's start, in nanoseconds and without the wall-clock anchor (one counter read
    /// and one subtraction per reading, the hot path's whole cost).
    Counter(quanta::Clock, u64),
    Fake(FakeClock),
    Other(Arc<dyn Clock>),
}

/// A clock as the crate reads it, counting from an origin. A breaker's state word keeps
/// deadlines in 40 bits of milliseconds (34 years), so a breaker counts from the moment it
/// was built; a store counts from the Unix epoch, like Redis' `TIME`, so that every store
/// sharing keys on one clock agrees.
#[derive(Clone)]
pub(crate) struct Time {
    source: Source,
    origin_micros: u64,
}

impl Time {
    /// Readings since the Unix epoch (stores).
    pub(crate) fn absolute<C: Clock + 'static>(clock: C) -> Self {
        let any: &dyn Any = &clock;
        let source = if any.is::<SystemClock>() {
            Source::System
        } else if let Some(fake) = any.downcast_ref::<FakeClock>() {
            Source::Fake(fake.clone())
        } else {
            Source::Other(Arc::new(clock))
        };
        Self {
            source,
            origin_micros: 0,
        }
    }

    /// The system clock, read since the Unix epoch.
    pub(crate) fn system() -> Self {
        Self {
            source: Source::System,
            origin_micros: 0,
        }
    }

    /// The same clock, read since now (breakers).
    pub(crate) fn starting_now(&self) -> Self {
        match &self.source {
            Source::System | Source::Counter(..) => {
                let counter = quanta::Clock::new();
                let start = counter.raw();
                Self {
                    source: Source::Counter(counter, start),
                    origin_micros: 0,
                }
            }
            source => Self {
                source: source.clone(),
                origin_micros: self.origin_micros + self.nanos() / 1_000,
            },
        }
    }

    /// Nanoseconds since the origin (saturating; a clock that steps back reads as the origin).
    #[inline]
    fn nanos(&self) -> u64 {
        let micros = match &self.source {
            // quanta reads a counter below the start as zero.
            Source::Counter(counter, start) => {
                return counter.delta_as_nanos(*start, counter.raw());
            }
            Source::System => SystemClock.now_micros(),
            Source::Fake(fake) => fake.now_micros(),
            Source::Other(clock) => clock.now_micros(),
        };
        micros
            .saturating_sub(self.origin_micros)
            .saturating_mul(1_000)
    }

    /// The time elapsed since the origin.
    #[inline]
    pub(crate) fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos())
    }

    /// [`now`](Self::now) in whole milliseconds.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        self.nanos() / 1_000_000
    }
}

impl Default for Time {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::System | Source::Counter(..) => f.write_str("SystemClock"),
            Source::Fake(fake) => fake.fmt(f),
            Source::Other(clock) => clock.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_the_wall_clock_and_never_goes_back() {
        let clock = SystemClock;
        let mut last = clock.now_micros();
        assert!(last.abs_diff(wall_micros()) < 1_000_000);
        for _ in 0..10_000 {
            let now = clock.now_micros();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn a_breaker_counts_from_its_start_and_a_store_from_the_epoch() {
        let fake = FakeClock::new();
        let store = Time::absolute(fake.clone());
        let breaker = store.starting_now();
        fake.advance(Duration::from_millis(1500));
        assert_eq!(breaker.now_ms(), 1500);
        assert_eq!(store.now_ms(), 1_700_006_401_500);
        // Backwards is standing still, not a wrap-around.
        fake.set_micros(0);
        assert_eq!(breaker.now(), Duration::ZERO);
    }

    #[test]
    fn a_breaker_on_the_system_clock_counts_from_its_start() {
        let breaker = Time::system().starting_now();
        assert!(breaker.now_ms() < 60_000, "{:?}", breaker.now());
        let store = Time::system();
        assert!(store.now_ms().abs_diff(wall_micros() / 1_000) < 1_000);
    }

    #[test]
    fn other_clocks_are_read_through_the_trait() {
        let shared: Arc<dyn Clock> = Arc::new(FakeClock::at_micros(42_000));
        assert_eq!(Time::absolute(shared).now_ms(), 42);
    }
}
