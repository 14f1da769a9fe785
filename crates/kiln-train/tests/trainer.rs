//! The training loop's invariants: accumulation, resume, loss scaling, non-finite handling,
//! early stopping and recomputation.

mod common;

use std::sync::{Arc, Mutex};

use burn::optim::GradientsParams;
use burn::tensor::Device;
use common::*;
use kiln_base::BoxError;
use kiln_data::LmBatch;
use kiln_model::gpt::Gpt;
use kiln_optim::{AdamWConfig, LambConfig, OptimizerConfig, ScheduleConfig, SgdConfig};
use kiln_train::checkpoint::CheckpointDir;
use kiln_train::recompute::per_block_backward;
use kiln_train::{
    BatchSource, EarlyStoppingConfig, LossScaleConfig, Metric, NonFinitePolicy, Precision,
    Recompute, RunConfig, TrainError, TrainModel, Trainer, TrainerConfig,
};
use proptest::prelude::*;

fn source(len: usize, seed: u64) -> BatchSource<LmBatch> {
    BatchSource::new(RandomLm::new(len, seed), RandomLmBatcher)
}

/// A run of the tiny GPT: no model config or data settings to record.
fn run(optimizer: impl Into<OptimizerConfig>, lr: f64, config: TrainerConfig) -> RunConfig<(), ()> {
    RunConfig::new((), (), optimizer, ScheduleConfig::Constant(lr), config)
}

fn sgd_trainer(
    config: TrainerConfig,
    data: BatchSource<LmBatch>,
    lr: f64,
) -> Trainer<Gpt, LmBatch> {
    Trainer::new(&run(SgdConfig::new(), lr, config), data).unwrap()
}

fn quiet(steps: usize) -> TrainerConfig {
    TrainerConfig::new()
        .with_max_steps(Some(steps))
        .with_clip_grad_norm(None)
        .with_quiet(true)
        .with_shuffle(false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// k micro-batches of b examples give the update of one batch of k·b, even though the
    /// micro-batches carry different numbers of loss tokens.
    #[test]
    fn accumulation_equals_one_large_batch(k in 1usize..4, b in 1usize..4, seed in 0u64..1000) {
        let device = Device::flex().autodiff();
        let data = source(k * b, seed);
        let one = sgd_trainer(quiet(1).with_batch_size(k * b), data.clone(), 0.5)
            .fit(tiny_gpt(&device, 7), &device).unwrap().model;
        let accumulated = sgd_trainer(
            quiet(1).with_batch_size(b).with_grad_accumulation(k), data, 0.5)
            .fit(tiny_gpt(&device, 7), &device).unwrap().model;
        let initial = param_values(&tiny_gpt(&device, 7));
        let (one, accumulated) = (param_values(&one), param_values(&accumulated));
        prop_assert!(max_abs_diff(&initial, &one) > 1e-4, "the step must move the weights");
        prop_assert!(max_abs_diff(&one, &accumulated) <= 1e-5,
            "diff {}", max_abs_diff(&one, &accumulated));
    }
}

fn adamw_trainer(config: TrainerConfig, data: BatchSource<LmBatch>) -> Trainer<Gpt, LmBatch> {
    Trainer::new(&run(AdamWConfig::new(), 1e-2, config), data).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// A run killed after any checkpoint and resumed in a fresh process (new model, new
    /// random parameter ids, new optimizer) ends with bit-identical parameters.
    #[test]
    fn resuming_from_any_checkpoint_ends_bit_identical(
        killed_at in 1usize..6,
        accumulation in 1usize..3,
        shuffle_seed in 0u64..100,
    ) {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let full_dir = dir.path().join("full");
        let config = |ckpt: &std::path::Path| {
            quiet(6)
                .with_batch_size(4)
                .with_grad_accumulation(accumulation)
                .with_shuffle(true)
                .with_seed(shuffle_seed)
                .with_clip_grad_norm(Some(0.5))
                .with_checkpoint_every(1)
                .with_keep_checkpoints(10)
                .with_checkpoint_dir(Some(ckpt.display().to_string()))
        };
        let data = source(40, 3);
        let full = adamw_trainer(config(&full_dir), data.clone())
            .fit(tiny_gpt(&device, 11), &device)
            .unwrap();
        let expected = param_values(&full.model);

        // The killed run's folder holds the checkpoints up to `killed_at`.
        let resumed_dir = dir.path().join("resumed");
        std::fs::create_dir_all(&resumed_dir).unwrap();
        for step in 1..=killed_at {
            let name = format!("step-{step:08}");
            copy_dir(&full_dir.join(&name), &resumed_dir.join(&name));
        }
        let resumed = adamw_trainer(config(&resumed_dir).with_resume(true), data)
            .fit(tiny_gpt(&device, 99), &device)
            .unwrap();
        prop_assert_eq!(resumed.resumed_from, Some(killed_at));
        prop_assert_eq!(resumed.state.step, 6);
        prop_assert_eq!(param_values(&resumed.model), expected, "bit-identical parameters");
    }
}

#[test]
fn a_corrupt_checkpoint_is_named_and_the_previous_one_is_used() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(4)
        .with_batch_size(4)
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    adamw_trainer(config.clone(), source(16, 1))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let bad = dir.path().join("step-00000004").join("model.bpk");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();

    let (checkpoint, skipped) = CheckpointDir::new(dir.path(), 3).latest().unwrap().unwrap();
    assert_eq!(checkpoint.state.step, 2);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("model.bpk"), "{}", skipped[0]);

    let resumed = adamw_trainer(config.with_resume(true), source(16, 1))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
}

