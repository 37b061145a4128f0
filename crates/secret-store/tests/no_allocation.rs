//! The cached `get` allocates nothing: it hands out a reference-counted handle. Its own test
//! binary, because it installs a counting global allocator.

use std::alloc::System;

use futures::FutureExt;
use palisade_secret_store::{ExposeSecret, MemoryProvider, Secrets};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_cached_get_does_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let secrets = Secrets::builder()
            .provider(
                MemoryProvider::new()
                    .with_secret("openai/api-key", "sk-test-value")
                    .unwrap(),
            )
            .build()
            .unwrap();
        // The first read loads (and allocates: the handle, the cache slot).
        let first = secrets.get("openai/api-key").await.unwrap();
        let region = Region::new(GLOBAL);
        let mut total = 0usize;
        for _ in 0..10_000 {
            let s = secrets
                .get("openai/api-key")
                .now_or_never()
                .expect("a cached get completes without waiting")
                .unwrap();
            total += s.expose_secret().len();
        }
        let stats = region.change();
        assert_eq!(total, 10_000 * first.expose_secret().len());
        assert_eq!(
            (stats.allocations, stats.reallocations),
            (0, 0),
            "cached gets allocated: {stats:?}"
        );
        // And the counter does count: a load allocates.
        let region = Region::new(GLOBAL);
        secrets.refresh("openai/api-key").await.unwrap();
        assert!(region.change().allocations > 0);
    });
}
