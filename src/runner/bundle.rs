//! Moving finished artifacts between caches: `cache export` writes the cached artifacts of
//! pipelines' jobs (all, or those of some stages) into one zip file, each as
//! `<kind>/<key>/<its files>` with its manifest; `cache import` checks every artifact of such a
//! file against its manifest (file list, sizes, sha256) in a temporary directory of the cache
//! and moves it into place with the same atomic rename and key lock as a job's, so a bad or
//! truncated bundle never leaves anything that looks complete. For caches that share no file
//! system: a cluster node's scratch disk and a laptop, or a machine whose disk is not kept.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::store::{Status, Store};
use crate::artifacts::manifest::Manifest;

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
    // the zip is written through a handle of the temporary file's own that keeps the first
    // write error to itself (the zip crate, given an error, prints its internal state when
    // dropped): the error is reported once, as the OS gave it, and nothing is renamed
    let handle = tmp
        .as_file()
        .try_clone()
        .map_err(crate::fsutil::plain)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let mut zip = zip::ZipWriter::new(FirstError::new(handle));
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
    let mut written = zip
        .finish()
        .with_context(|| format!("cannot write {}", out.display()))?;
    let flushed = written.inner.flush();
    if let Some(e) = written.error.take().map(Err).unwrap_or(flushed).err() {
        return Err(crate::fsutil::plain(e))
            .with_context(|| format!("cannot write {}", out.display()));
    }
    tmp.persist(out)
        .map_err(|e| crate::fsutil::plain(e.error))
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(summary)
}

/// A writer that, after its first write error, keeps the error and goes on as if writing
/// succeeded (positions counted, bytes discarded): the zip being written is abandoned, and its
/// writer never sees an error.
struct FirstError {
    inner: std::fs::File,
    error: Option<std::io::Error>,
    /// After the error: the position and length the discarded writes would have made.
    pos: u64,
    len: u64,
}

impl FirstError {
    fn new(inner: std::fs::File) -> Self {
        Self {
            inner,
            error: None,
            pos: 0,
            len: 0,
        }
    }
}

impl Write for FirstError {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.error.is_none() {
            use std::io::Seek;
            let at = self.inner.stream_position().unwrap_or(0);
            match self.inner.write_all(buf) {
                Ok(()) => return Ok(buf.len()),
                Err(e) => {
                    self.error = Some(e);
                    self.len = self.inner.metadata().map(|m| m.len()).unwrap_or(at);
                    self.pos = at;
                }
            }
        }
        self.pos = self.pos.saturating_add(buf.len() as u64);
        self.len = self.len.max(self.pos);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for FirstError {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        use std::io::SeekFrom;
        if self.error.is_none() {
            return self.inner.seek(to);
        }
        let base = |b: u64, d: i64| b.saturating_add_signed(d);
        self.pos = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::Current(d) => base(self.pos, d),
            SeekFrom::End(d) => base(self.len, d),
        };
        Ok(self.pos)
    }
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

/// The most bytes a bundle may unpack to (the sum of its manifests' declared file sizes),
/// unless `cache import --max-size` says otherwise.
pub const DEFAULT_MAX_IMPORT_BYTES: u64 = 64 << 30;

/// The most bytes of a bundled manifest.json.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// One artifact's entries in the bundle: (path inside the artifact, zip index).
type Entries = Vec<(String, usize)>;

