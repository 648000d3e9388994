//! The decoder-only transformer of every family (`family::FAMILIES`: Llama-2/3, Mistral, Qwen v1,
//! Qwen2, Qwen3, Phi-2, Gemma-3): embedding, a stack of blocks and a final norm and LM head
//! (possibly tied to the embedding). The block is stated once, in `DecoderLayer::run` (pre-norm
//! attention and MLP, sequential or parallel, with the norms, biases and activations the family's
//! traits give it); every pass composes it. Attention is grouped-query with half-split RoPE.
//!
//! Layer numbering (everywhere in layerprune): layers are 0-based; x(l) is the INPUT of layer l;
//! x(0) is the embedding output and x(L) the last block's output BEFORE the final norm. A block is
//! the half-open range [l, l + n). Layers live in a plain `Vec`, so dropping a block is a list edit.
//!
//! Padding: batches are right-padded. Under the causal mask a real token never attends to a later
//! position, so pad keys (which all come after the real tokens of their row) are never seen by
//! real queries; the padding mask therefore only decides which position is "final" and which
//! positions count in a loss. Pad positions compute garbage that no caller reads. On the host
//! (flex in f32) the evaluation's prefix and suffix passes do not compute padding at all: their
//! rows run packed back to back (`packing::Packing`), and the padding reads back as zeros.

use burn::tensor::{
    activation::{gelu_approximate, silu},
    backend::Backend,
    module::attention,
    module::embedding,
    ops::AttentionModuleOptions,
    Bool, DType, Int, Tensor, TensorData,
};

use super::architecture::Projection;
use super::config::{MlpKind, ModelConfig, NormKind};
use super::host_attention;
use super::host_mlp::{self, Activation};
use super::linear::Linear;
use super::packing::Packing;
use super::rope::{Rope, RopeBatch};

/// A norm's parameters: RMSNorm (weight) or LayerNorm (weight and bias), per `ModelConfig::norm`.
#[derive(Debug, Clone)]
pub struct Norm<B: Backend> {
    /// [size]
    pub weight: Tensor<B, 1>,
    /// [size] (LayerNorm)
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Norm<B> {
    /// x [..., size] -> [..., size]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, cfg: &ModelConfig) -> Tensor<B, D> {
        match cfg.norm {
            NormKind::Rms => rms_norm(x, &self.weight, cfg.rms_norm_eps),
            NormKind::Layer => layer_norm(x, &self.weight, self.bias.as_ref(), cfg.rms_norm_eps),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    /// Index of this layer in the original (unpruned) model.
    pub original_index: usize,
    /// The norm of the block's input; None: attention (and a parallel MLP) read x itself
    /// (OLMo-2 norms only the sublayers' outputs).
    pub input_norm: Option<Norm<B>>,
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// RMSNorms of q and k before RoPE: per head (Qwen3, Gemma-3) [head_dim], or over the
    /// whole projection (OLMo-2, `qk_norm_full_width`) [heads * head_dim]
    pub q_norm: Option<Tensor<B, 1>>,
    pub k_norm: Option<Tensor<B, 1>>,
    /// The norm before the MLP; None: the MLP reads the stream itself (OLMo-2), or, in a
    /// parallel block (`ModelConfig::parallel_block`, Phi), the input norm's output.
    pub pre_mlp_norm: Option<Norm<B>>,
    /// Norms of the attention's and the MLP's outputs before the residual adds (Gemma).
    pub attn_out_norm: Option<Norm<B>>,
    pub mlp_out_norm: Option<Norm<B>>,
    /// Attends within the sliding window only, with the local RoPE tables (kept from the
    /// original layer when pruning).
    pub sliding: bool,
    /// The attention sublayer is dropped (LLM-Drop): the block is x + mlp(norm(x)) and
    /// computes no attention (its keys and values in a prefix cache are zeros, never read).
    pub attention_dropped: bool,
    /// None without a gated MLP (Phi).
    pub gate_proj: Option<Linear<B>>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// The linear projection `p` of this layer, if the architecture has it.
    pub fn projection(&self, p: Projection) -> Option<&Linear<B>> {
        Some(match p {
            Projection::Q => &self.q_proj,
            Projection::K => &self.k_proj,
            Projection::V => &self.v_proj,
            Projection::O => &self.o_proj,
            Projection::Gate => return self.gate_proj.as_ref(),
            Projection::Up => &self.up_proj,
            Projection::Down => &self.down_proj,
        })
    }

    pub fn projection_mut(&mut self, p: Projection) -> Option<&mut Linear<B>> {
        Some(match p {
            Projection::Q => &mut self.q_proj,
            Projection::K => &mut self.k_proj,
            Projection::V => &mut self.v_proj,
            Projection::O => &mut self.o_proj,
            Projection::Gate => return self.gate_proj.as_mut(),
            Projection::Up => &mut self.up_proj,
            Projection::Down => &mut self.down_proj,
        })
    }
}

/// What the caller wants back from a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capture {
    /// Nothing besides what `logits` asks for.
    #[default]
    None,
    /// The final non-pad token's vector at every boundary: [L + 1, batch, hidden].
    FinalToken,
    /// Every position at every boundary: L + 1 tensors of [batch, seq, hidden].
    All,
    /// `All`, plus every position's residual stream after each layer's attention sublayer: L
    /// tensors of [batch, seq, hidden] (`ForwardOutput::attention_residuals`).
    AllWithAttention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    #[default]
    None,
    /// Logits at the final non-pad token only: [batch, vocab].
    FinalToken,
    /// Logits at every position: [batch, seq, vocab].
    All,
}

#[derive(Debug)]
pub struct ForwardOutput<B: Backend> {
    /// [batch, seq, vocab] (Logits::All)
    pub logits: Option<Tensor<B, 3>>,
    /// [batch, vocab] (Logits::FinalToken)
    pub final_logits: Option<Tensor<B, 2>>,
    /// [L + 1, batch, hidden] (Capture::FinalToken)
    pub final_token_boundaries: Option<Tensor<B, 3>>,
    /// L + 1 tensors [batch, seq, hidden] (Capture::All, Capture::AllWithAttention)
    pub boundaries: Option<Vec<Tensor<B, 3>>>,
    /// L tensors [batch, seq, hidden]: x(l) + layer l's attention output
    /// (Capture::AllWithAttention)
    pub attention_residuals: Option<Vec<Tensor<B, 3>>>,
}

#[derive(Debug, Clone)]
pub struct Transformer<B: Backend> {
    pub config: ModelConfig,
    /// [vocab, hidden]
    pub embed_tokens: Tensor<B, 2>,
    pub layers: Vec<DecoderLayer<B>>,
    /// The final norm: [hidden]
    pub norm: Norm<B>,
    /// [hidden, vocab]; for tied embeddings a transposed view of `embed_tokens`.
    pub lm_head: Tensor<B, 2>,
    /// [vocab] (Phi)
    pub lm_head_bias: Option<Tensor<B, 1>>,
    pub rope: Rope,
    pub dtype: DType,
    pub device: B::Device,
}

/// Batch of right-padded token ids plus the real length of each row.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// Row-major [batch, seq]
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// Right-pad `rows` with `pad_id` to the longest row.
    pub fn right_padded(rows: &[Vec<u32>], pad_id: u32) -> Self {
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat(pad_id).take(seq - r.len()));
        }
        Self {
            ids,
            batch: rows.len(),
            seq,
            lengths: rows.iter().map(|r| r.len()).collect(),
        }
    }

    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let data: Vec<i64> = self.ids.iter().map(|&x| x as i64).collect();
        Tensor::from_data(TensorData::new(data, [self.batch, self.seq]), device)
    }
}

pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    // transformers: weight * (x * rsqrt(mean(x^2, -1) + eps)), the normalisation in f32 and
    // cast back to the compute dtype before the weight
    let dtype = x.dtype();
    let xf = to_f32(x);
    let variance = xf.clone().powi_scalar(2).mean_dim(D - 1);
    let x = (xf * (variance + eps).sqrt().recip()).cast(dtype);
    x * weight.clone().unsqueeze::<D>()
}

/// `x` in f32 (a no-op in f32): reductions (norms, log-softmax) run in f32 in every precision.
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    }
}

/// torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias, biased variance, last dim.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    bias: Option<&Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    // in f32, weight and bias included (as torch computes LayerNorm in half precision), then
    // back to the compute dtype
    let dtype = x.dtype();
    let x = to_f32(x);
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let variance = centered.clone().powi_scalar(2).mean_dim(D - 1);
    let y = centered * (variance + eps).sqrt().recip() * to_f32(weight.clone()).unsqueeze::<D>();
    let y = match bias {
        Some(b) => y + to_f32(b.clone()).unsqueeze::<D>(),
        None => y,
    };
    if dtype == DType::F32 {
        y
    } else {
        y.cast(dtype)
    }
}

/// Keys and values of one layer for a cached prefix, after RoPE, in the projections' layout:
/// [batch, len, kv_heads, head_dim].
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

/// Attention over cached keys/values plus the new tokens: batch row r continues cache row
/// `row_of[r]`, whose first `real[r]` keys are real tokens (its new tokens sit at positions
/// real[r] ..); new key j is visible to new query i if j <= i.
pub struct Past<'a, B: Backend> {
    /// The cache's layer: [cache rows, len, kv_heads, head_dim]
    pub kv: &'a CachedKv<B>,
    /// The cached (padded) length.
    pub len: usize,
    pub row_of: &'a [usize],
    pub real: &'a [usize],
    /// The rule as boolean masks, for backends without the host attention path.
    pub masks: Option<&'a PastMasks<B>>,
}

/// One layer of a prefix cache: tensors, or host values where attention runs on the host.
#[derive(Debug, Clone)]
pub enum CachedKv<B: Backend> {
    Device(LayerKv<B>),
    /// k and v, [rows, len, kv_heads, head_dim] each.
    Host {
        k: Vec<f32>,
        v: Vec<f32>,
    },
}

impl<B: Backend> CachedKv<B> {
    /// The layer's keys and values for a cache of `rows` x `len` on `device`, as tensors.
    fn tensors(
        &self,
        rows: usize,
        len: usize,
        cfg: &ModelConfig,
        device: &B::Device,
    ) -> LayerKv<B> {
        match self {
            CachedKv::Device(kv) => kv.clone(),
            CachedKv::Host { k, v } => {
                let shape = [rows, len, cfg.num_key_value_heads, cfg.head_dim];
                let up =
                    |x: &Vec<f32>| Tensor::from_data(TensorData::new(x.clone(), shape), device);
                LayerKv { k: up(k), v: up(v) }
            }
        }
    }
}

