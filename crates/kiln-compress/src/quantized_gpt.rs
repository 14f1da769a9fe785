//! A GPT for inference with every Transformer linear layer in int8.
//!
//! Built from a trained [`Gpt`]: the query/key/value/output projections and the feed-forward
//! layers become [`QuantizedLinear`]s; the embeddings, LayerNorms and the tied output
//! projection stay f32 (they are a small part of the weights of a model of any size, and the
//! embedding is a lookup, not a product). The forward pass is kiln-model's, written against the
//! quantized layers; every block carries its own head count and widths.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};
use kiln_model::activation::Activation;
use kiln_model::block::NormPosition;
use kiln_model::gpt::Gpt;
use kiln_model::loss::{check_token_ids, token_tensor};
use kiln_model::rotary::RotaryEmbedding;

use crate::error::{CompressError, Result};
use crate::quantize::{
    Calibration, QuantConfig, QuantMode, QuantParams, QuantizedTensor, calibrate,
};
use crate::quantized_linear::{ActivationQuant, QuantizedLinear, to_host};

/// One Transformer block with int8 linear layers.
#[derive(Debug, Clone)]
pub struct QuantizedBlock {
    /// LayerNorm of the attention sub-layer.
    pub attn_norm: LayerNorm,
    /// Query projection.
    pub query: QuantizedLinear,
    /// Key projection.
    pub key: QuantizedLinear,
    /// Value projection.
    pub value: QuantizedLinear,
    /// Output projection.
    pub out: QuantizedLinear,
    /// Number of heads (the head width is `query.d_out() / n_heads`).
    pub n_heads: usize,
    /// LayerNorm of the feed-forward sub-layer.
    pub ffn_norm: LayerNorm,
    /// Feed-forward input projection.
    pub up: QuantizedLinear,
    /// SwiGLU gate.
    pub gate: Option<QuantizedLinear>,
    /// Feed-forward output projection.
    pub down: QuantizedLinear,
    /// The feed-forward non-linearity.
    pub activation: Activation,
    /// Pre- or post-norm.
    pub norm_position: NormPosition,
}

/// A GPT whose Transformer linear layers are int8 (see the module docs).
#[derive(Debug, Clone)]
pub struct QuantizedGpt {
    /// Token embedding (also the output projection when tied).
    pub token_embedding: Embedding,
    /// Learned positions.
    pub position_embedding: Option<Embedding>,
    /// Rotary tables.
    pub rope: Option<RotaryEmbedding>,
    /// The blocks.
    pub blocks: Vec<QuantizedBlock>,
    /// Final LayerNorm.
    pub final_norm: LayerNorm,
    /// Untied output projection.
    pub lm_head: Option<QuantizedLinear>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length.
    pub block_size: usize,
}

/// Collects the inputs of every linear layer during calibration, by slot.
type Observer = Vec<Vec<f32>>;

