//! Who may do what. Every front door (local CLI, SSH exec, SFTP, `scp -t`) asks this module:
//! roles are checked in one place and client paths become real paths through one jail.

pub mod authorized_keys;
pub mod jail;

use std::fmt;
use std::str::FromStr;

pub use jail::{JailError, JailedPath, UploadArea};

/// A key's role. Each role may do everything the one before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// list, info, remote-info, whoami, help.
    Reader,
    /// Also upload into their own area, uploads, import, remove their own uploads.
    Publisher,
    /// Also remove, alias, prune, verify, rebuild.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Publisher => "publisher",
            Role::Admin => "admin",
        }
    }

    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Role::Reader),
            "publisher" => Ok(Role::Publisher),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; use reader, publisher or admin"
            )),
        }
    }
}

/// An SSH user, known by the key that signed the authentication.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The key's comment, sanitised: names the user in logs and their upload area.
    pub name: String,
    pub role: Role,
    /// `SHA256:…` of the public key.
    pub key_fingerprint: String,
}

/// Who runs a command.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The machine's admin running the binary: every command; paths are local paths.
    Local,
    /// An SSH user: limited by role; paths are in their upload area.
    Remote {
        identity: Identity,
        upload_area: UploadArea,
    },
}

impl Caller {
    pub fn role(&self) -> Role {
        match self {
            Caller::Local => Role::Admin,
            Caller::Remote { identity, .. } => identity.role,
        }
    }

    /// How imports and logs name the caller.
    pub fn name(&self) -> String {
        match self {
            Caller::Local => format!(
                "local:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            ),
            Caller::Remote { identity, .. } => identity.name.clone(),
        }
    }

    /// Refuses with a sentence that names the command, the role it needs and the caller's.
    pub fn check(&self, command: &str, needed: Role) -> Result<(), String> {
        let role = self.role();
        if role.allows(needed) {
            Ok(())
        } else {
            Err(format!(
                "permission denied: `{command}` needs the {needed} role and your key has the {role} role; `help` lists what you may run"
            ))
        }
    }
}

/// Turns a key comment into a user name that is safe as a directory name: letters, digits,
/// `.`, `_`, `-` and `@` kept, anything else becomes `_`, no leading dot, at most 64 bytes.
/// An empty result falls back to `fallback` (derived from the key fingerprint).
pub fn sanitize_user_name(comment: &str, fallback: &str) -> String {
    let cleaned: String = comment
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    let cleaned: String = cleaned.chars().take(64).collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '_') {
        fallback.to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Publisher));
        assert!(Role::Publisher.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Publisher));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().unwrap_err().contains("unknown role"));
    }

    #[test]
    fn denial_names_both_roles() {
        let caller = Caller::Remote {
            identity: Identity {
                name: "ci".into(),
                role: Role::Reader,
                key_fingerprint: "SHA256:x".into(),
            },
            upload_area: UploadArea::new("/nonexistent".into()),
        };
        let err = caller.check("import", Role::Publisher).unwrap_err();
        assert!(
            err.contains("needs the publisher role") && err.contains("has the reader role"),
            "{err}"
        );
    }

    #[test]
    fn user_names_are_directory_safe() {
        assert_eq!(sanitize_user_name("alice@laptop", "k"), "alice@laptop");
        assert_eq!(sanitize_user_name("../../etc", "k"), "_.._etc");
        assert_eq!(sanitize_user_name("CI bot #1", "k"), "CI_bot__1");
        assert_eq!(sanitize_user_name("", "key-ab12"), "key-ab12");
        assert_eq!(sanitize_user_name("...", "key-ab12"), "key-ab12");
    }
}
