//! Small file-system helpers shared by the cache, the results writer and the package extractor.
//!
//! Temporary files are created private (0600) by default; everything layerprune publishes is
//! meant to be read by collaborators and other tools (a shared cache, `results/` in a group
//! directory), so published files get the permissions of a plain `File::create`: 0666 less the
//! user's umask.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Write through a temporary file in the same directory and rename, so readers never see half a
/// file; the result gets the permissions of a normally created file (0666 less the umask).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    // errors name the file the caller asked for, with the plain OS error: not the temporary
    // file's internal name (tempfile's own errors append "at path .../.tmpXXXX")
    let mut tmp = builder.tempfile_in(dir).map_err(plain).with_context(|| {
        format!(
            "cannot write {} (creating a file beside it)",
            path.display()
        )
    })?;
    tmp.as_file_mut()
        .write_all(bytes)
        .and_then(|_| tmp.as_file_mut().flush())
        .map_err(plain)
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| plain(e.error))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// An I/O error as the OS reported it, without what a wrapper added to its message (tempfile
/// appends the temporary file's path): "No space left on device (os error 28)".
pub fn plain(e: std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => e,
    }
}

/// Give every file under `dir` the permissions a normally created file gets there (0666 less
/// the umask). Some writers (the safetensors crate among them) create files private to the
/// owner; a published artifact should not be.
pub fn normalize_file_permissions(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.join(".permission-probe");
        std::fs::File::create(&probe)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let mode = std::fs::metadata(&probe)?.permissions().mode() & 0o777;
        std::fs::remove_file(&probe)?;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in
                std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
            {
                let e = e?;
                let ty = e.file_type()?;
                if ty.is_dir() {
                    stack.push(e.path());
                } else if ty.is_file() {
                    std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))
                        .with_context(|| {
                            format!("cannot set permissions of {}", e.path().display())
                        })?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// What a path is, after following symbolic links, for messages and checks: a regular file,
/// a directory, or something that must not be read as data (a FIFO, a device, a socket), or a
/// symbolic-link loop. An untrusted path is checked with this before it is opened: opening a
/// FIFO blocks until a writer comes, and a device such as /dev/zero never ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Dir,
    /// A FIFO, a character or block device, or a socket (the word for messages).
    Special(&'static str),
}

/// The kind of `path` after following links; a missing path and a link loop are errors that
/// say so.
pub fn path_kind(path: &Path) -> Result<PathKind> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => anyhow::bail!(
            "{}: a loop of symbolic links (it never reaches a file)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{}: no such file or directory", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let ty = meta.file_type();
    if ty.is_file() {
        return Ok(PathKind::File);
    }
    if ty.is_dir() {
        return Ok(PathKind::Dir);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ty.is_fifo() {
            return Ok(PathKind::Special("a FIFO (named pipe)"));
        }
        if ty.is_char_device() || ty.is_block_device() {
            return Ok(PathKind::Special("a device"));
        }
        if ty.is_socket() {
            return Ok(PathKind::Special("a socket"));
        }
    }
    Ok(PathKind::Special("not a regular file"))
}

/// Refuse a path that is not a regular file (after links), naming what it is instead.
pub fn require_file(path: &Path) -> Result<()> {
    match path_kind(path)? {
        PathKind::File => Ok(()),
        PathKind::Dir => anyhow::bail!("{}: a directory, expected a file", path.display()),
        PathKind::Special(what) => {
            anyhow::bail!("{}: {what}, expected a regular file", path.display())
        }
    }
}

/// Read a whole regular file of at most `cap` bytes (configuration, tokenizer and index files):
/// a special file or a larger file is an error naming the path and the cap, never an unbounded
/// read.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    require_file(path)?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > cap {
        anyhow::bail!(
            "{}: larger than {} MiB, the most layerprune reads from such a file",
            path.display(),
            cap >> 20
        );
    }
    Ok(bytes)
}

/// As `read_capped`, as UTF-8 text.
pub fn read_capped_text(path: &Path, cap: u64) -> Result<String> {
    String::from_utf8(read_capped(path, cap)?)
        .map_err(|_| anyhow::anyhow!("{}: not valid UTF-8 text", path.display()))
}

/// The size caps of the text files layerprune reads whole.
pub mod caps {
    /// Pipeline files and JSON configuration (config.json, index files, manifests, records).
    pub const CONFIG: u64 = 16 << 20;
    /// Tokenizer files (tokenizer.json of a 262k vocabulary is ~33 MB; tiktoken ranks ~2.5 MB).
    pub const TOKENIZER: u64 = 256 << 20;
}

/// The directory a path lives in; "." for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("a.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let plain = dir.path().join("plain");
            std::fs::File::create(&plain).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&p), mode(&plain));
        }
        // Only the file itself is left: no temporary stragglers.
        let n = std::fs::read_dir(p.parent().unwrap()).unwrap().count();
        assert_eq!(n, 1);
    }

    #[cfg(unix)]
    #[test]
    fn private_files_get_the_default_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let private = sub.join("weights.bin");
        std::fs::write(&private, b"x").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        normalize_file_permissions(dir.path()).unwrap();
        assert_eq!(mode(&private), mode(&plain));
        assert!(!dir.path().join(".permission-probe").exists());
    }
}

/// Drop the resident pages of `mmap[offset..offset + len]` from this process (layer streaming:
/// a weight read from a mapped model file no longer counts in the process's memory once used).
/// The mapping is read-only and file-backed, so a later read faults the same bytes in again
/// from the file; a range outside the map, or an OS that refuses, leaves the pages as they are.
pub fn release_mapped(mmap: &memmap2::Mmap, offset: usize, len: usize) {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > mmap.len()) {
        return;
    }
    #[cfg(unix)]
    // SAFETY: a read-only, file-backed mapping: MADV_DONTNEED only drops pages, which later
    // accesses read back from the unchanged file; no byte anyone can observe changes.
    let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}