/// Linear layers per block, in slot order: query, key, value, out, up, gate, down.
const SLOTS: usize = 7;

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
    /// parameter prefix, `blocks.0.attn.query`).
    pub fn from_gpt_with(
        gpt: &Gpt,
        mut make: impl FnMut(&str, &Linear) -> Result<QuantizedLinear>,
    ) -> Result<Self> {
        if gpt.blocks.is_empty() {
            return Err(CompressError::EmptyModel(
                "the model has no blocks to quantize".into(),
            ));
        }
        let gpt = gpt.clone().valid();
        let mut blocks = Vec::with_capacity(gpt.blocks.len());
        for (i, block) in gpt.blocks.iter().enumerate() {
            let attn = &block.attn;
            let ffn = &block.ffn;
            let a = |name: &str| format!("blocks.{i}.attn.{name}");
            let f = |name: &str| format!("blocks.{i}.ffn.{name}");
            blocks.push(QuantizedBlock {
                attn_norm: block.attn_norm.clone(),
                query: make(&a("query"), &attn.query)?,
                key: make(&a("key"), &attn.key)?,
                value: make(&a("value"), &attn.value)?,
                out: make(&a("out"), &attn.out)?,
                n_heads: attn.n_heads,
                ffn_norm: block.ffn_norm.clone(),
                up: make(&f("up"), &ffn.up)?,
                gate: ffn.gate.as_ref().map(|g| make(&f("gate"), g)).transpose()?,
                down: make(&f("down"), &ffn.down)?,
                activation: ffn.activation,
                norm_position: block.norm_position,
            });
        }
        Ok(Self {
            token_embedding: gpt.token_embedding.clone(),
            position_embedding: gpt.position_embedding.clone(),
            rope: gpt.rope.clone(),
            blocks,
            final_norm: gpt.final_norm.clone(),
            lm_head: gpt
                .lm_head
                .as_ref()
                .map(|h| make("lm_head", h))
                .transpose()?,
            vocab_size: gpt.vocab_size,
            block_size: gpt.block_size,
        })
    }

    /// Every quantized layer with its path, in slot order.
    pub fn linears(&self) -> Vec<(String, &QuantizedLinear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            out.push((format!("blocks.{i}.attn.query"), &b.query));
            out.push((format!("blocks.{i}.attn.key"), &b.key));
            out.push((format!("blocks.{i}.attn.value"), &b.value));
            out.push((format!("blocks.{i}.attn.out"), &b.out));
            out.push((format!("blocks.{i}.ffn.up"), &b.up));
            if let Some(g) = &b.gate {
                out.push((format!("blocks.{i}.ffn.gate"), g));
            }
            out.push((format!("blocks.{i}.ffn.down"), &b.down));
        }
        if let Some(h) = &self.lm_head {
            out.push(("lm_head".into(), h));
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(usize, &mut QuantizedLinear)> {
        let mut out = Vec::new();
        let n = self.blocks.len();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            out.push((i * SLOTS, &mut b.query));
            out.push((i * SLOTS + 1, &mut b.key));
            out.push((i * SLOTS + 2, &mut b.value));
            out.push((i * SLOTS + 3, &mut b.out));
            out.push((i * SLOTS + 4, &mut b.up));
            if let Some(g) = &mut b.gate {
                out.push((i * SLOTS + 5, g));
            }
            out.push((i * SLOTS + 6, &mut b.down));
        }
        if let Some(h) = &mut self.lm_head {
            out.push((n * SLOTS, h));
        }
        out
    }

    /// Sets how every layer treats its activations.
    pub fn set_activations(&mut self, activations: ActivationQuant) {
        for (_, l) in self.linears_mut() {
            l.activations = activations;
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
        let mut observer: Observer = vec![Vec::new(); (self.blocks.len() + 1) * SLOTS];
        for ids in batches {
            check_token_ids(ids, self.vocab_size, self.block_size)?;
            self.logits(ids.clone(), Some(&mut observer));
        }
        for (slot, layer) in self.linears_mut() {
            let (lo, hi) = calibrate(&observer[slot], calibration)?;
            layer.activations = ActivationQuant::Static(QuantParams::from_range(lo, hi, mode));
        }
        Ok(())
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (causal).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        check_token_ids(&ids, self.vocab_size, self.block_size)?;
        Ok(self.logits(ids, None))
    }

    fn logits(&self, ids: Tensor<2, Int>, mut observer: Option<&mut Observer>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let mut x = self.token_embedding.forward(ids);
        let d_model = x.dims()[2];
        if let Some(positions) = &self.position_embedding {
            let pos = Tensor::<1, Int>::arange(0..seq as i64, &x.device()).reshape([1, seq]);
            x = x + positions.forward(pos).expand([batch, seq, d_model]);
        }
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block(i, block, x, observer.as_deref_mut());
        }
        let x = self.final_norm.forward(x);
        match &self.lm_head {
            Some(head) => run(head, x, observer, self.blocks.len() * SLOTS),
            None => linear(x, self.token_embedding.weight.val().transpose(), None),
        }
    }

    fn block(
        &self,
        i: usize,
        b: &QuantizedBlock,
        x: Tensor<3>,
        mut obs: Option<&mut Observer>,
    ) -> Tensor<3> {
        let base = i * SLOTS;
        let attn = |x: Tensor<3>, obs: Option<&mut Observer>| self.attention(b, x, obs, base);
        let ffn = |x: Tensor<3>, mut obs: Option<&mut Observer>| {
            let hidden = match &b.gate {
                Some(gate) => {
                    b.activation
                        .forward(run(gate, x.clone(), obs.as_deref_mut(), base + 5))
                        * run(&b.up, x, obs.as_deref_mut(), base + 4)
                }
                None => b
                    .activation
                    .forward(run(&b.up, x, obs.as_deref_mut(), base + 4)),
            };
            run(&b.down, hidden, obs, base + 6)
        };
        match b.norm_position {
            NormPosition::Pre => {
                let x = x.clone() + attn(b.attn_norm.forward(x), obs.as_deref_mut());
                x.clone() + ffn(b.ffn_norm.forward(x), obs)
            }
            NormPosition::Post => {
                let x = b.attn_norm.forward(x.clone() + attn(x, obs.as_deref_mut()));
                b.ffn_norm.forward(x.clone() + ffn(x, obs))
            }
        }
    }

    fn attention(
        &self,
        b: &QuantizedBlock,
        x: Tensor<3>,
        mut obs: Option<&mut Observer>,
        base: usize,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let heads = b.n_heads;
        let width = b.query.d_out();
        let head_dim = width / heads;
        let mut split = |layer: &QuantizedLinear, slot: usize| {
            run(layer, x.clone(), obs.as_deref_mut(), slot)
                .reshape([batch, seq, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (mut q, mut k, v) = (
            split(&b.query, base),
            split(&b.key, base + 1),
            split(&b.value, base + 2),
        );
        if let Some(rope) = &self.rope {
            q = rope.apply(q, 0);
            k = rope.apply(k, 0);
        }
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let context = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([batch, seq, width]);
        run(&b.out, context, obs, base + 3)
    }

    /// Greedy continuation of each prompt (all of the same length) by `max_new_tokens` tokens.
    /// Recomputes the whole sequence at each step (no KV cache: the sequences this is used for
    /// are a dozen tokens).
    pub fn generate(
        &self,
        prompts: &[Vec<usize>],
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let device = self.token_embedding.weight.device();
        let mut sequences = prompts.to_vec();
        for _ in 0..max_new_tokens {
            let logits = self.forward(token_tensor(&sequences, &device)?)?;
            let [batch, seq, vocab] = logits.dims();
            let last = to_host(logits.narrow(1, seq - 1, 1).reshape([batch, vocab]));
            for (s, row) in sequences.iter_mut().zip(last.chunks(vocab)) {
                let best = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                    .map_or(0, |(i, _)| i);
                s.push(best);
            }
        }
        Ok(sequences)
    }

    /// Physically removes every attention head not in `kept` (per block, sorted indices): the
    /// query/key/value layers lose those output channels, the output projection those input
    /// columns. The result computes what the model with those heads masked
    /// ([`head_masks`](crate::head_masks)) computes, with fewer parameters and FLOPs. (kiln-model's
    /// `Gpt` cannot hold blocks with fewer heads, see `docs/compression.md`; this model can.)
    pub fn remove_heads(mut self, kept: &[Vec<usize>]) -> Result<Self> {
        if kept.len() != self.blocks.len() {
            return Err(CompressError::arg(format!(
                "{} head lists for {} blocks",
                kept.len(),
                self.blocks.len()
            )));
        }
        for (b, (block, kept)) in self.blocks.iter_mut().zip(kept).enumerate() {
            let heads = block.n_heads;
            if kept.is_empty()
                || kept.iter().any(|&h| h >= heads)
                || kept.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(CompressError::arg(format!(
                    "block {b}: kept heads must be non-empty, sorted, unique and < {heads}"
                )));
            }
            let head_dim = block.query.d_out() / heads;
            let channels: Vec<usize> = kept
                .iter()
                .flat_map(|&h| h * head_dim..(h + 1) * head_dim)
                .collect();
            for layer in [&mut block.query, &mut block.key, &mut block.value] {
                *layer = keep_rows(layer, &channels);
            }
            block.out = keep_columns(&block.out, &channels);
            block.n_heads = kept.len();
        }
        Ok(self)
    }

    /// Parameters (weights, biases, embeddings, norms).
    pub fn num_params(&self) -> usize {
        let linear: usize = self.linears().iter().map(|(_, l)| l.num_params()).sum();
        let norms = self.final_norm.num_params()
            + self
                .blocks
                .iter()
                .map(|b| b.attn_norm.num_params() + b.ffn_norm.num_params())
                .sum::<usize>();
        linear
            + norms
            + self.token_embedding.num_params()
            + self
                .position_embedding
                .as_ref()
                .map_or(0, |p| p.num_params())
    }
}

fn run(
    layer: &QuantizedLinear,
    x: Tensor<3>,
    obs: Option<&mut Observer>,
    slot: usize,
) -> Tensor<3> {
    if let Some(obs) = obs {
        obs[slot].extend(to_host(x.clone()));
    }
    layer.forward(x)
}

/// The layer with only the given output channels (rows of its `[d_out, d_in]` weight).
fn keep_rows(layer: &QuantizedLinear, rows: &[usize]) -> QuantizedLinear {
    let w = &layer.weight;
    let d_in = w.shape[1];
    let values = rows
        .iter()
        .flat_map(|&r| w.values[r * d_in..(r + 1) * d_in].iter().copied())
        .collect();
    let params = if w.params.len() == 1 {
        w.params.clone()
    } else {
        rows.iter().map(|&r| w.params[r]).collect()
    };
    let weight = QuantizedTensor {
        shape: [rows.len(), d_in],
        values,
        params,
        mode: w.mode,
    };
    let bias = layer
        .bias
        .as_ref()
        .map(|b| rows.iter().map(|&r| b[r]).collect());
    QuantizedLinear::from_parts(weight, bias, layer.activations)
}

/// The layer with only the given input columns (its per-output-channel parameters stay).
fn keep_columns(layer: &QuantizedLinear, cols: &[usize]) -> QuantizedLinear {
    let w = &layer.weight;
    let d_in = w.shape[1];
    let values = (0..w.shape[0])
        .flat_map(|r| cols.iter().map(move |&c| w.values[r * d_in + c]))
        .collect();
    let weight = QuantizedTensor {
        shape: [w.shape[0], cols.len()],
        values,
        params: w.params.clone(),
        mode: w.mode,
    };
    QuantizedLinear::from_parts(weight, layer.bias.clone(), layer.activations)
}
