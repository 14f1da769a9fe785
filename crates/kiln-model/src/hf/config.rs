//! The `config.json` of a HuggingFace checkpoint, as typed structs read and written with serde.
//!
//! Field names are transformers'. A field missing from the file takes transformers' default
//! (`GPT2Config`, `BertConfig`, `PretrainedConfig`); a field of the wrong type is a
//! [`ModelError::ConfigField`] naming it, never a silent default. Fields kiln does not use are
//! ignored when reading and not written.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// The config file inside a HuggingFace folder.
pub const CONFIG_FILE: &str = "config.json";

/// The fields that say which model a `config.json` describes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ConfigHeader {
    /// `gpt2`, `bert`, ...
    pub model_type: String,
    /// The model class that wrote the checkpoint, e.g. `BertForMaskedLM`.
    pub architectures: Option<Vec<String>>,
}

impl ConfigHeader {
    /// The first architecture, or "" when the file names none.
    pub fn architecture(&self) -> &str {
        self.architectures
            .as_ref()
            .and_then(|a| a.first())
            .map_or("", String::as_str)
    }
}

/// A GPT-2 `config.json` (transformers' `GPT2Config`); the defaults are GPT-2 small's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HfGpt2Config {
    /// Always `gpt2`.
    pub model_type: String,
    /// The model class, `GPT2LMHeadModel` when kiln writes it.
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size (50 257).
    pub vocab_size: usize,
    /// Context length (1 024).
    pub n_positions: usize,
    /// Model width (768).
    pub n_embd: usize,
    /// Number of blocks (12).
    pub n_layer: usize,
    /// Attention heads per block (12).
    pub n_head: usize,
    /// Feed-forward width; `None` (null) means `4·n_embd`.
    pub n_inner: Option<usize>,
    /// MLP non-linearity (`gelu_new`, the tanh GELU).
    pub activation_function: String,
    /// Dropout on residual branches (0.1).
    pub resid_pdrop: f64,
    /// Dropout on the embeddings (0.1).
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities (0.1).
    pub attn_pdrop: f64,
    /// LayerNorm epsilon (1e-5).
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the init (0.02).
    pub initializer_range: f64,
    /// Whether attention scores are divided by √head_dim (true; kiln supports only true).
    pub scale_attn_weights: bool,
    /// Extra 1/layer scaling of attention scores (false; kiln supports only false).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Mistral's upcast attention (false; kiln supports only false).
    pub reorder_and_upcast_attn: bool,
    /// Whether the LM head is the token embedding (true).
    pub tie_word_embeddings: bool,
    /// Beginning-of-text id for generation (50 256, GPT-2's `<|endoftext|>`).
    pub bos_token_id: Option<usize>,
    /// End-of-text id for generation (50 256).
    pub eos_token_id: Option<usize>,
}

impl Default for HfGpt2Config {
    fn default() -> Self {
        Self {
            model_type: "gpt2".into(),
            architectures: None,
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: "gelu_new".into(),
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            tie_word_embeddings: true,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
        }
    }
}

/// A BERT `config.json` (transformers' `BertConfig`); the defaults are BERT-base's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HfBertConfig {
    /// Always `bert`.
    pub model_type: String,
    /// The model class: `BertModel`, `BertForMaskedLM` or `BertForSequenceClassification`.
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size (30 522).
    pub vocab_size: usize,
    /// Model width (768).
    pub hidden_size: usize,
    /// Number of encoder layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (12).
    pub num_attention_heads: usize,
    /// Feed-forward width (3 072).
    pub intermediate_size: usize,
    /// Feed-forward and masked-LM transform non-linearity (`gelu`, the exact GELU).
    pub hidden_act: String,
    /// Dropout on embeddings and residual branches (0.1).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (0.1).
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence (512).
    pub max_position_embeddings: usize,
    /// Number of segment ids (2).
    pub type_vocab_size: usize,
    /// Standard deviation of the init (0.02).
    pub initializer_range: f64,
    /// LayerNorm epsilon (1e-12).
    pub layer_norm_eps: f64,
    /// How positions are encoded (`absolute`; kiln supports only `absolute`).
    pub position_embedding_type: String,
    /// Whether attention is causal (false; kiln's BERT is an encoder).
    pub is_decoder: bool,
    /// Whether the masked-LM decoder is the word embedding (true; kiln's always is).
    pub tie_word_embeddings: bool,
    /// Dropout before the sequence classifier; `None` means `hidden_dropout_prob`.
    pub classifier_dropout: Option<f64>,
    /// Class names by index; its size is the number of labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<usize, String>>,
    /// Class indices by name (written beside `id2label`, as transformers does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// Number of labels, in configs without `id2label`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
}

impl Default for HfBertConfig {
    fn default() -> Self {
        Self {
            model_type: "bert".into(),
            architectures: None,
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            position_embedding_type: "absolute".into(),
            is_decoder: false,
            tie_word_embeddings: true,
            classifier_dropout: None,
            id2label: None,
            label2id: None,
            num_labels: None,
        }
    }
}

impl HfBertConfig {
    /// Number of classes of a sequence classifier: `id2label`'s size, else `num_labels`, else 2
    /// (transformers' rule).
    pub fn num_labels(&self) -> usize {
        self.id2label
            .as_ref()
            .map(BTreeMap::len)
            .or(self.num_labels)
            .unwrap_or(2)
    }
}

/// The config of a checkpoint kiln can write.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HfConfig {
    /// A `gpt2` model.
    Gpt2(HfGpt2Config),
    /// A `bert` model.
    Bert(HfBertConfig),
    /// A `llama`, `qwen2` or `mistral` model.
    Llama(Box<super::llama::HfLlamaConfig>),
}

/// Parses the `config.json` text read from `file` into `T`.
pub(crate) fn parse_config<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T> {
    let json: Value = serde_json::from_str(text).map_err(|e| ModelError::format(file, e))?;
    T::deserialize(&json).map_err(|error| {
        // serde's message names the expected type but not the field. Every field has a default,
        // so a one-field object parses unless that field is the bad one.
        let alone = |(key, value): &(&String, &Value)| {
            let one = Map::from_iter([((*key).clone(), (*value).clone())]);
            T::deserialize(&Value::Object(one)).is_err()
        };
        match json.as_object().and_then(|map| map.iter().find(alone)) {
            Some((field, _)) => ModelError::ConfigField {
                file: file.to_path_buf(),
                field: field.clone(),
                message: error.to_string(),
            },
            None => ModelError::format(file, error),
        }
    })
}
