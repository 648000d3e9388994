//! Expanding a pipeline into its job graph: sweep axes as a cartesian product, "${axis}"
//! substitution, typed parameter checks, input wiring, cache keys, and merging of jobs whose
//! resolved parameters and inputs coincide.
//!
//! Axes of a stage: those its own table references, plus those of its one-job inputs. An input
//! slot marked `many` (e.g. the report's) gathers every upstream job that agrees with the
//! consumer on the axes they share.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;

use super::config::{expected_fields, unknown_field, PipelineConfig, StageConfig};
use super::config_error::{did_you_mean, ConfigError};
use crate::source::{self, SourceSpec};
use crate::stages::{self, Stage};

pub type Assignment = BTreeMap<String, Value>;

#[derive(Debug, Clone)]
pub struct SourceRef {
    /// The value in the stage table (a [sources] key or a literal source).
    pub value: String,
    pub spec: SourceSpec,
    /// What the cache key uses: pinned spec (pip), commit (hf) or content hash (local).
    pub identity: String,
    /// Only when planning with absent sources allowed: why this source is not on this machine
    /// (the identity is then a placeholder, and keys that depend on it are provisional).
    pub absent: Option<String>,
}

#[derive(Clone)]
pub struct Job {
    pub stage: String,
    pub kind: &'static dyn Stage,
    pub assignment: Assignment,
    /// Canonical parameters.
    pub params: Value,
    /// slot -> indices into `JobGraph::jobs`
    pub inputs: BTreeMap<String, Vec<usize>>,
    pub sources: BTreeMap<String, SourceRef>,
    pub key: String,
    /// Other (stage, assignment) pairs that resolved to this same job.
    pub aliases: Vec<(String, Assignment)>,
}

impl Job {
    /// "stage" or "stage[axis=value,...]"
    pub fn label(&self) -> String {
        label(&self.stage, &self.assignment)
    }
    pub fn short_key(&self) -> &str {
        &self.key[..12]
    }
    /// Whether the job belongs to one of these stages (as itself or as an alias: a job shared
    /// by several stages).
    pub fn in_stages(&self, names: &std::collections::BTreeSet<String>) -> bool {
        names.contains(&self.stage) || self.aliases.iter().any(|(s, _)| names.contains(s))
    }
}

impl JobGraph {
    /// Sweep axes of the configuration that no job uses (a likely typo or leftover: the sweep
    /// then runs nothing more than without them).
    pub fn unused_axes(&self, cfg: &PipelineConfig) -> Vec<String> {
        cfg.sweep
            .keys()
            .filter(|axis| {
                !self.jobs.iter().any(|j| {
                    j.assignment.contains_key(*axis)
                        || j.aliases.iter().any(|(_, a)| a.contains_key(*axis))
                })
            })
            .cloned()
            .collect()
    }
}

pub fn label(stage: &str, a: &Assignment) -> String {
    if a.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = a
        .iter()
        .map(|(k, v)| format!("{k}={}", display_value(v)))
        .collect();
    format!("{stage}[{}]", parts.join(","))
}

pub fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub struct JobGraph {
    /// Topologically ordered: every job comes after its inputs.
    pub jobs: Vec<Job>,
}

impl JobGraph {
    /// The sources that are not on this machine (only after `expand_allowing_absent`): one
    /// message per source, naming its key and what is missing.
    pub fn absent_sources(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for j in &self.jobs {
            for s in j.sources.values() {
                if let Some(m) = &s.absent {
                    if !v.contains(m) {
                        v.push(m.clone());
                    }
                }
            }
        }
        v
    }

    /// Whether job `idx`, or a job it depends on, needs an absent source (its key is then
    /// provisional).
    pub fn waits_for_source(&self, idx: usize) -> bool {
        let j = &self.jobs[idx];
        j.sources.values().any(|s| s.absent.is_some())
            || j.inputs
                .values()
                .flatten()
                .any(|&u| self.waits_for_source(u))
    }

