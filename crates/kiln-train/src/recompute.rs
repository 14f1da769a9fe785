//! Activation recomputation: trade compute for memory in the backward pass.
//!
//! - [`Recompute::Balanced`] is Burn's own gradient checkpointing: the autodiff device marks
//!   memory-bound operations (elementwise, normalization) for recomputation and keeps the
//!   outputs of compute-bound ones (matmuls).
//! - [`Recompute::PerBlock`] has `torch.utils.checkpoint` semantics, one checkpoint per
//!   Transformer block: a first pass without a graph keeps only each block's input; the
//!   backward pass then walks the blocks from the top, recomputing one block at a time with
//!   its graph and pulling the incoming gradient through it. Peak activation memory is one
//!   block's graph plus the block inputs, at the price of one extra forward pass.
//!
//! Burn 0.22.1 has no public hook to run user code inside its backward pass, so PerBlock is
//! driven from outside: one `backward()` per block, each on the surrogate scalar
//! `sum(block(x) ⊙ g)` whose gradient with respect to the block's parameters and input is
//! exactly the vector-Jacobian product with the incoming gradient `g`. Dropout draws the same
//! masks in both passes because the device is reseeded before each block.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use kiln_data::{IGNORE_INDEX, LmBatch};
use kiln_model::attention::AttentionMask;
use kiln_model::gpt::Gpt;

use crate::error::Result as TrainResult;
use crate::precision::Precision;
use crate::train_model::{StepOutput, correct_tokens};

/// Which activations the backward pass recomputes instead of keeping.
#[derive(burn::config::Config, Copy, Debug, PartialEq, Eq)]
pub enum Recompute {
    /// Keep every activation (fastest, most memory).
    None,
    /// Burn's gradient checkpointing: recompute memory-bound operations.
    Balanced,
    /// Keep only each Transformer block's input; recompute blocks one at a time.
    PerBlock,
}

impl Recompute {
    /// The training device for this mode: Balanced turns on Burn's checkpointing strategy.
    pub fn training_device(self, device: &Device) -> Device {
        let device = device.clone().autodiff();
        match self {
            Recompute::Balanced => device.gradient_checkpointing(),
            _ => device,
        }
    }
}

/// Seeds the device's generator for block `stage` of a per-block step, so that dropout draws
/// the same masks in the graph-free pass and in the recomputation.
fn reseed(device: &Device, seed: u64, stage: usize) {
    device.seed(seed ^ (stage as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
}

/// Detaches every parameter: a forward pass of the copy records no graph, while dropout (which
/// follows the device, not the parameters) stays on.
struct Detached;

impl ModuleMapper for Detached {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.detach())
    }
}

/// Whether any dropout of the model is active.
fn has_dropout(model: &Gpt) -> bool {
    model.embedding_dropout.prob > 0.0
        || model.blocks.iter().any(|b| {
            b.attn.attn_dropout.prob > 0.0
                || b.attn.resid_dropout.prob > 0.0
                || b.ffn.dropout.prob > 0.0
        })
}

/// Per-block recomputation for kiln's [`Gpt`] on a language-modeling batch: returns the loss
/// and the gradients of `loss · loss_factor` with respect to the parameters of `params` (the
/// f32 master copy), computing in `precision`.
///
/// Each stage casts the master weights afresh: a backward pass consumes the graph of the cast,
/// so one cast cannot serve several backward passes.
pub fn gpt_per_block(
    params: &Gpt,
    batch: &LmBatch,
    loss_factor: f64,
    precision: Precision,
) -> TrainResult<(StepOutput, GradientsParams)> {
    let model = &precision.compute_model(params);
    kiln_model::loss::check_token_ids(&batch.inputs, model.vocab_size, model.block_size)?;
    let device = batch.inputs.device();
    // Drawn from the device generator, which the trainer seeds every step: deterministic.
    let seed = Tensor::<1>::random([1], Distribution::Uniform(0.0, 1.0), &device)
        .into_scalar::<f64>()
        .to_bits();
    let mask = AttentionMask {
        causal: true,
        padding: None,
    };
    let rope = model.rope.as_ref();

    // Pass 1, no graph: every block's input. Without dropout it runs on the plain backend,
    // where nothing is retained; with dropout it must draw the masks the recomputation will
    // draw, so it runs on the autodiff device with detached parameters (Burn 0.22.1 keeps such
    // untracked activations alive until the step ends, so the memory saving is then lost).
    let mut inputs = Vec::with_capacity(model.blocks.len());
    let x = if has_dropout(model) {
        let frozen = model.clone().map(&mut Detached);
        reseed(&device, seed, 0);
        let mut x = frozen.embed(batch.inputs.clone(), 0).detach();
        for (i, block) in frozen.blocks.iter().enumerate() {
            inputs.push(x.clone());
            reseed(&device, seed, i + 1);
            x = block.forward(x, mask, rope, None).detach();
        }
        x
    } else {
        let frozen = model.valid();
        let mut x = frozen.embed(batch.inputs.clone().without_autodiff(), 0);
        for block in &frozen.blocks {
            inputs.push(Tensor::from_inner(x.clone()));
            x = block.forward(x, mask, frozen.rope.as_ref(), None);
        }
        Tensor::from_inner(x)
    };

    // Head: loss and the gradient flowing into the last block's output.
    let mut grads = GradientsAccumulator::<Gpt>::new();
    let top = x.require_grad();
    let model = &precision.compute_model(params);
    let logits = model.head(top.clone()).cast(burn::tensor::FloatDType::F32);
    let correct = correct_tokens(logits.clone(), batch.targets.clone());
    let loss = model.loss(logits, batch.targets.clone(), Some(IGNORE_INDEX));
    let backward = (loss.clone() * loss_factor).backward();
    let mut upstream = top.grad(&backward);
    grads.accumulate(params, GradientsParams::from_grads(backward, params));

    // Blocks, top down, each recomputed with its graph.
    for i in (0..params.blocks.len()).rev() {
        let Some(g) = upstream.take() else { break };
        let input = inputs.pop().expect("one input per block").require_grad();
        let model = precision.compute_model(params);
        reseed(&device, seed, i + 1);
        let out = model.blocks[i].forward(input.clone(), mask, model.rope.as_ref(), None);
        let backward = (out * Tensor::from_inner(g)).sum().backward();
        upstream = input.grad(&backward);
        grads.accumulate(params, GradientsParams::from_grads(backward, params));
    }

    // Embeddings.
    if let Some(g) = upstream {
        let model = precision.compute_model(params);
        reseed(&device, seed, 0);
        let x = model.embed(batch.inputs.clone(), 0);
        let backward = (x * Tensor::from_inner(g)).sum().backward();
        grads.accumulate(params, GradientsParams::from_grads(backward, params));
    }
    Ok((
        StepOutput {
            loss: loss.detach(),
            correct: Some(correct),
        },
        grads.grads(),
    ))
}
