//! Checkpoints for exact resume, written atomically, the last K kept.
//!
//! A checkpoint is a folder `step-00000100/` holding the model (`model.bpk`), the optimizer
//! state (`optimizer.bpk`), the schedule (`scheduler.bpk`), the loop's own state
//! (`trainer.json`: step, data position, loss scaler, early stopping), the run's config
//! (`run.json`), the best weights so far when early stopping keeps them (`best.bpk`) and,
//! written last, a `manifest.json` with the length and SHA-256 of each file. The folder is written under a
//! temporary name, every file is fsynced, and only then is it renamed into place, so a run
//! killed at any moment leaves either a complete checkpoint or none. On resume, a folder whose
//! files do not match their manifest is reported by name and the previous one is used.
//!
//! A model with frozen parameters (a LoRA run's base) is checkpointed by what trains: the
//! adapters and their optimizer state. The frozen part is the run's starting point, rebuilt by
//! the resuming program (from the same base checkpoint); the manifest records its SHA-256
//! (`frozen_sha256`) and resuming onto another base is an error, not a silently different run.
//!
//! Every byte read back is untrusted: the manifest and the JSON files are read with a ceiling
//! ([`limits`]), the manifest may only name the files a checkpoint has, each
//! file's length is checked before it is read, and the optimizer state is checked against the
//! model before it is loaded. The manifest also names the run that wrote the checkpoint (its
//! run id): a run only ever prunes or replaces its own checkpoints.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::tensor::{Bytes, Tensor};
use kiln_base::store::sync_dir;
use kiln_dist::ProcessGroup;
use kiln_dist::flat::Layout;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data_order::DataPosition;
use crate::early_stopping::EarlyStopping;
use crate::error::{Result, TrainError};
use crate::evaluate::EvalMetrics;
use crate::limits;
use crate::loss_scale::LossScaler;
use crate::param_ids::stable_param_ids;
use crate::run_lock::is_run_id;

const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optimizer.bpk";
const SCHEDULER: &str = "scheduler.bpk";
const TRAINER: &str = "trainer.json";
const RUN: &str = "run.json";
const BEST: &str = "best.bpk";
const MANIFEST: &str = "manifest.json";
const PREFIX: &str = "step-";

/// The loop's own state: everything besides model, optimizer and schedule that a resumed run
/// needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Position in the training data.
    pub position: DataPosition,
    /// Loss-carrying units (tokens) trained on.
    pub units_seen: u64,
    /// Steps skipped for a non-finite loss or an f16 overflow.
    pub skipped_steps: usize,
    /// The dynamic loss scaler, in f16 runs.
    pub scaler: Option<LossScaler>,
    /// The early-stopping tracker, when early stopping is on.
    pub early_stopping: Option<EarlyStopping>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The evaluation of the best model early stopping has kept, and its step.
    pub best_eval: Option<(usize, EvalMetrics)>,
    /// The number of data-parallel ranks that trained (replicas of the model; in checkpoints of
    /// a split model from before its optimizer state was gathered whole, every rank).
    #[serde(default = "one")]
    pub world_size: usize,
    /// The number of training items the run reads (the data position counts in them).
    pub train_items: usize,
    /// The fingerprint of the training data ([`BatchSource::with_fingerprint`](crate::BatchSource::with_fingerprint)),
    /// when the program gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_data: Option<String>,
    /// The fingerprint of the held-out data, when the program gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    step: usize,
    /// The run that wrote the checkpoint.
    run_id: String,
    /// How many files the optimizer state is split into: 1, or the world size of a ZeRO-1
    /// run (`optimizer-rank{r}.bpk`).
    #[serde(default = "one")]
    optimizer_shards: usize,
    /// The ZeRO owner map: `(parameter id, shard)` for every trainable parameter, when the
    /// optimizer state is sharded by parameter (absent in checkpoints from before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer_owners: Option<Vec<(u64, usize)>>,
    /// The SHA-256 of the frozen parameters the model was trained over (its file leaves them
    /// out); absent when nothing is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen_sha256: Option<String>,
    files: Vec<ManifestEntry>,
}

fn one() -> usize {
    1
}