#[test]
fn no_usable_checkpoint_is_an_error_naming_the_files() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(2)
        .with_batch_size(4)
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    adamw_trainer(config.clone(), source(16, 1))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let manifest = dir.path().join("step-00000002").join("manifest.json");
    std::fs::write(&manifest, b"{ torn").unwrap();
    let err = adamw_trainer(config.with_resume(true), source(16, 1))
        .fit(tiny_gpt(&device, 1), &device)
        .err()
        .expect("resume must fail");
    assert!(matches!(err, TrainError::NoCheckpoint { .. }));
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn an_f16_overflow_skips_the_step_and_halves_the_scale() {
    let device = Device::flex().autodiff();
    let model = tiny_gpt(&device, 5);
    let before = param_values(&model);
    // A scale past f16's range makes every scaled gradient infinite: the first step is skipped
    // and the scale halved. A run of skipped steps alone would be an error (nothing trained),
    // so the run goes on until the halvings bring the scale into range, and the state after
    // the first step is read from its checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(30)
        .with_batch_size(4)
        .with_precision(Precision::F16)
        .with_loss_scale(LossScaleConfig::new().with_init_scale(1e9))
        .with_checkpoint_every(1)
        .with_keep_checkpoints(30)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    let outcome = sgd_trainer(config, source(8, 2), 0.1)
        .fit(model, &device)
        .unwrap();
    let first = kiln_train::checkpoint::read_checkpoint(&dir.path().join("step-00000001")).unwrap();
    assert_eq!(first.state.skipped_steps, 1);
    assert_eq!(first.state.scaler.clone().unwrap().scale(), 5e8);
    assert_eq!(
        param_values(&first.load_model(tiny_gpt(&device, 6)).unwrap()),
        before,
        "a skipped step changes nothing"
    );
    let skipped = outcome.state.skipped_steps;
    assert!((2..30).contains(&skipped), "{skipped} skipped");
    assert_eq!(
        outcome.state.scaler.unwrap().scale(),
        1e9 * 0.5f64.powi(skipped as i32)
    );
}

#[test]
fn f16_training_with_a_sane_scale_moves_like_f32() {
    let device = Device::flex().autodiff();
    let run = |precision| {
        let config = quiet(3)
            .with_batch_size(2)
            .with_grad_accumulation(2)
            .with_precision(precision);
        sgd_trainer(config, source(12, 4), 0.5)
            .fit(tiny_gpt(&device, 5), &device)
            .unwrap()
    };
    let (full, half) = (run(Precision::F32), run(Precision::F16));
    assert_eq!(half.state.skipped_steps, 0);
    let initial = param_values(&tiny_gpt(&device, 5));
    let moved = max_abs_diff(&initial, &param_values(&full.model));
    let diff = max_abs_diff(&param_values(&full.model), &param_values(&half.model));
    assert!(
        diff < 0.05 * moved,
        "f16 off by {diff}, the step moved {moved}"
    );
}

/// A hook that poisons the weights after `at` steps.
fn poison_after(at: usize) -> impl FnMut(usize, Gpt) -> Result<Gpt, BoxError> + Send {
    move |step, model: Gpt| {
        if step == at {
            let mut model = model;
            model.final_norm.gamma = model.final_norm.gamma.map(|g| g.mul_scalar(f32::NAN));
            Ok(model)
        } else {
            Ok(model)
        }
    }
}

#[test]
fn a_non_finite_loss_stops_with_the_step_or_is_skipped() {
    let device = Device::flex().autodiff();
    let err = sgd_trainer(quiet(4).with_batch_size(4), source(16, 1), 0.1)
        .with_hook(poison_after(2))
        .fit(tiny_gpt(&device, 1), &device)
        .err()
        .expect("NaN must stop the run");
    assert!(
        matches!(err, TrainError::NonFinite { step: 3, .. }),
        "{err}"
    );

    let skipping = quiet(4)
        .with_batch_size(4)
        .with_non_finite(NonFinitePolicy::Skip);
    let outcome = sgd_trainer(skipping, source(16, 1), 0.1)
        .with_hook(poison_after(2))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    assert_eq!(outcome.state.skipped_steps, 2);
}

