//! Gradient utilities over a whole module: the global L2 norm, scaling, summing and
//! `torch.nn.utils.clip_grad_norm_`-style clipping.
//!
//! Burn's own `GradientClipping::Norm` clips each tensor by its own norm; large-model recipes
//! (GPT-3, BERT, apex's LAMB) clip by ONE norm over all parameters, which is what these do. The
//! sum of squares stays on the device and a single scalar is read back per call.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::OptimError;

/// Sums `g²` over the gradients of the module's parameters that `counts` into one on-device
/// scalar tensor.
struct SquaredNorm<'a, F> {
    grads: &'a GradientsParams,
    counts: F,
    total: Option<Tensor<1>>,
}

impl<F: Fn(ParamId) -> bool> ModuleVisitor for SquaredNorm<'_, F> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !(self.counts)(param.id) {
            return;
        }
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let squares = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + squares,
                None => squares,
            });
        }
    }
}

/// Global L2 norm over every parameter's gradient of `module` (the total norm of
/// `torch.nn.utils.clip_grad_norm_`). Parameters without a gradient count as zero.
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    grad_squares(module, grads, |_| true).sqrt()
}

/// The sum of squares of the gradients of the parameters that `counts` (the part of a global
/// norm that one rank of a model-parallel run holds). One value read back.
pub fn grad_squares<M: Module>(
    module: &M,
    grads: &GradientsParams,
    counts: impl Fn(ParamId) -> bool,
) -> f64 {
    let mut visitor = SquaredNorm {
        grads,
        counts,
        total: None,
    };
    module.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |total| total.into_scalar::<f32>() as f64)
}

/// Rewrites every gradient of the module through `f` (rank-generic).
struct MapGrads<'a, F> {
    grads: &'a mut GradientsParams,
    f: F,
}

/// A rank-generic function on one gradient tensor.
trait GradFn {
    fn apply<const D: usize>(&mut self, id: ParamId, grad: Tensor<D>) -> Tensor<D>;
}

impl<F: GradFn> ModuleVisitor for MapGrads<'_, F> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let grad = self.f.apply(param.id, grad);
            self.grads.register(param.id, grad);
        }
    }
}

struct Scale(f64);

impl GradFn for Scale {
    fn apply<const D: usize>(&mut self, _id: ParamId, grad: Tensor<D>) -> Tensor<D> {
        grad.mul_scalar(self.0)
    }
}

/// Multiplies every gradient by `factor` (loss-scale unscaling, micro-batch averaging).
pub fn scale_grads<M: Module>(module: &M, grads: GradientsParams, factor: f64) -> GradientsParams {
    let mut grads = grads;
    if factor != 1.0 {
        module.visit(&mut MapGrads {
            grads: &mut grads,
            f: Scale(factor),
        });
    }
    grads
}

/// Moves every gradient of `other` into the map being visited, adding where both have one.
struct AddInto<'a> {
    sum: &'a mut GradientsParams,
    other: &'a mut GradientsParams,
}

impl ModuleVisitor for AddInto<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(b) = self.other.remove::<D>(param.id) {
            let sum = match self.sum.remove::<D>(param.id) {
                Some(a) => a + b,
                None => b,
            };
            self.sum.register(param.id, sum);
        }
    }
}

/// The sum of two gradient sets of `module` (gradient accumulation). A parameter with a
/// gradient on only one side keeps that gradient.
pub fn add_grads<M: Module>(module: &M, a: GradientsParams, b: GradientsParams) -> GradientsParams {
    let (mut sum, mut other) = (a, b);
    module.visit(&mut AddInto {
        sum: &mut sum,
        other: &mut other,
    });
    sum
}

/// `torch.nn.utils.clip_grad_norm_`: one L2 norm over all gradients; when it exceeds
/// `max_norm`, every gradient is multiplied by `max_norm / (norm + 1e-6)`. Returns the
/// (possibly) clipped gradients and the norm BEFORE clipping (log it: spikes show instability).
///
/// Gradients whose global norm is `<= max_norm` are returned untouched (no multiplication at
/// all, so bit-identical). `max_norm` must be finite and `> 0`. A non-finite norm (an inf or
/// NaN gradient) is returned as is with the gradients untouched: check `norm.is_finite()` and
/// skip the step (what loss-scaling trainers do) instead of spreading NaN into every weight.
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> Result<(GradientsParams, f64), OptimError> {
    crate::error::positive("max_norm", max_norm)?;
    let norm = grad_norm(module, &grads);
    if norm > max_norm {
        // The 1e-6 is torch's: it keeps the factor finite and makes the clipped norm a hair
        // under max_norm.
        let factor = max_norm / (norm + 1e-6);
        Ok((scale_grads(module, grads, factor), norm))
    } else {
        Ok((grads, norm))
    }
}

/// apex/timm LAMB's global clipping: divides every gradient by `max(1, norm / max_norm)`
/// (no `1e-6`, unlike [`clip_grad_norm`]). Returns the gradients and the norm before clipping.
pub fn clip_grad_norm_lamb<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> Result<(GradientsParams, f64), OptimError> {
    crate::error::positive("max_grad_norm", max_norm)?;
    let norm = grad_norm(module, &grads);
    if norm > max_norm {
        Ok((scale_grads(module, grads, max_norm / norm), norm))
    } else {
        Ok((grads, norm))
    }
}
