//! One run of a mirror, top to bottom:
//! 1. read the upstream's index.json and every `image-downloads` products file it names;
//! 2. plan: the versions the filters and `keep` take, less those this mirror holds;
//! 3. download the metadata tarballs, then the roots and unified tarballs (a root's combined
//!    fingerprint comes from the same pass as its sha256: its hasher starts from the
//!    metadata's), each checked against its item;
//! 4. publish each whole version through the catalog's transaction; a version with a file
//!    that did not check out is refused alone;
//! 5. take out the versions this mirror brought that upstream no longer lists or that fall
//!    outside `keep`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::download::{self, Downloader, FileDone, FileJob, Pace};
use super::plan::{self, PlannedDelta, PlannedFiles, PlannedVersion, UpstreamProducts};
use super::upstream::{Upstream, check_relative_path};
use super::{MirrorError, MirrorSpec, Progress, SyncReport};
use crate::catalog::Catalog;
use crate::catalog::mirrored::{
    DownloadedFile, MirroredDelta, MirroredDeltaOutcome, MirroredFiles, MirroredRoot,
    MirroredVersion, versions_from,
};
use crate::catalog::record::CatalogState;
use crate::catalog::remove::RemovedImage;
use crate::sha256::Sha256State;
use crate::streams;

/// The most an index.json or products file may be (after gzip decoding).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Runs one sync of `spec` into `catalog`. Blocking: async callers use `spawn_blocking`.
pub fn sync(
    catalog: &Catalog,
    spec: &MirrorSpec,
    progress: &dyn Progress,
) -> Result<SyncReport, MirrorError> {
    let upstream = Arc::new(Upstream::new(&spec.url, spec.ca_cert.as_deref())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mirror")
        .enable_all()
        .build()?;
    let sources = runtime.block_on(read_upstream(&upstream))?;
    let state = catalog.load()?;
    let plan = plan::plan(&sources, spec, &state)?;
    drop(sources);
    let origin = spec.origin();
    let mut report = SyncReport {
        refused: plan.refused.clone(),
        notes: plan.notes.clone(),
        ..SyncReport::default()
    };

    if spec.dry_run {
        report.new_versions = plan.to_fetch.len() as u64;
        let wanted = wanted_after(&plan.listed, &versions_from(&state, origin), &plan, spec);
        report.removed_versions = count_versions(&catalog.remove_mirrored(
            origin,
            |p, s| wanted.contains(&(p.into(), s.into())),
            true,
        )?);
        return Ok(report);
    }

    let downloader = Arc::new(Downloader {
        upstream,
        tree: Arc::clone(catalog.tree()),
        dir: download_dir(catalog, origin),
        concurrency: spec.concurrency.max(1),
        pace: spec.bandwidth_limit.map(|limit| Arc::new(Pace::new(limit))),
        writer_slots: Arc::new(tokio::sync::Semaphore::new(spec.concurrency.max(1))),
    });
    std::fs::create_dir_all(&downloader.dir)
        .map_err(|e| crate::fsutil::with_path(e, "cannot create", &downloader.dir))?;
    let held = held_files(&state, catalog.tree().as_ref());
    let deltas = deltas_to_fetch(&plan, &state, origin);

    // Metadata first: the roots' combined hashes continue from its hasher.
    let mut jobs_meta = BTreeMap::new();
    let mut jobs_rest = BTreeMap::new();
    for version in &plan.to_fetch {
        match &version.files {
            PlannedFiles::Split { metadata, roots } => {
                jobs_meta
                    .entry(metadata.sha256.clone())
                    .or_insert(metadata.clone());
                for root in roots {
                    jobs_rest
                        .entry(root.file.sha256.clone())
                        .or_insert(root.file.clone());
                }
            }
            PlannedFiles::Unified { tarball, .. } => {
                jobs_rest
                    .entry(tarball.sha256.clone())
                    .or_insert(tarball.clone());
            }
        }
    }
    for (_, _, delta) in &deltas {
        jobs_rest
            .entry(delta.file.sha256.clone())
            .or_insert(delta.file.clone());
    }
    // What is to fetch: files the catalog holds are copied, not counted.
    let to_fetch = jobs_meta
        .values()
        .chain(jobs_rest.values())
        .filter(|file| !held.contains_key(&(file.sha256.clone(), file.size)));
    let (count, bytes) = to_fetch.fold((0u64, 0u64), |(count, bytes), file| {
        (count + 1, bytes + file.size - downloader.already_here(file))
    });
    progress.planned(count, bytes);
    let job = |file: &plan::UpstreamFile, seeds: Vec<(String, Sha256State)>| FileJob {
        held: held.get(&(file.sha256.clone(), file.size)).cloned(),
        file: file.clone(),
        seeds,
    };
    let meta_jobs: Vec<FileJob> = jobs_meta.values().map(|f| job(f, Vec::new())).collect();
    let mut results = runtime.block_on(downloader.run(meta_jobs, progress));
    let meta_states: BTreeMap<String, Sha256State> = results
        .iter()
        .filter_map(|(sha, result)| Some((sha.clone(), result.as_ref().ok()?.state.clone())))
        .collect();
    // Each root continues the hashers of the metadata it pairs with.
    let mut seeds_of: BTreeMap<String, Vec<(String, Sha256State)>> = BTreeMap::new();
    for version in &plan.to_fetch {
        if let PlannedFiles::Split { metadata, roots } = &version.files
            && let Some(state) = meta_states.get(&metadata.sha256)
        {
            for root in roots {
                let seeds = seeds_of.entry(root.file.sha256.clone()).or_default();
                if !seeds.iter().any(|(sha, _)| sha == &metadata.sha256) {
                    seeds.push((metadata.sha256.clone(), state.clone()));
                }
            }
        }
    }
    let rest_jobs: Vec<FileJob> = jobs_rest
        .values()
        .map(|f| job(f, seeds_of.remove(&f.sha256).unwrap_or_default()))
        .collect();
    results.extend(runtime.block_on(downloader.run(rest_jobs, progress)));
    drop(runtime);

    for done in results.values().flatten() {
        report.bytes_downloaded += done.fetched;
        report.files_reused += u64::from(done.reused);
    }

    // What did arrive for a refused version stays for the next run (a mismatching file was
    // deleted already), its deltas included.
    let mut keep_files = BTreeSet::new();
    let mut refused_versions = BTreeSet::new();
    for version in &plan.to_fetch {
        let outcome = ready_version(version, &results).and_then(|ready| {
            catalog.publish_mirrored(origin, &ready).map_err(|e| {
                format!(
                    "refused {} version {}: {e}",
                    version.product.id, version.serial
                )
            })
        });
        match outcome {
            Ok(_) => report.new_versions += 1,
            Err(line) => {
                keep_files.extend(version.files().iter().map(|f| f.sha256.clone()));
                refused_versions.insert((version.product.id.clone(), version.serial.clone()));
                report.refused.push(line);
            }
        }
    }
    let (deltas, waiting): (Vec<_>, Vec<_>) =
        deltas.into_iter().partition(|(product, serial, _)| {
            !refused_versions.contains(&(product.clone(), serial.clone()))
        });
    keep_files.extend(
        waiting
            .iter()
            .map(|(_, _, delta)| delta.file.sha256.clone()),
    );
    report
        .notes
        .extend(attach_deltas(catalog, origin, &deltas, &results));

    // Upstream's aliases and requirements of the products held already, when they changed.
    let state = catalog.load()?;
    for described in plan.products.values() {
        let changed = state.products.get(&described.id).is_some_and(|held| {
            held.aliases != described.aliases || held.requirements != described.requirements
        });
        if changed && let Err(e) = catalog.refresh_mirrored_product(origin, described) {
            report
                .refused
                .push(format!("refused {}: {e}", described.id));
        }
    }

    let state = catalog.load()?;
    let wanted = wanted_after(&plan.listed, &versions_from(&state, origin), &plan, spec);
    let removed = catalog.remove_mirrored(
        origin,
        |product, serial| wanted.contains(&(product.to_string(), serial.to_string())),
        false,
    )?;
    report.removed_versions = count_versions(&removed);
    download::clean(&downloader.dir, &keep_files)?;
    Ok(report)
}

/// Reads index.json and every products file it names for image downloads.
async fn read_upstream(upstream: &Upstream) -> Result<Vec<UpstreamProducts>, MirrorError> {
    let base = upstream.base();
    let bytes = upstream
        .get_json(streams::INDEX_PATH, MAX_JSON_BYTES)
        .await?;
    let index: streams::Index = parse_json(
        &bytes,
        &format!("{base}{}", streams::INDEX_PATH),
        "a simplestreams index",
    )?;
    let mut sources = Vec::new();
    for (id, entry) in index.image_downloads() {
        if let Err(problem) = check_relative_path(&entry.path) {
            return Err(MirrorError::Upstream(format!(
                "upstream index entry {id} has a path that {problem}; nothing was mirrored"
            )));
        }
        let bytes = upstream.get_json(&entry.path, MAX_JSON_BYTES).await?;
        let products: streams::Products = parse_json(
            &bytes,
            &format!("{base}{}", entry.path),
            "a simplestreams products file",
        )?;
        sources.push(UpstreamProducts {
            path: entry.path.clone(),
            products,
        });
    }
    if sources.is_empty() {
        return Err(MirrorError::Upstream(format!(
            "{base}{} lists no image-downloads products file; is this a simplestreams image server?",
            streams::INDEX_PATH
        )));
    }
    Ok(sources)
}

/// Parses JSON, saying in one line what is wrong and where.
fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    url: &str,
    what: &str,
) -> Result<T, MirrorError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            MirrorError::Upstream(format!("{url} is not JSON ({inner})"))
        } else {
            let path = e.path().to_string();
            MirrorError::Upstream(format!(
                "{url} is not {what}: at {path}: {inner}; nothing was mirrored"
            ))
        }
    })
}

