//! Training-free healing by one linear map (ReplaceMe, Shopkhoev et al., NeurIPS 2025): the
//! dropped block [start, end) is replaced by a d x d map T fitted by least squares so that the
//! last kept layer's MLP output m, mapped by T and added to that layer's residual y, gives the
//! stream the block would have produced: min_T sum_t |m_t T - (x_t(end) - y_t)|^2 over the
//! calibration tokens. T is folded into the MLP's output projection (W' = T^T W, b' = T^T b), so
//! the healed model has exactly the pruned model's parameters.
//!
//! The normal equations (M^T M) T = M^T Z are accumulated in f64 over every real token, from
//! the f32 states of the model, and solved by Cholesky. A selection of several separate runs of
//! layers (ShortGPT's, the greedy one's) gets one map per run, each fitted on the unpruned
//! model's states in the same pass. ReplaceMe's cosine-distance objective
//! has no closed form (the authors fit it with Adam); it is not offered here.

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use nalgebra::DMatrix;

use crate::formats::host_tensor::HostTensor;
use crate::model::readback::to_f32_vec;
use crate::model::{TokenBatch, Transformer};

/// Sums over calibration tokens of the normal equations of min_T |M T - Z|^2, in f64.
#[derive(Debug, Clone)]
pub struct NormalEquations {
    pub dim: usize,
    /// M^T M [d, d]
    gram: DMatrix<f64>,
    /// M^T Z [d, d]
    cross: DMatrix<f64>,
    /// sum |z|^2 and sum |m - z|^2 (the error of plain pruning, T = I)
    target_sq: f64,
    identity_sq: f64,
    pub tokens: u64,
}

/// The fitted map and how well it fits.
#[derive(Debug, Clone)]
pub struct LinearFit {
    pub dim: usize,
    /// T [d, d], row-major: m [1, d] -> m T.
    pub t: Vec<f64>,
    pub tokens: u64,
    /// Mean squared error per token of plain pruning (T = I) and of the fitted map.
    pub mse_pruned: f64,
    pub mse_fitted: f64,
}

impl NormalEquations {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            gram: DMatrix::zeros(dim, dim),
            cross: DMatrix::zeros(dim, dim),
            target_sq: 0.0,
            identity_sq: 0.0,
            tokens: 0,
        }
    }

    /// Add `rows` tokens: m and z row-major [rows, d].
    pub fn add(&mut self, m: &[f32], z: &[f32], rows: usize) {
        let d = self.dim;
        assert_eq!(m.len(), rows * d, "m is [rows, d]");
        assert_eq!(z.len(), rows * d, "z is [rows, d]");
        if rows == 0 {
            return;
        }
        // row-major [rows, d] read column-major is the transpose [d, rows]
        let mt = DMatrix::from_iterator(d, rows, m.iter().map(|&x| x as f64));
        let zt = DMatrix::from_iterator(d, rows, z.iter().map(|&x| x as f64));
        let m_rows = mt.transpose(); // [rows, d]
        self.gram.gemm(1.0, &mt, &m_rows, 1.0);
        self.cross.gemm(1.0, &mt, &zt.transpose(), 1.0);
        self.target_sq += zt.norm_squared();
        self.identity_sq += (&mt - &zt).norm_squared();
        self.tokens += rows as u64;
    }

    /// Solve (M^T M) T = M^T Z.
    pub fn solve(&self) -> Result<LinearFit> {
        let d = self.dim;
        if (self.tokens as usize) < d {
            bail!(
                "{} calibration tokens cannot determine a {d} x {d} map: use at least {d} (more windows or longer ones)",
                self.tokens
            );
        }
        let chol = self.gram.clone().cholesky().context(
            "the MLP outputs of the calibration tokens span fewer than hidden_size directions \
             (M^T M is singular); use more or more varied calibration text",
        )?;
        let t = chol.solve(&self.cross); // [d, d]
                                         // at the optimum |MT - Z|^2 = |Z|^2 - tr(T^T M^T Z)
        let explained: f64 = t.component_mul(&self.cross).sum();
        let n = self.tokens as f64;
        let mut row_major = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                row_major[i * d + j] = t[(i, j)];
            }
        }
        Ok(LinearFit {
            dim: d,
            t: row_major,
            tokens: self.tokens,
            mse_pruned: self.identity_sq / n,
            mse_fitted: (self.target_sq - explained).max(0.0) / n,
        })
    }
}

impl LinearFit {
    /// Fold T into an output projection stored [out = d, in] (Hugging Face layout): W' = T^T W.
    pub fn fold_weight(&self, w: &HostTensor) -> Result<HostTensor> {
        let d = self.dim;
        if w.shape.len() != 2 || w.shape[0] != d {
            bail!(
                "the MLP output projection has shape {:?}, expected [{d}, in]",
                w.shape
            );
        }
        let inner = w.shape[1];
        let wm = DMatrix::from_iterator(inner, d, w.data.iter().map(|&x| x as f64)); // W^T [in, d]
        let t = DMatrix::from_row_slice(d, d, &self.t);
        let folded = wm * t; // (W^T T)^T = T^T W, column-major [in, d] = row-major [d, in]
        HostTensor::new(w.shape.clone(), folded.iter().map(|&x| x as f32).collect())
    }

    /// Fold T into the projection's bias [d]: b' = T^T b.
    pub fn fold_bias(&self, b: &HostTensor) -> Result<HostTensor> {
        let d = self.dim;
        if b.shape != [d] {
            bail!(
                "the MLP output bias has shape {:?}, expected [{d}]",
                b.shape
            );
        }
        let t = DMatrix::from_row_slice(d, d, &self.t);
        let bv = DMatrix::from_iterator(1, d, b.data.iter().map(|&x| x as f64));
        let folded = bv * t; // [1, d]
        HostTensor::new(vec![d], folded.iter().map(|&x| x as f32).collect())
    }
}

