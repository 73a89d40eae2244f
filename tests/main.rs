//! The one integration-test binary (as ripgrep's tests/tests.rs): one module per area, all
//! sharing `support`, so the dependency tree is linked once rather than once per file.
//! Run one area with `cargo test --test main AREA::` (for example `floods::`).
//!
//! One process runs every area, so nothing here may change process-wide state (environment,
//! working directory, umask, signal handlers) except `support::net::raise_fd_limit`, which only
//! raises a limit. Tests that must not share the machine with each other (a system daemon,
//! CPU-bound torture, timed floods) take `support::exclusive()`.

mod support;

mod attacks;
mod catalog;
mod clients;
mod config;
mod corpus;
mod delta;
mod deploy;
mod disk_full;
mod end_to_end;
mod floods;
mod http;
mod http_clients;
mod import_tree;
mod mirror;
mod publish;
mod reload;
mod s3;
mod ssh;
mod storage;
mod torture;
