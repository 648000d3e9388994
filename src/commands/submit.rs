//! `layerprune submit FILE --slurm [...] [--dry-run]`: write one sbatch array script per level
//! of the pending jobs (runner/slurm.rs) under `<cache>/slurm/<pipeline>/<UTC time>/`, with an
//! index file of job keys per level and submit.sh chaining them, then submit them with sbatch
//! (`LAYERPRUNE_SBATCH` overrides the command), each level `--dependency=afterok` on the one
//! before. Jobs already cached are not submitted. `--dry-run` prints the scripts and the sbatch
//! commands and submits nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::pipeline_cmds::{load_graph, report_error};
use crate::runner::slurm::{self, SlurmOptions, TaskCommand};
use crate::runner::store::{Status, Store};
use crate::runner::{exit, utc_stamp};

pub struct SubmitArgs<'a> {
    pub file: &'a Path,
    pub sets: &'a [String],
    pub cache_cli: Option<&'a Path>,
    pub options: SlurmOptions,
    pub dry_run: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

pub fn submit(args: SubmitArgs) -> Result<u8> {
    let (cfg, graph, cache_root) = match load_graph(args.file, args.sets, args.cache_cli) {
        Ok(x) => x,
        Err(e) => {
            report_error(&e.to_string());
            return Ok(exit::CONFIG);
        }
    };
    let store = Store::new(&cache_root);
    let pending: Vec<bool> = graph
        .jobs
        .iter()
        .map(|j| !matches!(store.status(j.kind.kind(), &j.key, false), Status::Valid(_)))
        .collect();
    let levels = slurm::levels(&graph, &pending);
    let n_pending = pending.iter().filter(|&&p| p).count();
    if levels.is_empty() {
        println!(
            "pipeline {}: all {} jobs are cached; nothing to submit",
            cfg.name,
            graph.jobs.len()
        );
        return Ok(exit::SUCCESS);
    }
    let stamp = utc_stamp();
    let cache_abs = absolute(&cache_root)?;
    let dir = cache_abs.join("slurm").join(&cfg.name).join(&stamp);
    let cmd = TaskCommand {
        binary: std::env::current_exe().context("cannot find the layerprune binary")?,
        file: absolute(args.file)?,
        sets: args.sets.to_vec(),
        cache_dir: cache_abs.clone(),
        workdir: std::env::current_dir().context("cannot read the working directory")?,
    };
    // every value a script will hold, checked before anything is written (exit 2)
    if let Err(e) = args.options.check().and_then(|()| cmd.check()) {
        report_error(&format!("submit: {e:#}"));
        return Ok(exit::CONFIG);
    }
    let mut scripts = Vec::new();
    let mut submit_sh = String::from("#!/bin/bash\n# written by layerprune submit; rerun to resubmit these levels\nset -euo pipefail\n");
    for (k, level) in levels.iter().enumerate() {
        let base = format!("level-{k}-{}", level.stages.join("+"));
        let index = dir.join(format!("{base}.keys"));
        let script = dir.join(format!("{base}.sbatch"));
        let text = match slurm::script(&cfg.name, level, &index, &dir, &cmd, &args.options) {
            Ok(t) => t,
            Err(e) => {
                report_error(&format!("submit: {e:#}"));
                return Ok(exit::CONFIG);
            }
        };
        let keys: String = level
            .jobs
            .iter()
            .map(|&i| format!("{}\n", graph.jobs[i].key))
            .collect();
        submit_sh.push_str(&slurm::sbatch_line(k, &script));
        submit_sh.push('\n');
        scripts.push((script, text, index, keys, level.jobs.len()));
    }
    submit_sh.push_str(&format!(
        "echo \"submitted {} level(s); last job id $L{}\"\n",
        levels.len(),
        levels.len() - 1
    ));
    if args.dry_run {
        println!(
            "pipeline {}: {n_pending} of {} jobs pending, {} level(s) (dry run: nothing written or submitted)",
            cfg.name,
            graph.jobs.len(),
            levels.len()
        );
        for (script, text, index, keys, _) in &scripts {
            println!("\n# {}\n{text}", script.display());
            println!(
                "# {} ({} keys)\n{keys}",
                index.display(),
                keys.lines().count()
            );
        }
        println!("# {}\n{submit_sh}", dir.join("submit.sh").display());
        return Ok(exit::SUCCESS);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (script, text, index, keys, _) in &scripts {
        crate::fsutil::atomic_write(index, keys.as_bytes())?;
        crate::fsutil::atomic_write(script, text.as_bytes())?;
    }
    crate::fsutil::atomic_write(&dir.join("submit.sh"), submit_sh.as_bytes())?;
    let sbatch = std::env::var("LAYERPRUNE_SBATCH").unwrap_or_else(|_| "sbatch".into());
    let mut previous: Option<String> = None;
    for (k, (script, _, _, _, n)) in scripts.iter().enumerate() {
        let mut c = Command::new(&sbatch);
        c.arg("--parsable");
        if let Some(id) = &previous {
            c.arg(format!("--dependency=afterok:{id}"));
        }
        c.arg(script);
        let out = c.output().with_context(|| {
            format!(
                "cannot run {sbatch} (is Slurm installed? LAYERPRUNE_SBATCH overrides the command)"
            )
        })?;
        if !out.status.success() {
            bail!(
                "{sbatch} {} failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // --parsable prints "jobid" or "jobid;cluster"
        let id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        if id.is_empty() {
            bail!("{sbatch} {} printed no job id", script.display());
        }
        println!(
            "level {k}: {n} task(s), Slurm job {id} ({})",
            script.display()
        );
        previous = Some(id);
    }
    println!(
        "pipeline {}: {n_pending} jobs in {} array job(s); scripts and logs in {}; `layerprune status {}` follows them",
        cfg.name,
        scripts.len(),
        dir.display(),
        args.file.display()
    );
    Ok(exit::SUCCESS)
}
