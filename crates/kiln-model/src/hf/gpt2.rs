//! HF `gpt2` checkpoints (`GPT2LMHeadModel`, `GPT2Model`) and kiln's [`Gpt`], both ways.
//!
//! GPT-2's `Conv1D` stores weights `[in, out]`, which is Burn's `Linear` layout, so they move
//! untransposed; `c_attn` is the fused q|k|v projection `[d, 3d]`, split into kiln's three on
//! load and concatenated on save. The LM head is an `nn.Linear` (`[out, in]`), transposed.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor};

use super::config::{HfConfig, HfGpt2Config};
use super::save::{HfCheckpoint, NamedTensors, bias, block_shape, no_hf_equivalent};
use super::weights::HfWeights;
use crate::activation::Activation;
use crate::block::NormPosition;
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, GptConfig};
use crate::limits::{CONTEXT, WIDTH};

impl HfGpt2Config {
    /// The kiln config of this checkpoint; `file` is where it was read (named in errors).
    /// Errors on attention variants kiln does not implement.
    pub fn gpt_config(&self, file: &Path) -> Result<GptConfig> {
        let unsupported = |field: &str, value: bool| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            message: format!("`{value}` is not supported"),
        };
        if self.scale_attn_by_inverse_layer_idx {
            return Err(unsupported("scale_attn_by_inverse_layer_idx", true));
        }
        if self.reorder_and_upcast_attn {
            return Err(unsupported("reorder_and_upcast_attn", true));
        }
        if !self.scale_attn_weights {
            return Err(unsupported("scale_attn_weights", false));
        }
        let name = &self.activation_function;
        let activation = Activation::from_hf_name(name).ok_or_else(|| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: "activation_function".into(),
            message: format!("unknown activation `{name}`"),
        })?;
        // Sizes under transformers' names; GptConfig::validate checks the rest.
        CONTEXT.check("n_positions", self.n_positions as u64)?;
        WIDTH.check("n_embd", self.n_embd as u64)?;
        let n_inner = match self.n_inner {
            Some(n) => WIDTH.check("n_inner", n as u64)?,
            None => 4 * self.n_embd,
        };
        Ok(GptConfig::new(self.vocab_size)
            .with_block_size(self.n_positions)
            .with_n_layer(self.n_layer)
            .with_n_head(self.n_head)
            .with_d_model(self.n_embd)
            .with_d_ff(Some(n_inner))
            .with_activation(activation)
            .with_layer_norm_eps(self.layer_norm_epsilon)
            .with_tie_embeddings(self.tie_word_embeddings)
            .with_dropout(self.resid_pdrop)
            .with_attn_dropout(self.attn_pdrop)
            .with_init_std(self.initializer_range))
    }
}

/// Builds the model and fills every parameter from the checkpoint.
pub fn load_gpt2(config: &GptConfig, weights: &mut HfWeights, device: &Device) -> Result<Gpt> {
    weights.detect_prefix("transformer.", "wte.weight");
    // Built without drawing weights: each is replaced by the file's, shape-checked first.
    let mut model = config.init_lazy(device)?;
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
        head.weight =
            Param::from_tensor(weights.linear_weight("lm_head.weight", [v, d], device)?);
    }
    weights.check_all_read(gpt2_buffer)?;
    Ok(model)
}