#[test]
fn nan_weights_are_never_checkpointed() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(4)
        .with_batch_size(4)
        .with_non_finite(NonFinitePolicy::Skip)
        .with_checkpoint_every(1)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    let err = sgd_trainer(config, source(16, 1), 0.1)
        .with_hook(poison_after(2))
        .fit(tiny_gpt(&device, 1), &device)
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, TrainError::NonFiniteWeights { step: 2 }),
        "{err}"
    );
    let saved = CheckpointDir::new(dir.path(), 3).list().unwrap();
    assert_eq!(saved.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn early_stopping_restores_the_best_weights() {
    let device = Device::flex().autodiff();
    let snapshots = Arc::new(Mutex::new(Vec::new()));
    let record = snapshots.clone();
    // After step 3 the weights are scaled up, which ruins the eval loss from then on.
    let hook = move |step: usize, model: Gpt| {
        let model = if step >= 3 {
            let mut model = model;
            model.lm_head = None;
            model.token_embedding.weight = model.token_embedding.weight.map(|w| w.mul_scalar(3.0));
            model
        } else {
            model
        };
        record.lock().unwrap().push(param_values(&model));
        Ok::<_, BoxError>(model)
    };
    let config = quiet(20)
        .with_batch_size(4)
        .with_eval_every(1)
        .with_early_stopping(Some(
            EarlyStoppingConfig::new()
                .with_metric(Metric::Loss)
                .with_patience(2),
        ));
    let outcome = sgd_trainer(config, source(64, 9), 0.05)
        .with_eval(source(16, 10))
        .with_hook(hook)
        .fit(tiny_gpt(&device, 2), &device)
        .unwrap();
    assert!(outcome.state.stopped_early);
    let (best_step, best_eval) = outcome.eval.clone().unwrap();
    let (last_step, last_eval) = outcome.last_eval.clone().unwrap();
    assert!(outcome.state.step < 20 && best_step < outcome.state.step);
    assert_eq!(last_step, outcome.state.step);
    assert!(best_eval.loss < last_eval.loss);
    let snapshots = snapshots.lock().unwrap();
    assert_eq!(param_values(&outcome.model), snapshots[best_step - 1]);
    // The outcome's evaluation is that of the returned model.
    let again =
        kiln_train::evaluate::evaluate(&outcome.model, &source(16, 10), 64, None, &device).unwrap();
    assert_eq!(again, best_eval);
}

fn grads_of<M: TrainModel<B>, B: kiln_base::Batch>(
    model: &M,
    batch: &B,
    recompute: Recompute,
    device: &Device,
) -> Vec<f32> {
    let grads = match recompute {
        Recompute::PerBlock => {
            per_block_backward(model, batch, 1.0, Precision::F32, device)
                .unwrap()
                .1
        }
        _ => {
            let out = model.forward_step(batch).unwrap();
            GradientsParams::from_grads(out.loss.backward(), model)
        }
    };
    struct Collect<'a>(&'a GradientsParams, Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            let g = self
                .0
                .get::<D>(p.id)
                .expect("every parameter has a gradient");
            self.1
                .extend(g.to_data().convert::<f32>().try_into_vec::<f32>().unwrap());
        }
    }
    let mut collect = Collect(&grads, Vec::new());
    burn::module::Module::visit(model, &mut collect);
    collect.1
}

#[test]
fn recomputation_gives_the_same_gradients() {
    use burn::data::dataloader::batcher::Batcher;
    use burn::data::dataset::Dataset;
    let data = RandomLm::new(3, 8);
    let items: Vec<_> = (0..3).map(|i| data.get(i).unwrap()).collect();
    for recompute in [Recompute::Balanced, Recompute::PerBlock] {
        let plain_device = Device::flex().autodiff();
        let batch = RandomLmBatcher.batch(items.clone(), &plain_device);
        let reference = grads_of(
            &tiny_gpt(&plain_device, 4),
            &batch,
            Recompute::None,
            &plain_device,
        );

        let device = recompute.training_device(&Device::flex());
        let batch = RandomLmBatcher.batch(items.clone(), &device);
        let grads = grads_of(&tiny_gpt(&device, 4), &batch, recompute, &device);
        let diff = max_abs_diff(&reference, &grads);
        assert!(diff <= 1e-5, "{recompute:?}: gradients differ by {diff}");
    }
}

#[test]
fn bad_settings_are_errors() {
    let data = source(8, 1);
    let make = |config: TrainerConfig| {
        Trainer::<Gpt, LmBatch>::new(&run(SgdConfig::new(), 0.1, config), data.clone()).err()
    };
    assert!(
        make(TrainerConfig::new()).is_some(),
        "no max_steps nor max_epochs"
    );
    assert!(make(quiet(1).with_grad_accumulation(0)).is_some());
    assert!(make(quiet(1).with_clip_grad_norm(Some(f64::NAN))).is_some());
    assert!(
        make(quiet(1).with_resume(true)).is_some(),
        "resume without a folder"
    );
    let device = Device::flex().autodiff();
    let too_big = sgd_trainer(quiet(1).with_batch_size(100), data.clone(), 0.1)
        .fit(tiny_gpt(&device, 1), &device);
    assert!(matches!(too_big, Err(TrainError::InvalidConfig(_))));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_model_built_on_a_plain_device_is_trained() {
    let device = Device::flex().autodiff();
    let plain = tiny_gpt(&Device::flex(), 3);
    let before = param_values(&plain);
    let outcome = sgd_trainer(quiet(2).with_batch_size(4), source(8, 1), 0.5)
        .fit(plain, &device)
        .unwrap();
    assert!(max_abs_diff(&before, &param_values(&outcome.model)) > 1e-4);
}

/// A parameter frozen before `fit` (the token embedding, which is also the tied output
/// layer) comes out bit-identical and has no optimizer state in the checkpoint, while the rest
/// of the model trains; whether the model was built on a plain device (the loop lifts it onto
/// autodiff) or on the training device.
#[test]
fn frozen_parameters_stay_frozen() {
    use burn::module::Module;
    use burn::store::burn_pack::Reader;
    use burn::tensor::Bytes;

    let device = Device::flex().autodiff();
    for built_on in [Device::flex(), device.clone()] {
        let dir = tempfile::tempdir().unwrap();
        let mut gpt = tiny_gpt(&built_on, 3);
        gpt.token_embedding = gpt.token_embedding.no_grad();
        let (embedding, blocks) = (
            param_values(&gpt.token_embedding),
            param_values(&gpt.blocks),
        );
        let config = quiet(3)
            .with_batch_size(4)
            .with_checkpoint_every(3)
            .with_checkpoint_dir(Some(dir.path().display().to_string()));
        let outcome = adamw_trainer(config, source(12, 1))
            .fit(gpt, &device)
            .unwrap();
        let model = &outcome.model;
        assert_eq!(param_values(&model.token_embedding), embedding);
        assert!(max_abs_diff(&blocks, &param_values(&model.blocks)) > 1e-4);

        let bytes = std::fs::read(dir.path().join("step-00000003/optimizer.bpk")).unwrap();
        let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).unwrap();
        let names: Vec<String> = reader
            .into_tensors()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        let frozen = format!("{}.", model.token_embedding.weight.id.val());
        assert!(!names.is_empty(), "the other parameters have state");
        assert!(
            names.iter().all(|name| !name.starts_with(&frozen)),
            "state for the frozen embedding: {names:?}"
        );
    }
}

