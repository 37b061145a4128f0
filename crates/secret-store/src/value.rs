//! Names, versions and values.
//!
//! Values are [`secrecy`] types: [`SecretString`] is zeroized on drop and prints as
//! `[REDACTED]`; it has no `Display` and no `Serialize`, so a value reaches a log line, a
//! response or a file only through an explicit [`ExposeSecret::expose_secret`] call.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

/// Longest secret name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest version string, in bytes.
pub const MAX_VERSION_LEN: usize = 128;

/// A validated secret name: 1 to 256 bytes of `A-Z a-z 0-9 _ - . /`, starting with a letter,
/// digit or `_`, with no empty, `.` or `..` path segment. Names are not secret (they appear in
/// errors, audit events and, when opted in, metric labels). Cloning is a reference-count
/// increment.
///
/// ```
/// use palisade_secret_store::SecretName;
/// assert!(SecretName::new("openai/api-key").is_ok());
/// assert!(SecretName::new("../etc/passwd").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(Arc<str>);

impl SecretName {
    /// Validate `name`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] saying what is wrong.
    pub fn new(name: &str) -> Result<Self> {
        check_name(name).map_err(|reason| Error::InvalidName {
            name: name.chars().take(MAX_NAME_LEN).collect(),
            reason,
        })?;
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The environment-variable form: upper case, `-`, `.` and `/` as `_`
    /// (`openai/api-key` → `OPENAI_API_KEY`).
    pub fn env_var(&self) -> String {
        self.0
            .chars()
            .map(|c| match c {
                '-' | '.' | '/' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect()
    }
}

pub(crate) fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 256 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        return Err("only A-Z a-z 0-9 _ - . / are allowed");
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err("must start with a letter, a digit or _");
    }
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("empty, `.` or `..` path segment");
    }
    Ok(())
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SecretName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SecretName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SecretName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl serde::Serialize for SecretName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A provider's version of a secret: a number for memory, Redis and Vault (`"3"`), a 32-digit
/// hex id for Azure Key Vault, a file's modification stamp for files, `env` for the
/// environment. Opaque: compare for equality, pass back to read that version. Cloning is a
/// reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Arc<str>);

impl Version {
    /// A version from a provider's own spelling: 1 to 128 printable ASCII bytes, no space.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for anything else.
    pub fn new(version: &str) -> Result<Self> {
        if version.is_empty()
            || version.len() > MAX_VERSION_LEN
            || !version.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::InvalidConfig(format!(
                "a version is 1 to 128 printable ASCII bytes, got {:?}",
                version.chars().take(MAX_VERSION_LEN).collect::<String>()
            )));
        }
        Ok(Self(Arc::from(version)))
    }

    /// The version's spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version as a number, when it is one (memory, Redis, Vault).
    pub fn number(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl From<u64> for Version {
    fn from(n: u64) -> Self {
        Self(Arc::from(n.to_string()))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What a [`Provider`](crate::Provider) answers for one secret: the value, its version and
/// what the provider knows about its lifetime.
#[non_exhaustive]
pub struct Fetched {
    /// The value.
    pub value: SecretString,
    /// The version read.
    pub version: Version,
    /// When the provider says the value stops being valid (Azure `attributes.exp`, a memory
    /// entry's expiry); the cache never keeps a value past it.
    pub expires_at: Option<SystemTime>,
    /// When this version was created, if the provider says.
    pub created_at: Option<SystemTime>,
}

impl Fetched {
    /// A value at `version`, no expiry.
    pub fn new(value: SecretString, version: Version) -> Self {
        Self {
            value,
            version,
            expires_at: None,
            created_at: None,
        }
    }

    /// The same, expiring at `at`.
    #[must_use]
    pub fn expires_at(mut self, at: Option<SystemTime>) -> Self {
        self.expires_at = at;
        self
    }

    /// The same, created at `at`.
    #[must_use]
    pub fn created_at(mut self, at: Option<SystemTime>) -> Self {
        self.created_at = at;
        self
    }
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("value", &self.value)
            .field("version", &self.version)
            .field("expires_at", &self.expires_at)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A secret as [`Secrets`](crate::Secrets) hands it out: the value, its name, version and
/// where it came from. Cloning is one reference-count increment (the cached `get` returns
/// one without allocating); the value is zeroized when the last clone drops.
///
/// It prints as `Secret { name: "db", version: "3", value: "[REDACTED]", .. }`, has no
/// `Display`, no `Serialize`: read the value with [`ExposeSecret::expose_secret`].
///
/// ```
/// use palisade_secret_store::{ExposeSecret, Secret, SecretName, Version};
/// let s = Secret::new(SecretName::new("db")?, Version::from(3), "hunter2".into());
/// assert_eq!(s.expose_secret(), "hunter2");
/// assert!(!format!("{s:?}").contains("hunter2"));
/// # Ok::<(), palisade_secret_store::Error>(())
/// ```
#[derive(Clone)]
pub struct Secret(Arc<SecretInner>);

struct SecretInner {
    name: SecretName,
    version: Version,
    value: SecretString,
    expires_at: Option<SystemTime>,
    provider: Arc<str>,
}

impl Secret {
    /// A secret not read from any provider (tests, values built in code).
    pub fn new(name: SecretName, version: Version, value: SecretString) -> Self {
        Self::from_parts(name, Fetched::new(value, version), Arc::from("local"))
    }

    pub(crate) fn from_parts(name: SecretName, f: Fetched, provider: Arc<str>) -> Self {
        Self(Arc::new(SecretInner {
            name,
            version: f.version,
            value: f.value,
            expires_at: f.expires_at,
            provider,
        }))
    }

    /// The secret's name.
    pub fn name(&self) -> &SecretName {
        &self.0.name
    }

    /// The version this value is.
    pub fn version(&self) -> &Version {
        &self.0.version
    }

    /// When the provider said this value stops being valid.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.0.expires_at
    }

    /// The name of the provider that answered (`snapshot` for a value read from the
    /// on-disk snapshot at a cold start).
    pub fn provider(&self) -> &str {
        &self.0.provider
    }

    /// Whether two handles share one loaded value (no value comparison).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// Whether this value equals `other`, compared in constant time.
    pub(crate) fn same_value(&self, other: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(
            self.0
                .value
                .expose_secret()
                .as_bytes()
                .ct_eq(other.as_bytes()),
        )
    }
}

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.0.value.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.0.name)
            .field("version", &self.0.version)
            .field("value", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

pub(crate) fn to_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "DB_PASSWORD", "openai/api-key", "_x.y", "a/b/c", "9"] {
            SecretName::new(ok).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", "-a", ".env", "a b", "a\nb", "a{b}", "é",
        ] {
            assert!(SecretName::new(bad).is_err(), "{bad:?}");
        }
        assert!(SecretName::new(&"a".repeat(257)).is_err());
        assert_eq!(
            SecretName::new("openai/api-key.v2").unwrap().env_var(),
            "OPENAI_API_KEY_V2"
        );
    }

    #[test]
    fn versions_are_validated() {
        assert_eq!(Version::from(7).number(), Some(7));
        assert!(Version::new("4387e9f3d6e14c459867679a90fd0f79").is_ok());
        assert!(Version::new("a b").is_err());
        assert!(Version::new("").is_err());
    }
}
