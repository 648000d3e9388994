//! What `layerprune cache ls | verify | gc` do to a cache root; the CLI only prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::store::{Status, Store};

/// One artifact of the cache as `ls` shows it.
pub struct CacheEntry {
    pub kind: String,
    pub key: String,
    pub bytes: u64,
    /// The job that made it ("stage[axis=value]") and when it finished; or why it is corrupt.
    pub state: Result<(String, String), String>,
}

/// Every complete or corrupt artifact (cheap check: sizes and modification times).
pub fn list(cache_root: &Path) -> Vec<CacheEntry> {
    let store = Store::new(cache_root);
    store
        .list()
        .into_iter()
        .filter_map(|(kind, key, dir)| {
            let state = match store.status(&kind, &key, false) {
                Status::Valid(m) => Ok((
                    crate::pipeline::graph::label(&m.stage, &m.assignment),
                    m.finished_at,
                )),
                Status::Corrupt(r) => Err(r),
                Status::Missing => return None,
            };
            Some(CacheEntry {
                bytes: dir_size(&dir),
                kind,
                key,
                state,
            })
        })
        .collect()
}

/// Every artifact re-hashed against its manifest: (kind, key, why it is corrupt, if it is).
pub fn verify(cache_root: &Path) -> Vec<(String, String, Option<String>)> {
    let store = Store::new(cache_root);
    store
        .list()
        .into_iter()
        .filter_map(|(kind, key, _)| match store.status(&kind, &key, true) {
            Status::Valid(_) => Some((kind, key, None)),
            Status::Corrupt(r) => Some((kind, key, Some(r))),
            Status::Missing => None,
        })
        .collect()
}

/// One step of a garbage collection.
pub enum GcAction<'a> {
    /// An artifact no kept pipeline reaches.
    Remove { kind: &'a str, key: &'a str },
    /// The temporary directory of an interrupted job.
    RemoveLeftover(&'a Path),
    /// Held by a running job (its key's lock): left alone.
    SkipBusy(&'a Path),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct GcSummary {
    pub removed: usize,
    pub kept: usize,
    pub busy: usize,
    pub bytes: u64,
}

/// Remove (or with `dry_run` only report) the artifacts of `cache_root` whose keys are not in
/// `keep` (`None`: remove all), and the leftovers of interrupted jobs; never anything whose
/// key's lock a running job holds. `on_action` sees each step before it is taken.
pub fn gc(
    cache_root: &Path,
    keep: Option<&BTreeSet<String>>,
    dry_run: bool,
    on_action: &mut dyn FnMut(&GcAction),
) -> Result<GcSummary> {
    let store = Store::new(cache_root);
    let mut summary = GcSummary::default();
    for (kind, key, dir) in store.list() {
        if keep.is_some_and(|k| k.contains(&key)) {
            summary.kept += 1;
            continue;
        }
        let Some(_lock) = store.try_lock(&kind, &key)? else {
            summary.busy += 1;
            on_action(&GcAction::SkipBusy(&dir));
            continue;
        };
        summary.bytes += dir_size(&dir);
        summary.removed += 1;
        on_action(&GcAction::Remove {
            kind: &kind,
            key: &key,
        });
        if !dry_run {
            remove(&dir)?;
        }
    }
    for (kind, key, tmp) in store.leftovers() {
        let Some(_lock) = store.try_lock(&kind, &key)? else {
            summary.busy += 1;
            on_action(&GcAction::SkipBusy(&tmp));
            continue;
        };
        on_action(&GcAction::RemoveLeftover(&tmp));
        if !dry_run {
            remove(&tmp)?;
        }
    }
    Ok(summary)
}

fn remove(dir: &PathBuf) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// Bytes of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            total += dir_size(&p);
        } else {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}
