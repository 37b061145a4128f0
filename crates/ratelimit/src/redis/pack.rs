//! One batch item as one string (`src/lua/batch.lua`): MessagePack, which Redis' Lua
//! unpacks in C (`cmsgpack.unpack`) into numbers and strings. Sent as separate arguments,
//! each of an item's values (25 for one quota) cost Redis a string and each number a
//! `tonumber` (glibc `strtod`): about a tenth of a lease item's Redis work
//! (docs/benchmarks.md, "the lease call's Redis cost").
//!
//! Only what items hold is written: non-negative integers (as the smallest MessagePack
//! integer that holds them), short strings and arrays.

/// The first value of every packed item: `batch.lua` runs an item only after it (an item
/// of another format, from a process of another version, fails with an error saying so).
pub(super) const ITEM_FORMAT: &str = "pb2";

/// What a script's arguments are written to: the script call itself (one argument each)
/// or a packed batch item.
pub(super) trait Args {
    /// A non-negative integer (Lua reads a number).
    fn number(&mut self, v: u64) -> &mut Self;
    /// A string (Lua reads a string).
    fn text(&mut self, v: &str) -> &mut Self;
    /// An integer that Lua keeps as its decimal text (an owner id: a hash field, and above
    /// 2^53, which a Lua number cannot hold).
    fn decimal(&mut self, v: u64) -> &mut Self;
}

impl Args for redis::ScriptInvocation<'_> {
    fn number(&mut self, v: u64) -> &mut Self {
        self.arg(v)
    }

    fn text(&mut self, v: &str) -> &mut Self {
        self.arg(v)
    }

    fn decimal(&mut self, v: u64) -> &mut Self {
        self.arg(v)
    }
}

/// A MessagePack buffer.
#[derive(Debug, Default)]
pub(super) struct Pack(Vec<u8>);

impl Pack {
    pub(super) fn with_capacity(bytes: usize) -> Self {
        Self(Vec::with_capacity(bytes))
    }

    /// The header of an array of `len` values (the values follow).
    pub(super) fn array(&mut self, len: usize) -> &mut Self {
        if len < 16 {
            // fixarray: 0x90 | len (len < 16 fits the low nibble).
            self.0.push(0x90 | (len as u8));
        } else if let Ok(len) = u16::try_from(len) {
            self.0.push(0xdc);
            self.0.extend_from_slice(&len.to_be_bytes());
        } else {
            self.0.push(0xdd);
            self.0
                .extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        }
        self
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl Args for Pack {
    fn number(&mut self, v: u64) -> &mut Self {
        if let Ok(b) = u8::try_from(v) {
            if b < 0x80 {
                // positive fixint
                self.0.push(b);
            } else {
                self.0.extend_from_slice(&[0xcc, b]);
            }
        } else if let Ok(h) = u16::try_from(v) {
            self.0.push(0xcd);
            self.0.extend_from_slice(&h.to_be_bytes());
        } else if let Ok(w) = u32::try_from(v) {
            self.0.push(0xce);
            self.0.extend_from_slice(&w.to_be_bytes());
        } else {
            self.0.push(0xcf);
            self.0.extend_from_slice(&v.to_be_bytes());
        }
        self
    }

    fn text(&mut self, v: &str) -> &mut Self {
        let len = v.len();
        if len < 32 {
            // fixstr: 0xa0 | len
            self.0.push(0xa0 | (len as u8));
        } else if let Ok(l) = u8::try_from(len) {
            self.0.extend_from_slice(&[0xd9, l]);
        } else if let Ok(l) = u16::try_from(len) {
            self.0.push(0xda);
            self.0.extend_from_slice(&l.to_be_bytes());
        } else {
            // Items hold codes, names and ids: never this long. Cut, not mis-framed.
            let l = u32::try_from(len).unwrap_or(u32::MAX);
            self.0.push(0xdb);
            self.0.extend_from_slice(&l.to_be_bytes());
            self.0.extend_from_slice(&v.as_bytes()[..l as usize]);
            return self;
        }
        self.0.extend_from_slice(v.as_bytes());
        self
    }

    fn decimal(&mut self, v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = v;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        // ASCII digits: valid UTF-8.
        self.text(std::str::from_utf8(&digits[at..]).unwrap_or("0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(f: impl FnOnce(&mut Pack)) -> Vec<u8> {
        let mut p = Pack::default();
        f(&mut p);
        p.into_bytes()
    }

    /// Each integer in the smallest MessagePack form, at every boundary (the spec's
    /// encodings, big-endian).
    #[test]
    fn numbers_take_the_smallest_form() {
        let cases: [(u64, &[u8]); 10] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65_535, &[0xcd, 0xff, 0xff]),
            (65_536, &[0xce, 0x00, 0x01, 0x00, 0x00]),
            (u64::from(u32::MAX), &[0xce, 0xff, 0xff, 0xff, 0xff]),
            (1 << 32, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                u64::MAX,
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (v, want) in cases {
            assert_eq!(
                packed(|p| {
                    p.number(v);
                }),
                want,
                "{v}"
            );
        }
    }

    #[test]
    fn strings_arrays_and_decimals() {
        assert_eq!(
            packed(|p| {
                p.text("");
            }),
            [0xa0]
        );
        assert_eq!(
            packed(|p| {
                p.text("gcra");
            }),
            b"\xa4gcra"
        );
        let long = "x".repeat(32);
        let mut want = vec![0xd9, 32];
        want.extend_from_slice(long.as_bytes());
        assert_eq!(
            packed(|p| {
                p.text(&long);
            }),
            want
        );
        assert_eq!(
            packed(|p| {
                p.decimal(0);
            }),
            b"\xa10"
        );
        assert_eq!(
            packed(|p| {
                p.decimal(u64::MAX);
            }),
            b"\xb418446744073709551615"
        );
        assert_eq!(
            packed(|p| {
                p.array(15);
            }),
            [0x9f]
        );
        assert_eq!(
            packed(|p| {
                p.array(16);
            }),
            [0xdc, 0x00, 0x10]
        );
        assert_eq!(
            packed(|p| {
                p.array(70_000);
            }),
            [0xdd, 0x00, 0x01, 0x11, 0x70]
        );
    }
}
