//! Host code on a tensor's rows without a round trip through `TensorData`: the way in for
//! kernels that live outside Burn's operations, such as kiln-compress's int8 linear layer.
//!
//! `Tensor::into_data` copies the values into a new buffer and `Tensor::from_data` copies them
//! back into a tensor; on flex the tensor already is a host buffer, so the kernel reads the
//! input where it lies and writes the output tensor's own buffer.

// Built without any backend feature, the extension's generated glue leaves the trait's
// default bodies unused.
#![cfg_attr(
    not(any(feature = "flex", feature = "cube")),
    allow(unused_variables, dead_code, unused_imports)
)]

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
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

/// `c += a·b` (or `c = a·b` without `accumulate`) for row-major `a` `[m, k]`, `b` `[k, n]` and
/// `c` `[m, n]` whose rows are `lda`, `ldb` and `ldc` elements apart: the gemm kiln's fused
/// linear layer runs, on all cores, for host kernels outside kiln-model (kiln-compress's int8
/// backward); a plain loop in a build without `flex`.
///
/// # Panics
/// When a slice is too short for its shape and stride.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows(
    [m, n, k]: [usize; 3],
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let need = |rows: usize, cols: usize, ld: usize| {
        if rows == 0 { 0 } else { (rows - 1) * ld + cols }
    };
    assert!(
        lda >= k && ldb >= n && ldc >= n,
        "matmul_rows: strides shorter than rows"
    );
    assert!(
        a.len() >= need(m, k, lda) && b.len() >= need(k, n, ldb) && c.len() >= need(m, n, ldc),
        "matmul_rows: a slice is shorter than its shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    #[cfg(not(feature = "flex"))]
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in 0..k {
            let x = a[i * lda + p];
            for (y, &w) in row.iter_mut().zip(&b[p * ldb..p * ldb + n]) {
                *y += x * w;
            }
        }
    }
    #[cfg(feature = "flex")]
    use super::kernel::{Operand, gemm};
    #[cfg(feature = "flex")]
    let operand = |ptr: *const f32, ld: usize| Operand {
        ptr,
        rs: ld as isize,
        cs: 1,
    };
    // SAFETY: the asserts above bound every element the strides reach inside the slices, and
    // `c` is borrowed mutably for the call.
    #[cfg(feature = "flex")]
    unsafe {
        gemm(
            [m, n, k],
            c.as_mut_ptr(),
            ldc as isize,
            accumulate,
            operand(a.as_ptr(), lda),
            operand(b.as_ptr(), ldb),
            1.0,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// A linear map of rows that host code computes, with its transpose for the backward pass:
/// kiln-compress's int8 layer, so that a frozen int8 base passes gradients on to the layers and
/// adapters below it (QLoRA's arrangement) without an f32 copy of its weights.
pub trait HostLinear: Send + Sync + std::fmt::Debug {
    /// Input width.
    fn d_in(&self) -> usize;
    /// Output width.
    fn d_out(&self) -> usize;
    /// `y = f(x)` for `rows` rows: `x` `[rows, d_in]`, `y` `[rows, d_out]` (zeroed), row-major.
    fn forward_rows(&self, x: &[f32], rows: usize, y: &mut [f32]);
    /// The input's gradient from the output's, `dx = dy·∂y/∂x` (the bias does not enter):
    /// `dy` `[rows, d_out]`, `dx` `[rows, d_in]` (zeroed).
    fn backward_rows(&self, dy: &[f32], rows: usize, dx: &mut [f32]);
}

/// A shared [`HostLinear`], as a backend operation's argument.
#[derive(Clone, Debug)]
pub struct HostOp(pub Arc<dyn HostLinear>);

/// `op` over the last dimension of `x` (`[.., d_in] -> [.., d_out]`), differentiable with
/// respect to `x` on an autodiff device (the backward calls
/// [`backward_rows`](HostLinear::backward_rows)); off one, [`map_rows`]'s in-place path.
pub fn host_linear<const D: usize>(x: Tensor<D>, op: &HostOp) -> Tensor<D> {
    if !x.device().is_autodiff() {
        let d_out = op.0.d_out();
        return map_rows(x, d_out, |x, rows, y| op.0.forward_rows(x, rows, y));
    }
    Tensor::from_dispatch(<Dispatch as HostLinearBackend>::host_linear(
        x.into_dispatch(),
        op,
    ))
}

/// [`host_linear`] as a backend operation: the concrete backends run the host map, Autodiff
/// adds its transpose as the backward.
#[backend_extension(Flex: cfg(feature = "flex"), Cube: cfg(feature = "cube"), Autodiff)]
pub trait HostLinearBackend: Backend {
    /// `op` over the rows of `x`.
    fn host_linear(x: FloatTensor<Self>, op: &HostOp) -> FloatTensor<Self> {
        let d_out = op.0.d_out();
        on_host::<Self>(x, d_out, |x, rows, y| op.0.forward_rows(x, rows, y))
    }
}

#[cfg(feature = "flex")]
impl HostLinearBackend for burn::backend::Flex {}

#[cfg(feature = "cube")]
impl HostLinearBackend for burn::backend::Cube {}

impl<B: Backend, C: CheckpointStrategy> HostLinearBackend for Autodiff<B, C> {
    fn host_linear(x: FloatTensor<Self>, op: &HostOp) -> FloatTensor<Self> {
        let d_out = op.0.d_out();
        let forward =
            |x: FloatTensor<B>| on_host::<B>(x, d_out, |x, rows, y| op.0.forward_rows(x, rows, y));
        // Compute-bound: the backward needs only the operation, never the input.
        match HostLinearGrad
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(op.clone(), forward(x.primitive().clone())),
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
        }
    }
}

/// The backward of [`HostLinearBackend::host_linear`]: the transposed map on the output's
/// gradient.
#[derive(Debug)]
struct HostLinearGrad;

impl<B: Backend> Backward<B, 1> for HostLinearGrad {
    type State = HostOp;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        super::backward_one::<B, _>(ops, grads, |op, grad| {
            let d_in = op.0.d_in();
            on_host::<B>(grad, d_in, |dy, rows, dx| op.0.backward_rows(dy, rows, dx))
        });
    }
}

/// `f(x, rows, out)` on a backend tensor `[.., d_in]` through the host, giving `[.., d_out]` in
/// the input's dtype (computed in f32). A tensor the backend cannot read back ends the
/// process: there is no error to return from inside an operation.
fn on_host<B: Backend>(
    x: FloatTensor<B>,
    d_out: usize,
    f: impl FnOnce(&[f32], usize, &mut [f32]),
) -> FloatTensor<B> {
    let device = x.device();
    let data = burn::backend::try_read_sync(B::float_into_data(x))
        .and_then(Result::ok)
        .expect("a tensor of a backend kiln runs on reads back synchronously");
    let (mut dims, dtype) = (data.shape().to_vec(), data.dtype());
    let values = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32");
    let rows = dims[..dims.len().saturating_sub(1)]
        .iter()
        .product::<usize>();
    if let Some(last) = dims.last_mut() {
        *last = d_out;
    }
    let mut out = vec![0f32; rows * d_out];
    f(&values, rows, &mut out);
    B::float_from_data(TensorData::new(out, dims).convert_dtype(dtype), &device)
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
