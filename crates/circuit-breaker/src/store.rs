//! The shared-state backend: the values the [`Store`] trait's operations exchange
//! ([`SharedPolicy`], [`Batch`], [`SharedState`], [`ProbeGrant`], [`ManualOp`]) and the pure
//! fleet-wide state machine every backend implements: [`MemoryStore`](crate::MemoryStore)
//! runs [`SharedMachine`] directly, `RedisStore` runs the same rules as Lua scripts
//! (`src/lua/*.lua`, written line by line from [`SharedMachine`]).
//!
//! Breakers only need this module to plug in a backend of their own; a store is handed to
//! [`CircuitBreakerBuilder::store`](crate::CircuitBreakerBuilder::store) as `Arc<dyn Store>`.
//! The trait uses `async-trait` for that reason: one breaker type whatever the backend,
//! chosen by value at run time.
//!
//! Each public type has one path: the trait is `palisade_circuit_breaker::Store`, not also
//! `store::Store`:
//!
//! ```compile_fail
//! use palisade_circuit_breaker::store::Store;
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::config::Config;
use crate::{Outcome, Snapshot, State};

// The trait lives in its own private module and is public at the crate root only, so it has
// one path (`palisade_circuit_breaker::Store`); this module's public items are the values its
// operations exchange.
pub(crate) mod backend;
pub(crate) use backend::Store;

/// The fleet-wide rules, derived from a breaker's [`Config`] and sent with every store
/// operation so that the store itself is stateless about configuration (two deployments with
/// different settings simply converge on whatever the last writer sent).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SharedPolicy {
    /// Shared window length, seconds of store time.
    pub window_seconds: u32,
    /// Calls needed in the shared window before the rate rules apply.
    pub minimum_calls: u32,
    /// Failure percentage that opens the breaker fleet-wide.
    pub failure_rate_threshold: f64,
    /// Slow percentage that opens it, if the slow-call rule is on.
    pub slow_rate_threshold: Option<f64>,
    /// First open wait, milliseconds.
    pub open_wait_ms: u64,
    /// Backoff multiplier (1 without backoff).
    pub backoff_multiplier: f64,
    /// Longest open wait, milliseconds.
    pub max_open_wait_ms: u64,
    /// Probe permits per half-open period, fleet-wide.
    pub half_open_probes: u32,
    /// Successful probes that close the breaker.
    pub success_threshold: u32,
    /// Longest half-open period, milliseconds.
    pub max_half_open_ms: u64,
    /// Probe lease length, milliseconds.
    pub probe_lease_ms: u64,
    /// Quorum: failing instances needed to open (0 = no quorum rule).
    pub quorum_min_instances: u32,
    /// Quorum: percentage of live instances needed to open (0 = none).
    pub quorum_min_percent: f64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SharedPolicy {
    /// The policy a breaker with `config` sends.
    pub fn from_config(config: &Config) -> Self {
        let (mult, max) = match &config.backoff {
            Some(b) => (b.multiplier, ms(b.max_wait)),
            None => (1.0, ms(config.open_wait)),
        };
        let (qn, qp) = config
            .shared
            .quorum
            .map_or((0, 0.0), |q| (q.min_instances, q.min_percent));
        Self {
            window_seconds: config.shared.window_seconds,
            minimum_calls: config.minimum_calls,
            failure_rate_threshold: config.failure_rate_threshold,
            slow_rate_threshold: config.slow_call.map(|s| s.rate_threshold),
            open_wait_ms: ms(config.open_wait),
            backoff_multiplier: mult,
            max_open_wait_ms: max,
            half_open_probes: config.half_open_probes,
            success_threshold: config.success_threshold,
            max_half_open_ms: ms(config.max_half_open_wait),
            probe_lease_ms: ms(config.shared.probe_lease),
            quorum_min_instances: qn,
            quorum_min_percent: qp,
        }
    }

    /// Open wait of the `trips`-th consecutive trip, milliseconds (the Lua scripts compute
    /// the same expression).
    pub fn open_wait_ms_for(&self, trips: u32) -> u64 {
        let exp = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        let w = self.open_wait_ms as f64 * self.backoff_multiplier.powi(exp);
        if !w.is_finite() || w >= self.max_open_wait_ms as f64 {
            self.max_open_wait_ms
        } else {
            w.floor() as u64
        }
    }

    /// How long store keys live without activity, milliseconds.
    pub fn key_ttl_ms(&self) -> u64 {
        let longest = (u64::from(self.window_seconds) * 1000)
            .max(self.max_open_wait_ms)
            .max(self.max_half_open_ms)
            .max(self.probe_lease_ms);
        longest.saturating_mul(2).saturating_add(60_000)
    }
}

