//! Multi-head self-attention, with grouped-query and multi-query attention (Ainslie et al.
//! 2023; Shazeer 2019: fewer key/value heads than query heads, each shared by a group of query
//! heads) and a sliding window (Mistral's): kiln's fused attention
//! ([`crate::fused::attention`]) while training, Burn's fused op at inference (kiln's where
//! Burn's lacks groups or windows), with a KV cache of the key/value heads only.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, FloatDType, Tensor, TensorCreationOptions, s};

use kiln_dist::TensorParallel;

use crate::error::{ModelError, Result};
use crate::fused;
use crate::fused::attention::{KeyRange, key_mask, repeat_kv};
use crate::fused::softmax::masked_softmax;
use crate::init::normal_linear;
use crate::linear::{Cut, LinearLayer, PrunableLinear};
use crate::rotary::RotaryEmbedding;

/// Configuration of a [`MultiHeadAttention`] layer.
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Model width.
    pub d_model: usize,
    /// Number of (query) heads.
    pub n_head: usize,
    /// Number of key/value heads, dividing `n_head` (grouped-query attention; 1: multi-query);
    /// `None`: `n_head`.
    #[config(default = "None")]
    pub n_kv_head: Option<usize>,
    /// The width of one head; `None`: `d_model / n_head`.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// Dropout on the attention probabilities.
    #[config(default = 0.0)]
    pub attn_dropout: f64,
    /// Dropout on the output projection (the residual branch).
    #[config(default = 0.0)]
    pub resid_dropout: f64,
    /// Whether the query, key and value projections have biases.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    #[config(default = true)]
    pub out_bias: bool,
    /// A query sees at most this many keys, the last ones up to its own position (Mistral's
    /// sliding window); `None`: every earlier key.
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
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
    /// Number of query heads (this rank's share under tensor parallelism); the head width is
    /// the query projection's width over it, the key/value heads the key projection's width
    /// over the head width.
    pub n_head: usize,
    /// A query sees at most this many keys (Mistral's sliding window).
    #[module(skip)]
    pub sliding_window: Option<usize>,
    /// The group the heads are split across, under tensor parallelism (Megatron's parallel
    /// attention: q, k and v column-parallel, the output row-parallel); see
    /// [`parallel`](crate::parallel).
    #[module(skip)]
    pub tensor_parallel: Option<TensorParallel>,
}

/// The keys and values of the positions seen so far, for one attention layer.
///
/// They live in buffers with room to spare (`[batch, kv_heads, capacity, head_dim]`), doubled
/// when full, so a decoding step writes its new positions in place and attention reads a view
/// of the first [`len`](Self::len): appending with `Tensor::cat` instead copied the whole cache
/// into a fresh allocation at every step, as many bytes as the weights at batch 8 and 800
/// positions for GPT-2 small.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    /// The key and value buffers, or `None` before the first step.
    buffers: Option<(Tensor<4>, Tensor<4>)>,
    len: usize,
}

impl LayerKvCache {
    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold before they next grow.
    pub fn capacity(&self) -> usize {
        self.buffers.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// The cached keys and values, `[batch, kv_heads, len, head_dim]` each (views of the
    /// buffers), or `None` before the first step.
    pub fn keys_values(&self) -> Option<(Tensor<4>, Tensor<4>)> {
        let (k, v) = self.buffers.as_ref()?;
        Some((
            k.clone().narrow(2, 0, self.len),
            v.clone().narrow(2, 0, self.len),
        ))
    }

    /// Appends `keys` and `values` (`[batch, kv_heads, new, head_dim]`) and returns everything
    /// cached, as [`keys_values`](Self::keys_values). The write is in place while no view of an
    /// earlier step is alive (each view shares the buffers); a full buffer is copied into one
    /// of twice the size.
    pub fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [batch, heads, new, _] = keys.dims();
        let total = self.len + new;
        if total > self.capacity() {
            let capacity = total.max(2 * self.capacity()).max(MIN_CAPACITY);
            let grown = |old: Option<Tensor<4>>, like: &Tensor<4>| {
                let options = TensorCreationOptions::new(like.device()).with_dtype(like.dtype());
                let buffer = Tensor::zeros([batch, heads, capacity, like.dims()[3]], options);
                match old {
                    Some(old) => {
                        let kept = old.narrow(2, 0, self.len);
                        buffer.slice_assign(s![.., .., 0..self.len, ..], kept)
                    }
                    None => buffer,
                }
            };
            let (old_k, old_v) = self.buffers.take().unzip();
            self.buffers = Some((grown(old_k, &keys), grown(old_v, &values)));
        }
        let (k, v) = self.buffers.take().expect("buffers allocated above");
        let at = s![.., .., self.len..total, ..];
        self.buffers = Some((k.slice_assign(at, keys), v.slice_assign(at, values)));
        self.len = total;
        self.keys_values().expect("just written")
    }
}

