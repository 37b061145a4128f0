//! Per-request rules on top of a [`RateLimiter`]: which key, which tier, which policy and
//! what cost, with exemptions, runtime-replaceable rules and shadow mode.
//!
//! ```
//! use palisade_ratelimit::rules::{ClientIp, Key, Route, Rules, RequestLimiter, RequestParts, Tier, TierResolver};
//! use palisade_ratelimit::{Algorithm, MemoryStore, Policy, Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_ratelimit::Result<()> {
//! let free_ai = Policy::builder("free-ai")
//!     .quota("per_minute", Quota::per_minute(10))
//!     .quota("per_hour", Quota::per_hour(60))
//!     .build()?;
//! let premium_ai = Policy::builder("premium-ai")
//!     .quota("per_minute", Quota::per_minute(50))
//!     .quota("per_hour", Quota::per_hour(300))
//!     .build()?;
//! let rules = Rules::builder()
//!     .exempt("/health")?
//!     .route(
//!         Route::new("/ai/**")?
//!             .cost(5)
//!             .tier("free", free_ai.clone())
//!             .tier("premium", premium_ai)
//!             .unlimited_tier("admin"),
//!     )
//!     .key(Key::first_of([Key::user_id(), Key::client_ip(ClientIp::new())]))
//!     .tiers(TierResolver::extension(), "free") // unlisted tiers are limited as `free`
//!     .build()?;
//! let limiter = RequestLimiter::new(RateLimiter::new(MemoryStore::new()), rules);
//!
//! let mut req = http::Request::get("/ai/chat").body(()).unwrap();
//! req.extensions_mut().insert(Tier::from("free"));
//! req.extensions_mut().insert(palisade_ratelimit::rules::UserId::from("42"));
//! let outcome = limiter.check(&RequestParts::from_request(&req)).await;
//! let decision = outcome.decision().unwrap();
//! assert!(decision.allowed);
//! assert_eq!(decision.quota(0).unwrap().remaining, 5); // 10 per minute, cost 5
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use http::{Extensions, HeaderMap, Method, Uri};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::limiter::RateLimiter;
use crate::quota::Policy;

/// A borrowed view of an HTTP request: what rules may look at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestParts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI (only its path is matched).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (where authentication middleware leaves [`UserId`] and [`Tier`]).
    pub extensions: &'a Extensions,
}

impl<'a> RequestParts<'a> {
    /// A view of the parts of a request, for servers that do not hold an `http::Request`.
    pub fn new(
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
    ) -> Self {
        Self {
            method,
            uri,
            headers,
            extensions,
        }
    }

    /// View a request.
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// The request path.
    pub fn path(&self) -> &'a str {
        self.uri.path()
    }
}

/// The authenticated user, put into request extensions by authentication middleware.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(clippy::exhaustive_structs, reason = "a newtype, complete by nature")]
pub struct UserId(pub String);

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The caller's tier (`free`, `premium`, …), put into request extensions by authentication
/// middleware and read by [`TierResolver::extension`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(clippy::exhaustive_structs, reason = "a newtype, complete by nature")]
pub struct Tier(pub String);

impl From<&str> for Tier {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The peer's address, for servers that put it into extensions under this type.
/// [`ClientIp`] also reads a plain [`SocketAddr`] extension; for axum's
/// `ConnectInfo<SocketAddr>` use [`ClientIp::peer_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::exhaustive_structs, reason = "a newtype, complete by nature")]
pub struct PeerAddr(pub IpAddr);

type KeyFn = dyn Fn(&RequestParts<'_>) -> Option<String> + Send + Sync;

/// Where the rate-limit key of a request comes from. Keys are prefixed by their kind
/// (`user:`, `ip:`, `hdr:`, …) so that a user called `1.2.3.4` never shares a counter with
/// that IP address.
#[derive(Clone)]
pub struct Key {
    name: &'static str,
    f: Arc<KeyFn>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Key").field(&self.name).finish()
    }
}

impl Key {
    /// One counter for everybody: `global`.
    pub fn global() -> Self {
        Self::custom_named("global", |_| Some(String::from("global")))
    }

