//! `Secrets` on a fake clock: cache, stale-while-revalidate, single flight, the resurrect
//! window, denials, the failure modes, provider expiry, the chain, rotation, `with_secret`,
//! versions, health and audit events. Outages here come from `testing::Switch`; the drills
//! on a real, killed Redis are in tests/redis.rs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_secret_store::testing::Switch;
use palisade_secret_store::{
    AuditKind, Error, ExposeSecret, FailureMode, FakeClock, MemoryProvider, Provider, Refused,
    RotationSource, SecretName, Secrets, SecretsBuilder, UseError, Version,
};

const TTL: Duration = Duration::from_secs(3600);

fn name(s: &str) -> SecretName {
    SecretName::new(s).unwrap()
}

fn memory(clock: &FakeClock) -> Arc<Switch<MemoryProvider>> {
    let m = MemoryProvider::new()
        .with_clock(clock.clone())
        .with_secret("db", "first-password")
        .unwrap();
    Arc::new(Switch::new(m))
}

fn builder(clock: &FakeClock) -> SecretsBuilder {
    Secrets::builder()
        .clock(clock.clone())
        .refresh_jitter(0.0)
        .ttl(TTL)
        .stale_while_revalidate(Duration::from_secs(60))
        .resurrect(Duration::from_secs(600))
        .retry_interval(Duration::from_secs(5))
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn fresh_values_come_from_the_cache() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    let a = s.get("db").await.unwrap();
    let b = s.get("db").await.unwrap();
    assert_eq!(p.calls(), 1);
    assert!(
        palisade_secret_store::Secret::ptr_eq(&a, &b),
        "one loaded value, shared"
    );
    clock.advance(TTL - Duration::from_secs(1));
    s.get("db").await.unwrap();
    assert_eq!(p.calls(), 1);
}

#[tokio::test]
async fn stale_values_are_served_while_one_refresh_runs() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    s.get("db").await.unwrap();
    p.inner()
        .insert(&name("db"), "second-password".into(), None)
        .unwrap();
    clock.advance(TTL);
    for _ in 0..10 {
        let v = s.get("db").await.unwrap();
        assert_eq!(v.expose_secret(), "first-password", "stale, served at once");
    }
    settle().await;
    assert_eq!(p.calls(), 2, "ten stale reads, one refresh");
    assert_eq!(
        s.get("db").await.unwrap().expose_secret(),
        "second-password"
    );
    // Past the stale window, the read waits for the load.
    clock.advance(TTL + Duration::from_secs(61));
    p.inner()
        .insert(&name("db"), "third-password".into(), None)
        .unwrap();
    assert_eq!(s.get("db").await.unwrap().expose_secret(), "third-password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_reads_load_once() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    let reads = (0..64).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.get("db").await.unwrap() })
    });
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap().expose_secret(), "first-password");
    }
    assert_eq!(p.calls(), 1);
}

#[tokio::test]
async fn a_transient_outage_serves_the_last_known_good_value_for_the_resurrect_window() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    let mut audit = s.audit_events();
    s.get("db").await.unwrap();
    p.fail_transiently();
    clock.advance(TTL + Duration::from_secs(61)); // past TTL and the stale window
    let v = s.get("db").await.unwrap();
    assert_eq!(v.expose_secret(), "first-password");
    assert_eq!(p.calls(), 2);
    // Within the retry interval, no new provider call.
    s.get("db").await.unwrap();
    assert_eq!(p.calls(), 2);
    // 599 s after the first failure: still served (retries go to the background).
    clock.advance(Duration::from_secs(599));
    assert_eq!(s.get("db").await.unwrap().expose_secret(), "first-password");
    settle().await;
    // 600 s after the first failure: the window is over.
    clock.advance(Duration::from_secs(1));
    let e = s.get("db").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let kinds: Vec<AuditKind> = std::iter::from_fn(|| audit.try_recv().ok())
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&AuditKind::Resurrected), "{kinds:?}");
    assert!(kinds.contains(&AuditKind::Failed), "{kinds:?}");
    // The provider comes back: fresh again.
    p.heal();
    assert_eq!(s.get("db").await.unwrap().expose_secret(), "first-password");
    assert_eq!(s.health().await.resurrected_secrets, 0);
}

