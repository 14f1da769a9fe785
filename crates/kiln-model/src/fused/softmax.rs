//! Attention's scaled, masked softmax, forward and backward, each one pass over a row.
//!
//! Under autodiff Burn runs `scores * scale`, two `mask_fill`s and a softmax decomposed into
//! max, sub, exp, sum and div: seven graph nodes over the `[batch, heads, q, k]` scores, each
//! allocating its output. The fused op reads the scores once and writes the probabilities once;
//! its backward, `dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale`, reads the saved `P` and the incoming
//! gradient once. The row kernels here (the vectorized `exp`, the lane-wise reductions, the
//! ISA dispatch and the row-block threading) are also the cross-entropy's.
//!
//! A row whose every key is masked gives zeros (as Burn's fused attention op does), not the
//! NaN that a softmax over `-inf` gives, on every backend.

// Built without any backend feature, the extension's generated glue leaves the trait's
// default bodies (and their arguments) unused.
#![cfg_attr(not(feature = "flex"), allow(unused_variables, dead_code))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{AutodiffBackend, Backend, Dispatch, backend_extension};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::{backward_one, on_flex};

/// `softmax(scores · scale)` over the last dimension, with the keys masked out by `causal` (a
/// query at position `i` sees keys up to `i + k − q`: the queries are the last `q` of `k`
/// positions, as with a KV cache) and by `padding` (`[batch, heads, q, k]`, `true` = masked).
///
/// Runs one fused kernel on flex (and a fused backward under autodiff), Burn's composite ops
/// ([`masked_softmax_composite`]) elsewhere. Rows with every key masked are zeros.
pub fn masked_softmax(
    scores: Tensor<4>,
    scale: f64,
    causal: bool,
    padding: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    if !on_flex(&scores.device()) {
        return masked_softmax_composite(scores, scale, causal, padding);
    }
    let (scores, scale) = (scores.into_dispatch(), scale as f32);
    Tensor::from_dispatch(match padding {
        Some(padding) => <Dispatch as MaskedSoftmaxBackend>::masked_softmax_padded(
            scores,
            scale,
            causal,
            padding.into_dispatch(),
        ),
        None => <Dispatch as MaskedSoftmaxBackend>::masked_softmax(scores, scale, causal),
    })
}

/// [`masked_softmax`] in Burn's composite ops (scale, `mask_fill` with `-inf`, softmax): what
/// runs on backends without the fused kernel, and the reference the kernel is tested against.
pub fn masked_softmax_composite(
    scores: Tensor<4>,
    scale: f64,
    causal: bool,
    padding: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let [batch, heads, seq_q, seq_k] = scores.dims();
    let mut scores = scores * scale;
    let mut fully_masked = None;
    if let Some(padding) = padding {
        // Only padding can mask a whole row (causal leaves at least key 0 while k >= q); such
        // a row's softmax is NaN, set to zero below like the fused kernel's.
        let mut row_masked = padding.clone();
        if causal {
            row_masked = row_masked.bool_or(causal_mask(batch, heads, seq_q, seq_k, &scores));
        }
        fully_masked = Some(row_masked.all_dim(3).expand([batch, heads, seq_q, seq_k]));
        scores = scores.mask_fill(padding, f32::NEG_INFINITY);
    }
    if causal {
        let future = causal_mask(batch, heads, seq_q, seq_k, &scores);
        scores = scores.mask_fill(future, f32::NEG_INFINITY);
    }
    let probs = softmax(scores, 3);
    match fully_masked {
        Some(rows) => probs.mask_fill(rows, 0.0),
        None => probs,
    }
}

/// `true` at the keys after each query's position (`j > i + k − q`), `[batch, heads, q, k]`.
fn causal_mask(
    batch: usize,
    heads: usize,
    q: usize,
    k: usize,
    like: &Tensor<4>,
) -> Tensor<4, Bool> {
    Tensor::<2, Bool>::tril_mask([q, k], k as i64 - q as i64, &like.device())
        .unsqueeze::<4>()
        .expand([batch, heads, q, k])
}

