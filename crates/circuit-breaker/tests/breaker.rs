//! Behaviour of one local breaker: concurrency bounds, slow calls, timeouts, events,
//! manual control, registry and tower layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_circuit_breaker::{
    CircuitBreaker, Error, Event, FakeClock, Outcome, Registry, RegistryConfig, State, TripReason,
};

fn tripped(clock: &FakeClock, probes: u32) -> CircuitBreaker {
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(1)
        .open_wait(Duration::from_secs(10))
        .half_open_probes(probes)
        .success_threshold(probes)
        .clock(clock.clone())
        .build()
        .unwrap();
    b.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(b.state(), State::Open);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_exactly_the_probe_limit_under_256_concurrent_callers() {
    let clock = FakeClock::new();
    let breaker = tripped(&clock, 5);
    clock.advance(Duration::from_secs(10));
    let running = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(256));
    let mut tasks = Vec::new();
    for _ in 0..256 {
        let (b, running, release, barrier) = (
            breaker.clone(),
            running.clone(),
            release.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            b.call(async {
                running.fetch_add(1, Ordering::SeqCst);
                let _permit = release.acquire().await.unwrap();
                Ok::<_, ()>(())
            })
            .await
        }));
    }
    // Every caller has either been rejected or is inside its call.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        5,
        "exactly the configured probes run"
    );
    assert_eq!(breaker.state(), State::HalfOpen);
    release.add_permits(1000);
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::Rejected {
                state: State::HalfOpen,
                ..
            }) => rejected += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, rejected), (5, 251));
    assert_eq!(breaker.state(), State::Closed, "5 of 5 probes succeeded");
}

#[tokio::test]
async fn late_results_of_an_older_generation_change_nothing() {
    let clock = FakeClock::new();
    let breaker = tripped(&clock, 1);
    clock.advance(Duration::from_secs(10));
    let old_probe = breaker.try_acquire().unwrap();
    assert!(old_probe.is_probe());
    clock.advance(Duration::from_secs(61)); // past the maximum half-open wait
    assert!(breaker.try_acquire().is_err());
    assert_eq!(breaker.state(), State::Open);
    clock.advance(Duration::from_secs(10));
    let new_probe = breaker.try_acquire().unwrap();
    old_probe.record(Outcome::Failure); // late: ignored
    assert_eq!(breaker.state(), State::HalfOpen);
    new_probe.record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test]
async fn a_dropped_probe_gives_its_slot_back() {
    let clock = FakeClock::new();
    let breaker = tripped(&clock, 1);
    clock.advance(Duration::from_secs(10));
    let probe = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err());
    drop(probe); // e.g. the caller's future was cancelled
    breaker.try_acquire().unwrap().record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test]
async fn a_call_future_dropped_while_waiting_gives_its_probe_back() {
    let clock = FakeClock::new();
    let breaker = tripped(&clock, 1);
    clock.advance(Duration::from_secs(10));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = tokio::spawn({
        let breaker = breaker.clone();
        async move {
            breaker
                .call(async {
                    let _ = rx.await;
                    Ok::<_, ()>(())
                })
                .await
        }
    });
    // The spawned call holds the only probe once it has been polled.
    while breaker.try_acquire().is_ok_and(|p| {
        drop(p);
        true
    }) {
        tokio::task::yield_now().await;
    }
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    drop(tx);
    breaker.try_acquire().unwrap().record(Outcome::Success);
    assert_eq!(breaker.state(), State::Closed);
}

