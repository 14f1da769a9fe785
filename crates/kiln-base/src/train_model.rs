//! The model side of a training step: a model turns a batch into a loss and what evaluation
//! counts. kiln's models implement [`TrainModel`] for kiln's batch types in kiln-model; a model
//! of your own implements it for its batches, and kiln's `Trainer` trains it.

use burn::module::Module;
use burn::tensor::{Int, Tensor};

use crate::batch::{Batch, IGNORE_INDEX};
use crate::block_stack::BlockStack;

/// Any error a model can return from a training step; `?` converts every error type into it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What one forward pass on a batch gives the loop.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The mean loss over the batch's [`weight`](Batch::weight) units (tokens or examples), in
    /// f32 whatever the compute precision (as `torch.autocast` takes it).
    pub loss: Tensor<1>,
    /// How many of those units the model got right (argmax equals the target), if it predicts
    /// classes; evaluation reports it as accuracy.
    pub correct: Option<Tensor<1, Int>>,
}

/// A model kiln's `Trainer` can train on batches of type `B`.
///
/// ```
/// use burn::module::{Module, Param};
/// use burn::tensor::{Device, Tensor};
/// use kiln_base::{BoxError, LmBatch, StepOutput, TrainModel};
///
/// /// A bigram model: one logit row per previous token.
/// #[derive(Module, Debug)]
/// struct Bigram {
///     table: Param<Tensor<2>>,
/// }
///
/// impl TrainModel<LmBatch> for Bigram {
///     fn forward_step(&self, batch: &LmBatch) -> Result<StepOutput, BoxError> {
///         let [b, t] = batch.inputs.dims();
///         let logits = self.table.val().select(0, batch.inputs.clone().reshape([b * t]));
///         let logp = burn::tensor::activation::log_softmax(logits, 1);
///         let picked = logp.gather(1, batch.targets.clone().reshape([b * t, 1]));
///         Ok(StepOutput { loss: picked.mean().neg(), correct: None })
///     }
/// }
///
/// let device = Device::flex().autodiff();
/// let model = Bigram { table: Param::from_tensor(Tensor::zeros([5, 5], &device)) };
/// let ids = burn::tensor::Tensor::<2, burn::tensor::Int>::from_ints([[1, 2, 3]], &device);
/// let batch = LmBatch { inputs: ids.clone(), targets: ids };
/// let out = model.forward_step(&batch)?;
/// assert!((out.loss.into_scalar::<f32>() - 5f32.ln()).abs() < 1e-6);
/// # Ok::<(), BoxError>(())
/// ```
pub trait TrainModel<B: Batch>: Module + Clone + Send + 'static {
    /// The forward pass: mean loss and, optionally, the count of correct predictions.
    fn forward_step(&self, batch: &B) -> Result<StepOutput, BoxError>;

    /// The model as embedding, blocks and head, for per-block activation recomputation; `None`
    /// (the default) when it is not such a stack.
    fn block_stack(&self) -> Option<&dyn BlockStack<B>> {
        None
    }
}

/// Count of positions whose argmax equals the target, skipping [`IGNORE_INDEX`] targets.
pub fn correct_tokens(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1, Int> {
    let predicted = logits.argmax(2).squeeze_dim::<2>(2);
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    predicted.equal(targets).bool_and(counted).int().sum()
}
