//! HF Llama-family checkpoints (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`)
//! and kiln's [`Gpt`], both ways.
//!
//! The three classes are one decoder (RMSNorm, rotary positions, SwiGLU, grouped-query
//! attention) that differ in a few settings: Qwen2 has biases on q, k and v and none elsewhere,
//! Mistral a sliding window, Llama optional biases (`attention_bias`, `mlp_bias`). transformers
//! stores every `nn.Linear` as `[out, in]`; kiln's (Burn's) layout is `[in, out]`, so each weight
//! is transposed on the way in and out.
//!
//! `config.json` comes in two layouts: transformers 4.x writes `rope_theta` and `rope_scaling`
//! at the top level (every Llama 3 on the hub), 5.x a `rope_parameters` object. Both are read;
//! kiln writes both, which each version reads the same way. Every field that changes the
//! computation is read or refused by name: an unknown `rope_type` (`dynamic`, `yarn`,
//! `longrope`, ...), a `partial_rotary_factor` below 1, a `quantization_config`, per-layer
//! windows, or an unknown key of the rope settings are errors, never silent defaults.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::HfConfig;
use super::save::{HfCheckpoint, NamedTensors, no_hf_equivalent};
use super::weights::HfWeights;
use crate::activation::Activation;
use crate::block::NormPosition;
use crate::error::{ModelError, Result};
use crate::feed_forward::FeedForwardKind;
use crate::gpt::{Gpt, GptConfig, PositionEncoding};
use crate::limits::{CONTEXT, WIDTH};
use crate::linear::LinearLayer;
use crate::norm::{Norm, NormKind};
use crate::rotary::RopeScaling;

/// The classes of the family, by `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaFamily {
    /// `llama`: `LlamaForCausalLM` (Llama 2, Llama 3, and most of their fine-tunes).
    Llama,
    /// `qwen2`: `Qwen2ForCausalLM`.
    Qwen2,
    /// `mistral`: `MistralForCausalLM`.
    Mistral,
}

impl LlamaFamily {
    /// The family of a `model_type`, if kiln reads it.
    pub fn of(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "mistral" => Some(Self::Mistral),
            _ => None,
        }
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Mistral => "mistral",
        }
    }

    /// transformers' causal-LM class.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }
}

/// A Llama-family `config.json` (transformers' `LlamaConfig`, `Qwen2Config`, `MistralConfig`).
///
/// A missing field takes the default of its class's config (they differ: Mistral has 8
/// key/value heads and a 4096-token window by default, Qwen2 a 151 936-token vocabulary), which
/// [`gpt_config`](Self::gpt_config) applies, so the fields are `Option`s here. Serialized,
/// `None`s are left out.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HfLlamaConfig {
    /// `llama`, `qwen2` or `mistral`.
    pub model_type: String,
    /// The model class (`LlamaForCausalLM`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Model width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    /// SwiGLU's hidden width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// Number of blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_hidden_layers: Option<usize>,
    /// Query heads per block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_attention_heads: Option<usize>,
    /// Key/value heads per block (`null`: as many as query heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// The width of one head (`null`: `hidden_size / num_attention_heads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// The gate's activation (`silu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// The context length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// The init's standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initializer_range: Option<f64>,
    /// RMSNorm's epsilon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rms_norm_eps: Option<f64>,
    /// Whether the output layer is the token embedding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// 4.x: the base of the rotary frequencies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// 4.x: the rotary scaling (`{"rope_type": "llama3", "factor": 8.0, ...}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Map<String, Value>>,
    /// 5.x: `rope_theta` and the scaling in one object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Map<String, Value>>,
    /// Llama: biases on q, k, v and o.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Llama: biases on gate, up and down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Dropout on the attention probabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_dropout: Option<f64>,
    /// Mistral, Qwen2: the attention window (`null`: none). Missing and `null` differ for
    /// Mistral (whose default is 4096), so the raw value is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<Value>,
    /// Qwen2: whether the window applies at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2: the layers from this one on use the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// 5.x Qwen2: `full_attention` or `sliding_attention` per layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// A fraction of each head rotated (1: all); below 1 is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// A quantized checkpoint's settings: refused (kiln reads float weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<Value>,
    /// The beginning-of-sequence token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    /// The end-of-sequence token(s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// The padding token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
    /// The dtype of the weights kiln wrote (`float32`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
}

