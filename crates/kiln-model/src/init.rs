//! GPT-2 style initialization: weights from N(0, std), biases zero.

use burn::module::{Initializer, Module, ModuleVisitor, Param};
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
        // Lazy, like the weight: a loader that replaces it never allocates it.
        linear.bias = Some(Initializer::Zeros.init([d_out], device));
    }
    linear
}

/// Draws every lazily initialized parameter of `module` now, in declaration order.
///
/// Burn initializes parameters on first use, from the device generator's state at that moment;
/// a model built right after `device.seed(s)` would otherwise get weights that depend on
/// whatever drew random numbers between construction and the first forward pass.
pub fn materialize<M: Module>(module: M) -> M {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}
