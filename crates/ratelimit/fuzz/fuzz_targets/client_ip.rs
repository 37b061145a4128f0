//! The trusted-proxy walk over arbitrary `X-Forwarded-For` and `Forwarded` bytes: never
//! panics, and the address found is the peer, a forwarded hop, or nothing.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade_ratelimit::rules::{ClientIp, ForwardedHeader};

static WALKS: LazyLock<[ClientIp; 2]> = LazyLock::new(|| {
    [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded].map(|header| {
        ClientIp::new()
            .trust(["10.0.0.0/8", "2001:db8::/32"])
            .unwrap()
            .header(header)
    })
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = if selector & 1 == 0 {
        [10, 0, 0, selector].into()
    } else {
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(selector)].into()
    };
    let mut headers = HeaderMap::new();
    // Each 0x00 byte starts another header line (a value cannot hold it).
    for line in rest.split(|&b| b == 0) {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v.clone());
            headers.append("forwarded", v);
        }
    }
    for ip in WALKS.iter() {
        let found = ip.resolve(Some(peer), &headers);
        assert!(found.is_some(), "a trusted peer always resolves to someone");
        let _ = ip.group(found.unwrap());
        assert_eq!(ClientIp::new().resolve(Some(peer), &headers), Some(peer));
    }
});
