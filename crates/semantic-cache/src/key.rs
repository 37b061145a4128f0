//! Keys: who owns an entry (tenant, namespace), what must match exactly (model, context) and
//! the prompt whose meaning is compared. Pure logic, no I/O.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// Longest tenant, namespace, model or tag accepted, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

fn check_identifier(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidIdentifier {
            what,
            reason: "it is empty",
        });
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(Error::InvalidIdentifier {
            what,
            reason: "it is longer than 256 bytes",
        });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Check and wrap the identifier: any UTF-8 text of 1 to 256 bytes. It is
            /// encoded before it goes into a storage key, so no value can collide with
            /// or escape into another one.
            ///
            /// # Errors
            /// [`Error::InvalidIdentifier`] when it is empty or too long.
            pub fn new(value: impl AsRef<str>) -> Result<Self> {
                let value = value.as_ref();
                check_identifier($what, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The identifier as a `metrics` label value, without copying the text.
            #[allow(dead_code)]
            pub(crate) fn metric_label(&self) -> metrics::SharedString {
                metrics::SharedString::from_shared(Arc::clone(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }
    };
}

identifier!(
    /// The tenant that owns an entry. Every lookup, insert and invalidation names one tenant
    /// and only ever touches that tenant's entries.
    Tenant,
    "tenant"
);
identifier!(
    /// A namespace inside a tenant (`"chat"`, `"rag-context"`, `"user-context"`): it carries
    /// its own TTL and similarity threshold.
    Namespace,
    "namespace"
);
identifier!(
    /// A tag on an entry (`"user:42"`, `"doc:7"`), for invalidating every entry that depends
    /// on one piece of data.
    Tag,
    "tag"
);

/// Tenant and namespace: the unit of isolation. The index is partitioned by it (and by the
/// exact part of the key), so no lookup can return an entry of another partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Partition {
    /// The owning tenant.
    pub tenant: Tenant,
    /// The namespace inside the tenant.
    pub namespace: Namespace,
}

impl Partition {
    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A partition from a tenant and a namespace.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] when either is empty or longer than 256 bytes.
    pub fn new(tenant: impl AsRef<str>, namespace: impl AsRef<str>) -> Result<Self> {
        Ok(Self {
            tenant: Tenant::new(tenant)?,
            namespace: Namespace::new(namespace)?,
        })
    }
}

/// A 128-bit digest shown as 32 hex digits.
macro_rules! digest {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// From raw bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The 32 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                let mut out = String::with_capacity(32);
                for byte in self.0 {
                    out.push(char::from(HEX[usize::from(byte >> 4)]));
                    out.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
                out
            }

            /// Parse 32 hex digits (as printed by [`to_hex`](Self::to_hex)).
            pub fn from_hex(hex: &str) -> Option<Self> {
                let bytes = hex.as_bytes();
                if bytes.len() != 32 {
                    return None;
                }
                let mut out = [0u8; 16];
                for (i, pair) in bytes.chunks_exact(2).enumerate() {
                    out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
                }
                Some(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 32 hex digits"))
            }
        }
    };
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

digest!(
    /// A digest of everything that must be identical for a cached answer to apply, besides
    /// tenant, namespace and model: system prompt, conversation so far, tool list, sampling
    /// parameters. Built with [`ContextHasher`]; [`ContextHash::EMPTY`] when there is none.
    ContextHash
);
digest!(
    /// The exact part of a key as one digest: tenant, namespace, model and context. The
    /// similarity index keeps one partition per scope.
    ScopeId
);
digest!(
    /// The id of an entry: a digest of its scope and its normalised prompt. The same prompt
    /// (after normalisation) in the same scope always has the same id, which is what the
    /// exact-match fast path looks up.
    EntryId
);

impl ContextHash {
    /// The context of a call with no system prompt, history, tools or parameters.
    pub const EMPTY: Self = Self([0; 16]);
}

