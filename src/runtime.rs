//! Process-wide runtime options that are not part of any job's configuration (they change how
//! fast or how observably work runs, never its results): read from the environment once, at the
//! top (`main`), and passed down to jobs in their context.

use std::sync::OnceLock;

/// Default budget of the below-the-cut stream memo, in MiB.
pub const DEFAULT_STREAM_MEMO_MB: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// `LAYERPRUNE_STREAM_MEMO_MB`: host memory for residual streams kept across a sweep's
    /// evaluations (0 turns the reuse off).
    pub stream_memo_mb: usize,
    /// `LAYERPRUNE_TEST_STAGES=1`: register the test-only stage kinds (runner tests).
    pub test_stages: bool,
    /// `LAYERPRUNE_HEAL_STEP_DELAY_MS`: sleep after every healing step (tests that kill a run).
    pub heal_step_delay_ms: Option<u64>,
    /// CPU threads for work split across sub-batches: `RAYON_NUM_THREADS` (rayon's own
    /// setting, which Burn's flex backend also follows), else the cores available.
    pub cpu_threads: usize,
    /// `LAYERPRUNE_TEST_LOG`: where the test stage kinds append their start/end lines.
    pub test_log: Option<std::path::PathBuf>,
    /// `LAYERPRUNE_TEST_NO_SLEEP=1`: the test stage kinds skip their sleep (resume tests).
    pub test_no_sleep: bool,
    /// `--log-format json`: errors for the user go to the JSON log too (set by `main`).
    pub log_json: bool,
}

fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            stream_memo_mb: DEFAULT_STREAM_MEMO_MB,
            test_stages: false,
            heal_step_delay_ms: None,
            cpu_threads: available_cores(),
            test_log: None,
            test_no_sleep: false,
            log_json: false,
        }
    }
}

impl RuntimeOptions {
    /// The options from the environment (unset or unparsable values take the defaults).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        Self {
            stream_memo_mb: var("LAYERPRUNE_STREAM_MEMO_MB")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_STREAM_MEMO_MB),
            test_stages: var("LAYERPRUNE_TEST_STAGES").is_some_and(|v| v == "1"),
            heal_step_delay_ms: var("LAYERPRUNE_HEAL_STEP_DELAY_MS").and_then(|v| v.parse().ok()),
            cpu_threads: var("RAYON_NUM_THREADS")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(available_cores),
            test_log: std::env::var_os("LAYERPRUNE_TEST_LOG").map(Into::into),
            test_no_sleep: var("LAYERPRUNE_TEST_NO_SLEEP").is_some(),
            log_json: false,
        }
    }
}

/// The runtime variables that must be numbers, checked: a value that does not parse is an
/// error naming the variable (it would otherwise be ignored silently and the default used).
pub fn check_env() -> Result<(), String> {
    for name in [
        "LAYERPRUNE_STREAM_MEMO_MB",
        "LAYERPRUNE_HEAL_STEP_DELAY_MS",
        "RAYON_NUM_THREADS",
    ] {
        if let Some(v) = std::env::var_os(name) {
            let text = v.to_string_lossy();
            if text.trim().parse::<u64>().is_err() {
                return Err(format!(
                    "environment variable {name}={text:?}: expected a whole number"
                ));
            }
        }
    }
    Ok(())
}

static CURRENT: OnceLock<RuntimeOptions> = OnceLock::new();

/// Fix the options for this process (first call wins); `main` calls it before anything runs.
pub fn install(options: RuntimeOptions) -> &'static RuntimeOptions {
    CURRENT.get_or_init(|| options)
}

/// The options of this process: those installed, else read from the environment once.
pub fn current() -> &'static RuntimeOptions {
    CURRENT.get_or_init(RuntimeOptions::from_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_unset() {
        let o = RuntimeOptions::default();
        assert_eq!(o.stream_memo_mb, 1024);
        assert!(!o.test_stages);
        assert_eq!(o.heal_step_delay_ms, None);
    }
}
