//! What the store keeps about a key: [`KeyRecord`], its [`Scopes`], [`Credits`] and the
//! pure rules that change it (revoke, rotate, charge credits, count uses) that every backend
//! runs: the memory store directly, Redis as Lua written line by line from these functions.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::clock::micros;
use crate::error::{Error, Result};
use crate::key::{Env, KeyId};

/// Longest scope, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes on one key.
pub const MAX_SCOPES: usize = 64;

/// The scopes granted to a key: names such as `read:invoices` and wildcard patterns
/// (`read:*` grants every scope that starts with `read:`; `*` grants everything).
///
/// A scope is 1 to 128 characters of `A-Z a-z 0-9 _ . : / -`; a pattern ends in `:*` (or is
/// `*`). Checking a scope against a key is a scan of at most 64 short strings.
///
/// ```
/// use palisade_apikey::Scopes;
/// let s = Scopes::new(["read:*", "invoices:write"])?;
/// assert!(s.grants("read:invoices"));
/// assert!(s.grants("read:users:emails"));
/// assert!(s.grants("invoices:write"));
/// assert!(!s.grants("invoices:delete"));
/// assert!(!s.grants("reader"));
/// # Ok::<(), palisade_apikey::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Scopes(Vec<String>);

fn scope_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
}

/// Whether `scope` is a valid scope name or pattern.
pub(crate) fn valid_scope(scope: &str) -> bool {
    let b = scope.as_bytes();
    if b.is_empty() || b.len() > MAX_SCOPE_LEN {
        return false;
    }
    if scope == "*" {
        return true;
    }
    let name = scope.strip_suffix(":*").unwrap_or(scope);
    !name.is_empty() && name.bytes().all(scope_char)
}

impl Scopes {
    /// Scopes, checked.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid scope or more than [`MAX_SCOPES`].
    pub fn new<I, S>(scopes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut v: Vec<String> = scopes.into_iter().map(Into::into).collect();
        if v.len() > MAX_SCOPES {
            return Err(Error::InvalidConfig(format!(
                "{} scopes; at most {MAX_SCOPES}",
                v.len()
            )));
        }
        if let Some(bad) = v.iter().find(|s| !valid_scope(s)) {
            return Err(Error::InvalidConfig(format!(
                "invalid scope {bad:?}: 1 to {MAX_SCOPE_LEN} characters of A-Z a-z 0-9 _ . : / -, optionally ending in :*"
            )));
        }
        v.sort();
        v.dedup();
        Ok(Self(v))
    }

    /// Whether these scopes grant `required` (an empty `required` is always granted).
    pub fn grants(&self, required: &str) -> bool {
        required.is_empty()
            || self.0.iter().any(|g| {
                g == required
                    || g == "*"
                    || g.strip_suffix('*').is_some_and(|stem| {
                        required.len() > stem.len() && required.starts_with(stem)
                    })
            })
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<String>> for Scopes {
    type Error = Error;
    fn try_from(v: Vec<String>) -> Result<Self> {
        Self::new(v)
    }
}

impl From<Scopes> for Vec<String> {
    fn from(s: Scopes) -> Self {
        s.0
    }
}

/// Credits refilled periodically: every `interval`, the balance is topped up to `amount`
/// (a balance above `amount` is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    /// The balance after a refill.
    pub amount: u64,
    /// Time between refills (`"1day"`, `"1h"`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// A key's credit balance: each verification that asks for it spends `cost` credits, and a
/// key with too few is denied ([`Denial::OutOfCredits`](crate::Denial::OutOfCredits)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credits {
    /// Credits left.
    pub remaining: u64,
    /// Periodic refill, if any.
    pub refill: Option<Refill>,
    /// When the balance was last refilled (microseconds since the Unix epoch).
    pub refilled_at: u64,
}

/// The result of charging credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreditOutcome {
    /// The key has no credit limit.
    Unlimited,
    /// Charged; `remaining` left.
    Charged {
        /// Credits left after the charge.
        remaining: u64,
        /// Whether this is the stored answer to an earlier request with the same
        /// idempotency key (nothing was charged this time).
        replayed: bool,
    },
    /// Not enough credits; nothing was charged.
    OutOfCredits {
        /// Credits left (fewer than the cost).
        remaining: u64,
    },
    /// The key is revoked or no longer usable; nothing was charged.
    NotActive,
    /// No such key.
    NotFound,
}

