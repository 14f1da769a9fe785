//! kiln-compress: pruning and int8 quantization for kiln models.
//!
//! Pruning (masks live beside the model, see [`PruningMasks`]):
//! - [`magnitude`]: unstructured magnitude pruning, per layer or global, by fraction or count.
//! - [`n_m`]: N:M semi-structured sparsity (2:4).
//! - [`structured`]: rows/columns, FFN neurons and attention heads by L1/L2 norm, with physical
//!   removal of FFN neurons ([`remove_ffn_neurons`]).
//! - [`schedule`]: gradual pruning on Zhu & Gupta's cubic schedule, as a [`PruningHook`] a
//!   training loop calls after each optimizer step.
//! - [`sparsity()`]: the per-parameter sparsity report.
//!
//! Errors: every fallible call returns a [`CompressError`].

#![warn(missing_docs)]

mod error;
pub mod magnitude;
mod mask;
pub mod n_m;
mod params;
pub mod schedule;
mod sparsity;
pub mod structured;

pub use error::{CompressError, Result};
pub use magnitude::{Amount, PruningScope, magnitude_masks};
pub use mask::{MaskSparsity, PruningMasks};
pub use n_m::{n_m_masks, satisfies_n_m};
pub use params::{NamedParam, ParamFilter, linear_weights, read_params};
pub use schedule::{GradualPruning, GradualPruningConfig, PruningHook};
pub use sparsity::{ParamSparsity, sparsity};
pub use structured::{
    Axis, Norm, ffn_neuron_masks, ffn_neuron_scores, head_masks, head_scores, remove_ffn_neurons,
    select_ffn_neurons, select_heads, structured_masks,
};