#[tokio::test]
async fn a_denial_is_never_masked_by_a_cached_value() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock)
        .failure_mode(FailureMode::FailOpen)
        .shared_provider(p.clone())
        .build()
        .unwrap();
    s.get("db").await.unwrap();
    p.deny();
    clock.advance(TTL + Duration::from_secs(61));
    let e = s.get("db").await.unwrap_err();
    assert!(e.is_denied(), "{e}");
    // And the value is gone from the cache: it stays an error even when asked again.
    assert!(s.get("db").await.unwrap_err().is_denied());
    assert!(s.cached("db").is_none());
}

#[tokio::test]
async fn a_denial_during_the_stale_window_stops_serving() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    s.get("db").await.unwrap();
    p.deny();
    clock.advance(TTL);
    s.get("db").await.unwrap(); // stale: served, one background refresh is denied
    settle().await;
    assert!(s.get("db").await.unwrap_err().is_denied());
}

#[tokio::test]
async fn fail_closed_and_fail_open() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let closed = builder(&clock)
        .failure_mode(FailureMode::FailClosed)
        .shared_provider(p.clone())
        .build()
        .unwrap();
    let open = builder(&clock)
        .failure_mode(FailureMode::FailOpen)
        .shared_provider(p.clone())
        .build()
        .unwrap();
    closed.get("db").await.unwrap();
    open.get("db").await.unwrap();
    p.fail_transiently();
    clock.advance(TTL + Duration::from_secs(61));
    assert!(closed.get("db").await.unwrap_err().is_transient());
    open.get("db").await.unwrap();
    clock.advance(Duration::from_secs(30 * 86_400));
    assert_eq!(
        open.get("db").await.unwrap().expose_secret(),
        "first-password"
    );
}

#[tokio::test]
async fn a_provider_expiry_is_never_passed() {
    let clock = FakeClock::new();
    let m = MemoryProvider::new().with_clock(clock.clone());
    let exp = SystemTime::UNIX_EPOCH
        + Duration::from_micros(palisade_secret_store::Clock::now_micros(&clock))
        + Duration::from_secs(100);
    m.insert(&name("token"), "short-lived-token".into(), Some(exp))
        .unwrap();
    let p = Arc::new(Switch::new(m));
    let s = builder(&clock)
        .failure_mode(FailureMode::FailOpen)
        .shared_provider(p.clone())
        .build()
        .unwrap();
    assert_eq!(s.get("token").await.unwrap().expires_at(), Some(exp));
    clock.advance(Duration::from_secs(99));
    s.get("token").await.unwrap();
    assert_eq!(p.calls(), 1);
    p.fail_transiently();
    clock.advance(Duration::from_secs(1));
    assert!(
        s.get("token").await.is_err(),
        "expired: not even FailOpen serves it"
    );
}