    pub fn dependants(&self, idx: usize) -> Vec<usize> {
        self.jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.inputs.values().any(|v| v.contains(&idx)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Axes referenced as "${axis}" anywhere in a value.
fn referenced_axes(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                match after.find('}') {
                    Some(end) => {
                        out.insert(after[..end].to_string());
                        rest = &after[end + 1..];
                    }
                    None => break,
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| referenced_axes(x, out)),
        Value::Object(o) => o.values().for_each(|x| referenced_axes(x, out)),
        _ => {}
    }
}

/// Replace "${axis}" references: a string that is exactly one reference takes the axis value
/// with its type; references inside longer strings are interpolated as text.
fn substitute(v: &Value, a: &Assignment) -> Value {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if !name.contains("${") {
                    if let Some(val) = a.get(name) {
                        return val.clone();
                    }
                }
            }
            let mut out = s.clone();
            for (k, val) in a {
                out = out.replace(&format!("${{{k}}}"), &display_value(val));
            }
            Value::String(out)
        }
        Value::Array(x) => Value::Array(x.iter().map(|y| substitute(y, a)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, y)| (k.clone(), substitute(y, a)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Sorted-key JSON text (serde_json's default map is ordered), used for hashing.
fn canonical_text(v: &Value) -> String {
    serde_json::to_string(v).expect("json")
}

/// Stage order with inputs first; a cycle is an error naming it.
fn stage_order(cfg: &PipelineConfig) -> Result<Vec<String>, ConfigError> {
    let mut order = Vec::new();
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 = visiting, 2 = done
    fn visit<'a>(
        cfg: &'a PipelineConfig,
        name: &'a str,
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = stack.iter().position(|s| *s == name).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[start..].to_vec();
                cycle.push(name);
                return Err(cfg.error(
                    &format!("stages.{name}.inputs"),
                    format!("cycle in stage references: {}", cycle.join(" -> ")),
                ));
            }
            _ => {}
        }
        state.insert(name, 1);
        stack.push(name);
        let stage = &cfg.stages[name];
        for (slot, refs) in &stage.inputs {
            for r in refs {
                if !cfg.stages.contains_key(r) {
                    return Err(cfg.error(
                        &format!("stages.{name}.inputs.{slot}"),
                        format!(
                            "no stage named \"{r}\"{}",
                            did_you_mean(r, cfg.stages.keys().map(|s| s.as_str()))
                        ),
                    ));
                }
                visit(cfg, r, state, stack, order)?;
            }
        }
        stack.pop();
        state.insert(name, 2);
        order.push(name.to_string());
        Ok(())
    }
    for name in cfg.stages.keys() {
        visit(cfg, name, &mut state, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// Every combination of the axes' values.
fn product(axes: &[String], sweep: &BTreeMap<String, Vec<Value>>) -> Vec<Assignment> {
    let mut out = vec![Assignment::new()];
    for axis in axes {
        let mut next = Vec::new();
        for a in &out {
            for v in &sweep[axis] {
                let mut b = a.clone();
                b.insert(axis.clone(), v.clone());
                next.push(b);
            }
        }
        out = next;
    }
    out
}

fn restrict(a: &Assignment, axes: &BTreeSet<String>) -> Assignment {
    a.iter()
        .filter(|(k, _)| axes.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A parameter error as a configuration error at `stages.<name>.<path>`, with a suggestion for
/// unknown keys and the sweep values in force.
fn param_error(
    cfg: &PipelineConfig,
    name: &str,
    assignment: &Assignment,
    e: stages::ParamError,
) -> ConfigError {
    if let Some(field) = unknown_field(&e.message) {
        // serde_path_to_error's path already ends with the unknown field
        let inner = if e.path.is_empty() {
            field.clone()
        } else {
            e.path.clone()
        };
        let expected = expected_fields(&e.message);
        return cfg.error(
            &format!("stages.{name}.{inner}"),
            format!(
                "unknown key{}",
                did_you_mean(&field, expected.iter().map(|s| s.as_str()))
            ),
        );
    }
    let key = if e.path.is_empty() {
        format!("stages.{name}")
    } else {
        format!("stages.{name}.{}", e.path)
    };
    let sweep = if assignment.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = assignment
            .iter()
            .map(|(k, v)| format!("{k}={}", display_value(v)))
            .collect();
        format!(" (sweep: {})", parts.join(", "))
    };
    cfg.error(&key, format!("{}{sweep}", e.message))
}

/// Expand the pipeline into jobs. `cache_root` is used for local-file digests and hf refs.
pub fn expand(cfg: &PipelineConfig, cache_root: &Path) -> Result<JobGraph, ConfigError> {
    expand_with(cfg, cache_root, false)
}

/// As `expand`, but a Hugging Face source that is not in the local cache does not stop the
/// expansion: it is recorded (`JobGraph::absent_sources`) and the keys of the jobs that depend
/// on it are provisional. For `plan`, which validates a pipeline before its models are
/// downloaded; `run` uses `expand`.
pub fn expand_allowing_absent(
    cfg: &PipelineConfig,
    cache_root: &Path,
) -> Result<JobGraph, ConfigError> {
    expand_with(cfg, cache_root, true)
}

fn expand_with(
    cfg: &PipelineConfig,
    cache_root: &Path,
    allow_absent: bool,
) -> Result<JobGraph, ConfigError> {
    let order = stage_order(cfg)?;
    let mut graph = Builder::new(cfg, cache_root);
    graph.allow_absent = allow_absent;
    for name in &order {
        graph.add_stage(name)?;
    }
    Ok(JobGraph { jobs: graph.jobs })
}

/// One stage, checked and ready to expand: everything about it that does not depend on the
/// assignment.
struct StagePlan<'a> {
    name: &'a str,
    sc: &'a StageConfig,
    stage: &'static dyn Stage,
    /// Axes the stage's own table references.
    own: BTreeSet<String>,
    /// One-job slots given several stages; each is an axis of this stage.
    fan_out: BTreeSet<String>,
    /// The values of every axis: the sweep's, plus the stage names of each fan-out slot.
    values: BTreeMap<String, Vec<Value>>,
    /// Every axis the stage's jobs vary over: own, fan-out, and those of its one-job inputs.
    axes: BTreeSet<String>,
}

impl StagePlan<'_> {
    /// Every combination of the stage's axes' values, one per job before merging.
    fn assignments(&self) -> Vec<Assignment> {
        let axes: Vec<String> = self.axes.iter().cloned().collect();
        product(&axes, &self.values)
    }
}

/// Check a stage and work out its axes (stages it reads must have been planned already).
fn plan_stage<'a>(
    cfg: &'a PipelineConfig,
    name: &'a str,
    effective: &BTreeMap<String, BTreeSet<String>>,
) -> Result<StagePlan<'a>, ConfigError> {
    let sc: &StageConfig = &cfg.stages[name];
    let stage = stages::find(&sc.kind).expect("kinds checked at load");
    let own = own_axes(cfg, name, sc)?;
    check_inputs(cfg, name, sc, stage)?;
    let (values, fan_out) = fan_out_axes(cfg, name, sc, stage)?;
    let axes = stage_axes(&own, &fan_out, sc, stage, effective);
    Ok(StagePlan {
        name,
        sc,
        stage,
        own,
        fan_out,
        values,
        axes,
    })
}

/// The axes a stage's own table references; one that [sweep] lacks is an error.
fn own_axes(
    cfg: &PipelineConfig,
    name: &str,
    sc: &StageConfig,
) -> Result<BTreeSet<String>, ConfigError> {
    let mut own = BTreeSet::new();
    referenced_axes(&sc.params, &mut own);
    if let Some(axis) = own.iter().find(|a| !cfg.sweep.contains_key(*a)) {
        return Err(unknown_axis_error(cfg, name, sc, axis));
    }
    Ok(own)
}

/// The error for a reference to an axis that [sweep] does not declare, at the first parameter
/// that makes it, with a suggestion and the declared axes.
fn unknown_axis_error(
    cfg: &PipelineConfig,
    name: &str,
    sc: &StageConfig,
    axis: &str,
) -> ConfigError {
    let axis_names: Vec<&str> = cfg.sweep.keys().map(|s| s.as_str()).collect();
    let path = param_referencing(name, &sc.params, axis).unwrap_or_default();
    cfg.error(
        &path,
        format!(
            "unknown sweep axis \"{axis}\"{} (axes: {})",
            did_you_mean(axis, axis_names.iter().copied()),
            if axis_names.is_empty() {
                "none declared in [sweep]".to_string()
            } else {
                axis_names.join(", ")
            }
        ),
    )
}

/// "stages.<name>.<key>" of the first top-level parameter whose value references `axis`.
fn param_referencing(name: &str, params: &Value, axis: &str) -> Option<String> {
    params
        .as_object()?
        .iter()
        .find(|(_, v)| {
            let mut r = BTreeSet::new();
            referenced_axes(v, &mut r);
            r.contains(axis)
        })
        .map(|(k, _)| format!("stages.{name}.{k}"))
}

/// Required inputs are given, and every stage named in a slot is of a kind the slot takes.
fn check_inputs(
    cfg: &PipelineConfig,
    name: &str,
    sc: &StageConfig,
    stage: &dyn Stage,
) -> Result<(), ConfigError> {
    for slot in stage.inputs() {
        let key = format!("stages.{name}.inputs.{}", slot.name);
        match sc.inputs.get(slot.name) {
            None if slot.required => {
                return Err(cfg.error(
                    &format!("stages.{name}.inputs"),
                    format!(
                        "missing required input \"{}\" (a stage of kind {})",
                        slot.name,
                        slot.kinds.join(" or ")
                    ),
                ))
            }
            None => {}
            Some(refs) => {
                for r in refs {
                    let up = &cfg.stages[r];
                    if !slot.kinds.contains(&up.kind.as_str()) {
                        return Err(cfg.error(
                            &key,
                            format!(
                                "stage \"{r}\" is of kind {}, but this input takes {}",
                                up.kind,
                                slot.kinds.join(" or ")
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The values of every axis of the stage, and its fan-out slots.
///
/// A one-job slot given several stages fans out: the slot becomes an axis of this stage whose
/// values are those stage names (e.g. evaluate "load", "prune" and "heal" models).
fn fan_out_axes(
    cfg: &PipelineConfig,
    name: &str,
    sc: &StageConfig,
    stage: &dyn Stage,
) -> Result<(BTreeMap<String, Vec<Value>>, BTreeSet<String>), ConfigError> {
    let mut values: BTreeMap<String, Vec<Value>> = cfg.sweep.clone();
    let mut fan_out: BTreeSet<String> = BTreeSet::new();
    for slot in stage.inputs().iter().filter(|s| !s.many) {
        if let Some(refs) = sc.inputs.get(slot.name).filter(|r| r.len() > 1) {
            if cfg.sweep.contains_key(slot.name) {
                return Err(cfg.error(
                    &format!("stages.{name}.inputs.{}", slot.name),
                    format!("a list of stages makes \"{}\" an axis of this stage, but the sweep already has an axis of that name", slot.name),
                ));
            }
            values.insert(
                slot.name.to_string(),
                refs.iter().map(|r| Value::String(r.clone())).collect(),
            );
            fan_out.insert(slot.name.to_string());
        }
    }
    Ok((values, fan_out))
}

/// The axes of a stage: its own, its fan-out slots, and the axes of every stage in its one-job
/// slots (`many` slots gather across axes instead).
fn stage_axes(
    own: &BTreeSet<String>,
    fan_out: &BTreeSet<String>,
    sc: &StageConfig,
    stage: &dyn Stage,
    effective: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut axes = own.clone();
    axes.extend(fan_out.iter().cloned());
    for slot in stage.inputs().iter().filter(|s| !s.many) {
        for r in sc.inputs.get(slot.name).into_iter().flatten() {
            axes.extend(effective[r].iter().cloned());
        }
    }
    axes
}

/// The upstream stage a one-job slot reads at this assignment: the fan-out axis's value, else
/// the (first) stage named; `None` when the slot is not given.
fn chosen_input(
    sc: &StageConfig,
    fan_out: &BTreeSet<String>,
    assignment: &Assignment,
    slot: &str,
) -> Option<String> {
    let refs = sc.inputs.get(slot)?;
    match assignment.get(slot).filter(|_| fan_out.contains(slot)) {
        Some(Value::String(r)) => Some(r.clone()),
        _ => refs.first().cloned(),
    }
}

/// The assignment restricted to the axes that matter for this job: own, fan-out, and those of
/// the upstream stage chosen for each one-job slot (the job's label and identity).
fn label_assignment(
    plan: &StagePlan,
    effective: &BTreeMap<String, BTreeSet<String>>,
    assignment: &Assignment,
) -> Assignment {
    let mut relevant = plan.own.clone();
    relevant.extend(plan.fan_out.iter().cloned());
    for slot in plan.stage.inputs().iter().filter(|s| !s.many) {
        if let Some(r) = chosen_input(plan.sc, &plan.fan_out, assignment, slot.name) {
            relevant.extend(effective[&r].iter().cloned());
        }
    }
    restrict(assignment, &relevant)
}

/// The stage's parameters with the assignment substituted, type- and range-checked into their
/// canonical form.
fn resolve_params(
    cfg: &PipelineConfig,
    plan: &StagePlan,
    assignment: &Assignment,
) -> Result<Value, ConfigError> {
    let raw = substitute(&plan.sc.params, assignment);
    plan.stage
        .check_params(&raw)
        .map_err(|e| param_error(cfg, plan.name, assignment, e))
}

/// The JSON pointer of a dotted parameter path: dotted paths reach into tables, e.g.
/// "text.source" is "/text/source".
fn json_pointer(path: &str) -> String {
    crate::artifacts::manifest::json_pointer(path)
}

/// The sources named by the stage's source parameters (empty values name none), each value
/// resolved once per expansion through `cache`.
fn resolve_sources(
    cfg: &PipelineConfig,
    cache_root: &Path,
    allow_absent: bool,
    cache: &mut HashMap<String, SourceRef>,
    name: &str,
    stage: &dyn Stage,
    params: &Value,
) -> Result<BTreeMap<String, SourceRef>, ConfigError> {
    let mut sources = BTreeMap::new();
    for &p in stage.source_params() {
        let Some(v) = params.pointer(&json_pointer(p)).and_then(|v| v.as_str()) else {
            continue;
        };
        if v.is_empty() {
            continue;
        }
        let sref = match cache.get(v) {
            Some(s) => s.clone(),
            None => {
                let s = resolve_source(
                    cfg,
                    cache_root,
                    allow_absent,
                    &format!("stages.{name}.{p}"),
                    v,
                )?;
                cache.insert(v.to_string(), s.clone());
                s
            }
        };
        sources.insert(p.to_string(), sref);
    }
    Ok(sources)
}

/// One source value (a [sources] key or a literal source) parsed and identified; errors are at
/// `key`, or at the [sources] entry when the value names one and its source cannot be found.
fn resolve_source(
    cfg: &PipelineConfig,
    cache_root: &Path,
    allow_absent: bool,
    key: &str,
    v: &str,
) -> Result<SourceRef, ConfigError> {
    let text = cfg.sources.get(v).cloned().unwrap_or_else(|| v.to_string());
    let looks_literal = text.contains('/') || text.contains(':') || text.contains('.');
    if !cfg.sources.contains_key(v) && !looks_literal {
        return Err(cfg.error(
            key,
            format!(
                "no source named \"{v}\" in [sources]{}",
                did_you_mean(v, cfg.sources.keys().map(|s| s.as_str()))
            ),
        ));
    }
    let spec: SourceSpec = text.parse().map_err(|e| cfg.error(key, format!("{e:#}")))?;
    let at = if cfg.sources.contains_key(v) {
        format!("sources.{v}")
    } else {
        key.to_string()
    };
    let identity = match source::identity(&spec, cache_root) {
        Ok(id) => id,
        Err(e) if allow_absent && matches!(spec, SourceSpec::Hf { .. }) => {
            return Ok(SourceRef {
                value: v.to_string(),
                identity: format!("absent:{spec}"),
                spec,
                absent: Some(format!("{at}: {e:#}")),
            })
        }
        Err(e) => return Err(cfg.error(&at, format!("{e:#}"))),
    };
    Ok(SourceRef {
        value: v.to_string(),
        spec,
        identity,
        absent: None,
    })
}

/// The cache key: sha256 of the canonical JSON of kind, version, parameters (source values
/// replaced by their identities), the input jobs' keys per slot, and the precision for numeric
/// stages.
fn job_key(
    cfg: &PipelineConfig,
    stage_name: &str,
    stage: &dyn Stage,
    params: &Value,
    sources: &BTreeMap<String, SourceRef>,
    inputs: &BTreeMap<String, Vec<usize>>,
    jobs: &[Job],
) -> String {
    let key_params = crate::artifacts::manifest::key_params(
        params,
        sources
            .iter()
            .map(|(p, s)| (p.as_str(), s.identity.as_str())),
    );
    let input_keys: BTreeMap<String, Vec<String>> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|&i| jobs[i].key.clone()).collect()))
        .collect();
    let precision = cfg.precision.to_string();
    crate::artifacts::manifest::cache_key(&crate::artifacts::manifest::KeyParts {
        kind: stage.kind(),
        version: stage.version(),
        key_params: &key_params,
        inputs: &input_keys,
        precision: stage.numeric().then_some(precision.as_str()),
        refresh: cfg.refresh.get(stage_name).map(|s| s.as_str()),
    })
}

/// Add a job, or merge it into the job with the same key, recording its (stage, assignment) as
/// an alias there unless already known; returns the job's index.
fn insert_or_merge(jobs: &mut Vec<Job>, by_key: &mut HashMap<String, usize>, job: Job) -> usize {
    if let Some(&i) = by_key.get(&job.key) {
        let existing = &mut jobs[i];
        let same = existing.stage == job.stage && existing.assignment == job.assignment;
        let known = existing
            .aliases
            .iter()
            .any(|(s, a)| *s == job.stage && *a == job.assignment);
        if !same && !known {
            existing.aliases.push((job.stage, job.assignment));
        }
        return i;
    }
    jobs.push(job);
    let idx = jobs.len() - 1;
    by_key.insert(jobs[idx].key.clone(), idx);
    idx
}

/// The index key of an assignment: its canonical JSON text.
fn assignment_key(a: &Assignment) -> String {
    canonical_text(&serde_json::to_value(a).unwrap())
}

/// The job graph under construction, in stage order.
struct Builder<'a> {
    cfg: &'a PipelineConfig,
    cache_root: &'a Path,
    /// stage -> every axis its jobs vary over
    effective: BTreeMap<String, BTreeSet<String>>,
    jobs: Vec<Job>,
    /// cache key -> job index
    by_key: HashMap<String, usize>,
    /// (stage, assignment restricted to its axes) -> job index
    index: HashMap<(String, String), usize>,
    /// stage -> (assignment, job index) of each of its assignments
    stage_jobs: BTreeMap<String, Vec<(Assignment, usize)>>,
    /// source value -> resolved source
    source_cache: HashMap<String, SourceRef>,
    /// see `expand_allowing_absent`
    allow_absent: bool,
}

impl<'a> Builder<'a> {
    /// An empty graph.
    fn new(cfg: &'a PipelineConfig, cache_root: &'a Path) -> Self {
        Self {
            cfg,
            cache_root,
            effective: BTreeMap::new(),
            jobs: Vec::new(),
            by_key: HashMap::new(),
            index: HashMap::new(),
            stage_jobs: BTreeMap::new(),
            source_cache: HashMap::new(),
            allow_absent: false,
        }
    }

    /// Plan a stage, then add its job for every assignment of its axes.
    fn add_stage(&mut self, name: &str) -> Result<(), ConfigError> {
        let plan = plan_stage(self.cfg, name, &self.effective)?;
        self.effective.insert(name.to_string(), plan.axes.clone());
        for assignment in plan.assignments() {
            self.add_job(&plan, assignment)?;
        }
        Ok(())
    }

    /// The stage's job at one assignment: parameters, sources, inputs and key, then merged into
    /// the graph and recorded.
    fn add_job(&mut self, plan: &StagePlan, assignment: Assignment) -> Result<(), ConfigError> {
        let job_assignment = label_assignment(plan, &self.effective, &assignment);
        let params = resolve_params(self.cfg, plan, &assignment)?;
        let sources = resolve_sources(
            self.cfg,
            self.cache_root,
            self.allow_absent,
            &mut self.source_cache,
            plan.name,
            plan.stage,
            &params,
        )?;
        let inputs = self.wire_inputs(plan, &assignment);
        let key = job_key(
            self.cfg, plan.name, plan.stage, &params, &sources, &inputs, &self.jobs,
        );
        let job = Job {
            stage: plan.name.to_string(),
            kind: plan.stage,
            assignment: job_assignment,
            params,
            inputs,
            sources,
            key,
            aliases: vec![],
        };
        let idx = insert_or_merge(&mut self.jobs, &mut self.by_key, job);
        self.record(plan.name, assignment, idx);
        Ok(())
    }

    /// Each given slot's upstream job indices: for a one-job slot, the chosen stage's job at
    /// this assignment; for a `many` slot, every job of each stage named that agrees with this
    /// assignment on the axes they share.
    fn wire_inputs(
        &self,
        plan: &StagePlan,
        assignment: &Assignment,
    ) -> BTreeMap<String, Vec<usize>> {
        let mut inputs = BTreeMap::new();
        for slot in plan.stage.inputs() {
            let Some(refs) = plan.sc.inputs.get(slot.name) else {
                continue;
            };
            if !slot.many {
                let Some(r) = chosen_input(plan.sc, &plan.fan_out, assignment, slot.name) else {
                    continue;
                };
                let ua = restrict(assignment, &self.effective[&r]);
                inputs.insert(
                    slot.name.to_string(),
                    vec![self.index[&(r, assignment_key(&ua))]],
                );
                continue;
            }
            let mut idxs: Vec<usize> = Vec::new();
            for r in refs {
                let shared: BTreeSet<String> = self.effective[r]
                    .intersection(&plan.axes)
                    .cloned()
                    .collect();
                for (ua, ui) in &self.stage_jobs[r] {
                    if restrict(ua, &shared) == restrict(assignment, &shared) && !idxs.contains(ui)
                    {
                        idxs.push(*ui);
                    }
                }
            }
            inputs.insert(slot.name.to_string(), idxs);
        }
        inputs
    }

    /// Remember which job a stage's assignment resolved to, for its dependants' wiring.
    fn record(&mut self, stage: &str, assignment: Assignment, idx: usize) {
        self.index
            .insert((stage.to_string(), assignment_key(&assignment)), idx);
        self.stage_jobs
            .entry(stage.to_string())
            .or_default()
            .push((assignment, idx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_bytes;
    use crate::pipeline::config::load_text;
    use serde_json::json;

    const SWEEP: &str = include_str!("../../tests/fixtures/pipelines/sweep.toml");

    const FAN: &str = include_str!("../../tests/fixtures/pipelines/fan.toml");

    /// A pipeline from text (the cheap `test-value` kind is registered in unit tests).
    fn config(text: &str) -> PipelineConfig {
        load_text(Path::new("p.toml"), text, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn root() -> &'static Path {
        Path::new("/nonexistent/layerprune-test-cache")
    }

    fn tv() -> &'static dyn Stage {
        &stages::test_kinds::TestValueStage
    }

    fn err<T>(r: Result<T, ConfigError>) -> ConfigError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn assignment(pairs: &[(&str, Value)]) -> Assignment {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// A builder that has added the given stages, in that order.
    fn built<'a>(cfg: &'a PipelineConfig, names: &[&str]) -> Builder<'a> {
        let mut b = Builder::new(cfg, root());
        for name in names {
            b.add_stage(name).unwrap_or_else(|e| panic!("{e}"));
        }
        b
    }

    fn test_job(stage: &str, key: &str) -> Job {
        Job {
            stage: stage.to_string(),
            kind: tv(),
            assignment: Assignment::new(),
            params: json!({}),
            inputs: BTreeMap::new(),
            sources: BTreeMap::new(),
            key: key.to_string(),
            aliases: vec![],
        }
    }

    fn labels(g: &JobGraph) -> Vec<String> {
        g.jobs.iter().map(|j| j.label()).collect()
    }

    #[test]
    fn referenced_axes_finds_references_at_any_depth() {
        let mut out = BTreeSet::new();
        referenced_axes(
            &json!({"a": "${x}", "b": ["run-${y}-${x}", 3], "c": {"d": "${z}"}, "e": "${open"}),
            &mut out,
        );
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["x", "y", "z"]);
    }

    #[test]
    fn substitute_replaces_references_with_the_values() {
        let a = assignment(&[("fraction", json!(0.25)), ("name", json!("big"))]);
        let v = substitute(
            &json!({"f": "${fraction}", "s": "cut-${fraction}-${name}", "l": ["${name}"], "n": 3, "u": "${other}"}),
            &a,
        );
        // a whole-string reference keeps the value's type; inside text it is interpolated
        assert_eq!(
            v,
            json!({"f": 0.25, "s": "cut-0.25-big", "l": ["big"], "n": 3, "u": "${other}"})
        );
    }

    #[test]
    fn product_is_every_combination_in_axis_order() {
        let sweep: BTreeMap<String, Vec<Value>> = BTreeMap::from([
            ("a".to_string(), vec![json!(1), json!(2)]),
            ("b".to_string(), vec![json!("p"), json!("q")]),
        ]);
        let got = product(&["a".to_string(), "b".to_string()], &sweep);
        let got: Vec<String> = got.iter().map(|a| label("s", a)).collect();
        assert_eq!(
            got,
            ["s[a=1,b=p]", "s[a=1,b=q]", "s[a=2,b=p]", "s[a=2,b=q]"]
        );
        assert_eq!(product(&[], &sweep), vec![Assignment::new()]);
    }

    #[test]
    fn stage_order_puts_inputs_first_and_names_cycles() {
        let cfg = config(SWEEP);
        assert_eq!(
            stage_order(&cfg).unwrap(),
            ["base", "per_x", "side", "total"]
        );
        let cfg = config(FAN);
        assert_eq!(
            stage_order(&cfg).unwrap(),
            ["base", "per_x", "consumer", "total"]
        );
        let cfg = config("name = \"x\"\n[stages.a]\nkind = \"test-value\"\ninputs = { parent = \"b\" }\n[stages.b]\nkind = \"test-value\"\ninputs = { parent = \"a\" }\n");
        assert_eq!(
            err(stage_order(&cfg)).to_string(),
            "p.toml:4: stages.a.inputs: cycle in stage references: a -> b -> a"
        );
    }

    #[test]
    fn own_axes_are_the_references_of_the_stage_table() {
        let cfg = config(SWEEP);
        let own = own_axes(&cfg, "per_x", &cfg.stages["per_x"]).unwrap();
        assert_eq!(own.into_iter().collect::<Vec<_>>(), ["x"]);
        assert!(own_axes(&cfg, "base", &cfg.stages["base"])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_unknown_axis_is_an_error_at_its_parameter() {
        let cfg = config("name = \"x\"\n[sweep]\nfraction = [0.1]\n[stages.a]\nkind = \"test-value\"\nvalue = \"${fracton}\"\n");
        assert_eq!(
            err(own_axes(&cfg, "a", &cfg.stages["a"])).to_string(),
            "p.toml:6: stages.a.value: unknown sweep axis \"fracton\" (did you mean \"fraction\"?) (axes: fraction)"
        );
        let cfg = config("name = \"x\"\n[stages.a]\nkind = \"test-value\"\nvalue = \"${x}\"\n");
        let e = err(own_axes(&cfg, "a", &cfg.stages["a"]));
        assert_eq!(e.key, "stages.a.value");
        assert_eq!(
            e.message,
            "unknown sweep axis \"x\" (axes: none declared in [sweep])"
        );
    }

    #[test]
    fn param_referencing_finds_the_first_parameter_naming_the_axis() {
        let params = json!({"a": 1, "b": {"c": "${x}"}, "d": "${x}"});
        assert_eq!(
            param_referencing("s", &params, "x").as_deref(),
            Some("stages.s.b")
        );
        assert_eq!(param_referencing("s", &params, "y"), None);
    }

    #[test]
    fn inputs_must_be_given_and_of_the_kinds_the_slot_takes() {
        let cfg = config("name = \"x\"\n[stages.a]\nkind = \"test-value\"\n[stages.similarity]\ninputs = { model = \"a\" }\n");
        let similarity = stages::find("similarity").unwrap();
        let e = err(check_inputs(
            &cfg,
            "similarity",
            &cfg.stages["similarity"],
            similarity,
        ));
        assert_eq!(e.key, "stages.similarity.inputs.model");
        assert_eq!(
            e.message,
            "stage \"a\" is of kind test-value, but this input takes load"
        );
        let mut sc = cfg.stages["similarity"].clone();
        sc.inputs.clear();
        let e = err(check_inputs(&cfg, "similarity", &sc, similarity));
        assert_eq!(e.key, "stages.similarity.inputs");
        assert_eq!(
            e.message,
            "missing required input \"model\" (a stage of kind load)"
        );
        let cfg = config(SWEEP);
        assert!(check_inputs(&cfg, "total", &cfg.stages["total"], tv()).is_ok());
        assert!(check_inputs(&cfg, "base", &cfg.stages["base"], tv()).is_ok());
    }

    #[test]
    fn a_list_in_a_one_job_slot_becomes_an_axis() {
        let cfg = config(FAN);
        let (values, fan_out) =
            fan_out_axes(&cfg, "consumer", &cfg.stages["consumer"], tv()).unwrap();
        assert_eq!(fan_out.into_iter().collect::<Vec<_>>(), ["parent"]);
        assert_eq!(values["parent"], vec![json!("base"), json!("per_x")]);
        assert_eq!(values["x"], vec![json!(1), json!(2), json!(3)]);
        let (values, fan_out) = fan_out_axes(&cfg, "base", &cfg.stages["base"], tv()).unwrap();
        assert!(fan_out.is_empty());
        assert_eq!(values, cfg.sweep);
        let cfg = config(&FAN.replace("x = [1, 2, 3]", "x = [1, 2, 3]\nparent = [1]"));
        let e = err(fan_out_axes(
            &cfg,
            "consumer",
            &cfg.stages["consumer"],
            tv(),
        ));
        assert_eq!(e.key, "stages.consumer.inputs.parent");
        assert_eq!(
            e.message,
            "a list of stages makes \"parent\" an axis of this stage, but the sweep already has an axis of that name"
        );
    }

    #[test]
    fn a_stage_has_the_axes_of_its_one_job_inputs() {
        let cfg = config(FAN);
        let mut effective = BTreeMap::new();
        effective.insert("base".to_string(), BTreeSet::new());
        effective.insert("per_x".to_string(), BTreeSet::from(["x".to_string()]));
        let fan_out = BTreeSet::from(["parent".to_string()]);
        let axes = stage_axes(
            &BTreeSet::new(),
            &fan_out,
            &cfg.stages["consumer"],
            tv(),
            &effective,
        );
        assert_eq!(axes.into_iter().collect::<Vec<_>>(), ["parent", "x"]);
        effective.insert(
            "consumer".to_string(),
            BTreeSet::from(["parent".to_string(), "x".to_string()]),
        );
        // a `many` slot gathers across the axes instead
        let axes = stage_axes(
            &BTreeSet::new(),
            &BTreeSet::new(),
            &cfg.stages["total"],
            tv(),
            &effective,
        );
        assert!(axes.is_empty());
    }

    #[test]
    fn the_chosen_input_follows_the_fan_out_axis() {
        let cfg = config(FAN);
        let sc = &cfg.stages["consumer"];
        let fan_out = BTreeSet::from(["parent".to_string()]);
        let a = assignment(&[("parent", json!("per_x")), ("x", json!(2))]);
        assert_eq!(
            chosen_input(sc, &fan_out, &a, "parent").as_deref(),
            Some("per_x")
        );
        // not a fan-out slot: the (first) stage named
        assert_eq!(
            chosen_input(sc, &BTreeSet::new(), &a, "parent").as_deref(),
            Some("base")
        );
        assert_eq!(chosen_input(sc, &fan_out, &a, "gather"), None);
    }

    #[test]
    fn plan_stage_collects_the_axes_and_their_values() {
        let cfg = config(FAN);
        let b = built(&cfg, &["base", "per_x"]);
        let plan = plan_stage(&cfg, "consumer", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.own.len(), 0);
        assert_eq!(plan.fan_out.iter().cloned().collect::<Vec<_>>(), ["parent"]);
        assert_eq!(
            plan.axes.iter().cloned().collect::<Vec<_>>(),
            ["parent", "x"]
        );
        let got: Vec<String> = plan
            .assignments()
            .iter()
            .map(|a| label("consumer", a))
            .collect();
        assert_eq!(
            got,
            [
                "consumer[parent=base,x=1]",
                "consumer[parent=base,x=2]",
                "consumer[parent=base,x=3]",
                "consumer[parent=per_x,x=1]",
                "consumer[parent=per_x,x=2]",
                "consumer[parent=per_x,x=3]"
            ]
        );
    }

    #[test]
    fn the_label_keeps_only_the_axes_the_job_uses() {
        let cfg = config(FAN);
        let b = built(&cfg, &["base", "per_x"]);
        let plan = plan_stage(&cfg, "consumer", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        let a = assignment(&[("parent", json!("base")), ("x", json!(2))]);
        assert_eq!(
            label("consumer", &label_assignment(&plan, &b.effective, &a)),
            "consumer[parent=base]"
        );
        let a = assignment(&[("parent", json!("per_x")), ("x", json!(2))]);
        assert_eq!(
            label("consumer", &label_assignment(&plan, &b.effective, &a)),
            "consumer[parent=per_x,x=2]"
        );
    }

    #[test]
    fn parameters_are_substituted_and_checked() {
        let cfg = config(SWEEP);
        let b = built(&cfg, &["base"]);
        let plan = plan_stage(&cfg, "per_x", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        let params = resolve_params(&cfg, &plan, &assignment(&[("x", json!(2))])).unwrap();
        assert_eq!(params["value"], json!(2.0));
        assert_eq!(params["sleep_ms"], json!(0));
        // errors name the sweep values in force
        let cfg = config("name = \"x\"\n[sweep]\nv = [\"ten\"]\n[stages.a]\nkind = \"test-value\"\nvalue = \"${v}\"\n");
        let plan = plan_stage(&cfg, "a", &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let e = err(resolve_params(
            &cfg,
            &plan,
            &assignment(&[("v", json!("ten"))]),
        ));
        assert_eq!(e.key, "stages.a.value");
        assert_eq!(
            e.message,
            "invalid type: string \"ten\", expected f64 (sweep: v=ten)"
        );
        let cfg = config("name = \"x\"\n[stages.a]\nkind = \"test-value\"\nvalu = 1\n");
        let plan = plan_stage(&cfg, "a", &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            err(resolve_params(&cfg, &plan, &Assignment::new())).to_string(),
            "p.toml:4: stages.a.valu: unknown key (did you mean \"value\"?)"
        );
    }

    #[test]
    fn json_pointer_follows_dotted_paths() {
        assert_eq!(json_pointer("data"), "/data");
        assert_eq!(json_pointer("text.source"), "/text/source");
    }

    #[test]
    fn an_absent_hub_source_is_an_error_unless_planning() {
        let cfg = config("name = \"x\"\n[sources]\nm = \"hf:layerprune-test/no-such-model\"\n[stages.a]\nkind = \"test-value\"\ndata = \"m\"\n");
        let e = err(resolve_source(&cfg, root(), false, "stages.a.data", "m")).to_string();
        assert!(
            e.contains("sources.m") && e.contains("not in the local Hugging Face cache"),
            "{e}"
        );
        let s = resolve_source(&cfg, root(), true, "stages.a.data", "m").unwrap();
        assert_eq!(s.identity, "absent:hf:layerprune-test/no-such-model");
        assert!(s
            .absent
            .unwrap()
            .starts_with("sources.m: layerprune-test/no-such-model is not in"));
        // only hub sources may be absent: a missing local file stays an error
        let cfg = config(
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\ndata = \"/no/such/file.txt\"\n",
        );
        assert!(resolve_source(&cfg, root(), true, "stages.a.data", "/no/such/file.txt").is_err());
    }

    #[test]
    fn sources_resolve_by_name_or_literal_and_once() {
        let cfg = config("name = \"x\"\n[sources]\nspeeches = \"pip:corpus==1.0:speeches.txt\"\n[stages.a]\nkind = \"test-value\"\ndata = \"speeches\"\n");
        let mut cache = HashMap::new();
        let got = resolve_sources(
            &cfg,
            root(),
            false,
            &mut cache,
            "a",
            tv(),
            &json!({"data": "speeches"}),
        )
        .unwrap();
        assert_eq!(got["data"].value, "speeches");
        assert_eq!(got["data"].identity, "pip:corpus==1.0:speeches.txt");
        assert!(cache.contains_key("speeches"));
        // a literal source needs no [sources] entry
        let got = resolve_sources(
            &cfg,
            root(),
            false,
            &mut cache,
            "a",
            tv(),
            &json!({"data": "pip:other==2:x"}),
        )
        .unwrap();
        assert_eq!(got["data"].identity, "pip:other==2:x");
        // an empty value names no source
        assert!(resolve_sources(
            &cfg,
            root(),
            false,
            &mut cache,
            "a",
            tv(),
            &json!({"data": ""})
        )
        .unwrap()
        .is_empty());
        // a value seen before comes from the cache
        cache.insert(
            "seen".to_string(),
            SourceRef {
                value: "seen".to_string(),
                spec: "pip:p==1:m".parse::<SourceSpec>().unwrap(),
                identity: "cached-identity".to_string(),
                absent: None,
            },
        );
        let got = resolve_sources(
            &cfg,
            root(),
            false,
            &mut cache,
            "a",
            tv(),
            &json!({"data": "seen"}),
        )
        .unwrap();
        assert_eq!(got["data"].identity, "cached-identity");
    }

    #[test]
    fn a_source_that_cannot_be_found_is_an_error_where_it_is_named() {
        let cfg = config("name = \"x\"\n[stages.a]\nkind = \"test-value\"\ndata = \"speeches\"\n");
        assert_eq!(
            err(resolve_source(
                &cfg,
                root(),
                false,
                "stages.a.data",
                "speeches"
            ))
            .to_string(),
            "p.toml:4: stages.a.data: no source named \"speeches\" in [sources]"
        );
        let cfg = config("name = \"x\"\n[sources]\nspeeches = \"./nowhere.txt\"\n[stages.a]\nkind = \"test-value\"\ndata = \"speeches\"\n");
        assert_eq!(
            err(resolve_source(
                &cfg,
                root(),
                false,
                "stages.a.data",
                "speeches"
            ))
            .to_string(),
            "p.toml:3: sources.speeches: ./nowhere.txt: no such file or directory"
        );
    }

    #[test]
    fn inputs_are_wired_to_the_matching_upstream_jobs() {
        let cfg = config(SWEEP);
        let b = built(&cfg, &["base", "per_x", "side"]);
        let names = |idxs: &Vec<usize>| -> Vec<String> {
            idxs.iter().map(|&i| b.jobs[i].label()).collect()
        };
        // a one-job slot: the upstream job at this assignment
        let plan = plan_stage(&cfg, "per_x", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        let inputs = b.wire_inputs(&plan, &assignment(&[("x", json!(2))]));
        assert_eq!(names(&inputs["parent"]), ["base"]);
        assert!(!inputs.contains_key("gather"));
        // a `many` slot: every job of each stage named
        let plan = plan_stage(&cfg, "total", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        let inputs = b.wire_inputs(&plan, &Assignment::new());
        assert_eq!(
            names(&inputs["gather"]),
            ["per_x[x=1]", "per_x[x=2]", "per_x[x=3]", "side"]
        );
        // a fan-out slot: the job of the stage the assignment chose
        let cfg = config(FAN);
        let b = built(&cfg, &["base", "per_x"]);
        let plan = plan_stage(&cfg, "consumer", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        let inputs = b.wire_inputs(
            &plan,
            &assignment(&[("parent", json!("per_x")), ("x", json!(3))]),
        );
        assert_eq!(b.jobs[inputs["parent"][0]].label(), "per_x[x=3]");
    }

    #[test]
    fn the_key_hashes_kind_version_params_inputs_and_precision() {
        let cfg = config(SWEEP);
        let no_sources = BTreeMap::new();
        let key = job_key(
            &cfg,
            "a",
            tv(),
            &json!({"value": 1.0}),
            &no_sources,
            &BTreeMap::new(),
            &[],
        );
        assert_eq!(
            key,
            sha256_bytes(br#"{"inputs":{},"kind":"test-value","params":{"value":1.0},"precision":null,"version":1}"#)
        );
        // inputs enter by their keys
        let jobs = vec![test_job("base", "k0")];
        let inputs = BTreeMap::from([("parent".to_string(), vec![0usize])]);
        let key = job_key(
            &cfg,
            "a",
            tv(),
            &json!({"value": 1.0}),
            &no_sources,
            &inputs,
            &jobs,
        );
        assert_eq!(
            key,
            sha256_bytes(br#"{"inputs":{"parent":["k0"]},"kind":"test-value","params":{"value":1.0},"precision":null,"version":1}"#)
        );
        // sources enter by their identities, not their names
        let sources = BTreeMap::from([(
            "data".to_string(),
            SourceRef {
                value: "speeches".to_string(),
                spec: "pip:c==1:s.txt".parse::<SourceSpec>().unwrap(),
                identity: "pip:c==1:s.txt".to_string(),
                absent: None,
            },
        )]);
        let key = job_key(
            &cfg,
            "a",
            tv(),
            &json!({"data": "speeches", "value": 1.0}),
            &sources,
            &BTreeMap::new(),
            &[],
        );
        assert_eq!(
            key,
            sha256_bytes(br#"{"inputs":{},"kind":"test-value","params":{"data":"pip:c==1:s.txt","value":1.0},"precision":null,"version":1}"#)
        );
        // a refresh mark of the stage enters the key; another stage's does not
        let mut refreshed = cfg.clone();
        refreshed
            .refresh
            .insert("a".into(), "2026-12-01T00:00:00Z".into());
        let k = |c: &PipelineConfig| {
            job_key(
                c,
                "a",
                tv(),
                &json!({"value": 1.0}),
                &no_sources,
                &BTreeMap::new(),
                &[],
            )
        };
        assert_eq!(
            k(&refreshed),
            sha256_bytes(br#"{"inputs":{},"kind":"test-value","params":{"value":1.0},"precision":null,"refresh":"2026-12-01T00:00:00Z","version":1}"#)
        );
        refreshed.refresh.clear();
        refreshed.refresh.insert("b".into(), "x".into());
        assert_eq!(k(&refreshed), k(&cfg));
    }

    #[test]
    fn identical_jobs_are_merged_and_the_others_kept_as_aliases() {
        let mut jobs = Vec::new();
        let mut by_key = HashMap::new();
        assert_eq!(
            insert_or_merge(&mut jobs, &mut by_key, test_job("same", "k")),
            0
        );
        assert_eq!(
            insert_or_merge(&mut jobs, &mut by_key, test_job("other", "k2")),
            1
        );
        // the same key from another stage: merged, and remembered once as an alias
        assert_eq!(
            insert_or_merge(&mut jobs, &mut by_key, test_job("twin", "k")),
            0
        );
        assert_eq!(
            insert_or_merge(&mut jobs, &mut by_key, test_job("twin", "k")),
            0
        );
        // the same stage and assignment again: no alias
        assert_eq!(
            insert_or_merge(&mut jobs, &mut by_key, test_job("same", "k")),
            0
        );
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            jobs[0].aliases,
            vec![("twin".to_string(), Assignment::new())]
        );
        assert!(jobs[1].aliases.is_empty());
        assert_eq!(by_key["k2"], 1);
    }

    #[test]
    fn recorded_jobs_are_found_by_stage_and_assignment() {
        let cfg = config(SWEEP);
        let mut b = Builder::new(&cfg, root());
        let a = assignment(&[("x", json!(2))]);
        b.record("per_x", a.clone(), 7);
        assert_eq!(assignment_key(&a), r#"{"x":2}"#);
        assert_eq!(b.index[&("per_x".to_string(), assignment_key(&a))], 7usize);
        assert_eq!(b.stage_jobs["per_x"], vec![(a, 7usize)]);
    }

    #[test]
    fn add_job_resolves_and_merges_one_job() {
        let cfg = config(FAN);
        let mut b = built(&cfg, &["base", "per_x"]);
        let plan = plan_stage(&cfg, "consumer", &b.effective).unwrap_or_else(|e| panic!("{e}"));
        b.effective
            .insert("consumer".to_string(), plan.axes.clone());
        let at = |parent: &str, x: i64| assignment(&[("parent", json!(parent)), ("x", json!(x))]);
        b.add_job(&plan, at("base", 1))
            .unwrap_or_else(|e| panic!("{e}"));
        // another value of an axis the job does not use: the same job
        b.add_job(&plan, at("base", 2))
            .unwrap_or_else(|e| panic!("{e}"));
        b.add_job(&plan, at("per_x", 2))
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<String> = b.jobs[4..].iter().map(|j| j.label()).collect();
        assert_eq!(got, ["consumer[parent=base]", "consumer[parent=per_x,x=2]"]);
        assert!(b.jobs[4].aliases.is_empty());
        assert_eq!(b.jobs[4].params["value"], json!(100.0));
        assert_eq!(b.jobs[5].inputs["parent"], vec![2]);
        assert_eq!(
            b.stage_jobs["consumer"]
                .iter()
                .map(|(_, i)| *i)
                .collect::<Vec<_>>(),
            [4, 4, 5]
        );
    }

    #[test]
    fn expand_builds_the_graph_in_stage_order() {
        let cfg = config(SWEEP);
        let g = expand(&cfg, root()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            labels(&g),
            [
                "base",
                "per_x[x=1]",
                "per_x[x=2]",
                "per_x[x=3]",
                "side",
                "total"
            ]
        );
        assert_eq!(g.dependants(0), vec![1, 2, 3]);
        assert_eq!(g.jobs[5].inputs["gather"], vec![1, 2, 3, 4]);
        let keys: BTreeSet<&str> = g.jobs.iter().map(|j| j.key.as_str()).collect();
        assert_eq!(keys.len(), 6);
        let again = expand(&cfg, root()).unwrap_or_else(|e| panic!("{e}"));
        assert!(g.jobs.iter().zip(&again.jobs).all(|(a, b)| a.key == b.key));
    }

    #[test]
    fn expand_merges_jobs_that_resolve_identically() {
        let cfg = config("name = \"dedup\"\n[sweep]\nx = [1, 2]\n[stages.shared]\nkind = \"test-value\"\nvalue = 1\n[stages.per_x]\nkind = \"test-value\"\nvalue = \"${x}\"\ninputs = { parent = \"shared\" }\n[stages.same]\nkind = \"test-value\"\nvalue = 7\ndata = \"\"\n[stages.twin]\nkind = \"test-value\"\nvalue = 7\n");
        let g = expand(&cfg, root()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(labels(&g), ["shared", "per_x[x=1]", "per_x[x=2]", "same"]);
        assert_eq!(
            g.jobs[3].aliases,
            vec![("twin".to_string(), Assignment::new())]
        );
    }

    #[test]
    fn expand_fans_a_stage_out_over_a_list_of_inputs() {
        let cfg = config(FAN);
        let g = expand(&cfg, root()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            labels(&g),
            [
                "base",
                "per_x[x=1]",
                "per_x[x=2]",
                "per_x[x=3]",
                "consumer[parent=base]",
                "consumer[parent=per_x,x=1]",
                "consumer[parent=per_x,x=2]",
                "consumer[parent=per_x,x=3]",
                "total"
            ]
        );
        assert_eq!(g.jobs[6].inputs["parent"], vec![2]);
        assert_eq!(g.jobs[8].inputs["gather"], vec![4, 5, 6, 7]);
    }

    #[test]
    fn expand_stops_at_the_first_bad_stage() {
        let cfg = config("name = \"x\"\n[sweep]\nfraction = [0.1]\n[stages.a]\nkind = \"test-value\"\nvalue = \"${fracton}\"\n");
        assert_eq!(
            err(expand(&cfg, root())).to_string(),
            "p.toml:6: stages.a.value: unknown sweep axis \"fracton\" (did you mean \"fraction\"?) (axes: fraction)"
        );
    }
}
