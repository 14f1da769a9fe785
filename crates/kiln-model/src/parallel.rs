//! GPT and the BERTs cut into parts for tensor and pipeline parallelism (kiln-dist's
//! [`ParallelModel`]).
//!
//! - Tensor parallel (Megatron-LM): in every block, q, k and v are column-parallel (each rank
//!   keeps `n_head/t` query heads and `n_kv_head/t` whole key/value heads, so its query heads
//!   read its own key/value heads), attention's output row-parallel; the MLP's up (and gate)
//!   column-parallel, its down row-parallel. The blocks then call kiln-dist's `f` and `g`
//!   around each region ([`MultiHeadAttention::forward`](crate::attention::MultiHeadAttention::forward),
//!   [`FeedForward::forward`](crate::feed_forward::FeedForward::forward)).
//!   The GPT's vocabulary is split too (Megatron's vocabulary-parallel embedding, output layer
//!   and cross-entropy, kiln-dist's `VocabParallel`): each rank holds `⌈vocab/t⌉` rows and the
//!   loss is computed from its slice of the logits. Position embeddings, norms and the BERTs'
//!   embeddings and heads are replicated.
//! - Pipeline parallel: a stage keeps its consecutive blocks; the embeddings live on the first
//!   stage, the final norm and head on the last, and a tied embedding on both. What a stage
//!   does not hold becomes an empty tensor of the same id, so a part is still a model of the
//!   same type (and kiln-dist's gather skips empty tensors).

use burn::module::{Param, ParamId};
use burn::nn::{Embedding, Linear};
use burn::tensor::Tensor;
use kiln_dist::model_parallel::{ModelPart, ParallelModel, TensorSplit};
use kiln_dist::tensor_parallel::{TensorParallel, column_shard, row_shard};
use kiln_dist::{DistError, Result, VocabParallel};

use crate::bert::{Bert, BertForMaskedLm, BertForSequenceClassification};
use crate::block::TransformerBlock;
use crate::gpt::Gpt;
use crate::linear::{Cut, LinearLayer};
use crate::lora::LoraLinear;
use crate::norm::Norm;

impl TransformerBlock {
    /// This rank's tensor-parallel shard of the block (Megatron's parallel attention and MLP):
    /// each linear layer of the [layer table](TransformerBlock::linears) cut as it says.
    pub fn into_tensor_parallel(self, tp: &TensorParallel) -> Result<Self> {
        let heads = tp.shard("the number of heads", self.attn.n_head)?;
        // Whole key/value heads per rank: each rank's query heads read its own.
        let head_dim = self.attn.query.d_out() / self.attn.n_head;
        tp.shard(
            "the number of key/value heads",
            self.attn.key.d_out() / head_dim,
        )?;
        let mut block = self.map_linears(&mut |_, cut, layer: &Linear| match cut {
            Cut::Column => column_shard(layer.clone(), tp),
            Cut::Row => row_shard(layer.clone(), tp),
        })?;
        block.attn.n_head = heads.len();
        block.attn.tensor_parallel = Some(tp.clone());
        block.ffn.tensor_parallel = Some(tp.clone());
        Ok(block)
    }

    /// How this block's parameters are split (empty when it is not tensor-parallel).
    pub fn tensor_splits(&self) -> Vec<(ParamId, TensorSplit)> {
        if self.attn.tensor_parallel.is_none() {
            return Vec::new();
        }
        let mut splits = Vec::new();
        for (_, cut, linear) in self.linears() {
            let (weight, bias) = match cut {
                Cut::Column => (TensorSplit::Dim(1), TensorSplit::Dim(0)),
                Cut::Row => (TensorSplit::Dim(0), TensorSplit::FirstRank),
            };
            splits.push((linear.weight.id, weight));
            splits.extend(linear.bias.as_ref().map(|b| (b.id, bias)));
        }
        splits
    }
}

