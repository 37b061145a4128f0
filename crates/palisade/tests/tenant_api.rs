//! End-to-end test of `examples/tenant_api`: the service is built from its own modules,
//! served on 127.0.0.1:0 and driven over HTTP. In memory: per-route limits counted per user,
//! per API key and per address with every window's headers, keys scoped to organisations,
//! per-organisation cache partitions with their TTLs, invalidation on change and on demand,
//! and `/cache/stats` to the unit; the address guard in front of authentication. On a
//! throwaway Redis: two instances share keys, limits and cache; Redis killed (health
//! degraded, `connected: false`, requests still served) and restarted.

#[path = "../../../examples/support/mod.rs"]
mod support;

#[path = "../../../examples/tenant_api/app.rs"]
mod app;

#[path = "../../../examples/tenant_api/tenants.rs"]
mod tenants;

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::apikey::KeySpec;
use palisade_testkit::RedisServer;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

fn limit(
    name: &str,
    pattern: &str,
    methods: &[&str],
    key: &str,
    windows: [u64; 3],
) -> app::RouteLimit {
    let methods = methods
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    toml::from_str(&format!(
        "name = \"{name}\"\npattern = \"{pattern}\"\nmethods = [{methods}]\nkey = \"{key}\"\n\
         minute = {}\nhour = {}\nday = {}",
        windows[0], windows[1], windows[2]
    ))
    .unwrap()
}

/// Small limits, so the test reaches them.
fn settings(redis_url: Option<String>) -> app::Settings {
    let mut settings = app::Settings {
        redis_url,
        bootstrap_admin: false,
        ..app::Settings::default()
    };
    settings.limits.routes = vec![
        limit(
            "reports",
            "/orgs/*/reports/**",
            &["GET"],
            "api_key",
            [3, 10, 20],
        ),
        limit(
            "writes",
            "/orgs/**",
            &["PUT", "POST", "DELETE"],
            "user",
            [4, 10, 20],
        ),
        limit("public", "/public/**", &[], "ip", [2, 10, 20]),
        limit("default", "/**", &[], "user", [8, 50, 100]),
    ];
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
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
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

    async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.call(reqwest::Method::GET, path, key, None).await
    }
}

