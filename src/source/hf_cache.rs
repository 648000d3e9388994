//! Read-only access to the local Hugging Face hub cache (the layout huggingface_hub writes):
//! `<hub>/models--ORG--NAME/{refs/<ref>, snapshots/<commit>/...}`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

fn hub_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// The cached snapshot's commit and the path of `path` inside it.
pub fn resolve(
    repo: &str,
    dataset: bool,
    revision: Option<&str>,
    path: Option<&str>,
) -> Result<(String, PathBuf)> {
    let hub = hub_dir();
    let kind = if dataset { "datasets" } else { "models" };
    let repo_dir = hub.join(format!("{kind}--{}", repo.replace('/', "--")));
    if !repo_dir.is_dir() {
        bail!(
            "{repo} is not in the local Hugging Face cache ({} does not exist); download it first, e.g. \
             `huggingface-cli download {}{repo}`",
            repo_dir.display(),
            if dataset { "--repo-type dataset " } else { "" }
        );
    }
    let rev = revision.unwrap_or("main");
    let is_commit = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        rev.to_string()
    } else {
        let ref_file = repo_dir.join("refs").join(rev);
        std::fs::read_to_string(&ref_file)
            .with_context(|| {
                format!(
                    "revision {rev} of {repo} is not in the cache ({} missing)",
                    ref_file.display()
                )
            })?
            .trim()
            .to_string()
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        bail!(
            "{repo}: snapshot {commit} is not in the cache ({} missing)",
            snapshot.display()
        );
    }
    let target = match path {
        Some(p) => snapshot.join(p),
        None => snapshot,
    };
    if !target.exists() {
        bail!(
            "{repo}@{commit}: {} does not exist in the cached snapshot",
            target.display()
        );
    }
    Ok((commit, target))
}
