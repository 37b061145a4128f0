//! The public conformance suite for any [`Store`] (feature `testing`): the same cases run
//! against [`MemoryStore`](crate::MemoryStore), a real Redis, a 3-master Redis Cluster and
//! a TLS Redis in this crate's tests, and against your own backend in yours.
//!
//! Each case takes a fresh store and drives it through an [`ApiKeys`] on a
//! [`FakeClock`] (verify cache off, so every read reaches the store), so expiry, grace
//! periods and refills need no sleeping. [`store_conformance!`](crate::store_conformance)
//! turns every case into its own `#[tokio::test]`:
//!
//! ```text
//! palisade_apikey::store_conformance!(async {
//!     palisade_apikey::testing::Fixture::new(MyStore::connect().await, ())
//! });
//! ```

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    ApiKeys, CreditOutcome, Denial, Env, Error, FakeClock, KeyId, KeySpec, KeyStatus, Pepper,
    Peppers, Refill, Store, Usage, Verification, VerifyRequest,
};

/// A store under test and whatever must live as long as it (a server, a cluster).
#[allow(missing_debug_implementations)]
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn Store>,
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    /// `store`, keeping `guard` alive for the test.
    pub fn new(store: impl Store + 'static, guard: impl Any + Send) -> Self {
        Self {
            store: Arc::new(store),
            _guard: Box::new(guard),
        }
    }
}

/// One `#[tokio::test]` per conformance case; `$make` is an `async` block giving a
/// [`Fixture`].
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            create_then_verify_round_trips_every_field,
            insert_refuses_a_taken_id,
            unknown_ids_read_as_none,
            a_wrong_secret_reads_as_not_found,
            revoke_is_idempotent_and_denies,
            expiry_denies,
            rotation_keeps_the_old_key_for_its_grace_period,
            rotation_needs_an_active_key,
            scopes_can_be_replaced,
            list_by_owner_keeps_owners_apart,
            credits_charge_refuse_and_refill,
            credits_are_exact_under_concurrency,
            idempotent_charges_happen_once,
            charging_a_revoked_key_charges_nothing,
            ip_allowlist_is_enforced,
            usage_is_batched_and_flushed,
            a_key_moves_to_the_current_pepper_on_use,
            health_answers
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: $crate::testing::Fixture = $make.await;
                $crate::testing::$case(fixture.store.clone()).await;
            }
        )+
    };
}

fn peppers() -> Peppers {
    Peppers::new(Pepper::new(1, *b"conformance pepper, version one!").expect("pepper"))
}

/// An [`ApiKeys`] over `store` with the verify cache off and a fake clock.
pub fn service(store: Arc<dyn Store>, clock: &FakeClock) -> ApiKeys {
    service_with(store, clock, peppers())
}

fn service_with(store: Arc<dyn Store>, clock: &FakeClock, peppers: Peppers) -> ApiKeys {
    ApiKeys::builder(peppers)
        .shared_store(store)
        .cache_ttl(Duration::ZERO)
        .clock(clock.clone())
        .build()
        .expect("service")
}

fn denial(v: &Verification) -> Option<Denial> {
    v.denial()
}

/// A key keeps every field through the store; verification checks the scope.
pub async fn create_then_verify_round_trips_every_field(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let created = keys
        .create(
            KeySpec::new("owner {1}", "CI: deploys")
                .scopes(["deploy:*", "read:logs"])
                .env(Env::Test)
                .expires_in(Duration::from_secs(3600))
                .metadata("plan", "pro")
                .metadata("emoji", "🔑")
                .rate_limit_policy("premium")
                .allowed_ips(["10.0.0.0/8", "2001:db8::1"])
                .credits(
                    50,
                    Some(Refill {
                        amount: 50,
                        interval: Duration::from_secs(86_400),
                    }),
                ),
        )
        .await
        .expect("create");
    let text = created.key.expose_secret();
    assert!(text.starts_with("pk_test_"), "{text}");
    let stored = keys.get(&created.record.id).await.unwrap().expect("stored");
    assert_eq!(stored, created.record, "every field round-trips");
    assert_eq!(stored.hash, created.record.hash);
    let req = VerifyRequest::new()
        .scope("deploy:prod")
        .ip("10.1.2.3".parse().unwrap());
    let v = keys.verify_with(text, &req).await.unwrap();
    let v = v.verified().expect("verified");
    assert_eq!(v.record.owner, "owner {1}");
    assert_eq!(v.record.rate_limit_policy.as_deref(), Some("premium"));
    assert_eq!(v.credits_remaining, Some(49));
    let other = keys
        .verify_with(text, &req.scope("billing:read"))
        .await
        .unwrap();
    assert_eq!(denial(&other), Some(Denial::InsufficientScope));
}

