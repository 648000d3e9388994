//! Cluster runs: `run --job` (one job, inputs required), `status` (counts per stage), and
//! `submit --slurm`: the generated array scripts (always), and an end-to-end submission to a
//! real single-node Slurm (scripts/slurm_single_node.sh; .ci/run starts it and sets
//! LAYERPRUNE_TEST_SLURM=1, which makes that test required) whose artifacts must equal a local
//! `layerprune run` of the same file.

mod common;

use std::time::{Duration, Instant};

use common::cli::{stderr, stdout, Env};
use common::fixtures;

fn sweep(env: &Env) -> String {
    let text = std::fs::read_to_string(fixtures().join("pipelines/sweep.toml")).unwrap();
    env.write("sweep.toml", &text);
    "sweep.toml".into()
}

/// (stage, jobs, done, running, failed, pending) rows of `status`.
fn status_rows(out: &str) -> Vec<(String, [usize; 5])> {
    out.lines()
        .skip(2)
        .filter(|l| !l.trim_start().starts_with("failed:"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let n: Vec<usize> = w[1..].iter().map(|x| x.parse().unwrap()).collect();
            (w[0].to_string(), [n[0], n[1], n[2], n[3], n[4]])
        })
        .collect()
}

#[test]
fn run_job_needs_cached_inputs_and_status_counts_match() {
    let env = Env::new();
    let f = sweep(&env);
    let out = env.run(&["status", &f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = status_rows(&stdout(&out));
    assert_eq!(
        rows,
        [
            ("base".to_string(), [1, 0, 0, 0, 1]),
            ("per_x".to_string(), [3, 0, 0, 0, 3]),
            ("side".to_string(), [1, 0, 0, 0, 1]),
            ("total".to_string(), [1, 0, 0, 0, 1]),
        ]
    );
    // a job whose input is not cached is refused, naming the input
    let out = env.run(&["run", &f, "--job", "per_x[x=2]"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("per_x[x=2]: its inputs are not in the cache: base ("),
        "{e}"
    );
    let started = |env: &Env| {
        env.exec_log()
            .iter()
            .filter(|l| l.ends_with(" start"))
            .count()
    };
    assert_eq!(started(&env), 0, "nothing may run: {:?}", env.exec_log());
    // an unknown job: the stage's jobs are listed
    let out = env.run(&["run", &f, "--job", "per_x[x=9]"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("jobs of that stage: per_x[x=1], per_x[x=2], per_x[x=3]"),
        "{}",
        stderr(&out)
    );
    // exactly the named job runs, by label and by key prefix
    let out = env.run(&["run", &f, "--job", "base"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(started(&env), 1);
    let plan = stdout(&env.run(&["plan", &f]));
    let key_of = |label: &str| {
        plan.lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .to_string()
    };
    let out = env.run(&["run", &f, "--job", &key_of("per_x[x=2]")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("per_x[x=2] ("), "{}", stdout(&out));
    assert_eq!(started(&env), 2);
    // again: cached, nothing runs
    let out = env.run(&["run", &f, "--job", "per_x[x=2]"]);
    assert!(stdout(&out).contains(": cached in"), "{}", stdout(&out));
    assert_eq!(started(&env), 2);
    let rows = status_rows(&stdout(&env.run(&["status", &f])));
    assert_eq!(rows[0].1, [1, 1, 0, 0, 0]);
    assert_eq!(rows[1].1, [3, 1, 0, 0, 2]);
    // a failing job is counted as failed (exit 1) until it succeeds
    let out = env.run(&["run", &f, "--job", "side", "--set", "stages.side.fail=true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = env.run(&["status", &f, "--set", "stages.side.fail=true"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(status_rows(&text)[2].1, [1, 0, 0, 1, 0], "{text}");
    assert!(text.contains("failed: side:"), "{text}");
}

#[test]
fn submit_dry_run_describes_the_pending_levels() {
    let env = Env::new();
    let f = sweep(&env);
    // base cached first: it is not submitted, and per_x becomes level 0
    assert!(env.run(&["run", &f, "--job", "base"]).status.success());
    let out = env.run(&[
        "submit",
        &f,
        "--slurm",
        "--dry-run",
        "--partition",
        "gpu",
        "--gpus-per-task",
        "1",
        "--time",
        "02:00:00",
        "--array-parallelism",
        "2",
        "--account",
        "lab",
        "--set",
        "stages.side.value=7",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("5 of 6 jobs pending, 2 level(s)"), "{text}");
    for line in [
        "#SBATCH --job-name=lp-sweep-0-per_x+side",
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --time=02:00:00",
        "#SBATCH --job-name=lp-sweep-1-total",
        "#SBATCH --array=0-0%2",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    assert!(
        text.contains(" run ")
            && text.contains("--job \"$KEY\" --cache-dir ")
            && text.contains(" --set stages.side.value=7"),
        "{text}"
    );
    // submit.sh chains the levels
    assert!(text.contains("L0=$(sbatch --parsable "), "{text}");
    assert!(
        text.contains("L1=$(sbatch --parsable --dependency=afterok:$L0 "),
        "{text}"
    );
    // the index files hold the pending jobs' keys, as plan computes them
    let plan = stdout(&env.run(&["plan", &f, "--set", "stages.side.value=7"]));
    for label in ["per_x[x=1]", "per_x[x=2]", "per_x[x=3]", "side", "total"] {
        let short = plan
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap();
        assert!(
            text.lines().any(|l| l.len() == 64 && l.starts_with(short)),
            "{label} {short}\n{text}"
        );
    }
    let base_short = plan
        .lines()
        .find(|l| l.trim_start().starts_with("base "))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        !text
            .lines()
            .any(|l| l.len() == 64 && l.starts_with(&base_short)),
        "cached base was submitted"
    );
    // a dry run writes nothing
    assert!(!env.path("cache/slurm").exists());
    // without --slurm: a clear error
    let out = env.run(&["submit", &f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--slurm"), "{}", stderr(&out));
}

/// The artifacts of a pipeline's jobs: (kind/key, file, bytes) of every artifact file.
fn artifacts(cache: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for kind in std::fs::read_dir(cache).unwrap().flatten() {
        let name = kind.file_name().to_string_lossy().to_string();
        if ["locks", "pipelines", "slurm", "digests", "tmp"].contains(&name.as_str())
            || !kind.path().is_dir()
        {
            continue;
        }
        for key in std::fs::read_dir(kind.path()).unwrap().flatten() {
            if !key.path().is_dir() || key.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            for f in std::fs::read_dir(key.path()).unwrap().flatten() {
                let fname = f.file_name().to_string_lossy().to_string();
                if fname == "manifest.json" {
                    continue;
                }
                v.push((
                    format!("{name}/{}/{fname}", key.file_name().to_string_lossy()),
                    std::fs::read(f.path()).unwrap(),
                ));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn slurm_submission_equals_a_local_run() {
    if std::env::var("LAYERPRUNE_TEST_SLURM").ok().as_deref() != Some("1") {
        eprintln!("skipped: LAYERPRUNE_TEST_SLURM=1 is not set (.ci/run sets it after scripts/slurm_single_node.sh)");
        return;
    }
    let env = Env::new();
    let f = sweep(&env);
    let out = env.run(&["submit", &f, "--slurm", "--time", "00:05:00"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("6 jobs in 3 array job(s)"), "{text}");
    // wait (bounded) until status shows every job done
    let start = Instant::now();
    loop {
        let s = stdout(&env.run(&["status", &f]));
        let rows = status_rows(&s);
        if rows.iter().all(|(_, c)| c[1] == c[0]) {
            break;
        }
        assert!(
            rows.iter().all(|(_, c)| c[3] == 0),
            "a Slurm task failed:\n{s}\nlogs: {:?}",
            std::fs::read_dir(env.path("cache/slurm/sweep")).map(|d| d.count())
        );
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "Slurm did not finish in 4 minutes:\n{s}\n{}",
            stdout(&std::process::Command::new("squeue").output().unwrap())
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    // the same artifacts as a local run in a fresh cache
    let local = Env::new();
    let lf = sweep(&local);
    let out = local.run(&["run", &lf]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = (
        artifacts(&env.path("cache")),
        artifacts(&local.path("cache")),
    );
    assert_eq!(
        a.len(),
        6,
        "{:?}",
        a.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(a, b);
    // and the Slurm tasks' logs are where submit said
    let logs = std::fs::read_dir(env.path("cache/slurm/sweep"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let outs = std::fs::read_dir(&logs)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "out")
        })
        .count();
    assert_eq!(outs, 6);
}

/// Every value that reaches a generated sbatch script (stage names, --partition, --account,
/// --time, --set, the working directory, the pipeline and cache paths) is either refused with
/// exit 2 (a control character, a value outside Slurm's syntax, a stage name outside its
/// character set) or quoted: the scripts pass `bash -n`, and running them through a stub sbatch
/// that executes them never creates the sentinel file any hostile value tries to create.
#[test]
fn hostile_values_never_become_shell_code() {
    let env = Env::new();
    let sentinel = env.path("SENTINEL");
    let touch = format!("touch {}", sentinel.display());
    let assert_clean = |what: &str| {
        assert!(
            !sentinel.exists(),
            "{what}: a hostile value ran a shell command"
        );
    };
    // 1. stage names outside the character set: exit 2 at the line, for every command
    let pipelines = [
        format!("name = \"h\"\n[stages.\"ld\\n{touch} #\"]\nkind = \"test-value\"\n"),
        "name = \"h\"\n[stages.\"my.load\"]\nkind = \"load\"\n".to_string(),
        "name = \"h\"\n\n[stages.\"\"]\nkind = \"test-value\"\n".to_string(),
        format!("name = \"h\"\n[stages.\"a $({touch})\"]\nkind = \"test-value\"\n"),
    ];
    for (i, text) in pipelines.iter().enumerate() {
        let f = format!("bad{i}.toml");
        env.write(&f, text);
        for cmd in [
            vec!["plan", f.as_str()],
            vec!["run", f.as_str()],
            vec!["submit", f.as_str(), "--slurm", "--dry-run"],
        ] {
            let out = env.run(&cmd);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd:?} {text}: {}",
                stderr(&out)
            );
            let e = stderr(&out);
            assert!(
                e.contains(&format!("{f}:")) && e.contains("stage name"),
                "{cmd:?}: {e}"
            );
            assert!(!e.contains("panicked"), "{e}");
        }
    }
    assert_clean("stage names");
    // 2. option values outside Slurm's syntax, and control characters in paths: exit 2,
    //    nothing written
    let f = sweep(&env);
    let bad_options: Vec<Vec<String>> = vec![
        vec!["--partition".into(), format!("gpu\n{touch}")],
        vec!["--partition".into(), format!("gpu;{touch}")],
        vec!["--account".into(), format!("lab\n#SBATCH --uid=0\n{touch}")],
        vec!["--time".into(), format!("1:00\n{touch}")],
        vec!["--time".into(), format!("$({touch})")],
        vec!["--set".into(), format!("description=a\n{touch}")],
    ];
    for extra in &bad_options {
        let mut args = vec!["submit", f.as_str(), "--slurm"];
        args.extend(extra.iter().map(|s| s.as_str()));
        let out = env
            .cmd(&args)
            .env("LAYERPRUNE_SBATCH", "/bin/false")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(
            !env.path("cache/slurm").exists(),
            "{extra:?}: a script was written"
        );
    }
    let newline_cache = env.path("cache\nx");
    let out = with_cache(
        &env,
        &["submit", &f, "--slurm", "--dry-run"],
        &newline_cache,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("control character"),
        "{}",
        stderr(&out)
    );
    let newline_dir = env.path("work\nx");
    std::fs::create_dir_all(&newline_dir).unwrap();
    std::fs::copy(env.path(&f), newline_dir.join(&f)).unwrap();
    let out = env
        .cmd(&["submit", &f, "--slurm", "--dry-run"])
        .current_dir(&newline_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("working directory"),
        "{}",
        stderr(&out)
    );
    assert_clean("options and paths");
    // 3. hostile values without control characters are accepted and quoted: a working
    //    directory, pipeline path and cache path full of shell syntax, and a --set value.
    //    A stub sbatch checks each script with `bash -n` and runs it as task 0.
    let weird = env.path(&format!("w $({touch}) `{touch}` ';{touch};' \"q\""));
    std::fs::create_dir_all(&weird).unwrap();
    std::fs::copy(env.path(&f), weird.join("p $(x).toml")).unwrap();
    let stub = env.path("sbatch-stub");
    std::fs::write(
        &stub,
        "#!/bin/bash\n# the script is the last argument\nfor s; do :; done\n\
         bash -n \"$s\" || { echo \"bash -n failed on $s\" >&2; exit 1; }\n\
         SLURM_ARRAY_TASK_ID=0 bash \"$s\" >>\"$s.ran\" 2>&1 || true\n\
         echo $RANDOM\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cache = weird.join(format!("cache $({touch})"));
    let out = with_cache(
        &env,
        &[
            "submit",
            "p $(x).toml",
            "--slurm",
            "--partition",
            "gpu,debug",
            "--account",
            "lab-1",
            "--time",
            "1-00:00:00",
            "--set",
            &format!("description=$({touch})'\"`{touch}`"),
        ],
        &cache,
    )
    .current_dir(&weird)
    .env("LAYERPRUNE_SBATCH", &stub)
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("array job(s)"), "{}", stdout(&out));
    // the scripts ran (their first task's job is in the cache) and created nothing else
    let ran: Vec<String> = walk(&cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "ran"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(
        ran.iter()
            .all(|r| !r.contains("command not found") && !r.contains("syntax error")),
        "{ran:?}"
    );
    assert_clean("quoted values");
}

/// The binary as `Env::cmd` runs it, with another cache directory.
fn with_cache(env: &Env, args: &[&str], cache: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_layerprune"));
    c.args(args)
        .arg("--cache-dir")
        .arg(cache)
        .current_dir(env.dir.path())
        .env("LAYERPRUNE_TEST_STAGES", "1")
        .env_remove("LAYERPRUNE_CACHE");
    c
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