/// The version with every downloaded file, or the line that refuses it.
fn ready_version(
    version: &PlannedVersion,
    results: &BTreeMap<String, Result<FileDone, String>>,
) -> Result<MirroredVersion, String> {
    let refused = |file: &plan::UpstreamFile, problem: &str| {
        format!(
            "refused {} version {}: {}: {problem}",
            version.product.id, version.serial, file.path
        )
    };
    let get = |file: &plan::UpstreamFile| -> Result<(DownloadedFile, &FileDone), String> {
        match results.get(&file.sha256) {
            Some(Ok(done)) => Ok((
                DownloadedFile {
                    path: done.path.clone(),
                    label: file.path.clone(),
                    size: file.size,
                    sha256: file.sha256.clone(),
                },
                done,
            )),
            Some(Err(problem)) => Err(refused(file, problem)),
            None => Err(refused(file, "was not downloaded")),
        }
    };
    let files = match &version.files {
        PlannedFiles::Split { metadata, roots } => {
            let (metadata_file, _) = get(metadata)?;
            let mut mirrored_roots = Vec::new();
            for root in roots {
                let (file, done) = get(&root.file)?;
                let actual = done
                    .combined
                    .iter()
                    .find(|(meta, _)| meta == &metadata.sha256)
                    .map(|(_, combined)| combined.clone())
                    .unwrap_or_default();
                if actual != root.combined {
                    return Err(refused(
                        &root.file,
                        &format!(
                            "expected fingerprint {} (the metadata's combined hash), got {actual}",
                            root.combined
                        ),
                    ));
                }
                mirrored_roots.push(MirroredRoot {
                    file,
                    combined_sha256: actual,
                });
            }
            MirroredFiles::Split {
                metadata: metadata_file,
                roots: mirrored_roots,
            }
        }
        PlannedFiles::Unified { tarball, .. } => MirroredFiles::Unified {
            tarball: get(tarball)?.0,
        },
    };
    Ok(MirroredVersion {
        product: version.product.clone(),
        serial: version.serial.clone(),
        files,
    })
}