fn truncate(digest: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// First byte of a scope digest's input, so it can never equal an entry digest's input.
const SCOPE_DIGEST: u8 = 1;
/// First byte of an entry digest's input.
const ENTRY_DIGEST: u8 = 2;

/// One length-prefixed field of a digest whose field order is fixed.
fn feed_field(hasher: &mut Sha256, value: &[u8]) {
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value);
}

fn feed(hasher: &mut Sha256, label: &str, value: &[u8]) {
    // Length-prefixed fields: ("ab", "c") and ("a", "bc") never hash alike.
    hasher.update((label.len() as u64).to_le_bytes());
    hasher.update(label.as_bytes());
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value);
}

/// Builds a [`ContextHash`] from the parts of a call that must match exactly. The order of
/// calls matters (a conversation is a sequence); fields are length-prefixed, so no two
/// different contexts can be made to collide by moving bytes between fields.
///
/// ```
/// use palisade_semantic_cache::ContextHasher;
/// let a = ContextHasher::new().system("You are terse.").param("temperature", "0").finish();
/// let b = ContextHasher::new().system("You are verbose.").param("temperature", "0").finish();
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ContextHasher {
    hasher: Sha256,
}

impl ContextHasher {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// The system prompt.
    #[must_use]
    pub fn system(self, text: &str) -> Self {
        self.field("system", text.as_bytes())
    }

    /// One message of the conversation so far (role and content).
    #[must_use]
    pub fn message(mut self, role: &str, content: &str) -> Self {
        feed(&mut self.hasher, "message-role", role.as_bytes());
        self.field("message-content", content.as_bytes())
    }

    /// A tool or function the model may call (its name and schema, as text).
    #[must_use]
    pub fn tool(self, definition: &str) -> Self {
        self.field("tool", definition.as_bytes())
    }

    /// A generation parameter (`temperature`, `max_tokens`, …).
    #[must_use]
    pub fn param(mut self, name: &str, value: &str) -> Self {
        feed(&mut self.hasher, "param-name", name.as_bytes());
        self.field("param-value", value.as_bytes())
    }

    /// Any other labelled bytes that must match.
    #[must_use]
    pub fn field(mut self, label: &str, value: &[u8]) -> Self {
        feed(&mut self.hasher, label, value);
        self
    }

    /// The digest.
    pub fn finish(self) -> ContextHash {
        ContextHash(truncate(&self.hasher.finalize()))
    }
}

/// The exact part of a key: tenant, namespace, model and context.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Scope {
    /// Tenant and namespace.
    pub partition: Partition,
    /// The model the answer came from (`"gpt-4o-mini"`); another model is another scope.
    pub model: Arc<str>,
    /// Digest of the rest of the context.
    pub context: ContextHash,
}

impl Scope {
    /// The scope's digest.
    pub fn id(&self) -> ScopeId {
        // Fixed field order and length prefixes instead of `feed`'s labels: the digest is on
        // every lookup's path, and the shorter input saves a SHA-256 block.
        let mut hasher = Sha256::new();
        hasher.update([SCOPE_DIGEST]);
        feed_field(&mut hasher, self.partition.tenant.as_str().as_bytes());
        feed_field(&mut hasher, self.partition.namespace.as_str().as_bytes());
        feed_field(&mut hasher, self.model.as_bytes());
        hasher.update(self.context.0);
        ScopeId(truncate(&hasher.finalize()))
    }
}

/// A lookup key: the exact part ([`Scope`]) and the prompt compared by meaning.
///
/// ```
/// use palisade_semantic_cache::{CacheKey, ContextHasher};
/// let key = CacheKey::new("acme", "chat", "gpt-4o-mini", "How do I reset my password?")?
///     .with_context(ContextHasher::new().system("You are a support agent.").finish());
/// assert_eq!(key.scope().partition.tenant.as_str(), "acme");
/// # Ok::<(), palisade_semantic_cache::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    scope: Scope,
    prompt: String,
}