    /// The [`UserId`] extension: `user:ID`.
    pub fn user_id() -> Self {
        Self::custom_named("user_id", |r| {
            r.extensions
                .get::<UserId>()
                .map(|u| format!("user:{}", u.0))
        })
    }

    /// A header's value, such as an API key, as `hdr:NAME:DIGEST`: the first 128 bits of
    /// HMAC-SHA-256 of the value under `secret`, in hex. The credential itself never
    /// reaches a stored key name (a Redis key anyone with `KEYS` access reads), a log line
    /// or the memory store, and a value of any length takes 32 bytes. Every instance that
    /// shares a store must use the same secret; an absent header gives no key.
    pub fn header(name: http::HeaderName, secret: &KeySecret) -> Self {
        let secret = secret.clone();
        Self::custom_named("header", move |r| {
            let value = r.headers.get(&name)?.as_bytes();
            Some(format!("hdr:{}:{}", name.as_str(), secret.digest(value)))
        })
    }

    /// The client's IP address resolved by `ip`: `ip:ADDRESS` for IPv4, and for IPv6 the
    /// network of [`ClientIp::ipv6_prefix`] (default /64: what one host or home network
    /// gets, so rotating addresses inside it shares one budget), `ip:2001:db8:1:2::/64`.
    pub fn client_ip(ip: ClientIp) -> Self {
        Self::custom_named("client_ip", move |r| {
            ip.resolve_request(r).map(|a| match ip.group(a) {
                net if net.prefix_len() == net.max_prefix_len() => format!("ip:{a}"),
                net => format!("ip:{net}"),
            })
        })
    }

    /// The first extractor that gives a key (for example the user id, else the IP).
    pub fn first_of(keys: impl IntoIterator<Item = Key>) -> Self {
        let keys: Vec<Key> = keys.into_iter().collect();
        Self::custom_named("first_of", move |r| keys.iter().find_map(|k| k.extract(r)))
    }

    /// Any function of the request.
    pub fn custom(f: impl Fn(&RequestParts<'_>) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::custom_named("custom", f)
    }

    fn custom_named(
        name: &'static str,
        f: impl Fn(&RequestParts<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            f: Arc::new(f),
        }
    }

    /// The key for `req`, if this extractor finds one. A key longer than [`MAX_KEY_LEN`]
    /// bytes is replaced by `sha256:` and its SHA-256 in hex (71 bytes), so a store bounded
    /// in keys is bounded in bytes too, whatever a client sends.
    pub fn extract(&self, req: &RequestParts<'_>) -> Option<String> {
        (self.f)(req).map(|key| {
            if key.len() <= MAX_KEY_LEN {
                key
            } else {
                let mut out = String::from("sha256:");
                push_hex(&mut out, &Sha256::digest(key.as_bytes()));
                out
            }
        })
    }
}

/// The longest key [`Key::extract`] returns as it is; longer ones are replaced by a digest.
pub const MAX_KEY_LEN: usize = 128;

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// The secret [`Key::header`] hashes credentials with, so stored key names reveal nothing
/// and cannot be computed by whoever reads them. Never printed (`Debug` shows
/// `KeySecret(..)`).
#[derive(Clone)]
pub struct KeySecret(Arc<[u8]>);

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

impl KeySecret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A secret from configuration (the same on every instance sharing a store).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when shorter than [`MIN_LEN`](Self::MIN_LEN) bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_LEN {
            return Err(Error::InvalidConfig(format!(
                "a key secret needs at least {} bytes",
                Self::MIN_LEN
            )));
        }
        Ok(Self(Arc::from(secret)))
    }

    /// 32 random bytes from the operating system: for a single instance (the memory store);
    /// instances sharing Redis need one secret from configuration ([`new`](Self::new)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the operating system gives no randomness.
    pub fn random() -> Result<Self> {
        let mut bytes = [0_u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::InvalidConfig(format!("no randomness for a key secret: {e}")))?;
        Self::new(bytes)
    }

    fn digest(&self, value: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(value);
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &mac.finalize().into_bytes()[..16]);
        out
    }
}

/// Which forwarding header a [`ClientIp`] reads behind trusted proxies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The IPv6 prefix [`ClientIp`] groups clients by unless told otherwise.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

type PeerFn = dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync;