#[tokio::test]
async fn the_chain_falls_through_misses_and_outages_but_not_denials() {
    let clock = FakeClock::new();
    let first = Arc::new(Switch::new(
        MemoryProvider::new()
            .named("primary")
            .with_secret("only-first", "value-from-first")
            .unwrap()
            .with_secret("both", "both-from-first")
            .unwrap(),
    ));
    let second = Arc::new(Switch::new(
        MemoryProvider::new()
            .named("fallback")
            .with_secret("both", "both-from-second")
            .unwrap()
            .with_secret("only-second", "value-from-second")
            .unwrap(),
    ));
    let s = builder(&clock)
        .shared_provider(first.clone())
        .shared_provider(second.clone())
        .build()
        .unwrap();
    assert_eq!(s.get("both").await.unwrap().provider(), "primary");
    assert_eq!(s.get("only-second").await.unwrap().provider(), "fallback");
    first.fail_transiently();
    let v = s.refresh("both").await.unwrap();
    assert_eq!(
        (v.provider(), v.expose_secret()),
        ("fallback", "both-from-second")
    );
    first.deny();
    assert!(s.refresh("both").await.unwrap_err().is_denied());
    first.heal();
    second.fail_transiently();
    let e = s.get("nowhere").await.unwrap_err();
    assert!(
        e.is_transient(),
        "a miss with a provider down is not `not found`: {e}"
    );
    second.heal();
    assert!(s.get("nowhere").await.unwrap_err().is_not_found());
    assert!(matches!(
        s.get("../x").await,
        Err(Error::InvalidName { .. })
    ));
}

