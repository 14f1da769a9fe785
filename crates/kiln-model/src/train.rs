//! kiln's models as kiln-base's [`TrainModel`]s on kiln's batch types, and as
//! [`BlockStack`]s for per-block activation recomputation: what kiln's `Trainer` trains.
//!
//! Every step checks its batch at the model's edge: input ids against the vocabulary and
//! context (two scalars read back), targets and labels against the vocabulary or the classes
//! (`IGNORE_INDEX` allowed; one reduction over the `[batch, seq]` targets and one scalar read
//! back, next to a forward pass over the whole batch). A bad id is a typed error, not a panic
//! in Burn's `gather` or a loss computed from another row's logit.

use burn::tensor::{FloatDType, Tensor};
use kiln_base::{
    BlockStack, BoxError, ClassificationBatch, IGNORE_INDEX, LmBatch, MlmBatch, StepOutput,
    TrainModel, correct_tokens,
};

use crate::attention::AttentionMask;
use crate::bert::{Bert, BertForMaskedLm, BertForSequenceClassification, BertInput};
use crate::gpt::Gpt;
use crate::linear::LinearLayer;
use crate::loss::{check_targets, check_token_ids};

/// The causal mask of every GPT block while training (sequences are packed, never padded).
const CAUSAL: AttentionMask<'static> = AttentionMask {
    causal: true,
    padding: None,
};

impl<L: LinearLayer + 'static> TrainModel<LmBatch> for Gpt<L> {
    fn forward_step(&self, batch: &LmBatch) -> Result<StepOutput, BoxError> {
        let logits = self.forward(batch.inputs.clone())?;
        self.lm_output(logits, batch)
    }

    fn block_stack(&self) -> Option<&dyn BlockStack<LmBatch>> {
        Some(self)
    }
}

impl<L: LinearLayer + 'static> BlockStack<LmBatch> for Gpt<L> {
    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn has_dropout(&self) -> bool {
        self.embedding_dropout.prob > 0.0
            || self.blocks.iter().any(|b| {
                b.attn.attn_dropout.prob > 0.0
                    || b.attn.resid_dropout.prob > 0.0
                    || b.ffn.dropout.prob > 0.0
            })
    }

    fn embed(&self, batch: &LmBatch) -> Result<Tensor<3>, BoxError> {
        check_token_ids(&batch.inputs, self.vocab_size, self.block_size)?;
        Ok(Gpt::embed(self, batch.inputs.clone(), 0))
    }

    fn block(&self, index: usize, x: Tensor<3>, _batch: &LmBatch) -> Tensor<3> {
        self.blocks[index].forward(x, CAUSAL, self.rope.as_ref(), None)
    }

    fn head(&self, x: Tensor<3>, batch: &LmBatch) -> Result<StepOutput, BoxError> {
        self.lm_output(Gpt::head(self, x), batch)
    }
}

impl<L: LinearLayer> Gpt<L> {
    /// Loss and correct count of next-token logits, in f32 whatever the compute precision;
    /// from this rank's slice of the logits under the vocabulary split.
    fn lm_output(&self, logits: Tensor<3>, batch: &LmBatch) -> Result<StepOutput, BoxError> {
        check_targets(
            &batch.targets,
            self.vocab_size,
            Some(IGNORE_INDEX),
            "target",
        )?;
        let logits = logits.cast(FloatDType::F32);
        let Some(vp) = &self.vocab_parallel else {
            return Ok(StepOutput {
                correct: Some(correct_tokens(logits.clone(), batch.targets.clone())),
                loss: crate::loss::cross_entropy(logits, batch.targets.clone(), Some(IGNORE_INDEX)),
            });
        };
        let [b, t, rows] = logits.dims();
        let (logits, targets) = (
            logits.reshape([b * t, rows]),
            batch.targets.clone().reshape([b * t]),
        );
        Ok(StepOutput {
            correct: Some(vp.correct(logits.clone(), targets.clone(), Some(IGNORE_INDEX))?),
            loss: vp.cross_entropy(logits, targets, Some(IGNORE_INDEX))?,
        })
    }
}

/// BERT's input from a batch's fields (HF's attention mask: 1 at real tokens).
fn bert_input(
    input_ids: &Tensor<2, burn::tensor::Int>,
    token_type_ids: &Tensor<2, burn::tensor::Int>,
    padding: &Tensor<2, burn::tensor::Bool>,
) -> BertInput {
    BertInput {
        input_ids: input_ids.clone(),
        token_type_ids: Some(token_type_ids.clone()),
        attention_mask: Some(padding.clone().bool_not().int()),
    }
}

