//! The normalisation of a decoder's blocks and its output: LayerNorm (GPT-2, BERT; Ba et al.
//! 2016) or RMSNorm (Llama, Qwen2, Mistral; Zhang & Sennrich 2019).
//!
//! One module for both, with LayerNorm's parameter names (`gamma`, and `beta` when it has one),
//! so the parameter paths of kiln's GPT-2 checkpoints (`blocks.0.attn_norm.gamma`) are what they
//! were when the blocks held Burn's `LayerNorm`. On flex in f32 both run the fused kernel
//! (`fused/norm.rs`); elsewhere Burn's composite ops.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::RmsNorm;
use burn::tensor::module::layer_norm;
use burn::tensor::{DType, Device, FloatDType, Tensor};

use crate::fused::norm::{fusable, norm_fused};

/// Which normalisation.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `(x − mean)/√(var + ε)·γ + β`.
    LayerNorm,
    /// `x/√(mean(x²) + ε)·γ`: no centring, no bias (Llama's).
    RmsNorm,
}

/// A LayerNorm or an RMSNorm over the last dimension.
#[derive(Module, Debug)]
pub struct Norm {
    /// The scale `γ` `[d_model]`.
    pub gamma: Param<Tensor<1>>,
    /// The shift `β` `[d_model]` of a LayerNorm with one (never of an RMSNorm).
    pub beta: Option<Param<Tensor<1>>>,
    /// `ε`, added to the variance (LayerNorm) or the mean square (RMSNorm).
    pub epsilon: f64,
    /// LayerNorm or RMSNorm.
    #[module(skip)]
    pub kind: NormKind,
}

impl Norm {
    /// A norm of width `d_model`: `γ = 1` and, for a LayerNorm, `β = 0` (lazily initialized).
    pub fn new(kind: NormKind, d_model: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([d_model], device),
            beta: (kind == NormKind::LayerNorm).then(|| Initializer::Zeros.init([d_model], device)),
            epsilon,
            kind,
        }
    }

    /// The norm of `x` (`[..., d_model]`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gamma = self.gamma.val();
        let beta = self.beta.as_ref().map(Param::val);
        let centered = self.kind == NormKind::LayerNorm;
        if fusable(&x, &gamma) {
            return norm_fused(x, gamma, beta, self.epsilon, centered);
        }
        match self.kind {
            // Burn's LayerNorm widens f16 to f32 for the reduction; so does this.
            NormKind::LayerNorm if x.dtype() == DType::F16 => layer_norm(
                x.cast(FloatDType::F32),
                gamma.cast(FloatDType::F32),
                beta.map(|b| b.cast(FloatDType::F32)),
                self.epsilon,
            )
            .cast(FloatDType::F16),
            NormKind::LayerNorm => layer_norm(x, gamma, beta, self.epsilon),
            NormKind::RmsNorm => RmsNorm {
                gamma: self.gamma.clone(),
                epsilon: self.epsilon,
            }
            .forward(x),
        }
    }

    /// The width.
    pub fn d_model(&self) -> usize {
        self.gamma.dims()[0]
    }
}
