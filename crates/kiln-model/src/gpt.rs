//! A decoder-only Transformer language model: one model for GPT-2 (Radford et al. 2019) and
//! the Llama family (Touvron et al. 2023; Llama 3, Qwen2, Mistral): what differs is the config
//! (LayerNorm or RMSNorm, learned or rotary positions with their scaling, a GELU MLP or SwiGLU,
//! multi-head or grouped-query attention, an explicit head width, biases per projection, a
//! sliding window, a tied or untied output layer), not the code.
//!
//! Reads top to bottom: the config, the model, the forward pass, the loss, KV-cache decoding,
//! generation, and the linear layers by path.

use burn::config::Config;
use burn::module::Initializer;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear};
use burn::tensor::{Bool, Device, Int, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::activation::Activation;
use crate::attention::{AttentionMask, LayerKvCache};
use crate::block::{NormPosition, TransformerBlock, TransformerBlockConfig};
use crate::error::{ModelError, Result};
use crate::feed_forward::FeedForwardKind;
use crate::fused::linear::linear;
use crate::inference::{for_inference, host_floats};
use crate::init::{materialize, normal_linear};
use crate::limits::{CONTEXT, LAYERS, PARAMS, VOCAB, WIDTH, count};
use crate::linear::{LinearLayer, PrunableLinear};
use crate::loss::{check_token_ids, cross_entropy, token_tensor};
use crate::norm::{Norm, NormKind};
use crate::rotary::{RopeScaling, RotaryEmbedding};
use crate::sampling::{GenerateConfig, sample_token};
use kiln_dist::VocabParallel;

/// How a model knows where each token is.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum PositionEncoding {
    /// A learned embedding per absolute position, added to the token embedding (GPT-2, BERT).
    Learned,
    /// Rotary embeddings applied to queries and keys in every layer (RoFormer, LLaMA).
    Rotary,
}

/// Configuration of a [`Gpt`]; the defaults are GPT-2 small's.
///
/// The fields added for the Llama family are `Option`s whose `None` is GPT-2's choice, so a
/// kiln model folder or checkpoint written before them reads back as the model it was.
#[derive(Config, Debug)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length: the most positions one sequence may have (`n_positions`).
    #[config(default = 1024)]
    pub block_size: usize,
    /// Number of Transformer blocks.
    #[config(default = 12)]
    pub n_layer: usize,
    /// Attention (query) heads per block.
    #[config(default = 12)]
    pub n_head: usize,
    /// Key/value heads per block, dividing `n_head`: grouped-query attention (1: multi-query);
    /// `None`: `n_head` (multi-head, GPT-2).
    #[config(default = "None")]
    pub n_kv_head: Option<usize>,
    /// The width of one head; `None`: `d_model / n_head`.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// Model width.
    #[config(default = 768)]
    pub d_model: usize,
    /// Feed-forward width; `None` means `4·d_model`.
    pub d_ff: Option<usize>,
    /// Dropout on embeddings and residual branches (GPT-2 used 0.1; 0 is usual for pre-training
    /// on enough data).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Dropout on attention probabilities.
    #[config(default = 0.0)]
    pub attn_dropout: f64,
    /// Learned absolute positions or rotary.
    #[config(default = "PositionEncoding::Learned")]
    pub positions: PositionEncoding,
    /// Base of the rotary frequencies.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Rescaled rotary frequencies (`linear`, Llama 3.1's `llama3`); `None`: none.
    #[config(default = "None")]
    pub rope_scaling: Option<RopeScaling>,
    /// Plain MLP or SwiGLU.
    #[config(default = "FeedForwardKind::Mlp")]
    pub ff_kind: FeedForwardKind,
    /// Non-linearity of the MLP (GPT-2's `gelu_new` is the tanh GELU).
    #[config(default = "Activation::GeluTanh")]
    pub activation: Activation,
    /// Pre-norm (GPT-2) or post-norm blocks.
    #[config(default = "NormPosition::Pre")]
    pub norm_position: NormPosition,
    /// Whether linear layers have biases (the default of the three below).
    #[config(default = true)]
    pub bias: bool,
    /// Whether the query, key and value projections have biases (Qwen2: yes, with none
    /// elsewhere); `None`: `bias`.
    #[config(default = "None")]
    pub qkv_bias: Option<bool>,
    /// Whether attention's output projection has a bias; `None`: `bias`.
    #[config(default = "None")]
    pub attn_out_bias: Option<bool>,
    /// Whether the feed-forward layers have biases; `None`: `bias` for the MLP, none for
    /// SwiGLU.
    #[config(default = "None")]
    pub mlp_bias: Option<bool>,
    /// Share the token embedding with the output projection (Press & Wolf 2017; GPT-2 does).
    #[config(default = true)]
    pub tie_embeddings: bool,
    /// LayerNorm or RMSNorm; `None`: LayerNorm (GPT-2).
    #[config(default = "None")]
    pub norm: Option<NormKind>,
    /// The norms' epsilon (LayerNorm's or RMSNorm's).
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// A query attends to at most this many keys, the last ones up to its own position
    /// (Mistral's sliding window); `None`: to every earlier key.
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
    /// Standard deviation of the normal init; residual projections get `init_std/√(2·n_layer)`.
    #[config(default = 0.02)]
    pub init_std: f64,
}

