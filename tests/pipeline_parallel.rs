//! Pipeline parallelism across processes: a 4-block GPT cut into stages over `mpirun -np 2`
//! and `-np 4`, each rank holding the whole model (same seed) and running its stage. The
//! gradients summed over the stages (the tied embedding's two parts add up) must be those of
//! one process accumulating the same micro-batches with the trainer's weighting, for GPipe and
//! 1F1B alike. The launch machinery is `common`'s, as in `data_parallel.rs`: without the `mpi`
//! feature or Open MPI the multi-process tests say loudly that they were skipped
//! (`cargo test --release --features mpi --test pipeline_parallel` runs them).

#[macro_use]
mod common;

use burn::optim::{GradientsAccumulator, GradientsParams};
use common::{CHILD, assert_success, launch};
use kiln::base::{Batch, TrainModel};
use kiln::data::addition::{AdditionBatcher, AdditionDataset, VOCAB_SIZE};
use kiln::dist::PipelineSchedule;
use kiln::dist::PipelineStage;
use kiln::dist::flat::{Layout, take_grads, write_params};
use kiln::dist::pipeline::stage_blocks;
use kiln::dist::{ProcessGroup, ReduceOp};
use kiln::prelude::*;
use kiln::train::MicroBatches;
use kiln::train::TrainError;
use kiln::train::pipeline::{pipeline_forward, pipeline_step};
use rand::Rng;

const BLOCKS: usize = 4;
const SCHEDULES: [PipelineSchedule; 2] = [PipelineSchedule::GPipe, PipelineSchedule::OneFOneB];

/// A 4-block GPT with tied embeddings whose weights depend on `seed` only.
fn gpt(device: &Device, seed: u64, dropout: f64) -> Gpt {
    let gpt = GptConfig::new(VOCAB_SIZE)
        .with_block_size(12)
        .with_n_layer(BLOCKS)
        .with_n_head(2)
        .with_d_model(16)
        .with_dropout(dropout)
        .init(device)
        .unwrap();
    assert!(gpt.lm_head.is_none(), "tied embeddings");
    let layout = Layout::of(&gpt);
    let mut rng = kiln::base::seed::rng(seed);
    let values: Vec<f32> = (0..layout.len)
        .map(|_| rng.random_range(-0.3..0.3))
        .collect();
    write_params(gpt, &layout, &values, |_| true)
}

/// A step of `m` micro-batches of different sizes (so their weights differ) and its units.
fn micro_batches(m: usize, device: &Device) -> (Vec<(usize, LmBatch)>, usize) {
    let data = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let mut next = 0;
    let batches: Vec<(usize, LmBatch)> = (0..m)
        .map(|k| {
            let size = 2 + (3 * k) % 5;
            let indices: Vec<usize> = (next..next + size).collect();
            next += size;
            (k, data.batch(&indices, device).unwrap())
        })
        .collect();
    let units = batches.iter().map(|(_, b)| b.weight()).sum();
    (batches, units)
}

/// The reference: one process, every micro-batch's loss weighted by its share of the units,
/// as the trainer's accumulation does. Returns the mean loss and the flat gradients.
fn accumulated(
    model: &Gpt,
    batches: &[(usize, LmBatch)],
    units: usize,
    loss_scale: f64,
) -> (f64, Vec<f32>) {
    let mut grads = GradientsAccumulator::<Gpt>::new();
    let mut loss = 0.0;
    for (_, batch) in batches {
        let share = batch.weight() as f64 / units as f64;
        let out = model.forward_step(batch).unwrap();
        let backward = (out.loss.clone() * (loss_scale * share)).backward();
        grads.accumulate(model, GradientsParams::from_grads(backward, model));
        loss += out.loss.into_scalar::<f64>() * share;
    }
    (loss, flat(model, grads.grads()))
}

fn flat(model: &Gpt, mut grads: GradientsParams) -> Vec<f32> {
    take_grads(model, &Layout::of(model), &mut grads).unwrap().0
}

/// The pipeline's step on `stage`, loss and gradients summed over the pipeline group (a
/// parameter without a gradient on a rank counts as zero there).
fn pipelined(
    model: &Gpt,
    stage: &PipelineStage,
    schedule: PipelineSchedule,
    batches: &[(usize, LmBatch)],
    units: usize,
    loss_scale: f64,
    precision: Precision,
) -> (f64, Vec<f32>) {
    let device = Device::flex().autodiff();
    let step = MicroBatches {
        batches: batches.to_vec(),
        units,
        loss_scale,
        seed: 7,
    };
    let (loss, grads) = pipeline_step(model, stage, schedule, &step, precision, &device).unwrap();
    let mut grads = flat(model, grads);
    stage
        .group
        .all_reduce_f32(&mut grads, ReduceOp::Sum)
        .unwrap();
    let mut loss = [loss];
    stage
        .group
        .all_reduce_f64(&mut loss, ReduceOp::Sum)
        .unwrap();
    (loss[0], grads)
}

