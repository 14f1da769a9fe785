//! One Transformer block: attention and feed-forward, each with a residual and a LayerNorm.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::attention::{AttentionMask, LayerKvCache, MultiHeadAttention, MultiHeadAttentionConfig};
use crate::feed_forward::{FeedForward, FeedForwardConfig, FeedForwardKind};
use crate::fused::layer_norm;
use crate::linear::{Cut, LinearLayer};
use crate::rotary::RotaryEmbedding;

/// Where the LayerNorms sit relative to the residual connections.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NormPosition {
    /// `x + f(LN(x))`: GPT-2 and most large models; trains stably without warmup tricks.
    Pre,
    /// `LN(x + f(x))`: the original Transformer and BERT.
    Post,
}

/// Configuration of a [`TransformerBlock`].
#[derive(Config, Debug)]
pub struct TransformerBlockConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Feed-forward hidden width.
    pub d_ff: usize,
    /// Pre-norm or post-norm.
    #[config(default = "NormPosition::Pre")]
    pub norm_position: NormPosition,
    /// Plain MLP or SwiGLU.
    #[config(default = "FeedForwardKind::Mlp")]
    pub ff_kind: FeedForwardKind,
    /// Non-linearity of the MLP.
    #[config(default = "Activation::GeluTanh")]
    pub activation: Activation,
    /// Dropout on the residual branches.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Dropout on the attention probabilities.
    #[config(default = 0.0)]
    pub attn_dropout: f64,
    /// Whether linear layers have biases.
    #[config(default = true)]
    pub bias: bool,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Standard deviation of the weights' normal init.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation of the residual output projections (GPT-2: `init_std/√(2·n_layer)`).
    #[config(default = 0.02)]
    pub out_init_std: f64,
}

/// Attention then feed-forward, each wrapped in a residual connection and a LayerNorm.
/// Generic over its [`LinearLayer`] (Burn's [`Linear`] by default).
#[derive(Module, Debug)]
pub struct TransformerBlock<L: LinearLayer = Linear> {
    /// The LayerNorm of the attention sub-layer (before it in pre-norm, after the residual in
    /// post-norm).
    pub attn_norm: LayerNorm,
    /// Self-attention.
    pub attn: MultiHeadAttention<L>,
    /// The LayerNorm of the feed-forward sub-layer.
    pub ffn_norm: LayerNorm,
    /// Feed-forward.
    pub ffn: FeedForward<L>,
    /// Pre- or post-norm.
    #[module(skip)]
    pub norm_position: NormPosition,
}

impl TransformerBlockConfig {
    /// Builds the block. The caller validates the sizes.
    pub fn init(&self, device: &Device) -> TransformerBlock {
        let norm = || {
            LayerNormConfig::new(self.d_model)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        TransformerBlock {
            attn_norm: norm(),
            attn: MultiHeadAttentionConfig::new(self.d_model, self.n_head)
                .with_attn_dropout(self.attn_dropout)
                .with_resid_dropout(self.dropout)
                .with_bias(self.bias)
                .with_init_std(self.init_std)
                .with_out_init_std(self.out_init_std)
                .init(device),
            ffn_norm: norm(),
            ffn: FeedForwardConfig::new(self.d_model, self.d_ff)
                .with_kind(self.ff_kind)
                .with_activation(self.activation)
                .with_dropout(self.dropout)
                .with_bias(self.bias)
                .with_init_std(self.init_std)
                .with_out_init_std(self.out_init_std)
                .init(device),
            norm_position: self.norm_position,
        }
    }
}

impl<L: LinearLayer> TransformerBlock<L> {
    /// The block's layer table: attention's then the feed-forward's linear layers, named by
    /// their parameter paths below the block (`attn.query`, ..., `ffn.down`), with how tensor
    /// parallelism cuts them.
    pub fn linears(&self) -> Vec<(String, Cut, &L)> {
        let attn = self
            .attn
            .linears()
            .into_iter()
            .map(|(n, c, l)| (format!("attn.{n}"), c, l));
        let ffn = self
            .ffn
            .linears()
            .into_iter()
            .map(|(n, c, l)| (format!("ffn.{n}"), c, l));
        attn.chain(ffn).collect()
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut L)> {
        let attn = self
            .attn
            .linears_mut()
            .into_iter()
            .map(|(n, l)| (format!("attn.{n}"), l));
        let ffn = self
            .ffn
            .linears_mut()
            .into_iter()
            .map(|(n, l)| (format!("ffn.{n}"), l));
        attn.chain(ffn).collect()
    }

    /// The same block with each linear layer replaced by `f(path, cut, layer)`, in the order
    /// of [`linears`](Self::linears); norms and settings are shared.
    pub fn map_linears<'a, N: LinearLayer, E>(
        &'a self,
        f: &mut impl FnMut(&str, Cut, &'a L) -> std::result::Result<N, E>,
    ) -> std::result::Result<TransformerBlock<N>, E> {
        Ok(TransformerBlock {
            attn_norm: self.attn_norm.clone(),
            attn: self
                .attn
                .map_linears(&mut |name, cut, layer| f(&format!("attn.{name}"), cut, layer))?,
            ffn_norm: self.ffn_norm.clone(),
            ffn: self
                .ffn
                .map_linears(&mut |name, cut, layer| f(&format!("ffn.{name}"), cut, layer))?,
            norm_position: self.norm_position,
        })
    }

    /// `[batch, seq, d_model] -> [batch, seq, d_model]`; see [`MultiHeadAttention::forward`] for
    /// the mask, rotary and cache arguments.
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: AttentionMask<'_>,
        rope: Option<&RotaryEmbedding>,
        cache: Option<&mut LayerKvCache>,
    ) -> Tensor<3> {
        match self.norm_position {
            NormPosition::Pre => {
                let x = x.clone()
                    + self
                        .attn
                        .forward(layer_norm(&self.attn_norm, x), mask, rope, cache);
                x.clone() + self.ffn.forward(layer_norm(&self.ffn_norm, x))
            }
            NormPosition::Post => {
                let x = layer_norm(
                    &self.attn_norm,
                    x.clone() + self.attn.forward(x, mask, rope, cache),
                );
                layer_norm(&self.ffn_norm, x.clone() + self.ffn.forward(x))
            }
        }
    }
}
