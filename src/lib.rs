//! simplestream-server: a private image server for LXD and Incus in one binary.
//!
//! # Layout
//! - [`image`]: reads what publishers hand over (metadata and unified tarballs, roots).
//! - [`catalog`]: the image store: import, remove, aliases, retention, verify; publishes the
//!   stream atomically under a cross-process lock.
//! - [`streams`]: the simplestreams JSON model, tied field by field to the client contract.
//! - [`storage`]: the published tree and the catalog record behind one interface, which the
//!   catalog writes through and `verify` and the HTTP side read through; [`storage::local`]
//!   is `www/` on the local filesystem.
//! - [`access`]: roles and the upload-area jail, the one rule layer every front door calls.
//! - [`commands`]: one command per file; the local CLI and SSH exec share the name table.
//! - [`publish`]: export from a local LXD/Incus store, upload and import, in one command.
//! - [`serve`]: the long-running command: HTTPS and SSH in one process; [`reload`] is its
//!   SIGHUP (keys, configuration and certificate read again).
//! - [`http`]: the HTTPS side: the simplestreams tree over TLS 1.3, the plain-HTTP first try,
//!   the catalog page and `/metrics`; [`metrics`] holds the process-wide counters.
//! - [`ssh`]: the SSH gateway: key-authenticated uploads (SFTP, `scp -t`) and commands.
//! - [`limits`]: who may open a connection (caps in all and per address, throttling), asked
//!   by both accept loops before a byte is exchanged.
//! - [`config`]: settings with defaults, the config file and flags.
//! - [`sha256`]: SHA-256 with two streams over the same bytes for the price of one.
//! - [`data_dir`], [`fsutil`]: the data directory's layout and durable file operations.

pub mod access;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod data_dir;
pub mod direct_file;
pub mod fsutil;
pub mod http;
pub mod image;
pub mod limits;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod serve;
pub mod sha256;
pub mod ssh;
pub mod storage;
pub mod streams;
