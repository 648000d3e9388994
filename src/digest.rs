//! sha256 of files, computed once per (path, size, mtime) and remembered in a small table under
//! the cache root, so that multi-GB weights are not re-hashed on every run.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// sha256 of a byte slice, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file, streaming, lowercase hex.
pub fn sha256_file_uncached(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The remembered digests, one JSON file under the cache root.
pub struct DigestCache {
    file: PathBuf,
}

impl DigestCache {
    pub fn new(cache_root: &Path) -> Self {
        Self {
            file: cache_root.join("digests.json"),
        }
    }

    fn load(&self) -> BTreeMap<String, Entry> {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// sha256 of `path`; hashed only when its size or mtime differ from the remembered entry.
    pub fn sha256(&self, path: &Path) -> Result<String> {
        let canonical = std::fs::canonicalize(path)
            .with_context(|| format!("no such file: {}", path.display()))?;
        let meta = std::fs::metadata(&canonical)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = canonical.to_string_lossy().to_string();
        if let Some(e) = self.load().get(&key) {
            if e.size == meta.len() && e.mtime_ns == mtime_ns {
                return Ok(e.sha256.clone());
            }
        }
        let sha256 = sha256_file_uncached(&canonical)?;
        // Re-read before writing so concurrent processes lose at most their own entry.
        let mut table = self.load();
        table.insert(
            key,
            Entry {
                size: meta.len(),
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        // The table is only a speed-up: failing to save it must not fail the caller.
        if let Ok(bytes) = serde_json::to_vec(&table) {
            let _ = crate::fsutil::atomic_write(&self.file, &bytes);
        }
        Ok(sha256)
    }

    /// One digest for a directory: sha256 over the sorted "relative-path sha256" lines of its
    /// regular files (recursively).
    pub fn sha256_dir(&self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut lines = String::new();
        for rel in files {
            let h = self.sha256(&dir.join(&rel))?;
            lines.push_str(&format!("{} {h}\n", rel.to_string_lossy()));
        }
        Ok(sha256_bytes(lines.as_bytes()))
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            collect_files(root, &path, out)?;
        } else if ty.is_file() || ty.is_symlink() && path.is_file() {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    Ok(())
}