/// One instance's outcomes since its last flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// The instance's id (for the quorum rule).
    pub instance: String,
    /// Recorded calls.
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Of those, slow calls.
    pub slow: u64,
    /// Whether this instance currently sees its own window failing (counts towards a quorum).
    pub failing: bool,
}

impl Batch {
    /// A batch from `instance`.
    pub fn new(
        instance: impl Into<String>,
        calls: u64,
        failures: u64,
        slow: u64,
        failing: bool,
    ) -> Self {
        Self {
            instance: instance.into(),
            calls,
            failures,
            slow,
            failing,
        }
    }
}

/// The fleet-wide state as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedState {
    /// State.
    pub state: State,
    /// Generation: grows by one on every fleet-wide transition.
    pub generation: u64,
    /// Remaining open wait (zero unless open).
    pub retry_after: Duration,
    /// The shared window's counts.
    pub window: Snapshot,
}

/// The answer to a probe-permit request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeGrant {
    /// A permit for the half-open period of `generation`.
    Granted {
        /// The half-open period's generation.
        generation: u64,
    },
    /// No permit: not half-open, or every permit is leased.
    Denied(SharedState),
}

/// Manual control passed on to the whole fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ManualOp {
    /// Reject every call.
    ForceOpen,
    /// Close, keeping the backoff history.
    Close,
    /// Close and forget everything.
    Reset,
    /// Let everything through, record nothing.
    Disable,
    /// Record, never trip.
    MetricsOnly,
}

impl ManualOp {
    /// Wire name (`force_open`, `close`, `reset`, `disable`, `metrics_only`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ForceOpen => "force_open",
            Self::Close => "close",
            Self::Reset => "reset",
            Self::Disable => "disable",
            Self::MetricsOnly => "metrics_only",
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            Self::ForceOpen => 1,
            Self::Close => 2,
            Self::Reset => 3,
            Self::Disable => 4,
            Self::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::ForceOpen,
            2 => Self::Close,
            3 => Self::Reset,
            4 => Self::Disable,
            5 => Self::MetricsOnly,
            _ => return None,
        })
    }
}

/// A fleet-wide probe permit held by one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) local_generation: u32,
}

/// The fleet-wide state machine, pure: every method takes the store's current time.
///
/// This is the reference the Redis scripts implement line by line. Transitions:
/// closed → open when the shared window (at least `minimum_calls`, rate at or over a
/// threshold) trips and the quorum (if any) agrees; open → half-open once the open wait is
/// over; half-open → closed after `success_threshold` successful probes; half-open → open on
/// a failed probe or when the maximum half-open wait ends. Every transition bumps the
/// generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedMachine {
    state: Option<State>,
    generation: u64,
    deadline_ms: u64,
    trips: u32,
    successes: u32,
    buckets: BTreeMap<u64, [u64; 3]>,
    instances: HashMap<String, u64>,
    failing: HashMap<String, u64>,
    leases: HashMap<String, u64>,
}

impl SharedMachine {
    fn state(&self) -> State {
        self.state.unwrap_or(State::Closed)
    }

    fn go(&mut self, to: State, deadline_ms: u64) {
        self.state = Some(to);
        self.generation += 1;
        self.deadline_ms = deadline_ms;
    }

    fn open(&mut self, p: &SharedPolicy, now: u64) {
        self.trips = self.trips.saturating_add(1);
        self.go(State::Open, now + p.open_wait_ms_for(self.trips));
        self.leases.clear();
    }

    fn close(&mut self) {
        self.go(State::Closed, 0);
        self.trips = 0;
        self.successes = 0;
        self.buckets.clear();
        self.failing.clear();
        self.leases.clear();
    }

    fn advance(&mut self, p: &SharedPolicy, now: u64) {
        match self.state() {
            State::Open if now >= self.deadline_ms => {
                self.go(State::HalfOpen, now + p.max_half_open_ms);
                self.successes = 0;
                self.leases.clear();
            }
            State::HalfOpen if now >= self.deadline_ms => self.open(p, now),
            _ => {}
        }
    }