impl Credits {
    /// Apply any refills due at `now` (pure; the Lua `refill` function is this line by line).
    pub fn refill_at(&mut self, now: u64) {
        let Some(r) = self.refill else { return };
        let interval = micros(r.interval).max(1);
        if now >= self.refilled_at.saturating_add(interval) {
            let periods = (now - self.refilled_at) / interval;
            self.refilled_at = self
                .refilled_at
                .saturating_add(periods.saturating_mul(interval));
            self.remaining = self.remaining.max(r.amount);
        }
    }

    /// Charge `cost` at `now`: refill, then take `cost` if the balance covers it. A denial
    /// takes nothing.
    pub fn charge(&mut self, now: u64, cost: u64) -> CreditOutcome {
        self.refill_at(now);
        if self.remaining >= cost {
            self.remaining -= cost;
            CreditOutcome::Charged {
                remaining: self.remaining,
                replayed: false,
            }
        } else {
            CreditOutcome::OutOfCredits {
                remaining: self.remaining,
            }
        }
    }
}

/// A key's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked: refused for good.
    Revoked,
    /// Past its expiry (derived from `expires_at`, never stored).
    Expired,
    /// Replaced by a rotation: usable until its grace period ends, each use reported.
    Rotating,
}

impl KeyStatus {
    /// `active`, `revoked`, `expired` or `rotating`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Rotating => "rotating",
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "revoked" => Self::Revoked,
            "expired" => Self::Expired,
            "rotating" => Self::Rotating,
            _ => return None,
        })
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the store keeps about one key. The key's secret is not here: only its
/// HMAC-SHA256 under a server pepper, which this type never prints or serializes.
///
/// Times are microseconds since the Unix epoch on the [`ApiKeys`](crate::ApiKeys) clock.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Public key id.
    pub id: KeyId,
    /// The key's readable prefix.
    pub prefix: String,
    /// The key's environment.
    pub env: Env,
    /// Who the key belongs to (user, team, tenant id).
    pub owner: String,
    /// A human name ("CI deploys").
    pub name: String,
    /// Granted scopes.
    pub scopes: Scopes,
    /// Creation time.
    pub created_at: u64,
    /// Expiry, if any.
    pub expires_at: Option<u64>,
    /// Last successful verification (flushed in batches, so up to one flush interval old).
    pub last_used_at: Option<u64>,
    /// Successful verifications (flushed in batches).
    pub uses: u64,
    /// Stored state: active, revoked or rotating (see [`status_at`](Self::status_at) for
    /// the state at a given time, which also says expired).
    pub status: KeyStatus,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
    /// While rotating: the end of the grace period.
    pub grace_until: Option<u64>,
    /// The key that replaced this one.
    pub rotated_to: Option<KeyId>,
    /// The key this one replaced.
    pub rotated_from: Option<KeyId>,
    /// Free-form metadata (plan, customer id, …).
    pub metadata: BTreeMap<String, String>,
    /// The name of the rate-limit policy requests with this key run under.
    pub rate_limit_policy: Option<String>,
    /// If not empty, the only client networks the key is accepted from.
    pub allowed_ips: Vec<IpNet>,
    /// Credit balance, if the key is metered.
    pub credits: Option<Credits>,
    /// The pepper version the key's HMAC was computed under.
    pub hash_version: u16,
    #[serde(skip)]
    pub(crate) hash: [u8; 32],
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("env", &self.env)
            .field("status", &self.status)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("credits", &self.credits)
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// The state at `now`: `Expired` once past `expires_at` or, for a rotating key, past
    /// its grace period.
    pub fn status_at(&self, now: u64) -> KeyStatus {
        match self.status {
            KeyStatus::Revoked => KeyStatus::Revoked,
            _ if self.expires_at.is_some_and(|e| now >= e) => KeyStatus::Expired,
            KeyStatus::Rotating if self.grace_until.is_none_or(|g| now >= g) => KeyStatus::Expired,
            s => s,
        }
    }

    /// Whether `ip` may use this key (always, without an allowlist).
    pub fn ip_allowed(&self, ip: Option<IpAddr>) -> bool {
        self.allowed_ips.is_empty()
            || ip.is_some_and(|ip| self.allowed_ips.iter().any(|n| n.contains(&ip)))
    }

    /// Revoke at `now` (idempotent: a second revoke keeps the first time).
    pub fn revoke(&mut self, now: u64) {
        if self.status != KeyStatus::Revoked {
            self.status = KeyStatus::Revoked;
            self.revoked_at = Some(now);
            self.grace_until = None;
        }
    }

    /// Start rotating this key to `successor`, usable until `grace_until`.
    ///
    /// # Errors
    /// [`Error::InvalidState`] unless the key is active at `now`.
    pub fn rotate(&mut self, successor: KeyId, now: u64, grace_until: u64) -> Result<()> {
        match self.status_at(now) {
            KeyStatus::Active => {}
            other => return Err(Error::InvalidState(other.as_str())),
        }
        self.status = KeyStatus::Rotating;
        self.grace_until = Some(grace_until);
        self.rotated_to = Some(successor);
        Ok(())
    }

    /// Count `uses` more uses, the last at `last_used_at` (never moves it back).
    pub fn record_use(&mut self, uses: u64, last_used_at: u64) {
        self.uses = self.uses.saturating_add(uses);
        self.last_used_at = Some(
            self.last_used_at
                .map_or(last_used_at, |t| t.max(last_used_at)),
        );
    }

    /// Charge `cost` credits at `now` (see [`Credits::charge`]).
    pub fn charge(&mut self, now: u64, cost: u64) -> CreditOutcome {
        match self.status_at(now) {
            KeyStatus::Active | KeyStatus::Rotating => {}
            _ => return CreditOutcome::NotActive,
        }
        match &mut self.credits {
            None => CreditOutcome::Unlimited,
            Some(c) => c.charge(now, cost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scopes_validate_and_match_wildcards() {
        assert!(Scopes::new(["read:*", "admin:*", "a/b.c-d_e:f"]).is_ok());
        for bad in [
            "",
            "re ad",
            "read:*:x",
            "*read",
            "read*",
            ":*",
            "a\n",
            &"x".repeat(129),
        ] {
            assert!(Scopes::new([bad]).is_err(), "{bad:?}");
        }
        let s = Scopes::new(["admin:*"]).unwrap();
        assert!(s.grants("admin:users") && s.grants("admin:*") && s.grants(""));
        assert!(!s.grants("admin") && !s.grants("admin:") && !s.grants("administrator"));
        assert!(Scopes::new(["*"]).unwrap().grants("anything:at:all"));
        assert!(!Scopes::default().grants("read"));
    }

    #[test]
    fn credits_refill_to_the_amount_per_interval() {
        let day = 86_400_000_000;
        let mut c = Credits {
            remaining: 2,
            refill: Some(Refill {
                amount: 10,
                interval: Duration::from_secs(86_400),
            }),
            refilled_at: 0,
        };
        assert_eq!(
            c.charge(1, 2),
            CreditOutcome::Charged {
                remaining: 0,
                replayed: false
            }
        );
        assert_eq!(c.charge(2, 1), CreditOutcome::OutOfCredits { remaining: 0 });
        assert_eq!(
            c.charge(day + 5, 3),
            CreditOutcome::Charged {
                remaining: 7,
                replayed: false
            }
        );
        assert_eq!(c.refilled_at, day);
        c.remaining = 50;
        c.refill_at(3 * day);
        assert_eq!(
            (c.remaining, c.refilled_at),
            (50, 3 * day),
            "a balance above the amount is kept"
        );
    }

    proptest! {
        #[test]
        fn credits_never_go_negative_or_overcharge(start in 0u64..100, costs in proptest::collection::vec(0u64..20, 0..50)) {
            let mut c = Credits { remaining: start, refill: None, refilled_at: 0 };
            let mut spent = 0;
            for cost in costs {
                if let CreditOutcome::Charged { .. } = c.charge(0, cost) { spent += cost; }
            }
            prop_assert_eq!(spent + c.remaining, start);
        }

        #[test]
        fn arbitrary_scopes_never_panic(scopes in proptest::collection::vec(any::<String>(), 0..4), req in any::<String>()) {
            if let Ok(s) = Scopes::new(scopes) { let _ = s.grants(&req); }
        }
    }
}
