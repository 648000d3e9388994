//! Peak memory of the work a job does with a model, estimated from the model's shape and the
//! job's batch: what `plan` prints per job and what `run` checks against the device (or, on the
//! CPU, the machine's) memory before any job starts.
//!
//! The estimate counts what this implementation holds, not what an ideal one would: weights in
//! the compute precision (or NF4 as `model::nf4_linear` stores it: 4-bit codes packed eight per
//! 32-bit word, one absmax per block of 64 in the compute precision), one layer's temporaries at a time in inference,
//! every layer's saved activations in training (checkpointed: every block's input and one
//! block's saved activations), logits
//! where the job computes them, LoRA / trainable parameters with their gradient and AdamW's two
//! moments in f32. The coefficients below were measured on flex with SmolLM2-135M (peak RSS per
//! job; tests/memory_plan.rs holds the estimate within 25% of the measured peak).

use super::config::ModelConfig;

const MIB: f64 = (1u64 << 20) as f64;

/// One estimated peak: named parts that add up to the total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryEstimate {
    pub parts: Vec<(&'static str, u64)>,
}

impl MemoryEstimate {
    /// Add a part (a part of u64::MAX is one whose arithmetic overflowed: see `mul`).
    pub fn add(&mut self, name: &'static str, bytes: u64) -> &mut Self {
        if bytes > 0 {
            self.parts.push((name, bytes));
        }
        self
    }
    /// The sum of the parts; u64::MAX (more than any device has) where it overflows.
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |total, (_, b)| total.saturating_add(*b))
    }
    /// "weights 538 MiB + activations 95 MiB + ..."
    pub fn breakdown(&self) -> String {
        self.parts
            .iter()
            .map(|(n, b)| format!("{n} {}", human_bytes(*b)))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// The product of `factors`, saturating: an estimate whose arithmetic would overflow is
/// u64::MAX, "too large" for every device, never a small wrapped number. Every estimate's
/// products go through it (job parameters such as batch_size and seq_len are untrusted input).
pub fn mul(factors: &[u64]) -> u64 {
    factors
        .iter()
        .fold(1u64, |product, &f| product.saturating_mul(f))
}

/// The sum of `terms`, saturating (see `mul`).
pub fn sum(terms: &[u64]) -> u64 {
    terms.iter().fold(0u64, |total, &t| total.saturating_add(t))
}

/// "538 MiB", "36.6 GiB"; "too large to compute" for an estimate that overflowed.
pub fn human_bytes(b: u64) -> String {
    if b == u64::MAX {
        return "too large to compute".into();
    }
    let mib = b as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Where a checkpointed training step computes the head's loss (heal::gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLoss {
    /// On the host, in blocks of rows (flex in f32, a frozen head).
    Host,
    /// In the graph, in blocks of positions (a frozen head elsewhere).
    GraphBlocks,
    /// In one graph (a trained head: partial fine-tuning).
    GraphWhole,
}

/// How the layers' projection weights are held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaseWeights {
    /// In the compute precision.
    Dense,
    /// NF4 codes (half a byte per value) and an absmax per block of 64 in the compute precision.
    Nf4,
}

/// The model a job runs: its configuration with `layers` of its layers kept.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub cfg: ModelConfig,
    pub layers: usize,
}

