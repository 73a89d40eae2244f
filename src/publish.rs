//! `publish <image> <user@host[:port]>`: from a machine's own LXD or Incus image store to the
//! server, in one command. It exports the image (`lxc image export` / `incus image export`),
//! uploads the files with the machine's OpenSSH `scp` (so ssh config, agent and known_hosts
//! apply as usual) and runs `import` on the server over `ssh`, streaming its progress.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::catalog::tree::{FileRole, classify};

/// Export an image from the local LXD or Incus image store and publish it on a server
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The image in the local store: an alias or a fingerprint (a `remote:` prefix works too)
    pub image: String,
    /// The server: user@host, user@host:port or user@[v6 address]:port (port default 2222)
    pub destination: String,
    /// An alias for the image on the server (repeatable)
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// Do not add the server's default aliases
    #[arg(long)]
    pub no_default_alias: bool,
    /// Which local image store to export from [default: lxc if installed, else incus]
    #[arg(long, value_enum, value_name = "CLIENT")]
    pub remote: Option<LocalClient>,
    /// The SSH private key to use (ssh -i)
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// An ssh configuration file (ssh -F)
    #[arg(short = 'F', long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// An ssh option, e.g. -o StrictHostKeyChecking=accept-new (repeatable)
    #[arg(short = 'o', long = "ssh-option", value_name = "OPTION")]
    pub ssh_options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalClient {
    Lxc,
    Incus,
}

impl LocalClient {
    fn binary(self) -> &'static str {
        match self {
            LocalClient::Lxc => "lxc",
            LocalClient::Incus => "incus",
        }
    }

    fn detect() -> anyhow::Result<LocalClient> {
        for client in [LocalClient::Lxc, LocalClient::Incus] {
            if find_in_path(client.binary()).is_some() {
                return Ok(client);
            }
        }
        bail!(
            "neither lxc nor incus is installed here; publish exports from a local LXD or Incus image store"
        )
    }
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    })
}

/// `user@host[:port]` split into the ssh target and the port.
#[derive(Debug, PartialEq, Eq)]
pub struct Destination {
    pub target: String,
    pub port: u16,
}

pub const DEFAULT_SSH_PORT: u16 = 2222;

pub fn parse_destination(text: &str) -> anyhow::Result<Destination> {
    let (user, host_port) = text
        .rsplit_once('@')
        .map_or((None, text), |(user, rest)| (Some(user), rest));
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .with_context(|| format!("{text:?}: an IPv6 address needs a closing ']'"))?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        bail!("{text:?} names no host; use user@host or user@host:port");
    }
    let port = match port {
        None => DEFAULT_SSH_PORT,
        Some(port) => port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("{port:?} in {text:?} is not a port number"))?,
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let target = match user {
        Some(user) => format!("{user}@{host}"),
        None => host,
    };
    Ok(Destination { target, port })
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let destination = parse_destination(&args.destination)?;
    let client = match args.remote {
        Some(client) => client,
        None => LocalClient::detect()?,
    };
    let work = tempfile::Builder::new()
        .prefix("simplestream-publish-")
        .tempdir()
        .context("cannot create a temporary folder for the export")?;

    eprintln!(
        "exporting {} from the local {} image store...",
        args.image,
        client.binary()
    );
    let status = Command::new(client.binary())
        .args(["image", "export", &args.image])
        .arg(work.path())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", client.binary()))?;
    if !status.success() {
        bail!(
            "`{} image export {}` failed; check the image name with `{} image list`",
            client.binary(),
            args.image,
            client.binary()
        );
    }
    let files = exported_files(work.path())?;

    let ssh_args = ssh_common_args(&args);
    eprintln!(
        "uploading {} to {}...",
        names(&files).join(" and "),
        destination.target
    );
    let status = Command::new("scp")
        .args(&ssh_args)
        .arg("-P")
        .arg(destination.port.to_string())
        .args(&files)
        .arg(format!("{}:", destination.target))
        .stdin(Stdio::null())
        .status()
        .context("cannot run scp; install openssh-client")?;
    if !status.success() {
        bail!(
            "the upload to {} failed (scp exited with {status})",
            destination.target
        );
    }

    let mut import = vec!["import".to_string()];
    import.extend(names(&files));
    for alias in &args.aliases {
        import.push("--alias".into());
        import.push(alias.clone());
    }
    if args.no_default_alias {
        import.push("--no-default-alias".into());
    }
    let status = Command::new("ssh")
        .args(&ssh_args)
        .arg("-p")
        .arg(destination.port.to_string())
        .arg(&destination.target)
        .args(import.iter().map(|word| shell_quote(word)))
        .stdin(Stdio::null())
        .status()
        .context("cannot run ssh; install openssh-client")?;
    if !status.success() {
        bail!(
            "the server refused the import (see its message above); the uploaded files stay in your upload area (`ssh {} uploads`)",
            destination.target
        );
    }
    Ok(())
}

/// The exported files, metadata first: `<fp>.tar.xz` + `<fp>.squashfs|.qcow2`, or `<fp>.tar.gz`.
fn exported_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .context("cannot read the export folder")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut metadata = Vec::new();
    let mut roots = Vec::new();
    for file in files {
        match classify(&file) {
            Ok(FileRole::Metadata | FileRole::Unified) => metadata.push(file),
            Ok(FileRole::Root) => roots.push(file),
            Err(reason) => bail!("the export wrote {} and {reason}", file.display()),
        }
    }
    match (metadata.len(), roots.len()) {
        (1, 0 | 1) => Ok(metadata.into_iter().chain(roots).collect()),
        _ => bail!(
            "the export wrote {} metadata and {} root files; expected one image",
            metadata.len(),
            roots.len()
        ),
    }
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

fn ssh_common_args(args: &PublishArgs) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(config) = &args.ssh_config {
        out.push("-F".into());
        out.push(config.display().to_string());
    }
    if let Some(identity) = &args.identity {
        out.push("-i".into());
        out.push(identity.display().to_string());
    }
    for option in &args.ssh_options {
        out.push("-o".into());
        out.push(option.clone());
    }
    out
}

/// Quotes a word for the server's shell-like command splitter.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let d = |text: &str| parse_destination(text).unwrap();
        assert_eq!(
            d("upload@host"),
            Destination {
                target: "upload@host".into(),
                port: 2222
            }
        );
        assert_eq!(
            d("upload@host:22"),
            Destination {
                target: "upload@host".into(),
                port: 22
            }
        );
        assert_eq!(
            d("host"),
            Destination {
                target: "host".into(),
                port: 2222
            }
        );
        assert_eq!(
            d("u@[::1]:2200"),
            Destination {
                target: "u@[::1]".into(),
                port: 2200
            }
        );
        assert!(
            parse_destination("u@host:x")
                .unwrap_err()
                .to_string()
                .contains("is not a port number")
        );
        assert!(parse_destination("u@").is_err());
        assert!(parse_destination("u@[::1").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("debian/12"), "debian/12");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
