//! LoRA over an int8 base: QLoRA's idea (Dettmers et al. 2023) with kiln's int8 weights in
//! place of NF4. The frozen base layers are quantized, the adapters stay f32 and train; the
//! base then takes about a quarter of its f32 memory, and the int8 layer passes gradients to
//! the layers and adapters below it ([`QuantizedLinear`]'s backward, no f32 copy of its
//! weight).

use burn::nn::Linear;
use kiln_dist::flat::trainable_flags;
use kiln_model::gpt::Gpt;
use kiln_model::lora::LoraLinear;

use crate::error::{CompressError, Result};
use crate::quantize::QuantConfig;
use crate::quantized_linear::{ActivationQuant, QuantizedLinear};

/// `model` with every base layer quantized (`weights`, `activations`: dynamic is the one that
/// runs the int8 product; weight-only dequantizes per call), the adapters and everything else
/// shared. A base layer that trains (`lm_head` in `modules_to_save`) or has its adapter merged
/// in cannot be quantized: an error naming it.
pub fn quantize_lora_base(
    model: &Gpt<LoraLinear>,
    weights: &QuantConfig,
    activations: ActivationQuant,
) -> Result<Gpt<LoraLinear<QuantizedLinear>>> {
    model.map_linears(|path, layer: &LoraLinear<Linear>| {
        if layer.merged {
            return Err(CompressError::arg(format!(
                "`{path}` has its adapter merged into the weight: unmerge before quantizing"
            )));
        }
        if trainable_flags(&layer.base).into_iter().any(|t| t) {
            return Err(CompressError::arg(format!(
                "`{path}` trains (modules_to_save): an int8 layer cannot; keep that model in f32"
            )));
        }
        Ok(LoraLinear {
            base: QuantizedLinear::from_linear(&layer.base, weights, activations)?,
            adapter: layer.adapter.clone(),
            merged: false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Device, Distribution, Tensor};
    use kiln_model::fused::linear::linear;
    use kiln_model::linear::LinearLayer;

    /// The int8 layer's input gradient is the product with its dequantized weight: the same as
    /// Burn's linear on that weight, to f32 rounding.
    #[test]
    fn the_int8_backward_is_the_dequantized_weights_product() {
        let device = Device::flex().autodiff();
        device.seed(4);
        for activations in [ActivationQuant::Dynamic, ActivationQuant::None] {
            let w = Tensor::<2>::random([40, 24], Distribution::Normal(0.0, 0.3), &device);
            let dense = Linear {
                weight: Param::from_tensor(w),
                bias: None,
            };
            let int8 =
                QuantizedLinear::from_linear(&dense, &QuantConfig::new(), activations).unwrap();
            let x = Tensor::<3>::random([2, 3, 40], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let upstream = Tensor::<3>::random([2, 3, 24], Distribution::Normal(0.0, 1.0), &device);
            let grads = (LinearLayer::forward(&int8, x.clone()) * upstream.clone())
                .sum()
                .backward();
            let found = x.grad(&grads).expect("the input has a gradient");
            let x2 = x.clone().detach().require_grad();
            let reference = (linear(x2.clone(), int8.dequantized_weight(&device), None) * upstream)
                .sum()
                .backward();
            let want = x2.grad(&reference).unwrap();
            let diff = (found - want).abs().max().into_scalar::<f32>();
            assert!(
                diff < 1e-5,
                "{activations:?}: input gradients differ by {diff}"
            );
        }
    }
}
