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

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::Bytes;
use kiln_base::store::sync_dir;
use kiln_dist::ProcessGroup;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data_order::DataPosition;
use crate::early_stopping::EarlyStopping;
use crate::error::{Result, TrainError};
use crate::evaluate::EvalMetrics;
use crate::loss_scale::LossScaler;
use crate::param_ids::stable_param_ids;

const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optimizer.bpk";
const SCHEDULER: &str = "scheduler.bpk";
const TRAINER: &str = "trainer.json";
const RUN: &str = "run.json";
const BEST: &str = "best.bpk";
const MANIFEST: &str = "manifest.json";
const PREFIX: &str = "step-";
/// The most optimizer shards (ranks of a ZeRO-1 run) a manifest may list.
const MAX_SHARDS: usize = 1 << 16;

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
    /// The number of data-parallel ranks that trained.
    #[serde(default = "one")]
    pub world_size: usize,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    step: usize,
    /// How many files the optimizer state is split into: 1, or the world size of a ZeRO-1
    /// run (`optimizer-rank{r}.bpk`).
    #[serde(default = "one")]
    optimizer_shards: usize,
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
    /// This rank's optimizer (its shard of the state under ZeRO-1).
    pub optimizer: &'a ModuleOptimizer,
    /// The schedule.
    pub scheduler: &'a dyn LrScheduler,
    /// The loop state.
    pub state: &'a TrainerState,
    /// The run's config.
    pub run: &'a serde_json::Value,
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
    /// The number of optimizer state files (the world size of a ZeRO-1 run, else 1).
    pub optimizer_shards: usize,
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

    /// Restores an optimizer built with the same config: `rank`'s shard of the state when the
    /// checkpoint holds one per rank.
    pub fn load_optimizer(
        &self,
        optimizer: ModuleOptimizer,
        rank: usize,
    ) -> Result<ModuleOptimizer> {
        let shard = if self.optimizer_shards == 1 { 0 } else { rank };
        let path = self.path.join(optimizer_file(shard, self.optimizer_shards));
        let bytes = self
            .optimizer
            .get(shard)
            .ok_or_else(|| TrainError::corrupt(&path, "no such optimizer shard"))?;
        let record = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes.clone()))
            .map_err(|e| TrainError::corrupt(&path, format!("{e:?}")))?;
        Ok(optimizer.load_record(record))
    }

    /// Restores a schedule built with the same config.
    pub fn load_scheduler(&self, scheduler: &mut dyn LrScheduler) -> Result<()> {
        let record =
            LrSchedulerRecord::from_bytes(Bytes::from_bytes_vec(self.scheduler.clone()))
                .map_err(|e| TrainError::corrupt(self.path.join(SCHEDULER), format!("{e:?}")))?;
        scheduler.load_record(record);
        Ok(())
    }
}

/// The optimizer's state as bytes.
fn optimizer_bytes(optimizer: &ModuleOptimizer) -> Result<Vec<u8>> {
    Ok(optimizer
        .into_bytes()
        .map_err(|e| TrainError::Data(format!("serializing the optimizer: {e:?}")))?
        .to_vec())
}

/// Model weights as burnpack bytes.
pub fn model_bytes<M: Module>(model: &M) -> Result<Vec<u8>> {
    Ok(kiln_base::store::weights_to_bytes(model, Path::new(MODEL))?)
}

