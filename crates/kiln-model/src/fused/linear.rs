//! A linear layer as one gemm: `y = x·W + b` on `[.., d_in]` with every leading dimension folded
//! into the rows, the bias in the gemm's epilogue, and its backward as two more gemms and a
//! column sum.
//!
//! Burn 0.22.1's default `linear` (burn-backend `ops/modules/linear.rs`) folds the leading
//! dimensions into the rows only when burn-std's `MatmulTransformPolicy` says so, and it keeps the
//! batched form when the rows of one batch are a multiple of 32 (a `[16, 128, 256]` activation):
//! burn-flex's `matmul` then runs 16 gemm calls against the broadcast weight, each packing that
//! weight again, single-threaded inside rayon's batch loop; its output buffer is zero-filled first
//! (`FlexTensor::empty` is `vec![0u8; n]`), and the bias is a separate `float_add` pass over the
//! output. The input gradient goes the same way against the transposed weight.
//!
//! Here, on flex and in f32:
//! - forward: the output buffer is allocated without zero-filling, its rows are written with the
//!   bias, and one `[rows, d_in] × [d_in, d_out]` gemm (`gemm::gemm` with `read_dst`, so
//!   `dst = dst + x·W`) adds the product on top, multi-threaded (`Parallelism::Rayon`); without a
//!   bias the gemm does not read the destination at all;
//! - backward: `dX = dY·Wᵀ` and `dW = Xᵀ·dY` are one gemm each over all the rows, reading the
//!   transposes through strides (no copy), and `db` is the column sums of `dY`, in row blocks
//!   summed in a fixed order (so the result does not depend on the thread count).
//!
//! bf16 and f16 tensors on flex run the same kernels, cast to f32 at their door and back
//! (`kernel_dtypes`), except the weight of a product of a few rows (decoding), which
//! `skinny.rs` reads in its own precision. Every other backend (wgpu, CUDA), and quantized tensors on flex, run
//! Burn's own `linear` unchanged.

// Built without any backend feature, the extension's generated glue leaves the trait's
// default bodies (and their arguments) unused.
#![cfg_attr(not(feature = "flex"), allow(unused_variables, dead_code))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
#[cfg(feature = "flex")]
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

use super::{kernel_dtypes, on_flex};

/// `input·weight + bias` for `input` `[.., d_in]`, `weight` `[d_in, d_out]` (Burn's layout) and
/// `bias` `[d_out]`: Burn's [`linear`](burn::tensor::module::linear), as one gemm with the bias
/// in its epilogue on flex (plain or autodiff) in f32, and Burn's own `linear` everywhere else.
pub fn linear<const D: usize>(
    input: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let mut dtypes = vec![input.dtype(), weight.dtype()];
    dtypes.extend(bias.as_ref().map(|b| b.dtype()));
    if !(kernel_dtypes(&dtypes) && on_flex(&input.device())) {
        return burn::tensor::module::linear(input, weight, bias);
    }
    // The checks Burn's `Linear::forward` makes, with its panic.
    let [d_in, d_out] = weight.dims();
    assert_eq!(
        input.dims()[D - 1],
        d_in,
        "linear: input width vs weight rows"
    );
    if let Some(bias) = &bias {
        assert_eq!(
            bias.dims(),
            [d_out],
            "linear: bias length vs weight columns"
        );
    }
    let (x, weight) = (input.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(bias) => {
            <Dispatch as FusedLinearBackend>::fused_linear_bias(x, weight, bias.into_dispatch())
        }
        None => <Dispatch as FusedLinearBackend>::fused_linear(x, weight),
    })
}

/// The fused linear layer as backend operations: flex runs the gemm kernels, Autodiff adds their
/// backward. The default bodies are Burn's own linear ops (what any other backend would run).
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait FusedLinearBackend: Backend {
    /// `x·weight` over the last dimension of `x`.
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear(x, weight, None)
    }

    /// `x·weight + bias` over the last dimension of `x`.
    fn fused_linear_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear(x, weight, Some(bias))
    }

    /// `dY·weightᵀ`, the gradient of the input (shaped like `dY` with `d_in` last).
    fn fused_linear_x_backward(
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear_x_backward(weight, output_grad)
    }

    /// `xᵀ·dY` over all the rows, the gradient of the weight (`[d_in, d_out]`).
    fn fused_linear_weight_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear_weight_backward(x, output_grad)
    }

    /// The column sums of `dY`, the gradient of the bias (`[d_out]`).
    fn fused_linear_bias_backward(output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::linear_bias_backward(output_grad)
    }
}

