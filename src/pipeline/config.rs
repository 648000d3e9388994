//! Reading a pipeline: stage defaults (stages/<kind>.toml, compiled in) < the pipeline file <
//! LAYERPRUNE_* environment variables (`__` separates key levels, e.g.
//! LAYERPRUNE_STAGES__HEAL__LORA_RANK=8) < `--set key=value`, layered with figment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Deserialize;
use serde_json::Value;

use super::config_error::{did_you_mean, find_line, ConfigError, Origin};
use crate::backend::{BackendKind, Precision};
use crate::stages;

/// Top-level keys of a pipeline file.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "description",
    "backend",
    "precision",
    "cache_dir",
    "results_dir",
    "sources",
    "sweep",
    "stages",
];

/// A fully layered pipeline, sweep values not yet substituted.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub file: PathBuf,
    pub name: String,
    pub description: String,
    pub backend: BackendKind,
    pub precision: Precision,
    pub cache_dir: Option<PathBuf>,
    pub results_dir: PathBuf,
    pub sources: BTreeMap<String, String>,
    pub sweep: BTreeMap<String, Vec<Value>>,
    pub stages: BTreeMap<String, StageConfig>,
    /// The whole layered configuration (for resolved.toml).
    pub resolved: Value,
    origins: Origins,
}

#[derive(Debug, Clone)]
pub struct StageConfig {
    pub name: String,
    pub kind: String,
    /// slot -> upstream stage names
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Parameters (without `kind` and `inputs`); may contain "${axis}" references.
    pub params: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    backend: BackendKind,
    precision: Option<Precision>,
    cache_dir: Option<PathBuf>,
    results_dir: Option<PathBuf>,
    #[serde(default)]
    sources: BTreeMap<String, String>,
    #[serde(default)]
    sweep: BTreeMap<String, Value>,
    #[serde(default)]
    stages: BTreeMap<String, Value>,
}

/// Maps key paths back to where their values came from.
#[derive(Debug, Clone)]
struct Origins {
    file: PathBuf,
    text: String,
    figment: Figment,
}

impl Origins {
    fn origin(&self, key: &str) -> Origin {
        // the longest prefix of the key that some provider set
        let parts: Vec<&str> = key.split('.').collect();
        for n in (1..=parts.len()).rev() {
            let k = parts[..n].join(".");
            if let Some(m) = self.figment.find_metadata(&k) {
                return self.origin_of(m, key);
            }
        }
        Origin::File {
            path: self.file.clone(),
            line: None,
        }
    }

