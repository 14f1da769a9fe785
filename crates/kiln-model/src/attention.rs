//! Multi-head self-attention: Burn's fused attention op at inference, kiln's
//! ([`crate::fused::attention`]) while training, with a KV cache.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor};

use kiln_dist::TensorParallel;

use crate::error::{ModelError, Result};
use crate::fused;
use crate::fused::softmax::masked_softmax;
use crate::init::normal_linear;
use crate::linear::{Cut, LinearLayer, PrunableLinear};
use crate::rotary::RotaryEmbedding;

/// Configuration of a [`MultiHeadAttention`] layer.
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Model width; must be divisible by `n_head`.
    pub d_model: usize,
    /// Number of heads.
    pub n_head: usize,
    /// Dropout on the attention probabilities.
    #[config(default = 0.0)]
    pub attn_dropout: f64,
    /// Dropout on the output projection (the residual branch).
    #[config(default = 0.0)]
    pub resid_dropout: f64,
    /// Whether the projections have biases.
    #[config(default = true)]
    pub bias: bool,
    /// Standard deviation of the q/k/v projection's normal init.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation of the output projection's init.
    #[config(default = 0.02)]
    pub out_init_std: f64,
}

/// Multi-head self-attention with separate query, key and value projections.
///
/// Separate rather than fused (GPT-2's `c_attn` is one `[d, 3d]` matrix): the fused form needs
/// the output split three ways, and Burn differentiates each slice by writing it into a zero
/// tensor of the full size; three projections have the same FLOPs and a clean backward.
///
/// Generic over its [`LinearLayer`] (Burn's [`Linear`] by default; int8 in kiln-compress).
#[derive(Module, Debug)]
pub struct MultiHeadAttention<L: LinearLayer = Linear> {
    /// Query projection.
    pub query: L,
    /// Key projection.
    pub key: L,
    /// Value projection.
    pub value: L,
    /// Output projection.
    pub out: L,
    /// Dropout on the attention probabilities.
    pub attn_dropout: Dropout,
    /// Dropout on the output.
    pub resid_dropout: Dropout,
    /// Number of heads (this rank's share under tensor parallelism).
    pub n_head: usize,
    /// The group the heads are split across, under tensor parallelism (Megatron's parallel
    /// attention: q, k and v column-parallel, the output row-parallel); see
    /// [`parallel`](crate::parallel).
    #[module(skip)]
    pub tensor_parallel: Option<TensorParallel>,
}

/// The keys and values of the positions seen so far, for one attention layer.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    /// `[batch, heads, seen, head_dim]` each, or `None` before the first step.
    pub key_value: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerKvCache {
    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.key_value.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What each query may attend to, handed down through the blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionMask<'a> {
    /// Whether a query is blocked from later positions (decoder) or not (encoder).
    pub causal: bool,
    /// `[batch, keys]`, `true` where the key is padding and must be ignored.
    pub padding: Option<&'a Tensor<2, Bool>>,
}

impl AttentionMask<'_> {
    fn expanded(&self, batch: usize, heads: usize, q: usize, k: usize) -> Option<Tensor<4, Bool>> {
        self.padding.map(|padding| {
            padding
                .clone()
                .reshape([batch, 1, 1, k])
                .expand([batch, heads, q, k])
        })
    }
}

impl MultiHeadAttentionConfig {
    /// Builds the layer. The caller checks that `d_model` is divisible by `n_head`.
    pub fn init(&self, device: &Device) -> MultiHeadAttention {
        let d = self.d_model;
        MultiHeadAttention {
            query: normal_linear(d, d, self.bias, self.init_std, device),
            key: normal_linear(d, d, self.bias, self.init_std, device),
            value: normal_linear(d, d, self.bias, self.init_std, device),
            out: normal_linear(d, d, self.bias, self.out_init_std, device),
            attn_dropout: DropoutConfig::new(self.attn_dropout).init(),
            resid_dropout: DropoutConfig::new(self.resid_dropout).init(),
            n_head: self.n_head,
            tensor_parallel: None,
        }
    }
}

impl<L: LinearLayer> MultiHeadAttention<L> {
    /// `[batch, seq, d_model] -> [batch, seq, d_model]`.
    ///
    /// With a `cache`, `x` holds only the new positions: their keys and values are appended to
    /// the cache and the queries attend to everything cached. `rope` rotates queries and keys at
    /// their absolute positions (the cache length is the offset).
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: AttentionMask<'_>,
        rope: Option<&RotaryEmbedding>,
        cache: Option<&mut LayerKvCache>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let x = match &self.tensor_parallel {
            Some(tp) => tp.copy_to_region(x),
            None => x,
        };
        let heads = self.n_head;
        // From the projection, not from `d_model`: structured pruning may have removed heads.
        let head_dim = self.query.d_out() / heads;

