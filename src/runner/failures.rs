//! The last failure of each job of a pipeline, kept until the job succeeds:
//! `<cache>/pipelines/<name>.failures/<key>.txt` (label, time and error). Written by `run` and
//! by `run --job` (array tasks of a Slurm submission write here concurrently: one file per key,
//! each written atomically), read by `status`.

use std::path::{Path, PathBuf};

use anyhow::Result;

fn dir(cache_root: &Path, pipeline: &str) -> PathBuf {
    cache_root
        .join("pipelines")
        .join(format!("{pipeline}.failures"))
}

pub fn record(
    cache_root: &Path,
    pipeline: &str,
    key: &str,
    label: &str,
    error: &str,
) -> Result<()> {
    let text = format!("{label}\n{}\n{error}\n", super::now_rfc3339());
    crate::fsutil::atomic_write(
        &dir(cache_root, pipeline).join(format!("{key}.txt")),
        text.as_bytes(),
    )
}

pub fn clear(cache_root: &Path, pipeline: &str, key: &str) {
    let _ = std::fs::remove_file(dir(cache_root, pipeline).join(format!("{key}.txt")));
}

/// The recorded error of `key`'s last failure, if it has not succeeded since.
pub fn last(cache_root: &Path, pipeline: &str, key: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir(cache_root, pipeline).join(format!("{key}.txt"))).ok()?;
    Some(text.lines().skip(2).collect::<Vec<_>>().join("\n"))
}
