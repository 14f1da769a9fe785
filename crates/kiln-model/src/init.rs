//! GPT-2 style initialization: weights from N(0, std), biases zero.

use burn::module::{Initializer, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// A [`Linear`] layer (weight stored `[d_in, d_out]`) with weights drawn from N(0, std) and
/// zero biases. Burn's `LinearConfig` draws the bias with the weight's initializer; GPT-2 and
/// BERT start biases at zero.
pub fn normal_linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    if bias {
        linear.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    }
    linear
}
