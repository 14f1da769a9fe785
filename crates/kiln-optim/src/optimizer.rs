//! One serializable choice of optimizer, for training configs that pick it at run time.

use burn::config::Config;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};

use crate::adam::{AdamConfig, AdamWConfig};
use crate::error::OptimError;
use crate::lamb::LambConfig;
use crate::sgd::SgdConfig;

/// Any of kiln's optimizers. `From` each config.
#[derive(Config, Debug)]
pub enum OptimizerConfig {
    /// [`AdamWConfig`].
    AdamW(AdamWConfig),
    /// [`AdamConfig`].
    Adam(AdamConfig),
    /// [`SgdConfig`].
    Sgd(SgdConfig),
    /// [`LambConfig`].
    Lamb(LambConfig),
}

impl OptimizerConfig {
    /// Validates and builds the `ModuleOptimizer` for `model`.
    pub fn init<M: Module>(&self, model: &M) -> Result<ModuleOptimizer, OptimError> {
        match self {
            Self::AdamW(c) => c.init(model),
            Self::Adam(c) => c.init(model),
            Self::Sgd(c) => c.init(model),
            Self::Lamb(c) => c.init(model),
        }
    }

    /// What the optimizer itself does to the gradients before `step`: LAMB's global clipping
    /// when its `max_grad_norm` is set (returning the norm before clipping), nothing otherwise
    /// (`None`, and no norm is computed).
    pub fn prepare_gradients<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
    ) -> Result<(GradientsParams, Option<f64>), OptimError> {
        match self {
            Self::Lamb(c) if c.max_grad_norm.is_some() => {
                let (grads, norm) = c.clip_gradients(model, grads)?;
                Ok((grads, Some(norm)))
            }
            _ => Ok((grads, None)),
        }
    }
}

impl From<AdamWConfig> for OptimizerConfig {
    fn from(c: AdamWConfig) -> Self {
        Self::AdamW(c)
    }
}

impl From<AdamConfig> for OptimizerConfig {
    fn from(c: AdamConfig) -> Self {
        Self::Adam(c)
    }
}

impl From<SgdConfig> for OptimizerConfig {
    fn from(c: SgdConfig) -> Self {
        Self::Sgd(c)
    }
}

impl From<LambConfig> for OptimizerConfig {
    fn from(c: LambConfig) -> Self {
        Self::Lamb(c)
    }
}