    fn origin_of(&self, m: &Metadata, key: &str) -> Origin {
        match &m.source {
            Some(Source::File(p)) => Origin::File {
                path: p.clone(),
                line: find_line(&self.text, key),
            },
            _ if m.name.starts_with("--set") => {
                Origin::Set(m.name.trim_start_matches("--set ").to_string())
            }
            _ if m.name.starts_with("stages/") => Origin::Defaults(
                m.name
                    .trim_start_matches("stages/")
                    .trim_end_matches(".toml")
                    .to_string(),
            ),
            _ if m.name.contains("environment") => Origin::Env(format!(
                "LAYERPRUNE_{}",
                key.replace('.', "__").to_uppercase()
            )),
            _ => Origin::Unknown,
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin(key),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl PipelineConfig {
    /// An error about `key` that names where its value came from.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.error(key, message)
    }
}

/// The pipeline file as a figment provider that remembers its path.
struct PipelineText {
    path: PathBuf,
    text: String,
}

impl Provider for PipelineText {
    fn metadata(&self) -> Metadata {
        Metadata::from("pipeline file", Source::File(self.path.clone()))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// One provider for each `--set key=value`.
struct SetOverride {
    raw: String,
    key: String,
    value: toml::Value,
}

impl Provider for SetOverride {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("--set {}", self.raw))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

/// The built-in defaults of one stage's kind, placed under stages.<name>.
struct StageDefaults {
    stage: String,
    kind: &'static str,
    text: &'static str,
}

impl Provider for StageDefaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("stages/{}.toml", self.kind))
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let table: toml::Table =
            toml::from_str(self.text).map_err(|e| figment::Error::from(e.to_string()))?;
        Serialized::default(&format!("stages.{}", self.stage), table).data()
    }
}

fn parse_set(raw: &str) -> Result<SetOverride, ConfigError> {
    let (key, value) = raw.split_once('=').ok_or_else(|| ConfigError {
        origin: Origin::Set(raw.to_string()),
        key: String::new(),
        message: "expected KEY=VALUE, e.g. --set stages.heal.lora_rank=8".into(),
    })?;
    let key = key.trim().to_string();
    let value_text = value.trim();
    // A TOML value if it parses as one (numbers, booleans, arrays, quoted strings), else a string.
    let value = toml::from_str::<toml::Table>(&format!("v = {value_text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value_text.to_string()));
    Ok(SetOverride {
        raw: raw.to_string(),
        key,
        value,
    })
}

fn user_layers(
    base: Figment,
    file: &Path,
    text: &str,
    sets: &[String],
) -> Result<Figment, ConfigError> {
    let env = Env::prefixed("LAYERPRUNE_").split("__").filter(|k| {
        // figment may hand the key over before or after `split` turned "__" into "."
        let k = k.as_str().to_ascii_lowercase().replace("__", ".");
        ["stages.", "sources.", "sweep."]
            .iter()
            .any(|p| k.starts_with(p))
            || [
                "name",
                "description",
                "backend",
                "precision",
                "cache_dir",
                "results_dir",
            ]
            .contains(&k.as_str())
    });
    let mut fig = base
        .merge(PipelineText {
            path: file.to_path_buf(),
            text: text.to_string(),
        })
        .merge(env);
    for s in sets {
        fig = fig.merge(parse_set(s)?);
    }
    Ok(fig)
}

fn figment_error(file: &Path, text: &str, e: figment::Error) -> ConfigError {
    let key = e.path.join(".");
    let line = if key.is_empty() {
        None
    } else {
        find_line(text, &key)
    };
    ConfigError {
        origin: Origin::File {
            path: file.to_path_buf(),
            line,
        },
        key,
        message: e.kind.to_string(),
    }
}

/// Read and layer a pipeline file.
pub fn load(file: &Path, sets: &[String]) -> Result<PipelineConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        origin: Origin::File {
            path: file.to_path_buf(),
            line: None,
        },
        key: String::new(),
        message: format!("cannot read the pipeline file: {e}"),
    })?;
    load_text(file, &text, sets)
}

