//! Client-side encryption: [`MasterKey`] and the sealed-blob format shared by the Redis
//! provider and the on-disk snapshot.
//!
//! A sealed blob is `b'P' 0x01 <id length: u8> <key id> <24-byte nonce> <ciphertext + 16-byte tag>`:
//! XChaCha20-Poly1305 with a random 192-bit nonce per message (random nonces of that size
//! never realistically repeat, unlike AES-GCM's 96 bits) and associated data that binds the
//! blob to where it belongs (the Redis key prefix, secret name and version), so a ciphertext
//! copied under another name or version does not decrypt.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const MAGIC: u8 = b'P';
const FORMAT: u8 = 1;
const NONCE: usize = 24;

/// A 256-bit key that encrypts values before they leave the process (Redis provider,
/// snapshot file), with a short id written beside each ciphertext so that an old key can
/// still decrypt what it sealed while a new one takes over ([`Keyring`]).
///
/// Zeroized on drop; prints as `MasterKey { id: "k1", .. }`.
///
/// ```
/// use palisade_secret_store::MasterKey;
/// let key = MasterKey::from_hex("k1", &"42".repeat(32))?;
/// assert_eq!(key.id(), "k1");
/// assert!(!format!("{key:?}").contains("42"));
/// # Ok::<(), palisade_secret_store::Error>(())
/// ```
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key from 32 bytes. `id` is 1 to 64 bytes of `A-Z a-z 0-9 _ - .`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad id.
    pub fn new(id: &str, bytes: [u8; 32]) -> Result<Self> {
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(Error::InvalidConfig(format!(
                "a master key id is 1 to 64 bytes of A-Z a-z 0-9 _ - ., got {id:?}"
            )));
        }
        Ok(Self {
            id: id.to_owned(),
            key: Zeroizing::new(bytes),
        })
    }

    /// A key from 64 hex digits (`openssl rand -hex 32`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (the message never repeats the text).
    pub fn from_hex(id: &str, hex_key: &str) -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_key.trim(), &mut bytes[..]).map_err(|_| {
            Error::InvalidConfig("a master key is 64 hex digits (32 bytes)".to_owned())
        })?;
        Self::new(id, *bytes)
    }

    /// A key from a secret holding 64 hex digits (a key kept in the environment or a file).
    ///
    /// # Errors
    /// As [`from_hex`](Self::from_hex).
    pub fn from_secret(id: &str, secret: &impl ExposeSecret<str>) -> Result<Self> {
        Self::from_hex(id, secret.expose_secret())
    }

    /// A fresh random key from the operating system.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad id; [`Error::Backend`] if the OS has no randomness.
    pub fn generate(id: &str) -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut bytes[..])
            .map_err(|e| Error::backend("os-random", e.to_string(), false))?;
        Self::new(id, *bytes)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }
}

/// The current [`MasterKey`] (seals everything new) and older ones that still open what they
/// sealed, for rotating the master key without losing stored values.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl From<MasterKey> for Keyring {
    fn from(current: MasterKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }
}

impl Keyring {
    /// A keyring sealing with `current`.
    pub fn new(current: MasterKey) -> Self {
        current.into()
    }

    /// Also open blobs sealed with `old`.
    #[must_use]
    pub fn with_previous(mut self, old: MasterKey) -> Self {
        self.previous.push(old);
        self
    }

    /// Encrypt `plain` bound to `aad`.
    ///
    /// # Errors
    /// [`Error::Backend`] when the OS has no randomness for the nonce.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::backend("os-random", e.to_string(), false))?;
        let ct = self
            .current
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| Error::backend("aead", "encryption failed", false))?;
        let id = self.current.id.as_bytes();
        let mut out = Vec::with_capacity(3 + id.len() + NONCE + ct.len());
        out.extend_from_slice(&[MAGIC, FORMAT, id.len() as u8]);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypt a blob from [`seal`](Self::seal) with the key whose id it names; `None` when
    /// the blob is malformed, the key unknown, or the data or `aad` altered.
    pub(crate) fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&[magic, format, id_len], rest) = blob.split_first_chunk::<3>()?;
        if magic != MAGIC || format != FORMAT || rest.len() < usize::from(id_len) + NONCE + 16 {
            return None;
        }
        let (id, rest) = rest.split_at(usize::from(id_len));
        let (nonce, ct) = rest.split_at(NONCE);
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id.as_bytes() == id)?;
        key.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_binds_key_and_aad() {
        let k1 = MasterKey::from_hex("k1", &"11".repeat(32)).unwrap();
        let k2 = MasterKey::from_hex("k2", &"22".repeat(32)).unwrap();
        let ring = Keyring::new(k1.clone());
        let blob = ring.seal(b"name:1", b"hunter2").unwrap();
        assert!(!blob.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(&ring.open(b"name:1", &blob).unwrap()[..], b"hunter2");
        assert!(ring.open(b"name:2", &blob).is_none(), "aad is bound");
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(ring.open(b"name:1", &bad).is_none(), "tampering is caught");
        assert!(Keyring::new(k2.clone()).open(b"name:1", &blob).is_none());
        let rotated = Keyring::new(k2).with_previous(k1);
        assert_eq!(&rotated.open(b"name:1", &blob).unwrap()[..], b"hunter2");
        for n in 0..blob.len() {
            let _ = ring.open(b"name:1", &blob[..n]);
        }
        assert!(MasterKey::from_hex("k", "zz").is_err());
        assert!(MasterKey::new("bad id", [0; 32]).is_err());
    }
}
