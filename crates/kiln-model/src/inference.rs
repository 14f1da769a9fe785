//! Running a model for predictions: inference mode, and reading results back to the host.

use std::borrow::Cow;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::error::{ModelError, Result};

/// `module` ready for inference: as it is on a plain device, or [`valid`](Module::valid) (no
/// autodiff graph, dropout off) when it sits on an autodiff device. Cloning only when needed
/// matters for int8 models, whose weights live on the host.
pub(crate) fn for_inference<M: Module>(module: &M) -> Cow<'_, M> {
    if module.devices().iter().any(Device::is_autodiff) {
        Cow::Owned(module.valid())
    } else {
        Cow::Borrowed(module)
    }
}

/// The values of `t`, row-major, as f32 whatever the float type.
pub(crate) fn host_floats<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::BadInput(format!("cannot read a tensor back: {e:?}")))
}

/// Ids read back from the device, whatever its integer type (i32 on flex).
pub(crate) fn host_ids<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<u32>> {
    let ids = t
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| ModelError::BadInput(format!("cannot read ids back: {e:?}")))?;
    // Ids come from an argmax over a dimension, so they fit.
    Ok(ids.into_iter().map(|id| id as u32).collect())
}
