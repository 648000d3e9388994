//! The LM head and the mean next-token cross-entropy of a training batch computed on the host,
//! with a hand-written backward, for CPU training (flex in f32) where the head is frozen (LoRA
//! healing). Burn's autodiff keeps the logits [rows, vocab] and their log-softmax as graph
//! tensors (for 4 x 256 tokens of SmolLM2's 49152-token vocabulary, 200 MB each, several per
//! graph, every one freshly allocated and page-faulted, and libm's scalar `exp` over each). Here
//! the head runs on blocks of rows of a few MB: the logits z = h W^T (+ bias, Gemma's final
//! softcap), each row's log-sum-exp and loss, and at once the gradient dL/dh = (softmax(z) -
//! onehot(target)) W / n, so the autodiff graph sees only h. The partial fine-tune (which trains
//! the head) and GPU backends keep the head in the graph (`usable`).

use anyhow::{ensure, Result};
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    DType,
};
use rayon::prelude::*;

use crate::model::host_attention::{exp_minus, host_values, max_of};
use crate::model::Transformer;

/// Logits per block of rows: at most this many bytes (and 8 to 256 rows).
const BLOCK_BYTES: usize = 16 << 20;

/// Whether the head's loss runs on the host for this model: flex in f32, the head frozen.
/// (`is_require_grad` is true for the leaves that are trained only; a tied head is the
/// transposed embedding, so the embedding is asked too.)
pub fn usable<B: AutodiffBackend>(model: &Transformer<B>) -> bool {
    model.dtype == DType::F32
        && B::InnerBackend::name(&model.device) == "flex"
        && !model.lm_head.is_require_grad()
        && !model.embed_tokens.is_require_grad()
        && model
            .lm_head_bias
            .as_ref()
            .is_none_or(|b| !b.is_require_grad())
}

/// The frozen head on the host.
pub struct HostHead {
    /// [vocab, hidden]: row j gives logit j
    pub weight: HeadWeight,
    /// [vocab]
    pub bias: Option<Vec<f32>>,
    pub vocab: usize,
    pub hidden: usize,
    /// Gemma's final logit softcapping (final_logit_softcapping): z <- cap tanh(z / cap)
    pub softcap: Option<f32>,
}

/// The head's weight values: the model's own flex storage where it is contiguous in [vocab,
/// hidden] order (no copy: the head of SmolLM2 is 113 MB, Gemma-3's 671 MB, and every
/// micro-step of every worker reads it), else a copy.
pub enum HeadWeight {
    #[cfg(feature = "flex")]
    Shared(burn::backend::flex::FlexTensor),
    Owned(Vec<f32>),
}

impl HeadWeight {
    /// t [vocab, hidden] on the host.
    fn of<B: Backend>(t: burn::tensor::Tensor<B, 2>) -> Self {
        #[cfg(feature = "flex")]
        {
            let primitive: Box<dyn std::any::Any> = Box::new(t.clone().into_primitive().tensor());
            if let Ok(flex) = primitive.downcast::<burn::backend::flex::FlexTensor>() {
                if flex.as_slice::<f32>().is_some() {
                    return HeadWeight::Shared(*flex);
                }
            }
        }
        HeadWeight::Owned(host_values(t))
    }

    pub fn values(&self) -> &[f32] {
        match self {
            #[cfg(feature = "flex")]
            HeadWeight::Shared(t) => t.as_slice::<f32>().expect("checked contiguous f32"),
            HeadWeight::Owned(v) => v,
        }
    }
}

impl HostHead {
    /// The model's head (its weight is [hidden, vocab] in the model, a transposed view of the
    /// embedding where they are tied; here [vocab, hidden], contiguous).
    pub fn of<B: AutodiffBackend>(model: &Transformer<B>) -> Self {
        let [hidden, vocab] = model.lm_head.dims();
        Self {
            weight: HeadWeight::of(model.lm_head.clone().transpose().inner()),
            bias: model.lm_head_bias.clone().map(|b| host_values(b.inner())),
            vocab,
            hidden,
            softcap: model.config.final_logit_softcapping.map(|c| c as f32),
        }
    }

