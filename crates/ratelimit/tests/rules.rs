//! Findings of the outside review of the rules engine, one test each (each failed before its
//! fix): tiers, credential keys, IPv6 prefixes, forwarding headers and path matching.

use std::net::SocketAddr;

use http::Request;
use palisade_ratelimit::rules::{
    Outcome, RequestLimiter, RequestParts, Route, Rules, Tier, TierResolver,
};
use palisade_ratelimit::{Algorithm, FakeClock, MemoryStore, Policy, Quota, RateLimiter};

fn policy(name: &str, per_minute: u64) -> Policy {
    Policy::single(name, Algorithm::FixedWindow, Quota::per_minute(per_minute)).unwrap()
}

fn memory_limiter(rules: Rules) -> RequestLimiter {
    let store = MemoryStore::builder().clock(FakeClock::new()).build();
    RequestLimiter::new(RateLimiter::new(store), rules)
}

fn get(path: &str) -> Request<()> {
    let mut req = Request::get(path).body(()).unwrap();
    req.extensions_mut()
        .insert(SocketAddr::from(([198, 51, 100, 9], 5000)));
    req
}

fn with_tier(mut req: Request<()>, tier: &str) -> Request<()> {
    req.extensions_mut().insert(Tier::from(tier));
    req
}

/// A tier the route does not list (a typo, a new plan) is limited as the default tier, never
/// left unlimited.
#[tokio::test]
async fn an_unlisted_tier_is_limited_as_the_default_tier() {
    let rules = Rules::builder()
        .route(
            Route::new("/ai/**")
                .unwrap()
                .tier("free", policy("free-ai", 2))
                .tier("premium", policy("premium-ai", 50))
                .unlimited_tier("admin"),
        )
        .tiers(TierResolver::extension(), "free")
        .build()
        .unwrap();
    let limiter = memory_limiter(rules);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let req = with_tier(get("/ai/chat"), "enterprise");
        outcomes.push(limiter.check(&RequestParts::from_request(&req)).await);
    }
    for o in &outcomes {
        let Outcome::Limited { decision, tier, .. } = o else {
            panic!("an unlisted tier went unlimited: {o:?}");
        };
        assert_eq!(&*decision.policy, "free-ai");
        assert_eq!(
            tier, "free",
            "counted (and labelled) under the default tier"
        );
    }
    assert!(outcomes[2].blocks(), "the default tier's limit applies");
    // The unlimited tier stays unlimited.
    let req = with_tier(get("/ai/chat"), "admin");
    assert!(matches!(
        limiter.check(&RequestParts::from_request(&req)).await,
        Outcome::Unlimited { .. }
    ));
}

/// A route that would leave some tier without any limit is refused when the rules are built.
#[test]
fn a_route_that_limits_no_default_is_refused() {
    // Tiers, but neither a route policy nor a limit for the default tier (`default`).
    let err = Rules::builder()
        .route(
            Route::new("/ai/**")
                .unwrap()
                .tier("free", policy("free-ai", 2)),
        )
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("/ai/**"), "{err}");
    // A route with no limit at all.
    assert!(
        Rules::builder()
            .route(Route::new("/x").unwrap())
            .build()
            .is_err()
    );
    // Said explicitly, a route may be unlimited for everybody.
    let rules = Rules::builder()
        .route(Route::new("/x").unwrap().unlimited())
        .build()
        .unwrap();
    drop(rules);
    // A route policy covers unlisted tiers.
    assert!(
        Rules::builder()
            .route(
                Route::new("/ai/**")
                    .unwrap()
                    .tier("free", policy("free-ai", 2))
                    .policy(policy("other-ai", 5))
            )
            .build()
            .is_ok()
    );
}