/// Layer a pipeline given as text (`file` names it in messages).
pub fn load_text(file: &Path, text: &str, sets: &[String]) -> Result<PipelineConfig, ConfigError> {
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        return Err(ConfigError {
            origin: Origin::File {
                path: file.to_path_buf(),
                line,
            },
            key: String::new(),
            message: format!("invalid TOML: {}", e.message()),
        });
    }
    // Pass 1: which stages exist and of which kind.
    let user = user_layers(Figment::new(), file, text, sets)?;
    let origins0 = Origins {
        file: file.to_path_buf(),
        text: text.to_string(),
        figment: user.clone(),
    };
    let top: Value = user.extract().map_err(|e| figment_error(file, text, e))?;
    let stage_tables = top.get("stages").cloned().unwrap_or(Value::Null);
    let mut kinds: BTreeMap<String, &'static dyn stages::Stage> = BTreeMap::new();
    if let Some(map) = stage_tables.as_object() {
        let known: Vec<&str> = stages::registry().iter().map(|s| s.kind()).collect();
        for (name, table) in map {
            let kind = match table.get("kind") {
                None => name.clone(),
                Some(Value::String(k)) => k.clone(),
                Some(other) => {
                    return Err(origins0.error(
                        &format!("stages.{name}.kind"),
                        format!("expected a string, found {other}"),
                    ))
                }
            };
            let stage = stages::find(&kind).ok_or_else(|| {
                let key = if table.get("kind").is_some() { format!("stages.{name}.kind") } else { format!("stages.{name}") };
                origins0.error(
                    &key,
                    format!(
                        "unknown stage kind \"{kind}\"{} (known kinds: {}; set `kind` when the table name is not a kind)",
                        did_you_mean(&kind, known.iter().copied()),
                        known.join(", ")
                    ),
                )
            })?;
            kinds.insert(name.clone(), stage);
        }
    }
    // Pass 2: the same layers on top of each stage's defaults.
    let mut base = Figment::new();
    for (name, stage) in &kinds {
        base = base.merge(StageDefaults {
            stage: name.clone(),
            kind: stage.kind(),
            text: stage.defaults(),
        });
    }
    let fig = user_layers(base, file, text, sets)?;
    let origins = Origins {
        file: file.to_path_buf(),
        text: text.to_string(),
        figment: fig.clone(),
    };
    let resolved: Value = fig.extract().map_err(|e| figment_error(file, text, e))?;
    let raw: RawPipeline = serde_path_to_error::deserialize(resolved.clone()).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        if let Some(field) = unknown_field(&msg) {
            // serde_path_to_error's path already ends with the unknown field
            let key = if path == "." {
                field.clone()
            } else {
                path.clone()
            };
            return origins.error(
                &key,
                format!(
                    "unknown key{}",
                    did_you_mean(&field, TOP_LEVEL_KEYS.iter().copied())
                ),
            );
        }
        origins.error(&path, msg)
    })?;

    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(origins.error(
            "name",
            format!(
                "\"{}\" is not a valid pipeline name (letters, digits, '-', '_', '.')",
                raw.name
            ),
        ));
    }
    let mut sweep = BTreeMap::new();
    for (axis, values) in &raw.sweep {
        let key = format!("sweep.{axis}");
        let list = values.as_array().ok_or_else(|| {
            origins.error(
                &key,
                format!("a sweep axis must be a list of values, found {values}"),
            )
        })?;
        if list.is_empty() {
            return Err(origins.error(&key, "a sweep axis must have at least one value"));
        }
        for v in list {
            if !(v.is_string() || v.is_number() || v.is_boolean()) {
                return Err(origins.error(
                    &key,
                    format!("sweep values must be strings, numbers or booleans, found {v}"),
                ));
            }
        }
        for (i, v) in list.iter().enumerate() {
            if list[..i].contains(v) {
                return Err(origins.error(&key, format!("the value {v} appears twice")));
            }
        }
        sweep.insert(axis.clone(), list.clone());
    }
    let mut stage_configs = BTreeMap::new();
    for (name, table) in &raw.stages {
        let stage = kinds[name];
        let mut params = table
            .as_object()
            .cloned()
            .ok_or_else(|| origins.error(&format!("stages.{name}"), "a stage must be a table"))?;
        params.remove("kind");
        let inputs_value = params
            .remove("inputs")
            .unwrap_or(Value::Object(Default::default()));
        let mut inputs = BTreeMap::new();
        let inputs_obj = inputs_value.as_object().ok_or_else(|| {
            origins.error(
                &format!("stages.{name}.inputs"),
                "expected a table of slot = \"stage\"",
            )
        })?;
        let slots: Vec<&str> = stage.inputs().iter().map(|s| s.name).collect();
        for (slot, refs) in inputs_obj {
            let key = format!("stages.{name}.inputs.{slot}");
            if !stage.inputs().iter().any(|s| s.name == slot) {
                return Err(origins.error(
                    &key,
                    format!(
                        "stage kind {} has no input \"{slot}\"{} (inputs: {})",
                        stage.kind(),
                        did_you_mean(slot, slots.iter().copied()),
                        if slots.is_empty() {
                            "none".to_string()
                        } else {
                            slots.join(", ")
                        }
                    ),
                ));
            };
            // a list in a one-job slot fans the stage out over those stages
            let list: Vec<String> = match refs {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) if !a.is_empty() => a
                    .iter()
                    .map(|v| {
                        v.as_str().map(String::from).ok_or_else(|| {
                            origins.error(&key, format!("expected stage names, found {v}"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(origins.error(
                        &key,
                        format!("expected a stage name or a list of stage names, found {other}"),
                    ))
                }
            };
            inputs.insert(slot.clone(), list);
        }
        stage_configs.insert(
            name.clone(),
            StageConfig {
                name: name.clone(),
                kind: stage.kind().to_string(),
                inputs,
                params: Value::Object(params),
            },
        );
    }
    if stage_configs.is_empty() {
        return Err(origins.error("stages", "the pipeline has no stages"));
    }
    Ok(PipelineConfig {
        file: file.to_path_buf(),
        name: raw.name,
        description: raw.description,
        backend: raw.backend,
        precision: raw.precision.unwrap_or(Precision::default_for(raw.backend)),
        cache_dir: raw.cache_dir,
        results_dir: raw.results_dir.unwrap_or_else(|| PathBuf::from("results")),
        sources: raw.sources,
        sweep,
        stages: stage_configs,
        resolved,
        origins,
    })
}

/// The field name from serde's "unknown field `x`, expected ..." message.
pub fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// The expected names from serde's "unknown field `x`, expected one of `a`, `b`" message.
pub fn expected_fields(msg: &str) -> Vec<String> {
    let Some((_, rest)) = msg.split_once("expected") else {
        return vec![];
    };
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}
