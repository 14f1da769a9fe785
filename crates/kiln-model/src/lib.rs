//! kiln-model: the Transformer models of kiln, on Burn.
//!
//! - Building blocks: [`attention`] (multi-head self-attention: Burn's fused attention op at
//!   inference, kiln's while training, a KV cache), [`feed_forward`] (GELU MLP or SwiGLU), [`block`] (pre- or post-norm
//!   Transformer block), [`rotary`] positions, [`activation`]s and [`init`]. The blocks are
//!   generic over their [`linear`] layer: Burn's `Linear` by default, int8 in kiln-compress.
//! - [`fused`]: CPU kernels with their own backward that the layers call on flex, one pass
//!   forward and one backward, vectorized and multi-threaded: a linear layer as one gemm with the
//!   bias in its epilogue, GELU, LayerNorm, attention (FlashAttention's blocks, the probabilities
//!   recomputed backward), attention's masked softmax, the cross-entropy; other backends run the
//!   composite Burn ops.
//! - Models: [`gpt`] (decoder-only language model; [`Gpt::generate`](gpt::Gpt::generate)
//!   decodes with a KV cache and a sliding window past the context, [`sampling`] picks tokens
//!   from a seeded ChaCha8 generator) and [`bert`] (encoder, masked-LM and
//!   sequence-classification heads, with `predict` helpers).
//! - Fine-tuning: [`lora`] (LoRA adapters as a linear layer over any other, f32 or int8,
//!   configured and matched as HF peft does; [`hf::peft`] reads and writes peft's adapters).
//! - Weights: [`hf`] loads and writes HuggingFace checkpoints, [`store`] saves and loads kiln's
//!   own (`load_model::<GptConfig>(dir, &device)`, no closure: the config builds the model).
//! - Training: GPT and both BERT heads are kiln-base `TrainModel`s on kiln's batch types, and
//!   `BlockStack`s for per-block activation recomputation (`train.rs`).
//! - Parallelism: [`parallel`] cuts GPT and the BERTs into the parts of tensor (Megatron) and
//!   pipeline parallelism (kiln-dist's `ParallelModel`).
//! - Untrusted input: every size a config or file gives is bounded by a ceiling in [`limits`]
//!   (raised with `KILN_LIMIT_<NAME>`), loaders check every tensor against the config before
//!   the model's weights exist, and ids and targets are range-checked at the model's edge.
//! - Errors: every fallible call returns a [`ModelError`]; bad input never panics.
//!
//! Token ids are `u32` on the host, as kiln-data's tokenizers produce them
//! ([`token_tensor`](loss::token_tensor) turns rows of them into a tensor). On the device Burn
//! keeps `Int` tensors in the backend's integer type, **i32 on flex**: read ids back with
//! `into_data().convert::<i64>()` (or as `i32`), not `try_to_vec::<i64>()`, which fails there.
//!
//! ```
//! use burn::tensor::Device;
//! use kiln_model::gpt::GptConfig;
//! use kiln_model::loss::token_tensor;
//! use kiln_model::sampling::GenerateConfig;
//!
//! let device = Device::flex();
//! let config = GptConfig::new(100).with_block_size(16).with_n_layer(2).with_n_head(2).with_d_model(32);
//! let gpt = config.init(&device).unwrap();
//! let ids = token_tensor(&[vec![1, 2, 3], vec![4, 5, 6]], &device).unwrap();
//! let logits = gpt.forward(ids).unwrap();
//! assert_eq!(logits.dims(), [2, 3, 100]);
//! // 20 new tokens: past the 16-position context, the model sees the last 16.
//! let out = gpt.generate(&[vec![1, 2, 3]], &GenerateConfig::new().with_max_new_tokens(20)).unwrap();
//! assert_eq!(out[0].len(), 23);
//! ```

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod bert;
pub mod block;
mod error;
pub mod feed_forward;
pub mod fused;
pub mod gpt;
pub mod hf;
mod inference;
pub mod init;
pub mod limits;
pub mod linear;
pub mod lora;
pub mod loss;
pub mod norm;
pub mod parallel;
pub mod rotary;
pub mod sampling;
pub mod store;
mod train;

pub use error::{ModelError, Result};
pub use hf::padding_mask;
