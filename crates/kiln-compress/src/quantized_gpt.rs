//! A GPT for inference with every Transformer linear layer in int8.
//!
//! Built from a trained [`Gpt`]: the query/key/value/output projections, the feed-forward
//! layers and the output projection become [`QuantizedLinear`]s; the embeddings and LayerNorms
//! stay f32 (the embedding is a lookup, not a product). When the output projection is tied to
//! the token embedding, the int8 copy is made from the embedding, which keeps its f32 values for
//! the lookup: the copy costs `vocab · d_model` bytes, and it is what makes decoding fast, since
//! the output projection is the largest single weight a decoding step reads (GPT-2 small: 38.6M
//! of its 124M parameters, 154 MB in f32). The model is kiln-model's own `Gpt` with
//! `QuantizedLinear` as its linear layer ([`Gpt::map_linears`]): the same blocks, forward pass,
//! KV cache and generation, not a second copy. Every block carries its own head count and
//! widths, so heads can be removed per block.

use std::sync::{Arc, Mutex};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Int, Tensor};
use kiln_model::block::TransformerBlock;
use kiln_model::gpt::Gpt;
use kiln_model::linear::LinearLayer;
use kiln_model::sampling::GenerateConfig;

use crate::error::{CompressError, Result};
use crate::quantize::{Calibration, QuantConfig, QuantMode, QuantParams, calibrate};
use crate::quantized_linear::{ActivationQuant, QuantizedLinear, host_module, to_host};

/// One Transformer block with int8 linear layers: kiln-model's block on [`QuantizedLinear`].
pub type QuantizedBlock = TransformerBlock<QuantizedLinear>;

/// A GPT whose Transformer linear layers are int8 (see the module docs).
#[derive(Debug, Clone)]
pub struct QuantizedGpt {
    /// kiln-model's GPT on int8 layers; its methods (forward, KV cache, generation, the linear
    /// layers by path) all apply.
    pub gpt: Gpt<QuantizedLinear>,
}

/// A quantized layer that records every input it sees, for calibration.
#[derive(Debug, Clone)]
struct Recorder<'a> {
    layer: &'a QuantizedLinear,
    inputs: Arc<Mutex<Vec<f32>>>,
}

host_module!(Recorder<'_>, |this| this.layer);

impl LinearLayer for Recorder<'_> {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // A poisoned lock only means another recording panicked; the values are still there.
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        inputs.extend(to_host(x.clone()));
        self.layer.forward(x)
    }

    fn d_out(&self) -> usize {
        self.layer.d_out()
    }

    fn d_in(&self) -> usize {
        self.layer.d_in()
    }
}

impl QuantizedGpt {
    /// Quantizes every Transformer linear layer of `gpt` with `weights`; activations as given.
    pub fn from_gpt(
        gpt: &Gpt,
        weights: &QuantConfig,
        activations: ActivationQuant,
    ) -> Result<Self> {
        Self::from_gpt_with(gpt, |_, layer| {
            QuantizedLinear::from_linear(layer, weights, activations)
        })
    }

    /// Builds the quantized model with `make(path, layer)` for each linear layer (the path is the
    /// parameter prefix, `blocks.0.attn.query`; see [`Gpt::linears`] for the order). A tied
    /// output projection is passed as `lm_head`, a `Linear` holding the token embedding
    /// transposed (`[d_model, vocab]`), and becomes the quantized model's own `lm_head`.
    pub fn from_gpt_with(
        gpt: &Gpt,
        mut make: impl FnMut(&str, &Linear) -> Result<QuantizedLinear>,
    ) -> Result<Self> {
        if gpt.blocks.is_empty() {
            return Err(CompressError::EmptyModel(
                "the model has no blocks to quantize".into(),
            ));
        }
        let gpt = gpt.valid();
        let mut quantized = gpt.map_linears(&mut make)?;
        if quantized.lm_head.is_none() {
            let tied = Linear {
                weight: Param::from_tensor(gpt.token_embedding.weight.val().transpose()),
                bias: None,
            };
            quantized.lm_head = Some(make("lm_head", &tied)?);
        }
        Ok(Self { gpt: quantized })
    }

    /// Every quantized layer with its path, in [`Gpt::linears`] order.
    pub fn linears(&self) -> Vec<(String, &QuantizedLinear)> {
        self.gpt.linears()
    }

    /// Sets how every layer treats its activations.
    pub fn set_activations(&mut self, activations: ActivationQuant) {
        for (_, layer) in self.gpt.linears_mut() {
            layer.activations = activations;
        }
    }

    /// Static activation quantization: runs `batches` through the model, records the inputs of
    /// every linear layer, and gives each layer one range chosen by `calibration` (min-max or
    /// percentile), symmetric or asymmetric.
    pub fn calibrate(
        &mut self,
        batches: &[Tensor<2, Int>],
        calibration: Calibration,
        mode: QuantMode,
    ) -> Result<()> {
        if batches.is_empty() {
            return Err(CompressError::arg("calibration needs at least one batch"));
        }
        let recording = self.gpt.map_linears(|_, layer| {
            Ok::<_, CompressError>(Recorder {
                layer,
                inputs: Arc::default(),
            })
        })?;
        for ids in batches {
            recording.forward(ids.clone())?;
        }
        let ranges = recording
            .linears()
            .into_iter()
            .map(|(_, recorder)| {
                let inputs = recorder.inputs.lock().unwrap_or_else(|e| e.into_inner());
                calibrate(&inputs, calibration)
            })
            .collect::<Result<Vec<_>>>()?;
        for ((_, layer), (lo, hi)) in self.gpt.linears_mut().into_iter().zip(ranges) {
            layer.activations = ActivationQuant::Static(QuantParams::from_range(lo, hi, mode));
        }
        Ok(())
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (causal); see [`Gpt::forward`].
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        Ok(self.gpt.forward(ids)?)
    }

    /// Continues each prompt by up to `config.max_new_tokens` tokens, greedy or sampled, with a
    /// KV cache and a sliding window past the context: kiln-model's [`Gpt::generate`].
    pub fn generate(&self, prompts: &[Vec<u32>], config: &GenerateConfig) -> Result<Vec<Vec<u32>>> {
        Ok(self.gpt.generate(prompts, config)?)
    }

    /// Physically removes every attention head not in `kept` (per block, sorted indices): the
    /// query/key/value layers lose those output channels, the output projection those input
    /// columns. The result computes what the model with those heads masked
    /// ([`head_masks`](crate::head_masks)) computes, with fewer parameters and FLOPs: kiln-model's
    /// [`Gpt::keep_heads`], as for the f32 model ([`remove_heads`](crate::remove_heads)).
    pub fn remove_heads(self, kept: &[Vec<usize>]) -> Result<Self> {
        Ok(Self {
            gpt: self.gpt.keep_heads(kept)?,
        })
    }

    /// Parameters (int8 weights, biases, embeddings, norms).
    pub fn num_params(&self) -> usize {
        self.gpt.num_params()
    }
}