/// The optimizer state file of `rank` when the state is split into `shards` files.
fn optimizer_file(rank: usize, shards: usize) -> String {
    if shards == 1 {
        OPTIMIZER.to_string()
    } else {
        format!("optimizer-rank{rank}.bpk")
    }
}

/// What one checkpoint holds.
pub struct Snapshot<'a, M> {
    /// The model.
    pub model: &'a M,
    /// The best weights early stopping keeps.
    pub best: Option<&'a M>,
    /// This rank's optimizer state as bytes ([`optimizer_bytes`]): its shard under ZeRO-1, the
    /// whole model's (gathered on rank 0) when the model is split.
    pub optimizer: &'a [u8],
    /// The schedule.
    pub scheduler: &'a dyn LrScheduler,
    /// The loop state.
    pub state: &'a TrainerState,
    /// The run's config.
    pub run: &'a serde_json::Value,
    /// The run's id.
    pub run_id: &'a str,
    /// The SHA-256 of the model's frozen parameters ([`frozen_fingerprint`]), when some are.
    pub frozen_sha256: Option<&'a str>,
    /// The ZeRO owner map (parameter id → the rank whose optimizer file holds its state), when
    /// the optimizer state is sharded by parameter.
    pub optimizer_owners: Option<&'a [(u64, usize)]>,
}

#[derive(Serialize, Deserialize)]
struct ManifestEntry {
    name: String,
    len: u64,
    sha256: String,
}

/// A checkpoint read back from disk, checked against its manifest.
pub struct Checkpoint {
    /// Its folder.
    pub path: PathBuf,
    /// The loop state.
    pub state: TrainerState,
    /// The config of the run that wrote it (JSON).
    pub run: serde_json::Value,
    /// The id of the run that wrote it.
    pub run_id: String,
    /// The number of optimizer state files (the world size of a ZeRO-1 run, else 1).
    pub optimizer_shards: usize,
    /// The ZeRO owner map the shards were written with (parameter id → shard), when recorded.
    pub optimizer_owners: Option<std::collections::HashMap<u64, usize>>,
    /// The SHA-256 of the frozen parameters the model was trained over, when some were.
    pub frozen_sha256: Option<String>,
    model: Vec<u8>,
    optimizer: Vec<Vec<u8>>,
    scheduler: Vec<u8>,
    best: Option<Vec<u8>>,
}

impl Checkpoint {
    /// Loads the weights into `model` (built with the same config), with stable parameter ids.
    pub fn load_model<M: Module>(&self, model: M) -> Result<M> {
        load_weights(model, self.model.clone(), &self.path.join(MODEL))
    }

    /// Loads the best weights kept by early stopping into `model`, if the checkpoint has them.
    pub fn load_best<M: Module>(&self, model: M) -> Result<Option<M>> {
        self.best
            .as_ref()
            .map(|bytes| load_weights(model, bytes.clone(), &self.path.join(BEST)))
            .transpose()
    }

    /// Restores an optimizer built with the same config for `model` (whose parameters the state
    /// is checked against): `rank`'s shard of the state when the checkpoint holds one per rank.
    pub fn load_optimizer<M: Module>(
        &self,
        optimizer: ModuleOptimizer,
        rank: usize,
        model: &M,
    ) -> Result<ModuleOptimizer> {
        let shard = if self.optimizer_shards == 1 { 0 } else { rank };
        let path = self.path.join(optimizer_file(shard, self.optimizer_shards));
        let bytes = self
            .optimizer
            .get(shard)
            .ok_or_else(|| TrainError::corrupt(&path, "no such optimizer shard"))?;
        kiln_optim::load_state(optimizer, bytes.clone(), model)
            .map_err(|e| TrainError::corrupt(&path, e))
    }

