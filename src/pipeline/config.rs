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
    "memory_limit",
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
    /// `memory_limit`: the device memory `run` plans against, in bytes (instead of what the
    /// device reports; on flex, the machine's memory).
    pub memory_limit: Option<u64>,
    pub cache_dir: Option<PathBuf>,
    pub results_dir: PathBuf,
    pub sources: BTreeMap<String, String>,
    pub sweep: BTreeMap<String, Vec<Value>>,
    pub stages: BTreeMap<String, StageConfig>,
    /// The whole layered configuration (for resolved.toml).
    pub resolved: Value,
    /// Stage -> refresh mark (`run --refresh`): part of the keys of that stage's jobs, so a
    /// refresh computes new artifacts beside the previous ones. Not read from the file: the
    /// runner keeps the marks per pipeline in its cache.
    pub refresh: BTreeMap<String, String>,
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
    memory_limit: Option<Value>,
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
    /// Where the keys of `figment` came from; `text` is the pipeline file `file`'s.
    fn new(file: &Path, text: &str, figment: Figment) -> Self {
        Self {
            file: file.to_path_buf(),
            text: text.to_string(),
            figment,
        }
    }

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
    check_key_path(&key).map_err(|message| ConfigError {
        origin: Origin::Set(raw.to_string()),
        key: String::new(),
        message,
    })?;
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

/// The deepest key path `--set` or a LAYERPRUNE_* variable may name (a pipeline's deepest
/// real key has four levels, e.g. stages.eval.text.source); deeper paths are refused before
/// they are built into nested tables.
pub const MAX_KEY_DEPTH: usize = 16;

/// A dotted key path of `--set` (or an environment variable's, `__` read as `.`): non-empty
/// segments, at most MAX_KEY_DEPTH of them.
fn check_key_path(key: &str) -> Result<(), String> {
    let depth = key.split('.').count();
    if depth > MAX_KEY_DEPTH {
        return Err(format!(
            "the key has {depth} levels; at most {MAX_KEY_DEPTH} are allowed (e.g. stages.heal.lora_rank)"
        ));
    }
    if key.split('.').any(|p| p.trim().is_empty()) {
        return Err(format!(
            "\"{key}\" is not a key path: expected names separated by single dots, e.g. stages.heal.lora_rank"
        ));
    }
    Ok(())
}

/// Every LAYERPRUNE_* variable that names a configuration key, checked as `--set` keys are.
fn check_env_keys() -> Result<(), ConfigError> {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("LAYERPRUNE_") else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        if !CONFIG_ENV_PREFIXES.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        check_key_path(&key).map_err(|message| ConfigError {
            origin: Origin::Env(name.to_string()),
            key: String::new(),
            message,
        })?;
    }
    Ok(())
}

/// The key prefixes under which LAYERPRUNE_* variables are configuration (the others, such as
/// LAYERPRUNE_CACHE, are runtime options).
const CONFIG_ENV_PREFIXES: &[&str] = &["stages.", "sources.", "sweep."];

