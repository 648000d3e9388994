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

use anyhow::{bail, Context, Result};

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

/// A value that reaches a generated script, checked: no control character anywhere (a newline
/// would end the `#SBATCH` line or the command and start another), and `what` names it in the
/// error. Every such value is also quoted (`shell_quote`) where the shell reads it.
fn check_no_control(what: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        bail!(
            "{what} {value:?} contains the control character {:?}; it cannot go into a \
             generated Slurm script",
            c
        );
    }
    Ok(())
}

/// A Slurm partition or account name: letters, digits and `_ . -` (a partition list is
/// comma-separated), as Slurm's own names are.
fn check_slurm_name(option: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.split(',').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        });
    if !ok {
        bail!(
            "{option} {value:?}: expected a Slurm name (letters, digits, '_', '.', '-'; a \
             comma-separated list for several)"
        );
    }
    Ok(())
}

/// Slurm's --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
/// "days-hours:minutes", "days-hours:minutes:seconds", or UNLIMITED / INFINITE.
fn check_slurm_time(value: &str) -> Result<()> {
    let digits = |p: &str| !p.is_empty() && p.len() <= 9 && p.chars().all(|c| c.is_ascii_digit());
    let clock = |p: &str, max_parts: usize| {
        let parts: Vec<&str> = p.split(':').collect();
        parts.len() <= max_parts && parts.iter().all(|x| digits(x))
    };
    let ok = matches!(value, "UNLIMITED" | "INFINITE" | "unlimited" | "infinite")
        || match value.split_once('-') {
            Some((days, rest)) => digits(days) && clock(rest, 3),
            None => clock(value, 3),
        };
    if !ok {
        bail!(
            "--time {value:?}: expected Slurm's time format (\"minutes\", \"HH:MM:SS\", \
             \"D-HH:MM:SS\", ... or UNLIMITED)"
        );
    }
    Ok(())
}

impl SlurmOptions {
    /// Every option checked against Slurm's syntax (exit 2 for the user before anything is
    /// written).
    pub fn check(&self) -> Result<()> {
        if let Some(p) = &self.partition {
            check_slurm_name("--partition", p)?;
        }
        if let Some(a) = &self.account {
            check_slurm_name("--account", a)?;
        }
        if let Some(t) = &self.time {
            check_slurm_time(t)?;
        }
        Ok(())
    }
}

impl TaskCommand {
    /// Every path and override the tasks run with, checked to be free of control characters.
    pub fn check(&self) -> Result<()> {
        for (what, p) in [
            ("the working directory", &self.workdir),
            ("the layerprune binary's path", &self.binary),
            ("the pipeline file's path", &self.file),
            ("the cache directory", &self.cache_dir),
        ] {
            let text = p
                .to_str()
                .with_context(|| format!("{what} {} is not valid UTF-8", p.display()))?;
            check_no_control(what, text)?;
        }
        for set in &self.sets {
            check_no_control("--set", set)?;
        }
        Ok(())
    }
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

/// The sbatch script of one level; `index` lists the level's job keys, one per line. Every
/// value that goes into it is checked first (an error names the bad one): the options against
/// Slurm's syntax, paths and overrides free of control characters, the pipeline and stage
/// names against their character sets (checked when the pipeline is loaded, and again here);
/// and quoted where the shell reads it.
pub fn script(
    pipeline: &str,
    level: &Level,
    index: &Path,
    log_dir: &Path,
    cmd: &TaskCommand,
    opts: &SlurmOptions,
) -> Result<String> {
    opts.check()?;
    cmd.check()?;
    check_no_control("the pipeline name", pipeline)?;
    for stage in &level.stages {
        check_no_control("the stage name", stage)?;
    }
    for (what, p) in [("the index file", index), ("the log directory", log_dir)] {
        check_no_control(what, &p.display().to_string())?;
    }
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
    Ok(s)
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
        // a newline stays inside the quotes (and is refused before it gets here)
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn slurm_options_follow_slurms_syntax() {
        let opts = |partition: &str, time: &str| SlurmOptions {
            partition: Some(partition.into()),
            time: Some(time.into()),
            ..Default::default()
        };
        for (p, t) in [
            ("gpu", "04:00:00"),
            ("gpu,a100_x", "2-00:00:00"),
            ("p.1-x", "90"),
            ("gpu", "1-12"),
            ("gpu", "30:00"),
            ("gpu", "UNLIMITED"),
        ] {
            assert!(opts(p, t).check().is_ok(), "{p} {t}");
        }
        for (p, t) in [
            ("gpu\n#SBATCH --uid=0", "1"),
            ("gpu;touch x", "1"),
            ("", "1"),
            ("a,,b", "1"),
            ("gpu", "1:00\ntouch x"),
            ("gpu", "$(touch x)"),
            ("gpu", "1-2-3"),
            ("gpu", ""),
        ] {
            assert!(opts(p, t).check().is_err(), "{p:?} {t:?}");
        }
    }
}