impl ModelShape {
    fn pruned(&self) -> ModelConfig {
        let mut c = self.cfg.clone();
        c.num_hidden_layers = self.layers;
        c
    }
    /// Parameters of the kept model.
    pub fn parameters(&self) -> u64 {
        self.cfg
            .architecture
            .layout()
            .parameter_count(&self.pruned())
    }
    /// Parameters of the layers' projections (what NF4 quantises).
    pub fn projection_parameters(&self) -> u64 {
        let layout = self.cfg.architecture.layout();
        let per_layer: u64 = layout
            .projections
            .iter()
            .map(|p| {
                let (i, o) = p.projection.dims(&self.cfg);
                (i * o) as u64
            })
            .sum();
        per_layer * self.layers as u64
    }
    /// The weights on the device.
    pub fn weight_bytes(&self, elem: u64, base: BaseWeights) -> u64 {
        match base {
            BaseWeights::Dense => mul(&[self.parameters(), elem]),
            BaseWeights::Nf4 => {
                let q = self.projection_parameters();
                // codes: 4 bits; absmax: one value per 64
                sum(&[
                    q / 2,
                    mul(&[q / 64, elem]),
                    mul(&[self.parameters().saturating_sub(q), elem]),
                ])
            }
        }
    }
    fn d(&self) -> u64 {
        self.cfg.hidden_size as u64
    }
    fn i(&self) -> u64 {
        self.cfg.intermediate_size as u64
    }
    fn attn_width(&self) -> u64 {
        (self.cfg.num_attention_heads * self.cfg.head_dim) as u64
    }
    fn heads(&self) -> u64 {
        self.cfg.num_attention_heads as u64
    }
    /// The largest projection's values (one dequantised NF4 weight lives at a time).
    fn largest_projection(&self) -> u64 {
        let layout = self.cfg.architecture.layout();
        layout
            .projections
            .iter()
            .map(|p| {
                let (i, o) = p.projection.dims(&self.cfg);
                (i * o) as u64
            })
            .max()
            .unwrap_or(0)
    }

    /// Temporaries of one layer's forward pass over `rows` x `seq` tokens (no gradients): the
    /// residual, the normed input, q/k/v (k/v repeated to every head), the attention scores and
    /// their softmax, the MLP's gate, up and product; the peak of the attention and MLP halves.
    pub fn layer_temporaries(&self, rows: u64, seq: u64, elem: u64) -> u64 {
        let t = mul(&[rows, seq]);
        let attention = sum(&[
            mul(&[t, 2 * self.d() + 5 * self.attn_width()]),
            mul(&[2, rows, self.heads(), seq, seq]),
        ]);
        let mlp = mul(&[t, 2 * self.d() + 3 * self.i()]);
        mul(&[attention.max(mlp), elem])
    }

    /// Values the autodiff graph keeps per layer for the backward pass over `rows` x `seq`
    /// tokens: the inputs of every op of the block (norms, projections, RoPE, attention
    /// probabilities, activation) as Burn's autodiff saves them.
    pub fn saved_per_layer(&self, rows: u64, seq: u64, elem: u64) -> u64 {
        let t = mul(&[rows, seq]);
        let per_token = SAVED_D * self.d() + SAVED_ATTN * self.attn_width() + SAVED_I * self.i();
        mul(&[
            sum(&[
                mul(&[t, per_token]),
                mul(&[SAVED_SCORES, rows, self.heads(), seq, seq]),
            ]),
            elem,
        ])
    }

    /// Logits at `positions` rows of the LM head and what the log-softmax makes of them: the
    /// logits in the compute precision, then (always in f32) the shifted logits, their
    /// exponentials and the result; with gradients in training as many again are alive at the
    /// peak (LOGIT_COPIES covers both, measured in f32).
    pub fn logits(&self, positions: u64, elem: u64) -> u64 {
        mul(&[
            positions,
            self.cfg.vocab_size as u64,
            elem + (LOGIT_COPIES - 1) * 4,
        ])
    }

    /// Every frozen projection dequantised once per step and kept by the autodiff graph for
    /// the backward pass (the input's gradient needs the weight): as large as the dense
    /// projections in the compute precision. bitsandbytes dequantises again in the backward
    /// pass instead; Burn's autodiff keeps the matmul's operand.
    pub fn nf4_kept_for_backward(&self, elem: u64) -> u64 {
        mul(&[self.projection_parameters(), elem])
    }

    /// What a training step over `rows` x `seq` tokens holds besides the weights and what is
    /// trained: the saved activations of the `graph_layers` layers the autodiff graph spans,
    /// one layer's temporaries, the logits with their gradients, the graph's own overhead.
    pub fn add_training_step(
        &self,
        estimate: &mut MemoryEstimate,
        rows: u64,
        seq: u64,
        elem: u64,
        graph_layers: usize,
    ) {
        estimate
            .add(
                "saved activations",
                mul(&[self.saved_per_layer(rows, seq, elem), graph_layers as u64]),
            )
            .add("activations", self.layer_temporaries(rows, seq, elem))
            .add("logits + gradients", self.logits(mul(&[rows, seq]), elem))
            .add("autodiff", AUTODIFF_OVERHEAD);
    }

