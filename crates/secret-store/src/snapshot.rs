//! The encrypted last-known-good snapshot on disk, so a process can start during an outage.
//!
//! File: one sealed blob ([`Keyring`](crate::Keyring) format, associated data
//! `palisade-secret-store snapshot v1`) whose plaintext is `PSS1`, an entry count (u32 LE),
//! then per entry: name, version and provider (u16 LE length + bytes each), the load time
//! (u64 LE microseconds) and the value (u32 LE length + bytes). Written whole to a temporary
//! file with mode 0600 in the same directory, synced, then renamed over the old one, so a
//! crash leaves either the old or the new snapshot.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::key::Keyring;
use crate::value::{SecretName, Version};

const AAD: &[u8] = b"palisade-secret-store snapshot v1";
const MAGIC: &[u8] = b"PSS1";

/// One remembered value.
#[derive(Clone)]
pub(crate) struct SnapEntry {
    pub(crate) version: Version,
    pub(crate) provider: String,
    pub(crate) loaded_at: u64,
    pub(crate) value: SecretString,
}

pub(crate) struct Snapshot {
    path: PathBuf,
    keyring: Keyring,
    entries: Mutex<HashMap<SecretName, SnapEntry>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("entries", &self.entries.lock().len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Open the snapshot at `path`: its entries when it exists and decrypts, none otherwise
    /// (the reason is returned for logging: a wrong key must not stop a start).
    pub(crate) fn open(path: PathBuf, keyring: Keyring) -> (Self, Option<Error>) {
        let (entries, problem) = match std::fs::read(&path) {
            Ok(blob) => match keyring.open(AAD, &blob).and_then(|p| decode(&p)) {
                Some(entries) => (entries, None),
                None => (
                    HashMap::new(),
                    Some(Error::Decrypt {
                        provider: "snapshot".to_owned(),
                    }),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), None),
            Err(e) => (HashMap::new(), Some(Error::backend("snapshot", e, true))),
        };
        (
            Self {
                path,
                keyring,
                entries: Mutex::new(entries),
            },
            problem,
        )
    }

    pub(crate) fn get(&self, name: &SecretName) -> Option<SnapEntry> {
        self.entries.lock().get(name).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Remember `entry` and write the file when it changed the remembered set.
    pub(crate) fn record(&self, name: &SecretName, entry: SnapEntry, max_age: u64) -> Result<bool> {
        let mut entries = self.entries.lock();
        let unchanged = entries.get(name).is_some_and(|old| {
            old.version == entry.version
                && old.provider == entry.provider
                && old.value.expose_secret() == entry.value.expose_secret()
                && entry.loaded_at.saturating_sub(old.loaded_at) < max_age / 2
        });
        if unchanged {
            return Ok(false);
        }
        entries.insert(name.clone(), entry);
        let plain = encode(&entries);
        let blob = self.keyring.seal(AAD, &plain)?;
        write_atomically(&self.path, &blob).map_err(|e| Error::backend("snapshot", e, true))?;
        Ok(true)
    }

    /// Forget `name` (it was denied or deleted) and rewrite the file.
    pub(crate) fn forget(&self, name: &SecretName) -> Result<()> {
        let mut entries = self.entries.lock();
        if entries.remove(name).is_some() {
            let blob = self.keyring.seal(AAD, &encode(&entries))?;
            write_atomically(&self.path, &blob).map_err(|e| Error::backend("snapshot", e, true))?;
        }
        Ok(())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn encode(entries: &HashMap<SecretName, SnapEntry>) -> Zeroizing<Vec<u8>> {
    let size: usize = entries
        .iter()
        .map(|(n, e)| {
            n.as_str().len()
                + e.version.as_str().len()
                + e.provider.len()
                + e.value.expose_secret().len()
                + 24
        })
        .sum();
    let mut out = Zeroizing::new(Vec::with_capacity(size + 8));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (name, e) in entries {
        put_str(&mut out, name.as_str());
        put_str(&mut out, e.version.as_str());
        put_str(&mut out, &e.provider);
        out.extend_from_slice(&e.loaded_at.to_le_bytes());
        let v = e.value.expose_secret().as_bytes();
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn str16(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::from(n))?).ok()
    }
}

fn decode(plain: &[u8]) -> Option<HashMap<SecretName, SnapEntry>> {
    let mut r = Reader(plain);
    if r.take(4)? != MAGIC {
        return None;
    }
    let count = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    let mut out = HashMap::new();
    for _ in 0..count {
        let name = SecretName::new(r.str16()?).ok()?;
        let version = Version::new(r.str16()?).ok()?;
        let provider = r.str16()?.to_owned();
        let loaded_at = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let value = std::str::from_utf8(r.take(n as usize)?).ok()?;
        out.insert(
            name,
            SnapEntry {
                version,
                provider,
                loaded_at,
                value: SecretString::from(value),
            },
        );
    }
    r.0.is_empty().then_some(out)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MasterKey;

    fn ring() -> Keyring {
        Keyring::new(MasterKey::from_hex("k1", &"07".repeat(32)).unwrap())
    }

    #[test]
    fn round_trip_encrypted_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.bin");
        let (s, problem) = Snapshot::open(path.clone(), ring());
        assert!(problem.is_none());
        let name = SecretName::new("db/password").unwrap();
        let e = SnapEntry {
            version: Version::from(3),
            provider: "redis".to_owned(),
            loaded_at: 42,
            value: SecretString::from("hunter2-very-secret"),
        };
        assert!(s.record(&name, e.clone(), 1000).unwrap());
        assert!(!s.record(&name, e, 1000).unwrap(), "unchanged: no write");
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, problem) = Snapshot::open(path.clone(), ring());
        assert!(problem.is_none());
        let got = again.get(&name).unwrap();
        assert_eq!(got.value.expose_secret(), "hunter2-very-secret");
        assert_eq!((got.version.as_str(), got.loaded_at), ("3", 42));
        let other = Keyring::new(MasterKey::from_hex("k1", &"08".repeat(32)).unwrap());
        let (empty, problem) = Snapshot::open(path, other);
        assert!(matches!(problem, Some(Error::Decrypt { .. })));
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn decode_never_panics_on_truncation() {
        let mut m = HashMap::new();
        m.insert(
            SecretName::new("a").unwrap(),
            SnapEntry {
                version: Version::from(1),
                provider: "p".into(),
                loaded_at: 1,
                value: SecretString::from("v"),
            },
        );
        let plain = encode(&m);
        for n in 0..plain.len() {
            assert!(decode(&plain[..n]).is_none());
        }
        assert!(decode(&plain).is_some());
    }
}