fn user_layers(
    base: Figment,
    file: &Path,
    text: &str,
    sets: &[String],
) -> Result<Figment, ConfigError> {
    let env = Env::prefixed("LAYERPRUNE_").split("__").filter(|k| {
        // figment may hand the key over before or after `split` turned "__" into "."
        let k = k.as_str().to_ascii_lowercase().replace("__", ".");
        CONFIG_ENV_PREFIXES.iter().any(|p| k.starts_with(p))
            || [
                "name",
                "description",
                "backend",
                "precision",
                "memory_limit",
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
    // a regular file of bounded size: a FIFO or /dev/zero named as the pipeline is refused
    let text = crate::fsutil::read_capped_text(file, crate::fsutil::caps::CONFIG).map_err(|e| {
        ConfigError {
            origin: Origin::File {
                path: file.to_path_buf(),
                line: None,
            },
            key: String::new(),
            message: format!("cannot read the pipeline file: {e:#}"),
        }
    })?;
    load_text(file, &text, sets)
}

/// Layer a pipeline given as text (`file` names it in messages).
pub fn load_text(file: &Path, text: &str, sets: &[String]) -> Result<PipelineConfig, ConfigError> {
    check_toml(file, text)?;
    check_env_keys()?;
    // Pass 1: which stages exist and of which kind.
    let kinds = stage_kinds(file, text, sets)?;
    // Pass 2: the same layers on top of each stage's defaults.
    let fig = user_layers(stage_defaults(&kinds), file, text, sets)?;
    let origins = Origins::new(file, text, fig.clone());
    let resolved: Value = fig.extract().map_err(|e| figment_error(file, text, e))?;
    let raw = parse_raw(&origins, &resolved)?;
    check_name(&origins, &raw.name)?;
    let sweep = check_sweep(&origins, &raw.sweep)?;
    let stage_configs = check_stages(&origins, &kinds, &raw.stages)?;
    let memory_limit = match &raw.memory_limit {
        None => None,
        Some(v) => Some(parse_memory_size(v).map_err(|m| origins.error("memory_limit", m))?),
    };
    let mut raw = raw;
    for (key, path) in [
        ("cache_dir", raw.cache_dir.as_mut()),
        ("results_dir", raw.results_dir.as_mut()),
    ] {
        if let Some(p) = path {
            *p = crate::paths::expand_home(p).map_err(|m| origins.error(key, m))?;
        }
    }
    let mut cfg = assemble(file, raw, sweep, stage_configs, resolved, origins);
    cfg.memory_limit = memory_limit;
    Ok(cfg)
}

/// The text must parse as TOML; otherwise an error at the line where parsing failed.
fn check_toml(file: &Path, text: &str) -> Result<(), ConfigError> {
    let table = match toml::from_str::<toml::Table>(text) {
        Ok(t) => t,
        Err(e) => {
            let line = e.span().map(|s| line_at(text, s.start));
            return Err(ConfigError {
                origin: Origin::File {
                    path: file.to_path_buf(),
                    line,
                },
                key: String::new(),
                message: format!("invalid TOML: {}", e.message()),
            });
        }
    };
    // nan and inf are TOML floats but no setting takes them (and JSON, which the layered
    // configuration is, cannot hold them: they would be reported as "null")
    if let Some(key) = non_finite_key(&toml::Value::Table(table), "") {
        return Err(ConfigError {
            origin: Origin::File {
                path: file.to_path_buf(),
                line: find_line(text, &key),
            },
            key,
            message: "nan and inf are not allowed: every number must be finite".into(),
        });
    }
    check_stage_names(file, text)
}

/// The 1-based line of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted path of the first NaN or infinite float in `v`.
fn non_finite_key(v: &toml::Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(path.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, x)| non_finite_key(x, &join(k))),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| non_finite_key(x, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// What a stage name may be: letters, digits, '-' and '_', starting with a letter or digit,
/// at most 64 characters. Stage names become key paths (`--set stages.NAME.x`), job labels,
/// file names and Slurm job names, so nothing else is allowed (a '.' would split the key, a
/// newline would end a line of a generated script).
pub fn stage_name_problem(name: &str) -> Option<String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() {
        return Some("a stage name must not be empty".into());
    }
    if name.len() > 64 {
        return Some(format!(
            "the stage name {name:?} is longer than 64 characters"
        ));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!(
            "{name:?} is not a valid stage name (letters, digits, '-' and '_', starting with a letter or digit)"
        ));
    }
    None
}

/// Every `[stages.NAME]` of the file follows `stage_name_problem`'s rule; the error is at the
/// line where the name is written.
fn check_stage_names(file: &Path, text: &str) -> Result<(), ConfigError> {
    #[derive(Deserialize)]
    struct Top {
        #[serde(default)]
        stages: BTreeMap<toml::Spanned<String>, toml::Value>,
    }
    let Ok(top) = toml::from_str::<Top>(text) else {
        // `stages` is not a table: the typed check reports it at its key
        return Ok(());
    };
    for name in top.stages.keys() {
        if let Some(message) = stage_name_problem(name.get_ref()) {
            return Err(ConfigError {
                origin: Origin::File {
                    path: file.to_path_buf(),
                    line: Some(line_at(text, name.span().start)),
                },
                key: "stages".into(),
                message,
            });
        }
    }
    Ok(())
}

/// Pass 1: the stages of the user's layers alone (file, environment, --set) and their kinds.
fn stage_kinds(
    file: &Path,
    text: &str,
    sets: &[String],
) -> Result<BTreeMap<String, &'static dyn stages::Stage>, ConfigError> {
    let user = user_layers(Figment::new(), file, text, sets)?;
    let origins = Origins::new(file, text, user.clone());
    let top: Value = user.extract().map_err(|e| figment_error(file, text, e))?;
    let mut kinds = BTreeMap::new();
    if let Some(map) = top.get("stages").and_then(|s| s.as_object()) {
        for (name, table) in map {
            if let Some(message) = stage_name_problem(name) {
                return Err(origins.error("stages", message));
            }
            kinds.insert(name.clone(), stage_kind(&origins, name, table)?);
        }
    }
    Ok(kinds)
}

/// A stage's kind: its `kind` key, else the table's name; it must be a known kind.
fn stage_kind(
    origins: &Origins,
    name: &str,
    table: &Value,
) -> Result<&'static dyn stages::Stage, ConfigError> {
    let kind = match table.get("kind") {
        None => name.to_string(),
        Some(Value::String(k)) => k.clone(),
        Some(other) => {
            return Err(origins.error(
                &format!("stages.{name}.kind"),
                format!("expected a string, found {other}"),
            ))
        }
    };
    let known: Vec<&str> = stages::registry().iter().map(|s| s.kind()).collect();
    stages::find(&kind).ok_or_else(|| {
        let key = if table.get("kind").is_some() {
            format!("stages.{name}.kind")
        } else {
            format!("stages.{name}")
        };
        origins.error(
            &key,
            format!(
                "unknown stage kind \"{kind}\"{} (known kinds: {}; set `kind` when the table name is not a kind)",
                did_you_mean(&kind, known.iter().copied()),
                known.join(", ")
            ),
        )
    })
}

