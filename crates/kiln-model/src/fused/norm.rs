//! LayerNorm and RMSNorm over the last dimension, forward and backward each one pass over the
//! rows.
//!
//! Under autodiff Burn decomposes a LayerNorm into about nine graph nodes (two means, a
//! subtraction, a square root, a division, the affine map), each a pass over the activations
//! and a saved intermediate, and an RMSNorm into about six. Here the forward computes each
//! row's mean and `1/σ` (saved for the backward, `2·rows` floats) and the output in one sweep;
//! the backward computes `dX`, `dγ` and `dβ` in one sweep over the rows, writing `dX` over the
//! incoming gradient's buffer when it is the only holder:
//!
//! ```text
//! x̂ = (x − μ)·r,   g = dy·γ,   dx = r·(g − mean(g) − x̂·mean(g·x̂)),   dγ = Σ dy·x̂,   dβ = Σ dy
//! ```
//!
//! RMSNorm is the same computation without the centring: `μ = 0`, `r = 1/√(mean(x²) + ε)`,
//! no `β`, and no `mean(g)` term in `dx` (the mean is not a function of `x`). One kernel
//! serves both, told which by a flag.
//!
//! The residual add before a pre-norm block's second norm is not fused into it: the op would
//! have two outputs (the sum, which the next residual reads, and its norm), and a burn-autodiff
//! operation has one. The add is one element-wise pass, under 1% of the step.

// Built without flex, the extension's generated glue leaves the trait unused.
#![cfg_attr(not(feature = "flex"), allow(dead_code, unused_imports))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::module::{Content, DisplaySettings, ModuleDisplay};
use burn::nn::{LayerNorm, RmsNorm};
use burn::tensor::Tensor;

use super::on_flex;

/// `norm` applied to `x` (`[..., d_model]`): the fused kernel on flex (f32, plain or
/// autodiff), Burn's [`LayerNorm::forward`] elsewhere and for other dtypes. `norm` keeps its
/// role as the holder of γ, β and ε.
///
/// ```
/// use burn::nn::LayerNormConfig;
/// use burn::tensor::{Device, Tensor};
/// use kiln_model::fused::layer_norm;
///
/// let device = Device::flex();
/// let norm = LayerNormConfig::new(4).init(&device);
/// let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 4.0]], &device);
/// let y = layer_norm(&norm, x).into_data().try_to_vec::<f32>().unwrap();
/// assert!((y.iter().sum::<f32>()).abs() < 1e-5 && (y[3] - 1.341_64).abs() < 1e-4);
/// ```
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    let gamma = norm.gamma.val();
    match epsilon_of(norm) {
        Some(epsilon) if fusable(&x, &gamma) => {
            norm_fused(x, gamma, norm.beta.as_ref().map(|b| b.val()), epsilon, true)
        }
        _ => norm.forward(x),
    }
}

/// The epsilon of a Burn `LayerNorm`. Burn keeps it private; its display content is the one
/// public view, written with `f64`'s `Display`, which round-trips exactly.
fn epsilon_of(norm: &LayerNorm) -> Option<f64> {
    norm.custom_content(Content::new(DisplaySettings::new()))
        .and_then(|content| content.attributes.into_iter().find(|a| a.name == "epsilon"))
        .and_then(|epsilon| epsilon.value.parse().ok())
}

/// `norm` (RMSNorm, `x/√(mean(x²) + ε)·γ`) applied to `x` (`[..., d_model]`): the fused
/// kernel on flex (f32, plain or autodiff), Burn's [`RmsNorm::forward`] elsewhere and for other
/// dtypes.
///
/// ```
/// use burn::nn::RmsNormConfig;
/// use burn::tensor::{Device, Tensor};
/// use kiln_model::fused::rms_norm;
///
/// let device = Device::flex();
/// let norm = RmsNormConfig::new(2).with_epsilon(1e-6).init(&device);
/// let x = Tensor::<2>::from_floats([[3.0, 4.0]], &device);
/// let y = rms_norm(&norm, x).into_data().try_to_vec::<f32>().unwrap();
/// // The root mean square of (3, 4) is √12.5.
/// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-5 && (y[1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-5);
/// ```
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    let gamma = norm.gamma.val();
    if fusable(&x, &gamma) {
        norm_fused(x, gamma, None, norm.epsilon, false)
    } else {
        norm.forward(x)
    }
}

/// Whether the kernel takes `x` normalized with `gamma`: f32 on flex, matching widths.
pub(crate) fn fusable<const D: usize>(x: &Tensor<D>, gamma: &Tensor<1>) -> bool {
    on_flex(&x.device())
        && super::kernel_dtypes(&[x.dtype(), gamma.dtype()])
        && gamma.dims()[0] == x.dims()[D - 1]
        && x.shape().num_elements() > 0
}