    /// Restores the optimizer state of the parameters `steps` accepts from every shard of the
    /// checkpoint, whatever the number of ranks and ZeRO setting that wrote it
    /// ([`kiln_optim::merge_state_shards`]): how a run resumed on another number of ranks gets
    /// each rank's part.
    pub fn load_optimizer_resharded<M: Module>(
        &self,
        optimizer: ModuleOptimizer,
        model: &M,
        steps: impl Fn(u64) -> bool,
    ) -> Result<ModuleOptimizer> {
        let path = self.path.join(optimizer_file(0, self.optimizer_shards));
        let merged =
            kiln_optim::merge_state_shards(&self.optimizer, self.optimizer_owners.as_ref(), steps)
                .map_err(|e| TrainError::corrupt(&path, e))?;
        kiln_optim::load_state(optimizer, merged, model).map_err(|e| TrainError::corrupt(&path, e))
    }

    /// The whole optimizer state in one: the file itself, or every shard merged (checked
    /// against the owner map when the manifest records one).
    pub fn whole_optimizer_state(&self) -> Result<Vec<u8>> {
        let path = self.path.join(optimizer_file(0, self.optimizer_shards));
        match self.optimizer.as_slice() {
            [one] => Ok(one.clone()),
            shards => {
                kiln_optim::merge_state_shards(shards, self.optimizer_owners.as_ref(), |_| true)
                    .map_err(|e| TrainError::corrupt(&path, e))
            }
        }
    }

    /// Restores an optimizer from state bytes derived from this checkpoint's (a split model's
    /// part of it), checked against `model` like any state.
    pub fn load_optimizer_state<M: Module>(
        &self,
        optimizer: ModuleOptimizer,
        state: Vec<u8>,
        model: &M,
    ) -> Result<ModuleOptimizer> {
        let path = self.path.join(optimizer_file(0, self.optimizer_shards));
        kiln_optim::load_state(optimizer, state, model).map_err(|e| TrainError::corrupt(&path, e))
    }

    /// Restores a schedule built with the same config. Its step must be the checkpoint's, and
    /// the schedule must hold exactly what the file holds.
    pub fn load_scheduler(&self, scheduler: &mut dyn LrScheduler) -> Result<()> {
        let path = self.path.join(SCHEDULER);
        let record = LrSchedulerRecord::from_bytes(Bytes::from_bytes_vec(self.scheduler.clone()))
            .map_err(|e| TrainError::corrupt(&path, format!("{e:?}")))?;
        let step = record.scalar::<u64>("step");
        if step != Some(self.state.step as u64) {
            return Err(TrainError::corrupt(
                &path,
                format!(
                    "the schedule is at step {step:?}, the checkpoint at {}",
                    self.state.step
                ),
            ));
        }
        scheduler.load_record(record);
        let kept = scheduler
            .to_record()
            .into_bytes()
            .map_err(|e| TrainError::corrupt(&path, format!("{e:?}")))?;
        if kept.to_vec() != self.scheduler {
            return Err(TrainError::corrupt(
                &path,
                "it holds entries this schedule does not use",
            ));
        }
        Ok(())
    }
}

/// The optimizer's state as bytes.
pub fn optimizer_bytes(optimizer: &ModuleOptimizer) -> Result<Vec<u8>> {
    Ok(optimizer
        .into_bytes()
        .map_err(|e| TrainError::Serialize {
            what: "the optimizer state",
            reason: format!("{e:?}"),
        })?
        .to_vec())
}

/// Model weights as burnpack bytes: the parameters that train (all of them, unless some are
/// frozen).
pub fn model_bytes<M: Module>(model: &M) -> Result<Vec<u8>> {
    let path = Path::new(MODEL);
    let frozen = Layout::frozen(model);
    if frozen.slots.is_empty() {
        return Ok(kiln_base::store::weights_to_bytes(model, path)?);
    }
    let trainable: Vec<String> = Layout::trainable(model)
        .slots
        .into_iter()
        .map(|s| s.path)
        .collect();
    Ok(kiln_base::store::some_weights_to_bytes(
        model, &trainable, path,
    )?)
}

/// Loads burnpack `bytes` (read from `path`, named in errors) into `model`, with stable
/// parameter ids: every parameter, or every one that trains when some are frozen (those keep
/// the values `model` has).
pub fn load_weights<M: Module>(model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let frozen: Vec<String> = Layout::frozen(&model)
        .slots
        .into_iter()
        .map(|s| s.path)
        .collect();
    let model = if frozen.is_empty() {
        kiln_base::store::weights_from_bytes(model, bytes, path)
    } else {
        kiln_base::store::some_weights_from_bytes(model, bytes, &frozen, path)
    }
    .map_err(|e| TrainError::corrupt(path, e))?;
    Ok(stable_param_ids(model))
}