    /// The mean cross-entropy of predicting `targets` [n] from the final hidden states h [n,
    /// hidden] (after the final norm), and the gradient of `scale` times it w.r.t. h [n, hidden].
    /// Row blocks run on rayon's pool.
    pub fn cross_entropy(&self, h: &[f32], targets: &[u32], scale: f32) -> Result<(f64, Vec<f32>)> {
        let (n, d) = (targets.len(), self.hidden);
        ensure!(n > 0, "no positions to score");
        ensure!(h.len() == n * d, "{} hidden values for {n} x {d}", h.len());
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= self.vocab) {
            anyhow::bail!("target token {t} outside the vocabulary of {}", self.vocab);
        }
        let rows = (BLOCK_BYTES / (4 * self.vocab)).clamp(8, 256);
        let mut dh = vec![0f32; n * d];
        let g_scale = scale / n as f32;
        // per block, summed in order: the same value whatever the threads did
        let block_losses: Vec<f64> = dh
            .par_chunks_mut(rows * d)
            .zip(h.par_chunks(rows * d))
            .zip(targets.par_chunks(rows))
            .map(|((dh, h), t)| self.block(h, t, dh, g_scale))
            .collect();
        Ok((block_losses.iter().sum::<f64>() / n as f64, dh))
    }

    /// One block of m rows: returns the sum of their losses, writes g_scale * dL_sum/dh into dh.
    fn block(&self, h: &[f32], targets: &[u32], dh: &mut [f32], g_scale: f32) -> f64 {
        let (m, v, d) = (targets.len(), self.vocab, self.hidden);
        let mut z = vec![0f32; m * v]; // [m, vocab]
        let w = self.weight.values().as_ptr();
        // SAFETY: z is [m, v], h [m, d], weight [v, d], all row-major; column j of weight^T is
        // row j of weight
        unsafe { product(z.as_mut_ptr(), m, v, d, h.as_ptr(), d, (w, d, 1)) };
        let mut loss = 0f64;
        for (row, &t) in z.chunks_exact_mut(v).zip(targets) {
            loss += self.row_loss_and_gradient(row, t as usize, g_scale);
        }
        // dh [m, d] = G [m, v] x weight [v, d]
        // SAFETY: the shapes as above
        unsafe { product(dh.as_mut_ptr(), m, d, v, z.as_ptr(), v, (w, 1, d)) };
        loss
    }

    /// One row of logits z -> its loss -log softmax(z)[t]; z becomes g_scale * (softmax(z) -
    /// onehot(t)), through the softcap's derivative where there is one.
    fn row_loss_and_gradient(&self, z: &mut [f32], t: usize, g_scale: f32) -> f64 {
        if let Some(b) = &self.bias {
            z.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        // d(cap tanh(x / cap))/dx = 1 - tanh^2 = 1 - (capped / cap)^2
        let softcap_slope = self.softcap.map(|cap| {
            z.iter_mut()
                .map(|x| {
                    let s = (*x / cap).tanh();
                    *x = cap * s;
                    1.0 - s * s
                })
                .collect::<Vec<f32>>()
        });
        let max = max_of(z);
        let zt = z[t];
        let sum = exp_minus(z, max); // z <- exp(z - max)
        let loss = max as f64 + (sum as f64).ln() - zt as f64;
        let inv = g_scale / sum;
        z.iter_mut().for_each(|x| *x *= inv);
        z[t] -= g_scale;
        if let Some(slope) = softcap_slope {
            z.iter_mut().zip(&slope).for_each(|(x, s)| *x *= s);
        }
        loss
    }
}

