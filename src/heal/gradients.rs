//! One micro-batch's loss (mean next-token cross-entropy over equal-length windows) and the
//! gradients of loss * loss_scale with respect to whatever tensors of the model are tracked
//! (LoRA factors, or the tensors of a partial fine-tune), computed in one of two ways:
//!
//! - **one graph**: a forward pass under autodiff, one backward pass; the graph holds every
//!   block's saved activations (and, for an NF4 base, every dequantised weight) until the end;
//! - **checkpointed** (layer-by-layer recomputation, as transformers'
//!   `gradient_checkpointing_enable()` does per decoder layer): a forward pass that records
//!   nothing and keeps each block's input x(l) only; then the head's loss and the gradient at
//!   x(L); then, from the last block down, each block recomputed under autodiff from its kept
//!   input and differentiated at once, handing dL/dx(l) to the block below. A step then holds
//!   L x tokens x hidden of block inputs plus one block's graph, and a dequantised NF4 weight
//!   lives only while its block is recomputed. A frozen LM head runs in blocks of positions on
//!   every backend (on the host, flex in f32, as in the one-graph path); a trained one (partial
//!   fine-tuning) in one graph, since a leaf takes its gradient only in the first backward pass
//!   that reaches it.
//!
//! Gradients arrive graph by graph: `collect` sees each graph's gradients once (the one graph,
//! or the head's, each block's and the embedding's); a tensor used in several graphs (a tied
//! embedding) has its parts summed by the collector.

use anyhow::Result;
use burn::tensor::{activation::log_softmax, backend::AutodiffBackend, Int, Tensor, TensorData};

use super::host_loss;
use crate::model::host_attention::host_values;
use crate::model::transformer::to_f32;
use crate::model::{to_f32_vec, TokenBatch, Transformer};

/// Where the LM head's cross-entropy and its gradient are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossPath {
    /// On the host where `host_loss::usable` (flex in f32, frozen head), else in the graph.
    Auto,
    /// In the autodiff graph (log-softmax and gather over the logits).
    Graph,
}

/// How a micro-batch's gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradientPass {
    pub loss: LossPath,
    /// Layer-by-layer recomputation instead of one graph over the whole model.
    pub checkpointing: bool,
    /// Checkpointed with the head in the graph: at most this many logits per block of
    /// positions (HEAD_BLOCK_VALUES; smaller in tests, to split a tiny batch).
    pub head_block_values: usize,
}

impl Default for GradientPass {
    fn default() -> Self {
        Self {
            loss: LossPath::Auto,
            checkpointing: false,
            head_block_values: HEAD_BLOCK_VALUES,
        }
    }
}

impl GradientPass {
    /// The default pass, checkpointed or not.
    pub fn checkpointed(checkpointing: bool) -> Self {
        Self {
            checkpointing,
            ..Self::default()
        }
    }
}

/// What receives each graph's gradients.
pub type Collect<'a, B> = dyn FnMut(&<B as AutodiffBackend>::Gradients) -> Result<()> + 'a;

/// The loss of `rows` (mean next-token cross-entropy; equal-length windows); the gradients of
/// loss * loss_scale go to `collect`, graph by graph.
pub fn loss_and_gradients<B: AutodiffBackend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    loss_scale: f64,
    pass: GradientPass,
    collect: &mut Collect<'_, B>,
) -> Result<f64> {
    if pass.checkpointing {
        return checkpointed(model, rows, loss_scale, pass, collect);
    }
    let ids = TokenBatch::right_padded(rows, 0).to_tensor::<B>(&model.device);
    let x = model.run_layers(model.embed(ids), 0, model.num_layers()); // [b, t, hidden]
    let (value, grads) = head_loss(model, x, rows, loss_scale, pass.loss)?;
    collect(&grads)?;
    Ok(value)
}

/// The mean cross-entropy of the head over x [b, t, hidden] (the stream after the last block;
/// position i predicts rows[.][i + 1]), in the graph, the loss in f32 in every precision.
fn graph_loss<B: AutodiffBackend>(
    model: &Transformer<B>,
    x: Tensor<B, 3>,
    rows: &[Vec<u32>],
) -> Tensor<B, 1> {
    let [b, t, _] = x.dims();
    let logits = model.head(x.narrow(1, 0, t - 1)); // [b, t-1, vocab]
    let vocab = logits.dims()[2];
    let logp = log_softmax(to_f32(logits.reshape([b * (t - 1), vocab])), 1);
    let targets = Tensor::<B, 2, Int>::from_data(
        TensorData::new(targets(rows), [b * (t - 1), 1]),
        &model.device,
    );
    logp.gather(1, targets).mean().neg()
}

