//! Findings of the outside review of the rules engine, one test each (each failed before its
//! fix): tiers, credential keys, IPv6 prefixes, forwarding headers and path matching.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, Request};
use palisade_ratelimit::rules::{
    ClientIp, ForwardedHeader, Key, KeySecret, MAX_KEY_LEN, Outcome, PeerAddr, RequestLimiter,
    RequestParts, Route, Rules, Tier, TierResolver,
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
        let Outcome::Limited { policy, tier, .. } = o else {
            panic!("an unlisted tier went unlimited: {o:?}");
        };
        assert_eq!(policy.name(), "free-ai");
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

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn header(name: &'static str, raw: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.append(name, HeaderValue::from_bytes(raw).unwrap());
    h
}

/// One byte outside visible ASCII spoils one element of `X-Forwarded-For`, not the whole
/// value: the walk still finds the client a trusted proxy appended.
#[test]
fn a_bad_byte_spoils_one_forwarded_for_element_only() {
    let proxies = ClientIp::new().trust(["10.0.0.0/8"]).unwrap();
    let peer = Some(ip("10.0.0.1"));
    let h = header("x-forwarded-for", b"evil\xff, 203.0.113.9, 10.0.0.2");
    assert_eq!(proxies.resolve(peer, &h), Some(ip("203.0.113.9")));
    // An unreadable element where the client should be ends the walk at the last trusted
    // hop, as before.
    let h = header("x-forwarded-for", b"1.2.3.4, \x80\x80, 10.0.0.2");
    assert_eq!(proxies.resolve(peer, &h), Some(ip("10.0.0.2")));
    // Several header lines are one list, in order.
    let mut h = header("x-forwarded-for", b"1.2.3.4\xfe");
    h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
    assert_eq!(proxies.resolve(peer, &h), Some(ip("198.51.100.7")));
}

/// RFC 7239: each element is read on its own bytes, and an element without `for=` (a proxy
/// that did not say whom it heard from) ends the walk instead of being skipped.
#[test]
fn forwarded_elements_are_read_one_by_one() {
    let proxies = ClientIp::new()
        .trust(["10.0.0.0/8"])
        .unwrap()
        .header(ForwardedHeader::Forwarded);
    let peer = Some(ip("10.0.0.1"));
    let h = header(
        "forwarded",
        b"for=192.0.2.60;proto=http, proto=https;by=10.0.0.3, for=10.0.0.2",
    );
    assert_eq!(
        proxies.resolve(peer, &h),
        Some(ip("10.0.0.2")),
        "192.0.2.60 was written before a proxy that named nobody"
    );
    let h = header(
        "forwarded",
        b"for=\"evil\xff\", for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2",
    );
    assert_eq!(proxies.resolve(peer, &h), Some(ip("2001:db8::7")));
    // A quoted comma does not split an element.
    let h = header("forwarded", b"for=203.0.113.5;host=\"a,b\", for=10.0.0.2");
    assert_eq!(proxies.resolve(peer, &h), Some(ip("203.0.113.5")));
}

fn from_peer(path: &str, peer: &str) -> Request<()> {
    let mut req = Request::get(path).body(()).unwrap();
    req.extensions_mut().insert(PeerAddr(ip(peer)));
    req
}

/// IPv6 clients are keyed by their /64 (what one host or home network gets), so rotating
/// addresses inside it shares one budget; the prefix is configurable and IPv4 keeps whole
/// addresses.
#[tokio::test]
async fn ipv6_clients_are_grouped_by_prefix() {
    let by_ip = |c: ClientIp| {
        memory_limiter(
            Rules::builder()
                .route(Route::new("/**").unwrap().policy(policy("ip", 2)))
                .key(Key::client_ip(c))
                .build()
                .unwrap(),
        )
    };
    let blocks = |limiter: RequestLimiter, peer: &'static str| async move {
        let req = from_peer("/x", peer);
        limiter
            .check(&RequestParts::from_request(&req))
            .await
            .blocks()
    };
    let limiter = by_ip(ClientIp::new());
    assert!(!blocks(limiter.clone(), "2001:db8:1:2::1").await);
    assert!(!blocks(limiter.clone(), "2001:db8:1:2:aaaa::9").await);
    assert!(
        blocks(limiter.clone(), "2001:db8:1:2:ffff:ffff:ffff:ffff").await,
        "a third address of the same /64 shares its budget"
    );
    assert!(
        !blocks(limiter.clone(), "2001:db8:1:3::1").await,
        "another /64"
    );
    assert!(!blocks(limiter.clone(), "192.0.2.1").await);
    assert!(
        !blocks(limiter.clone(), "192.0.2.2").await,
        "IPv4 by address"
    );
    assert_eq!(
        Key::client_ip(ClientIp::new())
            .extract(&RequestParts::from_request(&from_peer(
                "/",
                "2001:db8:1:2::1"
            )))
            .as_deref(),
        Some("ip:2001:db8:1:2::/64")
    );
    // Per address when asked.
    let limiter = by_ip(ClientIp::new().ipv6_prefix(128).unwrap());
    assert!(!blocks(limiter.clone(), "2001:db8:1:2::1").await);
    assert!(!blocks(limiter.clone(), "2001:db8:1:2::2").await);
    assert!(!blocks(limiter.clone(), "2001:db8:1:2::3").await);
    assert!(ClientIp::new().ipv6_prefix(0).is_err());
    assert!(ClientIp::new().ipv6_prefix(129).is_err());
}

