//! Redaction by value: every loaded secret value (and API-key-shaped text) is scrubbed from
//! log output, whatever field, message or span it appears in. The types live here only, not
//! also at the crate root (`palisade_secret_store::redact::Redactor`).
//!
//! ```
//! use palisade_secret_store::redact::Redactor;
//! use palisade_testkit::LogCapture;
//!
//! let redactor = Redactor::new();
//! redactor.add_value("hunter2-db-password");
//! let logs = LogCapture::new();
//! let subscriber = tracing_subscriber::fmt()
//!     .with_ansi(false)
//!     .with_writer(redactor.make_writer(logs.clone()))
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::error!(dsn = "postgres://app:hunter2-db-password@db/app", "connect failed");
//!     tracing::warn!("calling with sk-live0123456789abcdefghij");
//! });
//! assert!(!logs.contains("hunter2-db-password"));
//! assert!(!logs.contains("sk-live0123456789abcdefghij"));
//! assert!(logs.contains("postgres://app:[REDACTED]@db/app"));
//! ```

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::fmt::MakeWriter;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What replaces a scrubbed value.
pub const REDACTED: &str = "[REDACTED]";

/// Values shorter than this many bytes are not scrubbed by value (they would blank out
/// ordinary words); API-key patterns still apply.
pub const MIN_VALUE_LEN: usize = 4;

/// Values kept for scrubbing at most (the oldest are dropped first).
pub const MAX_VALUES: usize = 4096;

/// Built-in patterns for API-key-shaped strings: OpenAI/Anthropic `sk-…`, Stripe-style and
/// Palisade `pk_live_…`/`sk_test_…`, AWS access key ids, GitHub, Slack and Google API keys,
/// JSON Web Tokens and `Bearer` credentials.
pub const DEFAULT_PATTERNS: &[&str] = &[
    r"sk-[A-Za-z0-9_\-]{16,}",
    r"(?:pk|sk|rk)_(?:live|test)_[A-Za-z0-9_]{8,}",
    r"AKIA[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{30,}",
    r"xox[abprs]-[A-Za-z0-9\-]{10,}",
    r"AIza[0-9A-Za-z_\-]{35}",
    r"eyJ[A-Za-z0-9_\-]{6,}\.eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}",
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{12,}",
];

struct Matcher {
    values: Option<AhoCorasick>,
    patterns: Option<regex::bytes::Regex>,
}

struct Inner {
    values: Mutex<Vec<Zeroizing<String>>>,
    matcher: ArcSwap<Matcher>,
    patterns: Option<regex::bytes::Regex>,
}

