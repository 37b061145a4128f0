//! A complete, lock-free circuit breaker for async Rust services, with state shared across
//! instances through Redis.
//!
//! * **States**: `Closed`, `Open`, `HalfOpen`, plus `ForcedOpen`, `Disabled` and
//!   `MetricsOnly` set by hand ([`State`]).
//! * **Trip rules**: failure rate over a window with a minimum number of calls, consecutive
//!   failures, slow-call rate ([`Config`]).
//! * **Windows**: the last N calls, or per-second buckets over N seconds, both with an O(1)
//!   snapshot ([`SlidingWindow`]).
//! * **Half-open**: after the open wait (optionally growing with [`Backoff`]) a bounded number
//!   of probes pass; late results of an older period never change the state; a maximum
//!   half-open wait means it can never stick.
//! * **Hot path without locks**: state, generation and deadline live in one atomic word; the
//!   window is atomics; see the memory-ordering notes in the `breaker` module source.
//! * **API**: [`CircuitBreaker::call`], [`call_with`](CircuitBreaker::call_with) (the future is
//!   built only once admitted), [`call_with_fallback`](CircuitBreaker::call_with_fallback),
//!   [`call_classified`](CircuitBreaker::call_classified), per-call timeout, manual control,
//!   [`Event`] stream, `metrics` counters and `tracing` spans.
//! * **[`Registry`]** of named breakers from a default config plus per-name overrides, with a
//!   [`health`](Registry::health) snapshot.
//! * **tower** `CircuitBreakerLayer` (feature `tower`).
//! * **Shared state** ([`Store`]): [`MemoryStore`] and `RedisStore` (feature `redis`,
//!   standalone, TLS or Cluster); the wire types and the pure fleet-wide machine live in
//!   [`store`]; the conformance suite every store passes is public in `testing` (feature
//!   `testing`).
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use palisade_circuit_breaker::{CircuitBreaker, Error, FakeClock, State};
//!
//! let clock = FakeClock::new();
//! let breaker = CircuitBreaker::builder("database")
//!     .consecutive_failures(3)
//!     .open_wait(Duration::from_secs(5))
//!     .half_open_probes(1)
//!     .success_threshold(1)
//!     .clock(clock.clone())
//!     .build()
//!     .unwrap();
//!
//! for _ in 0..3 {
//!     let _ = breaker.call(async { Err::<(), _>("connection refused") }).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//! match breaker.call(async { Ok::<_, &str>(1) }).await {
//!     Err(Error::Rejected { retry_after, .. }) => assert_eq!(retry_after, Duration::from_secs(5)),
//!     other => panic!("{other:?}"),
//! }
//!
//! clock.advance(Duration::from_secs(5)); // the wait is over: one probe may pass
//! assert_eq!(breaker.call(async { Ok::<_, &str>(1) }).await.unwrap(), 1);
//! assert_eq!(breaker.state(), State::Closed);
//! # }
//! ```
//!
//! # Metrics
//! | name | kind | labels |
//! |---|---|---|
//! | `palisade_circuit_breaker_calls_total` | counter | `name`, `outcome` = `success`/`failure`/`ignored`/`timeout` |
//! | `palisade_circuit_breaker_rejected_total` | counter | `name` |
//! | `palisade_circuit_breaker_slow_calls_total` | counter | `name` |
//! | `palisade_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` |
//! | `palisade_circuit_breaker_state` | gauge | `name` (0 closed, 1 open, 2 half-open, 3 forced-open, 4 disabled, 5 metrics-only) |
//! | `palisade_circuit_breaker_store_errors_total` | counter | `name` |
//!
//! Counter handles are registered when a breaker is built, so install the metrics recorder
//! before building breakers.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
// The crate contract: every public type that may grow is `#[non_exhaustive]` (configuration
// included: it is built from `default()` with setters); the few that are complete by nature
// say why they are not.
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

mod breaker;
mod builder;
mod call;
mod clock;
mod config;
mod error;
mod event;
mod fleet;
mod memory;
mod outcome;
mod permit;
mod registry;
mod state;
pub mod store;
mod sync;
mod window;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use breaker::{CircuitBreaker, Health};
pub use builder::CircuitBreakerBuilder;
pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{
    Backoff, Config, ConfigOverride, FailureMode, MAX_WINDOW_CALLS, MAX_WINDOW_SECONDS, Quorum,
    SharedConfig, SlidingWindow, SlowCallRule, TripReason,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;
pub use error::{BoxError, Error, Result};
pub use event::Event;
pub use memory::MemoryStore;
pub use outcome::{Classifier, DefaultClassifier, Outcome};
pub use permit::Permit;
pub use registry::{Registry, RegistryConfig};
pub use state::State;
pub use store::backend::Store;
pub use window::Snapshot;