impl CacheKey {
    /// A key with an empty context. The prompt is checked when the key is used (against
    /// the cache's size limit), not here.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] for an empty or too long tenant, namespace or model.
    pub fn new(
        tenant: impl AsRef<str>,
        namespace: impl AsRef<str>,
        model: impl AsRef<str>,
        prompt: impl Into<String>,
    ) -> Result<Self> {
        Self::in_partition(Partition::new(tenant, namespace)?, model, prompt)
    }

    /// A key in an existing partition.
    ///
    /// # Errors
    /// [`Error::InvalidIdentifier`] for an empty or too long model.
    pub fn in_partition(
        partition: Partition,
        model: impl AsRef<str>,
        prompt: impl Into<String>,
    ) -> Result<Self> {
        let model = model.as_ref();
        check_identifier("model", model)?;
        Ok(Self {
            scope: Scope {
                partition,
                model: Arc::from(model),
                context: ContextHash::EMPTY,
            },
            prompt: prompt.into(),
        })
    }

    /// The same key with a context digest (see [`ContextHasher`]).
    #[must_use]
    pub fn with_context(mut self, context: ContextHash) -> Self {
        self.scope.context = context;
        self
    }

    /// The exact part.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Tenant and namespace.
    pub fn partition(&self) -> &Partition {
        &self.scope.partition
    }

    /// The prompt as given.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }
}

/// Normalise a prompt for the exact-match path: Unicode NFC (canonical equivalents are one
/// key), full-width and half-width forms and the `ﬁ`-style ligatures folded to their plain
/// letters, lower case, runs of whitespace (any Unicode space) collapsed to one space,
/// surrounding whitespace and trailing `?`, `!`, `.` removed. `"  What is  RUST? "`,
/// `"ＷＨＡＴ　ＩＳ　ＲＵＳＴ？"` and `"what is rust"` normalise alike.
///
/// Other compatibility characters are kept as they are: full NFKC would make `"2²"` the
/// exact key of `"22"` and `"10⁶"` that of `"106"`, and exact hits skip the guard.
/// Superscripts, subscripts, fractions, circled digits and the like therefore miss the
/// exact path and meet the guard on the semantic one.
///
/// # Errors
/// [`Error::PromptTooLarge`] when `prompt` has more than `max_bytes` bytes (checked before
/// any work), [`Error::EmptyPrompt`] when nothing is left.
pub fn normalize_prompt(prompt: &str, max_bytes: usize) -> Result<String> {
    if prompt.len() > max_bytes {
        return Err(Error::PromptTooLarge {
            len: prompt.len(),
            max: max_bytes,
        });
    }
    // ASCII text is its own normal form: skip the Unicode pass (the common case, and the
    // exact-match fast path's main cost).
    let out = if prompt.is_ascii() {
        collapse(prompt.chars().map(|c| c.to_ascii_lowercase()), prompt.len())
    } else {
        let folded: String = prompt.chars().flat_map(fold_width).collect();
        collapse(folded.nfc().flat_map(char::to_lowercase), prompt.len())
    };
    if out.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    Ok(out)
}

/// Fold the compatibility characters that only change how text looks, never what it says:
/// the Halfwidth and Fullwidth Forms block (`Ａ` → `A`, `？` → `?`, half-width katakana) and
/// the Latin ligatures `ﬀ`…`ﬆ`. Everything else passes through unchanged.
fn fold_width(c: char) -> FoldWidth {
    if matches!(u32::from(c), 0xFF00..=0xFFEF | 0xFB00..=0xFB06) {
        FoldWidth::Many(std::iter::once(c).nfkc().collect::<Vec<_>>().into_iter())
    } else {
        FoldWidth::One(Some(c))
    }
}

enum FoldWidth {
    One(Option<char>),
    Many(std::vec::IntoIter<char>),
}

