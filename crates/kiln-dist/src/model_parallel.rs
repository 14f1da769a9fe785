//! Model parallelism as a piece of the loop: a model cut into this rank's part (its stage's
//! blocks, each layer split across the tensor-parallel group), and what the loop needs around
//! it: the tied embedding's gradient summed between the first and last stage, the gradient
//! norm over the whole model, and the whole model gathered again for checkpoints.
//!
//! A model takes part by implementing [`ParallelModel`] (kiln-model does for GPT and both
//! BERTs): how to cut itself, and which of its parameters are split. Everything else is
//! here, in [`ModelSplit`], keyed by [`ParamId`]: a part keeps the ids of the whole model's parameters, so the
//! pieces of one parameter are named alike on every rank and in the whole model.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::communicator::ReduceOp;
use crate::error::{DistError, Result};
use crate::grid::ProcessGrid;
use crate::pipeline::PipelineStage;
use crate::tensor::{from_host, to_host};
use crate::tensor_parallel::TensorParallel;

/// What a rank holds of a model: its pipeline stage's blocks, each split across its
/// tensor-parallel group.
#[derive(Clone, Debug)]
pub struct ModelPart {
    /// The layers' split, when the tensor-parallel size is above 1.
    pub tensor_parallel: Option<TensorParallel>,
    /// This rank's stage (one stage of every block without pipeline parallelism).
    pub stage: PipelineStage,
}

/// How one parameter of a part is laid out over the tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorSplit {
    /// Each rank holds a slice along this dimension (column- and row-parallel weights).
    Dim(usize),
    /// Each rank holds `⌈len/t⌉` of dimension `dim`, the last rank's tail padding (the
    /// vocabulary of [`VocabParallel`](crate::vocab_parallel::VocabParallel)); gathered, the
    /// padding is cut off.
    Padded {
        /// The split dimension.
        dim: usize,
        /// Its whole length.
        len: usize,
    },
    /// Tensor-parallel rank 0 alone holds it (a row-parallel layer's bias).
    FirstRank,
}

/// A model that can be cut into parts for tensor and pipeline parallelism.
///
/// kiln's training loop asks every model for it. A model that is never cut implements it with
/// the defaults (`impl ParallelModel for MyModel {}`): it trains on one process or
/// data-parallel, and asking to cut it is an error that names the method to implement.
pub trait ParallelModel: Module + Sized {
    /// The number of blocks the pipeline stages share; 0 (the default) for a model that cannot
    /// be cut.
    fn num_blocks(&self) -> usize {
        0
    }

    /// This rank's part of the whole model: the blocks of `part.stage`, split across
    /// `part.tensor_parallel`; the embedding only on the first stage, the head only on the
    /// last (a tied embedding on both). Parameters keep their ids.
    fn into_part(self, part: &ModelPart) -> Result<Self> {
        let _ = part;
        Err(uncut())
    }

    /// The parameters of this part that are split across the tensor-parallel group (every
    /// other parameter is the same on every rank of that group).
    fn tensor_splits(&self) -> Vec<(ParamId, TensorSplit)> {
        Vec::new()
    }

    /// The parameters both the first and the last stage hold (a tied embedding): their
    /// gradients are summed between the two.
    fn tied_params(&self) -> Vec<ParamId> {
        Vec::new()
    }
}

/// The error of a model that implements [`ParallelModel`]'s defaults only.
fn uncut() -> DistError {
    DistError::InvalidArgument(
        "tensor or pipeline parallelism needs a model that can be cut into parts: implement ParallelModel::num_blocks and ParallelModel::into_part for it".into(),
    )
}

/// A model split over a [`ProcessGrid`]: this rank's [`ModelPart`], and what the loop needs
/// around it (the tied embedding's gradient, the whole model's gradient norm, the whole model
/// gathered again).
#[derive(Clone, Debug)]
pub struct ModelSplit {
    grid: ProcessGrid,
    part: ModelPart,
    num_blocks: usize,
    /// The stage as the part runs it, with more than one stage: the part holds only its
    /// stage's blocks, its blocks `0..` (`part.stage.blocks` are the whole model's indices).
    part_stage: Option<PipelineStage>,
}

impl ModelSplit {
    /// The part of a model of `num_blocks` blocks that this rank of `grid` holds.
    pub fn new(grid: ProcessGrid, num_blocks: usize) -> Result<Self> {
        if num_blocks == 0 {
            return Err(uncut());
        }
        let stage = PipelineStage::balanced(grid.pipeline().clone(), num_blocks)?;
        let part_stage = (stage.stages() > 1).then(|| PipelineStage {
            group: stage.group.clone(),
            blocks: 0..stage.blocks.len(),
        });
        let part = ModelPart {
            tensor_parallel: (grid.tensor().size() > 1)
                .then(|| TensorParallel::new(grid.tensor().clone())),
            stage,
        };
        Ok(Self {
            grid,
            part,
            num_blocks,
            part_stage,
        })
    }

