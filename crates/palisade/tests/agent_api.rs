//! End-to-end tests of `examples/agent_api`: its app module, served on `127.0.0.1:0`, driven
//! over real HTTP with `reqwest` — in memory, on a throwaway Redis from the testkit (killed
//! and restarted), and on a PostgreSQL schema of its own.
//!
//! One process-wide log capture sits behind the secret redactor (as `main.rs` wires the
//! logs), so a test can show that no loaded secret reaches the logs.

#[path = "../../../examples/support/mod.rs"]
mod support;

#[path = "../../../examples/agent_api/app.rs"]
mod app;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use palisade::apikey::{ApiKeys, KeySpec};
use palisade::circuit_breaker::{ConfigOverride, SlidingWindow};
use palisade::ratelimit::{Algorithm, Policy, Quota};
use palisade::secret_store::SecretString;
use palisade::secret_store::redact::Redactor;
use palisade_testkit::{LogCapture, PgSchema, RedisServer};
use serde_json::{Value, json};

use app::fakes::FakeServices;
use app::stores::Database;

/// The redactor every app of this process loads its secrets into, and the capture its
/// writer feeds (every level, every target).
fn logs() -> &'static (Redactor, LogCapture) {
    static LOGS: OnceLock<(Redactor, LogCapture)> = OnceLock::new();
    LOGS.get_or_init(|| {
        let redactor = Redactor::new();
        let capture = LogCapture::new();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(redactor.make_writer(capture.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        (redactor, capture)
    })
}

fn hourly(name: &str, limit: u64) -> Policy {
    // GCRA refills one unit every hour / limit: nothing comes back while a test runs.
    Policy::single(name, Algorithm::Gcra, Quota::per_hour(limit)).unwrap()
}

/// Settings for a test: generous limits, breakers that trip after two failures and rest 1 s
/// (providers) or 300 ms (database, Redis), a 1 s provider timeout, the outbox retried
/// every 100 ms.
fn settings() -> app::Settings {
    let mut s = app::Settings {
        bootstrap_key: false,
        max_prompt_bytes: 200,
        outbox_retry: Duration::from_millis(100),
        ..app::Settings::default()
    };
    s.limits.global = hourly("global", 10_000);
    s.limits.per_ip = hourly("per-ip", 10_000);
    s.limits.per_key = hourly("per-key", 10_000);
    s.limits.per_user = hourly("per-user", 10_000);
    s.breakers.default.window = SlidingWindow::Count { size: 4 };
    s.breakers.default.minimum_calls = 2;
    s.breakers.default.consecutive_failures = Some(2);
    // Long enough that a loaded machine cannot let an open provider breaker go half-open
    // between two requests of a test that expects it open.
    s.breakers.default.open_wait = Duration::from_secs(1);
    s.breakers.default.call_timeout = Some(Duration::from_secs(1));
    let fast: ConfigOverride =
        toml::from_str("open_wait = \"300ms\"\nconsecutive_failures = 2\ncall_timeout = \"1s\"")
            .unwrap();
    s.breakers.breakers.insert("database".into(), fast.clone());
    s.breakers.breakers.insert("redis".into(), fast);
    s
}

/// One running app.
struct Running {
    base: String,
    http: reqwest::Client,
    keys: ApiKeys,
    database: Arc<Database>,
    fakes: Option<Arc<FakeServices>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(settings: app::Settings) -> Running {
    let built = app::build(settings, logs().0.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app::serve(listener, built.router, async {
        let _ = stopped.await;
    }));
    Running {
        base,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        keys: built.keys,
        database: built.database,
        fakes: built.fakes,
        _stop: stop,
    }
}

/// A response, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_problem(&self) -> bool {
        self.header("content-type") == Some("application/problem+json")
    }
}

