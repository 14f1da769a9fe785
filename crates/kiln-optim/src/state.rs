//! Hand-written `RecordState` for kiln's optimizer states (Burn's derive only works inside
//! burn-optim), so `ModuleOptimizer::to_record`/`load_record` save and restore them.

use burn::optim::{StateSink, StateSource};
use burn::tensor::{Device, Tensor};

pub(crate) fn push<const D: usize>(out: &mut StateSink, prefix: &str, leaf: &str, t: &Tensor<D>) {
    out.push_tensor(prefix, leaf, t.clone().into_data());
}

pub(crate) fn take<const D: usize>(
    src: &mut StateSource,
    prefix: &str,
    leaf: &str,
    device: &Device,
) -> Option<Tensor<D>> {
    src.take_tensor(prefix, leaf)
        .map(|data| Tensor::from_data(data, device))
}

pub(crate) fn push_time(out: &mut StateSink, prefix: &str, time: usize) {
    out.push_scalar(prefix, "time", (time as u64).into());
}

pub(crate) fn take_time(src: &mut StateSource, prefix: &str) -> Option<usize> {
    let scalar = src.take_scalar(prefix, "time")?;
    u64::try_from(scalar).ok().map(|t| t as usize)
}