    fn window(&mut self, p: &SharedPolicy, now: u64) -> Snapshot {
        let min_sec = (now / 1000 + 1).saturating_sub(u64::from(p.window_seconds));
        self.buckets.retain(|&sec, _| sec >= min_sec);
        let mut s = Snapshot::default();
        for [c, f, sl] in self.buckets.values() {
            s.calls += c;
            s.failures += f;
            s.slow += sl;
        }
        s
    }

    fn view(&mut self, p: &SharedPolicy, now: u64) -> SharedState {
        let window = self.window(p, now);
        let retry_after = match self.state() {
            State::Open => Duration::from_millis(self.deadline_ms.saturating_sub(now)),
            State::ForcedOpen => Duration::from_millis(p.open_wait_ms),
            _ => Duration::ZERO,
        };
        SharedState {
            state: self.state(),
            generation: self.generation,
            retry_after,
            window,
        }
    }

    /// [`Store::flush`] at time `now` (milliseconds).
    pub fn flush(&mut self, p: &SharedPolicy, now: u64, batch: &Batch) -> SharedState {
        self.advance(p, now);
        if batch.calls > 0 {
            let b = self.buckets.entry(now / 1000).or_default();
            b[0] += batch.calls;
            b[1] += batch.failures;
            b[2] += batch.slow;
        }
        self.instances.insert(batch.instance.clone(), now);
        if batch.failing {
            self.failing.insert(batch.instance.clone(), now);
        }
        let horizon = now.saturating_sub(u64::from(p.window_seconds) * 1000);
        self.instances.retain(|_, &mut t| t >= horizon);
        self.failing.retain(|_, &mut t| t >= horizon);
        let s = self.window(p, now);
        if self.state() == State::Closed && s.calls > 0 && s.calls >= u64::from(p.minimum_calls) {
            let c = s.calls as f64;
            let trip = s.failures as f64 * 100.0 >= p.failure_rate_threshold * c
                || p.slow_rate_threshold
                    .is_some_and(|t| s.slow as f64 * 100.0 >= t * c);
            let failing = self.failing.len() as f64;
            let quorum = failing >= f64::from(p.quorum_min_instances)
                && failing * 100.0 >= p.quorum_min_percent * self.instances.len() as f64;
            if trip && quorum {
                self.trips = 0;
                self.open(p, now);
            }
        }
        self.view(p, now)
    }

    /// [`Store::acquire_probe`] at time `now`.
    pub fn acquire_probe(&mut self, p: &SharedPolicy, now: u64, lease_id: &str) -> ProbeGrant {
        self.advance(p, now);
        if self.state() == State::HalfOpen {
            self.leases.retain(|_, &mut expiry| expiry > now);
            if (self.leases.len() as u64) + u64::from(self.successes)
                < u64::from(p.half_open_probes)
            {
                self.leases
                    .insert(lease_id.to_owned(), now + p.probe_lease_ms);
                return ProbeGrant::Granted {
                    generation: self.generation,
                };
            }
        }
        ProbeGrant::Denied(self.view(p, now))
    }

    /// [`Store::complete_probe`] at time `now`.
    pub fn complete_probe(
        &mut self,
        p: &SharedPolicy,
        now: u64,
        generation: u64,
        lease_id: &str,
        outcome: Outcome,
    ) -> SharedState {
        self.advance(p, now);
        // Only the holder of a live lease reports: a made-up id, a second report and a report
        // after the lease expired (it may be another instance's permit by now) count nothing.
        let held = self
            .leases
            .remove(lease_id)
            .is_some_and(|expiry| expiry > now);
        if held && self.state() == State::HalfOpen && self.generation == generation {
            match outcome {
                Outcome::Failure => self.open(p, now),
                Outcome::Success => {
                    self.successes += 1;
                    if self.successes >= p.success_threshold {
                        self.close();
                    }
                }
                Outcome::Ignored => {}
            }
        }
        self.view(p, now)
    }

    /// [`Store::apply`] at time `now`.
    pub fn apply(&mut self, p: &SharedPolicy, now: u64, op: ManualOp) -> SharedState {
        match op {
            ManualOp::ForceOpen => self.go(State::ForcedOpen, 0),
            ManualOp::Close => {
                let trips = self.trips;
                self.close();
                self.trips = trips;
            }
            ManualOp::Reset => self.close(),
            ManualOp::Disable => self.go(State::Disabled, 0),
            ManualOp::MetricsOnly => self.go(State::MetricsOnly, 0),
        }
        self.view(p, now)
    }
}