/// What a class's config defaults to, where the three differ.
struct Defaults {
    vocab_size: usize,
    intermediate_size: usize,
    num_key_value_heads: Option<usize>,
    max_position_embeddings: usize,
    sliding_window: Option<usize>,
}

impl LlamaFamily {
    fn defaults(self) -> Defaults {
        match self {
            Self::Llama => Defaults {
                vocab_size: 32000,
                intermediate_size: 11008,
                num_key_value_heads: None,
                max_position_embeddings: 2048,
                sliding_window: None,
            },
            Self::Qwen2 => Defaults {
                vocab_size: 151936,
                intermediate_size: 22016,
                num_key_value_heads: Some(32),
                max_position_embeddings: 32768,
                sliding_window: Some(4096),
            },
            Self::Mistral => Defaults {
                vocab_size: 32000,
                intermediate_size: 14336,
                num_key_value_heads: Some(8),
                max_position_embeddings: 4096 * 32,
                sliding_window: Some(4096),
            },
        }
    }
}

impl HfLlamaConfig {
    /// The family this config is of.
    pub fn family(&self) -> Option<LlamaFamily> {
        LlamaFamily::of(&self.model_type)
    }

    /// The kiln config of this checkpoint; `file` is where it was read (named in errors).
    /// Refuses by name every setting that changes the computation and kiln does not implement.
    pub fn gpt_config(&self, file: &Path) -> Result<GptConfig> {
        let field = |field: &str, message: String| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            message,
        };
        let family = self
            .family()
            .ok_or_else(|| ModelError::UnknownModelType(self.model_type.clone()))?;
        let defaults = family.defaults();
        if self.quantization_config.is_some() {
            return Err(field(
                "quantization_config",
                "a quantized checkpoint is not supported: kiln reads float weights (f32, f16, bf16)".into(),
            ));
        }
        if let Some(p) = self.partial_rotary_factor
            && p != 1.0
        {
            return Err(field(
                "partial_rotary_factor",
                format!("`{p}` is not supported: kiln rotates whole heads"),
            ));
        }
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        let activation = Activation::from_hf_name(act)
            .ok_or_else(|| field("hidden_act", format!("unknown activation `{act}`")))?;
        let hidden = self.hidden_size.unwrap_or(4096);
        let heads = self.num_attention_heads.unwrap_or(32);
        let context = self
            .max_position_embeddings
            .unwrap_or(defaults.max_position_embeddings);
        // Sizes under transformers' names; GptConfig::validate checks the rest.
        CONTEXT.check("max_position_embeddings", context as u64)?;
        WIDTH.check("hidden_size", hidden as u64)?;
        let intermediate = self.intermediate_size.unwrap_or(defaults.intermediate_size);
        WIDTH.check("intermediate_size", intermediate as u64)?;
        let kv_heads = self.num_key_value_heads.or(defaults.num_key_value_heads);
        if let Some(kv) = kv_heads
            && (kv == 0 || !heads.is_multiple_of(kv))
        {
            return Err(field(
                "num_key_value_heads",
                format!("{kv} does not divide num_attention_heads ({heads})"),
            ));
        }
        if self.head_dim.is_none() && (heads == 0 || !hidden.is_multiple_of(heads)) {
            return Err(field(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size ({hidden}), and head_dim is not set"),
            ));
        }
        let (rope_theta, rope_scaling) = self.rope(file)?;
        let (qkv_bias, out_bias, mlp_bias) = match family {
            LlamaFamily::Qwen2 => (true, false, false),
            LlamaFamily::Mistral => (false, false, false),
            LlamaFamily::Llama => {
                let attention = self.attention_bias.unwrap_or(false);
                (attention, attention, self.mlp_bias.unwrap_or(false))
            }
        };
        let dropout = self.attention_dropout.unwrap_or(0.0);
        Ok(
            GptConfig::new(self.vocab_size.unwrap_or(defaults.vocab_size))
                .with_block_size(context)
                .with_n_layer(self.num_hidden_layers.unwrap_or(32))
                .with_n_head(heads)
                .with_n_kv_head(kv_heads)
                .with_head_dim(self.head_dim)
                .with_d_model(hidden)
                .with_d_ff(Some(intermediate))
                .with_dropout(0.0)
                .with_attn_dropout(dropout)
                .with_positions(PositionEncoding::Rotary)
                .with_rope_theta(rope_theta)
                .with_rope_scaling(rope_scaling)
                .with_ff_kind(FeedForwardKind::SwiGlu)
                .with_activation(activation)
                .with_norm_position(NormPosition::Pre)
                .with_norm(Some(NormKind::RmsNorm))
                .with_layer_norm_eps(self.rms_norm_eps.unwrap_or(1e-6))
                .with_bias(false)
                .with_qkv_bias(Some(qkv_bias))
                .with_attn_out_bias(Some(out_bias))
                .with_mlp_bias(Some(mlp_bias))
                .with_sliding_window(self.window(family, defaults.sliding_window, file)?)
                .with_tie_embeddings(self.tie_word_embeddings.unwrap_or(false))
                .with_init_std(self.initializer_range.unwrap_or(0.02)),
        )
    }

    /// `rope_theta` and the scaling, from whichever layout the file has (5.x's
    /// `rope_parameters`, else 4.x's `rope_theta` and `rope_scaling`; transformers gives
    /// `rope_scaling` the precedence when both are present, and so does kiln).
    fn rope(&self, file: &Path) -> Result<(f64, Option<RopeScaling>)> {
        let (name, params) = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(scaling), _) => ("rope_scaling", scaling.clone()),
            (None, Some(parameters)) => ("rope_parameters", parameters.clone()),
            (None, None) => ("rope_scaling", Map::new()),
        };
        let bad = |key: &str, message: String| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: if key.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{key}")
            },
            message,
        };
        let number = |key: &str| -> Result<Option<f64>> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(key, format!("`{v}` is not a number"))),
            }
        };
        let theta = number("rope_theta")?.or(self.rope_theta).unwrap_or(10000.0);
        let kind = match params.get("rope_type").or_else(|| params.get("type")) {
            None | Some(Value::Null) => "default".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(bad("rope_type", format!("`{v}` is not a string"))),
        };
        let allowed: &[&str] = match kind.as_str() {
            "default" => &[],
            "linear" => &["factor"],
            "llama3" => &[
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_max_position_embeddings",
            ],
            other => {
                return Err(bad(
                    "rope_type",
                    format!(
                        "`{other}` is not supported (kiln implements `default`, `linear` and `llama3`)"
                    ),
                ));
            }
        };
        for key in params.keys() {
            let known = ["rope_type", "type", "rope_theta"].contains(&key.as_str())
                || allowed.contains(&key.as_str());
            if !known {
                return Err(bad(
                    key,
                    format!("is not supported with rope_type `{kind}`"),
                ));
            }
        }
        let required = |key: &str| {
            number(key)?.ok_or_else(|| bad(key, format!("is required by rope_type `{kind}`")))
        };
        let scaling = match kind.as_str() {
            "linear" => Some(RopeScaling::Linear {
                factor: required("factor")?,
            }),
            "llama3" => {
                let original = match number("original_max_position_embeddings")? {
                    Some(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
                    Some(n) => {
                        return Err(bad(
                            "original_max_position_embeddings",
                            format!("`{n}` is not a positive integer"),
                        ));
                    }
                    // transformers falls back to the context length.
                    None => self.max_position_embeddings.unwrap_or(2048),
                };
                Some(RopeScaling::Llama3 {
                    factor: required("factor")?,
                    low_freq_factor: required("low_freq_factor")?,
                    high_freq_factor: required("high_freq_factor")?,
                    original_max_position_embeddings: original,
                })
            }
            _ => None,
        };
        if let Some(scaling) = &scaling {
            scaling.validate().map_err(|e| bad("", e.to_string()))?;
        }
        Ok((theta, scaling))
    }

    /// The attention window every layer uses, or none; per-layer windows (some layers full,
    /// some windowed) are refused.
    fn window(
        &self,
        family: LlamaFamily,
        default: Option<usize>,
        file: &Path,
    ) -> Result<Option<usize>> {
        let bad = |field: &str, message: String| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            message,
        };
        let window =
            match &self.sliding_window {
                None => default,
                Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().filter(|&w| w > 0).ok_or_else(|| {
                    bad("sliding_window", format!("`{v}` is not a positive integer"))
                })? as usize),
            };
        let layers = self.num_hidden_layers.unwrap_or(32);
        let sliding: Vec<bool> = match (&self.layer_types, family) {
            (Some(types), _) => types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(false),
                    "sliding_attention" => Ok(true),
                    other => Err(bad(
                        "layer_types",
                        format!("layer type `{other}` is not supported"),
                    )),
                })
                .collect::<Result<_>>()?,
            (None, LlamaFamily::Qwen2) => {
                let first = self.max_window_layers.unwrap_or(28);
                let on = self.use_sliding_window.unwrap_or(false);
                (0..layers).map(|i| on && i >= first).collect()
            }
            (None, LlamaFamily::Mistral) => vec![true; layers],
            (None, LlamaFamily::Llama) => vec![false; layers],
        };
        if family == LlamaFamily::Qwen2 && !self.use_sliding_window.unwrap_or(false) {
            // transformers sets Qwen2's window to none without `use_sliding_window`.
            return Ok(None);
        }
        match (window, sliding.iter().all(|&s| s), sliding.iter().any(|&s| s)) {
            (None, _, _) | (_, _, false) => Ok(None),
            (Some(w), true, _) => Ok(Some(w)),
            (Some(_), false, true) => Err(bad(
                "layer_types",
                "a sliding window on some layers only is not supported (kiln applies one window to every layer)".into(),
            )),
        }
    }
}