/// A GPT language model: token (+ position) embeddings, pre-norm blocks, a final norm and an
/// output projection to the vocabulary.
///
/// Generic over the [`LinearLayer`] of its blocks: `Gpt` is `Gpt<Linear>`, the f32 model that
/// trains; kiln-compress runs the same forward pass and generation on int8 layers.
#[derive(Module, Debug)]
pub struct Gpt<L: LinearLayer = Linear> {
    /// Token embedding `[vocab, d_model]` (also the output projection when tied).
    pub token_embedding: Embedding,
    /// Learned position embedding `[block_size, d_model]`, for [`PositionEncoding::Learned`].
    pub position_embedding: Option<Embedding>,
    /// Rotary tables, for [`PositionEncoding::Rotary`].
    pub rope: Option<RotaryEmbedding>,
    /// Dropout on the summed embeddings.
    pub embedding_dropout: Dropout,
    /// The Transformer blocks.
    pub blocks: Vec<TransformerBlock<L>>,
    /// The norm before the output projection.
    pub final_norm: Norm,
    /// Output projection `[d_model, vocab]`; `None` when tied to the token embedding.
    pub lm_head: Option<L>,
    /// Under tensor parallelism, the vocabulary split across the group (Megatron's
    /// vocabulary-parallel embedding and cross-entropy): the token embedding and the output
    /// layer hold this rank's rows, [`head`](Self::head) gives this rank's slice of the logits.
    #[module(skip)]
    pub vocab_parallel: Option<VocabParallel>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length.
    pub block_size: usize,
}

/// The key/value cache of every layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct GptKvCache {
    /// One cache per block.
    pub layers: Vec<LayerKvCache>,
}

impl GptKvCache {
    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GptConfig {
    /// The feed-forward width in use.
    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(self.d_model.saturating_mul(4))
    }