/// Pass 2's bottom layer: each stage's built-in defaults, placed under stages.<name>.
fn stage_defaults(kinds: &BTreeMap<String, &'static dyn stages::Stage>) -> Figment {
    let mut base = Figment::new();
    for (name, stage) in kinds {
        base = base.merge(StageDefaults {
            stage: name.clone(),
            kind: stage.kind(),
            text: stage.defaults(),
        });
    }
    base
}

/// The layered configuration as the typed top level; an unknown key is named with the nearest
/// top-level key.
fn parse_raw(origins: &Origins, resolved: &Value) -> Result<RawPipeline, ConfigError> {
    serde_path_to_error::deserialize::<_, RawPipeline>(resolved.clone()).map_err(|e| {
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
    })
}

/// A pipeline name is non-empty and made of letters, digits, '-', '_' and '.'.
fn check_name(origins: &Origins, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(origins.error(
            "name",
            format!("\"{name}\" is not a valid pipeline name (letters, digits, '-', '_', '.')"),
        ));
    }
    // the name is a directory under results/: it must not be "." or ".." (or start with a dot,
    // which would hide it)
    if name.starts_with('.') {
        return Err(origins.error(
            "name",
            format!(
                "\"{name}\" is not a valid pipeline name: it must not start with '.' (results go to results/<name>/)"
            ),
        ));
    }
    Ok(())
}

