//! Rate limits per user, IP address, API key and for everybody, as axum middleware over one
//! `palisade::ratelimit::RateLimiter` (memory, or Redis shared by every instance).
//!
//! Two stages, because the limits key on different things: the **edge** stage runs before
//! authentication (global, client IP: it also throttles floods of made-up keys), the
//! **caller** stage after it (API key id, user). A request must pass every limit; one refused
//! by any of them is counted by none (the limits that had admitted it are refunded), and a
//! response carries the `RateLimit`/`X-RateLimit-*` headers of the most restrictive limit plus
//! `X-RateLimit-Scope` naming it (`global`, `ip`, `key`, `user`). A refusal is the crate's
//! `429` problem+json with `Retry-After`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use palisade::ratelimit::headers::{self, HeaderStyle, X_RATELIMIT_LIMIT};
use palisade::ratelimit::layer::too_many_requests;
use palisade::ratelimit::rules::{ANONYMOUS_KEY, Key, RequestParts};
use palisade::ratelimit::{Decision, Policy, RateLimiter};

/// The response header naming the limit whose figures the other headers show.
pub const X_RATELIMIT_SCOPE: &str = "x-ratelimit-scope";

/// One limit: what it is called, what it keys on, its quotas.
#[derive(Clone, Debug)]
pub struct Limit {
    /// `global`, `ip`, `key` or `user` (a metric label and the `X-RateLimit-Scope` value).
    pub scope: &'static str,
    /// Where the key comes from.
    pub key: Key,
    /// The quotas.
    pub policy: Policy,
}

/// The limits one middleware applies, in order.
#[derive(Clone, Debug)]
pub struct Stage {
    limiter: RateLimiter,
    limits: Arc<[Limit]>,
}

impl Stage {
    /// A stage applying `limits` with `limiter`.
    pub fn new(limiter: RateLimiter, limits: Vec<Limit>) -> Self {
        Self {
            limiter,
            limits: limits.into(),
        }
    }
}

/// What an earlier stage counted for this request (so a later refusal can refund it and
/// the headers can show the most restrictive limit of all stages).
#[derive(Clone, Debug, Default)]
struct Counted(Vec<Entry>);

#[derive(Clone, Debug)]
struct Entry {
    scope: &'static str,
    key: String,
    policy: Policy,
    decision: Decision,
}

/// The middleware (`axum::middleware::from_fn_with_state(stage, limits::enforce)`).
pub async fn enforce(State(stage): State<Stage>, mut req: Request, next: Next) -> Response {
    let mut counted = req
        .extensions()
        .get::<Counted>()
        .cloned()
        .unwrap_or_default()
        .0;
    for limit in stage.limits.iter() {
        let key = limit
            .key
            .extract(&RequestParts::from_request(&req))
            .unwrap_or_else(|| ANONYMOUS_KEY.to_owned());
        let decision = stage.limiter.acquire(&key, &limit.policy, 1).await;
        if !decision.allowed {
            // Counted by none: give back what the other limits took.
            for entry in &counted {
                let _ = stage.limiter.refund(&entry.key, &entry.policy, 1).await;
            }
            metrics::counter!("agent_api_rate_limited_total", "scope" => limit.scope).increment(1);
            let mut response: Response =
                too_many_requests(&decision, &limit.policy, HeaderStyle::BOTH);
            response
                .headers_mut()
                .insert(X_RATELIMIT_SCOPE, HeaderValue::from_static(limit.scope));
            return response;
        }
        counted.push(Entry {
            scope: limit.scope,
            key,
            policy: limit.policy.clone(),
            decision,
        });
    }
    req.extensions_mut().insert(Counted(counted.clone()));
    let mut response = next.run(req).await;
    // The innermost stage sees every limit and writes the headers; an outer one writes them
    // only when the request never reached an inner stage (refused by authentication).
    if !response.headers().contains_key(X_RATELIMIT_LIMIT)
        && let Some(tightest) = counted
            .iter()
            .min_by_key(|e| e.decision.remaining().unwrap_or(u64::MAX))
    {
        headers::apply(
            &tightest.decision,
            &tightest.policy,
            response.headers_mut(),
            HeaderStyle::BOTH,
        );
        response
            .headers_mut()
            .insert(X_RATELIMIT_SCOPE, HeaderValue::from_static(tightest.scope));
    }
    response
}
