//! Defects found by trying layerprune as a new user would, one test each (issue "Reliability"),
//! through the binary on the tiny fixture model and the cheap test stage kinds.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::cli::{stderr, stdout, Env};
use common::fixtures;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn tiny_llama() -> std::path::PathBuf {
    fixtures().join("models").join("tiny-llama")
}

/// 1. A pipeline named ".." (or ".") must not write outside results/<name>/.
#[test]
fn a_pipeline_name_cannot_escape_the_results_directory() {
    for name in ["..", "."] {
        let env = Env::new();
        std::fs::create_dir_all(env.path("work/results")).unwrap();
        env.write(
            "work/p.toml",
            &format!(
                "name = \"{name}\"\nresults_dir = \"results\"\n[stages.a]\nkind = \"test-value\"\nvalue = 1\n"
            ),
        );
        let o = env
            .cmd(&["run", "p.toml"])
            .current_dir(env.path("work"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("\"{name}\" is not a valid pipeline name")),
            "{}",
            stderr(&o)
        );
        for outside in [
            "work/jobs.csv",
            "work/resolved.toml",
            "work/runs.csv",
            "jobs.csv",
        ] {
            assert!(!env.path(outside).exists(), "{outside} was written");
        }
    }
}

/// A copy of the tiny fixture model with one weight set to `value`.
fn tiny_with_weight(env: &Env, tensor: &str, value: f32) -> std::path::PathBuf {
    use safetensors::tensor::TensorView;
    let dir = env.path("poisoned");
    copy_dir(&tiny_llama(), &dir);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    let target = owned.iter_mut().find(|t| t.0 == tensor).unwrap();
    assert_eq!(target.1, safetensors::Dtype::F32);
    target.3[4..8].copy_from_slice(&value.to_le_bytes());
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    dir
}

