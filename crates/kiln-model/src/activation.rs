//! The activation functions of the feed-forward layers.

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation;

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
            Activation::Gelu => activation::gelu(x),
            Activation::GeluTanh => gelu_tanh(x),
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
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// Written with `x·x·x` rather than Burn's `powf_scalar(3.0)`: the same value at a fraction of the
/// cost on the CPU, where `powf` is a scalar libm call per element.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}