/// `Past`'s visibility as masks: [batch, 1, new, cached + new], true = masked out.
pub struct PastMasks<B: Backend> {
    pub mask: Tensor<B, 4, Bool>,
    /// The same with the sliding window applied, for sliding layers (when the model has them).
    pub sliding: Option<Tensor<B, 4, Bool>>,
}

/// Whether the backend's attention reads a mask through broadcast views: flex, and Burn's
/// autodiff (its attention is composed of tensor ops). cubecl's fused attention (burn-cuda,
/// burn-wgpu) reads the mask of (row, head) at (row * heads + head) * stride(1), which a
/// broadcast view does not satisfy, so other backends get a contiguous mask.
fn broadcasts_attention_masks<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name == "flex" || name.starts_with("autodiff")
}

/// Causal attention within a window: query i sees keys j with i - w < j <= i (transformers'
/// sliding-window causal mask; w = t: plain causal). [1, 1, t, t], true = masked out.
fn sliding_mask<B: Backend>(t: usize, w: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let masked: Vec<bool> = (0..t)
        .flat_map(|i| (0..t).map(move |j| j > i || i - j >= w))
        .collect();
    Tensor::from_data(TensorData::new(masked, [1, 1, t, t]), device)
}

/// Positions the decoder layers have computed in this process through `forward_kv` (every
/// inference path): rows x sequence length per layer call, padding included. Benchmarks report
/// it as the work actually done.
static LAYER_POSITIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The count of `LAYER_POSITIONS` so far.
pub fn layer_positions() -> u64 {
    LAYER_POSITIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The residual stream after a block's attention sublayer, as `DecoderLayer::run` leaves it.
enum AfterAttention<B: Backend> {
    Computed(Tensor<B, 3>),
    /// A parallel block adds attention and MLP together: x + attention, formed when asked.
    Parallel {
        x: Tensor<B, 3>,
        attention: Tensor<B, 3>,
    },
}

/// The block's intermediate values that partial passes read (`DecoderLayer::run` with
/// `keep_parts`).
pub struct BlockParts<B: Backend> {
    after_attention: AfterAttention<B>,
    /// The MLP's contribution as it joins the residual stream [batch, seq, hidden] (after
    /// Gemma's output norm).
    pub mlp: Tensor<B, 3>,
}

impl<B: Backend> BlockParts<B> {
    /// The residual stream after the attention sublayer [batch, seq, hidden]: x plus the
    /// attention's contribution (x itself when the attention is dropped).
    pub fn after_attention(&self) -> Tensor<B, 3> {
        match &self.after_attention {
            AfterAttention::Computed(y) => y.clone(),
            AfterAttention::Parallel { x, attention } => x.clone() + attention.clone(),
        }
    }
}

/// One pass of a block (`DecoderLayer::run`).
pub struct BlockPass<B: Backend> {
    /// The block's output [batch, seq, hidden].
    pub out: Tensor<B, 3>,
    /// This call's keys and values [batch, seq, kv_heads, head_dim] (zeros when the attention
    /// is dropped: never read).
    pub kv: LayerKv<B>,
    /// With `keep_parts`.
    pub parts: Option<BlockParts<B>>,
}

impl<B: Backend> DecoderLayer<B> {
    /// The block, the one statement of its dataflow that every pass composes:
    ///   h = input_norm(x)
    ///   a = attn_out_norm(o(attention(h)))          (nothing when the attention is dropped)
    ///   sequential: y = x + a;  out = y + mlp_out_norm(mlp(pre_mlp_norm(y)))
    ///   parallel (Phi): out = x + (a + mlp(h))
    /// where a norm the family lacks is the identity. x [batch, seq, hidden] -> out [batch,
    /// seq, hidden]. With `past`, the new tokens also attend to the cached ones under
    /// `past.mask`; with `packed` (host attention only), x [1, tokens, hidden] holds rows of
    /// these lengths back to back (`packing::Packing`), each attending within its own row.
    /// `keep_parts` also returns the stream after attention and the MLP's contribution.
    pub fn run(
        &self,
        x: Tensor<B, 3>,
        cfg: &ModelConfig,
        rope: &RopeBatch<B>,
        past: Option<Past<B>>,
        packed: Option<&[usize]>,
        keep_parts: bool,
    ) -> BlockPass<B> {
        let out_norm = |y: Tensor<B, 3>, n: &Option<Norm<B>>| match n {
            Some(n) => n.forward(y, cfg),
            None => y,
        };
        let h = match &self.input_norm {
            Some(n) => n.forward(x.clone(), cfg),
            None => x.clone(),
        };
        let (attention, kv) = if self.attention_dropped {
            let [b, t, _] = x.dims();
            let zeros = || {
                Tensor::zeros(
                    [b, t, cfg.num_key_value_heads, cfg.head_dim],
                    (&x.device(), x.dtype()),
                )
            };
            let kv = LayerKv {
                k: zeros(),
                v: zeros(),
            };
            (None, kv)
        } else {
            let (a, kv) = self.attention(h.clone(), cfg, rope, past, packed);
            (
                Some(out_norm(self.o_proj.forward(a), &self.attn_out_norm)),
                kv,
            )
        };
        let (out, after_attention, mlp) = if cfg.parallel_block {
            let m = out_norm(self.mlp(h, cfg), &self.mlp_out_norm);
            match attention {
                Some(a) if keep_parts => (
                    x.clone() + (a.clone() + m.clone()),
                    Some(AfterAttention::Parallel { x, attention: a }),
                    Some(m),
                ),
                Some(a) => (x + (a + m), None, None),
                None if keep_parts => (
                    x.clone() + m.clone(),
                    Some(AfterAttention::Computed(x)),
                    Some(m),
                ),
                None => (x + m, None, None),
            }
        } else {
            let y = match attention {
                Some(a) => x + a,
                None => x,
            };
            let m = out_norm(
                self.mlp(out_norm(y.clone(), &self.pre_mlp_norm), cfg),
                &self.mlp_out_norm,
            );
            if keep_parts {
                (
                    y.clone() + m.clone(),
                    Some(AfterAttention::Computed(y)),
                    Some(m),
                )
            } else {
                (y + m, None, None)
            }
        };
        let parts = match (after_attention, mlp) {
            (Some(after_attention), Some(mlp)) => Some(BlockParts {
                after_attention,
                mlp,
            }),
            _ => None,
        };
        BlockPass { out, kv, parts }
    }

    /// x [batch, seq, hidden] -> [batch, seq, hidden]
    pub fn forward(&self, x: Tensor<B, 3>, cfg: &ModelConfig, rope: &RopeBatch<B>) -> Tensor<B, 3> {
        self.forward_kv(x, cfg, rope, None, None).0
    }

    /// The block (`run`), also returning this call's keys and values (for a prefix cache).
    pub fn forward_kv(
        &self,
        x: Tensor<B, 3>,
        cfg: &ModelConfig,
        rope: &RopeBatch<B>,
        past: Option<Past<B>>,
        packed: Option<&[usize]>,
    ) -> (Tensor<B, 3>, LayerKv<B>) {
        let [rows, positions, _] = x.dims();
        LAYER_POSITIONS.fetch_add(
            (rows * positions) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let pass = self.run(x, cfg, rope, past, packed, false);
        (pass.out, pass.kv)
    }

    /// The block split where its MLP joins the residual stream: (y, m), both [batch, seq,
    /// hidden], with the block's output y + m (up to rounding in a parallel block); y is the
    /// stream after attention, m the MLP's output. None where a norm sits between the MLP and
    /// the add (Gemma's post_feedforward_layernorm), since m is then not the projection's
    /// output.
    pub fn forward_parts(
        &self,
        x: Tensor<B, 3>,
        cfg: &ModelConfig,
        rope: &RopeBatch<B>,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
        if self.mlp_out_norm.is_some() {
            return None;
        }
        let parts = self.run(x, cfg, rope, None, None, true).parts?;
        Some((parts.after_attention(), parts.mlp))
    }

    /// The block, also returning the residual stream after its attention sublayer: (y, out),
    /// both [batch, seq, hidden]; y = x + the attention's contribution (x itself when the
    /// attention is dropped), out = the block's output.
    pub fn forward_mid(
        &self,
        x: Tensor<B, 3>,
        cfg: &ModelConfig,
        rope: &RopeBatch<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let pass = self.run(x, cfg, rope, None, None, true);
        let y = pass
            .parts
            .as_ref()
            .map(BlockParts::after_attention)
            .expect("run with keep_parts returns the parts");
        (y, pass.out)
    }

    /// The MLP on h [batch, seq, hidden]: SwiGLU down(silu(gate(h)) * up(h)), GeGLU
    /// down(gelu_tanh(gate(h)) * up(h)) (Gemma), or down(gelu_tanh(up(h))) (Phi's
    /// fc2(gelu_new(fc1(h)))).
    pub fn mlp(&self, h: Tensor<B, 3>, cfg: &ModelConfig) -> Tensor<B, 3> {
        // the activation on gate(h) (gated kinds) or on up(h) (Phi)
        let activation = match cfg.mlp {
            MlpKind::SwiGlu => Activation::Silu,
            MlpKind::GeluTanh | MlpKind::GeluTanhGated => Activation::GeluTanh,
        };
        let burn_act = |x: Tensor<B, 3>| match activation {
            Activation::Silu => silu(x),
            Activation::GeluTanh => gelu_approximate(x),
        };
        match (cfg.mlp, &self.gate_proj) {
            (MlpKind::GeluTanh, _) => {
                let u = self.up_proj.forward(h);
                self.down_proj.forward(if host_mlp::usable(&u) {
                    host_mlp::act(activation, u)
                } else {
                    burn_act(u)
                })
            }
            (MlpKind::SwiGlu | MlpKind::GeluTanhGated, Some(gate)) => {
                let (g, u) = (gate.forward(h.clone()), self.up_proj.forward(h));
                self.down_proj.forward(if host_mlp::usable(&g) {
                    host_mlp::act_mul(activation, g, u)
                } else {
                    burn_act(g) * u
                })
            }
            (MlpKind::SwiGlu | MlpKind::GeluTanhGated, None) => {
                unreachable!("a gated MLP is built with its gate")
            }
        }
    }

    /// Self-attention, causal (or after the past's prefix); h [batch, seq, hidden] ->
    /// [batch, seq, heads * head_dim], plus the new keys/values [batch, seq, kv_heads, head_dim].
    /// With `packed`, batch is 1 and seq holds rows of these lengths back to back.
    fn attention(
        &self,
        h: Tensor<B, 3>,
        cfg: &ModelConfig,
        rope: &RopeBatch<B>,
        past: Option<Past<B>>,
        packed: Option<&[usize]>,
    ) -> (Tensor<B, 3>, LayerKv<B>) {
        let [b, t, _] = h.dims();
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        // [b, t, n * hd] -> [b, t, n, hd], contiguous
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]);
        // q/k RMSNorm before RoPE: over the whole projection [b, t, n * hd] (OLMo-2) or per
        // head [b, t, n, hd] (Qwen3, Gemma-3)
        let normed_heads = |y: Tensor<B, 3>, w: &Option<Tensor<B, 1>>, n: usize| match w {
            Some(w) if cfg.qk_norm_full_width => heads(rms_norm(y, w, cfg.rms_norm_eps), n),
            Some(w) => rms_norm(heads(y, n), w, cfg.rms_norm_eps),
            None => heads(y, n),
        };
        let rope = rope.for_layer(self.sliding);
        let q = rope.apply(normed_heads(
            self.q_proj.forward(h.clone()),
            &self.q_norm,
            nh,
        )); // [b, t, nh, hd]
        let k = rope.apply(normed_heads(
            self.k_proj.forward(h.clone()),
            &self.k_norm,
            nkv,
        )); // [b, t, nkv, hd]
        let v = heads(self.v_proj.forward(h), nkv); // [b, t, nkv, hd]
        let new = LayerKv {
            k: k.clone(),
            v: v.clone(),
        };
        let window = cfg.sliding_window.filter(|_| self.sliding);
        // Gemma: query_pre_attn_scalar^-0.5; otherwise head_dim^-0.5
        let scale = cfg
            .query_pre_attn_scalar
            .map_or(1.0 / (hd as f64).sqrt(), |s| s.powf(-0.5));
        let host_past = past.as_ref().map(|p| matches!(p.kv, CachedKv::Host { .. }));
        if host_attention::usable(&q) && host_past != Some(false) {
            let prefix = past.as_ref().and_then(|p| match p.kv {
                CachedKv::Host { k, v } => Some(host_attention::Prefix {
                    k,
                    v,
                    len: p.len,
                    row_of: p.row_of,
                    real: p.real,
                }),
                CachedKv::Device(_) => None,
            });
            let out =
                host_attention::attention_tensors(q, k, v, prefix, packed, window, scale as f32);
            return (out, new);
        }
        assert!(packed.is_none(), "packed rows need the host attention");
        let q = q.swap_dims(1, 2); // [b, nh, t, hd]
        let k = k.swap_dims(1, 2); // [b, nkv, t, hd]
        let v = v.swap_dims(1, 2);
        // grouped-query attention without copying keys and values per query head: the rep query
        // heads that share a kv head are stacked along the query axis, q [b, nkv, rep * t, hd]
        // (row r * t + i is head kv * rep + r at position i), so every key is read by all of them
        // in one product; the causal mask then is explicit, repeated per stacked head
        let rep = nh / nkv;
        let (k, v, mask) = match past {
            None => match window {
                Some(w) if t > w => (k, v, Some(sliding_mask::<B>(t, w, &q.device()))),
                _ if rep > 1 => (k, v, Some(sliding_mask::<B>(t, t, &q.device()))),
                _ => (k, v, None),
            },
            Some(p) => {
                let masks = p
                    .masks
                    .expect("masks for a backend without the host attention path");
                let past_mask = match (window, &masks.sliding) {
                    (Some(_), Some(m)) => m.clone(),
                    _ => masks.mask.clone(),
                };
                let cached_rows = match p.kv {
                    CachedKv::Device(kv) => kv.k.dims()[0],
                    CachedKv::Host { k, .. } => k.len() / (p.len * nkv * hd).max(1),
                };
                let kv = p.kv.tensors(cached_rows, p.len, cfg, &q.device());
                let rows = |t: &Tensor<B, 4>| past_rows(t, p.row_of).swap_dims(1, 2);
                (
                    Tensor::cat(vec![rows(&kv.k), k], 2),
                    Tensor::cat(vec![rows(&kv.v), v], 2),
                    Some(past_mask),
                )
            }
        };
        let q = if rep > 1 {
            // [b, nh, t, hd] -> [b, nkv, rep * t, hd]
            q.reshape([b, nkv, rep * t, hd])
        } else {
            q
        };
        // [b | 1, 1, t, k_len] -> [b | 1, 1, rep * t, k_len], broadcast over rows and kv heads
        let mask = mask.map(|m| if rep > 1 { m.repeat_dim(2, rep) } else { m });
        let mask = mask.map(|m| {
            if broadcasts_attention_masks::<B>(&m.device()) {
                m
            } else {
                // -> [b, kv heads (rep > 1) or heads, rows, k_len], contiguous
                let m = if m.dims()[0] < b {
                    m.repeat_dim(0, b)
                } else {
                    m
                };
                m.repeat_dim(1, if rep > 1 { nkv } else { nh })
            }
        });
        let options = AttentionModuleOptions {
            scale: cfg.query_pre_attn_scalar.map(|_| scale),
            softcap: None,
            is_causal: mask.is_none(),
        };
        let out = attention(q, k, v, mask, None, options); // [b, nkv, rep * t, hd]
        let out = out.reshape([b, nh, t, hd]);
        (out.swap_dims(1, 2).reshape([b, t, nh * hd]), new)
    }
}

