//! End-to-end tests of `examples/ai_gateway`: its app module, served on `127.0.0.1:0`,
//! driven over real HTTP with `reqwest` — in memory, on throwaway Redis servers from the
//! testkit (two instances sharing one; the server killed under them), and on a PostgreSQL
//! schema of its own.
//!
//! One process-wide log capture sits behind the secret redactor (as `main.rs` wires the
//! logs), so a test can show that no secret reaches the logs. Tests whose metric lines are
//! asserted exactly name their providers uniquely (the recorder is process-wide).

#[path = "../../../examples/support/mod.rs"]
mod support;

#[path = "../../../examples/ai_gateway/app.rs"]
mod app;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use palisade::secret_store::redact::Redactor;
use palisade_testkit::{LogCapture, PgSchema, RedisServer};
use serde_json::{Value, json};

use app::settings::{ProviderSettings, Settings};

/// The redactor every app of this process loads its secrets into, and the capture its
/// writer feeds (every level, every target).
fn logs() -> &'static (Redactor, LogCapture) {
    static LOGS: OnceLock<(Redactor, LogCapture)> = OnceLock::new();
    LOGS.get_or_init(|| {
        let redactor = Redactor::new();
        let capture = LogCapture::new();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(redactor.make_writer(capture.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        (redactor, capture)
    })
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ai-gateway-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings for a test: providers named `<tag>-alpha` and `<tag>-beta` (so metric lines are
/// this test's own), no environment secrets (demo values), backups in `backups`, breakers
/// that open after three failures and stay open for the test.
fn settings(tag: &str, backups: &TempDir) -> Settings {
    let mut s = Settings::default();
    s.secrets.env_prefix = "AI_GATEWAY_TEST_NEVER_SET_".to_owned();
    s.migrations.backup_dir = backups.0.clone();
    s.providers = vec![
        ProviderSettings::fake(&format!("{tag}-alpha"), 0.15, 0.60),
        ProviderSettings::fake(&format!("{tag}-beta"), 0.25, 1.00),
    ];
    s.breakers.default.open_wait = Duration::from_secs(60);
    s
}

/// One running gateway.
struct Running {
    base: String,
    http: reqwest::Client,
    app: app::App,
    admin: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(settings: Settings) -> Running {
    let (redactor, _) = logs();
    let names: Vec<&str> = settings.providers.iter().map(|p| p.name.as_str()).collect();
    let secrets = app::secrets_builder(&settings.secrets, &names)
        .redactor(redactor.clone())
        .build()
        .unwrap();
    let app = app::build_with_secrets(settings, secrets).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    let admin = app
        .admin_key
        .as_ref()
        .map(|k| k.key.expose_secret().to_owned())
        .unwrap_or_default();
    Running {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        app,
        admin,
        server,
    }
}

impl Running {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, key, None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(key), Some(body))
            .await
    }

    async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.send(method, path, Some(&self.admin), Some(body)).await
    }

    async fn admin_put(&self, path: &str, body: Value) -> Value {
        let res = self.admin_send(reqwest::Method::PUT, path, body).await;
        assert_eq!(res.status(), 200, "PUT {path}");
        res.json().await.unwrap()
    }

    /// A new key of `tier` for `owner`, made through the admin route.
    async fn key(&self, owner: &str, tier: &str) -> (String, String) {
        let res = self
            .post(
                "/admin/keys",
                &self.admin,
                json!({ "owner": owner, "name": "test", "tier": tier }),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        (
            body["key"].as_str().unwrap().to_owned(),
            body["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn chat(&self, key: &str, prompt: &str) -> reqwest::Response {
        self.post("/v1/chat/completions", key, chat_body(prompt))
            .await
    }

    async fn health(&self) -> Value {
        let res = self.get("/health", None).await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        self.get("/metrics", None).await.text().await.unwrap()
    }
}

fn chat_body(prompt: &str) -> Value {
    json!({ "model": "small", "messages": [{ "role": "user", "content": prompt }] })
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .unwrap()
}

fn component<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {health}"))
}

/// The value of the metric line starting with `prefix` (labels included), if any.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_sample_settings_file_is_valid_and_documents_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/ai_gateway/ai_gateway.toml");
    let sample: Settings = support::settings::from_file(&path).unwrap();
    let defaults = Settings::default();
    assert_eq!(sample.port, defaults.port);
    assert_eq!(sample.limits.free, defaults.limits.free);
    assert_eq!(sample.limits.premium, defaults.limits.premium);
    assert_eq!(sample.limits.batch_max, defaults.limits.batch_max);
    assert_eq!(sample.models, defaults.models);
    assert_eq!(sample.breakers, defaults.breakers);
    assert_eq!(sample.providers.len(), 2);
    assert_eq!(sample.cache.ttl, defaults.cache.ttl);
    assert!(sample.secrets.demo_values);
    // Unknown keys are refused.
    let err = toml::from_str::<Settings>("prot = 8080").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[tokio::test]
async fn keys_and_scopes_guard_every_route() {
    let backups = TempDir::new("scopes");
    let gw = start(settings("scopes", &backups)).await;

    // No key, a made-up key: 401 problem+json with WWW-Authenticate, the request id echoed.
    let res = gw
        .send(
            reqwest::Method::POST,
            "/v1/chat/completions",
            None,
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(header(&res, "www-authenticate"), "Bearer");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert!(!header(&res, "x-request-id").is_empty());
    let res = gw.chat("gw_live_not-a-key", "hi").await;
    assert_eq!(res.status(), 401);

    let (free, free_id) = gw.key("acme", "free").await;
    assert!(free.starts_with("gw_live_"));
    let res = gw.chat(&free, "What is a circuit breaker?").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-tier"), "free");

    // A free key has no `ai:batch` and no `admin`: 403 insufficient_scope.
    let res = gw
        .post("/v1/batch", &free, json!({ "requests": [chat_body("a")] }))
        .await;
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "insufficient_scope");
    let res = gw.get("/admin/costs", Some(&free)).await;
    assert_eq!(res.status(), 403);

    // The caller's request id is kept.
    let res = gw
        .http
        .get(format!("{}/v1/models", gw.base))
        .bearer_auth(&free)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-request-id"), "req-42");
    // ... and is in the log line every response gets at the default level (INFO).
    let logged = logs().1.text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("request_id=req-42")),
        "no INFO line with the request id in:\n{logged}"
    );
    let models: Value = res.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "small");

    // Bad input: problem+json 400s that say what is wrong.
    for (body, needle) in [
        (
            json!({ "model": "huge", "messages": [{ "role": "user", "content": "x" }] }),
            "unknown model",
        ),
        (json!({ "model": "small", "messages": [] }), "empty"),
        (
            json!({ "model": "small", "messages": [{ "role": "user", "content": "x" }], "stream": true }),
            "streaming",
        ),
    ] {
        let res = gw.post("/v1/chat/completions", &free, body).await;
        assert_eq!(res.status(), 400);
        assert_eq!(header(&res, "content-type"), "application/problem+json");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    // A body of the wrong shape: 422, naming the field; not JSON: 400; not declared JSON: 415.
    let res = gw
        .post("/v1/chat/completions", &free, json!({ "model": "small" }))
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("messages"),
        "{problem}"
    );
    let res = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&free)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&free)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = gw
        .post(
            "/admin/keys",
            &gw.admin,
            json!({ "owner": "acme", "name": "x", "tier": "gold" }),
        )
        .await;
    assert_eq!(res.status(), 400);

    // The admin lists and revokes; a revoked key is refused at once (memory store).
    let res = gw.get("/admin/keys?owner=acme", Some(&gw.admin)).await;
    let listed: Value = res.json().await.unwrap();
    assert_eq!(listed["keys"][0]["id"], free_id.as_str());
    assert!(listed["keys"][0].get("key").is_none(), "never the key text");
    let res = gw
        .send(
            reqwest::Method::DELETE,
            &format!("/admin/keys/{free_id}"),
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = gw.chat(&free, "What is a circuit breaker?").await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "revoked");

    let res = gw.get("/nowhere", None).await;
    assert_eq!(res.status(), 404);
}