/// Positions a cache's first buffers hold: a prompt's worth, before any doubling.
const MIN_CAPACITY: usize = 64;

/// What each query may attend to, handed down through the blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionMask<'a> {
    /// Whether a query is blocked from later positions (decoder) or not (encoder).
    pub causal: bool,
    /// `[batch, keys]`, `true` where the key is padding and must be ignored.
    pub padding: Option<&'a Tensor<2, Bool>>,
}

impl MultiHeadAttentionConfig {
    /// The head width in use.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_head.max(1))
    }

    /// The number of key/value heads in use.
    pub fn n_kv_head(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// Builds the layer. The caller has checked the sizes (the heads' widths, `n_kv_head`
    /// dividing `n_head`).
    pub fn init(&self, device: &Device) -> MultiHeadAttention {
        let (d, hd) = (self.d_model, self.head_dim());
        let (q_width, kv_width) = (self.n_head * hd, self.n_kv_head() * hd);
        MultiHeadAttention {
            query: normal_linear(d, q_width, self.qkv_bias, self.init_std, device),
            key: normal_linear(d, kv_width, self.qkv_bias, self.init_std, device),
            value: normal_linear(d, kv_width, self.qkv_bias, self.init_std, device),
            out: normal_linear(q_width, d, self.out_bias, self.out_init_std, device),
            attn_dropout: DropoutConfig::new(self.attn_dropout).init(),
            resid_dropout: DropoutConfig::new(self.resid_dropout).init(),
            n_head: self.n_head,
            sliding_window: self.sliding_window,
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
        // From the projections, not from a config: structured pruning may have removed heads,
        // and tensor parallelism leaves each rank its share.
        let head_dim = self.query.d_out() / heads;
        let kv_heads = self.key.d_out() / head_dim;

        // [b, t, d] -> [b, h, t, hd]
        let heads_of = |proj: &L, n: usize| {
            proj.forward(x.clone())
                .reshape([batch, seq, n, head_dim])
                .swap_dims(1, 2)
        };
        let (mut q, mut k, mut v) = (
            heads_of(&self.query, heads),
            heads_of(&self.key, kv_heads),
            heads_of(&self.value, kv_heads),
        );

        let offset = cache.as_ref().map_or(0, |c| c.len());
        if let Some(rope) = rope {
            q = rope.apply(q, offset);
            k = rope.apply(k, offset);
        }
        // On flex the kernels compute in f32: a half-precision model's cache is kept in f32 (its
        // values exactly, so nothing changes but the bytes), which attention then reads in
        // place instead of widening all of it at every step; the context goes back to the
        // model's dtype.
        let mut restore = None;
        if let Some(cache) = cache {
            let dtype = q.dtype();
            if dtype != DType::F32 && fused::on_flex(&q.device()) {
                restore = Some(dtype);
                [q, k, v] = [q, k, v].map(|t| t.cast(FloatDType::F32));
            }
            (k, v) = cache.append(k, v);
        }
        let keys = KeyRange {
            causal: mask.causal,
            window: self.sliding_window,
        };
        let scale = 1.0 / (head_dim as f64).sqrt();

        let context = if q.device().is_autodiff() {
            // Training. Burn 0.22.1 differentiates its fused op by decomposing it into ~10
            // element-wise ops (max, clamp, exp, sum, div...), each a node of the graph. kiln's
            // own (crate::fused::attention) has its backward: one kernel each way on flex, the
            // composite ops elsewhere; it reads each key/value head for its group of query
            // heads, and applies the window. Dropout on the probabilities needs them
            // materialized: then the explicit form, two matmuls around kiln's masked softmax.
            if self.attn_dropout.prob > 0.0 {
                self.explicit_attention(q, k, v, keys, mask.padding)
            } else {
                fused::attention::attention(q, k, v, scale, keys, mask.padding)
            }
        } else if kv_heads == heads
            && !keys.window_binds(k.dims()[2])
            && !fused::on_flex(&q.device())
        {
            let keys_len = k.dims()[2];
            let padding = mask.padding.map(|p| {
                p.clone()
                    .reshape([batch, 1, 1, keys_len])
                    .expand([batch, heads, seq, keys_len])
            });
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: mask.causal,
            };
            attention(q, k, v, padding, None, options)
        } else {
            // Burn's op wants as many key/value heads as query heads, and has no window: kiln's
            // kernel (its forward alone, on flex; the composite form elsewhere) reads the
            // cached key/value heads as they are. On flex it runs for every model: it reads the
            // cache's views in place (f32) or widens them once (half precision), where Burn's op
            // copied them first, one element at a time for a strided bf16 view.
            fused::attention::attention(q, k, v, scale, keys, mask.padding)
        };

        let context = match restore {
            Some(dtype) => context.cast(dtype),
            None => context,
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
            sliding_window: self.sliding_window,
            tensor_parallel: self.tensor_parallel.clone(),
        })
    }

    /// Attention with dropout on the probabilities: the key/value heads repeated for their
    /// groups, two matmuls around kiln's masked softmax.
    fn explicit_attention(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        keys: KeyRange,
        padding: Option<&Tensor<2, Bool>>,
    ) -> Tensor<4> {
        let [_, heads, _, head_dim] = q.dims();
        let (k, v) = (repeat_kv(k, heads), repeat_kv(v, heads));
        let mask = key_mask(keys, padding, q.dims(), k.dims()[2], &q.device());
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = masked_softmax(scores, 1.0 / (head_dim as f64).sqrt(), keys.causal, mask);
        self.attn_dropout.forward(probs).matmul(v)
    }
}

