//! simplestream-server: a private image server for LXD and Incus in one binary.
//!
//! # Layout
//! Top to bottom; each layer uses only those below it (`python3 ../shared/tools/module-graph.py
//! src` shows the graph).
//! - Front doors: `main.rs` (the CLI), [`serve`] (HTTPS and SSH in one process; [`reload`] is
//!   its SIGHUP: keys, configuration and certificate read again; [`mirror_schedule`] runs the
//!   configured mirrors), [`ssh`] (the SSH gateway:
//!   key-authenticated uploads over SFTP and `scp -t`, and commands) and [`http`] (the
//!   simplestreams tree over TLS, the plain-HTTP first try, the catalog page, `/metrics`).
//! - [`commands`]: one command per file; the local CLI and SSH exec share the name table. Only
//!   `main.rs`, [`serve`] and `ssh/exec.rs` call it. [`publish`]: export from a local LXD/Incus
//!   store, upload and import, in one command.
//! - [`upload_area`]: one owner for each user's upload area (writes, renames, removals,
//!   quota and entry counts, upload-time digests, audit lines), called by every door;
//!   [`audit`]: the audit log, one JSON line per event.
//! - [`remote`]: how clients reach this server (remote URL, base path, the text that sets a
//!   client up); [`host_keys`]: the SSH host keys; [`limits`]: who may open a connection
//!   (caps in all and per address, throttling), asked by both accept loops; [`access`]: roles
//!   and the upload-area jail, the one rule layer every front door calls.
//! - [`config`]: settings with defaults, the config file and flags, turned into each part's
//!   settings; [`metrics`]: the process-wide counters.
//! - [`mirror`]: a verified pull-mirror of an upstream simplestreams server, published through
//!   the catalog; its run lock and status file. [`config`] turns `[[mirror]]` tables into its
//!   specs, [`mirror_schedule`] (in [`serve`]) runs them on their interval.
//! - [`catalog`]: the image store: import, remove, aliases, retention, verify, image summaries
//!   and the record → stream mapping; publishes the stream atomically under a cross-process
//!   lock.
//! - [`storage`]: the published tree and the catalog record behind one interface, which the
//!   catalog writes through and `verify` and the HTTP side read through; [`storage::local`]
//!   is `www/` on the local filesystem.
//! - [`image`]: reads what publishers hand over (metadata and unified tarballs, roots).
//!   [`streams`]: the simplestreams model, read and write, tied field by field to the client
//!   contract. [`vcdiff`]: the delta format daemons refresh images with (encode in bounded
//!   memory, decode to check).
//! - [`sha256`]: SHA-256 with two streams over the same bytes for the price of one;
//!   [`direct_file`]: O_DIRECT writes; [`disk_writer`]: those writes, hashed, off the
//!   caller's thread; [`format`]: sizes and times for
//!   people; [`data_dir`], [`fsutil`]: the data directory's layout and durable file operations.

pub mod access;
pub mod audit;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod data_dir;
pub mod direct_file;
pub mod disk_writer;
pub mod format;
pub mod fsutil;
pub mod host_keys;
pub mod http;
pub mod image;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod mirror_schedule;
pub mod publish;
pub mod reload;
pub mod remote;
pub mod serve;
pub mod sha256;
pub mod ssh;
pub mod storage;
pub mod streams;
pub mod upload_area;
pub mod vcdiff;
