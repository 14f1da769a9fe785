//! Optimizer state in and out of checkpoints.
//!
//! Hand-written `RecordState` for kiln's optimizer states (Burn's derive only works inside
//! burn-optim), so `ModuleOptimizer::to_record`/`load_record` save and restore them; and
//! [`load_state`], which restores state read from a file only after checking every entry
//! against the model, because Burn's `load_record` panics on some malformed records (a tensor
//! without a parameter id, a rank above 8), steps panic on a moment of the wrong shape, and
//! entries it cannot use are dropped without a word.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{ModuleOptimizer, OptimizerRecord, StateSink, StateSource};
use burn::store::burn_pack::{Reader, Scalar};
use burn::tensor::{Bytes, DType, Device, Tensor};
use kiln_base::limits::Limit;

use crate::error::OptimError;

/// Optimizer steps an Adam or LAMB state may have counted: the bias correction raises the betas
/// to this power as an `i32`.
pub const OPTIMIZER_STEPS: Limit = Limit::new("OPTIMIZER_STEPS", i32::MAX as u64);

/// The scalar Burn keeps per parameter for the rank of its state.
const RANK_KEY: &str = "__rank";

pub(crate) fn push<const D: usize>(out: &mut StateSink, prefix: &str, leaf: &str, t: &Tensor<D>) {
    out.push_tensor(prefix, leaf, t.clone().into_data());
}

pub(crate) fn take<const D: usize>(
    src: &mut StateSource,
    prefix: &str,
    leaf: &str,
    device: &Device,
) -> Option<Tensor<D>> {
    src.take_tensor(prefix, leaf)
        .filter(|data| data.rank() == D)
        .map(|data| Tensor::from_data(data, device))
}

pub(crate) fn push_time(out: &mut StateSink, prefix: &str, time: usize) {
    out.push_scalar(prefix, "time", (time as u64).into());
}

pub(crate) fn take_time(src: &mut StateSource, prefix: &str) -> Option<usize> {
    let scalar = src.take_scalar(prefix, "time")?;
    let time = u64::try_from(scalar).ok()?;
    OPTIMIZER_STEPS
        .check("the optimizer's step count", time)
        .ok()
}

/// Restores `optimizer` (built for `model` with the config that wrote the state) from `bytes`
/// written by `ModuleOptimizer::into_bytes`, as a checkpoint read from disk holds them.
///
/// Every entry is checked before Burn sees it: each tensor belongs to a parameter of `model`
/// (by id, with the same shape and dtype), each scalar to such a parameter (a rank equal to
/// the parameter's, a step count within [`OPTIMIZER_STEPS`]); and after loading, the optimizer
/// must hold exactly what the bytes held, so a state of another optimizer or a partial one is
/// refused rather than silently reinitialized. A subset of the parameters is fine (a ZeRO-1
/// shard, or parameters that have not been stepped yet).
///
/// # Errors
/// [`OptimError::CorruptState`] naming the first entry that does not fit, or
/// [`OptimError::Limit`] for a step count above its ceiling.
pub fn load_state<M: Module>(
    optimizer: ModuleOptimizer,
    bytes: Vec<u8>,
    model: &M,
) -> Result<ModuleOptimizer, OptimError> {
    let params = Params::of(model);
    let contents = Contents::read(bytes.clone())?;
    contents.check_against(&params)?;
    let record = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| OptimError::CorruptState(format!("{e:?}")))?;
    let optimizer = optimizer.load_record(record);
    let kept = optimizer
        .into_bytes()
        .map_err(|e| OptimError::CorruptState(format!("{e:?}")))?;
    if Contents::read(kept.to_vec())? != contents {
        return Err(OptimError::CorruptState(
            "it holds entries this optimizer does not use, or lacks some it needs (a state of another optimizer, or a partial one)".into(),
        ));
    }
    Ok(optimizer)
}

