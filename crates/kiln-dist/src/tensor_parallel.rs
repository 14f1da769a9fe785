//! Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): a layer's matrices split across the
//! ranks of a group, so that each holds and computes `1/t` of them.
//!
//! A Transformer block becomes two parallel regions, attention and MLP, each entered through
//! Megatron's `f` and left through its `g`:
//!
//! ```text
//!  x ─ f ─┬─ column-parallel (q, k, v: n_head/t heads; MLP up: d_ff/t) ─ ... ─ row-parallel ─ g ─ y
//!         (each rank holds its own slice of the weights; x and y are whole on every rank)
//! ```
//!
//! - `f` ([`TensorParallel::copy_to_region`]) is the identity forward and an all-reduce of the
//!   gradient backward: each rank's slice contributes a part of the gradient of the replicated
//!   input.
//! - `g` ([`TensorParallel::reduce_from_region`]) is an all-reduce forward (the row-parallel
//!   layer's partial products summed) and the identity backward.
//!
//! One forward pass of a block has two all-reduces, one backward pass two more.
//!
//! Both are autodiff operations with their own backward, written with Burn's `extension`
//! feature (`#[backend_extension]` and burn-autodiff's `Backward` trait). The other way to run
//! code inside a backward pass, driving it from outside one segment at a time as kiln's
//! per-block recomputation does, would split every block into four segments with four
//! `backward()` calls; as operations, `f` and `g` compose with everything the loop already
//! does (accumulation, mixed precision, both kinds of recomputation, pipelines) unchanged.
//!
//! The collectives go through the host like every kiln collective, so the same model runs on
//! flex, wgpu and CUDA. A failed collective inside a backward pass cannot return an error, so
//! it ends the whole job ([`ProcessGroup::abort`]) rather than leave the other ranks waiting.
//!
//! Burn stores a Linear's weight as `[d_in, d_out]`: a column shard ([`column_shard`]) is a
//! slice of dimension 1 (and of the bias), a row shard ([`row_shard`]) a slice of dimension 0,
//! its bias kept by rank 0 alone so that the all-reduce adds it once.

// Built without any backend feature, the extension's generated glue leaves the trait's
// default bodies (and their arguments) unused.
#![cfg_attr(
    not(any(feature = "flex", feature = "cube")),
    allow(unused_variables, dead_code)
)]

use std::ops::Range;

use burn::backend::TensorMetadata;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData};

use crate::communicator::ReduceOp;
use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;
use crate::tensor::data_to_host;

/// The ranks that split each layer's matrices between them.
#[derive(Clone, Debug)]
pub struct TensorParallel {
    group: ProcessGroup,
}

impl TensorParallel {
    /// Tensor parallelism over `group` (the tensor-parallel group of a process grid).
    pub fn new(group: ProcessGroup) -> Self {
        Self { group }
    }

    /// The group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// This rank's index among the `t` ranks.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// `t`, the number of ranks a layer is split across.
    pub fn size(&self) -> usize {
        self.group.size()
    }

    /// This rank's slice of `0..n` (`what` names `n` in the error when `t` does not divide it).
    pub fn shard(&self, what: &str, n: usize) -> Result<Range<usize>> {
        let t = self.size();
        if n == 0 || !n.is_multiple_of(t) {
            return Err(DistError::InvalidArgument(format!(
                "{what} ({n}) must be a positive multiple of the tensor-parallel size {t}"
            )));
        }
        let per = n / t;
        Ok(self.rank() * per..(self.rank() + 1) * per)
    }

    /// Megatron's `f`: `x` unchanged forward; backward, the gradient summed over the group.
    pub fn copy_to_region<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.size() == 1 || !x.is_tracked() {
            return x;
        }
        Tensor::from_dispatch(<Dispatch as TensorParallelBackend>::copy_to_region(
            x.into_dispatch(),
            &self.group,
        ))
    }

    /// Megatron's `g`: `x` summed over the group forward; backward, the gradient unchanged.
    pub fn reduce_from_region<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.size() == 1 {
            return x;
        }
        Tensor::from_dispatch(<Dispatch as TensorParallelBackend>::reduce_from_region(
            x.into_dispatch(),
            &self.group,
        ))
    }

    /// Every rank's slice of a weight, concatenated along `dim` (the whole weight, on every
    /// rank).
    pub fn gather<const D: usize>(&self, x: Tensor<D>, dim: usize) -> Result<Tensor<D>> {
        if self.size() == 1 {
            return Ok(x);
        }
        self.group.all_gather_tensor(x, dim)
    }
}

