//! End-to-end test of `examples/tiered_api`: the service is built from its own modules,
//! served on 127.0.0.1:0 and driven over HTTP. In memory: tiers from signed tokens, every
//! rate-limit header, exemptions, anonymous callers keyed by address, the unlimited tier,
//! 401s with reasons, the per-user context cache and its invalidation. On a throwaway
//! Redis: two instances share counts and the context cache; the test kills Redis and the
//! requests are still served (fail-open, uncounted), then restarts it and they are counted
//! again.

#[path = "../../../examples/support/mod.rs"]
mod support;

#[path = "../../../examples/tiered_api/app.rs"]
mod app;

#[path = "../../../examples/tiered_api/fitness.rs"]
mod fitness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_testkit::RedisServer;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const ADMIN: &str = "demo-admin-token-set-APP_TIERED_API_ADMIN_TOKEN";

fn tier(quotas: &[(&str, u64, &str)]) -> app::TierLimits {
    let text = quotas
        .iter()
        .map(|(name, limit, period)| {
            format!("{{ name = \"{name}\", limit = {limit}, period = \"{period}\" }}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    toml::from_str(&format!("quotas = [{text}]")).unwrap()
}

/// Small limits, so the test reaches them.
fn settings(redis_url: Option<String>) -> app::Settings {
    let mut settings = app::Settings {
        redis_url,
        plan_cost: 2,
        ..app::Settings::default()
    };
    settings
        .tiers
        .insert("anonymous".into(), tier(&[("minute", 5, "1m")]));
    settings.tiers.insert(
        "free".into(),
        tier(&[("minute", 5, "1m"), ("day", 100, "24h")]),
    );
    settings
        .tiers
        .insert("premium".into(), tier(&[("minute", 10, "1m")]));
    settings
}

struct Service {
    base: String,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(router: axum::Router) -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    Service {
        base,
        http: reqwest::Client::new(),
        task: tokio::spawn(app::serve(listener, router)),
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Service {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        assert!(
            headers.contains_key("x-request-id"),
            "{path}: no correlation id"
        );
        let text = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(reqwest::Method::GET, path, token, None).await
    }
}

fn no_limit_headers(answer: &Answer) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-tier",
    ] {
        assert!(answer.header(name).is_none(), "unexpected {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_tiers_headers_exemptions_and_the_context_cache() {
    let app = app::build(settings(None), app::secrets().unwrap())
        .await
        .unwrap();
    let tokens = app.tokens.clone();
    let database = Arc::clone(&app.database);
    let svc = serve(app.router).await;

    // Health and docs are exempt: no limit headers, whatever happens elsewhere.
    let health = svc.get("/health", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    let components = health.body["components"].as_array().unwrap();
    assert_eq!(components.len(), 3);
    assert!(
        components
            .iter()
            .all(|c| c["connected"] == true && c["backend"] != Value::Null)
    );
    assert_eq!(components[0]["name"], "ratelimit");
    assert_eq!(components[0]["backend"], "memory");
    no_limit_headers(&health);
    let docs = svc.get("/docs/tiers", None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert_eq!(docs.body["tiers"]["free"]["quotas"][0]["limit"], 5);
    no_limit_headers(&docs);

    // The auth service's stand-in issues a token only for the admin.
    let refused = svc
        .call(
            reqwest::Method::POST,
            "/auth/token",
            Some("not-the-admin"),
            Some(json!({ "user": "alice" })),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["code"], "not_admin");
    let issued = svc
        .call(
            reqwest::Method::POST,
            "/auth/token",
            Some(ADMIN),
            Some(json!({ "user": "alice", "tier": "free" })),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.body);
    assert_eq!(issued.body["tier"], "free");
    let alice = issued.body["token"].as_str().unwrap().to_owned();
    let bob = tokens.issue("bob", ["tier:premium"]).unwrap();
    let carol = tokens.issue("carol", ["tier:coach"]).unwrap();
    let dave = tokens.issue("dave", ["tier:gold"]).unwrap();

    // Free: 5 a minute and 100 a day, every header, the context cached.
    let first = svc.get("/v1/me", Some(&alice)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.header("x-ratelimit-tier"), Some("free"));
    assert_eq!(first.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("4"));
    assert!(first.header("x-ratelimit-reset").is_some());
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""minute";q=5;w=60, "day";q=100;w=86400"#)
    );
    assert!(
        first
            .header("ratelimit")
            .unwrap()
            .starts_with(r#""minute";r=4;t="#),
        "{:?}",
        first.header("ratelimit")
    );
    assert!(first.header("retry-after").is_none());
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.body["context"]["user"], "alice");
    let second = svc.get("/v1/me", Some(&alice)).await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.header("x-ratelimit-remaining"), Some("3"));

    // An update invalidates the context at once.
    let updated = svc
        .call(
            reqwest::Method::PUT,
            "/v1/me",
            Some(&alice),
            Some(json!({ "display_name": "Alice A.", "goal": "strength" })),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let after = svc.get("/v1/me", Some(&alice)).await;
    assert_eq!(after.header("x-cache"), Some("miss"));
    assert_eq!(after.body["context"]["profile"]["display_name"], "Alice A.");
    assert_eq!(after.body["context"]["profile"]["goal"], "strength");
    let fifth = svc.get("/v1/me", Some(&alice)).await;
    assert_eq!(fifth.header("x-cache"), Some("hit"));
    assert_eq!(fifth.header("x-ratelimit-remaining"), Some("0"));

    // The sixth in the minute: 429 with Retry-After and a problem body; nothing consumed
    // from the daily quota by the denial.
    let denied = svc.get("/v1/me", Some(&alice)).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(denied.header("x-ratelimit-tier"), Some("free"));
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        denied
            .header("ratelimit")
            .unwrap()
            .contains(r#""day";r=95;"#),
        "{:?}",
        denied.header("ratelimit")
    );
    assert_eq!(denied.body["policy"], "tier-free");
    // Exempt routes still answer.
    assert_eq!(
        svc.get("/health", Some(&alice)).await.status,
        StatusCode::OK
    );
    assert_eq!(svc.get("/docs", Some(&alice)).await.status, StatusCode::OK);

    // Premium has its own budget; a workout invalidates the context; a plan costs 2.
    let me = svc.get("/v1/me", Some(&bob)).await;
    assert_eq!(me.header("x-ratelimit-tier"), Some("premium"));
    assert_eq!(me.header("x-ratelimit-remaining"), Some("9"));
    assert_eq!(
        svc.get("/v1/me", Some(&bob)).await.header("x-cache"),
        Some("hit")
    );
    let logged = svc
        .call(
            reqwest::Method::POST,
            "/v1/workouts",
            Some(&bob),
            Some(json!({ "kind": "Run", "minutes": 30 })),
        )
        .await;
    assert_eq!(logged.status, StatusCode::CREATED, "{}", logged.body);
    let me = svc.get("/v1/me", Some(&bob)).await;
    assert_eq!(me.header("x-cache"), Some("miss"));
    assert_eq!(me.body["context"]["workouts_total"], 1);
    assert_eq!(me.body["context"]["minutes_last_7_days"], 30);
    assert_eq!(me.header("x-ratelimit-remaining"), Some("6"));
    let plan = svc
        .call(reqwest::Method::POST, "/v1/plans", Some(&bob), None)
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{}", plan.body);
    assert_eq!(
        plan.header("x-ratelimit-remaining"),
        Some("4"),
        "a plan costs 2"
    );
    assert_eq!(plan.header("x-cache"), Some("hit"));
    assert!(!plan.body["sessions"].as_array().unwrap().is_empty());
    let bad = svc
        .call(
            reqwest::Method::POST,
            "/v1/workouts",
            Some(&bob),
            Some(json!({ "kind": "", "minutes": 30 })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["code"], "invalid_kind");
    let bad = svc
        .call(
            reqwest::Method::POST,
            "/v1/workouts",
            Some(&bob),
            Some(json!({ "kind": "run", "minutes": 30, "calories": 1 })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["code"], "invalid_body");
    // Contexts built from the database: alice's first and after the update, bob's first
    // and after the workout; every other read was a hit.
    assert_eq!(database.context_loads(), 4);

    // A tier no route lists is limited, and named, as the default tier.
    let gold = svc.get("/v1/me", Some(&dave)).await;
    assert_eq!(gold.status, StatusCode::OK);
    assert_eq!(gold.header("x-ratelimit-tier"), Some("free"));
    assert_eq!(gold.header("x-ratelimit-limit"), Some("5"));

    // Coach is unlimited: the tier is named, nothing is counted.
    for _ in 0..12 {
        let answer = svc.get("/v1/workouts", Some(&carol)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-ratelimit-tier"), Some("coach"));
        assert!(answer.header("x-ratelimit-remaining").is_none());
    }

    // Without a valid token: 401 with the reason, counted per address as anonymous (two
    // token requests above were anonymous too).
    let missing = svc.get("/v1/me", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body["code"], "missing_token");
    assert!(
        missing
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(missing.header("x-ratelimit-tier"), Some("anonymous"));
    assert_eq!(missing.header("x-ratelimit-remaining"), Some("2"));
    let forged = svc.get("/v1/me", Some(&format!("{alice}x"))).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(forged.body["code"], "bad_signature");
    let garbage = svc.get("/v1/me", Some("nonsense")).await;
    assert_eq!(garbage.body["code"], "malformed");
    let flooded = svc.get("/v1/me", Some("nonsense")).await;
    assert_eq!(flooded.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(flooded.header("x-ratelimit-tier"), Some("anonymous"));
    assert_eq!(svc.get("/health", None).await.status, StatusCode::OK);

    // Unknown routes are problem+json too.
    let unknown = svc.get("/nope", Some(&bob)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["code"], "not_found");

    let metrics = svc.get("/metrics", None).await;
    no_limit_headers(&metrics);
    let text = metrics.body.as_str().unwrap();
    let denied_free = text.lines().any(|l| {
        l.starts_with("palisade_ratelimit_decisions_total{")
            && l.contains("outcome=\"denied\"")
            && l.contains("tier=\"free\"")
            && l.contains("policy=\"tier-free\"")
    });
    assert!(denied_free, "{text}");
    assert!(text.contains("tiered_api_context_loads_total"), "{text}");
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_limits_fail_open_while_it_is_down_and_count_again_after() {
    let mut redis = RedisServer::start().expect("redis-server on PATH");
    let database = Arc::new(fitness::Database::new());
    // A dead Redis refuses connections at once, so a generous timeout costs nothing here
    // and keeps a loaded test machine from failing open on a live one.
    let settings = |url: String| app::Settings {
        limiter_timeout: Duration::from_secs(1),
        ..settings(Some(url))
    };
    let one = app::build_with(
        settings(redis.url()),
        app::secrets().unwrap(),
        Arc::clone(&database),
    )
    .await
    .unwrap();
    let two = app::build_with(
        settings(redis.url()),
        app::secrets().unwrap(),
        Arc::clone(&database),
    )
    .await
    .unwrap();
    let alice = one.tokens.issue("alice", ["tier:free"]).unwrap();
    let one = serve(one.router).await;
    let two = serve(two.router).await;

    // Two instances share the counts and the context cache through Redis.
    let a = one.get("/v1/me", Some(&alice)).await;
    assert_eq!(a.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(a.header("x-cache"), Some("miss"));
    let b = two.get("/v1/me", Some(&alice)).await;
    assert_eq!(b.header("x-ratelimit-remaining"), Some("3"));
    assert_eq!(
        b.header("x-cache"),
        Some("hit"),
        "cached by the other instance"
    );
    let updated = two
        .call(
            reqwest::Method::PUT,
            "/v1/me",
            Some(&alice),
            Some(json!({ "display_name": "Alice on two" })),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    let c = one.get("/v1/me", Some(&alice)).await;
    assert_eq!(
        c.header("x-cache"),
        Some("miss"),
        "invalidated for every instance"
    );
    assert_eq!(c.body["context"]["profile"]["display_name"], "Alice on two");
    assert_eq!(c.header("x-ratelimit-remaining"), Some("1"));
    let health = one.get("/health", None).await;
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["components"][0]["backend"], "redis");

    // Redis dies: requests are still served, uncounted (well past the limit of 5), and
    // health says so.
    redis.kill();
    for i in 0..8 {
        let answer = one.get("/v1/me", Some(&alice)).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i} while Redis is down: {}",
            answer.body
        );
        assert!(
            answer.header("x-ratelimit-remaining").is_none(),
            "nothing counted"
        );
        assert_eq!(answer.header("x-ratelimit-tier"), Some("free"));
        assert_eq!(
            answer.header("x-cache"),
            Some("miss"),
            "the cache fails open too"
        );
    }
    let health = one.get("/health", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "degraded");
    for component in &health.body["components"].as_array().unwrap()[..2] {
        assert_eq!(component["connected"], false, "{component}");
        assert!(component["detail"].is_string());
    }
    let metrics = one.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("palisade_ratelimit_decisions_total{")
                && l.contains("source=\"fail_open\"")),
        "{text}"
    );
    assert!(
        text.contains("palisade_ratelimit_backend_errors_total"),
        "{text}"
    );

    // Redis is back (empty): each instance counts again from its next request that
    // reaches it, and together they reach the limit of 5 again.
    redis.restart().unwrap();
    let mut remaining = Vec::new();
    for svc in [&one, &two] {
        let started = Instant::now();
        loop {
            let answer = svc.get("/v1/me", Some(&alice)).await;
            if let Some(r) = answer.header("x-ratelimit-remaining") {
                remaining.push(r.parse::<u64>().unwrap());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "counted again within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let denied = loop {
        let answer = one.get("/v1/me", Some(&alice)).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break answer;
        }
        remaining.push(
            answer
                .header("x-ratelimit-remaining")
                .unwrap()
                .parse()
                .unwrap(),
        );
        assert!(remaining.len() <= 5, "{remaining:?}");
    };
    assert_eq!(remaining, [4, 3, 2, 1, 0], "counted in the restarted Redis");
    assert!(denied.header("retry-after").is_some());
    wait_for("health back to ok", || {
        let one = &one;
        async move { one.get("/health", None).await.body["status"] == "ok" }
    })
    .await;
}

#[test]
fn the_sample_settings_file_is_valid() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tiered_api/tiered_api.toml"
    ));
    let settings: app::Settings = support::settings::from_file(path).unwrap();
    let defaults = app::Settings::default();
    assert_eq!(settings.tiers.len(), defaults.tiers.len());
    assert!(settings.tiers["coach"].unlimited);
    assert_eq!(
        settings.tiers["free"].quotas[1].period,
        Duration::from_secs(86_400)
    );
    assert_eq!(settings.limiter_timeout, Duration::from_millis(50));
}
