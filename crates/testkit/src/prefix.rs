use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// A key prefix that no other test (in this or another process) uses, so tests that share one
/// Redis never see each other's keys. It contains no `{` or `}`, so it never changes which
/// Redis Cluster slot a hash-tagged key lands in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// A fresh prefix such as `palisade-test:4711-3-9f2c1a0b7d3e4f56:`.
    pub fn unique() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // RandomState is seeded from the OS per process: enough entropy to keep two runs apart.
        let random = RandomState::new().hash_one((n, std::time::SystemTime::now()));
        Self(format!(
            "palisade-test:{}-{n}-{random:016x}:",
            std::process::id()
        ))
    }

    /// The prefix itself, ending in `:`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.0)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for KeyPrefix {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
