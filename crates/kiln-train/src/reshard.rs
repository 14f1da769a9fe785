//! Optimizer state between a model cut by tensor or pipeline parallelism and the whole model,
//! so that a checkpoint of any data × pipeline × tensor grid resumes on any other grid and on
//! one process.
//!
//! Checkpoints hold the whole model; a split run's checkpoint holds the whole optimizer state
//! too, in the whole model's layout (one file keyed by parameter id, as an unsplit run writes
//! it). Every entry of a parameter's state is a tensor of the parameter's shape
//! (`{id}.{leaf}`: Adam's two moments, SGD's momentum) or a scalar (`{id}.time`), so a leaf's
//! tensors can stand in for the parameters of a copy of the model: that copy is gathered the
//! way the model is ([`ModelSplit::gather`]: tensor-parallel slices joined, stages sent to rank
//! 0) and cut the way the model is (its `partition`). Nothing here knows a model or an
//! optimizer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::store::bridge;
use burn::store::burn_pack::{Reader, Scalar, Tensor as PackTensor, Writer};
use burn::tensor::{Bytes, Tensor, TensorData};
use kiln_dist::{ModelSplit, ParallelModel, ProcessGroup};

use crate::error::{Result, TrainError};

/// An optimizer state read apart: each leaf's tensors by parameter id, the scalars and the
/// metadata.
#[derive(Default)]
struct State {
    tensors: BTreeMap<String, HashMap<u64, TensorData>>,
    scalars: BTreeMap<String, Scalar>,
    metadata: BTreeMap<String, String>,
}

fn corrupt(what: impl std::fmt::Debug) -> TrainError {
    TrainError::Serialize {
        what: "the optimizer state of a split model",
        reason: format!("{what:?}"),
    }
}

/// The parameter id an entry `{id}.{leaf}` names, and its leaf.
fn split_name(name: &str) -> Result<(u64, &str)> {
    name.split_once('.')
        .and_then(|(id, leaf)| Some((id.parse().ok()?, leaf)))
        .ok_or_else(|| corrupt(format!("entry `{name}` is not `<parameter id>.<field>`")))
}

/// The id in an entry name (scalars and metadata keys alike).
fn id_of(name: &str) -> Option<u64> {
    name.split('.').next()?.parse().ok()
}

fn read(bytes: Vec<u8>) -> Result<State> {
    let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(corrupt)?;
    let mut state = State {
        scalars: reader.scalars().clone(),
        metadata: reader.metadata().clone(),
        ..State::default()
    };
    for tensor in reader.into_tensors().map_err(corrupt)? {
        let (id, leaf) = split_name(&tensor.name)?;
        let leaf = leaf.to_string();
        let data = bridge::into_data(tensor).map_err(corrupt)?;
        state.tensors.entry(leaf).or_default().insert(id, data);
    }
    Ok(state)
}

fn write(
    tensors: Vec<PackTensor>,
    scalars: &BTreeMap<String, Scalar>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut writer = Writer::new(tensors);
    for (key, value) in scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in metadata {
        writer = writer.with_metadata(key, value);
    }
    Ok(writer.into_bytes().map_err(corrupt)?.to_vec())
}

/// A copy of the model whose parameters are one leaf's tensors (zeros where a parameter has
/// none, or where the shapes differ: those are left out again by [`Collect`]).
struct Substitute<'a> {
    values: &'a HashMap<u64, TensorData>,
}

impl ModuleMapper for Substitute<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let found = self.values.get(&param.id.val());
        param.map(|tensor| match found {
            Some(data) if data.shape().as_slice() == tensor.dims().as_slice() => {
                Tensor::from_data(data.clone(), &tensor.device())
            }
            _ => tensor.zeros_like(),
        })
    }
}

/// The `leaf` entries of the parameters in `wanted` that `keep` accepts, from a copy made by
/// [`Substitute`] (a stage's empty placeholders skipped).
struct Collect<'a> {
    leaf: &'a str,
    wanted: &'a BTreeSet<u64>,
    keep: &'a dyn Fn(u64) -> bool,
    out: Vec<PackTensor>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id = param.id.val();
        if param.dims().contains(&0) || !self.wanted.contains(&id) || !(self.keep)(id) {
            return;
        }
        let data = param.val().into_data();
        self.out.push(bridge::from_data(
            data,
            format!("{id}.{}", self.leaf),
            Some(id),
        ));
    }
}

