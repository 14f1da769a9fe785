//! kiln-optim: optimizers, regularization, gradient clipping and learning-rate schedules.
//!
//! - [`clip`]: whole-model gradient utilities: [`grad_norm`], [`scale_grads`], [`add_grads`],
//!   [`clip_grad_norm`] (torch `clip_grad_norm_` semantics).
//! - [`OptimError`]: every refused hyperparameter.
//! - [`warmup_cosine`]: the GPT-3 schedule as a pure function.

#![warn(missing_docs)]

pub mod clip;
mod error;
mod warmup_cosine;

pub use clip::{add_grads, clip_grad_norm, clip_grad_norm_lamb, grad_norm, scale_grads};
pub use error::OptimError;
pub use warmup_cosine::warmup_cosine;
