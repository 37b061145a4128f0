//! Palisade in five minutes: everything in memory, no server needed.
//!
//! Run it from the repository root with `cargo run --example quickstart`.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!(
        "Palisade {} quickstart (in memory, no server)",
        palisade::VERSION
    );

    // -- ratelimit --
    #[cfg(feature = "ratelimit")]
    {
        use palisade::ratelimit::{Algorithm, MemoryStore, Policy, Quota, RateLimiter};

        // 3 per second and 100 per minute, checked together: a denial consumes nothing.
        let policy = Policy::builder("quickstart")
            .algorithm(Algorithm::SlidingWindowCounter)
            .quota("per_second", Quota::per_second(3))
            .quota("per_minute", Quota::per_minute(100))
            .build()
            .expect("a valid policy");
        let limiter = RateLimiter::new(MemoryStore::new());
        for i in 1..=5 {
            let d = limiter.acquire("user:42", &policy, 1).await;
            let verdict = if d.allowed { "allowed" } else { "denied (429)" };
            println!(
                "ratelimit: request {i} of user:42 {verdict}, remaining {:?}, retry after {:?}",
                d.remaining().unwrap_or(0),
                d.retry_after().unwrap_or_default()
            );
        }
    }

    // -- circuit-breaker --
    #[cfg(feature = "circuit-breaker")]
    {
        use palisade::circuit_breaker::{CircuitBreaker, Error, FakeClock, State};
        use std::time::Duration;

        // A fake clock so the demo does not wait for the open period to pass.
        let clock = FakeClock::new();
        let breaker = CircuitBreaker::builder("llm-provider")
            .count_window(20)
            .minimum_calls(4)
            .failure_rate_threshold(50.0)
            .open_wait(Duration::from_secs(10))
            .half_open_probes(1)
            .success_threshold(1)
            .clock(clock.clone())
            .build()
            .expect("a valid configuration");
        for i in 1..=4 {
            let r: Result<&str, Error<&str>> =
                breaker.call(async { Err("503 from upstream") }).await;
            println!(
                "circuit-breaker: call {i} -> {:?}, state {}",
                r.err().map(|e| e.to_string()),
                breaker.state()
            );
        }
        let answer = breaker
            .call_with_fallback(async { Ok::<_, &str>("live answer") }, |e| async move {
                println!("circuit-breaker: rejected fast ({e}), answering from the fallback");
                "cached answer"
            })
            .await;
        println!("circuit-breaker: got {answer:?}");
        clock.advance(Duration::from_secs(10));
        let probe = breaker.call(async { Ok::<_, &str>("live answer") }).await;
        println!(
            "circuit-breaker: after 10 s a probe -> {probe:?}, state {}",
            breaker.state()
        );
        assert_eq!(breaker.state(), State::Closed);
    }

    // -- semantic-cache --
    #[cfg(feature = "semantic-cache")]
    {
        use palisade::semantic_cache::{CacheKey, Computed, SemanticCache, Source, Usage};

        // In memory, with the built-in offline embedder; tenants never see each other's entries.
        let cache = SemanticCache::in_memory();
        let ask = |tenant: &str, prompt: &str| {
            CacheKey::new(tenant, "support", "gpt-4o-mini", prompt).expect("a valid key")
        };
        let served = cache
            .get_or_compute(&ask("acme", "How do I reset my password?"), || async {
                // The LLM call goes here; it runs once per distinct prompt.
                let usage = Usage::new(40, 60, 0.0004);
                Ok::<_, std::io::Error>(Computed::new("Open Settings > Security > Reset.", usage))
            })
            .await
            .expect("computed");
        println!("semantic-cache: first ask -> {:?}", served.source);
        for (tenant, prompt) in [
            ("acme", "how do I reset my password"),
            ("acme", "How can I reset my password?"),
            ("acme", "How do I not reset my password?"),
            ("globex", "How do I reset my password?"),
        ] {
            let outcome = match cache.lookup(&ask(tenant, prompt)).await.expect("lookup") {
                palisade::semantic_cache::Lookup::Hit(hit) => {
                    format!("{:?} hit, similarity {:.2}", hit.kind, hit.similarity)
                }
                palisade::semantic_cache::Lookup::Miss { reason, .. } => {
                    format!("miss ({reason:?})")
                }
            };
            println!("semantic-cache: {tenant}: {prompt:?} -> {outcome}");
        }
        let stats = cache.stats();
        assert!(matches!(served.source, Source::Computed));
        println!(
            "semantic-cache: {} exact + {} semantic hits, {} misses, {:.4} saved",
            stats.exact_hits, stats.semantic_hits, stats.misses, stats.cost_saved
        );
    }

    // -- migrate --
    #[cfg(feature = "migrate")]
    {
        use palisade::migrate::{MemoryStore, MigrationSet, Migrator};

        // The in-memory target runs `SET key value` / `DEL key` scripts; PostgreSQL runs SQL
        // files and Redis runs command or Lua files, behind the same Migrator.
        let set = MigrationSet::from_embedded(&[
            ("V1__feature_flags.up.sql", "SET flags:dark-mode off"),
            ("V1__feature_flags.down.sql", "DEL flags:dark-mode"),
            ("V2__plans.up.sql", "SET plans:default free"),
            ("V2__plans.down.sql", "DEL plans:default"),
        ])
        .expect("valid migration files");
        let store = MemoryStore::new();
        let migrator = Migrator::builder(store.clone(), set)
            .label("quickstart")
            .build()
            .expect("a valid migrator");
        print!(
            "migrate: plan\n{}",
            migrator.plan_up(None).await.expect("plan")
        );
        let report = migrator.run_on_startup().await.expect("migrated");
        println!("migrate: applied {:?}", report.applied);
        migrator.down_to(1).await.expect("reverted");
        let status = migrator.status().await.expect("status");
        // `Status` is serde-serialisable: a service can serve it on a status endpoint.
        println!(
            "migrate: at version {:?} of {:?}, {} pending",
            status.current_version, status.latest_version, status.pending
        );
        assert_eq!(store.get("plans:default"), None);
    }

    // -- secret-store --
    #[cfg(feature = "secret-store")]
    {
        use palisade::secret_store::{EnvProvider, ExposeSecret, MemoryProvider, Refused, Secrets};

        // The environment first (an explicit map here), then a writable in-memory store.
        let secrets = Secrets::builder()
            .provider(EnvProvider::from_vars(
                "APP_",
                [("APP_OPENAI_API_KEY", "sk-quickstart-0123456789abcdef")],
            ))
            .provider(MemoryProvider::new())
            .build()
            .expect("a valid secret store");
        let key = secrets
            .get("openai/api-key")
            .await
            .expect("from the environment");
        println!("secret-store: loaded {key:?}");
        let line = format!("calling upstream with {}", key.expose_secret());
        let scrubbed = secrets.redactor().scrub(&line);
        println!("secret-store: a log line that leaked it reads {scrubbed:?}");
        secrets
            .rotate("db/password", "first-password".into())
            .await
            .expect("written");
        secrets
            .rotate("db/password", "second-password".into())
            .await
            .expect("rotated");
        // The database has not caught up: the previous version is tried next.
        let answer = secrets
            .with_secret("db/password", |pw| async move {
                match pw.expose_secret() {
                    "first-password" => Ok(format!("connected with version {}", pw.version())),
                    _ => Err(Refused::Credential("password authentication failed")),
                }
            })
            .await
            .expect("one version works");
        println!("secret-store: {answer}");
    }

    // -- apikey --
    #[cfg(feature = "apikey")]
    {
        use palisade::apikey::{ApiKeys, KeySpec, MemoryStore, Pepper, Peppers};
        use std::time::Duration;

        // The pepper would come from a secret store; the key is shown once, stored as an HMAC.
        let peppers = Peppers::new(
            Pepper::new(1, *b"quickstart pepper (32 bytes min)").expect("a valid pepper"),
        );
        let keys = ApiKeys::builder(peppers)
            .store(MemoryStore::new())
            .build()
            .expect("a valid service");
        let created = keys
            .create(KeySpec::new("team-42", "quickstart").scopes(["read:*"]))
            .await
            .expect("created");
        let text = created.key.expose_secret();
        println!(
            "apikey: created key {} for team-42 (printed: {:?})",
            created.record.id, created.key
        );
        let ok = keys.verify(text, "read:reports").await.expect("verified");
        println!("apikey: read:reports -> {}", ok.is_verified());
        let no = keys.verify(text, "admin:users").await.expect("checked");
        println!("apikey: admin:users -> {:?}", no.denial());
        let new = keys
            .rotate(&created.record.id, Duration::from_secs(3600))
            .await
            .expect("rotated");
        let old = keys.verify(text, "read:reports").await.expect("checked");
        println!(
            "apikey: rotated to {}; the old key still works for an hour (in grace: {})",
            new.record.id,
            old.verified().is_some_and(|v| v.in_grace)
        );
    }

    println!("done");
}
