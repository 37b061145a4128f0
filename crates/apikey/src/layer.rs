//! A tower [`Layer`] that verifies API keys (feature `tower`).
//!
//! The key is read from `Authorization: Bearer <key>` or from a header you name
//! (`x-api-key`), never from the URL (query strings end up in access logs and browser
//! history). A verified request carries an [`Identity`] in its extensions — key id, owner,
//! scopes, rate-limit policy name — so a rate limiter further in can key on the key id and
//! handlers can check scopes. Refusals are RFC 9457 `application/problem+json`:
//! 401 for a missing, malformed, unknown, revoked or expired key; 403 for a missing scope or
//! an address outside the key's allowlist; 429 for a key out of credits; 503 when the store
//! failed under [`FailureMode::FailClosed`](crate::FailureMode::FailClosed).
//!
//! ```
//! use palisade_apikey::layer::{ApiKeyLayer, Identity};
//! use palisade_apikey::{ApiKeys, KeySpec, Pepper, Peppers};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = ApiKeys::builder(Peppers::new(Pepper::new(1, [3u8; 32])?)).build()?;
//! let key = keys.create(KeySpec::new("acct-1", "app").scopes(["read:*"])).await?.key;
//! let mut svc = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::new(keys).require_scope("read:reports"))
//!     .service_fn(|req: http::Request<String>| async move {
//!         let who = req.extensions().get::<Identity>().expect("set by the layer");
//!         Ok::<_, std::convert::Infallible>(http::Response::new(who.owner.clone()))
//!     });
//!
//! let req = http::Request::get("/reports")
//!     .header("authorization", format!("Bearer {}", key.expose_secret()))
//!     .body(String::new())?;
//! let res = svc.ready().await?.call(req).await?;
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.body(), "acct-1");
//!
//! let res = svc.ready().await?.call(http::Request::get("/reports").body(String::new())?).await?;
//! assert_eq!(res.status(), 401);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::key::{Env, KeyId};
use crate::record::Scopes;
use crate::service::{ApiKeys, VerifyRequest};
use crate::verification::{Denial, Verification};

/// The verified caller, put into the request's extensions by [`ApiKeyLayer`]. Holds no
/// secret: key the rate limiter on [`key_id`](Self::key_id), never on the key's text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The key's public id.
    pub key_id: KeyId,
    /// The key's owner.
    pub owner: String,
    /// The key's name.
    pub name: String,
    /// The key's environment.
    pub env: Env,
    /// Granted scopes.
    pub scopes: Scopes,
    /// The rate-limit policy name the key runs under, if any.
    pub rate_limit_policy: Option<String>,
    /// Credits left after this request, for a metered key.
    pub credits_remaining: Option<u64>,
    /// Whether the key is a rotated one in its grace period.
    pub in_grace: bool,
}

impl Identity {
    /// Whether the key grants `scope` (wildcards apply).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.grants(scope)
    }
}

/// The client's address, for keys with an IP allowlist: put it into the request's
/// extensions before this layer (from the socket, or from a trusted proxy's header), or
/// give the layer a function with [`ApiKeyLayer::client_ip`]. Without it, a key with an
/// allowlist is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

type IpFn = Arc<dyn Fn(&http::Extensions, &http::HeaderMap) -> Option<IpAddr> + Send + Sync>;

/// Verifies API keys in front of any tower service; see the [module docs](self).
#[derive(Clone)]
pub struct ApiKeyLayer {
    keys: ApiKeys,
    header: Option<HeaderName>,
    scope: Option<Arc<str>>,
    ip: Option<IpFn>,
}

impl std::fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("header", &self.header)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ApiKeyLayer {
    /// Read `Authorization: Bearer <key>`, require no scope.
    pub fn new(keys: ApiKeys) -> Self {
        Self {
            keys,
            header: None,
            scope: None,
            ip: None,
        }
    }

