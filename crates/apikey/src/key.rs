//! The key format, pure: generating, printing and parsing `{prefix}_{env}_{body}` keys.
//!
//! ```text
//! pk_live_7Hq2ZxK0aB9cDe4F01s8Vn3QpL6tR2mY0wXcJ5kG7hA1zB9dE2fN4qR8kT3mZ
//! └┬┘ └┬─┘ └──────┬───────┘└┬┘└───────────── secret ─────────────┘└─┬──┘
//! prefix env    key id (16)  hash version (2)   32 base62 chars     CRC32 (6)
//! ```
//!
//! Every field of the body has a fixed length, so parsing is a matter of slicing:
//!
//! | field | length | alphabet | what |
//! |---|---|---|---|
//! | prefix | 1–16 | `a-z 0-9` | readable, chosen by the issuer (`pk`, `acme`) |
//! | env | 4 | `live` / `test` | which environment the key belongs to |
//! | key id | 16 | base62 | public: the lookup key (its first 6 characters name the rotation family) |
//! | hash version | 2 | base62 | the pepper version the key was issued under |
//! | secret | 32 | base62 | 190 bits from the OS random number generator |
//! | checksum | 6 | base62 | CRC32 of everything before it |
//!
//! The checksum lets a server (and a secret scanner) reject a mistyped or made-up key
//! without a store lookup, as GitHub's token format does. It is not a security measure:
//! the secret is.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// The base62 alphabet: digits, upper case, lower case.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of a key id.
pub const KEY_ID_LEN: usize = 16;
/// Length of the family part at the start of a key id.
pub const FAMILY_LEN: usize = 6;
const VERSION_LEN: usize = 2;
/// Length of the secret part, in base62 characters (190 bits).
pub const SECRET_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const BODY_LEN: usize = KEY_ID_LEN + VERSION_LEN + SECRET_LEN + CHECKSUM_LEN;
/// Longest prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Largest hash (pepper) version a key can carry: two base62 characters.
pub const MAX_HASH_VERSION: u16 = 62 * 62 - 1;
/// Longest well-formed key: anything longer is rejected before it is even scanned.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + 1 + 4 + 1 + BODY_LEN;

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn base62_value(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'A'..=b'Z' => Some(u32::from(b - b'A') + 10),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 36),
        _ => None,
    }
}

/// `n` in exactly `N` base62 digits (most significant first). `n` must fit.
fn base62_fixed<const N: usize>(mut n: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn base62_parse(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(62)?
            .checked_add(u64::from(base62_value(d)?))
    })
}

/// Fill `out` with uniformly random base62 characters from the OS random number generator
/// (rejection sampling: bytes at or above 248 are drawn again, so there is no modulo bias).
pub(crate) fn random_base62(out: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < out.len() {
        getrandom::fill(&mut buf).map_err(|e| {
            Error::InvalidConfig(format!("the OS random number generator failed: {e}"))
        })?;
        for &b in &buf {
            if filled == out.len() {
                break;
            }
            if b < 248 {
                out[filled] = ALPHABET[usize::from(b % 62)];
                filled += 1;
            }
        }
    }
    buf.zeroize();
    Ok(())
}

/// The CRC32 checksum of `text`, as the 6 base62 characters a key ends with.
pub fn checksum(text: &[u8]) -> [u8; CHECKSUM_LEN] {
    base62_fixed::<CHECKSUM_LEN>(u64::from(crc32fast::hash(text)))
}

/// The environment a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Env {
    /// Production (`live`).
    Live,
    /// Testing (`test`).
    Test,
}

