//! SwiGLU's gating, `silu(gate)·up` (Shazeer 2020), forward and backward each one pass over
//! the `[tokens, d_ff]` activations.
//!
//! Composite, it is three graph nodes (a sigmoid, two products) and, backward, about six passes
//! over the activations with their intermediates saved. Here the forward is one loop and the
//! backward one loop reading `gate` and `up` and writing both gradients:
//!
//! ```text
//! out = g·σ(g)·u,   du = dout·g·σ(g),   dg = dout·u·σ(g)·(1 + g·(1 − σ(g)))
//! ```

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

use super::on_flex;

/// `silu(gate)·up`, element-wise (the two of one shape): the fused kernel on flex (f32, plain or
/// autodiff), the composite Burn ops elsewhere and for other dtypes.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kiln_model::fused::swiglu::swiglu;
///
/// let device = Device::flex();
/// let gate = Tensor::<1>::from_floats([0.0, 1.0, -2.0], &device);
/// let up = Tensor::<1>::from_floats([3.0, 2.0, 1.0], &device);
/// let y = swiglu(gate, up).into_data().try_to_vec::<f32>().unwrap();
/// let silu = |g: f32| g / (1.0 + (-g).exp());
/// assert!(y[0] == 0.0 && (y[1] - 2.0 * silu(1.0)).abs() < 1e-6 && (y[2] - silu(-2.0)).abs() < 1e-6);
/// ```
///
/// # Panics
/// When `gate` and `up` differ in shape.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(
        gate.dims(),
        up.dims(),
        "swiglu: gate and up differ in shape"
    );
    if super::kernel_dtypes(&[gate.dtype(), up.dtype()]) && on_flex(&gate.device()) {
        return Tensor::from_dispatch(<Dispatch as SwiGluBackend>::fused_swiglu(
            gate.into_dispatch(),
            up.into_dispatch(),
        ));
    }
    activation::silu(gate) * up
}

/// The fused SwiGLU as a backend operation: flex runs the kernel, Autodiff adds the fused
/// backward ([`SwiGluBackward`]).
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait SwiGluBackend: Backend {
    /// `silu(gate)·up`, element-wise.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The backward kernel of a concrete backend, which the autodiff operation calls.
pub trait SwiGluBackward: SwiGluBackend {
    /// The gradients of `gate` and `up` from the output's gradient `grad`.
    fn fused_swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl<B: SwiGluBackward, C: CheckpointStrategy> SwiGluBackend for Autodiff<B, C> {
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        // Compute-bound: the state keeps both inputs, so no recomputation is ever needed.
        match SwiGluGrad
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (gate, up) = (gate.primitive().clone(), up.primitive().clone());
                let out = B::fused_swiglu(gate.clone(), up.clone());
                prep.finish((gate, up), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_swiglu(gate.into_primitive(), up.into_primitive()))
            }
        }
    }
}

/// The backward of [`SwiGluBackend::fused_swiglu`]; its state is the two inputs.
#[derive(Debug)]
struct SwiGluGrad;

impl<B: SwiGluBackward> Backward<B, 2> for SwiGluGrad {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [gate_node, up_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let (d_gate, d_up) = B::fused_swiglu_backward(gate, up, grad);
        for (node, grad) in [(gate_node, d_gate), (up_node, d_up)] {
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

    use super::{SwiGluBackend, SwiGluBackward};
    use crate::fused::kernel::{
        CHUNK, PARALLEL_MIN, f32_contiguous, from_f32, in_dtype, multiversion, owned, sigmoid,
        values,
    };

    /// Chunks of `len` elements: one for small tensors (no threads), `CHUNK`-sized otherwise.
    fn chunk(len: usize) -> usize {
        if len < PARALLEL_MIN {
            len.max(1)
        } else {
            CHUNK
        }
    }

    multiversion! {
        fn forward_chunk(gate: &[f32], up: &[f32], out: &mut [f32]) {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        }
    }

    multiversion! {
        /// `grad` becomes `dgate` in place; `dup` is written.
        fn backward_chunk(gate: &[f32], up: &[f32], grad: &mut [f32], d_up: &mut [f32]) {
            for (((dg, du), &g), &u) in grad.iter_mut().zip(d_up.iter_mut()).zip(gate).zip(up) {
                let s = sigmoid(g);
                let dout = *dg;
                *du = dout * g * s;
                *dg = dout * u * s * (1.0 + g * (1.0 - s));
            }
        }
    }

    impl SwiGluBackend for Flex {
        fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            let dtype = gate.dtype();
            let (gate, up) = (f32_contiguous(gate), f32_contiguous(up));
            let shape = gate.shape().to_vec();
            let mut out = vec![0.0f32; shape.iter().product()];
            let (g, u) = (values(&gate), values(&up));
            let n = chunk(out.len());
            out.par_chunks_mut(n)
                .zip(g.par_chunks(n).zip(u.par_chunks(n)))
                .for_each(|(o, (g, u))| forward_chunk(g, u, o));
            from_f32(out, shape, dtype)
        }
    }

    impl SwiGluBackward for Flex {
        fn fused_swiglu_backward(
            gate: FloatTensor<Self>,
            up: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let dtype = grad.dtype();
            let (gate, up) = (f32_contiguous(gate), f32_contiguous(up));
            let shape = gate.shape().to_vec();
            let mut d_gate = owned(f32_contiguous(grad));
            let mut d_up = vec![0.0f32; shape.iter().product()];
            let (g, u) = (values(&gate), values(&up));
            let n = chunk(d_up.len());
            d_gate
                .storage_mut::<f32>()
                .par_chunks_mut(n)
                .zip(d_up.par_chunks_mut(n))
                .zip(g.par_chunks(n).zip(u.par_chunks(n)))
                .for_each(|((dg, du), (g, u))| backward_chunk(g, u, dg, du));
            (in_dtype(d_gate, dtype), from_f32(d_up, shape, dtype))
        }
    }
}
