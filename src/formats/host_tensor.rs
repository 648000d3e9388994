//! A plain f32 tensor in host memory, row-major: the common currency between weight formats
//! (safetensors, GGUF) and the Burn model, and the place where layout fixes happen once
//! (transposes, q/k RoPE permutation, layer selection).

use std::path::Path;

use anyhow::{bail, Result};

/// A row-major matrix [rows, cols] transposed to [cols, rows].
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = data[i * cols + j];
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(data.len()) {
            let n = n.map_or("an overflowing number of".to_string(), |n| n.to_string());
            bail!("shape {shape:?} needs {n} values, got {}", data.len());
        }
        Ok(Self { shape, data })
    }

    /// Transpose a matrix [r, c] -> [c, r].
    /// An error naming the tensor and `origin` (its file) if any value is NaN or infinite.
    pub fn check_finite(&self, name: &str, origin: &Path) -> Result<()> {
        if let Some(i) = self.data.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor {name} holds a non-finite value ({} at flat index {i} of shape {:?})",
                origin.display(),
                self.data[i],
                self.shape
            );
        }
        Ok(())
    }

    pub fn transposed(&self) -> Self {
        assert_eq!(self.shape.len(), 2, "transposed() needs a matrix");
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self {
            shape: vec![c, r],
            data,
        }
    }

    /// Undo llama.cpp's q/k permutation for the interleaved RoPE layout.
    ///
    /// llama.cpp's converter rewrites each head's rows [out = n_head * head_dim, in] from the
    /// half-split order (row i < head_dim/2 pairs with row i + head_dim/2) to the interleaved order
    /// (rows 2i and 2i+1 pair): w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2). The inverse
    /// maps interleaved row 2i + s back to half-split row s * head_dim/2 + i.
    pub fn unpermute_rope_rows(&self, n_head: usize) -> Result<Self> {
        if self.shape.len() != 2 {
            bail!(
                "q/k un-permutation needs a matrix, got shape {:?}",
                self.shape
            );
        }
        let (rows, cols) = (self.shape[0], self.shape[1]);
        if n_head == 0 || rows % (2 * n_head) != 0 {
            bail!("q/k un-permutation: {rows} rows do not split into {n_head} heads of even size");
        }
        let head_dim = rows / n_head;
        let half = head_dim / 2;
        let mut data = vec![0.0; rows * cols];
        for h in 0..n_head {
            for i in 0..half {
                for s in 0..2 {
                    let src = h * head_dim + 2 * i + s;
                    let dst = h * head_dim + s * half + i;
                    data[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&self.data[src * cols..(src + 1) * cols]);
                }
            }
        }
        Ok(Self {
            shape: self.shape.clone(),
            data,
        })
    }

    /// Same un-permutation for a bias vector (Qwen2-style q/k biases in GGUF).
    pub fn unpermute_rope_vector(&self, n_head: usize) -> Result<Self> {
        let as_matrix = Self {
            shape: vec![self.data.len(), 1],
            data: self.data.clone(),
        };
        let m = as_matrix.unpermute_rope_rows(n_head)?;
        Ok(Self {
            shape: self.shape.clone(),
            data: m.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(out, in)
        let (n_head, hd, cols) = (2, 4, 3);
        let rows = n_head * hd;
        let orig: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0.0; rows * cols];
        for h in 0..n_head {
            for s in 0..2 {
                for i in 0..hd / 2 {
                    // source index in [n_head, 2, hd/2] order, destination in [n_head, hd/2, 2]
                    let src = h * hd + s * hd / 2 + i;
                    let dst = h * hd + i * 2 + s;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&orig[src * cols..(src + 1) * cols]);
                }
            }
        }
        let t = HostTensor::new(vec![rows, cols], permuted).unwrap();
        assert_eq!(t.unpermute_rope_rows(n_head).unwrap().data, orig);
    }

    #[test]
    fn transpose() {
        let t = HostTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(t.transposed().data, vec![1., 4., 2., 5., 3., 6.]);
    }
}
