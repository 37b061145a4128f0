//! Any bytes as a token: verification never panics and never accepts a forgery.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_apikey::{Pepper, Peppers, Tokens};

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| Tokens::new(Peppers::new(Pepper::new(1, [7u8; 32]).unwrap()), "fuzz").unwrap())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            tokens().verify(text).is_err(),
            "a forged token was accepted"
        );
    }
});
