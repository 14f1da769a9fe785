//! Fused CPU kernels (issue 12): ops that Burn runs as several passes or calls, run as one on the
//! flex backend, with their own backward under autodiff. Each op has a tensor-level entry point
//! that runs the fused kernel on flex (plain or autodiff) and Burn's composite code on every
//! other backend.
//!
//! - [`linear`]: a linear layer as one gemm over all the rows with the bias in its epilogue, and
//!   its backward (`dX`, `dW`, `db`) the same way.

use burn::backend::DispatchDevice;
use burn::tensor::Device;

pub mod linear;

/// Whether `device` is flex, plain or autodiff: where the fused kernels run.
pub(crate) fn on_flex(device: &Device) -> bool {
    let device = match device.as_dispatch() {
        DispatchDevice::Autodiff(inner) => &**inner,
        other => other,
    };
    #[cfg(feature = "flex")]
    {
        matches!(device, DispatchDevice::Flex(_))
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
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