impl Iterator for FoldWidth {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        match self {
            Self::One(c) => c.take(),
            Self::Many(chars) => chars.next(),
        }
    }
}

/// Collapse whitespace runs to one space and drop surrounding whitespace and trailing
/// `?`, `!`, `.` (generic so each branch of [`normalize_prompt`] is monomorphised, not boxed).
fn collapse(chars: impl Iterator<Item = char>, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    let mut pending_space = false;
    for c in chars {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    while out.ends_with(['?', '!', '.', ' ']) {
        out.pop();
    }
    out
}

/// The id of the entry for a normalised prompt in a scope.
pub fn entry_id(scope: ScopeId, normalized_prompt: &str) -> EntryId {
    let mut hasher = Sha256::new();
    hasher.update([ENTRY_DIGEST]);
    hasher.update(scope.0);
    feed_field(&mut hasher, normalized_prompt.as_bytes());
    EntryId(truncate(&hasher.finalize()))
}

/// Encode arbitrary text for use inside a storage key: bytes outside `[A-Za-z0-9_-]` become
/// `%XX`, so no value can contain a separator, a hash-tag brace or a glob character.
pub fn encode_key_part(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalization_folds_case_space_and_trailing_punctuation() {
        assert_eq!(
            normalize_prompt("  What is  RUST? ", 100).unwrap(),
            "what is rust"
        );
        assert_eq!(
            normalize_prompt("what is rust", 100).unwrap(),
            "what is rust"
        );
        assert_eq!(
            normalize_prompt("Ｆｕｌｌ\u{3000}width", 100).unwrap(),
            "full width"
        );
    }

    #[test]
    fn bad_prompts_are_typed_errors() {
        assert!(matches!(normalize_prompt("", 10), Err(Error::EmptyPrompt)));
        assert!(matches!(
            normalize_prompt("  ?! ", 10),
            Err(Error::EmptyPrompt)
        ));
        let big = "a".repeat(1 << 20);
        assert!(matches!(
            normalize_prompt(&big, 64 * 1024),
            Err(Error::PromptTooLarge {
                len: 1_048_576,
                max: 65_536
            })
        ));
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(Tenant::new("").is_err());
        assert!(Tenant::new("x".repeat(257)).is_err());
        assert!(Namespace::new("chat").is_ok());
        assert!(CacheKey::new("t", "n", "", "p").is_err());
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let id = entry_id(ScopeId([7; 16]), "hello");
        assert_eq!(EntryId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(EntryId::from_hex("zz"), None);
    }

    proptest! {
        #[test]
        fn different_scopes_never_share_ids(t1 in "[a-c:{}]{1,4}", t2 in "[a-c:{}]{1,4}", ns in "[a-c]{1,3}", p in "[a-z ]{1,20}") {
            prop_assume!(t1 != t2);
            let s1 = Scope { partition: Partition::new(&t1, &ns).unwrap(), model: "m".into(), context: ContextHash::EMPTY };
            let s2 = Scope { partition: Partition::new(&t2, &ns).unwrap(), model: "m".into(), context: ContextHash::EMPTY };
            prop_assert_ne!(s1.id(), s2.id());
            if let Ok(n) = normalize_prompt(&p, 1000) {
                prop_assert_ne!(entry_id(s1.id(), &n), entry_id(s2.id(), &n));
            }
        }

        #[test]
        fn key_encoding_is_injective_and_safe(a in ".{0,12}", b in ".{0,12}") {
            let ea = encode_key_part(&a);
            prop_assert!(ea.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'%'));
            if a != b {
                prop_assert_ne!(ea, encode_key_part(&b));
            }
        }

        #[test]
        fn normalization_is_idempotent(p in ".{1,40}") {
            if let Ok(n) = normalize_prompt(&p, 1000) {
                prop_assert_eq!(normalize_prompt(&n, 1000).unwrap(), n);
            }
        }
    }
}