/// The fused kernel on `x` (the caller checked [`fusable`]): LayerNorm when `centered`,
/// RMSNorm when not; without `β`, a zero constant, so one kernel serves both.
pub(crate) fn norm_fused<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
    centered: bool,
) -> Tensor<D> {
    let beta = beta.unwrap_or_else(|| gamma.zeros_like());
    Tensor::from_dispatch(<Dispatch as NormBackend>::fused_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        centered,
    ))
}

/// The fused norms as a backend operation: flex runs the kernel, Autodiff adds the fused
/// backward ([`NormBackward`]).
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait NormBackend: Backend {
    /// Over the last dimension of `x`: `(x − μ)/√(σ² + ε)·γ + β` when `centered` (LayerNorm),
    /// `x/√(mean(x²) + ε)·γ + β` when not (RMSNorm, with `β = 0`).
    fn fused_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        centered: bool,
    ) -> FloatTensor<Self>;
}

/// The kernels of a concrete backend that the autodiff operation calls.
pub trait NormBackward: NormBackend {
    /// The forward, with each row's mean (zero when not `centered`) and `1/√(σ² + ε)` (both
    /// `[rows]`).
    fn fused_norm_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        centered: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `(dx, dγ, dβ)` from the upstream gradient `grad` and the forward's saved statistics.
    fn fused_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        centered: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl<B: NormBackward, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn fused_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        centered: bool,
    ) -> FloatTensor<Self> {
        // Compute-bound: the state keeps what the backward needs, nothing is recomputed.
        match (NormGrad { centered })
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.primitive().clone(), gamma.primitive().clone());
                let (y, mean, rstd) = B::fused_norm_stats(
                    x.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    epsilon,
                    centered,
                );
                prep.finish((x, gamma, mean, rstd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
                centered,
            )),
        }
    }
}

/// The backward of [`NormBackend::fused_norm`]; its state is `(x, γ, μ, 1/σ)`.
#[derive(Debug)]
struct NormGrad {
    centered: bool,
}

