//! kiln-compress: pruning and int8 quantization for kiln models (`docs/compression.md`).
//!
//! Pruning (masks live beside the model: [`PruningMasks`], effective weight `w ⊙ mask`):
//! - [`magnitude`]: unstructured magnitude pruning, per layer or global, by fraction or count.
//! - [`n_m`]: N:M semi-structured sparsity (2:4).
//! - [`structured`]: rows/columns, FFN neurons and attention heads by L1/L2 norm, with physical
//!   removal of FFN neurons ([`remove_ffn_neurons`]) and heads ([`remove_heads`];
//!   [`QuantizedGpt::remove_heads`] for the int8 model).
//! - [`schedule`]: gradual pruning on Zhu & Gupta's cubic schedule, applied after each optimizer
//!   step (from a kiln-train step hook, or any loop).
//! - [`sparsity()`]: the per-parameter sparsity report.
//!
//! Quantization (int8):
//! - [`quantize`]: symmetric/asymmetric, per-tensor/per-channel, min-max/percentile
//!   ([`QuantConfig`], [`QuantizedTensor`]).
//! - [`quantized_linear`]: [`QuantizedLinear`], weight-only, dynamic or static activations.
//! - [`int_gemm`]: the int8 × int8 → i32 product (AVX-512 VNNI where the CPU has it).
//! - [`quantized_gpt`]: [`QuantizedGpt`], kiln-model's `Gpt` on int8 linear layers (its forward
//!   pass, KV cache and generation), with calibration and head removal.
//! - [`lora_base`]: LoRA over an int8 base ([`quantize_lora_base`]; QLoRA's idea), the int8
//!   layer differentiable with respect to its input.
//!
//! Storage: [`archive`] saves and loads pruned and quantized models in files whose size is the
//! compressed size. Errors: every fallible call returns a [`CompressError`].
//!
//! ```
//! use burn::tensor::Device;
//! use kiln_compress::{Amount, PruningScope, linear_weights, magnitude_masks, sparsity};
//! use kiln_model::gpt::GptConfig;
//!
//! let device = Device::flex();
//! let gpt = GptConfig::new(12).with_block_size(8).with_n_layer(1).with_n_head(2).with_d_model(16)
//!     .init(&device)
//!     .unwrap();
//! let masks = magnitude_masks(&gpt, &linear_weights, Amount::Fraction(0.5), PruningScope::Layerwise)
//!     .unwrap();
//! let pruned = masks.remove(gpt);
//! let query = sparsity(&pruned).into_iter().find(|r| r.path == "blocks.0.attn.query.weight").unwrap();
//! assert_eq!(query.fraction(), 0.5);
//! ```

#![warn(missing_docs)]

pub mod archive;
mod error;
pub mod int_gemm;
pub mod lora_base;
pub mod magnitude;
mod mask;
pub mod n_m;
mod params;
pub mod quantize;
pub mod quantized_gpt;
pub mod quantized_linear;
pub mod schedule;
mod sparsity;
pub mod structured;

pub use archive::{
    Archive, StoredTensor, config_of, load_gpt, load_quantized_gpt, save_gpt, save_quantized_gpt,
};
pub use error::{CompressError, Result};
pub use int_gemm::{gemm_i8, int8_kernel_name};
pub use lora_base::quantize_lora_base;
pub use magnitude::{Amount, PruningScope, magnitude_masks};
pub use mask::{MaskSparsity, PruningMasks};
pub use n_m::{n_m_masks, satisfies_n_m};
pub use params::{NamedParam, ParamFilter, linear_weights, read_params};
pub use quantize::{
    Calibration, Granularity, QuantConfig, QuantMode, QuantParams, QuantizedTensor, calibrate,
};
pub use quantized_gpt::{QuantizedBlock, QuantizedGpt};
pub use quantized_linear::{ActivationQuant, QuantizedLinear};
pub use schedule::{GradualPruning, GradualPruningConfig};
pub use sparsity::{ParamSparsity, sparsity};
pub use structured::{
    Axis, Norm, ffn_neuron_masks, ffn_neuron_scores, head_masks, head_scores, remove_ffn_neurons,
    remove_heads, select_ffn_neurons, select_heads, structured_masks,
};
