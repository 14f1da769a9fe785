//! LoRA under the Trainer (issue 22): only the adapters train, get optimizer state and go into
//! checkpoints; the frozen base comes out bit-identical; a run resumes bit-identical, and not
//! onto another base; accumulation, per-block recomputation, f16 and early stopping work on a
//! model with a frozen base.

mod common;

use burn::store::burn_pack::Reader;
use burn::tensor::{Bytes, Device};
use common::*;
use kiln_data::LmBatch;
use kiln_dist::flat::{Layout, read_params, write_params};
use kiln_model::gpt::Gpt;
use kiln_model::lora::{LoraConfig, LoraLinear, TargetModules};
use kiln_optim::{AdamWConfig, ScheduleConfig};
use kiln_train::{
    BatchSource, EarlyStoppingConfig, Metric, Precision, Recompute, RunConfig, TrainError, Trainer,
    TrainerConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Lora = Gpt<LoraLinear>;

fn source(len: usize, seed: u64) -> BatchSource<LmBatch> {
    BatchSource::new(RandomLm::new(len, seed), RandomLmBatcher)
}

/// The tiny GPT of `seed` with rank-4 adapters on attention's `c_attn` and the MLP's `c_fc`,
/// drawn (`B` too, so that the adapters matter from the first step) from generators of the
/// test's own: the device's generator is shared by the tests running beside it.
fn tiny_lora(device: &Device, seed: u64) -> Lora {
    with_adapters(tiny_gpt(device, seed), seed)
}

/// `base` with the adapters of [`tiny_lora`] drawn from `seed`.
fn with_adapters(base: Gpt, seed: u64) -> Lora {
    let config = LoraConfig::new()
        .with_r(4)
        .with_lora_alpha(8.0)
        .with_target_modules(Some(TargetModules::Names(vec![
            "c_attn".into(),
            "c_fc".into(),
        ])));
    let model = base.with_lora(&config).unwrap();
    let layout = Layout::trainable(&model);
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..layout.len)
        .map(|_| rng.random_range(-0.3f32..0.3))
        .collect();
    write_params(model, &layout, &values, |_| true)
}

fn trainer(config: TrainerConfig, data: BatchSource<LmBatch>) -> Trainer<Lora, LmBatch> {
    let run = RunConfig::new(
        (),
        (),
        AdamWConfig::new(),
        ScheduleConfig::Constant(1e-2),
        config,
    );
    Trainer::new(&run, data).unwrap()
}

fn quiet(steps: usize) -> TrainerConfig {
    TrainerConfig::new()
        .with_max_steps(Some(steps))
        .with_quiet(true)
        .with_batch_size(4)
}

fn frozen(model: &Lora) -> Vec<f32> {
    read_params(model, &Layout::frozen(model)).unwrap()
}

fn trainable(model: &Lora) -> Vec<f32> {
    read_params(model, &Layout::trainable(model)).unwrap()
}

fn tensor_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).unwrap();
    reader
        .into_tensors()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

#[test]
fn only_the_adapters_train_get_state_and_are_checkpointed() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_lora(&Device::flex(), 5);
    let (base, adapters) = (frozen(&model), trainable(&model));
    let (n_trainable, n_total) = model.trainable_parameters();
    assert_eq!(n_trainable, adapters.len());
    assert!(base.len() + adapters.len() == n_total && base.len() > 3 * adapters.len());

    let config = quiet(6)
        .with_checkpoint_every(3)
        .with_checkpoint_dir(Some(dir.path().display().to_string()));
    let outcome = trainer(config, source(24, 1)).fit(model, &device).unwrap();
    let trained = &outcome.model;
    assert_eq!(frozen(trained), base, "the base is bit-identical");
    assert!(
        max_abs_diff(&trainable(trained), &adapters) > 1e-3,
        "the adapters moved"
    );

    let step = dir.path().join("step-00000006");
    // The checkpoint's model file holds the adapters, nothing of the base.
    let names = tensor_names(&step.join("model.bpk"));
    assert_eq!(
        names.len(),
        2 * 2 * 4,
        "A and B of 4 layers in 2 blocks: {names:?}"
    );
    assert!(
        names.iter().all(|n| n.contains(".adapter.lora_")),
        "{names:?}"
    );
    // The optimizer's state is the adapters' alone: two moments per adapter tensor.
    let ids: Vec<String> = trained
        .adapters()
        .into_iter()
        .flat_map(|(_, a)| [a.lora_a.id.val().to_string(), a.lora_b.id.val().to_string()])
        .collect();
    let state = tensor_names(&step.join("optimizer.bpk"));
    assert!(!state.is_empty());
    assert!(
        state
            .iter()
            .all(|name| ids.iter().any(|id| name.starts_with(&format!("{id}.")))),
        "state for a frozen parameter: {state:?}"
    );
    assert!(
        ids.iter()
            .all(|id| state.iter().any(|n| n.starts_with(&format!("{id}."))))
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["frozen_sha256"].as_str().map(str::len), Some(64));
    let model_len = std::fs::metadata(step.join("model.bpk")).unwrap().len() as usize;
    assert!(
        model_len < 4 * base.len(),
        "{model_len} bytes for the adapters"
    );
}

