//! Fused CPU kernels (issue 12): the operations of a training step that Burn runs as several
//! passes or calls, each run as one multi-threaded, vectorized pass forward and one backward on
//! Burn's flex backend.
//!
//! Each operation is a Burn backend extension (`#[backend_extension]`) with its own autodiff
//! backward, behind a tensor-level function that runs the fused kernel when the tensor lives on
//! flex (plain or autodiff) and the composite Burn ops on every other backend (wgpu, CUDA), so
//! that both compute the same function.
//!
//! - [`linear`](mod@linear): a linear layer as one gemm over all the rows with the bias in its
//!   epilogue, and its backward (`dX`, `dW`, `db`) the same way; with only a few rows (decoding),
//!   a product that reads the weight once where it lies (`skinny.rs`) instead of gemm.
//! - [`gelu`](mod@gelu): GELU, exact and tanh ([`Activation::Gelu`](crate::activation::Activation::Gelu),
//!   [`Activation::GeluTanh`](crate::activation::Activation::GeluTanh)).
//! - [`norm`]: LayerNorm and RMSNorm ([`layer_norm`], [`rms_norm`], the decoder's
//!   [`Norm`](crate::norm::Norm)), each backward computing `dX`, `dγ`, `dβ` in one pass over the
//!   rows.
//! - [`swiglu`](mod@swiglu): SwiGLU's `silu(gate)·up`, both gradients in one pass.
//! - [`rope`]: rotary positions on queries and keys, the backward the inverse rotation.
//! - [`attention`](mod@attention): attention while training as one operation (FlashAttention's
//!   blocks of queries, the probabilities recomputed in the backward, never stored), with
//!   grouped-query heads and sliding windows; at inference for the cases Burn's op lacks.
//! - [`softmax`]: attention's scaled, causal- and padding-masked softmax (the explicit form,
//!   with dropout on the probabilities).
//! - [`cross_entropy`]: log-softmax and cross-entropy with an ignore index.
//! - [`host`]: host code on a tensor's rows, reading flex's buffer in place (kiln-compress's int8
//!   layer).

use burn::backend::Backend;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::Ops;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Device;

pub mod attention;
pub mod cross_entropy;
pub mod gelu;
pub mod host;
#[cfg(feature = "flex")]
mod kernel;
pub mod linear;
pub mod norm;
pub mod rope;
#[cfg(feature = "flex")]
mod skinny;
pub mod softmax;
pub mod swiglu;

pub use gelu::{GeluKind, gelu};
pub use norm::{layer_norm, rms_norm};
pub use swiglu::swiglu;

/// Whether the fused kernels take tensors of `dtypes`: all the same float dtype, f32, bf16 or
/// f16 (the half dtypes are cast to f32 at the kernel's door and its results cast back: the
/// values are exact in f32 and the kernels accumulate in f32, so a half-precision step runs at
/// the f32 kernels' speed and keeps its activations in half precision).
pub(crate) fn kernel_dtypes(dtypes: &[burn::tensor::DType]) -> bool {
    use burn::tensor::DType;
    dtypes.first().is_some_and(|first| {
        matches!(first, DType::F32 | DType::BF16 | DType::F16) && dtypes.iter().all(|d| d == first)
    })
}

/// Whether `device` is flex, with or without autodiff: where the fused kernels run.
pub(crate) fn on_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        matches!(
            device.as_dispatch().clone().inner(),
            burn::backend::DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// The backward pass of a fused operation with one input: the gradient flowing into its output,
/// turned by `input_grad` (with the state the forward saved) into the input's gradient.
pub(crate) fn backward_one<B: Backend, S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    input_grad: impl FnOnce(S, FloatTensor<B>) -> FloatTensor<B>,
) {
    let [parent] = ops.parents;
    let grad = grads.consume::<B>(&ops.node);
    if let Some(node) = parent {
        grads.register::<B>(node.id, input_grad(ops.state, grad));
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    #[test]
    fn flex_is_recognised_plain_and_autodiff() {
        assert!(on_flex(&Device::flex()));
        assert!(on_flex(&Device::flex().autodiff()));
    }
}
