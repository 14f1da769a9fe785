//! SGD with momentum, dampening and Nesterov, in PyTorch's form (Sutskever et al. 2013):
//!
//! `g ← g + l2·w; b ← μ·b + (1 − τ)·g` (`b ← g` on the first step);
//! `d = g + μ·b` (Nesterov) or `b`; `w ← w − lr·d`.
//!
//! Dampening defaults to **0**, PyTorch's default, not Burn's `0.1`: with `τ = 0.1` the momentum
//! buffer converges to `g/(1−μ)·0.9` instead of `g/(1−μ)`, silently shrinking the effective
//! learning rate by 10% versus every published recipe (and Nesterov is only defined for τ = 0
//! in PyTorch, which refuses it otherwise; so does kiln).

use burn::config::Config;
use burn::module::Module;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};

use crate::error::{OptimError, non_negative};
use crate::groups::{GroupRule, GroupSettings, build_module_optimizer, default_no_decay};
use crate::regularization::{L1Mode, Regularization};
use crate::state::{push, take};

/// SGD's per-tensor step with a parameter group's settings.
#[derive(Clone, Debug)]
pub struct Sgd {
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    settings: GroupSettings,
}

/// The momentum buffer (absent when momentum is 0).
#[derive(Clone)]
pub struct SgdState<const D: usize> {
    /// `b` in the formula above.
    pub momentum_buffer: Tensor<D>,
}

impl<const D: usize> RecordState for SgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        push(out, prefix, "momentum_buffer", &self.momentum_buffer);
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self {
            momentum_buffer: take(src, prefix, "momentum_buffer", device)?,
        })
    }
}

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let lr = lr * self.settings.lr_multiplier;
        let reg = &self.settings.regularization;
        let grad = reg.coupled_gradient(grad, &tensor);
        let (direction, state) = if self.momentum == 0.0 {
            (grad, None)
        } else {
            let buffer = match state {
                Some(s) => {
                    s.momentum_buffer.mul_scalar(self.momentum)
                        + grad.clone().mul_scalar(1.0 - self.dampening)
                }
                None => grad.clone(),
            };
            let direction = if self.nesterov {
                grad + buffer.clone().mul_scalar(self.momentum)
            } else {
                buffer.clone()
            };
            (
                direction,
                Some(SgdState {
                    momentum_buffer: buffer,
                }),
            )
        };
        let tensor = reg.proximal(reg.decay(tensor, lr) - direction.mul_scalar(lr), lr);
        (tensor, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        SgdState {
            momentum_buffer: state.momentum_buffer.to_device(device),
        }
    }
}

/// SGD with PyTorch's defaults (no momentum, dampening 0, no Nesterov, no weight decay).
#[derive(Config, Debug)]
pub struct SgdConfig {
    /// Momentum μ (0 disables the buffer).
    #[config(default = 0.0)]
    pub momentum: f64,
    /// Dampening τ of the gradient entering the buffer; PyTorch's 0, see the module docs.
    #[config(default = 0.0)]
    pub dampening: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0).
    #[config(default = false)]
    pub nesterov: bool,
    /// Coupled L2: `g ← g + weight_decay·w` (PyTorch SGD's `weight_decay`).
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Optional L1 (elastic net together with `weight_decay`).
    #[config(default = 0.0)]
    pub l1: f64,
    /// How `l1` is applied.
    #[config(default = "L1Mode::Proximal")]
    pub l1_mode: L1Mode,
    /// Paths excluded from regularization (regexes).
    #[config(default = "default_no_decay()")]
    pub no_decay: Vec<String>,
    /// Per-group overrides, applied in order.
    #[config(default = "Vec::new()")]
    pub groups: Vec<GroupRule>,
}

impl SgdConfig {
    /// Validates and builds the `ModuleOptimizer` for `model`'s parameter paths.
    pub fn init<M: Module>(&self, model: &M) -> Result<ModuleOptimizer, OptimError> {
        non_negative("momentum", self.momentum)?;
        if !(0.0..=1.0).contains(&self.dampening) {
            return Err(OptimError::InvalidHyperparameter {
                name: "dampening",
                value: self.dampening,
                reason: "must be in [0, 1]",
            });
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(OptimError::InvalidHyperparameter {
                name: "nesterov",
                value: 1.0,
                reason: "Nesterov momentum requires momentum > 0 and dampening = 0",
            });
        }
        let reg = Regularization::coupled_l2(self.weight_decay)
            .with_l1(self.l1)
            .with_l1_mode(self.l1_mode);
        let (momentum, dampening, nesterov) = (self.momentum, self.dampening, self.nesterov);
        build_module_optimizer(
            model,
            GroupSettings::new(reg),
            &self.no_decay,
            &self.groups,
            |settings| Sgd {
                momentum,
                dampening,
                nesterov,
                settings,
            },
        )
    }
}