#[test]
fn a_lora_run_resumes_bit_identical_and_not_onto_another_base() {
    let device = Device::flex().autodiff();
    let dir = tempfile::tempdir().unwrap();
    let config = |folder: &std::path::Path, steps: usize| {
        quiet(steps)
            .with_grad_accumulation(2)
            .with_shuffle(true)
            .with_clip_grad_norm(Some(0.5))
            .with_checkpoint_every(2)
            .with_keep_checkpoints(10)
            .with_checkpoint_dir(Some(folder.display().to_string()))
    };
    let full = trainer(config(&dir.path().join("full"), 6), source(40, 3))
        .fit(tiny_lora(&device, 11), &device)
        .unwrap();

    // Killed after step 4: its folder holds the checkpoints up to there. Resumed by a fresh
    // model with the same base and other adapter draws.
    let part = dir.path().join("part");
    for step in [2, 4] {
        let name = format!("step-{step:08}");
        let (from, to) = (dir.path().join("full").join(&name), part.join(&name));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    device.seed(99);
    let fresh = with_adapters(tiny_gpt(&device, 11), 99);
    assert_ne!(trainable(&fresh), trainable(&tiny_lora(&device, 11)));
    let resumed = trainer(config(&part, 6).with_resume(true), source(40, 3))
        .fit(fresh, &device)
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(
        trainable(&resumed.model),
        trainable(&full.model),
        "bit-identical adapters"
    );
    assert_eq!(frozen(&resumed.model), frozen(&full.model));

    // The same adapters over another base would be another run.
    let other = trainer(config(&part, 6).with_resume(true), source(40, 3))
        .fit(tiny_lora(&device, 12), &device);
    match other {
        Err(TrainError::ConfigChanged { field, .. }) => {
            assert!(field.contains("frozen parameters"), "{field}")
        }
        Err(e) => panic!("expected the base to be refused, got {e}"),
        Ok(_) => panic!("resumed onto another base"),
    }
}

/// Per-block and balanced recomputation, accumulation, f16 (with loss scaling), bf16 and early
/// stopping all run on a model whose base is frozen: recomputation trains as without it, half
/// precision close to f32, the base stays, the best adapters are kept.
#[test]
fn recomputation_accumulation_f16_and_early_stopping_keep_the_base() {
    let run = |recompute: Recompute, precision: Precision| {
        let device = recompute.training_device(&Device::flex());
        let model = tiny_lora(&Device::flex(), 21);
        let base = frozen(&model);
        let config = quiet(8)
            .with_grad_accumulation(2)
            .with_precision(precision)
            .with_recompute(recompute)
            .with_eval_every(2)
            .with_early_stopping(Some(
                EarlyStoppingConfig::new()
                    .with_metric(Metric::Loss)
                    .with_patience(10),
            ));
        let outcome = trainer(config, source(64, 4))
            .with_eval(source(16, 5))
            .fit(model, &device)
            .unwrap();
        assert_eq!(frozen(&outcome.model), base, "{recompute:?} {precision:?}");
        assert_eq!(outcome.state.skipped_steps, 0);
        let (_, best) = outcome.eval.clone().expect("evaluated");
        assert!(best.loss.is_finite());
        trainable(&outcome.model)
    };
    let plain = run(Recompute::None, Precision::F32);
    let per_block = run(Recompute::PerBlock, Precision::F32);
    let diff = max_abs_diff(&plain, &per_block);
    assert!(diff < 1e-5, "per-block recomputation differs by {diff}");
    let balanced = run(Recompute::Balanced, Precision::F32);
    let diff = max_abs_diff(&plain, &balanced);
    assert!(diff < 1e-5, "balanced recomputation differs by {diff}");
    for precision in [Precision::F16, Precision::Bf16] {
        let half = run(Recompute::None, precision);
        let diff = max_abs_diff(&plain, &half);
        assert!(diff < 5e-2 && diff > 0.0, "{precision:?} differs by {diff}");
    }
}

/// Under data parallelism the gradient all-reduce and ZeRO-1's shards cover the adapters alone:
/// the elements each step moves are the trainable ones, a fraction of the model's.
#[test]
fn data_parallel_moves_the_adapters_gradients_only() {
    use kiln_dist::{DataParallel, DataParallelConfig, ProcessGroup};
    let device = Device::flex().autodiff();
    let model = tiny_lora(&device, 2);
    let (trainable, _) = model.trainable_parameters();
    let dp = DataParallel::new(
        ProcessGroup::single(),
        DataParallelConfig::new().with_zero_stage(1),
        &model,
    )
    .unwrap();
    assert_eq!(dp.total_elements(), trainable);
    assert_eq!(dp.model_elements(), Layout::of(&model).len);
    assert!(dp.model_elements() > 3 * dp.total_elements());
    assert_eq!(
        dp.owned_elements(),
        trainable,
        "one rank owns every adapter"
    );
}