impl Env {
    /// `live` or `test`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        match b {
            b"live" => Some(Self::Live),
            b"test" => Some(Self::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The public id of a key: 16 base62 characters, the part of the key used for lookup. Safe
/// to log, to show in dashboards and to key a rate limiter on; it proves nothing by itself.
///
/// Its first 6 characters name the key's rotation *family*: a key made by rotating another
/// inherits them, so that in Redis a key and its successors share one hash tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only base62 bytes are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The family part (the first 6 characters).
    pub fn family(&self) -> &str {
        &self.as_str()[..FAMILY_LEN]
    }

    /// A fresh random id; in `family` when given (the first 6 characters of another id).
    pub(crate) fn random(family: Option<&KeyId>) -> Result<Self> {
        let mut id = [0u8; KEY_ID_LEN];
        random_base62(&mut id)?;
        if let Some(f) = family {
            id[..FAMILY_LEN].copy_from_slice(&f.0[..FAMILY_LEN]);
        }
        Ok(Self(id))
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let arr: [u8; KEY_ID_LEN] = b.try_into().ok()?;
        arr.iter().all(|&c| is_base62(c)).then_some(Self(arr))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_bytes(s.as_bytes()).ok_or_else(|| {
            Error::InvalidConfig(format!("a key id is {KEY_ID_LEN} base62 characters"))
        })
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A readable key prefix (`pk`, `acme`): 1 to 16 characters of `a-z` and `0-9`, so it
/// never contains the `_` that separates the fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix(String);

impl Prefix {
    /// A prefix, checked.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it is empty, longer than 16 characters or holds
    /// anything but `a-z` and `0-9`.
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let p = prefix.into();
        if p.is_empty()
            || p.len() > MAX_PREFIX_LEN
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::InvalidConfig(format!(
                "a key prefix is 1 to {MAX_PREFIX_LEN} characters of a-z and 0-9, not {p:?}"
            )));
        }
        Ok(Self(p))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Prefix {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> Self {
        p.0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full API key in plain text, handed out exactly once (by
/// [`ApiKeys::create`](crate::ApiKeys::create) and [`rotate`](crate::ApiKeys::rotate)).
///
/// It never prints: `Debug` shows `PlaintextKey([REDACTED])`, there is no `Display` and no
/// `Serialize`, and the text is zeroed when the value drops. Read it with
/// [`expose_secret`](Self::expose_secret) to show it to its owner, once.
pub struct PlaintextKey(SecretString);

impl PlaintextKey {
    pub(crate) fn new(text: String) -> Self {
        Self(SecretString::from(text))
    }

    /// The key's text. Show it to the key's owner once; never log or store it.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl ExposeSecret<str> for PlaintextKey {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaintextKey([REDACTED])")
    }
}

/// Why a text is not a key, found without any store lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FormatError {
    /// Not of the shape `{prefix}_{env}_{56 base62 characters}`, or a prefix this service
    /// does not issue.
    Malformed,
    /// The right shape, but the checksum does not match: a typo or a made-up key.
    BadChecksum,
}

/// A key taken apart (borrowed from the text it was parsed from). The secret part is
/// reachable only inside the crate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    prefix: &'a str,
    env: Env,
    id: KeyId,
    version: u16,
    secret: &'a [u8],
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("prefix", &self.prefix)
            .field("env", &self.env)
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<'a> ParsedKey<'a> {
    /// Parse `text` (any input; never panics). The checksum is checked; nothing is looked
    /// up. Cost: one pass over at most [`MAX_KEY_LEN`] bytes plus a CRC32 of them.
    ///
    /// # Errors
    /// [`FormatError::Malformed`] or [`FormatError::BadChecksum`].
    pub fn parse(text: &'a str) -> std::result::Result<Self, FormatError> {
        let bytes = text.as_bytes();
        if bytes.len() > MAX_KEY_LEN || bytes.len() < BODY_LEN + 7 {
            return Err(FormatError::Malformed);
        }
        let sep = bytes
            .iter()
            .position(|&b| b == b'_')
            .ok_or(FormatError::Malformed)?;
        let prefix = &bytes[..sep];
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX_LEN
            || !prefix
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(FormatError::Malformed);
        }
        let rest = &bytes[sep + 1..];
        if rest.len() != 4 + 1 + BODY_LEN || rest[4] != b'_' {
            return Err(FormatError::Malformed);
        }
        let env = Env::from_bytes(&rest[..4]).ok_or(FormatError::Malformed)?;
        let body = &rest[5..];
        if !body.iter().all(|&b| is_base62(b)) {
            return Err(FormatError::Malformed);
        }
        let (signed, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(signed) != sum {
            return Err(FormatError::BadChecksum);
        }
        let id = KeyId::from_bytes(&body[..KEY_ID_LEN]).ok_or(FormatError::Malformed)?;
        let version = base62_parse(&body[KEY_ID_LEN..KEY_ID_LEN + VERSION_LEN])
            .and_then(|v| u16::try_from(v).ok())
            .ok_or(FormatError::Malformed)?;
        let secret = &body[KEY_ID_LEN + VERSION_LEN..KEY_ID_LEN + VERSION_LEN + SECRET_LEN];
        Ok(Self {
            // The prefix is ASCII (checked above), so this slice is on a char boundary.
            prefix: &text[..sep],
            env,
            id,
            version,
            secret,
        })
    }

    /// The readable prefix.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The environment.
    pub fn env(&self) -> Env {
        self.env
    }

    /// The public key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The hash (pepper) version the key was issued under.
    pub fn version(&self) -> u16 {
        self.version
    }

    pub(crate) fn secret(&self) -> &'a [u8] {
        self.secret
    }
}

/// A freshly generated key: its text (secret) and the parts the store keeps.
pub(crate) struct NewKey {
    pub(crate) text: PlaintextKey,
    pub(crate) id: KeyId,
    pub(crate) secret: zeroize::Zeroizing<[u8; SECRET_LEN]>,
}

/// Generate a key: a random id (in `family` when given), 190 bits of secret from the OS.
pub(crate) fn generate(
    prefix: &Prefix,
    env: Env,
    version: u16,
    family: Option<&KeyId>,
) -> Result<NewKey> {
    if version > MAX_HASH_VERSION {
        return Err(Error::InvalidConfig(format!(
            "hash version {version} is over {MAX_HASH_VERSION}"
        )));
    }
    let id = KeyId::random(family)?;
    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    random_base62(&mut secret[..])?;
    let text = format_key(prefix.as_str(), env, &id, version, &secret);
    Ok(NewKey {
        text: PlaintextKey::new(text),
        id,
        secret,
    })
}

/// The text of a key from its parts (checksum appended).
pub(crate) fn format_key(
    prefix: &str,
    env: Env,
    id: &KeyId,
    version: u16,
    secret: &[u8; SECRET_LEN],
) -> String {
    let mut text = String::with_capacity(prefix.len() + 6 + BODY_LEN);
    text.push_str(prefix);
    text.push('_');
    text.push_str(env.as_str());
    text.push('_');
    text.push_str(id.as_str());
    for b in base62_fixed::<VERSION_LEN>(u64::from(version)) {
        text.push(char::from(b));
    }
    for &b in secret {
        text.push(char::from(b));
    }
    let sum = checksum(text.as_bytes());
    for b in sum {
        text.push(char::from(b));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(prefix: &str, env: Env, version: u16) -> NewKey {
        generate(&Prefix::new(prefix).unwrap(), env, version, None).unwrap()
    }

    #[test]
    fn a_generated_key_parses_back_to_its_parts() {
        let k = key("pk", Env::Live, 3);
        let text = k.text.expose_secret();
        assert!(text.starts_with("pk_live_"), "{text}");
        assert_eq!(text.len(), 2 + 6 + BODY_LEN);
        let p = ParsedKey::parse(text).unwrap();
        assert_eq!(
            (p.prefix(), p.env(), p.id(), p.version()),
            ("pk", Env::Live, k.id, 3)
        );
        assert_eq!(p.secret(), &k.secret[..]);
        assert_eq!(format!("{:?}", k.text), "PlaintextKey([REDACTED])");
        assert!(!format!("{p:?}").contains(std::str::from_utf8(&k.secret[..]).unwrap()));
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let k = key("acme", Env::Test, 0);
        let mut text = k.text.expose_secret().as_bytes().to_vec();
        let i = text.len() - 20;
        text[i] = if text[i] == b'a' { b'b' } else { b'a' };
        let text = String::from_utf8(text).unwrap();
        assert_eq!(ParsedKey::parse(&text), Err(FormatError::BadChecksum));
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        let good = key("pk", Env::Live, 0);
        let g = good.text.expose_secret();
        for bad in [
            "",
            "pk",
            "pk_live_",
            &g[..g.len() - 1],
            &format!("{g}x"),
            &g.replace("_live_", "_prod_"),
            &g.replace("pk_", "PK_"),
            &g.replace("pk_", "p-k_"),
            &g.replacen('_', "", 1),
            &format!("{}_{}", "a".repeat(17), &g[3..]),
        ] {
            assert_eq!(ParsedKey::parse(bad), Err(FormatError::Malformed), "{bad}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(Prefix::new("pk").is_ok());
        assert!(Prefix::new("acme2").is_ok());
        for bad in ["", "a_b", "Pk", "x".repeat(17).as_str(), "é"] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_family_is_inherited() {
        let a = KeyId::random(None).unwrap();
        let b = KeyId::random(Some(&a)).unwrap();
        assert_eq!(a.family(), b.family());
        assert_ne!(a, b);
    }

    #[test]
    fn base62_is_fixed_width() {
        assert_eq!(&base62_fixed::<6>(0), b"000000");
        assert_eq!(
            base62_parse(&base62_fixed::<6>(u64::from(u32::MAX))),
            Some(u64::from(u32::MAX))
        );
        assert_eq!(&base62_fixed::<2>(u64::from(MAX_HASH_VERSION)), b"zz");
    }

    proptest! {
        #[test]
        fn round_trip(prefix in "[a-z0-9]{1,16}", live in any::<bool>(),
                      version in 0..=MAX_HASH_VERSION,
                      id in "[0-9A-Za-z]{16}", secret in "[0-9A-Za-z]{32}") {
            let env = if live { Env::Live } else { Env::Test };
            let id: KeyId = id.parse().unwrap();
            let secret: [u8; SECRET_LEN] = secret.as_bytes().try_into().unwrap();
            let text = format_key(&prefix, env, &id, version, &secret);
            let p = ParsedKey::parse(&text).unwrap();
            prop_assert_eq!(p.prefix(), prefix.as_str());
            prop_assert_eq!(p.env(), env);
            prop_assert_eq!(p.id(), id);
            prop_assert_eq!(p.version(), version);
            prop_assert_eq!(p.secret(), &secret[..]);
        }

        #[test]
        fn arbitrary_input_never_panics(text in any::<String>()) {
            let _ = ParsedKey::parse(&text);
        }

        #[test]
        fn arbitrary_near_keys_never_panic(prefix in "[a-z_]{0,18}", body in "[0-9A-Za-z_é]{50,60}") {
            let _ = ParsedKey::parse(&format!("{prefix}_live_{body}"));
        }

        #[test]
        fn any_single_substitution_is_caught(pos in 0usize..64, c in "[0-9A-Za-z]") {
            let k = key("pk", Env::Live, 1);
            let text = k.text.expose_secret();
            let pos = 8 + pos % BODY_LEN;
            let c = c.as_bytes()[0];
            prop_assume!(text.as_bytes()[pos] != c);
            let mut bytes = text.as_bytes().to_vec();
            bytes[pos] = c;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(ParsedKey::parse(&changed).is_err());
        }
    }
}
