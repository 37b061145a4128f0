//! [`Algorithm::TokenBucket`](crate::Algorithm::TokenBucket): whole tokens refilled at one per
//! emission interval up to `burst`, and the time they were counted at. Its Lua transcription
//! is `src/lua/token_bucket.lua`.

use super::{MAX_MICROS, Machine, OneWord, Verdict, WordLayout, fits_in};
use crate::quota::{Algorithm, Params};

/// Tokens in the bucket and the time up to which refills have been counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    pub(crate) tokens: u64,
    pub(crate) last: u64,
}

/// Missing tokens a one-word bucket holds (the time takes the other 54 bits; times are
/// capped at 2^53 µs).
const DEFICIT_BITS: u32 = 10;

/// The bucket refilled up to `now` (time that went backwards refills nothing).
#[inline]
fn refill(tokens: u64, last: u64, now: u64, burst: u64, t: u64) -> (u64, u64) {
    if now <= last {
        return (tokens.min(burst), last);
    }
    let add = (now - last) / t;
    if tokens.saturating_add(add) >= burst {
        (burst, now)
    } else {
        (tokens + add, last + add * t)
    }
}

impl Machine for TokenBucket {
    const ALGORITHM: Algorithm = Algorithm::TokenBucket;

    fn fresh(q: &Params, now: u64) -> Self {
        Self {
            tokens: q.burst,
            last: now.min(MAX_MICROS),
        }
    }

    fn check(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        let now = now.min(MAX_MICROS);
        let (burst, t) = (q.burst, q.interval);
        let (tok, last) = refill(self.tokens, self.last, now, burst, t);
        if cost <= tok {
            let left = tok - cost;
            Verdict {
                allowed: true,
                remaining: left,
                reset: (last + (burst - left) * t).saturating_sub(now),
                retry_after: None,
            }
        } else {
            Verdict {
                allowed: false,
                remaining: tok,
                reset: (last + (burst - tok) * t).saturating_sub(now),
                retry_after: (cost <= burst).then(|| (last + (cost - tok) * t).saturating_sub(now)),
            }
        }
    }

    #[inline(always)]
    fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        let now = now.min(MAX_MICROS);
        let (tok, l) = refill(self.tokens, self.last, now, q.burst, q.interval);
        let admitted = cost <= tok;
        if admitted {
            self.tokens = tok - cost;
            self.last = l;
        }
        admitted
    }

    fn refund(&mut self, q: &Params, now: u64, cost: u64) {
        let now = now.min(MAX_MICROS);
        let (tok, l) = refill(self.tokens, self.last, now, q.burst, q.interval);
        self.tokens = tok.saturating_add(cost).min(q.burst);
        self.last = if self.tokens == q.burst {
            now.max(l)
        } else {
            l
        };
    }

    fn expiry(&self, q: &Params, now: u64) -> (u64, u64) {
        let now = now.min(MAX_MICROS);
        // Full once the refill reaches `burst`; a full bucket counted at an earlier `last`
        // refills to the same `(burst, now)` a fresh one holds.
        let missing = q.burst.saturating_sub(self.tokens);
        let (now_tokens, _) = refill(self.tokens, self.last, now, q.burst, q.interval);
        (
            self.last.saturating_add(missing.saturating_mul(q.interval)),
            q.burst.saturating_sub(now_tokens),
        )
    }
}

impl OneWord for TokenBucket {
    /// `(last << 10) | missing tokens`, missing counted from the capacity of the layout.
    fn layout(q: &Params) -> WordLayout {
        WordLayout {
            low: DEFICIT_BITS,
            capacity: q.burst,
        }
    }

    #[inline(always)]
    fn pack(&self, layout: &WordLayout) -> Option<u64> {
        let low = layout.low;
        let missing = layout.capacity.checked_sub(self.tokens)?;
        (fits_in(missing, low) && fits_in(self.last, 64 - low))
            .then(|| (self.last << low) | missing)
    }

    #[inline(always)]
    fn unpack(word: u64, layout: &WordLayout) -> Self {
        let low = layout.low;
        let missing = word & ((1 << low) - 1);
        Self {
            tokens: layout.capacity.saturating_sub(missing),
            last: word >> low,
        }
    }
}
