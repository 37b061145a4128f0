//! Short-lived signed tokens for plugins and services: compact HS256 JSON Web Tokens
//! (RFC 7519) verified without any store lookup.
//!
//! A token is `base64url(header).base64url(claims).base64url(HMAC-SHA256)`: URL-safe, no
//! padding, readable by any JWT library given the signing key. The header is always
//! `{"alg":"HS256","typ":"JWT","kid":"<version>"}`; verification accepts no other
//! algorithm (no `none`, no algorithm confusion). `kid` names the [`Peppers`] version that
//! signed it, so signing keys rotate like key peppers do: new tokens use the current
//! version, tokens signed under an older known version verify until they expire.
//!
//! ```
//! use std::time::Duration;
//! use palisade_apikey::{Pepper, Peppers, Tokens};
//!
//! let tokens = Tokens::new(Peppers::new(Pepper::new(1, [42u8; 32])?), "plugin-server")?
//!     .with_lifetime(Duration::from_secs(24 * 3600));
//! let token = tokens.issue("plugin:weather", ["weather:read", "net:fetch"])?;
//! let claims = tokens.verify(&token).expect("valid");
//! assert_eq!(claims.sub, "plugin:weather");
//! assert!(claims.has_capability("net:fetch"));
//! assert!(tokens.verify(&format!("{token}x")).is_err());
//! # Ok::<(), palisade_apikey::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::pepper::{Peppers, hashes_equal};

/// Longest token accepted: anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Default token lifetime (the plugin server's: 24 hours).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default clock-skew leeway.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// A token's claims (RFC 7519 names; times are seconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject (the plugin, service or key owner the token speaks for).
    pub sub: String,
    /// Audience, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Capabilities granted (scope syntax, wildcards allowed).
    #[serde(default)]
    pub caps: Vec<String>,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expiry.
    pub exp: u64,
    /// Token id, unique per token (for audit and deny-lists).
    #[serde(default)]
    pub jti: String,
}

impl Claims {
    /// Whether the token grants `capability` (wildcards as for [`Scopes`](crate::Scopes)).
    pub fn has_capability(&self, capability: &str) -> bool {
        crate::Scopes::new(self.caps.iter().map(String::as_str)).is_ok_and(|s| s.grants(capability))
    }
}

/// Why a token was refused. A value, not an [`Error`]: the caller presented a bad token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenDenial {
    /// Not three base64url parts of JSON, too long, or another algorithm than HS256.
    Malformed,
    /// Signed under a version this service does not know.
    UnknownKeyVersion,
    /// The signature does not match.
    BadSignature,
    /// Past `exp` (plus leeway).
    Expired,
    /// Before `nbf`/`iat` (minus leeway).
    NotYetValid,
    /// Another issuer or audience.
    WrongIssuer,
}

impl TokenDenial {
    /// A short name for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKeyVersion => "unknown_key_version",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
        }
    }
}

impl fmt::Display for TokenDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Issues and verifies tokens under one issuer name and a set of signing keys.
///
/// Cost: issuing is two JSON encodes and one HMAC; verifying is two base64 decodes, two
/// small JSON parses and one HMAC (about a microsecond), with no I/O.
#[derive(Clone)]
pub struct Tokens {
    keys: Arc<Peppers>,
    issuer: String,
    audience: Option<String>,
    lifetime: Duration,
    leeway: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .field("leeway", &self.leeway)
            .field("key_versions", &self.keys.versions().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `keys` (use other secrets than the key peppers) for `issuer`,
    /// lifetime [`DEFAULT_TOKEN_LIFETIME`], leeway [`DEFAULT_LEEWAY`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty issuer.
    pub fn new(keys: Peppers, issuer: impl Into<String>) -> Result<Self> {
        let issuer = issuer.into();
        if issuer.is_empty() {
            return Err(Error::InvalidConfig("a token issuer is needed".into()));
        }
        Ok(Self {
            keys: Arc::new(keys),
            issuer,
            audience: None,
            lifetime: DEFAULT_TOKEN_LIFETIME,
            leeway: DEFAULT_LEEWAY,
            clock: Arc::new(SystemClock),
        })
    }

    /// Lifetime of issued tokens.
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Clock-skew leeway on `exp`, `nbf` and `iat`.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Put `aud` into issued tokens and require it when verifying.
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The clock (a [`FakeClock`](crate::FakeClock) in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_micros() / 1_000_000
    }

    /// A token for `subject` granting `capabilities`, valid for the configured lifetime.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a capability that is not a valid scope, or when the OS
    /// random number generator fails.
    pub fn issue<I, S>(&self, subject: impl Into<String>, capabilities: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let caps: Vec<String> = capabilities.into_iter().map(Into::into).collect();
        crate::Scopes::new(caps.iter().map(String::as_str))?;
        let now = self.now_secs();
        let mut jti = [0u8; 16];
        crate::key::random_base62(&mut jti)?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.into(),
            aud: self.audience.clone(),
            caps,
            iat: now,
            nbf: None,
            exp: now.saturating_add(self.lifetime.as_secs()),
            jti: String::from_utf8_lossy(&jti).into_owned(),
        };
        self.sign(&claims)
    }

