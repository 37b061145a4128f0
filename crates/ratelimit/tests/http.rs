//! Rules, headers and the tower layer in front of an axum router.
#![cfg(feature = "tower")]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use palisade_ratelimit::layer::RateLimitLayer;
use palisade_ratelimit::rules::{
    ClientIp, ForwardedHeader, Key, Outcome, PathPattern, RequestLimiter, RequestParts, Route,
    Rules, Tier, TierResolver, UserId,
};
use palisade_ratelimit::{Algorithm, FakeClock, MemoryStore, Policy, Quota, RateLimiter};
use tower::ServiceExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn xff(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", v.parse().unwrap());
    h
}

#[test]
fn client_ip_never_trusts_the_client() {
    let none = ClientIp::new();
    // Without trusted proxies the header is ignored.
    assert_eq!(
        none.resolve(Some(ip("198.51.100.1")), &xff("1.1.1.1")),
        Some(ip("198.51.100.1"))
    );
    let proxies = ClientIp::new()
        .trust(["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"])
        .unwrap();
    // An untrusted peer is the client, whatever it sends.
    assert_eq!(
        proxies.resolve(Some(ip("198.51.100.1")), &xff("10.0.0.9")),
        Some(ip("198.51.100.1"))
    );
    // Rightmost untrusted hop; spoofed entries on the left are ignored.
    assert_eq!(
        proxies.resolve(
            Some(ip("10.0.0.1")),
            &xff("6.6.6.6, 203.0.113.9, 192.0.2.1, 10.1.2.3")
        ),
        Some(ip("203.0.113.9"))
    );
    // Several header lines count as one list, in order.
    let mut h = xff("6.6.6.6");
    h.append("x-forwarded-for", "203.0.113.7".parse().unwrap());
    assert_eq!(
        proxies.resolve(Some(ip("10.0.0.1")), &h),
        Some(ip("203.0.113.7"))
    );
    // Ports and IPv4-mapped addresses.
    assert_eq!(
        proxies.resolve(Some(ip("10.0.0.1")), &xff("203.0.113.8:4711")),
        Some(ip("203.0.113.8"))
    );
    assert_eq!(
        proxies.resolve(Some(ip("::ffff:10.0.0.1")), &xff("::ffff:203.0.113.8")),
        Some(ip("203.0.113.8"))
    );
    // Garbage stops the walk at the last trusted hop.
    assert_eq!(
        proxies.resolve(Some(ip("10.0.0.1")), &xff("not-an-ip, 10.0.0.7")),
        Some(ip("10.0.0.7"))
    );
    // Only trusted hops: the leftmost one.
    assert_eq!(
        proxies.resolve(Some(ip("10.0.0.1")), &xff("10.0.0.3, 10.0.0.2")),
        Some(ip("10.0.0.3"))
    );
    assert_eq!(
        proxies.resolve(Some(ip("10.0.0.1")), &HeaderMap::new()),
        Some(ip("10.0.0.1"))
    );
    assert_eq!(proxies.resolve(None, &xff("1.1.1.1")), None);

    let fwd = proxies.header(ForwardedHeader::Forwarded);
    let mut h = HeaderMap::new();
    h.insert(
        "forwarded",
        r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For="203.0.113.43:80";by=10.0.0.1, for=10.0.0.5"#
            .parse()
            .unwrap(),
    );
    assert_eq!(
        fwd.resolve(Some(ip("10.0.0.1")), &h),
        Some(ip("203.0.113.43"))
    );
    assert!(ClientIp::new().trust(["10.0.0.0/33"]).is_err());
}

#[test]
fn path_patterns() {
    let p = PathPattern::parse("/ai/**").unwrap();
    assert!(p.matches("/ai") && p.matches("/ai/chat") && p.matches("/ai/chat/x"));
    assert!(!p.matches("/aix") && !p.matches("/api/ai"));
    let p = PathPattern::parse("/users/:id/keys").unwrap();
    assert!(
        p.matches("/users/42/keys") && !p.matches("/users/keys") && !p.matches("/users/1/keys/2")
    );
    assert!(PathPattern::parse("/a/**/b").is_err());
    assert!(PathPattern::parse("a").is_err());
}

fn ai_policy(name: &str, per_minute: u64, per_hour: u64) -> Policy {
    Policy::builder(name)
        .algorithm(Algorithm::SlidingWindowLog)
        .quota("per_minute", Quota::per_minute(per_minute))
        .quota("per_hour", Quota::per_hour(per_hour))
        .build()
        .unwrap()
}