/// `insert` of an existing id changes nothing.
pub async fn insert_refuses_a_taken_id(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store.clone(), &clock);
    let created = keys.create(KeySpec::new("o", "first")).await.unwrap();
    let mut copy = created.record.clone();
    copy.owner = "intruder".into();
    assert!(!store.insert(&copy).await.unwrap());
    assert_eq!(
        store.get(&created.record.id).await.unwrap().unwrap().owner,
        "o"
    );
}

/// Unknown ids are `None`/`NotFound` everywhere.
pub async fn unknown_ids_read_as_none(store: Arc<dyn Store>) {
    let id: KeyId = "ZZZZZZzzzzzzzzzz".parse().unwrap();
    assert!(store.get(&id).await.unwrap().is_none());
    assert!(store.revoke(&id, 1).await.unwrap().is_none());
    assert!(
        store
            .update_scopes(&id, &crate::Scopes::default())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.charge(&id, 1, None, 1).await.unwrap(),
        CreditOutcome::NotFound
    );
    store.record_usage(&[Usage::new(id, 3, 1)]).await.unwrap();
    store.rehash(&id, 1, 2, &[0; 32]).await.unwrap();
    assert!(
        store.get(&id).await.unwrap().is_none(),
        "nothing was created"
    );
    assert!(store.list_by_owner("nobody").await.unwrap().is_empty());
}

/// A key with a valid checksum but another secret is refused like an unknown id.
pub async fn a_wrong_secret_reads_as_not_found(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let created = keys.create(KeySpec::new("o", "k")).await.unwrap();
    let r = &created.record;
    let forged = crate::key::format_key("pk", r.env, &r.id, 1, b"0123456789abcdefghijABCDEFGHIJ01");
    assert_eq!(
        denial(&keys.verify(&forged, "").await.unwrap()),
        Some(Denial::NotFound)
    );
    let unknown = crate::key::format_key(
        "pk",
        r.env,
        &"AAAAAAAAAAAAAAAA".parse().unwrap(),
        1,
        b"0123456789abcdefghijABCDEFGHIJ01",
    );
    assert_eq!(
        denial(&keys.verify(&unknown, "").await.unwrap()),
        Some(Denial::NotFound)
    );
    assert!(
        keys.verify(created.key.expose_secret(), "")
            .await
            .unwrap()
            .is_verified()
    );
}

/// Revocation denies at once and keeps its first time.
pub async fn revoke_is_idempotent_and_denies(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let created = keys.create(KeySpec::new("o", "k")).await.unwrap();
    let first = keys.revoke(&created.record.id).await.unwrap();
    assert_eq!(first.status, KeyStatus::Revoked);
    clock.advance(Duration::from_secs(5));
    let second = keys.revoke(&created.record.id).await.unwrap();
    assert_eq!(second.revoked_at, first.revoked_at);
    assert_eq!(
        denial(&keys.verify(created.key.expose_secret(), "").await.unwrap()),
        Some(Denial::Revoked)
    );
    let unknown: KeyId = "ZZZZZZzzzzzzzzzy".parse().unwrap();
    assert!(matches!(keys.revoke(&unknown).await, Err(Error::NotFound)));
}

