//! Reading another server's tree for `import-tree`, to migrate from lxd-image-server,
//! simplestream-maintainer or any on-disk simplestreams tree.
//!
//! Two ways in: a tree with `streams/v1/index.json` is read through its JSON (serials, aliases
//! and requirements kept; each image's published fingerprint must match its files, so a tree
//! with wrong combined hashes, as lxd-image-server wrote them, is refused image by image); any
//! other tree, or `--layout-only`, is walked as `images/<os>/<release>/<arch>/<variant>/<serial>/`
//! with files typed by their magic bytes and serials taken from the directory names.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::{CatalogError, Result};
use crate::fsutil;
use crate::image::metadata::is_arch_name;
use crate::image::tarball::{self, ScanLimits};
use crate::image::{Compression, Layout, RootKind, sniff};

/// One image found in a tree, ready to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeImage {
    /// The metadata tarball then the root, or one unified tarball.
    pub files: Vec<PathBuf>,
    pub serial: String,
    /// The aliases the tree gave the product; `None` means the default aliases.
    pub aliases: Option<Vec<String>>,
    pub requirements: BTreeMap<String, String>,
    /// The fingerprint the tree published, checked against the files.
    pub expected_fingerprint: Option<String>,
    /// Where the image sits in the tree, for messages.
    pub location: String,
}

/// What reading a tree found: images, and things it could not use, with the reason.
#[derive(Debug, Default)]
pub struct TreeContents {
    pub images: Vec<TreeImage>,
    pub skipped: Vec<(String, String)>,
}

/// Largest file tried as a metadata tarball when walking a layout.
const METADATA_PROBE_LIMIT: u64 = 64 << 20;

pub fn read_tree(dir: &Path, layout_only: bool) -> Result<TreeContents> {
    if !dir.is_dir() {
        return Err(CatalogError::NotFound(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let index = dir.join("streams/v1/index.json");
    if !layout_only && index.is_file() {
        return read_streams(dir, &index);
    }
    let images = if dir.join("images").is_dir() {
        dir.join("images")
    } else {
        dir.to_path_buf()
    };
    read_layout(&images)
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| fsutil::with_path(e, "cannot read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CatalogError::Invalid(format!(
            "{} is not valid JSON ({e}); pass --layout-only to walk the files instead",
            path.display()
        ))
    })
}

/// A relative item path from a foreign JSON, refused when it could leave the tree.
fn tree_path(dir: &Path, relative: &str) -> Option<PathBuf> {
    let path = Path::new(relative);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(path))
}

fn read_streams(dir: &Path, index_path: &Path) -> Result<TreeContents> {
    let index = read_json(index_path)?;
    let mut contents = TreeContents::default();
    let entries = index["index"].as_object().cloned().unwrap_or_default();
    for (name, entry) in entries {
        if entry["datatype"] != "image-downloads" {
            continue;
        }
        let Some(products_path) = entry["path"].as_str().and_then(|p| tree_path(dir, p)) else {
            contents.skipped.push((
                format!("index entry {name}"),
                "its path is missing or leaves the tree".into(),
            ));
            continue;
        };
        let products = read_json(&products_path)?;
        for (product_id, product) in products["products"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            read_product(dir, &product_id, &product, &mut contents);
        }
    }
    Ok(contents)
}

fn read_product(dir: &Path, product_id: &str, product: &Value, contents: &mut TreeContents) {
    let aliases: Vec<String> = product["aliases"]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        // Clients derive the /<arch> forms; older servers wrote them out.
        .filter(|a| {
            !a.is_empty()
                && !a
                    .rsplit_once('/')
                    .is_some_and(|(_, last)| is_arch_name(last))
        })
        .map(str::to_string)
        .collect();
    let requirements: BTreeMap<String, String> = product
        .get("requirements")
        .or_else(|| product.get("lxd_requirements"))
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    for (serial, version) in product["versions"].as_object().cloned().unwrap_or_default() {
        let location = format!("{product_id} {serial}");
        let mut by_ftype: BTreeMap<String, &Value> = BTreeMap::new();
        let items = version["items"].as_object().cloned().unwrap_or_default();
        for item in items.values() {
            if let Some(ftype) = item["ftype"].as_str() {
                by_ftype.entry(ftype.to_string()).or_insert(item);
            }
        }
        // Re-borrow from the owned map: `items` outlives the loop body.
        let item_path = |item: &Value| item["path"].as_str().and_then(|p| tree_path(dir, p));
        let image = |files: Vec<PathBuf>, expected: Option<&str>| TreeImage {
            files,
            serial: serial.clone(),
            aliases: Some(aliases.clone()),
            requirements: requirements.clone(),
            expected_fingerprint: expected.map(str::to_string),
            location: location.clone(),
        };
        if let Some(unified) = by_ftype
            .get("lxd_combined.tar.gz")
            .or_else(|| by_ftype.get("incus_combined.tar.gz"))
        {
            match item_path(unified) {
                Some(path) => contents
                    .images
                    .push(image(vec![path], unified["sha256"].as_str())),
                None => contents.skipped.push((
                    location.clone(),
                    "its unified item's path leaves the tree".into(),
                )),
            }
            continue;
        }
        let Some(meta) = by_ftype
            .get("lxd.tar.xz")
            .or_else(|| by_ftype.get("incus.tar.xz"))
        else {
            contents
                .skipped
                .push((location.clone(), "it has no metadata item".into()));
            continue;
        };
        let Some(meta_path) = item_path(meta) else {
            contents.skipped.push((
                location.clone(),
                "its metadata item's path leaves the tree".into(),
            ));
            continue;
        };
        for (ftype, field) in [
            ("squashfs", "combined_squashfs_sha256"),
            ("disk-kvm.img", "combined_disk-kvm-img_sha256"),
            ("root.tar.xz", "combined_rootxz_sha256"),
        ] {
            let Some(root) = by_ftype.get(ftype) else {
                continue;
            };
            let expected = meta[field].as_str().or_else(|| {
                if ftype == "root.tar.xz" {
                    meta["combined_sha256"].as_str()
                } else {
                    None
                }
            });
            match item_path(root) {
                Some(root_path) => contents
                    .images
                    .push(image(vec![meta_path.clone(), root_path], expected)),
                None => contents.skipped.push((
                    location.clone(),
                    format!("its {ftype} item's path leaves the tree"),
                )),
            }
        }
    }
}

