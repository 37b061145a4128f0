//! [`Algorithm::FixedWindow`](crate::Algorithm::FixedWindow): a count per aligned window
//! (`floor(now / period)`). Its Lua transcription is `src/lua/fixed_window.lua`.

use super::{MAX_MICROS, Machine, OneWord, Verdict, WordLayout, fits_in, window_bits};
use crate::quota::{Algorithm, Params};

/// The window index and the units admitted in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedWindow {
    pub(crate) window: u64,
    pub(crate) count: u64,
}

impl Machine for FixedWindow {
    const ALGORITHM: Algorithm = Algorithm::FixedWindow;

    fn fresh(q: &Params, now: u64) -> Self {
        Self {
            window: now.min(MAX_MICROS) / q.period,
            count: 0,
        }
    }

    fn check(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        let now = now.min(MAX_MICROS);
        let (limit, p) = (q.limit, q.period);
        let w = now / p;
        let (w, count) = if w <= self.window {
            (self.window, self.count)
        } else {
            (w, 0)
        };
        let reset = w.saturating_add(1).saturating_mul(p).saturating_sub(now);
        if count.saturating_add(cost) <= limit {
            Verdict {
                allowed: true,
                remaining: limit - count - cost,
                reset,
                retry_after: None,
            }
        } else {
            Verdict {
                allowed: false,
                remaining: limit.saturating_sub(count),
                reset,
                retry_after: (cost <= limit).then_some(reset),
            }
        }
    }

    #[inline(always)]
    fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        let now = now.min(MAX_MICROS);
        let p = q.period;
        // `now / p <= window` without dividing: only a new window divides.
        let same = now < self.window.saturating_add(1).saturating_mul(p);
        let used = if same { self.count } else { 0 };
        let admitted = used.saturating_add(cost) <= q.limit;
        if admitted {
            if !same {
                self.window = now / p;
            }
            self.count = used.saturating_add(cost);
        }
        admitted
    }

    fn refund(&mut self, q: &Params, now: u64, cost: u64) {
        let now = now.min(MAX_MICROS);
        if now / q.period <= self.window {
            self.count = self.count.saturating_sub(cost);
        }
    }

    fn expiry(&self, q: &Params, now: u64) -> (u64, u64) {
        let now = now.min(MAX_MICROS);
        let end = self.window.saturating_add(1).saturating_mul(q.period);
        (end, if now < end { self.count } else { 0 })
    }
}

impl OneWord for FixedWindow {
    /// `(window << low) | count`, the window index as wide as the largest time over the
    /// period needs.
    fn layout(q: &Params) -> WordLayout {
        WordLayout {
            low: 64 - window_bits(q),
            capacity: 0,
        }
    }

    #[inline(always)]
    fn pack(&self, layout: &WordLayout) -> Option<u64> {
        let low = layout.low;
        (fits_in(self.count, low) && fits_in(self.window, 64 - low))
            .then(|| (self.window << low) | self.count)
    }

    #[inline(always)]
    fn unpack(word: u64, layout: &WordLayout) -> Self {
        let low = layout.low;
        Self {
            window: word >> low,
            count: word & ((1 << low) - 1),
        }
    }
}
