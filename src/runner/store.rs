//! The content-addressed artifact store: `<cache>/<kind>/<key>/` with its files and a
//! manifest.json written last. A job computes into `<cache>/<kind>/.tmp-<key>-<pid>/` and the
//! directory is renamed into place only after the manifest is written, so an interrupted job
//! never leaves anything that looks complete. A lock file per key makes concurrent runs (of one
//! pipeline or of different pipelines sharing a job) compute each artifact once.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::artifacts::manifest::{FileRecord, Manifest};
use crate::digest::sha256_file_uncached;

pub struct Store {
    pub root: PathBuf,
}

#[derive(Debug)]
pub enum Status {
    Missing,
    Valid(Manifest),
    Corrupt(String),
}

/// An exclusive lock on one artifact key, released on drop (and by the OS if the process dies).
pub struct KeyLock {
    _file: File,
}

/// A job's output directory until it is published.
pub struct Pending {
    pub tmp: PathBuf,
    pub dest: PathBuf,
    published: bool,
    _lock: KeyLock,
}

impl Pending {
    /// The atomic rename of the complete directory to its key's place.
    fn move_into_place(&mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.tmp.display(),
                self.dest.display()
            )
        })?;
        self.published = true;
        super::interrupt::unregister_tmp(&self.tmp);
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.tmp);
            super::interrupt::unregister_tmp(&self.tmp);
        }
    }
}

fn collect(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect(&p, base, out)?;
        } else {
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
        }
    }
    Ok(())
}

impl Store {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn dir(&self, kind: &str, key: &str) -> PathBuf {
        crate::artifacts::artifact_dir(&self.root, kind, key)
    }