/// This rank's column shard of `linear` (`[d_in, d_out]` → `[d_in, d_out/t]`, the bias sliced
/// alike): the layers that enter a parallel region (q, k, v; the MLP's up and gate).
pub fn column_shard(linear: Linear, tp: &TensorParallel) -> Result<Linear> {
    let [d_in, d_out] = linear.weight.dims();
    let cols = tp.shard("a column-parallel layer's output width", d_out)?;
    Ok(Linear {
        weight: map_param(linear.weight, |w| w.slice([0..d_in, cols.clone()])),
        bias: linear
            .bias
            .map(|b| map_param(b, |b| b.slice([cols.clone()]))),
    })
}

/// This rank's row shard of `linear` (`[d_in, d_out]` → `[d_in/t, d_out]`), the bias on rank 0
/// only: the layers that leave a parallel region (attention's output, the MLP's down), whose
/// partial products `g` sums.
pub fn row_shard(linear: Linear, tp: &TensorParallel) -> Result<Linear> {
    let [d_in, d_out] = linear.weight.dims();
    let rows = tp.shard("a row-parallel layer's input width", d_in)?;
    Ok(Linear {
        weight: map_param(linear.weight, |w| w.slice([rows.clone(), 0..d_out])),
        bias: linear.bias.filter(|_| tp.rank() == 0),
    })
}

/// The whole layer again from every rank's column shard (every rank calls it).
pub fn gather_column(linear: Linear, tp: &TensorParallel) -> Result<Linear> {
    Ok(Linear {
        weight: gather_param(linear.weight, tp, 1)?,
        bias: linear.bias.map(|b| gather_param(b, tp, 0)).transpose()?,
    })
}

/// The whole layer again from every rank's row shard (every rank calls it; rank 0's bias).
pub fn gather_row(linear: Linear, tp: &TensorParallel) -> Result<Linear> {
    let weight = gather_param(linear.weight, tp, 0)?;
    // Whether the layer has a bias at all is rank 0's to say.
    let mut has_bias = [u8::from(linear.bias.is_some())];
    tp.group().broadcast_bytes(&mut has_bias, 0)?;
    let bias = match (has_bias[0] == 1, linear.bias) {
        (false, _) => None,
        (true, Some(b)) => Some(b),
        (true, None) => {
            let zeros = Tensor::zeros([weight.dims()[1]], &weight.device());
            Some(Param::from_tensor(zeros))
        }
    };
    let bias = bias
        .map(|b| {
            let (id, tensor, mapper) = b.consume();
            let tensor = tp.group().broadcast_tensor(tensor, 0)?;
            Ok::<_, DistError>(Param::from_mapped_value(id, tensor, mapper))
        })
        .transpose()?;
    Ok(Linear { weight, bias })
}

