//! AdamW with PyTorch's semantics (torch.optim.AdamW, decoupled weight decay), gradient-norm
//! clipping (torch.nn.utils.clip_grad_norm_) and the cosine schedule with linear warmup of
//! transformers' get_cosine_schedule_with_warmup. Parameters are host f32 vectors (the LoRA
//! adapters are small), so state is exact and trivially checkpointed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken.
    pub t: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        Self {
            config,
            t: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One step: p <- p (1 - lr wd); m, v moments; p <- p - lr m_hat / (sqrt(v_hat) + eps).
    pub fn step(&mut self, params: &mut [&mut Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        self.t += 1;
        let c = self.config;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bias1 = 1.0 - c.beta1.powi(self.t as i32);
        let bias2 = 1.0 - c.beta2.powi(self.t as i32);
        let step_size = (lr / bias1) as f32;
        let bias2_sqrt = bias2.sqrt() as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        for (k, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[k], &mut self.v[k]);
            for i in 0..p.len() {
                p[i] *= decay;
                // torch: exp_avg.lerp_(grad, 1 - beta1)
                m[i] += (1.0 - b1) * (g[i] - m[i]);
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = v[i].sqrt() / bias2_sqrt + c.eps as f32;
                p[i] -= step_size * m[i] / denom;
            }
        }
    }
}

/// Global L2 norm of all gradients; scales them to `max_norm` when above it (if max_norm > 0).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let total = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g *= coef as f32;
            }
        }
    }
    total
}

/// Learning-rate multiplier after `step` optimizer steps: linear warmup from 0, then cosine
/// decay to 0 at `total` (transformers' get_cosine_schedule_with_warmup, 0.5 cycles).
pub fn cosine_with_warmup(step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        assert_eq!(cosine_with_warmup(0, 10, 100), 0.0);
        assert_eq!(cosine_with_warmup(5, 10, 100), 0.5);
        assert_eq!(cosine_with_warmup(10, 10, 100), 1.0);
        assert!((cosine_with_warmup(55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(cosine_with_warmup(100, 10, 100).abs() < 1e-12);
    }

    #[test]
    fn first_adamw_step_moves_by_lr() {
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(cfg, &[2]);
        let mut p = vec![1.0f32, -1.0];
        opt.step(&mut [&mut p], &[vec![0.5, -2.0]], 0.1);
        // m_hat / sqrt(v_hat) = sign(g) on the first step
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn clipping() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((g[0][0] - 0.6).abs() < 1e-5 && (g[1][0] - 0.8).abs() < 1e-5);
    }
}