/// Resolves the client's IP address without trusting what the client can forge.
///
/// The TCP peer is the client unless it is one of the trusted proxies (CIDRs). Behind trusted
/// proxies, the forwarding header is read **from the right**: each trusted proxy appended the
/// address it saw, so the first address from the right that is not a trusted proxy is the
/// client. Anything further left was written by the client and is ignored. Each element is
/// read on its own raw bytes (a byte that is not visible ASCII spoils that element only);
/// an unreadable element, or a `Forwarded` element without `for=`, stops the walk at the
/// last trusted hop.
///
/// ```
/// use palisade_ratelimit::rules::ClientIp;
/// use std::net::IpAddr;
///
/// let ip = ClientIp::new().trust(["10.0.0.0/8"])?;
/// let mut h = http::HeaderMap::new();
/// h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap());
/// let peer: IpAddr = "10.0.0.1".parse().unwrap();
/// // 6.6.6.6 was written by the client itself; 203.0.113.9 is who reached our proxies.
/// assert_eq!(ip.resolve(Some(peer), &h), Some("203.0.113.9".parse().unwrap()));
/// # Ok::<(), palisade_ratelimit::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
    peer: Arc<PeerFn>,
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIp")
            .field("trusted", &self.trusted)
            .field("header", &self.header)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientIp {
    /// No trusted proxy: the TCP peer is the client, forwarding headers are ignored. The
    /// peer is read from a [`PeerAddr`] or [`SocketAddr`] request extension.
    pub fn new() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::default(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            peer: Arc::new(|ext: &Extensions| {
                ext.get::<PeerAddr>()
                    .map(|p| p.0)
                    .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
            }),
        }
    }

    /// Trust these proxies (CIDRs such as `10.0.0.0/8` or single addresses).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an entry that is neither a CIDR nor an address.
    pub fn trust<S: AsRef<str>>(mut self, cidrs: impl IntoIterator<Item = S>) -> Result<Self> {
        for c in cidrs {
            let c = c.as_ref().trim();
            let net = c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| Error::InvalidConfig(format!("`{c}` is not a CIDR or IP address")))?;
            self.trusted.push(net);
        }
        Ok(self)
    }

    /// Group IPv6 clients by their first `len` bits (default [`DEFAULT_IPV6_PREFIX`], 64):
    /// a single host usually holds a whole /64 and may rotate through it freely, so
    /// limiting per /128 limits nobody. 128 keys each address apart; 48 or 56 group a whole
    /// site. IPv4 addresses are always keyed whole.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless `1 <= len <= 128`.
    pub fn ipv6_prefix(mut self, len: u8) -> Result<Self> {
        if !(1..=128).contains(&len) {
            return Err(Error::InvalidConfig(format!(
                "IPv6 prefix /{len} is not between /1 and /128"
            )));
        }
        self.ipv6_prefix = len;
        Ok(self)
    }

    /// The network a client address is limited as: the address itself for IPv4, its
    /// [`ipv6_prefix`](Self::ipv6_prefix) network for IPv6.
    pub fn group(&self, ip: IpAddr) -> IpNet {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => IpNet::from(v4),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.ipv6_prefix).map_or_else(
                |_| IpNet::from(IpAddr::V6(v6)),
                |net| IpNet::V6(net.trunc()),
            ),
        }
    }

    /// Read `Forwarded` instead of `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// How to find the TCP peer in request extensions, e.g. for axum:
    /// `.peer_from(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))`.
    #[must_use]
    pub fn peer_from(
        mut self,
        f: impl Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.peer = Arc::new(f);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request (see the type's docs).
    pub fn resolve_request(&self, req: &RequestParts<'_>) -> Option<IpAddr> {
        self.resolve((self.peer)(req.extensions), req.headers)
    }

    /// The client address given the TCP peer and the request headers.
    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => xff_hops(headers),
            ForwardedHeader::Forwarded => forwarded_hops(headers),
        };
        let mut last = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if !self.is_trusted(*ip) => return Some(*ip),
                Some(ip) => last = *ip,
                None => return Some(last),
            }
        }
        Some(last)
    }
}

