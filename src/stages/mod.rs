//! Stage kinds. A kind is a typed parameter struct (serde, `deny_unknown_fields`) with documented
//! defaults in `stages/<kind>.toml` (compiled in), the input slots it reads, and the artifact it
//! writes into its output directory.

pub mod context;
pub mod eval_loss;
pub mod eval_qa;
pub mod heal;
pub mod heal_linear;
pub mod heal_partial;
pub mod load;
pub mod prune;
pub mod report;
pub mod select;
pub mod similarity;
pub mod test_kinds;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::model::load::WeightStorage;
pub use context::{InputArtifact, JobContext};

/// One named input of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSlot {
    pub name: &'static str,
    /// Accepted upstream kinds.
    pub kinds: &'static [&'static str],
    pub required: bool,
    /// A list of stages whose jobs are gathered across the sweep axes this stage does not use
    /// (e.g. the report); otherwise one upstream job per job of this stage.
    pub many: bool,
}

impl InputSlot {
    /// A required slot taking one upstream job of one of `kinds`.
    pub const fn one(name: &'static str, kinds: &'static [&'static str]) -> Self {
        Self {
            name,
            kinds,
            required: true,
            many: false,
        }
    }

    /// An optional slot taking one upstream job.
    pub const fn optional(name: &'static str, kinds: &'static [&'static str]) -> Self {
        Self {
            name,
            kinds,
            required: false,
            many: false,
        }
    }

    /// An optional slot gathering the upstream jobs across the sweep axes this stage lacks.
    pub const fn gather(name: &'static str, kinds: &'static [&'static str]) -> Self {
        Self {
            name,
            kinds,
            required: false,
            many: true,
        }
    }
}

/// The slot of stages that take any model: base (`load`), pruned or healed.
pub const ANY_MODEL: InputSlot = InputSlot::one(
    "model",
    &["load", "prune", "heal", "heal-linear", "heal-partial"],
);

/// A parameter error: dotted path inside the stage table and message.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub path: String,
    pub message: String,
}

pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Bumped whenever the artifact's meaning or format changes (part of every cache key).
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    /// The documented defaults (stages/<kind>.toml).
    fn defaults(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputSlot];
    /// Parameters whose values name sources (a key of [sources] or a literal source).
    fn source_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether results depend on the compute backend's precision (then it is part of the key).
    fn numeric(&self) -> bool {
        false
    }
    /// Whether the artifact's files are copied into results/<pipeline>/ (report stages).
    fn publishes(&self) -> bool {
        false
    }
    /// Type-check and range-check the parameters; returns their canonical JSON form.
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError>;
    /// Compute the artifact into `ctx.out_dir`.
    fn run(&self, ctx: &JobContext) -> Result<()>;
    /// Where the job goes among the jobs of its stage, which a run executes one after another
    /// (they never read each other): smaller ranks first, None after the ranked ones, ties in
    /// graph order. Evaluation ranks a model by the base layers it keeps unchanged, so that each
    /// pruned model continues the base stream the previous one left in the process's memo.
    /// `inputs` are the job's input artifacts (all present).
    fn run_rank(
        &self,
        _inputs: &std::collections::BTreeMap<String, Vec<InputArtifact>>,
    ) -> Option<usize> {
        None
    }
    /// The job's estimated peak memory on the compute device (on flex: the host) for the model
    /// it runs, with the parameters that lower it; None for stages that load no model.
    fn memory(&self, _params: &serde_json::Value, _on: &MemoryTarget) -> Option<MemoryPlan> {
        None
    }
}

/// What a memory estimate is for: the model a job runs and how the device holds it.
#[derive(Debug, Clone)]
pub struct MemoryTarget {
    pub shape: crate::model::memory::ModelShape,
    /// Bytes per value in the compute precision.
    pub elem: u64,
    /// Whether the device is the host (flex): host-only memory (the stream memo) counts too.
    pub host: bool,
    /// The below-the-cut stream memo's budget (host memory).
    pub stream_memo_bytes: u64,
    /// Sub-batches the job runs side by side (CPU threads on flex, 1 on GPUs): training holds
    /// one autodiff graph per sub-batch.
    pub workers: usize,
    /// The bytes the job's own work may take (the memory limit less what the runtime holds),
    /// where the limit is known: settings on "auto" are chosen to fit it.
    pub available: Option<u64>,
}

/// A job's estimated peak and the parameters that would lower it (e.g. "micro_batch = 4").
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub estimate: crate::model::memory::MemoryEstimate,
    pub knobs: Vec<String>,
    /// Settings the plan chose for parameters left on "auto" (e.g. gradient_checkpointing):
    /// the job runs with them (`JobContext::planned`).
    pub settings: std::collections::BTreeMap<String, serde_json::Value>,
    /// A setting that lowers the peak (e.g. "gradient_checkpointing = true") and the estimate
    /// with it: what a job that does not fit is told first.
    pub alternative: Option<Alternative>,
}

