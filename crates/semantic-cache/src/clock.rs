//! Time sources: the system clock, and a fake clock that tests and benches advance by hand.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now" for the cache: entry expiry is checked against it on every read, so a
/// [`FakeClock`] makes TTL tests instant.
///
/// Time is counted in whole microseconds since the Unix epoch, as in every Palisade crate
/// (entries keep millisecond deadlines, so the cache reads it in milliseconds).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}

/// Milliseconds since the Unix epoch, the unit of entry deadlines.
pub(crate) fn now_ms(clock: &dyn Clock) -> u64 {
    clock.now_micros() / 1_000
}

/// The operating system's wall clock (`SystemTime::now`).
#[derive(Clone, Copy, Debug, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a unit value users write as `SystemClock`"
)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test keeps one
/// clone and hands another to the cache.
///
/// ```
/// use palisade_semantic_cache::{Clock, FakeClock};
/// use std::time::Duration;
///
/// let clock = FakeClock::new();
/// let t0 = clock.now_micros();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now_micros() - t0, 90_000_000);
/// ```
#[derive(Clone, Debug)]
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
