//! Tensors from safetensors files: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json` (Hugging Face layout). Files are memory-mapped; a tensor is
//! converted to f32 only when asked for.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::host_tensor::HostTensor;

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        crate::fsutil::require_file(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        // Validate the header once, so later reads cannot fail on a corrupt file.
        SafeTensors::deserialize(&mmap).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display())
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
        })
    }

    /// The parsed header (validated at open; parsed again here rather than trusted, since the
    /// mapped file may have changed since).
    fn view(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid safetensors file ({e})",
                self.path.display()
            )
        })
    }
}

/// All tensors of a model directory, by name.
pub struct SafetensorsSet {
    shards: Vec<Shard>,
    /// tensor name -> index into `shards`
    index: BTreeMap<String, usize>,
}

impl SafetensorsSet {
    /// Open `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let text = crate::fsutil::read_capped_text(&index_path, crate::fsutil::caps::CONFIG)?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", index_path.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| {
                    format!("{}: missing object \"weight_map\"", index_path.display())
                })?;
            let mut files: Vec<String> = Vec::new();
            let mut index = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().with_context(|| {
                    format!(
                        "{}: weight_map[{name}] should be a file name",
                        index_path.display()
                    )
                })?;
                let i = match files.iter().position(|f| f == file) {
                    Some(i) => i,
                    None => {
                        files.push(file.to_string());
                        files.len() - 1
                    }
                };
                index.insert(name.clone(), i);
            }
            // shard names are plain file names beside the index, never paths elsewhere
            if let Some(f) = files
                .iter()
                .find(|f| f.is_empty() || f.contains('/') || f.contains('\\') || *f == "..")
            {
                bail!(
                    "{}: weight_map names the shard {f:?}; expected a file name in the same directory",
                    index_path.display()
                );
            }
            let shards = files
                .iter()
                .map(|f| Shard::open(&dir.join(f)))
                .collect::<Result<Vec<_>>>()?;
            for (name, &i) in &index {
                if shards[i].view()?.tensor(name).is_err() {
                    bail!(
                        "{}: tensor {name} is listed in {} but missing from it",
                        index_path.display(),
                        shards[i].path.display()
                    );
                }
            }
            Ok(Self { shards, index })
        } else if single.exists() {
            Self::open_file(&single)
        } else {
            bail!(
                "{}: no model.safetensors and no model.safetensors.index.json",
                dir.display()
            )
        }
    }

    /// Open one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let shard = Shard::open(path)?;
        let index = shard
            .view()?
            .names()
            .into_iter()
            .map(|n| (n.to_string(), 0))
            .collect();
        Ok(Self {
            shards: vec![shard],
            index,
        })
    }

    /// The shard file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.shards[i].path.as_path())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The stored shape of one tensor, without reading it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let &i = self.index.get(name)?;
        Some(
            self.shards[i]
                .view()
                .ok()?
                .tensor(name)
                .ok()?
                .shape()
                .to_vec(),
        )
    }

    /// The stored dtype of one tensor, e.g. "BF16".
    pub fn dtype(&self, name: &str) -> Option<String> {
        let &i = self.index.get(name)?;
        Some(format!(
            "{:?}",
            self.shards[i].view().ok()?.tensor(name).ok()?.dtype()
        ))
    }

    /// Release the pages of a tensor's bytes that this process holds (`fsutil::release_mapped`).
    pub fn release(&self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        let shard = &self.shards[i];
        let Ok(view) = shard.view() else {
            return;
        };
        if let Ok(t) = view.tensor(name) {
            let offset = t.data().as_ptr() as usize - shard.mmap.as_ptr() as usize;
            crate::fsutil::release_mapped(&shard.mmap, offset, t.data().len());
        }
    }

    /// Read one tensor as f32 (bf16/f16/f32 stored).
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let &i = self
            .index
            .get(name)
            .with_context(|| format!("no tensor named {name}"))?;
        let shard = &self.shards[i];
        let view = shard.view()?;
        let t = view
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", shard.path.display()))?;
        let bytes = t.data();
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; supported: F32, F16, BF16",
                shard.path.display()
            ),
        };
        HostTensor::new(t.shape().to_vec(), data)
            .with_context(|| format!("{}: tensor {name}", shard.path.display()))
    }
}

/// Write f32 tensors to one safetensors file (metadata format = "pt", as transformers writes).
pub fn write_f32(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let info: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(info), path)
        .with_context(|| format!("cannot write {}", path.display()))
}