/// The upstream deltas worth fetching: their version and their base are both kept (held, or
/// arriving in this run), and the root has no delta from that base yet, nor declined one.
fn deltas_to_fetch(
    plan: &plan::Plan,
    state: &CatalogState,
    origin: &str,
) -> Vec<(String, String, PlannedDelta)> {
    let held = versions_from(state, origin);
    let arriving: BTreeSet<(String, String)> = plan
        .to_fetch
        .iter()
        .map(|v| (v.product.id.clone(), v.serial.clone()))
        .collect();
    let have = |key: &(String, String)| {
        plan.kept.contains(key) && (held.contains(key) || arriving.contains(key))
    };
    plan.deltas
        .iter()
        .filter(|(product, serial, delta)| {
            if delta.base >= *serial
                || !have(&(product.clone(), serial.clone()))
                || !have(&(product.clone(), delta.base.clone()))
            {
                return false;
            }
            let root = state
                .products
                .get(product)
                .and_then(|p| p.versions.get(serial))
                .and_then(|v| v.squashfs_root());
            !root.is_some_and(|root| {
                root.deltas.contains_key(&delta.base)
                    || root.deltas_declined.contains_key(&delta.base)
            })
        })
        .cloned()
        .collect()
}

/// Checks and publishes the downloaded deltas whose versions are published; returns notes.
fn attach_deltas(
    catalog: &Catalog,
    origin: &str,
    deltas: &[(String, String, PlannedDelta)],
    results: &BTreeMap<String, Result<FileDone, String>>,
) -> Vec<String> {
    let mut notes = Vec::new();
    let mut published = 0;
    for (product_id, serial, delta) in deltas {
        let what = format!(
            "upstream delta of {product_id} version {serial} from {}",
            delta.base
        );
        let done = match results.get(&delta.file.sha256) {
            Some(Ok(done)) => done,
            Some(Err(problem)) => {
                notes.push(format!(
                    "{what} not mirrored: {}: {problem}",
                    delta.file.path
                ));
                continue;
            }
            None => continue,
        };
        let mirrored = MirroredDelta {
            product_id: product_id.clone(),
            serial: serial.clone(),
            base_serial: delta.base.clone(),
            file: DownloadedFile {
                path: done.path.clone(),
                label: delta.file.path.clone(),
                size: delta.file.size,
                sha256: delta.file.sha256.clone(),
            },
        };
        match catalog.attach_mirrored_delta(origin, &mirrored) {
            Ok(MirroredDeltaOutcome::Published) => published += 1,
            Ok(MirroredDeltaOutcome::AlreadyThere) => {}
            Ok(MirroredDeltaOutcome::Declined(reason)) => {
                notes.push(format!("{what} not mirrored: {reason}"));
            }
            Err(e) => notes.push(format!("{what} not mirrored: {e}")),
        }
    }
    if published > 0 {
        notes.push(format!("{published} upstream delta(s) mirrored"));
    }
    notes
}

