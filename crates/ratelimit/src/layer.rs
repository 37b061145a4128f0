//! A tower [`Layer`] that answers `429 Too Many Requests` (feature `tower`).
//!
//! Works with any tower service over `http` types, including axum routers. Admitted
//! requests get the rate-limit headers on their response; denied requests get a `429` with
//! the same headers, `Retry-After` and an `application/problem+json` body (RFC 9457);
//! exempt and unmatched routes pass untouched. With
//! [`tier_header(true)`](RateLimitLayer::tier_header), counted and unlimited requests also
//! get `X-RateLimit-Tier`, the tier they were counted under.
//!
//! ```
//! use palisade_ratelimit::layer::RateLimitLayer;
//! use palisade_ratelimit::rules::{Key, Route, Rules, RequestLimiter};
//! use palisade_ratelimit::{MemoryStore, Policy, Quota, RateLimiter, Algorithm};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rules = Rules::builder()
//!     .exempt("/health")?
//!     .route(Route::new("/**")?.policy(Policy::single("all", Algorithm::Gcra, Quota::per_minute(1))?))
//!     .key(Key::global())
//!     .build()?;
//! let limiter = RequestLimiter::new(RateLimiter::new(MemoryStore::new()), rules);
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//!     });
//!
//! let ok = svc.ready().await?.call(http::Request::get("/x").body(String::new())?).await?;
//! assert_eq!(ok.status(), 200);
//! let limited = svc.ready().await?.call(http::Request::get("/x").body(String::new())?).await?;
//! assert_eq!(limited.status(), 429);
//! assert!(limited.headers().contains_key("retry-after"));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::decision::Decision;
use crate::headers::{self, HeaderStyle};
use crate::quota::Policy;
use crate::rules::{Outcome, RequestLimiter, RequestParts};

/// Applies a [`RequestLimiter`] in front of a service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RequestLimiter,
    style: HeaderStyle,
    tier_header: bool,
}

impl RateLimitLayer {
    /// A layer writing both header families ([`HeaderStyle::BOTH`]).
    pub fn new(limiter: RequestLimiter) -> Self {
        Self {
            limiter,
            style: HeaderStyle::BOTH,
            tier_header: false,
        }
    }

    /// Which rate-limit headers to write.
    #[must_use]
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// Whether to write [`X-RateLimit-Tier`](headers::X_RATELIMIT_TIER) (off by default):
    /// the tier a counted request was counted under (the rules' default tier for a tier
    /// its route does not list) or the tier of an unlimited one, on admitted responses and
    /// on `429`s alike. Exempt and unmatched requests get none. A tier name that is not a
    /// valid header value is left out.
    #[must_use]
    pub fn tier_header(mut self, on: bool) -> Self {
        self.tier_header = on;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            style: self.style,
            tier_header: self.tier_header,
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RequestLimiter,
    style: HeaderStyle,
    tier_header: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; keep the ready one for this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let style = self.style;
        let tier_header = self.tier_header;
        Box::pin(async move {
            let outcome = limiter.check(&RequestParts::from_request(&req)).await;
            let tier = match &outcome {
                Outcome::Limited { tier, .. } | Outcome::Unlimited { tier } if tier_header => {
                    HeaderValue::from_str(tier).ok()
                }
                _ => None,
            };
            if outcome.blocks()
                && let Outcome::Limited {
                    decision, policy, ..
                } = &outcome
            {
                let mut response = too_many_requests(decision, policy, style);
                if let Some(tier) = tier {
                    response
                        .headers_mut()
                        .insert(headers::X_RATELIMIT_TIER, tier);
                }
                return Ok(response);
            }
            let mut response = inner.call(req).await?;
            if let Outcome::Limited {
                decision, policy, ..
            } = &outcome
            {
                headers::apply(decision, policy, response.headers_mut(), style);
            }
            if let Some(tier) = tier {
                response
                    .headers_mut()
                    .insert(headers::X_RATELIMIT_TIER, tier);
            }
            Ok(response)
        })
    }
}

/// The `429` response for a denial: rate-limit headers, `Retry-After` and an RFC 9457
/// `application/problem+json` body of the shape every palisade HTTP rejection shares (the
/// breaker's 503, the key layer's 401/403): `type`, `title`, `status`, `detail`, `code`
/// (`rate_limited`), plus `policy` and `retry_after` (whole seconds, or `null`).
pub fn too_many_requests<B: From<String>>(
    decision: &Decision,
    policy: &Policy,
    style: HeaderStyle,
) -> Response<B> {
    let retry = decision.retry_after().map(headers::ceil_secs);
    let detail = match retry {
        Some(s) => format!(
            "Rate limit of policy `{}` exceeded; retry in {s} s.",
            policy.name()
        ),
        None => format!("Rate limit of policy `{}` exceeded.", policy.name()),
    };
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": detail,
        "code": "rate_limited",
        "policy": policy.name(),
        "retry_after": retry,
    });
    let mut response = Response::new(B::from(body.to_string()));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers::apply(decision, policy, response.headers_mut(), style);
    response
}