/// Walks `<os>/<release>/<arch>/<variant>/<serial>/` below `images`.
fn read_layout(images: &Path) -> Result<TreeContents> {
    let mut contents = TreeContents::default();
    let mut version_dirs = Vec::new();
    collect_dirs_at_depth(images, 5, &mut version_dirs)?;
    version_dirs.sort();
    for dir in version_dirs {
        let location = dir
            .strip_prefix(images)
            .unwrap_or(&dir)
            .display()
            .to_string();
        let Some(serial) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let mut metadata = Vec::new();
        let mut roots = Vec::new();
        let mut unified = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| fsutil::with_path(e, "cannot list", &dir))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".vcdiff") || name == "images.yaml" || name.starts_with('.') {
                continue;
            }
            match classify(&file) {
                Ok(FileRole::Metadata) => metadata.push(file),
                Ok(FileRole::Root) => roots.push(file),
                Ok(FileRole::Unified) => unified.push(file),
                Err(reason) => contents
                    .skipped
                    .push((format!("{location}/{name}"), reason)),
            }
        }
        let image = |files: Vec<PathBuf>| TreeImage {
            files,
            serial: serial.clone(),
            aliases: None,
            requirements: BTreeMap::new(),
            expected_fingerprint: None,
            location: location.clone(),
        };
        contents
            .images
            .extend(unified.into_iter().map(|file| image(vec![file])));
        match (metadata.as_slice(), roots.is_empty()) {
            ([], true) => {}
            ([], false) => contents.skipped.push((
                location.clone(),
                "it has roots but no metadata tarball".into(),
            )),
            ([meta], _) => contents.images.extend(
                roots
                    .into_iter()
                    .map(|root| image(vec![meta.clone(), root])),
            ),
            (_, _) => contents.skipped.push((
                location.clone(),
                "it has more than one metadata tarball".into(),
            )),
        }
    }
    Ok(contents)
}

fn collect_dirs_at_depth(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<()> {
    if depth == 0 {
        found.push(dir.to_path_buf());
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| fsutil::with_path(e, "cannot list", dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        // Symlinks are not followed: a tree must not lead the import elsewhere.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs_at_depth(&path, depth - 1, found)?;
        }
    }
    Ok(())
}

pub(crate) enum FileRole {
    Metadata,
    Root,
    Unified,
}

/// Types a file by its content: roots by magic, tarballs by whether they hold metadata.yaml.
pub(crate) fn classify(path: &Path) -> Result<FileRole, String> {
    let mut file = File::open(path).map_err(|e| fsutil::plain_message(&e))?;
    let size = file
        .metadata()
        .map_err(|e| fsutil::plain_message(&e))?
        .len();
    let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
    (&mut file)
        .take(sniff::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| fsutil::plain_message(&e))?;
    match RootKind::detect(&head) {
        Some(RootKind::Squashfs | RootKind::Qcow2) => return Ok(FileRole::Root),
        Some(RootKind::TarXz) if size > METADATA_PROBE_LIMIT => return Ok(FileRole::Root),
        _ => {}
    }
    let Some(compression) = Compression::detect(&head) else {
        return Err(format!(
            "it is {}, not part of an image",
            sniff::describe(&head)
        ));
    };
    if size > METADATA_PROBE_LIMIT {
        return Ok(FileRole::Unified);
    }
    let file = File::open(path).map_err(|e| fsutil::plain_message(&e))?;
    match tarball::scan(file, compression, ScanLimits::default()) {
        Ok(scan) if scan.layout == Layout::MetadataOnly => Ok(FileRole::Metadata),
        Ok(_) => Ok(FileRole::Unified),
        Err(problem) if problem == "has no metadata.yaml" && compression == Compression::Xz => {
            Ok(FileRole::Root)
        }
        Err(problem) => Err(format!("it {problem}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_paths_stay_in_the_tree() {
        let dir = Path::new("/tree");
        assert_eq!(
            tree_path(dir, "images/a/b"),
            Some(PathBuf::from("/tree/images/a/b"))
        );
        assert_eq!(tree_path(dir, "../etc/passwd"), None);
        assert_eq!(tree_path(dir, "/etc/passwd"), None);
        assert_eq!(
            tree_path(dir, "images/./x"),
            Some(PathBuf::from("/tree/images/x"))
        );
    }
}
