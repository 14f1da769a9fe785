//! Activation recomputation: trade compute for memory in the backward pass.
//!
//! - [`Recompute::Balanced`] is Burn's own gradient checkpointing: the autodiff device marks
//!   memory-bound operations (elementwise, normalization) for recomputation and keeps the
//!   outputs of compute-bound ones (matmuls).
//! - [`Recompute::PerBlock`] has `torch.utils.checkpoint` semantics, one checkpoint per
//!   Transformer block, for any model that is a [`BlockStack`]: a first pass without a graph
//!   keeps only each block's input; the backward pass then walks the blocks from the top,
//!   recomputing one block at a time with its graph and pulling the incoming gradient through
//!   it. Peak activation memory is one block's graph plus the block inputs, at the price of one
//!   extra forward pass.
//!
//! Burn 0.22.1 has no public hook to run user code inside its backward pass, so PerBlock is
//! driven from outside: one `backward()` per block, each on the surrogate scalar
//! `sum(block(x) ⊙ g)` whose gradient with respect to the block's parameters and input is
//! exactly the vector-Jacobian product with the incoming gradient `g`. Dropout draws the same
//! masks in both passes because the device is reseeded before each block.

use burn::module::{ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use kiln_base::{Batch, BlockStack, Precision, StepOutput, TrainModel, seed};

use crate::error::{Result as TrainResult, TrainError};

/// Which activations the backward pass recomputes instead of keeping.
#[derive(burn::config::Config, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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

/// Seeds the device's generator for stage `stage` of a per-block step (0 the embedding, i + 1
/// block i), so that dropout draws the same masks in the graph-free pass and in the
/// recomputation.
fn reseed(device: &Device, step_seed: u64, stage: usize) {
    device.seed(seed::mix(step_seed, stage as u64));
}

/// Detaches every parameter: a forward pass of the copy records no graph, while dropout (which
/// follows the device, not the parameters) stays on.
struct Detached;

impl ModuleMapper for Detached {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.detach())
    }
}

/// The stack of a model, or the error that it is not one.
fn stack_of<M: TrainModel<B>, B: Batch>(model: &M) -> TrainResult<&dyn BlockStack<B>> {
    model.block_stack().ok_or_else(|| {
        TrainError::InvalidConfig(
            "Recompute::PerBlock needs a model that is a BlockStack (TrainModel::block_stack)"
                .into(),
        )
    })
}

/// Per-block recomputation of one micro-batch: returns the output and the gradients of
/// `loss · loss_factor` with respect to the parameters of `params` (the f32 master copy),
/// computing in `precision` on the training `device`.
///
/// Each stage casts the master weights afresh: a backward pass consumes the graph of the cast,
/// so one cast cannot serve several backward passes.
pub fn per_block_backward<M: TrainModel<B>, B: Batch>(
    params: &M,
    batch: &B,
    loss_factor: f64,
    precision: Precision,
    device: &Device,
) -> TrainResult<(StepOutput, GradientsParams)> {
    let model = precision.compute_model(params);
    let stack = stack_of(&model)?;
    let blocks = stack.num_blocks();
    // Drawn from the device generator, which the trainer seeds every step: deterministic.
    let step_seed = Tensor::<1>::random([1], Distribution::Uniform(0.0, 1.0), device)
        .into_scalar::<f64>()
        .to_bits();

    // Pass 1, no graph: every block's input. Without dropout it runs on the plain backend,
    // where nothing is retained; with dropout it must draw the masks the recomputation will
    // draw, so it runs on the autodiff device with detached parameters (Burn 0.22.1 keeps such
    // untracked activations alive until the step ends, so the memory saving is then lost).
    let mut inputs = Vec::with_capacity(blocks);
    let x = if stack.has_dropout() {
        let frozen = model.clone().map(&mut Detached);
        let frozen = stack_of(&frozen)?;
        reseed(device, step_seed, 0);
        let mut x = frozen.embed(batch).map_err(TrainError::Model)?.detach();
        for i in 0..blocks {
            inputs.push(x.clone());
            reseed(device, step_seed, i + 1);
            x = frozen.block(i, x, batch).detach();
        }
        x
    } else {
        let valid = model.valid();
        let frozen = stack_of(&valid)?;
        let plain = batch.without_autodiff();
        let mut x = frozen.embed(&plain).map_err(TrainError::Model)?;
        for i in 0..blocks {
            inputs.push(Tensor::from_inner(x.clone()));
            x = frozen.block(i, x, &plain);
        }
        Tensor::from_inner(x)
    };

    // Head: loss and the gradient flowing into the last block's output.
    let mut grads = GradientsAccumulator::<M>::new();
    let top = x.require_grad();
    let model = precision.compute_model(params);
    let out = stack_of(&model)?
        .head(top.clone(), batch)
        .map_err(TrainError::Model)?;
    let backward = (out.loss.clone() * loss_factor).backward();
    let mut upstream = top.grad(&backward);
    grads.accumulate(params, GradientsParams::from_grads(backward, params));

    // Blocks, top down, each recomputed with its graph.
    for i in (0..blocks).rev() {
        let Some(g) = upstream.take() else { break };
        let input = inputs.pop().expect("one input per block").require_grad();
        let model = precision.compute_model(params);
        reseed(device, step_seed, i + 1);
        let out = stack_of(&model)?.block(i, input.clone(), batch);
        let backward = (out * Tensor::from_inner(g)).sum().backward();
        upstream = input.grad(&backward);
        grads.accumulate(params, GradientsParams::from_grads(backward, params));
    }

    // Embedding.
    if let Some(g) = upstream {
        let model = precision.compute_model(params);
        reseed(device, step_seed, 0);
        let x = stack_of(&model)?.embed(batch).map_err(TrainError::Model)?;
        // A frozen embedding (a LoRA base) records no graph: nothing below to differentiate.
        if x.is_tracked() {
            let backward = (x * Tensor::from_inner(g)).sum().backward();
            grads.accumulate(params, GradientsParams::from_grads(backward, params));
        }
    }
    Ok((
        StepOutput {
            loss: out.loss.detach(),
            correct: out.correct,
        },
        grads.grads(),
    ))
}