/// The ids of a part's parameters (its placeholders for other stages' left out).
fn held_ids<M: ParallelModel>(part: &M) -> BTreeSet<u64> {
    struct Ids(BTreeSet<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.dims().contains(&0) {
                self.0.insert(param.id.val());
            }
        }
    }
    let mut ids = Ids(BTreeSet::new());
    part.visit(&mut ids);
    ids.0
}

/// The whole model's optimizer state, on world rank 0 (`None` elsewhere), from every rank's
/// state of its part (every rank of `world` calls it; `data` is this rank's data-parallel
/// group, whose ZeRO-1 shards of the part are merged first; `template` is a whole model on
/// world rank 0, as for [`ModelSplit::gather`]).
pub(crate) fn gather_state<M: ParallelModel + Clone>(
    world: &ProcessGroup,
    data: &ProcessGroup,
    split: &ModelSplit,
    part: &M,
    template: Option<&M>,
    state: Vec<u8>,
) -> Result<Option<Vec<u8>>> {
    let state = if data.size() > 1 {
        let shards = data.all_gather_vec(&state)?;
        kiln_optim::merge_state_shards(&shards, None, |_| true).map_err(corrupt)?
    } else {
        state
    };
    let state = read(state)?;
    // Which leaves the parts have, and for which parameters, from every rank.
    let mine: BTreeMap<&String, Vec<u64>> = state
        .tensors
        .iter()
        .map(|(leaf, values)| (leaf, values.keys().copied().collect()))
        .collect();
    let mine = serde_json::to_vec(&mine).map_err(corrupt)?;
    let mut present: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for theirs in world.all_gather_vec(&mine)? {
        let theirs: BTreeMap<String, Vec<u64>> =
            serde_json::from_slice(&theirs).map_err(corrupt)?;
        for (leaf, ids) in theirs {
            present.entry(leaf).or_default().extend(ids);
        }
    }
    // The scalars and metadata (a step count, a rank per parameter) of every part.
    let others = world.all_gather_vec(&write(Vec::new(), &state.scalars, &state.metadata)?)?;
    let keep_all = |_: u64| true;
    let mut tensors = Vec::new();
    let empty = HashMap::new();
    for (leaf, wanted) in &present {
        let values = state.tensors.get(leaf).unwrap_or(&empty);
        let copy = part.clone().map(&mut Substitute { values });
        if let Some(whole) = split.gather(&copy, template.cloned())? {
            let mut collect = Collect {
                leaf,
                wanted,
                keep: &keep_all,
                out: Vec::new(),
            };
            whole.visit(&mut collect);
            tensors.extend(collect.out);
        }
    }
    if !world.is_main() {
        return Ok(None);
    }
    let (mut scalars, mut metadata) = (BTreeMap::new(), BTreeMap::new());
    for bytes in others {
        let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(corrupt)?;
        for (key, value) in reader.scalars() {
            scalars.entry(key.clone()).or_insert(*value);
        }
        for (key, value) in reader.metadata() {
            metadata.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    Ok(Some(write(tensors, &scalars, &metadata)?))
}

/// This rank's part of a whole model's optimizer state (`whole_state`, in the layout of
/// `whole`), for its `part` (`whole` cut by `split`); only the parameters `keep` accepts (the
/// ones this rank steps under ZeRO-1).
pub(crate) fn partition_state<M: ParallelModel + Clone>(
    split: &ModelSplit,
    whole: &M,
    part: &M,
    whole_state: Vec<u8>,
    keep: &dyn Fn(u64) -> bool,
) -> Result<Vec<u8>> {
    let state = read(whole_state)?;
    let mut tensors = Vec::new();
    for (leaf, values) in &state.tensors {
        let wanted: BTreeSet<u64> = values.keys().copied().collect();
        let copy = split.partition(whole.clone().map(&mut Substitute { values }))?;
        let mut collect = Collect {
            leaf,
            wanted: &wanted,
            keep,
            out: Vec::new(),
        };
        copy.visit(&mut collect);
        tensors.extend(collect.out);
    }
    let held = held_ids(part);
    let mine = |key: &String| id_of(key).is_some_and(|id| held.contains(&id) && keep(id));
    let scalars = state
        .scalars
        .iter()
        .filter(|(key, _)| mine(key))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let metadata = state
        .metadata
        .iter()
        .filter(|(key, _)| mine(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write(tensors, &scalars, &metadata)
}