/// The cache rows that batch rows continue: t [cache rows, len, kv_heads, hd] -> [batch, len,
/// kv_heads, hd]; one row for all (a shared few-shot prefix) is a broadcast view, not copies.
fn past_rows<B: Backend>(t: &Tensor<B, 4>, row_of: &[usize]) -> Tensor<B, 4> {
    let [_, len, nkv, hd] = t.dims();
    let b = row_of.len();
    match row_of.first() {
        Some(&i) if row_of.iter().all(|&r| r == i) => {
            t.clone().narrow(0, i, 1).expand([b, len, nkv, hd])
        }
        _ => {
            let idx: Vec<i64> = row_of.iter().map(|&i| i as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [b]), &t.device());
            t.clone().select(0, idx)
        }
    }
}

impl<B: Backend> Transformer<B> {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Original indices of the layers this model holds, in order.
    pub fn kept_layers(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.original_index).collect()
    }

    /// Embedding lookup: ids [batch, seq] -> x(0) [batch, seq, hidden] (Gemma: times
    /// sqrt(hidden), the factor rounded to the compute dtype as transformers does)
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = embedding(self.embed_tokens.clone(), ids);
        if self.config.embed_scale {
            let scale = (self.config.hidden_size as f64).sqrt() as f32;
            x * scale
        } else {
            x
        }
    }

    /// RoPE tables for a batch of `batch` rows at positions 0..seq.
    pub fn rope_for(&self, batch: usize, seq: usize) -> RopeBatch<B> {
        self.rope_rows(&vec![0; batch], seq)
    }

    /// RoPE tables for rows of `len` tokens, row r at positions starts[r] ...
    fn rope_rows(&self, starts: &[usize], len: usize) -> RopeBatch<B> {
        self.rope
            .for_rows(starts, len, &self.rope_heads(), &self.device, self.dtype)
    }

    /// RoPE tables for one packed row of tokens at these positions.
    fn rope_packed(&self, positions: &[usize]) -> RopeBatch<B> {
        let heads = self.rope_heads();
        let n = positions.len();
        self.rope
            .for_positions(positions, 1, n, &heads, &self.device, self.dtype)
    }

    /// The head counts RoPE rotates: queries and keys.
    fn rope_heads(&self) -> [usize; 2] {
        [
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
        ]
    }

    /// Run layers start..end of the current list on x [batch, seq, hidden] (positions 0..seq).
    pub fn run_layers(&self, mut x: Tensor<B, 3>, start: usize, end: usize) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let rope = self.rope_for(b, t);
        for layer in &self.layers[start..end] {
            x = layer.forward(x, &self.config, &rope);
        }
        x
    }

    /// Final norm + LM head: x [batch, seq, hidden] -> logits [batch, seq, vocab]
    pub fn head<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let h = self.norm.forward(x, &self.config);
        let logits =
            burn::tensor::module::linear(h, self.lm_head.clone(), self.lm_head_bias.clone());
        match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Full forward pass over a right-padded batch.
    pub fn forward(
        &self,
        batch: &TokenBatch,
        capture: Capture,
        logits: Logits,
    ) -> anyhow::Result<ForwardOutput<B>> {
        let ids = batch.to_tensor::<B>(&self.device);
        let last = final_positions::<B>(batch, &self.device);
        let mut x = self.embed(ids);
        let rope = self.rope_for(batch.batch, batch.seq);
        let mut finals = Vec::new();
        let mut all = Vec::new();
        let mut mids = Vec::new();
        let mut keep = |x: &Tensor<B, 3>| match capture {
            Capture::None => {}
            Capture::FinalToken => finals.push(gather_rows(x.clone(), &last)),
            Capture::All | Capture::AllWithAttention => all.push(x.clone()),
        };
        keep(&x);
        for layer in &self.layers {
            x = if capture == Capture::AllWithAttention {
                let (y, out) = layer.forward_mid(x, &self.config, &rope);
                mids.push(y);
                out
            } else {
                layer.forward(x, &self.config, &rope)
            };
            keep(&x);
        }
        let out_logits = match logits {
            Logits::All => Some(self.head(x.clone())),
            _ => None,
        };
        let final_logits = match logits {
            Logits::FinalToken => Some(self.head(gather_rows(x, &last))),
            _ => None,
        };
        Ok(ForwardOutput {
            logits: out_logits,
            final_logits,
            final_token_boundaries: (capture == Capture::FinalToken)
                .then(|| Tensor::stack(finals, 0)),
            boundaries: matches!(capture, Capture::All | Capture::AllWithAttention).then_some(all),
            attention_residuals: (capture == Capture::AllWithAttention).then_some(mids),
        })
    }
}

