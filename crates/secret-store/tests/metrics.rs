//! The documented metric names and labels are the ones emitted; secret names appear as a
//! label only when opted in.

use std::time::Duration;

use palisade_secret_store::testing::Switch;
use palisade_secret_store::{FakeClock, MemoryProvider, Secrets};

fn run(labels: bool) -> Vec<String> {
    palisade_testkit::record_metrics(|| async move {
        let clock = FakeClock::new();
        let p = std::sync::Arc::new(Switch::new(
            MemoryProvider::new()
                .with_secret("db", "password-1")
                .unwrap(),
        ));
        let s = Secrets::builder()
            .clock(clock.clone())
            .refresh_jitter(0.0)
            .stale_while_revalidate(Duration::ZERO)
            .secret_name_labels(labels)
            .shared_provider(p.clone())
            .build()
            .unwrap();
        s.get("db").await.unwrap(); // loaded
        s.get("db").await.unwrap(); // fresh
        assert!(s.get("nope").await.is_err()); // not found
        s.rotate("db", "password-2".into()).await.unwrap();
        p.fail_transiently();
        clock.advance(Duration::from_secs(3601));
        s.get("db").await.unwrap(); // resurrected
        s.health().await;
    })
}

#[test]
fn metrics_have_the_documented_names_and_bounded_labels() {
    let lines = run(false);
    let expected = [
        "palisade_secret_store_cached_secrets{} 1",
        "palisade_secret_store_provider_calls_total{outcome=error,provider=memory} 1",
        "palisade_secret_store_provider_calls_total{outcome=hit,provider=memory} 1",
        "palisade_secret_store_provider_calls_total{outcome=miss,provider=memory} 1",
        "palisade_secret_store_provider_duration_seconds{provider=memory} 3",
        "palisade_secret_store_provider_errors_total{kind=transient,provider=memory} 1",
        "palisade_secret_store_provider_up{provider=memory} 0",
        "palisade_secret_store_reads_total{outcome=error} 0",
        "palisade_secret_store_reads_total{outcome=fresh} 1",
        "palisade_secret_store_reads_total{outcome=loaded} 1",
        "palisade_secret_store_reads_total{outcome=not_found} 1",
        "palisade_secret_store_reads_total{outcome=resurrected} 1",
        "palisade_secret_store_reads_total{outcome=stale} 0",
        "palisade_secret_store_rotations_total{source=observed} 0",
        "palisade_secret_store_rotations_total{source=written} 1",
        "palisade_secret_store_snapshot_writes_total{outcome=error} 0",
        "palisade_secret_store_snapshot_writes_total{outcome=ok} 0",
    ];
    assert_eq!(lines, expected);
    assert!(lines.iter().all(|l| !l.contains("secret=")));
}

#[test]
fn secret_name_labels_are_opt_in() {
    let lines = run(true);
    assert!(
        lines.contains(&"palisade_secret_store_reads_total{outcome=fresh,secret=db} 1".to_owned()),
        "{lines:#?}"
    );
}

#[test]
fn a_stale_read_counts_as_stale_only() {
    let lines = palisade_testkit::record_metrics(|| async move {
        let clock = FakeClock::new();
        let s = Secrets::builder()
            .clock(clock.clone())
            .refresh_jitter(0.0)
            .stale_while_revalidate(Duration::from_secs(60))
            .provider(
                MemoryProvider::new()
                    .with_secret("db", "password-1")
                    .unwrap(),
            )
            .build()
            .unwrap();
        s.get("db").await.unwrap();
        clock.advance(Duration::from_secs(3600));
        s.get("db").await.unwrap();
    });
    for expected in [
        "palisade_secret_store_reads_total{outcome=fresh} 0",
        "palisade_secret_store_reads_total{outcome=stale} 1",
        "palisade_secret_store_reads_total{outcome=loaded} 1",
    ] {
        assert!(
            lines.contains(&expected.to_owned()),
            "{expected} not in {lines:#?}"
        );
    }
}