/// dst [m, n] (row-major) = lhs [m, k] (row stride lhs_rs) x rhs [k, n], rhs given as (pointer,
/// column stride, row stride); on the calling thread (the row blocks are rayon's tasks).
///
/// # Safety
/// The pointers must hold the matrices their shapes and strides describe.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    dst: *mut f32,
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    (rhs, rhs_cs, rhs_rs): (*const f32, usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        n as isize,
        false,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in f64: z = W h + b (softcapped), loss = mean(logsumexp(z) - z_t), and
    /// its gradient w.r.t. h by the chain rule.
    fn naive(head: &HostHead, h: &[f32], targets: &[u32]) -> (f64, Vec<f64>) {
        let (v, d, n) = (head.vocab, head.hidden, targets.len());
        let mut loss = 0.0;
        let mut grad = vec![0f64; n * d];
        for (i, &t) in targets.iter().enumerate() {
            let x = &h[i * d..(i + 1) * d];
            let raw: Vec<f64> = (0..v)
                .map(|j| {
                    let w = &head.weight.values()[j * d..(j + 1) * d];
                    let dot: f64 = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    dot + head.bias.as_ref().map_or(0.0, |b| b[j] as f64)
                })
                .collect();
            let (z, slope): (Vec<f64>, Vec<f64>) = raw
                .iter()
                .map(|&r| match head.softcap {
                    Some(c) => {
                        let s = (r / c as f64).tanh();
                        (c as f64 * s, 1.0 - s * s)
                    }
                    None => (r, 1.0),
                })
                .unzip();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|&a| (a - max).exp()).sum::<f64>().ln();
            loss += lse - z[t as usize];
            for j in 0..v {
                let g = ((z[j] - lse).exp() - if j == t as usize { 1.0 } else { 0.0 }) * slope[j]
                    / n as f64;
                for k in 0..d {
                    grad[i * d + k] += g * head.weight.values()[j * d + k] as f64;
                }
            }
        }
        (loss / n as f64, grad)
    }

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x as f32 / (1u32 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn loss_and_gradient_match_the_definition() {
        // 300 rows: several blocks of rows (vocab 5000: 256 rows a block)
        let (v, d, n) = (5000, 12, 300);
        for (bias, softcap) in [(false, None), (true, None), (true, Some(3.0f32))] {
            let head = HostHead {
                weight: HeadWeight::Owned(values(v * d, 1, 2.0)),
                bias: bias.then(|| values(v, 2, 1.0)),
                vocab: v,
                hidden: d,
                softcap,
            };
            let h = values(n * d, 3, 4.0);
            let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
            let (loss, grad) = head.cross_entropy(&h, &targets, 2.0).unwrap();
            let (want_loss, want_grad) = naive(&head, &h, &targets);
            assert!(
                ((loss - want_loss) / want_loss).abs() < 1e-5,
                "bias {bias} softcap {softcap:?}: loss {loss} vs {want_loss}"
            );
            let err = grad
                .iter()
                .zip(&want_grad)
                .map(|(&a, &b)| (a as f64 - 2.0 * b).abs())
                .fold(0.0, f64::max);
            let size = want_grad.iter().map(|b| b.abs()).fold(0.0, f64::max);
            assert!(
                err < 1e-5 * size,
                "bias {bias} softcap {softcap:?}: gradient error {err:e} (largest {size:e})"
            );
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn a_contiguous_flex_weight_is_read_in_place_and_a_strided_one_copied() {
        type F = burn::backend::Flex;
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let t = burn::tensor::Tensor::<F, 2>::from_data(
            burn::tensor::TensorData::new(values.clone(), [3, 4]),
            &Default::default(),
        );
        // a tied head: the transposed view of the transposed embedding is the embedding itself
        let tied = HeadWeight::of(t.clone().transpose().transpose());
        assert!(matches!(tied, HeadWeight::Shared(_)), "no copy");
        assert_eq!(tied.values(), &values[..]);
        let strided = HeadWeight::of(t.transpose());
        assert!(
            matches!(strided, HeadWeight::Owned(_)),
            "a strided view is copied"
        );
        let want: Vec<f32> = (0..4)
            .flat_map(|j| (0..3).map(move |i| (i * 4 + j) as f32))
            .collect();
        assert_eq!(strided.values(), &want[..]);
    }

    #[test]
    fn targets_outside_the_vocabulary_are_an_error() {
        let head = HostHead {
            weight: HeadWeight::Owned(values(40, 1, 1.0)),
            bias: None,
            vocab: 10,
            hidden: 4,
            softcap: None,
        };
        let err = head
            .cross_entropy(&values(8, 2, 1.0), &[3, 10], 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("target token 10"), "{err}");
    }
}