/// Every axis of [sweep] checked (see `sweep_axis`), in axis order.
fn check_sweep(
    origins: &Origins,
    raw: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Vec<Value>>, ConfigError> {
    let mut sweep = BTreeMap::new();
    for (axis, values) in raw {
        sweep.insert(axis.clone(), sweep_axis(origins, axis, values)?);
    }
    Ok(sweep)
}

/// One sweep axis: a non-empty list of distinct strings, numbers or booleans.
fn sweep_axis(origins: &Origins, axis: &str, values: &Value) -> Result<Vec<Value>, ConfigError> {
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
    Ok(list.clone())
}

/// Every stage table as a StageConfig (see `stage_config`); a pipeline needs at least one.
fn check_stages(
    origins: &Origins,
    kinds: &BTreeMap<String, &'static dyn stages::Stage>,
    tables: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, StageConfig>, ConfigError> {
    let mut stage_configs = BTreeMap::new();
    for (name, table) in tables {
        // pass 1 saw every stage the layers name; a name that only appears now could not be
        // placed as one key (refused by the name rule, checked again here rather than trusted)
        let stage = kinds.get(name).copied().ok_or_else(|| {
            origins.error(
                &format!("stages.{name}"),
                stage_name_problem(name)
                    .unwrap_or_else(|| format!("the stage \"{name}\" has no kind")),
            )
        })?;
        stage_configs.insert(name.clone(), stage_config(origins, name, stage, table)?);
    }
    if stage_configs.is_empty() {
        return Err(origins.error("stages", "the pipeline has no stages"));
    }
    Ok(stage_configs)
}

/// One stage table split into its inputs (see `stage_inputs`) and its parameters (the rest,
/// without `kind`).
fn stage_config(
    origins: &Origins,
    name: &str,
    stage: &dyn stages::Stage,
    table: &Value,
) -> Result<StageConfig, ConfigError> {
    let mut params = table
        .as_object()
        .cloned()
        .ok_or_else(|| origins.error(&format!("stages.{name}"), "a stage must be a table"))?;
    params.remove("kind");
    let inputs_value = params
        .remove("inputs")
        .unwrap_or(Value::Object(Default::default()));
    let inputs = stage_inputs(origins, name, stage, &inputs_value)?;
    Ok(StageConfig {
        name: name.to_string(),
        kind: stage.kind().to_string(),
        inputs,
        params: Value::Object(params),
    })
}

/// A stage's `inputs` table: slot -> upstream stage names, for slots its kind has.
fn stage_inputs(
    origins: &Origins,
    name: &str,
    stage: &dyn stages::Stage,
    inputs_value: &Value,
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let inputs_obj = inputs_value.as_object().ok_or_else(|| {
        origins.error(
            &format!("stages.{name}.inputs"),
            "expected a table of slot = \"stage\"",
        )
    })?;
    let mut inputs = BTreeMap::new();
    for (slot, refs) in inputs_obj {
        let key = format!("stages.{name}.inputs.{slot}");
        check_slot(origins, &key, stage, slot)?;
        inputs.insert(slot.clone(), input_refs(origins, &key, refs)?);
    }
    Ok(inputs)
}

/// The slot must be one of the stage kind's inputs; otherwise an error with the nearest slot
/// and the kind's slots.
fn check_slot(
    origins: &Origins,
    key: &str,
    stage: &dyn stages::Stage,
    slot: &str,
) -> Result<(), ConfigError> {
    let slots: Vec<&str> = stage.inputs().iter().map(|s| s.name).collect();
    if !stage.inputs().iter().any(|s| s.name == slot) {
        return Err(origins.error(
            key,
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
    }
    Ok(())
}

/// The stage names of one slot: a name, or a non-empty list of names (a list in a one-job slot
/// fans the stage out over those stages).
fn input_refs(origins: &Origins, key: &str, refs: &Value) -> Result<Vec<String>, ConfigError> {
    match refs {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| origins.error(key, format!("expected stage names, found {v}")))
            })
            .collect(),
        other => Err(origins.error(
            key,
            format!("expected a stage name or a list of stage names, found {other}"),
        )),
    }
}

/// The checked parts as a PipelineConfig; precision defaults by backend, results_dir to
/// "results".
fn assemble(
    file: &Path,
    raw: RawPipeline,
    sweep: BTreeMap<String, Vec<Value>>,
    stage_configs: BTreeMap<String, StageConfig>,
    resolved: Value,
    origins: Origins,
) -> PipelineConfig {
    PipelineConfig {
        file: file.to_path_buf(),
        name: raw.name,
        description: raw.description,
        backend: raw.backend,
        precision: raw.precision.unwrap_or(Precision::default_for(raw.backend)),
        memory_limit: None,
        cache_dir: raw.cache_dir,
        results_dir: raw.results_dir.unwrap_or_else(|| PathBuf::from("results")),
        sources: raw.sources,
        sweep,
        stages: stage_configs,
        resolved,
        refresh: BTreeMap::new(),
        origins,
    }
}

/// A memory size: a number of bytes, or a string with a unit ("40GiB", "80 GB", "512MiB").
pub fn parse_memory_size(v: &Value) -> Result<u64, String> {
    let expected =
        "expected a size such as \"40GiB\", \"80GB\" or \"512MiB\" (or a number of bytes)";
    if let Some(n) = v.as_u64() {
        return if n > 0 {
            Ok(n)
        } else {
            Err(format!("{expected}, found 0"))
        };
    }
    let Some(text) = v.as_str() else {
        return Err(format!("{expected}, found {v}"));
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "{expected}, found \"{text}\" (unknown unit \"{unit}\")"
            ))
        }
    };
    match num.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok((x * scale) as u64),
        _ => Err(format!("{expected}, found \"{text}\"")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The cheap `test-value` kind is registered in the library's unit tests (stages::registry).
    fn test_kinds() {
        assert!(crate::stages::find("test-value").is_some());
    }

    fn file() -> &'static Path {
        Path::new("p.toml")
    }

    fn tv() -> &'static dyn stages::Stage {
        &stages::test_kinds::TestValueStage
    }

    /// Origins for a pipeline text with only the user's layers.
    fn origins(text: &str) -> Origins {
        let fig = user_layers(Figment::new(), file(), text, &[]).unwrap();
        Origins::new(file(), text, fig)
    }

    fn err<T>(r: Result<T, ConfigError>) -> ConfigError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn invalid_toml_is_an_error_at_its_line() {
        assert!(check_toml(file(), "name = \"x\"\n").is_ok());
        assert_eq!(
            err(check_toml(
                file(),
                "name = \"x\"\n[stages.a\nkind = \"test-value\"\n"
            ))
            .to_string(),
            "p.toml:2: invalid TOML: invalid table header\nexpected `.`, `]`"
        );
    }

    #[test]
    fn stage_kinds_come_from_kind_or_the_table_name() {
        test_kinds();
        let kinds = stage_kinds(
            file(),
            "name = \"x\"\n[stages.load]\n[stages.a]\nkind = \"test-value\"\n",
            &[],
        )
        .unwrap();
        let got: Vec<(&str, &str)> = kinds.iter().map(|(n, s)| (n.as_str(), s.kind())).collect();
        assert_eq!(got, [("a", "test-value"), ("load", "load")]);
        // --set can add a stage
        let kinds = stage_kinds(
            file(),
            "name = \"x\"\n",
            &["stages.prune.kind=prune".to_string()],
        )
        .unwrap();
        assert_eq!(kinds.keys().collect::<Vec<_>>(), ["prune"]);
        assert_eq!(kinds["prune"].kind(), "prune");
    }

    #[test]
    fn an_unknown_or_mistyped_kind_is_an_error() {
        test_kinds();
        assert_eq!(
            err(stage_kinds(file(), "name = \"x\"\n[stages.a]\nkind = \"test-valeu\"\n", &[])).to_string(),
            "p.toml:3: stages.a.kind: unknown stage kind \"test-valeu\" (did you mean \"test-value\"?) (known kinds: load, similarity, select, prune, eval-qa, eval-loss, heal, heal-linear, heal-partial, report, test-value; set `kind` when the table name is not a kind)"
        );
        // without `kind`, the error is at the table
        let e = err(stage_kinds(file(), "name = \"x\"\n[stages.prnue]\n", &[]));
        assert_eq!(e.key, "stages.prnue");
        assert!(
            e.message.starts_with(
                "unknown stage kind \"prnue\" (did you mean \"prune\"?) (known kinds: "
            ),
            "{}",
            e.message
        );
        assert_eq!(
            err(stage_kinds(
                file(),
                "name = \"x\"\n[stages.a]\nkind = 3\n",
                &[]
            ))
            .to_string(),
            "p.toml:3: stages.a.kind: expected a string, found 3"
        );
    }

    #[test]
    fn stage_kind_reads_the_kind_key_or_the_name() {
        test_kinds();
        let o = origins("name = \"x\"\n");
        assert_eq!(
            stage_kind(&o, "a", &json!({"kind": "test-value"}))
                .unwrap()
                .kind(),
            "test-value"
        );
        assert_eq!(stage_kind(&o, "heal", &json!({})).unwrap().kind(), "heal");
        assert_eq!(
            err(stage_kind(&o, "a", &json!({"kind": true}))).message,
            "expected a string, found true"
        );
    }

    #[test]
    fn stage_defaults_sit_under_each_stage() {
        let kinds = BTreeMap::from([("a".to_string(), tv())]);
        let v: Value = stage_defaults(&kinds).extract().unwrap();
        assert_eq!(v["stages"]["a"]["value"].as_f64(), Some(0.0));
        assert_eq!(v["stages"]["a"]["fail"], json!(false));
        assert_eq!(v["stages"]["a"]["data"], json!(""));
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[test]
    fn the_top_level_is_typed_and_unknown_keys_are_named() {
        let o = origins("name = \"x\"\nbackend = \"cuda\"\n[sources]\nm = \"pip:a==1:b\"\n");
        let resolved: Value = o.figment.extract().unwrap();
        let raw = parse_raw(&o, &resolved).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raw.name, "x");
        assert_eq!(raw.backend, BackendKind::Cuda);
        assert_eq!(raw.sources["m"], "pip:a==1:b");
        assert!(raw.precision.is_none() && raw.results_dir.is_none() && raw.stages.is_empty());
        let o = origins("name = \"x\"\nbackedn = \"flex\"\n[stages.a]\nkind = \"test-value\"\n");
        let resolved: Value = o.figment.extract().unwrap();
        assert_eq!(
            err(parse_raw(&o, &resolved)).to_string(),
            "p.toml:2: backedn: unknown key (did you mean \"backend\"?)"
        );
        // other errors keep serde's message, at the key's path
        let e = err(parse_raw(&o, &json!({"name": 3})));
        assert_eq!(e.key, "name");
        assert!(
            e.message.starts_with("invalid type: integer `3`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_pipeline_name_is_letters_digits_and_punctuation() {
        let o = origins("name = \"x\"\n");
        assert!(check_name(&o, "sweep-1_a.b").is_ok());
        let e = err(check_name(&o, "my pipeline"));
        assert_eq!(e.key, "name");
        assert_eq!(
            e.message,
            "\"my pipeline\" is not a valid pipeline name (letters, digits, '-', '_', '.')"
        );
        assert!(check_name(&o, "").is_err());
        assert!(check_name(&o, "a/b").is_err());
    }

    #[test]
    fn a_sweep_axis_is_a_non_empty_list_of_distinct_scalars() {
        let o = origins("name = \"x\"\n");
        assert_eq!(
            sweep_axis(&o, "f", &json!([0.1, "a", true])).unwrap(),
            vec![json!(0.1), json!("a"), json!(true)]
        );
        let message = |v: Value| err(sweep_axis(&o, "f", &v)).message;
        assert_eq!(
            message(json!(0.5)),
            "a sweep axis must be a list of values, found 0.5"
        );
        assert_eq!(
            message(json!([])),
            "a sweep axis must have at least one value"
        );
        assert_eq!(
            message(json!([1, [2]])),
            "sweep values must be strings, numbers or booleans, found [2]"
        );
        assert_eq!(message(json!([1, 2, 1])), "the value 1 appears twice");
        assert_eq!(err(sweep_axis(&o, "f", &json!([]))).key, "sweep.f");
    }

    #[test]
    fn check_sweep_checks_every_axis() {
        let o = origins("name = \"x\"\n");
        let raw = BTreeMap::from([
            ("a".to_string(), json!([1, 2])),
            ("b".to_string(), json!(["x"])),
        ]);
        let sweep = check_sweep(&o, &raw).unwrap();
        assert_eq!(sweep.len(), 2);
        assert_eq!(sweep["a"], vec![json!(1), json!(2)]);
        assert_eq!(sweep["b"], vec![json!("x")]);
        let raw = BTreeMap::from([("a".to_string(), json!([1])), ("b".to_string(), json!([]))]);
        assert_eq!(err(check_sweep(&o, &raw)).key, "sweep.b");
    }

    #[test]
    fn a_stage_table_splits_into_inputs_and_parameters() {
        let o = origins("name = \"x\"\n");
        let sc = stage_config(
            &o,
            "a",
            tv(),
            &json!({"kind": "test-value", "value": 2, "inputs": {"parent": "b", "gather": ["c", "d"]}}),
        )
        .unwrap();
        assert_eq!(sc.name, "a");
        assert_eq!(sc.kind, "test-value");
        assert_eq!(sc.params, json!({"value": 2}));
        assert_eq!(sc.inputs["parent"], ["b"]);
        assert_eq!(sc.inputs["gather"], ["c", "d"]);
        let sc = stage_config(&o, "a", tv(), &json!({"value": 2})).unwrap();
        assert!(sc.inputs.is_empty());
        let e = err(stage_config(&o, "a", tv(), &json!(3)));
        assert_eq!(e.key, "stages.a");
        assert_eq!(e.message, "a stage must be a table");
    }

    #[test]
    fn stage_inputs_are_a_table_of_the_kinds_slots() {
        let o = origins("name = \"x\"\n");
        let inputs = stage_inputs(&o, "a", tv(), &json!({"parent": "b"})).unwrap();
        assert_eq!(inputs.keys().collect::<Vec<_>>(), ["parent"]);
        assert_eq!(inputs["parent"], ["b"]);
        let e = err(stage_inputs(&o, "a", tv(), &json!("b")));
        assert_eq!(e.key, "stages.a.inputs");
        assert_eq!(e.message, "expected a table of slot = \"stage\"");
        let e = err(stage_inputs(&o, "a", tv(), &json!({"parnet": "b"})));
        assert_eq!(e.key, "stages.a.inputs.parnet");
        let e = err(stage_inputs(&o, "a", tv(), &json!({"parent": 1})));
        assert_eq!(e.key, "stages.a.inputs.parent");
    }

    #[test]
    fn an_unknown_slot_is_named_with_the_kinds_slots() {
        let o = origins("name = \"x\"\n");
        assert!(check_slot(&o, "k", tv(), "gather").is_ok());
        assert_eq!(
            err(check_slot(&o, "k", tv(), "parnet")).message,
            "stage kind test-value has no input \"parnet\" (did you mean \"parent\"?) (inputs: parent, gather)"
        );
        let load_kind = stages::find("load").unwrap();
        assert_eq!(
            err(check_slot(&o, "k", load_kind, "model")).message,
            "stage kind load has no input \"model\" (inputs: none)"
        );
    }

    #[test]
    fn memory_sizes_take_units_and_refuse_nonsense() {
        assert_eq!(parse_memory_size(&json!("40GiB")).unwrap(), 40 << 30);
        assert_eq!(parse_memory_size(&json!("80 GB")).unwrap(), 80_000_000_000);
        assert_eq!(parse_memory_size(&json!("1.5MiB")).unwrap(), 3 << 19);
        assert_eq!(parse_memory_size(&json!(4096)).unwrap(), 4096);
        let e = parse_memory_size(&json!("40 gigs")).unwrap_err();
        assert!(e.contains("unknown unit \"gigs\""), "{e}");
        assert!(parse_memory_size(&json!("GiB")).is_err());
        assert!(parse_memory_size(&json!(true)).is_err());
        assert!(parse_memory_size(&json!(0)).is_err());
    }

    #[test]
    fn a_slot_names_one_stage_or_a_list() {
        let o = origins("name = \"x\"\n");
        assert_eq!(input_refs(&o, "k", &json!("a")).unwrap(), ["a"]);
        assert_eq!(input_refs(&o, "k", &json!(["a", "b"])).unwrap(), ["a", "b"]);
        assert_eq!(
            err(input_refs(&o, "k", &json!([]))).message,
            "expected a stage name or a list of stage names, found []"
        );
        assert_eq!(
            err(input_refs(&o, "k", &json!(["a", 1]))).message,
            "expected stage names, found 1"
        );
        assert_eq!(
            err(input_refs(&o, "k", &json!(3))).message,
            "expected a stage name or a list of stage names, found 3"
        );
    }

    #[test]
    fn a_pipeline_needs_a_stage() {
        let o = origins("name = \"x\"\n");
        let kinds = BTreeMap::from([("a".to_string(), tv())]);
        let tables = BTreeMap::from([("a".to_string(), json!({"value": 1}))]);
        let got = check_stages(&o, &kinds, &tables).unwrap();
        assert_eq!(got["a"].kind, "test-value");
        assert_eq!(got["a"].params, json!({"value": 1}));
        assert_eq!(
            err(check_stages(&o, &kinds, &BTreeMap::new())).to_string(),
            "p.toml: stages: the pipeline has no stages"
        );
    }

    #[test]
    fn assemble_fills_in_the_defaults() {
        let o = origins("name = \"x\"\nbackend = \"cuda\"\n");
        let resolved: Value = o.figment.extract().unwrap();
        let raw = parse_raw(&o, &resolved).unwrap_or_else(|e| panic!("{e}"));
        let cfg = assemble(
            file(),
            raw,
            BTreeMap::new(),
            BTreeMap::new(),
            resolved.clone(),
            o,
        );
        assert_eq!(cfg.name, "x");
        assert_eq!(cfg.backend, BackendKind::Cuda);
        assert_eq!(cfg.precision, Precision::Bf16);
        assert_eq!(cfg.results_dir, PathBuf::from("results"));
        assert_eq!(cfg.cache_dir, None);
        assert_eq!(cfg.file, PathBuf::from("p.toml"));
        assert_eq!(cfg.resolved, resolved);
    }

    #[test]
    fn load_text_layers_defaults_the_file_and_set() {
        test_kinds();
        let text = "name = \"x\"\n[sweep]\nv = [1, 2]\n[stages.a]\nkind = \"test-value\"\nvalue = \"${v}\"\ninputs = { parent = \"b\" }\n[stages.b]\nkind = \"test-value\"\n";
        let cfg = load_text(file(), text, &["stages.b.sleep_ms=5".to_string()]).unwrap();
        assert_eq!(cfg.name, "x");
        assert_eq!(cfg.precision, Precision::F32);
        assert_eq!(cfg.sweep["v"], vec![json!(1), json!(2)]);
        let a = &cfg.stages["a"];
        assert_eq!(a.inputs["parent"], ["b"]);
        assert_eq!(a.params["value"], json!("${v}"));
        assert_eq!(a.params["sleep_ms"], json!(0));
        assert!(a.params.get("kind").is_none() && a.params.get("inputs").is_none());
        assert_eq!(cfg.stages["b"].params["sleep_ms"], json!(5));
        assert_eq!(cfg.resolved["stages"]["b"]["sleep_ms"], json!(5));
        assert_eq!(
            cfg.error("stages.b.sleep_ms", "m").to_string(),
            "--set stages.b.sleep_ms=5: stages.b.sleep_ms: m"
        );
    }

    #[test]
    fn load_text_gives_the_exact_errors() {
        test_kinds();
        let cases = [
            (
                "name = \"x\"\n[stages.a\nkind = \"test-value\"\n",
                "p.toml:2: invalid TOML: invalid table header\nexpected `.`, `]`",
            ),
            (
                "name = \"x\"\n[stages.a]\nkind = \"test-valeu\"\n",
                "p.toml:3: stages.a.kind: unknown stage kind \"test-valeu\" (did you mean \"test-value\"?) (known kinds: load, similarity, select, prune, eval-qa, eval-loss, heal, heal-linear, heal-partial, report, test-value; set `kind` when the table name is not a kind)",
            ),
            (
                "name = \"x\"\nbackedn = \"flex\"\n[stages.a]\nkind = \"test-value\"\n",
                "p.toml:2: backedn: unknown key (did you mean \"backend\"?)",
            ),
            (
                "name = \"a b\"\n[stages.a]\nkind = \"test-value\"\n",
                "p.toml:1: name: \"a b\" is not a valid pipeline name (letters, digits, '-', '_', '.')",
            ),
            (
                "name = \"x\"\n[sweep]\nfraction = []\n[stages.a]\nkind = \"test-value\"\n",
                "p.toml:3: sweep.fraction: a sweep axis must have at least one value",
            ),
            (
                "name = \"x\"\n[sweep]\nfraction = 0.5\n[stages.a]\nkind = \"test-value\"\n",
                "p.toml:3: sweep.fraction: a sweep axis must be a list of values, found 0.5",
            ),
            (
                "name = \"x\"\n[stages.base]\nkind = \"test-value\"\n[stages.a]\nkind = \"test-value\"\ninputs = { parnet = \"base\" }\n",
                "p.toml:6: stages.a.inputs.parnet: stage kind test-value has no input \"parnet\" (did you mean \"parent\"?) (inputs: parent, gather)",
            ),
            ("name = \"x\"\n", "p.toml: stages: the pipeline has no stages"),
        ];
        for (text, want) in cases {
            assert_eq!(
                err(load_text(file(), text, &[])).to_string(),
                want,
                "{text}"
            );
        }
    }
}