/// A key past its expiry is refused.
pub async fn expiry_denies(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let created = keys
        .create(KeySpec::new("o", "k").expires_in(Duration::from_secs(60)))
        .await
        .unwrap();
    let text = created.key.expose_secret();
    clock.advance(Duration::from_secs(59));
    assert!(keys.verify(text, "").await.unwrap().is_verified());
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        denial(&keys.verify(text, "").await.unwrap()),
        Some(Denial::Expired)
    );
    let r = keys.get(&created.record.id).await.unwrap().unwrap();
    assert_eq!(r.status_at(clock_now(&clock)), KeyStatus::Expired);
}

fn clock_now(clock: &FakeClock) -> u64 {
    use crate::Clock;
    clock.now_micros()
}

/// The old key works (reported as a grace use) until its grace ends; the new one works.
pub async fn rotation_keeps_the_old_key_for_its_grace_period(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let old = keys
        .create(
            KeySpec::new("o", "k")
                .scopes(["read:*"])
                .expires_in(Duration::from_secs(1000)),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(100));
    let new = keys
        .rotate(&old.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(new.record.id.family(), old.record.id.family());
    assert_eq!(new.record.rotated_from, Some(old.record.id));
    assert_eq!(new.record.scopes, old.record.scopes);
    assert_eq!(
        new.record.expires_at.unwrap() - new.record.created_at,
        1_000_000_000,
        "the same lifetime length"
    );
    let o = keys.get(&old.record.id).await.unwrap().unwrap();
    assert_eq!(o.status, KeyStatus::Rotating);
    assert_eq!(o.rotated_to, Some(new.record.id));
    let v = keys
        .verify(old.key.expose_secret(), "read:x")
        .await
        .unwrap();
    assert!(v.verified().expect("in grace").in_grace);
    let v = keys
        .verify(new.key.expose_secret(), "read:x")
        .await
        .unwrap();
    assert!(!v.verified().expect("new key").in_grace);
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        denial(&keys.verify(old.key.expose_secret(), "").await.unwrap()),
        Some(Denial::Expired)
    );
    assert!(
        keys.verify(new.key.expose_secret(), "")
            .await
            .unwrap()
            .is_verified()
    );
}

/// Only an active key can be rotated.
pub async fn rotation_needs_an_active_key(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let a = keys.create(KeySpec::new("o", "a")).await.unwrap();
    keys.rotate(&a.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        keys.rotate(&a.record.id, Duration::from_secs(60)).await,
        Err(Error::InvalidState("rotating"))
    ));
    let b = keys.create(KeySpec::new("o", "b")).await.unwrap();
    keys.revoke(&b.record.id).await.unwrap();
    assert!(matches!(
        keys.rotate(&b.record.id, Duration::ZERO).await,
        Err(Error::InvalidState("revoked"))
    ));
    let unknown: KeyId = "ZZZZZZzzzzzzzzzx".parse().unwrap();
    assert!(matches!(
        keys.rotate(&unknown, Duration::ZERO).await,
        Err(Error::NotFound)
    ));
}

/// `update_scopes` replaces the scopes.
pub async fn scopes_can_be_replaced(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let k = keys
        .create(KeySpec::new("o", "k").scopes(["read:*"]))
        .await
        .unwrap();
    let text = k.key.expose_secret();
    assert!(keys.verify(text, "read:a").await.unwrap().is_verified());
    let r = keys.update_scopes(&k.record.id, ["write:a"]).await.unwrap();
    assert_eq!(r.scopes.iter().collect::<Vec<_>>(), ["write:a"]);
    assert_eq!(
        denial(&keys.verify(text, "read:a").await.unwrap()),
        Some(Denial::InsufficientScope)
    );
    assert!(keys.verify(text, "write:a").await.unwrap().is_verified());
    assert!(matches!(
        keys.update_scopes(&k.record.id, ["bad scope"]).await,
        Err(Error::InvalidConfig(_))
    ));
}

