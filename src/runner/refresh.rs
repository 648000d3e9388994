//! Refresh marks: `run --refresh STAGE` gives the stage a new mark (the UTC time), which enters
//! the keys of its jobs (pipeline/graph.rs), so they and their dependants are computed anew
//! while the previous artifacts stay in the store under their old keys. The marks are kept per
//! pipeline at `<cache>/pipelines/<name>.refresh.json` and applied to every later plan, run,
//! status and submit of the pipeline, so a plain run after a refresh finds the refreshed
//! artifacts cached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::pipeline::PipelineConfig;

fn path(cache_root: &Path, pipeline: &str) -> PathBuf {
    cache_root
        .join("pipelines")
        .join(format!("{pipeline}.refresh.json"))
}

/// The pipeline's marks (stage -> mark); none when it was never refreshed.
pub fn load(cache_root: &Path, pipeline: &str) -> Result<BTreeMap<String, String>> {
    let p = path(cache_root, pipeline);
    match crate::fsutil::read_capped_text(&p, crate::fsutil::caps::CONFIG) {
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "{}: the refresh marks are unreadable (not a JSON object of stage -> mark); \
                 remove the file to forget the marks (the next run then uses the unrefreshed \
                 keys; `run --refresh STAGE` marks stages anew)",
                p.display()
            )
        }),
        Err(_) if !p.exists() => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// The stages `names` means: stage names, or stage kinds (every stage of that kind).
pub fn stages_named(cfg: &PipelineConfig, names: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for n in names {
        let matched: Vec<String> = cfg
            .stages
            .values()
            .filter(|s| s.name == *n || s.kind == *n)
            .map(|s| s.name.clone())
            .collect();
        if matched.is_empty() {
            let known: Vec<String> = cfg
                .stages
                .values()
                .map(|s| format!("{} ({})", s.name, s.kind))
                .collect();
            bail!(
                "--refresh {n}: no stage has this name or kind in {} (stages: {})",
                cfg.file.display(),
                known.join(", ")
            );
        }
        for m in matched {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Give `stages` a new mark (`mark`, e.g. the current UTC time) and save the marks.
pub fn mark(
    cache_root: &Path,
    cfg: &mut PipelineConfig,
    stages: &[String],
    mark: &str,
) -> Result<()> {
    for s in stages {
        cfg.refresh.insert(s.clone(), mark.to_string());
    }
    crate::fsutil::atomic_write(
        &path(cache_root, &cfg.name),
        &serde_json::to_vec_pretty(&cfg.refresh)?,
    )
}