/// The size limit sits on each route that reads a body (not on the router): every one of
/// them must still refuse a body over `max_body_bytes` with a 413 problem+json.
#[tokio::test]
async fn every_route_that_reads_a_body_refuses_one_over_the_limit() {
    let backups = TempDir::new("body-limit");
    let mut s = settings("body-limit", &backups);
    s.max_body_bytes = 2048;
    let gw = start(s).await;
    let big = "x".repeat(4096);

    let (premium, _) = gw.key("acme", "premium").await;
    for (path, key, body) in [
        ("/v1/chat/completions", premium.as_str(), chat_body(&big)),
        (
            "/v1/batch",
            premium.as_str(),
            json!({ "requests": [chat_body(&big)] }),
        ),
        (
            "/admin/keys",
            gw.admin.as_str(),
            json!({ "owner": big, "name": "x", "tier": "free" }),
        ),
    ] {
        let res = gw.post(path, key, body).await;
        assert_eq!(res.status(), 413, "POST {path}");
        assert_eq!(header(&res, "content-type"), "application/problem+json");
        assert!(!header(&res, "x-request-id").is_empty());
    }
    let res = gw
        .admin_send(
            reqwest::Method::PUT,
            "/admin/providers/body-limit-alpha/fault",
            json!({ "mode": big }),
        )
        .await;
    assert_eq!(res.status(), 413, "PUT fault");

    // Under the limit, the same routes answer.
    let res = gw.chat(&premium, "What is a circuit breaker?").await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn tiers_limit_ai_routes_by_key_and_batches_weigh_per_prompt() {
    let backups = TempDir::new("tiers");
    let gw = start(settings("tiers", &backups)).await;
    let (free, _) = gw.key("free-co", "free").await;
    let (other_free, _) = gw.key("free-co", "free").await;

    // free: 10 a minute on AI routes, each answer counted (cache hits too).
    for i in 0..10 {
        let res = gw.chat(&free, &format!("question {i}")).await;
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(header(&res, "x-ratelimit-limit"), "10");
        assert_eq!(header(&res, "x-ratelimit-remaining"), (9 - i).to_string());
    }
    let res = gw.chat(&free, "question 10").await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert!(header(&res, "retry-after").parse::<u64>().unwrap() >= 1);
    assert!(header(&res, "ratelimit").contains("\"per_minute\";r=0"));
    assert!(header(&res, "ratelimit-policy").contains("\"per_hour\";q=60;w=3600"));
    assert_eq!(header(&res, "x-ratelimit-tier"), "free");
    // Keyed on the key id: another key of the same owner has its own budget.
    assert_eq!(gw.chat(&other_free, "question 10").await.status(), 200);
    // Other routes have their own budget.
    assert_eq!(gw.get("/v1/usage", Some(&free)).await.status(), 200);

    // premium: 50 a minute; a batch of 5 prompts costs 5.
    let (premium, _) = gw.key("premium-co", "premium").await;
    let res = gw.chat(&premium, "hello").await;
    assert_eq!(header(&res, "x-ratelimit-limit"), "50");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "49");
    let batch: Vec<Value> = (0..5).map(|i| chat_body(&format!("batch {i}"))).collect();
    let res = gw
        .post("/v1/batch", &premium, json!({ "requests": batch }))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "44");
    // Larger than batch_max: refused before anything is charged.
    let too_many: Vec<Value> = (0..17).map(|i| chat_body(&format!("x {i}"))).collect();
    let res = gw
        .post("/v1/batch", &premium, json!({ "requests": too_many }))
        .await;
    assert_eq!(res.status(), 400);
    // A batch larger than what is left is refused whole, and charges nothing.
    for _ in 0..3 {
        let b: Vec<Value> = (0..14).map(|i| chat_body(&format!("fill {i}"))).collect();
        assert_eq!(
            gw.post("/v1/batch", &premium, json!({ "requests": b }))
                .await
                .status(),
            200
        );
    }
    let b: Vec<Value> = (0..3).map(|i| chat_body(&format!("over {i}"))).collect();
    let res = gw
        .post("/v1/batch", &premium, json!({ "requests": b }))
        .await;
    assert_eq!(res.status(), 429, "2 units left, 3 asked");
    let res = gw.chat(&premium, "one more").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "1");

    // admin: unlimited (no counting headers), tier still named.
    for i in 0..15 {
        let res = gw.chat(&gw.admin, &format!("admin {i}")).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
        assert_eq!(header(&res, "x-ratelimit-tier"), "admin");
    }
}

