//! HuggingFace checkpoints: a folder with `config.json` and `model.safetensors`, read and
//! written.
//!
//! [`load_pretrained`] reads `model_type` `gpt2` into [`Gpt`], `bert` into [`Bert`],
//! [`BertForMaskedLm`] or [`BertForSequenceClassification`], chosen by `architectures` (or,
//! without it, by the tensors present). Every parameter is checked by name and shape.
//!
//! [`save_pretrained`] writes those four models (any [`HfExport`]) the way transformers'
//! `save_pretrained` does: a `Gpt` as `GPT2LMHeadModel`, the BERT models as `BertModel`,
//! `BertForMaskedLM` and `BertForSequenceClassification`, with transformers' tensor names and
//! layouts, so `AutoModel*.from_pretrained(dir)` loads them. A model transformers cannot
//! express (rotary positions, SwiGLU, a post-norm GPT, no biases, heads removed by pruning) is a
//! [`ModelError::NoHfEquivalent`] and nothing is written.
//!
//! [`peft`] reads and writes HF peft's LoRA adapter folders over these models, naming layers as
//! transformers does ([`names`]).
//!
//! `config.json` is read and written through typed structs ([`HfGpt2Config`],
//! [`HfBertConfig`]) with transformers' field names and defaults.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use kiln_model::gpt::GptConfig;
//! use kiln_model::hf::{HfModel, load_pretrained, save_pretrained};
//!
//! let device = Device::flex();
//! let config = GptConfig::new(50).with_block_size(8).with_n_layer(1).with_n_head(2).with_d_model(16);
//! let gpt = config.init(&device).unwrap();
//! let dir = std::env::temp_dir().join(format!("kiln-hf-doc-{}", std::process::id()));
//! save_pretrained(&gpt, &dir).unwrap();
//!
//! let HfModel::Gpt2(loaded) = load_pretrained(&dir, &device).unwrap() else { unreachable!() };
//! let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
//! let (a, b) = (gpt.forward(ids.clone()).unwrap(), loaded.forward(ids).unwrap());
//! assert_eq!(a.into_data(), b.into_data());
//! # std::fs::remove_dir_all(dir).unwrap();
//! ```

mod bert;
mod config;
mod gpt2;
pub mod llama;
pub mod names;
pub mod peft;
mod save;
mod weights;

use std::path::Path;

use burn::config::Config;
use burn::nn::DropoutConfig;
use burn::tensor::{Bool, Device, Int, Tensor};

pub use bert::{load_bert, load_bert_classifier, load_bert_masked_lm};
pub use config::{CONFIG_FILE, HfBertConfig, HfConfig, HfGpt2Config};
pub use gpt2::load_gpt2;
pub use llama::{HfLlamaConfig, LlamaFamily, load_llama};
pub use save::{HfCheckpoint, HfExport, WEIGHTS_FILE, save_pretrained};
pub use weights::HfWeights;

use crate::bert::{Bert, BertForMaskedLm, BertForSequenceClassification, BertInput};
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, GptConfig, check_probability};
use crate::limits::read_config_text;
use config::{ConfigHeader, parse_config};

/// A model loaded from a HuggingFace folder.
#[derive(Debug)]
pub enum HfModel {
    /// `GPT2LMHeadModel` or `GPT2Model`.
    Gpt2(Gpt),
    /// `LlamaForCausalLM`, `Qwen2ForCausalLM` or `MistralForCausalLM`.
    Llama(Gpt),
    /// A bare `BertModel`.
    Bert(Bert),
    /// `BertForMaskedLM`.
    BertForMaskedLm(BertForMaskedLm),
    /// `BertForSequenceClassification`.
    BertForSequenceClassification(BertForSequenceClassification),
}

/// What an [`HfModel`] returns, named as in transformers.
// One value per forward call: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum HfOutput {
    /// Token logits `[batch, seq, vocab]` (language models).
    TokenLogits(Tensor<3>),
    /// Class logits `[batch, labels]`.
    ClassLogits(Tensor<2>),
    /// A bare encoder's states `[batch, seq, hidden]` and pooled output `[batch, hidden]`.
    Hidden {
        /// The last layer's hidden states.
        last_hidden_state: Tensor<3>,
        /// The pooled `[CLS]` state, when the checkpoint has a pooler.
        pooler_output: Option<Tensor<2>>,
    },
}

