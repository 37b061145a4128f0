//! The public conformance suite (`palisade_semantic_cache::testing`), for this crate's
//! other test files.
#![allow(unused_imports, unreachable_pub)]

pub use palisade_semantic_cache::testing::*;