impl<B: NormBackward> Backward<B, 3> for NormGrad {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, rstd) = ops.state;
        let (dx, dgamma, dbeta) = B::fused_norm_backward(x, gamma, mean, rstd, grad, self.centered);
        for (node, grad) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::backend::TensorMetadata;
    use burn::backend::tensor::FloatTensor;
    use rayon::prelude::*;

    use super::{NormBackend, NormBackward};
    use burn::tensor::DType;

    use crate::fused::kernel::{
        CHUNK, PARALLEL_MIN, f32_contiguous, from_f32, in_dtype, lane_sum, multiversion, owned,
        values,
    };

    /// Rows per rayon task: about [`CHUNK`] elements.
    fn rows_per_task(d: usize) -> usize {
        (CHUNK / d).max(1)
    }

    impl NormBackend for Flex {
        fn fused_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
            centered: bool,
        ) -> FloatTensor<Self> {
            Self::fused_norm_stats(x, gamma, beta, epsilon, centered).0
        }
    }

    impl NormBackward for Flex {
        fn fused_norm_stats(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
            centered: bool,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let shape = x.shape().to_vec();
            let dtype = x.dtype();
            let d = shape.last().copied().unwrap_or(1).max(1);
            let (x, gamma, beta) = (
                f32_contiguous(x),
                f32_contiguous(gamma),
                f32_contiguous(beta),
            );
            let src = values(&x);
            let rows = src.len() / d;
            let (gamma, beta) = (values(&gamma), values(&beta));
            let eps = epsilon as f32;
            let mut out = vec![0.0f32; src.len()];
            let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            let run = |x: &[f32], y: &mut [f32], m: &mut [f32], r: &mut [f32]| {
                forward_rows(x, gamma, beta, eps, centered, y, m, r)
            };
            if src.len() < PARALLEL_MIN {
                run(src, &mut out, &mut mean, &mut rstd);
            } else {
                let rpt = rows_per_task(d);
                out.par_chunks_mut(rpt * d)
                    .zip(src.par_chunks(rpt * d))
                    .zip(mean.par_chunks_mut(rpt))
                    .zip(rstd.par_chunks_mut(rpt))
                    .for_each(|(((y, x), m), r)| run(x, y, m, r));
            }
            (
                from_f32(out, shape, dtype),
                // The statistics stay f32: the backward reads them, nothing else does.
                from_f32(mean, vec![rows], DType::F32),
                from_f32(rstd, vec![rows], DType::F32),
            )
        }

        fn fused_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            centered: bool,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let d = gamma.shape().num_elements().max(1);
            let (x_dtype, gamma_dtype) = (x.dtype(), gamma.dtype());
            let (x, gamma, mean, rstd) = (
                f32_contiguous(x),
                f32_contiguous(gamma),
                f32_contiguous(mean),
                f32_contiguous(rstd),
            );
            let (x, gamma, mean, rstd) = (values(&x), values(&gamma), values(&mean), values(&rstd));
            let mut grad = owned(f32_contiguous(grad));
            let dy = grad.storage_mut::<f32>();
            let run = |x: &[f32], dy: &mut [f32], m: &[f32], r: &[f32]| {
                let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
                backward_rows(x, gamma, m, r, centered, dy, &mut dgamma, &mut dbeta);
                (dgamma, dbeta)
            };
            let (dgamma, dbeta) = if x.len() < PARALLEL_MIN {
                run(x, dy, mean, rstd)
            } else {
                let rpt = rows_per_task(d);
                dy.par_chunks_mut(rpt * d)
                    .zip(x.par_chunks(rpt * d))
                    .zip(mean.par_chunks(rpt))
                    .zip(rstd.par_chunks(rpt))
                    .map(|(((dy, x), m), r)| run(x, dy, m, r))
                    .collect::<Vec<_>>()
                    // Added in the blocks' order, not in the order rayon's tasks finish: the
                    // same sums whatever the threads did (exact resume, ranks that agree).
                    .into_iter()
                    .fold((vec![0.0; d], vec![0.0; d]), |(mut g, mut b), (g2, b2)| {
                        g.iter_mut().zip(&g2).for_each(|(a, v)| *a += v);
                        b.iter_mut().zip(&b2).for_each(|(a, v)| *a += v);
                        (g, b)
                    })
            };
            (
                in_dtype(grad, x_dtype),
                from_f32(dgamma, vec![d], gamma_dtype),
                from_f32(dbeta, vec![d], gamma_dtype),
            )
        }
    }

    multiversion! {
        /// The forward of whole rows of `x` (`y`, and each row's `mean` and `rstd`); the mean
        /// is taken as zero when not `centered` (RMSNorm).
        fn forward_rows(
            x: &[f32],
            gamma: &[f32],
            beta: &[f32],
            eps: f32,
            centered: bool,
            y: &mut [f32],
            mean: &mut [f32],
            rstd: &mut [f32],
        ) {
            let d = gamma.len();
            for (((x, y), m), r) in x
                .chunks_exact(d)
                .zip(y.chunks_exact_mut(d))
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
            {
                let mu = if centered { lane_sum(x) / d as f32 } else { 0.0 };
                // Two passes (the centred squares), as the composite op: no cancellation.
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x - mu;
                }
                let var = sum_squares(y) / d as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for ((y, &g), &b) in y.iter_mut().zip(gamma).zip(beta) {
                    *y = *y * inv * g + b;
                }
                (*m, *r) = (mu, inv);
            }
        }
    }

    /// `Σ v²` in 16 lanes.
    #[inline(always)]
    fn sum_squares(v: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 16];
        let chunks = v.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    multiversion! {
        /// The backward of whole rows: `dy` is overwritten with `dx`; `dgamma`/`dbeta` accumulate.
        /// Without `centered` the mean is not a function of `x`, and `dx` has no `mean(g)` term.
        fn backward_rows(
            x: &[f32],
            gamma: &[f32],
            mean: &[f32],
            rstd: &[f32],
            centered: bool,
            dy: &mut [f32],
            dgamma: &mut [f32],
            dbeta: &mut [f32],
        ) {
            let d = gamma.len();
            for (((x, dy), &mu), &r) in x
                .chunks_exact(d)
                .zip(dy.chunks_exact_mut(d))
                .zip(mean)
                .zip(rstd)
            {
                // Σ g and Σ g·x̂ in 16 lanes, with dγ and dβ in the same sweep.
                let (mut sg, mut sgx) = ([0.0f32; 16], [0.0f32; 16]);
                for ((((x, dy), g), dg), db) in x
                    .chunks_exact(16)
                    .zip(dy.chunks_exact(16))
                    .zip(gamma.chunks_exact(16))
                    .zip(dgamma.chunks_exact_mut(16))
                    .zip(dbeta.chunks_exact_mut(16))
                {
                    for l in 0..16 {
                        let xh = (x[l] - mu) * r;
                        let gl = dy[l] * g[l];
                        sg[l] += gl;
                        sgx[l] += gl * xh;
                        dg[l] += dy[l] * xh;
                        db[l] += dy[l];
                    }
                }
                let (mut tg, mut tgx) = (0.0f32, 0.0f32);
                for i in d - d % 16..d {
                    let xh = (x[i] - mu) * r;
                    let gl = dy[i] * gamma[i];
                    tg += gl;
                    tgx += gl * xh;
                    dgamma[i] += dy[i] * xh;
                    dbeta[i] += dy[i];
                }
                let a = if centered { (sg.iter().sum::<f32>() + tg) / d as f32 } else { 0.0 };
                let b = (sgx.iter().sum::<f32>() + tgx) / d as f32;
                for ((dy, &x), &g) in dy.iter_mut().zip(x).zip(gamma) {
                    let xh = (x - mu) * r;
                    *dy = r * (*dy * g - a - xh * b);
                }
            }
        }
    }
}
