//! Writing HuggingFace checkpoints: [`save_pretrained`] turns a kiln model into the
//! `config.json` and `model.safetensors` that transformers' `from_pretrained` reads.
//!
//! A model is first mapped to an [`HfCheckpoint`] (config + tensors by transformers' names and
//! layouts), which fails with [`ModelError::NoHfEquivalent`] when transformers has no model of
//! its shape; only then is anything written.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use kiln_base::OutputDir;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::HfModel;
use super::config::{CONFIG_FILE, HfConfig};
use crate::activation::Activation;
use crate::block::{NormPosition, TransformerBlock};
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::norm::NormKind;

/// The weights file of a HuggingFace folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A kiln model that has a transformers counterpart: [`Gpt`](crate::gpt::Gpt) as
/// `GPT2LMHeadModel`, [`Bert`](crate::bert::Bert) as `BertModel`,
/// [`BertForMaskedLm`](crate::bert::BertForMaskedLm) as `BertForMaskedLM`,
/// [`BertForSequenceClassification`](crate::bert::BertForSequenceClassification) as
/// `BertForSequenceClassification`, and a loaded [`HfModel`].
pub trait HfExport {
    /// The checkpoint transformers would save for this model, or
    /// [`ModelError::NoHfEquivalent`] naming what transformers' model cannot express.
    fn hf_checkpoint(&self) -> Result<HfCheckpoint>;
}

/// A model as transformers stores it.
#[derive(Debug, Clone)]
pub struct HfCheckpoint {
    /// The content of `config.json`.
    pub config: HfConfig,
    /// Every tensor of `model.safetensors` (f32), by transformers' name, in model order. Tied
    /// weights are stored once, as transformers does.
    pub tensors: Vec<(String, TensorData)>,
}

/// Writes `model` into the folder `dir` (created if needed) as `config.json` and
/// `model.safetensors`, loadable by transformers' `from_pretrained` and by
/// [`load_pretrained`](super::load_pretrained).
///
/// A model transformers cannot express is a [`ModelError::NoHfEquivalent`], returned before
/// anything is written. Each file is written atomically (the weights first, so a folder with a
/// config always has its weights). A folder holding files kiln did not write (a user's
/// `config.json`) is refused, naming them, unless `dir` is [`OutputDir::forced`].
pub fn save_pretrained(model: &impl HfExport, dir: impl Into<OutputDir>) -> Result<()> {
    let out = dir.into();
    let checkpoint = model.hf_checkpoint()?;
    let weights_file = out.path().join(WEIGHTS_FILE);
    let config_file = out.path().join(CONFIG_FILE);
    let weights = safetensors_bytes(&checkpoint.tensors, &weights_file)?;
    let config = serde_json::to_string_pretty(&checkpoint.config)
        .map_err(|e| ModelError::format(&config_file, e))?;
    out.claim(&[WEIGHTS_FILE, CONFIG_FILE])?;
    out.write(WEIGHTS_FILE, &weights)?;
    Ok(out.write(CONFIG_FILE, config.as_bytes())?)
}

