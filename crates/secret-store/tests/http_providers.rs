//! The Vault KV v2 and Azure Key Vault providers against local servers (axum on port 0)
//! that speak the documented APIs: Vault's `/v1/<mount>/data|metadata/<path>` and
//! `/v1/sys/health`; Entra ID's client-credentials token endpoint and Key Vault's
//! `/secrets/<name>[/<version>]?api-version=7.4` with `nextLink` paging. No cloud is
//! reached. The conformance suite runs on both (one test per case), plus what only HTTP
//! providers do: denials, outages (503), token caching and renewal, expiry attributes,
//! names Azure cannot hold, and the chain falling back from a sealed Vault to a file.
#![cfg(any(feature = "vault", feature = "azure"))]
// Test servers: handlers answer axum responses from plain helpers.
#![allow(clippy::result_large_err, clippy::unused_async, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Form, Json};
use serde_json::{Value, json};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A path's versions, 1-based, each with an optional expiry (Unix seconds).
type Versions = Vec<(String, Option<u64>)>;

/// The fake servers' data.
#[derive(Default)]
struct Store {
    entries: Mutex<HashMap<String, Versions>>,
    down: AtomicBool,
}

#[cfg(feature = "vault")]
mod vault {
    use super::*;
    use palisade_secret_store::vault::{VaultConfig, VaultProvider};
    use palisade_secret_store::{
        ExposeSecret, FileProvider, Provider, SecretName, Secrets, testing,
    };

    pub const TOKEN: &str = "hvs.test-root-token";

