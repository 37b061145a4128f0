//! Time sources: the system clock, and a fake clock that tests advance by hand.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now" for the in-memory backend (the Redis backend asks Redis with `TIME`).
///
/// Time is counted in whole microseconds since the Unix epoch, the unit every algorithm of
/// this crate works in (it is also what Redis' `TIME` gives, so both backends align fixed
/// windows on the same boundaries).
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
/// and then advanced with the CPU's monotonic counter through [`quanta`], so reading it costs
/// a few nanoseconds instead of a `clock_gettime` call, and it never goes backwards. Steps of
/// the wall clock after the first read (NTP corrections) are not followed; fixed windows stay
/// aligned to Unix time as read at start. (The Redis backend uses Redis' `TIME` instead.)
///
/// Every algorithm also treats time that goes backwards as time that stands still, so no
/// clock can admit extra requests by stepping back.
#[derive(Debug, Clone, Copy, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a unit value users write as `SystemClock`"
)]
pub struct SystemClock;

struct Anchor {
    wall_micros: u64,
    clock: quanta::Clock,
    start: u64,
}

static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();

/// The wall clock, read directly (slow path, used once).
fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Clock for SystemClock {
    #[inline]
    fn now_micros(&self) -> u64 {
        let a = ANCHOR.get_or_init(|| {
            let clock = quanta::Clock::new();
            let start = clock.raw();
            Anchor {
                wall_micros: wall_micros(),
                clock,
                start,
            }
        });
        let elapsed = a.clock.delta_as_nanos(a.start, a.clock.raw()) / 1_000;
        a.wall_micros.saturating_add(elapsed)
    }
}

/// A store's clock: the system clock called directly (it is on every decision's path, and a
/// call through `dyn Clock` cost it an indirect call), or any other [`Clock`].
#[derive(Debug, Clone)]
pub(crate) enum TimeSource {
    System,
    Other(Arc<dyn Clock>),
}

impl TimeSource {
    pub(crate) fn of(clock: impl Clock + 'static) -> Self {
        Self::Other(Arc::new(clock))
    }

    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Self::System => SystemClock.now_micros(),
            Self::Other(clock) => clock.now_micros(),
        }
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test keeps one
/// clone and hands another to the store.
///
/// ```
/// use palisade_ratelimit::{Clock, FakeClock};
/// use std::time::Duration;
///
/// let clock = FakeClock::new();
/// let t0 = clock.now_micros();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now_micros() - t0, 1_500_000);
/// ```
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock at 2023-11-15T00:00:00Z (Unix time 1 700 006 400 s), a whole multiple of
    /// every common window (second, minute, hour, day), so fixed windows start there.
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
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Set the time (it may go backwards, to test clock steps).
    pub fn set_micros(&self, micros: u64) {
        self.now.store(micros, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_the_wall_clock_and_never_goes_back() {
        let clock = SystemClock;
        let mut last = clock.now_micros();
        assert!(
            last.abs_diff(wall_micros()) < 1_000_000,
            "{last} vs {}",
            wall_micros()
        );
        for _ in 0..10_000 {
            let now = clock.now_micros();
            assert!(now >= last);
            last = now;
        }
        std::thread::sleep(Duration::from_millis(20));
        let later = clock.now_micros();
        assert!(
            later - last >= 19_000 && later - last < 1_000_000,
            "{}",
            later - last
        );
    }
}