/// The transformers name of each linear layer of a block, by kiln's name
/// ([`TransformerBlock::linears`](crate::block::TransformerBlock::linears)): the family's layer
/// table. peft's `target_modules` use these names too.
pub fn hf_linear_name(kiln: &str) -> Option<&'static str> {
    Some(match kiln {
        "attn.query" => "self_attn.q_proj",
        "attn.key" => "self_attn.k_proj",
        "attn.value" => "self_attn.v_proj",
        "attn.out" => "self_attn.o_proj",
        "ffn.gate" => "mlp.gate_proj",
        "ffn.up" => "mlp.up_proj",
        "ffn.down" => "mlp.down_proj",
        _ => return None,
    })
}

/// The tensors of old checkpoints that transformers ignores: the rotary frequencies some
/// exporters saved (they are recomputed from the config).
fn ignored(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// Builds the model and fills every parameter from the checkpoint; a tensor of the checkpoint
/// that the model has no place for is an error naming it.
pub fn load_llama(config: &GptConfig, weights: &mut HfWeights, device: &Device) -> Result<Gpt> {
    weights.detect_prefix("model.", "embed_tokens.weight");
    // Built without drawing weights: each is replaced by the file's, shape-checked first.
    let mut model = config.init_lazy(device)?;
    let (d, v) = (config.d_model, config.vocab_size);
    model.token_embedding.weight =
        Param::from_tensor(weights.tensor("embed_tokens.weight", [v, d], device)?);
    for (i, block) in model.blocks.iter_mut().enumerate() {
        let name = |s: &str| format!("layers.{i}.{s}");
        load_norm(
            &mut block.attn_norm,
            weights,
            &name("input_layernorm.weight"),
            device,
        )?;
        load_norm(
            &mut block.ffn_norm,
            weights,
            &name("post_attention_layernorm.weight"),
            device,
        )?;
        for (kiln, layer) in block.linears_mut() {
            let hf = hf_linear_name(&kiln).expect("every block linear has an HF name");
            let weight = name(&format!("{hf}.weight"));
            let bias = layer.bias.is_some().then(|| name(&format!("{hf}.bias")));
            load_linear(layer, weights, &weight, bias.as_deref(), device)?;
        }
    }
    load_norm(&mut model.final_norm, weights, "norm.weight", device)?;
    if let Some(head) = model.lm_head.as_mut() {
        // `lm_head` sits outside the `model.` prefix; an nn.Linear, stored [out, in].
        let weight = weights.linear_weight("lm_head.weight", [v, d], device)?;
        head.weight = Param::from_tensor(weight);
    }
    weights.check_all_read(ignored)?;
    Ok(model)
}

fn load_norm(norm: &mut Norm, weights: &HfWeights, name: &str, device: &Device) -> Result<()> {
    let d = norm.d_model();
    norm.gamma = Param::from_tensor(weights.tensor(name, [d], device)?);
    Ok(())
}

/// A linear layer from transformers' `[out, in]` weight (and bias).
fn load_linear(
    layer: &mut Linear,
    weights: &HfWeights,
    weight: &str,
    bias: Option<&str>,
    device: &Device,
) -> Result<()> {
    let [d_in, d_out] = layer.weight.dims();
    layer.weight = Param::from_tensor(weights.linear_weight(weight, [d_out, d_in], device)?);
    if let Some(bias) = bias {
        layer.bias = Some(Param::from_tensor(weights.tensor(bias, [d_out], device)?));
    }
    Ok(())
}

/// A Llama-family [`Gpt`] as transformers' checkpoint: `LlamaForCausalLM`, or
/// `Qwen2ForCausalLM` for biases on q, k and v only, or `MistralForCausalLM` with a sliding
/// window. Refused, with the reason: learned positions, LayerNorms, a plain MLP, a post-norm
/// block, heads removed by pruning, blocks that differ, biases no class has.
pub(crate) fn llama_checkpoint(gpt: &Gpt) -> Result<HfCheckpoint> {
    let Some(rope) = &gpt.rope else {
        return Err(no_hf_equivalent(
            "the GPT learns absolute positions; the Llama family uses rotary positions",
        ));
    };
    let [vocab, d] = gpt.token_embedding.weight.dims();
    let first = gpt
        .blocks
        .first()
        .ok_or_else(|| no_hf_equivalent("the model has no blocks; Llama's has some"))?;
    let (heads, head_dim) = (
        first.attn.n_head,
        first.attn.query.d_out() / first.attn.n_head,
    );
    let kv_heads = first.attn.key.d_out() / head_dim;
    let biases = |b: &crate::block::TransformerBlock| {
        let [q, k, v, o] = b.attn.linears().map(|(_, _, l)| l.bias.is_some());
        let mlp: Vec<bool> = b
            .ffn
            .linears()
            .iter()
            .map(|(_, _, l)| l.bias.is_some())
            .collect();
        (q, k, v, o, mlp)
    };
    let (q, k, v, o, mlp) = biases(first);
    let mlp_bias = mlp.iter().all(|&b| b);
    if mlp.iter().any(|&b| b) != mlp_bias || q != k || k != v {
        return Err(no_hf_equivalent(
            "some of a block's linear layers have biases and others of the same kind do not; transformers' classes have them on q, k, v (and o) together, and on the whole MLP",
        ));
    }
    let window = first.attn.sliding_window;
    let family = match (q, o, mlp_bias, window) {
        (true, false, false, None) => LlamaFamily::Qwen2,
        (false, false, false, Some(_)) => LlamaFamily::Mistral,
        (_, _, _, Some(_)) => {
            return Err(no_hf_equivalent(
                "a sliding window with biases; Mistral, the class with a window, has none",
            ));
        }
        (q, o, _, None) if q == o => LlamaFamily::Llama,
        _ => {
            return Err(no_hf_equivalent(
                "biases on the output projection but not on q, k and v; no transformers class has that",
            ));
        }
    };
    for (i, block) in gpt.blocks.iter().enumerate() {
        let this = (
            block.attn.n_head,
            block.attn.query.d_out(),
            block.attn.key.d_out(),
            block.ffn.up.d_out(),
            block.attn.sliding_window,
            biases(block),
            block.attn_norm.kind,
            block.ffn_norm.kind,
            block.norm_position,
        );
        let expected = (
            heads,
            heads * head_dim,
            kv_heads * head_dim,
            first.ffn.up.d_out(),
            window,
            biases(first),
            NormKind::RmsNorm,
            NormKind::RmsNorm,
            NormPosition::Pre,
        );
        if this != expected {
            return Err(no_hf_equivalent(format!(
                "block {i} differs from what one Llama config states for every block (heads, widths, window, biases, RMSNorms before attention and MLP)"
            )));
        }
        if block.ffn.gate.is_none() || block.ffn.activation != Activation::Silu {
            return Err(no_hf_equivalent(format!(
                "block {i} has no SwiGLU (SiLU-gated) MLP; the Llama family has one"
            )));
        }
        if block.attn_norm.epsilon != gpt.final_norm.epsilon
            || block.ffn_norm.epsilon != gpt.final_norm.epsilon
        {
            return Err(no_hf_equivalent(format!(
                "block {i}'s norms have another epsilon than the final norm; Llama has one rms_norm_eps"
            )));
        }
    }
    if gpt.final_norm.kind != NormKind::RmsNorm {
        return Err(no_hf_equivalent(
            "the final norm is a LayerNorm; Llama's is an RMSNorm",
        ));
    }
    if gpt.lm_head.as_ref().is_some_and(|h| h.bias.is_some()) {
        return Err(no_hf_equivalent("the LM head has a bias; Llama's has none"));
    }

    let mut tensors = NamedTensors::default();
    let m = |name: &str| format!("model.{name}");
    tensors.push(&m("embed_tokens.weight"), gpt.token_embedding.weight.val());
    for (i, block) in gpt.blocks.iter().enumerate() {
        let name = |s: &str| m(&format!("layers.{i}.{s}"));
        tensors.push(&name("input_layernorm.weight"), block.attn_norm.gamma.val());
        for (kiln, _, layer) in block.linears() {
            let hf = hf_linear_name(&kiln).expect("every block linear has an HF name");
            tensors.push(
                &name(&format!("{hf}.weight")),
                layer.weight.val().transpose(),
            );
            if let Some(bias) = &layer.bias {
                tensors.push(&name(&format!("{hf}.bias")), bias.val());
            }
        }
        tensors.push(
            &name("post_attention_layernorm.weight"),
            block.ffn_norm.gamma.val(),
        );
    }
    tensors.push(&m("norm.weight"), gpt.final_norm.gamma.val());
    if let Some(head) = &gpt.lm_head {
        tensors.push("lm_head.weight", head.weight.val().transpose());
    }

    // Both layouts of the rope settings: 4.x reads rope_theta and rope_scaling, 5.x reads
    // rope_scaling over rope_parameters; the two agree.
    let mut parameters = Map::new();
    parameters.insert("rope_theta".into(), rope.theta.into());
    let scaling = rope.scaling.as_ref().map(|scaling| {
        let mut map = Map::new();
        match *scaling {
            RopeScaling::Linear { factor } => {
                map.insert("rope_type".into(), "linear".into());
                map.insert("factor".into(), factor.into());
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                map.insert("rope_type".into(), "llama3".into());
                map.insert("factor".into(), factor.into());
                map.insert("low_freq_factor".into(), low_freq_factor.into());
                map.insert("high_freq_factor".into(), high_freq_factor.into());
                map.insert(
                    "original_max_position_embeddings".into(),
                    original_max_position_embeddings.into(),
                );
            }
        }
        map
    });
    match &scaling {
        Some(map) => parameters.extend(map.clone()),
        None => {
            parameters.insert("rope_type".into(), "default".into());
        }
    }
    let dropout = first.attn.attn_dropout.prob;
    let config = HfLlamaConfig {
        model_type: family.model_type().into(),
        architectures: Some(vec![family.architecture().into()]),
        vocab_size: Some(vocab),
        hidden_size: Some(d),
        intermediate_size: Some(first.ffn.up.d_out()),
        num_hidden_layers: Some(gpt.blocks.len()),
        num_attention_heads: Some(heads),
        num_key_value_heads: Some(kv_heads),
        head_dim: Some(head_dim),
        hidden_act: Some("silu".into()),
        max_position_embeddings: Some(gpt.block_size),
        rms_norm_eps: Some(gpt.final_norm.epsilon),
        tie_word_embeddings: Some(gpt.lm_head.is_none()),
        rope_theta: Some(rope.theta),
        rope_scaling: scaling,
        rope_parameters: Some(parameters),
        attention_bias: (family == LlamaFamily::Llama).then_some(q),
        mlp_bias: (family == LlamaFamily::Llama).then_some(mlp_bias),
        attention_dropout: Some(dropout),
        sliding_window: match family {
            LlamaFamily::Llama => None,
            _ => Some(window.map_or(Value::Null, Value::from)),
        },
        use_sliding_window: (family == LlamaFamily::Qwen2).then_some(false),
        torch_dtype: Some("float32".into()),
        ..HfLlamaConfig::default()
    };
    Ok(tensors.into_checkpoint(HfConfig::Llama(Box::new(config))))
}
