//! The SSH gateway: key-authenticated uploads (SFTP, `scp -t`) and commands (`ssh host …`).
//!
//! # Layout
//! - [`server`]: the accept loop. Caps (in all, per address, throttling of failed logins:
//!   [`crate::limits`]) are checked before the handshake; a login grace deadline bounds what
//!   an unauthenticated client may hold; then russh runs the connection, reading the socket
//!   through [`socket_reads`] (one recv per packet, straight into russh's packet buffer).
//! - [`session`]: one connection's russh handler: public-key authentication against
//!   `authorized_keys` (identity bound only after the signature is verified), and the
//!   refusals (password, pty, shell, forwarding, …). Each accepted request is handed to a
//!   task of its own, off the connection task.
//! - [`exec`]: `ssh host <command>`: split like a shell (never run one), parsed by the same
//!   clap table as the local CLI and run by `commands::execute`.
//! - [`sftp`] and [`scp`]: the two upload doors. Both go through the caller's
//!   [`UserArea`](crate::upload_area::UserArea), which owns writes, renames, removals, the
//!   quota, the digests and the audit lines of an upload area.
//! - [`channel_writer`]: writes to a channel that end, whatever the client does.
//! - [`audit`], [`command_line`]: the audit log and the exec line splitter.
//!
//! Below it and shared: the connection gate [`crate::limits`] (HTTPS asks it too), the host
//! keys [`crate::host_keys`] (`remote-info` shows their fingerprint) and the paired SHA-256
//! [`crate::sha256`] (the catalog hashes with it too).
//!
//! # Threads
//! The gateway runs on a thread of its own with a single-threaded runtime (accept loop,
//! russh sessions, SFTP and scp tasks): a session and its SFTP task trade each packet
//! without crossing threads. Hashing and disk writes of an upload run on its writer thread
//! ([`disk_writer`](crate::disk_writer), at most 32 at once), commands on the
//! runtime's blocking pool (at most [`MAX_COMMANDS`] at once, [`MAX_COMMANDS_PER_USER`] per
//! user, so that the pool never fills). So the SSH thread decrypts, frames and queues, and
//! little else.

/// The audit log lives at the crate root: upload areas write to it too.
pub use crate::audit;
pub mod channel_writer;
pub mod command_line;
pub mod exec;
pub mod scp;
pub mod server;
pub mod session;
pub mod sftp;
mod socket_reads;

use std::sync::Arc;

use russh::keys::PrivateKey;

use crate::access::UploadArea;
use crate::access::authorized_keys::AuthorizedKeysFile;
use crate::catalog::Catalog;
use crate::config::{Config, LiveConfig};
use crate::data_dir::DataDir;
use crate::host_keys;
use crate::limits::Slots;
use crate::upload_area::{UploadAreas, UserArea};

/// Everything the gateway's connections share.
pub struct Gateway {
    pub catalog: Arc<Catalog>,
    /// Replaced by a reload; read it with [`Gateway::config`] where it is used.
    pub live: Arc<LiveConfig>,
    pub keys: AuthorizedKeysFile,
    /// Every user's upload area: quotas, digests, writes and removals.
    pub areas: Arc<UploadAreas>,
    pub audit: Arc<audit::Audit>,
    /// Commands running at once (each on a blocking thread), in all and per user.
    pub commands: Arc<Slots<String>>,
    host_keys: Vec<PrivateKey>,
}

/// Commands running at once, in all: well under the 512 threads of the blocking pool, which
/// uploads use too.
pub const MAX_COMMANDS: usize = 64;
/// Commands one user may run at once, over all their connections.
pub const MAX_COMMANDS_PER_USER: usize = 8;

impl Gateway {
    /// Loads (or generates) the host keys, opens the audit log and removes temp files of
    /// uploads a previous run left behind.
    pub fn open(live: Arc<LiveConfig>, catalog: Arc<Catalog>) -> anyhow::Result<Gateway> {
        let config = live.current();
        let dirs = catalog.dirs().clone();
        let host_keys = host_keys::load_or_generate(&dirs, config.ssh.rsa_host_key)?;
        let audit = Arc::new(audit::Audit::open(&config.ssh.audit_log, dirs.root())?);
        // Handles are budgeted from the descriptor limit: raise it first.
        let fds = crate::upload_area::raise_fd_limit();
        tracing::debug!(fds, "file descriptor limit");
        let areas = Arc::new(UploadAreas::new(
            dirs.incoming(),
            live.clone(),
            audit.clone(),
        ));
        let stale = areas.remove_stale_temp_files();
        if stale > 0 {
            tracing::info!(
                removed = stale,
                "removed unfinished uploads of a previous run"
            );
        }
        let keys = AuthorizedKeysFile::new(dirs.authorized_keys());
        // Read once now, so that problems in the file show at start.
        keys.current();
        Ok(Gateway {
            catalog,
            live,
            keys,
            areas,
            audit,
            commands: Slots::new(MAX_COMMANDS, MAX_COMMANDS_PER_USER),
            host_keys,
        })
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.live.current()
    }

    /// How long a write to a channel may wait for a client that takes nothing.
    pub fn send_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config().ssh.send_timeout_secs.max(1))
    }

    pub fn dirs(&self) -> &DataDir {
        self.catalog.dirs()
    }

    /// `data/incoming/<name>/`.
    pub fn upload_area(&self, name: &str) -> UploadArea {
        UploadArea::new(self.dirs().incoming().join(name))
    }

    /// The upload area of `user` (jailed at `area`), for the doors that write to it.
    pub fn user_area(&self, user: &str, area: &UploadArea) -> UserArea {
        self.areas.user(user, area)
    }

    /// `SHA256:…` of the Ed25519 host key.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_keys
            .first()
            .map(|key| host_keys::fingerprint(key.public_key()))
            .unwrap_or_default()
    }
}
