//! Arbitrary input never panics: the same properties as the cargo-fuzz targets in `fuzz/`
//! (which CI does not run), as proptests that CI does run.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Request};
use palisade_ratelimit::rules::{
    ClientIp, ForwardedHeader, Key, KeySecret, MAX_KEY_LEN, PathPattern, RequestParts,
};
use palisade_ratelimit::{MemoryStore, Policy};
use proptest::prelude::*;

/// Header-ish bytes: mostly the characters forwarding headers are made of, some of anything.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"0123456789abcdef.:[]\", ;=forFOR_-".to_vec()),
            1 => any::<u8>(),
        ],
        0..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The trusted-proxy walk: a trusted peer always resolves to someone, an untrusted one
    /// to itself, whatever the forwarding headers hold.
    #[test]
    fn the_client_ip_walk_never_panics(
        lines in prop::collection::vec(header_bytes(), 0..4),
        peer in any::<[u8; 16]>(),
        v4 in any::<bool>(),
    ) {
        let peer: IpAddr = if v4 {
            [10, peer[0], peer[1], peer[2]].into()
        } else {
            peer.into()
        };
        let mut headers = HeaderMap::new();
        for line in &lines {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                headers.append("x-forwarded-for", v.clone());
                headers.append("forwarded", v);
            }
        }
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            let ip = ClientIp::new().trust(["10.0.0.0/8", "::/1"]).unwrap().header(header);
            let found = ip.resolve(Some(peer), &headers);
            prop_assert!(found.is_some());
            let _ = ip.group(found.unwrap());
            prop_assert_eq!(ClientIp::new().resolve(Some(peer), &headers), Some(peer.to_canonical()));
        }
    }

    /// Path patterns and paths of any text: an exemption match is always a route match.
    #[test]
    fn path_matching_never_panics(
        pattern in "(/|[a-z*:{}]|\\*\\*|%[0-9a-fA-F]{0,2}|\\.){0,12}",
        path in "(/|[a-zA-Z]|%[0-9a-fA-F]{0,2}|\\.|;|\\PC){0,24}",
    ) {
        if let Ok(p) = PathPattern::parse(&pattern) {
            let exempt = p.matches_exactly(&path);
            prop_assert!(!exempt || p.matches(&path), "{} {}", pattern, path);
        }
    }

    /// Keys from arbitrary header bytes are at most `MAX_KEY_LEN` long.
    #[test]
    fn keys_from_any_header_are_bounded(value in header_bytes(), repeat in 1_usize..200) {
        let mut req = Request::get("/").body(()).unwrap();
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            req.headers_mut().insert("x-api-key", v);
        }
        let parts = RequestParts::from_request(&req);
        let secret = KeySecret::new([1_u8; 16]).unwrap();
        let keys = [
            Key::header(http::HeaderName::from_static("x-api-key"), &secret),
            Key::custom(move |r| {
                r.headers.get("x-api-key").map(|v| String::from_utf8_lossy(v.as_bytes()).repeat(repeat))
            }),
        ];
        for key in keys {
            if let Some(k) = key.extract(&parts) {
                prop_assert!(k.len() <= MAX_KEY_LEN);
            }
        }
    }

    /// Policy configuration from arbitrary bytes and from JSON-shaped text: parsing never
    /// panics, and a policy that parses decides any cost on any store without panicking.
    #[test]
    fn policy_config_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        limit in any::<u64>(),
        period in prop_oneof![Just("1ms".to_owned()), Just("366d".to_owned()), "[0-9]{1,12}(ms|s|m|h|d|us|ns)"],
        burst in prop::option::of(any::<u64>()),
        algorithm in prop::sample::select(vec!["gcra", "token_bucket", "fixed_window", "sliding_window_log", "sliding_window_counter", "x"]),
        cost in any::<u64>(),
    ) {
        let _ = serde_json::from_slice::<Policy>(&bytes);
        let burst = burst.map(|b| format!(r#","burst":{b}"#)).unwrap_or_default();
        let json = format!(
            r#"{{"name":"p","algorithm":"{algorithm}","quotas":[{{"name":"q","limit":{limit},"period":"{period}"{burst}}}]}}"#
        );
        if let Ok(policy) = serde_json::from_str::<Policy>(&json) {
            let store = MemoryStore::new();
            let _ = store.acquire_sync("k", &policy, cost);
            let _ = store.allow_sync(1_u64, &policy, cost);
            store.refund_sync("k", &policy, cost);
            let _ = store.peek_sync("k", &policy);
        }
    }
}
