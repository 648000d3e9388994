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
use crate::digest::sha256_bytes;
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
    let order = stage_order(cfg)?;
    let mut effective: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    // (stage, assignment restricted to its axes) -> job index
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut stage_jobs: BTreeMap<String, Vec<(Assignment, usize)>> = BTreeMap::new();
    let mut source_cache: HashMap<String, SourceRef> = HashMap::new();
    let axis_names: Vec<&str> = cfg.sweep.keys().map(|s| s.as_str()).collect();

    for name in &order {
        let sc: &StageConfig = &cfg.stages[name];
        let stage = stages::find(&sc.kind).expect("kinds checked at load");
        // own axes
        let mut own = BTreeSet::new();
        referenced_axes(&sc.params, &mut own);
        for axis in &own {
            if !cfg.sweep.contains_key(axis) {
                let mut path = String::new();
                if let Some(obj) = sc.params.as_object() {
                    for (k, v) in obj {
                        let mut r = BTreeSet::new();
                        referenced_axes(v, &mut r);
                        if r.contains(axis) {
                            path = format!("stages.{name}.{k}");
                            break;
                        }
                    }
                }
                return Err(cfg.error(
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
                ));
            }
        }
        // required inputs and their kinds
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
        // A one-job slot given several stages fans out: the slot becomes an axis of this stage
        // whose values are those stage names (e.g. evaluate "load", "prune" and "heal" models).
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
        let mut axes = own.clone();
        axes.extend(fan_out.iter().cloned());
        for slot in stage.inputs().iter().filter(|s| !s.many) {
            for r in sc.inputs.get(slot.name).into_iter().flatten() {
                axes.extend(effective[r].iter().cloned());
            }
        }
        effective.insert(name.clone(), axes.clone());
        let axes_vec: Vec<String> = axes.iter().cloned().collect();

        for assignment in product(&axes_vec, &values) {
            // the upstream stage chosen for each one-job slot, and the axes that matter for it
            let chosen = |slot: &str| -> Option<String> {
                let refs = sc.inputs.get(slot)?;
                match assignment.get(slot).filter(|_| fan_out.contains(slot)) {
                    Some(Value::String(r)) => Some(r.clone()),
                    _ => refs.first().cloned(),
                }
            };
            let mut relevant = own.clone();
            relevant.extend(fan_out.iter().cloned());
            for slot in stage.inputs().iter().filter(|s| !s.many) {
                if let Some(r) = chosen(slot.name) {
                    relevant.extend(effective[&r].iter().cloned());
                }
            }
            let label_assignment = restrict(&assignment, &relevant);
            let raw = substitute(&sc.params, &assignment);
            let params = stage
                .check_params(&raw)
                .map_err(|e| param_error(cfg, name, &assignment, e))?;
            // sources
            let mut sources = BTreeMap::new();
            for &p in stage.source_params() {
                // dotted paths reach into tables, e.g. "text.source"
                let pointer = format!("/{}", p.replace('.', "/"));
                let Some(v) = params.pointer(&pointer).and_then(|v| v.as_str()) else {
                    continue;
                };
                if v.is_empty() {
                    continue;
                }
                let key = format!("stages.{name}.{p}");
                let sref = match source_cache.get(v) {
                    Some(s) => s.clone(),
                    None => {
                        let text = cfg.sources.get(v).cloned().unwrap_or_else(|| v.to_string());
                        let looks_literal =
                            text.contains('/') || text.contains(':') || text.contains('.');
                        if !cfg.sources.contains_key(v) && !looks_literal {
                            return Err(cfg.error(
                                &key,
                                format!(
                                    "no source named \"{v}\" in [sources]{}",
                                    did_you_mean(v, cfg.sources.keys().map(|s| s.as_str()))
                                ),
                            ));
                        }
                        let spec: SourceSpec = text
                            .parse()
                            .map_err(|e| cfg.error(&key, format!("{e:#}")))?;
                        let identity = source::identity(&spec, cache_root).map_err(|e| {
                            let k = if cfg.sources.contains_key(v) {
                                format!("sources.{v}")
                            } else {
                                key.clone()
                            };
                            cfg.error(&k, format!("{e:#}"))
                        })?;
                        let s = SourceRef {
                            value: v.to_string(),
                            spec,
                            identity,
                        };
                        source_cache.insert(v.to_string(), s.clone());
                        s
                    }
                };
                sources.insert(p.to_string(), sref);
            }
            // inputs
            let mut inputs = BTreeMap::new();
            for slot in stage.inputs() {
                let Some(refs) = sc.inputs.get(slot.name) else {
                    continue;
                };
                let mut idxs = Vec::new();
                if !slot.many {
                    let Some(r) = chosen(slot.name) else { continue };
                    let ua = restrict(&assignment, &effective[&r]);
                    idxs.push(
                        index[&(
                            r.clone(),
                            canonical_text(&serde_json::to_value(&ua).unwrap()),
                        )],
                    );
                    inputs.insert(slot.name.to_string(), idxs);
                    continue;
                }
                for r in refs {
                    let shared: BTreeSet<String> =
                        effective[r].intersection(&axes).cloned().collect();
                    for (ua, ui) in &stage_jobs[r] {
                        if restrict(ua, &shared) == restrict(&assignment, &shared)
                            && !idxs.contains(ui)
                        {
                            idxs.push(*ui);
                        }
                    }
                }
                inputs.insert(slot.name.to_string(), idxs);
            }
            // key
            let mut key_params = params.clone();
            for (p, s) in &sources {
                if let Some(slot) = key_params.pointer_mut(&format!("/{}", p.replace('.', "/"))) {
                    *slot = Value::String(s.identity.clone());
                }
            }
            let key_doc = serde_json::json!({
                "kind": stage.kind(),
                "version": stage.version(),
                "params": key_params,
                "inputs": inputs.iter().map(|(k, v)| (k.clone(), v.iter().map(|i: &usize| jobs[*i].key.clone()).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
                "precision": if stage.numeric() { Value::String(cfg.precision.to_string()) } else { Value::Null },
            });
            let key = sha256_bytes(canonical_text(&key_doc).as_bytes());
            let idx = match by_key.get(&key) {
                Some(&i) => {
                    let same = jobs[i].stage == *name && jobs[i].assignment == label_assignment;
                    let known = jobs[i]
                        .aliases
                        .iter()
                        .any(|(s, a)| s == name && *a == label_assignment);
                    if !same && !known {
                        jobs[i]
                            .aliases
                            .push((name.clone(), label_assignment.clone()));
                    }
                    i
                }
                None => {
                    jobs.push(Job {
                        stage: name.clone(),
                        kind: stage,
                        assignment: label_assignment.clone(),
                        params,
                        inputs,
                        sources,
                        key: key.clone(),
                        aliases: vec![],
                    });
                    by_key.insert(key, jobs.len() - 1);
                    jobs.len() - 1
                }
            };
            index.insert(
                (
                    name.clone(),
                    canonical_text(&serde_json::to_value(&assignment).unwrap()),
                ),
                idx,
            );
            stage_jobs
                .entry(name.clone())
                .or_default()
                .push((assignment, idx));
        }
    }
    Ok(JobGraph { jobs })
}
