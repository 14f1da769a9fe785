//! Nothing lost, nothing silent (docs/reliability.md, section 2): the loop never writes through
//! a link, deletes only the checkpoints it wrote, refuses settings that would turn into a
//! default or a NaN, ends with an error when nothing was trained or the evaluation is not
//! finite, and refuses to resume on other data.

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::*;
use kiln_data::LmBatch;
use kiln_model::gpt::Gpt;
use kiln_optim::{AdamWConfig, ScheduleConfig, WarmupDecayConfig};
use kiln_train::{
    BatchSource, LossScaleConfig, NonFinitePolicy, RunConfig, TrainError, Trainer, TrainerConfig,
};

fn source(len: usize, seed: u64) -> BatchSource<LmBatch> {
    BatchSource::new(RandomLm::new(len, seed), RandomLmBatcher)
}

fn quiet(steps: usize) -> TrainerConfig {
    TrainerConfig::new()
        .with_max_steps(Some(steps))
        .with_quiet(true)
        .with_batch_size(4)
}

fn trainer(
    config: TrainerConfig,
    schedule: ScheduleConfig,
    data: BatchSource<LmBatch>,
) -> kiln_train::Result<Trainer<Gpt, LmBatch>> {
    let run = RunConfig::new((), (), AdamWConfig::new(), schedule, config);
    Trainer::new(&run, data)
}

fn constant(config: TrainerConfig, data: BatchSource<LmBatch>) -> Trainer<Gpt, LmBatch> {
    trainer(config, ScheduleConfig::Constant(1e-2), data).unwrap()
}

#[cfg(unix)]
#[test]
fn a_lock_file_linked_to_a_users_file_is_refused_and_the_file_kept() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("thesis.tex");
    std::fs::write(&precious, "three years of work").unwrap();
    for folder in ["run", "checkpoints"] {
        let folder = dir.path().join(folder);
        std::fs::create_dir_all(&folder).unwrap();
        std::os::unix::fs::symlink(&precious, folder.join("kiln.lock")).unwrap();
    }
    let configs = [
        quiet(2).with_run_dir(Some(dir.path().join("run").display().to_string())),
        quiet(2)
            .with_checkpoint_every(1)
            .with_checkpoint_dir(Some(dir.path().join("checkpoints").display().to_string())),
    ];
    for config in configs {
        let err = constant(config, source(16, 1))
            .fit(tiny_gpt(&device, 1), &device)
            .err()
            .expect("a linked lock file is refused");
        assert!(matches!(err, TrainError::File(_)), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains("kiln.lock"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "three years of work"
    );
}

#[test]
fn overwrite_deletes_only_the_checkpoints_kiln_wrote_and_says_which() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("ck");
    let config = || {
        quiet(4)
            .with_checkpoint_every(2)
            .with_keep_checkpoints(5)
            .with_checkpoint_dir(Some(checkpoints.display().to_string()))
    };
    constant(config(), source(32, 2))
        .fit(tiny_gpt(&device, 2), &device)
        .unwrap();
    // A user's folders that look like kiln's by name only.
    let users = [
        "step-notes",
        "step-00000099-backup",
        "step-00000042",
        ".step-00000003.tmp",
    ];
    for name in users {
        std::fs::create_dir_all(checkpoints.join(name)).unwrap();
        std::fs::write(checkpoints.join(name).join("notes.md"), name).unwrap();
    }
    let ours = kiln_train::checkpoint::CheckpointDir::new(&checkpoints, 5)
        .ours()
        .unwrap();
    let names: Vec<String> = ours
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-00000002", "step-00000004"]);

    // Without overwrite the folder is refused; with it, only kiln's checkpoints go.
    let refused = constant(config(), source(32, 2)).fit(tiny_gpt(&device, 2), &device);
    assert!(matches!(refused, Err(TrainError::Occupied { .. })));
    constant(config().with_overwrite(true), source(32, 2))
        .fit(tiny_gpt(&device, 2), &device)
        .unwrap();
    for name in users {
        assert_eq!(
            std::fs::read_to_string(checkpoints.join(name).join("notes.md")).unwrap(),
            name,
            "{name} was deleted"
        );
    }
}

