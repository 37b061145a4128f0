//! The breaker's states and the packed word that holds state, generation and deadline in one
//! atomic. Pure: no I/O, no clocks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a circuit breaker.
///
/// `Closed`, `Open` and `HalfOpen` are driven by the trip rules; the other three are set by
/// hand ([`CircuitBreaker::force_open`](crate::CircuitBreaker::force_open),
/// [`disable`](crate::CircuitBreaker::disable), [`metrics_only`](crate::CircuitBreaker::metrics_only))
/// and left only by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls pass and their outcomes are recorded; a trip rule moves the breaker to `Open`.
    Closed,
    /// Calls are rejected until the open wait is over, then the breaker goes `HalfOpen`.
    Open,
    /// A bounded number of probe calls pass: enough successes close the breaker, one failure
    /// (or the maximum half-open wait) opens it again.
    HalfOpen,
    /// Every call is rejected until the breaker is closed or reset by hand.
    ForcedOpen,
    /// Every call passes and nothing is recorded.
    Disabled,
    /// Every call passes and is recorded, but the breaker never trips.
    MetricsOnly,
}

impl State {
    /// A stable lower-case name (`closed`, `open`, `half_open`, `forced_open`, `disabled`,
    /// `metrics_only`), used in metrics labels, logs and the Redis wire format.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics_only",
        }
    }

    /// Parse the name returned by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "closed" => Self::Closed,
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            "forced_open" => Self::ForcedOpen,
            "disabled" => Self::Disabled,
            "metrics_only" => Self::MetricsOnly,
            _ => return None,
        })
    }

    /// Whether a call may pass in this state without a probe permit.
    pub const fn is_call_permitted(self) -> bool {
        matches!(self, Self::Closed | Self::Disabled | Self::MetricsOnly)
    }

    /// A number for the `palisade_circuit_breaker_state` gauge: 0 closed, 1 open, 2 half-open,
    /// 3 forced-open, 4 disabled, 5 metrics-only.
    pub const fn as_gauge(self) -> f64 {
        self.code() as f64
    }

    pub(crate) const fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
            Self::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            5 => Self::MetricsOnly,
            // 0, and any value a corrupted word could hold, reads as closed.
            _ => Self::Closed,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const STATE_BITS: u32 = 3;
const GEN_BITS: u32 = 21;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
pub(crate) const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
/// Deadlines are milliseconds since the clock's epoch in 40 bits: about 34 years.
pub(crate) const DEADLINE_MASK: u64 = (1 << (64 - STATE_BITS - GEN_BITS)) - 1;

/// State, generation and deadline packed into one `u64` so that one atomic load tells a
/// caller everything it needs and one compare-and-swap performs a transition.
///
/// Layout (low to high): 3 bits state, 21 bits generation, 40 bits deadline in milliseconds
/// since the clock's epoch. The generation grows by one on every transition and wraps after
/// 2^21 transitions; it is only ever compared for equality, to tell a result that belongs to
/// the current period from a late one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub(crate) state: State,
    pub(crate) generation: u32,
    /// Open: when half-open may start. HalfOpen: when the maximum half-open wait ends.
    /// Other states: 0.
    pub(crate) deadline_ms: u64,
}

impl Word {
    pub(crate) const fn pack(self) -> u64 {
        self.state.code()
            | ((self.generation as u64 & GEN_MASK) << STATE_BITS)
            | ((self.deadline_ms & DEADLINE_MASK) << (STATE_BITS + GEN_BITS))
    }

    pub(crate) const fn unpack(raw: u64) -> Self {
        Self {
            state: State::from_code(raw & STATE_MASK),
            generation: ((raw >> STATE_BITS) & GEN_MASK) as u32,
            deadline_ms: raw >> (STATE_BITS + GEN_BITS),
        }
    }

    /// The word after a transition to `state`: next generation, new deadline.
    pub(crate) const fn next(self, state: State, deadline_ms: u64) -> Self {
        Self {
            state,
            generation: ((self.generation as u64 + 1) & GEN_MASK) as u32,
            deadline_ms: if deadline_ms > DEADLINE_MASK {
                DEADLINE_MASK
            } else {
                deadline_ms
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ];

    #[test]
    fn names_round_trip() {
        for s in ALL {
            assert_eq!(State::from_name(s.as_str()), Some(s));
            assert_eq!(State::from_code(s.code()), s);
        }
        assert_eq!(State::from_name("nope"), None);
    }

    proptest! {
        #[test]
        fn word_round_trips(s in 0usize..6, generation in 0u32..(1 << 21), deadline in 0u64..DEADLINE_MASK) {
            let w = Word { state: ALL[s], generation, deadline_ms: deadline };
            prop_assert_eq!(Word::unpack(w.pack()), w);
        }

        #[test]
        fn next_wraps_generation_and_clamps_deadline(generation in 0u32..(1 << 21), deadline in any::<u64>()) {
            let w = Word { state: State::Closed, generation, deadline_ms: 0 };
            let n = Word::unpack(w.next(State::Open, deadline).pack());
            prop_assert_eq!(n.state, State::Open);
            prop_assert_eq!(u64::from(n.generation), (u64::from(generation) + 1) & GEN_MASK);
            prop_assert_eq!(n.deadline_ms, deadline.min(DEADLINE_MASK));
        }
    }
}
