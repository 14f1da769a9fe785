//! GELU, exact (`x·Φ(x)`) and tanh-approximated, forward and backward each one pass over the
//! activations.
//!
//! Kiln's composite tanh GELU ([`activation::gelu_tanh`](crate::activation::gelu_tanh)) is
//! seven graph nodes forward and about thirteen passes over the `[tokens, 4·d]` activations
//! backward; Burn's exact GELU is one node, but flex runs it on one thread with a libm `erf`
//! per element. Here each direction is one multi-threaded, vectorized loop, and the backward
//! overwrites the incoming gradient's buffer when it is the only holder.

// Built without flex, the extension's generated glue leaves the trait unused.
#![cfg_attr(not(feature = "flex"), allow(dead_code, unused_imports))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{Tensor, activation};

use super::{backward_one, on_flex};

/// Which GELU: [`Activation::Gelu`](crate::activation::Activation::Gelu) or
/// [`Activation::GeluTanh`](crate::activation::Activation::GeluTanh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// `x·Φ(x)`, `Φ` the standard normal CDF (through `erf`).
    Exact,
    /// `x·σ(2·√(2/π)·(x + 0.044715·x³))`, the tanh approximation.
    Tanh,
}

/// GELU of `x`: the fused kernel on flex (f32, plain or autodiff), the composite Burn ops
/// elsewhere and for other dtypes.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kiln_model::fused::gelu::{GeluKind, gelu};
///
/// let x = Tensor::<1>::from_floats([-1.0, 0.0, 2.0], &Device::flex());
/// let y = gelu(x, GeluKind::Exact).into_data().try_to_vec::<f32>().unwrap();
/// assert!((y[0] + 0.158_655).abs() < 1e-5 && y[1] == 0.0 && (y[2] - 1.954_5).abs() < 1e-4);
/// ```
pub fn gelu<const D: usize>(x: Tensor<D>, kind: GeluKind) -> Tensor<D> {
    if on_flex(&x.device()) && super::kernel_dtypes(&[x.dtype()]) {
        return Tensor::from_dispatch(<Dispatch as GeluBackend>::fused_gelu(
            x.into_dispatch(),
            kind,
        ));
    }
    match kind {
        GeluKind::Exact => activation::gelu(x),
        GeluKind::Tanh => crate::activation::gelu_tanh(x),
    }
}

/// The fused GELU as a backend operation: flex runs the kernel, Autodiff adds the fused
/// backward ([`GeluBackward`]).
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait GeluBackend: Backend {
    /// GELU of `x`, element-wise.
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self>;
}

/// The backward kernel of a concrete backend, which the autodiff operation calls.
pub trait GeluBackward: GeluBackend {
    /// `grad·GELU'(x)`.
    fn fused_gelu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kind: GeluKind,
    ) -> FloatTensor<Self>;
}

impl<B: GeluBackward, C: CheckpointStrategy> GeluBackend for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
        // Compute-bound: the state keeps the input, so no recomputation is ever needed.
        match GeluGrad.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.primitive().clone();
                let out = B::fused_gelu(input.clone(), kind);
                prep.finish((input, kind), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.into_primitive(), kind)),
        }
    }
}

/// The backward of [`GeluBackend::fused_gelu`]; its state is the input and the kind.
#[derive(Debug)]
struct GeluGrad;

impl<B: GeluBackward> Backward<B, 1> for GeluGrad {
    type State = (FloatTensor<B>, GeluKind);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        backward_one::<B, _>(ops, grads, |(x, kind), grad| {
            B::fused_gelu_backward(x, grad, kind)
        });
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::backend::TensorMetadata;
    use burn::backend::tensor::FloatTensor;

    use super::{GeluBackend, GeluBackward, GeluKind};

    use crate::fused::kernel::{
        erfc_pos, exp, f32_contiguous, from_f32, in_dtype, multiversion, owned, sigmoid, values,
        zip_chunks,
    };

    /// `2·√(2/π)`: the tanh GELU's `0.5·(1 + tanh(z)) = σ(2z)`.
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    const COEF: f32 = 0.044715;
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// `1/√(2π)`, the standard normal density at 0.
    const INV_SQRT_2PI: f32 = 0.398_942_3;

    /// `Φ(x) = ½·erfc(−x/√2)`, accurate in relative terms on both sides of 0.
    #[inline(always)]
    fn normal_cdf(x: f32) -> f32 {
        let half_erfc = 0.5 * erfc_pos(x.abs() * FRAC_1_SQRT_2);
        if x >= 0.0 { 1.0 - half_erfc } else { half_erfc }
    }

    #[inline(always)]
    fn gelu_exact(x: f32) -> f32 {
        x * normal_cdf(x)
    }

    #[inline(always)]
    fn gelu_exact_grad(x: f32) -> f32 {
        normal_cdf(x) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
    }

    #[inline(always)]
    fn gelu_tanh(x: f32) -> f32 {
        x * sigmoid(TWO_SQRT_2_OVER_PI * (x + COEF * x * x * x))
    }

    /// `d/dx x·σ(u) = σ + x·σ·(1 − σ)·u'`, `u' = 2·√(2/π)·(1 + 3·0.044715·x²)`.
    #[inline(always)]
    fn gelu_tanh_grad(x: f32) -> f32 {
        let x2 = x * x;
        let s = sigmoid(TWO_SQRT_2_OVER_PI * (x + COEF * x2 * x));
        s + x * s * (1.0 - s) * TWO_SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x2)
    }

    /// `dst[i] = f(src[i])`.
    #[inline(always)]
    fn map((src, dst): (&[f32], &mut [f32]), f: impl Fn(f32) -> f32) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f(s);
        }
    }

    /// `dst[i] *= f(src[i])`.
    #[inline(always)]
    fn scale((src, dst): (&[f32], &mut [f32]), f: impl Fn(f32) -> f32) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d *= f(s);
        }
    }

    multiversion! {
        fn exact_forward(src: &[f32], dst: &mut [f32]) {
            map((src, dst), gelu_exact)
        }
    }
    multiversion! {
        fn tanh_forward(src: &[f32], dst: &mut [f32]) {
            map((src, dst), gelu_tanh)
        }
    }
    multiversion! {
        fn exact_backward(src: &[f32], dst: &mut [f32]) {
            scale((src, dst), gelu_exact_grad)
        }
    }
    multiversion! {
        fn tanh_backward(src: &[f32], dst: &mut [f32]) {
            scale((src, dst), gelu_tanh_grad)
        }
    }

    impl GeluBackend for Flex {
        fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self> {
            let dtype = x.dtype();
            let x = f32_contiguous(x);
            let shape = x.shape().to_vec();
            let mut out = vec![0.0f32; shape.iter().product()];
            let src = values(&x);
            match kind {
                GeluKind::Exact => zip_chunks(src, &mut out, exact_forward),
                GeluKind::Tanh => zip_chunks(src, &mut out, tanh_forward),
            }
            from_f32(out, shape, dtype)
        }
    }

    impl GeluBackward for Flex {
        fn fused_gelu_backward(
            x: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            kind: GeluKind,
        ) -> FloatTensor<Self> {
            let dtype = grad.dtype();
            let x = f32_contiguous(x);
            let mut grad = owned(f32_contiguous(grad));
            let dst = grad.storage_mut::<f32>();
            let src = values(&x);
            match kind {
                GeluKind::Exact => zip_chunks(src, dst, exact_backward),
                GeluKind::Tanh => zip_chunks(src, dst, tanh_backward),
            }
            in_dtype(grad, dtype)
        }
    }
}