async fn read(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

impl Running {
    async fn key(&self, user: &str, scopes: &[&str]) -> String {
        let created = self
            .keys
            .create(KeySpec::new(user, "test").scopes(scopes.iter().copied()))
            .await
            .unwrap();
        created.key.expose_secret().to_owned()
    }

    async fn generate(&self, key: &str, body: Value) -> Answer {
        self.generate_from(key, body, None).await
    }

    async fn generate_from(&self, key: &str, body: Value, ip: Option<&str>) -> Answer {
        let mut req = self
            .http
            .post(format!("{}/v1/generate", self.base))
            .bearer_auth(key)
            .json(&body);
        if let Some(ip) = ip {
            req = req.header("x-forwarded-for", ip);
        }
        read(req.send().await.unwrap()).await
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        read(req.send().await.unwrap()).await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn fakes(&self) -> &FakeServices {
        self.fakes.as_deref().expect("the app started its fakes")
    }

    fn memory_database(&self) -> &app::stores::MemoryDatabase {
        match &*self.database {
            Database::Memory(m) => m,
            Database::Postgres(_) => panic!("a memory database"),
        }
    }
}

fn component<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {health}"))
}

fn breaker<'a>(registry: &'a Value, name: &str) -> &'a Value {
    registry
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no breaker {name} in {registry}"))
}