#[tokio::test]
async fn the_hour_quota_holds_when_the_minute_quota_would_not() {
    let backups = TempDir::new("hour");
    let mut s = settings("hour", &backups);
    s.limits.free.per_minute = 100;
    s.limits.free.per_hour = 3;
    let gw = start(s).await;
    let (free, _) = gw.key("hourly", "free").await;
    for i in 0..3 {
        assert_eq!(gw.chat(&free, &format!("q{i}")).await.status(), 200);
    }
    let res = gw.chat(&free, "q3").await;
    assert_eq!(res.status(), 429);
    assert!(header(&res, "ratelimit").contains("\"per_hour\";r=0"));
    assert!(header(&res, "retry-after").parse::<u64>().unwrap() > 60);
}

#[tokio::test]
async fn a_failing_provider_opens_its_breaker_and_the_next_one_answers() {
    let backups = TempDir::new("breaker");
    let gw = start(settings("brk", &backups)).await;
    let (key, _) = gw.key("breaker-co", "premium").await;
    let alpha = gw.app.gateway.upstreams.get("brk-alpha").unwrap();
    let alpha_calls = || alpha.fake.as_ref().unwrap().control.calls();

    let res = gw.chat(&key, "first").await;
    assert_eq!(header(&res, "x-gateway-provider"), "brk-alpha");

    let set = gw
        .admin_put(
            "/admin/providers/brk-alpha/fault",
            json!({ "mode": "fail" }),
        )
        .await;
    assert_eq!(set["mode"], "fail");
    // Three failures in a row open alpha's breaker; beta answers every one of them.
    for i in 0..3 {
        let res = gw.chat(&key, &format!("during outage {i}")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-gateway-provider"), "brk-beta");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["gateway"]["fallback_from"][0]["provider"], "brk-alpha");
        assert_eq!(
            body["gateway"]["fallback_from"][0]["error"],
            "upstream answered 503"
        );
    }
    let health = gw.health().await;
    assert_eq!(component(&health, "breaker:brk-alpha")["state"], "open");
    assert_eq!(component(&health, "breaker:brk-beta")["state"], "closed");
    assert_eq!(component(&health, "provider:brk-alpha")["connected"], false);
    assert_eq!(health["status"], "degraded");

    // Open: alpha is not called at all any more.
    let before = alpha_calls();
    let res = gw.chat(&key, "while open").await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["gateway"]["provider"], "brk-beta");
    assert!(
        body["gateway"]["fallback_from"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("breaker open")
    );
    assert_eq!(alpha_calls(), before);

    // Both down: 503 problem+json naming both.
    gw.admin_put("/admin/providers/brk-beta/fault", json!({ "mode": "fail" }))
        .await;
    let res = gw.chat(&key, "nobody answers").await;
    assert_eq!(res.status(), 503);
    let problem: Value = res.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("brk-alpha") && detail.contains("brk-beta"),
        "{detail}"
    );

    // Recovery: faults off, breakers closed by hand; alpha answers again.
    gw.admin_put("/admin/providers/brk-beta/fault", json!({ "mode": "none" }))
        .await;
    gw.admin_put(
        "/admin/providers/brk-alpha/fault",
        json!({ "mode": "none" }),
    )
    .await;
    let closed = gw
        .admin_put("/admin/breakers/brk-alpha", json!({ "action": "close" }))
        .await;
    assert_eq!(closed["state"], "closed");
    let res = gw.chat(&key, "after recovery").await;
    assert_eq!(header(&res, "x-gateway-provider"), "brk-alpha");

    // Per-provider costs: this instance's counters, the ledger's sums, the metric lines.
    let res = gw.get("/admin/costs", Some(&gw.admin)).await;
    let costs: Value = res.json().await.unwrap();
    let providers = costs["providers"].as_array().unwrap();
    let alpha = &providers[0];
    let beta = &providers[1];
    assert_eq!(alpha["provider"], "brk-alpha");
    assert_eq!(alpha["successes"], 2);
    assert_eq!(alpha["failures"], 3, "three to open it");
    assert_eq!(alpha["rejected"], 2, "while open, and while beta was down");
    assert_eq!(beta["successes"], 4);
    assert_eq!(beta["failures"], 1);
    assert_eq!(beta["fallbacks"], 4);
    assert!(beta["cost"].as_f64().unwrap() > alpha["cost"].as_f64().unwrap());
    let ledger = &costs["ledger"]["providers"];
    assert_eq!(ledger["brk-alpha"]["requests"], 2);
    assert_eq!(ledger["brk-beta"]["requests"], 4);
    let spent_alpha = ledger["brk-alpha"]["cost"].as_f64().unwrap();
    assert!((spent_alpha - alpha["cost"].as_f64().unwrap()).abs() < 1e-12);

    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ai_gateway_fallbacks_total{provider=\"brk-beta\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "ai_gateway_provider_calls_total{provider=\"brk-alpha\",outcome=\"rejected\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "ai_gateway_provider_calls_total{provider=\"brk-alpha\",outcome=\"failure\"}"
        ),
        Some(3.0)
    );
    let micros = metric(
        &metrics,
        "ai_gateway_provider_cost_micros_total{provider=\"brk-beta\"}",
    )
    .unwrap();
    assert_eq!(micros, (beta["cost"].as_f64().unwrap() * 1e6).floor());
    assert!(metrics.contains("palisade_circuit_breaker_transitions_total{name=\"brk-alpha\""));
}

#[tokio::test]
async fn a_slow_provider_is_cut_off_by_its_breaker_timeout() {
    let backups = TempDir::new("slow");
    let mut s = settings("slow", &backups);
    s.breakers.default.call_timeout = Some(Duration::from_millis(300));
    s.providers[0].fault = app::settings::FaultMode::Slow;
    s.providers[0].slow_delay = Duration::from_secs(5);
    let gw = start(s).await;
    let (key, _) = gw.key("slow-co", "premium").await;
    let started = Instant::now();
    let res = gw.chat(&key, "are you there").await;
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(3));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["gateway"]["provider"], "slow-beta");
    assert_eq!(
        body["gateway"]["fallback_from"][0]["error"],
        "timed out after 300 ms"
    );
}

