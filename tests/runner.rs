//! The pipeline runner end to end, through the binary, on the cheap `test-value` stage kind
//! (enabled by LAYERPRUNE_TEST_STAGES=1).

mod common;

use std::path::PathBuf;

use common::cli::{stderr, stdout, Env};

/// A sweep over x with a gathering stage (also used by the pipeline unit tests).
const SWEEP: &str = include_str!("fixtures/pipelines/sweep.toml");

fn value_of(env: &Env, name: &str, job: &str) -> f64 {
    let _ = name;
    // find the artifact by key through jobs.csv
    let mut r = csv::Reader::from_path(env.path("results/sweep/jobs.csv")).unwrap();
    let key = r
        .records()
        .map(|x| x.unwrap())
        .find(|x| &x[0] == job)
        .map(|x| x[3].to_string())
        .unwrap();
    let text =
        std::fs::read_to_string(env.path(&format!("cache/test-value/{key}/value.json"))).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["value"]
        .as_f64()
        .unwrap()
}

#[test]
fn second_run_of_an_unchanged_pipeline_runs_nothing() {
    let env = Env::new();
    env.write("p.toml", SWEEP);
    let o = env.run(&["run", "p.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("6 jobs run, 0 cached, 0 failed"),
        "{}",
        stdout(&o)
    );
    assert_eq!(value_of(&env, "sweep", "total"), 10.0 * 3.0 + 6.0 + 5.0);
    let o = env.run(&["run", "p.toml"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("0 jobs run, 6 cached, 0 failed"),
        "{}",
        stdout(&o)
    );
    assert!(env.jobs("sweep").iter().all(|(_, s, _)| s == "cached"));
    // runs.csv has one line per run with the documented columns
    let runs = std::fs::read_to_string(env.path("results/sweep/runs.csv")).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    assert_eq!(
        lines[0],
        "started_at,finished_at,version,git_rev,jobs_run,jobs_cached,jobs_failed,jobs_skipped,exit_code"
    );
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].ends_with(",6,0,0,0,0") && lines[2].ends_with(",0,6,0,0,0"),
        "{runs}"
    );
    assert!(env.path("results/sweep/resolved.toml").exists());
    assert_eq!(
        env.exec_log()
            .iter()
            .filter(|l| l.ends_with(" end"))
            .count(),
        6
    );
}