/// A setting that lowers a job's peak, what it does to the results, and the estimate with it.
#[derive(Debug, Clone)]
pub struct Alternative {
    pub setting: String,
    /// "the same results", "4-bit weights: the results change a little"
    pub effect: &'static str,
    pub estimate: crate::model::memory::MemoryEstimate,
}

impl MemoryPlan {
    /// Weights of `on`'s model plus one forward pass over `rows` x `seq` tokens, with logits at
    /// `logit_rows` positions: the shape of every inference stage.
    pub fn inference(on: &MemoryTarget, rows: usize, seq: usize, logit_rows: usize) -> Self {
        Self::of(Self::inference_estimate(
            on,
            WeightStorage::Dense,
            false,
            rows,
            seq,
            logit_rows,
        ))
    }
    /// `inference` for a stage with the `weights` and `stream_weights` parameters: the
    /// projections held as `storage` says (NF4: 4-bit codes and absmax, and one weight
    /// dequantised at a time for its matmul), or streamed from the model file (dense only; on
    /// "auto" where the resident model would not fit the limit). A dense resident job is
    /// offered streaming first (the same results), and NF4 where streaming is off.
    pub fn inference_in(
        on: &MemoryTarget,
        storage: WeightStorage,
        streaming: Switch,
        rows: usize,
        seq: usize,
        logit_rows: usize,
    ) -> Self {
        let dense = storage == WeightStorage::Dense;
        let estimate = |storage, streamed| {
            Self::inference_estimate(on, storage, streamed, rows, seq, logit_rows)
        };
        let streamed = dense
            && streaming.planned(|| {
                on.available
                    .is_some_and(|a| estimate(storage, false).total() > a)
            });
        let mut plan = Self::of(estimate(storage, streamed));
        if dense {
            plan = plan.setting(STREAMING, streamed);
        }
        if dense && !streamed {
            plan.alternative = Some(if streaming == Switch::Off {
                Alternative {
                    setting: format!("{STREAMING} = true"),
                    effect: "the same results; the layers are read from the model file at each use",
                    estimate: estimate(WeightStorage::Dense, true),
                }
            } else {
                Alternative {
                    setting: "weights = \"nf4\"".into(),
                    effect: "4-bit weights, as the paper's authors evaluated: the results change a little",
                    estimate: estimate(WeightStorage::Nf4, false),
                }
            });
        }
        plan
    }
    fn inference_estimate(
        on: &MemoryTarget,
        storage: WeightStorage,
        streamed: bool,
        rows: usize,
        seq: usize,
        logit_rows: usize,
    ) -> crate::model::memory::MemoryEstimate {
        use crate::model::memory::BaseWeights;
        let (r, s, e) = (rows as u64, seq as u64, on.elem);
        let mut estimate = crate::model::memory::MemoryEstimate::default();
        match (storage, streamed) {
            (WeightStorage::Dense, false) => {
                estimate.add("weights", on.shape.weight_bytes(e, BaseWeights::Dense));
            }
            (WeightStorage::Dense, true) => {
                estimate
                    .add("weights outside the layers", on.shape.non_layer_bytes(e))
                    .add("streamed weight", on.shape.streamed_transient(e));
                if on.host {
                    // read as f32 while it is uploaded (host memory: on a GPU, not the device's)
                    estimate.add("embedding read (f32)", on.shape.embedding_read());
                }
            }
            (WeightStorage::Nf4, _) => {
                estimate
                    .add("weights (NF4)", on.shape.weight_bytes(e, BaseWeights::Nf4))
                    .add("NF4 dequantising", on.shape.nf4_transient(e));
            }
        }
        estimate
            .add("activations", on.shape.layer_temporaries(r, s, e))
            .add("logits", on.shape.logits(logit_rows as u64, e));
        estimate
    }
    /// An estimate, no knobs yet.
    pub fn of(estimate: crate::model::memory::MemoryEstimate) -> Self {
        Self {
            estimate,
            knobs: Vec::new(),
            settings: Default::default(),
            alternative: None,
        }
    }
    /// Record a setting the plan chose.
    pub fn setting(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.settings.insert(name.into(), value.into());
        self
    }
    pub fn knob(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        self.knobs.push(format!("{name} (now {value})"));
        self
    }
}

