//! Server-side secrets that key hashes and tokens are keyed with: [`Pepper`] and
//! [`Peppers`] (several versions at once, so they can rotate).

use std::fmt;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::key::{KeyId, MAX_HASH_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// Shortest pepper accepted: 32 bytes, the HMAC-SHA256 block's worth of entropy a server
/// secret should carry.
pub const MIN_PEPPER_LEN: usize = 32;

/// One server secret. It never prints (`Debug` shows the version only) and its bytes are
/// zeroed when it drops. Feed it from a secret store (palisade-secret-store, Vault, a file
/// mounted by the orchestrator), never from source code.
pub struct Pepper {
    version: u16,
    bytes: SecretBox<[u8]>,
    // The HMAC state after the key's inner/outer pads, computed once so a hash costs two
    // SHA-256 blocks, not four. Derived from the secret: not printed either.
    mac: HmacSha256,
}

impl Pepper {
    /// A pepper of `version` (0 to 3843: it is written into every key as two base62
    /// characters).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `bytes` is shorter than [`MIN_PEPPER_LEN`] or the
    /// version is out of range.
    pub fn new(version: u16, bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let bytes: Vec<u8> = bytes.into();
        if bytes.len() < MIN_PEPPER_LEN {
            return Err(Error::InvalidConfig(format!(
                "pepper version {version} has {} bytes; at least {MIN_PEPPER_LEN} are needed",
                bytes.len()
            )));
        }
        if version > MAX_HASH_VERSION {
            return Err(Error::InvalidConfig(format!(
                "pepper version {version} is over {MAX_HASH_VERSION}"
            )));
        }
        let mac = HmacSha256::new_from_slice(&bytes)
            .map_err(|e| Error::InvalidConfig(format!("pepper: {e}")))?;
        Ok(Self {
            version,
            bytes: SecretBox::new(bytes.into_boxed_slice()),
            mac,
        })
    }

    /// The version.
    pub fn version(&self) -> u16 {
        self.version
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    fn same_secret(&self, other: &Pepper) -> bool {
        self.bytes
            .expose_secret()
            .ct_eq(other.bytes.expose_secret())
            .into()
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pepper")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The peppers a service knows: one *current* version that new keys and tokens are made
/// with, and older versions that existing keys and tokens still verify under. Rotate by
/// adding a new version and making it current; drop an old version once no key hashed
/// under it remains (verification re-hashes a key under the current pepper on its first
/// successful use, see [`ApiKeys::verify`](crate::ApiKeys::verify)).
///
/// ```
/// use palisade_apikey::{Pepper, Peppers};
/// let peppers = Peppers::new(Pepper::new(2, [7u8; 32])?)
///     .with_previous(Pepper::new(1, [9u8; 32])?)?;
/// assert_eq!(peppers.current_version(), 2);
/// assert!(format!("{peppers:?}").contains("versions"));
/// # Ok::<(), palisade_apikey::Error>(())
/// ```
pub struct Peppers {
    current: u16,
    all: Vec<Pepper>,
}

impl fmt::Debug for Peppers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peppers")
            .field("current", &self.current)
            .field("versions", &self.versions().collect::<Vec<_>>())
            .finish()
    }
}

impl Peppers {
    /// Peppers with one (current) version.
    pub fn new(current: Pepper) -> Self {
        Self {
            current: current.version,
            all: vec![current],
        }
    }

    /// Also accept `pepper` (an older version) for verification.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when its version is already known, or when it repeats the
    /// secret of another version (a rotation that changes nothing).
    pub fn with_previous(mut self, pepper: Pepper) -> Result<Self> {
        if self.all.iter().any(|p| p.version == pepper.version) {
            return Err(Error::InvalidConfig(format!(
                "pepper version {} given twice",
                pepper.version
            )));
        }
        if self.all.iter().any(|p| p.same_secret(&pepper)) {
            return Err(Error::InvalidConfig(format!(
                "pepper version {} repeats the secret of another version",
                pepper.version
            )));
        }
        self.all.push(pepper);
        Ok(self)
    }

    /// The version new keys and tokens are made with.
    pub fn current_version(&self) -> u16 {
        self.current
    }

    /// The known versions.
    pub fn versions(&self) -> impl Iterator<Item = u16> + '_ {
        self.all.iter().map(|p| p.version)
    }

    fn get(&self, version: u16) -> Option<&Pepper> {
        self.all.iter().find(|p| p.version == version)
    }

    /// HMAC-SHA256(pepper[version], id ‖ secret), or `None` for an unknown version.
    pub(crate) fn hash_key(&self, version: u16, id: &KeyId, secret: &[u8]) -> Option<[u8; 32]> {
        let mut mac = self.get(version)?.mac();
        mac.update(id.as_str().as_bytes());
        mac.update(secret);
        Some(mac.finalize().into_bytes().into())
    }

    /// HMAC-SHA256(pepper[version], data).
    pub(crate) fn sign(&self, version: u16, data: &[&[u8]]) -> Option<[u8; 32]> {
        let mut mac = self.get(version)?.mac();
        for d in data {
            mac.update(d);
        }
        Some(mac.finalize().into_bytes().into())
    }
}

/// Constant-time equality of two hashes.
pub(crate) fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_duplicate_peppers_are_refused() {
        assert!(Pepper::new(1, [0u8; 31]).is_err());
        assert!(Pepper::new(MAX_HASH_VERSION + 1, [0u8; 32]).is_err());
        let p = Peppers::new(Pepper::new(1, [1u8; 32]).unwrap());
        assert!(p.with_previous(Pepper::new(1, [2u8; 32]).unwrap()).is_err());
        let p = Peppers::new(Pepper::new(1, [1u8; 32]).unwrap());
        assert!(p.with_previous(Pepper::new(2, [1u8; 32]).unwrap()).is_err());
    }

    #[test]
    fn hashes_depend_on_version_id_and_secret_and_never_print() {
        let p = Peppers::new(Pepper::new(2, *b"0123456789abcdef0123456789abcdef").unwrap())
            .with_previous(Pepper::new(1, [5u8; 40]).unwrap())
            .unwrap();
        let id: KeyId = "AAAAAAAAAAAAAAAA".parse().unwrap();
        let other: KeyId = "AAAAAAAAAAAAAAAB".parse().unwrap();
        let h = p.hash_key(2, &id, b"s").unwrap();
        assert_ne!(h, p.hash_key(1, &id, b"s").unwrap());
        assert_ne!(h, p.hash_key(2, &other, b"s").unwrap());
        assert_ne!(h, p.hash_key(2, &id, b"t").unwrap());
        assert!(p.hash_key(3, &id, b"s").is_none());
        // RFC 4231-style check against a direct HMAC computation.
        let mut mac = HmacSha256::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        mac.update(b"AAAAAAAAAAAAAAAAs");
        assert_eq!(h.as_slice(), mac.finalize().into_bytes().as_slice());
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
        assert!(!dbg.contains("48, 49"), "{dbg}");
    }
}
