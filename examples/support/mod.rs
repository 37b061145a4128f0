//! What every example service shares: settings from a TOML file and the environment, logs
//! scrubbed of secrets, a correlation id on every request, Prometheus metrics, a health report
//! and problem+json errors.
//!
//! Each example includes this folder with `#[path = "../support/mod.rs"] mod support;` and its
//! end-to-end test (under `crates/palisade/tests/`) includes it the same way, so the test
//! drives exactly the code the example runs.
#![allow(dead_code, unreachable_pub)] // every example uses a different part of it

pub mod health;
pub mod http;
pub mod secrets;
pub mod settings;
pub mod telemetry;