/// How [`load_pretrained_with`] treats what it reads.
#[derive(Config, Debug)]
pub struct HfLoadConfig {
    /// Accept tensors with NaN or infinite values, printing a warning on stderr that names
    /// each, instead of failing with [`ModelError::NonFiniteWeights`]. Off by default: such a
    /// checkpoint gives NaN outputs, and a corrupt download is better found at load time.
    #[config(default = false)]
    pub allow_non_finite: bool,
    /// Tensors of the checkpoint the model has no place for that are left on purpose, by their
    /// names in the file (a head of another class, say). Any other such tensor is an error
    /// ([`ModelError::UnexpectedTensor`]); transformers' own buffers are known without this.
    #[config(default = "Vec::new()")]
    pub ignore_tensors: Vec<String>,
}

/// Loads the model that `dir/config.json` describes, with weights from `dir/model.safetensors`.
///
/// Untrusted input never panics: the config's sizes are bounded ([`limits`](crate::limits)),
/// a field of the wrong type is an error naming it, the model is built without drawing its
/// weights and every tensor's shape in the file is checked against the config before it is
/// copied (so nothing larger than the file is allocated), and NaN or infinite weights are an
/// error ([`load_pretrained_with`] can accept them with a warning).
pub fn load_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<HfModel> {
    load_pretrained_with(dir, device, &HfLoadConfig::new())
}

/// [`load_pretrained`] with options ([`HfLoadConfig`]).
pub fn load_pretrained_with(
    dir: impl AsRef<Path>,
    device: &Device,
    options: &HfLoadConfig,
) -> Result<HfModel> {
    let dir = dir.as_ref();
    let file = dir.join(CONFIG_FILE);
    let text = read_config_text(&file)?;
    let header: ConfigHeader = parse_config(&text, &file)?;
    let architecture = header.architecture();
    match header.model_type.as_str() {
        "gpt2" => {
            let hf: HfGpt2Config = parse_config(&text, &file)?;
            let mut weights = HfWeights::open_with(dir, options)?;
            let mut gpt = load_gpt2(&hf.gpt_config(&file)?, &mut weights, device)?;
            // GptConfig has one dropout (`resid_pdrop`); GPT-2 may drop embeddings differently.
            check_probability("embd_pdrop", hf.embd_pdrop)?;
            gpt.embedding_dropout = DropoutConfig::new(hf.embd_pdrop).init();
            Ok(HfModel::Gpt2(gpt))
        }
        "bert" => {
            let hf: HfBertConfig = parse_config(&text, &file)?;
            let config = hf.bert_config(&file)?;
            let mut weights = HfWeights::open_with(dir, options)?;
            let is = |arch: &str, probe: &str| {
                architecture == arch || (architecture.is_empty() && weights.contains(probe))
            };
            if is("BertForMaskedLM", "cls.predictions.transform.dense.weight") {
                if !hf.tie_word_embeddings {
                    return Err(ModelError::ConfigField {
                        file,
                        field: "tie_word_embeddings".into(),
                        message: "`false` is not supported: kiln's masked-LM decoder is the \
                                  word embedding"
                            .into(),
                    });
                }
                Ok(HfModel::BertForMaskedLm(load_bert_masked_lm(
                    &config,
                    &mut weights,
                    device,
                )?))
            } else if is("BertForSequenceClassification", "classifier.weight") {
                let mut model =
                    load_bert_classifier(&config, hf.num_labels(), &mut weights, device)?;
                let dropout = hf.classifier_dropout.unwrap_or(hf.hidden_dropout_prob);
                check_probability("classifier_dropout", dropout)?;
                model.dropout = DropoutConfig::new(dropout).init();
                Ok(HfModel::BertForSequenceClassification(model))
            } else if architecture.is_empty() || architecture == "BertModel" {
                Ok(HfModel::Bert(load_bert(&config, &mut weights, device)?))
            } else {
                Err(ModelError::ConfigField {
                    file,
                    field: "architectures".into(),
                    message: format!("`{architecture}` is not supported for bert"),
                })
            }
        }
        other if LlamaFamily::of(other).is_some() => {
            let hf: HfLlamaConfig = parse_config(&text, &file)?;
            let family = hf.family().expect("checked above");
            if !architecture.is_empty() && architecture != family.architecture() {
                return Err(ModelError::ConfigField {
                    file,
                    field: "architectures".into(),
                    message: format!(
                        "`{architecture}` is not supported for {other} (kiln reads {})",
                        family.architecture()
                    ),
                });
            }
            let mut weights = HfWeights::open_with(dir, options)?;
            Ok(HfModel::Llama(load_llama(
                &hf.gpt_config(&file)?,
                &mut weights,
                device,
            )?))
        }
        other => Err(ModelError::UnknownModelType(other.to_owned())),
    }
}

