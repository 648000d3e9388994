//! A model's parts and the autodiff graph: detached copies (the same tensors, shared, not
//! copied, cut from the graph and untracked, so that a pass over them records nothing for a
//! backward pass; Burn's `detach` keeps a trained leaf tracked, `set_require_grad(false)` does
//! not)
//! and whether a part holds a tensor that takes a gradient. Gradient checkpointing
//! (heal::gradients) runs its first forward pass over detached layers and recomputes each
//! block that tracks gradients with its trainable tensors attached.

use burn::tensor::backend::Backend;

use super::linear::{BaseWeight, Linear};
use super::lora::LoraAdapter;
use super::transformer::{DecoderLayer, Norm};

impl<B: Backend> Norm<B> {
    pub fn detached(&self) -> Self {
        Self {
            weight: self.weight.clone().set_require_grad(false),
            bias: self.bias.clone().map(|b| b.set_require_grad(false)),
        }
    }
}

impl<B: Backend> Norm<B> {
    fn tracks_gradients(&self) -> bool {
        self.weight.is_require_grad() || self.bias.as_ref().is_some_and(|b| b.is_require_grad())
    }
}

impl<B: Backend> LoraAdapter<B> {
    /// The adapter with its factors detached; dropout (training flag, seed, first row) as it
    /// was, so that a detached pass draws the masks the recomputation draws.
    pub fn detached(&self) -> Self {
        Self {
            a: self.a.clone().set_require_grad(false),
            b: self.b.clone().set_require_grad(false),
            ..self.clone()
        }
    }
}

impl<B: Backend> Linear<B> {
    fn tracks_gradients(&self) -> bool {
        matches!(&self.base, BaseWeight::Dense(w) if w.is_require_grad())
            || self.bias.as_ref().is_some_and(|b| b.is_require_grad())
            || self
                .lora
                .as_ref()
                .is_some_and(|l| l.a.is_require_grad() || l.b.is_require_grad())
    }

    pub fn detached(&self) -> Self {
        Self {
            base: match &self.base {
                BaseWeight::Dense(w) => BaseWeight::Dense(w.clone().set_require_grad(false)),
                // codes, absmax and code book are never trained
                BaseWeight::Nf4(q) => BaseWeight::Nf4(q.clone()),
                // read from the file at each use, never trained
                BaseWeight::Streamed(w) => BaseWeight::Streamed(w.clone()),
            },
            bias: self.bias.clone().map(|b| b.set_require_grad(false)),
            lora: self.lora.as_ref().map(LoraAdapter::detached),
        }
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// Whether any tensor of the layer takes a gradient.
    pub fn tracks_gradients(&self) -> bool {
        let norms = [
            &self.input_norm,
            &self.pre_mlp_norm,
            &self.attn_out_norm,
            &self.mlp_out_norm,
        ];
        let linears = [
            Some(&self.q_proj),
            Some(&self.k_proj),
            Some(&self.v_proj),
            Some(&self.o_proj),
            self.gate_proj.as_ref(),
            Some(&self.up_proj),
            Some(&self.down_proj),
        ];
        norms
            .iter()
            .flat_map(|n| n.as_ref())
            .any(Norm::tracks_gradients)
            || linears.iter().flatten().any(|l| l.tracks_gradients())
            || [&self.q_norm, &self.k_norm]
                .iter()
                .flat_map(|t| t.as_ref())
                .any(|t| t.is_require_grad())
    }

    /// The layer with every tensor detached (the flags and indices as they are).
    pub fn detached(&self) -> Self {
        let norm = |n: &Option<Norm<B>>| n.as_ref().map(Norm::detached);
        Self {
            input_norm: norm(&self.input_norm),
            q_proj: self.q_proj.detached(),
            k_proj: self.k_proj.detached(),
            v_proj: self.v_proj.detached(),
            o_proj: self.o_proj.detached(),
            q_norm: self.q_norm.clone().map(|t| t.set_require_grad(false)),
            k_norm: self.k_norm.clone().map(|t| t.set_require_grad(false)),
            pre_mlp_norm: norm(&self.pre_mlp_norm),
            attn_out_norm: norm(&self.attn_out_norm),
            mlp_out_norm: norm(&self.mlp_out_norm),
            gate_proj: self.gate_proj.as_ref().map(Linear::detached),
            up_proj: self.up_proj.detached(),
            down_proj: self.down_proj.detached(),
            ..self.clone()
        }
    }
}