    async fn data(
        State(s): State<Arc<Store>>,
        method: Method,
        headers: HeaderMap,
        Path(path): Path<String>,
        Query(q): Query<HashMap<String, String>>,
        body: Option<Json<Value>>,
    ) -> Response {
        if s.down.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"errors": ["Vault is sealed"]})),
            )
                .into_response();
        }
        if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"errors": ["permission denied"]})),
            )
                .into_response();
        }
        let mut entries = s.entries.lock().unwrap();
        if method == Method::POST {
            let Some(Json(body)) = body else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let versions = entries.entry(path).or_default();
            versions.push((body["data"]["value"].as_str().unwrap().to_owned(), None));
            let v = versions.len();
            return Json(json!({"data": {"version": v, "created_time": "2024-01-01T00:00:00Z", "deletion_time": "", "destroyed": false}})).into_response();
        }
        let Some(versions) = entries.get(&path) else {
            return (StatusCode::NOT_FOUND, Json(json!({"errors": []}))).into_response();
        };
        let n = q
            .get("version")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(versions.len());
        let Some((value, _)) = n.checked_sub(1).and_then(|i| versions.get(i)) else {
            return (StatusCode::NOT_FOUND, Json(json!({"errors": []}))).into_response();
        };
        Json(json!({"data": {"data": {"value": value, "other": "field"}, "metadata": {"version": n, "created_time": "2024-01-01T00:00:00Z", "deletion_time": "", "destroyed": false}}})).into_response()
    }

    async fn metadata(
        State(s): State<Arc<Store>>,
        headers: HeaderMap,
        path: Option<Path<String>>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some(TOKEN)
            || q.get("list").map(String::as_str) != Some("true")
        {
            return StatusCode::FORBIDDEN.into_response();
        }
        let folder = path.map(|Path(p)| p).unwrap_or_default();
        let entries = s.entries.lock().unwrap();
        let mut keys: Vec<String> = entries
            .keys()
            .filter_map(|k| k.strip_prefix(&folder))
            .map(|rest| match rest.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => rest.to_owned(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return StatusCode::NOT_FOUND.into_response();
        }
        Json(json!({"data": {"keys": keys}})).into_response()
    }

    pub async fn fake_vault() -> (String, Arc<Store>) {
        let store = Arc::new(Store::default());
        let app = Router::new()
            .route("/v1/secret/data/{*path}", any(data))
            .route("/v1/secret/metadata/", get(metadata))
            .route("/v1/secret/metadata/{*path}", get(metadata))
            .route(
                "/v1/sys/health",
                get(|State(s): State<Arc<Store>>| async move {
                    if s.down.load(Ordering::SeqCst) {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }),
            )
            .with_state(store.clone());
        (serve(app).await, store)
    }

    async fn provider() -> Arc<VaultProvider> {
        let (url, _) = fake_vault().await;
        let p = Arc::new(
            VaultProvider::new(VaultConfig::new(url, TOKEN.into()).path_prefix("app/")).unwrap(),
        );
        testing::seed(&*p).await;
        p
    }

    mod conformance {
        use super::*;
        palisade_secret_store::provider_conformance!(provider().await);
    }

    #[tokio::test]
    async fn a_wrong_token_is_denied_and_a_sealed_vault_is_transient() {
        let (url, store) = fake_vault().await;
        let good = VaultProvider::new(VaultConfig::new(&url, TOKEN.into())).unwrap();
        good.put(&SecretName::new("db").unwrap(), &"vault-password".into())
            .await
            .unwrap();
        let bad = VaultProvider::new(VaultConfig::new(&url, "hvs.revoked".into())).unwrap();
        let e = bad
            .get(&SecretName::new("db").unwrap(), None)
            .await
            .unwrap_err();
        assert!(e.is_denied(), "{e}");
        assert!(
            !format!("{e:?}").contains("hvs."),
            "the token never appears: {e:?}"
        );
        store.down.store(true, Ordering::SeqCst);
        let e = good
            .get(&SecretName::new("db").unwrap(), None)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(good.health().await.unwrap_err().is_transient());
        let nowhere =
            VaultProvider::new(VaultConfig::new("http://127.0.0.1:1", TOKEN.into())).unwrap();
        assert!(nowhere.health().await.unwrap_err().is_transient());
        assert!(VaultProvider::new(VaultConfig::new("vault:8200", TOKEN.into())).is_err());
        assert!(!format!("{good:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn a_sealed_vault_falls_back_to_the_file_in_the_chain() {
        let (url, store) = fake_vault().await;
        let vault = VaultProvider::new(VaultConfig::new(&url, TOKEN.into())).unwrap();
        vault
            .put(
                &SecretName::new("openai/api-key").unwrap(),
                &"sk-from-vault-0001".into(),
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fallback.env");
        std::fs::write(&file, "OPENAI_API_KEY=sk-from-file-0002\n").unwrap();
        let s = Secrets::builder()
            .provider(vault)
            .provider(FileProvider::new(&file))
            .build()
            .unwrap();
        assert_eq!(
            s.get("openai/api-key").await.unwrap().expose_secret(),
            "sk-from-vault-0001"
        );
        store.down.store(true, Ordering::SeqCst);
        let v = s.refresh("openai/api-key").await.unwrap();
        assert_eq!(
            (v.provider(), v.expose_secret()),
            ("file", "sk-from-file-0002")
        );
    }
}

#[cfg(feature = "azure")]
mod azure {
    use super::*;
    use palisade_secret_store::azure::{AzureConfig, AzureKeyVaultProvider};
    use palisade_secret_store::{ExposeSecret, FakeClock, Provider, SecretName, Secrets, testing};

    const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
    const CLIENT_SECRET: &str = "client~secret~value";

    #[derive(Default)]
    pub struct Azure {
        store: Store,
        tokens: AtomicUsize,
        /// The token the vault accepts (the token endpoint hands out `token-<n>`).
        valid: Mutex<String>,
        base: Mutex<String>,
    }

    async fn token(
        State(a): State<Arc<Azure>>,
        Path(tenant): Path<String>,
        Form(f): Form<HashMap<String, String>>,
    ) -> Response {
        if tenant != "tenant-1"
            || f.get("grant_type").map(String::as_str) != Some("client_credentials")
            || f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
            || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
            || f.get("scope").map(String::as_str) != Some("https://vault.azure.net/.default")
        {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_client"})),
            )
                .into_response();
        }
        let n = a.tokens.fetch_add(1, Ordering::SeqCst) + 1;
        let t = format!("token-{n}");
        *a.valid.lock().unwrap() = t.clone();
        Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": t})).into_response()
    }

    fn authorised(
        a: &Azure,
        headers: &HeaderMap,
        q: &HashMap<String, String>,
    ) -> Result<(), Response> {
        if a.store.down.load(Ordering::SeqCst) {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "busy").into_response());
        }
        if q.get("api-version").map(String::as_str) != Some("7.4") {
            return Err(StatusCode::BAD_REQUEST.into_response());
        }
        let want = format!("Bearer {}", a.valid.lock().unwrap());
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return Err((
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "Unauthorized"}})),
            )
                .into_response());
        }
        Ok(())
    }

    fn version_id(i: usize) -> String {
        format!("{:032x}", 0xabc000 + i)
    }

    fn bundle(base: &str, name: &str, i: usize, value: &str, exp: Option<u64>) -> Value {
        let mut attributes =
            json!({"enabled": true, "created": 1_700_000_000u64, "updated": 1_700_000_000u64});
        if let Some(exp) = exp {
            attributes["exp"] = json!(exp);
        }
        json!({"value": value, "id": format!("{base}/secrets/{name}/{}", version_id(i)), "attributes": attributes})
    }

    async fn secret(
        State(a): State<Arc<Azure>>,
        method: Method,
        headers: HeaderMap,
        Path(path): Path<Vec<String>>,
        Query(q): Query<HashMap<String, String>>,
        body: Option<Json<Value>>,
    ) -> Response {
        if let Err(r) = authorised(&a, &headers, &q) {
            return r;
        }
        let base = a.base.lock().unwrap().clone();
        let name = path[0].clone();
        let mut entries = a.store.entries.lock().unwrap();
        if method == Method::PUT {
            let Some(Json(body)) = body else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let versions = entries.entry(name.clone()).or_default();
            let exp = body["attributes"]["exp"].as_u64();
            versions.push((body["value"].as_str().unwrap().to_owned(), exp));
            let i = versions.len() - 1;
            return Json(bundle(&base, &name, i, &versions[i].0, exp)).into_response();
        }
        let not_found = || {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"code": "SecretNotFound"}})),
            )
                .into_response()
        };
        let Some(versions) = entries.get(&name) else {
            return not_found();
        };
        let i = match path.get(1) {
            None => versions.len() - 1,
            Some(v) => match (0..versions.len()).find(|&i| version_id(i) == *v) {
                Some(i) => i,
                None => return not_found(),
            },
        };
        Json(bundle(&base, &name, i, &versions[i].0, versions[i].1)).into_response()
    }

    async fn list(
        State(a): State<Arc<Azure>>,
        headers: HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        if let Err(r) = authorised(&a, &headers, &q) {
            return r;
        }
        let base = a.base.lock().unwrap().clone();
        let mut names: Vec<String> = a.store.entries.lock().unwrap().keys().cloned().collect();
        names.sort();
        let skip: usize = q.get("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
        let page: Vec<Value> = names
            .iter()
            .skip(skip)
            .take(2)
            .map(|n| json!({"id": format!("{base}/secrets/{n}")}))
            .collect();
        let next = (skip + 2 < names.len())
            .then(|| format!("{base}/secrets?api-version=7.4&skip={}", skip + 2));
        Json(json!({"value": page, "nextLink": next})).into_response()
    }

    pub async fn fake_azure() -> (String, Arc<Azure>) {
        let a = Arc::new(Azure::default());
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/secrets", get(list))
            .route(
                "/secrets/{name}",
                any(|s, m, h, Path(n): Path<String>, q, b| secret(s, m, h, Path(vec![n]), q, b)),
            )
            .route(
                "/secrets/{name}/{version}",
                get(|s, m, h, Path((n, v)): Path<(String, String)>, q| {
                    secret(s, m, h, Path(vec![n, v]), q, None)
                }),
            )
            .with_state(a.clone());
        let base = serve(app).await;
        *a.base.lock().unwrap() = base.clone();
        (base, a)
    }

    fn config(base: &str, secret: &str) -> AzureConfig {
        AzureConfig::new(base, "tenant-1", CLIENT_ID, secret.into())
            .token_endpoint(format!("{base}/tenant-1/oauth2/v2.0/token"))
    }

    async fn provider() -> Arc<AzureKeyVaultProvider> {
        let (base, _) = fake_azure().await;
        let p = Arc::new(AzureKeyVaultProvider::new(config(&base, CLIENT_SECRET)).unwrap());
        testing::seed(&*p).await;
        p
    }

    mod conformance {
        use super::*;
        palisade_secret_store::provider_conformance!(provider().await);
    }

    #[tokio::test]
    async fn the_token_is_cached_and_renewed_after_a_401() {
        let (base, a) = fake_azure().await;
        let p = AzureKeyVaultProvider::new(config(&base, CLIENT_SECRET)).unwrap();
        let n = SecretName::new("db-password").unwrap();
        p.put(&n, &"azure-password".into()).await.unwrap();
        for _ in 0..5 {
            p.get(&n, None).await.unwrap().unwrap();
        }
        assert_eq!(
            a.tokens.load(Ordering::SeqCst),
            1,
            "one sign-in for six calls"
        );
        // The vault stops accepting the token (revoked, expired early): one new sign-in.
        *a.valid.lock().unwrap() = "something-else".to_owned();
        p.get(&n, None).await.unwrap();
        assert_eq!(a.tokens.load(Ordering::SeqCst), 2);
        assert!(p.list().await.unwrap().len() == 1);
    }

    #[tokio::test]
    async fn bad_client_credentials_are_denied_and_outages_transient() {
        let (base, a) = fake_azure().await;
        let bad = AzureKeyVaultProvider::new(config(&base, "wrong-secret")).unwrap();
        let n = SecretName::new("db-password").unwrap();
        let e = bad.get(&n, None).await.unwrap_err();
        assert!(e.is_denied(), "{e}");
        assert!(!format!("{e:?} {bad:?}").contains("wrong-secret"));
        let good = AzureKeyVaultProvider::new(config(&base, CLIENT_SECRET)).unwrap();
        a.store.down.store(true, Ordering::SeqCst);
        assert!(good.get(&n, None).await.unwrap_err().is_transient());
        assert!(good.health().await.unwrap_err().is_transient());
        a.store.down.store(false, Ordering::SeqCst);
        good.health().await.unwrap();
        // Names Key Vault cannot hold are refused as names (the chain treats them as misses).
        let e = good
            .get(&SecretName::new("db_password").unwrap(), None)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            palisade_secret_store::Error::InvalidName { .. }
        ));
        assert!(
            AzureKeyVaultProvider::new(AzureConfig::new("vault", "t", "c", "s".into())).is_err()
        );
    }

    #[tokio::test]
    async fn an_expiry_attribute_bounds_the_cache() {
        let (base, a) = fake_azure().await;
        let clock = FakeClock::new();
        let now = palisade_secret_store::Clock::now_micros(&clock) / 1_000_000;
        a.store.entries.lock().unwrap().insert(
            "token".to_owned(),
            vec![("short-lived-value".to_owned(), Some(now + 60))],
        );
        let s = Secrets::builder()
            .clock(clock.clone())
            .failure_mode(palisade_secret_store::FailureMode::FailOpen)
            .provider(AzureKeyVaultProvider::new(config(&base, CLIENT_SECRET)).unwrap())
            .build()
            .unwrap();
        let v = s.get("token").await.unwrap();
        assert_eq!(v.expose_secret(), "short-lived-value");
        assert!(v.expires_at().is_some());
        a.store.down.store(true, Ordering::SeqCst);
        clock.advance(std::time::Duration::from_secs(60));
        assert!(
            s.get("token").await.is_err(),
            "expired: never served, even FailOpen"
        );
    }

    #[tokio::test]
    async fn paging_follows_next_link_on_the_vault_only() {
        let (base, _) = fake_azure().await;
        let p = AzureKeyVaultProvider::new(config(&base, CLIENT_SECRET)).unwrap();
        for i in 0..5 {
            p.put(
                &SecretName::new(&format!("s{i}")).unwrap(),
                &"v-value".into(),
            )
            .await
            .unwrap();
        }
        let mut names: Vec<String> = p
            .list()
            .await
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    }
}