impl<L: PrunableLinear> MultiHeadAttention<L> {
    /// The layer with only the heads `kept` (sorted, unique indices below the head count):
    /// q, k and v lose those heads' output features, the output projection the same input
    /// features. It computes what the layer with the other heads' outputs zeroed computes.
    pub fn keep_heads(&self, kept: &[usize]) -> Result<Self> {
        let heads = self.n_head;
        let head_dim = self.query.d_out() / heads;
        if self.key.d_out() != self.query.d_out() {
            return Err(ModelError::BadInput(format!(
                "heads are removed from multi-head attention only: this layer's {heads} query heads share {} key/value heads",
                self.key.d_out() / head_dim
            )));
        }
        if kept.is_empty()
            || kept.iter().any(|&h| h >= heads)
            || kept.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(ModelError::BadInput(format!(
                "kept heads must be non-empty, sorted, unique and < {heads}, got {kept:?}"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Positions appended in pieces, past several doublings of the buffers, read back as the
    /// concatenation of the pieces; the buffers grow geometrically, not per step.
    #[test]
    fn the_cache_grows_in_place_and_holds_what_was_appended() {
        let device = Device::flex();
        let mut cache = LayerKvCache::default();
        let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
        let mut growths = 0;
        for step in 0..60 {
            let new = 1 + step % 5;
            let k = Tensor::<4>::random([2, 3, new, 4], Distribution::Default, &device);
            let v = Tensor::<4>::random([2, 3, new, 5], Distribution::Default, &device);
            let before = cache.capacity();
            let (keys, values) = cache.append(k.clone(), v.clone());
            growths += usize::from(cache.capacity() != before);
            all_k.push(k);
            all_v.push(v);
            assert_eq!(keys.dims()[2], cache.len());
            assert_eq!(values.dims(), [2, 3, cache.len(), 5]);
        }
        assert_eq!(cache.len(), 180);
        assert_eq!((cache.capacity(), growths), (256, 3), "64, 128, 256");
        let (keys, values) = cache.keys_values().expect("filled");
        // Bit for bit: the cache copies values, it computes nothing.
        keys.into_data()
            .assert_eq(&Tensor::cat(all_k, 2).into_data(), true);
        values
            .into_data()
            .assert_eq(&Tensor::cat(all_v, 2).into_data(), true);
    }
}