impl<B: Backend> Transformer<B> {
    /// `forward` with the batch split into `workers` sub-batches run on their own threads.
    ///
    /// For CPU backends: Burn's flex backend parallelises matrix products but runs element-wise
    /// operations and attention on the calling thread, so independent sub-batches keep every core
    /// busy (measured by `layerprune bench forward`). Results are identical to `forward`: rows do
    /// not interact. Use 1 worker on GPUs.
    pub fn forward_parallel(
        &self,
        batch: &TokenBatch,
        capture: Capture,
        logits: Logits,
        workers: usize,
    ) -> anyhow::Result<ForwardOutput<B>> {
        let workers = workers.clamp(1, batch.batch.max(1));
        if workers == 1 {
            return self.forward(batch, capture, logits);
        }
        let per = batch.batch.div_ceil(workers);
        let parts: Vec<TokenBatch> = (0..batch.batch)
            .step_by(per)
            .map(|start| {
                let end = (start + per).min(batch.batch);
                TokenBatch {
                    ids: batch.ids[start * batch.seq..end * batch.seq].to_vec(),
                    batch: end - start,
                    seq: batch.seq,
                    lengths: batch.lengths[start..end].to_vec(),
                }
            })
            .collect();
        let outs =
            crate::workers::scoped_map("forward", &parts, |_, p| self.forward(p, capture, logits));
        let outs = outs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let cat3 = |v: Vec<Tensor<B, 3>>, dim: usize| Tensor::cat(v, dim);
        let mut logits_all = Vec::new();
        let mut final_logits = Vec::new();
        let mut finals = Vec::new();
        let mut bounds: Vec<Vec<Tensor<B, 3>>> = Vec::new();
        let mut mids: Vec<Vec<Tensor<B, 3>>> = Vec::new();
        // per layer, the sub-batches' tensors in order
        let gather = |acc: &mut Vec<Vec<Tensor<B, 3>>>, part: Vec<Tensor<B, 3>>| {
            if acc.is_empty() {
                *acc = part.into_iter().map(|x| vec![x]).collect();
            } else {
                for (a, x) in acc.iter_mut().zip(part) {
                    a.push(x);
                }
            }
        };
        for o in outs {
            logits_all.extend(o.logits);
            final_logits.extend(o.final_logits);
            finals.extend(o.final_token_boundaries);
            if let Some(b) = o.boundaries {
                gather(&mut bounds, b);
            }
            if let Some(m) = o.attention_residuals {
                gather(&mut mids, m);
            }
        }
        Ok(ForwardOutput {
            logits: (!logits_all.is_empty()).then(|| cat3(logits_all, 0)),
            final_logits: (!final_logits.is_empty()).then(|| Tensor::cat(final_logits, 0)),
            final_token_boundaries: (!finals.is_empty()).then(|| cat3(finals, 1)),
            boundaries: (!bounds.is_empty())
                .then(|| bounds.into_iter().map(|v| cat3(v, 0)).collect()),
            attention_residuals: (!mids.is_empty())
                .then(|| mids.into_iter().map(|v| cat3(v, 0)).collect()),
        })
    }
}