#[test]
fn per_block_recomputation_trains_like_none_in_f16_with_accumulation() {
    let run = |recompute: Recompute| {
        let device = recompute.training_device(&Device::flex());
        let config = quiet(2)
            .with_batch_size(2)
            .with_grad_accumulation(2)
            .with_precision(Precision::F16)
            .with_recompute(recompute);
        let outcome = sgd_trainer(config, source(8, 6), 0.5)
            .fit(tiny_gpt(&device, 8), &device)
            .unwrap();
        assert_eq!(outcome.state.skipped_steps, 0);
        param_values(&outcome.model)
    };
    let (plain, per_block) = (run(Recompute::None), run(Recompute::PerBlock));
    let diff = max_abs_diff(&plain, &per_block);
    assert!(diff < 1e-3, "per-block f16 differs by {diff}");
}

#[test]
fn epochs_drive_evaluation_and_the_run_folder_gets_metrics_and_a_plot() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    // 18 items in batches of 4: 4 full batches per epoch (the last 2 items dropped).
    let config = TrainerConfig::new()
        .with_max_epochs(Some(2))
        .with_batch_size(4)
        .with_eval_every(0)
        .with_log_every(1)
        .with_quiet(true)
        .with_run_dir(Some(dir.path().display().to_string()));
    let outcome = sgd_trainer(config, source(18, 2), 0.1)
        .with_eval(source(8, 3))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    assert_eq!(outcome.state.step, 8);
    assert_eq!(outcome.state.position.epoch, 2);
    let records = kiln_train::metrics_log::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    let eval_steps: Vec<usize> = records
        .iter()
        .filter(|r| r.split == "eval")
        .map(|r| r.step)
        .collect();
    assert_eq!(eval_steps, vec![4, 8], "evaluated at the end of each epoch");
    assert_eq!(records.iter().filter(|r| r.split == "train").count(), 8);
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "train loss, eval loss, lr"
    );
}

/// LAMB's global clipping (NVLAMB's `max_grad_norm`) runs under the Trainer: one step equals
/// the hand-written clip-then-step, and differs from the unclipped step.
#[test]
fn lamb_global_clipping_applies_under_the_trainer() {
    let device = Device::flex().autodiff();
    // A large eps makes the update depend on the gradient's scale, so clipping shows.
    let lamb = LambConfig::new().with_epsilon(0.1).with_weight_decay(0.0);
    let clipped = lamb.clone().with_max_grad_norm(Some(0.01));
    let data = source(8, 5);
    let config = quiet(1).with_batch_size(8);
    let train = |optimizer: LambConfig| {
        Trainer::new(&run(optimizer, 0.1, config.clone()), data.clone())
            .unwrap()
            .fit(tiny_gpt(&device, 3), &device)
            .unwrap()
            .model
    };
    let (with_clip, without) = (train(clipped.clone()), train(lamb));

    // By hand: the same step, clipping first.
    let model = kiln_train::param_ids::stable_param_ids(tiny_gpt(&device, 3));
    let batch = data.batch(&(0..8).collect::<Vec<_>>(), &device).unwrap();
    let grads =
        GradientsParams::from_grads(model.forward_step(&batch).unwrap().loss.backward(), &model);
    let (grads, norm) = clipped.clip_gradients(&model, grads).unwrap();
    assert!(norm > 0.01, "the clip must bite (norm {norm})");
    let mut optimizer = clipped.init(&model).unwrap();
    let expected = optimizer.step(0.1, model, grads);

    let diff = max_abs_diff(&param_values(&expected), &param_values(&with_clip));
    assert!(diff <= 1e-6, "the Trainer's LAMB step differs by {diff}");
    let effect = max_abs_diff(&param_values(&without), &param_values(&with_clip));
    assert!(effect > 1e-3, "clipping changed the step by only {effect}");
}

/// A resumed run whose config differs from its checkpoint's is refused, naming the field;
/// operational settings (where checkpoints go, how often, logging) may change.
#[test]
fn resuming_with_a_changed_config_is_an_error_naming_the_field() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(2)
        .with_batch_size(4)
        .with_checkpoint_every(1)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    adamw_trainer(config.clone(), source(16, 1))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let resume = |run: RunConfig<(), ()>| {
        Trainer::<Gpt, LmBatch>::new(&run, source(16, 1))
            .unwrap()
            .fit(tiny_gpt(&device, 1), &device)
    };
    let resuming = config.clone().with_resume(true);

    let err = resume(run(
        AdamWConfig::new(),
        1e-2,
        resuming.clone().with_batch_size(2),
    ))
    .err()
    .expect("a different batch size must be refused");
    match &err {
        TrainError::ConfigChanged {
            field,
            saved,
            current,
            ..
        } => {
            assert_eq!(field, "trainer.batch_size");
            assert_eq!((saved.as_str(), current.as_str()), ("4", "2"));
        }
        other => panic!("expected ConfigChanged, got {other}"),
    }
    let err = resume(run(
        AdamWConfig::new().with_beta_2(0.95),
        1e-2,
        resuming.clone(),
    ))
    .err()
    .expect("a different optimizer must be refused");
    assert!(err.to_string().contains("optimizer.AdamW.beta_2"), "{err}");

    // Same run, more logging and a new keep count: resumes.
    let outcome = resume(run(
        AdamWConfig::new(),
        1e-2,
        resuming.with_log_every(1).with_keep_checkpoints(5),
    ))
    .unwrap();
    assert_eq!(outcome.resumed_from, Some(2));
}