/// Import every artifact of the bundle `bundle` into the cache at `cache_root`. An unreadable
/// bundle, an entry outside `<stage kind>/<key>/...`, or a bundle whose manifests declare more
/// than `max_bytes` in all (or more than the cache's file system has free) is an error before
/// anything is written. Each artifact is then checked on its own and rejected (the others
/// imported) when: a file repeats, its manifest is missing or names another artifact, its
/// settings do not make its key, a file is missing, unlisted, larger than its manifest says
/// (copying stops at the declared size) or differs from its sha256. An artifact is unpacked
/// into a temporary directory of the cache without taking its key's lock, checked, and only
/// then locked and renamed into place: a rejected artifact leaves nothing (no directory, no
/// lock file). Time is linear in the bundle's entries and bytes.
pub fn import(cache_root: &Path, bundle: &Path, max_bytes: u64) -> Result<Vec<Imported>> {
    crate::fsutil::require_file(bundle)?;
    let file =
        std::fs::File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).with_context(|| {
        format!(
            "{} is not a zip file (a `cache export` bundle)",
            bundle.display()
        )
    })?;
    // the zip reader keeps one entry per name: a repeated name would silently hide the first
    let declared_entries = entry_count(bundle)?;
    if declared_entries != zip.len() as u64 {
        anyhow::bail!(
            "{}: its directory lists {declared_entries} entries under {} distinct names: a name \
             repeats, so which copy is meant is ambiguous",
            bundle.display(),
            zip.len()
        );
    }
    let mut artifacts: BTreeMap<(String, String), Entries> = BTreeMap::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .with_context(|| format!("{}: entry {i} unreadable", bundle.display()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let (kind, key, rel) = split_entry(&name, entry.enclosed_name().is_some())
            .with_context(|| format!("{}: entry {name:?}", bundle.display()))?;
        artifacts.entry((kind, key)).or_default().push((rel, i));
    }
    let store = Store::new(cache_root);
    // the manifests first: what each artifact declares, checked before anything is unpacked
    let mut checked = Vec::new();
    let mut done = Vec::new();
    let mut declared: u64 = 0;
    for ((kind, key), entries) in artifacts {
        if let Status::Valid(_) = store.status(&kind, &key, false) {
            done.push(Imported::AlreadyCached { kind, key });
            continue;
        }
        match read_declared(&mut zip, &kind, &key, &entries) {
            Ok(manifest) => {
                declared = declared.saturating_add(
                    manifest
                        .files
                        .values()
                        .map(|f| f.size)
                        .fold(0, u64::saturating_add),
                );
                checked.push((kind, key, entries, manifest));
            }
            Err(e) => done.push(Imported::Rejected {
                kind,
                key,
                why: format!("{e:#}"),
            }),
        }
    }
    if declared > max_bytes {
        anyhow::bail!(
            "{}: its artifacts declare {} in all, more than the {} an import may write \
             (--max-size raises it)",
            bundle.display(),
            crate::model::memory::human_bytes(declared),
            crate::model::memory::human_bytes(max_bytes)
        );
    }
    if let Some(free) = free_bytes(cache_root) {
        if declared > free {
            anyhow::bail!(
                "{}: its artifacts declare {} in all, but the file system of {} has {} free",
                bundle.display(),
                crate::model::memory::human_bytes(declared),
                cache_root.display(),
                crate::model::memory::human_bytes(free)
            );
        }
    }
    for (kind, key, entries, manifest) in checked {
        let outcome = unpack(&store, &mut zip, &kind, &key, &entries, &manifest)
            .and_then(|tmp| install(&store, tmp, &kind, &key));
        done.push(match outcome {
            Ok(true) => Imported::Added { kind, key },
            Ok(false) => Imported::AlreadyCached { kind, key },
            Err(e) => Imported::Rejected {
                kind,
                key,
                why: format!("{e:#}"),
            },
        });
    }
    Ok(done)
}

type Zip = zip::ZipArchive<std::io::BufReader<std::fs::File>>;

