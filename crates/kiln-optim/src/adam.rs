//! Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019) as one per-tensor optimizer.
//!
//! Burn's `Adam`/`AdamW` compute the same update, but: AdamW's defaults are not the paper's/
//! PyTorch's (eps 1e-5, weight decay 1e-4 vs 1e-8, 0.01), there is no L1, and no per-group
//! learning-rate multiplier. kiln's `Adam` takes its regularization from the parameter group, so
//! `Adam + L2` and `AdamW` differ only in [`Regularization`] and both match PyTorch to float
//! rounding: `denom = sqrt(v)/sqrt(1−β₂ᵗ) + eps`, `w ← w − lr/(1−β₁ᵗ)·m/denom`.

use burn::config::Config;
use burn::module::Module;
use burn::optim::{LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};

use crate::error::{OptimError, positive, unit_interval};
use crate::groups::{GroupRule, GroupSettings, build_module_optimizer, default_no_decay};
use crate::regularization::{L1Mode, Regularization};
use crate::state::{push, push_time, take, take_time};

/// Adam's per-tensor step with a parameter group's settings.
#[derive(Clone, Debug)]
pub struct Adam {
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    amsgrad: bool,
    settings: GroupSettings,
}

/// Adam's per-parameter state: the two moments, AMSGrad's running maximum, the step count.
#[derive(Clone)]
pub struct AdamState<const D: usize> {
    /// First moment (EMA of gradients).
    pub moment_1: Tensor<D>,
    /// Second moment (EMA of squared gradients).
    pub moment_2: Tensor<D>,
    /// AMSGrad's running maximum of `moment_2`.
    pub max_moment_2: Option<Tensor<D>>,
    /// Steps taken (1 after the first).
    pub time: usize,
}

impl<const D: usize> RecordState for AdamState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        push(out, prefix, "moment_1", &self.moment_1);
        push(out, prefix, "moment_2", &self.moment_2);
        if let Some(max) = &self.max_moment_2 {
            push(out, prefix, "max_moment_2", max);
        }
        push_time(out, prefix, self.time);
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self {
            moment_1: take(src, prefix, "moment_1", device)?,
            moment_2: take(src, prefix, "moment_2", device)?,
            max_moment_2: take(src, prefix, "max_moment_2", device),
            time: take_time(src, prefix)?,
        })
    }
}

/// The exponential moving averages shared by Adam and LAMB (`m` with `1 − β₁`, grad averaging).
pub(crate) fn update_moments<const D: usize>(
    grad: Tensor<D>,
    previous: Option<(Tensor<D>, Tensor<D>, usize)>,
    beta_1: f64,
    beta_2: f64,
) -> (Tensor<D>, Tensor<D>, usize) {
    match previous {
        Some((m, v, time)) => (
            m.mul_scalar(beta_1) + grad.clone().mul_scalar(1.0 - beta_1),
            v.mul_scalar(beta_2) + grad.square().mul_scalar(1.0 - beta_2),
            time + 1,
        ),
        // Zero-initialized moments after one update.
        None => (
            grad.clone().mul_scalar(1.0 - beta_1),
            grad.square().mul_scalar(1.0 - beta_2),
            1,
        ),
    }
}

impl Optimizer for Adam {
    type State<const D: usize> = AdamState<D>;

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
        let previous_max = state.as_ref().and_then(|s| s.max_moment_2.clone());
        let (moment_1, moment_2, time) = update_moments(
            grad,
            state.map(|s| (s.moment_1, s.moment_2, s.time)),
            self.beta_1,
            self.beta_2,
        );
        let max_moment_2 = self.amsgrad.then(|| match previous_max {
            Some(max) => max.max_pair(moment_2.clone()),
            None => moment_2.clone(),
        });
        let bias_1 = 1.0 - self.beta_1.powi(time as i32);
        let bias_2 = 1.0 - self.beta_2.powi(time as i32);
        let second = max_moment_2.as_ref().unwrap_or(&moment_2).clone();
        let denom = second
            .sqrt()
            .div_scalar(bias_2.sqrt())
            .add_scalar(self.epsilon);
        let step = moment_1.clone().div(denom).mul_scalar(lr / bias_1);
        let tensor = reg.proximal(reg.decay(tensor, lr) - step, lr);
        let state = AdamState {
            moment_1,
            moment_2,
            max_moment_2,
            time,
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamState {
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
            max_moment_2: state.max_moment_2.map(|t| t.to_device(device)),
            time: state.time,
        }
    }
}