/// The run folder and every checkpoint hold the run's config, which loads back equal.
#[test]
fn the_run_config_is_written_to_the_run_folder_and_checkpoints() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(2)
        .with_batch_size(4)
        .with_checkpoint_every(2)
        .with_run_dir(Some(dir.path().display().to_string()));
    let run = run(SgdConfig::new().with_momentum(0.9), 0.05, config);
    Trainer::<Gpt, LmBatch>::new(&run, source(16, 1))
        .unwrap()
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let written = RunConfig::<(), ()>::load(dir.path().join("run.json")).unwrap();
    assert_eq!(written.to_value(), run.to_value());
    let (checkpoint, _) = CheckpointDir::new(dir.path().join("checkpoints"), 3)
        .latest()
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.run, run.to_value());
}

#[test]
fn a_failing_hook_stops_the_run_with_its_error() {
    let device = Device::flex().autodiff();
    let err = sgd_trainer(quiet(4).with_batch_size(4), source(16, 1), 0.1)
        .with_hook(|step: usize, model: Gpt| {
            if step == 3 {
                Err(BoxError::from("masks do not fit"))
            } else {
                Ok(model)
            }
        })
        .fit(tiny_gpt(&device, 1), &device)
        .err()
        .expect("the hook's error must stop the run");
    assert!(matches!(err, TrainError::Hook { step: 3, .. }), "{err}");
    assert!(err.to_string().contains("masks do not fit"), "{err}");
}

/// Early stopping's best weights live inside the checkpoint (listed in its manifest): a
/// corrupt copy is caught by the manifest, and the previous checkpoint is used.
#[test]
fn best_weights_are_checked_by_the_manifest() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(4)
        .with_batch_size(4)
        .with_eval_every(1)
        .with_early_stopping(Some(EarlyStoppingConfig::new().with_patience(10)))
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    let trainer =
        |config: TrainerConfig| sgd_trainer(config, source(32, 2), 0.05).with_eval(source(8, 3));
    trainer(config.clone())
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let best = dir.path().join("step-00000004").join("best.bpk");
    let mut bytes = std::fs::read(&best).expect("the checkpoint holds the best weights");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&best, bytes).unwrap();
    let (checkpoint, skipped) = CheckpointDir::new(dir.path(), 3).latest().unwrap().unwrap();
    assert_eq!(checkpoint.state.step, 2);
    assert!(skipped[0].contains("best.bpk"), "{}", skipped[0]);
}

/// A checkpoint folder renamed to a later step is not taken for that step.
#[test]
fn a_renamed_checkpoint_folder_is_skipped() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = quiet(4)
        .with_batch_size(4)
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    sgd_trainer(config, source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    std::fs::rename(
        dir.path().join("step-00000002"),
        dir.path().join("step-00000009"),
    )
    .unwrap();
    let (checkpoint, skipped) = CheckpointDir::new(dir.path(), 3).latest().unwrap().unwrap();
    assert_eq!(checkpoint.state.step, 4);
    assert!(skipped[0].contains("holds step 2"), "{}", skipped[0]);
}

/// Per-block recomputation works for any BlockStack: both BERT heads get the gradients of the
/// plain backward pass, padding masks included.
#[test]
fn per_block_recomputation_covers_both_bert_heads() {
    use burn::tensor::{Bool, Int, Tensor};
    use kiln_data::{ClassificationBatch, MlmBatch};
    use kiln_model::bert::BertConfig;

    let device = Device::flex().autodiff();
    device.seed(5);
    let config = BertConfig::new(20)
        .with_hidden_size(16)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(2)
        .with_intermediate_size(32)
        .with_max_position_embeddings(8)
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0);
    let ids = Tensor::<2, Int>::from_ints([[2, 5, 7, 9, 0], [3, 4, 6, 0, 0]], &device);
    let types = Tensor::<2, Int>::zeros([2, 5], &device);
    let padding = Tensor::<2, Bool>::from_bool(
        burn::tensor::TensorData::from([
            [false, false, false, false, true],
            [false, false, false, true, true],
        ]),
        &device,
    );
    let mlm = MlmBatch {
        input_ids: ids.clone(),
        token_type_ids: types.clone(),
        padding_mask: padding.clone(),
        labels: Tensor::<2, Int>::from_ints(
            [[-100, 8, -100, 1, -100], [5, -100, 2, -100, -100]],
            &device,
        ),
    };
    let classification = ClassificationBatch {
        input_ids: ids,
        token_type_ids: types,
        padding_mask: padding,
        labels: Tensor::<1, Int>::from_ints([1, 0], &device),
    };
    let masked_lm = config.init_masked_lm(&device).unwrap();
    let reference = grads_of(&masked_lm, &mlm, Recompute::None, &device);
    let per_block = grads_of(&masked_lm, &mlm, Recompute::PerBlock, &device);
    let diff = max_abs_diff(&reference, &per_block);
    assert!(diff <= 1e-5, "masked LM: gradients differ by {diff}");

    let classifier = config.init_classifier(2, &device).unwrap();
    let reference = grads_of(&classifier, &classification, Recompute::None, &device);
    let per_block = grads_of(&classifier, &classification, Recompute::PerBlock, &device);
    let diff = max_abs_diff(&reference, &per_block);
    assert!(diff <= 1e-5, "classifier: gradients differ by {diff}");
}

