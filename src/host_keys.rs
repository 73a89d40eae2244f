//! The server's SSH host keys, in `data/host-keys/`: generated on first start (private key
//! 0600 in OpenSSH format, with its `.pub` beside it) and reused forever after, so clients'
//! `known_hosts` entries stay valid across restarts and upgrades.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

use crate::data_dir::DataDir;

const ED25519_FILE: &str = "ssh_host_ed25519_key";
const RSA_FILE: &str = "ssh_host_rsa_key";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "the host key {path} is unreadable ({message}); restore it from a backup, or move it away to generate a new one (clients will then warn that the host key changed)"
    )]
    Unreadable { path: String, message: String },
    #[error("cannot generate a host key: {0}")]
    Generate(String),
}

/// Loads the host keys, generating the missing ones. Ed25519 always; RSA when `with_rsa`.
pub fn load_or_generate(dirs: &DataDir, with_rsa: bool) -> Result<Vec<PrivateKey>, HostKeyError> {
    let dir = dirs.host_keys();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| crate::fsutil::with_path(e, "cannot create", &dir))?;
    let mut keys = vec![load_or_generate_one(
        &dir.join(ED25519_FILE),
        Algorithm::Ed25519,
    )?];
    if with_rsa {
        keys.push(load_or_generate_one(
            &dir.join(RSA_FILE),
            Algorithm::Rsa { hash: None },
        )?);
    }
    Ok(keys)
}

fn load_or_generate_one(path: &Path, algorithm: Algorithm) -> Result<PrivateKey, HostKeyError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            return PrivateKey::from_openssh(text.as_bytes()).map_err(|e| {
                HostKeyError::Unreadable {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::fsutil::with_path(e, "cannot read", path).into()),
    }
    let mut rng = russh::keys::key::safe_rng();
    let key = PrivateKey::random(&mut rng, algorithm)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    write_new(path, pem.as_bytes(), 0o600)?;
    write_new(&pub_path(path), format!("{public}\n").as_bytes(), 0o644)?;
    tracing::info!(path = %path.display(), fingerprint = %fingerprint(key.public_key()), "generated an SSH host key");
    Ok(key)
}

/// Writes a new file durably with `mode` from the start (never briefly world-readable).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    let _ = fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| crate::fsutil::with_path(e, "cannot create", &temp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| crate::fsutil::with_path(e, "cannot write", &temp))?;
    crate::fsutil::rename_durably(&temp, path)
}

fn pub_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `SHA256:…`, as `ssh-keygen -lf` and the client's first-connection prompt show it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The Ed25519 host key's fingerprint, for `remote-info` and the start-up line; `None` before
/// the server has first started (no key generated yet).
pub fn host_key_fingerprint(dirs: &DataDir) -> Result<Option<String>, HostKeyError> {
    let path = dirs.host_keys().join(ED25519_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| {
                HostKeyError::Unreadable {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            Ok(Some(fingerprint(key.public_key())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::fsutil::with_path(e, "cannot read", &path).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_once_then_reused_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path());
        assert_eq!(host_key_fingerprint(&dirs).unwrap(), None);
        let first = load_or_generate(&dirs, false).unwrap();
        let again = load_or_generate(&dirs, false).unwrap();
        assert_eq!(first[0].public_key(), again[0].public_key());
        let path = dirs.host_keys().join(ED25519_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let shown = host_key_fingerprint(&dirs).unwrap().unwrap();
        assert_eq!(shown, fingerprint(first[0].public_key()));
        let public = fs::read_to_string(pub_path(&path)).unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
    }
}