#[test]
fn changing_one_parameter_reruns_exactly_its_downstream_and_plan_says_why() {
    let env = Env::new();
    env.write("p.toml", SWEEP);
    assert!(env.run(&["run", "p.toml"]).status.success());
    let plan = env.run(&["plan", "p.toml", "--set", "stages.base.value=11"]);
    let text = stdout(&plan);
    assert!(
        text.contains("base") && text.contains("params changed: value 10.0 -> 11.0"),
        "{text}"
    );
    assert!(
        text.contains("per_x[x=2]") && text.contains("input changed: parent (base)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("side ") && l.ends_with("cached")),
        "{text}"
    );
    assert!(text.contains("5 to run, 1 cached"), "{text}");

    let o = env.run(&["run", "p.toml", "--set", "stages.base.value=11"]);
    assert!(
        stdout(&o).contains("5 jobs run, 1 cached"),
        "{}",
        stdout(&o)
    );
    let jobs = env.jobs("sweep");
    let status = |j: &str| jobs.iter().find(|(n, _, _)| n == j).unwrap().1.clone();
    assert_eq!(status("side"), "cached");
    for j in ["base", "per_x[x=1]", "per_x[x=2]", "per_x[x=3]", "total"] {
        assert_eq!(status(j), "ran", "{j}");
    }
    assert_eq!(value_of(&env, "sweep", "total"), 11.0 * 3.0 + 6.0 + 5.0);
    // environment variables sit between the file and --set
    let mut c = env.cmd(&["plan", "p.toml"]);
    c.env("LAYERPRUNE_STAGES__BASE__VALUE", "12");
    let o = c.output().unwrap();
    assert!(
        stdout(&o).contains("params changed: value 11.0 -> 12.0"),
        "{}",
        stdout(&o)
    );
    let mut c = env.cmd(&["plan", "p.toml", "--set", "stages.base.value=13"]);
    c.env("LAYERPRUNE_STAGES__BASE__VALUE", "12");
    let o = c.output().unwrap();
    assert!(
        stdout(&o).contains("params changed: value 11.0 -> 13.0"),
        "--set wins over the environment: {}",
        stdout(&o)
    );
    // going back to the file's value finds the first run's artifacts still cached
    let o = env.run(&["plan", "p.toml"]);
    assert!(stdout(&o).contains("0 to run, 6 cached"), "{}", stdout(&o));
}

#[test]
fn jobs_with_identical_parameters_and_inputs_are_one_job() {
    let env = Env::new();
    // `shared` does not use the axis: one job for the whole sweep; `same` resolves identically for every value
    env.write(
        "p.toml",
        r#"
name = "dedup"
[sweep]
x = [1, 2]
[stages.shared]
kind = "test-value"
value = 1
[stages.per_x]
kind = "test-value"
value = "${x}"
inputs = { parent = "shared" }
[stages.same]
kind = "test-value"
value = 7
data = ""
[stages.twin]
kind = "test-value"
value = 7
"#,
    );
    let o = env.run(&["plan", "p.toml"]);
    let text = stdout(&o);
    assert!(
        text.contains("(4 jobs;"),
        "shared + 2 per_x + one job for same/twin: {text}"
    );
}

#[test]
fn a_failed_job_stops_its_dependants_the_others_go_on() {
    let env = Env::new();
    env.write(
        "p.toml",
        &SWEEP.replace("value = 10\n", "value = 10\nfail = true\n"),
    );
    let o = env.run(&["run", "p.toml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("1 jobs run, 0 cached, 1 failed, 4 skipped"),
        "{}",
        stdout(&o)
    );
    let jobs = env.jobs("sweep");
    let status = |j: &str| jobs.iter().find(|(n, _, _)| n == j).unwrap().1.clone();
    assert_eq!(status("base"), "failed");
    assert_eq!(status("side"), "ran");
    assert_eq!(status("per_x[x=1]"), "skipped");
    assert_eq!(status("total"), "skipped");
    // nothing of the failed job is left in the cache
    assert!(std::fs::read_dir(env.path("cache/test-value"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));
    let runs = std::fs::read_to_string(env.path("results/sweep/runs.csv")).unwrap();
    // 1 ran (side), 0 cached, 1 failed (base), 4 skipped (its dependants), exit 1
    assert!(
        runs.lines().nth(1).unwrap().ends_with(",1,0,1,4,1"),
        "{runs}"
    );
    // fixed: the next run computes what is missing, reusing `side`
    env.write("p.toml", SWEEP);
    let o = env.run(&["run", "p.toml"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("5 jobs run, 1 cached"),
        "{}",
        stdout(&o)
    );
}

fn wait_for_log(env: &Env, needle: &str) {
    for _ in 0..400 {
        if env.exec_log().iter().any(|l| l.contains(needle)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("timed out waiting for {needle:?} in the execution log");
}

fn complete_artifacts(env: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(env.path("cache/test-value"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_job_leaves_nothing_that_looks_complete_and_the_next_run_resumes() {
    let env = Env::new();
    env.write(
        "p.toml",
        r#"
name = "kill"
[stages.quick]
kind = "test-value"
value = 1
[stages.slow]
kind = "test-value"
value = 2
sleep_ms = 30000
inputs = { parent = "quick" }
"#,
    );
    let mut child = env.spawn(&["run", "p.toml"]);
    wait_for_log(&env, "slow");
    std::thread::sleep(std::time::Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // only `quick` is complete; `slow` left a temporary directory without a manifest
    let done = complete_artifacts(&env);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].join("manifest.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(env.path("cache/test-value"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert_eq!(leftovers.len(), 1);
    assert!(!leftovers[0].path().join("manifest.json").exists());
    let o = env.run(&["plan", "p.toml"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains("slow") && l.ends_with("new")),
        "{}",
        stdout(&o)
    );
    // resume the same job (same key), without its sleep
    let mut c = env.cmd(&["run", "p.toml"]);
    c.env("LAYERPRUNE_TEST_NO_SLEEP", "1");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("1 jobs run, 1 cached"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("removing an interrupted attempt"),
        "{}",
        stderr(&o)
    );
    assert_eq!(complete_artifacts(&env).len(), 2);
    let leftovers = std::fs::read_dir(env.path("cache/test-value"))
        .unwrap()
        .flatten();
    assert!(leftovers
        .into_iter()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")));
}

#[test]
fn a_corrupted_artifact_is_detected_by_verify_and_by_run_and_recomputed() {
    let env = Env::new();
    env.write("p.toml", SWEEP);
    assert!(env.run(&["run", "p.toml"]).status.success());
    let o = env.run(&["cache", "verify"]);
    assert!(
        o.status.success() && stdout(&o).contains("6 artifacts verified, 0 corrupt"),
        "{}",
        stdout(&o)
    );
    // edit a file of `side` after the fact, keeping its size
    let mut r = csv::Reader::from_path(env.path("results/sweep/jobs.csv")).unwrap();
    let key = r
        .records()
        .map(|x| x.unwrap())
        .find(|x| &x[0] == "side")
        .map(|x| x[3].to_string())
        .unwrap();
    let file = env.path(&format!("cache/test-value/{key}/value.json"));
    let text = std::fs::read_to_string(&file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&file, text.replace("\"value\":5.0", "\"value\":6.0")).unwrap();
    let o = env.run(&["cache", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!(
            "corrupt  test-value/{key}: value.json was modified after the artifact was written"
        )),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["plan", "p.toml"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains("side") && l.contains("corrupt: value.json was modified")),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["run", "p.toml"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("1 jobs run, 5 cached"),
        "{}",
        stdout(&o)
    );
    assert_eq!(value_of(&env, "sweep", "side"), 5.0);
    let o = env.run(&["cache", "verify"]);
    assert!(stdout(&o).contains("6 artifacts verified, 0 corrupt"));
}

#[test]
fn concurrent_runs_never_write_an_artifact_twice() {
    let env = Env::new();
    let slow = SWEEP.replace("value = 10\n", "value = 10\nsleep_ms = 1500\n");
    env.write("p.toml", &slow);
    // a second pipeline (another name) sharing the slow `base` job
    env.write(
        "q.toml",
        &slow.replace("name = \"sweep\"", "name = \"other\""),
    );
    let a = env.spawn(&["run", "p.toml"]);
    wait_for_log(&env, "base");
    // same pipeline, --no-wait: refused with exit code 3 and a clear message
    let o = env.run(&["run", "p.toml", "--no-wait"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("another run of pipeline sweep is in progress"),
        "{}",
        stderr(&o)
    );
    let b = env.spawn(&["run", "p.toml"]); // waits for the lock
    let c = env.spawn(&["run", "q.toml"]); // other pipeline: waits on the shared artifact's lock
    for child in [a, b, c] {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let log = env.exec_log();
    let starts: Vec<&String> = log.iter().filter(|l| l.ends_with(" start")).collect();
    let mut keys: Vec<&str> = starts
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(n, keys.len(), "an artifact was computed twice: {log:?}");
    assert_eq!(n, 6);
}

#[test]
fn gc_removes_what_no_pipeline_reaches() {
    let env = Env::new();
    env.write("p.toml", SWEEP);
    assert!(env.run(&["run", "p.toml"]).status.success());
    assert!(env
        .run(&["run", "p.toml", "--set", "stages.side.value=6"])
        .status
        .success());
    assert_eq!(complete_artifacts(&env).len(), 8);
    let o = env.run(&["cache", "gc", "p.toml", "--dry-run"]);
    assert!(stdout(&o).contains("2 artifacts"), "{}", stdout(&o));
    assert_eq!(complete_artifacts(&env).len(), 8);
    let o = env.run(&["cache", "gc", "p.toml"]);
    assert!(o.status.success());
    assert_eq!(complete_artifacts(&env).len(), 6);
    let o = env.run(&["run", "p.toml"]);
    assert!(
        stdout(&o).contains("0 jobs run, 6 cached"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn force_recomputes_the_named_stage() {
    let env = Env::new();
    env.write("p.toml", SWEEP);
    assert!(env.run(&["run", "p.toml"]).status.success());
    let o = env.run(&["run", "p.toml", "--force", "side"]);
    assert!(
        stdout(&o).contains("1 jobs run, 5 cached"),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["run", "p.toml", "--force", "sid"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--force sid: no stage named \"sid\" (did you mean \"side\"?)"),
        "{}",
        stderr(&o)
    );
}

/// Bad configurations: the exact message, naming file:line (or env/--set), key and expectation.
#[test]
fn bad_configurations_give_exact_errors() {
    let env = Env::new();
    let cases: Vec<(&str, String, Vec<&str>, String)> = vec![
        (
            "unknown stage key",
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\nvalu = 1\n".into(),
            vec![],
            "p.toml:4: stages.a.valu: unknown key (did you mean \"value\"?)".into(),
        ),
        (
            "wrong type",
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\nvalue = \"ten\"\n".into(),
            vec![],
            "p.toml:4: stages.a.value: invalid type: string \"ten\", expected f64".into(),
        ),
        (
            "out of range",
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\nsleep_ms = 9999999\n".into(),
            vec![],
            "p.toml:4: stages.a.sleep_ms: must be at most 600000, got 9999999".into(),
        ),
        (
            "unknown top-level key",
            "name = \"x\"\nbackedn = \"flex\"\n[stages.a]\nkind = \"test-value\"\n".into(),
            vec![],
            "p.toml:2: backedn: unknown key (did you mean \"backend\"?)".into(),
        ),
        (
            "unknown stage kind",
            "name = \"x\"\n[stages.a]\nkind = \"test-valeu\"\n".into(),
            vec![],
            "p.toml:3: stages.a.kind: unknown stage kind \"test-valeu\" (did you mean \"test-value\"?) (known kinds: load, similarity, select, prune, eval-qa, eval-loss, heal, heal-linear, heal-partial, report, test-value; set `kind` when the table name is not a kind)".into(),
        ),
        (
            "unknown sweep axis",
            "name = \"x\"\n[sweep]\nfraction = [0.1]\n[stages.a]\nkind = \"test-value\"\nvalue = \"${fracton}\"\n".into(),
            vec![],
            "p.toml:6: stages.a.value: unknown sweep axis \"fracton\" (did you mean \"fraction\"?) (axes: fraction)".into(),
        ),
        (
            "empty sweep axis",
            "name = \"x\"\n[sweep]\nfraction = []\n[stages.a]\nkind = \"test-value\"\n".into(),
            vec![],
            "p.toml:3: sweep.fraction: a sweep axis must have at least one value".into(),
        ),
        (
            "sweep axis not a list",
            "name = \"x\"\n[sweep]\nfraction = 0.5\n[stages.a]\nkind = \"test-value\"\n".into(),
            vec![],
            "p.toml:3: sweep.fraction: a sweep axis must be a list of values, found 0.5".into(),
        ),
        (
            "missing source",
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\ndata = \"speeches\"\n".into(),
            vec![],
            "p.toml:4: stages.a.data: no source named \"speeches\" in [sources]".into(),
        ),
        (
            "source file does not exist",
            "name = \"x\"\n[sources]\nspeeches = \"./nowhere.txt\"\n[stages.a]\nkind = \"test-value\"\ndata = \"speeches\"\n".into(),
            vec![],
            "p.toml:3: sources.speeches: ./nowhere.txt: no such file or directory".into(),
        ),
        (
            "cycle",
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\ninputs = { parent = \"b\" }\n[stages.b]\nkind = \"test-value\"\ninputs = { parent = \"a\" }\n".into(),
            vec![],
            "p.toml:4: stages.a.inputs: cycle in stage references: a -> b -> a".into(),
        ),
        (
            "unknown input stage",
            "name = \"x\"\n[stages.base]\nkind = \"test-value\"\n[stages.a]\nkind = \"test-value\"\ninputs = { parent = \"bsae\" }\n".into(),
            vec![],
            "p.toml:6: stages.a.inputs.parent: no stage named \"bsae\" (did you mean \"base\"?)".into(),
        ),
        (
            "unknown input slot",
            "name = \"x\"\n[stages.base]\nkind = \"test-value\"\n[stages.a]\nkind = \"test-value\"\ninputs = { parnet = \"base\" }\n".into(),
            vec![],
            "p.toml:6: stages.a.inputs.parnet: stage kind test-value has no input \"parnet\" (did you mean \"parent\"?) (inputs: parent, gather)".into(),
        ),
        (
            "invalid TOML",
            "name = \"x\"\n[stages.a\nkind = \"test-value\"\n".into(),
            vec![],
            "p.toml:2: invalid TOML: invalid table header\nexpected `.`, `]`".into(),
        ),
        (
            "bad --set value type",
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\n".into(),
            vec!["--set", "stages.a.fail=maybe"],
            "--set stages.a.fail=maybe: stages.a.fail: invalid type: string \"maybe\", expected a boolean".into(),
        ),
        (
            "no stages",
            "name = \"x\"\n".into(),
            vec![],
            "p.toml: stages: the pipeline has no stages".into(),
        ),
    ];
    assert!(cases.len() >= 10);
    for (what, text, extra, expected) in cases {
        env.write("p.toml", &text);
        let mut args = vec!["plan", "p.toml"];
        args.extend(extra);
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.trim_end().ends_with(&format!("error: {expected}")),
            "{what}:\n got: {err}\nwant: error: {expected}"
        );
    }
    // environment variables are named as such
    env.write(
        "p.toml",
        "name = \"x\"\n[stages.a]\nkind = \"test-value\"\n",
    );
    let mut c = env.cmd(&["plan", "p.toml"]);
    c.env("LAYERPRUNE_STAGES__A__VALUE", "\"high\"");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("error: environment variable LAYERPRUNE_STAGES__A__VALUE: stages.a.value: invalid type: string \"high\", expected f64"), "{}", stderr(&o));
}

#[test]
fn stages_lists_kinds_with_their_documented_defaults() {
    let env = Env::new();
    let o = env.run(&["stages"]);
    let text = stdout(&o);
    assert!(text.contains("== load (version 1)"), "{text}");
    assert!(
        text.contains("# The model: a key of the pipeline's [sources] table"),
        "{text}"
    );
    assert!(text.contains("== test-value"), "{text}");
}

#[test]
fn a_list_of_stages_in_a_one_job_input_fans_the_stage_out() {
    let env = Env::new();
    env.write("p.toml", include_str!("fixtures/pipelines/fan.toml"));
    let o = env.run(&["plan", "p.toml"]);
    let text = stdout(&o);
    assert!(
        text.contains("(9 jobs;"),
        "base + 3 per_x + 1 + 3 consumers + total: {text}"
    );
    assert!(text.contains("consumer[parent=base] "), "{text}");
    assert!(text.contains("consumer[parent=per_x,x=2] "), "{text}");
    let o = env.run(&["run", "p.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut r = csv::Reader::from_path(env.path("results/fan/jobs.csv")).unwrap();
    let key = r
        .records()
        .map(|x| x.unwrap())
        .find(|x| &x[0] == "total")
        .map(|x| x[3].to_string())
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.path(&format!("cache/test-value/{key}/value.json"))).unwrap(),
    )
    .unwrap();
    // consumers: 100 + 10, and 100 + x for x = 1, 2, 3
    assert_eq!(v["value"].as_f64().unwrap(), 110.0 + 101.0 + 102.0 + 103.0);
}

/// `cache export p.toml --stage S... --out OUT` in `env`.
fn export(env: &Env, stages: &[&str], out: &std::path::Path) -> std::process::Output {
    let mut args = vec!["cache", "export", "p.toml", "--out", out.to_str().unwrap()];
    for s in stages {
        args.extend(["--stage", s]);
    }
    env.run(&args)
}

/// `cache export` of some stages, `cache import` into an empty cache, then `run --target`
/// computes only what the target needs: the imported jobs' inputs are not recomputed.
#[test]
fn exported_artifacts_import_into_another_cache_and_target_runs_only_what_is_needed() {
    let a = Env::new();
    a.write("p.toml", SWEEP);
    assert!(a.run(&["run", "p.toml"]).status.success());
    let bundle = a.path("bundle.zip");
    let o = export(&a, &["per_x", "total"], &bundle);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("4 artifacts"), "{}", stdout(&o));
    let o = export(&a, &["totl"], &a.path("x.zip"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--stage totl: no stage named \"totl\" (did you mean \"total\"?)"),
        "{}",
        stderr(&o)
    );
    assert!(!a.path("x.zip").exists());

    let b = Env::new();
    b.write("p.toml", SWEEP);
    let o = b.run(&["cache", "import", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("4 artifacts imported"),
        "{}",
        stdout(&o)
    );
    assert_eq!(complete_artifacts(&b).len(), 4);
    let o = b.run(&["cache", "import", bundle.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("0 artifacts imported") && stdout(&o).contains("4 already cached"),
        "{}",
        stdout(&o)
    );

    let o = b.run(&["run", "p.toml", "--target", "totl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--target totl: no stage named"),
        "{}",
        stderr(&o)
    );
    // total is cached: nothing runs; base (read only by per_x, cached) and side (read only by
    // total) are not needed; the imported value is the one computed in the other cache
    let o = b.run(&["run", "p.toml", "--target", "total"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("0 jobs run, 4 cached, 0 failed, 0 skipped, 2 not needed"),
        "{}",
        stdout(&o)
    );
    assert!(b.exec_log().is_empty(), "{:?}", b.exec_log());
    assert_eq!(
        value_of(&b, "sweep", "total"),
        value_of(&a, "sweep", "total")
    );
    let jobs = b.jobs("sweep");
    assert!(
        jobs.iter()
            .any(|(j, s, _)| j == "base" && s == "not needed"),
        "{jobs:?}"
    );
    // without a target every job is brought up to date: base and side are computed
    let o = b.run(&["run", "p.toml"]);
    assert!(
        stdout(&o).contains("2 jobs run, 4 cached"),
        "{}",
        stdout(&o)
    );
    // a missing target pulls in its missing inputs transitively: total needs per_x, per_x needs
    // base; side is there
    let keys: Vec<(String, String)> = b
        .jobs("sweep")
        .into_iter()
        .map(|(j, _, _)| j)
        .zip(key_column(&b))
        .collect();
    for (job, key) in &keys {
        if job != "side" {
            std::fs::remove_dir_all(b.path(&format!("cache/test-value/{key}"))).unwrap();
        }
    }
    let o = b.run(&["run", "p.toml", "--target", "total"]);
    assert!(
        stdout(&o).contains("5 jobs run, 1 cached, 0 failed, 0 skipped;"),
        "{}",
        stdout(&o)
    );
}

/// The key column of results/sweep/jobs.csv, in its row order.
fn key_column(env: &Env) -> Vec<String> {
    csv::Reader::from_path(env.path("results/sweep/jobs.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[3].to_string())
        .collect()
}

/// A bundle whose file does not match its manifest is rejected and leaves nothing in the cache;
/// a file that is not a bundle, or an entry outside an artifact, is refused before any write.
#[test]
fn a_tampered_or_malformed_bundle_is_refused() {
    use std::io::{Read, Write};
    let a = Env::new();
    a.write("p.toml", SWEEP);
    assert!(a.run(&["run", "p.toml"]).status.success());
    let bundle = a.path("bundle.zip");
    let o = export(&a, &["side", "base"], &bundle);
    assert!(o.status.success(), "{}", stderr(&o));
    // copy the bundle, changing one byte of side's value.json (same size)
    let rewrite = |out: &std::path::Path, extra: Option<&str>| {
        let mut zin = zip::ZipArchive::new(std::fs::File::open(&bundle).unwrap()).unwrap();
        let mut zout = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
        let mut tampered = 0;
        for i in 0..zin.len() {
            let mut e = zin.by_index(i).unwrap();
            let name = e.name().to_string();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            let text = String::from_utf8_lossy(&bytes).to_string();
            if name.ends_with("value.json") && text.contains("5.0") && extra.is_none() {
                bytes = text.replacen("5.0", "6.0", 1).into_bytes();
                tampered += 1;
            }
            zout.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zout.write_all(&bytes).unwrap();
        }
        if let Some(name) = extra {
            zout.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zout.write_all(b"x").unwrap();
        }
        zout.finish().unwrap();
        tampered
    };
    let bad = a.path("bad.zip");
    assert_eq!(rewrite(&bad, None), 1);
    let b = Env::new();
    b.write("p.toml", SWEEP);
    let o = b.run(&["cache", "import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("rejected test-value/") && stdout(&o).contains("sha256 differs"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("1 artifacts imported"),
        "{}",
        stdout(&o)
    );
    assert_eq!(complete_artifacts(&b).len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(b.path("cache/test-value"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());

    let escaping = a.path("escaping.zip");
    rewrite(&escaping, Some("test-value/../../evil"));
    let c = Env::new();
    let o = c.run(&["cache", "import", escaping.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("escaping.zip: entry \"test-value/../../evil\""),
        "{}",
        stderr(&o)
    );
    assert!(complete_artifacts(&c).is_empty());
    assert!(!c.path("evil").exists() && !c.path("cache/evil").exists());
    let o = c.run(&["cache", "import", a.path("p.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("p.toml is not a zip file"),
        "{}",
        stderr(&o)
    );
}
