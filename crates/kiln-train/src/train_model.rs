//! The model side of the loop: a model turns a batch into a loss and what evaluation counts.

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use kiln_data::{ClassificationBatch, IGNORE_INDEX, LmBatch, MlmBatch};
use kiln_model::bert::{BertForMaskedLm, BertForSequenceClassification, BertInput};
use kiln_model::gpt::Gpt;

use crate::error::Result;
use crate::precision::Precision;

/// What one forward pass on a batch gives the loop.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The mean loss over the batch's [`weight`](Batch::weight) units (tokens or examples).
    pub loss: Tensor<1>,
    /// How many of those units the model got right (argmax equals the target), if it predicts
    /// classes; evaluation reports it as accuracy.
    pub correct: Option<Tensor<1, Int>>,
}

/// A batch knows how much it weighs: the number of units its mean loss averages over. Gradient
/// accumulation weights micro-batches by it, so k micro-batches give the same update as one
/// batch holding all of them (token-weighted for language models, HF Trainer semantics).
pub trait Batch: Clone + Send {
    /// Loss-carrying units: target tokens for language models, examples for classifiers.
    fn weight(&self) -> usize;
}

impl Batch for LmBatch {
    fn weight(&self) -> usize {
        self.target_tokens()
    }
}

impl Batch for MlmBatch {
    fn weight(&self) -> usize {
        self.masked_tokens()
    }
}

impl Batch for ClassificationBatch {
    fn weight(&self) -> usize {
        self.batch_size()
    }
}

/// A model the [`Trainer`](crate::Trainer) can train on batches of type `B`.
pub trait TrainModel<B: Batch>: Module + Clone + Send + 'static {
    /// The forward pass: mean loss and, optionally, the count of correct predictions.
    fn forward_step(&self, batch: &B) -> Result<StepOutput>;

    /// Forward and backward with per-block activation recomputation
    /// ([`Recompute::PerBlock`](crate::Recompute)), computing in `precision`: returns the
    /// output and the gradients of `loss · loss_factor` with respect to `self` (the f32 master
    /// weights). `None` means the model does not support it; the default.
    fn backward_per_block(
        &self,
        _batch: &B,
        _loss_factor: f64,
        _precision: Precision,
    ) -> Option<Result<(StepOutput, burn::optim::GradientsParams)>> {
        None
    }
}

/// Count of positions whose argmax equals the target, skipping ignored targets.
pub fn correct_tokens(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1, Int> {
    let predicted = logits.argmax(2).squeeze_dim::<2>(2);
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    predicted.equal(targets).bool_and(counted).int().sum()
}

impl TrainModel<LmBatch> for Gpt {
    fn forward_step(&self, batch: &LmBatch) -> Result<StepOutput> {
        let logits = self.forward(batch.inputs.clone())?;
        // The loss is taken in f32 whatever the compute precision, as torch.autocast does.
        let logits = logits.cast(burn::tensor::FloatDType::F32);
        let correct = correct_tokens(logits.clone(), batch.targets.clone());
        let loss = self.loss(logits, batch.targets.clone(), Some(IGNORE_INDEX));
        Ok(StepOutput {
            loss,
            correct: Some(correct),
        })
    }

    fn backward_per_block(
        &self,
        batch: &LmBatch,
        loss_factor: f64,
        precision: Precision,
    ) -> Option<Result<(StepOutput, burn::optim::GradientsParams)>> {
        Some(crate::recompute::gpt_per_block(
            self,
            batch,
            loss_factor,
            precision,
        ))
    }
}

impl TrainModel<MlmBatch> for BertForMaskedLm {
    fn forward_step(&self, batch: &MlmBatch) -> Result<StepOutput> {
        let input = BertInput {
            input_ids: batch.input_ids.clone(),
            token_type_ids: Some(batch.token_type_ids.clone()),
            attention_mask: Some(batch.attention_mask()),
        };
        let logits = self.forward(input)?.cast(burn::tensor::FloatDType::F32);
        let correct = correct_tokens(logits.clone(), batch.labels.clone());
        Ok(StepOutput {
            loss: self.loss(logits, batch.labels.clone()),
            correct: Some(correct),
        })
    }
}

impl TrainModel<ClassificationBatch> for BertForSequenceClassification {
    fn forward_step(&self, batch: &ClassificationBatch) -> Result<StepOutput> {
        let input = BertInput {
            input_ids: batch.input_ids.clone(),
            token_type_ids: Some(batch.token_type_ids.clone()),
            attention_mask: Some(batch.attention_mask()),
        };
        let logits = self.forward(input)?.cast(burn::tensor::FloatDType::F32);
        let predicted = logits.clone().argmax(1).squeeze_dim::<1>(1);
        let correct = predicted.equal(batch.labels.clone()).int().sum();
        Ok(StepOutput {
            loss: self.loss(logits, batch.labels.clone()),
            correct: Some(correct),
        })
    }
}
