//! [`Algorithm::Gcra`](crate::Algorithm::Gcra): the generic cell rate algorithm, the token
//! bucket kept as one "theoretical arrival time" (TAT) per key, as `governor` does. Its Lua
//! transcription is `src/lua/gcra.lua`.

use super::{MAX_MICROS, Machine, OneWord, Verdict, WordLayout};
use crate::decision::RawVerdict;
use crate::quota::{Algorithm, Params};

/// The theoretical arrival time of the next request; any `tat <= now` means "full".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gcra {
    pub(crate) tat: u64,
}

impl Machine for Gcra {
    const ALGORITHM: Algorithm = Algorithm::Gcra;

    fn fresh(_: &Params, _: u64) -> Self {
        Self { tat: 0 }
    }

    #[inline]
    fn check(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        let now = now.min(MAX_MICROS);
        let t = q.interval;
        let tau = q.burst * t;
        let tat0 = self.tat.max(now);
        let new_tat = tat0.saturating_add(cost.saturating_mul(t));
        if new_tat <= now + tau {
            Verdict {
                allowed: true,
                remaining: (now + tau - new_tat) / t,
                reset: new_tat - now,
                retry_after: None,
            }
        } else {
            Verdict {
                allowed: false,
                remaining: (now + tau).saturating_sub(tat0) / t,
                reset: tat0 - now,
                retry_after: (cost <= q.burst).then(|| new_tat - tau - now),
            }
        }
    }

    /// `check` and `take` in one pass: the arrival time is computed once, and the units
    /// left stay a slack in microseconds (divided by the interval only when read).
    #[inline]
    fn decide(&mut self, q: &Params, now: u64, cost: u64) -> RawVerdict {
        let now = now.min(MAX_MICROS);
        let t = q.interval;
        let tau = q.burst * t;
        let tat0 = self.tat.max(now);
        let new_tat = tat0.saturating_add(cost.saturating_mul(t));
        if new_tat <= now + tau {
            self.tat = new_tat;
            RawVerdict {
                left: now + tau - new_tat,
                unit: t,
                reset: new_tat - now,
                retry: RawVerdict::NEVER,
                allowed: true,
            }
        } else {
            RawVerdict {
                left: (now + tau).saturating_sub(tat0),
                unit: t,
                reset: tat0 - now,
                retry: if cost <= q.burst {
                    new_tat - tau - now
                } else {
                    RawVerdict::NEVER
                },
                allowed: false,
            }
        }
    }

    #[inline(always)]
    fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        let now = now.min(MAX_MICROS);
        let t = q.interval;
        let new_tat = self.tat.max(now).saturating_add(cost.saturating_mul(t));
        let admitted = new_tat <= now + q.burst * t;
        if admitted {
            self.tat = new_tat;
        }
        admitted
    }

    fn refund(&mut self, q: &Params, now: u64, cost: u64) {
        let now = now.min(MAX_MICROS);
        self.tat = self
            .tat
            .saturating_sub(cost.saturating_mul(q.interval))
            .max(now);
    }

    fn expiry(&self, q: &Params, now: u64) -> (u64, u64) {
        let now = now.min(MAX_MICROS);
        // Any `tat <= now` behaves as the fresh `tat = 0`.
        (self.tat, self.tat.saturating_sub(now).div_ceil(q.interval))
    }
}

impl OneWord for Gcra {
    fn layout(_: &Params) -> WordLayout {
        WordLayout::default()
    }

    /// The arrival time is the word (it never exceeds 2^53 + 2^50 µs).
    #[inline(always)]
    fn pack(&self, _: &WordLayout) -> Option<u64> {
        Some(self.tat)
    }

    #[inline(always)]
    fn unpack(word: u64, _: &WordLayout) -> Self {
        Self { tat: word }
    }
}
