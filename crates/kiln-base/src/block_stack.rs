//! A model seen as a stack: an embedding, blocks that map hidden states `[batch, seq, d]` to
//! hidden states of the same shape, and a head that turns the last ones into a loss.
//!
//! That is all per-block activation recomputation (kiln-train's `Recompute::PerBlock`) needs:
//! it keeps only each block's input, then walks the blocks from the top, recomputing one at a
//! time. GPT and both BERT heads implement it in kiln-model; so can any Transformer of yours.

use burn::tensor::Tensor;

use crate::batch::Batch;
use crate::train_model::{BoxError, StepOutput};

/// Embedding, blocks and head of a model trained on batches `B`. Composed in order they must
/// give the model's [`forward_step`](crate::TrainModel::forward_step).
pub trait BlockStack<B: Batch> {
    /// The number of blocks.
    fn num_blocks(&self) -> usize;

    /// Whether any dropout is active. Dropout draws from the device generator, so a pass
    /// without a graph must then run on the autodiff device to draw the masks the
    /// recomputation will draw again.
    fn has_dropout(&self) -> bool;

    /// Checks the batch (ids in range, shapes) and returns the input of block 0.
    fn embed(&self, batch: &B) -> Result<Tensor<3>, BoxError>;

    /// Block `index` applied to `x` (the batch gives masks, if the block needs them).
    fn block(&self, index: usize, x: Tensor<3>, batch: &B) -> Tensor<3>;

    /// From the last block's output to the loss (in f32) and the correct count.
    fn head(&self, x: Tensor<3>, batch: &B) -> Result<StepOutput, BoxError>;
}