#[tokio::test]
async fn rotation_writes_a_version_keeps_the_previous_and_announces_it() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    let mut rotations = s.rotations();
    let v1 = s.get("db").await.unwrap();
    let v2 = s.rotate("db", "second-password".into()).await.unwrap();
    assert_ne!(v1.version(), v2.version());
    assert_eq!(
        s.get("db").await.unwrap().expose_secret(),
        "second-password"
    );
    assert_eq!(
        s.previous("db").await.unwrap().expose_secret(),
        "first-password"
    );
    assert_eq!(
        s.get_version("db", v1.version())
            .await
            .unwrap()
            .expose_secret(),
        "first-password"
    );
    assert!(rotations.has_changed().unwrap());
    let r = rotations.borrow_and_update().clone().unwrap();
    assert_eq!(r.source, RotationSource::Written);
    assert_eq!(
        (r.previous.as_ref(), &r.current),
        (Some(v1.version()), v2.version())
    );
    // A version written elsewhere is observed by the next refresh.
    p.inner()
        .insert(&name("db"), "third-password".into(), None)
        .unwrap();
    s.refresh("db").await.unwrap();
    let r = rotations.borrow_and_update().clone().unwrap();
    assert_eq!(r.source, RotationSource::Observed);
    assert_eq!(r.current, Version::from(3));
    assert_eq!(
        s.previous("db").await.unwrap().expose_secret(),
        "second-password"
    );
    assert!(
        s.get_version("db", &Version::from(99))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn rotation_needs_a_writable_provider_that_is_not_shadowed() {
    let clock = FakeClock::new();
    let env = palisade_secret_store::EnvProvider::from_vars("", [("DB", "from-env")]);
    let s = builder(&clock)
        .provider(env)
        .provider(MemoryProvider::new())
        .build()
        .unwrap();
    let e = s.rotate("db", "x".into()).await.unwrap_err();
    assert!(e.to_string().contains("held by `env`"), "{e}");
    let read_only = builder(&clock)
        .provider(palisade_secret_store::EnvProvider::from_vars(
            "",
            [("A", "b")],
        ))
        .build()
        .unwrap();
    assert!(matches!(
        read_only.rotate("a", "x".into()).await,
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn with_secret_tries_the_previous_version_then_a_fresh_load() {
    let clock = FakeClock::new();
    let p = memory(&clock);
    let s = builder(&clock).shared_provider(p.clone()).build().unwrap();
    s.rotate("db", "second-password".into()).await.unwrap();
    // The database still has the old password: the previous version works.
    let tried = std::sync::Mutex::new(Vec::new());
    let r = s
        .with_secret("db", |pw| {
            tried.lock().unwrap().push(pw.expose_secret().to_owned());
            async move {
                if pw.expose_secret() == "first-password" {
                    Ok("connected")
                } else {
                    Err(Refused::Credential("28P01"))
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(r, "connected");
    assert_eq!(
        *tried.lock().unwrap(),
        ["second-password", "first-password"]
    );
    // Rotated elsewhere, not seen yet: the forced refresh finds it.
    p.inner()
        .insert(&name("db"), "third-password".into(), None)
        .unwrap();
    tried.lock().unwrap().clear();
    let r = s
        .with_secret("db", |pw| {
            tried.lock().unwrap().push(pw.expose_secret().to_owned());
            async move {
                if pw.expose_secret() == "third-password" {
                    Ok(1)
                } else {
                    Err(Refused::Credential(401))
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(r, 1);
    assert_eq!(
        *tried.lock().unwrap(),
        ["second-password", "first-password", "third-password"]
    );
    // Nothing works: the last refusal; another failure is passed on without retries.
    let e = s
        .with_secret("db", |_| async { Err::<(), _>(Refused::Credential(403)) })
        .await
        .unwrap_err();
    assert!(matches!(e, UseError::Refused(403)));
    let e = s
        .with_secret("db", |_| async { Err::<(), _>(Refused::Other("timeout")) })
        .await
        .unwrap_err();
    assert!(matches!(e, UseError::Other("timeout")));
    assert!(matches!(
        s.with_secret("missing", |_| async { Ok::<_, Refused<()>>(()) }).await,
        Err(UseError::Secret(e)) if e.is_not_found()
    ));
}

#[tokio::test]
async fn health_reports_each_provider() {
    let clock = FakeClock::new();
    let up = memory(&clock);
    let down = Arc::new(Switch::new(MemoryProvider::new().named("backup")));
    down.fail_transiently();
    let s = builder(&clock)
        .shared_provider(up)
        .shared_provider(down)
        .build()
        .unwrap();
    s.get("db").await.unwrap();
    let h = s.health().await;
    assert!(!h.healthy);
    assert_eq!(h.cached_secrets, 1);
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(json["providers"][0]["name"], "memory");
    assert_eq!(json["providers"][0]["healthy"], true);
    assert_eq!(json["providers"][1]["healthy"], false);
    assert!(
        json["providers"][1]["error"]
            .as_str()
            .unwrap()
            .contains("switched off")
    );
}

#[tokio::test]
async fn builder_checks_its_settings() {
    assert!(matches!(
        Secrets::builder().build(),
        Err(Error::InvalidConfig(_))
    ));
    let p = MemoryProvider::new();
    assert!(matches!(
        Secrets::builder().provider(p).refresh_jitter(2.0).build(),
        Err(Error::InvalidConfig(_))
    ));
    let s = Secrets::builder()
        .provider(MemoryProvider::new().with_secret("a", "value-a").unwrap())
        .max_secrets(1)
        .build()
        .unwrap();
    s.get("a").await.unwrap();
    assert!(matches!(s.get("b").await, Err(Error::InvalidConfig(_))));
    // Names that are not found take no room: they never fill the cache.
    let s = Secrets::builder()
        .provider(MemoryProvider::new().with_secret("a", "value-a").unwrap())
        .max_secrets(2)
        .build()
        .unwrap();
    for i in 0..10 {
        assert!(
            s.get(&format!("probe-{i}"))
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
    s.get("a").await.unwrap();
    assert_eq!(s.health().await.cached_secrets, 1);
    let provider: &dyn Provider = &MemoryProvider::new();
    assert_eq!(provider.name(), "memory");
}

#[test]
fn config_reads_from_toml_with_humantime_and_refuses_unknown_fields() {
    let c: palisade_secret_store::SecretsConfig = toml::from_str(
        "ttl = \"10m\"\nstale_while_revalidate = \"30s\"\nresurrect = \"1h\"\nfailure_mode = \"fail_closed\"\nsecret_name_labels = true\n",
    )
    .unwrap();
    assert_eq!(c.ttl, Duration::from_secs(600));
    assert_eq!(c.failure_mode, FailureMode::FailClosed);
    assert!(toml::from_str::<palisade_secret_store::SecretsConfig>("tll = \"1h\"").is_err());
}