/// The call future records on its first poll when the call is ready at once, and from its
/// stored permit when the call waits: both must leave the breaker in the same state.
#[tokio::test]
async fn waiting_and_ready_calls_record_alike() {
    let outcomes = [true, false, false, true, false, false, false, true, false];
    let build = || {
        CircuitBreaker::builder("alike")
            .count_window(4)
            .minimum_calls(3)
            .failure_rate_threshold(60.0)
            .build()
            .unwrap()
    };
    let (ready, waiting) = (build(), build());
    for (i, ok) in outcomes.into_iter().enumerate() {
        let result = |ok: bool| if ok { Ok(()) } else { Err("boom") };
        let a = ready.call(async move { result(ok) }).await;
        let b = waiting
            .call(async move {
                tokio::task::yield_now().await;
                result(ok)
            })
            .await;
        assert_eq!(a.is_ok(), b.is_ok(), "result of call {i}");
        assert_eq!(ready.state(), waiting.state(), "state after call {i}");
        assert_eq!(
            ready.snapshot(),
            waiting.snapshot(),
            "window after call {i}"
        );
    }
    assert_eq!(ready.state(), State::Open);
}

#[tokio::test]
async fn slow_calls_are_counted_and_trip() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder("llm")
        .minimum_calls(4)
        .slow_call(Duration::from_secs(2), 50.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = breaker.subscribe();
    for i in 0..4u64 {
        let c = clock.clone();
        breaker
            .call(async move {
                c.advance(Duration::from_millis(if i % 2 == 0 { 2500 } else { 100 }));
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
    }
    assert_eq!(breaker.state(), State::Open, "2 of 4 calls slow");
    let mut slow = 0;
    let mut opened = 0;
    while let Ok(e) = events.try_recv() {
        match e {
            Event::SlowCall { elapsed, .. } => {
                assert_eq!(elapsed, Duration::from_millis(2500));
                slow += 1;
            }
            Event::Transition {
                to: State::Open,
                reason,
                ..
            } => {
                assert_eq!(reason, Some(TripReason::SlowCallRate));
                opened += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((slow, opened), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn per_call_timeout_fails_the_call_and_counts() {
    let breaker = CircuitBreaker::builder("db")
        .call_timeout(Duration::from_secs(1))
        .consecutive_failures(2)
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = breaker
            .call(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, ()>(())
            })
            .await;
        assert!(matches!(r, Err(Error::Timeout(d)) if d == Duration::from_secs(1)));
    }
    assert_eq!(breaker.snapshot().failures, 2);
    assert_eq!(breaker.state(), State::Open);
}

/// `call_with` runs on the same path as `call`: its future is made only once admitted, and
/// the per-call timeout, the classifier and the records are the same.
#[tokio::test(start_paused = true)]
async fn call_with_makes_its_future_only_when_admitted_and_times_out_alike() {
    let breaker = CircuitBreaker::builder("made")
        .call_timeout(Duration::from_secs(1))
        .consecutive_failures(2)
        .build()
        .unwrap();
    let made = AtomicUsize::new(0);
    let make = || {
        made.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, ()>(())
        }
    };
    let classify = |r: &Result<(), ()>| {
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    };
    for _ in 0..2 {
        let r = breaker.call_with(make, classify).await;
        assert!(
            matches!(r, Err(Error::Timeout(d)) if d == Duration::from_secs(1)),
            "{r:?}"
        );
    }
    assert_eq!(
        (made.load(Ordering::SeqCst), breaker.state()),
        (2, State::Open)
    );
    let r = breaker.call_with(make, classify).await;
    assert!(r.unwrap_err().is_rejected());
    assert_eq!(
        made.load(Ordering::SeqCst),
        2,
        "a rejected call is never made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_emitted_once_per_transition() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder("api")
        .count_window(10)
        .minimum_calls(1)
        .failure_rate_threshold(1.0)
        .open_wait(Duration::from_secs(1))
        .half_open_probes(1)
        .success_threshold(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = breaker.subscribe();
    // 64 failures at once: many callers see the trip rule fire, one transition happens.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let b = breaker.clone();
        tasks.push(tokio::spawn(async move {
            let _ = b.call(async { Err::<(), _>("boom") }).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    clock.advance(Duration::from_secs(1));
    breaker.call(async { Ok::<_, ()>(()) }).await.unwrap();
    let mut transitions = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Event::Transition { from, to, .. } = e {
            transitions.push((from, to));
        }
    }
    assert_eq!(
        transitions,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test]
async fn backoff_grows_the_open_wait_on_repeated_trips() {
    let clock = FakeClock::new();
    let breaker = CircuitBreaker::builder("x")
        .consecutive_failures(1)
        .open_wait(Duration::from_secs(1))
        .backoff(2.0, Duration::from_secs(3))
        .half_open_probes(1)
        .success_threshold(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().record(Outcome::Failure);
    for expected in [1, 2, 3, 3] {
        let e = breaker.try_acquire().unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(expected)));
        clock.advance(Duration::from_secs(expected));
        breaker.try_acquire().unwrap().record(Outcome::Failure); // probe fails
    }
    clock.advance(Duration::from_secs(3));
    breaker.try_acquire().unwrap().record(Outcome::Success);
    breaker.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(
        breaker.try_acquire().unwrap_err().retry_after(),
        Some(Duration::from_secs(1)),
        "closing resets the backoff"
    );
}

#[tokio::test]
async fn manual_states() {
    let breaker = CircuitBreaker::builder("m")
        .consecutive_failures(1)
        .build()
        .unwrap();
    breaker.disable();
    for _ in 0..10 {
        breaker.call(async { Err::<(), _>(()) }).await.unwrap_err();
    }
    assert_eq!(
        (breaker.state(), breaker.snapshot().calls),
        (State::Disabled, 0)
    );
    breaker.metrics_only();
    for _ in 0..10 {
        breaker.call(async { Err::<(), _>(()) }).await.unwrap_err();
    }
    assert_eq!(
        (breaker.state(), breaker.snapshot().failures),
        (State::MetricsOnly, 10)
    );
    breaker.force_open();
    assert!(matches!(
        breaker.call(async { Ok::<_, ()>(()) }).await,
        Err(Error::Rejected {
            state: State::ForcedOpen,
            ..
        })
    ));
    breaker.reset();
    assert_eq!(
        (breaker.state(), breaker.snapshot().calls),
        (State::Closed, 0)
    );
    breaker.call(async { Ok::<_, ()>(()) }).await.unwrap();
}

#[tokio::test]
async fn ignored_errors_do_not_count() {
    let breaker = CircuitBreaker::builder("c")
        .consecutive_failures(1)
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = breaker
            .call_classified(async { Err::<(), _>(404) }, |r: &Result<(), u16>| match r {
                Err(code) if *code < 500 => Outcome::Ignored,
                Err(_) => Outcome::Failure,
                Ok(()) => Outcome::Success,
            })
            .await;
        assert!(matches!(r, Err(Error::Inner(404))));
    }
    assert_eq!(
        (breaker.state(), breaker.snapshot().calls),
        (State::Closed, 0)
    );
}

#[tokio::test]
async fn fallback_answers_rejections_and_failures() {
    let breaker = CircuitBreaker::builder("f")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let v = breaker
        .call_with_fallback(async { Err::<&str, _>("down") }, |e| async move {
            assert!(matches!(e, Error::Inner("down")));
            "fallback after failure"
        })
        .await;
    assert_eq!(v, "fallback after failure");
    let v = breaker
        .call_with_fallback(async { Ok::<_, &str>("live") }, |e| async move {
            assert!(e.is_rejected());
            "fallback after rejection"
        })
        .await;
    assert_eq!(v, "fallback after rejection");
}

#[test]
fn invalid_config_is_an_error_not_a_panic() {
    let e = CircuitBreaker::builder("x")
        .success_threshold(9)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)));
    assert!(!e.is_transient());
    let e = CircuitBreaker::builder("").build().unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)));
}

#[tokio::test]
async fn registry_applies_overrides_and_reports_health() {
    let config: RegistryConfig = serde_json::from_value(serde_json::json!({
        "default": { "minimum_calls": 2, "open_wait": "30s" },
        "breakers": {
            "openai": { "call_timeout": "20s", "slow_call": { "duration": "8s", "rate_threshold": 80.0 } },
            "anthropic": {},
            "database": { "consecutive_failures": 3, "open_wait": "5s" },
            "redis": { "window": { "kind": "time", "seconds": 30 } }
        }
    }))
    .unwrap();
    let registry = Registry::new(config).unwrap();
    let db = registry.get("database").unwrap();
    assert_eq!(db.config().consecutive_failures, Some(3));
    assert_eq!(db.config().open_wait, Duration::from_secs(5));
    assert_eq!(db.config().minimum_calls, 2, "the default still applies");
    assert_eq!(
        registry.get("openai").unwrap().config().call_timeout,
        Some(Duration::from_secs(20))
    );
    for _ in 0..3 {
        let _ = db.call(async { Err::<(), _>(()) }).await;
    }
    let other = registry.get("payments").unwrap(); // not configured: the default
    other.call(async { Ok::<_, ()>(()) }).await.unwrap();
    let health = registry.health();
    let names: Vec<_> = health.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["anthropic", "database", "openai", "payments", "redis"]
    );
    let db = &health[1];
    // Two failures reach the minimum of 2 calls at 100 %: open; the third call is rejected.
    assert_eq!(
        (db.state, db.window.calls, db.failure_rate),
        (State::Open, 2, 100.0)
    );
    assert_eq!(health[3].window.calls, 1);
    // The same name gives the same breaker.
    registry.get("payments").unwrap().force_open();
    assert_eq!(other.state(), State::ForcedOpen);
}

