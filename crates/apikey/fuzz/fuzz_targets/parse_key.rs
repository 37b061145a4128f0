//! Any bytes as a key: parsing never panics, and whatever parses prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_apikey::ParsedKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(key) = ParsedKey::parse(text)
    {
        assert!(text.starts_with(key.prefix()));
        assert!(text.contains(key.id().as_str()));
        assert!(text.len() <= palisade_apikey::MAX_KEY_LEN);
    }
});
