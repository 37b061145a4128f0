//! Lock-free sliding windows with an O(1) snapshot.
//!
//! Both windows keep running totals next to their slots or buckets, so a snapshot is a
//! handful of relaxed loads. Recording never takes a lock: the count window claims a slot
//! with one `fetch_add` and swaps the outcome in; the time window adds to the bucket of the
//! current second, and whichever caller first sees a new second rolls the expired buckets out
//! (at most one pass over the buckets per second of clock time).
//!
//! Both windows tell the recorder whether a failure or slow-call rate may have risen since
//! the trip rule last looked, so that the common case (a success into a healthy window) skips
//! the rule. The count window knows it from the slot it overwrote. The time window knows it
//! from the mark itself, from its call total being at most the rule's minimum, and from a
//! `rolled` flag raised whenever expired buckets that held calls are emptied (by a recorder
//! or by a snapshot) and taken down by the next success that looks. Why a success needs no
//! look otherwise: it adds one call and neither a failure nor a slow call, so if its window
//! passes the rule, the window before it (one call fewer, at or above the minimum, same
//! failures and slow calls) passed it too, and that window was already looked at (or was
//! itself such a success), since nothing but expiry removes calls within one closed period.
//!
//! Memory ordering: every counter is `Relaxed`. A window is a statistic, not a
//! synchronisation point: a snapshot taken while other threads record may miss their
//! in-flight calls, which is the same as those calls finishing a moment later. Totals are
//! kept with wrapping add/sub pairs that always balance, and read back clamped, so a
//! transiently "negative" total (a subtraction seen before its matching addition) reads as 0.
//! The time window's `rolled` flag is `Relaxed` for the same reason: it only asks the next
//! success to evaluate the trip rule, and a success that misses it under concurrency is the
//! same as one that finished a moment earlier (every failure evaluates the rule anyway).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

/// The counts in a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Recorded calls (ignored outcomes are not recorded).
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Of those, slow calls (successful or not).
    pub slow: u64,
}

impl Snapshot {
    /// Counts given by hand (to ask [`Config::should_trip`](crate::Config::should_trip) what
    /// a window would decide).
    pub fn new(calls: u64, failures: u64, slow: u64) -> Self {
        Self {
            calls,
            failures,
            slow,
        }
    }

    /// Failure percentage, 0 when the window is empty.
    pub fn failure_rate(&self) -> f64 {
        percent(self.failures, self.calls)
    }