/// 2. NaN or infinite weights are an error naming the tensor and the file, not `null` logits.
#[test]
fn non_finite_weights_are_an_error_naming_the_tensor() {
    let env = Env::new();
    for (value, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let model = tiny_with_weight(&env, "model.layers.1.mlp.down_proj.weight", value);
        let o = env.run(&[
            "forward",
            model.to_str().unwrap(),
            "--prompt",
            "hello there",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
        let e = stderr(&o);
        assert!(
            e.contains("tensor model.layers.1.mlp.down_proj.weight holds a non-finite value"),
            "{e}"
        );
        assert!(e.contains(&format!("({shown} at flat index 1")), "{e}");
        assert!(e.contains("model.safetensors"), "{e}");
        assert!(!stdout(&o).contains("null"), "{}", stdout(&o));
    }
}

/// 3. `inspect` on a directory that is not a model answers at once, hashing nothing; on a model
/// directory it hashes only the files the model uses.
#[test]
fn inspect_checks_the_layout_before_hashing_and_hashes_only_model_files() {
    let env = Env::new();
    let junk = env.path("not-a-model");
    std::fs::create_dir_all(junk.join("sub")).unwrap();
    for i in 0..300 {
        std::fs::write(junk.join("sub").join(format!("{i}.bin")), vec![7u8; 4096]).unwrap();
    }
    let o = env.run(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing config.json"), "{}", stderr(&o));
    assert!(
        !env.path("cache/digests.json").exists(),
        "files were hashed before the layout was checked"
    );
    // a model directory with unrelated files beside it
    let model = env.path("model");
    copy_dir(&tiny_llama(), &model);
    std::fs::create_dir_all(model.join("checkpoints")).unwrap();
    std::fs::write(
        model.join("checkpoints").join("big.bin"),
        vec![1u8; 1 << 16],
    )
    .unwrap();
    std::fs::write(model.join("notes.md"), "unrelated").unwrap();
    let o = env.run(&["inspect", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let digests = std::fs::read_to_string(env.path("cache/digests.json")).unwrap();
    assert!(digests.contains("model.safetensors"), "{digests}");
    assert!(!digests.contains("big.bin"), "{digests}");
    assert!(!digests.contains("notes.md"), "{digests}");
}

/// 4. The digest table is read once and written once per folder, and forgets files that are gone
/// (unit tests in src/digest.rs count the reads); through the binary: planning an unchanged
/// 2,000-file folder does not rewrite the table, and a removed file's entry is dropped.
#[test]
fn planning_an_unchanged_folder_does_not_rewrite_the_digest_table() {
    let env = Env::new();
    let data = env.path("texts");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..2000 {
        std::fs::write(data.join(format!("{i:05}.txt")), format!("document {i}")).unwrap();
    }
    env.write(
        "p.toml",
        "name = \"p\"\n[stages.a]\nkind = \"test-value\"\ndata = \"./texts\"\n",
    );
    assert!(env.run(&["plan", "p.toml"]).status.success());
    let table = env.path("cache/digests.json");
    let written = std::fs::metadata(&table).unwrap().modified().unwrap();
    let entries: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&table).unwrap()).unwrap();
    assert_eq!(entries.as_object().unwrap().len(), 2000);
    std::thread::sleep(Duration::from_millis(20));
    assert!(env.run(&["plan", "p.toml"]).status.success());
    assert_eq!(
        std::fs::metadata(&table).unwrap().modified().unwrap(),
        written
    );
    // a removed file's entry goes when the table is next written
    std::fs::remove_file(data.join("00000.txt")).unwrap();
    std::fs::write(data.join("new.txt"), "new").unwrap();
    assert!(env.run(&["plan", "p.toml"]).status.success());
    let entries: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&table).unwrap()).unwrap();
    let entries = entries.as_object().unwrap();
    assert_eq!(entries.len(), 2000);
    assert!(!entries.keys().any(|k| k.ends_with("00000.txt")));
}

const ONE: &str = "name = \"p\"\n[stages.a]\nkind = \"test-value\"\nvalue = 1\n";

fn artifacts(env: &Env) -> usize {
    std::fs::read_dir(env.path("cache/test-value"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// 5. `cache gc` without pipeline files removes nothing and says what to give; `--all` removes
/// everything and says what.
#[test]
fn gc_needs_pipeline_files_or_all() {
    let env = Env::new();
    env.write("p.toml", ONE);
    assert!(env.run(&["run", "p.toml"]).status.success());
    assert_eq!(artifacts(&env), 1);
    let o = env.run(&["cache", "gc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("name the pipeline files"),
        "{}",
        stderr(&o)
    );
    assert_eq!(artifacts(&env), 1);
    let o = env.run(&["cache", "gc", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("removing test-value/"),
        "{}",
        stdout(&o)
    );
    assert_eq!(artifacts(&env), 0);
}

/// 6. `cache gc` never deletes what a running job is writing.
#[test]
fn gc_skips_the_directory_of_a_running_job() {
    let env = Env::new();
    env.write(
        "p.toml",
        "name = \"p\"\n[stages.a]\nkind = \"test-value\"\nvalue = 1\nsleep_ms = 3000\n",
    );
    let child = env.spawn(&["run", "p.toml"]);
    env.wait_for_start();
    let o = env.run(&["cache", "gc", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("skipping"), "{}", stdout(&o));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(artifacts(&env), 1);
}

/// 7. `--verify` on an artifact whose content changed but whose size and mtime did not: the
/// reason is "corrupt", in the log and in jobs.csv, and `plan --verify` says so too.
#[test]
fn verify_reports_the_true_reason_for_a_silently_changed_artifact() {
    let env = Env::new();
    env.write("p.toml", ONE);
    assert!(env.run(&["run", "p.toml"]).status.success());
    let dir = std::fs::read_dir(env.path("cache/test-value"))
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path();
    let file = dir.join("value.json");
    let meta = std::fs::metadata(&file).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let i = bytes.iter().position(|&b| b == b'1').unwrap();
    bytes[i] = b'7'; // same length
    std::fs::write(&file, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    let o = env.run(&["plan", "p.toml"]);
    assert!(stdout(&o).contains("cached"), "{}", stdout(&o));
    let o = env.run(&["plan", "p.toml", "--verify"]);
    assert!(
        stdout(&o).contains("corrupt: value.json: sha256 differs"),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["run", "p.toml", "--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("corrupt: value.json"), "{}", stderr(&o));
    let jobs = env.jobs("p");
    assert_eq!(jobs[0].1, "ran");
    assert!(jobs[0].2.starts_with("corrupt: value.json"), "{jobs:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("value.json")).unwrap()).unwrap();
    assert_eq!(v["value"], 1.0);
}

/// A pipeline on the tiny fixture model whose report publishes similarity tables and figures;
/// `model` names the source the load stage reads.
fn reported(env: &Env, model: &str) -> std::path::PathBuf {
    env.write(
        "p.toml",
        &format!(
            r#"name = "p"
[sources]
model = "{model}"
text = "{text}"
[stages.load]
[stages.similarity]
samples = 4
seq_len = 16
batch_size = 4
text = {{ source = "text", part = "all" }}
[stages.report]
inputs = {{ similarity = "similarity" }}
"#,
            text = fixtures().join("text").display(),
        ),
    )
}

/// 8. A failed run does not leave results/ silently mixing two runs: it is marked stale until a
/// run publishes again.
#[test]
fn results_of_a_failed_run_are_marked_stale() {
    let env = Env::new();
    reported(&env, tiny_llama().to_str().unwrap());
    let o = env.run(&["run", "p.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = env.path("results/p/summary.md");
    assert!(std::fs::read_to_string(&summary)
        .unwrap()
        .starts_with("# Results"));
    assert!(!env.path("results/p/STALE.md").exists());
    // the model source now names a file that is not a model: load fails, the report is skipped
    env.write("not-a-model.txt", "hello");
    reported(&env, "./not-a-model.txt");
    let o = env.run(&["run", "p.toml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(text.starts_with("> **Stale results.**"), "{text}");
    assert!(text.contains("(report failed or was skipped)"), "{text}");
    assert!(text.contains("# Results"), "{text}");
    assert!(env.path("results/p/STALE.md").exists());
    assert!(env.path("results/p/similarity.csv").exists());
    // a good run publishes again and the mark is gone
    reported(&env, tiny_llama().to_str().unwrap());
    assert!(env.run(&["run", "p.toml"]).status.success());
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(text.starts_with("# Results"), "{text}");
    assert!(!env.path("results/p/STALE.md").exists());
}

/// 9. An I/O failure in the middle of a run is exit 1 (not 2, the code of bad input) and the run
/// still records itself in jobs.csv and runs.csv.
#[test]
fn an_io_failure_during_a_run_is_exit_1_and_the_run_is_recorded() {
    let env = Env::new();
    reported(&env, tiny_llama().to_str().unwrap());
    // summary.md cannot be published: a directory stands where the file goes
    std::fs::create_dir_all(env.path("results/p/summary.md")).unwrap();
    let o = env.run(&["run", "p.toml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 failed"), "{}", stdout(&o));
    assert!(stdout(&o).contains("publishing results"), "{}", stdout(&o));
    let jobs = env.jobs("p");
    let report = jobs.iter().find(|j| j.0 == "report").unwrap();
    assert_eq!(report.1, "failed");
    let runs = std::fs::read_to_string(env.path("results/p/runs.csv")).unwrap();
    let mut lines = runs.lines();
    assert!(lines
        .next()
        .unwrap()
        .contains("jobs_failed,jobs_skipped,exit_code"));
    // 2 ran (load, similarity), 0 cached, 1 failed (report: publishing), 0 skipped, exit 1
    assert!(lines.next().unwrap().ends_with(",2,0,1,0,1"), "{runs}");
}

const CHAIN: &str = "name = \"p\"\n[stages.base]\nkind = \"test-value\"\nvalue = 2\n[stages.next]\nkind = \"test-value\"\ninputs = { parent = \"base\" }\n";

/// Minor: a failed job's dependants count as skipped, not failed, in runs.csv.
#[test]
fn runs_csv_counts_skipped_jobs_apart() {
    let env = Env::new();
    env.write("p.toml", CHAIN);
    let o = env.run(&["run", "p.toml", "--set", "stages.base.fail=true"]);
    assert_eq!(o.status.code(), Some(1));
    let runs = std::fs::read_to_string(env.path("results/p/runs.csv")).unwrap();
    // 0 run, 0 cached, 1 failed (base), 1 skipped (next), exit 1
    assert!(
        runs.lines().nth(1).unwrap().ends_with(",0,0,1,1,1"),
        "{runs}"
    );
}

/// 10. Writing to a closed stdout ends quietly (SIGPIPE), never with a panic.
#[test]
fn a_closed_stdout_ends_the_process_quietly() {
    let env = Env::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = env
        .cmd(&["inspect", tiny_llama().to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    assert_ne!(o.status.code(), Some(101), "{e}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{:?}", o.status);
    }
}

/// Minor: with `--log-format json`, a configuration error is a JSON log line too.
#[test]
fn configuration_errors_follow_the_log_format() {
    let env = Env::new();
    env.write("p.toml", "name = \"p\"\n[stages.a]\nkind = \"test-valu\"\n");
    let o = env.run(&["--log-format", "json", "run", "p.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let line = stderr(&o)
        .lines()
        .find(|l| l.contains("test-valu"))
        .map(String::from)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {}", stderr(&o)));
    assert_eq!(v["level"], "ERROR");
}

/// Minor: a sweep axis that no stage uses is warned about.
#[test]
fn an_unused_sweep_axis_is_warned_about() {
    let env = Env::new();
    env.write(
        "p.toml",
        "name = \"p\"\n[sweep]\nfraction = [0.1, 0.2]\n[stages.a]\nkind = \"test-value\"\nvalue = 1\n",
    );
    let o = env.run(&["plan", "p.toml"]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("the sweep axis \"fraction\" is used by no stage"),
        "{}",
        stderr(&o)
    );
}

/// Minor: `--no-wait` answers "locked" (exit 3) before hashing any source.
#[test]
fn no_wait_answers_before_hashing_sources() {
    let env = Env::new();
    env.write(
        "p.toml",
        "name = \"p\"\n[stages.a]\nkind = \"test-value\"\nvalue = 1\nsleep_ms = 3000\n",
    );
    let mut child = env.spawn(&["run", "p.toml"]);
    env.wait_for_start();
    // the same pipeline, now naming a folder nobody has hashed yet
    let data = env.path("texts");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..50 {
        std::fs::write(data.join(format!("{i}.txt")), format!("{i}")).unwrap();
    }
    env.write(
        "q.toml",
        "name = \"p\"\n[stages.a]\nkind = \"test-value\"\nvalue = 1\ndata = \"./texts\"\n",
    );
    let o = env.run(&["run", "q.toml", "--no-wait"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let digests = std::fs::read_to_string(env.path("cache/digests.json")).unwrap_or_default();
    assert!(!digests.contains("texts"), "{digests}");
    assert!(child.wait().unwrap().success());
}

/// Every `.tmp-` directory under `dir`, at any depth.
fn tmp_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p.clone());
            }
            out.extend(tmp_dirs(&p));
        }
    }
    out
}

/// The exit_code column of results/<name>/runs.csv, one entry per run.
fn run_exit_codes(env: &Env, name: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(env.path(&format!("results/{name}/runs.csv"))).unwrap();
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "exit_code")
        .unwrap();
    r.records().map(|x| x.unwrap()[col].to_string()).collect()
}

/// 11. SIGTERM (Slurm and cron at a time limit) and SIGINT (Ctrl-C) stop a run cleanly: exit
/// 143 / 130, no temporary directory left, jobs.csv with the running job "interrupted" and the
/// rest skipped, one runs.csv line with the exit code, the pipeline lock released; the next run
/// resumes and completes.
#[cfg(unix)]
#[test]
fn a_signal_stops_the_run_cleans_up_records_it_and_the_rerun_resumes() {
    use std::io::Read;
    for (signal, name, code) in [
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGINT, "SIGINT", 130),
    ] {
        let env = Env::new();
        env.write(
            "p.toml",
            "name = \"p\"\n[stages.a]\nkind = \"test-value\"\nvalue = 1\nsleep_ms = 20000\n[stages.b]\nkind = \"test-value\"\nvalue = 2\ninputs = { parent = \"a\" }\n",
        );
        let mut child = env.spawn(&["run", "p.toml"]);
        env.wait_for_start();
        // SAFETY: kill(2) on our own child, not yet waited for (its pid cannot have been reused)
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, signal) },
            0,
            "{name}"
        );
        let sent = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: the run did not stop within 30 s of the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(code), "{name}: {status:?}\n{err}");
        assert!(
            err.contains(&format!(
                "interrupted by {name}: 0 jobs done, job a stopped; rerun to resume"
            )),
            "{name}: {err}"
        );
        // nothing half written is left, and nothing looks complete
        let leftovers = tmp_dirs(&env.path("cache"));
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}\n{err}");
        assert_eq!(artifacts(&env), 0, "{name}");
        // the run is recorded: the running job interrupted, the one after it skipped
        let jobs = env.jobs("p");
        let status_of = |job: &str| {
            jobs.iter()
                .find(|j| j.0 == job)
                .map(|j| j.1.clone())
                .unwrap_or_default()
        };
        assert_eq!(status_of("a"), "interrupted", "{name}: {jobs:?}");
        assert_eq!(status_of("b"), "skipped", "{name}: {jobs:?}");
        assert_eq!(run_exit_codes(&env, "p"), vec![code.to_string()], "{name}");
        let runs = std::fs::read_to_string(env.path("results/p/runs.csv")).unwrap();
        // 0 run, 0 cached, 1 failed (a, interrupted), 1 skipped (b)
        assert!(
            runs.lines()
                .nth(1)
                .unwrap()
                .ends_with(&format!(",0,0,1,1,{code}")),
            "{name}: {runs}"
        );
        // the lock is free (--no-wait is not refused with exit 3) and the rerun resumes
        let o = env
            .cmd(&["run", "p.toml", "--no-wait"])
            .env("LAYERPRUNE_TEST_NO_SLEEP", "1")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let jobs = env.jobs("p");
        assert_eq!(jobs.len(), 2, "{name}: {jobs:?}");
        assert!(jobs.iter().all(|j| j.1 == "ran"), "{name}: {jobs:?}");
        assert_eq!(
            run_exit_codes(&env, "p"),
            vec![code.to_string(), "0".to_string()],
            "{name}"
        );
        assert!(tmp_dirs(&env.path("cache")).is_empty(), "{name}");
    }
}

/// A build with the cuda backend on a machine without the NVIDIA driver (CI runs this binary
/// built with `--features cuda`): exit 2 before any job, with what the CUDA runtime reported
/// (the driver library it could not load) instead of a panic.
#[cfg(feature = "cuda")]
#[test]
fn a_cuda_build_without_the_driver_is_refused_naming_what_is_missing() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("skipped: this machine has an NVIDIA device");
        return;
    }
    let env = Env::new();
    let text = std::fs::read_to_string(fixtures().join("pipelines/sweep.toml")).unwrap();
    env.write("sweep.toml", &text);
    let out = env.run(&["run", "sweep.toml", "--backend", "cuda"]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("the cuda backend is compiled in but no usable CUDA device was found ("),
        "{e}"
    );
    assert!(
        e.contains("the CUDA driver library libcuda.so could not be loaded"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    assert!(env.exec_log().is_empty(), "{:?}", env.exec_log());
}

/// A pipeline for a GPU backend on a build (or machine) without it fails before any job starts
/// (exit 2), naming what is missing, instead of failing job after job.
#[cfg(not(feature = "cuda"))]
#[test]
fn an_unavailable_backend_is_refused_before_any_job() {
    let env = Env::new();
    let text = std::fs::read_to_string(fixtures().join("pipelines/sweep.toml")).unwrap();
    env.write("sweep.toml", &text);
    for args in [
        vec!["run", "sweep.toml", "--set", "backend=cuda"],
        vec!["run", "sweep.toml", "--backend", "cuda"],
        vec![
            "run",
            "sweep.toml",
            "--set",
            "backend=cuda",
            "--job",
            "base",
        ],
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains(
                "backend = \"cuda\": this build has no cuda backend (rebuild with --features cuda"
            ),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
        assert!(env.exec_log().is_empty(), "{:?}", env.exec_log());
    }
}
