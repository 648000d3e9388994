//! `layerprune submit FILE --slurm`: the jobs that are not cached, as Slurm array jobs. Jobs are
//! grouped into levels by their depth among the pending jobs (a job's level is one more than the
//! deepest pending job it reads; cached inputs do not count), so a level's tasks can run in any
//! order once the previous level has succeeded. Each level is one sbatch script whose task i
//! runs `layerprune run FILE --job <key i>` from the level's index file; each level depends on
//! the previous one (`--dependency=afterok:<id>`). Slurm does the scheduling; layerprune only
//! describes the work. All tasks share the cache directory, which must therefore be on a
//! filesystem every node sees (the per-key locks are flock(2) locks, which NFSv4 and Lustre
//! honour across nodes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::pipeline::JobGraph;

#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// Slurm's --time, e.g. "04:00:00".
    pub time: Option<String>,
    /// At most this many tasks of a level at once (`--array=0-N%K`).
    pub array_parallelism: Option<u32>,
}

/// One array job: the pending jobs at one depth.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub depth: usize,
    /// The stages its jobs belong to, in graph order.
    pub stages: Vec<String>,
    /// Job indices, in graph order.
    pub jobs: Vec<usize>,
}

/// Group the pending jobs (`pending[i]`) by depth among pending jobs.
pub fn levels(graph: &JobGraph, pending: &[bool]) -> Vec<Level> {
    let mut depth: Vec<Option<usize>> = vec![None; graph.jobs.len()];
    // the graph is topologically ordered: inputs come first
    for (i, j) in graph.jobs.iter().enumerate() {
        if !pending[i] {
            continue;
        }
        let d = j
            .inputs
            .values()
            .flatten()
            .filter_map(|&u| depth[u])
            .max()
            .map_or(0, |d| d + 1);
        depth[i] = Some(d);
    }
    let mut out: Vec<Level> = Vec::new();
    for (i, d) in depth.iter().enumerate() {
        let Some(d) = *d else { continue };
        while out.len() <= d {
            out.push(Level {
                depth: out.len(),
                stages: Vec::new(),
                jobs: Vec::new(),
            });
        }
        let level = &mut out[d];
        level.jobs.push(i);
        let stage = &graph.jobs[i].stage;
        if !level.stages.contains(stage) {
            level.stages.push(stage.clone());
        }
    }
    out
}

/// A word for a POSIX shell: unchanged when it is plain, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What every task runs: the binary, the pipeline file and its overrides, the shared cache.
#[derive(Debug, Clone)]
pub struct TaskCommand {
    pub binary: PathBuf,
    pub file: PathBuf,
    pub sets: Vec<String>,
    pub cache_dir: PathBuf,
    /// The directory the tasks run in (where relative paths of the pipeline resolve).
    pub workdir: PathBuf,
}

/// The sbatch script of one level; `index` lists the level's job keys, one per line.
pub fn script(
    pipeline: &str,
    level: &Level,
    index: &Path,
    log_dir: &Path,
    cmd: &TaskCommand,
    opts: &SlurmOptions,
) -> String {
    let n = level.jobs.len();
    let mut s = String::from("#!/bin/bash\n");
    let name = format!("lp-{pipeline}-{}-{}", level.depth, level.stages.join("+"));
    let _ = writeln!(s, "#SBATCH --job-name={}", shell_quote(&name));
    let array = match opts.array_parallelism {
        Some(k) => format!("0-{}%{k}", n - 1),
        None => format!("0-{}", n - 1),
    };
    let _ = writeln!(s, "#SBATCH --array={array}");
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    let _ = writeln!(
        s,
        "#SBATCH --chdir={}",
        shell_quote(&cmd.workdir.display().to_string())
    );
    let _ = writeln!(
        s,
        "#SBATCH --output={}",
        shell_quote(&log_dir.join("%x-%A_%a.out").display().to_string())
    );
    if let Some(p) = &opts.partition {
        let _ = writeln!(s, "#SBATCH --partition={}", shell_quote(p));
    }
    if let Some(a) = &opts.account {
        let _ = writeln!(s, "#SBATCH --account={}", shell_quote(a));
    }
    if let Some(g) = opts.gpus_per_task {
        let _ = writeln!(s, "#SBATCH --gpus-per-task={g}");
    }
    if let Some(c) = opts.cpus_per_task {
        let _ = writeln!(s, "#SBATCH --cpus-per-task={c}");
    }
    if let Some(t) = &opts.time {
        let _ = writeln!(s, "#SBATCH --time={}", shell_quote(t));
    }
    let _ = writeln!(
        s,
        "# level {} of pipeline {pipeline}: {n} job(s) of {}",
        level.depth,
        level.stages.join(", ")
    );
    s.push_str("set -euo pipefail\n");
    let _ = writeln!(
        s,
        "KEY=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {})",
        shell_quote(&index.display().to_string())
    );
    let mut line = format!(
        "exec {} run {} --job \"$KEY\" --cache-dir {}",
        shell_quote(&cmd.binary.display().to_string()),
        shell_quote(&cmd.file.display().to_string()),
        shell_quote(&cmd.cache_dir.display().to_string())
    );
    for set in &cmd.sets {
        let _ = write!(line, " --set {}", shell_quote(set));
    }
    s.push_str(&line);
    s.push('\n');
    s
}

/// The sbatch command line of level `k`, depending on the previous level's job id variable.
pub fn sbatch_line(k: usize, script: &Path) -> String {
    let dep = if k == 0 {
        String::new()
    } else {
        format!(" --dependency=afterok:$L{}", k - 1)
    };
    format!(
        "L{k}=$(sbatch --parsable{dep} {})",
        shell_quote(&script.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(
            shell_quote("stages.heal.lora_rank=8"),
            "stages.heal.lora_rank=8"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