/// Keys and values of consecutive layers for a batch of prefixes (right-padded to the longest).
#[derive(Debug, Clone)]
pub struct PrefixCache<B: Backend> {
    /// Per layer from `first_layer` on: [prefixes, max_len, kv_heads, head_dim]
    pub layers: Vec<CachedKv<B>>,
    /// The layer (index into the model's current list) of `layers[0]`.
    pub first_layer: usize,
    /// Real length of each prefix.
    pub lengths: Vec<usize>,
    pub max_len: usize,
}

impl<B: Backend> PrefixCache<B> {
    /// An empty cache for prefixes of these lengths, whose layers will start at `first_layer`.
    pub fn empty(first_layer: usize, lengths: &[usize], max_len: usize) -> Self {
        Self {
            layers: Vec::new(),
            first_layer,
            lengths: lengths.to_vec(),
            max_len,
        }
    }
}

impl<B: Backend> Transformer<B> {
    /// Whether attention runs on the host (flex in f32: `host_attention`).
    fn host_attention(&self) -> bool {
        self.dtype == DType::F32 && B::name(&self.device) == "flex"
    }

    /// Run a batch of prefixes, keeping every layer's keys/values: returns x(L) [batch, seq, hidden]
    /// (before the final norm) and the cache.
    pub fn prefix_pass(&self, batch: &TokenBatch) -> (Tensor<B, 3>, PrefixCache<B>) {
        let x = self.embed(batch.to_tensor::<B>(&self.device));
        let mut cache = PrefixCache::empty(0, &batch.lengths, batch.seq);
        let x = self.prefix_layers(x, &mut cache, self.layers.len(), true);
        (x, cache)
    }

