//! Fused CPU kernels for training on flex: each op one pass forward and one pass backward,
//! vectorized and multi-threaded, where Burn's autodiff would run a chain of element-wise ops.
//!
//! Each op is a Burn backend extension with its own backward, run when the tensor lives on
//! flex (plain or autodiff); on every other backend the same entry point runs the composite Burn
//! code, so results agree across backends.
//!
//! - [`softmax`]: attention's scaled, causal- and padding-masked softmax.
//! - [`cross_entropy`]: log-softmax and cross-entropy with an ignore index.

use burn::tensor::Device;

pub mod cross_entropy;
pub mod softmax;

/// Whether `device` is a flex device, with or without autodiff: where the fused kernels run.
pub(crate) fn on_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        matches!(
            device.clone().inner().as_dispatch(),
            burn::backend::DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}
