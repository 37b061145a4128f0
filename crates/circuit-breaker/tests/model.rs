//! The lock-free breaker against a plain sequential reference model: random call outcomes,
//! durations, held (late) permits, manual control and clock advances must give the same
//! state, the same window counts and the same admit/reject answers at every step.

use std::collections::VecDeque;
use std::time::Duration;

use palisade_circuit_breaker::{
    CircuitBreaker, Clock, Config, FakeClock, Outcome, SlidingWindow, State,
};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal(u32),
    Probe(u32),
}

/// The reference: the rules of the README written as the most direct sequential code.
struct Model {
    c: Config,
    state: State,
    generation: u32,
    deadline: u64,
    trips: u32,
    run: u32,
    admitted: u32,
    successes: u32,
    marks: VecDeque<(u64, bool, bool)>, // (second, failure, slow)
}

impl Model {
    fn new(c: Config) -> Self {
        Self {
            c,
            state: State::Closed,
            generation: 0,
            deadline: 0,
            trips: 0,
            run: 0,
            admitted: 0,
            successes: 0,
            marks: VecDeque::new(),
        }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    fn go(&mut self, to: State, deadline: u64) {
        self.state = to;
        self.generation += 1;
        self.deadline = deadline;
        if to == State::HalfOpen {
            self.admitted = 0;
            self.successes = 0;
        }
        if to == State::Closed {
            self.marks.clear();
            self.run = 0;
            self.trips = 0;
        }
    }

    fn trip(&mut self, now: u64) {
        let trips = if self.state == State::Closed {
            1
        } else {
            self.trips + 1
        };
        self.go(State::Open, now + Self::ms(self.c.open_wait_for(trips)));
        self.trips = trips;
    }

    fn window(&mut self, now: u64) -> (u64, u64, u64) {
        match self.c.window {
            SlidingWindow::Count { size } => {
                while self.marks.len() > size as usize {
                    self.marks.pop_front();
                }
            }
            SlidingWindow::Time { seconds } => {
                let sec = now / 1000;
                self.marks.retain(|m| m.0 + u64::from(seconds) > sec);
            }
            other => unreachable!("the model knows no {other:?} window"),
        }
        let calls = self.marks.len() as u64;
        let f = self.marks.iter().filter(|m| m.1).count() as u64;
        let s = self.marks.iter().filter(|m| m.2).count() as u64;
        (calls, f, s)
    }

    fn acquire(&mut self, now: u64) -> Option<Kind> {
        loop {
            match self.state {
                State::Closed | State::MetricsOnly => return Some(Kind::Normal(self.generation)),
                State::Disabled => unreachable!("the model never disables"),
                State::ForcedOpen => return None,
                State::Open => {
                    if now < self.deadline {
                        return None;
                    }
                    self.go(State::HalfOpen, now + Self::ms(self.c.max_half_open_wait));
                }
                State::HalfOpen => {
                    if now >= self.deadline {
                        self.trip(now);
                        continue;
                    }
                    if self.admitted < self.c.half_open_probes {
                        self.admitted += 1;
                        return Some(Kind::Probe(self.generation));
                    }
                    return None;
                }
                other => unreachable!("the model knows no {other:?} state"),
            }
        }
    }

    fn release(&mut self, generation: u32) {
        if self.state == State::HalfOpen && generation == self.generation && self.admitted > 0 {
            self.admitted -= 1;
        }
    }

    fn finish(&mut self, kind: Kind, outcome: Outcome, elapsed: u64, now: u64) {
        let slow = self
            .c
            .slow_call
            .is_some_and(|s| outcome != Outcome::Ignored && elapsed >= Self::ms(s.duration));
        match kind {
            Kind::Normal(g) => {
                if outcome == Outcome::Ignored || g != self.generation {
                    return;
                }
                let failure = outcome == Outcome::Failure;
                self.marks.push_back((now / 1000, failure, slow));
                self.run = if failure { self.run + 1 } else { 0 };
                if self.state != State::Closed {
                    return;
                }
                let (calls, f, s) = self.window(now);
                let snap = palisade_circuit_breaker::Snapshot::new(calls, f, s);
                if self.c.should_trip(snap, self.run).is_some() {
                    self.trip(now);
                }
            }
            Kind::Probe(g) => {
                if outcome == Outcome::Ignored {
                    self.release(g);
                    return;
                }
                if self.state != State::HalfOpen || g != self.generation {
                    return;
                }
                if outcome == Outcome::Failure || slow {
                    self.trip(now);
                } else {
                    self.successes += 1;
                    if self.successes >= self.c.success_threshold {
                        self.go(State::Closed, 0);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Call(u8, u64),
    /// As `Call`, through `CircuitBreaker::call_classified`'s future instead of a permit.
    CallFuture(u8, u64),
    Start,
    Finish(usize, u8),
    Drop(usize),
    Advance(u64),
    Reset,
    ForceOpen,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..3, 0u64..300).prop_map(|(o, d)| Op::Call(o, d)),
        4 => (0u8..3, 0u64..300).prop_map(|(o, d)| Op::CallFuture(o, d)),
        2 => Just(Op::Start),
        2 => (0usize..8, 0u8..3).prop_map(|(i, o)| Op::Finish(i, o)),
        1 => (0usize..8).prop_map(Op::Drop),
        4 => prop_oneof![0u64..200, 0u64..3000].prop_map(Op::Advance),
        1 => Just(Op::Reset),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Close),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            (1u32..12).prop_map(|size| SlidingWindow::Count { size }),
            (1u32..5).prop_map(|seconds| SlidingWindow::Time { seconds })
        ],
        1u32..6,
        prop_oneof![Just(20.0), Just(50.0), Just(100.0)],
        prop_oneof![Just(None), (1u32..5).prop_map(Some)],
        prop_oneof![Just(None), (50u64..250).prop_map(Some)],
        100u64..2000,
        any::<bool>(),
        (1u32..4, 0u32..4),
        500u64..4000,
    )
        .prop_map(
            |(
                window,
                minimum_calls,
                rate,
                consecutive,
                slow,
                wait,
                backoff,
                (probes, succ),
                max_half,
            )| {
                let mut c = Config::default()
                    .window(window)
                    .minimum_calls(minimum_calls)
                    .failure_rate_threshold(rate)
                    .open_wait(Duration::from_millis(wait))
                    .half_open_probes(probes)
                    .success_threshold((succ % probes) + 1)
                    .max_half_open_wait(Duration::from_millis(max_half));
                c.consecutive_failures = consecutive;
                c.slow_call = slow.map(|ms| {
                    palisade_circuit_breaker::SlowCallRule::new(Duration::from_millis(ms), 50.0)
                });
                if backoff {
                    c = c.backoff(palisade_circuit_breaker::Backoff::new(
                        2.0,
                        Duration::from_millis(wait * 5),
                    ));
                }
                c
            },
        )
}

/// Poll a future that never waits (no timeout is configured and the call is ready at once).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the call future waited"),
    }
}