    /// The grid.
    pub fn grid(&self) -> &ProcessGrid {
        &self.grid
    }

    /// This rank's part.
    pub fn part(&self) -> &ModelPart {
        &self.part
    }

    /// This rank's pipeline stage as its part runs it (the part's blocks are its stage's, from
    /// 0), when the blocks are cut into more than one stage.
    pub fn pipeline_stage(&self) -> Option<&PipelineStage> {
        self.part_stage.as_ref()
    }

    /// Whether this rank reports the loss: one rank per data-parallel replica (the last
    /// stage's tensor-parallel rank 0), so a sum over the world counts each replica once.
    pub fn reports_loss(&self) -> bool {
        self.part.stage.is_last() && self.grid.tensor().rank() == 0
    }

    /// Cuts the whole `model` (the same on every rank) into this rank's part.
    pub fn partition<M: ParallelModel>(&self, model: M) -> Result<M> {
        if model.num_blocks() != self.num_blocks {
            return Err(DistError::InvalidArgument(format!(
                "the model has {} blocks, the grid was set up for {}",
                model.num_blocks(),
                self.num_blocks
            )));
        }
        model.into_part(&self.part)
    }

    /// Sums the tied parameters' gradients between the first and the last stage, so that both
    /// copies take the same step (every rank calls it).
    pub fn sync_tied<M: ParallelModel>(
        &self,
        model: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams> {
        let group = self.grid.embedding();
        if group.size() == 1 {
            return Ok(grads);
        }
        let tied = model.tied_params();
        let mut sum = SumTied {
            ids: &tied,
            grads: &mut grads,
            group,
            error: None,
        };
        model.visit(&mut sum);
        match sum.error {
            Some(e) => Err(e),
            None => Ok(grads),
        }
    }

    /// Which parameters of this rank's part count in the whole model's gradient norm: the
    /// split ones on every tensor-parallel rank, the replicated ones on rank 0 of that group
    /// only, the tied ones on the first stage only.
    pub fn counts_in_norm<M: ParallelModel>(&self, part: &M) -> impl Fn(ParamId) -> bool + use<M> {
        let tensor_rank0 = self.grid.tensor().rank() == 0;
        let later_stage = !self.part.stage.is_first();
        let split: Vec<ParamId> = part.tensor_splits().into_iter().map(|(id, _)| id).collect();
        let tied = part.tied_params();
        move |id| !(later_stage && tied.contains(&id)) && (tensor_rank0 || split.contains(&id))
    }

    /// The whole model's gradient norm from this rank's sum of squares (of the parameters that
    /// [count](Self::counts_in_norm)); the same on every rank.
    pub fn global_norm(&self, local_squares: f64) -> Result<f64> {
        let mut total = [local_squares];
        self.grid
            .world()
            .all_reduce_f64(&mut total, ReduceOp::Sum)?;
        // Every data-parallel replica holds the same gradients after their all-reduce.
        Ok((total[0] / self.grid.data().size() as f64).sqrt())
    }

    /// The whole model again, on world rank 0: every rank calls it with its part; rank 0
    /// passes a whole model of the same config (`template`, whose parameters are overwritten)
    /// and gets it back filled, the others get `None`. Only the first data-parallel replica
    /// sends; the tensor-parallel slices are joined on each stage, and the stages sent to
    /// rank 0.
    pub fn gather<M: ParallelModel>(&self, part: &M, template: Option<M>) -> Result<Option<M>> {
        if self.grid.data().rank() != 0 {
            return Ok(None);
        }
        // Join the tensor-parallel slices (every rank of the group, in the same order).
        let tensor = self.grid.tensor();
        let mut join = Join {
            splits: part.tensor_splits().into_iter().collect(),
            group: tensor,
            out: Vec::new(),
            error: None,
        };
        part.visit(&mut join);
        if let Some(e) = join.error {
            return Err(e);
        }
        if tensor.rank() != 0 {
            return Ok(None);
        }
        // The stages to stage 0.
        let pipeline = self.grid.pipeline();
        if pipeline.rank() != 0 {
            pipeline.send_vec(&encode(&join.out), 0, GATHER_TAG)?;
            return Ok(None);
        }
        let mut received: HashMap<ParamId, Named> =
            join.out.into_iter().map(|n| (n.id, n)).collect();
        for stage in 1..pipeline.size() {
            for named in decode(&pipeline.recv_vec(stage, GATHER_TAG)?)? {
                received.insert(named.id, named);
            }
        }
        let template = template.ok_or_else(|| {
            DistError::InvalidArgument(
                "rank 0 gathers the whole model into a template, and was given none".into(),
            )
        })?;
        let mut fill = Fill {
            received,
            error: None,
        };
        let model = template.map(&mut fill);
        if let Some(e) = fill.error {
            return Err(e);
        }
        if let Some(extra) = fill.received.keys().next() {
            return Err(DistError::InvalidArgument(format!(
                "a stage sent parameter {extra:?}, which the whole model does not have"
            )));
        }
        Ok(Some(model))
    }
}

/// The tag of the gathered parameters sent to stage 0.
const GATHER_TAG: u16 = 0x6a7e;

/// One parameter on the host.
struct Named {
    id: ParamId,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn host<const D: usize>(id: ParamId, tensor: Tensor<D>) -> Result<Named> {
    let shape = tensor.dims().to_vec();
    Ok(Named {
        id,
        shape,
        values: to_host(tensor)?,
    })
}

/// Sums the tied gradients over the embedding group; a stage without one adds zeros.
struct SumTied<'a> {
    ids: &'a [ParamId],
    grads: &'a mut GradientsParams,
    group: &'a crate::ProcessGroup,
    error: Option<DistError>,
}

impl ModuleVisitor for SumTied<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() || !self.ids.contains(&param.id) {
            return;
        }
        let grad = self
            .grads
            .remove::<D>(param.id)
            .unwrap_or_else(|| param.val().inner().zeros_like());
        match self.group.all_reduce_tensor(grad, ReduceOp::Sum) {
            Ok(sum) => self.grads.register(param.id, sum),
            Err(e) => self.error = Some(e),
        }
    }
}