/// Parameters that can check their own ranges.
pub trait Params: DeserializeOwned + Serialize {
    fn validate(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

/// Deserialize typed parameters with the failing key path, then validate ranges.
pub fn parse_params<P: Params>(value: &serde_json::Value) -> Result<P, ParamError> {
    let p: P = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ParamError {
            path: if path == "." { String::new() } else { path },
            message: inner,
        }
    })?;
    p.validate()?;
    Ok(p)
}

/// A stage kind's documented defaults (its stages/<kind>.toml, without `inputs`) with `overrides`
/// applied on top, as typed parameters: what a pipeline that sets only those keys runs.
pub fn defaults_with<P: Params>(stage: &dyn Stage, overrides: serde_json::Value) -> Result<P> {
    let defaults: toml::Value = toml::from_str(stage.defaults())?;
    let mut value = serde_json::to_value(defaults)?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("stage {}: defaults are not a table", stage.kind()))?;
    obj.remove("inputs");
    if let serde_json::Value::Object(o) = overrides {
        obj.extend(o);
    }
    parse_params(&value)
        .map_err(|e| anyhow::anyhow!("stage {} defaults: {}: {}", stage.kind(), e.path, e.message))
}

/// For inference stages: refuse sequences the model would compute differently from its
/// reference (Qwen v1 beyond seq_length), then `warn_beyond_context`.
pub fn check_context(
    stage: &str,
    what: &str,
    len: usize,
    cfg: &crate::model::ModelConfig,
) -> anyhow::Result<()> {
    cfg.check_length(what, len)
        .map_err(|e| anyhow::anyhow!("stage {stage}: {e}"))?;
    warn_beyond_context(stage, what, len, cfg);
    Ok(())
}

/// Warn when a job feeds the model sequences longer than its context: positions beyond
/// max_position_embeddings were never trained, so results there mean little. (Healing uses
/// only this: Qwen v1's rescaling beyond seq_length is inference-only upstream, so training on
/// longer sequences computes what the reference computes in training mode.)
pub fn warn_beyond_context(stage: &str, what: &str, len: usize, cfg: &crate::model::ModelConfig) {
    if cfg.max_position_embeddings > 0 && len > cfg.max_position_embeddings {
        tracing::warn!(
            "stage {stage}: {what} = {len} is longer than the model's context \
             (max_position_embeddings = {}): positions beyond it were never trained",
            cfg.max_position_embeddings
        );
    }
}

/// An execution setting a job's memory plan may choose: `true`, `false` or `"auto"` (on where
/// the plan needs it to fit the memory limit): `gradient_checkpointing` of the training stages,
/// `stream_weights` of the inference stages. How a job computes, not what: such a setting is
/// in no cache key (artifacts::manifest::EXECUTION_PARAMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Switch {
    On,
    Off,
    #[default]
    Auto,
}

