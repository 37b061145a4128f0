//! How a store keeps a key (the memory store's tables, the leased store's books): short text
//! keys inline in two words, long ones on the heap, integer ids as they are.

use std::hash::Hasher;

/// Keys of up to this many bytes are stored inline.
const INLINE_KEY: usize = 15;

/// A text key stored inline when short (user ids, API-key ids, IPv4 addresses), so that
/// comparing it touches no other cache line. Keys are UTF-8, which never contains 0xFF, so an
/// inline key is padded with 0xFF and compared as a whole.
#[derive(Debug)]
pub(crate) enum KeyBuf {
    Inline([u8; INLINE_KEY]),
    Heap(Box<Box<[u8]>>),
}

impl KeyBuf {
    /// The key's bytes (an inline key without its padding).
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline(b) => &b[..b.iter().position(|&c| c == 0xff).unwrap_or(INLINE_KEY)],
            Self::Heap(b) => b,
        }
    }

    /// The key as text: keys are made from `&str` (an invalid byte, which cannot occur, would
    /// read as U+FFFD rather than panic).
    pub(crate) fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.bytes())
    }
}

/// A short key padded with 0xFF to 15 bytes, as two little-endian words: bytes 0..8 and 7..15
/// (they overlap, so that together they cover all 15). Built in registers, without copying
/// the key into a buffer first: a buffer written byte by byte and read back as words stalls
/// the CPU's store forwarding, which cost more than the rest of the lookup of a known key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShortKey(u64, u64);

impl ShortKey {
    #[inline]
    fn new(key: &[u8]) -> Self {
        let n = key.len();
        Self(
            le_padded(key.get(..n.min(8)).unwrap_or_default()),
            le_padded(key.get(n.min(7)..).unwrap_or_default()),
        )
    }

    /// The two words of an inline key: two whole-word loads (a key rebuilt byte by byte
    /// cost its comparison some thirty instructions).
    #[inline]
    fn of_inline(b: &[u8; INLINE_KEY]) -> Self {
        match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
            (Some(lo), Some(hi)) => Self(u64::from_le_bytes(*lo), u64::from_le_bytes(*hi)),
            _ => unreachable!("an inline key has 15 bytes"),
        }
    }
}

/// Up to the first eight bytes as a little-endian word, padded with 0xFF.
#[inline]
fn le_padded(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let word = if let Some(all) = bytes.first_chunk::<8>() {
        return u64::from_le_bytes(*all);
    } else if let (Some(a), Some(b)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        // 4..8 bytes: two overlapping reads agree on the bytes they share.
        u64::from(u32::from_le_bytes(*a)) | (u64::from(u32::from_le_bytes(*b)) << (8 * (n - 4)))
    } else if let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) {
        // 1..4 bytes: first, middle and last cover them all.
        let mid = bytes.get(n / 2).copied().unwrap_or(first);
        u64::from(first) | (u64::from(mid) << (8 * (n / 2))) | (u64::from(last) << (8 * (n - 1)))
    } else {
        return u64::MAX;
    };
    word | (u64::MAX << (8 * n))
}

/// A text key as it is looked up and compared: in inline form (made once per call) when short.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe<'a> {
    Short(ShortKey),
    Long(&'a [u8]),
}

impl<'a> Probe<'a> {
    #[inline]
    pub(crate) fn new(key: &'a [u8]) -> Self {
        if key.len() <= INLINE_KEY {
            Self::Short(ShortKey::new(key))
        } else {
            Self::Long(key)
        }
    }
}

/// A key as a table stores it: a text key ([`KeyBuf`]) or an id (`u64`).
pub(crate) trait StoredKey: Sized + std::fmt::Debug {
    /// The looked-up form.
    type Probe<'a>: Copy;
    fn stored(probe: Self::Probe<'_>) -> Self;
    fn probe(&self) -> Self::Probe<'_>;
    /// Whether this key is the probe's (its own probe equals it).
    fn matches(&self, probe: Self::Probe<'_>) -> bool;
    /// Feeds a probe to the store's hasher (a stored key hashes as its probe).
    fn write(probe: Self::Probe<'_>, h: &mut impl Hasher);
}

impl StoredKey for KeyBuf {
    type Probe<'a> = Probe<'a>;
    fn stored(probe: Probe<'_>) -> Self {
        match probe {
            Probe::Short(ShortKey(lo, hi)) => {
                let mut b = [0; INLINE_KEY];
                b[..8].copy_from_slice(&lo.to_le_bytes());
                b[7..].copy_from_slice(&hi.to_le_bytes());
                Self::Inline(b)
            }
            Probe::Long(k) => Self::Heap(Box::new(k.into())),
        }
    }
    #[inline]
    fn probe(&self) -> Probe<'_> {
        match self {
            Self::Inline(b) => Probe::Short(ShortKey::of_inline(b)),
            Self::Heap(b) => Probe::Long(b),
        }
    }
    #[inline]
    fn matches(&self, probe: Probe<'_>) -> bool {
        match (self, probe) {
            (Self::Inline(a), Probe::Short(b)) => ShortKey::of_inline(a) == b,
            (Self::Heap(a), Probe::Long(b)) => ***a == *b,
            _ => false,
        }
    }
    #[inline]
    fn write(probe: Probe<'_>, h: &mut impl Hasher) {
        match probe {
            // The two words the key is compared by; no second pass over the bytes.
            Probe::Short(ShortKey(a, b)) => {
                h.write_u64(a);
                h.write_u64(b);
            }
            Probe::Long(bytes) => h.write(bytes),
        }
    }
}

impl StoredKey for u64 {
    type Probe<'a> = u64;
    #[inline]
    fn stored(probe: u64) -> Self {
        probe
    }
    #[inline]
    fn probe(&self) -> u64 {
        *self
    }
    #[inline]
    fn matches(&self, probe: u64) -> bool {
        *self == probe
    }
    #[inline]
    fn write(probe: u64, h: &mut impl Hasher) {
        h.write_u64(probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Two keys match exactly when their bytes are equal, and a stored key gives its
        /// bytes back, at every length around the inline limit.
        #[test]
        fn keys_match_only_themselves(
            a in proptest::collection::vec(0u8..=0xfe, 0..20),
            b in proptest::collection::vec(0u8..=0xfe, 0..20),
            flip in 0usize..20,
        ) {
            // Often equal up to one byte, so near misses are tried at every position.
            let mut near = a.clone();
            if let Some(c) = near.get_mut(flip) {
                *c = c.wrapping_add(1) % 0xff;
            }
            for other in [&a, &b, &near] {
                let stored = KeyBuf::stored(Probe::new(other));
                proptest::prop_assert_eq!(stored.bytes(), other.as_slice());
                proptest::prop_assert_eq!(stored.probe() == Probe::new(&a), *other == a);
            }
        }
    }
}