    /// Layers [cache.first_layer + cache.layers.len(), to) on x [batch, seq, hidden] of right-
    /// padded prefixes (positions 0..seq, real lengths `cache.lengths`), appending their
    /// keys/values to the cache when `keep_kv`: returns x(to), zeros at the padding where the
    /// rows ran packed (host attention: only real tokens computed).
    pub fn prefix_layers(
        &self,
        x: Tensor<B, 3>,
        cache: &mut PrefixCache<B>,
        to: usize,
        keep_kv: bool,
    ) -> Tensor<B, 3> {
        let from = cache.first_layer + cache.layers.len();
        if from >= to {
            return x;
        }
        let [b, t, _] = x.dims();
        let host = self.host_attention();
        let packing = host.then(|| Packing::of(&cache.lengths, t)).flatten();
        let rope = match &packing {
            Some(p) => self.rope_packed(&p.positions(&vec![0; b])),
            None => self.rope_for(b, t),
        };
        let mut x = match &packing {
            Some(p) => p.pack(x),
            None => x,
        };
        let kv_width = self.config.num_key_value_heads * self.config.head_dim;
        // host values of keys/values [rows, t, kv_heads, hd] (padding zeros where packed)
        let padded = |kv: Tensor<B, 4>| {
            let values = host_attention::host_values(kv);
            match &packing {
                Some(p) => p.unpack_host(&values, kv_width),
                None => values,
            }
        };
        let lengths = packing.as_ref().map(|p| p.lengths());
        for layer in &self.layers[from..to] {
            let (y, kv) = layer.forward_kv(x, &self.config, &rope, None, lengths);
            x = y;
            if keep_kv {
                cache.layers.push(if host {
                    CachedKv::Host {
                        k: padded(kv.k),
                        v: padded(kv.v),
                    }
                } else {
                    CachedKv::Device(kv)
                });
            }
        }
        if !keep_kv {
            // the cache no longer continues at `to`
            cache.layers.clear();
            cache.first_layer = to;
        }
        match &packing {
            Some(p) => p.unpack(x),
            None => x,
        }
    }