impl Serialize for Switch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::On => s.serialize_bool(true),
            Self::Off => s.serialize_bool(false),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Switch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Switch, E> {
                Ok(if v { Switch::On } else { Switch::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Switch, E> {
                match v {
                    "auto" => Ok(Switch::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Switch {
    /// The setting as planned: on, off, or on "auto" on where `needed` says.
    pub fn planned(self, needed: impl FnOnce() -> bool) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => needed(),
        }
    }

    /// Whether a job runs with the setting `name` on: its setting, or on "auto" what its memory
    /// plan chose (off where no plan chose).
    pub fn for_job(self, name: &str, ctx: &JobContext) -> bool {
        self.planned(|| {
            ctx.planned
                .get(name)
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        })
    }
}

/// The memory plan of a training job and whether it runs checkpointed: `estimate(false)` and
/// `estimate(true)` are its peaks without and with gradient checkpointing; "auto" checkpoints
/// where the limit is known and the plain step would not fit it.
pub fn training_plan(
    setting: Switch,
    on: &MemoryTarget,
    estimate: impl Fn(bool) -> crate::model::memory::MemoryEstimate,
) -> MemoryPlan {
    let checkpointing =
        setting.planned(|| on.available.is_some_and(|a| estimate(false).total() > a));
    let mut plan = MemoryPlan::of(estimate(checkpointing)).setting(CHECKPOINTING, checkpointing);
    if !checkpointing {
        plan.alternative = Some(Alternative {
            setting: format!("{CHECKPOINTING} = true"),
            effect: "the same results",
            estimate: estimate(true),
        });
    }
    plan
}

/// The parameter name of gradient checkpointing, and the setting the plan chose for it.
pub const CHECKPOINTING: &str = "gradient_checkpointing";

/// The parameter name of layer streaming, and the setting the plan chose for it.
pub const STREAMING: &str = "stream_weights";

/// The parameter checks every training stage shares (heal, heal-partial).
pub fn check_training(
    steps: u64,
    global_batch: usize,
    micro_batch: usize,
    lr: f64,
    seq_len: usize,
) -> Result<(), ParamError> {
    let err = |path: &str, message: String| {
        Err(ParamError {
            path: path.into(),
            message,
        })
    };
    if steps == 0 {
        return err("steps", "must be at least 1".into());
    }
    if micro_batch == 0 || global_batch == 0 || global_batch % micro_batch != 0 {
        return err(
            "global_batch",
            format!(
                "must be a positive multiple of micro_batch ({micro_batch}), got {global_batch}"
            ),
        );
    }
    if !(lr > 0.0) {
        return err("lr", format!("must be positive, got {lr}"));
    }
    if seq_len < 2 {
        return err("seq_len", format!("must be at least 2, got {seq_len}"));
    }
    Ok(())
}

/// What a training stage (heal, heal-partial) trains on: the packed windows of `seq_len` tokens
/// of its text source's part, and the job's checkpoint directory.
pub fn training_setup(
    ctx: &JobContext,
    spec: &crate::data::text::TextSpec,
    model: &crate::artifacts::ModelRef,
    seq_len: usize,
    kind: &str,
) -> anyhow::Result<(Vec<Vec<u32>>, crate::heal::train::Checkpoints)> {
    let text = ctx.source("text.source")?;
    warn_beyond_context(&ctx.stage, "seq_len", seq_len, &model.files.config);
    let windows = crate::data::text::packed_windows(
        &text.path,
        spec,
        &model.files.tokenizer,
        model.files.config.eos_token_id,
        seq_len,
    )?;
    let checkpoints = crate::heal::train::Checkpoints {
        dir: ctx.cache_root.join("checkpoints").join(kind).join(&ctx.key),
    };
    Ok((windows, checkpoints))
}

/// A training stage's loss.csv and loss curve (loss_curve.svg/png).
pub fn write_training_log(
    ctx: &JobContext,
    log: &[crate::heal::train::LogRow],
    title: &str,
) -> anyhow::Result<()> {
    crate::artifacts::heal::write_loss_csv(&ctx.out_dir, log)?;
    let points: Vec<(f64, f64)> = log.iter().map(|r| (r.step as f64, r.loss)).collect();
    crate::report::figures::loss_curve(&ctx.out_dir, &points, title)
}

/// Canonical JSON of typed parameters.
pub fn canonical<P: Params>(value: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
    let p: P = parse_params(value)?;
    Ok(serde_json::to_value(&p).expect("parameters serialize"))
}

/// Every stage kind this build knows. Test kinds appear when the runtime options ask for them
/// (LAYERPRUNE_TEST_STAGES=1), and always in the library's own unit tests.
pub fn registry() -> Vec<&'static dyn Stage> {
    let mut kinds: Vec<&'static dyn Stage> = vec![
        &load::LoadStage,
        &similarity::SimilarityStage,
        &select::SelectStage,
        &prune::PruneStage,
        &eval_qa::EvalQaStage,
        &eval_loss::EvalLossStage,
        &heal::HealStage,
        &heal_linear::LinearHealStage,
        &heal_partial::PartialHealStage,
        &report::ReportStage,
    ];
    if cfg!(test) || crate::runtime::current().test_stages {
        kinds.push(&test_kinds::TestValueStage);
    }
    kinds
}

pub fn find(kind: &str) -> Option<&'static dyn Stage> {
    registry().into_iter().find(|s| s.kind() == kind)
}