    /// Slow-call percentage, 0 when the window is empty.
    pub fn slow_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One recorded outcome, as bits: bit 0 recorded, bit 1 failure, bit 2 slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark(u8);

impl Mark {
    pub(crate) const fn new(failure: bool, slow: bool) -> Self {
        Self(1 | (failure as u8) << 1 | (slow as u8) << 2)
    }
    const fn failure(self) -> u64 {
        ((self.0 >> 1) & 1) as u64
    }
    const fn slow(self) -> u64 {
        ((self.0 >> 2) & 1) as u64
    }
}

/// Read a wrapping total as a count in `0..=max`.
fn clamp(raw: u64, max: u64) -> u64 {
    if (raw as i64) < 0 { 0 } else { raw.min(max) }
}

/// The last N calls.
///
/// The slot of call `i` is `i mod N`, computed with a precomputed multiplier (Lemire's
/// "fastmod") instead of a division. The 32-bit call counter wraps after 2^32 calls; the
/// wrap only changes which slot the next few calls land in, never the totals, which always
/// equal the sum of the slots.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    len: u32,
    magic: u64,
    /// The write-hot counter sits on a cache line of its own, away from the read-mostly
    /// fields every caller loads.
    head: Padded<AtomicU32>,
    full: AtomicBool,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// Aligns its content to 128 bytes (two cache lines, against adjacent-line prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let len = size.max(1);
        Self {
            slots: (0..len).map(|_| AtomicU8::new(0)).collect(),
            len,
            magic: (u64::MAX / u64::from(len)).wrapping_add(1),
            head: Padded(AtomicU32::new(0)),
            full: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    #[inline]
    fn slot(&self, i: u32) -> usize {
        let low = self.magic.wrapping_mul(u64::from(i));
        ((u128::from(low) * u128::from(self.len)) >> 64) as usize
    }

    /// Record one mark; whether a rate may have risen (the window grew, or a failure or slow
    /// mark replaced a better one), i.e. whether the trip rule needs to look.
    #[inline]
    pub(crate) fn record(&self, mark: Mark) -> bool {
        let i = self.head.fetch_add(1, Relaxed);
        let old = Mark(self.slots[self.slot(i)].swap(mark.0, Relaxed));
        if old != mark {
            adjust(&self.failures, old.failure(), mark.failure());
            adjust(&self.slow, old.slow(), mark.slow());
        }
        let was_full = self.full.load(Relaxed);
        if !was_full && i.wrapping_add(1) >= self.len {
            self.full.store(true, Relaxed);
        }
        !was_full || mark.failure() > old.failure() || mark.slow() > old.slow()
    }

    #[inline]
    pub(crate) fn snapshot(&self) -> Snapshot {
        let calls = if self.full.load(Relaxed) {
            u64::from(self.len)
        } else {
            u64::from(self.head.load(Relaxed).min(self.len))
        };
        Snapshot {
            calls,
            failures: clamp(self.failures.load(Relaxed), calls),
            slow: clamp(self.slow.load(Relaxed), calls),
        }
    }

    pub(crate) fn reset(&self) {
        self.head.store(0, Relaxed);
        self.full.store(false, Relaxed);
        for slot in &*self.slots {
            let old = Mark(slot.swap(0, Relaxed));
            adjust(&self.failures, old.failure(), 0);
            adjust(&self.slow, old.slow(), 0);
        }
    }
}

#[inline]
fn adjust(total: &AtomicU64, old: u64, new: u64) {
    if new > old {
        total.fetch_add(new - old, Relaxed);
    } else if old > new {
        total.fetch_sub(old - new, Relaxed);
    }
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// The calls of the last N seconds, one bucket per second.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    magic: u64,
    /// The newest second that has been rolled in.
    head: AtomicU64,
    /// Raised when expired buckets that held calls were emptied: a rate may have risen.
    rolled: AtomicBool,
    calls: Padded<AtomicU64>,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> Self {
        Self {
            buckets: (0..seconds.max(1)).map(|_| Bucket::default()).collect(),
            magic: (u64::MAX / u64::from(seconds.max(1))).wrapping_add(1),
            head: AtomicU64::new(0),
            rolled: AtomicBool::new(false),
            calls: Padded(AtomicU64::new(0)),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// The bucket of `second` (`second mod len` without a division; seconds fit in 32 bits
    /// for 136 years of uptime, and past that the bucket order shifts once while the totals
    /// stay exact).
    #[inline]
    fn bucket(&self, second: u64) -> &Bucket {
        let low = self.magic.wrapping_mul(u64::from(second as u32));
        &self.buckets[((u128::from(low) * u128::from(self.len())) >> 64) as usize]
    }

    /// Move the window's head to `second`, emptying the buckets of the seconds that expired.
    /// One caller wins the head's compare-and-swap and does the emptying; the others go on.
    #[inline]
    fn advance(&self, second: u64) {
        let mut head = self.head.load(Relaxed);
        while second > head {
            match self
                .head
                .compare_exchange_weak(head, second, Relaxed, Relaxed)
            {
                Ok(_) => {
                    let first = (head + 1).max(second.saturating_sub(self.len() - 1));
                    let mut removed = 0;
                    for s in first..=second {
                        removed |= self.empty(self.bucket(s));
                    }
                    if removed != 0 {
                        self.rolled.store(true, Relaxed);
                    }
                    return;
                }
                Err(actual) => head = actual,
            }
        }
    }

    /// Empty one bucket; the calls it held.
    fn empty(&self, b: &Bucket) -> u64 {
        let calls = b.calls.swap(0, Relaxed);
        self.calls.fetch_sub(calls, Relaxed);
        self.failures
            .fetch_sub(b.failures.swap(0, Relaxed), Relaxed);
        self.slow.fetch_sub(b.slow.swap(0, Relaxed), Relaxed);
        calls
    }

    /// Record one mark at `second`; whether the trip rule needs to look (see the module
    /// documentation), given the rule's `minimum` calls.
    #[inline]
    pub(crate) fn record(&self, second: u64, mark: Mark, minimum: u32) -> bool {
        self.advance(second);
        if second + self.len() <= self.head.load(Relaxed) {
            // A straggler whose second already left the window: nothing recorded.
            return self.take_rolled();
        }
        let b = self.bucket(second);
        b.calls.fetch_add(1, Relaxed);
        let calls = self.calls.fetch_add(1, Relaxed).wrapping_add(1);
        if mark.failure() == 1 {
            b.failures.fetch_add(1, Relaxed);
            self.failures.fetch_add(1, Relaxed);
        }
        if mark.slow() == 1 {
            b.slow.fetch_add(1, Relaxed);
            self.slow.fetch_add(1, Relaxed);
        }
        // Every operand is evaluated: a look for any reason also takes the flag down.
        ((mark.failure() | mark.slow()) != 0)
            | (calls <= u64::from(minimum.max(1)))
            | self.take_rolled()
    }

    /// Whether `rolled` was raised, lowering it (a load first: it is rarely up, and a load
    /// keeps the cache line shared between recorders).
    #[inline]
    fn take_rolled(&self) -> bool {
        self.rolled.load(Relaxed) && self.rolled.swap(false, Relaxed)
    }

    #[inline]
    pub(crate) fn snapshot(&self, second: u64) -> Snapshot {
        self.advance(second);
        let calls = clamp(self.calls.load(Relaxed), u64::MAX >> 1);
        Snapshot {
            calls,
            failures: clamp(self.failures.load(Relaxed), calls),
            slow: clamp(self.slow.load(Relaxed), calls),
        }
    }

    pub(crate) fn reset(&self) {
        for b in &*self.buckets {
            self.empty(b);
        }
        // The window starts over: the next look comes from reaching the minimum again.
        self.rolled.store(false, Relaxed);
    }
}

/// Either window, chosen by configuration.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: crate::SlidingWindow) -> Self {
        match config {
            crate::SlidingWindow::Count { size } => Self::Count(CountWindow::new(size)),
            crate::SlidingWindow::Time { seconds } => Self::Time(TimeWindow::new(seconds)),
        }
    }

    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Self::Time(_))
    }

    /// Record one mark; whether the trip rule (which needs `minimum` calls) has to look at
    /// the window now.
    #[inline]
    pub(crate) fn record(&self, now_ms: u64, mark: Mark, minimum: u32) -> bool {
        match self {
            Self::Count(w) => w.record(mark),
            Self::Time(w) => w.record(now_ms / 1000, mark, minimum),
        }
    }

    #[inline]
    pub(crate) fn snapshot(&self, now_ms: u64) -> Snapshot {
        match self {
            Self::Count(w) => w.snapshot(),
            Self::Time(w) => w.snapshot(now_ms / 1000),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    proptest! {
        /// The count window equals a plain deque of the last N marks.
        #[test]
        fn count_window_matches_deque(size in 1u32..20, marks in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
            let w = CountWindow::new(size);
            let mut model = VecDeque::new();
            for (f, s) in marks {
                let _ = w.record(Mark::new(f, s));
                model.push_back((f, s));
                if model.len() > size as usize { model.pop_front(); }
                let snap = w.snapshot();
                prop_assert_eq!(snap.calls, model.len() as u64);
                prop_assert_eq!(snap.failures, model.iter().filter(|m| m.0).count() as u64);
                prop_assert_eq!(snap.slow, model.iter().filter(|m| m.1).count() as u64);
            }
        }

        /// The time window equals a list of (second, mark) filtered to the last N seconds.
        #[test]
        fn time_window_matches_list(seconds in 1u32..8, steps in proptest::collection::vec((0u64..3, any::<bool>(), any::<bool>()), 0..200)) {
            let w = TimeWindow::new(seconds);
            let mut now = 0u64;
            let mut model: Vec<(u64, bool, bool)> = Vec::new();
            for (dt, f, s) in steps {
                now += dt;
                let _ = w.record(now, Mark::new(f, s), 1);
                model.push((now, f, s));
                let live: Vec<_> = model.iter().filter(|m| m.0 + u64::from(seconds) > now).collect();
                let snap = w.snapshot(now);
                prop_assert_eq!(snap.calls, live.len() as u64);
                prop_assert_eq!(snap.failures, live.iter().filter(|m| m.1).count() as u64);
                prop_assert_eq!(snap.slow, live.iter().filter(|m| m.2).count() as u64);
            }
        }
    }

    proptest! {
        /// The time window may say "no need to look" only when the trip rule would not fire:
        /// a rule evaluated only when `record` asks must trip at exactly the same steps as one
        /// evaluated after every record, with snapshots (which roll buckets out too) between.
        #[test]
        fn time_window_skips_only_calls_that_cannot_trip(
            seconds in 1u32..5,
            minimum in 0u32..6,
            threshold in prop_oneof![Just(0.0), Just(20.0), Just(50.0), Just(100.0)],
            slow_threshold in prop_oneof![Just(0.0), Just(50.0), Just(100.0)],
            steps in proptest::collection::vec((0u64..3, any::<bool>(), any::<bool>(), any::<bool>()), 0..200),
        ) {
            let config = crate::Config {
                minimum_calls: minimum,
                failure_rate_threshold: threshold,
                slow_call: Some(crate::SlowCallRule {
                    duration: std::time::Duration::from_secs(1),
                    rate_threshold: slow_threshold,
                }),
                ..crate::Config::default()
            };
            let w = TimeWindow::new(seconds);
            let mut now = 0u64;
            for (step, (dt, f, s, peek)) in steps.into_iter().enumerate() {
                now += dt;
                if peek {
                    let _ = w.snapshot(now);
                }
                let look = w.record(now, Mark::new(f, s), minimum);
                let fires = config.should_trip(w.snapshot(now), 0).is_some();
                prop_assert!(look || !fires, "skipped a tripping call at step {}", step);
                if fires {
                    // A trip ends the closed period; closing again starts an empty window.
                    w.reset();
                }
            }
        }
    }

    #[test]
    fn time_window_forgets_after_a_long_gap() {
        let w = TimeWindow::new(3);
        let _ = w.record(1, Mark::new(true, false), 1);
        assert_eq!(w.snapshot(1).calls, 1);
        assert_eq!(w.snapshot(1000).calls, 0);
    }

    #[test]
    fn concurrent_records_balance() {
        let w = std::sync::Arc::new(CountWindow::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let _ = w.record(Mark::new((i + t) % 3 == 0, false));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Every slot's mark is accounted exactly once in the totals.
        let failures = w
            .slots
            .iter()
            .filter(|s| Mark(s.load(Relaxed)).failure() == 1)
            .count() as u64;
        assert_eq!(w.snapshot().failures, failures);
        assert_eq!(w.snapshot().calls, 64);
    }
}

#[cfg(test)]
mod fastmod {
    use super::CountWindow;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn slot_is_the_remainder(len in 1u32..=(1 << 20), i in any::<u32>()) {
            let w = CountWindow { len, magic: (u64::MAX / u64::from(len)).wrapping_add(1), ..CountWindow::new(1) };
            prop_assert_eq!(w.slot(i), (i % len) as usize);
        }
    }
}
