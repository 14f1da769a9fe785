//! Fuzz targets (`kiln_base::fuzz`; the number of inputs is `KILN_FUZZ_CASES`):
//!
//! - `checkpoint`: a checkpoint folder with one file mutated (the manifest itself, or another
//!   file whose manifest entry is rewritten to match, so the checks behind the manifest are
//!   reached); resuming from it must return `Ok` or a typed error.
//! - `run_config`: run configs as JSON and TOML, read whole (`RunConfig::load`) and laid over
//!   a recipe (`merge_file`), then validated and their schedule built.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::*;
use kiln_base::fuzz;
use kiln_data::LmBatch;
use kiln_model::gpt::{Gpt, GptConfig};
use kiln_optim::{AdamWConfig, ScheduleConfig, WarmupDecayConfig};
use kiln_train::{BatchSource, RunConfig, TrainError, Trainer, TrainerConfig};
use proptest::prelude::*;

fn corpus_dir(what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(what)
}

/// The files of the checkpoint in the corpus.
const CHECKPOINT_FILES: [&str; 6] = [
    "manifest.json",
    "trainer.json",
    "run.json",
    "optimizer.bpk",
    "scheduler.bpk",
    "model.bpk",
];

/// The run that wrote the corpus checkpoint (2 steps, a checkpoint at step 2), in `dir`.
fn checkpoint_run(dir: &Path) -> RunConfig<(), ()> {
    let trainer = TrainerConfig::new()
        .with_max_steps(Some(2))
        .with_batch_size(4)
        .with_quiet(true)
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.display().to_string()));
    RunConfig::new(
        (),
        (),
        AdamWConfig::new(),
        ScheduleConfig::Constant(1e-2),
        trainer,
    )
}

fn source() -> BatchSource<LmBatch> {
    BatchSource::new(RandomLm::new(16, 1), RandomLmBatcher)
}

#[test]
fn fuzz_checkpoint() {
    let device = Device::flex().autodiff();
    let seeds: Vec<Vec<u8>> = CHECKPOINT_FILES
        .iter()
        .map(|name| std::fs::read(corpus_dir("checkpoint").join(name)).expect("the corpus"))
        .collect();
    let pristine = seeds.clone();
    let strategy = (0..CHECKPOINT_FILES.len())
        .prop_flat_map(move |i| fuzz::mutated(vec![seeds[i].clone()]).prop_map(move |b| (i, b)));
    fuzz::run("checkpoint", strategy, |(i, bytes)| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let folder = dir.path().join("step-00000002");
        std::fs::create_dir(&folder).expect("the checkpoint folder");
        for (name, seed) in CHECKPOINT_FILES.iter().zip(&pristine) {
            std::fs::write(folder.join(name), seed).expect("a corpus file");
        }
        std::fs::write(folder.join(CHECKPOINT_FILES[i]), &bytes).expect("the mutated file");
        if i > 0 {
            rehash(&folder, CHECKPOINT_FILES[i]);
        }
        let mut run = checkpoint_run(dir.path());
        run.trainer.resume = true;
        Trainer::<Gpt, LmBatch>::new(&run, source())?
            .fit(tiny_gpt(&device, 1), &device)
            .map(|outcome| outcome.state.step)
    });
}

/// Writes the checkpoint corpus (run with `--ignored` after a change of the checkpoint format).
#[test]
#[ignore]
fn write_checkpoint_corpus() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    Trainer::<Gpt, LmBatch>::new(&checkpoint_run(dir.path()), source())
        .unwrap()
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let corpus = corpus_dir("checkpoint");
    std::fs::create_dir_all(&corpus).unwrap();
    for name in CHECKPOINT_FILES {
        std::fs::copy(
            dir.path().join("step-00000002").join(name),
            corpus.join(name),
        )
        .unwrap();
    }
}

/// The recipe files are laid over in `merge_file`.
fn recipe() -> RunConfig<GptConfig, ()> {
    RunConfig::new(
        GptConfig::new(13),
        (),
        AdamWConfig::new(),
        WarmupDecayConfig::cosine(1e-3, 10, None),
        TrainerConfig::new().with_max_steps(Some(100)),
    )
}

#[test]
fn fuzz_run_config() {
    fuzz::run(
        "run_config",
        fuzz::mutated(fuzz::corpus(corpus_dir("run_config"))),
        |bytes| {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let mut accepted = 0;
            let mut last = None;
            for name in ["run.json", "run.toml"] {
                let path = dir.path().join(name);
                std::fs::write(&path, &bytes).expect("the config file");
                for run in [
                    RunConfig::<GptConfig, ()>::load(&path),
                    recipe().merge_file(&path),
                ] {
                    match run.and_then(|run| {
                        run.trainer.validate()?;
                        run.schedule.init_for_run(100)?;
                        Ok(())
                    }) {
                        Ok(()) => accepted += 1,
                        Err(e) => last = Some(e),
                    }
                }
            }
            match last {
                Some(e) if accepted == 0 => Err::<(), TrainError>(e),
                _ => Ok(()),
            }
        },
    );
}

/// Writes the run-config corpus: the recipe whole as JSON and TOML (run with `--ignored` after
/// a change of the config format); the partial files beside them are written by hand.
#[test]
#[ignore]
fn write_run_config_corpus() {
    let corpus = corpus_dir("run_config");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut run = recipe();
    run.trainer.early_stopping = Some(kiln_train::EarlyStoppingConfig::new());
    run.save(corpus.join("run.json")).unwrap();
    run.save(corpus.join("run.toml")).unwrap();
}