#[tokio::test]
async fn the_cache_answers_again_per_owner_and_counts_what_it_saved() {
    let backups = TempDir::new("cache");
    let gw = start(settings("cache", &backups)).await;
    let (key, _) = gw.key("cache-co", "premium").await;
    let (other, _) = gw.key("someone-else", "premium").await;

    let res = gw.chat(&key, "How do I reset my password?").await;
    assert_eq!(header(&res, "x-gateway-cache"), "miss");
    let first: Value = res.json().await.unwrap();
    let cost = first["gateway"]["cost"].as_f64().unwrap();
    let tokens = first["usage"]["total_tokens"].as_u64().unwrap();
    assert!(cost > 0.0);

    // The same prompt: an exact hit, free, with what it saved.
    let res = gw.chat(&key, "how do I reset my password").await;
    assert_eq!(header(&res, "x-gateway-cache"), "exact_hit");
    let hit: Value = res.json().await.unwrap();
    assert_eq!(hit["choices"], first["choices"]);
    assert_eq!(hit["gateway"]["cost"], 0.0);
    assert_eq!(hit["gateway"]["saved"].as_f64().unwrap(), cost);
    assert_eq!(hit["gateway"]["tokens_saved"].as_u64().unwrap(), tokens);

    // Said another way: a semantic hit.
    let res = gw.chat(&key, "How can I reset my password?").await;
    assert_eq!(header(&res, "x-gateway-cache"), "semantic_hit");
    let semantic: Value = res.json().await.unwrap();
    assert!(semantic["gateway"]["similarity"].as_f64().unwrap() >= 0.8);
    assert_eq!(semantic["choices"], first["choices"]);

    // Another owner never gets it; another system prompt neither.
    let res = gw.chat(&other, "How do I reset my password?").await;
    assert_eq!(header(&res, "x-gateway-cache"), "miss");
    let res = gw
        .post(
            "/v1/chat/completions",
            &key,
            json!({ "model": "small", "messages": [
                { "role": "system", "content": "Answer in French." },
                { "role": "user", "content": "How do I reset my password?" },
            ] }),
        )
        .await;
    assert_eq!(header(&res, "x-gateway-cache"), "miss");

    // The owner's usage: three answers from alpha, two of them from the cache.
    let res = gw.get("/v1/usage", Some(&key)).await;
    let usage: Value = res.json().await.unwrap();
    let total = &usage["usage"]["total"];
    assert_eq!(total["requests"], 4);
    assert_eq!(total["cached"], 2);
    assert!((total["saved"].as_f64().unwrap() - 2.0 * cost).abs() < 1e-12);
    let res = gw.get("/admin/costs", Some(&gw.admin)).await;
    let costs: Value = res.json().await.unwrap();
    assert_eq!(costs["cache"]["exact_hits"], 1);
    assert_eq!(costs["cache"]["semantic_hits"], 1);
    assert!((costs["cache"]["cost_saved"].as_f64().unwrap() - 2.0 * cost).abs() < 1e-12);
    let metrics = gw.metrics().await;
    assert!(metrics.contains("palisade_semantic_cache_tokens_saved_total"));
    assert!(metrics.contains("palisade_semantic_cache_lookups_total"));
}

