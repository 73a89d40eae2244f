//! `info <fingerprint-prefix|alias>`: everything the catalog knows about an image.

use std::io::Write;

use serde::Serialize;

use super::output::{TextFormat, for_people, write_json};
use super::{CommandError, Context};
use crate::catalog::record::{CatalogState, LocatedImage};
use crate::catalog::stream_files::DELTA_FTYPE;
use crate::catalog::summary::ImageSummary;
use crate::catalog::{CatalogError, find_by_fingerprint};
use crate::format::human_size;
use crate::format::rfc3339;

/// Show an image's details, by fingerprint prefix or alias
#[derive(Debug, clap::Args)]
pub struct Info {
    /// A fingerprint (or its first digits) or an alias
    pub image: String,
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    pub format: TextFormat,
}

#[derive(Serialize)]
struct FileInfo<'a> {
    ftypes: Vec<&'static str>,
    path: &'a str,
    size: u64,
    sha256: &'a str,
    /// On a delta: the serial of the version it applies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_base: Option<&'a str>,
}

#[derive(Serialize)]
struct ImageDetails<'a> {
    #[serde(flatten)]
    summary: ImageSummary,
    requirements: &'a std::collections::BTreeMap<String, String>,
    imported_by: &'a str,
    imported_at: String,
    /// Who may publish into the product besides admins.
    owner: Option<&'a str>,
    shared_with: &'a std::collections::BTreeSet<String>,
    sources: &'a [String],
    files: Vec<FileInfo<'a>>,
}

/// The images an argument names: a unique fingerprint prefix, else the images an alias points
/// at (the newest version of each product that carries it, per image type).
fn resolve<'a>(
    state: &'a CatalogState,
    wanted: &str,
) -> Result<Vec<LocatedImage<'a>>, CatalogError> {
    let by_alias: Vec<LocatedImage<'a>> = state
        .images()
        .filter(|located| located.owned_aliases().contains(&wanted))
        .collect();
    if !by_alias.is_empty() {
        return Ok(by_alias);
    }
    if wanted.chars().all(|c| c.is_ascii_hexdigit()) && !wanted.is_empty() {
        return find_by_fingerprint(state, wanted).map(|one| vec![one]);
    }
    Err(CatalogError::NotFound(format!(
        "no image has the alias or fingerprint {wanted:?}; `list` shows them"
    )))
}

fn details<'a>(located: &LocatedImage<'a>) -> ImageDetails<'a> {
    let image = located.image;
    let mut files = vec![FileInfo {
        ftypes: match image.root {
            Some(_) => vec!["lxd.tar.xz", "incus.tar.xz"],
            None => vec!["lxd_combined.tar.gz", "incus_combined.tar.gz"],
        },
        path: &image.metadata.path,
        size: image.metadata.size,
        sha256: &image.metadata.sha256,
        delta_base: None,
    }];
    if let Some(root) = image.root {
        files.push(FileInfo {
            ftypes: vec![root.kind.ftype()],
            path: &root.file.path,
            size: root.file.size,
            sha256: &root.file.sha256,
            delta_base: None,
        });
        for (base, delta) in &root.deltas {
            files.push(FileInfo {
                ftypes: vec![DELTA_FTYPE],
                path: &delta.path,
                size: delta.size,
                sha256: &delta.sha256,
                delta_base: Some(base),
            });
        }
    }
    ImageDetails {
        summary: ImageSummary::of(located),
        requirements: &located.product.requirements,
        imported_by: &image.imported.by,
        imported_at: rfc3339(image.imported.at),
        owner: located.product.owner(),
        shared_with: &located.product.shared_with,
        sources: &image.imported.sources,
        files,
    }
}

impl Info {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let state = ctx.catalog.load()?;
        let images: Vec<ImageDetails<'_>> =
            resolve(&state, &self.image)?.iter().map(details).collect();
        match self.format {
            TextFormat::Json => write_json(ctx.out, &images)?,
            TextFormat::Text => {
                for (i, d) in images.iter().enumerate() {
                    if i > 0 {
                        writeln!(ctx.out)?;
                    }
                    write_text(ctx.out, d)?;
                }
            }
        }
        Ok(())
    }
}

/// The text form. Every string an image or a publisher chose goes through [`for_people`].
fn write_text(out: &mut dyn Write, d: &ImageDetails<'_>) -> std::io::Result<()> {
    let s = &d.summary;
    let p = |text: &str| for_people(text);
    writeln!(out, "Fingerprint: {}", s.fingerprint)?;
    writeln!(out, "Product: {}", p(&s.product))?;
    writeln!(out, "Type: {}", s.image_type)?;
    writeln!(
        out,
        "OS: {}  Release: {}  Variant: {}  Architecture: {}",
        p(&s.os),
        p(&s.release),
        p(&s.variant),
        p(&s.arch)
    )?;
    writeln!(out, "Serial: {}", p(&s.serial))?;
    writeln!(out, "Description: {}", p(&s.description))?;
    writeln!(out, "Created: {}", s.created)?;
    writeln!(out, "Size: {} ({} bytes)", human_size(s.size), s.size)?;
    writeln!(
        out,
        "Aliases: {}",
        if s.aliases.is_empty() {
            "-".to_string()
        } else {
            p(&s.aliases.join(", "))
        }
    )?;
    if !d.requirements.is_empty() {
        let pairs: Vec<String> = d
            .requirements
            .iter()
            .map(|(k, v)| format!("{}={}", p(k), p(v)))
            .collect();
        writeln!(out, "Requirements: {}", pairs.join(", "))?;
    }
    writeln!(
        out,
        "Imported: {} by {} from {}",
        d.imported_at,
        p(d.imported_by),
        p(&d.sources.join(", "))
    )?;
    if let Some(origin) = &s.origin {
        writeln!(out, "Mirrored from: {}", p(origin))?;
    }
    if let Some(owner) = d.owner {
        let shared: Vec<String> = d.shared_with.iter().map(|u| p(u)).collect();
        if shared.is_empty() {
            writeln!(out, "Owner: {}", p(owner))?;
        } else {
            writeln!(
                out,
                "Owner: {} (shared with {})",
                p(owner),
                shared.join(", ")
            )?;
        }
    }
    writeln!(out, "Files:")?;
    for file in &d.files {
        let from = file
            .delta_base
            .map(|base| format!(" from {}", p(base)))
            .unwrap_or_default();
        writeln!(
            out,
            "  {} ({}{from}, {} bytes, sha256 {})",
            p(file.path),
            file.ftypes.join(" + "),
            file.size,
            file.sha256
        )?;
    }
    Ok(())
}
