//! One Transformer block: attention and feed-forward, each with a residual and a norm
//! (LayerNorm or RMSNorm).

use burn::config::Config;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::attention::{AttentionMask, LayerKvCache, MultiHeadAttention, MultiHeadAttentionConfig};
use crate::feed_forward::{FeedForward, FeedForwardConfig, FeedForwardKind};
use crate::linear::{Cut, LinearLayer};
use crate::norm::{Norm, NormKind};
use crate::rotary::RotaryEmbedding;

/// Where the norms sit relative to the residual connections.
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
    /// Key/value heads (grouped-query attention); `None`: `n_head`.
    #[config(default = "None")]
    pub n_kv_head: Option<usize>,
    /// The width of one head; `None`: `d_model / n_head`.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// Feed-forward hidden width.
    pub d_ff: usize,
    /// LayerNorm or RMSNorm.
    #[config(default = "NormKind::LayerNorm")]
    pub norm: NormKind,
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
    /// Whether the query, key and value projections have biases.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Whether attention's output projection has a bias.
    #[config(default = true)]
    pub attn_out_bias: bool,
    /// Whether the feed-forward layers have biases.
    #[config(default = true)]
    pub mlp_bias: bool,
    /// The norms' epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Attention's sliding window (Mistral's); `None`: every earlier key.
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
    /// Standard deviation of the weights' normal init.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation of the residual output projections (GPT-2: `init_std/√(2·n_layer)`).
    #[config(default = 0.02)]
    pub out_init_std: f64,
}

/// Attention then feed-forward, each wrapped in a residual connection and a norm.
/// Generic over its [`LinearLayer`] (Burn's [`Linear`] by default).
#[derive(Module, Debug)]
pub struct TransformerBlock<L: LinearLayer = Linear> {
    /// The norm of the attention sub-layer (before it in pre-norm, after the residual in
    /// post-norm).
    pub attn_norm: Norm,
    /// Self-attention.
    pub attn: MultiHeadAttention<L>,
    /// The norm of the feed-forward sub-layer.
    pub ffn_norm: Norm,
    /// Feed-forward.
    pub ffn: FeedForward<L>,
    /// Pre- or post-norm.
    #[module(skip)]
    pub norm_position: NormPosition,
}

impl TransformerBlockConfig {
    /// Builds the block. The caller validates the sizes.
    pub fn init(&self, device: &Device) -> TransformerBlock {
        let norm = || Norm::new(self.norm, self.d_model, self.layer_norm_eps, device);
        TransformerBlock {
            attn_norm: norm(),
            attn: MultiHeadAttentionConfig::new(self.d_model, self.n_head)
                .with_n_kv_head(self.n_kv_head)
                .with_head_dim(self.head_dim)
                .with_attn_dropout(self.attn_dropout)
                .with_resid_dropout(self.dropout)
                .with_qkv_bias(self.qkv_bias)
                .with_out_bias(self.attn_out_bias)
                .with_sliding_window(self.sliding_window)
                .with_init_std(self.init_std)
                .with_out_init_std(self.out_init_std)
                .init(device),
            ffn_norm: norm(),
            ffn: FeedForwardConfig::new(self.d_model, self.d_ff)
                .with_kind(self.ff_kind)
                .with_activation(self.activation)
                .with_dropout(self.dropout)
                .with_bias(self.mlp_bias)
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
                        .forward(self.attn_norm.forward(x), mask, rope, cache);
                x.clone() + self.ffn.forward(self.ffn_norm.forward(x))
            }
            NormPosition::Post => {
                let x = self
                    .attn_norm
                    .forward(x.clone() + self.attn.forward(x, mask, rope, cache));
                self.ffn_norm.forward(x.clone() + self.ffn.forward(x))
            }
        }
    }
}