// Issue 14: bad input never panics, nothing is lost.

/// A run of 4 steps of 4 items with a checkpoint every 2, on `items` items, in `dir`.
fn checkpointed(dir: &std::path::Path) -> TrainerConfig {
    quiet(4)
        .with_batch_size(4)
        .with_checkpoint_every(2)
        .with_checkpoint_dir(Some(dir.display().to_string()))
}

/// A 4-step run checkpointed every 2 steps into `dir`, its last checkpoint removed: resuming
/// starts from step 2.
fn checkpointed_to_step_2(dir: &std::path::Path, device: &Device) {
    adamw_trainer(checkpointed(dir), source(16, 1))
        .fit(tiny_gpt(device, 1), device)
        .unwrap();
    std::fs::remove_dir_all(dir.join("step-00000004")).unwrap();
}

/// Resuming with a larger batch is a changed config; resuming on fewer items than the run was
/// written with, or from a data position the run never reaches, is a typed error, not a slice
/// out of range in `data_order.rs`.
#[test]
fn resume_with_a_larger_batch() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    checkpointed_to_step_2(dir.path(), &device);
    let resume = |config: TrainerConfig, items: usize| {
        adamw_trainer(config.with_resume(true), source(items, 1))
            .fit(tiny_gpt(&device, 1), &device)
            .err()
            .expect("must be refused")
    };
    let err = resume(checkpointed(dir.path()).with_batch_size(8), 16);
    assert!(
        matches!(&err, TrainError::ConfigChanged { field, .. } if field == "trainer.batch_size"),
        "{err}"
    );
    // The same config on half the data: the saved position is past the end of an epoch.
    let err = resume(checkpointed(dir.path()), 8);
    assert!(
        matches!(&err, TrainError::ConfigChanged { field, saved, current, .. }
            if field == "the number of training items" && saved == "16" && current == "8"),
        "{err}"
    );
    // A position the run never reaches, behind a manifest that matches it.
    edit_json(&dir.path().join("step-00000002"), "trainer.json", |state| {
        state["position"]["batch"] = 1000.into();
    });
    let err = resume(checkpointed(dir.path()), 16);
    assert!(
        matches!(&err, TrainError::CorruptCheckpoint { path, reason }
            if path.ends_with("trainer.json") && reason.contains("data position")),
        "{err}"
    );
}

/// A second run in a folder a run is using fails at once, naming the holder (its run id and
/// process); once the first run has ended, the folder is free again.
#[test]
fn run_directories_locked() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (started, has_started) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let first = {
        let (dir, device) = (dir.path().to_path_buf(), device.clone());
        std::thread::spawn(move || {
            sgd_trainer(checkpointed(&dir), source(16, 1), 0.1)
                .with_hook(move |step: usize, model: Gpt| {
                    if step == 1 {
                        started.send(()).unwrap();
                        wait.lock().unwrap().recv().unwrap();
                    }
                    Ok::<_, BoxError>(model)
                })
                .fit(tiny_gpt(&device, 1), &device)
                .map(|outcome| outcome.run_id)
        })
    };
    has_started.recv().unwrap();
    let steps = Arc::new(Mutex::new(0));
    let counted = steps.clone();
    let err = sgd_trainer(
        checkpointed(dir.path()).with_resume(true),
        source(16, 1),
        0.1,
    )
    .with_hook(move |_: usize, model: Gpt| {
        *counted.lock().unwrap() += 1;
        Ok::<_, BoxError>(model)
    })
    .fit(tiny_gpt(&device, 2), &device)
    .err()
    .expect("the folder is in use");
    release.send(()).unwrap();
    let first_id = first.join().unwrap().unwrap();
    let TrainError::Locked { holder, .. } = &err else {
        panic!("expected Locked, got {err}");
    };
    assert!(holder.contains(&first_id), "{holder}");
    assert!(holder.contains(&std::process::id().to_string()), "{holder}");
    assert_eq!(*steps.lock().unwrap(), 0, "no step was taken");
    // Free again: the same run resumes and keeps its id.
    let resumed = sgd_trainer(
        checkpointed(dir.path()).with_resume(true),
        source(16, 1),
        0.1,
    )
    .fit(tiny_gpt(&device, 1), &device)
    .unwrap();
    assert_eq!(resumed.run_id, first_id);
}