#[tokio::test]
async fn a_batch_answers_each_prompt_in_order() {
    let backups = TempDir::new("batch");
    let gw = start(settings("batch", &backups)).await;
    let (key, _) = gw.key("batch-co", "premium").await;
    assert_eq!(gw.chat(&key, "already asked").await.status(), 200);

    let res = gw
        .post(
            "/v1/batch",
            &key,
            json!({ "requests": [
                chat_body("first prompt"),
                chat_body("already asked"),
                chat_body("third prompt"),
            ] }),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "46");
    let body: Value = res.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, prompt) in ["first prompt", "already asked", "third prompt"]
        .iter()
        .enumerate()
    {
        assert_eq!(results[i]["index"], i);
        assert_eq!(results[i]["status"], 200);
        let text = results[i]["response"]["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        assert!(text.contains(prompt), "{text}");
    }
    assert_eq!(results[1]["response"]["gateway"]["cache"], "exact_hit");
    assert_eq!(body["usage"]["prompts"], 3);
    assert_eq!(body["usage"]["failed"], 0);
    assert_eq!(body["usage"]["units_charged"], 3);

    // Invalid prompts are named by index, and nothing is charged.
    let res = gw
        .post(
            "/v1/batch",
            &key,
            json!({ "requests": [chat_body("ok"), { "model": "nope", "messages": [] }] }),
        )
        .await;
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("requests[1]")
    );

    // Every provider down: each prompt fails, and the units are given back.
    gw.admin_put(
        "/admin/providers/batch-alpha/fault",
        json!({ "mode": "fail" }),
    )
    .await;
    gw.admin_put(
        "/admin/providers/batch-beta/fault",
        json!({ "mode": "fail" }),
    )
    .await;
    let res = gw
        .post(
            "/v1/batch",
            &key,
            json!({ "requests": [chat_body("lost one"), chat_body("lost two")] }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], 503);
    assert_eq!(body["usage"]["failed"], 2);
    assert_eq!(body["usage"]["units_charged"], 0);
    gw.admin_put(
        "/admin/providers/batch-alpha/fault",
        json!({ "mode": "none" }),
    )
    .await;
    let res = gw.chat(&key, "back").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "x-ratelimit-remaining"),
        "45",
        "the refund came back"
    );
}