        // [b, t, d] -> [b, h, t, hd]
        let heads_of = |proj: &L| {
            proj.forward(x.clone())
                .reshape([batch, seq, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (mut q, mut k, mut v) = (
            heads_of(&self.query),
            heads_of(&self.key),
            heads_of(&self.value),
        );

        let offset = cache.as_ref().map_or(0, |c| c.len());
        if let Some(rope) = rope {
            q = rope.apply(q, offset);
            k = rope.apply(k, offset);
        }
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.key_value.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            cache.key_value = Some((k.clone(), v.clone()));
        }
        let keys = k.dims()[2];

        let context = if q.device().is_autodiff() {
            // Training. Burn 0.22.1 differentiates its fused op by decomposing it into ~10
            // element-wise ops (max, clamp, exp, sum, div...), each a node of the graph. kiln's
            // own (crate::fused::attention) has its backward: one kernel each way on flex, the
            // composite ops elsewhere. Dropout on the probabilities needs them materialized:
            // then the explicit form, two matmuls around kiln's masked softmax.
            if self.attn_dropout.prob > 0.0 {
                let padding = mask.expanded(batch, heads, seq, keys);
                self.explicit_attention(q, k, v, padding, mask.causal)
            } else {
                let scale = 1.0 / (head_dim as f64).sqrt();
                fused::attention::attention(q, k, v, scale, mask.causal, mask.padding)
            }
        } else {
            let padding = mask.expanded(batch, heads, seq, keys);
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: mask.causal,
            };
            attention(q, k, v, padding, None, options)
        };

        let context = context
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * head_dim]);
        let out = match &self.tensor_parallel {
            Some(tp) => tp.reduce_from_region(self.out.forward(context)),
            None => self.out.forward(context),
        };
        self.resid_dropout.forward(out)
    }

    /// The layer table: the projections in order, with their names (the parameter paths
    /// below the layer) and how tensor parallelism cuts them.
    pub fn linears(&self) -> [(&'static str, Cut, &L); 4] {
        [
            ("query", Cut::Column, &self.query),
            ("key", Cut::Column, &self.key),
            ("value", Cut::Column, &self.value),
            ("out", Cut::Row, &self.out),
        ]
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut L); 4] {
        [
            ("query", &mut self.query),
            ("key", &mut self.key),
            ("value", &mut self.value),
            ("out", &mut self.out),
        ]
    }

    /// The same layer with each projection replaced by `f(name, cut, projection)`, in the
    /// order of [`linears`](Self::linears); dropouts and settings are shared.
    pub fn map_linears<'a, N: LinearLayer, E>(
        &'a self,
        f: &mut impl FnMut(&'static str, Cut, &'a L) -> std::result::Result<N, E>,
    ) -> std::result::Result<MultiHeadAttention<N>, E> {
        let mut map = |(name, cut, layer)| f(name, cut, layer);
        let [query, key, value, out] = self.linears();
        Ok(MultiHeadAttention {
            query: map(query)?,
            key: map(key)?,
            value: map(value)?,
            out: map(out)?,
            attn_dropout: self.attn_dropout.clone(),
            resid_dropout: self.resid_dropout.clone(),
            n_head: self.n_head,
            tensor_parallel: self.tensor_parallel.clone(),
        })
    }

    fn explicit_attention(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        padding: Option<Tensor<4, Bool>>,
        causal: bool,
    ) -> Tensor<4> {
        let head_dim = q.dims()[3];
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = masked_softmax(scores, 1.0 / (head_dim as f64).sqrt(), causal, padding);
        self.attn_dropout.forward(probs).matmul(v)
    }
}

impl<L: PrunableLinear> MultiHeadAttention<L> {
    /// The layer with only the heads `kept` (sorted, unique indices below the head count):
    /// q, k and v lose those heads' output features, the output projection the same input
    /// features. It computes what the layer with the other heads' outputs zeroed computes.
    pub fn keep_heads(&self, kept: &[usize]) -> Result<Self> {
        let heads = self.n_head;
        if kept.is_empty()
            || kept.iter().any(|&h| h >= heads)
            || kept.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(ModelError::BadInput(format!(
                "kept heads must be non-empty, sorted, unique and < {heads}, got {kept:?}"
            )));
        }
        let head_dim = self.query.d_out() / heads;
        let features: Vec<usize> = kept
            .iter()
            .flat_map(|h| h * head_dim..(h + 1) * head_dim)
            .collect();
        let mut layer = self.map_linears(&mut |_, cut, layer| {
            Ok::<_, ModelError>(match cut {
                Cut::Column => layer.keep_outputs(&features),
                Cut::Row => layer.keep_inputs(&features),
            })
        })?;
        layer.n_head = kept.len();
        Ok(layer)
    }
}
