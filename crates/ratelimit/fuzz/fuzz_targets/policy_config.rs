//! Policy configuration from arbitrary JSON: parsing never panics, a parsed policy is valid,
//! round-trips, and deciding on it with any cost and time never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_ratelimit::algorithm::{decide, fresh_states, peek, refund};
use palisade_ratelimit::{MemoryStore, Policy};

fuzz_target!(|data: &[u8]| {
    let Some((head, json)) = data.split_at_checked(16) else {
        return;
    };
    let Ok(policy) = serde_json::from_slice::<Policy>(json) else {
        return;
    };
    let again: Policy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(again, policy);
    let now = u64::from_le_bytes(head[..8].try_into().unwrap());
    let cost = u64::from_le_bytes(head[8..].try_into().unwrap());
    let mut states = fresh_states(&policy, now);
    for (dt, c) in [(0, cost), (1, 1), (u64::MAX / 2, cost >> 32), (7, 0)] {
        let at = now.saturating_add(dt);
        let _ = decide(&mut states, &policy, at, c);
        refund(&mut states, &policy, at, c);
        let _ = peek(&states, &policy, at);
    }
    let store = MemoryStore::new();
    let _ = store.acquire_sync("k", &policy, cost);
    let _ = store.allow_sync(7_u64, &policy, cost);
    store.refund_sync("k", &policy, cost);
    let _ = store.peek_sync("k", &policy);
});
