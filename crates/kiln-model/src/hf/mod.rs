//! Loading HuggingFace checkpoints: a folder with `config.json` and `model.safetensors`.
//!
//! `model_type` `gpt2` loads into [`Gpt`], `bert` into [`Bert`], [`BertForMaskedLm`] or
//! [`BertForSequenceClassification`], chosen by `architectures` (or, without it, by the
//! tensors present). Every parameter is checked by name and shape.

mod bert;
mod config;
mod gpt2;
mod weights;

use std::path::Path;

use burn::tensor::{Bool, Device, Int, Tensor};
use serde_json::Value;

pub use bert::{bert_config, load_bert, load_bert_classifier, load_bert_masked_lm, num_labels};
pub use gpt2::{gpt2_config, load_gpt2};
pub use weights::HfWeights;

use crate::bert::{Bert, BertForMaskedLm, BertForSequenceClassification, BertInput};
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;

/// A model loaded from a HuggingFace folder.
#[derive(Debug)]
pub enum HfModel {
    /// `GPT2LMHeadModel` or `GPT2Model`.
    Gpt2(Gpt),
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

/// Reads `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<Value> {
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|e| ModelError::io(&file, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(&file, e))
}

/// Loads the model that `dir/config.json` describes, with weights from `dir/model.safetensors`.
pub fn load_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<HfModel> {
    let dir = dir.as_ref();
    let json = read_config(dir)?;
    let file = dir.join("config.json");
    let model_type = json["model_type"].as_str().unwrap_or_default().to_owned();
    let architecture = json["architectures"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match model_type.as_str() {
        "gpt2" => {
            let config = gpt2_config(&json, &file)?;
            let mut weights = HfWeights::open(dir)?;
            Ok(HfModel::Gpt2(load_gpt2(&config, &mut weights, device)?))
        }
        "bert" => {
            let config = bert_config(&json, &file)?;
            let mut weights = HfWeights::open(dir)?;
            let is = |arch: &str, probe: &str| {
                architecture == arch || (architecture.is_empty() && weights.contains(probe))
            };
            if is("BertForMaskedLM", "cls.predictions.transform.dense.weight") {
                Ok(HfModel::BertForMaskedLm(load_bert_masked_lm(
                    &config,
                    &mut weights,
                    device,
                )?))
            } else if is("BertForSequenceClassification", "classifier.weight") {
                let labels = num_labels(&json);
                Ok(HfModel::BertForSequenceClassification(
                    load_bert_classifier(&config, labels, &mut weights, device)?,
                ))
            } else if architecture.is_empty() || architecture == "BertModel" {
                Ok(HfModel::Bert(load_bert(&config, &mut weights, device)?))
            } else {
                Err(ModelError::format(
                    &file,
                    format!("architecture `{architecture}` is not supported for bert"),
                ))
            }
        }
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
            HfModel::Gpt2(gpt) => {
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