#[cfg(feature = "flex")]
impl FusedLinearBackend for burn::backend::Flex {
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let dtype = x.dtype();
        if !kernel_dtypes(&[dtype, weight.dtype()]) {
            return Self::linear(x, weight, None);
        }
        in_dtype(kernels::forward(as_f32(x), weight, None), dtype)
    }

    fn fused_linear_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let dtype = x.dtype();
        if !kernel_dtypes(&[dtype, weight.dtype(), bias.dtype()]) {
            return Self::linear(x, weight, Some(bias));
        }
        let out = kernels::forward(as_f32(x), weight, Some(&as_f32(bias)));
        in_dtype(out, dtype)
    }

    fn fused_linear_x_backward(
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let dtype = output_grad.dtype();
        if !kernel_dtypes(&[weight.dtype(), dtype]) {
            return Self::linear_x_backward(weight, output_grad);
        }
        in_dtype(
            kernels::x_backward(&as_f32(weight), as_f32(output_grad)),
            dtype,
        )
    }

    fn fused_linear_weight_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let dtype = x.dtype();
        if !kernel_dtypes(&[dtype, output_grad.dtype()]) {
            return Self::linear_weight_backward(x, output_grad);
        }
        in_dtype(
            kernels::weight_backward(as_f32(x), as_f32(output_grad)),
            dtype,
        )
    }

    fn fused_linear_bias_backward(output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let dtype = output_grad.dtype();
        if !kernel_dtypes(&[dtype]) {
            return Self::linear_bias_backward(output_grad);
        }
        in_dtype(kernels::bias_backward(as_f32(output_grad)), dtype)
    }
}

#[cfg(feature = "flex")]
use crate::fused::kernel::{as_f32, in_dtype};

impl<B: FusedLinearBackend, C: CheckpointStrategy> FusedLinearBackend for Autodiff<B, C> {
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        match LinearBackward::<2>
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                // As Burn's own autodiff `linear`: x is only needed for the weight's gradient
                // and the weight for x's; checkpointed, so Balanced checkpointing may recompute.
                let x_state = weight_tracked.then(|| prep.checkpoint(&x));
                let weight_state = x_tracked.then(|| prep.checkpoint(&weight));
                let out = B::fused_linear(x.into_primitive(), weight.into_primitive());
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_linear(x.into_primitive(), weight.into_primitive()))
            }
        }
    }

    fn fused_linear_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        match LinearBackward::<3>
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = weight_tracked.then(|| prep.checkpoint(&x));
                let weight_state = x_tracked.then(|| prep.checkpoint(&weight));
                let out = B::fused_linear_bias(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_linear_bias(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }
}

/// The backward of [`FusedLinearBackend::fused_linear`] (`N` = 2 parents: x and the weight)
/// and of [`FusedLinearBackend::fused_linear_bias`] (`N` = 3: and the bias). The state is the
/// checkpointed x (when the weight needs a gradient) and weight (when x does).
#[derive(Debug)]
struct LinearBackward<const N: usize>;

impl<B: FusedLinearBackend, const N: usize> Backward<B, N> for LinearBackward<N> {
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state) = ops.state;
        let mut parents = ops.parents.into_iter();
        let (node_x, node_weight, node_bias) = (
            parents.next().flatten(),
            parents.next().flatten(),
            parents.next().flatten(),
        );

        if let Some(node) = node_x {
            let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(
                weight_state.expect("the weight is checkpointed when x needs a gradient"),
            );
            grads.register::<B>(node.id, B::fused_linear_x_backward(weight, grad.clone()));
        }
        if let Some(node) = node_weight {
            let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(
                x_state.expect("x is checkpointed when the weight needs a gradient"),
            );
            grads.register::<B>(node.id, B::fused_linear_weight_backward(x, grad.clone()));
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, B::fused_linear_bias_backward(grad));
        }
    }
}

/// The f32 kernels on flex tensors, reading and writing their buffers in place.
#[cfg(feature = "flex")]
mod kernels {
    use crate::fused::kernel::{Operand, as_f32, from_f32, gemm};
    use crate::fused::skinny::{self, Elements, Weight};
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{DType, bf16, f16};
    use gemm::Parallelism;
    use rayon::prelude::*;

    /// Below this many multiply-adds a gemm runs on one thread (burn-flex's own threshold).
    const PARALLEL_GEMM: usize = 192 * 192 * 192;
    /// Below this many elements the bias fill and the column sums run on one thread.
    const PARALLEL_ELEMENTS: usize = 1 << 16;
    /// Rows per block of the column sums: the blocks' partial sums are added in order.
    const SUM_BLOCK_ROWS: usize = 256;