    fn lock_path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(format!(".{key}.lock"))
    }

    fn read_manifest(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join("manifest.json");
        let text =
            std::fs::read_to_string(&path).map_err(|_| "manifest.json missing".to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("manifest.json unreadable ({e})"))
    }

    /// Check an artifact. Cheap by default: sizes, and hashes only of files modified after the
    /// manifest was written; `full` re-hashes every file.
    pub fn status(&self, kind: &str, key: &str, full: bool) -> Status {
        let dir = self.dir(kind, key);
        if !dir.exists() {
            return Status::Missing;
        }
        Self::check(&dir, kind, key, full)
    }

    /// Check the artifact files in `dir` against their manifest, as `status` does for the
    /// artifact `kind`/`key` in the store.
    pub fn check(dir: &Path, kind: &str, key: &str, full: bool) -> Status {
        let dir = dir.to_path_buf();
        let manifest = match Self::read_manifest(&dir) {
            Ok(m) => m,
            Err(e) => return Status::Corrupt(e),
        };
        if manifest.key != key || manifest.kind != kind {
            return Status::Corrupt("manifest names another artifact".into());
        }
        let written = std::fs::metadata(dir.join("manifest.json"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut on_disk = Vec::new();
        if collect(&dir, &dir, &mut on_disk).is_err() {
            return Status::Corrupt("cannot list files".into());
        }
        for rel in &on_disk {
            let r = rel.to_string_lossy();
            if r != "manifest.json" && !manifest.files.contains_key(r.as_ref()) {
                return Status::Corrupt(format!("unexpected file {r}"));
            }
        }
        for (rel, rec) in &manifest.files {
            let path = dir.join(rel);
            let Ok(meta) = std::fs::metadata(&path) else {
                return Status::Corrupt(format!("{rel} missing"));
            };
            if meta.len() != rec.size {
                return Status::Corrupt(format!(
                    "{rel} has {} bytes, the manifest says {}",
                    meta.len(),
                    rec.size
                ));
            }
            let modified_later = meta.modified().map(|m| m > written).unwrap_or(true);
            if full || modified_later {
                match sha256_file_uncached(&path) {
                    Ok(h) if h == rec.sha256 => {}
                    Ok(_) if modified_later => {
                        return Status::Corrupt(format!(
                            "{rel} was modified after the artifact was written (sha256 differs)"
                        ))
                    }
                    Ok(_) => {
                        return Status::Corrupt(format!("{rel}: sha256 differs from the manifest"))
                    }
                    Err(e) => return Status::Corrupt(format!("{rel} unreadable ({e})")),
                }
            }
        }
        Status::Valid(manifest)
    }

    /// The key's lock file, opened (created if needed), and its path.
    fn lock_file(&self, kind: &str, key: &str) -> Result<(File, PathBuf)> {
        let path = self.lock_path(kind, key);
        let dir = path.parent().unwrap();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        Ok((file, path))
    }

    /// Lock the key if no one holds it; None while a job (of any process) computes it.
    pub fn try_lock(&self, kind: &str, key: &str) -> Result<Option<KeyLock>> {
        let (file, path) = self.lock_file(kind, key)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }

    /// Lock the key (waiting for another process that holds it).
    pub fn lock(&self, kind: &str, key: &str) -> Result<KeyLock> {
        let (file, path) = self.lock_file(kind, key)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    "waiting for another process computing {kind}/{}",
                    &key[..12]
                );
                file.lock()
                    .with_context(|| format!("cannot lock {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        Ok(KeyLock { _file: file })
    }

    /// Prepare to compute an artifact: takes the key's lock, removes leftovers of interrupted
    /// attempts and any corrupt copy. Returns None if a valid artifact appeared meanwhile.
    pub fn begin(&self, kind: &str, key: &str) -> Result<Option<Pending>> {
        let lock = self.lock(kind, key)?;
        let dest = self.dir(kind, key);
        match self.status(kind, key, false) {
            Status::Valid(_) => return Ok(None),
            Status::Corrupt(reason) => {
                tracing::warn!("removing corrupt artifact {kind}/{} ({reason})", &key[..12]);
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("cannot remove {}", dest.display()))?;
            }
            Status::Missing => {}
        }
        let kind_dir = self.root.join(kind);
        let prefix = format!(".tmp-{key}-");
        for e in std::fs::read_dir(&kind_dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                tracing::info!("removing an interrupted attempt: {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = kind_dir.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        // removed by a signal that stops the process before the job publishes it (interrupt)
        super::interrupt::register_tmp(&tmp);
        Ok(Some(Pending {
            tmp,
            dest,
            published: false,
            _lock: lock,
        }))
    }

    /// Record file hashes, write the manifest last, and move the directory into place.
    pub fn publish(&self, mut pending: Pending, mut manifest: Manifest) -> Result<Manifest> {
        crate::fsutil::normalize_file_permissions(&pending.tmp)?;
        let mut files = Vec::new();
        collect(&pending.tmp, &pending.tmp, &mut files)?;
        let mut records = BTreeMap::new();
        for rel in files {
            let path = pending.tmp.join(&rel);
            let size = std::fs::metadata(&path)?.len();
            records.insert(
                rel.to_string_lossy().to_string(),
                FileRecord {
                    size,
                    sha256: sha256_file_uncached(&path)?,
                },
            );
        }
        manifest.files = records;
        let mpath = pending.tmp.join("manifest.json");
        let f = File::create(&mpath)?;
        serde_json::to_writer_pretty(&f, &manifest)?;
        f.sync_all()?;
        pending.move_into_place()?;
        Ok(manifest)
    }

    /// Move a directory that already holds a complete artifact (files and manifest, e.g. read
    /// from a bundle) into place, after checking every file's sha256 against the manifest.
    pub fn adopt(&self, mut pending: Pending, kind: &str, key: &str) -> Result<Manifest> {
        crate::fsutil::normalize_file_permissions(&pending.tmp)?;
        let manifest = match Self::check(&pending.tmp, kind, key, true) {
            Status::Valid(m) => m,
            Status::Corrupt(why) => anyhow::bail!("{why}"),
            Status::Missing => anyhow::bail!("no files"),
        };
        pending.move_into_place()?;
        Ok(manifest)
    }

    /// Directories of known stage kinds under the root.
    fn kind_dirs(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
            .filter(|(name, path)| path.is_dir() && crate::stages::find(name).is_some())
            .collect()
    }

    /// Every artifact in the store: (kind, key, dir).
    pub fn list(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for (kind, path) in self.kind_dirs() {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if e.path().is_dir() && !name.starts_with('.') {
                    out.push((kind.clone(), name, e.path()));
                }
            }
        }
        out.sort();
        out
    }

    /// Temporary directories of jobs (interrupted ones, or running ones: check the key's lock):
    /// (kind, key, dir); `.tmp-<key>-<pid>`.
    pub fn leftovers(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for (kind, path) in self.kind_dirs() {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(rest) = name.strip_prefix(".tmp-") {
                    let key = rest.rsplit_once('-').map(|(k, _)| k).unwrap_or(rest);
                    out.push((kind.clone(), key.to_string(), e.path()));
                }
            }
        }
        out.sort();
        out
    }
}