/// The optimizer state of the parameters `keep` accepts, gathered from `shards` (the files of a
/// ZeRO-1 checkpoint, each holding its owner's parameters, or the one file of an unsharded
/// one) into one state: what a run on another number of ranks restores, each rank keeping the
/// parameters it now owns. Entries are keyed by parameter id (`{id}.{leaf}`), so any partition
/// can be rebuilt from any other. A parameter held by two shards is an error (shards never
/// overlap), and so is one held by another shard than `owners` (the checkpoint's owner map,
/// parameter id → shard) gives it to; the result is checked like any state by [`load_state`].
///
/// # Errors
/// [`OptimError::CorruptState`] when a shard does not read, two shards hold one parameter, or
/// a shard holds a parameter the owner map does not give it.
pub fn merge_state_shards(
    shards: &[Vec<u8>],
    owners: Option<&HashMap<u64, usize>>,
    keep: impl Fn(u64) -> bool,
) -> Result<Vec<u8>, OptimError> {
    let check_owner = |id: u64, index: usize| match owners.map(|o| o.get(&id)) {
        Some(owner) if owner != Some(&index) => Err(OptimError::CorruptState(format!(
            "shard {index} holds parameter {id}, which the owner map gives to {}",
            owner.map_or("no shard".to_string(), |o| format!("shard {o}"))
        ))),
        _ => Ok(()),
    };
    let corrupt = |e: &dyn std::fmt::Debug| OptimError::CorruptState(format!("{e:?}"));
    let id_of = |name: &str| {
        name.split_once('.')
            .and_then(|(id, _)| id.parse::<u64>().ok())
    };
    let (mut tensors, mut scalars, mut metadata) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    let mut holder: HashMap<u64, usize> = HashMap::new();
    for (index, bytes) in shards.iter().enumerate() {
        let reader =
            Reader::from_bytes(Bytes::from_bytes_vec(bytes.clone())).map_err(|e| corrupt(&e))?;
        for (name, value) in reader.scalars() {
            let Some(id) = id_of(name) else {
                return Err(OptimError::CorruptState(format!(
                    "scalar `{name}` of shard {index} is not named `<parameter id>.<field>`"
                )));
            };
            if let Some(other) = holder.insert(id, index).filter(|&other| other != index) {
                return Err(OptimError::CorruptState(format!(
                    "parameter {id} is in shards {other} and {index}"
                )));
            }
            check_owner(id, index)?;
            if keep(id) {
                scalars.insert(name.clone(), *value);
            }
        }
        for (key, value) in reader.metadata() {
            if key.parse::<u64>().is_ok_and(&keep) {
                metadata.insert(key.clone(), value.clone());
            }
        }
        for tensor in reader.into_tensors().map_err(|e| corrupt(&e))? {
            let id = tensor.param_id.or_else(|| id_of(&tensor.name));
            let Some(id) = id else {
                return Err(OptimError::CorruptState(format!(
                    "tensor `{}` of shard {index} names no parameter",
                    tensor.name
                )));
            };
            if let Some(other) = holder.insert(id, index).filter(|&other| other != index) {
                return Err(OptimError::CorruptState(format!(
                    "parameter {id} is in shards {other} and {index}"
                )));
            }
            check_owner(id, index)?;
            if keep(id) {
                tensors.push(tensor);
            }
        }
    }
    let mut writer = burn::store::burn_pack::Writer::new(tensors);
    for (key, value) in &scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in &metadata {
        writer = writer.with_metadata(key, value);
    }
    Ok(writer.into_bytes().map_err(|e| corrupt(&e))?.to_vec())
}

/// A parameter's shape and dtype.
type Signature = (Vec<usize>, DType);

/// The parameters of a model: id → (shape, dtype).
struct Params(HashMap<u64, Signature>);

impl Params {
    fn of<M: Module>(model: &M) -> Self {
        struct Collect(HashMap<u64, Signature>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val();
                self.0
                    .insert(param.id.val(), (value.shape().to_vec(), value.dtype()));
            }
        }
        let mut collect = Collect(HashMap::new());
        model.visit(&mut collect);
        Self(collect.0)
    }

    /// The parameter a `{id}.{leaf}` entry belongs to, and the leaf.
    fn owner<'a>(&self, name: &'a str) -> Result<(u64, &'a str, &Signature), OptimError> {
        let bad = |why: &str| OptimError::CorruptState(format!("entry `{name}`: {why}"));
        let (id, leaf) = name
            .split_once('.')
            .ok_or_else(|| bad("not named `<parameter id>.<field>`"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| bad("not named `<parameter id>.<field>`"))?;
        let param = self
            .0
            .get(&id)
            .ok_or_else(|| bad("no parameter of the model has this id"))?;
        Ok((id, leaf, param))
    }
}

/// What a state file holds, without the tensor data: the tensors' names, parameter ids, shapes
/// and dtypes, and the scalars.
#[derive(PartialEq)]
struct Contents {
    tensors: BTreeMap<String, (Option<u64>, Vec<usize>, DType)>,
    scalars: BTreeMap<String, Scalar>,
}

impl Contents {
    fn read(bytes: Vec<u8>) -> Result<Self, OptimError> {
        let corrupt = |e| OptimError::CorruptState(format!("{e:?}"));
        let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(corrupt)?;
        let scalars = reader.scalars().clone();
        let tensors = reader
            .into_tensors()
            .map_err(corrupt)?
            .into_iter()
            .map(|t| (t.name, (t.param_id, t.shape.to_vec(), t.dtype)))
            .collect();
        Ok(Self { tensors, scalars })
    }

    fn check_against(&self, params: &Params) -> Result<(), OptimError> {
        for (name, (param_id, shape, dtype)) in &self.tensors {
            let (id, _, (param_shape, param_dtype)) = params.owner(name)?;
            let bad = |why: String| OptimError::CorruptState(format!("tensor `{name}`: {why}"));
            if *param_id != Some(id) {
                return Err(bad(format!(
                    "its parameter id {param_id:?} is not the one its name says"
                )));
            }
            if shape != param_shape || dtype != param_dtype {
                return Err(bad(format!(
                    "{dtype:?} {shape:?}, the parameter is {param_dtype:?} {param_shape:?}"
                )));
            }
        }
        for (name, value) in &self.scalars {
            let (_, leaf, (param_shape, _)) = params.owner(name)?;
            let bad = |why: String| OptimError::CorruptState(format!("scalar `{name}`: {why}"));
            match leaf {
                RANK_KEY if usize::try_from(*value) != Ok(param_shape.len()) => {
                    return Err(bad(format!(
                        "rank {value:?}, the parameter has rank {}",
                        param_shape.len()
                    )));
                }
                "time" => {
                    let time = u64::try_from(*value)
                        .map_err(|_| bad(format!("{value:?} is not a step count")))?;
                    OPTIMIZER_STEPS.check("the optimizer's step count", time)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