/// The fused masked softmax as a backend operation: flex runs the kernels, Autodiff adds the
/// backward (which calls the inner backend's [`masked_softmax_backward`]).
///
/// [`masked_softmax_backward`]: MaskedSoftmaxBackend::masked_softmax_backward
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait MaskedSoftmaxBackend: Backend {
    /// The probabilities of [`masked_softmax`] without a padding mask (the scale as `f32`).
    fn masked_softmax(scores: FloatTensor<Self>, scale: f32, causal: bool) -> FloatTensor<Self>;

    /// The probabilities of [`masked_softmax`] with a padding mask. (A separate operation
    /// because Burn 0.22.1's extension glue does not unwrap an `Option` of a bool tensor.)
    fn masked_softmax_padded(
        scores: FloatTensor<Self>,
        scale: f32,
        causal: bool,
        padding: BoolTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradient of the scores from the probabilities `probs` and their gradient `grad`:
    /// `probs ⊙ (grad − rowsum(grad ⊙ probs)) · scale`. Not differentiable again.
    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

impl<B: MaskedSoftmaxBackend, C: CheckpointStrategy> MaskedSoftmaxBackend for Autodiff<B, C> {
    fn masked_softmax(scores: FloatTensor<Self>, scale: f32, causal: bool) -> FloatTensor<Self> {
        tracked::<B, C>(scores, scale, |s| B::masked_softmax(s, scale, causal))
    }

    fn masked_softmax_padded(
        scores: FloatTensor<Self>,
        scale: f32,
        causal: bool,
        padding: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(scores, scale, |s| {
            B::masked_softmax_padded(s, scale, causal, padding)
        })
    }

    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::masked_softmax_backward(
            probs.into_primitive(),
            grad.into_primitive(),
            scale,
        ))
    }
}

/// `forward` of the inner backend on an autodiff tensor, with [`SoftmaxBackward`].
fn tracked<B: MaskedSoftmaxBackend, C: CheckpointStrategy>(
    scores: FloatTensor<Autodiff<B, C>>,
    scale: f32,
    forward: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let (scores, node) = scores.into_parts();
    // Compute-bound: the backward keeps the probabilities rather than recompute them.
    match SoftmaxBackward
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let probs = forward(scores);
            prep.finish((probs.clone(), scale), probs)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(scores)),
    }
}

/// The backward of the masked softmax; its state is the probabilities and the scale.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: MaskedSoftmaxBackend> Backward<B, 1> for SoftmaxBackward {
    type State = (FloatTensor<B>, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        backward_one::<B, _>(ops, grads, |(probs, scale), grad| {
            B::masked_softmax_backward(probs, grad, scale)
        });
    }
}

#[cfg(feature = "flex")]
mod kernels {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::{BoolTensor, FloatTensor};

    use super::MaskedSoftmaxBackend;
    use crate::fused::kernel::{
        exp, f32_contiguous, for_row_blocks, from_f32, lane_dot, lane_max, lane_sum, multiversion,
    };

    impl MaskedSoftmaxBackend for Flex {
        fn masked_softmax(
            scores: FloatTensor<Self>,
            scale: f32,
            causal: bool,
        ) -> FloatTensor<Self> {
            softmax_forward(scores, scale, causal, None)
        }

        fn masked_softmax_padded(
            scores: FloatTensor<Self>,
            scale: f32,
            causal: bool,
            padding: BoolTensor<Self>,
        ) -> FloatTensor<Self> {
            softmax_forward(scores, scale, causal, Some(padding))
        }

        fn masked_softmax_backward(
            probs: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            let dtype = grad.dtype();
            let dims = probs.layout().shape().clone();
            let k = dims[dims.num_dims() - 1];
            let (probs, grad) = (f32_contiguous(probs), f32_contiguous(grad));
            let probs = probs.as_slice::<f32>().expect("contiguous f32");
            let grad = grad.as_slice::<f32>().expect("contiguous f32");
            let mut out = vec![0.0f32; probs.len()];
            for_row_blocks(&mut out, k, k, |first_row, block| {
                for (r, out) in block.chunks_exact_mut(k).enumerate() {
                    let at = (first_row + r) * k;
                    softmax_backward_row(&probs[at..at + k], &grad[at..at + k], out, scale);
                }
            });
            from_f32(out, dims, dtype)
        }
    }

