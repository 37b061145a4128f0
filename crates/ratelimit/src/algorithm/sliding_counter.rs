//! [`Algorithm::SlidingWindowCounter`](crate::Algorithm::SlidingWindowCounter): the current
//! window's count plus the previous window's, weighted by how much of it still overlaps the
//! sliding window. Its Lua transcription is `src/lua/sliding_counter.lua` (the weighting is
//! the same IEEE-754 double arithmetic in both).

use super::{MAX_MICROS, Machine, OneWord, Verdict, WordLayout, fits_in, window_bits};
use crate::quota::{Algorithm, Params};

/// The current window and the two latest counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlidingCounter {
    /// Window index of `curr`.
    pub(crate) window: u64,
    /// Units admitted in window `window - 1`.
    pub(crate) prev: u64,
    /// Units admitted in window `window`.
    pub(crate) curr: u64,
}

/// `(window, prev, curr, now)` moved to `now`'s window, with time that went backwards held
/// at the stored window's start. `now / p` is compared through products, so that only a
/// request two or more windows later divides (a 64-bit division costs more than the rest of
/// a decision); `now < window·p` is `now / p < window` for whole numbers, and saturation
/// only makes a bound larger than any time.
#[inline]
fn at(s: &SlidingCounter, now: u64, p: u64) -> (u64, u64, u64, u64) {
    let (window, prev, curr) = (s.window, s.prev, s.curr);
    let start = window.saturating_mul(p);
    if now < start {
        return (window, prev, curr, start);
    }
    let next = start.saturating_add(p);
    if now < next {
        (window, prev, curr, now)
    } else if now < next.saturating_add(p) {
        (window + 1, curr, 0, now)
    } else {
        (now / p, 0, 0, now)
    }
}

/// The previous window's weight. Lua: `prev * (p - elapsed) / p`, left to right in doubles.
#[inline]
fn weighted(prev: u64, p: u64, elapsed: u64) -> f64 {
    (prev as f64 * (p - elapsed) as f64) / p as f64
}

impl Machine for SlidingCounter {
    const ALGORITHM: Algorithm = Algorithm::SlidingWindowCounter;

    fn fresh(q: &Params, now: u64) -> Self {
        Self {
            window: now.min(MAX_MICROS) / q.period,
            prev: 0,
            curr: 0,
        }
    }

    fn check(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        let now = now.min(MAX_MICROS);
        let (limit, p) = (q.limit, q.period);
        let (w, prev, curr, now) = at(self, now, p);
        let elapsed = now.saturating_sub(w.saturating_mul(p));
        let weight = weighted(prev, p, elapsed);
        let allowed = weight + curr.saturating_add(cost) as f64 <= limit as f64;
        let used = if allowed { curr + cost } else { curr };
        let remaining = (limit as f64 - weight - used as f64).floor().max(0.0) as u64;
        let reset = if used > 0 {
            w.saturating_add(2).saturating_mul(p).saturating_sub(now)
        } else if prev > 0 {
            w.saturating_add(1).saturating_mul(p).saturating_sub(now)
        } else {
            0
        };
        let retry_after = if allowed || cost > limit {
            None
        } else if curr.saturating_add(cost) <= limit {
            // Wait until the previous window's weight has dropped enough.
            let x = (p - elapsed) as f64 - ((limit - curr - cost) as f64 * p as f64) / prev as f64;
            Some(x.ceil().max(0.0) as u64 + 1)
        } else {
            // Wait for the next window, then until this window's weight drops enough.
            let y = p as f64 - ((limit - cost) as f64 * p as f64) / curr as f64;
            Some((p - elapsed) + y.ceil().max(0.0) as u64 + 1)
        };
        Verdict {
            allowed,
            remaining,
            reset,
            retry_after,
        }
    }

    #[inline(always)]
    fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        let now = now.min(MAX_MICROS);
        let p = q.period;
        let (w, prev, curr, now) = at(self, now, p);
        let admitted = weighted(prev, p, now.saturating_sub(w.saturating_mul(p)))
            + curr.saturating_add(cost) as f64
            <= q.limit as f64;
        if admitted {
            *self = Self {
                window: w,
                prev,
                curr: curr.saturating_add(cost),
            };
        }
        admitted
    }

    fn refund(&mut self, q: &Params, now: u64, cost: u64) {
        let now = now.min(MAX_MICROS);
        let (window, prev, curr, _) = at(self, now, q.period);
        *self = Self {
            window,
            prev,
            curr: curr.saturating_sub(cost),
        };
    }

    fn expiry(&self, q: &Params, now: u64) -> (u64, u64) {
        let now = now.min(MAX_MICROS);
        // `curr` still weighs during the next window; `prev` only during this one.
        let windows = if self.curr > 0 { 2 } else { 1 };
        let (_, prev_now, curr_now, _) = at(self, now, q.period);
        (
            self.window.saturating_add(windows).saturating_mul(q.period),
            prev_now.saturating_add(curr_now),
        )
    }
}

impl OneWord for SlidingCounter {
    /// `(window << 2·low) | (prev << low) | curr`.
    fn layout(q: &Params) -> WordLayout {
        WordLayout {
            low: (64 - window_bits(q)) / 2,
            capacity: 0,
        }
    }

    #[inline(always)]
    fn pack(&self, layout: &WordLayout) -> Option<u64> {
        let low = layout.low;
        (fits_in(self.prev, low) && fits_in(self.curr, low) && fits_in(self.window, 64 - 2 * low))
            .then(|| (self.window << (2 * low)) | (self.prev << low) | self.curr)
    }

    #[inline(always)]
    fn unpack(word: u64, layout: &WordLayout) -> Self {
        let low = layout.low;
        let mask = (1 << low) - 1;
        Self {
            window: word >> (2 * low),
            prev: (word >> low) & mask,
            curr: word & mask,
        }
    }
}
