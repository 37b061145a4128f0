//! A driver for instruction counts of the breaker's hot paths, repeatable whatever the load
//! on the machine:
//!
//! ```sh
//! cargo build --release -p palisade-circuit-breaker --example hot_path
//! for n in 0 1000000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/hot_path closed_async $n 2>&1 | grep refs
//! done
//! ```
//!
//! (instructions of the 10^6 run − those of the 0 run) / 10^6 = instructions per call.
//! Paths: `closed_async`, `closed_async_time`, `closed_sync`, `open_async`, `open_sync`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use palisade_circuit_breaker::{CircuitBreaker, Outcome};

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the driver's futures are always ready"),
    }
}

#[inline]
fn op(ok: bool) -> Result<u64, ()> {
    if black_box(ok) {
        Ok(black_box(42))
    } else {
        Err(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "closed_async".to_owned());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let builder = CircuitBreaker::builder("driver");
    let breaker = if path.ends_with("_time") {
        builder.time_window(10)
    } else {
        builder.count_window(100)
    }
    .build()
    .expect("a valid configuration");
    if path.starts_with("open") {
        for _ in 0..200 {
            let _ = ready(breaker.call(async { op(false) }));
        }
        assert!(breaker.try_acquire().is_err(), "the breaker did not open");
    }
    let mut ok = 0u64;
    match path.as_str() {
        "closed_async" | "closed_async_time" | "open_async" => {
            for _ in 0..n {
                ok += u64::from(ready(breaker.call(async { op(true) })).is_ok());
            }
        }
        "closed_sync" | "open_sync" => {
            for _ in 0..n {
                if let Ok(permit) = breaker.try_acquire() {
                    let r = op(true);
                    permit.record(if r.is_ok() {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    });
                    ok += u64::from(r.is_ok());
                }
            }
        }
        other => panic!("unknown path {other}"),
    }
    black_box(ok);
}