    /// Sign any claims (for callers that set their own `exp`, `nbf` or `aud`).
    ///
    /// # Errors
    /// Only if the claims cannot be encoded (never with this crate's types).
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let version = self.keys.current_version();
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
            kid: Some(version.to_string()),
        };
        let mut token = enc(&header)?;
        token.push('.');
        token.push_str(&enc(claims)?);
        let sig = self
            .keys
            .sign(version, &[token.as_bytes()])
            .ok_or_else(|| Error::InvalidConfig("no current signing key".into()))?;
        token.push('.');
        token.push_str(&B64.encode(sig));
        Ok(token)
    }

    /// Verify `token`: shape, algorithm, signature (constant time), issuer, audience,
    /// expiry and not-before with the leeway. No I/O.
    ///
    /// # Errors
    /// A [`TokenDenial`] saying why the token is refused.
    pub fn verify(&self, token: &str) -> std::result::Result<Claims, TokenDenial> {
        let outcome = self.verify_inner(token);
        let label = match &outcome {
            Ok(_) => "verified",
            Err(d) => d.as_str(),
        };
        metrics::counter!("palisade_apikey_token_verifications_total", "outcome" => label)
            .increment(1);
        outcome
    }

    fn verify_inner(&self, token: &str) -> std::result::Result<Claims, TokenDenial> {
        use TokenDenial as D;
        if token.len() > MAX_TOKEN_LEN {
            return Err(D::Malformed);
        }
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(D::Malformed);
        };
        if s.contains('.') {
            return Err(D::Malformed);
        }
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(D::Malformed)?;
        if header.alg != "HS256" {
            return Err(D::Malformed);
        }
        let version = match header.kid {
            Some(k) => k.parse::<u16>().map_err(|_| D::UnknownKeyVersion)?,
            None => self.keys.current_version(),
        };
        let sig = B64.decode(s).map_err(|_| D::Malformed)?;
        let signed = &token[..h.len() + 1 + c.len()];
        let expected = self
            .keys
            .sign(version, &[signed.as_bytes()])
            .ok_or(D::UnknownKeyVersion)?;
        if !hashes_equal(&sig, &expected) {
            return Err(D::BadSignature);
        }
        let claims: Claims = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(D::Malformed)?;
        if claims.iss != self.issuer {
            return Err(D::WrongIssuer);
        }
        if self.audience.is_some() && claims.aud != self.audience {
            return Err(D::WrongIssuer);
        }
        let now = self.now_secs();
        let leeway = self.leeway.as_secs();
        if now >= claims.exp.saturating_add(leeway) {
            return Err(D::Expired);
        }
        let start = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        if start > now.saturating_add(leeway) {
            return Err(D::NotYetValid);
        }
        Ok(claims)
    }
}