/// Poll `check` every 50 ms for up to 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_validates_keeps_sessions_and_reports() {
    let app = start(settings()).await;
    let key = app.key("ada", &["generate", "usage:read"]).await;

    // An answer from the first provider, with a correlation id and rate-limit headers.
    let res = app
        .http
        .post(format!("{}/v1/generate", app.base))
        .bearer_auth(&key)
        .header("x-request-id", "corr-agent-api-1")
        .json(&json!({"prompt": "plan my week"}))
        .send()
        .await
        .unwrap();
    let ok = read(res).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("x-request-id"), Some("corr-agent-api-1"));
    assert_eq!(ok.body["provider"], "alpha");
    assert_eq!(ok.body["fallback"], false);
    assert_eq!(ok.body["usage"]["recorded"], "stored");
    assert!(ok.body["text"].as_str().unwrap().contains("plan my week"));
    assert!(ok.header("x-ratelimit-limit").is_some());
    assert!(ok.header("ratelimit-policy").is_some());
    assert!(ok.header("x-ratelimit-scope").is_some());
    assert!(
        logs().1.contains("request_id=corr-agent-api-1"),
        "the request's span carries its id in the logs"
    );

    // A session: the second call sends the first exchange along.
    for (turn, sent) in [(1, 1), (2, 3)] {
        let res = app
            .generate(
                &key,
                json!({"prompt": format!("turn {turn}"), "session": "trip-1"}),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.body["session"]["messages_sent"], sent);
        assert_eq!(res.body["session"]["store"], "memory");
        assert!(
            res.body["text"]
                .as_str()
                .unwrap()
                .contains(&format!("I read {sent} message(s)"))
        );
    }

    // Refusals are problem+json with a clear status, and carry the correlation id too.
    let anonymous = read(
        app.http
            .post(format!("{}/v1/generate", app.base))
            .json(&json!({"prompt": "hi"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.is_problem());
    assert!(anonymous.header("x-request-id").is_some());
    let reader = app.key("bea", &["usage:read"]).await;
    let forbidden = app.generate(&reader, json!({"prompt": "hi"})).await;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.is_problem());
    assert!(
        forbidden.body["detail"]
            .as_str()
            .unwrap()
            .contains("generate")
    );
    for (body, status) in [
        (json!({"prompt": "   "}), 422),
        (json!({"prompt": "x".repeat(201)}), 413),
        (json!({"prompt": "hi", "session": "no spaces"}), 422),
        (json!({"prompt": "hi", "max_tokens": 0}), 422),
        (json!({"prompt": "hi", "temperature": 2}), 422),
        (json!({"text": "hi"}), 422),
    ] {
        let res = app.generate(&key, body.clone()).await;
        assert_eq!(res.status, status, "{body} -> {}", res.body);
        assert!(res.is_problem(), "{body}");
        assert_eq!(res.body["status"], status);
    }
    let garbled = read(
        app.http
            .post(format!("{}/v1/generate", app.base))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(garbled.status, 400);
    assert!(garbled.is_problem());

    // Usage: three answered calls of `ada`, tokens counted.
    let usage = app.get("/v1/usage", Some(&key)).await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    assert_eq!(usage.body["user"], "ada");
    assert_eq!(usage.body["requests"], 3);
    assert!(usage.body["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(usage.body["queued"], 0);
    assert_eq!(
        app.get("/v1/usage", Some(&reader)).await.body["requests"],
        0
    );

    // Health: every breaker, store, secret provider and secret.
    let health = app.get("/health", None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    for name in [
        "breaker:provider:alpha",
        "breaker:provider:beta",
        "breaker:database",
        "database",
        "sessions",
        "ratelimit",
        "apikey",
        "secrets:vault",
    ] {
        assert_eq!(component(&health.body, name)["connected"], true, "{name}");
    }
    assert!(
        health.body["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "breaker:redis"),
        "no Redis, no redis breaker"
    );
    let pepper = component(&health.body, "secret:apikey/pepper");
    assert_eq!(pepper["backend"], "vault");
    assert_eq!(pepper["state"], "cached");
    let registry = app.get("/health/breakers", None).await;
    assert_eq!(breaker(&registry.body, "provider:alpha")["state"], "closed");
    assert_eq!(
        breaker(&registry.body, "provider:alpha")["window"]["calls"],
        3
    );

    let metrics = app.metrics().await;
    for line in [
        "agent_api_generations_total{outcome=\"served\"}",
        "agent_api_provider_calls_total{provider=\"alpha\",outcome=\"success\"}",
        "agent_api_usage_records_total{result=\"stored\"}",
        "palisade_ratelimit_decisions_total",
        "palisade_circuit_breaker_state{name=\"provider:alpha\"}",
        "palisade_apikey_verifications_total",
        "palisade_secret_store_reads_total",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    assert_eq!(
        app.get("/nowhere", None).await.status,
        404,
        "unknown routes are problem+json 404s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_per_key_user_ip_and_global_refund_what_they_refuse() {
    let mut s = settings();
    s.limits.per_key = hourly("per-key", 3);
    s.limits.per_user = hourly("per-user", 5);
    s.limits.per_ip = hourly("per-ip", 7);
    s.limits.global = hourly("global", 9);
    s.trusted_proxies = vec!["127.0.0.1/32".into()];
    let app = start(s).await;
    let k1 = app.key("carl", &["generate"]).await;
    let k2 = app.key("carl", &["generate"]).await;
    let k3 = app.key("dina", &["generate"]).await;
    let k4 = app.key("dina", &["generate"]).await;
    let prompt = json!({"prompt": "hello"});
    let (ip_a, ip_b) = (Some("203.0.113.7"), Some("198.51.100.9"));

    // Each step: admitted requests, then one refused by the named limit. A refused request
    // is counted by no limit, or the later steps would be refused earlier.
    for (key, ip, admitted, scope, policy) in [
        (&k1, ip_a, 3, "key", "per-key"),
        (&k2, ip_a, 2, "user", "per-user"),
        (&k3, ip_a, 2, "ip", "per-ip"),
        (&k4, ip_b, 2, "global", "global"),
    ] {
        for i in 0..admitted {
            let res = app.generate_from(key, prompt.clone(), ip).await;
            assert_eq!(res.status, 200, "{scope} #{i}: {}", res.body);
        }
        let refused = app.generate_from(key, prompt.clone(), ip).await;
        assert_eq!(refused.status, 429, "{scope}: {}", refused.body);
        assert!(refused.is_problem());
        assert_eq!(refused.header("x-ratelimit-scope"), Some(scope));
        assert_eq!(refused.body["policy"], policy);
        assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
        let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!(retry > 0);
    }
    // Nine answered calls: the fake provider saw exactly those.
    assert_eq!(app.fakes().provider("alpha").served(), 9);
    // Unauthenticated calls are limited too (by IP and globally, before the key check).
    let res = read(
        app.http
            .post(format!("{}/v1/generate", app.base))
            .header("x-forwarded-for", "192.0.2.1")
            .json(&prompt)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 429, "the global budget is spent: {}", res.body);
    assert!(
        app.metrics()
            .await
            .contains("agent_api_rate_limited_total{scope=\"user\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_fall_back_and_their_breakers_open_and_close() {
    let app = start(settings()).await;
    let key = app.key("eve", &["generate"]).await;
    let prompt = json!({"prompt": "summarise the incident"});
    let alpha = app.fakes().provider("alpha");
    let beta = app.fakes().provider("beta");

    // alpha fails: beta answers, twice; then alpha's breaker is open.
    alpha.set_failing(true);
    for _ in 0..2 {
        let res = app.generate(&key, prompt.clone()).await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.body["provider"], "beta");
        assert_eq!(res.body["fallback"], true);
        assert_eq!(res.body["skipped"][0]["reason"], "failed");
    }
    let registry = app.get("/health/breakers", None).await;
    assert_eq!(breaker(&registry.body, "provider:alpha")["state"], "open");
    let health = app.get("/health", None).await;
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(
        component(&health.body, "breaker:provider:alpha")["connected"],
        false
    );
    // Open: alpha is not even called.
    let calls = alpha.calls();
    let res = app.generate(&key, prompt.clone()).await;
    assert_eq!(res.body["provider"], "beta");
    assert_eq!(res.body["skipped"][0]["reason"], "circuit_open");
    assert_eq!(alpha.calls(), calls);

    // Both down: 503 problem+json naming why each was skipped, with Retry-After.
    beta.set_failing(true);
    let res = app.generate(&key, prompt.clone()).await;
    assert_eq!(res.status, 503);
    assert!(res.is_problem());
    assert_eq!(res.body["skipped"][0]["reason"], "circuit_open");
    assert_eq!(res.body["skipped"][1]["reason"], "failed");
    assert!(res.header("retry-after").is_some());

    // alpha recovers: after the open wait, a probe closes its breaker.
    alpha.set_failing(false);
    beta.set_failing(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = app.generate(&key, prompt.clone()).await;
    assert_eq!(res.body["provider"], "alpha", "{}", res.body);
    let registry = app.get("/health/breakers", None).await;
    assert_eq!(breaker(&registry.body, "provider:alpha")["state"], "closed");

    // A slow provider is cut off at the call timeout (1 s) and counted as a failure.
    alpha.set_delay(Duration::from_secs(3));
    let res = app.generate(&key, prompt.clone()).await;
    assert_eq!(res.body["provider"], "beta", "{}", res.body);
    assert_eq!(res.body["skipped"][0]["reason"], "timeout");
    alpha.set_delay(Duration::ZERO);

    let metrics = app.metrics().await;
    for line in [
        "agent_api_provider_calls_total{provider=\"alpha\",outcome=\"failed\"}",
        "agent_api_provider_calls_total{provider=\"alpha\",outcome=\"circuit_open\"}",
        "agent_api_provider_calls_total{provider=\"alpha\",outcome=\"timeout\"}",
        "agent_api_generations_total{outcome=\"fallback\"}",
        "agent_api_generations_total{outcome=\"unavailable\"}",
        "palisade_circuit_breaker_transitions_total{name=\"provider:alpha\",from=\"closed\",to=\"open\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_waits_in_the_outbox_while_the_database_is_down() {
    let app = start(settings()).await;
    let key = app.key("finn", &["generate", "usage:read"]).await;
    let prompt = json!({"prompt": "draft a reply"});

    app.memory_database().set_failing(true);
    for _ in 0..3 {
        let res = app.generate(&key, prompt.clone()).await;
        assert_eq!(res.status, 200, "the answer does not wait for the ledger");
        assert_eq!(res.body["usage"]["recorded"], "queued");
    }
    let health = app.get("/health", None).await;
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(component(&health.body, "database")["connected"], false);
    assert_eq!(component(&health.body, "breaker:database")["state"], "open");
    assert!(
        component(&health.body, "usage_outbox")["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 ")
    );
    let usage = app.get("/v1/usage", Some(&key)).await;
    assert_eq!(usage.status, 503);
    assert!(usage.is_problem());

    // Back: the retry task writes the outbox once the breaker lets a call through.
    app.memory_database().set_failing(false);
    eventually("the outbox is written", || async {
        let usage = app.get("/v1/usage", Some(&key)).await;
        usage.status == 200 && usage.body["requests"] == 3 && usage.body["queued"] == 0
    })
    .await;
    let health = app.get("/health", None).await;
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    let metrics = app.metrics().await;
    assert!(metrics.contains("agent_api_usage_records_total{result=\"queued\"}"));
    assert!(metrics.contains("agent_api_usage_records_total{result=\"flushed\"}"));
}

fn scratch_file(name: &str) -> PathBuf {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::SystemTime::now());
    std::env::temp_dir().join(format!(
        "palisade-agent-api-{}-{n:x}-{name}",
        std::process::id()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_serves_secrets_while_vault_is_down_and_no_secret_reaches_the_logs() {
    // Values no other test uses, so the log scan below means something.
    let marker = format!("{:x}", std::process::id());
    let secrets: BTreeMap<String, String> = [
        (
            "providers/alpha/api-key",
            format!("alpha-file-key-{marker}-q8Zt"),
        ),
        (
            "providers/beta/api-key",
            format!("beta-file-key-{marker}-w2Rx"),
        ),
        (
            "apikey/pepper",
            format!("pepper-for-the-vault-test-{marker}-0123456789"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let fakes = FakeServices::start(secrets.clone(), &["alpha".into(), "beta".into()])
        .await
        .unwrap();
    fakes.set_vault_sealed(true);

    let mut s = settings();
    s.secrets.vault_address = Some(fakes.address.clone());
    s.secrets.vault_token = Some(SecretString::from(fakes.vault_token.clone()));
    for p in &mut s.providers {
        p.url = Some(fakes.provider_url(&p.name));
    }
    // Vault down and no file: the service refuses to start, saying why.
    let e = app::build(s.clone(), logs().0.clone()).await.unwrap_err();
    assert!(e.to_string().contains("loading secrets"), "{e}");

    let file = scratch_file("secrets.env");
    let mut text = String::from("# fallback copy of the Vault secrets\n");
    for (name, value) in &secrets {
        let var = name.to_uppercase().replace(['/', '-'], "_");
        text.push_str(&format!("{var}={value}\n"));
    }
    std::fs::write(&file, text).unwrap();
    s.secrets.file = Some(file.clone());
    let app = start(s).await;

    // Started from the file; health says which provider served each secret.
    let health = app.get("/health", None).await;
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(component(&health.body, "secrets:vault")["connected"], false);
    assert_eq!(component(&health.body, "secrets:file")["connected"], true);
    for name in secrets.keys() {
        let c = component(&health.body, &format!("secret:{name}"));
        assert_eq!(c["backend"], "file", "{name}");
    }
    // The provider accepted the key read from the file.
    let key = app.key("gus", &["generate"]).await;
    let res = app.generate(&key, json!({"prompt": "hello"})).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(fakes.provider("alpha").served(), 1);

    // Vault back: health sees it at once (the cached values keep serving meanwhile).
    fakes.set_vault_sealed(false);
    let health = app.get("/health", None).await;
    assert_eq!(component(&health.body, "secrets:vault")["connected"], true);
    assert_eq!(health.body["status"], "ok", "{}", health.body);

    // No loaded value ever reached the logs; one logged by mistake is scrubbed.
    let leaked = &secrets["providers/alpha/api-key"];
    tracing::warn!("a careless line with {leaked} in it");
    let text = logs().1.text();
    assert!(text.contains("a careless line with [REDACTED] in it"));
    for value in secrets.values() {
        assert!(
            !text.contains(value.as_str()),
            "a secret value reached the logs"
        );
    }
    assert!(!text.contains(&key), "an API key reached the logs");
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_instances_share_keys_limits_and_sessions_and_survive_its_death() {
    let mut server = RedisServer::builder().start_async().await.unwrap();
    let mut s = settings();
    s.redis_url = Some(server.url());
    s.limits.per_key = hourly("per-key", 4);
    // A verified key stays usable for a minute without Redis (the verify cache).
    s.apikey.cache_ttl = Duration::from_secs(60);
    let a = start(s.clone()).await;
    let b = start(s).await;
    let key = a.key("hana", &["generate"]).await;

    // A key issued on `a` works on `b`; its budget is shared (4 an hour).
    for (app, session) in [(&a, 1), (&b, 3)] {
        let res = app
            .generate(
                &key,
                json!({"prompt": "remember this", "session": "shared"}),
            )
            .await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.body["session"]["store"], "redis");
        assert_eq!(
            res.body["session"]["messages_sent"], session,
            "the session is shared through Redis"
        );
    }
    for app in [&a, &b] {
        assert_eq!(app.generate(&key, json!({"prompt": "x"})).await.status, 200);
    }
    let refused = a.generate(&key, json!({"prompt": "x"})).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-scope"), Some("key"));
    let health = a.get("/health", None).await;
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    assert_eq!(component(&health.body, "sessions")["backend"], "redis");
    assert_eq!(component(&health.body, "ratelimit")["backend"], "redis");
    assert_eq!(component(&health.body, "apikey")["backend"], "redis");

    // Redis dies: requests are still served (limits from memory, sessions in memory behind
    // the open `redis` breaker), and health says what is missing.
    tokio::task::block_in_place(|| server.kill());
    for i in 0..3 {
        let res = b
            .generate(&key, json!({"prompt": "still there?", "session": "shared"}))
            .await;
        assert_eq!(res.status, 200, "#{i}: {}", res.body);
        assert_eq!(res.body["session"]["store"], "memory_fallback");
    }
    let health = b.get("/health", None).await;
    assert_eq!(health.body["status"], "degraded");
    for name in ["sessions", "ratelimit", "apikey"] {
        assert_eq!(component(&health.body, name)["connected"], false, "{name}");
    }
    assert_eq!(component(&health.body, "breaker:redis")["state"], "open");

    // Back (empty): the next requests find Redis again once the breaker lets a probe
    // through, without a restart of the service.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    eventually("sessions on Redis and health ok again", || async {
        // A new key each time (this one's budget is spent); creating it needs Redis.
        let Ok(created) = b
            .keys
            .create(KeySpec::new("kai", "k").scopes(["generate"]))
            .await
        else {
            return false;
        };
        let res = b
            .generate(
                created.key.expose_secret(),
                json!({"prompt": "back?", "session": "fresh"}),
            )
            .await;
        res.body["session"]["store"] == "redis"
            && b.get("/health", None).await.body["status"] == "ok"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_lands_in_postgresql() {
    let schema = PgSchema::create().unwrap();
    let mut s = settings();
    s.database_url = Some(schema.url());
    let app = start(s).await;
    let key = app.key("jo", &["generate", "usage:read"]).await;
    for _ in 0..2 {
        let res = app.generate(&key, json!({"prompt": "one two three"})).await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.body["usage"]["recorded"], "stored");
    }
    let usage = app.get("/v1/usage", Some(&key)).await;
    assert_eq!(usage.body["requests"], 2, "{}", usage.body);
    let health = app.get("/health", None).await;
    let db = component(&health.body, "database");
    assert_eq!(
        (db["backend"].as_str(), db["connected"].as_bool()),
        (Some("postgres"), Some(true))
    );

    let (rows, key_ids): (i64, Vec<String>) = tokio::task::spawn_blocking(move || {
        let mut client = schema.connect().unwrap();
        let rows = client
            .query_one("SELECT count(*) FROM agent_usage WHERE user_id = 'jo'", &[])
            .unwrap()
            .get(0);
        let ids = client
            .query("SELECT key_id FROM agent_usage", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (rows, ids)
    })
    .await
    .unwrap();
    assert_eq!(rows, 2);
    for id in key_ids {
        assert!(key.contains(&id), "the key id, never the key, is stored");
        assert!(!id.contains(&key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_settings_file_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent_api");
    let s: app::Settings = support::settings::from_file(&dir.join("agent_api.toml")).unwrap();
    assert_eq!(s.port, 3002);
    assert_eq!(s.apikey.prefix, "agent");
    assert_eq!(s.providers.len(), 2);
    assert_eq!(s.limits.per_user.name(), "per-user");
    assert!(s.breakers.breakers.contains_key("database"));
    assert_eq!(
        s.secrets.file.as_deref(),
        Some(std::path::Path::new("examples/agent_api/secrets.env"))
    );
    // The sample secrets file holds what the demo Vault holds: it can stand in for it.
    let text = std::fs::read_to_string(dir.join("secrets.env")).unwrap();
    let demo = app::fakes::demo_secrets(&["alpha".into(), "beta".into()]);
    for (name, value) in demo {
        let var = name.to_uppercase().replace(['/', '-'], "_");
        assert!(
            text.lines()
                .any(|l| l == format!("{var}={value}") || l == format!("{var}=\"{value}\"")),
            "{var}"
        );
    }
}
