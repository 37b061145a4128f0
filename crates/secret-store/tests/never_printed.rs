//! "Never printed": a secret loaded, then formatted with `{:?}`, logged at every level
//! (through the redacting writer into `palisade_testkit::LogCapture`) and serialised through
//! every public type that serialises, never appears in what was captured or produced.

use std::time::Duration;

use palisade_secret_store::redact::Redactor;
use palisade_secret_store::{
    ExposeSecret, Keyring, MasterKey, MemoryProvider, Provider, SecretName, Secrets,
};
use palisade_testkit::LogCapture;
use proptest::prelude::*;
use tracing::Level;

// `Secret` and `SecretString` implement neither `Display` nor `Serialize`: if they did, the
// calls below would be ambiguous and this file would not compile.
trait AmbiguousIfDisplay<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfDisplay<()> for T {}
struct IsDisplay;
impl<T: ?Sized + std::fmt::Display> AmbiguousIfDisplay<IsDisplay> for T {}
trait AmbiguousIfSerialize<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfSerialize<()> for T {}
struct IsSerialize;
impl<T: ?Sized + serde::Serialize> AmbiguousIfSerialize<IsSerialize> for T {}

#[test]
fn values_have_no_display_and_no_serialize() {
    <palisade_secret_store::Secret as AmbiguousIfDisplay<_>>::check();
    <palisade_secret_store::Secret as AmbiguousIfSerialize<_>>::check();
    <palisade_secret_store::SecretString as AmbiguousIfDisplay<_>>::check();
    <palisade_secret_store::SecretString as AmbiguousIfSerialize<_>>::check();
    <palisade_secret_store::Fetched as AmbiguousIfDisplay<_>>::check();
    <palisade_secret_store::Fetched as AmbiguousIfSerialize<_>>::check();
    <MasterKey as AmbiguousIfDisplay<_>>::check();
    <MasterKey as AmbiguousIfSerialize<_>>::check();
}

fn value() -> impl Strategy<Value = String> {
    // A distinctive head so the value cannot occur in the fixed text around it by chance,
    // then anything printable, quotes, backslashes, newlines and non-ASCII.
    ("[A-Za-z0-9]{6}", "(\\PC|\n|\"|\\\\|'){0,24}").prop_map(|(a, b)| format!("{a}{b}"))
}

fn check(haystack: &str, value: &str, what: &str) -> Result<(), TestCaseError> {
    let debug = format!("{value:?}");
    let json = serde_json::to_string(value).unwrap();
    for spelling in [value, &debug[1..debug.len() - 1], &json[1..json.len() - 1]] {
        prop_assert!(
            !haystack.contains(spelling),
            "{what} shows the value {spelling:?}:\n{haystack}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_loaded_secret_never_appears_in_logs_debug_or_serialised_output(first in value(), second in value()) {
        prop_assume!(!first.contains(&second) && !second.contains(&first));
        let logs = LogCapture::new();
        let redactor = Redactor::new();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(redactor.make_writer(logs.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("snapshot");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut printed = Vec::<String>::new();
        rt.block_on(async {
            let provider = std::sync::Arc::new(MemoryProvider::new());
            let name = SecretName::new("app/token").unwrap();
            provider.insert(&name, first.clone().into(), None).unwrap();
            let key = MasterKey::generate("k1").unwrap();
            let secrets = Secrets::builder()
                .shared_provider(provider.clone())
                .redactor(redactor.clone())
                .snapshot(&snapshot, Keyring::new(key.clone()))
                .ttl(Duration::from_secs(60))
                .build()
                .unwrap();
            let mut audit = secrets.audit_events();
            let rotations = secrets.rotations();
            let secret = secrets.get("app/token").await.unwrap();
            prop_assert_eq!(secret.expose_secret(), first.as_str());
            let rotated = secrets.rotate("app/token", second.clone().into()).await.unwrap();
            let fetched = provider.get(&name, None).await.unwrap().unwrap();
            let health = secrets.health().await;

            for level in [Level::TRACE, Level::DEBUG, Level::INFO, Level::WARN, Level::ERROR] {
                for v in [secret.expose_secret(), rotated.expose_secret()] {
                    let span = tracing::span!(Level::ERROR, "request", token = v);
                    let _e = span.enter();
                    match level {
                        Level::TRACE => tracing::trace!(value = v, debug = ?v, "message {v} {v:?}"),
                        Level::DEBUG => tracing::debug!(value = v, debug = ?v, "message {v} {v:?}"),
                        Level::INFO => tracing::info!(value = v, debug = ?v, "message {v} {v:?}"),
                        Level::WARN => tracing::warn!(value = v, debug = ?v, "message {v} {v:?}"),
                        _ => tracing::error!(value = v, debug = ?v, "message {v} {v:?}"),
                    }
                }
                tracing::event!(Level::ERROR, secret = ?secret, fetched = ?fetched, "handles");
            }
            let events: Vec<_> = std::iter::from_fn(|| audit.try_recv().ok()).collect();
            prop_assert!(!events.is_empty());
            printed.extend([
                format!("{secret:?}"), format!("{rotated:?}"), format!("{secrets:?}"),
                format!("{fetched:?}"), format!("{provider:?}"), format!("{redactor:?}"),
                format!("{key:?}"), format!("{:?}", Keyring::new(key.clone())),
                format!("{health:?}"), format!("{events:?}"), format!("{:?}", *rotations.borrow()),
                format!("{:?}", secrets.config()), format!("{:?}", secrets.previous("app/token").await),
                format!("{:?}", secrets.get("missing").await),
                serde_json::to_string(&health).unwrap(),
                serde_json::to_string(&events).unwrap(),
                serde_json::to_string(&*rotations.borrow()).unwrap(),
                serde_json::to_string(secrets.config()).unwrap(),
                serde_json::to_string(&name).unwrap(),
                String::from_utf8_lossy(&std::fs::read(&snapshot).unwrap()).into_owned(),
            ]);
            Ok(())
        })?;
        let captured = logs.text();
        prop_assert!(captured.contains("[REDACTED]"), "the values were logged and scrubbed");
        for v in [&first, &second] {
            check(&captured, v, "the log")?;
            for p in &printed {
                check(p, v, "formatted or serialised output")?;
            }
        }
    }
}