    /// The width of one head in use.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_head.max(1))
    }

    /// The number of key/value heads in use.
    pub fn n_kv_head(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// The norm in use.
    pub fn norm(&self) -> NormKind {
        self.norm.unwrap_or(NormKind::LayerNorm)
    }

    /// Whether the feed-forward layers have biases.
    fn mlp_bias(&self) -> bool {
        self.mlp_bias
            .unwrap_or(self.bias && self.ff_kind == FeedForwardKind::Mlp)
    }

    /// Checks sizes and probabilities. Every size is bounded by its ceiling in
    /// [`limits`](crate::limits), and the parameter count (with rotary tables) by
    /// [`PARAMS`], before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        VOCAB.check("vocab_size", self.vocab_size as u64)?;
        CONTEXT.check("block_size", self.block_size as u64)?;
        LAYERS.check("n_layer", self.n_layer as u64)?;
        WIDTH.check("d_model", self.d_model as u64)?;
        WIDTH.check("d_ff", self.d_ff() as u64)?;
        WIDTH.check("n_head", self.n_head as u64)?;
        WIDTH.check("head_dim", self.head_dim() as u64)?;
        WIDTH.check("n_kv_head", self.n_kv_head() as u64)?;
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_kv_head", self.n_kv_head()),
            ("d_model", self.d_model),
            ("d_ff", self.d_ff()),
        ];
        for (name, value) in sizes {
            if value == 0 {
                return Err(ModelError::config(format!("{name} must be > 0")));
            }
        }
        if self.head_dim.is_none() && !self.d_model.is_multiple_of(self.n_head) {
            return Err(ModelError::config(format!(
                "d_model {} is not divisible by n_head {} (set head_dim for heads of another width)",
                self.d_model, self.n_head
            )));
        }
        if self.head_dim() == 0 {
            return Err(ModelError::config("head_dim must be > 0"));
        }
        if !self.n_head.is_multiple_of(self.n_kv_head()) {
            return Err(ModelError::config(format!(
                "n_kv_head {} does not divide n_head {}: each key/value head serves a whole group of query heads",
                self.n_kv_head(),
                self.n_head
            )));
        }
        if self.positions == PositionEncoding::Rotary && !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::config(
                "rotary positions need an even head width",
            ));
        }
        if self.positions == PositionEncoding::Rotary
            && !(self.rope_theta.is_finite() && self.rope_theta > 1.0)
        {
            return Err(ModelError::config(format!(
                "rope_theta must be finite and > 1, got {}",
                self.rope_theta
            )));
        }
        if let Some(scaling) = &self.rope_scaling {
            if self.positions != PositionEncoding::Rotary {
                return Err(ModelError::config(
                    "rope_scaling needs rotary positions (positions: Rotary)",
                ));
            }
            scaling.validate()?;
        }
        if self.sliding_window == Some(0) {
            return Err(ModelError::config("sliding_window must be > 0"));
        }
        check_probability("dropout", self.dropout)?;
        check_probability("attn_dropout", self.attn_dropout)?;
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(ModelError::config("init_std must be finite and >= 0"));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ModelError::config("layer_norm_eps must be > 0"));
        }
        PARAMS.check("the GPT's parameter count", self.param_bound())?;
        Ok(())
    }

    /// An upper bound on the model's parameters (and rotary table entries), in u128.
    fn param_bound(&self) -> u128 {
        let (v, p, d, ff) = (self.vocab_size, self.block_size, self.d_model, self.d_ff());
        let (q, kv) = (
            self.n_head as u128 * self.head_dim() as u128,
            self.n_kv_head() as u128 * self.head_dim() as u128,
        );
        let q = usize::try_from(q).unwrap_or(usize::MAX);
        let kv = usize::try_from(kv).unwrap_or(usize::MAX);
        let gates = if self.ff_kind == FeedForwardKind::SwiGlu {
            3
        } else {
            2
        };
        let head = if self.tie_embeddings { 0 } else { v };
        let block = count(&[
            &[2, d, q],
            &[2, d, kv],
            &[gates, d, ff],
            &[2, q],
            &[2, kv],
            &[6, d],
            &[2, ff],
        ]);
        count(&[
            &[v, d],
            &[p, d],
            &[head, d],
            &[4, d],
            &[2, p, self.head_dim()],
        ])
        .saturating_add(block.saturating_mul(self.n_layer as u128))
    }

    /// Builds the model with GPT-2's initialization: N(0, 0.02) weights and embeddings, zero
    /// biases, and the residual output projections scaled by 1/√(2·n_layer).
    pub fn init(&self, device: &Device) -> Result<Gpt> {
        Ok(materialize(self.init_lazy(device)?))
    }

    /// Builds the model without drawing its weights: each parameter is drawn on first use
    /// (Burn's lazy initialization). For loaders that replace every parameter from a file:
    /// nothing of the model's size is allocated before the file's tensors have been checked
    /// against it. [`init`](Self::init) draws them at once, in a fixed order.
    pub fn init_lazy(&self, device: &Device) -> Result<Gpt> {
        self.validate()?;
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, self.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device)
        };
        let block = TransformerBlockConfig::new(self.d_model, self.n_head, self.d_ff())
            .with_n_kv_head(self.n_kv_head)
            .with_head_dim(self.head_dim)
            .with_norm(self.norm())
            .with_norm_position(self.norm_position)
            .with_ff_kind(self.ff_kind)
            .with_activation(self.activation)
            .with_dropout(self.dropout)
            .with_attn_dropout(self.attn_dropout)
            .with_qkv_bias(self.qkv_bias.unwrap_or(self.bias))
            .with_attn_out_bias(self.attn_out_bias.unwrap_or(self.bias))
            .with_mlp_bias(self.mlp_bias())
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_sliding_window(self.sliding_window)
            .with_init_std(self.init_std)
            .with_out_init_std(self.init_std / (2.0 * self.n_layer as f64).sqrt());
        let learned = self.positions == PositionEncoding::Learned;
        Ok(Gpt {
            token_embedding: embedding(self.vocab_size),
            position_embedding: learned.then(|| embedding(self.block_size)),
            rope: (!learned).then(|| {
                RotaryEmbedding::new(
                    self.head_dim(),
                    self.block_size,
                    self.rope_theta,
                    self.rope_scaling.as_ref(),
                    device,
                )
            }),
            embedding_dropout: DropoutConfig::new(self.dropout).init(),
            blocks: (0..self.n_layer).map(|_| block.init(device)).collect(),
            final_norm: Norm::new(self.norm(), self.d_model, self.layer_norm_eps, device),
            lm_head: (!self.tie_embeddings).then(|| {
                normal_linear(self.d_model, self.vocab_size, false, self.init_std, device)
            }),
            vocab_parallel: None,
            vocab_size: self.vocab_size,
            block_size: self.block_size,
        })
    }
}