const API_KEY: &str = "sk_live_5f1c9e0d7a2b4c3e";

fn with_api_key(path: &str, value: &str) -> Request<()> {
    let mut req = get(path);
    req.headers_mut()
        .insert("x-api-key", HeaderValue::from_str(value).unwrap());
    req
}

/// A header key (an API key) never reaches a stored key name or a log line: it is hashed
/// with the limiter's secret, keyed apart per value and per secret, and of fixed length.
#[tokio::test]
async fn credential_keys_are_hashed_and_never_logged() {
    let secret = KeySecret::new(b"0123456789abcdef0123456789abcdef").unwrap();
    let key = Key::header(http::HeaderName::from_static("x-api-key"), &secret);
    let extract = |k: &Key, v: &str| {
        k.extract(&RequestParts::from_request(&with_api_key("/", v)))
            .unwrap()
    };
    let a = extract(&key, API_KEY);
    assert!(!a.contains(API_KEY) && !a.contains("sk_live"), "{a}");
    assert_eq!(a, extract(&key, API_KEY), "stable for one secret");
    assert_ne!(a, extract(&key, "sk_live_other"));
    let long = "k".repeat(100_000);
    assert_eq!(extract(&key, &long).len(), a.len(), "fixed length");
    let other_secret = KeySecret::new(b"another secret of 32 bytes......").unwrap();
    let other = Key::header(http::HeaderName::from_static("x-api-key"), &other_secret);
    assert_ne!(a, extract(&other, API_KEY), "a per-limiter secret");
    assert!(KeySecret::new(b"short").is_err());
    assert!(
        !format!("{secret:?}").contains("0123"),
        "the secret never prints"
    );

    // Shadow mode logs the would-be denial, never the credential.
    let logs = palisade_testkit::LogCapture::new();
    let _guard = logs.set_default();
    let limiter = memory_limiter(
        Rules::builder()
            .route(Route::new("/**").unwrap().policy(policy("keyed", 1)))
            .key(key)
            .shadow(true)
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        let req = with_api_key("/x", API_KEY);
        limiter.check(&RequestParts::from_request(&req)).await;
    }
    assert!(logs.contains("would be rate limited"), "{}", logs.text());
    assert!(!logs.contains("sk_live"), "{}", logs.text());
    assert!(!logs.contains(&a), "not even hashed: {}", logs.text());
}

/// Every extracted key is at most `MAX_KEY_LEN` bytes: a longer one (a custom extractor fed a
/// huge header) is replaced by a digest, so the memory store's bound on keys bounds bytes.
#[test]
fn extracted_keys_have_a_bounded_length() {
    let echo = Key::custom(|r| r.headers.get("x-k").map(|v| v.to_str().unwrap().to_owned()));
    let key_of = |v: &str| {
        let mut req = get("/");
        req.headers_mut()
            .insert("x-k", HeaderValue::from_str(v).unwrap());
        echo.extract(&RequestParts::from_request(&req)).unwrap()
    };
    assert_eq!(key_of("short"), "short");
    let at_limit = "a".repeat(MAX_KEY_LEN);
    assert_eq!(key_of(&at_limit), at_limit);
    let a = key_of(&"a".repeat(MAX_KEY_LEN + 1));
    let b = key_of(&"b".repeat(50_000));
    assert!(a.len() <= MAX_KEY_LEN && b.len() <= MAX_KEY_LEN);
    assert_ne!(a, b);
    assert_ne!(a, key_of(&"a".repeat(MAX_KEY_LEN + 2)));
}