fn outcome(o: u8) -> Outcome {
    match o {
        0 => Outcome::Success,
        1 => Outcome::Failure,
        _ => Outcome::Ignored,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_reference_model(c in config(), ops in proptest::collection::vec(op(), 1..120)) {
        c.validate().unwrap();
        let clock = FakeClock::new();
        let breaker = CircuitBreaker::builder("model").config(c.clone()).clock(clock.clone()).build().unwrap();
        let mut model = Model::new(c);
        let mut held = Vec::new(); // (real permit, model kind, start)
        // The breaker counts from the moment it was built; so does the model.
        let start = clock.now_micros();
        let now = |clock: &FakeClock| (clock.now_micros() - start) / 1000;
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Call(o, d) => {
                    let t = now(&clock);
                    let real = breaker.try_acquire();
                    let expected = model.acquire(t);
                    prop_assert_eq!(real.is_ok(), expected.is_some(), "admission at step {}", step);
                    clock.advance(Duration::from_millis(d));
                    if let (Ok(permit), Some(kind)) = (real, expected) {
                        permit.record(outcome(o));
                        model.finish(kind, outcome(o), d, now(&clock));
                    }
                }
                Op::CallFuture(o, d) => {
                    let t = now(&clock);
                    let expected = model.acquire(t);
                    let call = breaker.call_classified(
                        async {
                            clock.advance(Duration::from_millis(d));
                            Ok::<(), ()>(())
                        },
                        |_: &Result<(), ()>| outcome(o),
                    );
                    let real = ready(call);
                    prop_assert_eq!(real.is_ok(), expected.is_some(), "admission at step {}", step);
                    match expected {
                        Some(kind) => model.finish(kind, outcome(o), d, now(&clock)),
                        // A rejected call never ran: let its time pass anyway, as `Call` does.
                        None => clock.advance(Duration::from_millis(d)),
                    }
                }
                Op::Start => {
                    let t = now(&clock);
                    let real = breaker.try_acquire();
                    let expected = model.acquire(t);
                    prop_assert_eq!(real.is_ok(), expected.is_some(), "admission at step {}", step);
                    if let (Ok(permit), Some(kind)) = (real, expected) {
                        held.push((permit, kind, t));
                    }
                }
                Op::Finish(i, o) if i < held.len() => {
                    let (permit, kind, start) = held.remove(i);
                    let t = now(&clock);
                    permit.record(outcome(o));
                    model.finish(kind, outcome(o), t - start, t);
                }
                Op::Drop(i) if i < held.len() => {
                    let (permit, kind, _) = held.remove(i);
                    drop(permit);
                    if let Kind::Probe(g) = kind {
                        model.release(g);
                    }
                }
                Op::Finish(..) | Op::Drop(_) => {}
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Reset => {
                    breaker.reset();
                    model.go(State::Closed, 0);
                }
                Op::ForceOpen => {
                    breaker.force_open();
                    model.go(State::ForcedOpen, 0);
                }
                Op::Close => {
                    breaker.close();
                    let trips = model.trips;
                    model.go(State::Closed, 0);
                    model.trips = trips;
                }
            }
            prop_assert_eq!(breaker.state(), model.state, "state after step {}", step);
            let t = now(&clock);
            let (calls, f, s) = model.window(t);
            let snap = breaker.snapshot();
            prop_assert_eq!((snap.calls, snap.failures, snap.slow), (calls, f, s), "window after step {}", step);
        }
    }
}
