//! The tower layer: where the key is read from, what reaches the handler, and the
//! problem+json refusals.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade_apikey::layer::{ApiKeyLayer, ClientIp, Identity};
use palisade_apikey::{ApiKeys, FailureMode, KeySpec, MemoryStore, Pepper, Peppers};
use tower::{Service, ServiceBuilder, ServiceExt};

fn keys() -> ApiKeys {
    ApiKeys::builder(Peppers::new(Pepper::new(1, [9u8; 32]).unwrap()))
        .store(MemoryStore::new())
        .build()
        .unwrap()
}

async fn handler(req: Request<String>) -> Result<Response<String>, Infallible> {
    let id = req.extensions().get::<Identity>().cloned();
    Ok(Response::new(match id {
        Some(i) => format!(
            "{}|{}|{}|{}",
            i.key_id,
            i.owner,
            i.rate_limit_policy.clone().unwrap_or_default(),
            i.has_scope("read:reports")
        ),
        None => "anonymous".into(),
    }))
}

async fn call(layer: ApiKeyLayer, req: Request<String>) -> Response<String> {
    let mut svc = ServiceBuilder::new().layer(layer).service_fn(handler);
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn get(auth: Option<&str>) -> Request<String> {
    let mut b = Request::get("/reports");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(String::new()).unwrap()
}

fn problem(res: &Response<String>) -> serde_json::Value {
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{res:?}"
    );
    serde_json::from_str(res.body()).unwrap()
}

#[tokio::test]
async fn a_verified_request_carries_the_identity() {
    let keys = keys();
    let k = keys
        .create(
            KeySpec::new("acct-9", "app")
                .scopes(["read:*"])
                .rate_limit_policy("premium"),
        )
        .await
        .unwrap();
    let layer = ApiKeyLayer::new(keys).require_scope("read:reports");
    let res = call(
        layer.clone(),
        get(Some(&format!("Bearer {}", k.key.expose_secret()))),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.body(),
        &format!("{}|acct-9|premium|true", k.record.id),
        "the key id (never the key) for the rate limiter"
    );
    // Scheme case and surrounding spaces do not matter.
    let res = call(
        layer,
        get(Some(&format!("bearer   {} ", k.key.expose_secret()))),
    )
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn refusals_are_problem_json_with_the_right_status() {
    let keys = keys();
    let k = keys
        .create(KeySpec::new("o", "k").scopes(["read:*"]))
        .await
        .unwrap();
    let text = k.key.expose_secret().to_owned();
    let layer = ApiKeyLayer::new(keys.clone()).require_scope("write:reports");

    let res = call(layer.clone(), get(None)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(problem(&res)["code"], "missing");

    let res = call(layer.clone(), get(Some("Bearer pk_live_nope"))).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(&res)["code"], "malformed");

    let res = call(layer.clone(), get(Some(&format!("Basic {text}")))).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "only the Bearer scheme"
    );

    let res = call(layer.clone(), get(Some(&format!("Bearer {text}")))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let p = problem(&res);
    assert_eq!(
        (p["code"].as_str(), p["status"].as_u64()),
        (Some("insufficient_scope"), Some(403))
    );
    assert!(!res.body().contains(&text), "the key is never echoed");

    keys.revoke(&k.record.id).await.unwrap();
    let res = call(
        ApiKeyLayer::new(keys.clone()),
        get(Some(&format!("Bearer {text}"))),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(&res)["code"], "revoked");

    let metered = keys
        .create(KeySpec::new("o", "m").credits(1, None))
        .await
        .unwrap();
    let auth = format!("Bearer {}", metered.key.expose_secret());
    assert_eq!(
        call(ApiKeyLayer::new(keys.clone()), get(Some(&auth)))
            .await
            .status(),
        200
    );
    let res = call(ApiKeyLayer::new(keys.clone()), get(Some(&auth))).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem(&res)["code"], "out_of_credits");
}

/// RFC 9457: `type` names the problem. A denial links to its variant's rustdoc anchor
/// (`#variant.Name`, the anchor docs.rs renders); a refusal that is not a denial (no key) is
/// `about:blank`, not a link to an anchor that does not exist.
#[tokio::test]
async fn problem_types_are_resolvable() {
    let keys = keys();
    let layer = ApiKeyLayer::new(keys.clone());
    let res = call(layer.clone(), get(None)).await;
    assert_eq!(problem(&res)["type"], "about:blank");

    let res = call(layer, get(Some("Bearer pk_live_nope"))).await;
    assert_eq!(
        problem(&res)["type"],
        "https://docs.rs/palisade-apikey/latest/palisade_apikey/enum.Denial.html#variant.Malformed"
    );
}

#[tokio::test]
async fn a_configured_header_and_never_the_url() {
    let keys = keys();
    let k = keys.create(KeySpec::new("o", "k")).await.unwrap();
    let text = k.key.expose_secret();
    let layer = ApiKeyLayer::new(keys).header(http::HeaderName::from_static("x-api-key"));
    let req = Request::get("/")
        .header("x-api-key", text)
        .body(String::new())
        .unwrap();
    assert_eq!(call(layer.clone(), req).await.status(), 200);
    let req = Request::get(format!("/?api_key={text}&key={text}"))
        .body(String::new())
        .unwrap();
    assert_eq!(
        call(layer, req).await.status(),
        401,
        "a key in the URL is ignored"
    );
}

#[tokio::test]
async fn the_allowlist_uses_the_client_ip() {
    let keys = keys();
    let k = keys
        .create(KeySpec::new("o", "k").allowed_ips(["203.0.113.0/24"]))
        .await
        .unwrap();
    let auth = format!("Bearer {}", k.key.expose_secret());
    let mut req = get(Some(&auth));
    req.extensions_mut()
        .insert(ClientIp("203.0.113.5".parse().unwrap()));
    assert_eq!(
        call(ApiKeyLayer::new(keys.clone()), req).await.status(),
        200
    );
    let mut req = get(Some(&auth));
    req.extensions_mut()
        .insert(ClientIp("198.51.100.5".parse().unwrap()));
    let res = call(ApiKeyLayer::new(keys.clone()), req).await;
    assert_eq!(res.status(), 403);
    assert_eq!(problem(&res)["code"], "ip_not_allowed");
    // From a trusted proxy's header, through a function.
    let layer = ApiKeyLayer::new(keys)
        .client_ip(|_, headers| headers.get("x-real-ip")?.to_str().ok()?.parse().ok());
    let req = Request::get("/")
        .header("authorization", &auth)
        .header("x-real-ip", "203.0.113.77")
        .body(String::new())
        .unwrap();
    assert_eq!(call(layer, req).await.status(), 200);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_is_503_when_failing_closed() {
    let mut server = palisade_testkit::RedisServer::builder()
        .start_async()
        .await
        .unwrap();
    let keys = ApiKeys::builder(Peppers::new(Pepper::new(1, [9u8; 32]).unwrap()))
        .store(
            palisade_apikey::RedisStore::new(server.pool())
                .with_timeout(Duration::from_millis(300)),
        )
        .failure_mode(FailureMode::FailClosed)
        .build()
        .unwrap();
    let k = keys.create(KeySpec::new("o", "k")).await.unwrap();
    tokio::task::block_in_place(|| server.kill());
    let res = call(
        ApiKeyLayer::new(keys),
        get(Some(&format!("Bearer {}", k.key.expose_secret()))),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem(&res)["code"], "unavailable");
}