/// The [`GptConfig`] of a HuggingFace decoder folder (`gpt2`, `llama`, `qwen2`, `mistral`):
/// the model [`load_pretrained_gpt`] fills. A training run records it as its model config.
pub fn gpt_config_of(dir: impl AsRef<Path>) -> Result<GptConfig> {
    let file = dir.as_ref().join(CONFIG_FILE);
    let text = read_config_text(&file)?;
    let header: ConfigHeader = parse_config(&text, &file)?;
    match header.model_type.as_str() {
        "gpt2" => parse_config::<HfGpt2Config>(&text, &file)?.gpt_config(&file),
        other if LlamaFamily::of(other).is_some() => {
            parse_config::<HfLlamaConfig>(&text, &file)?.gpt_config(&file)
        }
        other => Err(ModelError::UnknownModelType(format!(
            "{other}` (a decoder is needed: `gpt2`, `llama`, `qwen2` or `mistral`"
        ))),
    }
}

/// The weights of a HuggingFace decoder folder in a model of `config`: the folder's own
/// ([`gpt_config_of`]), or that with another context length (`block_size`; rotary positions
/// only, since learned ones are a tensor of that length).
pub fn load_pretrained_gpt(
    dir: impl AsRef<Path>,
    config: &GptConfig,
    device: &Device,
) -> Result<Gpt> {
    let dir = dir.as_ref();
    let file = dir.join(CONFIG_FILE);
    let header: ConfigHeader = parse_config(&read_config_text(&file)?, &file)?;
    let mut weights = HfWeights::open(dir)?;
    match header.model_type.as_str() {
        "gpt2" => load_gpt2(config, &mut weights, device),
        other if LlamaFamily::of(other).is_some() => load_llama(config, &mut weights, device),
        other => Err(ModelError::UnknownModelType(other.to_owned())),
    }
}

impl HfModel {
    /// Runs the model on a batch. `token_type_ids` are only used by BERT; `attention_mask`
    /// (1 = token, 0 = padding) by both.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Result<HfOutput> {
        let bert_input = || BertInput {
            input_ids: input_ids.clone(),
            token_type_ids: token_type_ids.clone(),
            attention_mask: attention_mask.clone(),
        };
        Ok(match self {
            HfModel::Gpt2(gpt) | HfModel::Llama(gpt) => {
                let padding = attention_mask.clone().map(padding_mask);
                HfOutput::TokenLogits(gpt.forward_masked(input_ids.clone(), padding)?)
            }
            HfModel::Bert(bert) => {
                let out = bert.forward(bert_input())?;
                HfOutput::Hidden {
                    last_hidden_state: out.last_hidden_state,
                    pooler_output: out.pooler_output,
                }
            }
            HfModel::BertForMaskedLm(model) => HfOutput::TokenLogits(model.forward(bert_input())?),
            HfModel::BertForSequenceClassification(model) => {
                HfOutput::ClassLogits(model.forward(bert_input())?)
            }
        })
    }
}

/// Turns an HF attention mask (1 = token, 0 = padding) into kiln's padding mask (`true` =
/// padding).
pub fn padding_mask(attention_mask: Tensor<2, Int>) -> Tensor<2, Bool> {
    attention_mask.equal_elem(0)
}