/// A parameter replaced by a function of itself (a part of it), keeping its id (so optimizer
/// state and gradients stay keyed alike on every layout) and its trainability.
pub(crate) fn map_param<const D: usize>(
    param: Param<Tensor<D>>,
    slice: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Param<Tensor<D>> {
    let (id, tensor, mapper) = param.consume();
    let Ok(part) = rebuilt::<D, std::convert::Infallible>(tensor, |t| Ok(slice(t)));
    Param::from_mapped_value(id, part, mapper)
}

fn gather_param<const D: usize>(
    param: Param<Tensor<D>>,
    tp: &TensorParallel,
    dim: usize,
) -> Result<Param<Tensor<D>>> {
    let (id, tensor, mapper) = param.consume();
    let whole = rebuilt(tensor, |t| tp.gather(t, dim))?;
    Ok(Param::from_mapped_value(id, whole, mapper))
}

/// A new leaf from `f` of a parameter's value, on the same kind of device and as trainable as
/// it (a slice of a tracked tensor is not a leaf, so `f` runs on the plain backend).
fn rebuilt<const D: usize, E>(
    tensor: Tensor<D>,
    f: impl FnOnce(Tensor<D>) -> std::result::Result<Tensor<D>, E>,
) -> std::result::Result<Tensor<D>, E> {
    let (autodiff, require_grad) = (tensor.is_autodiff(), tensor.is_require_grad());
    let plain = if autodiff { tensor.inner() } else { tensor };
    let out = f(plain)?;
    Ok(match (autodiff, require_grad) {
        (true, true) => Tensor::from_inner(out).require_grad(),
        (true, false) => Tensor::from_inner(out),
        (false, _) => out,
    })
}

/// `f` and `g` as backend operations: the concrete backends run the forward (identity, or the
/// all-reduce), Autodiff adds the backward.
///
/// Built for the backends kiln-dist's features name (`flex`; `wgpu`, `vulkan`, `metal` and
/// `cuda` through CubeCL); the facade's backend features turn them on.
#[backend_extension(Flex: cfg(feature = "flex"), Cube: cfg(feature = "cube"), Autodiff)]
pub trait TensorParallelBackend: Backend {
    /// Megatron's `f` (identity forward).
    fn copy_to_region(x: FloatTensor<Self>, _group: &ProcessGroup) -> FloatTensor<Self> {
        x
    }

    /// Megatron's `g` (all-reduce forward).
    fn reduce_from_region(x: FloatTensor<Self>, group: &ProcessGroup) -> FloatTensor<Self> {
        all_reduce::<Self>(x, group)
    }
}

#[cfg(feature = "flex")]
impl TensorParallelBackend for burn::backend::Flex {}

#[cfg(feature = "cube")]
impl TensorParallelBackend for burn::backend::Cube {}

impl<B: Backend, C: CheckpointStrategy> TensorParallelBackend for Autodiff<B, C> {
    fn copy_to_region(x: FloatTensor<Self>, group: &ProcessGroup) -> FloatTensor<Self> {
        region::<B, C>(x, Some(group.clone()), |x| x)
    }

    fn reduce_from_region(x: FloatTensor<Self>, group: &ProcessGroup) -> FloatTensor<Self> {
        region::<B, C>(x, None, |x| all_reduce::<B>(x, group))
    }
}

/// `f` or `g` on an autodiff tensor: `forward` on the inner backend, and a backward that sums
/// the gradient over `sum_over` (`f`) or passes it through (`g`, `None`).
fn region<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    sum_over: Option<ProcessGroup>,
    forward: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    // Compute-bound: a recomputation under Balanced checkpointing would communicate again.
    match RegionBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(sum_over, forward(x.primitive().clone())),
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
    }
}

/// The backward of `f` (the gradient summed over the group in the state) and of `g` (no group:
/// the gradient passed through).
#[derive(Debug)]
struct RegionBackward;

impl<B: Backend> Backward<B, 1> for RegionBackward {
    type State = Option<ProcessGroup>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = parent {
            let grad = match &ops.state {
                Some(group) => all_reduce::<B>(grad, group),
                None => grad,
            };
            grads.register::<B>(node.id, grad);
        }
    }
}

/// The sum over the group of a backend tensor, through the host, in its own dtype (reduced in
/// f32). A failure ends the job: see the module's documentation.
fn all_reduce<B: Backend>(x: FloatTensor<B>, group: &ProcessGroup) -> FloatTensor<B> {
    if group.size() == 1 {
        return x;
    }
    let device = x.device();
    let reduced = burn::backend::try_read_sync(B::float_into_data(x))
        .ok_or_else(|| DistError::Tensor("the backend cannot read a tensor synchronously".into()))
        .and_then(|read| read.map_err(|e| DistError::Tensor(format!("{e:?}"))))
        .and_then(|data| {
            let (shape, dtype) = (data.shape().clone(), data.dtype());
            let mut values = data_to_host(data)?;
            group.all_reduce_f32(&mut values, ReduceOp::Sum)?;
            Ok(TensorData::new(values, shape).convert_dtype(dtype))
        });
    match reduced {
        Ok(data) => B::float_from_data(data, &device),
        Err(e) => {
            eprintln!(
                "kiln: tensor-parallel all-reduce failed on rank {}: {e}",
                group.rank()
            );
            group.abort(1)
        }
    }
}