/// Owners (even ones whose names look alike once encoded) never see each other's keys.
pub async fn list_by_owner_keeps_owners_apart(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let a1 = keys.create(KeySpec::new("a}b", "1")).await.unwrap();
    let a2 = keys.create(KeySpec::new("a}b", "2")).await.unwrap();
    let b = keys.create(KeySpec::new("a%7Db", "3")).await.unwrap();
    let rotated = keys
        .rotate(&a1.record.id, Duration::from_secs(1))
        .await
        .unwrap();
    let mut want = vec![a1.record.id, a2.record.id, rotated.record.id];
    want.sort();
    let got: Vec<KeyId> = keys
        .list_by_owner("a}b")
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, want);
    let got: Vec<KeyId> = keys
        .list_by_owner("a%7Db")
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, [b.record.id]);
}

/// Credits go down by the cost, a denial takes nothing, and a refill tops up.
pub async fn credits_charge_refuse_and_refill(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let k = keys
        .create(KeySpec::new("o", "metered").credits(
            5,
            Some(Refill {
                amount: 5,
                interval: Duration::from_secs(3600),
            }),
        ))
        .await
        .unwrap();
    let text = k.key.expose_secret();
    let v = keys
        .verify_with(text, &VerifyRequest::new().cost(3))
        .await
        .unwrap();
    assert_eq!(v.verified().unwrap().credits_remaining, Some(2));
    let v = keys
        .verify_with(text, &VerifyRequest::new().cost(3))
        .await
        .unwrap();
    assert_eq!(v.denial(), Some(Denial::OutOfCredits));
    let v = keys
        .verify_with(text, &VerifyRequest::new().cost(0))
        .await
        .unwrap();
    assert!(v.is_verified(), "cost 0 checks without spending");
    let v = keys.verify(text, "").await.unwrap();
    assert_eq!(v.verified().unwrap().credits_remaining, Some(1));
    clock.advance(Duration::from_secs(3600));
    let v = keys.verify(text, "").await.unwrap();
    assert_eq!(
        v.verified().unwrap().credits_remaining,
        Some(4),
        "refilled to 5, then 1 spent"
    );
}

/// 200 concurrent charges of 1 on a balance of 100: exactly 100 succeed.
pub async fn credits_are_exact_under_concurrency(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store.clone(), &clock);
    let k = keys
        .create(KeySpec::new("o", "metered").credits(100, None))
        .await
        .unwrap();
    let id = k.record.id;
    let now = clock_now(&clock);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.charge(&id, 1, None, now).await
        }));
    }
    let mut charged = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CreditOutcome::Charged { .. } => charged += 1,
            CreditOutcome::OutOfCredits { remaining: 0 } => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((charged, refused), (100, 100));
    let r = store.get(&id).await.unwrap().unwrap();
    assert_eq!(r.credits.unwrap().remaining, 0);
}

/// Retries with one idempotency key charge once and get the same answer.
pub async fn idempotent_charges_happen_once(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store.clone(), &clock);
    let k = keys
        .create(KeySpec::new("o", "metered").credits(10, None))
        .await
        .unwrap();
    let id = k.record.id;
    let now = clock_now(&clock);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.charge(&id, 3, Some("req-{1}:x"), now).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            CreditOutcome::Charged {
                remaining: 7,
                replayed,
            } => fresh += usize::from(!replayed),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fresh, 1, "charged exactly once");
    assert_eq!(
        store.charge(&id, 3, Some("req-2"), now).await.unwrap(),
        CreditOutcome::Charged {
            remaining: 4,
            replayed: false
        }
    );
    let v = keys
        .verify_with(
            k.key.expose_secret(),
            &VerifyRequest::new().cost(3).idempotency_key("req-2"),
        )
        .await
        .unwrap();
    assert_eq!(v.verified().unwrap().credits_remaining, Some(4));
    assert_eq!(
        store
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .credits
            .unwrap()
            .remaining,
        4
    );
}

/// A revoked or expired key is never charged.
pub async fn charging_a_revoked_key_charges_nothing(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store.clone(), &clock);
    let k = keys
        .create(KeySpec::new("o", "m").credits(10, None))
        .await
        .unwrap();
    keys.revoke(&k.record.id).await.unwrap();
    assert_eq!(
        store
            .charge(&k.record.id, 1, None, clock_now(&clock))
            .await
            .unwrap(),
        CreditOutcome::NotActive
    );
    assert_eq!(
        store
            .get(&k.record.id)
            .await
            .unwrap()
            .unwrap()
            .credits
            .unwrap()
            .remaining,
        10
    );
}

