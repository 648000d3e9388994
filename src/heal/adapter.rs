//! LoRA adapters on the host, in PEFT's layout: for each adapted module, lora_A [r, in] and
//! lora_B [out, r]; the update is W x + (alpha / r) B A x. Saved and loaded as a PEFT adapter
//! (adapter_config.json + adapter_model.safetensors with names
//! base_model.model.{module path}.lora_{A,B}.weight, e.g.
//! base_model.model.model.layers.{i}.mlp.gate_proj.lora_A.weight or, for Qwen v1,
//! base_model.model.transformer.h.{i}.mlp.w1.lora_A.weight).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::model::family::{known_modules, parse_module_path};
use crate::model::surgery::{attach_lora, merge_lora, LowRankUpdate};
use crate::model::{ModelConfig, Projection, Transformer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// One module's adapter: A [r, in], B [out, r], row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleAdapter {
    pub layer: usize,
    /// The target name, as the layout accepts it ("gate_proj", "mlp.c_proj").
    pub module: String,
    /// The module's path in the Hugging Face model, e.g. "model.layers.3.mlp.gate_proj".
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

impl ModuleAdapter {
    pub fn peft_name(&self, which: &str) -> String {
        format!("base_model.model.{}.lora_{which}.weight", self.path)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSet {
    pub config: LoraConfig,
    pub modules: Vec<ModuleAdapter>,
}

impl AdapterSet {
    /// PEFT's initialisation: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
    /// B = 0, for every target module of every layer of `model`.
    pub fn init<B: Backend>(
        config: &LoraConfig,
        model: &Transformer<B>,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut modules = Vec::new();
        let layout = model.config.architecture.layout();
        let mut specs = Vec::new();
        for t in &config.target_modules {
            let arch = model.config.architecture;
            if !layout
                .projections
                .iter()
                .any(|s| s.name == t.as_str() || s.qualified() == *t)
            {
                bail!(
                    "LoRA target module {t:?} does not exist in {arch:?} layers (their modules: {})",
                    layout.projection_names().join(", ")
                );
            }
            let spec = layout
                .projection_named(t)
                .map_err(|e| anyhow::anyhow!("LoRA target in {arch:?} layers: {e}"))?;
            specs.push(spec);
        }
        // in layout order, whatever the order of target_modules
        specs.sort_by_key(|s| {
            layout
                .projections
                .iter()
                .position(|o| o.projection == s.projection)
        });
        specs.dedup_by_key(|s| s.projection);
        let names = layout.projection_names();
        for (i, layer) in model.layers.iter().enumerate() {
            for spec in &specs {
                // a dropped attention sublayer computes nothing: no adapter on its projections
                // (PEFT would give the missing modules B = 0, the same function)
                let attention = matches!(
                    spec.projection,
                    Projection::Q | Projection::K | Projection::V | Projection::O
                );
                if layer.attention_dropped && attention {
                    continue;
                }
                let lin = layer
                    .projection(spec.projection)
                    .with_context(|| format!("layer {i} has no {}", spec.name))?;
                let (inp, out) = (lin.in_features(), lin.out_features());
                let bound = 1.0 / (inp as f64).sqrt();
                let a = (0..config.r * inp)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let qualified = spec.qualified();
                let module = if names.contains(&qualified) {
                    qualified
                } else {
                    spec.name.to_string()
                };
                modules.push(ModuleAdapter {
                    layer: i,
                    module,
                    path: layout.projection_prefix(i, spec),
                    in_features: inp,
                    out_features: out,
                    a,
                    b: vec![0.0; out * config.r],
                });
            }
        }
        Ok(Self {
            config: config.clone(),
            modules,
        })
    }

    /// The adapters as low-rank updates of the model's projections.
    pub fn updates(&self, cfg: &ModelConfig) -> Result<Vec<LowRankUpdate<'_>>> {
        let layout = cfg.architecture.layout();
        self.modules
            .iter()
            .map(|m| {
                Ok(LowRankUpdate {
                    layer: m.layer,
                    projection: layout
                        .projection_named(&m.module)
                        .context("LoRA target module")?
                        .projection,
                    r: self.config.r,
                    scale: self.config.scale(),
                    in_features: m.in_features,
                    out_features: m.out_features,
                    a: &m.a,
                    b: &m.b,
                    dropout: self.config.dropout,
                })
            })
            .collect()
    }

    /// Put the adapters into the model as Burn tensors; with `trainable`, they require gradients
    /// and dropout is active. Returns the (A, B) tensors in module order.
    pub fn attach<B: Backend>(
        &self,
        model: &mut Transformer<B>,
        trainable: bool,
    ) -> Result<Vec<(Tensor<B, 2>, Tensor<B, 2>)>> {
        let updates = self.updates(&model.config)?;
        attach_lora(model, &updates, trainable)
    }

    /// Merge into dense base weights (for evaluation): W [in, out] += scale * A^T B^T.
    pub fn merge_into<B: Backend>(&self, model: &mut Transformer<B>) -> Result<()> {
        let updates = self.updates(&model.config)?;
        merge_lora(model, &updates)
    }

    /// Flatten all parameters (A then B of each module) for the optimizer.
    pub fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        self.modules
            .iter_mut()
            .flat_map(|m| [&mut m.a, &mut m.b])
            .collect()
    }

    /// Lengths of the parameter vectors, in `params_mut` order.
    pub fn param_sizes(&self) -> Vec<usize> {
        self.modules
            .iter()
            .flat_map(|m| [m.a.len(), m.b.len()])
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.modules.iter().map(|m| m.a.len() + m.b.len()).sum()
    }

    /// adapter_model.safetensors + adapter_config.json (PEFT layout).
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut target: Vec<String> = self.config.target_modules.clone();
        target.sort();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            // PEFT writes an integral alpha as an integer
            "lora_alpha": if self.config.alpha.fract() == 0.0 { serde_json::json!(self.config.alpha as i64) } else { serde_json::json!(self.config.alpha) },
            "lora_dropout": self.config.dropout,
            "target_modules": target,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_rslora": false,
            "use_dora": false,
            "revision": null,
        });
        std::fs::write(
            dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        self.save_tensors(&dir.join("adapter_model.safetensors"))
    }

    pub fn save_tensors(&self, path: &Path) -> Result<()> {
        let r = self.config.r;
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for m in &self.modules {
            owned.push((
                m.peft_name("A"),
                vec![r, m.in_features],
                bytemuck::cast_slice(&m.a).to_vec(),
            ));
            owned.push((
                m.peft_name("B"),
                vec![m.out_features, r],
                bytemuck::cast_slice(&m.b).to_vec(),
            ));
        }
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        let info: std::collections::HashMap<String, String> =
            [("format".to_string(), "pt".to_string())].into();
        safetensors::serialize_to_file(views, Some(info), path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Read a PEFT adapter directory.
    pub fn load_peft(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("cannot read {}", cfg_path.display()))?,
        )
        .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
        let get = |k: &str| {
            cfg.get(k)
                .with_context(|| format!("{}: missing key \"{k}\"", cfg_path.display()))
        };
        let mut config = LoraConfig {
            r: get("r")?.as_u64().context("r")? as usize,
            alpha: get("lora_alpha")?.as_f64().context("lora_alpha")?,
            dropout: get("lora_dropout")?.as_f64().unwrap_or(0.0),
            target_modules: get("target_modules")?
                .as_array()
                .context("target_modules")?
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        };
        config.target_modules.sort();
        let path = dir.join("adapter_model.safetensors");
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut by_module: BTreeMap<
            (usize, String),
            (
                Option<(Vec<usize>, Vec<f32>)>,
                Option<(Vec<usize>, Vec<f32>)>,
                String,
            ),
        > = BTreeMap::new();
        for (name, t) in st.tensors() {
            let bad = || {
                format!("{}: unexpected tensor {name} (expected base_model.model.<module>.lora_A.weight or lora_B.weight)", path.display())
            };
            let inner = name.strip_prefix("base_model.model.").with_context(bad)?;
            let (module_path, which) = if let Some(m) = inner.strip_suffix(".lora_A.weight") {
                (m, "lora_A")
            } else if let Some(m) = inner.strip_suffix(".lora_B.weight") {
                (m, "lora_B")
            } else {
                bail!(bad());
            };
            let (layer, module) = parse_module_path(module_path).with_context(|| {
                format!(
                    "{}: tensor {name}: {module_path} is not a projection of a known architecture",
                    path.display()
                )
            })?;
            if t.dtype() != Dtype::F32 {
                bail!(
                    "{}: tensor {name} is {:?}, expected F32",
                    path.display(),
                    t.dtype()
                );
            }
            let data: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let e = by_module.entry((layer, module)).or_default();
            e.2 = module_path.to_string();
            match which {
                "lora_A" => e.0 = Some((t.shape().to_vec(), data)),
                "lora_B" => e.1 = Some((t.shape().to_vec(), data)),
                other => bail!("{}: tensor {name}: unexpected part {other}", path.display()),
            }
        }
        let mut modules = Vec::new();
        for ((layer, module), (a, b, module_path)) in by_module {
            let (sa, a) = a.with_context(|| {
                format!("{}: layer {layer} {module}: lora_A missing", path.display())
            })?;
            let (sb, b) = b.with_context(|| {
                format!("{}: layer {layer} {module}: lora_B missing", path.display())
            })?;
            if sa[0] != config.r || sb[1] != config.r {
                bail!(
                    "{}: layer {layer} {module}: shapes {sa:?} / {sb:?} do not match r = {}",
                    path.display(),
                    config.r
                );
            }
            modules.push(ModuleAdapter {
                layer,
                module,
                path: module_path,
                in_features: sa[1],
                out_features: sb[0],
                a,
                b,
            });
        }
        let known = known_modules();
        let order = |m: &str| known.iter().position(|x| x == m).unwrap_or(99);
        modules.sort_by_key(|m| (m.layer, order(&m.module)));
        Ok(Self { config, modules })
    }
}
