//! Moving finished artifacts between caches: `cache export` writes the cached artifacts of
//! pipelines' jobs (all, or those of some stages) into one zip file, each as
//! `<kind>/<key>/<its files>` with its manifest; `cache import` checks every artifact of such a
//! file against its manifest (file list, sizes, sha256) in a temporary directory of the cache
//! and moves it into place with the same atomic rename and key lock as a job's, so a bad or
//! truncated bundle never leaves anything that looks complete. For caches that share no file
//! system: a cluster node's scratch disk and a laptop, or a machine whose disk is not kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::store::{Status, Store};

/// One artifact to export: the job's label (for messages), kind and key.
pub struct Wanted {
    pub label: String,
    pub kind: String,
    pub key: String,
}

#[derive(Debug, Default)]
pub struct ExportSummary {
    pub artifacts: usize,
    /// Bytes of the artifacts' files (before compression).
    pub bytes: u64,
    /// Labels of the jobs whose artifact is not in the cache (nothing exported for them).
    pub not_cached: Vec<String>,
}

/// Write the cached artifacts among `wanted` (each re-hashed first: a corrupt one is an error)
/// into the zip file `out`, through a temporary file renamed at the end.
pub fn export(cache_root: &Path, wanted: &[Wanted], out: &Path) -> Result<ExportSummary> {
    let store = Store::new(cache_root);
    let mut summary = ExportSummary::default();
    let mut found = Vec::new();
    for w in wanted {
        match store.status(&w.kind, &w.key, true) {
            Status::Valid(_) => found.push(w),
            Status::Missing => summary.not_cached.push(w.label.clone()),
            Status::Corrupt(why) => anyhow::bail!(
                "{} ({}/{}) is corrupt in the cache ({why}); `cache verify` lists such \
                 artifacts, and `run` recomputes them",
                w.label,
                w.kind,
                w.key
            ),
        }
    }
    let dir = crate::fsutil::parent_dir(out);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    // a published file: the permissions of a plain File::create (0666 less the umask), as
    // fsutil::atomic_write gives
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder
        .prefix(".bundle-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let mut zip = zip::ZipWriter::new(tmp);
    for w in found {
        let root = store.dir(&w.kind, &w.key);
        let mut files = Vec::new();
        list_files(&root, &root, &mut files)?;
        // the manifest last, as the store writes it
        files.sort_by_key(|rel| {
            (
                rel == Path::new(crate::artifacts::manifest::FILE),
                rel.clone(),
            )
        });
        for rel in files {
            let path = root.join(&rel);
            let size = std::fs::metadata(&path)?.len();
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .large_file(size >= u32::MAX as u64);
            let name = format!("{}/{}/{}", w.kind, w.key, rel.to_string_lossy());
            zip.start_file(name, options)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let mut f = std::fs::File::open(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            std::io::copy(&mut f, &mut zip)
                .with_context(|| format!("cannot write {}", out.display()))?;
            summary.bytes += size;
        }
        summary.artifacts += 1;
    }
    let mut tmp = zip
        .finish()
        .with_context(|| format!("cannot write {}", out.display()))?;
    tmp.flush()?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(summary)
}

fn list_files(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            list_files(&e.path(), base, out)?;
        } else {
            out.push(e.path().strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

/// What import did with one artifact of the bundle.
#[derive(Debug, PartialEq)]
pub enum Imported {
    /// Checked and moved into the cache.
    Added { kind: String, key: String },
    /// A valid copy was already in the cache (left as it is).
    AlreadyCached { kind: String, key: String },
    /// Not imported: what is wrong with it.
    Rejected {
        kind: String,
        key: String,
        why: String,
    },
}

/// Import every artifact of the bundle `bundle` into the cache at `cache_root`. An unreadable
/// bundle, or an entry outside `<stage kind>/<key>/...`, is an error before anything is
/// written; an artifact whose files do not match its manifest is rejected (and the others
/// imported).
pub fn import(cache_root: &Path, bundle: &Path) -> Result<Vec<Imported>> {
    let file =
        std::fs::File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).with_context(|| {
        format!(
            "{} is not a zip file (a `cache export` bundle)",
            bundle.display()
        )
    })?;
    // (kind, key) -> entry indices, the manifest's last
    let mut artifacts: BTreeMap<(String, String), Vec<(bool, usize)>> = BTreeMap::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .with_context(|| format!("{}: entry {i} unreadable", bundle.display()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let (kind, key, rel) = split_entry(&name, entry.enclosed_name().is_some())
            .with_context(|| format!("{}: entry {name:?}", bundle.display()))?;
        let is_manifest = rel == crate::artifacts::manifest::FILE;
        artifacts
            .entry((kind, key))
            .or_default()
            .push((is_manifest, i));
    }
    let store = Store::new(cache_root);
    let mut done = Vec::new();
    for ((kind, key), mut entries) in artifacts {
        if let Status::Valid(_) = store.status(&kind, &key, false) {
            done.push(Imported::AlreadyCached { kind, key });
            continue;
        }
        let pending = match store.begin(&kind, &key) {
            Ok(Some(p)) => p,
            Ok(None) => {
                done.push(Imported::AlreadyCached { kind, key });
                continue;
            }
            Err(e) => {
                let why = format!("{e:#}");
                done.push(Imported::Rejected { kind, key, why });
                continue;
            }
        };
        entries.sort();
        let prefix = format!("{kind}/{key}/");
        let unpack = || -> Result<()> {
            for &(_, i) in &entries {
                let mut entry = zip.by_index(i)?;
                let rel = entry.name()[prefix.len()..].to_string();
                let path = pending.tmp.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                let mut out = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                // a read error (a truncated or corrupt bundle: CRC) or a write error, named
                std::io::copy(&mut entry, &mut out)
                    .with_context(|| format!("{rel}: cannot copy it out of the bundle"))?;
                out.flush()?;
            }
            store.adopt(pending, &kind, &key)?;
            Ok(())
        };
        match unpack() {
            Ok(()) => done.push(Imported::Added { kind, key }),
            Err(e) => done.push(Imported::Rejected {
                kind,
                key,
                why: format!("{e:#}"),
            }),
        }
    }
    Ok(done)
}

/// "<kind>/<key>/<relative path>" of a bundle entry, checked: a known stage kind, a hex key,
/// a relative path inside the artifact (no empty, "." or ".." component, no backslash).
fn split_entry(name: &str, enclosed: bool) -> Result<(String, String, String)> {
    let mut parts = name.splitn(3, '/');
    let (Some(kind), Some(key), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("expected <stage kind>/<key>/<file>");
    };
    let odd = |p: &str| p.is_empty() || p == "." || p == ".." || p.contains('\\');
    if !enclosed || odd(kind) || odd(key) || rel.split('/').any(odd) {
        anyhow::bail!("a path outside its artifact's directory");
    }
    if crate::stages::find(kind).is_none() {
        anyhow::bail!("{kind:?} is not a stage kind");
    }
    if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{key:?} is not an artifact key (hexadecimal)");
    }
    Ok((kind.to_string(), key.to_string(), rel.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_outside_an_artifact_are_refused() {
        let key = "ab".repeat(32);
        assert!(split_entry(&format!("prune/{key}/model/a.safetensors"), true).is_ok());
        assert!(split_entry(&format!("prune/{key}/../x"), true).is_err());
        assert!(split_entry(&format!("prune/{key}/./manifest.json"), true).is_err());
        assert!(split_entry(&format!("prune/{key}/a\\..\\x"), true).is_err());
        assert!(split_entry(&format!("prune/{key}/x"), false).is_err());
        assert!(split_entry(&format!("nosuchkind/{key}/x"), true).is_err());
        assert!(split_entry("prune/not-a-key/x", true).is_err());
        assert!(split_entry(&format!("prune/{key}"), true).is_err());
    }
}