/// The maximal contiguous runs [start, end) of a sorted list of dropped layers.
pub fn contiguous_runs(dropped: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &l in dropped {
        match runs.last_mut() {
            Some((_, end)) if *end == l => *end += 1,
            _ => runs.push((l, l + 1)),
        }
    }
    runs
}

/// Accumulate, in one pass of the unpruned model over the real tokens of `batch`, the normal
/// equations of each dropped block [start, end) of `blocks` (ascending, disjoint, separated by
/// kept layers; indices of the model as built, which must hold layers 0..the last end): m = MLP
/// output of layer start - 1, z = x(end) - y, y = that layer's residual before its MLP joins it.
pub fn accumulate<B: Backend>(
    model: &Transformer<B>,
    batch: &TokenBatch,
    blocks: &[(usize, usize)],
    eqs: &mut [NormalEquations],
) -> Result<()> {
    assert_eq!(blocks.len(), eqs.len(), "one set of equations per block");
    let mut prev_end = 0;
    for &(start, end) in blocks {
        if start == 0 {
            bail!("the block [0, {end}) starts at layer 0: there is no kept layer before it to fold a map into");
        }
        if start >= end || end > model.num_layers() || start <= prev_end {
            bail!(
                "block [{start}, {end}) is not a block of the model's {} layers after the previous one (blocks must be ascending and separated by a kept layer)",
                model.num_layers()
            );
        }
        prev_end = end;
    }
    let ids = batch.to_tensor::<B>(&model.device);
    let mut x = model.embed(ids); // x(0) [b, t, d]
    let [b, t, d] = x.dims();
    let rope = model.rope_for(b, t);
    let last = blocks.last().map(|b| b.1).unwrap_or(0);
    // (y, m) of the block whose end is still ahead
    let mut open: Option<(usize, Tensor<B, 3>, Tensor<B, 3>)> = None;
    for l in 0..=last {
        if let Some((k, y, m)) = open.take_if(|(k, _, _)| blocks[*k].1 == l) {
            let z = x.clone() - y; // x(end) - y
            let m = to_f32_vec(m)?; // [b, t, d]
            let z = to_f32_vec(z)?;
            for (row, &len) in batch.lengths.iter().enumerate() {
                let range = row * t * d..(row * t + len) * d;
                eqs[k].add(&m[range.clone()], &z[range], len);
            }
        }
        if l == last {
            break;
        }
        let layer = &model.layers[l];
        x = match blocks.iter().position(|&(start, _)| start == l + 1) {
            Some(k) => {
                let (y, m) = layer.forward_parts(x, &model.config, &rope).with_context(|| {
                    format!(
                        "{:?} layers pass the MLP output through a norm before the residual add: a linear map cannot be folded into the output projection",
                        model.config.architecture
                    )
                })?;
                let next = y.clone() + m.clone();
                open = Some((k, y, m));
                next
            }
            None => layer.forward(x, &model.config, &rope),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_map_and_folds_it() {
        // z = m T0 exactly: the fit returns T0 and zero error
        let d = 3;
        let t0 = [1.0, 0.5, 0.0, -0.25, 2.0, 0.1, 0.0, 0.3, 0.7];
        let m: Vec<f32> = (0..8 * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let z: Vec<f32> = m
            .chunks(d)
            .flat_map(|r| {
                (0..d)
                    .map(|j| (0..d).map(|k| r[k] as f64 * t0[k * d + j]).sum::<f64>() as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut eq = NormalEquations::new(d);
        eq.add(&m[..4 * d], &z[..4 * d], 4);
        eq.add(&m[4 * d..], &z[4 * d..], 4);
        let fit = eq.solve().unwrap();
        for (a, b) in fit.t.iter().zip(t0) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(fit.mse_fitted < 1e-9 && fit.mse_pruned > 0.1);
        // W [d, in=2]; folded m-space: (h W^T) T = h (T^T W)^T
        let w = HostTensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let folded = fit.fold_weight(&w).unwrap();
        for o in 0..d {
            for i in 0..2 {
                let want: f64 = (0..d)
                    .map(|k| t0[k * d + o] * w.data[k * 2 + i] as f64)
                    .sum();
                assert!((folded.data[o * 2 + i] as f64 - want).abs() < 1e-4);
            }
        }
        let b = HostTensor::new(vec![3], vec![1.0, -1.0, 0.5]).unwrap();
        let fb = fit.fold_bias(&b).unwrap();
        for o in 0..d {
            let want: f64 = (0..d).map(|k| t0[k * d + o] * b.data[k] as f64).sum();
            assert!((fb.data[o] as f64 - want).abs() < 1e-4);
        }
    }

    #[test]
    fn runs_of_dropped_layers() {
        assert_eq!(contiguous_runs(&[2, 3, 5, 7, 8]), [(2, 4), (5, 6), (7, 9)]);
        assert_eq!(contiguous_runs(&[1]), [(1, 2)]);
        assert!(contiguous_runs(&[]).is_empty());
    }

    #[test]
    fn too_few_tokens_is_an_error() {
        let mut eq = NormalEquations::new(4);
        eq.add(&[1.0; 8], &[1.0; 8], 2);
        let e = eq.solve().unwrap_err().to_string();
        assert!(e.contains("2 calibration tokens"), "{e}");
    }
}
