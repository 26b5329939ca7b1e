//! credbroker: a federation-first credential broker daemon.
#![forbid(unsafe_code)]
// Bad input gets a typed error, never a panic: outside unit tests, unwrap/expect/panic are
// compile errors under `cargo clippy` (CI runs it with -D warnings).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// The memory allocator the daemon binaries install: built without the `jemalloc` feature
/// (only the fuzz targets are, and they install none), the system's.
#[cfg(not(feature = "jemalloc"))]
pub use std::alloc::System as Allocator;
/// The memory allocator the daemon binaries install (`#[global_allocator]`): jemalloc, whose
/// size classes and per-thread caches cost less per allocation than glibc's under the
/// resolve path's short-lived allocations, and which fragments less with a large store.
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc as Allocator;

pub mod admin;
pub mod admission;
pub mod api_error;
pub mod audit;
pub mod body;
pub mod breaker;
pub mod broker;
pub mod callbacks;
pub mod catalog;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod governance;
pub mod hex_text;
pub mod html;
pub mod identity;
pub mod ids;
pub mod intake_page;
pub mod issuer;
pub mod keys;
pub mod lint;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod pki;
pub mod progress;
pub mod replica;
pub mod resolve;
pub mod routes;
pub mod seal;
pub mod server;
pub mod store;
pub mod tls;
pub mod token_cache;
pub mod webhooks;