/// One hop's address: a bare address, `address:port`, `[v6]` or `[v6]:port`, optionally
/// quoted; `None` for anything else (including bytes that are not visible ASCII).
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    // "[2001:db8::1]" without a port.
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Splits `value` at each `sep` outside a quoted string (RFC 9110 lists, RFC 7239
/// quoted-strings with backslash escapes) and trims spaces and tabs; empty parts are
/// dropped. Works on the raw bytes, so a byte that is not visible ASCII spoils only the part
/// it is in.
fn split_outside_quotes(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    value
        .split(move |&b| {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                return true;
            }
            false
        })
        .map(<[u8]>::trim_ascii)
        .filter(|part| !part.is_empty())
}

fn xff_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| split_outside_quotes(value.as_bytes(), b','))
        .map(parse_hop)
        .collect()
}

/// The `for=` of each RFC 7239 element; `None` for an element without one (a proxy that did
/// not say whom it heard from: the walk ends there) or with an unreadable one.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .flat_map(|value| split_outside_quotes(value.as_bytes(), b','))
        .map(|element| {
            split_outside_quotes(element, b';').find_map(|pair| {
                let eq = pair.iter().position(|&b| b == b'=')?;
                let (k, v) = pair.split_at(eq);
                k.trim_ascii()
                    .eq_ignore_ascii_case(b"for")
                    .then(|| parse_hop(&v[1..]))
            })?
        })
        .collect()
}

type TierFn = dyn Fn(&RequestParts<'_>) -> Option<String> + Send + Sync;

/// Finds the caller's tier for a request.
#[derive(Clone)]
pub struct TierResolver {
    f: Arc<TierFn>,
}

impl fmt::Debug for TierResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TierResolver")
    }
}

impl TierResolver {
    /// The [`Tier`] request extension (set by your authentication middleware).
    pub fn extension() -> Self {
        Self::custom(|r| r.extensions.get::<Tier>().map(|t| t.0.clone()))
    }

    /// Any function of the request (for example a lookup of the API key's plan).
    pub fn custom(f: impl Fn(&RequestParts<'_>) -> Option<String> + Send + Sync + 'static) -> Self {
        Self { f: Arc::new(f) }
    }

    /// The tier of `req`, if known.
    pub fn resolve(&self, req: &RequestParts<'_>) -> Option<String> {
        (self.f)(req)
    }
}

/// A path pattern: literal segments, `*` (or `:name`, `{name}`) for exactly one segment, and
/// a final `**` for any rest (including nothing).
///
/// # How a path is compared with what the router sees
/// Routers and the proxies in front of them read paths differently: some decode
/// percent-escapes, merge doubled slashes, resolve `.` and `..`, or ignore case, and axum's
/// router does none of it. A rate-limit rule must hold however the request is routed, so
/// every ambiguity resolves toward limiting:
/// * a **route** ([`matches`](Self::matches)) applies when the path matches under *any* of
///   these readings: as written (empty segments ignored), and canonical (each segment
///   percent-decoded, `%2F` staying inside its segment; empty and `.` segments dropped, `..`
///   removing the segment before it; ASCII case ignored). So `/%61i//./chat`, `/x/../ai/chat`
///   and `/AI/chat` all meet the rule of `/ai/chat`;
/// * an **exemption** ([`matches_exactly`](Self::matches_exactly)) applies only when the
///   path matches as written, segment by segment (a trailing or doubled slash is a segment
///   of its own, case and escapes count), *and* canonically: `/health/`, `/Health`,
///   `/%68ealth` and `/docs/../ai/chat` are not exempt by `/health` or `/docs/**`.
///
/// At worst a request the router sends elsewhere is counted under a stricter rule; no
/// spelling reaches a limited handler uncounted (tests: `no_spelling_of_a_path_reaches_a_route_without_its_rule`).
///
/// ```
/// use palisade_ratelimit::rules::PathPattern;
/// let p = PathPattern::parse("/v1/*/chat/**")?;
/// assert!(p.matches("/v1/gpt/chat"));
/// assert!(p.matches("/v1/gpt/chat/stream/x"));
/// assert!(p.matches("/v1/gpt//%63hat"));
/// assert!(!p.matches("/v1/chat"));
/// let health = PathPattern::parse("/health")?;
/// assert!(health.matches_exactly("/health") && !health.matches_exactly("/health/"));
/// # Ok::<(), palisade_ratelimit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
    rest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    /// As written, and percent-decoded.
    Literal(String, Vec<u8>),
    Any,
}