#[test]
fn settings_that_would_become_a_default_or_a_nan_are_refused() {
    let err = trainer(
        quiet(4).with_eval_items(Some(0)),
        ScheduleConfig::Constant(1e-2),
        source(16, 1),
    )
    .err()
    .expect("eval_items = 0 is refused");
    assert!(err.to_string().contains("eval_items"), "{err}");

    let err = trainer(
        quiet(4).with_loss_scale(LossScaleConfig::new().with_init_scale(1e39)),
        ScheduleConfig::Constant(1e-2),
        source(16, 1),
    )
    .err()
    .expect("a loss scale beyond f32 is refused");
    assert!(err.to_string().contains("init_scale"), "{err}");

    // A schedule sized for 5 steps in a run of 10 would leave its curve mid-run.
    let device = Device::flex().autodiff();
    let short = WarmupDecayConfig::cosine(1e-2, 1, 5);
    let err = trainer(quiet(10), short.into(), source(64, 1))
        .unwrap()
        .fit(tiny_gpt(&device, 1), &device)
        .err()
        .expect("a schedule shorter than the run is refused");
    assert!(err.to_string().contains("shorter than the run"), "{err}");

    // `nan` in a TOML file is not "unset".
    let dir = tempfile::tempdir().unwrap();
    let base = RunConfig::new(
        (),
        (),
        AdamWConfig::new(),
        ScheduleConfig::Constant(1e-2),
        quiet(4),
    );
    for (text, field) in [
        (
            "[trainer]\nclip_grad_norm = nan\n",
            "trainer.clip_grad_norm",
        ),
        (
            "[trainer.loss_scale]\ninit_scale = inf\n",
            "trainer.loss_scale.init_scale",
        ),
    ] {
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        let err = base.merge_file(&path).expect_err("nan is refused");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn a_run_that_skipped_every_step_is_an_error_not_a_result() {
    let device = Device::flex().autodiff();
    let model = tiny_gpt(&device, 3).map(&mut Poison);
    let err = constant(
        quiet(3).with_non_finite(NonFinitePolicy::Skip),
        source(16, 3),
    )
    .fit(model, &device)
    .err()
    .expect("nothing trained");
    assert!(
        matches!(err, TrainError::NothingTrained { steps: 3 }),
        "{err}"
    );
}

#[test]
fn a_non_finite_evaluation_ends_the_run_with_an_error() {
    let device = Device::flex().autodiff();
    // The weights turn to NaN after step 2, just before the evaluation due then.
    let hook = |step: usize, model: Gpt| -> Result<Gpt, std::convert::Infallible> {
        Ok(if step == 2 {
            model.map(&mut Poison)
        } else {
            model
        })
    };
    let err = constant(quiet(4).with_eval_every(2), source(16, 4))
        .with_eval(source(8, 5))
        .with_hook(hook)
        .fit(tiny_gpt(&device, 4), &device)
        .err()
        .expect("a NaN evaluation is an error");
    assert!(
        matches!(err, TrainError::NonFiniteEval { step: 2, .. }),
        "{err}"
    );
}

/// Four steps of the tiny GPT, a checkpoint every two, into `dir`.
fn checkpointed(dir: &tempfile::TempDir) -> TrainerConfig {
    quiet(4)
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.path().display().to_string()))
}

/// The checkpoints of a [`checkpointed`] run on `data`, as if it had been killed after step 2.
fn killed_after_step_2(dir: &tempfile::TempDir, data: BatchSource<LmBatch>, device: &Device) {
    constant(checkpointed(dir), data)
        .fit(tiny_gpt(device, 8), device)
        .unwrap();
    std::fs::remove_dir_all(dir.path().join("step-00000004")).unwrap();
}

#[test]
fn resuming_on_other_data_is_refused_unless_allowed() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = || checkpointed(&dir);
    // The same number of items, other content: only the fingerprint tells them apart.
    let data = |seed: u64| source(32, seed).with_fingerprint(format!("tokens of seed {seed}"));
    killed_after_step_2(&dir, data(6), &device);
    let err = constant(config().with_resume(true), data(7))
        .fit(tiny_gpt(&device, 8), &device)
        .err()
        .expect("other data is refused");
    match err {
        TrainError::ConfigChanged {
            field,
            saved,
            current,
            ..
        } => {
            assert!(field.contains("training data"), "{field}");
            assert!(field.contains("allow_data_change"), "{field}");
            assert_eq!(
                (saved.as_str(), current.as_str()),
                ("tokens of seed 6", "tokens of seed 7")
            );
        }
        other => panic!("expected ConfigChanged, got {other}"),
    }
    let resumed = constant(
        config().with_resume(true).with_allow_data_change(true),
        data(7),
    )
    .fit(tiny_gpt(&device, 8), &device)
    .unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    assert_eq!(
        resumed.state.train_data.as_deref(),
        Some("tokens of seed 7")
    );
}

/// The parallel layout may change on resume, the global batch may not: a run of one
/// micro-batch per step resumed with two is refused, naming the numbers and the flag that fits.
#[test]
fn a_resume_with_another_global_batch_is_refused_naming_the_flag() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = || checkpointed(&dir);
    killed_after_step_2(&dir, source(64, 8), &device);
    let err = constant(
        config().with_resume(true).with_grad_accumulation(2),
        source(64, 8),
    )
    .fit(tiny_gpt(&device, 8), &device)
    .err()
    .expect("another global batch is refused");
    let message = err.to_string();
    assert!(message.contains("global batch"), "{message}");
    assert!(message.contains("--accum 1"), "{message}");
    let resumed = constant(config().with_resume(true), source(64, 8))
        .fit(tiny_gpt(&device, 8), &device)
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
}