async fn key(keys: &palisade::apikey::ApiKeys, owner: &str, scopes: &[&str]) -> String {
    keys.create(KeySpec::new(owner, "test").scopes(scopes.iter().copied()))
        .await
        .unwrap()
        .key
        .expose_secret()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_limits_per_user_key_and_address_and_a_cache_per_organisation() {
    let app = app::build(settings(None), app::secrets().unwrap())
        .await
        .unwrap();
    let ops = app::bootstrap_admin(&app.keys).await.unwrap();
    let bob = key(&app.keys, "bob", &["org:globex", "projects:read"]).await;
    let database = Arc::clone(&app.database);
    let svc = serve(app.router).await;

    let health = svc.get("/health", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    let names: Vec<&str> = health.body["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["connected"], true);
            c["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["ratelimit", "apikey", "cache"]);
    assert!(health.header("x-ratelimit-limit").is_none(), "exempt");

    // The operator issues alice two keys for acme (shown once each).
    let created = svc
        .call(
            reqwest::Method::POST,
            "/admin/keys",
            Some(&ops),
            Some(json!({ "owner": "alice", "org": "acme", "name": "laptop",
                         "scopes": ["projects:read", "projects:write", "reports:read"] })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let alice = created.body["key"].as_str().unwrap().to_owned();
    let created = svc
        .call(
            reqwest::Method::POST,
            "/admin/keys",
            Some(&ops),
            Some(json!({ "owner": "alice", "org": "acme", "name": "ci" })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let alice_ci = created.body["key"].as_str().unwrap().to_owned();
    let refused = svc
        .call(
            reqwest::Method::POST,
            "/admin/keys",
            Some(&bob),
            Some(json!({ "owner": "mallory", "org": "acme", "name": "x" })),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.body["code"], "insufficient_scope");

    // Default limit, per user: every window in the headers; both of alice's keys share it.
    let first = svc.get("/orgs/acme/projects", Some(&alice)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.body.as_array().unwrap().len(), 3);
    for (window, limit, remaining) in [
        ("minute", "8", "7"),
        ("hour", "50", "49"),
        ("day", "100", "99"),
    ] {
        assert_eq!(
            first.header(&format!("x-ratelimit-limit-{window}")),
            Some(limit)
        );
        assert_eq!(
            first.header(&format!("x-ratelimit-remaining-{window}")),
            Some(remaining)
        );
        assert!(
            first
                .header(&format!("x-ratelimit-reset-{window}"))
                .is_some()
        );
    }
    assert_eq!(
        first.header("x-ratelimit-limit"),
        Some("8"),
        "the tightest window"
    );
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""minute";q=8;w=60, "hour";q=50;w=3600, "day";q=100;w=86400"#)
    );
    let second = svc.get("/orgs/acme/projects", Some(&alice)).await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.header("x-ratelimit-remaining-minute"), Some("6"));
    let other_key = svc.get("/orgs/acme/projects", Some(&alice_ci)).await;
    assert_eq!(other_key.header("x-cache"), Some("hit"));
    assert_eq!(
        other_key.header("x-ratelimit-remaining-minute"),
        Some("5"),
        "per user: the second key shares the budget"
    );

    // Reports, per API key: 3 a minute for each key.
    let summary = svc.get("/orgs/acme/reports/summary", Some(&alice)).await;
    assert_eq!(summary.status, StatusCode::OK, "{}", summary.body);
    assert_eq!(summary.header("x-cache"), Some("miss"));
    assert_eq!(summary.body["projects"], 3);
    assert_eq!(summary.header("x-ratelimit-remaining-minute"), Some("2"));
    assert_eq!(
        svc.get("/orgs/acme/reports/summary", Some(&alice))
            .await
            .header("x-cache"),
        Some("hit")
    );
    let budget = svc.get("/orgs/acme/reports/budget", Some(&alice)).await;
    assert_eq!(budget.header("x-cache"), Some("miss"));
    assert_eq!(budget.header("x-ratelimit-remaining-minute"), Some("0"));
    let denied = svc.get("/orgs/acme/reports/summary", Some(&alice)).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.body["policy"], "reports");
    assert!(denied.header("retry-after").is_some());
    assert_eq!(denied.header("x-ratelimit-remaining-minute"), Some("0"));
    assert_eq!(denied.header("x-ratelimit-remaining-hour"), Some("7"));
    let own_budget = svc.get("/orgs/acme/reports/summary", Some(&alice_ci)).await;
    assert_eq!(
        own_budget.status,
        StatusCode::OK,
        "the other key has its own budget"
    );
    assert_eq!(own_budget.header("x-ratelimit-remaining-minute"), Some("2"));
    assert_eq!(
        own_budget.header("x-cache"),
        Some("hit"),
        "the organisation's cache"
    );
    let unknown = svc.get("/orgs/acme/reports/nope", Some(&alice_ci)).await;
    assert_eq!(unknown.body["code"], "unknown_report");

    // Organisations never see each other, in the API or in the cache.
    let wrong = svc.get("/orgs/acme/projects", Some(&bob)).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.body["code"], "wrong_org");
    assert_eq!(
        svc.get("/orgs/nope/projects", Some(&bob)).await.body["code"],
        "wrong_org"
    );
    assert_eq!(
        svc.get("/orgs/nope/projects", Some(&ops)).await.body["code"],
        "unknown_org"
    );
    let globex = svc.get("/orgs/globex/projects", Some(&bob)).await;
    assert_eq!(globex.header("x-cache"), Some("miss"), "another partition");
    assert_eq!(globex.body[0]["name"], "doomsday device");
    assert_eq!(
        svc.get("/orgs/globex/projects", Some(&bob))
            .await
            .header("x-cache"),
        Some("hit")
    );

    // A change drops the organisation's lists and reports, nobody else's.
    let read_only = svc
        .call(
            reqwest::Method::PUT,
            "/orgs/acme/projects/1",
            Some(&alice_ci),
            Some(json!({ "budget_cents": 1 })),
        )
        .await;
    assert_eq!(read_only.status, StatusCode::FORBIDDEN);
    assert_eq!(read_only.body["code"], "insufficient_scope");
    let changed = svc
        .call(
            reqwest::Method::PUT,
            "/orgs/acme/projects/1",
            Some(&alice),
            Some(json!({ "budget_cents": 2_000_000, "status": "done" })),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["invalidated"], 3, "the list and both reports");
    assert_eq!(
        changed.header("x-ratelimit-limit-minute"),
        Some("4"),
        "writes have their own limit"
    );
    assert_eq!(changed.header("x-ratelimit-remaining-minute"), Some("2"));
    let bad = svc
        .call(
            reqwest::Method::PUT,
            "/orgs/acme/projects/1",
            Some(&alice),
            Some(json!({ "budget": 5 })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["code"], "invalid_body");
    let no_such = svc
        .call(
            reqwest::Method::PUT,
            "/orgs/acme/projects/abc",
            Some(&alice),
            Some(json!({ "budget_cents": 1 })),
        )
        .await;
    assert_eq!(no_such.status, StatusCode::NOT_FOUND);
    assert_eq!(no_such.body["code"], "unknown_project");
    let fresh = svc.get("/orgs/acme/projects", Some(&alice_ci)).await;
    assert_eq!(fresh.header("x-cache"), Some("miss"));
    assert_eq!(fresh.body[0]["budget_cents"], 2_000_000);
    assert_eq!(
        svc.get("/orgs/globex/projects", Some(&bob))
            .await
            .header("x-cache"),
        Some("hit"),
        "globex untouched"
    );

    // Invalidation on demand, per namespace.
    let dropped = svc
        .call(
            reqwest::Method::DELETE,
            "/orgs/acme/cache/projects",
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(dropped.status, StatusCode::OK, "{}", dropped.body);
    assert_eq!(dropped.body["invalidated"], 1);
    let bogus = svc
        .call(
            reqwest::Method::DELETE,
            "/orgs/acme/cache/bogus",
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(bogus.body["code"], "unknown_namespace");

    // The statistics, to the unit. acme: projects miss, hit, hit; summary miss, hit, hit
    // (the other key); budget miss; projects miss after the change. globex: miss, hit, hit.
    assert_eq!(
        svc.get("/cache/stats", Some(&alice)).await.status,
        StatusCode::FORBIDDEN
    );
    let stats = svc.get("/cache/stats", Some(&ops)).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.body);
    let s = &stats.body;
    assert_eq!(
        (s["backend"].as_str(), s["connected"].as_bool()),
        (Some("memory"), Some(true))
    );
    assert_eq!(
        (s["hits"].as_u64(), s["misses"].as_u64()),
        (Some(6), Some(5))
    );
    assert_eq!(s["hit_rate_percent"], 54.5);
    assert_eq!(s["orgs"]["acme"]["hits"], 4);
    assert_eq!(s["orgs"]["acme"]["misses"], 4);
    assert_eq!(s["orgs"]["acme"]["hit_rate_percent"], 50.0);
    assert_eq!(s["orgs"]["globex"]["hit_rate_percent"], 66.7);
    // acme: the projects namespace was dropped, the list of globex is held.
    assert_eq!(s["orgs"]["acme"]["memory"]["entries"], 0);
    assert_eq!(s["orgs"]["globex"]["memory"]["entries"], 1);
    assert_eq!(s["memory"]["entries"], 1);
    assert!(s["memory"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        s["namespaces"],
        json!([{ "name": "projects", "ttl_seconds": 60 }, { "name": "reports", "ttl_seconds": 300 }])
    );
    assert_eq!(database.reads(), 5, "one database read per miss");

    // Public routes, per address; without a key the authenticated ones answer 401.
    for remaining in ["1", "0"] {
        let answer = svc.get("/public/status", None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header("x-ratelimit-remaining-minute"),
            Some(remaining)
        );
    }
    assert_eq!(
        svc.get("/public/status", None).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let anonymous = svc.get("/orgs/acme/projects", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.header("content-type"),
        Some("application/problem+json")
    );

    let metrics = svc.get("/metrics", None).await.body;
    let text = metrics.as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("palisade_ratelimit_decisions_total{")
                && l.contains("policy=\"reports\"")
                && l.contains("outcome=\"denied\"")),
        "{text}"
    );
    assert!(
        text.contains("palisade_semantic_cache_invalidations_total"),
        "{text}"
    );
    assert!(text.contains("tenant_api_database_reads_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_guard_limits_floods_of_made_up_keys() {
    let mut settings = settings(None);
    settings.limits.ip_guard = Some(limit("ip-guard", "/**", &[], "ip", [3, 100, 1000]));
    let app = app::build(settings, app::secrets().unwrap()).await.unwrap();
    let svc = serve(app.router).await;
    for _ in 0..3 {
        let answer = svc
            .get("/orgs/acme/projects", Some("tn_live_made-up"))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    let flood = svc
        .get("/orgs/acme/projects", Some("tn_live_made-up"))
        .await;
    assert_eq!(flood.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(flood.header("retry-after").is_some());
    assert_eq!(flood.body["policy"], "ip-guard");
    assert!(
        flood.header("x-ratelimit-limit").is_none(),
        "the guard writes no counters"
    );
    assert_eq!(
        svc.get("/health", None).await.status,
        StatusCode::OK,
        "exempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_two_instances_share_keys_limits_and_cache_and_survive_an_outage() {
    let mut redis = RedisServer::start().expect("redis-server on PATH");
    let settings = || {
        let mut s = settings(Some(redis.url()));
        s.limits.timeout = Duration::from_secs(1);
        s
    };
    let one = app::build(settings(), app::secrets().unwrap())
        .await
        .unwrap();
    let two = app::build(settings(), app::secrets().unwrap())
        .await
        .unwrap();
    let alice = key(
        &one.keys,
        "alice",
        &[
            "org:acme",
            "projects:read",
            "projects:write",
            "reports:read",
        ],
    )
    .await;
    let ops = app::bootstrap_admin(&one.keys).await.unwrap();
    let one = serve(one.router).await;
    let two = serve(two.router).await;

    // A key made on one instance works on the other; counts and cache are shared.
    let a = one.get("/orgs/acme/projects", Some(&alice)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.header("x-cache"), Some("miss"));
    assert_eq!(a.header("x-ratelimit-remaining-minute"), Some("7"));
    let b = two.get("/orgs/acme/projects", Some(&alice)).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    assert_eq!(b.header("x-cache"), Some("hit"));
    assert_eq!(b.header("x-ratelimit-remaining-minute"), Some("6"));
    let changed = two
        .call(
            reqwest::Method::PUT,
            "/orgs/acme/projects/2",
            Some(&alice),
            Some(json!({ "name": "bigger magnet" })),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["invalidated"], 1);
    assert_eq!(
        one.get("/orgs/acme/projects", Some(&alice))
            .await
            .header("x-cache"),
        Some("miss"),
        "invalidated for both instances"
    );
    let stats = one.get("/cache/stats", Some(&ops)).await;
    assert_eq!(stats.body["backend"], "redis");
    assert_eq!(stats.body["connected"], true);
    assert_eq!(stats.body["orgs"]["acme"]["memory"]["entries"], 1);
    assert!(
        stats.body["memory"]["bytes"].is_null(),
        "Redis keeps no byte count"
    );

    // Redis dies: health says so, the cache reports itself disconnected, and a key verified
    // moments ago is still served (its record is cached within the 5 s staleness bound),
    // uncounted and computed without the cache.
    redis.kill();
    let health = one.get("/health", None).await;
    assert_eq!(health.body["status"], "degraded");
    assert!(
        health.body["components"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["connected"] == false),
        "{}",
        health.body
    );
    let served = one.get("/orgs/acme/projects", Some(&alice)).await;
    assert_eq!(served.status, StatusCode::OK, "{}", served.body);
    assert!(
        served.header("x-ratelimit-remaining-minute").is_none(),
        "uncounted"
    );
    assert_eq!(served.header("x-cache"), Some("miss"));
    let stats = one.get("/cache/stats", Some(&ops)).await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.body["connected"], false);

    // Back (empty): health is ok again on both instances.
    redis.restart().unwrap();
    for svc in [&one, &two] {
        let started = Instant::now();
        while svc.get("/health", None).await.body["status"] != "ok" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "healthy within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn the_sample_settings_file_is_valid() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenant_api/tenant_api.toml"
    ));
    let settings: app::Settings = support::settings::from_file(path).unwrap();
    let defaults = app::Settings::default();
    assert_eq!(settings.limits.routes.len(), defaults.limits.routes.len());
    assert_eq!(settings.limits.routes[0].key, app::KeyKind::ApiKey);
    assert_eq!(settings.cache_ttl.reports, Duration::from_secs(300));
    assert_eq!(settings.limits.ip_guard.unwrap().minute, Some(600));
}