/// How a path's segments are compared with a pattern's literals.
#[derive(Clone, Copy)]
enum Reading {
    /// As written, byte for byte.
    Written,
    /// Percent-decoded, ASCII case ignored.
    Canonical,
    /// Percent-decoded, case kept.
    Decoded,
}

impl PathPattern {
    /// Parse a pattern.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it does not start with `/` or `**` is not last.
    pub fn parse(pattern: &str) -> Result<Self> {
        if !pattern.starts_with('/') {
            return Err(Error::InvalidConfig(format!(
                "path pattern `{pattern}` must start with `/`"
            )));
        }
        let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, p) in parts.iter().enumerate() {
            if *p == "**" {
                if i + 1 != parts.len() {
                    return Err(Error::InvalidConfig(format!(
                        "`**` must be last in `{pattern}`"
                    )));
                }
                rest = true;
            } else if *p == "*" || p.starts_with(':') || (p.starts_with('{') && p.ends_with('}')) {
                segments.push(Segment::Any);
            } else {
                segments.push(Segment::Literal(
                    (*p).to_owned(),
                    percent_decode(p.as_bytes()),
                ));
            }
        }
        Ok(Self {
            raw: pattern.to_owned(),
            segments,
            rest,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether a route with this pattern applies to `path`: under any reading (see the
    /// type's docs).
    pub fn matches(&self, path: &str) -> bool {
        let written = path.split('/').filter(|s| !s.is_empty()).map(str::as_bytes);
        self.matches_segments(written, Reading::Written)
            || self.matches_segments(
                canonical_segments(path).iter().map(Vec::as_slice),
                Reading::Canonical,
            )
    }

    /// Whether an exemption with this pattern applies to `path`: as written, segment by
    /// segment, and canonically (see the type's docs).
    pub fn matches_exactly(&self, path: &str) -> bool {
        let Some(after_root) = path.strip_prefix('/') else {
            return false;
        };
        let written = after_root.split('/').map(str::as_bytes);
        self.matches_segments(written, Reading::Written)
            && self.matches_segments(
                canonical_segments(path).iter().map(Vec::as_slice),
                Reading::Decoded,
            )
    }

    fn matches_segments<'p>(
        &self,
        mut parts: impl Iterator<Item = &'p [u8]>,
        reading: Reading,
    ) -> bool {
        for seg in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let equal = match (seg, reading) {
                (Segment::Any, _) => !part.is_empty(),
                (Segment::Literal(l, _), Reading::Written) => l.as_bytes() == part,
                (Segment::Literal(_, d), Reading::Decoded) => d.as_slice() == part,
                (Segment::Literal(_, d), Reading::Canonical) => d.eq_ignore_ascii_case(part),
            };
            if !equal {
                return false;
            }
        }
        self.rest || parts.next().is_none()
    }
}

/// `%XX` decoded (a `%` not followed by two hex digits stays as it is).
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// The path's segments percent-decoded, with empty and `.` segments dropped and `..`
/// removing the segment before it (RFC 3986 dot-segment removal, after decoding).
fn canonical_segments(path: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode(raw.as_bytes());
        match seg.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    out
}

/// The limit of one tier on one route.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// Not limited.
    Unlimited,
    /// Limited by this policy.
    Policy(Policy),
}

/// A rule for the requests whose path matches a pattern.
#[derive(Debug, Clone)]
pub struct Route {
    pattern: PathPattern,
    methods: Vec<Method>,
    cost: u64,
    default: Option<Limit>,
    tiers: Vec<(Arc<str>, Limit)>,
    key: Option<Key>,
    shadow: Option<bool>,
}

impl Route {
    /// A route for `pattern` (see [`PathPattern`]), cost 1, every method.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad pattern.
    pub fn new(pattern: &str) -> Result<Self> {
        Ok(Self {
            pattern: PathPattern::parse(pattern)?,
            methods: Vec::new(),
            cost: 1,
            default: None,
            tiers: Vec::new(),
            key: None,
            shadow: None,
        })
    }

