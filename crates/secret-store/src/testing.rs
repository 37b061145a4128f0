//! The provider conformance suite (feature `testing`): one async function per case, and
//! [`provider_conformance!`](crate::provider_conformance) to turn them into one `#[tokio::test]`
//! each for a provider of yours.
//!
//! A provider under test holds the [`SEED`] secrets: read-only providers are built from them
//! ([`seed_vars`], [`seed_dotenv`], [`seed_json`]), writable ones are filled with [`seed`].
//! Every case gets a fresh provider from the factory.
//!
//! ```text
//! palisade_secret_store::provider_conformance!(memory, async {
//!     let p = std::sync::Arc::new(palisade_secret_store::MemoryProvider::new());
//!     palisade_secret_store::testing::seed(&*p).await;
//!     p
//! });
//! ```
//!
//! [`Switch`] wraps any provider and makes it fail on demand (transiently, or with a
//! denial), for tests of what [`Secrets`](crate::Secrets) does during an outage on a fake
//! clock; the outage drills on real servers kill the Redis provider's own server instead.
#![allow(clippy::missing_panics_doc)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version};

/// The secrets every provider under test holds: names valid for every provider (Azure's
/// `A-Z a-z 0-9 -` included), values with the characters file formats must escape.
pub const SEED: &[(&str, &str)] = &[
    ("db-password", "hunter2-Pa55w0rd!"),
    ("api-key", "sk-test-0123456789abcdefghijklmnop"),
    (
        "quoted",
        "a \"quoted\" 'value' with # and = and \\ backslash",
    ),
    (
        "multi-line",
        "-----BEGIN KEY-----\nMIIB\n-----END KEY-----\n",
    ),
    ("unicode", "pässwörd-密码-🔑"),
];

fn name(s: &str) -> SecretName {
    SecretName::new(s).expect("a valid test name")
}

/// `SEED` as environment variables under `prefix`.
pub fn seed_vars(prefix: &str) -> Vec<(String, String)> {
    SEED.iter()
        .map(|(n, v)| (format!("{prefix}{}", name(n).env_var()), (*v).to_owned()))
        .collect()
}

/// `SEED` as a `.env` file's text (double-quoted, escaped values).
pub fn seed_dotenv() -> String {
    let mut out = String::from("# conformance seed\n");
    for (n, v) in SEED {
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        out.push_str(&format!("{}=\"{escaped}\"\n", name(n).env_var()));
    }
    out
}

/// `SEED` as a flat JSON object.
pub fn seed_json() -> String {
    let map: std::collections::BTreeMap<&str, &str> = SEED.iter().copied().collect();
    serde_json::to_string_pretty(&map).expect("strings serialise")
}

/// `SEED` as a flat TOML table.
pub fn seed_toml() -> String {
    let map: std::collections::BTreeMap<&str, &str> = SEED.iter().copied().collect();
    toml::to_string(&map).expect("strings serialise")
}

/// Write `SEED` through a writable provider.
pub async fn seed(p: &dyn Provider) {
    for (n, v) in SEED {
        p.put(&name(n), &SecretString::from(*v))
            .await
            .unwrap_or_else(|e| panic!("seeding {n}: {e}"));
    }
}

/// Every seeded secret reads back exactly, at its latest version.
pub async fn reads_seeded_values(p: Arc<dyn Provider>) {
    for (n, v) in SEED {
        let f = p
            .get(&name(n), None)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(f.value.expose_secret(), *v, "{n}");
    }
}

/// An unknown name is a miss (`Ok(None)`), not an error.
pub async fn missing_is_none(p: Arc<dyn Provider>) {
    assert!(
        p.get(&name("no-such-secret"), None)
            .await
            .unwrap()
            .is_none()
    );
}

/// A version the provider never wrote is a miss.
pub async fn unknown_version_is_none(p: Arc<dyn Provider>) {
    let v = Version::new("999999").unwrap();
    assert!(
        p.get(&name("db-password"), Some(&v))
            .await
            .unwrap()
            .is_none()
    );
}

/// The latest version can be read again by its version.
pub async fn latest_is_readable_by_version(p: Arc<dyn Provider>) {
    let latest = p.get(&name("api-key"), None).await.unwrap().unwrap();
    let again = p
        .get(&name("api-key"), Some(&latest.version))
        .await
        .unwrap()
        .expect("the latest version by number");
    assert_eq!(again.version, latest.version);
    assert_eq!(again.value.expose_secret(), latest.value.expose_secret());
}

/// `list` names at least every seeded secret.
pub async fn lists_seeded_names(p: Arc<dyn Provider>) {
    let listed: HashSet<String> = p
        .list()
        .await
        .unwrap()
        .iter()
        .map(|n| n.as_str().to_ascii_lowercase().replace('_', "-"))
        .collect();
    for (n, _) in SEED {
        assert!(listed.contains(*n), "{n} not in {listed:?}");
    }
}

/// A healthy provider says so.
pub async fn health_is_ok(p: Arc<dyn Provider>) {
    p.health().await.unwrap();
}

/// A writable provider makes every put a new version and keeps the previous one readable;
/// a read-only one refuses with [`Error::ReadOnly`].
pub async fn put_keeps_previous_versions(p: Arc<dyn Provider>) {
    let n = name("rotated");
    if !p.writable() {
        let e = p.put(&n, &SecretString::from("x")).await.unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
        return;
    }
    let v1 = p.put(&n, &SecretString::from("first-value")).await.unwrap();
    let v2 = p
        .put(&n, &SecretString::from("second-value"))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let latest = p.get(&n, None).await.unwrap().unwrap();
    assert_eq!(
        (latest.value.expose_secret(), &latest.version),
        ("second-value", &v2)
    );
    let old = p
        .get(&n, Some(&v1))
        .await
        .unwrap()
        .expect("the previous version");
    assert_eq!(old.value.expose_secret(), "first-value");
}

