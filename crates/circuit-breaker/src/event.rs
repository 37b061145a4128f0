//! Events published on a breaker's broadcast channel.

use std::sync::Arc;
use std::time::Duration;

use crate::{State, TripReason};

/// Something that happened to a breaker, published to every
/// [`subscribe`](crate::CircuitBreaker::subscribe)r.
///
/// Transition events are sent exactly once per transition (by the caller whose
/// compare-and-swap made it). Rejection and slow-call events are only produced once someone
/// has subscribed, so an unobserved breaker pays nothing for them. A subscriber that falls
/// more than the channel capacity (1024) behind loses the oldest events
/// (`RecvError::Lagged`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The breaker changed state.
    Transition {
        /// The breaker's name.
        name: Arc<str>,
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// Why it opened, for transitions to `Open`.
        reason: Option<TripReason>,
    },
    /// A call was rejected.
    Rejected {
        /// The breaker's name.
        name: Arc<str>,
        /// The state that rejected it.
        state: State,
        /// The retry-after given to the caller.
        retry_after: Duration,
    },
    /// A call was slower than the slow-call threshold.
    SlowCall {
        /// The breaker's name.
        name: Arc<str>,
        /// How long it took.
        elapsed: Duration,
    },
    /// The shared-state store failed or came back.
    Store {
        /// The breaker's name.
        name: Arc<str>,
        /// Whether the store answers now.
        healthy: bool,
    },
}