/// A new run (no resume) in a folder holding another run's checkpoints is refused and they are
/// kept; `overwrite` replaces them. Every checkpoint names its run, and a resumed run takes the
/// id of the checkpoint it resumes.
#[test]
fn checkpoints_carry_the_runs_identity() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let first = sgd_trainer(checkpointed(dir.path()), source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let listed = |dir: &std::path::Path| -> Vec<usize> {
        CheckpointDir::new(dir, 1)
            .list()
            .unwrap()
            .into_iter()
            .map(|(step, _)| step)
            .collect()
    };
    let second = checkpointed(dir.path())
        .with_max_steps(Some(6))
        .with_keep_checkpoints(1)
        .with_seed(5);
    let err = sgd_trainer(second.clone(), source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 2), &device)
        .err()
        .expect("another run's checkpoints are there");
    assert!(matches!(err, TrainError::Occupied { .. }), "{err}");
    assert!(err.to_string().contains(&first.run_id), "{err}");
    assert!(err.to_string().contains("overwrite"), "{err}");
    assert_eq!(
        listed(dir.path()),
        vec![4, 2],
        "the first run's checkpoints are kept"
    );

    let (checkpoint, _) = CheckpointDir::new(dir.path(), 3).latest().unwrap().unwrap();
    assert_eq!(checkpoint.run_id, first.run_id);
    assert_eq!(
        checkpoint.run,
        run(SgdConfig::new(), 0.1, checkpointed(dir.path())).to_value(),
        "the run's config is in the checkpoint"
    );

    let replaced = sgd_trainer(second.with_overwrite(true), source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 2), &device)
        .unwrap();
    assert_ne!(replaced.run_id, first.run_id);
    assert_eq!(listed(dir.path()), vec![6]);
    let (checkpoint, _) = CheckpointDir::new(dir.path(), 3).latest().unwrap().unwrap();
    assert_eq!(checkpoint.run_id, replaced.run_id);

    // resume and overwrite contradict each other.
    let both = checkpointed(dir.path())
        .with_resume(true)
        .with_overwrite(true);
    assert!(
        Trainer::<Gpt, LmBatch>::new(&run(SgdConfig::new(), 0.1, both), source(16, 1)).is_err()
    );
}

/// Two runs' checkpoints in one folder never mix: a resumed run takes the newest valid
/// checkpoint's run and prunes only that run's checkpoints.
#[test]
fn a_resumed_run_prunes_only_its_own_checkpoints() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let run_a = sgd_trainer(checkpointed(&a), source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let config_b = |dir: &std::path::Path| {
        checkpointed(dir)
            .with_max_steps(Some(10))
            .with_keep_checkpoints(1)
            .with_seed(9)
    };
    let run_b = sgd_trainer(config_b(&b).with_keep_checkpoints(10), source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 2), &device)
        .unwrap();
    // b's step 6 lands in a's folder (a copy, a restore from backup).
    copy_dir(&b.join("step-00000006"), &a.join("step-00000006"));
    let resumed = sgd_trainer(config_b(&a).with_resume(true), source(16, 1), 0.1)
        .fit(tiny_gpt(&device, 2), &device)
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(6));
    assert_eq!(resumed.run_id, run_b.run_id);
    let left: Vec<(usize, String)> = CheckpointDir::new(&a, 1)
        .list()
        .unwrap()
        .into_iter()
        .map(|(step, path)| {
            (
                step,
                kiln_train::checkpoint::read_checkpoint(&path)
                    .unwrap()
                    .run_id,
            )
        })
        .collect();
    assert_eq!(
        left,
        vec![
            (10, run_b.run_id.clone()),
            (4, run_a.run_id.clone()),
            (2, run_a.run_id.clone())
        ]
    );
}

/// A truncated `best.bpk` fails its manifest like any file, and the previous checkpoint is
/// resumed instead of the run failing (its flipped bytes: `best_weights_are_checked_by_the_manifest`;
/// a renamed folder: `a_renamed_checkpoint_folder_is_skipped`).
#[test]
fn a_truncated_best_file_does_not_hide_a_valid_checkpoint() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = checkpointed(dir.path())
        .with_eval_every(1)
        .with_early_stopping(Some(EarlyStoppingConfig::new().with_patience(10)));
    let trainer =
        |config: TrainerConfig| sgd_trainer(config, source(32, 2), 0.05).with_eval(source(8, 3));
    trainer(config.clone())
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    let best = dir.path().join("step-00000004").join("best.bpk");
    let bytes = std::fs::read(&best).unwrap();
    std::fs::write(&best, &bytes[..bytes.len() / 2]).unwrap();
    let resumed = trainer(config.with_resume(true))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    assert_eq!(resumed.state.step, 4);
}

/// A checkpoint or run folder that cannot be written fails before the first step, not at the
/// first checkpoint after training began.
#[test]
fn writability_checked_before_training_starts() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "not a folder").unwrap();
    let steps = Arc::new(Mutex::new(0));
    let attempt = |config: TrainerConfig| {
        let counted = steps.clone();
        sgd_trainer(config, source(16, 1), 0.1)
            .with_hook(move |_: usize, model: Gpt| {
                *counted.lock().unwrap() += 1;
                Ok::<_, BoxError>(model)
            })
            .fit(tiny_gpt(&device, 1), &device)
            .err()
            .expect("must fail")
    };
    let under_a_file = file.join("ckpt");
    let err = attempt(checkpointed(&under_a_file));
    assert!(
        matches!(&err, TrainError::NotWritable { path, .. } if path == &under_a_file),
        "{err}"
    );
    let err = attempt(
        quiet(4)
            .with_batch_size(4)
            .with_run_dir(Some(under_a_file.display().to_string())),
    );
    assert!(matches!(err, TrainError::NotWritable { .. }), "{err}");
    assert_eq!(*steps.lock().unwrap(), 0, "no step was taken");

    // A read-only folder: root writes anyway, so there this part cannot fail and says so.
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    let mut permissions = std::fs::metadata(&read_only).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&read_only, permissions).unwrap();
    if std::fs::write(read_only.join("probe"), b"x").is_ok() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED the read-only folder case: this user (root?) writes into read-only folders ***\n"
        );
        return;
    }
    let err = attempt(checkpointed(&read_only));
    assert!(matches!(err, TrainError::NotWritable { .. }), "{err}");
    assert_eq!(*steps.lock().unwrap(), 0);
}

