//! The activation functions of the feed-forward layers.

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation;

use crate::fused::{self, GeluKind};

/// Which non-linearity a feed-forward layer applies.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact GELU, `x·Φ(x)` with the error function (BERT's `gelu`).
    Gelu,
    /// The tanh approximation of GELU (GPT-2's `gelu_new`, PyTorch's `approximate="tanh"`).
    GeluTanh,
    /// ReLU.
    Relu,
    /// SiLU (`x·σ(x)`), used inside SwiGLU.
    Silu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Gelu => fused::gelu(x, GeluKind::Exact),
            Activation::GeluTanh => fused::gelu(x, GeluKind::Tanh),
            Activation::Relu => activation::relu(x),
            Activation::Silu => activation::silu(x),
        }
    }

    /// Parses a HuggingFace `hidden_act`/`activation_function` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    /// The HuggingFace name of the activation, the inverse of
    /// [`from_hf_name`](Self::from_hf_name) (the tanh GELU is GPT-2's `gelu_new`).
    pub fn hf_name(&self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed as `x·σ(2·√(2/π)·(x + 0.044715·x³))`
/// (the same function, since `0.5·(1 + tanh(z)) = σ(2z)`).
///
/// Burn's `gelu_approximate` spells out `powf`, `tanh` and four more element-wise ops; on the CPU
/// `tanh` is a scalar libm call per element and dominated the profile of a training step. This
/// form has one transcendental (`exp`, inside Burn's fused sigmoid, which also has its own
/// one-pass backward) and two fewer ops in the autodiff graph.
///
/// This is the composite form, which [`Activation::forward`] runs off flex; on flex it runs
/// the fused kernel ([`fused::gelu()`]).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const TWO_SQRT_2_OVER_PI: f64 = 2.0 * 0.797_884_560_802_865_4;
    let inner = (x.clone() * x.clone() * 0.044715 + 1.0) * x.clone() * TWO_SQRT_2_OVER_PI;
    x * activation::sigmoid(inner)
}