/// Scrubs known secret values and API-key-shaped strings from text. Clones share one set of
/// values; [`Secrets`](crate::Secrets) adds every value it loads to its redactor.
///
/// Each value is also matched in the spellings a log line gives it: Rust `{:?}` escaping and
/// JSON escaping (a value with a quote or a newline). Matching is one Aho-Corasick pass over
/// the line plus one regex pass for the patterns.
#[derive(Clone)]
pub struct Redactor(Arc<Inner>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.0.values.lock().len())
            .field("patterns", &self.0.patterns.is_some())
            .finish()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    /// A redactor with the [`DEFAULT_PATTERNS`] and no values yet.
    pub fn new() -> Self {
        Self::with_patterns(DEFAULT_PATTERNS.iter().copied())
            .expect("the built-in patterns compile")
    }

    /// A redactor with these patterns (regular expressions, `regex` crate syntax) instead of
    /// the defaults; pass none to scrub known values only.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a pattern that does not compile.
    pub fn with_patterns<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let patterns: Vec<&str> = patterns.into_iter().collect();
        let regex = if patterns.is_empty() {
            None
        } else {
            let joined = patterns
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            Some(
                regex::bytes::Regex::new(&joined)
                    .map_err(|e| Error::InvalidConfig(format!("bad redaction pattern: {e}")))?,
            )
        };
        Ok(Self(Arc::new(Inner {
            values: Mutex::default(),
            matcher: ArcSwap::from_pointee(Matcher {
                values: None,
                patterns: regex.clone(),
            }),
            patterns: regex,
        })))
    }

    /// Scrub `value` from now on (values shorter than [`MIN_VALUE_LEN`] bytes are ignored).
    pub fn add_value(&self, value: &str) {
        self.add(value);
    }

    /// Scrub this secret's value from now on.
    pub fn add_secret(&self, secret: &impl ExposeSecret<str>) {
        self.add(secret.expose_secret());
    }

    /// Scrub this value from now on.
    pub fn add_secret_string(&self, secret: &SecretString) {
        self.add(secret.expose_secret());
    }

    fn add(&self, value: &str) {
        if value.len() < MIN_VALUE_LEN {
            return;
        }
        let mut values = self.0.values.lock();
        if values.iter().any(|v| v.as_str() == value) {
            return;
        }
        let mut spellings = vec![Zeroizing::new(value.to_owned())];
        let unquote = |s: Zeroizing<String>| {
            Zeroizing::new(s.get(1..s.len().saturating_sub(1)).unwrap_or("").to_owned())
        };
        // `{:?}` (escapes grapheme extenders anywhere), `str::escape_debug` (only at the
        // start) and JSON each spell some values differently.
        let debug = unquote(Zeroizing::new(format!("{value:?}")));
        let escape_debug = Zeroizing::new(value.escape_debug().to_string());
        let json = unquote(Zeroizing::new(
            serde_json::to_string(value).unwrap_or_default(),
        ));
        for s in [debug, escape_debug, json] {
            if s.len() >= MIN_VALUE_LEN && !spellings.iter().any(|v| **v == *s) {
                spellings.push(s);
            }
        }
        values.extend(spellings);
        let excess = values.len().saturating_sub(MAX_VALUES);
        values.drain(..excess);
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(values.iter().map(|v| v.as_bytes()))
            .ok();
        self.0.matcher.store(Arc::new(Matcher {
            values: ac,
            patterns: self.0.patterns.clone(),
        }));
    }

    /// How many spellings of values are scrubbed.
    pub fn len(&self) -> usize {
        self.0.values.lock().len()
    }

    /// Whether no value is scrubbed yet (patterns still apply).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `text` with every known value and pattern match replaced by [`REDACTED`].
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.scrub_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
        }
    }

    /// [`scrub`](Self::scrub) for bytes (log output need not be UTF-8).
    pub fn scrub_bytes<'t>(&self, text: &'t [u8]) -> Cow<'t, [u8]> {
        let m = self.0.matcher.load();
        let mut out: Cow<'t, [u8]> = Cow::Borrowed(text);
        if let Some(ac) = &m.values
            && ac.is_match(&*out)
        {
            let replaced = ac.replace_all_bytes(&out, &vec![REDACTED; ac.patterns_len()]);
            out = Cow::Owned(replaced);
        }
        if let Some(re) = &m.patterns
            && re.is_match(&out)
        {
            let replaced = re.replace_all(&out, REDACTED.as_bytes()).into_owned();
            out = Cow::Owned(replaced);
        }
        out
    }

    /// Wrap a `tracing-subscriber` writer so that everything written through it is scrubbed
    /// first (one event is buffered, scrubbed and written whole).
    pub fn make_writer<M>(&self, inner: M) -> RedactingMakeWriter<M> {
        RedactingMakeWriter {
            redactor: self.clone(),
            inner,
        }
    }
}

/// A [`MakeWriter`] that scrubs what it writes ([`Redactor::make_writer`]).
#[derive(Clone, Debug)]
pub struct RedactingMakeWriter<M> {
    redactor: Redactor,
    inner: M,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            redactor: self.redactor.clone(),
            inner: self.inner.make_writer(),
            buffer: Zeroizing::new(Vec::new()),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            redactor: self.redactor.clone(),
            inner: self.inner.make_writer_for(meta),
            buffer: Zeroizing::new(Vec::new()),
        }
    }
}

/// The writer of one event: buffers, then scrubs and writes on flush or drop.
#[derive(Debug)]
pub struct RedactingWriter<W: io::Write> {
    redactor: Redactor,
    inner: W,
    buffer: Zeroizing<Vec<u8>>,
}

impl<W: io::Write> RedactingWriter<W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let clean = Zeroizing::new(self.redactor.scrub_bytes(&self.buffer).into_owned());
        self.buffer.clear();
        self.inner.write_all(&clean)
    }
}

impl<W: io::Write> io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

impl<W: io::Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_values_their_escaped_spellings_and_patterns() {
        let r = Redactor::new();
        r.add_value("pa\"ss\nword-1");
        r.add_value("abc"); // too short: ignored
        assert_eq!(r.scrub("x pa\"ss\nword-1 y"), "x [REDACTED] y");
        assert_eq!(
            r.scrub(&format!("{:?}", "pa\"ss\nword-1")),
            "\"[REDACTED]\""
        );
        assert_eq!(
            r.scrub(&serde_json::to_string("pa\"ss\nword-1").unwrap()),
            "\"[REDACTED]\""
        );
        assert_eq!(r.scrub("abc"), "abc");
        assert_eq!(r.scrub("key=sk-abcdefghijklmnop0123"), "key=[REDACTED]");
        assert_eq!(r.scrub("AKIAABCDEFGHIJKLMNOP!"), "[REDACTED]!");
        assert_eq!(
            r.scrub("Authorization: Bearer abc.def-ghi_jkl"),
            "Authorization: [REDACTED]"
        );
        assert!(matches!(r.scrub("nothing here"), Cow::Borrowed(_)));
        assert!(Redactor::with_patterns(["("]).is_err());
        let plain = Redactor::with_patterns([]).unwrap();
        assert_eq!(
            plain.scrub("sk-abcdefghijklmnop0123"),
            "sk-abcdefghijklmnop0123"
        );
    }
}