/// The largest difference relative to the reference's largest magnitude.
fn relative_diff(found: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(found.len(), reference.len());
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "the reference gradient is not zero");
    let diff = found
        .iter()
        .zip(reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

// ------------------------------------------------------------------------------------------
// One process: a pipeline of one stage is plain accumulation (runs without MPI).

#[test]
fn one_stage_is_accumulation() {
    let device = Device::flex().autodiff();
    let model = gpt(&device, 3, 0.0);
    let stage = PipelineStage::balanced(ProcessGroup::single(), BLOCKS).unwrap();
    assert!(stage.is_first() && stage.is_last());
    assert_eq!(stage.blocks, 0..BLOCKS);
    let (batches, units) = micro_batches(3, &device);
    let (loss, reference) = accumulated(&model, &batches, units, 4.0);
    for schedule in SCHEDULES {
        let (pipe_loss, grads) = pipelined(
            &model,
            &stage,
            schedule,
            &batches,
            units,
            4.0,
            Precision::F32,
        );
        assert!((pipe_loss - loss).abs() < 1e-9, "{pipe_loss} vs {loss}");
        let diff = relative_diff(&grads, &reference);
        assert!(diff <= 1e-6, "{schedule:?}: gradients differ by {diff}");
    }
    // The forward pass for evaluation: each batch's loss.
    let valid = model.valid();
    let plain: Vec<LmBatch> = batches.iter().map(|(_, b)| b.without_autodiff()).collect();
    let outputs =
        pipeline_forward(&valid, &stage, &plain, Precision::F32, &Device::flex()).unwrap();
    assert_eq!(outputs.len(), plain.len());
    for (out, batch) in outputs.into_iter().zip(&plain) {
        let expected: f64 = valid.forward_step(batch).unwrap().loss.into_scalar();
        let found: f64 = out.loss.into_scalar();
        assert!((found - expected).abs() < 1e-6, "{found} vs {expected}");
    }
}

#[test]
fn a_stage_outside_the_model_is_an_error() {
    let device = Device::flex().autodiff();
    let model = gpt(&device, 3, 0.0);
    let (batches, units) = micro_batches(1, &device);
    let stage = PipelineStage {
        group: ProcessGroup::single(),
        blocks: 2..6,
    };
    let step = MicroBatches {
        batches,
        units,
        loss_scale: 1.0,
        seed: 0,
    };
    let err = pipeline_step(
        &model,
        &stage,
        PipelineSchedule::default(),
        &step,
        Precision::F32,
        &device,
    )
    .expect_err("blocks 4 and 5 do not exist");
    assert!(
        matches!(&err, TrainError::InvalidConfig(m) if m.contains("2..6") && m.contains("has 4")),
        "{err}"
    );
    assert!(PipelineStage::balanced(ProcessGroup::single(), 0).is_err());
}

// ------------------------------------------------------------------------------------------
// Many processes.

/// What a child does: read the scenario and run it on this rank.
#[test]
#[ignore = "a rank of the multi-process tests: they run it under mpirun"]
fn child() {
    let scenario = std::env::var(CHILD).expect("run by the pipeline tests under mpirun");
    let group = ProcessGroup::from_env().expect("a process group");
    // A rank that fails ends the job at once: unwinding would wait in MPI for peers that wait
    // for it, until the job's timeout.
    let run = std::panic::AssertUnwindSafe(|| match scenario.as_str() {
        "gradients" => gradients_child(group.clone()),
        other => panic!("unknown scenario {other}"),
    });
    if std::panic::catch_unwind(run).is_err() {
        group.abort(1);
    }
}

/// Every rank checks (rank 0 prints) that the pipeline over the world matches one process,
/// for both schedules and several numbers of micro-batches, more and fewer than the stages.
fn gradients_child(group: ProcessGroup) {
    let (stages, rank) = (group.size(), group.rank());
    let device = Device::flex().autodiff();
    let model = gpt(&device, 11, 0.0);
    let stage = PipelineStage {
        group: group.clone(),
        blocks: stage_blocks(BLOCKS, stages, rank).unwrap(),
    };
    let counts: &[usize] = if stages == 4 { &[8, 2, 1] } else { &[4, 1, 3] };
    for &m in counts {
        let (batches, units) = micro_batches(m, &device);
        let loss_scale = if m == 1 { 16.0 } else { 1.0 };
        let (loss, reference) = accumulated(&model, &batches, units, loss_scale);
        let mut by_schedule = Vec::new();
        for schedule in SCHEDULES {
            let (pipe_loss, grads) = pipelined(
                &model,
                &stage,
                schedule,
                &batches,
                units,
                loss_scale,
                Precision::F32,
            );
            let diff = relative_diff(&grads, &reference);
            if group.is_main() {
                println!(
                    "{stages} stages, {m} micro-batches, {schedule:?}: loss {pipe_loss}, gradients within {diff:e}"
                );
            }
            assert!(
                (pipe_loss - loss).abs() <= 1e-9 * loss.abs(),
                "{schedule:?}, m = {m}: loss {pipe_loss} vs {loss}"
            );
            assert!(
                diff <= 1e-6,
                "{schedule:?}, m = {m}: gradients differ by {diff} of their scale"
            );
            by_schedule.push((pipe_loss, grads));
        }
        assert_eq!(by_schedule[0], by_schedule[1], "GPipe and 1F1B, m = {m}");
    }

    // Dropout: each micro-batch draws the same masks however the blocks are cut, so the
    // pipeline equals a pipeline of one stage (every rank computes that one alone).
    let dropped = gpt(&device, 11, 0.2);
    let (batches, units) = micro_batches(3, &device);
    let whole = PipelineStage::balanced(ProcessGroup::single(), BLOCKS).unwrap();
    let (alone_loss, alone) = pipelined(
        &dropped,
        &whole,
        PipelineSchedule::GPipe,
        &batches,
        units,
        1.0,
        Precision::F32,
    );
    let (_, without_dropout) = accumulated(&model, &batches, units, 1.0);
    assert!(
        relative_diff(&alone, &without_dropout) > 1e-3,
        "dropout is on"
    );
    let (loss, grads) = pipelined(
        &dropped,
        &stage,
        PipelineSchedule::OneFOneB,
        &batches,
        units,
        1.0,
        Precision::F32,
    );
    let diff = relative_diff(&grads, &alone);
    assert!(diff <= 1e-6, "dropout: gradients differ by {diff}");
    assert!(
        (loss - alone_loss).abs() <= 1e-9,
        "dropout: loss {loss} vs {alone_loss}"
    );

    // Half precision: bf16 activations and gradients travel as f32 (exactly) and come back as
    // bf16; against one stage, only the tied embedding's two parts are summed in another
    // order (in f32 here, in bf16 within one backward pass there).
    let (alone_loss, alone) = pipelined(
        &model,
        &whole,
        PipelineSchedule::GPipe,
        &batches,
        units,
        1.0,
        Precision::Bf16,
    );
    let (loss, grads) = pipelined(
        &model,
        &stage,
        PipelineSchedule::OneFOneB,
        &batches,
        units,
        1.0,
        Precision::Bf16,
    );
    let diff = relative_diff(&grads, &alone);
    if group.is_main() {
        println!(
            "{stages} stages in bf16: loss {loss} (one stage: {alone_loss}), gradients within {diff:e}"
        );
    }
    assert!(diff <= 1e-2, "bf16: gradients differ by {diff}");
    assert!(
        (loss - alone_loss).abs() <= 1e-6,
        "bf16: loss {loss} vs {alone_loss}"
    );

    // Evaluation's forward pass: the last stage gets each batch's loss.
    let valid = model.valid();
    let plain: Vec<LmBatch> = batches.iter().map(|(_, b)| b.without_autodiff()).collect();
    let outputs =
        pipeline_forward(&valid, &stage, &plain, Precision::F32, &Device::flex()).unwrap();
    if stage.is_last() {
        assert_eq!(outputs.len(), plain.len());
        for (out, batch) in outputs.into_iter().zip(&plain) {
            let expected: f64 = valid.forward_step(batch).unwrap().loss.into_scalar();
            let found: f64 = out.loss.into_scalar();
            assert!((found - expected).abs() < 1e-6, "{found} vs {expected}");
        }
    } else {
        assert!(outputs.is_empty());
    }
    group.barrier().unwrap();
}

/// 2 stages with 4 micro-batches and 4 stages with 8 (and the edge cases each child runs).
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn stages_equal_one_process_accumulating() {
    skip_unless_mpi!();
    for (stages, micro_batches) in [(2, 4), (4, 8)] {
        let output = launch(stages, false, "gradients", &[]);
        assert_success(&output, &format!("a pipeline of {stages} stages"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!(
                "{stages} stages, {micro_batches} micro-batches, OneFOneB"
            )),
            "{stdout}"
        );
    }
}
