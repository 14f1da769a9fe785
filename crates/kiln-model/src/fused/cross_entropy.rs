//! Log-softmax and cross-entropy with an ignore index, forward and backward, each one pass.
//!
//! Burn's composite form (log-softmax, gather, mask, sum, divide) materializes the
//! `[tokens, vocab]` log-probabilities forward and again, as probabilities, in the backward of
//! the log-softmax, plus a scattered one-hot. The fused forward keeps only each row's
//! logsumexp; the backward writes `(softmax − onehot) · g / count` straight into the gradient.

// Built without any backend feature, the extension's generated glue leaves the trait's
// default bodies (and their arguments) unused.
#![cfg_attr(not(feature = "flex"), allow(unused_variables, dead_code))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, Dispatch, backend_extension};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use super::{backward_one, on_flex};

/// Mean cross-entropy of `logits` `[tokens, vocab]` against `targets` `[tokens]`, over the
/// tokens whose target is not `ignore_index`; 0 (with zero gradients) when every target is
/// ignored.
///
/// Runs one fused kernel on flex (and a fused backward under autodiff), Burn's composite ops
/// ([`cross_entropy_composite`]) elsewhere. Targets must lie in `0..vocab` (check them with
/// [`check_targets`](crate::loss::check_targets)): on flex one outside makes the loss NaN.
pub fn cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    ignore_index: Option<i64>,
) -> Tensor<1> {
    if !on_flex(&logits.device()) {
        return cross_entropy_composite(logits, targets, ignore_index);
    }
    let (loss, _logsumexp) = <Dispatch as CrossEntropyBackend>::cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
        ignore_index,
    );
    Tensor::from_dispatch(loss)
}

/// [`cross_entropy`] in Burn's composite ops (log-softmax, gather, mean over the kept
/// tokens): what runs on backends without the fused kernel, and the reference the kernel is
/// tested against.
pub fn cross_entropy_composite(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    ignore_index: Option<i64>,
) -> Tensor<1> {
    let tokens = targets.dims()[0];
    let log_probs = log_softmax(logits, 1);
    let targets = targets.reshape([tokens, 1]);
    match ignore_index {
        None => log_probs.gather(1, targets).mean().neg(),
        Some(ignore) => {
            let ignored = targets.clone().equal_elem(ignore);
            let keep = ignored.clone().bool_not().float();
            let picked = log_probs.gather(1, targets.mask_fill(ignored, 0));
            let count = keep.clone().sum().clamp_min(1.0);
            (picked * keep).sum().neg() / count
        }
    }
}

/// The fused cross-entropy as a backend operation: flex runs the kernels, Autodiff adds the
/// backward (which calls the inner backend's [`cross_entropy_backward`]).
///
/// [`cross_entropy_backward`]: CrossEntropyBackend::cross_entropy_backward
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait CrossEntropyBackend: Backend {
    /// The mean loss `[1]` of [`cross_entropy`], and each row's logsumexp `[tokens]` (what the
    /// backward needs besides the logits).
    fn cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        ignore_index: Option<i64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of the logits, `(softmax − onehot(target)) · grad / count` on the kept rows
    /// and 0 on the ignored ones, from the logits, their rows' `logsumexp` and the loss's
    /// gradient `grad` (`[1]`). Not differentiable again.
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        logsumexp: FloatTensor<Self>,
        targets: IntTensor<Self>,
        ignore_index: Option<i64>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl<B: CrossEntropyBackend, C: CheckpointStrategy> CrossEntropyBackend for Autodiff<B, C> {
    fn cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        ignore_index: Option<i64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (logits, node) = logits.into_parts();
        // Compute-bound: the backward keeps the logits and logsumexp rather than recompute.
        match CrossEntropyGrad
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (loss, lse) = B::cross_entropy(logits.clone(), targets.clone(), ignore_index);
                let state = CrossEntropyState {
                    logits,
                    logsumexp: lse.clone(),
                    targets,
                    ignore_index,
                };
                (prep.finish(state, loss), Self::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (loss, lse) = B::cross_entropy(logits, targets, ignore_index);
                (prep.finish(loss), Self::from_inner(lse))
            }
        }
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        logsumexp: FloatTensor<Self>,
        targets: IntTensor<Self>,
        ignore_index: Option<i64>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::cross_entropy_backward(
            logits.into_primitive(),
            logsumexp.into_primitive(),
            targets,
            ignore_index,
            grad.into_primitive(),
        ))
    }
}

/// What the cross-entropy's backward reads.
#[derive(Debug, Clone)]
struct CrossEntropyState<B: Backend> {
    logits: FloatTensor<B>,
    logsumexp: FloatTensor<B>,
    targets: IntTensor<B>,
    ignore_index: Option<i64>,
}

/// The backward of the fused cross-entropy.
#[derive(Debug)]
struct CrossEntropyGrad;

impl<B: CrossEntropyBackend> Backward<B, 1> for CrossEntropyGrad {
    type State = CrossEntropyState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        backward_one::<B, _>(ops, grads, |s, grad| {
            B::cross_entropy_backward(s.logits, s.logsumexp, s.targets, s.ignore_index, grad)
        });
    }
}