    /// Read the key from `header` (its whole value) instead of `Authorization`.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = Some(header);
        self
    }

    /// Require `scope` on every request through this layer.
    #[must_use]
    pub fn require_scope(mut self, scope: &str) -> Self {
        self.scope = Some(Arc::from(scope));
        self
    }

    /// How to find the client's address (default: a [`ClientIp`] extension).
    #[must_use]
    pub fn client_ip(
        mut self,
        f: impl Fn(&http::Extensions, &http::HeaderMap) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.ip = Some(Arc::new(f));
        self
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ApiKeyLayer`] wraps around `S`.
#[derive(Clone, Debug)]
pub struct ApiKeyService<S> {
    inner: S,
    layer: ApiKeyLayer,
}

/// RFC 9457 problem type of a denial: the docs.rs anchor of its [`Denial`] variant (rustdoc
/// names variant anchors `variant.<Name>`). Refusals that are not a `Denial` (no key, store
/// unavailable) use `about:blank`, whose meaning is the status code alone.
fn denial_type(d: Denial) -> &'static str {
    macro_rules! doc {
        ($v:literal) => {
            concat!(
                "https://docs.rs/palisade-apikey/latest/palisade_apikey/enum.Denial.html#variant.",
                $v
            )
        };
    }
    match d {
        Denial::Malformed => doc!("Malformed"),
        Denial::BadChecksum => doc!("BadChecksum"),
        Denial::NotFound => doc!("NotFound"),
        Denial::Revoked => doc!("Revoked"),
        Denial::Expired => doc!("Expired"),
        Denial::InsufficientScope => doc!("InsufficientScope"),
        Denial::IpNotAllowed => doc!("IpNotAllowed"),
        Denial::OutOfCredits => doc!("OutOfCredits"),
    }
}

fn problem<B: From<String>>(
    status: StatusCode,
    problem_type: &str,
    kind: &str,
    detail: &str,
) -> Response<B> {
    let body = serde_json::json!({
        "type": problem_type,
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": kind,
    });
    let mut res = Response::new(B::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

fn denied<B: From<String>>(d: Denial) -> Response<B> {
    let (status, detail) = match d {
        Denial::Malformed | Denial::BadChecksum | Denial::NotFound => {
            (StatusCode::UNAUTHORIZED, "the API key is not valid")
        }
        Denial::Revoked => (StatusCode::UNAUTHORIZED, "the API key was revoked"),
        Denial::Expired => (StatusCode::UNAUTHORIZED, "the API key has expired"),
        Denial::InsufficientScope => (
            StatusCode::FORBIDDEN,
            "the API key lacks the scope this request needs",
        ),
        Denial::IpNotAllowed => (
            StatusCode::FORBIDDEN,
            "the API key may not be used from this address",
        ),
        Denial::OutOfCredits => (
            StatusCode::TOO_MANY_REQUESTS,
            "the API key has no credits left",
        ),
    };
    problem(status, denial_type(d), d.as_str(), detail)
}

fn extract<'a>(header: Option<&HeaderName>, headers: &'a http::HeaderMap) -> Option<&'a str> {
    match header {
        Some(h) => headers.get(h)?.to_str().ok().map(str::trim),
        None => {
            let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let Some(key) = extract(layer.header.as_ref(), req.headers())
                .map(|k| zeroize::Zeroizing::new(k.to_owned()))
            else {
                return Ok(problem(
                    StatusCode::UNAUTHORIZED,
                    "about:blank",
                    "missing",
                    "an API key is required",
                ));
            };
            let ip = match &layer.ip {
                Some(f) => f(req.extensions(), req.headers()),
                None => req.extensions().get::<ClientIp>().map(|c| c.0),
            };
            let mut vr = VerifyRequest::new();
            vr.scope = layer.scope.as_deref();
            vr.ip = ip;
            let verified = match layer.keys.verify_with(&key, &vr).await {
                Ok(Verification::Verified(v)) => v,
                Ok(Verification::Denied(d)) => return Ok(denied(d)),
                Err(_) => {
                    return Ok(problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "about:blank",
                        "unavailable",
                        "API keys cannot be checked right now",
                    ));
                }
            };
            let r = &verified.record;
            req.extensions_mut().insert(Identity {
                key_id: r.id,
                owner: r.owner.clone(),
                name: r.name.clone(),
                env: r.env,
                scopes: r.scopes.clone(),
                rate_limit_policy: r.rate_limit_policy.clone(),
                credits_remaining: verified.credits_remaining,
                in_grace: verified.in_grace,
            });
            inner.call(req).await
        })
    }
}
