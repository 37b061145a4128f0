//! Metrics (bounded labels, never a key id) and audit events through a sink.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use palisade_apikey::{
    ApiKeys, AuditKind, Denial, KeySpec, MemoryAuditSink, MemoryStore, Pepper, Peppers, Tokens,
};

#[tokio::test]
async fn metrics_count_outcomes_with_bounded_labels_and_audit_events_reach_the_sink() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let sink = Arc::new(MemoryAuditSink::new(100));
    // A current-thread runtime: every metric of these futures lands in the local recorder.
    let _g = metrics::set_default_local_recorder(&recorder);
    let keys = ApiKeys::builder(Peppers::new(Pepper::new(1, [4u8; 32]).unwrap()))
        .store(MemoryStore::new())
        .audit_sink(sink.clone())
        .build()
        .unwrap();
    let k = keys
        .create(KeySpec::new("owner-x", "k").scopes(["read:*"]))
        .await
        .unwrap();
    let rotated = keys
        .rotate(&k.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    let text = k.key.expose_secret().to_owned();
    let new_text = rotated.key.expose_secret().to_owned();
    let tokens = Tokens::new(Peppers::new(Pepper::new(1, [5u8; 32]).unwrap()), "svc").unwrap();
    let token = tokens.issue("svc", ["a"]).unwrap();
    assert!(
        keys.verify(&new_text, "read:a")
            .await
            .unwrap()
            .is_verified()
    );
    assert!(keys.verify(&text, "read:a").await.unwrap().is_verified()); // grace use
    assert_eq!(
        keys.verify(&new_text, "write:a").await.unwrap().denial(),
        Some(Denial::InsufficientScope)
    );
    assert_eq!(
        keys.verify("pk_live_x", "").await.unwrap().denial(),
        Some(Denial::Malformed)
    );
    keys.revoke(&rotated.record.id).await.unwrap();
    assert_eq!(
        keys.verify(&new_text, "").await.unwrap().denial(),
        Some(Denial::Revoked)
    );
    assert!(tokens.verify(&token).is_ok());
    assert!(tokens.verify("a.b.c").is_err());
    let lines = palisade_testkit::metric_lines(&snapshotter);
    let text_lines = lines.join("\n");
    for want in [
        "palisade_apikey_verifications_total{outcome=verified} 2",
        "palisade_apikey_verifications_total{outcome=insufficient_scope} 1",
        "palisade_apikey_verifications_total{outcome=malformed} 1",
        "palisade_apikey_verifications_total{outcome=revoked} 1",
        "palisade_apikey_grace_uses_total{} 1",
        "palisade_apikey_lifecycle_total{event=revoked} 1",
        "palisade_apikey_token_verifications_total{outcome=verified} 1",
        "palisade_apikey_token_verifications_total{outcome=malformed} 1",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "no {want:?} in\n{text_lines}"
        );
    }
    assert!(
        text_lines.contains("palisade_apikey_verify_duration_seconds{backend=memory}"),
        "{text_lines}"
    );
    for id in [k.record.id, rotated.record.id] {
        assert!(
            !text_lines.contains(id.as_str()),
            "a key id in a label:\n{text_lines}"
        );
    }
    assert!(!text_lines.contains("owner-x"));

    let kinds: Vec<AuditKind> = sink.events().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            AuditKind::Created,
            AuditKind::Rotated {
                successor: rotated.record.id
            },
            AuditKind::GraceUse,
            AuditKind::Denied(Denial::InsufficientScope),
            AuditKind::Denied(Denial::Malformed),
            AuditKind::Revoked,
            AuditKind::Denied(Denial::Revoked),
        ]
    );
    let revoked = &sink.events()[5];
    assert_eq!(revoked.key_id, Some(rotated.record.id));
    assert_eq!(revoked.owner.as_deref(), Some("owner-x"));
}