/// The blocks of a stage, each split across the tensor-parallel group.
fn stage_of(blocks: Vec<TransformerBlock>, part: &ModelPart) -> Result<Vec<TransformerBlock>> {
    if part.stage.blocks.end > blocks.len() {
        return Err(DistError::InvalidArgument(format!(
            "stage blocks {:?} of a model of {} blocks",
            part.stage.blocks,
            blocks.len()
        )));
    }
    blocks
        .into_iter()
        .skip(part.stage.blocks.start)
        .take(part.stage.blocks.len())
        .map(|block| match &part.tensor_parallel {
            Some(tp) => block.into_tensor_parallel(tp),
            None => Ok(block),
        })
        .collect()
}

fn block_splits(blocks: &[TransformerBlock]) -> Vec<(ParamId, TensorSplit)> {
    blocks.iter().flat_map(|b| b.tensor_splits()).collect()
}

/// A parameter a stage does not hold: empty, with its id.
fn emptied<const D: usize>(param: Param<Tensor<D>>) -> Param<Tensor<D>> {
    let (id, tensor, mapper) = param.consume();
    let mut dims = tensor.dims();
    dims[0] = 0;
    let empty = Tensor::zeros(dims, &tensor.device());
    Param::from_mapped_value(id, empty, mapper)
}

fn emptied_embedding(embedding: Embedding) -> Embedding {
    Embedding {
        weight: emptied(embedding.weight),
    }
}

fn emptied_norm(mut norm: Norm) -> Norm {
    norm.gamma = emptied(norm.gamma);
    norm.beta = norm.beta.map(emptied);
    norm
}

fn emptied_linear(linear: Linear) -> Linear {
    Linear {
        weight: emptied(linear.weight),
        bias: linear.bias.map(emptied),
    }
}

fn is_empty<const D: usize>(param: &Param<Tensor<D>>) -> bool {
    param.dims()[0] == 0
}

impl ParallelModel for Gpt {
    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn into_part(self, part: &ModelPart) -> Result<Self> {
        let tied = self.lm_head.is_none();
        let blocks = stage_of(self.blocks, part)?;
        let keeps_embedding = part.stage.is_first() || (tied && part.stage.is_last());
        // Under tensor parallelism the vocabulary is split too (Megatron's vocabulary-parallel
        // embedding, output layer and cross-entropy).
        let vocab = part
            .tensor_parallel
            .as_ref()
            .map(|tp| vocab_parallel(tp, self.vocab_size))
            .transpose()?;
        let shard = |param, dim| match &vocab {
            Some(vp) => vp.shard(param, dim),
            None => param,
        };
        let token_embedding = if keeps_embedding {
            Embedding {
                weight: shard(self.token_embedding.weight, 0),
            }
        } else {
            emptied_embedding(self.token_embedding)
        };
        Ok(Self {
            token_embedding,
            position_embedding: self.position_embedding.map(|e| {
                if part.stage.is_first() {
                    e
                } else {
                    emptied_embedding(e)
                }
            }),
            blocks,
            final_norm: if part.stage.is_last() {
                self.final_norm
            } else {
                emptied_norm(self.final_norm)
            },
            // An untied head off the last stage is emptied, not dropped: `None` stays the sign
            // of a tied embedding on every stage.
            lm_head: self.lm_head.map(|h| {
                if part.stage.is_last() {
                    Linear {
                        weight: shard(h.weight, 1),
                        bias: h.bias,
                    }
                } else {
                    emptied_linear(h)
                }
            }),
            vocab_parallel: vocab,
            ..self
        })
    }

    fn tensor_splits(&self) -> Vec<(ParamId, TensorSplit)> {
        let mut splits = block_splits(&self.blocks);
        if self.vocab_parallel.is_some() {
            let len = self.vocab_size;
            let embedding = &self.token_embedding.weight;
            if !is_empty(embedding) {
                splits.push((embedding.id, TensorSplit::Padded { dim: 0, len }));
            }
            if let Some(head) = self.lm_head.as_ref().filter(|h| !is_empty(&h.weight)) {
                splits.push((head.weight.id, TensorSplit::Padded { dim: 1, len }));
            }
        }
        splits
    }

