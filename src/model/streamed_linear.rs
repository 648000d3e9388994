//! A projection weight streamed from the model file (layer streaming): the mapped file holds
//! it; at each use it is read, converted to the compute precision on the device for its matmul
//! and dropped after, and the file pages the read touched are released. Only the running
//! block's weights are then resident, and the results are those of the resident model, bit for
//! bit (the same conversion of the same bytes).

use std::sync::Arc;

use anyhow::Result;
use burn::tensor::{backend::Backend, Tensor};

/// Reads the weight, [in, out], on the device.
pub type Fetch<B> = Arc<dyn Fn() -> Result<Tensor<B, 2>> + Send + Sync>;

#[derive(Clone)]
pub struct StreamedWeight<B: Backend> {
    fetch: Fetch<B>,
    /// [in, out]
    pub shape: [usize; 2],
}

impl<B: Backend> std::fmt::Debug for StreamedWeight<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedWeight")
            .field("shape", &self.shape)
            .finish()
    }
}

impl<B: Backend> StreamedWeight<B> {
    /// `fetch` must have succeeded once already (the loader reads and checks every streamed
    /// weight when it builds the model), so that a later read fails only if the file changes
    /// under a running job.
    pub fn new(fetch: Fetch<B>, shape: [usize; 2]) -> Self {
        Self { fetch, shape }
    }

    /// This weight with a low-rank update merged at each read: W + (a [in, r] b [r, out]) *
    /// scale, the operations of a resident merge (`surgery::merge_lora`).
    pub fn plus_low_rank(&self, a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64) -> Self {
        let inner = self.fetch.clone();
        Self {
            fetch: Arc::new(move || Ok(inner()? + a.clone().matmul(b.clone()) * scale)),
            shape: self.shape,
        }
    }

    /// The weight [in, out], read from the file now.
    pub fn weight(&self) -> Tensor<B, 2> {
        match (self.fetch)() {
            Ok(w) => w,
            // The bytes were read and checked when the model was built; the model file is in
            // the content-addressed cache, which nothing rewrites while a job holds it.
            Err(e) => {
                panic!("a streamed weight could not be read again from its model file: {e:#}")
            }
        }
    }
}