#[tokio::test]
async fn health_metrics_and_start_up_migration_in_memory() {
    let backups = TempDir::new("health");
    let gw = start(settings("health", &backups)).await;
    let health = gw.health().await;
    assert_eq!(health["status"], "ok", "{health}");
    for name in [
        "apikey",
        "ratelimit",
        "breaker_store",
        "cache",
        "breaker:health-alpha",
        "breaker:health-beta",
        "provider:health-alpha",
        "provider:health-beta",
        "migrations",
        "usage_ledger",
        "secrets:env",
        "secrets:demo",
    ] {
        let c = component(&health, name);
        assert_eq!(c["connected"], true, "{c}");
    }
    assert_eq!(component(&health, "apikey")["backend"], "memory");
    assert_eq!(component(&health, "migrations")["state"], "v2, up to date");

    // Migrated at start-up, each migration after an encrypted backup.
    assert_eq!(gw.app.gateway.migrated.applied, vec![1, 2]);
    let res = gw.get("/admin/migrations", Some(&gw.admin)).await;
    let migrations: Value = res.json().await.unwrap();
    assert_eq!(migrations["status"]["target"], "memory");
    assert_eq!(migrations["status"]["current_version"], 2);
    let backups_listed = migrations["backups"].as_array().unwrap();
    assert_eq!(backups_listed.len(), 2);
    assert_eq!(
        migrations["status"]["migrations"][1]["backup_id"],
        backups_listed[1]["id"]
    );
    let files = std::fs::read_dir(&backups.0).unwrap().count();
    assert_eq!(files, 2);

    let (key, _) = gw.key("metrics-co", "free").await;
    assert_eq!(gw.chat(&key, "count me").await.status(), 200);
    let metrics = gw.metrics().await;
    for line in [
        "palisade_apikey_verifications_total{outcome=\"verified\"}",
        "palisade_ratelimit_decisions_total{",
        "palisade_circuit_breaker_calls_total{name=\"health-alpha\",outcome=\"success\"} 1",
        "palisade_semantic_cache_lookups_total{",
        "ai_gateway_provider_calls_total{provider=\"health-alpha\",outcome=\"success\"} 1",
        "ai_gateway_provider_tokens_total{provider=\"health-alpha\",kind=\"input\"}",
        "palisade_migrate_migrations_total{",
        "palisade_secret_store_reads_total{",
    ] {
        assert!(metrics.contains(line), "no `{line}` in /metrics");
    }
}