/// Absurd sizes in the config (or from flags) are refused when the trainer is built, before
/// anything is allocated or multiplied: no wrapped step count, no capacity overflow.
#[test]
fn sizes_bounded_with_limits() {
    let build = |config: TrainerConfig| {
        Trainer::<Gpt, LmBatch>::new(&run(SgdConfig::new(), 0.1, config), source(16, 1))
    };
    let refused = |config: TrainerConfig, what: &str| match build(config) {
        Err(TrainError::Limit(e)) => assert!(e.to_string().contains(what), "{e}"),
        Err(other) => panic!("{what}: expected a Limit error, got {other}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    let base = || quiet(4).with_batch_size(4);
    refused(base().with_max_epochs(Some(usize::MAX)), "max_epochs");
    refused(base().with_max_steps(Some(usize::MAX)), "max_steps");
    refused(base().with_batch_size(usize::MAX), "batch_size");
    refused(base().with_eval_batch_size(1 << 40), "eval_batch_size");
    refused(base().with_grad_accumulation(1 << 40), "grad_accumulation");
    refused(
        base()
            .with_batch_size(1 << 16)
            .with_grad_accumulation(1 << 16),
        "batch_size × grad_accumulation",
    );
    // Epochs times the steps of an epoch, each within bounds, past the ceiling together.
    let device = Device::flex().autodiff();
    let err = sgd_trainer(
        quiet(1)
            .with_max_steps(None)
            .with_max_epochs(Some(1 << 39))
            .with_batch_size(1),
        source(16, 1),
        0.1,
    )
    .fit(tiny_gpt(&device, 1), &device)
    .err()
    .expect("2^39 epochs of 16 steps is past the ceiling");
    assert!(matches!(err, TrainError::Limit(_)), "{err}");
}

/// Every byte read back from a checkpoint folder is untrusted: a manifest naming a file
/// outside the folder, one too large to read, an optimizer state of another model, a schedule
/// at another step, a loop state the run never reaches. Each is a typed error naming the file.
#[test]
fn checkpoint_files_are_untrusted() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    checkpointed_to_step_2(dir.path(), &device);
    let pristine = dir.path().join("pristine");
    copy_dir(&dir.path().join("step-00000002"), &pristine);
    let folder = dir.path().join("step-00000002");
    let reset = || {
        std::fs::remove_dir_all(&folder).unwrap();
        copy_dir(&pristine, &folder);
    };
    let resume = || {
        adamw_trainer(checkpointed(dir.path()).with_resume(true), source(16, 1))
            .fit(tiny_gpt(&device, 1), &device)
            .err()
            .expect("must be refused")
    };
    let expect = |err: TrainError, file: &str, reason: &str| {
        let text = err.to_string();
        assert!(
            text.contains(file) && text.contains(reason),
            "{file}, {reason}: {text}"
        );
    };

    edit_json(&folder, "manifest.json", |m| {
        m["files"][0]["name"] = "../pristine/model.bpk".into();
    });
    expect(resume(), "manifest.json", "not a checkpoint file");
    reset();

    let manifest = std::fs::File::options()
        .write(true)
        .open(folder.join("manifest.json"))
        .unwrap();
    manifest
        .set_len(kiln_train::limits::TEXT_FILE_BYTES.max() + 1)
        .unwrap();
    expect(resume(), "manifest.json", "ceiling");
    reset();

    // The optimizer state of a wider GPT (same parameter paths, other shapes).
    let other = tempfile::tempdir().unwrap();
    let wide = kiln_model::gpt::GptConfig::new(VOCAB)
        .with_block_size(SEQ)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(32)
        .init(&device)
        .unwrap();
    adamw_trainer(checkpointed(other.path()), source(16, 1))
        .fit(wide, &device)
        .unwrap();
    // A file of the other run, rehashed into the manifest: only its contents can refuse it.
    let transplant = |step: &str, name: &str, reason: &str| {
        std::fs::copy(other.path().join(step).join(name), folder.join(name)).unwrap();
        rehash(&folder, name);
        expect(resume(), name, reason);
        reset();
    };
    transplant("step-00000002", "optimizer.bpk", "the parameter is F32");
    transplant("step-00000004", "scheduler.bpk", "step");

    for (field, value, reason) in [
        (
            "skipped_steps",
            serde_json::json!(usize::MAX),
            "skipped steps",
        ),
        (
            "stopped_early",
            serde_json::json!(true),
            "without early stopping",
        ),
        ("units_seen", serde_json::json!(-1), "invalid value"),
    ] {
        edit_json(&folder, "trainer.json", |state| state[field] = value);
        expect(resume(), "trainer.json", reason);
        reset();
    }
    // A step past the run, in the state and the manifest alike: not the folder's step.
    edit_json(&folder, "trainer.json", |state| {
        state["step"] = (1u64 << 50).into()
    });
    edit_json(&folder, "manifest.json", |m| {
        m["step"] = (1u64 << 50).into()
    });
    expect(resume(), "step-00000002", "not the step its name says");
    reset();
    let resumed = adamw_trainer(checkpointed(dir.path()).with_resume(true), source(16, 1))
        .fit(tiny_gpt(&device, 1), &device)
        .unwrap();
    assert_eq!(
        resumed.resumed_from,
        Some(2),
        "the untouched folder resumes"
    );
}
