//! kiln-model: the Transformer models of kiln, on Burn.
//!
//! - Building blocks: [`attention`] (multi-head self-attention on Burn's fused attention op,
//!   with a KV cache), [`feed_forward`] (GELU MLP or SwiGLU), [`block`] (pre- or post-norm
//!   Transformer block), [`rotary`] positions, [`activation`]s and [`init`].
//! - Models: [`gpt`] (decoder-only language model with KV-cache generation, [`sampling`]) and
//!   [`bert`] (encoder, masked-LM and sequence-classification heads).
//! - Weights: [`hf`] loads and writes HuggingFace checkpoints, [`store`] saves and loads
//!   kiln's own.
//! - Training: GPT and both BERT heads are kiln-core `TrainModel`s on kiln's batch types, and
//!   `BlockStack`s for per-block activation recomputation (`train.rs`).
//! - Errors: every fallible call returns a [`ModelError`].
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use kiln_model::gpt::GptConfig;
//!
//! let device = Device::flex();
//! let config = GptConfig::new(100).with_block_size(16).with_n_layer(2).with_n_head(2).with_d_model(32);
//! let gpt = config.init(&device).unwrap();
//! let ids = Tensor::<2, Int>::from_ints([[1, 2, 3], [4, 5, 6]], &device);
//! let logits = gpt.forward(ids).unwrap();
//! assert_eq!(logits.dims(), [2, 3, 100]);
//! ```

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod bert;
pub mod block;
mod error;
pub mod feed_forward;
pub mod gpt;
pub mod hf;
pub mod init;
pub mod loss;
pub mod rotary;
pub mod sampling;
pub mod store;
mod train;

pub use error::{ModelError, Result};
pub use hf::padding_mask;
