//! LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
//! minutes") in the form of NVIDIA's NVLAMB / apex `FusedLAMB` and timm's `Lamb`:
//!
//! ```text
//! g ← g / max(1, ‖g‖_global / max_grad_norm)      (optional, before the moments; see below)
//! m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²
//! r ← (m/c₁) / (sqrt(v)/sqrt(c₂) + ε) + λ·w        (c = 1 − βᵗ, or 1 without bias correction)
//! w ← w − lr · φ(‖w‖)/‖r‖ · r,   φ(z) = clamp(z, γ_l, γ_u)
//! ```
//!
//! The trust ratio is 1 when `‖w‖` or `‖r‖` is 0 (a zero-initialized bias would otherwise never
//! move), and excluded parameters (biases, norms, position embeddings by default) get neither the
//! decay nor the ratio (apex/timm default). `φ` is the identity by default (γ_l = 0, γ_u = ∞), as in
//! apex and timm.
//!
//! Burn's `Lamb` has the same update and zero-norm rule, but no switchable bias correction, no φ
//! clamping, one setting for every parameter (no exclusions) and no global clipping. The trust
//! ratio is computed on the device (no read-back).
//!
//! The global gradient clipping needs every gradient at once, which Burn's per-tensor optimizer
//! never sees: call [`LambConfig::clip_gradients`] on the gradients before `step`.

use burn::config::Config;
use burn::module::Module;
use burn::optim::{
    GradientsParams, LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource,
};
use burn::tensor::{Device, Tensor};

use crate::adam::update_moments;
use crate::clip::clip_grad_norm_lamb;
use crate::error::{OptimError, non_negative, positive, unit_interval};
use crate::groups::{GroupRule, GroupSettings, build_module_optimizer, default_no_decay};
use crate::regularization::Regularization;
use crate::state::{push, push_time, take, take_time};

/// LAMB's per-tensor step with a parameter group's settings.
#[derive(Clone, Debug)]
pub struct Lamb {
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    bias_correction: bool,
    gamma_lower: f64,
    gamma_upper: Option<f64>,
    settings: GroupSettings,
}

/// LAMB's per-parameter state: the two moments and the step count.
#[derive(Clone)]
pub struct LambState<const D: usize> {
    /// First moment.
    pub moment_1: Tensor<D>,
    /// Second moment.
    pub moment_2: Tensor<D>,
    /// Steps taken.
    pub time: usize,
}

impl<const D: usize> RecordState for LambState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        push(out, prefix, "moment_1", &self.moment_1);
        push(out, prefix, "moment_2", &self.moment_2);
        push_time(out, prefix, self.time);
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        Some(Self {
            moment_1: take(src, prefix, "moment_1", device)?,
            moment_2: take(src, prefix, "moment_2", device)?,
            time: take_time(src, prefix)?,
        })
    }
}

/// `φ(‖w‖)/‖r‖`, or 1 where either norm is 0; a `[1, …, 1]` tensor that broadcasts over `r`.
fn trust_ratio<const D: usize>(
    weight: &Tensor<D>,
    update: &Tensor<D>,
    gamma_lower: f64,
    gamma_upper: Option<f64>,
) -> Tensor<D> {
    let w_norm = weight.clone().square().sum().sqrt();
    let r_norm = update.clone().square().sum().sqrt();
    let phi = match gamma_upper {
        Some(upper) => w_norm.clone().clamp(gamma_lower, upper),
        None => w_norm.clone().clamp_min(gamma_lower),
    };
    let both_positive = w_norm
        .greater_elem(0.0)
        .bool_and(r_norm.clone().greater_elem(0.0));
    let ratio = r_norm.ones_like().mask_where(both_positive, phi / r_norm);
    ratio.unsqueeze::<D>()
}