#[tokio::test]
async fn secrets_come_from_a_file_and_never_reach_the_logs() {
    let (_, capture) = logs();
    let backups = TempDir::new("secrets");
    let dir = TempDir::new("secrets-file");
    let file = dir.0.join("gateway.env");
    let alpha_key = "sk-file-alpha-0c4f6e1b9d2a7e35";
    let beta_key = "sk-file-beta-7d1e5a9c3b2f4e68";
    let pepper = "a pepper read from the secrets file, 48 bytes long";
    std::fs::write(
        &file,
        format!(
            "APIKEY_PEPPER_V1=\"{pepper}\"\nMIGRATE_BACKUP_KEY={}\n\
             PROVIDERS_SEC_ALPHA_API_KEY={alpha_key}\nPROVIDERS_SEC_BETA_API_KEY={beta_key}\n",
            "5a".repeat(32)
        ),
    )
    .unwrap();
    let mut s = settings("sec", &backups);
    s.secrets.file = Some(file.clone());
    s.secrets.demo_values = false;
    let gw = start(s).await;
    let health = gw.health().await;
    assert_eq!(component(&health, "secrets:file")["connected"], true);
    assert!(
        health["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "secrets:demo")
    );
    let (key, _) = gw.key("secret-co", "premium").await;
    let res = gw.chat(&key, "does the provider accept my key").await;
    assert_eq!(res.status(), 200, "the fake checks the key from the file");
    // A value logged by mistake is scrubbed by the redactor.
    tracing::warn!("leaked {alpha_key} by mistake");
    let text = capture.text();
    assert!(
        text.contains("leaked"),
        "the capture sees this test's lines"
    );
    for secret in [alpha_key, beta_key, pepper, key.as_str(), gw.admin.as_str()] {
        assert!(!text.contains(secret), "a secret reached the logs");
    }
    let body = gw.get("/health", None).await.text().await.unwrap();
    assert!(!body.contains(alpha_key));

    // Demo values off and a secret missing: the start fails, naming it.
    std::fs::write(&file, format!("APIKEY_PEPPER_V1=\"{pepper}\"\n")).unwrap();
    let mut s = settings("sec2", &backups);
    s.secrets.file = Some(file);
    s.secrets.demo_values = false;
    let names: Vec<&str> = s.providers.iter().map(|p| p.name.as_str()).collect();
    let secrets = app::secrets(&s.secrets, &names).unwrap();
    let err = app::build_with_secrets(s, secrets).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_keys_limits_breakers_and_answers_through_redis() {
    let mut redis = RedisServer::start().unwrap();
    let backups = TempDir::new("redis");
    let mut s = settings("redis", &backups);
    s.redis_url = Some(redis.url());
    let a = start(s.clone()).await;
    s.bootstrap_admin = false;
    let b = start(s).await;
    assert_eq!(component(&a.health().await, "apikey")["backend"], "redis");

    // A key made on A is accepted by B.
    let (key, _) = a.key("fleet-co", "free").await;
    let res = b.chat(&key, "What is Redis?").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-gateway-cache"), "miss");
    // B's answer is A's cache hit.
    let res = a.chat(&key, "What is Redis?").await;
    assert_eq!(header(&res, "x-gateway-cache"), "exact_hit");
    // One budget across both: 10 a minute in all.
    for i in 2..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let res = gw.chat(&key, &format!("fleet {i}")).await;
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(header(&res, "x-ratelimit-remaining"), (9 - i).to_string());
    }
    assert_eq!(a.chat(&key, "one too many").await.status(), 429);
    assert_eq!(b.chat(&key, "one too many").await.status(), 429);

    // A breaker forced open on A reaches B with the next flush.
    a.admin_put(
        "/admin/breakers/redis-alpha",
        json!({ "action": "force_open" }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let health = b.health().await;
        if component(&health, "breaker:redis-alpha")["state"] == "forced_open" {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the breaker open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (premium, _) = a.key("fleet-premium", "premium").await;
    let res = b.chat(&premium, "who answers now").await;
    assert_eq!(header(&res, "x-gateway-provider"), "redis-beta");

    // Redis dies: health says so for every Redis-backed part, and a key verified in the
    // last five seconds is still served (API keys fail closed past their cache bound;
    // limits fall back to memory; the cache fails open).
    redis.kill();
    let health = b.health().await;
    assert_eq!(health["status"], "degraded");
    for name in ["apikey", "ratelimit", "cache", "breaker_store"] {
        assert_eq!(component(&health, name)["connected"], false, "{name}");
    }
    let res = b.chat(&premium, "served while redis is down").await;
    assert_eq!(res.status(), 200);
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.health().await["status"] != "ok" {
        assert!(Instant::now() < deadline, "health never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_schema_is_migrated_with_a_backup_and_usage_is_a_table() {
    let schema = PgSchema::create().unwrap();
    let backups = TempDir::new("pg");
    let mut s = settings("pg", &backups);
    s.database_url = Some(schema.database_url().to_owned());
    s.database_schema = schema.name().to_owned();
    let gw = start(s.clone()).await;
    assert_eq!(gw.app.gateway.migrated.applied, vec![1, 2]);
    assert_eq!(gw.app.gateway.migrated.backups.len(), 2);
    let res = gw.get("/admin/migrations", Some(&gw.admin)).await;
    let migrations: Value = res.json().await.unwrap();
    assert_eq!(migrations["status"]["target"], "postgres");
    assert_eq!(migrations["backups"][0]["format"], "pg_dump");
    let health = gw.health().await;
    assert_eq!(component(&health, "migrations")["backend"], "postgres");
    assert_eq!(component(&health, "migrations")["state"], "v2, up to date");
    assert_eq!(component(&health, "usage_ledger")["connected"], true);

    let (key, id) = gw.key("pg-co", "free").await;
    assert_eq!(gw.chat(&key, "stored in postgres").await.status(), 200);
    assert_eq!(gw.chat(&key, "stored in postgres").await.status(), 200);
    let res = gw.get("/v1/usage", Some(&key)).await;
    let usage: Value = res.json().await.unwrap();
    assert_eq!(usage["ledger"], "postgres");
    assert_eq!(usage["usage"]["total"]["requests"], 2);
    assert_eq!(usage["usage"]["total"]["cached"], 1);
    let rows = tokio::task::spawn_blocking(move || {
        let mut client = schema.connect().unwrap();
        let rows: Vec<(String, String, String)> = client
            .query(
                "SELECT key_id, provider, source FROM usage_events ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        (rows, schema)
    })
    .await
    .unwrap();
    let (rows, schema) = rows;
    assert_eq!(
        rows,
        vec![
            (id.clone(), "pg-alpha".to_owned(), "computed".to_owned()),
            (id, "pg-alpha".to_owned(), "exact_hit".to_owned()),
        ]
    );

    // A second instance finds nothing left to migrate.
    let mut s2 = s;
    s2.bootstrap_admin = false;
    let again = start(s2).await;
    assert!(again.app.gateway.migrated.applied.is_empty());
    drop(schema);
}
