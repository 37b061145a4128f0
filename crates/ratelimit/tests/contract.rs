//! The crate contract shared by every palisade crate: configuration refuses unknown fields,
//! errors do not repeat their source, the Redis store's builder vocabulary.

use std::error::Error as _;

use palisade_ratelimit::{Error, Policy};

/// A misspelt field is an error, not a silent default, at every level of a policy.
#[test]
fn config_refuses_unknown_fields() {
    let ok = r#"{"name":"api","algorithm":"token_bucket",
        "quotas":[{"name":"per_minute","limit":60,"period":"1m","burst":10}]}"#;
    let p: Policy = serde_json::from_str(ok).unwrap();
    assert_eq!(p.quotas()[0].quota.burst(), 10);
    assert_eq!(
        serde_json::from_str::<Policy>(&serde_json::to_string(&p).unwrap()).unwrap(),
        p,
        "round trip"
    );
    for bad in [
        r#"{"name":"api","quotas":[{"name":"m","limit":60,"period":"1m","burts":10}]}"#,
        r#"{"name":"api","quotas":[{"name":"m","limit":60,"perid":"1m"}]}"#,
        r#"{"name":"api","algoritm":"gcra","quotas":[{"name":"m","limit":60,"period":"1m"}]}"#,
    ] {
        let err = serde_json::from_str::<Policy>(bad).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{bad}: {err}");
    }
    assert!(
        serde_json::from_str::<palisade_ratelimit::Quota>(r#"{"limit":1,"period":"1s","x":1}"#)
            .is_err()
    );
}

/// `Display` says what failed; the backend's own message is the source, printed once by an
/// error reporter, never twice.
#[test]
fn errors_do_not_repeat_their_source() {
    let source = std::io::Error::other("connection reset by peer");
    let err = Error::backend(source, true);
    assert_eq!(err.to_string(), "rate-limit backend error");
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("connection reset by peer")
    );
    assert!(err.is_transient() && err.is_backend());
}