    /// The fused forward on flex: rows of `[batch, heads, q, k]` in blocks across threads.
    fn softmax_forward(
        scores: FlexTensor,
        scale: f32,
        causal: bool,
        padding: Option<FlexTensor>,
    ) -> FlexTensor {
        let dtype = scores.dtype();
        let scores = f32_contiguous(scores);
        let dims = scores.layout().shape().clone();
        let [batch, heads, q, k] = [dims[0], dims[1], dims[2], dims[3]];
        let input = scores.as_slice::<f32>().expect("contiguous f32");
        let mask = padding.map(|p| MaskRows::new(p, [batch, heads, q, k]));
        let offset = k as i64 - q as i64;
        let mut out = vec![0.0f32; input.len()];
        for_row_blocks(&mut out, k, k, |first_row, block| {
            let mut mask_row = vec![0u8; if mask.is_some() { k } else { 0 }];
            for (r, out) in block.chunks_exact_mut(k).enumerate() {
                let row = first_row + r;
                let scores = &input[row * k..(row + 1) * k];
                let i = (row % q) as i64;
                let valid = if causal {
                    (i + offset + 1).clamp(0, k as i64) as usize
                } else {
                    k
                };
                let mask = mask.as_ref().map(|m| m.row(row, &mut mask_row));
                softmax_row(scores, out, scale, valid, mask);
            }
        });
        from_f32(out, dims, dtype)
    }

    multiversion! {
        /// One row of probabilities: `scores · scale` over the first `valid` keys (the rest are
        /// causally masked), `-inf` where `mask` is non-zero, then max, exp and normalize in `out`.
        fn softmax_row(scores: &[f32], out: &mut [f32], scale: f32, valid: usize, mask: Option<&[u8]>) {
            let (head, tail) = out.split_at_mut(valid);
            tail.fill(0.0);
            let scores = &scores[..valid];
            match mask {
                Some(mask) => {
                    for ((o, &s), &m) in head.iter_mut().zip(scores).zip(&mask[..valid]) {
                        *o = if m != 0 { f32::NEG_INFINITY } else { s * scale };
                    }
                }
                None => {
                    for (o, &s) in head.iter_mut().zip(scores) {
                        *o = s * scale;
                    }
                }
            }
            let max = lane_max(head);
            if max == f32::NEG_INFINITY {
                head.fill(0.0);
                return;
            }
            for o in head.iter_mut() {
                *o = exp(*o - max);
            }
            let inv = 1.0 / lane_sum(head);
            for o in head.iter_mut() {
                *o *= inv;
            }
        }
    }

    multiversion! {
        /// `out = p ⊙ (g − Σ p ⊙ g) · scale` for one row.
        fn softmax_backward_row(p: &[f32], g: &[f32], out: &mut [f32], scale: f32) {
            let dot = lane_dot(p, g);
            for ((o, &p), &g) in out.iter_mut().zip(p).zip(g) {
                *o = p * (g - dot) * scale;
            }
        }
    }

    /// The rows of a `[batch, heads, q, k]` boolean mask read through its strides (so an
    /// expanded `[batch, 1, 1, k]` padding mask is never copied out to full size).
    struct MaskRows {
        tensor: FlexTensor,
        /// Bytes per element (1 for native and `u8` bools, 4 for `u32`).
        width: usize,
        dims: [usize; 4],
    }

    impl MaskRows {
        fn new(tensor: FlexTensor, dims: [usize; 4]) -> Self {
            let width = tensor.dtype().size();
            Self {
                tensor,
                width,
                dims,
            }
        }

        /// Row `row` (flat over batch, heads and q) as one byte per key, non-zero = masked:
        /// borrowed when it lies contiguous in bytes, else gathered into `buf`.
        fn row<'a>(&'a self, row: usize, buf: &'a mut [u8]) -> &'a [u8] {
            let [_, heads, q, k] = self.dims;
            let layout = self.tensor.layout();
            let strides = layout.strides();
            let (b, h, i) = (row / (heads * q), row / q % heads, row % q);
            let start = layout.start_offset() as isize
                + b as isize * strides[0]
                + h as isize * strides[1]
                + i as isize * strides[2];
            let bytes = self.tensor.bytes();
            let (w, step) = (self.width as isize, strides[3]);
            if self.width == 1 && step == 1 {
                return &bytes[start as usize..start as usize + k];
            }
            for (j, m) in buf.iter_mut().enumerate() {
                let at = ((start + j as isize * step) * w) as usize;
                *m = u8::from(bytes[at..at + self.width].iter().any(|&x| x != 0));
            }
            buf
        }
    }
}