    /// Only these methods (default: all).
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// What one request costs (default 1): expensive routes weigh more.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// The policy for tiers without their own.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.default = Some(Limit::Policy(policy));
        self
    }

    /// Leave tiers without their own limit unlimited on this route. Without it (or
    /// [`policy`](Self::policy)), a tier the route does not list is limited as the rules'
    /// default tier, and [`RulesBuilder::build`] refuses a route that lists no limit for
    /// the default tier either.
    #[must_use]
    pub fn unlimited(mut self) -> Self {
        self.default = Some(Limit::Unlimited);
        self
    }

    /// The policy of one tier.
    #[must_use]
    pub fn tier(mut self, tier: impl Into<String>, policy: Policy) -> Self {
        self.tiers
            .push((Arc::from(tier.into()), Limit::Policy(policy)));
        self
    }

    /// A tier that this route does not limit.
    #[must_use]
    pub fn unlimited_tier(mut self, tier: impl Into<String>) -> Self {
        self.tiers.push((Arc::from(tier.into()), Limit::Unlimited));
        self
    }

    /// Another key extractor for this route.
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Shadow mode for this route only (decide and report, never block).
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = Some(shadow);
        self
    }

    fn matches(&self, req: &RequestParts<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && self.pattern.matches(req.path())
    }

    /// The limit of `tier` and the tier it is counted under: the tier's own limit, else the
    /// route's [`policy`](Self::policy) (or [`unlimited`](Self::unlimited)), else the default
    /// tier's limit; both of the latter are counted under `default_tier`, so a metric label
    /// only ever names a configured tier. `None` only for a route that
    /// [`RulesBuilder::build`] refuses.
    fn limit_for<'r>(
        &'r self,
        tier: &str,
        default_tier: &'r Arc<str>,
    ) -> Option<(&'r Arc<str>, &'r Limit)> {
        let find = |name: &str| {
            self.tiers
                .iter()
                .find(|(t, _)| &**t == name)
                .map(|(t, l)| (t, l))
        };
        find(tier)
            .or_else(|| self.default.as_ref().map(|l| (default_tier, l)))
            .or_else(|| find(default_tier))
    }
}

/// The whole rule set: exemptions, routes (first match wins), the key extractor, the tier
/// resolver and shadow mode. Immutable; replace it at runtime through
/// [`RequestLimiter::replace_rules`].
#[derive(Debug, Clone)]
pub struct Rules {
    exempt: Vec<PathPattern>,
    routes: Vec<Route>,
    key: Key,
    tiers: Option<TierResolver>,
    default_tier: Arc<str>,
    shadow: bool,
}

impl Rules {
    /// Start a rule set (key: [`Key::global`], tier: `default`, enforcing).
    pub fn builder() -> RulesBuilder {
        RulesBuilder {
            rules: Rules {
                exempt: Vec::new(),
                routes: Vec::new(),
                key: Key::global(),
                tiers: None,
                default_tier: Arc::from("default"),
                shadow: false,
            },
        }
    }
}

/// Builds [`Rules`].
#[derive(Debug, Clone)]
pub struct RulesBuilder {
    rules: Rules,
}

impl RulesBuilder {
    /// Never limit requests whose path matches `pattern` (health checks, docs).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad pattern.
    pub fn exempt(mut self, pattern: &str) -> Result<Self> {
        self.rules.exempt.push(PathPattern::parse(pattern)?);
        Ok(self)
    }

    /// Add a route (routes are tried in the order added).
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.rules.routes.push(route);
        self
    }

    /// The key extractor for routes without their own.
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        self.rules.key = key;
        self
    }

    /// How to find the caller's tier, and the tier when it finds none.
    #[must_use]
    pub fn tiers(mut self, resolver: TierResolver, default_tier: impl Into<String>) -> Self {
        self.rules.tiers = Some(resolver);
        self.rules.default_tier = Arc::from(default_tier.into());
        self
    }

    /// Shadow mode for every route: decide, count and report, but never block.
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.rules.shadow = shadow;
        self
    }

    /// The rule set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a route that would leave a tier without any limit: one
    /// with neither a [`Route::policy`], nor [`Route::unlimited`], nor a limit for the
    /// default tier (a tier the route does not list is limited as the default tier).
    pub fn build(self) -> Result<Rules> {
        let default_tier = &self.rules.default_tier;
        for route in &self.rules.routes {
            if route.limit_for(default_tier, default_tier).is_none() {
                return Err(Error::InvalidConfig(format!(
                    "route `{}` has no limit for the default tier `{default_tier}`: a tier it \
                     does not list would be unlimited; add `.policy(..)`, \
                     `.tier(\"{default_tier}\", ..)` or `.unlimited()`",
                    route.pattern.as_str()
                )));
            }
        }
        Ok(self.rules)
    }
}

