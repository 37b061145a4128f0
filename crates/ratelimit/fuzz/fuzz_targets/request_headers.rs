//! Keys and paths from arbitrary request bytes: header keys (hashed credentials), custom
//! keys of any length, path patterns and paths. Never panics; a key is never longer than
//! `MAX_KEY_LEN`; an exemption match is always also a route match.
#![no_main]

use http::{HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use palisade_ratelimit::rules::{ClientIp, Key, KeySecret, MAX_KEY_LEN, PathPattern, RequestParts};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, path) = text.split_once('\n').unwrap_or((&text, "/"));
    if let Ok(p) = PathPattern::parse(pattern) {
        let route = p.matches(path);
        let exempt = p.matches_exactly(path);
        assert!(!exempt || route, "{pattern:?} exempts {path:?} but would not limit it");
    }
    let mut req = Request::builder().method(Method::GET);
    if let Ok(v) = HeaderValue::from_bytes(data) {
        req = req.header("x-api-key", v.clone()).header("x-k", v);
    }
    let Ok(req) = req.uri("/").body(()) else {
        return;
    };
    let parts = RequestParts::from_request(&req);
    let secret = KeySecret::new([7_u8; 32]).unwrap();
    let keys = [
        Key::header(http::HeaderName::from_static("x-api-key"), &secret),
        Key::custom(|r| r.headers.get("x-k").map(|v| String::from_utf8_lossy(v.as_bytes()).repeat(3))),
        Key::client_ip(ClientIp::new()),
        Key::user_id(),
    ];
    for key in keys {
        if let Some(k) = key.extract(&parts) {
            assert!(k.len() <= MAX_KEY_LEN);
        }
    }
});
