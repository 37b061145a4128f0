//! Memory-only bounds (the conformance suite runs in `tests/store_conformance.rs`).

mod conformance;

use std::sync::Arc;

use palisade_semantic_cache::{MemoryConfig, MemoryStore, Store};

#[tokio::test]
async fn max_entries_bound_evicts() {
    let store =
        MemoryStore::new(MemoryConfig::default().max_entries(50).max_bytes(1 << 30)).unwrap();
    let clock = palisade_semantic_cache::FakeClock::default();
    let c = conformance::cache(Arc::new(store.clone()), &clock);
    for i in 0..500 {
        c.insert(
            &conformance::key("t1", "chat", &format!("question number {i}")),
            "x",
            Default::default(),
        )
        .await
        .unwrap();
    }
    store.run_pending_tasks();
    assert!(store.entry_count() <= 50, "{}", store.entry_count());
    assert!(store.entry_count() > 0);
}

#[tokio::test]
async fn max_bytes_bound_evicts() {
    // Each entry is about 2 KiB (vector) + 10 KiB of response: 100 KiB holds fewer than 10.
    let store = MemoryStore::new(
        MemoryConfig::default()
            .max_entries(10_000)
            .max_bytes(100 * 1024),
    )
    .unwrap();
    let clock = palisade_semantic_cache::FakeClock::default();
    let c = conformance::cache(Arc::new(store.clone()), &clock);
    let big = vec![b'x'; 10 * 1024];
    for i in 0..200 {
        c.insert(
            &conformance::key("t1", "chat", &format!("question number {i}")),
            big.clone(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    store.run_pending_tasks();
    assert!(store.entry_count() < 10, "{}", store.entry_count());
    let usage = store
        .usage(&palisade_semantic_cache::Partition::new("t1", "chat").unwrap())
        .await
        .unwrap();
    assert!(usage.bytes.unwrap() <= 100 * 1024, "{usage:?}");
}
