//! The data directory: one folder that holds everything the server owns.
//!
//! ```text
//! data/
//!   config.toml          optional settings
//!   authorized_keys      who may connect over SSH, and with which role
//!   host-keys/           SSH host keys (generated once, 0600)
//!   tls/                 server.crt + server.key
//!   incoming/<user>/     each SSH user's upload area
//!   www/                 the only folder served over HTTP(S)
//!   state/               the catalog record, its lock and its journal
//!   tmp/                 staging for files on their way into www/ (same filesystem)
//! ```

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn www(&self) -> PathBuf {
        self.root.join("www")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    pub fn host_keys(&self) -> PathBuf {
        self.root.join("host-keys")
    }

    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn authorized_keys(&self) -> PathBuf {
        self.root.join("authorized_keys")
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// Creates the folders the catalog writes to. Safe to call on every start.
    pub fn create_layout(&self) -> io::Result<()> {
        for dir in [
            self.www().join("streams/v1"),
            self.www().join("images"),
            self.state(),
            self.tmp(),
            self.incoming(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        Ok(())
    }
}