/// A key with an allowlist is refused from elsewhere and without an address.
pub async fn ip_allowlist_is_enforced(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let k = keys
        .create(KeySpec::new("o", "k").allowed_ips(["192.0.2.0/24", "2001:db8::/32"]))
        .await
        .unwrap();
    let text = k.key.expose_secret();
    for (ip, ok) in [
        ("192.0.2.9", true),
        ("2001:db8::7", true),
        ("198.51.100.1", false),
        ("::1", false),
    ] {
        let v = keys
            .verify_with(text, &VerifyRequest::new().ip(ip.parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(v.is_verified(), ok, "{ip}");
        if !ok {
            assert_eq!(v.denial(), Some(Denial::IpNotAllowed));
        }
    }
    assert_eq!(
        keys.verify(text, "").await.unwrap().denial(),
        Some(Denial::IpNotAllowed)
    );
    assert!(matches!(
        keys.create(KeySpec::new("o", "k").allowed_ips(["10.0.0.0/33"]))
            .await,
        Err(Error::InvalidConfig(_))
    ));
}

/// Uses are counted in memory and written by a flush, not per request.
pub async fn usage_is_batched_and_flushed(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let keys = service(store, &clock);
    let k = keys.create(KeySpec::new("o", "k")).await.unwrap();
    let text = k.key.expose_secret();
    for _ in 0..5 {
        assert!(keys.verify(text, "").await.unwrap().is_verified());
        clock.advance(Duration::from_secs(1));
    }
    let r = keys.get(&k.record.id).await.unwrap().unwrap();
    assert_eq!(
        (r.uses, r.last_used_at),
        (0, None),
        "nothing written per request"
    );
    keys.flush_usage().await.unwrap();
    let r = keys.get(&k.record.id).await.unwrap().unwrap();
    assert_eq!(r.uses, 5);
    assert_eq!(r.last_used_at, Some(clock_now(&clock) - 1_000_000));
    keys.flush_usage().await.unwrap();
    assert_eq!(keys.get(&k.record.id).await.unwrap().unwrap().uses, 5);
}

/// A key hashed under an older pepper verifies, and is re-hashed under the current one.
pub async fn a_key_moves_to_the_current_pepper_on_use(store: Arc<dyn Store>) {
    let clock = FakeClock::new();
    let v1 = || Pepper::new(1, *b"conformance pepper, version one!").unwrap();
    let v2 = || Pepper::new(2, *b"conformance pepper, version two!").unwrap();
    let old = service_with(store.clone(), &clock, Peppers::new(v1()));
    let k = old.create(KeySpec::new("o", "k")).await.unwrap();
    assert_eq!(k.record.hash_version, 1);
    let both = service_with(
        store.clone(),
        &clock,
        Peppers::new(v2()).with_previous(v1()).unwrap(),
    );
    let text = k.key.expose_secret();
    assert!(both.verify(text, "").await.unwrap().is_verified());
    let r = both.get(&k.record.id).await.unwrap().unwrap();
    assert_eq!(r.hash_version, 2);
    let only_new = service_with(store, &clock, Peppers::new(v2()));
    assert!(
        only_new.verify(text, "").await.unwrap().is_verified(),
        "version 1 can be retired once every key has moved"
    );
    assert_eq!(
        old.verify(text, "").await.unwrap().denial(),
        Some(Denial::NotFound),
        "a service without pepper 2 cannot check the moved key"
    );
}

/// A store that serves says so through [`Store::health`].
pub async fn health_answers(store: Arc<dyn Store>) {
    store.health().await.expect("a serving store is healthy");
    let clock = FakeClock::new();
    let keys = service(Arc::clone(&store), &clock);
    keys.create(KeySpec::new("health", "k"))
        .await
        .expect("create");
    store.health().await.expect("still healthy after a write");
}
