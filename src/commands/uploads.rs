//! `uploads [--remove NAME]…`: the files waiting in an upload area, and removing them.
//! Over SSH it is always the caller's own area; locally `--user` picks one (default: all).

use serde::Serialize;

use super::output::{Format, write_csv, write_json, write_table};
use super::{CommandError, Context};
use crate::access::{Caller, UploadArea};
use crate::format::{human_size, rfc3339};
use crate::upload_area::{UploadError, UserArea};

/// List the files in your upload area, or remove some of them
#[derive(Debug, clap::Args)]
pub struct Uploads {
    /// Remove this upload, named as `uploads` lists it (repeatable)
    #[arg(long = "remove", value_name = "NAME")]
    pub remove: Vec<String>,
    /// Whose upload area (local use; over SSH it is always your own)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// One upload as `uploads --format json` prints it. Field names are a stable interface.
#[derive(Debug, Serialize)]
pub struct UploadSummary {
    pub user: String,
    /// The path inside the area, as scp/sftp/import name it.
    pub name: String,
    pub size: u64,
    pub modified: String,
    /// Known when the server hashed the file while it arrived: importing it reads nothing.
    pub sha256: Option<String>,
}

impl Uploads {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let areas = self.areas(ctx)?;
        if !self.remove.is_empty() {
            let [(user, area)] = areas.as_slice() else {
                return Err(CommandError::Usage(
                    "--remove needs --user to say whose upload area".into(),
                ));
            };
            let area = ctx.areas.user(user, area);
            for name in &self.remove {
                remove_one(&area, name)?;
                tracing::info!(user, file = name, "removed an upload");
                writeln!(ctx.out, "removed {name}")?;
            }
            return Ok(());
        }
        let mut rows = Vec::new();
        for (user, area) in &areas {
            let area = ctx.areas.user(user, area);
            rows.extend(area.list().into_iter().map(|listed| UploadSummary {
                user: user.clone(),
                name: listed.name,
                size: listed.size,
                modified: rfc3339(listed.modified),
                sha256: listed.sha256,
            }));
        }
        rows.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
        let local = matches!(ctx.caller, Caller::Local);
        match self.format {
            Format::Json => write_json(ctx.out, &rows)?,
            Format::Csv | Format::Table => {
                let mut header = vec!["NAME", "SIZE", "MODIFIED", "HASHED"];
                if local {
                    header.insert(0, "USER");
                }
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|row| {
                        let size = if self.format == Format::Csv {
                            row.size.to_string()
                        } else {
                            human_size(row.size)
                        };
                        let hashed = if row.sha256.is_some() { "yes" } else { "no" };
                        let mut cells =
                            vec![row.name.clone(), size, row.modified.clone(), hashed.into()];
                        if local {
                            cells.insert(0, row.user.clone());
                        }
                        cells
                    })
                    .collect();
                if self.format == Format::Csv {
                    let header: Vec<String> = header.iter().map(|h| h.to_lowercase()).collect();
                    let header: Vec<&str> = header.iter().map(String::as_str).collect();
                    write_csv(ctx.out, &header, &cells)?;
                } else if cells.is_empty() {
                    writeln!(
                        ctx.out,
                        "no uploads; `scp FILE <host>:` puts one in your upload area"
                    )?;
                } else {
                    write_table(ctx.out, &header, &cells)?;
                }
            }
        }
        Ok(())
    }

    /// (user, area) pairs this call is about.
    fn areas(&self, ctx: &Context<'_>) -> Result<Vec<(String, UploadArea)>, CommandError> {
        match ctx.caller {
            Caller::Remote {
                identity,
                upload_area,
            } => {
                if let Some(user) = &self.user
                    && *user != identity.name
                {
                    return Err(CommandError::Denied(format!(
                        "over SSH you see your own uploads only ({}); leave out --user",
                        identity.name
                    )));
                }
                Ok(vec![(identity.name.clone(), upload_area.clone())])
            }
            Caller::Local => {
                let incoming = ctx.catalog.dirs().incoming();
                if let Some(user) = &self.user {
                    let valid = !user.is_empty()
                        && !user.starts_with('.')
                        && !user.contains(['/', '\\', '\0']);
                    if !valid || !incoming.join(user).is_dir() {
                        return Err(CommandError::Failed(format!(
                            "there is no upload area for {user:?}; `uploads` lists every user's"
                        )));
                    }
                    return Ok(vec![(user.clone(), UploadArea::new(incoming.join(user)))]);
                }
                let mut areas = Vec::new();
                if let Ok(entries) = std::fs::read_dir(&incoming) {
                    for entry in entries.flatten() {
                        let user = entry.file_name().to_string_lossy().into_owned();
                        // Dot names are the server's own (uploads in progress), not users.
                        if entry.file_type().is_ok_and(|t| t.is_dir()) && !user.starts_with('.') {
                            areas.push((user, UploadArea::new(entry.path())));
                        }
                    }
                }
                areas.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(areas)
            }
        }
    }
}

/// Removes one upload through its area: its bytes are freed, its digests forgotten and the
/// removal audited, as an SFTP remove does.
fn remove_one(area: &UserArea, name: &str) -> Result<(), CommandError> {
    let path = area.resolve(name)?;
    match area.remove_file(&path, "uploads") {
        Ok(_) => Ok(()),
        Err(UploadError::NotFound(_)) => Err(CommandError::Failed(format!(
            "{name} is not in your upload area; `uploads` lists what is there"
        ))),
        Err(UploadError::IsDirectory(_)) | Err(UploadError::Failed(_)) => {
            Err(CommandError::Failed(format!(
                "{name} is not a file; only uploaded files can be removed"
            )))
        }
        Err(e) => Err(CommandError::Failed(format!("cannot remove {name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        uploads: super::Uploads,
    }

    #[test]
    fn parses_removals_and_formats() {
        let cli = Cli::try_parse_from([
            "uploads", "--remove", "a", "--remove", "b/c", "--format", "json",
        ])
        .unwrap();
        assert_eq!(cli.uploads.remove, ["a", "b/c"]);
        assert_eq!(cli.uploads.format, super::Format::Json);
        assert!(Cli::try_parse_from(["uploads", "--format", "yaml"]).is_err());
    }
}
