//! End-to-end tests of `examples/plugin_server`: its app module, served on `127.0.0.1:0`,
//! driven over real HTTP with `reqwest` — in memory, and on a throwaway Redis from the
//! testkit where the service is restarted and finds its cache, keys and limits again.
//!
//! One process-wide log capture sits behind the secret redactor (as `main.rs` wires the
//! logs), so a test can check what reached the logs.

#[path = "../../../examples/support/mod.rs"]
mod support;

#[path = "../../../examples/plugin_server/app.rs"]
mod app;

use std::sync::OnceLock;
use std::time::Duration;

use palisade::apikey::{KeySpec, Pepper, Peppers, Tokens};
use palisade::secret_store::redact::Redactor;
use palisade_testkit::{LogCapture, RedisServer};
use serde_json::{Value, json};

use app::config::{LimitsConfig, PluginLimit};

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

/// Settings for a test: a generous default limit, limit changes re-read every 100 ms, a
/// 10 ms upstream, 256-byte inputs.
fn settings() -> app::Settings {
    let mut s = app::Settings {
        bootstrap_admin: false,
        config_refresh: Duration::from_millis(100),
        max_input_bytes: 256,
        ..app::Settings::default()
    };
    s.limits = LimitsConfig {
        default: PluginLimit {
            per_minute: 1000,
            burst: Some(1000),
        },
        ..LimitsConfig::default()
    };
    s.upstream.latency = Duration::from_millis(10);
    s
}

struct Running {
    base: String,
    http: reqwest::Client,
    app: app::App,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(settings: app::Settings) -> Running {
    let mut built = app::build(settings, logs().0.clone()).await.unwrap();
    let router = std::mem::take(&mut built.router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app::serve(listener, router, async {
        let _ = stopped.await;
    }));
    Running {
        base,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        app: built,
        _stop: stop,
    }
}

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
    async fn admin(&self) -> String {
        let created = self
            .app
            .keys
            .create(KeySpec::new("admin", "test admin").scopes(["admin:*"]))
            .await
            .unwrap();
        created.key.expose_secret().to_owned()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        read(req.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, bearer: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(bearer), Some(body))
            .await
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> Answer {
        self.send(reqwest::Method::GET, path, bearer, None).await
    }

    /// Register `name` with `caps`; its API key.
    async fn register(&self, admin: &str, name: &str, caps: &[&str]) -> String {
        let res = self
            .post(
                "/plugins",
                admin,
                json!({"name": name, "capabilities": caps}),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.body);
        res.body["api_key"].as_str().unwrap().to_owned()
    }

    /// A token for the plugin key `key` (every capability it holds).
    async fn token(&self, key: &str) -> String {
        let res = self
            .send(reqwest::Method::POST, "/v1/token", Some(key), None)
            .await;
        assert_eq!(res.status, 200, "{}", res.body);
        res.body["access_token"].as_str().unwrap().to_owned()
    }

    async fn complete(&self, token: &str, input: &str) -> Answer {
        self.post("/v1/complete", token, json!({"input": input}))
            .await
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
}

fn component<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {health}"))
}

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
async fn plugins_register_get_tokens_and_call_with_their_capabilities() {
    let s = start(settings()).await;
    let admin = s.admin().await;

    // Registration: validated, a name once.
    for (body, status, code) in [
        (
            json!({"name": "Weather", "capabilities": ["complete"]}),
            422,
            "invalid_name",
        ),
        (
            json!({"name": "w", "capabilities": ["complete"]}),
            422,
            "invalid_name",
        ),
        (
            json!({"name": "weather", "capabilities": ["teleport"]}),
            422,
            "unknown_capability",
        ),
        (
            json!({"name": "weather", "capabilities": ["complete", "complete"]}),
            422,
            "duplicate_capability",
        ),
        (
            json!({"name": "weather", "capabilities": []}),
            422,
            "no_capabilities",
        ),
    ] {
        let res = s.post("/plugins", &admin, body.clone()).await;
        assert_eq!(res.status, status, "{body}: {}", res.body);
        assert!(res.is_problem(), "{body}");
        assert_eq!(res.body["code"], code, "{body}");
    }
    let res = s.post("/plugins", &admin, json!({"name": "weather"})).await;
    assert_eq!(res.status, 422, "a missing field: {}", res.body);
    assert!(res.is_problem());
    let key = s.register(&admin, "weather", &["complete"]).await;
    assert!(key.starts_with("plug_live_"));
    let again = s
        .post(
            "/plugins",
            &admin,
            json!({"name": "weather", "capabilities": ["complete"]}),
        )
        .await;
    assert_eq!(again.status, 409);
    assert!(again.is_problem());
    let anonymous = s
        .send(reqwest::Method::POST, "/plugins", None, Some(json!({})))
        .await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.is_problem());
    let by_plugin = s
        .post(
            "/plugins",
            &key,
            json!({"name": "other", "capabilities": ["complete"]}),
        )
        .await;
    assert_eq!(by_plugin.status, 403, "a plugin key is not an admin key");