/// Every row's next tokens, row after row: [b * (t - 1)].
fn targets(rows: &[Vec<u32>]) -> Vec<i64> {
    rows.iter()
        .flat_map(|r| r[1..].iter().map(|&x| x as i64))
        .collect()
}

/// The head's loss over x [b, t, hidden] and the gradients of loss * loss_scale, through x's
/// graph: in the graph, or on the host with dL/dh entering the graph at the final norm's output.
fn head_loss<B: AutodiffBackend>(
    model: &Transformer<B>,
    x: Tensor<B, 3>,
    rows: &[Vec<u32>],
    loss_scale: f64,
    path: LossPath,
) -> Result<(f64, B::Gradients)> {
    if path == LossPath::Graph || !host_loss::usable(model) {
        let loss = graph_loss(model, x, rows);
        let value = to_f32_vec(loss.clone())?[0] as f64;
        return Ok((value, (loss * loss_scale).backward()));
    }
    let [b, t, hidden] = x.dims();
    let h = model.norm.forward(x.narrow(1, 0, t - 1), &model.config); // [b, t-1, hidden]
    let targets: Vec<u32> = rows.iter().flat_map(|r| r[1..].iter().copied()).collect();
    let (value, dh) = host_loss::HostHead::of(model).cross_entropy(
        &host_values(h.clone().inner()),
        &targets,
        loss_scale as f32,
    )?;
    let dh = Tensor::<B, 3>::from_data(TensorData::new(dh, [b, t - 1, hidden]), &model.device);
    // d(sum(h * dh))/dh = dh: the head's gradient enters the graph at h
    Ok((value, (h * dh).sum().backward()))
}

/// Values of the logits per block of positions in the graph head of a checkpointed step (the
/// memory plan counts the same: model::memory::HEAD_BLOCK_VALUES).
const HEAD_BLOCK_VALUES: usize = crate::model::memory::HEAD_BLOCK_VALUES as usize;

/// The checkpointed pass (see the module's documentation).
fn checkpointed<B: AutodiffBackend>(
    model: &Transformer<B>,
    rows: &[Vec<u32>],
    loss_scale: f64,
    pass: GradientPass,
    collect: &mut Collect<'_, B>,
) -> Result<f64> {
    let path = pass.loss;
    let batch = TokenBatch::right_padded(rows, 0);
    let (b, t) = (batch.batch, batch.seq);
    let ids = batch.to_tensor::<B>(&model.device);
    let rope = model.rope_for(b, t);
    let trains_embedding = model.embed_tokens.is_require_grad();
    // the lowest block whose gradients are needed: below it nothing is tracked, and the
    // stream's gradient is needed no further down
    let lowest = if trains_embedding {
        0
    } else {
        model
            .layers
            .iter()
            .position(|l| l.tracks_gradients())
            .unwrap_or(model.num_layers())
    };
    // forward, recording nothing: the inputs of blocks lowest.. (x(l), [b, t, hidden])
    let mut x = model.embed(ids.clone()).set_require_grad(false);
    let mut inputs = Vec::with_capacity(model.num_layers() - lowest);
    for (l, layer) in model.layers.iter().enumerate() {
        if l >= lowest {
            inputs.push(x.clone());
        }
        x = layer.detached().forward(x, &model.config, &rope);
    }
    // the head: the loss and dL/dx(L). A trained head (partial fine-tuning) is one graph: a
    // leaf takes its gradient only in the first backward pass that reaches it, so its tensors
    // may enter no second graph (the embedding's lookup below is given a fresh leaf).
    let top = x.require_grad();
    let mut head_grads = None;
    let (value, mut dx) = if path == LossPath::Auto && host_loss::usable(model) {
        let (value, grads) = head_loss(model, top.clone(), rows, loss_scale, path)?;
        collect(&grads)?;
        (value, stream_gradient(&top, &grads))
    } else if head_trained(model) {
        let (value, grads) = head_loss(model, top.clone(), rows, loss_scale, LossPath::Graph)?;
        let dx = stream_gradient(&top, &grads);
        head_grads = Some(grads);
        (value, dx)
    } else {
        let block = pass.head_block_values;
        graph_head_in_blocks(model, top, rows, loss_scale, block, collect)?
    };
    // each block from the top down: recomputed from its input, differentiated at once
    // (the lowest block's input takes a gradient only where the embedding is trained)
    for (k, (layer, input)) in model.layers[lowest..].iter().zip(inputs).enumerate().rev() {
        let input = if k > 0 || trains_embedding {
            input.require_grad()
        } else {
            input
        };
        let out = layer.forward(input.clone(), &model.config, &rope);
        let grads = (out * dx).sum().backward();
        collect(&grads)?;
        dx = stream_gradient(&input, &grads);
    }
    match head_grads {
        Some(mut head) if trains_embedding => {
            // the tied embedding: its lookup's gradient through a fresh leaf, added to the
            // head's (the one leaf the trainer holds)
            let fresh = model
                .embed_tokens
                .clone()
                .set_require_grad(false)
                .require_grad();
            let lookup = Transformer {
                embed_tokens: fresh.clone(),
                ..model.clone()
            };
            let grads = (lookup.embed(ids) * dx).sum().backward();
            if let Some(g) = fresh.grad(&grads) {
                let total = match model.embed_tokens.grad(&head) {
                    Some(h) => h + g,
                    None => g,
                };
                model.embed_tokens.grad_replace(&mut head, total);
            }
            collect(&head)?;
        }
        Some(head) => collect(&head)?,
        None if trains_embedding => {
            let grads = (model.embed(ids) * dx).sum().backward();
            collect(&grads)?;
        }
        None => {}
    }
    Ok(value)
}

