//! One conformance suite for every `StateStore`: the same cases run against the memory store,
//! a real Redis and a 3-master Redis Cluster. Time is the store's own (real) clock, so the
//! cases use periods of a few hundred milliseconds.

use std::sync::Arc;
use std::time::Duration;

use palisade_circuit_breaker::{
    Backoff, Batch, Config, ManualOp, Outcome, Policy, ProbeGrant, Quorum, SlowCallRule, State,
    StateStore,
};

const WAIT: Duration = Duration::from_millis(250);

fn policy(f: impl FnOnce(&mut Config)) -> Policy {
    let mut c = Config {
        minimum_calls: 4,
        failure_rate_threshold: 50.0,
        open_wait: WAIT,
        half_open_probes: 2,
        success_threshold: 2,
        max_half_open_wait: Duration::from_secs(10),
        ..Config::default()
    };
    f(&mut c);
    c.validate().unwrap();
    Policy::from_config(&c)
}

fn batch(instance: &str, calls: u64, failures: u64, slow: u64, failing: bool) -> Batch {
    Batch::new(instance, calls, failures, slow, failing)
}

async fn sleep_past(d: Duration) {
    tokio::time::sleep(d + Duration::from_millis(60)).await;
}

async fn trips_on_failure_rate_after_minimum_calls(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|_| {});
    let s = store
        .flush(&name, &p, &batch("a", 2, 2, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed, "2 calls are below the minimum of 4");
    assert_eq!((s.window.calls, s.window.failures), (2, 2));
    let s = store
        .flush(&name, &p, &batch("b", 2, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "4 calls, 50 % failures: trip");
    assert_eq!(s.generation, 1);
    assert!(
        s.retry_after > Duration::ZERO && s.retry_after <= WAIT,
        "{:?}",
        s.retry_after
    );
    let again = store
        .flush(&name, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(
        (again.state, again.generation),
        (State::Open, 1),
        "a read changes nothing"
    );
}

async fn stays_closed_below_threshold(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|_| {});
    let s = store
        .flush(&name, &p, &batch("a", 10, 4, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed);
    assert_eq!((s.window.calls, s.window.failures), (10, 4));
}

async fn slow_rate_trips(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|c| {
        c.slow_call = Some(SlowCallRule {
            duration: Duration::from_secs(1),
            rate_threshold: 60.0,
        });
    });
    let s = store
        .flush(&name, &p, &batch("a", 10, 0, 5, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed);
    let s = store
        .flush(&name, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.window.slow, 5);
    let s = store
        .flush(&name, &p, &batch("a", 5, 0, 5, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "10 of 15 slow >= 60 %");
}

async fn half_open_probes_are_bounded_and_close(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|_| {});
    let open = store
        .flush(&name, &p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    assert_eq!(open.state, State::Open);
    let denied = store.acquire_probe(&name, &p, "early").await.unwrap();
    assert!(
        matches!(denied, ProbeGrant::Denied(ref s) if s.state == State::Open),
        "{denied:?}"
    );
    sleep_past(WAIT).await;
    let g1 = store.acquire_probe(&name, &p, "p1").await.unwrap();
    let g2 = store.acquire_probe(&name, &p, "p2").await.unwrap();
    let g3 = store.acquire_probe(&name, &p, "p3").await.unwrap();
    let ProbeGrant::Granted { generation } = g1 else {
        panic!("{g1:?}")
    };
    assert_eq!(g2, ProbeGrant::Granted { generation });
    assert!(
        matches!(g3, ProbeGrant::Denied(ref s) if s.state == State::HalfOpen),
        "{g3:?}"
    );
    // A late result of the previous generation changes nothing.
    let s = store
        .complete_probe(&name, &p, generation - 1, "old", Outcome::Failure)
        .await
        .unwrap();
    assert_eq!((s.state, s.generation), (State::HalfOpen, generation));
    // An ignored probe gives its permit back.
    store
        .complete_probe(&name, &p, generation, "p2", Outcome::Ignored)
        .await
        .unwrap();
    let g4 = store.acquire_probe(&name, &p, "p4").await.unwrap();
    assert_eq!(g4, ProbeGrant::Granted { generation });
    let s = store
        .complete_probe(&name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(s.state, State::HalfOpen);
    let s = store
        .complete_probe(&name, &p, generation, "p4", Outcome::Success)
        .await
        .unwrap();
    assert_eq!((s.state, s.generation), (State::Closed, generation + 1));
    assert_eq!(s.window.calls, 0, "closing starts a fresh window");
    // Late success after closing: nothing.
    let s = store
        .complete_probe(&name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!((s.state, s.generation), (State::Closed, generation + 1));
}

async fn failed_probe_reopens_with_backoff(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|c| {
        c.backoff = Some(Backoff {
            multiplier: 4.0,
            max_wait: Duration::from_secs(5),
        });
    });
    store
        .flush(&name, &p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    sleep_past(WAIT).await;
    let ProbeGrant::Granted { generation } = store.acquire_probe(&name, &p, "p").await.unwrap()
    else {
        panic!("no probe")
    };
    let s = store
        .complete_probe(&name, &p, generation, "p", Outcome::Failure)
        .await
        .unwrap();
    assert_eq!(s.state, State::Open);
    assert!(
        s.retry_after > WAIT * 3,
        "second trip waits 4x: {:?}",
        s.retry_after
    );
}

async fn max_half_open_wait_reopens(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|c| c.max_half_open_wait = Duration::from_millis(200));
    store
        .flush(&name, &p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    sleep_past(WAIT).await;
    assert!(matches!(
        store.acquire_probe(&name, &p, "p").await.unwrap(),
        ProbeGrant::Granted { .. }
    ));
    sleep_past(Duration::from_millis(200)).await;
    let s = store
        .flush(&name, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "a half-open period never sticks");
}

async fn expired_leases_are_handed_out_again(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|c| {
        c.half_open_probes = 1;
        c.success_threshold = 1;
        c.shared.probe_lease = Duration::from_millis(150);
    });
    store
        .flush(&name, &p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    sleep_past(WAIT).await;
    assert!(matches!(
        store.acquire_probe(&name, &p, "dead").await.unwrap(),
        ProbeGrant::Granted { .. }
    ));
    assert!(matches!(
        store.acquire_probe(&name, &p, "x").await.unwrap(),
        ProbeGrant::Denied(_)
    ));
    sleep_past(Duration::from_millis(150)).await;
    assert!(matches!(
        store.acquire_probe(&name, &p, "y").await.unwrap(),
        ProbeGrant::Granted { .. }
    ));
}

/// Only a completion that holds a live lease counts: a made-up lease id, a duplicate report
/// and a report after the lease expired change nothing (the lease may have been handed to
/// another instance meanwhile).
async fn only_a_held_lease_completes_a_probe(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|c| {
        c.half_open_probes = 3;
        c.success_threshold = 2;
        c.shared.probe_lease = Duration::from_millis(150);
    });
    store
        .flush(&name, &p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    sleep_past(WAIT).await;
    let ProbeGrant::Granted { generation } = store.acquire_probe(&name, &p, "p1").await.unwrap()
    else {
        panic!("no probe")
    };
    assert!(matches!(
        store.acquire_probe(&name, &p, "p2").await.unwrap(),
        ProbeGrant::Granted { .. }
    ));
    for (lease, outcome) in [
        ("made-up", Outcome::Success),
        ("made-up-too", Outcome::Failure),
    ] {
        let s = store
            .complete_probe(&name, &p, generation, lease, outcome)
            .await
            .unwrap();
        assert_eq!(
            (s.state, s.generation),
            (State::HalfOpen, generation),
            "a lease nobody was granted counts for nothing ({outcome:?})"
        );
    }
    let s = store
        .complete_probe(&name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(s.state, State::HalfOpen, "one success of the two needed");
    let s = store
        .complete_probe(&name, &p, generation, "p1", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(s.state, State::HalfOpen, "a duplicate report counts once");
    sleep_past(Duration::from_millis(150)).await;
    let s = store
        .complete_probe(&name, &p, generation, "p2", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(
        s.state,
        State::HalfOpen,
        "a report after its lease expired is late"
    );
    let ProbeGrant::Granted { generation: g } = store.acquire_probe(&name, &p, "p3").await.unwrap()
    else {
        panic!("p2's expired lease and p1's success leave room for a third probe")
    };
    let s = store
        .complete_probe(&name, &p, g, "p3", Outcome::Success)
        .await
        .unwrap();
    assert_eq!(
        (s.state, s.generation),
        (State::Closed, generation + 1),
        "the second held lease closes"
    );
}

async fn quorum_needs_enough_failing_instances(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|c| {
        c.shared.quorum = Some(Quorum {
            min_instances: 2,
            min_percent: 50.0,
        });
    });
    for i in ["ok1", "ok2"] {
        store
            .flush(&name, &p, &batch(i, 0, 0, 0, false))
            .await
            .unwrap();
    }
    let s = store
        .flush(&name, &p, &batch("bad1", 10, 10, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed, "one bad node cannot open the fleet");
    let s = store
        .flush(&name, &p, &batch("bad2", 1, 1, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open, "2 of 4 instances failing");
}

async fn manual_control_is_fleet_wide(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|_| {});
    let s = store.apply(&name, &p, ManualOp::ForceOpen).await.unwrap();
    assert_eq!(s.state, State::ForcedOpen);
    let s = store
        .flush(&name, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::ForcedOpen);
    let s = store.apply(&name, &p, ManualOp::Disable).await.unwrap();
    assert_eq!(s.state, State::Disabled);
    let s = store
        .flush(&name, &p, &batch("a", 100, 100, 0, true))
        .await
        .unwrap();
    assert_eq!(s.state, State::Disabled, "disabled never trips");
    let s = store.apply(&name, &p, ManualOp::MetricsOnly).await.unwrap();
    assert_eq!(s.state, State::MetricsOnly);
    let s = store.apply(&name, &p, ManualOp::Reset).await.unwrap();
    assert_eq!(
        (s.state, s.generation, s.window.calls),
        (State::Closed, 4, 0)
    );
}

async fn hostile_names_are_isolated(store: Arc<dyn StateStore>, name: String) {
    let p = policy(|_| {});
    let evil = format!("{name}}}:s");
    store
        .flush(&evil, &p, &batch("a", 4, 4, 0, true))
        .await
        .unwrap();
    let s = store
        .flush(&name, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed);
    let s = store
        .flush(&evil, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Open);
    let braces = format!("{{{name}}}");
    let s = store
        .flush(&braces, &p, &batch("a", 0, 0, 0, false))
        .await
        .unwrap();
    assert_eq!(s.state, State::Closed);
}

/// Run every case against `store`, concurrently, each on its own breaker name.
pub async fn run(store: Arc<dyn StateStore>, tag: &str) {
    let n = |case: &str| format!("{tag}-{case}");
    tokio::join!(
        trips_on_failure_rate_after_minimum_calls(store.clone(), n("trip")),
        stays_closed_below_threshold(store.clone(), n("below")),
        slow_rate_trips(store.clone(), n("slow")),
        half_open_probes_are_bounded_and_close(store.clone(), n("probes")),
        failed_probe_reopens_with_backoff(store.clone(), n("backoff")),
        max_half_open_wait_reopens(store.clone(), n("maxhalf")),
        expired_leases_are_handed_out_again(store.clone(), n("lease")),
        only_a_held_lease_completes_a_probe(store.clone(), n("held")),
        quorum_needs_enough_failing_instances(store.clone(), n("quorum")),
        manual_control_is_fleet_wide(store.clone(), n("manual")),
        hostile_names_are_isolated(store.clone(), n("names")),
    );
}