    // Tokens: the capabilities held, or fewer; never more.
    let res = s
        .send(reqwest::Method::POST, "/v1/token", Some(&key), None)
        .await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.body["token_type"], "Bearer");
    assert_eq!(res.body["expires_in"], 900);
    assert_eq!(res.body["capabilities"], json!(["complete"]));
    let token = res.body["access_token"].as_str().unwrap().to_owned();
    let claims = s.app.tokens.verify(&token).unwrap();
    assert_eq!(claims.sub, "plugin:weather");
    assert_eq!(claims.aud.as_deref(), Some("plugin-server"));
    assert!(claims.exp - claims.iat == 900);
    let more = s
        .post("/v1/token", &key, json!({"capabilities": ["cache:purge"]}))
        .await;
    assert_eq!(more.status, 403);
    assert_eq!(more.body["missing"], json!(["cache:purge"]));
    let odd = s
        .post("/v1/token", &key, json!({"capabilities": ["teleport"]}))
        .await;
    assert_eq!(
        (odd.status, odd.body["code"].as_str()),
        (422, Some("unknown_capability"))
    );
    let garbled = read(
        s.http
            .post(format!("{}/v1/token", s.base))
            .bearer_auth(&key)
            .body("{nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(garbled.status, 400);
    assert!(garbled.is_problem());
    let admin_token = s
        .send(reqwest::Method::POST, "/v1/token", Some(&admin), None)
        .await;
    assert_eq!(admin_token.status, 403, "an admin key has no `token` scope");

    // Calls with the token: the first computes, the second is served from the cache.
    let who = s.get("/v1/whoami", Some(&token)).await;
    assert_eq!(who.body["sub"], "plugin:weather");
    let first = s.complete(&token, "forecast for tomorrow").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.body["output"], "[upstream-v1] Forecast For Tomorrow");
    assert!(first.header("x-ratelimit-remaining").is_some());
    assert!(first.header("x-request-id").is_some());
    let second = s.complete(&token, "forecast for tomorrow").await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.body["cached"], true);
    assert_eq!(second.body["output"], first.body["output"]);
    assert_eq!(s.app.upstream.calls(), 1);

    // Another plugin never sees this one's answers; the capability decides what it may do.
    let news_key = s
        .register(&admin, "news", &["complete", "cache:purge"])
        .await;
    let news = s.token(&news_key).await;
    assert_eq!(
        s.complete(&news, "forecast for tomorrow")
            .await
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(s.app.upstream.calls(), 2);
    let purge = s
        .send(reqwest::Method::DELETE, "/v1/cache", Some(&token), None)
        .await;
    assert_eq!(purge.status, 403, "weather lacks cache:purge");
    let purge = s
        .send(reqwest::Method::DELETE, "/v1/cache", Some(&news), None)
        .await;
    assert_eq!(purge.status, 200, "{}", purge.body);
    assert_eq!(purge.body["removed"], 1);
    assert_eq!(
        s.complete(&news, "forecast for tomorrow")
            .await
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        s.complete(&token, "forecast for tomorrow")
            .await
            .header("x-cache"),
        Some("hit")
    );

    // Bad tokens: 401 problem+json saying why, with WWW-Authenticate.
    let expired: palisade::apikey::Claims = serde_json::from_value(json!({
        "iss": "plugin-server", "sub": "plugin:weather", "aud": "plugin-server",
        "caps": ["complete"], "iat": 1_000, "exp": 2_000, "jti": "old",
    }))
    .unwrap();
    let expired = s.app.tokens.sign(&expired).unwrap();
    let forged = Tokens::new(
        Peppers::new(Pepper::new(1, [7u8; 32]).unwrap()),
        "plugin-server",
    )
    .unwrap()
    .with_audience("plugin-server")
    .issue("plugin:weather", ["complete"])
    .unwrap();
    for (bearer, code) in [
        (Some(expired.as_str()), "expired"),
        (Some(forged.as_str()), "bad_signature"),
        (Some("not-a-token"), "malformed"),
        (Some(key.as_str()), "malformed"),
        (None, "missing"),
    ] {
        let res = s
            .send(
                reqwest::Method::POST,
                "/v1/complete",
                bearer,
                Some(json!({"input": "x"})),
            )
            .await;
        assert_eq!(res.status, 401, "{code}: {}", res.body);
        assert!(res.is_problem());
        assert_eq!(res.body["code"], code);
        assert!(
            res.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer")
        );
    }

    // Inputs: clear 4xx answers.
    for (body, status) in [
        (json!({"input": "  "}), 422),
        (json!({"input": "x".repeat(257)}), 413),
        (json!({"input": "x", "max_tokens": 0}), 422),
        (json!({"input": "x", "temperature": 1}), 422),
        (json!({"prompt": "x"}), 422),
    ] {
        let res = s.post("/v1/complete", &token, body.clone()).await;
        assert_eq!(res.status, status, "{body}: {}", res.body);
        assert!(res.is_problem(), "{body}");
    }
    let untyped = read(
        s.http
            .post(format!("{}/v1/complete", s.base))
            .bearer_auth(&token)
            .body("{\"input\": \"x\"}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(untyped.status, 415, "no content type: {}", untyped.body);
    assert!(untyped.is_problem());

    // Health and metrics.
    let health = s.get("/health", None).await;
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    for name in ["apikey", "ratelimit", "cache", "config", "secrets:demo"] {
        assert_eq!(component(&health.body, name)["connected"], true, "{name}");
    }
    assert_eq!(component(&health.body, "cache")["backend"], "memory");
    let metrics = s.metrics().await;
    for line in [
        "plugin_server_upstream_calls_total",
        "plugin_server_cache_total{result=\"hit\"}",
        "plugin_server_tokens_issued_total",
        "plugin_server_token_rejections_total{reason=\"expired\"}",
        "plugin_server_registrations_total{outcome=\"conflict\"}",
        "palisade_apikey_token_verifications_total",
        "palisade_semantic_cache_lookups_total",
        "palisade_ratelimit_decisions_total",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    // No key or token text in the logs.
    let text = logs().1.text();
    for secret in [&admin, &key, &news_key, &token] {
        assert!(
            !text.contains(secret.as_str()),
            "a credential reached the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_at_run_time_validated_and_audited() {
    let mut settings = settings();
    settings.limits.default = PluginLimit {
        per_minute: 6,
        burst: Some(3),
    };
    let s = start(settings).await;
    let admin = s.admin().await;
    let key = s.register(&admin, "scraper", &["complete"]).await;
    let token = s.token(&key).await;

    // The default: a burst of 3.
    for i in 0..3 {
        assert_eq!(s.complete(&token, &format!("page {i}")).await.status, 200);
    }
    let refused = s.complete(&token, "page 3").await;
    assert_eq!(refused.status, 429);
    assert!(refused.is_problem());
    assert_eq!(refused.body["policy"], "plugin");
    assert!(refused.header("retry-after").is_some());

    // Raised at run time: the bucket keeps its level (empty) and refills at the new rate,
    // one request per 100 ms instead of one per 10 s.
    let put = |body: Value, id: &'static str| {
        let s = &s;
        let admin = admin.clone();
        async move {
            read(
                s.http
                    .put(format!("{}/config/plugins/scraper", s.base))
                    .bearer_auth(admin)
                    .header("x-request-id", id)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let raised = put(json!({"per_minute": 600, "burst": 20}), "req-raise").await;
    assert_eq!(raised.status, 200, "{}", raised.body);
    assert_eq!(raised.body["audit"]["before"], Value::Null);
    assert_eq!(raised.body["audit"]["after"]["per_minute"], 600);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let served = s.complete(&token, "page 3").await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("x-ratelimit-limit"), Some("600"));
    // Lowered: the bucket keeps its level, capped at the new burst of 1, so at most one
    // more request passes (one does when 200 ms or more of the raised rate went by since
    // the refusal above: a loaded machine), and the next is refused.
    let lowered = put(json!({"per_minute": 1, "burst": 1}), "req-lower").await;
    assert_eq!(lowered.status, 200);
    let first = s.complete(&token, "page 4").await.status;
    assert!(first == 200 || first == 429, "{first}");
    if first == 200 {
        assert_eq!(s.complete(&token, "page 5").await.status, 429);
    }

    // Validated.
    for (body, code) in [
        (json!({"per_minute": 0}), Some("invalid_limit")),
        (json!({"per_minute": 100_001}), Some("invalid_limit")),
        (json!({"per_minute": 10, "burst": 0}), Some("invalid_limit")),
        (
            json!({"per_minute": 10, "burst": 101}),
            Some("invalid_limit"),
        ),
        (json!({"per_minute": 10, "rate": 3}), None),
        (json!({"burst": 3}), None),
    ] {
        let res = put(body.clone(), "req-bad").await;
        assert_eq!(res.status, 422, "{body}: {}", res.body);
        assert!(res.is_problem());
        if let Some(code) = code {
            assert_eq!(res.body["code"], code, "{body}");
        }
    }
    let unknown = read(
        s.http
            .put(format!("{}/config/plugins/ghost", s.base))
            .bearer_auth(&admin)
            .json(&json!({"per_minute": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    let by_plugin = read(
        s.http
            .put(format!("{}/config/plugins/scraper", s.base))
            .bearer_auth(&key)
            .json(&json!({"per_minute": 100_000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_plugin.status, 403, "a plugin cannot raise its own limit");

    let config = s.get("/config", Some(&admin)).await;
    assert_eq!(config.body["limits"]["plugins"]["scraper"]["per_minute"], 1);
    let removed = read(
        s.http
            .delete(format!("{}/config/plugins/scraper", s.base))
            .bearer_auth(&admin)
            .header("x-request-id", "req-remove")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(removed.status, 200);
    let info = s.get("/plugins/scraper", Some(&admin)).await;
    assert_eq!(info.body["limit_is_default"], true);
    assert_eq!(info.body["limit"]["per_minute"], 6);

    // Audited: who, when, what before and after, and the request's correlation id.
    let trail = s.get("/config/audit", Some(&admin)).await;
    let entries = trail.body["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "limit_removed",
            "limit_set",
            "limit_set",
            "plugin_registered"
        ],
        "newest first; refused changes are not recorded"
    );
    assert_eq!(entries[0]["request_id"], "req-remove");
    assert_eq!(entries[0]["before"]["per_minute"], 1);
    assert_eq!(entries[1]["request_id"], "req-lower");
    assert_eq!(entries[1]["before"]["per_minute"], 600);
    assert_eq!(entries[2]["request_id"], "req-raise");
    for e in entries {
        assert!(e["actor"].as_str().unwrap().starts_with("admin ("), "{e}");
        assert!(e["at_ms"].as_u64().unwrap() > 0);
        assert_eq!(e["plugin"], "scraper");
    }
    assert!(logs().1.contains("request_id=req-raise"));
    assert!(
        s.metrics()
            .await
            .contains("plugin_server_config_changes_total{action=\"limit_set\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_answers_expire_and_do_not_outlive_the_process() {
    let mut settings = settings();
    settings.cache.ttl = Duration::from_secs(1);
    let a = start(settings.clone()).await;
    let admin = a.admin().await;
    let key = a.register(&admin, "clock", &["complete"]).await;
    let token = a.token(&key).await;
    assert_eq!(
        a.complete(&token, "what time is it")
            .await
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(
        a.complete(&token, "what time is it")
            .await
            .header("x-cache"),
        Some("hit")
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        a.complete(&token, "what time is it")
            .await
            .header("x-cache"),
        Some("miss"),
        "past the TTL"
    );

    // Another process in memory: same signing key, so the token verifies, but the cache
    // (and everything else) starts empty.
    let b = start(settings).await;
    assert_eq!(
        b.complete(&token, "what time is it")
            .await
            .header("x-cache"),
        Some("miss")
    );
    assert_eq!(b.app.upstream.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_cache_keys_and_limits_survive_a_restart() {
    let server = RedisServer::builder().start_async().await.unwrap();
    let mut settings = settings();
    settings.redis_url = Some(server.url());
    let first = start(settings.clone()).await;
    let second = start(settings.clone()).await;
    let admin = first.admin().await;
    let key = first.register(&admin, "weather", &["complete"]).await;
    let token = first.token(&key).await;

    // Two instances share the cache and see each other's limit changes.
    let miss = first.complete(&token, "rain in paris").await;
    assert_eq!(miss.header("x-cache"), Some("miss"));
    let hit = second.complete(&token, "rain in paris").await;
    assert_eq!(hit.header("x-cache"), Some("hit"), "{}", hit.body);
    assert_eq!(second.app.upstream.calls(), 0);
    let res = read(
        first
            .http
            .put(format!("{}/config/plugins/weather", first.base))
            .bearer_auth(&admin)
            .json(&json!({"per_minute": 120, "burst": 30}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    eventually("the other instance has the new limit", || async {
        second
            .complete(&token, "rain in paris")
            .await
            .header("x-ratelimit-limit")
            == Some("120")
    })
    .await;
    let health = second.get("/health", None).await;
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    for name in ["apikey", "ratelimit", "cache", "config"] {
        assert_eq!(component(&health.body, name)["backend"], "redis", "{name}");
    }

    // Both stop; a new one starts on the same Redis.
    drop(first);
    drop(second);
    let restarted = start(settings).await;
    let again = restarted.complete(&token, "rain in paris").await;
    assert_eq!(
        again.status, 200,
        "the token still verifies: {}",
        again.body
    );
    assert_eq!(
        again.header("x-cache"),
        Some("hit"),
        "the cached answer survived"
    );
    assert_eq!(restarted.app.upstream.calls(), 0);
    assert_eq!(
        again.header("x-ratelimit-limit"),
        Some("120"),
        "the limit survived"
    );
    // The plugin's key still exchanges for tokens; the admin key and the audit trail remain.
    let fresh = restarted.token(&key).await;
    assert_eq!(
        restarted
            .complete(&fresh, "rain in paris")
            .await
            .header("x-cache"),
        Some("hit")
    );
    let trail = restarted.get("/config/audit", Some(&admin)).await;
    assert_eq!(trail.status, 200, "{}", trail.body);
    assert_eq!(trail.body["entries"][0]["action"], "limit_set");
    assert_eq!(trail.body["entries"][1]["action"], "plugin_registered");
    let config = restarted.get("/config", Some(&admin)).await;
    assert_eq!(config.body["limits"]["plugins"]["weather"]["burst"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_settings_file_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugin_server");
    let s: app::Settings = support::settings::from_file(&dir.join("plugin_server.toml")).unwrap();
    assert_eq!(s.port, 3003);
    assert_eq!(s.apikey.prefix, "plug");
    assert_eq!(s.tokens.lifetime, Duration::from_secs(900));
    assert_eq!(s.limits.default.per_minute, 60);
    assert_eq!(s.limits.plugins["weather"].per_minute, 120);
    assert!(s.limits.plugins.values().all(|l| l.validate().is_ok()));
}
