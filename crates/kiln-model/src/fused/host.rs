//! Host code on a tensor's rows without a round trip through `TensorData`: the way in for
//! kernels that live outside Burn's operations, such as kiln-compress's int8 linear layer.
//!
//! `Tensor::into_data` copies the values into a new buffer and `Tensor::from_data` copies them
//! back into a tensor; on flex the tensor already is a host buffer, so the kernel reads the
//! input where it lies and writes the output tensor's own buffer.

use burn::tensor::{Tensor, TensorData};

/// `f(x, rows, out)` over `x` `[.., d_in]` seen as `rows` contiguous rows of f32, writing `out`
/// (`rows · d_out` values, zeroed) that becomes a tensor `[.., d_out]` on `x`'s device.
///
/// On flex without autodiff, `f` reads `x`'s own buffer (copied only when it is not f32 or not
/// contiguous) and `out` is the new tensor's buffer. Elsewhere (wgpu, CUDA, an autodiff device)
/// the values go through host copies. Nothing is recorded for autodiff: the result has no
/// gradient.
pub fn map_rows<const D: usize>(
    x: Tensor<D>,
    d_out: usize,
    f: impl FnOnce(&[f32], usize, &mut [f32]),
) -> Tensor<D> {
    let device = x.device();
    let mut dims = x.dims();
    let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
    if let Some(last) = dims.last_mut() {
        *last = d_out;
    }
    let mut out = vec![0f32; rows * d_out];
    #[cfg(feature = "flex")]
    if super::on_flex(&device) && !device.is_autodiff() {
        use super::kernel::{f32_contiguous, from_f32, values};
        use burn::backend::Flex;
        let dtype = x.dtype();
        // On plain flex the downcast cannot fail; if it ever did, the copy path below is not
        // reachable with the tensor consumed, so this is a bug worth a message.
        let flex = x
            .try_into_primitive::<Flex>()
            .expect("a tensor on the flex device is a flex tensor");
        let flex = f32_contiguous(flex);
        f(values(&flex), rows, &mut out);
        return Tensor::from_primitive::<Flex>(from_f32(out, dims.to_vec(), dtype));
    }
    let values = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    f(&values, rows, &mut out);
    Tensor::from_data(TensorData::new(out, dims), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// The rows reach the kernel in order and the output has the new width, on the plain
    /// (in place), autodiff (copied) and non-contiguous paths alike.
    #[test]
    fn rows_in_order_on_every_path() {
        let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
        for device in [Device::flex(), Device::flex().autodiff()] {
            let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [2, 3, 4]), &device);
            for (x, want_first) in [(x.clone(), 0.0), (x.flip([1]), 8.0)] {
                let y = map_rows(x, 2, |x, rows, out| {
                    assert_eq!((x.len(), rows), (24, 6));
                    for (r, out) in out.chunks_exact_mut(2).enumerate() {
                        out[0] = x[r * 4];
                        out[1] = x[r * 4..r * 4 + 4].iter().sum();
                    }
                });
                assert_eq!(y.dims(), [2, 3, 2]);
                let y = y.into_data().try_into_vec::<f32>().unwrap();
                assert_eq!(y[0], want_first);
                assert_eq!(y[1], 4.0 * want_first + 6.0);
            }
        }
    }
}