/// The (product, serial) pairs a mirror keeps: upstream still lists them (filters allowing)
/// and they are among the newest `keep` of those it holds now.
fn wanted_after(
    listed: &BTreeMap<String, Vec<String>>,
    held: &BTreeSet<(String, String)>,
    plan: &plan::Plan,
    spec: &MirrorSpec,
) -> BTreeSet<(String, String)> {
    let arriving: BTreeSet<(String, String)> = if spec.dry_run {
        plan.to_fetch
            .iter()
            .map(|v| (v.product.id.clone(), v.serial.clone()))
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut wanted = BTreeSet::new();
    for (product, serials) in listed {
        let present = serials.iter().rev().filter(|serial| {
            let key = (product.clone(), (*serial).clone());
            held.contains(&key) || arriving.contains(&key)
        });
        let kept: Vec<&String> = match spec.keep {
            Some(keep) => present.take(keep).collect(),
            None => present.collect(),
        };
        wanted.extend(kept.into_iter().map(|s| (product.clone(), s.clone())));
    }
    wanted
}

fn count_versions(removed: &[RemovedImage]) -> u64 {
    removed
        .iter()
        .map(|image| (&image.product_id, &image.serial))
        .collect::<BTreeSet<_>>()
        .len() as u64
}

/// Files the catalog publishes or keeps for the grace period, by (sha256, size).
fn held_files(
    state: &CatalogState,
    tree: &dyn crate::storage::PublishedTree,
) -> BTreeMap<(String, u64), String> {
    let mut held = BTreeMap::new();
    for product in state.products.values() {
        for version in product.versions.values() {
            for file in version.stored_files() {
                held.entry((file.sha256.clone(), file.size))
                    .or_insert_with(|| file.path.clone());
            }
        }
    }
    for retired in &state.retired {
        if let Ok(Some(meta)) = tree.stat(&retired.path) {
            held.entry((retired.sha256.clone(), meta.size))
                .or_insert_with(|| retired.path.clone());
        }
    }
    held
}

/// `tmp/mirror/<key>`: one folder per origin, kept across runs for resumption.
fn download_dir(catalog: &Catalog, origin: &str) -> std::path::PathBuf {
    let key = crate::catalog::hashing::sha256_hex(origin.as_bytes());
    catalog.dirs().tmp().join("mirror").join(&key[..16])
}
