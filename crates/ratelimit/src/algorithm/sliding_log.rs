//! [`Algorithm::SlidingWindowLog`](crate::Algorithm::SlidingWindowLog): a log of admitted
//! requests over the last period; exact. Its Lua transcription is `src/lua/sliding_log.lua`,
//! where the log is a sorted set whose members carry running totals.

use std::collections::VecDeque;

use super::{MAX_MICROS, Machine, Verdict};
use crate::quota::{Algorithm, Params};

/// Admitted requests `(time, cost)`, oldest first, with their total. At most `limit`
/// entries: requests at the same microsecond (or at an earlier one, when the clock stepped
/// back) are merged into the newest entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SlidingLog {
    pub(crate) entries: VecDeque<(u64, u64)>,
    pub(crate) sum: u64,
}

/// The units still in the window at `now`, and how many entries at the front have left it.
#[inline]
fn live(log: &SlidingLog, period: u64, now: u64) -> (u64, usize) {
    // Usually the oldest entry is still in the window: one comparison, no iterator.
    match log.entries.front() {
        Some(&(ts, _)) if ts.saturating_add(period) <= now => {}
        _ => return (log.sum, 0),
    }
    let mut live = log.sum;
    let mut expired = 0;
    for &(ts, c) in &log.entries {
        if ts.saturating_add(period) > now {
            break;
        }
        live -= c;
        expired += 1;
    }
    (live, expired)
}

/// Time until the newest entry leaves the window (0 for an empty log).
fn newest_reset(log: &SlidingLog, p: u64, now: u64) -> u64 {
    log.entries
        .back()
        .map_or(0, |(ts, _)| (ts + p).saturating_sub(now))
}

impl Machine for SlidingLog {
    const ALGORITHM: Algorithm = Algorithm::SlidingWindowLog;

    fn fresh(_: &Params, _: u64) -> Self {
        Self::default()
    }

    fn check(&self, q: &Params, now: u64, cost: u64) -> Verdict {
        let now = now.min(MAX_MICROS);
        let (limit, p) = (q.limit, q.period);
        let (live, first_live) = live(self, p, now);
        if live.saturating_add(cost) <= limit {
            return Verdict {
                allowed: true,
                remaining: limit - live - cost,
                reset: if cost > 0 {
                    p
                } else {
                    newest_reset(self, p, now)
                },
                retry_after: None,
            };
        }
        // The first live entry by whose expiry enough has left the window.
        let mut retry_after = None;
        if cost <= limit {
            let mut freed = 0;
            for (ts, c) in self.entries.iter().skip(first_live) {
                freed += c;
                if live - freed + cost <= limit {
                    retry_after = Some((ts + p).saturating_sub(now));
                    break;
                }
            }
        }
        Verdict {
            allowed: false,
            remaining: limit.saturating_sub(live),
            reset: newest_reset(self, p, now),
            retry_after,
        }
    }

    /// Without copying the log (the default would clone it).
    fn admits(&self, q: &Params, now: u64, cost: u64) -> bool {
        live(self, q.period, now.min(MAX_MICROS))
            .0
            .saturating_add(cost)
            <= q.limit
    }

    /// One pass over the expired entries at the front: they are counted out first and
    /// dropped only when the request is admitted, so a denial changes nothing (the clock may
    /// still step back to a time they were live).
    #[inline]
    fn take(&mut self, q: &Params, now: u64, cost: u64) -> bool {
        let now = now.min(MAX_MICROS);
        let (live, expired) = live(self, q.period, now);
        if live.saturating_add(cost) > q.limit {
            return false;
        }
        if expired > 0 {
            self.entries.drain(..expired);
            self.sum = live;
        }
        if cost > 0 {
            match self.entries.back_mut() {
                Some((ts, c)) if *ts >= now => *c += cost,
                _ => self.entries.push_back((now, cost)),
            }
            self.sum += cost;
        }
        true
    }

    /// Newest first, including entries that have left the window.
    fn refund(&mut self, _: &Params, _: u64, cost: u64) {
        let mut left = cost;
        while left > 0 {
            let Some((_, c)) = self.entries.back_mut() else {
                break;
            };
            let take = left.min(*c);
            *c -= take;
            self.sum -= take;
            left -= take;
            if *c == 0 {
                self.entries.pop_back();
            }
        }
    }

    fn expiry(&self, q: &Params, _: u64) -> (u64, u64) {
        (
            self.entries
                .back()
                .map_or(0, |&(ts, _)| ts.saturating_add(q.period)),
            self.sum,
        )
    }
}

/// The times of a log's oldest and newest entries, kept beside the list by a store that
/// admits without reading either end of it ([`SlidingLog::take_at_ends`]). An empty log has
/// `oldest` `u64::MAX` and `newest` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogEnds {
    oldest: u64,
    newest: u64,
}

impl LogEnds {
    /// The ends of `log`.
    pub(crate) fn of(log: &SlidingLog) -> Self {
        Self {
            oldest: log.entries.front().map_or(u64::MAX, |&(ts, _)| ts),
            newest: log.entries.back().map_or(0, |&(ts, _)| ts),
        }
    }
}

impl SlidingLog {
    /// [`take`](Machine::take) with the log's ends known. When nothing has left the window
    /// and the request gets an entry of its own, the usual case, it reads neither end of the
    /// list: in a store of many long logs those are two cache misses per decision.
    #[inline]
    pub(crate) fn take_at_ends(
        &mut self,
        ends: &mut LogEnds,
        q: &Params,
        now: u64,
        cost: u64,
    ) -> bool {
        let now = now.min(MAX_MICROS);
        if cost > 0 && now > ends.newest && ends.oldest.saturating_add(q.period) > now {
            if self.sum.saturating_add(cost) > q.limit {
                return false;
            }
            self.entries.push_back((now, cost));
            self.sum += cost;
            ends.newest = now;
            ends.oldest = ends.oldest.min(now);
            return true;
        }
        let admitted = self.take(q, now, cost);
        if admitted {
            *ends = LogEnds::of(self);
        }
        admitted
    }
}