fn rules(shadow: bool) -> Rules {
    Rules::builder()
        .exempt("/health")
        .unwrap()
        .exempt("/docs/**")
        .unwrap()
        .route(
            Route::new("/ai/**")
                .unwrap()
                .cost(5)
                .tier("free", ai_policy("free-ai", 10, 60))
                .tier("premium", ai_policy("premium-ai", 50, 300))
                .unlimited_tier("admin"),
        )
        .route(
            Route::new("/**")
                .unwrap()
                .policy(ai_policy("general", 3, 100)),
        )
        .key(Key::first_of([
            Key::user_id(),
            Key::client_ip(ClientIp::new().trust(["10.0.0.0/8"]).unwrap()),
        ]))
        .tiers(TierResolver::extension(), "free")
        .shadow(shadow)
        .build()
        .unwrap()
}

fn limiter(shadow: bool) -> RequestLimiter {
    let store = MemoryStore::builder().clock(FakeClock::new()).build();
    RequestLimiter::new(RateLimiter::new(store), rules(shadow))
}

fn request(path: &str, user: Option<&str>, tier: Option<&str>) -> Request<Body> {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    if let Some(u) = user {
        req.extensions_mut().insert(UserId::from(u));
    }
    if let Some(t) = tier {
        req.extensions_mut().insert(Tier::from(t));
    }
    req.extensions_mut()
        .insert(SocketAddr::from(([198, 51, 100, 9], 5000)));
    req
}

#[tokio::test]
async fn tiers_costs_and_exemptions() {
    let limiter = limiter(false);
    let check = |req: Request<Body>| {
        let limiter = limiter.clone();
        async move { limiter.check(&RequestParts::from_request(&req)).await }
    };
    // Free: 10 per minute at cost 5 → two AI calls.
    assert!(
        !check(request("/ai/chat", Some("u1"), Some("free")))
            .await
            .blocks()
    );
    assert!(
        !check(request("/ai/chat", Some("u1"), None)).await.blocks(),
        "default tier is free"
    );
    let o = check(request("/ai/chat", Some("u1"), Some("free"))).await;
    assert!(o.blocks());
    // Premium has its own budget and policy.
    for _ in 0..10 {
        assert!(
            !check(request("/ai/chat", Some("u2"), Some("premium")))
                .await
                .blocks()
        );
    }
    assert!(
        check(request("/ai/chat", Some("u2"), Some("premium")))
            .await
            .blocks()
    );
    // Admin is unlimited; health and docs are exempt.
    for _ in 0..100 {
        assert!(matches!(
            check(request("/ai/chat", Some("root"), Some("admin"))).await,
            Outcome::Unlimited { .. }
        ));
        assert_eq!(check(request("/health", None, None)).await, Outcome::Exempt);
        assert_eq!(
            check(request("/docs/api", None, None)).await,
            Outcome::Exempt
        );
    }
    // Anonymous requests are keyed by client IP.
    for _ in 0..3 {
        assert!(!check(request("/other", None, None)).await.blocks());
    }
    assert!(check(request("/other", None, None)).await.blocks());
    assert!(
        !check(request("/other", Some("u1"), None)).await.blocks(),
        "users are keyed apart from IPs"
    );
}

#[tokio::test]
async fn rules_are_replaced_at_runtime() {
    let limiter = limiter(false);
    let req = request("/other", Some("u9"), None);
    for _ in 0..3 {
        assert!(
            !limiter
                .check(&RequestParts::from_request(&req))
                .await
                .blocks()
        );
    }
    assert!(
        limiter
            .check(&RequestParts::from_request(&req))
            .await
            .blocks()
    );
    // A new quota under a new policy name takes effect at once.
    let relaxed = Rules::builder()
        .route(
            Route::new("/**")
                .unwrap()
                .policy(ai_policy("general-v2", 100, 1000)),
        )
        .key(Key::user_id())
        .build()
        .unwrap();
    limiter.replace_rules(relaxed);
    assert!(
        !limiter
            .check(&RequestParts::from_request(&req))
            .await
            .blocks()
    );
}

async fn body_json(resp: http::Response<Body>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn app(limiter: RequestLimiter) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ai/chat", get(|| async { "answer" }))
        .route("/other", get(|| async { "other" }))
        .layer(RateLimitLayer::new(limiter))
}

