//! Every artifact kind's record, in one place: its file name, its typed content, its read and
//! write. A stage writes its own kind's record through here and reads its inputs' records through
//! here, never by parsing another stage's files itself; the cache layout `<cache>/<kind>/<key>/`
//! is defined here too and used by the runner's store.
//!
//! | kind | record | file |
//! | --- | --- | --- |
//! | load | `LoadRecord` | model.json |
//! | similarity | `SimilarityRecord` | distances.json (+ samples.jsonl) |
//! | select | `SelectionRecord` | selection.json |
//! | prune | `PrunedRecord` | pruned.json (+ model/ when exported) |
//! | heal | `HealRecord` | heal.json (+ adapter/, loss.csv, merged/) |
//! | heal-linear | `LinearHealRecord` | heal-linear.json (+ replaced/, map.safetensors, merged/) |
//! | heal-partial | `PartialHealRecord` | heal-partial.json (+ replaced/, loss.csv, merged/) |
//! | eval-qa | `EvalRecord` | scores.json (+ prompts.json) |
//! | eval-loss | `LossRecord` | loss.json |

pub mod comparison;
pub mod eval;
pub mod eval_table;
pub mod findings;
pub mod heal;
pub mod heal_linear;
pub mod heal_partial;
pub mod load;
pub mod loss;
pub mod manifest;
pub mod model;
pub mod pruned;
pub mod selection;
pub mod similarity;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use eval::EvalRecord;
pub use heal::HealRecord;
pub use heal_linear::LinearHealRecord;
pub use heal_partial::PartialHealRecord;
pub use load::LoadRecord;
pub use loss::LossRecord;
pub use manifest::Manifest;
pub use model::{ModelArtifact, ModelRef, Variant};
pub use pruned::PrunedRecord;
pub use selection::SelectionRecord;
pub use similarity::SimilarityRecord;

/// The directory of the artifact `kind`/`key` under a cache root.
pub fn artifact_dir(cache_root: &Path, kind: &str, key: &str) -> PathBuf {
    cache_root.join(kind).join(key)
}

/// A finished upstream artifact, as a job sees it.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    /// The pipeline stage that made it.
    pub stage: String,
    pub kind: String,
    pub key: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// The record of one artifact kind: one JSON file in the artifact directory.
pub trait Record: Serialize + DeserializeOwned {
    /// The stage kind whose artifacts hold this record.
    const KIND: &'static str;
    /// Its file name inside the artifact directory.
    const FILE: &'static str;

    fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(Self::FILE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", p.display()))
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join(Self::FILE);
        std::fs::write(&p, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", p.display()))
    }

    /// The record of an upstream artifact, which must be of this kind.
    fn of(input: &InputArtifact) -> Result<Self> {
        if input.kind != Self::KIND {
            bail!(
                "stage {}: expected a {} artifact, got {} ({})",
                input.stage,
                Self::KIND,
                input.kind,
                input.dir.display()
            );
        }
        Self::read(&input.dir)
    }

    /// The record of the artifact `key` of this kind in a cache.
    fn in_cache(cache_root: &Path, key: &str) -> Result<Self> {
        Self::read(&artifact_dir(cache_root, Self::KIND, key))
    }
}

/// Write a JSON value next to a record (an artifact's side file).
pub fn write_json<T: Serialize + ?Sized>(dir: &Path, file: &str, value: &T) -> Result<()> {
    let p = dir.join(file);
    std::fs::write(&p, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_the_wrong_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = InputArtifact {
            stage: "eval".into(),
            kind: "select".into(),
            key: "k".into(),
            dir: dir.path().to_path_buf(),
            manifest: serde_json::from_value(serde_json::json!({
                "kind": "select", "version": 1, "key": "k", "stage": "select",
                "assignment": {}, "params": null, "inputs": {}, "sources": {}, "files": {},
                "started_at": "", "finished_at": "", "seconds": 0.0, "tool_version": "",
                "git_rev": "", "backend": "", "precision": ""
            }))
            .unwrap(),
        };
        let err = LossRecord::of(&input).unwrap_err().to_string();
        assert!(
            err.contains("expected a eval-loss artifact, got select"),
            "{err}"
        );
        let err = SelectionRecord::of(&input).unwrap_err().to_string();
        assert!(err.contains("selection.json"), "{err}");
    }
}