/// Concurrent puts of one name all get distinct versions (writable providers only; a
/// read-only one refuses each).
pub async fn concurrent_puts_get_distinct_versions(p: Arc<dyn Provider>) {
    let n = name("raced");
    let puts = (0..8).map(|i| {
        let (p, n) = (p.clone(), n.clone());
        async move { p.put(&n, &SecretString::from(format!("value-{i}"))).await }
    });
    let results = futures::future::join_all(puts).await;
    if !p.writable() {
        assert!(results.iter().all(|r| matches!(r, Err(Error::ReadOnly(_)))));
        return;
    }
    let versions: HashSet<Version> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(versions.len(), 8, "{versions:?}");
}

/// The provider's `Debug` never shows a value.
pub async fn debug_never_shows_values(p: Arc<dyn Provider>) {
    let text = format!("{p:?}");
    for (_, v) in SEED {
        assert!(!text.contains(v), "{text}");
    }
    let f = p.get(&name("db-password"), None).await.unwrap().unwrap();
    assert!(!format!("{f:?}").contains("hunter2"));
}

/// Every case in turn on one provider (seeded with [`SEED`]), for backends too costly to
/// start once per case (a Redis Cluster); a failure names its case.
pub async fn run_all(p: Arc<dyn Provider>) {
    macro_rules! case {
        ($($case:ident),*) => {$(
            tracing::info!(case = stringify!($case), "conformance case");
            $case(p.clone()).await;
        )*};
    }
    case!(
        reads_seeded_values,
        missing_is_none,
        unknown_version_is_none,
        latest_is_readable_by_version,
        lists_seeded_names,
        health_is_ok,
        put_keeps_previous_versions,
        concurrent_puts_get_distinct_versions,
        debug_never_shows_values
    );
}

/// One `#[tokio::test]` per conformance case for the provider `$make` builds: an expression
/// (it may `.await`) answering `Arc<impl Provider>` seeded with
/// [`SEED`](crate::testing::SEED), or `(guard, Arc<impl Provider>)` ([`CaseSetup`]).
#[macro_export]
macro_rules! provider_conformance {
    ($make:expr) => {
        $crate::provider_conformance!(@case $make, reads_seeded_values);
        $crate::provider_conformance!(@case $make, missing_is_none);
        $crate::provider_conformance!(@case $make, unknown_version_is_none);
        $crate::provider_conformance!(@case $make, latest_is_readable_by_version);
        $crate::provider_conformance!(@case $make, lists_seeded_names);
        $crate::provider_conformance!(@case $make, health_is_ok);
        $crate::provider_conformance!(@case $make, put_keeps_previous_versions);
        $crate::provider_conformance!(@case $make, concurrent_puts_get_distinct_versions);
        $crate::provider_conformance!(@case $make, debug_never_shows_values);
    };
    (@case $make:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (_guard, p) = $crate::testing::CaseSetup::split($make);
            $crate::testing::$case(p).await;
        }
    };
}

/// What a conformance factory answers: a provider, or `(guard, provider)` where the guard
/// (a test server, a temporary directory) lives until the case ends.
pub trait CaseSetup {
    /// The guard and the provider.
    fn split(self) -> (Box<dyn std::any::Any + Send>, Arc<dyn Provider>);
}

impl<P: Provider + 'static> CaseSetup for Arc<P> {
    fn split(self) -> (Box<dyn std::any::Any + Send>, Arc<dyn Provider>) {
        (Box::new(()), self)
    }
}

impl<G: Send + 'static, P: Provider + 'static> CaseSetup for (G, Arc<P>) {
    fn split(self) -> (Box<dyn std::any::Any + Send>, Arc<dyn Provider>) {
        (Box::new(self.0), self.1)
    }
}

const OK: u8 = 0;
const TRANSIENT: u8 = 1;
const DENIED: u8 = 2;

/// A provider that passes calls to another one, or fails them on demand.
#[derive(Debug)]
pub struct Switch<P> {
    inner: P,
    mode: AtomicU8,
    calls: AtomicUsize,
}

impl<P: Provider> Switch<P> {
    /// Pass every call to `inner`.
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            mode: AtomicU8::new(OK),
            calls: AtomicUsize::new(0),
        }
    }

    /// Fail every call with a transient backend error from now on.
    pub fn fail_transiently(&self) {
        self.mode.store(TRANSIENT, Ordering::SeqCst);
    }

    /// Fail every call with [`Error::Denied`] from now on.
    pub fn deny(&self) {
        self.mode.store(DENIED, Ordering::SeqCst);
    }

    /// Pass calls again.
    pub fn heal(&self) {
        self.mode.store(OK, Ordering::SeqCst);
    }

    /// `get` calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn check(&self) -> Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            TRANSIENT => Err(Error::backend(self.inner.name(), "switched off", true)),
            DENIED => Err(Error::denied(self.inner.name(), "HTTP 403")),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl<P: Provider> Provider for Switch<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.get(name, version).await
    }
    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        self.check()?;
        self.inner.put(name, value).await
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    async fn list(&self) -> Result<Vec<SecretName>> {
        self.check()?;
        self.inner.list().await
    }
    async fn health(&self) -> Result<()> {
        self.check()?;
        self.inner.health().await
    }
}