fn validate_adam(beta_1: f64, beta_2: f64, epsilon: f64) -> Result<(), OptimError> {
    unit_interval("beta_1", beta_1)?;
    unit_interval("beta_2", beta_2)?;
    positive("epsilon", epsilon)
}

/// The `ModuleOptimizer` of an Adam variant; the regularization is what tells AdamW from
/// Adam + L2.
fn adam_optimizer<M: Module>(
    model: &M,
    regularization: Regularization,
    (beta_1, beta_2, epsilon, amsgrad): (f64, f64, f64, bool),
    no_decay: &[String],
    groups: &[GroupRule],
) -> Result<ModuleOptimizer, OptimError> {
    validate_adam(beta_1, beta_2, epsilon)?;
    build_module_optimizer(
        model,
        GroupSettings::new(regularization),
        no_decay,
        groups,
        |settings| Adam {
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            settings,
        },
    )
}

/// AdamW (decoupled weight decay) with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8,
/// weight decay 0.01, none on [`DEFAULT_NO_DECAY`](crate::DEFAULT_NO_DECAY) parameters.
#[derive(Config, Debug)]
pub struct AdamWConfig {
    /// β₁, the first-moment decay.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂, the second-moment decay.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to `sqrt(v̂)`.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Decoupled decay: `w ← w·(1 − lr·weight_decay)`.
    #[config(default = 0.01)]
    pub weight_decay: f64,
    /// Optional L1 on the decayed parameters (elastic net with the decay).
    #[config(default = 0.0)]
    pub l1: f64,
    /// How `l1` is applied.
    #[config(default = "L1Mode::Proximal")]
    pub l1_mode: L1Mode,
    /// AMSGrad's running maximum of `v`.
    #[config(default = false)]
    pub amsgrad: bool,
    /// Paths excluded from regularization (regexes); `vec![]` decays everything.
    #[config(default = "default_no_decay()")]
    pub no_decay: Vec<String>,
    /// Per-group overrides, applied in order.
    #[config(default = "Vec::new()")]
    pub groups: Vec<GroupRule>,
}

impl AdamWConfig {
    /// Validates and builds the `ModuleOptimizer` for `model`'s parameter paths.
    pub fn init<M: Module>(&self, model: &M) -> Result<ModuleOptimizer, OptimError> {
        let reg = Regularization::decoupled(self.weight_decay)
            .with_l1(self.l1)
            .with_l1_mode(self.l1_mode);
        let adam = (self.beta_1, self.beta_2, self.epsilon, self.amsgrad);
        adam_optimizer(model, reg, adam, &self.no_decay, &self.groups)
    }
}

/// Adam with coupled L2 (`torch.optim.Adam(weight_decay=…)`): the decay term goes through the
/// moments. Defaults: betas (0.9, 0.999), eps 1e-8, no L2.
#[derive(Config, Debug)]
pub struct AdamConfig {
    /// β₁, the first-moment decay.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂, the second-moment decay.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to `sqrt(v̂)`.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Coupled L2: `g ← g + weight_decay·w`.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Optional L1 (elastic net together with `weight_decay`).
    #[config(default = 0.0)]
    pub l1: f64,
    /// How `l1` is applied.
    #[config(default = "L1Mode::Proximal")]
    pub l1_mode: L1Mode,
    /// AMSGrad's running maximum of `v`.
    #[config(default = false)]
    pub amsgrad: bool,
    /// Paths excluded from regularization (regexes).
    #[config(default = "default_no_decay()")]
    pub no_decay: Vec<String>,
    /// Per-group overrides, applied in order.
    #[config(default = "Vec::new()")]
    pub groups: Vec<GroupRule>,
}

impl AdamConfig {
    /// Validates and builds the `ModuleOptimizer` for `model`'s parameter paths.
    pub fn init<M: Module>(&self, model: &M) -> Result<ModuleOptimizer, OptimError> {
        let reg = Regularization::coupled_l2(self.weight_decay)
            .with_l1(self.l1)
            .with_l1_mode(self.l1_mode);
        let adam = (self.beta_1, self.beta_2, self.epsilon, self.amsgrad);
        adam_optimizer(model, reg, adam, &self.no_decay, &self.groups)
    }
}