impl Optimizer for Lamb {
    type State<const D: usize> = LambState<D>;

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
        let (moment_1, moment_2, time) = update_moments(
            grad,
            state.map(|s| (s.moment_1, s.moment_2, s.time)),
            self.beta_1,
            self.beta_2,
        );
        let (bias_1, bias_2) = if self.bias_correction {
            (
                1.0 - self.beta_1.powi(time as i32),
                1.0 - self.beta_2.powi(time as i32),
            )
        } else {
            (1.0, 1.0)
        };
        let denom = moment_2
            .clone()
            .sqrt()
            .div_scalar(bias_2.sqrt())
            .add_scalar(self.epsilon);
        let mut update = moment_1.clone().div_scalar(bias_1).div(denom);
        if reg.weight_decay != 0.0 {
            // The paper's r + λw: the decay is inside the trust ratio.
            update = update + tensor.clone().mul_scalar(reg.weight_decay);
        }
        if self.settings.layer_adaptation {
            let ratio = trust_ratio(&tensor, &update, self.gamma_lower, self.gamma_upper);
            update = update * ratio;
        }
        let tensor = reg.proximal(tensor - update.mul_scalar(lr), lr);
        let state = LambState {
            moment_1,
            moment_2,
            time,
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        LambState {
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
            time: state.time,
        }
    }
}

/// LAMB with the paper's/timm's defaults: betas (0.9, 0.999), eps 1e-6, weight decay 0.01, bias
/// correction on, φ the identity, no decay/adaptation on the BERT no-decay parameters, no global
/// clipping (set `max_grad_norm` to 1.0 for apex's/timm's default).
#[derive(Config, Debug)]
pub struct LambConfig {
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to `sqrt(v̂)` (1e-6 as in the paper's BERT runs, apex and timm).
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// λ in `r + λw` (the paper's decoupled decay, under the trust ratio).
    #[config(default = 0.01)]
    pub weight_decay: f64,
    /// Adam's bias correction of the moments (NVLAMB has it; the paper's Algorithm 2 does not).
    #[config(default = true)]
    pub bias_correction: bool,
    /// γ_l, the lower clamp of φ(‖w‖).
    #[config(default = 0.0)]
    pub gamma_lower: f64,
    /// γ_u, the upper clamp of φ(‖w‖); `None` for unbounded.
    pub gamma_upper: Option<f64>,
    /// apex's `max_grad_norm`: see [`LambConfig::clip_gradients`]. `None` for no clipping.
    pub max_grad_norm: Option<f64>,
    /// Paths without decay and without layer adaptation (regexes).
    #[config(default = "default_no_decay()")]
    pub no_decay: Vec<String>,
    /// Per-group overrides, applied in order.
    #[config(default = "Vec::new()")]
    pub groups: Vec<GroupRule>,
}

impl LambConfig {
    fn validate(&self) -> Result<(), OptimError> {
        unit_interval("beta_1", self.beta_1)?;
        unit_interval("beta_2", self.beta_2)?;
        positive("epsilon", self.epsilon)?;
        non_negative("gamma_lower", self.gamma_lower)?;
        if let Some(upper) = self.gamma_upper
            && !(upper.is_finite() && upper > self.gamma_lower)
        {
            return Err(OptimError::InvalidHyperparameter {
                name: "gamma_upper",
                value: upper,
                reason: "must be finite and > gamma_lower",
            });
        }
        if let Some(max) = self.max_grad_norm {
            positive("max_grad_norm", max)?;
        }
        Ok(())
    }

    /// Validates and builds the `ModuleOptimizer` for `model`'s parameter paths.
    pub fn init<M: Module>(&self, model: &M) -> Result<ModuleOptimizer, OptimError> {
        self.validate()?;
        let reg = Regularization::decoupled(self.weight_decay);
        let this = self.clone();
        build_module_optimizer(
            model,
            GroupSettings::new(reg),
            &self.no_decay,
            &self.groups,
            move |settings| Lamb {
                beta_1: this.beta_1,
                beta_2: this.beta_2,
                epsilon: this.epsilon,
                bias_correction: this.bias_correction,
                gamma_lower: this.gamma_lower,
                gamma_upper: this.gamma_upper,
                settings,
            },
        )
    }

    /// apex/timm's global clipping before the moments: every gradient divided by
    /// `max(1, ‖g‖/max_grad_norm)`. A no-op returning the norm when `max_grad_norm` is `None`.
    /// Returns the gradients and the global norm before clipping.
    pub fn clip_gradients<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
    ) -> Result<(GradientsParams, f64), OptimError> {
        match self.max_grad_norm {
            Some(max) => clip_grad_norm_lamb(model, grads, max),
            None => {
                let norm = crate::clip::grad_norm(model, &grads);
                Ok((grads, norm))
            }
        }
    }
}
