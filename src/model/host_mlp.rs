//! The SwiGLU gate computed on the host for CPU inference (flex in f32): silu(gate) * up in one
//! pass over both projections' outputs, with the vectorised `exp` of the host attention and on
//! rayon's pool. Burn's flex runs SiLU and the product as separate element-wise passes on the
//! calling thread with libm's scalar `exp`.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rayon::prelude::*;

use super::host_attention::{exp_f32, host_values};

/// Whether `silu_mul` serves these tensors: flex (not under autodiff) in f32.
pub fn usable<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    x.dtype() == DType::F32 && B::name(&x.device()) == "flex"
}

/// silu(gate) * up, both [..., n] of the same shape.
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    let device = gate.device();
    let shape = gate.shape();
    let mut g = host_values(gate);
    let u = host_values(up);
    assert_eq!(g.len(), u.len(), "gate and up of one shape");
    g.par_chunks_mut(1 << 14)
        .zip(u.par_chunks(1 << 14))
        .for_each(|(g, u)| silu_mul_slice(g, u));
    Tensor::from_data(TensorData::new(g, shape), &device)
}

/// g <- silu(g) * u element-wise.
fn silu_mul_slice(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for
            return unsafe { silu_mul_avx2(g, u) };
        }
    }
    silu_mul_portable(g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
    silu_mul_portable(g, u)
}

#[inline(always)]
fn silu_mul_portable(g: &mut [f32], u: &[f32]) {
    for (x, &y) in g.iter_mut().zip(u) {
        // sigmoid(x) from t = exp(-|x|) <= 1, which never overflows
        let t = exp_f32(-x.abs());
        let sigmoid = if *x >= 0.0 {
            1.0 / (1.0 + t)
        } else {
            t / (1.0 + t)
        };
        *x = *x * sigmoid * y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_times_up_matches_the_definition() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        let us: Vec<f32> = xs.iter().map(|x| 1.0 + x * 0.01).collect();
        let mut got = xs.clone();
        silu_mul_slice(&mut got, &us);
        for ((x, u), g) in xs.iter().zip(&us).zip(&got) {
            let (x, u) = (*x as f64, *u as f64);
            let want = x / (1.0 + (-x).exp()) * u;
            assert!(
                (*g as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({x}) * {u}: {g} vs {want}"
            );
        }
        let mut extreme = vec![-200.0f32, 200.0, 0.0];
        silu_mul_slice(&mut extreme, &[1.0, 1.0, 1.0]);
        assert_eq!(extreme, vec![0.0, 200.0, 0.0]);
    }
}