/// What the rules said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The path is exempt: nothing was counted.
    Exempt,
    /// No route matched: nothing was counted.
    NoRule,
    /// The caller's tier is unlimited on this route.
    Unlimited {
        /// The tier.
        tier: String,
    },
    /// The request was counted.
    Limited {
        /// The decision.
        decision: Decision,
        /// The policy that decided (its name and quotas label the decision's figures, as
        /// the [`headers`](crate::headers) need them).
        policy: Policy,
        /// The configured tier it was counted under: the caller's own, or the rules'
        /// default tier for a tier the route does not list.
        tier: String,
        /// Whether the route is in shadow mode (a denial does not block).
        shadow: bool,
    },
}

impl Outcome {
    /// Whether the request must be refused (a denial outside shadow mode).
    pub fn blocks(&self) -> bool {
        matches!(self, Self::Limited { decision, shadow: false, .. } if !decision.allowed)
    }

    /// The decision, when the request was counted.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Self::Limited { decision, .. } => Some(decision),
            _ => None,
        }
    }

    /// The policy that decided, when the request was counted.
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            Self::Limited { policy, .. } => Some(policy),
            _ => None,
        }
    }
}

/// The key under which requests without a key (no user, no readable address) are counted.
pub const ANONYMOUS_KEY: &str = "anonymous";

/// A [`RateLimiter`] driven by [`Rules`] that can be replaced at runtime without locks
/// (`arc-swap`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestLimiter {
    limiter: RateLimiter,
    rules: Arc<ArcSwap<Rules>>,
}

impl RequestLimiter {
    /// Apply `rules` with `limiter`.
    pub fn new(limiter: RateLimiter, rules: Rules) -> Self {
        Self {
            limiter,
            rules: Arc::new(ArcSwap::from_pointee(rules)),
        }
    }

    /// The underlying limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Replace the rules (quotas, routes, tiers, shadow mode) for every later request.
    /// Counters are kept per policy name: a policy that keeps its name keeps its counts.
    pub fn replace_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Decide one request: exemptions first, then the first matching route, the caller's
    /// tier, its policy, the key and the route's cost. One store call when counted.
    pub async fn check(&self, req: &RequestParts<'_>) -> Outcome {
        let rules = self.rules.load_full();
        let path = req.path();
        if rules.exempt.iter().any(|p| p.matches_exactly(path)) {
            return Outcome::Exempt;
        }
        let Some(route) = rules.routes.iter().find(|r| r.matches(req)) else {
            return Outcome::NoRule;
        };
        let tier = rules
            .tiers
            .as_ref()
            .and_then(|t| t.resolve(req))
            .unwrap_or_else(|| rules.default_tier.to_string());
        let (counted_as, policy) = match route.limit_for(&tier, &rules.default_tier) {
            None | Some((_, Limit::Unlimited)) => return Outcome::Unlimited { tier },
            Some((t, Limit::Policy(p))) => (t, p),
        };
        let tier = counted_as;
        let key = route
            .key
            .as_ref()
            .unwrap_or(&rules.key)
            .extract(req)
            .unwrap_or_else(|| String::from(ANONYMOUS_KEY));
        let shadow = route.shadow.unwrap_or(rules.shadow);
        let decision = self
            .limiter
            .acquire_labeled(&key, policy, route.cost, tier, shadow)
            .await;
        if shadow && !decision.allowed {
            // Never the key: it may be derived from a credential or name a person.
            tracing::info!(
                policy = policy.name(),
                tier = &**tier,
                "shadow mode: request would be rate limited"
            );
        }
        Outcome::Limited {
            decision,
            policy: policy.clone(),
            tier: tier.to_string(),
            shadow,
        }
    }
}
