//! Fused CPU kernels: element-wise and row-wise operations of a training step, each one
//! multi-threaded, vectorized pass forward and one backward, on Burn's flex backend.
//!
//! Each operation is a Burn backend extension (`#[backend_extension]`) with its own autodiff
//! backward, behind a tensor-level function that runs the fused kernel when the tensor lives on
//! flex (plain or autodiff) and the composite Burn ops on every other backend (wgpu, CUDA), so
//! that both compute the same function.
//!
//! - [`gelu`](mod@gelu): GELU, exact and tanh ([`Activation::Gelu`](crate::activation::Activation::Gelu),
//!   [`Activation::GeluTanh`](crate::activation::Activation::GeluTanh)).
//! - [`layer_norm`](mod@layer_norm): LayerNorm, its backward computing `dX`, `dγ`, `dβ` in one
//!   pass over the rows.

use burn::tensor::Device;

pub mod gelu;
#[cfg(feature = "flex")]
mod kernel;
pub mod layer_norm;

pub use gelu::{GeluKind, gelu};
pub use layer_norm::layer_norm;

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
