//! Reading Burn tensors back to the host.

use anyhow::Result;
use burn::tensor::{backend::Backend, DType, Tensor};

/// Read a float tensor back to the host as f32, whatever its compute dtype.
pub fn to_f32_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    let data = t.cast(DType::F32).into_data();
    data.to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor back: {e:?}"))
}