    /// `t` (`[.., d]`) as a `[rows, d]` matrix: a copy only when its leading dimensions cannot
    /// be folded into the rows by strides alone. The tensor returned owns the buffer the
    /// operand points into.
    fn as_rows(t: FlexTensor) -> (FlexTensor, usize, usize) {
        let dims = t.layout().shape().to_vec();
        let d = dims.last().copied().unwrap_or(1);
        let rows = dims[..dims.len().saturating_sub(1)].iter().product();
        let foldable = dims.len() <= 2 || t.is_contiguous();
        let t = if foldable { t } else { t.to_contiguous() };
        (t, rows, d)
    }

    /// The other dimension of the `[d_in, d_out]` weight, whose dimension `dim` must be `known`:
    /// the gemms below trust these sizes.
    fn matrix_dims(weight: &FlexTensor, known: usize, dim: usize) -> usize {
        let dims = weight.layout().shape().to_vec();
        assert_eq!(dims.len(), 2, "linear: the weight is a matrix");
        assert_eq!(dims[dim], known, "linear: weight {dims:?} vs width {known}");
        dims[1 - dim]
    }

    /// The operand of a tensor of rank <= 2, or of a contiguous one seen as `[rows, d]`.
    fn operand(t: &FlexTensor, d: usize) -> Operand {
        let layout = t.layout();
        let strides = layout.strides();
        let (rs, cs) = match strides.len() {
            0 => (1, 1),
            1 => (d as isize * strides[0], strides[0]),
            2 => (strides[0], strides[1]),
            // Contiguous (see `as_rows`): rows of `d` elements one after the other.
            _ => (d as isize, 1),
        };
        let data: &[f32] = t.storage();
        Operand {
            ptr: data[layout.start_offset()..].as_ptr(),
            rs,
            cs,
        }
    }

    /// The `[rows, cols]` matrix `t` as contiguous row-major values (for a bias, or the few rows
    /// of [`skinny_product`]: small next to the product).
    fn gather(t: Operand, rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            // SAFETY: `t` is a `[rows, cols]` matrix with these strides in a live buffer.
            .map(|e| unsafe {
                *t.ptr
                    .offset((e / cols) as isize * t.rs + (e % cols) as isize * t.cs)
            })
            .collect()
    }

    /// `dst = (bias rows) + lhs·rhs`, or `lhs·rhs` without a bias, for `lhs` `[m, k]` and `rhs`
    /// `[k, n]`: a new contiguous `[m, n]` buffer, zero-filled only without a bias.
    fn gemm_into(
        m: usize,
        n: usize,
        k: usize,
        lhs: Operand,
        rhs: Operand,
        bias: Option<&FlexTensor>,
    ) -> Vec<f32> {
        let len = m
            .checked_mul(n)
            .unwrap_or_else(|| panic!("linear: output size overflow: {m} x {n}"));
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        let read_dst = match bias {
            Some(bias) => {
                let bias = gather(operand(bias, n), 1, n);
                // SAFETY: every element is written right below, before being read.
                unsafe { dst.set_len(len) };
                let fill = |rows: &mut [f32]| {
                    for row in rows.chunks_exact_mut(n) {
                        row.copy_from_slice(&bias);
                    }
                };
                if len >= PARALLEL_ELEMENTS && n > 0 {
                    let rows_per_task = (PARALLEL_ELEMENTS / n).max(1);
                    dst.par_chunks_mut(rows_per_task * n).for_each(fill);
                } else if n > 0 {
                    fill(&mut dst);
                }
                true
            }
            None => {
                // Zeros, although gemm should not read `dst` without `read_dst`: an unwritten
                // buffer that any path of it did read would be garbage only now and then (a
                // 2 x 2 tensor- and pipeline-parallel run diverged at random, with the bias-less
                // row-parallel layers of tensor-parallel rank 1).
                dst.resize(len, 0.0);
                false
            }
        };
        let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_GEMM {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        // SAFETY: the operands point into live buffers with the strides of `[m, k]` and
        // `[k, n]` matrices; `dst` holds `m·n` initialized elements, row-major (zeros, or the
        // bias, so gemm with `k == 0` leaves it right).
        unsafe {
            gemm(
                [m, n, k],
                dst.as_mut_ptr(),
                n as isize,
                read_dst,
                lhs,
                rhs,
                1.0,
                parallelism,
            );
        }
        dst
    }

    /// `x·weight + bias` with [`skinny::product`] when `x` has at most [`skinny::MAX_ROWS`]
    /// rows and the weight (f32, bf16 or f16, read in its own precision) has a unit stride;
    /// `None` (gemm's turn) otherwise.
    fn skinny_product(
        x: &FlexTensor,
        m: usize,
        k: usize,
        n: usize,
        weight: &FlexTensor,
        bias: Option<&FlexTensor>,
    ) -> Option<Vec<f32>> {
        if m == 0 || m > skinny::MAX_ROWS || k == 0 || n == 0 {
            return None;
        }
        let layout = weight.layout();
        let start = layout.start_offset();
        let data = match weight.dtype() {
            DType::F32 => Elements::F32(&weight.storage::<f32>()[start..]),
            DType::BF16 => Elements::Bf16(bytemuck::cast_slice(&weight.storage::<bf16>()[start..])),
            DType::F16 => Elements::F16(&weight.storage::<f16>()[start..]),
            _ => return None,
        };
        let (w, needed) = match *layout.strides() {
            [s, 1] if s >= 0 => {
                let stride = s as usize;
                (Weight::Rows { data, stride }, (k - 1) * stride + n)
            }
            [1, s] if s >= 0 => {
                let stride = s as usize;
                (Weight::Columns { data, stride }, (n - 1) * stride + k)
            }
            _ => return None,
        };
        if data.len() < needed {
            return None;
        }
        // A few rows: gathering them (contiguous or not) costs nothing next to the weight.
        let xs = gather(operand(x, k), m, k);
        let bias = bias.map(|b| gather(operand(b, n), 1, n));
        Some(skinny::product(&xs, m, k, n, w, bias.as_deref()))
    }

    /// `x·weight + bias` for f32 `x` and `bias`; the weight may be bf16 or f16, which a product
    /// of a few rows reads in place and gemm after widening it.
    pub(super) fn forward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<&FlexTensor>,
    ) -> FlexTensor {
        let mut out_dims = x.layout().shape().to_vec();
        let (x, rows, d_in) = as_rows(x);
        let d_out = matrix_dims(&weight, d_in, 0);
        if let Some(bias) = bias {
            assert_eq!(
                bias.layout().shape().to_vec(),
                [d_out],
                "linear: bias length"
            );
        }
        let values = skinny_product(&x, rows, d_in, d_out, &weight, bias).unwrap_or_else(|| {
            let weight = as_f32(weight);
            gemm_into(
                rows,
                d_out,
                d_in,
                operand(&x, d_in),
                operand(&weight, d_out),
                bias,
            )
        });
        *out_dims.last_mut().expect("linear: x has a dimension") = d_out;
        from_f32(values, out_dims, DType::F32)
    }

