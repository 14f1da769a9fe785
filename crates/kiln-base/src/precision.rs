//! Mixed precision: the forward and backward passes in half precision, the master weights and
//! the optimizer state in f32.
//!
//! Each step casts the f32 master parameters to the compute dtype *inside* the autodiff graph
//! (torch.autocast casts weights per operation the same way), so the backward pass runs in half
//! precision and the cast's own backward hands f32 gradients to the master parameters. The loss
//! is taken in f32 from f32-cast logits.
//!
//! What a backend really does with a dtype is up to it: on `flex` (the CPU backend) bf16 and
//! f16 tensors are stored in half precision, and kiln's fused kernels (linear, attention, the
//! norms, GELU, SwiGLU, rotary) take them, compute in f32 and hand back half precision, so the
//! activations take half the memory at close to the f32 step's speed; Burn's own half-precision
//! ops (the rest) compute through f32 element by element. On CUDA and wgpu half-precision
//! kernels are native.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};

/// The dtype of the forward and backward passes.
#[derive(burn::config::Config, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// f16 compute with dynamic loss scaling (f16 gradients underflow without it).
    F16,
    /// bf16 compute; bf16 has f32's exponent range, so no loss scaling is needed.
    Bf16,
}

impl Precision {
    /// The float dtype of this precision.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// Whether this precision needs dynamic loss scaling.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }

    /// The model the forward pass runs: `master` itself in f32, else a cast of it whose
    /// parameters keep their ids and stay connected to the master's in the graph.
    pub fn compute_model<M: Module>(self, master: &M) -> M {
        match self {
            Precision::F32 => master.clone(),
            other => master.clone().map(&mut CastFloats(other.dtype())),
        }
    }
}

struct CastFloats(FloatDType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|tensor| tensor.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn half_precision_gradients_reach_the_f32_master_and_are_close() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let master: Linear = LinearConfig::new(16, 8).init(&device);
        let x = Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 1.0), &device);
        let grad_of = |precision: Precision| {
            let model = precision.compute_model(&master);
            let y = model.forward(x.clone().cast(precision.dtype()));
            let loss = y.cast(FloatDType::F32).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &master);
            let g: Tensor<2> = grads
                .get(master.weight.id)
                .expect("master parameter has a gradient");
            assert_eq!(g.dtype(), burn::tensor::DType::F32);
            g
        };
        let (full, half) = (grad_of(Precision::F32), grad_of(Precision::F16));
        let scale: f32 = full.clone().abs().max().into_scalar();
        let diff: f32 = (full - half).abs().max().into_scalar();
        assert!(scale > 0.0);
        assert!(
            diff < 0.02 * scale,
            "f16 gradient off by {diff} (scale {scale})"
        );
    }
}