/// `tensors` in the safetensors format, with the `{"format": "pt"}` metadata transformers
/// requires.
pub(crate) fn safetensors_bytes(tensors: &[(String, TensorData)], file: &Path) -> Result<Vec<u8>> {
    let bytes = tensors
        .iter()
        .map(|(name, data)| {
            let values = data
                .try_to_vec::<f32>()
                .map_err(|e| ModelError::format(file, format!("tensor `{name}`: {e:?}")))?;
            Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect::<Result<Vec<Vec<u8>>>>()?;
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, data), bytes)| {
            TensorView::new(Dtype::F32, data.shape().to_vec(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|e| ModelError::format(file, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| ModelError::format(file, e))
}

/// Collects tensors by name while a model is mapped.
#[derive(Default)]
pub(crate) struct NamedTensors(Vec<(String, TensorData)>);

impl NamedTensors {
    /// Adds `tensor` as f32 under `name`.
    pub fn push<const D: usize>(&mut self, name: &str, tensor: Tensor<D>) {
        self.0
            .push((name.to_owned(), tensor.into_data().convert::<f32>()));
    }

    pub fn into_checkpoint(self, config: HfConfig) -> HfCheckpoint {
        HfCheckpoint {
            config,
            tensors: self.0,
        }
    }
}

pub(crate) fn no_hf_equivalent(reason: impl Into<String>) -> ModelError {
    ModelError::NoHfEquivalent(reason.into())
}

/// A bias that transformers' layer has; kiln's may have been built without (`bias: false`).
pub(crate) fn bias(bias: &Option<Param<Tensor<1>>>) -> Result<Tensor<1>> {
    bias.as_ref().map(Param::val).ok_or_else(|| {
        no_hf_equivalent("a linear layer or LayerNorm has no bias; transformers' have biases")
    })
}

/// What one HF config states once for all blocks.
pub(crate) struct BlockShape {
    pub n_head: usize,
    pub d_ff: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    pub attn_dropout: f64,
    pub resid_dropout: f64,
}

/// Checks that every block is one transformers' `family` has (multi-head attention over the
/// full width `d_model` with all its heads, a plain MLP, biases, LayerNorms at `norm`) and that
/// all blocks agree on what the HF config states once.
pub(crate) fn block_shape(
    blocks: &[TransformerBlock],
    d_model: usize,
    norm: NormPosition,
    family: &str,
) -> Result<BlockShape> {
    let mut shape: Option<BlockShape> = None;
    for (i, block) in blocks.iter().enumerate() {
        let (attn, ffn) = (&block.attn, &block.ffn);
        if block.norm_position != norm {
            return Err(no_hf_equivalent(format!(
                "block {i} is {:?}-norm; {family}'s blocks are {norm:?}-norm",
                block.norm_position
            )));
        }
        if ffn.gate.is_some() {
            return Err(no_hf_equivalent(format!(
                "block {i} has a SwiGLU feed-forward; {family} has a plain MLP"
            )));
        }
        for (name, linear) in [
            ("query", &attn.query),
            ("key", &attn.key),
            ("value", &attn.value),
            ("attention output", &attn.out),
            ("MLP input", &ffn.up),
            ("MLP output", &ffn.down),
        ] {
            if linear.bias.is_none() {
                return Err(no_hf_equivalent(format!(
                    "block {i}'s {name} projection has no bias; {family}'s linear layers have \
                     biases"
                )));
            }
        }
        for norm in [&block.attn_norm, &block.ffn_norm] {
            if norm.kind != NormKind::LayerNorm {
                return Err(no_hf_equivalent(format!(
                    "block {i} has {:?}; {family}'s blocks have LayerNorms",
                    norm.kind
                )));
            }
        }
        if block.attn_norm.beta.is_none() || block.ffn_norm.beta.is_none() {
            return Err(no_hf_equivalent(format!(
                "block {i} has a LayerNorm without bias; {family}'s have biases"
            )));
        }
        let width = attn.query.weight.dims()[1];
        if attn.key.weight.dims()[1] != width {
            return Err(no_hf_equivalent(format!(
                "block {i} has grouped-query attention; {family} has as many key/value heads as                  query heads"
            )));
        }
        if width != d_model {
            return Err(no_hf_equivalent(format!(
                "block {i} attends over {width} of {d_model} dimensions (heads removed by \
                 pruning); {family} has every head in every block"
            )));
        }
        let eps = block.attn_norm.epsilon;
        let this = BlockShape {
            n_head: attn.n_head,
            d_ff: ffn.up.weight.dims()[1],
            activation: ffn.activation,
            layer_norm_eps: eps,
            attn_dropout: attn.attn_dropout.prob,
            resid_dropout: attn.resid_dropout.prob,
        };
        if block.ffn_norm.epsilon != eps {
            return Err(no_hf_equivalent(format!(
                "block {i}'s LayerNorms have different epsilons; {family} has one"
            )));
        }
        if let Some(first) = &shape {
            let differs = |what: &str, a: String, b: String| {
                no_hf_equivalent(format!(
                    "blocks 0 and {i} have different {what} ({a} vs {b}); {family}'s config \
                     has one"
                ))
            };
            if this.n_head != first.n_head {
                let (a, b) = (first.n_head.to_string(), this.n_head.to_string());
                return Err(differs("head counts", a, b));
            }
            if this.d_ff != first.d_ff {
                let (a, b) = (first.d_ff.to_string(), this.d_ff.to_string());
                return Err(differs("feed-forward widths", a, b));
            }
            if this.activation != first.activation {
                let (a, b) = (
                    format!("{:?}", first.activation),
                    format!("{:?}", this.activation),
                );
                return Err(differs("activations", a, b));
            }
            if this.layer_norm_eps != first.layer_norm_eps {
                let (a, b) = (first.layer_norm_eps.to_string(), eps.to_string());
                return Err(differs("LayerNorm epsilons", a, b));
            }
        } else {
            shape = Some(this);
        }
    }
    shape.ok_or_else(|| no_hf_equivalent(format!("the model has no blocks; {family} has some")))
}

/// A GPT as transformers' checkpoint: with RMSNorms, the Llama family's class that expresses it
/// (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`); else `GPT2LMHeadModel`.
impl HfExport for Gpt {
    fn hf_checkpoint(&self) -> Result<HfCheckpoint> {
        if self.final_norm.kind == NormKind::RmsNorm {
            super::llama::llama_checkpoint(self)
        } else {
            super::gpt2::gpt2_checkpoint(self)
        }
    }
}

impl HfExport for HfModel {
    fn hf_checkpoint(&self) -> Result<HfCheckpoint> {
        match self {
            HfModel::Gpt2(model) | HfModel::Llama(model) => model.hf_checkpoint(),
            HfModel::Bert(model) => model.hf_checkpoint(),
            HfModel::BertForMaskedLm(model) => model.hf_checkpoint(),
            HfModel::BertForSequenceClassification(model) => model.hf_checkpoint(),
        }
    }
}
