//! HF `gpt2` checkpoints (`GPT2LMHeadModel`, `GPT2Model`) into a kiln [`Gpt`].
//!
//! GPT-2's `Conv1D` stores weights `[in, out]`, which is Burn's `Linear` layout, so they load
//! untransposed; `c_attn` is the fused q|k|v projection, split into kiln's three.

use std::path::Path;

use burn::module::Param;
use burn::tensor::Device;
use serde_json::Value;

use super::config::{bool_or, read_f64, read_usize, read_usize_or};
use super::weights::HfWeights;
use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, GptConfig};

/// Reads a `GptConfig` from a `gpt2` `config.json`.
pub fn gpt2_config(json: &Value, file: &Path) -> Result<GptConfig> {
    for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
        if bool_or(json, flag, false) {
            return Err(ModelError::format(
                file,
                format!("`{flag}: true` is not supported"),
            ));
        }
    }
    if !bool_or(json, "scale_attn_weights", true) {
        return Err(ModelError::format(
            file,
            "`scale_attn_weights: false` is not supported",
        ));
    }
    let act_name = json["activation_function"].as_str().unwrap_or("gelu_new");
    let activation = Activation::from_hf_name(act_name).ok_or_else(|| {
        ModelError::format(file, format!("unknown activation_function `{act_name}`"))
    })?;
    let d_model = read_usize(json, "n_embd", file)?;
    Ok(GptConfig::new(read_usize(json, "vocab_size", file)?)
        .with_block_size(read_usize(json, "n_positions", file)?)
        .with_n_layer(read_usize(json, "n_layer", file)?)
        .with_n_head(read_usize(json, "n_head", file)?)
        .with_d_model(d_model)
        .with_activation(activation)
        .with_layer_norm_eps(read_f64(json, "layer_norm_epsilon").unwrap_or(1e-5))
        .with_tie_embeddings(bool_or(json, "tie_word_embeddings", true))
        .with_dropout(read_f64(json, "resid_pdrop").unwrap_or(0.0))
        .with_attn_dropout(read_f64(json, "attn_pdrop").unwrap_or(0.0))
        .with_init_std(read_f64(json, "initializer_range").unwrap_or(0.02))
        .with_d_ff(Some(read_usize_or(json, "n_inner", 4 * d_model))))
}

/// Builds the model and fills every parameter from the checkpoint.
pub fn load_gpt2(config: &GptConfig, weights: &mut HfWeights, device: &Device) -> Result<Gpt> {
    weights.detect_prefix("transformer.", "wte.weight");
    let mut model = config.init(device)?;
    let (d, ff, v, p) = (
        config.d_model,
        config.d_ff(),
        config.vocab_size,
        config.block_size,
    );

    model.token_embedding.weight =
        Param::from_tensor(weights.tensor("wte.weight", [v, d], device)?);
    if let Some(positions) = model.position_embedding.as_mut() {
        positions.weight = Param::from_tensor(weights.tensor("wpe.weight", [p, d], device)?);
    }
    for (i, block) in model.blocks.iter_mut().enumerate() {
        let name = |s: &str| format!("h.{i}.{s}");
        let vector = |s: &str, n: usize| {
            weights
                .tensor(&name(s), [n], device)
                .map(Param::from_tensor)
        };
        let matrix = |s: &str, shape: [usize; 2]| {
            weights
                .tensor(&name(s), shape, device)
                .map(Param::from_tensor)
        };
        block.attn_norm.gamma = vector("ln_1.weight", d)?;
        block.attn_norm.beta = Some(vector("ln_1.bias", d)?);
        // `c_attn` is q|k|v fused along the output dimension.
        let qkv_weight = weights.tensor(&name("attn.c_attn.weight"), [d, 3 * d], device)?;
        let qkv_bias = weights.tensor(&name("attn.c_attn.bias"), [3 * d], device)?;
        let projections = [
            &mut block.attn.query,
            &mut block.attn.key,
            &mut block.attn.value,
        ];
        for (i, proj) in projections.into_iter().enumerate() {
            proj.weight = Param::from_tensor(qkv_weight.clone().narrow(1, i * d, d));
            proj.bias = Some(Param::from_tensor(qkv_bias.clone().narrow(0, i * d, d)));
        }
        block.attn.out.weight = matrix("attn.c_proj.weight", [d, d])?;
        block.attn.out.bias = Some(vector("attn.c_proj.bias", d)?);
        block.ffn_norm.gamma = vector("ln_2.weight", d)?;
        block.ffn_norm.beta = Some(vector("ln_2.bias", d)?);
        block.ffn.up.weight = matrix("mlp.c_fc.weight", [d, ff])?;
        block.ffn.up.bias = Some(vector("mlp.c_fc.bias", ff)?);
        block.ffn.down.weight = matrix("mlp.c_proj.weight", [ff, d])?;
        block.ffn.down.bias = Some(vector("mlp.c_proj.bias", d)?);
    }
    model.final_norm.gamma = Param::from_tensor(weights.tensor("ln_f.weight", [d], device)?);
    model.final_norm.beta = Some(Param::from_tensor(weights.tensor(
        "ln_f.bias",
        [d],
        device,
    )?));
    if let Some(head) = model.lm_head.as_mut() {
        // `lm_head` is an nn.Linear, stored [out, in]; it sits outside the `transformer.` prefix.
        let weight = weights.tensor("lm_head.weight", [v, d], device)?;
        head.weight = Param::from_tensor(weight.transpose());
    }
    Ok(model)
}