    /// What a checkpointed training step (heal::gradients) over `rows` x `seq` tokens holds
    /// besides the weights and what is trained: the inputs of the `input_layers` blocks it
    /// recomputes, one block's saved activations and temporaries (the one being recomputed),
    /// the stream's gradient in and out of that block, the head's loss as `head` computes it,
    /// the graph's own overhead.
    pub fn add_checkpointed_step(
        &self,
        estimate: &mut MemoryEstimate,
        rows: u64,
        seq: u64,
        elem: u64,
        input_layers: usize,
        head: HeadLoss,
    ) {
        let positions = mul(&[rows, seq]);
        let stream = mul(&[positions, self.d(), elem]);
        estimate
            .add("block inputs", mul(&[stream, input_layers as u64]))
            .add(
                "one block's saved activations",
                self.saved_per_layer(rows, seq, elem),
            )
            .add("activations", self.layer_temporaries(rows, seq, elem))
            .add("stream gradients", mul(&[2, stream]));
        match head {
            // the final norm's output and its gradient in f32 on the host; the logits in
            // blocks of a few MB
            HeadLoss::Host => estimate.add("head on the host", mul(&[2, positions, self.d(), 4])),
            HeadLoss::GraphBlocks => {
                let block = (HEAD_BLOCK_VALUES / (self.cfg.vocab_size as u64).max(1))
                    .clamp(1, positions.max(1));
                estimate.add(
                    "logits + gradients (one block of positions)",
                    self.logits(block, elem),
                )
            }
            HeadLoss::GraphWhole => {
                estimate.add("logits + gradients", self.logits(positions, elem))
            }
        };
        estimate.add("autodiff", AUTODIFF_OVERHEAD);
    }

    /// One layer's projections dequantised from NF4 and kept by the graph of the block being
    /// recomputed (checkpointed training).
    pub fn nf4_one_block(&self, elem: u64) -> u64 {
        mul(&[
            self.projection_parameters() / (self.layers.max(1) as u64),
            elem,
        ])
    }

    /// Keys and values of every kept layer for `rows` x `seq` cached positions.
    pub fn kv_bytes(&self, rows: u64, seq: u64, elem: u64) -> u64 {
        let kv = (self.cfg.num_key_value_heads * self.cfg.head_dim) as u64;
        mul(&[2, self.layers as u64, rows, seq, kv, elem])
    }

    /// Parameters of `k` layers.
    pub fn layer_parameters(&self, k: usize) -> u64 {
        let with = |layers| {
            ModelShape {
                cfg: self.cfg.clone(),
                layers,
            }
            .parameters()
        };
        with(k) - with(0)
    }

    /// The weights outside the layers (embedding, LM head unless tied, final norm): what a
    /// streamed model keeps resident.
    pub fn non_layer_bytes(&self, elem: u64) -> u64 {
        mul(&[self.non_layer_parameters(), elem])
    }

    /// Parameters outside the layers (embedding, LM head unless tied, final norm).
    pub fn non_layer_parameters(&self) -> u64 {
        self.layer_parameters_of(0)
    }

    /// The embedding read from the file as f32 while it is uploaded (the load's transient).
    pub fn embedding_read(&self) -> u64 {
        mul(&[self.cfg.vocab_size as u64, self.d(), 4])
    }

    /// One streamed weight read for its matmul: the f32 values read from the file, their
    /// transposed copy, and the weight in the compute precision.
    pub fn streamed_transient(&self, elem: u64) -> u64 {
        mul(&[self.largest_projection(), 8 + elem])
    }

    fn layer_parameters_of(&self, layers: usize) -> u64 {
        ModelShape {
            cfg: self.cfg.clone(),
            layers,
        }
        .parameters()
    }

