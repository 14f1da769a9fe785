//! kiln-optim: optimizers, regularization, gradient clipping and learning-rate schedules, with
//! the defaults of the papers and PyTorch (see `docs/optimizers.md`).
//!
//! Optimizer configs build Burn `ModuleOptimizer`s for a given model; parameter groups are
//! resolved from the model's parameter paths at `init`:
//!
//! - [`AdamWConfig`], [`AdamConfig`] ([`adam`]): PyTorch's AdamW and Adam (+ coupled L2).
//! - [`SgdConfig`] ([`sgd`]): momentum, dampening (PyTorch's default 0), Nesterov.
//! - [`LambConfig`] ([`lamb`]): LAMB / NVLAMB: trust-ratio clamping, exclusions, global clipping.
//! - [`OptimizerConfig`]: any of them, serializable (for training configs).
//! - [`groups`]: parameter groups by path, [`DEFAULT_NO_DECAY`], [`GroupRule`] overrides,
//!   per-group learning-rate multipliers.
//! - [`regularization`]: coupled L2, decoupled decay, L1 (subgradient or proximal), elastic net.
//! - [`clip`]: whole-model gradient utilities: [`grad_norm`] (and its [`grad_squares`]), [`scale_grads`], [`add_grads`],
//!   [`clip_grad_norm`] (torch `clip_grad_norm_` semantics), [`clip_grad_norm_lamb`].
//! - [`schedule`]: HF warmup schedules, SGDR, step, exponential and one-cycle, as Burn
//!   `LrScheduler`s; [`ScheduleConfig`] (serializable) sizes a schedule whose `total_steps`
//!   is `None` to the run ([`ScheduleConfig::init_for_run`]).
//! - [`load_state`]: optimizer state read from a checkpoint, checked against the model before
//!   it is loaded (a typed error, never a panic in a later step).
//! - [`OptimError`]: every refused hyperparameter and unusable state.
//!
//! ```
//! use burn::module::{Module, Param};
//! use burn::optim::GradientsParams;
//! use burn::optim::lr_scheduler::LrScheduler;
//! use burn::tensor::{Device, Tensor};
//! use kiln_optim::{AdamWConfig, WarmupDecayConfig, clip_grad_norm};
//!
//! #[derive(Module, Debug)]
//! struct Affine {
//!     weight: Param<Tensor<2>>,
//!     bias: Param<Tensor<1>>,
//! }
//!
//! let device = Device::flex().autodiff();
//! let mut model = Affine {
//!     weight: Param::from_tensor(Tensor::ones([2, 2], &device)),
//!     bias: Param::from_tensor(Tensor::zeros([2], &device)),
//! };
//! // `bias` is in the default no-decay group.
//! let mut optim = AdamWConfig::new().with_weight_decay(0.1).init(&model).unwrap();
//! let mut schedule = WarmupDecayConfig::cosine(1e-2, 2, 10).init().unwrap();
//! for _ in 0..3 {
//!     let x = Tensor::<2>::ones([4, 2], &device);
//!     let loss = (x.matmul(model.weight.val()) + model.bias.val().unsqueeze()).powi_scalar(2).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     let (grads, _norm) = clip_grad_norm(&model, grads, 1.0).unwrap();
//!     model = optim.step(schedule.step(), model, grads);
//! }
//! ```

#![warn(missing_docs)]

pub mod adam;
pub mod clip;
mod error;
pub mod groups;
pub mod lamb;
mod optimizer;
pub mod regularization;
pub mod schedule;
pub mod sgd;
mod state;

pub use adam::{AdamConfig, AdamWConfig};
pub use clip::{
    add_grads, clip_grad_norm, clip_grad_norm_lamb, grad_norm, grad_squares, scale_grads,
};
pub use error::OptimError;
pub use groups::{DEFAULT_NO_DECAY, GroupRule, GroupSettings, param_paths};
pub use lamb::LambConfig;
pub use optimizer::OptimizerConfig;
pub use regularization::{L1Mode, Regularization};
pub use schedule::{
    CosineWarmRestartsConfig, DecayShape, ExponentialDecayConfig, LrCurve, OneCycleConfig,
    ScheduleConfig, Scheduler, StepDecayConfig, WarmupDecayConfig, validate_lr,
};
pub use sgd::SgdConfig;
pub use state::{OPTIMIZER_STEPS, load_state, merge_state_shards};
