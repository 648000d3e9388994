//! `layerprune forward MODEL --prompt TEXT`: one forward pass, the next-token top-k and the
//! final token's residual stream at every layer boundary.

use anyhow::Result;
use burn::tensor::{backend::Backend, DType};
use serde::Serialize;

use crate::backend::BackendTask;
use crate::model::{to_f32_vec, Capture, Logits, ModelFiles, TokenBatch};

#[derive(Debug, Serialize)]
pub struct BoundarySummary {
    /// Boundary index: x(l) is the input of layer l; l = L is before the final norm.
    pub l: usize,
    pub first8: Vec<f32>,
}

#[derive(Debug, Serialize)]
pub struct ForwardReport {
    pub token_ids: Vec<u32>,
    /// (token id, logit), best first
    pub top: Vec<(u32, f32)>,
    pub boundaries: Vec<BoundarySummary>,
}

pub struct ForwardTask<'a> {
    pub files: &'a ModelFiles,
    pub prompt: &'a str,
    pub top: usize,
}

impl BackendTask for ForwardTask<'_> {
    type Output = ForwardReport;

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<ForwardReport> {
        let model = self.files.build::<B>(&device, dtype)?;
        let ids = self.files.tokenizer.encode(self.prompt)?;
        if ids.is_empty() {
            anyhow::bail!("the prompt tokenizes to no tokens");
        }
        self.files
            .config
            .check_length("the prompt's length in tokens", ids.len())?;
        let batch = TokenBatch::right_padded(std::slice::from_ref(&ids), 0);
        let out = model.forward(&batch, Capture::FinalToken, Logits::FinalToken)?;
        let logits: Vec<f32> = to_f32_vec(out.final_logits.unwrap())?;
        if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
            anyhow::bail!(
                "forward: the logit of token {i} is not finite ({})",
                logits[i]
            );
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let top = order
            .iter()
            .take(self.top)
            .map(|&i| (i as u32, logits[i]))
            .collect();
        let bounds = out.final_token_boundaries.unwrap(); // [L+1, 1, hidden]
        let [n_b, _, hidden] = bounds.dims();
        let flat = to_f32_vec(bounds)?;
        let boundaries = (0..n_b)
            .map(|l| BoundarySummary {
                l,
                first8: flat[l * hidden..l * hidden + hidden.min(8)].to_vec(),
            })
            .collect();
        Ok(ForwardReport {
            token_ids: ids,
            top,
            boundaries,
        })
    }
}