#[test]
fn registry_rejects_an_invalid_override() {
    let config: RegistryConfig =
        toml::from_str("[breakers.bad]\nfailure_rate_threshold = 150.0\n").unwrap();
    let e = Registry::new(config).unwrap_err();
    assert!(e.to_string().contains("bad"), "{e}");
}

#[cfg(feature = "tower")]
mod tower_layer {
    use super::*;
    use palisade_circuit_breaker::layer::{CircuitBreakerLayer, rejection_response};
    use tower::{Service, ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn server_errors_trip_and_rejections_answer_fast_with_retry_after() {
        let clock = FakeClock::new();
        let breaker = CircuitBreaker::builder("upstream")
            .count_window(10)
            .minimum_calls(4)
            .open_wait(Duration::from_secs(7))
            .clock(clock.clone())
            .build()
            .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let mut svc = ServiceBuilder::new()
            .layer(CircuitBreakerLayer::new(breaker.clone()))
            .service_fn(move |req: http::Request<()>| {
                h.fetch_add(1, Ordering::SeqCst);
                let status = if req.uri().path() == "/fail" {
                    503
                } else {
                    404
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder().status(status).body(()).unwrap(),
                    )
                }
            });
        let req = |p: &str| http::Request::builder().uri(p).body(()).unwrap();
        for _ in 0..2 {
            let r = svc.ready().await.unwrap().call(req("/ok")).await.unwrap();
            assert_eq!(
                r.status(),
                404,
                "a 4xx is the client's problem, a success for the breaker"
            );
        }
        for _ in 0..2 {
            svc.ready().await.unwrap().call(req("/fail")).await.unwrap();
        }
        assert_eq!(breaker.state(), State::Open);
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(req("/ok"))
            .await
            .unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            hits.load(Ordering::SeqCst),
            4,
            "the rejected request never reached the service"
        );
        let res: http::Response<String> = rejection_response(&err).unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "7");
        // The same problem+json shape as the rate limiter's 429 and the key layer's 401/403.
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Service Unavailable");
        assert_eq!(body["status"], 503);
        assert_eq!(body["code"], "circuit_open");
        assert_eq!(body["state"], "open");
        assert_eq!(body["retry_after"], 7);
        assert_eq!(body["detail"], "The service is unavailable; retry in 7 s.");
    }
}