/// Whether any dropout of the encoder is active.
fn bert_has_dropout(bert: &Bert) -> bool {
    bert.embeddings.dropout.prob > 0.0
        || bert.layers.iter().any(|b| {
            b.attn.attn_dropout.prob > 0.0
                || b.attn.resid_dropout.prob > 0.0
                || b.ffn.dropout.prob > 0.0
        })
}

/// Checks a BERT batch and embeds it.
fn bert_embed(
    bert: &Bert,
    input_ids: &Tensor<2, burn::tensor::Int>,
    token_type_ids: &Tensor<2, burn::tensor::Int>,
    padding: &Tensor<2, burn::tensor::Bool>,
) -> Result<Tensor<3>, BoxError> {
    bert.check(&bert_input(input_ids, token_type_ids, padding))?;
    Ok(bert.embed(input_ids.clone(), Some(token_type_ids.clone())))
}

impl TrainModel<MlmBatch> for BertForMaskedLm {
    fn forward_step(&self, batch: &MlmBatch) -> Result<StepOutput, BoxError> {
        let input = bert_input(&batch.input_ids, &batch.token_type_ids, &batch.padding_mask);
        let logits = self.forward(input)?;
        mlm_output(logits, batch)
    }

    fn block_stack(&self) -> Option<&dyn BlockStack<MlmBatch>> {
        Some(self)
    }
}

impl BlockStack<MlmBatch> for BertForMaskedLm {
    fn num_blocks(&self) -> usize {
        self.bert.layers.len()
    }

    fn has_dropout(&self) -> bool {
        bert_has_dropout(&self.bert)
    }

    fn embed(&self, batch: &MlmBatch) -> Result<Tensor<3>, BoxError> {
        bert_embed(
            &self.bert,
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.padding_mask,
        )
    }

    fn block(&self, index: usize, x: Tensor<3>, batch: &MlmBatch) -> Tensor<3> {
        let mask = Bert::mask(Some(&batch.padding_mask));
        self.bert.layers[index].forward(x, mask, None, None)
    }

    fn head(&self, x: Tensor<3>, batch: &MlmBatch) -> Result<StepOutput, BoxError> {
        mlm_output(BertForMaskedLm::head(self, x), batch)
    }
}

fn mlm_output(logits: Tensor<3>, batch: &MlmBatch) -> Result<StepOutput, BoxError> {
    let vocab = logits.dims()[2];
    check_targets(&batch.labels, vocab, Some(IGNORE_INDEX), "masked-LM label")?;
    let logits = logits.cast(FloatDType::F32);
    Ok(StepOutput {
        correct: Some(correct_tokens(logits.clone(), batch.labels.clone())),
        loss: crate::loss::cross_entropy(logits, batch.labels.clone(), Some(IGNORE_INDEX)),
    })
}

impl TrainModel<ClassificationBatch> for BertForSequenceClassification {
    fn forward_step(&self, batch: &ClassificationBatch) -> Result<StepOutput, BoxError> {
        let input = bert_input(&batch.input_ids, &batch.token_type_ids, &batch.padding_mask);
        let logits = self.forward(input)?;
        self.classification_output(logits, batch)
    }

    fn block_stack(&self) -> Option<&dyn BlockStack<ClassificationBatch>> {
        Some(self)
    }
}

impl BlockStack<ClassificationBatch> for BertForSequenceClassification {
    fn num_blocks(&self) -> usize {
        self.bert.layers.len()
    }

    fn has_dropout(&self) -> bool {
        bert_has_dropout(&self.bert) || self.dropout.prob > 0.0
    }

    fn embed(&self, batch: &ClassificationBatch) -> Result<Tensor<3>, BoxError> {
        bert_embed(
            &self.bert,
            &batch.input_ids,
            &batch.token_type_ids,
            &batch.padding_mask,
        )
    }

    fn block(&self, index: usize, x: Tensor<3>, batch: &ClassificationBatch) -> Tensor<3> {
        let mask = Bert::mask(Some(&batch.padding_mask));
        self.bert.layers[index].forward(x, mask, None, None)
    }

    fn head(&self, x: Tensor<3>, batch: &ClassificationBatch) -> Result<StepOutput, BoxError> {
        let logits = BertForSequenceClassification::head(self, x)?;
        self.classification_output(logits, batch)
    }
}

impl BertForSequenceClassification {
    fn classification_output(
        &self,
        logits: Tensor<2>,
        batch: &ClassificationBatch,
    ) -> Result<StepOutput, BoxError> {
        check_targets(&batch.labels, self.num_labels, None, "class label")?;
        let logits = logits.cast(FloatDType::F32);
        let predicted = logits.clone().argmax(1).squeeze_dim::<1>(1);
        Ok(StepOutput {
            correct: Some(predicted.equal(batch.labels.clone()).int().sum()),
            loss: self.loss(logits, batch.labels.clone()),
        })
    }
}