pub(crate) fn check_probability(name: &str, p: f64) -> Result<()> {
    if p.is_finite() && (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(ModelError::config(format!(
            "{name} must be in [0, 1), got {p}"
        )))
    }
}

impl<L: LinearLayer> Gpt<L> {
    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`
    /// (see [`token_tensor`] to build them from `u32` ids).
    ///
    /// Errors when the batch is empty, longer than the context, or holds an id outside the
    /// vocabulary.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.forward_masked(ids, None)
    }

    /// Like [`forward`](Self::forward), with a padding mask `[batch, seq]` that is `true` at
    /// padding positions (see [`padding_mask`](crate::padding_mask)); no query attends to them.
    pub fn forward_masked(
        &self,
        ids: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Result<Tensor<3>> {
        check_token_ids(&ids, self.vocab_size, self.block_size)?;
        if let Some(mask) = &padding
            && mask.dims() != ids.dims()
        {
            return Err(ModelError::BadInput(format!(
                "padding mask has shape {:?}, ids have {:?}",
                mask.dims(),
                ids.dims()
            )));
        }
        Ok(self.logits(ids, padding.as_ref(), None))
    }

    /// The forward pass itself, without input checks. Decoding passes a cache.
    fn logits(
        &self,
        ids: Tensor<2, Int>,
        padding: Option<&Tensor<2, Bool>>,
        mut cache: Option<&mut GptKvCache>,
    ) -> Tensor<3> {
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed(ids, offset);
        let mask = AttentionMask {
            causal: true,
            padding,
        };
        if let Some(cache) = cache.as_deref_mut() {
            cache
                .layers
                .resize_with(self.blocks.len(), Default::default);
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, mask, self.rope.as_ref(), layer_cache);
        }
        self.head(x)
    }

    /// The first stage of the forward pass, without input checks: token embeddings, plus
    /// learned positions starting at `offset`, then dropout. The result feeds `blocks[0]`.
    ///
    /// [`embed`](Self::embed), the blocks (with a causal [`AttentionMask`] and
    /// `self.rope`) and [`head`](Self::head) compose to [`forward`](Self::forward); training
    /// loops that recompute activations block by block call them separately.
    pub fn embed(&self, ids: Tensor<2, Int>, offset: usize) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let mut x = match &self.vocab_parallel {
            Some(vp) => vp.embed(self.token_embedding.weight.val(), ids),
            None => self.token_embedding.forward(ids),
        };
        let d_model = x.dims()[2];
        if let Some(positions) = &self.position_embedding {
            let pos = Tensor::<1, Int>::arange(offset as i64..(offset + seq) as i64, &x.device())
                .reshape([1, seq]);
            x = x + positions.forward(pos).expand([batch, seq, d_model]);
        }
        self.embedding_dropout.forward(x)
    }

    /// The last stage of the forward pass: final norm and the LM head (the token embedding,
    /// transposed, when tied), from the last block's output to logits `[batch, seq, vocab]`
    /// (this rank's slice `[batch, seq, ⌈vocab/t⌉]` under the vocabulary split).
    pub fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.final_norm.forward(x);
        // Megatron's `f` before the rank's rows of the output layer: the input's gradient is
        // summed over the ranks' slices.
        let x = match &self.vocab_parallel {
            Some(vp) => vp.tensor_parallel().copy_to_region(x),
            None => x,
        };
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => linear(x, self.token_embedding.weight.val().transpose(), None),
        }
    }

    /// Mean next-token cross-entropy of `logits` against `targets`, skipping positions whose
    /// target is `ignore_index` (HF uses -100).
    pub fn loss(
        &self,
        logits: Tensor<3>,
        targets: Tensor<2, Int>,
        ignore_index: Option<i64>,
    ) -> Tensor<1> {
        cross_entropy(logits, targets, ignore_index)
    }

    /// An empty KV cache for [`forward_cached`](Self::forward_cached).
    pub fn new_cache(&self) -> GptKvCache {
        GptKvCache {
            layers: vec![LayerKvCache::default(); self.blocks.len()],
        }
    }

    /// Logits for the new positions `ids` `[batch, new]`, attending to everything in `cache`,
    /// which is extended with them. Feeding a sequence in pieces gives the logits of one full
    /// [`forward`](Self::forward).
    ///
    /// The cache holds at most `block_size` positions: going past it is an error
    /// ([`generate`](Self::generate) slides its window instead).
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut GptKvCache) -> Result<Tensor<3>> {
        let [_, seq] = ids.dims();
        let total = cache.len() + seq;
        if total > self.block_size {
            return Err(ModelError::SequenceTooLong {
                len: total,
                max: self.block_size,
            });
        }
        check_token_ids(&ids, self.vocab_size, self.block_size)?;
        Ok(self.logits(ids, None, Some(cache)))
    }

    /// Continues each prompt by up to `config.max_new_tokens` tokens and returns the prompts
    /// followed by the generated tokens.
    ///
    /// Prompts are token ids (`u32`, as kiln-data's tokenizers produce them), all of the same
    /// length. The prompts are encoded once into a KV cache; each later step runs only the new
    /// token.
    ///
    /// **Past the context.** Generation does not stop at `block_size`: as nanoGPT's
    /// `idx[:, -block_size:]`, the model sees the last `block_size` tokens. Once the cache is
    /// full, each step re-encodes that window from position 0 into a fresh cache, so the tokens
    /// are exactly those of running [`forward`](Self::forward) on the cropped context from
    /// scratch. (The cached keys cannot be shifted instead: their positions are baked in, and
    /// every layer above the first has mixed the dropped token into them.) Each step past the
    /// context therefore costs a forward pass over the whole window. A prompt longer than the
    /// context is cropped the same way; the returned sequences keep it whole.
    ///
    /// **Reproducible.** Sampling draws from [`ChaCha8Rng`] seeded with `config.seed`; its
    /// stream is fixed across versions of `rand_chacha` (rand's `StdRng` is not), so the same
    /// model, prompts and config give the same tokens. A sequence that emits
    /// `config.eos_token` stops and is padded with it until every sequence has stopped.
    ///
    /// Runs without dropout or autodiff graph whatever the device. Errors on empty prompts,
    /// prompts of different lengths, ids outside the vocabulary and bad sampling parameters.
    ///
    /// **On rayon's pool** (flex). A decoding step is a few hundred small products, each split
    /// over rayon's threads. Asked from a thread outside the pool, each would wake the pool's
    /// sleeping threads and sleep until they finish, a wake-up of tens of microseconds on a VM
    /// per product; run on one of the pool's threads (as here), the caller works a share of
    /// each product while the others wake. GPT-2 small's bf16 decoding products went from 19 to
    /// 13.5 ms a token on a 2-core Xeon VM (`bench_fused_linear`). The tokens do not change:
    /// no result depends on the thread that computes it. Other backends run on the calling
    /// thread (their work is queued to the device, and their streams may be per thread).
    pub fn generate(&self, prompts: &[Vec<u32>], config: &GenerateConfig) -> Result<Vec<Vec<u32>>>
    where
        L: Sync,
    {
        if crate::fused::on_flex(&self.token_embedding.weight.device()) {
            rayon::scope(|_| self.generate_here(prompts, config))
        } else {
            self.generate_here(prompts, config)
        }
    }

    /// [`generate`](Self::generate) on the calling thread.
    fn generate_here(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerateConfig,
    ) -> Result<Vec<Vec<u32>>> {
        config.validate()?;
        if let Some(&id) = prompts
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(ModelError::TokenOutOfVocab {
                id: id.into(),
                vocab_size: self.vocab_size,
            });
        }
        let model = for_inference(self);
        let device = model.token_embedding.weight.device();
        // The last `block_size` tokens of every sequence.
        let window = |rows: &[Vec<u32>]| {
            let cropped: Vec<Vec<u32>> = rows
                .iter()
                .map(|row| row[row.len().saturating_sub(self.block_size)..].to_vec())
                .collect();
            token_tensor(&cropped, &device)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut sequences = prompts.to_vec();
        let mut finished = vec![false; prompts.len()];
        let mut cache = model.new_cache();
        let mut logits = model.logits(window(&sequences)?, None, Some(&mut cache));
        for step in 0..config.max_new_tokens {
            let [batch, seq, vocab] = logits.dims();
            let last = logits.narrow(1, seq - 1, 1).reshape([batch, vocab]);
            let rows = host_floats(last)?;
            let mut next = Vec::with_capacity(batch);
            for (b, row) in rows.chunks(vocab).enumerate() {
                let token = if finished[b] {
                    config.eos_token.unwrap_or(0)
                } else {
                    sample_token(row, config, &mut rng)
                };
                finished[b] |= config.eos_token == Some(token);
                sequences[b].push(token);
                next.push(vec![token]);
            }
            if finished.iter().all(|&f| f) || step + 1 == config.max_new_tokens {
                break;
            }
            let ids = if cache.len() < self.block_size {
                token_tensor(&next, &device)?
            } else {
                cache = model.new_cache();
                window(&sequences)?
            };
            logits = model.logits(ids, None, Some(&mut cache));
        }
        Ok(sequences)
    }

    /// Every linear layer of the blocks and the untied LM head, with its parameter path, in
    /// order: each block's [layer table](TransformerBlock::linears) under `blocks.{i}.`
    /// (`attn.query`, `.attn.key`, `.attn.value`, `.attn.out`, `.ffn.up`, `.ffn.gate` with
    /// SwiGLU, `.ffn.down`); then `lm_head`.
    pub fn linears(&self) -> Vec<(String, &L)> {
        let blocks = self.blocks.iter().enumerate().flat_map(|(i, b)| {
            b.linears()
                .into_iter()
                .map(move |(name, _, layer)| (format!("blocks.{i}.{name}"), layer))
        });
        let head = self.lm_head.as_ref().map(|h| ("lm_head".to_string(), h));
        blocks.chain(head).collect()
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut L)> {
        let blocks = self.blocks.iter_mut().enumerate().flat_map(|(i, b)| {
            b.linears_mut()
                .into_iter()
                .map(move |(name, layer)| (format!("blocks.{i}.{name}"), layer))
        });
        let head = self.lm_head.as_mut().map(|h| ("lm_head".to_string(), h));
        blocks.chain(head).collect()
    }

    /// The same model with every linear layer replaced by `f(path, layer)`, called in the order
    /// of [`linears`](Self::linears); embeddings, norms and dropouts are shared (Burn tensors
    /// are reference-counted). kiln-compress builds its int8 GPT this way.
    pub fn map_linears<'a, M: LinearLayer, E>(
        &'a self,
        mut f: impl FnMut(&str, &'a L) -> Result<M, E>,
    ) -> Result<Gpt<M>, E> {
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                b.map_linears(&mut |name, _, layer| f(&format!("blocks.{i}.{name}"), layer))
            })
            .collect::<Result<Vec<_>, E>>()?;
        Ok(Gpt {
            token_embedding: self.token_embedding.clone(),
            position_embedding: self.position_embedding.clone(),
            rope: self.rope.clone(),
            embedding_dropout: self.embedding_dropout.clone(),
            blocks,
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.as_ref().map(|h| f("lm_head", h)).transpose()?,
            vocab_parallel: self.vocab_parallel.clone(),
            vocab_size: self.vocab_size,
            block_size: self.block_size,
        })
    }
}

impl<L: PrunableLinear> Gpt<L> {
    /// The model with only the heads `kept[i]` in block `i` (sorted indices): see
    /// [`MultiHeadAttention::keep_heads`](crate::attention::MultiHeadAttention::keep_heads).
    /// Parameter ids are kept; the model computes what it computed with the other heads
    /// silenced, with fewer parameters and FLOPs.
    pub fn keep_heads(self, kept: &[Vec<usize>]) -> crate::Result<Self> {
        self.prune_blocks(kept, "head", |block, kept| {
            block.attn = block.attn.keep_heads(kept)?;
            Ok(())
        })
    }

    /// The model with only the feed-forward features `kept[i]` in block `i` (sorted indices):
    /// see [`FeedForward::keep_hidden`](crate::feed_forward::FeedForward::keep_hidden).
    pub fn keep_hidden(self, kept: &[Vec<usize>]) -> crate::Result<Self> {
        self.prune_blocks(kept, "feed-forward feature", |block, kept| {
            block.ffn = block.ffn.keep_hidden(kept)?;
            Ok(())
        })
    }

    /// `prune(block i, kept[i])` for every block, one list per block; an error names the block.
    fn prune_blocks(
        mut self,
        kept: &[Vec<usize>],
        what: &str,
        mut prune: impl FnMut(&mut TransformerBlock<L>, &[usize]) -> crate::Result<()>,
    ) -> crate::Result<Self> {
        if kept.len() != self.blocks.len() {
            return Err(ModelError::BadInput(format!(
                "{} {what} lists for {} blocks",
                kept.len(),
                self.blocks.len()
            )));
        }
        for (b, (block, kept)) in self.blocks.iter_mut().zip(kept).enumerate() {
            prune(block, kept).map_err(|e| ModelError::BadInput(format!("block {b}: {e}")))?;
        }
        Ok(self)
    }
}
