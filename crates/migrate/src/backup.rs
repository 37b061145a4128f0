//! Encrypted backups at rest: [`BackupKey`], [`BackupVault`], [`BackupInfo`].
//!
//! A backup file is `PMB1`, a 4-byte little-endian header length, the header (JSON
//! [`BackupInfo`], readable without the key so backups can be listed), a 12-byte random
//! nonce and the dump sealed with ChaCha20-Poly1305 (RFC 8439). The header is the AEAD's
//! associated data: changing a byte of either the header or the dump makes decryption fail.

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::BackupScope;

const MAGIC: &[u8; 4] = b"PMB1";
const EXT: &str = "pmb";

/// The 256-bit key backups are sealed with. It comes from the caller (a secret store, an
/// environment variable); it never prints.
#[derive(Clone)]
pub struct BackupKey([u8; 32]);

impl BackupKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key from 64 hex digits (as `PALISADE_MIGRATE_BACKUP_KEY` holds it).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it is not 64 hex digits (the message never repeats it).
    pub fn from_hex(hex_key: &str) -> Result<Self> {
        let bytes = hex::decode(hex_key.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::InvalidConfig("a backup key is 64 hex digits (32 bytes)".into())
            })?;
        Ok(Self(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }

    /// The key as 64 hex digits, to store it somewhere safe.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupKey(<redacted>)")
    }
}

/// What is known about a backup without decrypting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupInfo {
    /// Its id (also its file name without `.pmb`).
    pub id: String,
    /// When it was taken (microseconds since the Unix epoch).
    pub created_at_us: u64,
    /// The target (`postgres`, `redis`, `memory`).
    pub target: String,
    /// The dump format (`pg_dump`, `redis_dump`, `memory`).
    pub format: String,
    /// What it covers.
    pub scope: BackupScope,
    /// The migration it was taken before (`None` for a standalone backup).
    pub version: Option<u64>,
    /// That migration's name.
    pub migration: Option<String>,
    /// Size of the plain dump in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the plain dump.
    pub sha256: String,
}

/// A folder of encrypted backups.
#[derive(Debug, Clone)]
pub struct BackupVault {
    dir: PathBuf,
    key: BackupKey,
}

impl BackupVault {
    /// Backups in `dir` (created when the first backup is written), sealed with `key`.
    pub fn new(dir: impl Into<PathBuf>, key: BackupKey) -> Self {
        Self {
            dir: dir.into(),
            key,
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seal `dump` and write it; the file is complete or absent (written to a temporary
    /// name, then renamed).
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be written.
    pub fn save(
        &self,
        target: &str,
        format: &str,
        scope: &BackupScope,
        migration: Option<(u64, &str)>,
        created_at_us: u64,
        dump: &[u8],
    ) -> Result<BackupInfo> {
        let mut random = [0u8; 4];
        rand::rng().fill_bytes(&mut random);
        let id = match migration {
            Some((v, _)) => format!("{created_at_us}-v{v}-{}", hex::encode(random)),
            None => format!("{created_at_us}-manual-{}", hex::encode(random)),
        };
        let info = BackupInfo {
            id,
            created_at_us,
            target: target.to_owned(),
            format: format.to_owned(),
            scope: scope.clone(),
            version: migration.map(|(v, _)| v),
            migration: migration.map(|(_, n)| n.to_owned()),
            size: dump.len() as u64,
            sha256: hex::encode(Sha256::digest(dump)),
        };
        let header = serde_json::to_vec(&info).map_err(|e| Error::Backup(e.to_string()))?;
        let mut aad = Vec::with_capacity(8 + header.len());
        aad.extend_from_slice(MAGIC);
        aad.extend_from_slice(
            &u32::try_from(header.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        aad.extend_from_slice(&header);
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = ChaCha20Poly1305::new(Key::from_slice(&self.key.0))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: dump,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Backup("encryption failed".into()))?;
        let mut file = aad;
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.path(&info.id);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &file).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(info)
    }

    /// Every backup in the folder, oldest first (headers only; no key needed). Files that
    /// are not backups are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder exists but cannot be read.
    pub fn list(&self) -> Result<Vec<BackupInfo>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if let Ok((info, _, _, _)) = split(&bytes) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| (a.created_at_us, &a.id).cmp(&(b.created_at_us, &b.id)));
        Ok(out)
    }

    /// Decrypt backup `id`.
    ///
    /// # Errors
    /// [`Error::Backup`] when it does not exist, the key is wrong or the file was altered.
    pub fn load(&self, id: &str) -> Result<(BackupInfo, Vec<u8>)> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::Backup(format!("{id:?} is not a backup id")));
        }
        let path = self.path(id);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::Backup(format!("no backup {id} in {}", self.dir.display()))
            }
            _ => Error::io(&path, e),
        })?;
        let (info, aad, nonce, sealed) = split(&bytes)?;
        let dump = ChaCha20Poly1305::new(Key::from_slice(&self.key.0))
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| {
                Error::Backup(format!(
                    "backup {id} does not open with this key (wrong key or altered file)"
                ))
            })?;
        Ok((info, dump))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{EXT}"))
    }
}

type Parts<'a> = (BackupInfo, &'a [u8], &'a [u8], &'a [u8]);

fn split(bytes: &[u8]) -> Result<Parts<'_>> {
    let bad = || Error::Backup("not a palisade-migrate backup file".into());
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(bad());
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let header_end = 8usize.checked_add(len).ok_or_else(bad)?;
    let nonce_end = header_end.checked_add(12).ok_or_else(bad)?;
    if bytes.len() < nonce_end + 16 {
        return Err(bad());
    }
    let info: BackupInfo = serde_json::from_slice(&bytes[8..header_end]).map_err(|_| bad())?;
    Ok((
        info,
        &bytes[..header_end],
        &bytes[header_end..nonce_end],
        &bytes[nonce_end..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let key = BackupKey::generate();
        let vault = BackupVault::new(dir.path(), key.clone());
        let info = vault
            .save(
                "memory",
                "memory",
                &BackupScope::Everything,
                Some((3, "users")),
                42,
                b"secret rows",
            )
            .unwrap();
        assert_eq!(vault.list().unwrap(), std::slice::from_ref(&info));
        assert_eq!(vault.load(&info.id).unwrap().1, b"secret rows");
        let raw = std::fs::read(vault.path(&info.id)).unwrap();
        assert!(
            !raw.windows(11).any(|w| w == b"secret rows"),
            "the dump is encrypted at rest"
        );
        let other = BackupVault::new(dir.path(), BackupKey::generate());
        assert!(
            other
                .load(&info.id)
                .unwrap_err()
                .to_string()
                .contains("wrong key")
        );
        let mut altered = raw;
        let last = altered.len() - 1;
        altered[last] ^= 1;
        std::fs::write(vault.path(&info.id), &altered).unwrap();
        assert!(vault.load(&info.id).is_err());
        assert!(vault.load("../../etc/passwd").is_err());
        assert!(format!("{key:?}").contains("redacted"));
        assert!(BackupKey::from_hex(&key.to_hex()).is_ok());
        assert!(BackupKey::from_hex("abc").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = split(&bytes);
            let mut framed = b"PMB1".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = split(&framed);
        }
    }
}
