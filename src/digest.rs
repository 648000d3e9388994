//! sha256 of files, computed once per (path, size, mtime) and remembered in a small table under
//! the cache root, so that multi-GB weights are not re-hashed on every run. The table is read
//! once per process and written once per hashing call that added entries; entries whose files
//! are gone are dropped when it is written.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
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
    // a regular file only: a FIFO would block, a device such as /dev/zero never ends
    crate::fsutil::require_file(path)?;
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

/// One cache root's remembered digests, shared by every `DigestCache` of the process: read
/// from disk once, written once per hashing call that added entries.
struct Table {
    file: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// Entries added since the last write.
    dirty: bool,
}

/// How often this process read and wrote digest tables (tests hold the count down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub reads: u64,
    pub writes: u64,
}

static STATS: Mutex<TableStats> = Mutex::new(TableStats {
    reads: 0,
    writes: 0,
});

pub fn table_stats() -> TableStats {
    *STATS.lock().expect("digest stats lock")
}

fn read_table(file: &Path) -> BTreeMap<String, Entry> {
    STATS.lock().expect("digest stats lock").reads += 1;
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn tables() -> &'static Mutex<HashMap<PathBuf, Arc<Mutex<Table>>>> {
    static TABLES: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<Table>>>>> = OnceLock::new();
    TABLES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Table {
    /// Write the table if it gained entries: merged with what other processes wrote meanwhile
    /// (ours win), without the entries whose files are gone. The table is only a speed-up:
    /// failing to save it must not fail the caller.
    fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let mut merged = read_table(&self.file);
        merged.extend(std::mem::take(&mut self.entries));
        merged.retain(|path, _| Path::new(path).exists());
        if let Ok(bytes) = serde_json::to_vec(&merged) {
            if crate::fsutil::atomic_write(&self.file, &bytes).is_ok() {
                STATS.lock().expect("digest stats lock").writes += 1;
            }
        }
        self.entries = merged;
        self.dirty = false;
    }
}

/// The remembered digests, one JSON file under the cache root.
pub struct DigestCache {
    table: Arc<Mutex<Table>>,
}

/// (size, mtime in ns) of a file, canonical path.
fn stat(path: &Path) -> Result<(PathBuf, u64, u128)> {
    let canonical =
        std::fs::canonicalize(path).with_context(|| format!("no such file: {}", path.display()))?;
    let meta =
        std::fs::metadata(&canonical).with_context(|| format!("cannot stat {}", path.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((canonical, meta.len(), mtime_ns))
}

impl DigestCache {
    pub fn new(cache_root: &Path) -> Self {
        let file = cache_root.join("digests.json");
        let mut all = tables().lock().expect("digest tables lock");
        let table = all
            .entry(file.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Table {
                    entries: read_table(&file),
                    file,
                    dirty: false,
                }))
            })
            .clone();
        Self { table }
    }

    /// sha256 of `path` without writing the table.
    fn lookup_or_hash(&self, path: &Path) -> Result<String> {
        let (canonical, size, mtime_ns) = stat(path)?;
        let key = canonical.to_string_lossy().to_string();
        {
            let t = self.table.lock().expect("digest table lock");
            if let Some(e) = t.entries.get(&key) {
                if e.size == size && e.mtime_ns == mtime_ns {
                    return Ok(e.sha256.clone());
                }
            }
        }
        let sha256 = sha256_file_uncached(&canonical)?;
        let mut t = self.table.lock().expect("digest table lock");
        t.entries.insert(
            key,
            Entry {
                size,
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        t.dirty = true;
        Ok(sha256)
    }

    fn flush(&self) {
        self.table.lock().expect("digest table lock").flush();
    }

    /// sha256 of `path`; hashed only when its size or mtime differ from the remembered entry.
    pub fn sha256(&self, path: &Path) -> Result<String> {
        let r = self.lookup_or_hash(path);
        self.flush();
        r
    }

    /// One digest for a directory: sha256 over the sorted "relative-path sha256" lines of its
    /// regular files (recursively); the table is written once, at the end.
    pub fn sha256_dir(&self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        self.sha256_files(dir, files)
    }

    /// The directory digest over the given files (relative to `dir`) only.
    pub fn sha256_files(&self, dir: &Path, mut files: Vec<PathBuf>) -> Result<String> {
        files.sort();
        let mut lines = String::new();
        let mut result = Ok(());
        for rel in files {
            match self.lookup_or_hash(&dir.join(&rel)) {
                Ok(h) => lines.push_str(&format!("{} {h}\n", rel.to_string_lossy())),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.flush();
        result?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_hashed_with_one_table_read_and_one_write_and_gone_files_are_pruned() {
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        for i in 0..300 {
            std::fs::write(data.path().join(format!("{i:04}.txt")), format!("doc {i}")).unwrap();
        }
        let before = table_stats();
        let cache = DigestCache::new(root.path());
        let first = cache.sha256_dir(data.path()).unwrap();
        let mid = table_stats();
        // one read of this root's table and one write for 300 new files (a table read and
        // write per file would be ~600 of each); other unit tests hashing concurrently add a few
        assert!(mid.writes > before.writes);
        assert!(mid.reads - before.reads < 20, "{before:?} -> {mid:?}");
        assert!(mid.writes - before.writes < 20, "{before:?} -> {mid:?}");
        // a second pass over the unchanged folder: no hashing, no write of this table
        let again = DigestCache::new(root.path())
            .sha256_dir(data.path())
            .unwrap();
        assert_eq!(first, again);
        let table: BTreeMap<String, Entry> = serde_json::from_str(
            &std::fs::read_to_string(root.path().join("digests.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(table.len(), 300);
        // a removed file's entry is dropped the next time the table is written
        std::fs::remove_file(data.path().join("0000.txt")).unwrap();
        std::fs::write(data.path().join("new.txt"), "new").unwrap();
        DigestCache::new(root.path())
            .sha256_dir(data.path())
            .unwrap();
        let table: BTreeMap<String, Entry> = serde_json::from_str(
            &std::fs::read_to_string(root.path().join("digests.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(table.len(), 300);
        assert!(!table.keys().any(|k| k.ends_with("0000.txt")));
    }

    #[test]
    fn the_table_of_one_root_is_written_once_per_folder() {
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(data.path().join(format!("{i}.txt")), format!("{i}")).unwrap();
        }
        let cache = DigestCache::new(root.path());
        let file = root.path().join("digests.json");
        cache.sha256_dir(data.path()).unwrap();
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.sha256_dir(data.path()).unwrap();
        // nothing new: the table is not rewritten
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            written
        );
    }
}
