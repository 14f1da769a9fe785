//! The batches kiln's batchers produce and kiln's models train on.

use burn::tensor::{Bool, Int, Tensor};

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

fn count_not_ignored(labels: &Tensor<2, Int>) -> usize {
    let ignored: i64 = labels
        .clone()
        .equal_elem(IGNORE_INDEX)
        .int()
        .sum()
        .into_scalar();
    labels.shape().num_elements() - ignored as usize
}
