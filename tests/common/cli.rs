//! The binary run as a user runs it, in a temporary directory with its own cache, the cheap
//! `test-value` stage kind enabled (LAYERPRUNE_TEST_STAGES=1) and executions logged.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_layerprune"));
        c.args(args)
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .current_dir(self.dir.path())
            .env("LAYERPRUNE_TEST_STAGES", "1")
            .env("LAYERPRUNE_TEST_LOG", self.path("exec.log"))
            .env("RUST_LOG", "info")
            .env_remove("LAYERPRUNE_CACHE");
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    /// (job, status, reason) rows of results/<name>/jobs.csv
    pub fn jobs(&self, name: &str) -> Vec<(String, String, String)> {
        let mut r = csv::Reader::from_path(self.path(&format!("results/{name}/jobs.csv"))).unwrap();
        r.records()
            .map(|x| x.unwrap())
            .map(|x| (x[0].to_string(), x[4].to_string(), x[5].to_string()))
            .collect()
    }
    /// Wait (up to 30 s) until a test-value job has logged its start.
    pub fn wait_for_start(&self) {
        let start = std::time::Instant::now();
        while !self.exec_log().iter().any(|l| l.ends_with("start")) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "the job never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    pub fn exec_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("exec.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `layerprune forward SOURCE --prompt PROMPT --top 5 --json` with the shared test cache: the
/// parsed JSON report (panics with stderr on failure).
pub fn forward_json(source: &str, prompt: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .args([
            "forward",
            source,
            "--prompt",
            prompt,
            "--top",
            "5",
            "--json",
            "--cache-dir",
        ])
        .arg(super::test_cache())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A job's (short key, estimate in MiB) from the output of `plan --memory`: the line whose first
/// word is `label`.
#[allow(dead_code)]
pub fn plan_job_line(plan: &str, label: &str) -> (String, f64) {
    let line = plan
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .unwrap_or_else(|| panic!("no {label} job in: {plan}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let value: f64 = words[2].parse().unwrap();
    let mib = match words[3] {
        "KiB" => value / 1024.0,
        "MiB" => value,
        "GiB" => value * 1024.0,
        other => panic!("unit {other} in: {line}"),
    };
    (words[1].to_string(), mib)
}