    /// `dY·weightᵀ`.
    pub(super) fn x_backward(weight: &FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        let mut dims = output_grad.layout().shape().to_vec();
        let (dy, rows, d_out) = as_rows(output_grad);
        let d_in = matrix_dims(weight, d_out, 1);
        let values = gemm_into(
            rows,
            d_in,
            d_out,
            operand(&dy, d_out),
            operand(weight, d_out).t(),
            None,
        );
        *dims.last_mut().expect("linear: dY has a dimension") = d_in;
        from_f32(values, dims, DType::F32)
    }

    /// `xᵀ·dY`, all the rows in one product.
    pub(super) fn weight_backward(x: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        let (x, rows, d_in) = as_rows(x);
        let (dy, dy_rows, d_out) = as_rows(output_grad);
        assert_eq!(rows, dy_rows, "linear: rows of x vs rows of dY");
        let values = gemm_into(
            d_in,
            d_out,
            rows,
            operand(&x, d_in).t(),
            operand(&dy, d_out),
            None,
        );
        from_f32(values, vec![d_in, d_out], DType::F32)
    }

    /// The column sums of `dY`.
    pub(super) fn bias_backward(output_grad: FlexTensor) -> FlexTensor {
        let (dy, rows, d_out) = as_rows(output_grad);
        // The column sums need the rows packed: a strided 2-D view is copied once.
        let dy = if dy.is_contiguous() {
            dy
        } else {
            dy.to_contiguous()
        };
        let data: &[f32] = dy.storage();
        let start = dy.layout().start_offset();
        let data = &data[start..start + rows * d_out];
        let block_sums = |block: &[f32]| {
            let mut acc = vec![0.0f32; d_out];
            for row in block.chunks_exact(d_out) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        };
        let sums = if d_out == 0 {
            Vec::new()
        } else if data.len() >= PARALLEL_ELEMENTS {
            let blocks: Vec<Vec<f32>> = data
                .par_chunks(SUM_BLOCK_ROWS * d_out)
                .map(block_sums)
                .collect();
            let mut sums = vec![0.0f32; d_out];
            for block in blocks {
                for (s, b) in sums.iter_mut().zip(block) {
                    *s += b;
                }
            }
            sums
        } else {
            block_sums(data)
        };
        from_f32(sums, vec![d_out], DType::F32)
    }
}
