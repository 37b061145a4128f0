//! HTTP response headers for a [`Decision`] of a [`Policy`] (the decision holds the figures,
//! the policy the names, limits and periods).
//!
//! * `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the
//!   most restrictive quota is whole again), the de-facto headers most clients read.
//! * `Retry-After` (delta-seconds) on denials, rounded **up**, so a client that waits exactly
//!   that long is never early.
//! * `RateLimit-Policy` and `RateLimit` from draft-ietf-httpapi-ratelimit-headers-11, one list
//!   item per quota: `"per_minute";q=60;w=60` and `"per_minute";r=42;t=18`.
//! * Opt-in ([`HeaderStyle::with_per_window`]): one `X-RateLimit-Limit-<quota>`,
//!   `X-RateLimit-Remaining-<quota>` and `X-RateLimit-Reset-<quota>` per quota (Kong's
//!   per-window headers: name the quotas `minute`, `hour`, `day` to get
//!   `X-RateLimit-Remaining-Minute`, …), for clients that read one header per window.
//!
//! ```
//! use palisade_ratelimit::{headers, Algorithm, MemoryStore, Policy, Quota};
//! let store = MemoryStore::new();
//! let policy = Policy::builder("api")
//!     .algorithm(Algorithm::FixedWindow)
//!     .quota("per_minute", Quota::per_minute(60))
//!     .quota("per_hour", Quota::per_hour(1000))
//!     .build()?;
//! let decision = store.acquire_sync("user:1", &policy, 1);
//! let mut h = http::HeaderMap::new();
//! headers::apply(&decision, &policy, &mut h, headers::HeaderStyle::BOTH);
//! assert_eq!(h["ratelimit-policy"], r#""per_minute";q=60;w=60, "per_hour";q=1000;w=3600"#);
//! assert_eq!(h["x-ratelimit-limit"], "60");
//! assert_eq!(h["x-ratelimit-remaining"], "59");
//! # Ok::<(), palisade_ratelimit::Error>(())
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decision::Decision;
use crate::quota::Policy;

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (IETF draft 11).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft 11).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Tier`: the tier a request was counted under (written by the layer when
/// asked: `RateLimitLayer::tier_header`, feature `tower`).
pub const X_RATELIMIT_TIER: HeaderName = HeaderName::from_static("x-ratelimit-tier");

/// Which header families to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HeaderStyle {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    pub legacy: bool,
    /// `RateLimit-Policy` and `RateLimit`.
    pub draft: bool,
    /// `X-RateLimit-{Limit,Remaining,Reset}-<quota name>`, one set per quota (off in every
    /// constant below; turn it on with [`with_per_window`](Self::with_per_window)).
    pub per_window: bool,
}

impl HeaderStyle {
    /// Both families (the default).
    pub const BOTH: Self = Self {
        legacy: true,
        draft: true,
        per_window: false,
    };
    /// Only the `X-RateLimit-*` family.
    pub const LEGACY: Self = Self {
        legacy: true,
        draft: false,
        per_window: false,
    };
    /// Only the IETF draft's fields.
    pub const DRAFT: Self = Self {
        legacy: false,
        draft: true,
        per_window: false,
    };
    /// No counters (a 429 still gets `Retry-After`).
    pub const NONE: Self = Self {
        legacy: false,
        draft: false,
        per_window: false,
    };

    /// The same style, with or without the per-window headers (one
    /// `X-RateLimit-Limit-<quota>`, `-Remaining-<quota>` and `-Reset-<quota>` per quota).
    /// A quota whose name is not a valid header-name suffix (letters, digits, `-`, `_`,
    /// `.`) gets none.
    #[must_use]
    pub const fn with_per_window(mut self, per_window: bool) -> Self {
        self.per_window = per_window;
        self
    }
}

impl Default for HeaderStyle {
    fn default() -> Self {
        Self::BOTH
    }
}

/// Whole seconds, rounded up (`1.2 s` → `2`, `0 s` → `0`).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `Retry-After` value for a denial (seconds, rounded up), `None` when admitted or when
/// the request can never pass.
pub fn retry_after(decision: &Decision) -> Option<HeaderValue> {
    decision
        .retry_after()
        .map(|d| HeaderValue::from(ceil_secs(d)))
}

/// `RateLimit-Policy`: one item per quota, `"NAME";q=LIMIT;w=WINDOW_SECONDS`.
pub fn ratelimit_policy(decision: &Decision, policy: &Policy) -> Option<HeaderValue> {
    if decision.is_empty() {
        return None;
    }
    let items: Vec<String> = decision
        .named(policy)
        .map(|(named, _)| {
            format!(
                "{};q={};w={}",
                sf_string(&named.name),
                named.quota.limit(),
                ceil_secs(named.quota.period())
            )
        })
        .collect();
    HeaderValue::from_str(&items.join(", ")).ok()
}

/// `RateLimit`: one item per quota, `"NAME";r=REMAINING;t=RESET_SECONDS`.
pub fn ratelimit(decision: &Decision, policy: &Policy) -> Option<HeaderValue> {
    if decision.is_empty() {
        return None;
    }
    let items: Vec<String> = decision
        .named(policy)
        .map(|(named, q)| {
            format!(
                "{};r={};t={}",
                sf_string(&named.name),
                q.remaining,
                ceil_secs(q.reset)
            )
        })
        .collect();
    HeaderValue::from_str(&items.join(", ")).ok()
}

/// Write the headers for `decision`, made under `policy`, into `headers` (replacing
/// existing ones of the same names). `Retry-After` is written on every denial that can pass
/// later.
pub fn apply(decision: &Decision, policy: &Policy, headers: &mut HeaderMap, style: HeaderStyle) {
    if style.legacy
        && let Some((i, q)) = decision.most_restrictive()
        && let Some(named) = policy.quotas().get(i)
    {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(named.quota.limit()));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(q.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(q.reset)));
    }
    if style.draft {
        if let Some(v) = ratelimit_policy(decision, policy) {
            headers.insert(RATELIMIT_POLICY, v);
        }
        if let Some(v) = ratelimit(decision, policy) {
            headers.insert(RATELIMIT, v);
        }
    }
    if style.per_window {
        apply_per_window(decision, policy, headers);
    }
    if let Some(v) = retry_after(decision) {
        headers.insert(http::header::RETRY_AFTER, v);
    }
}

/// The per-window headers: `X-RateLimit-Limit-<quota>`, `-Remaining-<quota>`,
/// `-Reset-<quota>` for each quota whose name makes a valid header name (lower-cased;
/// others are skipped). Costs three small allocations per quota.
fn apply_per_window(decision: &Decision, policy: &Policy, headers: &mut HeaderMap) {
    for (named, q) in decision.named(policy) {
        let name = &*named.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            continue;
        }
        let suffix = name.to_ascii_lowercase();
        let values = [
            ("limit", named.quota.limit()),
            ("remaining", q.remaining),
            ("reset", ceil_secs(q.reset)),
        ];
        for (field, value) in values {
            if let Ok(header) =
                HeaderName::from_bytes(format!("x-ratelimit-{field}-{suffix}").as_bytes())
            {
                headers.insert(header, HeaderValue::from(value));
            }
        }
    }
}

/// A structured-field string: printable ASCII, `"` and `\` escaped, anything else as `?`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_micros(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn sf_strings_are_escaped() {
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(sf_string("é\n"), r#""??""#);
    }
}