/// Whether a tensor of the final norm or the LM head takes a gradient.
fn head_trained<B: AutodiffBackend>(model: &Transformer<B>) -> bool {
    let tracked = |t: Option<&Tensor<B, 1>>| t.is_some_and(|t| t.is_require_grad());
    model.lm_head.is_require_grad()
        || model.embed_tokens.is_require_grad()
        || tracked(model.lm_head_bias.as_ref())
        || tracked(Some(&model.norm.weight))
        || tracked(model.norm.bias.as_ref())
}

/// dL/dx for the leaf x of a finished backward pass, as a tensor that enters the next graph
/// untracked; zeros where x did not reach the loss.
fn stream_gradient<B: AutodiffBackend>(x: &Tensor<B, 3>, grads: &B::Gradients) -> Tensor<B, 3> {
    match x.grad(grads) {
        Some(g) => Tensor::from_inner(g),
        None => x.zeros_like(),
    }
}

/// The head's loss in the graph over the stream x(L) [b, t, hidden], in blocks of positions
/// (at most `block_values` logits each): each block's norm, head and log-softmax
/// differentiated on its own. Returns the loss and dL/dx(L).
fn graph_head_in_blocks<B: AutodiffBackend>(
    model: &Transformer<B>,
    top: Tensor<B, 3>,
    rows: &[Vec<u32>],
    loss_scale: f64,
    block_values: usize,
    collect: &mut Collect<'_, B>,
) -> Result<(f64, Tensor<B, 3>)> {
    let [b, t, hidden] = top.dims();
    let n = b * (t - 1);
    let vocab = model.config.vocab_size;
    let block = (block_values / vocab.max(1)).clamp(1, n.max(1));
    // [n, hidden]: position i of row r at r * (t - 1) + i
    let positions = top
        .set_require_grad(false)
        .narrow(1, 0, t - 1)
        .reshape([n, hidden]);
    let targets = targets(rows);
    let mut value = 0.0;
    let mut parts = Vec::with_capacity(n.div_ceil(block));
    for start in (0..n).step_by(block) {
        let len = block.min(n - start);
        let xs = positions.clone().narrow(0, start, len).require_grad(); // [len, hidden]
        let logp = log_softmax(to_f32(model.head(xs.clone())), 1); // [len, vocab]
        let picked = Tensor::<B, 2, Int>::from_data(
            TensorData::new(targets[start..start + len].to_vec(), [len, 1]),
            &model.device,
        );
        // this block's share of the mean
        let loss = logp.gather(1, picked).sum().neg() / n as f64;
        value += to_f32_vec(loss.clone())?[0] as f64;
        let grads = (loss * loss_scale).backward();
        collect(&grads)?;
        parts.push(match xs.grad(&grads) {
            Some(g) => Tensor::<B, 2>::from_inner(g),
            None => xs.zeros_like(),
        });
    }
    let dx = Tensor::cat(parts, 0).reshape([b, t - 1, hidden]);
    // the last position predicts nothing
    let last = Tensor::zeros([b, 1, hidden], (&model.device, dx.dtype()));
    Ok((value, Tensor::cat(vec![dx, last], 1)))
}
