//! The MLP's activations computed on the host for CPU inference (flex in f32): SwiGLU's
//! silu(gate) * up, GeGLU's gelu_tanh(gate) * up (Gemma) and gelu_tanh alone (Phi), each in one
//! pass over the projections' outputs, with the vectorised `exp` of the host attention and on
//! rayon's pool. Burn's flex runs the activation (GELU: a cube by `powf`, `tanh`, four products
//! and sums) and the product as separate element-wise passes on the calling thread with libm's
//! scalar functions.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rayon::prelude::*;

use super::host_attention::{exp_f32, host_values};

/// Whether `silu_mul` serves these tensors: flex (not under autodiff) in f32.
pub fn usable<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    x.dtype() == DType::F32 && B::name(&x.device()) == "flex"
}

/// The gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// silu(x) = x sigmoid(x)
    Silu,
    /// GELU's tanh approximation (PyTorch's `gelu(approximate="tanh")`, `gelu_new`):
    /// 0.5 x (1 + tanh(z)) with z = sqrt(2/pi) (x + 0.044715 x^3), computed as x sigmoid(2z)
    GeluTanh,
}

/// act(gate) * up, both [..., n] of the same shape.
pub fn act_mul<B: Backend, const D: usize>(
    act: Activation,
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    let device = gate.device();
    let shape = gate.shape();
    let mut g = host_values(gate);
    let u = host_values(up);
    assert_eq!(g.len(), u.len(), "gate and up of one shape");
    g.par_chunks_mut(1 << 14)
        .zip(u.par_chunks(1 << 14))
        .for_each(|(g, u)| act_mul_slice(act, g, Some(u)));
    Tensor::from_data(TensorData::new(g, shape), &device)
}

/// act(x), [..., n].
pub fn act<B: Backend, const D: usize>(act: Activation, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    let shape = x.shape();
    let mut g = host_values(x);
    g.par_chunks_mut(1 << 14)
        .for_each(|g| act_mul_slice(act, g, None));
    Tensor::from_data(TensorData::new(g, shape), &device)
}

/// g <- act(g) * u element-wise (act(g) alone without `u`).
fn act_mul_slice(act: Activation, g: &mut [f32], u: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for
            return unsafe { act_mul_avx2(act, g, u) };
        }
    }
    act_mul_portable(act, g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn act_mul_avx2(act: Activation, g: &mut [f32], u: Option<&[f32]>) {
    act_mul_portable(act, g, u)
}

#[inline(always)]
fn act_mul_portable(act: Activation, g: &mut [f32], u: Option<&[f32]>) {
    match (act, u) {
        (Activation::Silu, Some(u)) => {
            for (x, &y) in g.iter_mut().zip(u) {
                *x = *x * sigmoid(*x) * y;
            }
        }
        (Activation::Silu, None) => g.iter_mut().for_each(|x| *x *= sigmoid(*x)),
        (Activation::GeluTanh, Some(u)) => {
            for (x, &y) in g.iter_mut().zip(u) {
                *x = gelu_tanh(*x) * y;
            }
        }
        (Activation::GeluTanh, None) => g.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
    }
}

/// sigmoid(x) from t = exp(-|x|) <= 1, which never overflows
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let t = exp_f32(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + t)
    } else {
        t / (1.0 + t)
    }
}

/// 0.5 x (1 + tanh(z)) = x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3)
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let two_z = 2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x * sigmoid(two_z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_times_up_matches_the_definition() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        let us: Vec<f32> = xs.iter().map(|x| 1.0 + x * 0.01).collect();
        let mut got = xs.clone();
        act_mul_slice(Activation::Silu, &mut got, Some(&us));
        for ((x, u), g) in xs.iter().zip(&us).zip(&got) {
            let (x, u) = (*x as f64, *u as f64);
            let want = x / (1.0 + (-x).exp()) * u;
            assert!(
                (*g as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({x}) * {u}: {g} vs {want}"
            );
        }
        let mut extreme = vec![-200.0f32, 200.0, 0.0];
        act_mul_slice(Activation::Silu, &mut extreme, Some(&[1.0, 1.0, 1.0]));
        assert_eq!(extreme, vec![0.0, 200.0, 0.0]);
    }

    /// PyTorch's gelu(approximate="tanh") in f64, as written there
    fn gelu_tanh_f64(x: f64) -> f64 {
        let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
        0.5 * x * (1.0 + z.tanh())
    }

    #[test]
    fn gelu_tanh_alone_and_times_up_match_the_definition() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.01).collect();
        let us: Vec<f32> = xs.iter().map(|x| 1.0 - x * 0.02).collect();
        let mut alone = xs.clone();
        act_mul_slice(Activation::GeluTanh, &mut alone, None);
        let mut gated = xs.clone();
        act_mul_slice(Activation::GeluTanh, &mut gated, Some(&us));
        for (((x, u), a), g) in xs.iter().zip(&us).zip(&alone).zip(&gated) {
            let want = gelu_tanh_f64(*x as f64);
            // absolute near zero, where gelu crosses it (f32 rounding of x itself: ~1e-7 x)
            let tol = 1e-6 * want.abs().max(1e-2);
            assert!(
                (*a as f64 - want).abs() <= tol,
                "gelu_tanh({x}): {a} vs {want}"
            );
            let want = want * *u as f64;
            let tol = 1e-6 * want.abs().max(1e-2);
            assert!(
                (*g as f64 - want).abs() <= tol,
                "gelu_tanh({x}) * {u}: {g} vs {want}"
            );
        }
        let mut extreme = vec![-200.0f32, 200.0, 0.0, f32::MIN_POSITIVE];
        act_mul_slice(Activation::GeluTanh, &mut extreme, None);
        assert_eq!(extreme, vec![-0.0, 200.0, 0.0, f32::MIN_POSITIVE * 0.5]);
    }
}
