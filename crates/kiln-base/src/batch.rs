//! The batches kiln's batchers produce and kiln's models train on, and what the training loop
//! needs to know about any batch: its [`weight`](Batch::weight).

use burn::tensor::{Bool, Int, Tensor};

/// A batch knows how much it weighs: the number of units its mean loss averages over. Gradient
/// accumulation (and data parallelism) weights micro-batches by it, so k micro-batches give the
/// same update as one batch holding all of them (token-weighted for language models, HF Trainer
/// semantics).
pub trait Batch: Clone + Send + Sized {
    /// What the loss averages over, plural, for progress lines: `"tokens"`, `"examples"`.
    const UNITS: &'static str;

    /// Loss-carrying units: target tokens for language models, examples for classifiers.
    fn weight(&self) -> usize;

    /// The same batch on the device without autodiff (graph-free passes run there).
    fn without_autodiff(&self) -> Self;
}

/// Targets equal to this carry no loss (PyTorch's and HuggingFace's `-100` convention).
pub const IGNORE_INDEX: i64 = -100;

/// A causal language-modeling batch: predict `targets[b, t]` from `inputs[b, ..=t]`.
#[derive(Clone, Debug)]
pub struct LmBatch {
    /// Token ids, `[batch, seq]`.
    pub inputs: Tensor<2, Int>,
    /// The next token at every position, `[batch, seq]`; [`IGNORE_INDEX`] where no loss is taken.
    pub targets: Tensor<2, Int>,
}

impl LmBatch {
    /// The number of target tokens that carry loss: the weight of this batch when gradients of
    /// several micro-batches are averaged. Reads one scalar back from the device.
    pub fn target_tokens(&self) -> usize {
        let ignored: i64 = self
            .targets
            .clone()
            .equal_elem(IGNORE_INDEX)
            .int()
            .sum()
            .into_scalar();
        self.targets.shape().num_elements() - ignored as usize
    }

    /// The number of sequences in the batch.
    pub fn batch_size(&self) -> usize {
        self.inputs.dims()[0]
    }
}

impl Batch for LmBatch {
    const UNITS: &'static str = "tokens";

    fn weight(&self) -> usize {
        self.target_tokens()
    }

    fn without_autodiff(&self) -> Self {
        Self {
            inputs: self.inputs.clone().without_autodiff(),
            targets: self.targets.clone().without_autodiff(),
        }
    }
}

/// A masked-language-modeling batch for BERT, padded to its longest sequence. The fields map
/// onto kiln-model's `BertInput` (`input_ids`, `token_type_ids`, and
/// [`MlmBatch::attention_mask`]) and `BertForMaskedLm::loss(logits, labels)`.
#[derive(Clone, Debug)]
pub struct MlmBatch {
    /// Token ids after masking, `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// Segment ids, `[batch, seq]`.
    pub token_type_ids: Tensor<2, Int>,
    /// `[batch, seq]`, `true` at padding positions (kiln-model's convention).
    pub padding_mask: Tensor<2, Bool>,
    /// The original token at masked positions, [`IGNORE_INDEX`] everywhere else, `[batch, seq]`.
    pub labels: Tensor<2, Int>,
}

impl MlmBatch {
    /// The number of positions that carry loss. Reads one scalar back from the device.
    pub fn masked_tokens(&self) -> usize {
        count_not_ignored(&self.labels)
    }

    /// HuggingFace's attention mask: 1 for real tokens, 0 for padding.
    pub fn attention_mask(&self) -> Tensor<2, Int> {
        self.padding_mask.clone().bool_not().int()
    }

    /// The number of sequences in the batch.
    pub fn batch_size(&self) -> usize {
        self.input_ids.dims()[0]
    }
}

impl Batch for MlmBatch {
    const UNITS: &'static str = "tokens";

    fn weight(&self) -> usize {
        self.masked_tokens()
    }

    fn without_autodiff(&self) -> Self {
        Self {
            input_ids: self.input_ids.clone().without_autodiff(),
            token_type_ids: self.token_type_ids.clone().without_autodiff(),
            padding_mask: self.padding_mask.clone().without_autodiff(),
            labels: self.labels.clone().without_autodiff(),
        }
    }
}

/// A sequence-classification batch, padded to its longest sequence. The fields map onto
/// kiln-model's `BertInput` and `BertForSequenceClassification::loss(logits, labels)`.
#[derive(Clone, Debug)]
pub struct ClassificationBatch {
    /// Token ids, `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// Segment ids, `[batch, seq]`.
    pub token_type_ids: Tensor<2, Int>,
    /// `[batch, seq]`, `true` at padding positions (kiln-model's convention).
    pub padding_mask: Tensor<2, Bool>,
    /// The class of each sequence, `[batch]`.
    pub labels: Tensor<1, Int>,
}

impl ClassificationBatch {
    /// HuggingFace's attention mask: 1 for real tokens, 0 for padding.
    pub fn attention_mask(&self) -> Tensor<2, Int> {
        self.padding_mask.clone().bool_not().int()
    }

    /// The number of sequences in the batch.
    pub fn batch_size(&self) -> usize {
        self.input_ids.dims()[0]
    }
}

impl Batch for ClassificationBatch {
    const UNITS: &'static str = "examples";

    fn weight(&self) -> usize {
        self.batch_size()
    }

    fn without_autodiff(&self) -> Self {
        Self {
            input_ids: self.input_ids.clone().without_autodiff(),
            token_type_ids: self.token_type_ids.clone().without_autodiff(),
            padding_mask: self.padding_mask.clone().without_autodiff(),
            labels: self.labels.clone().without_autodiff(),
        }
    }
}

fn count_not_ignored(labels: &Tensor<2, Int>) -> usize {
    let ignored: i64 = labels
        .clone()
        .equal_elem(IGNORE_INDEX)
        .int()
        .sum()
        .into_scalar();
    labels.shape().num_elements() - ignored as usize
}