/// Loads burnpack `bytes` (read from `path`, named in errors) into `model`, with stable
/// parameter ids.
pub fn load_weights<M: Module>(model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let model = kiln_base::store::weights_from_bytes(model, bytes, path)
        .map_err(|e| TrainError::corrupt(path, e))?;
    Ok(stable_param_ids(model))
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
            if tmp.exists() {
                fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
            }
            fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        group.barrier()?;

        // The optimizer shards: each rank writes its own and reports its entry.
        let mut entries = Vec::new();
        if shards > 1 || group.is_main() {
            let bytes = optimizer_bytes(snapshot.optimizer)?;
            let file = optimizer_file(group.rank(), shards);
            write_synced(&tmp.join(&file), &bytes)?;
            entries.push(ManifestEntry {
                name: file,
                len: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            });
        }
        if shards > 1 {
            let mine = serde_json::to_vec(&entries).expect("entries serialize");
            entries = Vec::new();
            for theirs in group.all_gather_vec(&mine)? {
                let theirs: Vec<ManifestEntry> = serde_json::from_slice(&theirs)
                    .map_err(|e| TrainError::Data(format!("optimizer shard entry: {e}")))?;
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
        let scheduler_bytes = snapshot
            .scheduler
            .to_record()
            .into_bytes()
            .map_err(|e| TrainError::Data(format!("serializing the schedule: {e:?}")))?;
        let trainer = serde_json::to_vec_pretty(snapshot.state)
            .map_err(|e| TrainError::Data(format!("serializing the trainer state: {e}")))?;
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
            optimizer_shards,
            files: entries,
        };
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_synced(&tmp.join(MANIFEST), &manifest)?;
        sync_dir(tmp);

        if final_path.exists() {
            fs::remove_dir_all(final_path).map_err(|e| TrainError::io(final_path, e))?;
        }
        fs::rename(tmp, final_path).map_err(|e| TrainError::io(final_path, e))?;
        sync_dir(&self.dir);
        self.prune()?;
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

    fn prune(&self) -> Result<()> {
        for (_, path) in self.list()?.into_iter().skip(self.keep) {
            fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
        }
        Ok(())
    }
}

/// Reads a checkpoint folder and checks every file against the manifest.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let manifest_path = path.join(MANIFEST);
    let manifest = fs::read(&manifest_path).map_err(|e| TrainError::io(&manifest_path, e))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest).map_err(|e| TrainError::corrupt(&manifest_path, e))?;
    let mut contents = std::collections::HashMap::new();
    for entry in &manifest.files {
        let file = path.join(&entry.name);
        let bytes = fs::read(&file).map_err(|e| TrainError::io(&file, e))?;
        if bytes.len() as u64 != entry.len {
            return Err(TrainError::corrupt(
                &file,
                format!("{} bytes, the manifest says {}", bytes.len(), entry.len),
            ));
        }
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(TrainError::corrupt(
                &file,
                "SHA-256 does not match the manifest",
            ));
        }
        contents.insert(entry.name.clone(), bytes);
    }
    let best = contents.remove(BEST);
    let mut take = |name: &str| {
        contents
            .remove(name)
            .ok_or_else(|| TrainError::corrupt(&manifest_path, format!("{name} is not listed")))
    };
    let trainer = take(TRAINER)?;
    let run = take(RUN)?;
    let run = serde_json::from_slice(&run).map_err(|e| TrainError::corrupt(path.join(RUN), e))?;
    let state: TrainerState =
        serde_json::from_slice(&trainer).map_err(|e| TrainError::corrupt(path.join(TRAINER), e))?;
    if state.step != manifest.step {
        return Err(TrainError::corrupt(
            path.join(TRAINER),
            format!(
                "step {} but the manifest says {}",
                state.step, manifest.step
            ),
        ));
    }
    if manifest.optimizer_shards == 0 || manifest.optimizer_shards > MAX_SHARDS {
        return Err(TrainError::corrupt(
            &manifest_path,
            format!(
                "{} optimizer shards (1 to {MAX_SHARDS})",
                manifest.optimizer_shards
            ),
        ));
    }
    let optimizer = (0..manifest.optimizer_shards)
        .map(|rank| take(&optimizer_file(rank, manifest.optimizer_shards)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state,
        run,
        optimizer_shards: manifest.optimizer_shards,
        model: take(MODEL)?,
        optimizer,
        scheduler: take(SCHEDULER)?,
        best,
    })
}

/// Writes `bytes` to `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| TrainError::io(path, e))?;
    file.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    file.sync_all().map_err(|e| TrainError::io(path, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