    /// Run suffix rows after cached prefixes: row r continues prefix `prefix_of[r]` (its tokens
    /// sit at positions len(prefix) ..). Returns x(L) [rows, suffix_len, hidden].
    pub fn suffix_pass(
        &self,
        cache: &PrefixCache<B>,
        prefix_of: &[usize],
        suffix: &TokenBatch,
    ) -> Tensor<B, 3> {
        let x = self.embed(suffix.to_tensor::<B>(&self.device));
        self.suffix_layers(x, &suffix.lengths, cache, prefix_of, 0, self.layers.len())
    }

    /// Layers [from, to) on suffix rows x [rows, suffix_len, hidden] (right-padded, real lengths
    /// `lengths`) after cached prefixes: row r continues prefix `prefix_of[r]`; the cache holds
    /// layers from..to at least. Returns x(to), zeros at the padding where the rows ran packed
    /// (host attention: only real tokens computed).
    pub fn suffix_layers(
        &self,
        x: Tensor<B, 3>,
        lengths: &[usize],
        cache: &PrefixCache<B>,
        prefix_of: &[usize],
        from: usize,
        to: usize,
    ) -> Tensor<B, 3> {
        if from >= to {
            return x;
        }
        let [b, s, _] = x.dims();
        assert_eq!(prefix_of.len(), b, "one prefix index per suffix row");
        assert_eq!(lengths.len(), b, "one length per suffix row");
        assert!(
            cache.first_layer <= from && to <= cache.first_layer + cache.layers.len(),
            "the cache holds layers {}..{}, not {from}..{to}",
            cache.first_layer,
            cache.first_layer + cache.layers.len()
        );
        let starts: Vec<usize> = prefix_of.iter().map(|&i| cache.lengths[i]).collect();
        let host = self.host_attention();
        let masks = (!host).then(|| self.past_masks(&starts, s, cache.max_len));
        let packing = host.then(|| Packing::of(lengths, s)).flatten();
        let rope = match &packing {
            Some(p) => self.rope_packed(&p.positions(&starts)),
            None => self.rope_rows(&starts, s),
        };
        let mut x = match &packing {
            Some(p) => p.pack(x),
            None => x,
        };
        let c = &self.config;
        let cached = &cache.layers[from - cache.first_layer..to - cache.first_layer];
        for (layer, kv) in self.layers[from..to].iter().zip(cached) {
            x = layer
                .forward_kv(
                    x,
                    c,
                    &rope,
                    Some(Past {
                        kv,
                        len: cache.max_len,
                        row_of: prefix_of,
                        real: &starts,
                        masks: masks.as_ref(),
                    }),
                    packing.as_ref().map(|p| p.lengths()),
                )
                .0;
        }
        match &packing {
            Some(p) => p.unpack(x),
            None => x,
        }
    }

    /// The masks of suffix rows of `s` tokens after cached prefixes of real lengths `starts`
    /// (padded to `p`): [b, 1, s, p + s], cached key j visible if it is a real prefix token, new
    /// key j visible to query i if j <= i; for sliding layers also only keys at positions above
    /// the query's - window.
    fn past_masks(&self, starts: &[usize], s: usize, p: usize) -> PastMasks<B> {
        let b = starts.len();
        let build = |window: Option<usize>| {
            let w = window.unwrap_or(usize::MAX);
            let mut masked = Vec::with_capacity(b * s * (p + s));
            for &start in starts {
                for i in 0..s {
                    let q = start + i;
                    masked.extend((0..p).map(|j| j >= start || q - j >= w));
                    masked.extend((0..s).map(|j| j > i || i - j >= w));
                }
            }
            Tensor::<B, 4, Bool>::from_data(TensorData::new(masked, [b, 1, s, p + s]), &self.device)
        };
        let sliding = self
            .config
            .sliding_window
            .filter(|_| self.layers.iter().any(|l| l.sliding));
        PastMasks {
            mask: build(None),
            sliding: sliding.map(|w| build(Some(w))),
        }
    }
}

/// Flat indices b * seq + (len_b - 1) of each row's final real token.
pub fn final_positions<B: Backend>(batch: &TokenBatch, device: &B::Device) -> Tensor<B, 1, Int> {
    let idx: Vec<i64> = batch
        .lengths
        .iter()
        .enumerate()
        .map(|(b, &len)| (b * batch.seq + len.max(1) - 1) as i64)
        .collect();
    Tensor::from_data(TensorData::new(idx, [batch.batch]), device)
}

/// x [batch, seq, hidden], flat row indices [k] -> [k, hidden]
pub fn gather_rows<B: Backend>(x: Tensor<B, 3>, flat_idx: &Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let [b, t, h] = x.dims();
    x.reshape([b * t, h]).select(0, flat_idx.clone())
}