fn enc<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_vec(value)
        .map(|j| B64.encode(j))
        .map_err(|e| Error::InvalidConfig(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FakeClock, Pepper};
    use proptest::prelude::*;

    fn tokens(clock: &FakeClock) -> Tokens {
        Tokens::new(Peppers::new(Pepper::new(3, [1u8; 32]).unwrap()), "plugins")
            .unwrap()
            .with_lifetime(Duration::from_secs(3600))
            .with_leeway(Duration::from_secs(30))
            .with_clock(clock.clone())
    }

    #[test]
    fn lifetime_and_leeway() {
        let clock = FakeClock::new();
        let t = tokens(&clock);
        let tok = t.issue("svc", ["read:*"]).unwrap();
        assert!(
            tok.split('.')
                .all(|p| !p.is_empty() && !p.contains(['+', '/', '=']))
        );
        let c = t.verify(&tok).unwrap();
        assert_eq!(c.exp - c.iat, 3600);
        clock.advance(Duration::from_secs(3600 + 29));
        assert!(t.verify(&tok).is_ok(), "inside the leeway");
        clock.advance(Duration::from_secs(1));
        assert_eq!(t.verify(&tok), Err(TokenDenial::Expired));
        // A token from an instance whose clock runs 20 s ahead is accepted.
        let ahead = FakeClock::at_micros(clock.now_micros() + 20_000_000);
        let tok = tokens(&ahead).issue("svc", ["x"]).unwrap();
        assert!(t.verify(&tok).is_ok());
        let far = FakeClock::at_micros(clock.now_micros() + 120_000_000);
        let tok = tokens(&far).issue("svc", ["x"]).unwrap();
        assert_eq!(t.verify(&tok), Err(TokenDenial::NotYetValid));
    }

    #[test]
    fn tampering_other_keys_and_algorithms_are_refused() {
        let clock = FakeClock::new();
        let t = tokens(&clock);
        let tok = t.issue("svc", ["read:*"]).unwrap();
        let parts: Vec<&str> = tok.split('.').collect();
        let forged = B64.encode(
            br#"{"iss":"plugins","sub":"admin","caps":["*"],"iat":1700006400,"exp":9999999999}"#,
        );
        assert_eq!(
            t.verify(&format!("{}.{forged}.{}", parts[0], parts[2])),
            Err(TokenDenial::BadSignature)
        );
        let none = B64.encode(br#"{"alg":"none","kid":"3"}"#);
        assert_eq!(
            t.verify(&format!("{none}.{}.", parts[1])),
            Err(TokenDenial::Malformed)
        );
        let other = Tokens::new(Peppers::new(Pepper::new(3, [2u8; 32]).unwrap()), "plugins")
            .unwrap()
            .with_clock(clock.clone());
        assert_eq!(other.verify(&tok), Err(TokenDenial::BadSignature));
        let v4 = Tokens::new(Peppers::new(Pepper::new(4, [1u8; 32]).unwrap()), "plugins")
            .unwrap()
            .with_clock(clock.clone());
        assert_eq!(v4.verify(&tok), Err(TokenDenial::UnknownKeyVersion));
        let other_issuer = Tokens::new(Peppers::new(Pepper::new(3, [1u8; 32]).unwrap()), "x")
            .unwrap()
            .with_clock(clock);
        assert_eq!(other_issuer.verify(&tok), Err(TokenDenial::WrongIssuer));
    }

    #[test]
    fn a_rotated_signing_key_still_verifies_older_tokens() {
        let clock = FakeClock::new();
        let old = tokens(&clock);
        let tok = old.issue("svc", ["a"]).unwrap();
        let new = Tokens::new(
            Peppers::new(Pepper::new(4, [9u8; 32]).unwrap())
                .with_previous(Pepper::new(3, [1u8; 32]).unwrap())
                .unwrap(),
            "plugins",
        )
        .unwrap()
        .with_clock(clock);
        assert!(new.verify(&tok).is_ok());
        assert!(
            new.issue("svc", ["a"])
                .unwrap()
                .starts_with(&B64.encode(br#"{"alg":"HS256","typ":"JWT","kid":"4"}"#))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(s in any::<String>(), a in "[A-Za-z0-9_-]{0,40}", b in "[A-Za-z0-9_-]{0,80}") {
            let clock = FakeClock::new();
            let t = tokens(&clock);
            let _ = t.verify(&s);
            let _ = t.verify(&format!("{a}.{b}.{a}"));
        }
    }
}