#[cfg(feature = "flex")]
mod kernels {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::{FloatTensor, IntTensor};
    use burn::tensor::{DType, Shape};

    use super::CrossEntropyBackend;
    use crate::fused::kernel::{
        LANES, exp, f32_contiguous, for_row_blocks, from_f32, lane_max, lane_sum, multiversion,
    };

    impl CrossEntropyBackend for Flex {
        fn cross_entropy(
            logits: FloatTensor<Self>,
            targets: IntTensor<Self>,
            ignore_index: Option<i64>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let dtype = logits.dtype();
            let logits = f32_contiguous(logits);
            let [tokens, vocab] = rows_of(&logits);
            let x = logits.as_slice::<f32>().expect("contiguous f32");
            let targets = read_targets(targets);
            let mut lse = vec![0.0f32; tokens];
            for_row_blocks(&mut lse, 1, vocab, |first, block| {
                for (r, lse) in block.iter_mut().enumerate() {
                    let row = &x[(first + r) * vocab..(first + r + 1) * vocab];
                    *lse = logsumexp(row);
                }
            });
            // Summed in f64 and in row order: the same loss however the rows were split.
            let (mut sum, mut count) = (0.0f64, 0usize);
            for (r, (&t, &lse)) in targets.iter().zip(&lse).enumerate() {
                if Some(t) == ignore_index {
                    continue;
                }
                count += 1;
                sum += match usize::try_from(t).ok().filter(|&t| t < vocab) {
                    Some(t) => f64::from(lse - x[r * vocab + t]),
                    None => f64::NAN,
                };
            }
            let loss = if count == 0 { 0.0 } else { sum / count as f64 };
            (
                from_f32(vec![loss as f32], Shape::new([1]), dtype),
                from_f32(lse, Shape::new([tokens]), dtype),
            )
        }

        fn cross_entropy_backward(
            logits: FloatTensor<Self>,
            logsumexp: FloatTensor<Self>,
            targets: IntTensor<Self>,
            ignore_index: Option<i64>,
            grad: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let dtype = logits.dtype();
            let logits = f32_contiguous(logits);
            let [_, vocab] = rows_of(&logits);
            let x = logits.as_slice::<f32>().expect("contiguous f32");
            let lse = f32_contiguous(logsumexp);
            let lse = lse.as_slice::<f32>().expect("contiguous f32");
            let grad = f32_contiguous(grad);
            let g = grad.as_slice::<f32>().expect("contiguous f32")[0];
            let targets = read_targets(targets);
            let count = targets.iter().filter(|&&t| Some(t) != ignore_index).count();
            let per_token = g / count.max(1) as f32;
            let mut out = vec![0.0f32; x.len()];
            for_row_blocks(&mut out, vocab, vocab, |first, block| {
                for (r, out) in block.chunks_exact_mut(vocab).enumerate() {
                    let row = first + r;
                    let t = targets[row];
                    if Some(t) == ignore_index {
                        continue; // already zero
                    }
                    let x = &x[row * vocab..(row + 1) * vocab];
                    scaled_softmax_row(x, lse[row], per_token, out);
                    match usize::try_from(t).ok().filter(|&t| t < vocab) {
                        Some(t) => out[t] -= per_token,
                        None => out.fill(f32::NAN),
                    }
                }
            });
            from_f32(out, logits.layout().shape().clone(), dtype)
        }
    }

    multiversion! {
        /// `max + ln Σ e^(x − max)` of one row, without storing the exponentials.
        fn logsumexp(row: &[f32]) -> f32 {
            let max = lane_max(row);
            if max.is_infinite() {
                return max;
            }
            let mut acc = [0.0f32; LANES];
            let chunks = row.chunks_exact(acc.len());
            let rest = chunks.remainder();
            for c in chunks {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a += exp(x - max);
                }
            }
            let sum = lane_sum(&acc) + rest.iter().map(|&x| exp(x - max)).sum::<f32>();
            max + sum.ln()
        }
    }

    multiversion! {
        /// `out = e^(x − lse) · c`: a row's softmax from its logsumexp, scaled.
        fn scaled_softmax_row(x: &[f32], lse: f32, c: f32, out: &mut [f32]) {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = exp(x - lse) * c;
            }
        }
    }

    /// `[tokens, vocab]` of a 2-d tensor.
    fn rows_of(x: &FlexTensor) -> [usize; 2] {
        let shape = x.layout().shape();
        [shape[0], shape[1]]
    }

    /// The targets as `i64`, whatever integer type the device keeps them in.
    fn read_targets(targets: FlexTensor) -> Vec<i64> {
        let targets = targets.to_contiguous();
        match targets.dtype() {
            DType::I32 => targets
                .as_slice::<i32>()
                .map(|t| t.iter().map(|&t| t.into()).collect()),
            DType::I64 => targets.as_slice::<i64>().map(<[i64]>::to_vec),
            _ => None,
        }
        .unwrap_or_else(|| {
            targets
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_default()
        })
    }
}