/// The SHA-256 of `model`'s frozen parameters (each one's path, shape and f32 values, in
/// visiting order), or `None` when every parameter trains: what ties a checkpoint that leaves
/// them out to the base it was trained over. Reads one parameter at a time.
pub fn frozen_fingerprint<M: Module>(model: &M) -> Result<Option<String>> {
    struct Hash<'a> {
        layout: &'a Layout,
        index: usize,
        sha: Sha256,
        error: Option<String>,
    }
    impl ModuleVisitor for Hash<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let index = self.index;
            self.index += 1;
            let Some(Some(at)) = self.layout.by_visit.get(index) else {
                return;
            };
            let slot = &self.layout.slots[*at];
            match kiln_dist::tensor::to_host(param.val()) {
                Ok(values) => {
                    self.sha.update(slot.path.as_bytes());
                    self.sha.update(format!("{:?}", slot.shape).as_bytes());
                    for v in values {
                        self.sha.update(v.to_le_bytes());
                    }
                }
                Err(e) => self.error = Some(e.to_string()),
            }
        }
    }
    let layout = Layout::frozen(model);
    if layout.slots.is_empty() {
        return Ok(None);
    }
    let mut hash = Hash {
        layout: &layout,
        index: 0,
        sha: Sha256::new(),
        error: None,
    };
    model.visit(&mut hash);
    if let Some(reason) = hash.error {
        return Err(TrainError::Serialize {
            what: "the frozen parameters",
            reason,
        });
    }
    let digest = hash.sha.finalize();
    Ok(Some(digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Writes and finds checkpoints in one folder.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// Checkpoints in `dir`, keeping the newest `keep` (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint atomically and removes the ones beyond the newest `keep`. Called by
    /// every rank of `group`: rank 0 writes the checkpoint, and with `shard_optimizer` (ZeRO-1)
    /// every rank writes its own optimizer state into it first; the folder appears, renamed
    /// into place, only when every file is on disk (a shared file system across machines).
    pub fn save<M: Module>(
        &self,
        snapshot: Snapshot<'_, M>,
        group: &ProcessGroup,
        shard_optimizer: bool,
    ) -> Result<Option<PathBuf>> {
        let name = format!("{PREFIX}{:08}", snapshot.state.step);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let final_path = self.dir.join(&name);
        let shards = if shard_optimizer { group.size() } else { 1 };
        if group.is_main() {
            fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
            if fs::symlink_metadata(&tmp).is_ok() {
                // An interrupted save's leftover is removed; anything else under that name is
                // not kiln's to delete.
                if !is_unfinished_checkpoint(&tmp) {
                    return Err(TrainError::Occupied {
                        dir: self.dir.clone(),
                        found: format!("{}, which kiln did not write", tmp.display()),
                    });
                }
                fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
            }
            fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        group.barrier()?;

        // The optimizer shards: each rank writes its own and reports its entry.
        let mut entries = Vec::new();
        if shards > 1 || group.is_main() {
            let bytes = snapshot.optimizer;
            let file = optimizer_file(group.rank(), shards);
            write_synced(&tmp.join(&file), bytes)?;
            entries.push(ManifestEntry {
                name: file,
                len: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            });
        }
        if shards > 1 {
            let mine = serde_json::to_vec(&entries).expect("entries serialize");
            entries = Vec::new();
            for theirs in group.all_gather_vec(&mine)? {
                let theirs: Vec<ManifestEntry> = serde_json::from_slice(&theirs).map_err(|e| {
                    TrainError::corrupt(&tmp, format!("a rank's optimizer shard entry: {e}"))
                })?;
                entries.extend(theirs);
            }
        }

        let written = if group.is_main() {
            Some(self.finish(&snapshot, &tmp, &final_path, shards, entries)?)
        } else {
            None
        };
        group.barrier()?;
        Ok(written)
    }

    /// Rank 0's part: the other files, the manifest, the rename, the pruning.
    fn finish<M: Module>(
        &self,
        snapshot: &Snapshot<'_, M>,
        tmp: &Path,
        final_path: &Path,
        optimizer_shards: usize,
        mut entries: Vec<ManifestEntry>,
    ) -> Result<PathBuf> {
        let scheduler_bytes =
            snapshot
                .scheduler
                .to_record()
                .into_bytes()
                .map_err(|e| TrainError::Serialize {
                    what: "the schedule",
                    reason: format!("{e:?}"),
                })?;
        let trainer =
            serde_json::to_vec_pretty(snapshot.state).map_err(|e| TrainError::Serialize {
                what: "the loop state",
                reason: e.to_string(),
            })?;
        let run = serde_json::to_vec_pretty(snapshot.run).expect("JSON values serialize");
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (MODEL, model_bytes(snapshot.model)?),
            (SCHEDULER, scheduler_bytes.to_vec()),
            (TRAINER, trainer),
            (RUN, run),
        ];
        if let Some(best) = snapshot.best {
            files.push((BEST, model_bytes(best)?));
        }
        for (file, bytes) in &files {
            write_synced(&tmp.join(file), bytes)?;
            entries.push(ManifestEntry {
                name: file.to_string(),
                len: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            });
        }
        let manifest = Manifest {
            step: snapshot.state.step,
            run_id: snapshot.run_id.to_string(),
            optimizer_shards,
            optimizer_owners: snapshot.optimizer_owners.map(<[_]>::to_vec),
            frozen_sha256: snapshot.frozen_sha256.map(str::to_string),
            files: entries,
        };
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_synced(&tmp.join(MANIFEST), &manifest)?;
        sync_dir(tmp);

        if fs::symlink_metadata(final_path).is_ok() {
            // A folder of this step from this run (resumed from an older checkpoint) is
            // replaced; another run's, or a folder kiln did not write, never is.
            match run_id_of(final_path) {
                Some(id) if id == snapshot.run_id => {
                    fs::remove_dir_all(final_path).map_err(|e| TrainError::io(final_path, e))?
                }
                // What an interrupted prune left (checkpoint files, no manifest).
                None if is_unfinished_checkpoint(final_path) => {
                    fs::remove_dir_all(final_path).map_err(|e| TrainError::io(final_path, e))?
                }
                other => {
                    return Err(TrainError::Occupied {
                        dir: self.dir.clone(),
                        found: match other {
                            Some(other) => format!("{} of run {other}", final_path.display()),
                            None => format!(
                                "{}, which is not a checkpoint kiln wrote (no readable manifest)",
                                final_path.display()
                            ),
                        },
                    });
                }
            }
        }
        fs::rename(tmp, final_path).map_err(|e| TrainError::io(final_path, e))?;
        sync_dir(&self.dir);
        self.prune(snapshot.run_id)?;
        Ok(final_path.to_path_buf())
    }

    /// Checkpoint folders, newest first.
    pub fn list(&self) -> Result<Vec<(usize, PathBuf)>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| TrainError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| TrainError::io(&self.dir, e))?;
            let name = entry.file_name();
            if let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
            {
                found.push((step, entry.path()));
            }
        }
        found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
        Ok(found)
    }

    /// The newest checkpoint that passes its manifest, and the reasons the newer ones were
    /// rejected. `Ok(None)` when the folder holds no checkpoint at all; an error when it holds
    /// some but none is usable.
    pub fn latest(&self) -> Result<Option<(Checkpoint, Vec<String>)>> {
        let candidates = self.list()?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let mut skipped = Vec::new();
        for (step, path) in candidates {
            match read_checkpoint(&path) {
                // The folder name only orders the candidates; the step is the checkpoint's own.
                Ok(checkpoint) if checkpoint.state.step != step => skipped.push(format!(
                    "{} holds step {}, not the step its name says",
                    path.display(),
                    checkpoint.state.step
                )),
                Ok(checkpoint) => return Ok(Some((checkpoint, skipped))),
                Err(e) => skipped.push(e.to_string()),
            }
        }
        Err(TrainError::NoCheckpoint {
            dir: self.dir.clone(),
            skipped,
        })
    }

    /// Removes this run's checkpoints beyond the newest `keep`; other runs' (and folders whose
    /// run cannot be read) are left alone.
    fn prune(&self, run_id: &str) -> Result<()> {
        let own = self
            .list()?
            .into_iter()
            .filter(|(_, path)| run_id_of(path).as_deref() == Some(run_id));
        for (_, path) in own.skip(self.keep) {
            fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
        }
        Ok(())
    }

    /// What a new run would find here: a description of the checkpoint folders (with their
    /// runs), or `None` when there are none.
    pub fn occupants(&self) -> Result<Option<String>> {
        let found = self.list()?;
        let Some((_, newest)) = found.first() else {
            return Ok(None);
        };
        let runs: BTreeSet<String> = found
            .iter()
            .map(|(_, path)| run_id_of(path).unwrap_or_else(|| "unknown".into()))
            .collect();
        Ok(Some(format!(
            "{} checkpoint folder(s), the newest {}, of run(s) {}",
            found.len(),
            newest.display(),
            runs.into_iter().collect::<Vec<_>>().join(", ")
        )))
    }

    /// The folders [`clear`](Self::clear) would delete: the checkpoints kiln wrote here (a
    /// `step-N` folder with a readable manifest naming a run) and the leftovers of interrupted
    /// saves and prunes (a `.step-N.tmp` or `step-N` folder holding only checkpoint files). Recognised by content,
    /// never by name alone: a user's `step-notes/` or `step-00000099-backup/` is not kiln's.
    pub fn ours(&self) -> Result<Vec<PathBuf>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| TrainError::io(&self.dir, e))? {
            let entry = entry.map_err(|e| TrainError::io(&self.dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let step_name = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            // A checkpoint, or what a prune interrupted by a kill left of one (its manifest
            // may be gone first): checkpoint files and nothing else.
            let checkpoint = name.strip_prefix(PREFIX).is_some_and(step_name)
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && (run_id_of(&path).is_some() || is_unfinished_checkpoint(&path));
            let unfinished = name
                .strip_prefix(&format!(".{PREFIX}"))
                .and_then(|n| n.strip_suffix(".tmp"))
                .is_some_and(step_name)
                && is_unfinished_checkpoint(&path);
            if checkpoint || unfinished {
                found.push(path);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Deletes the folders [`ours`](Self::ours) lists, for a run that replaces what was here
    /// (`TrainerConfig::overwrite`), and returns them; everything else is left alone.
    pub fn clear(&self) -> Result<Vec<PathBuf>> {
        let ours = self.ours()?;
        for path in &ours {
            fs::remove_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        }
        sync_dir(&self.dir);
        Ok(ours)
    }
}

/// Whether `path` is a folder (not a link) holding nothing but checkpoint files: what an
/// interrupted save leaves.
fn is_unfinished_checkpoint(path: &Path) -> bool {
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let Ok(entries) = fs::read_dir(path) else {
        return false;
    };
    let checkpoint_file = |name: &str| {
        [MODEL, OPTIMIZER, SCHEDULER, TRAINER, RUN, BEST, MANIFEST].contains(&name)
            || (name.starts_with("optimizer-rank") && name.ends_with(".bpk"))
    };
    is_dir
        && entries.into_iter().all(|entry| {
            entry.is_ok_and(|e| {
                e.file_type().is_ok_and(|t| t.is_file())
                    && checkpoint_file(&e.file_name().to_string_lossy())
            })
        })
}

/// The run id a checkpoint folder's manifest names, if it can be read.
fn run_id_of(path: &Path) -> Option<String> {
    let bytes = read_bounded(&path.join(MANIFEST)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
    is_run_id(&manifest.run_id).then_some(manifest.run_id)
}

/// Reads a checkpoint folder and checks every file against the manifest. The manifest may only
/// name the files a checkpoint has, each once; every file must have the length and SHA-256 the
/// manifest gives (the length is checked before the file is read).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let manifest_path = path.join(MANIFEST);
    let manifest = read_bounded(&manifest_path)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest).map_err(|e| TrainError::corrupt(&manifest_path, e))?;
    let bad_manifest = |reason: String| TrainError::corrupt(&manifest_path, reason);
    if !is_run_id(&manifest.run_id) {
        return Err(bad_manifest(format!(
            "the run id {:?} is not one",
            manifest.run_id
        )));
    }
    let shards = limits::OPTIMIZER_SHARDS.check(
        "the number of optimizer shards in a manifest",
        manifest.optimizer_shards as u64,
    )?;
    if shards == 0 {
        return Err(bad_manifest("0 optimizer shards".into()));
    }
    let mut required: BTreeSet<String> = [MODEL, SCHEDULER, TRAINER, RUN]
        .iter()
        .map(|name| name.to_string())
        .chain((0..shards).map(|rank| optimizer_file(rank, shards)))
        .collect();
    let mut contents = std::collections::HashMap::new();
    for entry in &manifest.files {
        // Only known names reach the file system: nothing outside the folder is read.
        if !(required.remove(&entry.name) || (entry.name == BEST && !contents.contains_key(BEST))) {
            return Err(bad_manifest(format!(
                "it lists {:?}, which is not a checkpoint file or is listed twice",
                entry.name
            )));
        }
        let file = path.join(&entry.name);
        if [TRAINER, RUN].contains(&entry.name.as_str()) {
            limits::TEXT_FILE_BYTES.check(&format!("{} bytes", entry.name), entry.len)?;
        }
        let bytes = read_exact_len(&file, entry.len)?;
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(TrainError::corrupt(
                &file,
                "SHA-256 does not match the manifest",
            ));
        }
        contents.insert(entry.name.clone(), bytes);
    }
    if let Some(missing) = required.first() {
        return Err(bad_manifest(format!("{missing} is not listed")));
    }
    let mut take = |name: &str| contents.remove(name).unwrap_or_default();
    let run =
        serde_json::from_slice(&take(RUN)).map_err(|e| TrainError::corrupt(path.join(RUN), e))?;
    let state: TrainerState = serde_json::from_slice(&take(TRAINER))
        .map_err(|e| TrainError::corrupt(path.join(TRAINER), e))?;
    if state.step != manifest.step {
        return Err(TrainError::corrupt(
            path.join(TRAINER),
            format!(
                "step {} but the manifest says {}",
                state.step, manifest.step
            ),
        ));
    }
    let optimizer = (0..shards)
        .map(|rank| take(&optimizer_file(rank, shards)))
        .collect();
    let optimizer_owners = match manifest.optimizer_owners {
        None => None,
        Some(pairs) => {
            let mut owners = std::collections::HashMap::with_capacity(pairs.len());
            for (id, shard) in pairs {
                if shard >= shards {
                    return Err(bad_manifest(format!(
                        "its owner map gives parameter {id} to shard {shard} of {shards}"
                    )));
                }
                if owners.insert(id, shard).is_some() {
                    return Err(bad_manifest(format!(
                        "its owner map lists parameter {id} twice"
                    )));
                }
            }
            Some(owners)
        }
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state,
        run,
        run_id: manifest.run_id,
        optimizer_shards: shards,
        optimizer_owners,
        frozen_sha256: manifest.frozen_sha256,
        model: take(MODEL),
        optimizer,
        scheduler: take(SCHEDULER),
        best: contents.remove(BEST),
    })
}

/// Reads a small JSON file of a checkpoint, refusing one above
/// [`TEXT_FILE_BYTES`](limits::TEXT_FILE_BYTES) without reading it whole.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    Ok(kiln_base::limits::read_bounded(
        path,
        &limits::TEXT_FILE_BYTES,
    )?)
}

/// Reads `path` if it holds exactly `len` bytes, checked before reading it.
fn read_exact_len(path: &Path, len: u64) -> Result<Vec<u8>> {
    let (file, actual) = kiln_base::files::open_regular(path)?;
    if actual != len {
        return Err(TrainError::corrupt(
            path,
            format!("{actual} bytes, the manifest says {len}"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| TrainError::io(path, e))?;
    if bytes.len() as u64 != len {
        return Err(TrainError::corrupt(
            path,
            format!("{} bytes, the manifest says {len}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = kiln_base::files::create(path)?;
    file.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    file.sync_all().map_err(|e| TrainError::io(path, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