/// The number of entries a zip file's end-of-central-directory record declares (the zip64
/// record's where the classic one says 0xFFFF).
fn entry_count(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    // the record (22 bytes) plus a comment of at most 64 KiB, and the zip64 locator before it
    let tail_len = len.min(22 + 65_535 + 20);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    Read::by_ref(&mut f).take(tail_len).read_to_end(&mut tail)?;
    let bad = || anyhow::anyhow!("{}: no zip end-of-directory record", path.display());
    let eocd = tail
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .ok_or_else(bad)?;
    let field = |at: usize, n: usize| -> Result<u64> {
        let b = tail.get(at..at + n).ok_or_else(bad)?;
        Ok(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    let total = field(eocd + 10, 2)?;
    if total != 0xFFFF {
        return Ok(total);
    }
    // zip64: the locator (20 bytes, just before) gives the zip64 record's offset
    let locator = eocd.checked_sub(20).ok_or_else(bad)?;
    if tail.get(locator..locator + 4) != Some(b"PK\x06\x07".as_slice()) {
        return Ok(total);
    }
    let record = field(locator + 8, 8)?;
    let mut buf = [0u8; 40];
    f.seek(SeekFrom::Start(record))?;
    f.read_exact(&mut buf).map_err(|_| bad())?;
    if &buf[..4] != b"PK\x06\x06" {
        return Err(bad());
    }
    Ok(u64::from_le_bytes(
        buf[32..40].try_into().map_err(|_| bad())?,
    ))
}

/// An artifact's manifest read from the bundle and checked against the bundle's entries: no
/// repeated entry, the manifest names this artifact, its settings make this key, and the
/// files it lists are exactly the artifact's other entries.
fn read_declared(zip: &mut Zip, kind: &str, key: &str, entries: &Entries) -> Result<Manifest> {
    let mut names: Vec<&str> = entries.iter().map(|(rel, _)| rel.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
        anyhow::bail!("the bundle holds {} twice", pair[0]);
    }
    let Some(&(_, index)) = entries
        .iter()
        .find(|(rel, _)| rel == crate::artifacts::manifest::FILE)
    else {
        anyhow::bail!("no manifest.json");
    };
    let mut text = Vec::new();
    zip.by_index(index)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .context("manifest.json: cannot read it out of the bundle")?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        anyhow::bail!(
            "manifest.json is larger than {} MiB",
            MAX_MANIFEST_BYTES >> 20
        );
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).context("manifest.json is not a valid manifest")?;
    if manifest.kind != kind || manifest.key != key {
        anyhow::bail!(
            "its manifest names another artifact ({}/{})",
            manifest.kind,
            manifest.key
        );
    }
    let stage =
        crate::stages::find(kind).with_context(|| format!("{kind:?} is not a stage kind"))?;
    let expected = manifest.expected_key(stage.numeric());
    if expected != key {
        anyhow::bail!(
            "its manifest's settings make the key {}, not {}: the manifest does not describe \
             how this artifact was made",
            &expected[..12],
            &key[..12.min(key.len())]
        );
    }
    for (rel, _) in entries {
        if rel != crate::artifacts::manifest::FILE && !manifest.files.contains_key(rel) {
            anyhow::bail!("{rel} is not listed in its manifest");
        }
    }
    if let Some(missing) = manifest
        .files
        .keys()
        .find(|f| !entries.iter().any(|(rel, _)| rel == *f))
    {
        anyhow::bail!("{missing} is listed in its manifest but not in the bundle");
    }
    Ok(manifest)
}

/// Copy an artifact's entries into a new temporary directory of the cache (removed when
/// dropped), each at most its declared size, and check every file against the manifest.
fn unpack(
    store: &Store,
    zip: &mut Zip,
    kind: &str,
    key: &str,
    entries: &Entries,
    manifest: &Manifest,
) -> Result<tempfile::TempDir> {
    let kind_dir = store.root.join(kind);
    std::fs::create_dir_all(&kind_dir)
        .with_context(|| format!("cannot create {}", kind_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(&kind_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                kind_dir.display()
            )
        })?;
    for (rel, i) in entries {
        let limit = match manifest.files.get(rel) {
            Some(f) => f.size,
            None => MAX_MANIFEST_BYTES,
        };
        let path = tmp.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut out = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut entry = zip.by_index(*i)?;
        // a read error (a truncated or corrupt bundle: CRC) or a write error, named; never more
        // than the declared size, however far the entry inflates
        let copied = std::io::copy(&mut (&mut entry).take(limit), &mut out)
            .with_context(|| format!("{rel}: cannot copy it out of the bundle"))?;
        let mut probe = [0u8; 1];
        if copied == limit && entry.read(&mut probe).unwrap_or(0) > 0 {
            anyhow::bail!("{rel} is larger than the {limit} bytes its manifest declares");
        }
        out.flush()?;
    }
    crate::fsutil::normalize_file_permissions(tmp.path())?;
    match Store::check(tmp.path(), kind, key, true) {
        Status::Valid(_) => Ok(tmp),
        Status::Corrupt(why) => anyhow::bail!("{why}"),
        Status::Missing => anyhow::bail!("no files"),
    }
}

/// Move a checked artifact into place under its key's lock; false when a valid copy appeared
/// meanwhile (the checked one is then dropped).
fn install(store: &Store, tmp: tempfile::TempDir, kind: &str, key: &str) -> Result<bool> {
    let _lock = store.lock(kind, key)?;
    let dest = store.dir(kind, key);
    match store.status(kind, key, false) {
        Status::Valid(_) => return Ok(false),
        Status::Corrupt(reason) => {
            tracing::warn!(
                "replacing corrupt artifact {kind}/{} ({reason})",
                &key[..12]
            );
            std::fs::remove_dir_all(&dest)
                .with_context(|| format!("cannot remove {}", dest.display()))?;
        }
        Status::Missing => {}
    }
    let path = tmp.keep();
    if let Err(e) = std::fs::rename(&path, &dest) {
        let _ = std::fs::remove_dir_all(&path);
        return Err(e)
            .with_context(|| format!("cannot move {} to {}", path.display(), dest.display()));
    }
    Ok(true)
}

/// Bytes free for an unprivileged writer on the file system of `dir` (or of its nearest
/// existing ancestor); None where it cannot be asked.
fn free_bytes(dir: &Path) -> Option<u64> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent()?;
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
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
