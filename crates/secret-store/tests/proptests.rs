//! Properties: the cache machine never serves what it must not, and arbitrary input never
//! panics (names, versions, `.env`/JSON/TOML files, sealed blobs, snapshot files).

use std::time::Duration;

use palisade_secret_store::{
    Failed, FailureMode, FileFormat, FileProvider, Freshness, MasterKey, Provider, Read,
    SecretName, Secrets, SecretsConfig, Version,
};
use proptest::prelude::*;

fn config(mode: FailureMode, ttl: u64, swr: u64, resurrect: u64, retry: u64) -> SecretsConfig {
    let mut c = SecretsConfig::default();
    c.ttl = Duration::from_micros(ttl.max(1));
    c.stale_while_revalidate = Duration::from_micros(swr);
    c.resurrect = Duration::from_micros(resurrect);
    c.retry_interval = Duration::from_micros(retry.max(1));
    c.failure_mode = mode;
    c
}

#[derive(Clone, Debug)]
enum Step {
    Wait(u64),
    Load(Option<u64>),
    FailTransient,
    Deny,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u64..5_000).prop_map(Step::Wait),
        proptest::option::of(1u64..10_000).prop_map(Step::Load),
        Just(Step::FailTransient),
        Just(Step::Deny),
    ]
}

fn mode() -> impl Strategy<Value = FailureMode> {
    prop_oneof![
        Just(FailureMode::FailOpen),
        Just(FailureMode::FailClosed),
        Just(FailureMode::FallbackToMemory)
    ]
}

proptest! {
    /// Run loads, failures and waits through the machine the way `Secrets` does and check
    /// at every read: never past the provider's expiry; never after a denial until the next
    /// load; under FallbackToMemory never more than `resurrect` after the first failure of
    /// an unbroken run (or past the value's own serve window); under FailClosed never past
    /// the serve window of the last load.
    #[test]
    fn the_cache_never_serves_what_it_must_not(
        mode in mode(),
        ttl in 1u64..2_000, swr in 0u64..2_000, resurrect in 0u64..5_000, retry in 1u64..500,
        jitter in 0.0f64..1.0,
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let p = config(mode, ttl, swr, resurrect, retry);
        let mut now = 1_000_000u64;
        let mut state: Option<Freshness> = None;
        let mut loaded: Option<Freshness> = None; // the state right after the last load
        for s in steps {
            match s {
                Step::Wait(d) => now += d,
                Step::Load(exp) => {
                    let f = Freshness::loaded(&p, now, jitter, exp.map(|e| now + e));
                    state = Some(f);
                    loaded = Some(f);
                }
                Step::FailTransient | Step::Deny => {
                    if let Some(f) = state {
                        // Only an expired or stale value is refreshed.
                        if f.read(now) != Read::Fresh {
                            state = match f.failed(&p, now, matches!(s, Step::FailTransient)) {
                                Failed::Serve(g) => Some(g),
                                Failed::Drop => None,
                            };
                        }
                        if matches!(s, Step::Deny) && f.read(now) != Read::Fresh {
                            prop_assert!(state.is_none(), "a denial drops the value");
                        }
                    }
                }
            }
            if let Some(f) = state && f.read(now) != Read::Expired {
                let l = loaded.unwrap();
                if let Some(h) = f.hard_expiry { prop_assert!(now < h); }
                match (mode, f.failing_since) {
                    (FailureMode::FallbackToMemory, Some(since)) => prop_assert!(
                        now < l.serve_until.max(since + resurrect),
                        "now {now} since {since} resurrect {resurrect} serve {}", l.serve_until
                    ),
                    (FailureMode::FailClosed, _) => prop_assert!(now < l.serve_until),
                    _ => {}
                }
                prop_assert!(f.failing_since.is_none_or(|s| s >= l.loaded_at));
            }
        }
    }

    #[test]
    fn names_and_versions_never_panic(s in "\\PC{0,300}") {
        if let Ok(n) = SecretName::new(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert!(!n.env_var().is_empty());
        }
        let _ = Version::new(&s);
    }

    #[test]
    fn any_secrets_file_never_panics(text in "(\\PC|\n|=|\"|'|#|\\\\){0,200}") {
        let dir = tempfile::tempdir().unwrap();
        for (file, format) in [("a.env", FileFormat::Dotenv), ("a.json", FileFormat::Json), ("a.toml", FileFormat::Toml)] {
            let path = dir.path().join(file);
            std::fs::write(&path, &text).unwrap();
            let p = FileProvider::new(&path).format(format);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let _ = p.list().await;
                let _ = p.get(&SecretName::new("a").unwrap(), None).await;
            });
        }
    }

    #[test]
    fn any_snapshot_file_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, &bytes).unwrap();
        let key = MasterKey::from_hex("k1", &"33".repeat(32)).unwrap();
        let s = Secrets::builder()
            .provider(palisade_secret_store::MemoryProvider::new())
            .snapshot(&path, key)
            .build();
        prop_assert!(s.is_ok());
    }
}