    /// One NF4 weight dequantised for its matmul: the eight unpacked nibble tensors and their
    /// concatenation (i32) alive together, and the values.
    pub fn nf4_transient(&self, elem: u64) -> u64 {
        mul(&[self.largest_projection(), elem + 8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    fn tiny() -> ModelShape {
        let text = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "vocab_size": 384, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        let cfg = ModelConfig::from_hf_config_file(&dir.path().join("config.json")).unwrap();
        ModelShape { cfg, layers: 3 }
    }

    #[test]
    fn weights_count_the_kept_layers_in_each_storage() {
        let s = tiny();
        // per layer: q 64x64, k, v 64x32, o 64x64, gate/up/down 64x128: 36864 projection values
        // and two norms of 64; embedding 384 x 64 (tied), final norm 64
        assert_eq!(s.projection_parameters(), 3 * 36864);
        assert_eq!(s.parameters(), 3 * (36864 + 128) + 384 * 64 + 64);
        assert_eq!(s.weight_bytes(4, BaseWeights::Dense), 4 * s.parameters());
        let q = 3 * 36864;
        let rest = s.parameters() - q;
        assert_eq!(
            s.weight_bytes(2, BaseWeights::Nf4),
            q / 2 + q / 64 * 2 + rest * 2
        );
        assert_eq!(s.layer_parameters(1), 36864 + 128);
    }

    #[test]
    fn the_log_softmax_copies_are_f32_in_every_precision() {
        let s = tiny();
        assert_eq!(s.logits(10, 4), 10 * 384 * 16);
        // bf16: the logits in bf16, three f32 copies
        assert_eq!(s.logits(10, 2), 10 * 384 * (2 + 12));
        assert_eq!(s.kv_bytes(1, 8, 2), 2 * 3 * 8 * 32 * 2);
    }

    #[test]
    fn an_estimate_that_overflows_is_too_large_not_wrapped() {
        let s = tiny();
        // 2^32 x 2^32 tokens wrapped to a small number before
        let big = 1u64 << 32;
        assert_eq!(s.layer_temporaries(big, big, 4), u64::MAX);
        assert_eq!(s.saved_per_layer(u64::MAX, u64::MAX, 4), u64::MAX);
        let mut e = MemoryEstimate::default();
        e.add("weights", 1 << 30).add("activations", u64::MAX);
        assert_eq!(e.total(), u64::MAX);
        assert_eq!(human_bytes(e.total()), "too large to compute");
    }

    #[test]
    fn an_estimate_adds_its_parts_and_skips_empty_ones() {
        let mut e = MemoryEstimate::default();
        e.add("weights", 3 << 20)
            .add("nothing", 0)
            .add("activations", 1 << 30);
        assert_eq!(e.total(), (3 << 20) + (1 << 30));
        assert_eq!(e.breakdown(), "weights 3 MiB + activations 1.0 GiB");
    }
}

/// Saved values per token per layer in training, in units of the hidden size, the attention
/// width and the MLP width, and per (head, query, key) for the attention probabilities.
const SAVED_D: u64 = 6;
const SAVED_ATTN: u64 = 4;
const SAVED_I: u64 = 3;
const SAVED_SCORES: u64 = 4;

/// Logits per block of positions where a checkpointed step computes the head in the graph
/// (heal::gradients::HEAD_BLOCK_VALUES).
pub const HEAD_BLOCK_VALUES: u64 = 1 << 24;

/// Copies of the logits alive at the peak of a log-softmax (see `logits`).
const LOGIT_COPIES: u64 = 4;

/// What Burn's autodiff graph and the allocator's slack add to a training step (measured:
/// SmolLM2-135M, 1-4 sequences of 64-512 tokens, dense and NF4).
pub const AUTODIFF_OVERHEAD: u64 = 160 << 20;

/// Bytes of a trainable parameter with its gradient and AdamW's two moments (all f32).
pub const TRAINABLE_BYTES: u64 = 16;

/// What a process needs besides the model and the work (the binary, tokenizer, text and
/// benchmark data in memory, the allocator's slack): measured on flex.
pub const PROCESS_OVERHEAD: u64 = 96 << 20;