/// The causal-mask buffers older transformers saved with GPT-2 (`h.N.attn.bias`, a
/// `[1, 1, n, n]` mask, and `h.N.attn.masked_bias`): recomputed, never weights.
fn gpt2_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// A GPT as `GPT2LMHeadModel`. No equivalent: rotary positions, SwiGLU, post-norm blocks,
/// missing biases, heads removed by pruning, blocks of different widths.
pub(crate) fn gpt2_checkpoint(gpt: &Gpt) -> Result<HfCheckpoint> {
    {
        if gpt.rope.is_some() || gpt.position_embedding.is_none() {
            return Err(no_hf_equivalent(
                "the GPT uses rotary positions; GPT-2 learns absolute position embeddings",
            ));
        }
        let [vocab_size, d] = gpt.token_embedding.weight.dims();
        let shape = block_shape(&gpt.blocks, d, NormPosition::Pre, "GPT-2")?;
        let final_bias =
            gpt.final_norm.beta.as_ref().ok_or_else(|| {
                no_hf_equivalent("the final LayerNorm has no bias; GPT-2's has one")
            })?;
        if gpt.final_norm.epsilon != shape.layer_norm_eps {
            return Err(no_hf_equivalent(
                "the final LayerNorm's epsilon differs from the blocks'; GPT-2 has one \
                 layer_norm_epsilon",
            ));
        }
        if gpt.lm_head.as_ref().is_some_and(|h| h.bias.is_some()) {
            return Err(no_hf_equivalent("the LM head has a bias; GPT-2's has none"));
        }

        let mut tensors = NamedTensors::default();
        let t = |name: &str| format!("transformer.{name}");
        tensors.push(&t("wte.weight"), gpt.token_embedding.weight.val());
        if let Some(positions) = &gpt.position_embedding {
            tensors.push(&t("wpe.weight"), positions.weight.val());
        }
        for (i, block) in gpt.blocks.iter().enumerate() {
            let name = |s: &str| t(&format!("h.{i}.{s}"));
            let attn = &block.attn;
            let qkv = [&attn.query, &attn.key, &attn.value];
            tensors.push(&name("ln_1.weight"), block.attn_norm.gamma.val());
            tensors.push(&name("ln_1.bias"), bias(&block.attn_norm.beta)?);
            tensors.push(
                &name("attn.c_attn.weight"),
                Tensor::cat(qkv.iter().map(|p| p.weight.val()).collect(), 1),
            );
            tensors.push(
                &name("attn.c_attn.bias"),
                Tensor::cat(qkv.iter().map(|p| bias(&p.bias)).collect::<Result<_>>()?, 0),
            );
            tensors.push(&name("attn.c_proj.weight"), attn.out.weight.val());
            tensors.push(&name("attn.c_proj.bias"), bias(&attn.out.bias)?);
            tensors.push(&name("ln_2.weight"), block.ffn_norm.gamma.val());
            tensors.push(&name("ln_2.bias"), bias(&block.ffn_norm.beta)?);
            tensors.push(&name("mlp.c_fc.weight"), block.ffn.up.weight.val());
            tensors.push(&name("mlp.c_fc.bias"), bias(&block.ffn.up.bias)?);
            tensors.push(&name("mlp.c_proj.weight"), block.ffn.down.weight.val());
            tensors.push(&name("mlp.c_proj.bias"), bias(&block.ffn.down.bias)?);
        }
        tensors.push(&t("ln_f.weight"), gpt.final_norm.gamma.val());
        tensors.push(&t("ln_f.bias"), final_bias.val());
        if let Some(head) = &gpt.lm_head {
            tensors.push("lm_head.weight", head.weight.val().transpose());
        }

        let config = HfGpt2Config {
            architectures: Some(vec!["GPT2LMHeadModel".into()]),
            vocab_size,
            n_positions: gpt.block_size,
            n_embd: d,
            n_layer: gpt.blocks.len(),
            n_head: shape.n_head,
            n_inner: (shape.d_ff != 4 * d).then_some(shape.d_ff),
            activation_function: shape.activation.hf_name().into(),
            resid_pdrop: shape.resid_dropout,
            embd_pdrop: gpt.embedding_dropout.prob,
            attn_pdrop: shape.attn_dropout,
            layer_norm_epsilon: shape.layer_norm_eps,
            tie_word_embeddings: gpt.lm_head.is_none(),
            ..HfGpt2Config::default()
        };
        // GPT-2's `<|endoftext|>` id, unless the vocabulary has no such id (transformers warns).
        let in_vocab = |id: Option<usize>| id.filter(|&id| id < vocab_size);
        let config = HfGpt2Config {
            bos_token_id: in_vocab(config.bos_token_id),
            eos_token_id: in_vocab(config.eos_token_id),
            ..config
        };
        Ok(tensors.into_checkpoint(HfConfig::Gpt2(config)))
    }
}
