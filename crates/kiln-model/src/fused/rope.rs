//! Rotary position embedding applied to queries or keys, forward and backward each one pass.
//!
//! Composite, `x·cos + rotate_half(x)·sin` is two narrows, a negation, a concatenation, two
//! products and a sum, each a pass over the `[batch, heads, seq, head_dim]` activations and a
//! node of the graph (about 4% of a Llama-shaped training step). Here one pass rotates each pair
//! `(i, i + head_dim/2)` of every row by its position's angle; the backward is the same pass
//! with the angle negated (a rotation's transpose is its inverse):
//!
//! ```text
//! y₁ = x₁·cos₁ − x₂·sin₁,   y₂ = x₂·cos₂ + x₁·sin₂      dx₁ = g₁·cos₁ + g₂·sin₂,   dx₂ = g₂·cos₂ − g₁·sin₁
//! ```
//!
//! The same products and sums in the same order as the composite form: the results are bit
//! for bit the composite's.

// Built without flex, the extension's generated glue leaves the trait unused.
#![cfg_attr(
    not(feature = "flex"),
    allow(dead_code, unused_imports, unused_variables)
)]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

use super::{backward_one, on_flex};

/// `x` `[batch, heads, seq, head_dim]` rotated at the positions `offset..offset + seq`, with
/// the tables `cos` and `sin` `[positions, head_dim]` (rotate-half pairing): the fused kernel
/// on flex for f32 (plain or autodiff), [`rope_composite`] elsewhere.
///
/// # Panics
/// When the tables are narrower than the heads or shorter than `offset + seq`.
pub fn rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>, offset: usize) -> Tensor<4> {
    let [_, _, seq, head_dim] = x.dims();
    let [positions, width] = cos.dims();
    assert!(
        width == head_dim && offset + seq <= positions && sin.dims() == cos.dims(),
        "rope: tables {:?} for heads of {head_dim} at positions {offset}..{}",
        cos.dims(),
        offset + seq
    );
    if on_flex(&x.device()) && super::kernel_dtypes(&[x.dtype()]) {
        return Tensor::from_dispatch(<Dispatch as RopeBackend>::fused_rope(
            x.into_dispatch(),
            cos.clone().into_dispatch(),
            sin.clone().into_dispatch(),
            offset,
            false,
        ));
    }
    rope_composite(x, cos, sin, offset)
}

/// [`rope`] in Burn's composite ops: what runs on other backends and dtypes, and the
/// reference the kernel is tested against.
pub fn rope_composite(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>, offset: usize) -> Tensor<4> {
    let [_, _, seq, head_dim] = x.dims();
    let half = head_dim / 2;
    let table = |t: &Tensor<2>| {
        t.clone()
            .narrow(0, offset, seq)
            .unsqueeze::<4>()
            .cast(x.dtype())
    };
    let (cos, sin) = (table(cos), table(sin));
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos + rotated * sin
}

/// The fused rotation as a backend operation: flex runs the kernel, Autodiff adds the backward
/// (the inverse rotation).
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait RopeBackend: Backend {
    /// `x` rotated at positions `offset..` (`inverse`: by the negated angles); the result is
    /// contiguous `[batch, heads, seq, head_dim]`.
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        offset: usize,
        inverse: bool,
    ) -> FloatTensor<Self>;
}

impl<B: RopeBackend, C: CheckpointStrategy> RopeBackend for Autodiff<B, C> {
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        offset: usize,
        inverse: bool,
    ) -> FloatTensor<Self> {
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        // Compute-bound: the backward needs only the tables, never the input.
        match RopeGrad.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::fused_rope(
                    x.into_primitive(),
                    cos.clone(),
                    sin.clone(),
                    offset,
                    inverse,
                );
                prep.finish((cos, sin, offset, inverse), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_rope(x.into_primitive(), cos, sin, offset, inverse))
            }
        }
    }
}

/// The backward of [`RopeBackend::fused_rope`]: the rotation by the negated angles; its state
/// is the tables, the offset and the direction.
#[derive(Debug)]
struct RopeGrad;

impl<B: RopeBackend> Backward<B, 1> for RopeGrad {
    type State = (FloatTensor<B>, FloatTensor<B>, usize, bool);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        backward_one::<B, _>(ops, grads, |(cos, sin, offset, inverse), grad| {
            B::fused_rope(grad, cos, sin, offset, !inverse)
        });
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::tensor::FloatTensor;
    use burn::tensor::{DType, FloatDType};
    use rayon::prelude::*;

    use super::RopeBackend;
    use crate::fused::kernel::{
        CHUNK, PARALLEL_MIN, f32_contiguous, from_f32, multiversion, values,
    };

    multiversion! {
        /// One row: `x` (its values, stride 1) rotated into `y` with the tables' row `c`, `s`.
        fn rotate_row(x: &[f32], c: &[f32], s: &[f32], y: &mut [f32], inverse: bool) {
            let half = y.len() / 2;
            let (y1, y2) = y.split_at_mut(half);
            let (x1, x2) = x.split_at(half);
            let (c1, c2) = c.split_at(half);
            let (s1, s2) = s.split_at(half);
            if inverse {
                for i in 0..half {
                    y1[i] = x1[i] * c1[i] + x2[i] * s2[i];
                    y2[i] = x2[i] * c2[i] - x1[i] * s1[i];
                }
            } else {
                for i in 0..half {
                    y1[i] = x1[i] * c1[i] + (-x2[i]) * s1[i];
                    y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
                }
            }
        }
    }

    impl RopeBackend for Flex {
        fn fused_rope(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
            offset: usize,
            inverse: bool,
        ) -> FloatTensor<Self> {
            let dtype = x.dtype();
            let x = rows(x);
            let (cos, sin) = (f32_contiguous(cos), f32_contiguous(sin));
            let (c, s) = (values(&cos), values(&sin));
            let shape = x.layout().shape().to_vec();
            let [b, h, t, d] = [shape[0], shape[1], shape[2], shape[3]];
            let strides = x.layout().strides().to_vec();
            let start = x.layout().start_offset() as isize;
            let data: &[f32] = x.storage();
            let mut out = vec![0.0f32; b * h * t * d];
            let row = |index: usize, y: &mut [f32]| {
                let (bi, hi, ti) = (index / (h * t), (index / t) % h, index % t);
                let at = start
                    + bi as isize * strides[0]
                    + hi as isize * strides[1]
                    + ti as isize * strides[2];
                let x = &data[at as usize..at as usize + d];
                let pos = (offset + ti) * d;
                rotate_row(x, &c[pos..pos + d], &s[pos..pos + d], y, inverse);
            };
            if out.len() < PARALLEL_MIN {
                out.chunks_exact_mut(d)
                    .enumerate()
                    .for_each(|(i, y)| row(i, y));
            } else {
                let per_task = (CHUNK / d).max(1) * d;
                out.par_chunks_mut(per_task)
                    .enumerate()
                    .for_each(|(task, chunk)| {
                        let first = task * per_task / d;
                        chunk
                            .chunks_exact_mut(d)
                            .enumerate()
                            .for_each(|(i, y)| row(first + i, y));
                    });
            }
            from_f32(out, shape, dtype)
        }
    }

    /// `x` as f32 with a unit stride along its last dimension (a copy only when it has none).
    fn rows(x: FlexTensor) -> FlexTensor {
        let x = if x.dtype() == DType::F32 {
            x
        } else {
            Flex::float_cast(x, FloatDType::F32)
        };
        if x.layout().strides().last() == Some(&1) {
            x
        } else {
            x.to_contiguous()
        }
    }
}