/// Every parameter of a part on the host, its tensor-parallel slices joined (kept on
/// tensor-parallel rank 0).
struct Join<'a> {
    splits: HashMap<ParamId, TensorSplit>,
    group: &'a crate::ProcessGroup,
    out: Vec<Named>,
    error: Option<DistError>,
}

impl ModuleVisitor for Join<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // A stage's placeholder for what another stage holds is empty.
        if self.error.is_some() || param.dims().contains(&0) {
            return;
        }
        let value = param.val().detach();
        let joined = match self.splits.get(&param.id) {
            Some(TensorSplit::Dim(dim)) => self
                .group
                .all_gather_tensor(value, *dim)
                .and_then(|whole| host(param.id, whole)),
            Some(&TensorSplit::Padded { dim, len }) => self
                .group
                .all_gather_tensor(value, dim)
                .and_then(|whole| host(param.id, whole.narrow(dim, 0, len))),
            Some(TensorSplit::FirstRank) | None => host(param.id, value),
        };
        match joined {
            Ok(named) if self.group.rank() == 0 => self.out.push(named),
            Ok(_) => {}
            Err(e) => self.error = Some(e),
        }
    }
}

/// Overwrites a whole model's parameters with the gathered ones.
struct Fill {
    received: HashMap<ParamId, Named>,
    error: Option<DistError>,
}

impl ModuleMapper for Fill {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(mut named) = self.received.remove(&param.id) else {
            self.error.get_or_insert(DistError::InvalidArgument(format!(
                "no stage holds parameter {:?} of the whole model",
                param.id
            )));
            return param;
        };
        let id = param.id;
        param.map(|tensor| {
            if tensor.dims().as_slice() != named.shape.as_slice() {
                self.error.get_or_insert(DistError::InvalidArgument(format!(
                    "parameter {id:?}: the stages hold {:?}, the whole model {:?}",
                    named.shape,
                    tensor.dims()
                )));
                return tensor;
            }
            let filled = from_host(
                std::mem::take(&mut named.values),
                &named.shape,
                tensor.dtype(),
                &tensor,
            );
            if tensor.is_require_grad() {
                filled.require_grad()
            } else {
                filled
            }
        })
    }
}

/// `[count]` then per parameter `[id, rank, dims..., values...]`, little-endian.
fn encode(params: &[Named]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((params.len() as u64).to_le_bytes());
    for p in params {
        out.extend(p.id.val().to_le_bytes());
        out.extend((p.shape.len() as u64).to_le_bytes());
        for &d in &p.shape {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(bytemuck::cast_slice::<f32, u8>(&p.values));
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<Named>> {
    let bad = || DistError::InvalidArgument("a stage sent a malformed parameter list".into());
    let mut at = 0usize;
    let mut next = |n: usize| -> Result<&[u8]> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(bad)?;
        let slice = &bytes[at..end];
        at = end;
        Ok(slice)
    };
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize;
    let count = word(next(8)?);
    let mut params = Vec::new();
    for _ in 0..count {
        let id = ParamId::from(word(next(8)?) as u64);
        let rank = word(next(8)?);
        if rank > 8 {
            return Err(bad());
        }
        let shape = (0..rank)
            .map(|_| next(8).map(word))
            .collect::<Result<Vec<_>>>()?;
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(bad)?;
        let values = next(len)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        params.push(Named { id, shape, values });
    }
    Ok(params)
}
