//! What the `ai_gateway` example's middleware costs per request, next to a bare axum handler
//! (issue 20: under 10 µs in memory). The gateway is built by the example's own `build`
//! (memory backends), and requests go through its router with `tower::ServiceExt::oneshot`:
//! no sockets, no HTTP parsing.
//!
//! * `bare/models`: an axum router whose only route is the same `GET /v1/models` answer.
//! * `request_ids/models`: the bare router wrapped by `support::http::with_request_ids`
//!   (a UUID, the request span, the id echoed on the response).
//! * `gateway/models`: the example's whole router: request ids and span, body limit, the
//!   API-key layer (parse, CRC32, one memory lookup, HMAC-SHA256, scope), the rate-limit
//!   layer (rules, tier, one sliding-window decision of two quotas, seven headers), the
//!   handler. The gap to `bare/models` is the overhead the issue asks about.
//! * `gateway/chat_cache_hit`: a chat completion answered by the semantic cache (exact hit:
//!   prompt normalisation, one lookup, the answer's JSON read back and written out, the
//!   ledger row): what a repeated prompt costs end to end, no provider call.
//!
//! The futures are polled with a no-op waker inside the runtime's context: every step is in
//! memory, so they are ready at once (a `Pending` would panic, not skew the figure). The
//! Prometheus recorder is installed, as in the service, so metric updates are counted in.
//! Run with `cargo bench -p palisade --bench examples_overhead`.

#[path = "../examples/support/mod.rs"]
mod support;

#[path = "../examples/ai_gateway/app.rs"]
mod app;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tower::ServiceExt;

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory request is always ready"),
    }
}

async fn models() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [
            { "id": "small", "object": "model", "owned_by": "ai_gateway" },
            { "id": "large", "object": "model", "owned_by": "ai_gateway" },
        ],
    }))
}

fn get_models(key: &str) -> Request<Body> {
    Request::get("/v1/models")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

fn chat(key: &str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"model":"small","messages":[{"role":"user","content":"What is a circuit breaker?"}]}"#,
        ))
        .unwrap()
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut settings = app::settings::Settings::default();
    settings.secrets.env_prefix = "AI_GATEWAY_BENCH_NEVER_SET_".to_owned();
    settings.migrations.backup_dir =
        std::env::temp_dir().join(format!("ai-gateway-bench-{}", std::process::id()));
    // Budgets no run can exhaust (at most one unit per microsecond).
    settings.limits.premium.per_minute = 60_000_000;
    settings.limits.premium.per_hour = 3_600_000_000;
    settings.limits.api_per_minute = 60_000_000;
    let (gateway, key) = rt.block_on(async {
        let app = app::build(settings).await.unwrap();
        let created = app
            .gateway
            .keys
            .create(
                palisade::apikey::KeySpec::new("bench", "bench")
                    .scopes(app::default_scopes("premium").iter().copied())
                    .rate_limit_policy("premium"),
            )
            .await
            .unwrap();
        (app, created.key.expose_secret().to_owned())
    });
    let _context = rt.enter();

    let bare = Router::new().route("/v1/models", get(models));
    let with_ids = support::http::with_request_ids(Router::new().route("/v1/models", get(models)));
    let full = gateway.router.clone();
    for router in [&bare, &with_ids, &full] {
        let res = ready(router.clone().oneshot(get_models(&key))).unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = rt.block_on(full.clone().oneshot(chat(&key))).unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the first chat fills the cache"
    );
    let res = ready(full.clone().oneshot(chat(&key))).unwrap();
    assert_eq!(
        res.headers()["x-gateway-cache"],
        "exact_hit",
        "later chats are cache hits"
    );

    // `EXAMPLES_OVERHEAD_DRIVE=<row>:<n>` runs one row n times and no benchmark: a driver
    // for `valgrind --tool=callgrind` (instructions per request, whatever the load).
    if let Ok(drive) = std::env::var("EXAMPLES_OVERHEAD_DRIVE") {
        let (row, n) = drive.split_once(':').expect("<row>:<n>");
        let n: usize = n.parse().expect("a count");
        for _ in 0..n {
            let res = match row {
                "bare" => ready(bare.clone().oneshot(get_models(&key))),
                "request_ids" => ready(with_ids.clone().oneshot(get_models(&key))),
                "gateway" => ready(full.clone().oneshot(get_models(&key))),
                "chat_cache_hit" => ready(full.clone().oneshot(chat(&key))),
                other => panic!("unknown row {other}"),
            };
            black_box(res.unwrap());
        }
        return;
    }

    let mut g = c.benchmark_group("examples_overhead");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("bare", "models"), |b| {
        b.iter(|| ready(bare.clone().oneshot(black_box(get_models(&key)))).unwrap());
    });
    g.bench_function(BenchmarkId::new("request_ids", "models"), |b| {
        b.iter(|| ready(with_ids.clone().oneshot(black_box(get_models(&key)))).unwrap());
    });
    g.bench_function(BenchmarkId::new("gateway", "models"), |b| {
        b.iter(|| ready(full.clone().oneshot(black_box(get_models(&key)))).unwrap());
    });
    g.bench_function(BenchmarkId::new("gateway", "chat_cache_hit"), |b| {
        b.iter(|| ready(full.clone().oneshot(black_box(chat(&key)))).unwrap());
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&gateway.gateway.settings.migrations.backup_dir);
}

criterion_group!(benches, overhead);
criterion_main!(benches);