#[tokio::test]
async fn axum_answers_429_with_headers_and_problem_json() {
    let app = app(limiter(false));
    let ok = app
        .clone()
        .oneshot(request("/ai/chat", Some("u1"), Some("free")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let h = ok.headers();
    assert_eq!(h["x-ratelimit-limit"], "10");
    assert_eq!(h["x-ratelimit-remaining"], "5");
    assert_eq!(h["x-ratelimit-reset"], "60");
    assert_eq!(
        h["ratelimit-policy"],
        r#""per_minute";q=10;w=60, "per_hour";q=60;w=3600"#
    );
    assert_eq!(
        h["ratelimit"],
        r#""per_minute";r=5;t=60, "per_hour";r=55;t=3600"#
    );
    assert!(!h.contains_key("retry-after"));

    app.clone()
        .oneshot(request("/ai/chat", Some("u1"), Some("free")))
        .await
        .unwrap();
    let denied = app
        .clone()
        .oneshot(request("/ai/chat", Some("u1"), Some("free")))
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    assert_eq!(denied.headers()["retry-after"], "60");
    assert_eq!(denied.headers()["x-ratelimit-remaining"], "0");
    let body = body_json(denied).await;
    assert_eq!(body["status"], 429);
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["policy"], "free-ai");
    assert_eq!(body["retry_after"], 60);
    assert_eq!(body["code"], "rate_limited");

    // Exempt routes are untouched.
    let health = app
        .clone()
        .oneshot(request("/health", None, None))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(!health.headers().contains_key("ratelimit"));
    assert!(!health.headers().contains_key("x-ratelimit-limit"));
}

#[tokio::test]
async fn shadow_mode_reports_but_never_blocks() {
    let app = app(limiter(true));
    for i in 0..6 {
        let resp = app
            .clone()
            .oneshot(request("/other", Some("s"), None))
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "request {i} blocked in shadow mode"
        );
        let remaining = if i < 3 { 2 - i } else { 0 };
        assert_eq!(
            resp.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
}

#[tokio::test]
async fn retry_after_rounds_up() {
    let clock = FakeClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let policy = Policy::single("r", Algorithm::Gcra, Quota::per_second(1)).unwrap();
    let limiter = RequestLimiter::new(
        RateLimiter::new(store),
        Rules::builder()
            .route(Route::new("/**").unwrap().policy(policy))
            .build()
            .unwrap(),
    );
    let app = app(limiter);
    assert_eq!(
        app.clone()
            .oneshot(request("/other", None, None))
            .await
            .unwrap()
            .status(),
        200
    );
    clock.advance(Duration::from_millis(10));
    let denied = app
        .clone()
        .oneshot(request("/other", None, None))
        .await
        .unwrap();
    // 990 ms left: never announce an earlier time than the real one.
    assert_eq!(denied.headers()["retry-after"], "1");
    clock.advance(Duration::from_millis(989));
    assert_eq!(
        app.clone()
            .oneshot(request("/other", None, None))
            .await
            .unwrap()
            .status(),
        429
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        app.clone()
            .oneshot(request("/other", None, None))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn metrics_are_recorded() {
    let lines = palisade_testkit::record_metrics(|| async move {
        let app = app(limiter(false));
        for _ in 0..5 {
            app.clone()
                .oneshot(request("/other", Some("m"), None))
                .await
                .unwrap();
        }
    });
    assert_eq!(
        lines,
        [
            // Five samples.
            "palisade_ratelimit_decision_duration_seconds{backend=memory,source=store} 5",
            "palisade_ratelimit_decisions_total{outcome=allowed,policy=general,source=store,tier=free} 3",
            "palisade_ratelimit_decisions_total{outcome=denied,policy=general,source=store,tier=free} 2",
        ]
    );
}

/// However a path is spelled (percent-encoding, doubled slashes, dot segments, case), a
/// request that reaches a handler is counted under that handler's rule, and only the paths
/// that reach an exempt handler go uncounted. What axum's router does with each spelling
/// is not assumed: the handler that answered says where the request went.
#[tokio::test]
async fn no_spelling_of_a_path_reaches_a_route_without_its_rule() {
    let app = Router::new()
        .route("/health", get(|| async { "health" }))
        .route("/docs/{*rest}", get(|| async { "docs" }))
        .route("/ai/chat", get(|| async { "ai" }))
        .fallback(|| async { "fallback" })
        .layer(RateLimitLayer::new(limiter(false)));
    let spellings = [
        "/ai/chat",
        "/ai//chat",
        "//ai/chat",
        "/ai/chat/",
        "/ai/./chat",
        "/x/../ai/chat",
        "/x/%2e%2e/ai/chat",
        "/%61i/chat",
        "/ai/%63hat",
        "/%61%69/%63%68%61%74",
        "/AI/chat",
        "/ai/CHAT",
        "/health/../ai/chat",
        "/docs/../ai/chat",
        "/docs/%2e%2e/ai/chat",
        "/ai%2Fchat",
        "/health%2F..%2Fai/chat",
        "/health/",
        "/Health",
        "/health/x",
        "/%68ealth",
        "/docs/a/../../ai/chat",
        "/ai/chat;x",
    ];
    for (i, path) in spellings.iter().enumerate() {
        let req = request(path, Some(&format!("spelling-{i}")), Some("free"));
        let resp = app.clone().oneshot(req).await.unwrap();
        let limit = resp
            .headers()
            .get("x-ratelimit-limit")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let handler = std::str::from_utf8(&bytes).unwrap().to_owned();
        match handler.as_str() {
            "ai" => assert_eq!(
                limit.as_deref(),
                Some("10"),
                "{path} reached the AI handler without the AI rule"
            ),
            "health" | "docs" => {}
            _ => assert!(limit.is_some(), "{path} reached {handler} uncounted"),
        }
    }
}

#[tokio::test]
async fn the_layer_writes_the_tier_and_per_window_headers_when_asked() {
    let day_policy = Policy::builder("windows")
        .algorithm(Algorithm::FixedWindow)
        .quota("minute", Quota::per_minute(3))
        .quota("Hour", Quota::per_hour(10))
        .quota("not a header", Quota::per_day(100))
        .build()
        .unwrap();
    let rules = Rules::builder()
        .exempt("/health")
        .unwrap()
        .route(
            Route::new("/**")
                .unwrap()
                .tier("free", day_policy)
                .unlimited_tier("admin"),
        )
        .key(Key::user_id())
        .tiers(TierResolver::extension(), "free")
        .build()
        .unwrap();
    let store = MemoryStore::builder().clock(FakeClock::new()).build();
    let limiter = RequestLimiter::new(RateLimiter::new(store), rules);
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/other", get(|| async { "other" }))
        .layer(
            RateLimitLayer::new(limiter.clone())
                .headers(palisade_ratelimit::headers::HeaderStyle::BOTH.with_per_window(true))
                .tier_header(true),
        );

    // A tier the route does not list is counted, and named, as the default tier.
    let ok = app
        .clone()
        .oneshot(request("/other", Some("u1"), Some("gold")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let h = ok.headers();
    assert_eq!(h["x-ratelimit-tier"], "free");
    assert_eq!(h["x-ratelimit-limit-minute"], "3");
    assert_eq!(h["x-ratelimit-remaining-minute"], "2");
    assert_eq!(h["x-ratelimit-limit-hour"], "10");
    assert_eq!(h["x-ratelimit-remaining-hour"], "9");
    assert!(h.contains_key("x-ratelimit-reset-minute"));
    assert!(h.contains_key("x-ratelimit-reset-hour"));
    // A quota name that cannot be a header name gets no per-window headers; the draft
    // headers still name it.
    assert_eq!(
        h.keys()
            .filter(|k| k.as_str().starts_with("x-ratelimit-limit-"))
            .count(),
        2
    );
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .contains("\"not a header\"")
    );

    for _ in 0..2 {
        app.clone()
            .oneshot(request("/other", Some("u1"), Some("free")))
            .await
            .unwrap();
    }
    let denied = app
        .clone()
        .oneshot(request("/other", Some("u1"), Some("free")))
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.headers()["x-ratelimit-tier"], "free");
    assert_eq!(denied.headers()["x-ratelimit-remaining-minute"], "0");
    assert_eq!(denied.headers()["x-ratelimit-remaining-hour"], "7");

    // Unlimited: the tier, no counters. Exempt: nothing.
    let admin = app
        .clone()
        .oneshot(request("/other", Some("root"), Some("admin")))
        .await
        .unwrap();
    assert_eq!(admin.headers()["x-ratelimit-tier"], "admin");
    assert!(!admin.headers().contains_key("x-ratelimit-limit"));
    let health = app
        .clone()
        .oneshot(request("/health", Some("u1"), Some("free")))
        .await
        .unwrap();
    assert!(!health.headers().contains_key("x-ratelimit-tier"));

    // Off by default.
    let plain = Router::new()
        .route("/other", get(|| async { "other" }))
        .layer(RateLimitLayer::new(limiter));
    let resp = plain
        .oneshot(request("/other", Some("u2"), Some("free")))
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("x-ratelimit-tier"));
    assert!(!resp.headers().contains_key("x-ratelimit-limit-minute"));
}
