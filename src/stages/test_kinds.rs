//! `test-value`: a cheap stage kind for the runner's tests (LAYERPRUNE_TEST_STAGES=1). It adds
//! its `value` to the values of its inputs, can sleep and can fail on demand, and appends
//! "start"/"end" lines to $LAYERPRUNE_TEST_LOG so tests can count executions.

use std::io::Write;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{canonical, InputSlot, JobContext, ParamError, Params, Stage};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestValueParams {
    pub value: f64,
    pub sleep_ms: u64,
    pub fail: bool,
    pub data: String,
}

impl Params for TestValueParams {
    fn validate(&self) -> Result<(), ParamError> {
        if self.sleep_ms > 600_000 {
            return Err(ParamError {
                path: "sleep_ms".into(),
                message: format!("must be at most 600000, got {}", self.sleep_ms),
            });
        }
        Ok(())
    }
}

pub struct TestValueStage;

fn log_line(ctx: &JobContext, line: &str) {
    if let Some(path) = &ctx.runtime.test_log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

impl Stage for TestValueStage {
    fn kind(&self) -> &'static str {
        "test-value"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "testing only: value.json = value + the values of the inputs"
    }
    fn defaults(&self) -> &'static str {
        include_str!("../../stages/test-value.toml")
    }
    fn inputs(&self) -> &'static [InputSlot] {
        const SLOTS: &[InputSlot] = &[
            InputSlot::optional("parent", &["test-value"]),
            InputSlot::gather("gather", &["test-value"]),
        ];
        SLOTS
    }
    fn source_params(&self) -> &'static [&'static str] {
        &["data"]
    }
    fn check_params(&self, params: &serde_json::Value) -> Result<serde_json::Value, ParamError> {
        canonical::<TestValueParams>(params)
    }
    fn run(&self, ctx: &JobContext) -> Result<()> {
        let p: TestValueParams = ctx.params()?;
        log_line(ctx, &format!("{} {} start", ctx.stage, ctx.key));
        // LAYERPRUNE_TEST_NO_SLEEP=1 lets a test resume a killed job (same key) without waiting.
        if !ctx.runtime.test_no_sleep {
            std::thread::sleep(std::time::Duration::from_millis(p.sleep_ms));
        }
        if p.fail {
            log_line(ctx, &format!("{} {} fail", ctx.stage, ctx.key));
            bail!("failing on purpose (fail = true)");
        }
        let mut total = p.value;
        for slot in ["parent", "gather"] {
            for a in ctx.inputs(slot) {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(a.dir.join("value.json"))?)?;
                total += v["value"].as_f64().unwrap_or(0.0);
            }
        }
        let data_sha = ctx.sources.get("data").map(|s| s.sha256.clone());
        std::fs::write(
            ctx.out("value.json"),
            serde_json::to_string(
                &serde_json::json!({"value": total, "data_sha256": data_sha, "assignment": ctx.assignment}),
            )?,
        )?;
        log_line(ctx, &format!("{} {} end", ctx.stage, ctx.key));
        Ok(())
    }
}