    fn tied_params(&self) -> Vec<ParamId> {
        let weight = &self.token_embedding.weight;
        if self.lm_head.is_none() && !is_empty(weight) {
            vec![weight.id]
        } else {
            Vec::new()
        }
    }
}

/// A GPT with LoRA adapters trains on one process or data-parallel (ZeRO-1 included, only the
/// adapters' gradients all-reduced); it is not cut for tensor or pipeline parallelism.
impl<L: LinearLayer + 'static> ParallelModel for Gpt<LoraLinear<L>> {}

/// The vocabulary split across `tp`, when every rank gets some of it.
fn vocab_parallel(tp: &TensorParallel, vocab: usize) -> Result<VocabParallel> {
    let vp = VocabParallel::new(tp.clone(), vocab);
    if (tp.size() - 1) * vp.rows() >= vocab {
        return Err(DistError::InvalidArgument(format!(
            "a vocabulary of {vocab} tokens leaves tensor-parallel rank {} of {} no rows of its own",
            tp.size() - 1,
            tp.size()
        )));
    }
    Ok(vp)
}

impl Bert {
    /// The encoder's part: its embeddings on the first stage, the pooler on the last; the word
    /// embeddings also on the last when `tied` (the masked-LM decoder).
    fn into_part(self, part: &ModelPart, tied: bool) -> Result<Self> {
        let layers = stage_of(self.layers, part)?;
        let mut embeddings = self.embeddings;
        if !part.stage.is_first() {
            if !(tied && part.stage.is_last()) {
                embeddings.word = emptied_embedding(embeddings.word);
            }
            embeddings.position = emptied_embedding(embeddings.position);
            embeddings.token_type = emptied_embedding(embeddings.token_type);
            embeddings.norm = emptied_norm(embeddings.norm);
        }
        Ok(Self {
            embeddings,
            layers,
            pooler: self.pooler.map(|p| {
                if part.stage.is_last() {
                    p
                } else {
                    emptied_linear(p)
                }
            }),
            ..self
        })
    }

    fn tied_word_embedding(&self) -> Vec<ParamId> {
        let weight = &self.embeddings.word.weight;
        if is_empty(weight) {
            Vec::new()
        } else {
            vec![weight.id]
        }
    }
}

impl ParallelModel for BertForMaskedLm {
    fn num_blocks(&self) -> usize {
        self.bert.layers.len()
    }

    fn into_part(self, part: &ModelPart) -> Result<Self> {
        let last = part.stage.is_last();
        Ok(Self {
            bert: self.bert.into_part(part, true)?,
            transform: if last {
                self.transform
            } else {
                emptied_linear(self.transform)
            },
            transform_norm: if last {
                self.transform_norm
            } else {
                emptied_norm(self.transform_norm)
            },
            decoder_bias: if last {
                self.decoder_bias
            } else {
                emptied(self.decoder_bias)
            },
            ..self
        })
    }

    fn tensor_splits(&self) -> Vec<(ParamId, TensorSplit)> {
        block_splits(&self.bert.layers)
    }

    fn tied_params(&self) -> Vec<ParamId> {
        self.bert.tied_word_embedding()
    }
}

impl ParallelModel for BertForSequenceClassification {
    fn num_blocks(&self) -> usize {
        self.bert.layers.len()
    }

    fn into_part(self, part: &ModelPart) -> Result<Self> {
        Ok(Self {
            bert: self.bert.into_part(part, false)?,
            classifier: if part.stage.is_last() {
                self.classifier
            } else {
                emptied_linear(self.classifier)
            },
            ..self
        })
    }

    fn tensor_splits(&self) -> Vec<(ParamId, TensorSplit)> {
        block_splits(&self.bert.layers)
    }

    fn tied_params(&self) -> Vec<ParamId> {
        Vec::new()
    }
}
