//! kiln-optim: optimizers, regularization, gradient clipping and learning-rate schedules.
//!
//! Optimizer configs build Burn `ModuleOptimizer`s for a given model (parameter groups are
//! resolved from the model's parameter paths):
//!
//! - [`AdamWConfig`], [`AdamConfig`] ([`adam`]): PyTorch's AdamW and Adam (+ coupled L2).
//! - [`SgdConfig`] ([`sgd`]): momentum, dampening (PyTorch's default 0), Nesterov.
//! - [`LambConfig`] ([`lamb`]): LAMB / NVLAMB with trust-ratio clamping and global clipping.
//! - [`groups`]: parameter groups by path, [`DEFAULT_NO_DECAY`], [`GroupRule`] overrides.
//! - [`regularization`]: coupled L2, decoupled decay, L1 (subgradient / proximal), elastic net.
//! - [`clip`]: whole-model gradient utilities: [`grad_norm`], [`scale_grads`], [`add_grads`],
//!   [`clip_grad_norm`] (torch `clip_grad_norm_` semantics).
//! - [`schedule`]: HF warmup schedules, SGDR, step, exponential, one-cycle as Burn
//!   `LrScheduler`s.
//! - [`OptimError`]: every refused hyperparameter.
//! - [`warmup_cosine`]: the GPT-3 schedule as a pure function.

#![warn(missing_docs)]

pub mod adam;
pub mod clip;
mod error;
pub mod groups;
pub mod lamb;
pub mod regularization;
pub mod schedule;
pub mod sgd;
mod state;
mod warmup_cosine;

pub use adam::{AdamConfig, AdamWConfig};
pub use clip::{add_grads, clip_grad_norm, clip_grad_norm_lamb, grad_norm, scale_grads};
pub use error::OptimError;
pub use groups::{DEFAULT_NO_DECAY, GroupRule, GroupSettings, param_paths};
pub use lamb::LambConfig;
pub use regularization::{L1Mode, Regularization};
pub use schedule::{
    CosineWarmRestartsConfig, DecayShape, ExponentialDecayConfig, LrCurve, OneCycleConfig,
    Scheduler, StepDecayConfig, WarmupDecayConfig, validate_lr,
};
pub use sgd::SgdConfig;
pub use warmup_cosine::warmup_cosine;
