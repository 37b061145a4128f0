//! How the memory store keeps a key: short text keys inline in two words, long ones on the
//! heap, integer ids as they are.

use std::hash::Hasher;

/// Keys of up to this many bytes are stored inline.
pub(super) const INLINE_KEY: usize = 15;

/// A key stored inline when short (user ids, API-key ids, IPv4 addresses), so that comparing
/// it touches no other cache line. Keys are UTF-8, which never contains 0xFF, so an inline
/// key is padded with 0xFF and compared as a whole.
#[derive(Debug)]
pub(super) enum KeyBuf {
    Inline([u8; INLINE_KEY]),
    Heap(Box<Box<[u8]>>),
}

/// A short key padded with 0xFF to 15 bytes, as two little-endian words: bytes 0..8 and 7..15
/// (they overlap, so that together they cover all 15). Built in registers, without copying
/// the key into a buffer first: a buffer written byte by byte and read back as words stalls
/// the CPU's store forwarding, which cost more than the rest of the lookup of a known key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct ShortKey(u64, u64);

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

    fn to_inline(self) -> [u8; INLINE_KEY] {
        let mut b = [0; INLINE_KEY];
        b[..8].copy_from_slice(&self.0.to_le_bytes());
        b[7..].copy_from_slice(&self.1.to_le_bytes());
        b
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

/// A looked-up key, put in inline form once per call when short.
#[derive(Clone, Copy)]
pub(super) enum Probe<'a> {
    Short(ShortKey),
    Long(&'a [u8]),
}

impl<'a> Probe<'a> {
    #[inline]
    pub(super) fn new(key: &'a [u8]) -> Self {
        if key.len() <= INLINE_KEY {
            Self::Short(ShortKey::new(key))
        } else {
            Self::Long(key)
        }
    }
}

impl KeyBuf {
    pub(super) fn new(key: Probe<'_>) -> Self {
        match key {
            Probe::Short(k) => Self::Inline(k.to_inline()),
            Probe::Long(k) => Self::Heap(Box::new(k.into())),
        }
    }

    #[inline]
    fn matches(&self, key: Probe<'_>) -> bool {
        match (self, key) {
            (Self::Inline(a), Probe::Short(b)) => ShortKey::of_inline(a) == b,
            (Self::Heap(a), Probe::Long(b)) => ***a == *b,
            _ => false,
        }
    }

    #[cfg(test)]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(b) => {
                let n = b.iter().position(|&c| c == 0xff).unwrap_or(INLINE_KEY);
                &b[..n]
            }
            Self::Heap(s) => s,
        }
    }
}

/// A key as a table stores it: a text key ([`KeyBuf`]) or an id (`u64`).
pub(super) trait StoredKey: Sized + std::fmt::Debug {
    /// The looked-up form, made once per call.
    type Probe<'a>: Copy;
    fn stored(probe: Self::Probe<'_>) -> Self;
    fn matches(&self, probe: Self::Probe<'_>) -> bool;
    /// Feeds the probe to the store's hasher; a stored key feeds the same as its probe.
    fn write_probe(probe: Self::Probe<'_>, h: &mut impl Hasher);
    fn write_stored(&self, h: &mut impl Hasher);
}

impl StoredKey for KeyBuf {
    type Probe<'a> = Probe<'a>;
    #[inline]
    fn stored(probe: Probe<'_>) -> Self {
        Self::new(probe)
    }
    #[inline]
    fn matches(&self, probe: Probe<'_>) -> bool {
        KeyBuf::matches(self, probe)
    }
    #[inline]
    fn write_probe(probe: Probe<'_>, h: &mut impl Hasher) {
        match probe {
            // The two words the key is compared by; no second pass over the bytes.
            Probe::Short(ShortKey(a, b)) => {
                h.write_u64(a);
                h.write_u64(b);
            }
            Probe::Long(bytes) => h.write(bytes),
        }
    }
    fn write_stored(&self, h: &mut impl Hasher) {
        match self {
            Self::Inline(b) => Self::write_probe(Probe::Short(ShortKey::of_inline(b)), h),
            Self::Heap(bytes) => h.write(bytes),
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
    fn matches(&self, probe: u64) -> bool {
        *self == probe
    }
    #[inline]
    fn write_probe(probe: u64, h: &mut impl Hasher) {
        h.write_u64(probe);
    }
    fn write_stored(&self, h: &mut impl Hasher) {
        h.write_u64(*self);
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
                let stored = KeyBuf::new(Probe::new(other));
                proptest::prop_assert_eq!(stored.as_bytes(), other.as_slice());
                proptest::prop_assert_eq!(stored.matches(Probe::new(&a)), *other == a);
            }
        }
    }
}
