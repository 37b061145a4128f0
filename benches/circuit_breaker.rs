//! Circuit breaker overhead: palisade next to `recloser` and `failsafe`, in the same groups,
//! on the same closure / future.
//!
//! * `closed/*`: the cost a healthy call pays for going through the breaker.
//! * `open/*`: the cost of a rejection while the breaker is open.
//! * `*_2_threads/*`: two threads hammering one shared breaker (time per call per thread).
//! * `palisade_count` uses the last-100-calls window, `palisade_time` a 10 s time window
//!   (one clock read per call).
//!
//! Futures are polled once with a no-op waker (they are always ready), so no executor cost
//! is included for anyone. Run with `cargo bench --bench circuit_breaker`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade::circuit_breaker::{CircuitBreaker, Outcome};

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("benchmark futures are always ready"),
    }
}

fn palisade_count() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .count_window(100)
        .build()
        .unwrap()
}

fn palisade_time() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .time_window(10)
        .build()
        .unwrap()
}

fn recloser() -> recloser::Recloser {
    recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .open_wait(Duration::from_secs(3600))
        .build()
}

type Failsafe = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

fn failsafe() -> Failsafe {
    let policy = failsafe::failure_policy::consecutive_failures(
        5,
        failsafe::backoff::constant(Duration::from_secs(3600)),
    );
    failsafe::Config::new().failure_policy(policy).build()
}

/// The protected operation every breaker runs.
#[inline]
fn op(ok: bool) -> Result<u64, ()> {
    if black_box(ok) {
        Ok(black_box(42))
    } else {
        Err(())
    }
}

fn trip_all(
    p: &CircuitBreaker,
    r: &recloser::Recloser,
    ar: &recloser::AsyncRecloser,
    f: &Failsafe,
) {
    for _ in 0..200 {
        let _ = ready(p.call(async { op(false) }));
        let _ = r.call(|| op(false));
        let _ = ready(ar.call(async { op(false) }));
        let _ = ready(failsafe::futures::CircuitBreaker::call(f, async {
            op(false)
        }));
    }
    assert!(p.try_acquire().is_err(), "palisade did not open");
    assert!(r.call(|| op(true)).is_err(), "recloser did not open");
    assert!(
        ready(ar.call(async { op(true) })).is_err(),
        "async recloser did not open"
    );
    assert!(
        !failsafe::CircuitBreaker::is_call_permitted(f),
        "failsafe did not open"
    );
}

fn single_thread(c: &mut Criterion, state: &str) {
    let mut g = c.benchmark_group(state);
    g.throughput(Throughput::Elements(1));
    let (pc, pt, r, f) = (palisade_count(), palisade_time(), recloser(), failsafe());
    let ar = recloser::AsyncRecloser::from(recloser());
    if state == "open" {
        trip_all(&pc, &r, &ar, &f);
        trip_all(&pt, &r, &ar, &f);
    }

    g.bench_function(BenchmarkId::new("async", "palisade_count"), |b| {
        b.iter(|| ready(pc.call(async { op(true) })).is_ok());
    });
    g.bench_function(BenchmarkId::new("async", "palisade_time"), |b| {
        b.iter(|| ready(pt.call(async { op(true) })).is_ok());
    });
    g.bench_function(BenchmarkId::new("async", "recloser"), |b| {
        b.iter(|| ready(ar.call(async { op(true) })).is_ok());
    });
    g.bench_function(BenchmarkId::new("async", "failsafe"), |b| {
        b.iter(|| {
            ready(failsafe::futures::CircuitBreaker::call(&f, async {
                op(true)
            }))
            .is_ok()
        });
    });

    g.bench_function(BenchmarkId::new("sync", "palisade_count"), |b| {
        b.iter(|| match pc.try_acquire() {
            Ok(permit) => {
                let r = op(true);
                permit.record(if r.is_ok() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                });
                r.is_ok()
            }
            Err(_) => false,
        });
    });
    g.bench_function(BenchmarkId::new("sync", "recloser"), |b| {
        b.iter(|| r.call(|| op(true)).is_ok());
    });
    g.bench_function(BenchmarkId::new("sync", "failsafe"), |b| {
        b.iter(|| failsafe::CircuitBreaker::call(&f, || op(true)).is_ok());
    });
    g.finish();
}

fn two_threads(c: &mut Criterion, state: &str) {
    let mut g = c.benchmark_group(format!("{state}_2_threads"));
    g.throughput(Throughput::Elements(1));
    let (pc, pt, r, f) = (palisade_count(), palisade_time(), recloser(), failsafe());
    let ar = recloser::AsyncRecloser::from(recloser());
    if state == "open" {
        trip_all(&pc, &r, &ar, &f);
        trip_all(&pt, &r, &ar, &f);
    }

    fn run(iters: u64, work: &(impl Fn() -> bool + Sync)) -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..iters {
                        black_box(work());
                    }
                });
            }
        });
        start.elapsed()
    }

    g.bench_function(BenchmarkId::new("async", "palisade_count"), |b| {
        b.iter_custom(|iters| run(iters, &|| ready(pc.call(async { op(true) })).is_ok()));
    });
    g.bench_function(BenchmarkId::new("async", "palisade_time"), |b| {
        b.iter_custom(|iters| run(iters, &|| ready(pt.call(async { op(true) })).is_ok()));
    });
    g.bench_function(BenchmarkId::new("async", "recloser"), |b| {
        b.iter_custom(|iters| run(iters, &|| ready(ar.call(async { op(true) })).is_ok()));
    });
    g.bench_function(BenchmarkId::new("async", "failsafe"), |b| {
        b.iter_custom(|iters| {
            run(iters, &|| {
                ready(failsafe::futures::CircuitBreaker::call(&f, async {
                    op(true)
                }))
                .is_ok()
            })
        });
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    single_thread(c, "closed");
    single_thread(c, "open");
    two_threads(c, "closed");
    two_threads(c, "open");
}

criterion_group!(circuit_breaker, benches);
criterion_main!(circuit_breaker);
