//! Data parallelism across processes. These tests launch `mpirun` themselves: each runs this
//! test binary again under `mpirun -np N` (the ignored `child` test, told what to do through
//! the environment) and checks what the ranks did against one process doing the same work.
//! They need the `mpi` feature and Open MPI (`cargo test --release --features mpi --test
//! data_parallel`); without them each test says loudly that it was skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{CHILD, JOB_TIMEOUT, OUT, assert_success, launch, max_abs_diff, mpirun};
use kiln::data::addition::{AdditionBatcher, AdditionDataset, VOCAB_SIZE};
use kiln::dist::flat::{Layout, read_params, write_params};
use kiln::dist::{DataParallelConfig, ProcessGroup, ReduceDtype, ReduceOp};
use kiln::prelude::*;
use kiln::train::EvalMetrics;
use rand::Rng;

/// What a child does: read the scenario and run it on this rank.
#[test]
#[ignore = "a rank of the multi-process tests: they run it under mpirun"]
fn child() {
    let scenario = std::env::var(CHILD).expect("run by the data_parallel tests under mpirun");
    let group = ProcessGroup::from_env().expect("a process group");
    match scenario.as_str() {
        "collectives" => collectives(&group),
        "train" => train_child(&group),
        "mismatch" => mismatch_child(&group),
        "exit_early" => exit_early_child(&group),
        other => panic!("unknown scenario {other}"),
    }
}

// ------------------------------------------------------------------------------------------
// Collectives against their definitions.

fn collectives(group: &ProcessGroup) {
    let (rank, n) = (group.rank(), group.size());
    assert!(n > 1, "a child runs in parallel");
    let r = rank as f32;
    let values = |r: f32| vec![r + 1.0, -10.0 * (r + 1.0), r * r];
    let all: Vec<Vec<f32>> = (0..n).map(|q| values(q as f32)).collect();
    let column = |i: usize| all.iter().map(move |v| v[i]);

    let mut sum = values(r);
    group.all_reduce_f32(&mut sum, ReduceOp::Sum).unwrap();
    assert_eq!(sum, (0..3).map(|i| column(i).sum()).collect::<Vec<f32>>());
    let mut mean = values(r);
    group.all_reduce_f32(&mut mean, ReduceOp::Mean).unwrap();
    for (i, m) in mean.iter().enumerate() {
        assert!((m - column(i).sum::<f32>() / n as f32).abs() < 1e-6);
    }
    let mut max = values(r);
    group.all_reduce_f32(&mut max, ReduceOp::Max).unwrap();
    assert_eq!(
        max,
        (0..3)
            .map(|i| column(i).fold(f32::MIN, f32::max))
            .collect::<Vec<_>>()
    );
    let mut min = values(r);
    group.all_reduce_f32(&mut min, ReduceOp::Min).unwrap();
    assert_eq!(
        min,
        (0..3)
            .map(|i| column(i).fold(f32::MAX, f32::min))
            .collect::<Vec<_>>()
    );
    let mut counts = [rank as f64, 1.0];
    group.all_reduce_f64(&mut counts, ReduceOp::Sum).unwrap();
    assert_eq!(counts, [(n * (n - 1) / 2) as f64, n as f64]);

    // An all-reduce long enough to be chunked differently, the same bits on every rank.
    let long: Vec<f32> = (0..10_007).map(|i| (i as f32 * 0.37 + r).sin()).collect();
    let mut reduced = long.clone();
    group.all_reduce_f32(&mut reduced, ReduceOp::Sum).unwrap();
    let expected: Vec<f32> = (0..10_007)
        .map(|i| {
            (0..n)
                .map(|q| (i as f32 * 0.37 + q as f32).sin())
                .sum::<f32>()
        })
        .collect();
    let worst = reduced
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "all-reduce off by {worst}");
    same_everywhere(group, bytemuck_bytes(&reduced), "an f32 all-reduce");

    // Half-precision traffic: close to the f32 sum, identical on every rank.
    for dtype in [ReduceDtype::F16, ReduceDtype::Bf16] {
        let mut half = long.clone();
        kiln::dist::ring::all_reduce(group, &mut half, ReduceOp::Sum, dtype).unwrap();
        let tolerance = if dtype == ReduceDtype::F16 {
            5e-3
        } else {
            5e-2
        } * n as f32;
        let worst = half
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < tolerance, "{dtype:?} ring off by {worst}");
        same_everywhere(group, bytemuck_bytes(&half), "a half-precision all-reduce");
    }

    // Broadcast from the last rank.
    let mut bytes = if rank == n - 1 {
        b"from the last".to_vec()
    } else {
        vec![0; 13]
    };
    group.broadcast_bytes(&mut bytes, n - 1).unwrap();
    assert_eq!(bytes, b"from the last");
    let mut grown = if rank == 0 {
        vec![7u8; 1000]
    } else {
        Vec::new()
    };
    group.broadcast_vec(&mut grown, 0).unwrap();
    assert_eq!(grown, vec![7u8; 1000]);

    // All-gather of different lengths, and of equal f32 blocks.
    let gathered = group.all_gather_vec(&vec![rank as u8; rank + 1]).unwrap();
    assert_eq!(
        gathered,
        (0..n).map(|q| vec![q as u8; q + 1]).collect::<Vec<_>>()
    );
    let mut blocks = vec![0.0f32; 2 * n];
    group.all_gather_f32(&[r, -r], &mut blocks).unwrap();
    assert_eq!(
        blocks,
        (0..n)
            .flat_map(|q| [q as f32, -(q as f32)])
            .collect::<Vec<_>>()
    );

    // Reduce-scatter: block `rank` of the sum.
    let send: Vec<f32> = (0..2 * n).map(|i| (i * 10) as f32 + r).collect();
    let mut mine = [0.0f32; 2];
    group
        .reduce_scatter_f32(&send, &mut mine, ReduceOp::Sum)
        .unwrap();
    let ranks_sum = (n * (n - 1) / 2) as f32;
    assert_eq!(
        mine,
        [
            (20 * rank) as f32 * n as f32 + ranks_sum,
            (20 * rank + 10) as f32 * n as f32 + ranks_sum
        ]
    );

    // Send and receive around a ring.
    let (next, prev) = ((rank + 1) % n, (rank + n - 1) % n);
    let mut got = [0u8; 1];
    group
        .communicator()
        .send_recv(&[rank as u8], next, &mut got, prev)
        .unwrap();
    assert_eq!(got[0] as usize, prev);
    if rank == 0 {
        group.send_f32(&[1.5, 2.5], 1, 9).unwrap();
    } else if rank == 1 {
        let mut pair = [0.0f32; 2];
        group.recv_f32(&mut pair, 0, 9).unwrap();
        assert_eq!(pair, [1.5, 2.5]);
    }

    // Sub-groups: even and odd ranks.
    let sub = group.split(rank % 2, rank).unwrap();
    let members: Vec<usize> = (0..n).filter(|q| q % 2 == rank % 2).collect();
    assert_eq!(sub.size(), members.len());
    assert_eq!(sub.rank(), members.iter().position(|&q| q == rank).unwrap());
    let mut in_sub = [rank as f32];
    sub.all_reduce_f32(&mut in_sub, ReduceOp::Sum).unwrap();
    assert_eq!(in_sub[0], members.iter().sum::<usize>() as f32);

    // The same on Burn tensors.
    let device = Device::flex();
    let t = Tensor::<2>::from_floats([[r, 1.0], [2.0, r]], &device);
    let summed = group.all_reduce_tensor(t.clone(), ReduceOp::Sum).unwrap();
    let s = ranks_sum;
    summed.into_data().assert_eq(
        &TensorData::from([[s, n as f32], [2.0 * n as f32, s]]),
        true,
    );
    let from_zero = group.broadcast_tensor(t.clone(), 0).unwrap();
    from_zero
        .into_data()
        .assert_eq(&TensorData::from([[0.0f32, 1.0], [2.0, 0.0]]), true);
    let stacked = group.all_gather_tensor(t.clone(), 0).unwrap();
    assert_eq!(stacked.dims(), [2 * n, 2]);
    let rows = Tensor::<2>::from_data(
        TensorData::new(
            (0..2 * n).map(|i| i as f32 + r).collect::<Vec<f32>>(),
            [n, 2],
        ),
        &device,
    );
    let block = group.reduce_scatter_tensor(rows, 0, ReduceOp::Sum).unwrap();
    block.into_data().assert_eq(
        &TensorData::new(
            vec![
                (2 * rank) as f32 * n as f32 + s,
                (2 * rank + 1) as f32 * n as f32 + s,
            ],
            [1, 2],
        ),
        true,
    );
    group.barrier().unwrap();
}

fn bytemuck_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Every rank holds the same bytes.
fn same_everywhere(group: &ProcessGroup, bytes: Vec<u8>, what: &str) {
    let all = group.all_gather_vec(&bytes).unwrap();
    assert!(
        all.iter().all(|b| b == &all[0]),
        "{what} differs between ranks"
    );
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn collectives_match_their_definitions() {
    skip_unless_mpi!();
    for (ranks, tcp) in [(2, false), (3, false), (4, false), (2, true)] {
        let output = launch(ranks, tcp, "collectives", &[]);
        assert_success(
            &output,
            &format!("collectives on {ranks} ranks (tcp: {tcp})"),
        );
    }
}

// ------------------------------------------------------------------------------------------
// Training: N ranks against one process accumulating N times as many micro-batches.

/// What one training run is set to.
#[derive(Clone, Debug)]
struct Setting {
    /// AdamW, or SGD with momentum: linear in the gradients, so that differences in the last
    /// bits of a sum stay that small (AdamW's normalization turns a near-zero gradient's last
    /// bits into a step of ±lr).
    adamw: bool,
    accumulation: usize,
    zero_stage: usize,
    bucket_mb: f64,
    reduce_dtype: ReduceDtype,
    dropout: f64,
    /// LoRA adapters on a frozen base: only their gradients are all-reduced.
    lora: bool,
    /// Each micro-batch's gradients reduced apart (`exact_accumulation`).
    exact: bool,
}

impl Setting {
    fn plain() -> Self {
        Self {
            adamw: true,
            accumulation: 1,
            zero_stage: 0,
            bucket_mb: 25.0,
            reduce_dtype: ReduceDtype::F32,
            dropout: 0.0,
            lora: false,
            exact: false,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KILN_DP_ADAMW", self.adamw.to_string()),
            ("KILN_DP_ACCUM", self.accumulation.to_string()),
            ("KILN_DP_ZERO", self.zero_stage.to_string()),
            ("KILN_DP_BUCKET_MB", self.bucket_mb.to_string()),
            ("KILN_DP_DTYPE", format!("{:?}", self.reduce_dtype)),
            ("KILN_DP_DROPOUT", self.dropout.to_string()),
            ("KILN_DP_LORA", self.lora.to_string()),
            ("KILN_DP_EXACT", self.exact.to_string()),
        ]
    }

    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
        Self {
            adamw: var("KILN_DP_ADAMW").parse().unwrap(),
            accumulation: var("KILN_DP_ACCUM").parse().unwrap(),
            zero_stage: var("KILN_DP_ZERO").parse().unwrap(),
            bucket_mb: var("KILN_DP_BUCKET_MB").parse().unwrap(),
            reduce_dtype: match var("KILN_DP_DTYPE").as_str() {
                "F16" => ReduceDtype::F16,
                "Bf16" => ReduceDtype::Bf16,
                _ => ReduceDtype::F32,
            },
            dropout: var("KILN_DP_DROPOUT").parse().unwrap(),
            lora: var("KILN_DP_LORA").parse().unwrap(),
            exact: var("KILN_DP_EXACT").parse().unwrap(),
        }
    }
}

const STEPS: usize = 4;
const BATCH: usize = 4;

/// A tiny GPT whose weights depend on `seed` only (not on the device generator, which the
/// test threads share).
fn tiny_gpt(device: &Device, seed: u64, d_model: usize, dropout: f64) -> Gpt {
    let gpt = GptConfig::new(VOCAB_SIZE)
        .with_block_size(12)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(d_model)
        .with_dropout(dropout)
        .init(device)
        .unwrap();
    let layout = Layout::of(&gpt);
    let mut rng = kiln::base::seed::rng(seed);
    let values: Vec<f32> = (0..layout.len)
        .map(|_| rng.random_range(-0.2..0.2))
        .collect();
    write_params(gpt, &layout, &values, |_| true)
}

/// Trains the tiny GPT for [`STEPS`] steps on `group` (a single process with `accumulation`
/// micro-batches per step when the group is one process); returns the parameters and the
/// last evaluation.
fn train(group: &ProcessGroup, setting: &Setting, accumulation: usize) -> (Vec<f32>, EvalMetrics) {
    let _alone = common::in_process();
    let device = Device::flex().autodiff();
    let trainer = TrainerConfig::new()
        .with_max_steps(Some(STEPS))
        .with_batch_size(BATCH)
        .with_grad_accumulation(accumulation)
        .with_eval_every(2)
        .with_eval_items(Some(40))
        .with_eval_batch_size(8)
        .with_seed(5)
        .with_quiet(true)
        .with_data_parallel(
            DataParallelConfig::new()
                .with_zero_stage(setting.zero_stage)
                .with_exact_accumulation(setting.exact)
                .with_bucket_mb(setting.bucket_mb)
                .with_reduce_dtype(setting.reduce_dtype),
        );
    let (optimizer, lr): (OptimizerConfig, f64) = if setting.adamw {
        (AdamWConfig::new().into(), 1e-2)
    } else {
        (kiln::optim::SgdConfig::new().with_momentum(0.9).into(), 0.1)
    };
    let run = RunConfig::new((), (), optimizer, ScheduleConfig::Constant(lr), trainer);
    let gpt = tiny_gpt(&device, 11, 16, setting.dropout);
    if setting.lora {
        // Adapters drawn from a seeded generator: the same on every rank and in the reference
        // (rank 0's are broadcast anyway).
        device.seed(3);
        let config = kiln::model::lora::LoraConfig::new()
            .with_r(2)
            .with_init_lora_weights(kiln::model::lora::LoraInit::Random)
            .with_target_modules(Some(kiln::model::lora::TargetModules::Names(vec![
                "c_attn".into(),
                "c_fc".into(),
            ])));
        fit(&run, group, gpt.with_lora(&config).unwrap(), &device)
    } else {
        fit(&run, group, gpt, &device)
    }
}

/// Trains `model` with `run` on `group`; every parameter after training and the last
/// evaluation.
fn fit<M: kiln::train::TrainModel<LmBatch> + kiln::dist::ParallelModel>(
    run: &RunConfig<(), ()>,
    group: &ProcessGroup,
    model: M,
    device: &Device,
) -> (Vec<f32>, EvalMetrics) {
    let data = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let outcome = Trainer::new(run, data.clone())
        .unwrap()
        .with_eval(data)
        .with_process_group(group.clone())
        .fit(model, device)
        .unwrap();
    let params = read_params(&outcome.model, &Layout::of(&outcome.model)).unwrap();
    (params, outcome.last_eval.unwrap().1)
}

fn train_child(group: &ProcessGroup) {
    let setting = Setting::from_env();
    let (params, eval) = train(group, &setting, setting.accumulation);
    // Every rank ends with the same model.
    same_everywhere(group, bytemuck_bytes(&params), "the trained parameters");
    if group.is_main() {
        let out = PathBuf::from(std::env::var(OUT).unwrap());
        std::fs::write(&out, bytemuck_bytes(&params)).unwrap();
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_vec(&eval).unwrap(),
        )
        .unwrap();
    }
}

/// Runs `setting` on `ranks` ranks; returns rank 0's parameters and evaluation.
fn train_in_parallel(ranks: usize, tcp: bool, setting: &Setting) -> (Vec<f32>, EvalMetrics) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("params.bin");
    let mut env = setting.env();
    env.push((OUT, out.display().to_string()));
    let output = launch(ranks, tcp, "train", &env);
    assert_success(&output, &format!("training on {ranks} ranks, {setting:?}"));
    let bytes = std::fs::read(&out).unwrap();
    let params = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let eval = serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    (params, eval)
}

/// Two ranks of one micro-batch each take the step of one process accumulating two, bit for
/// bit (a + b == b + a), whatever the bucket size, with ZeRO-1, with dropout, over TCP.
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn two_ranks_equal_one_process_accumulating_bit_for_bit() {
    skip_unless_mpi!();
    let single = ProcessGroup::single();
    let plain = Setting::plain();
    let (reference, reference_eval) = train(&single, &plain, 2);
    let initial = tiny_gpt(&Device::flex(), 11, 16, 0.0);
    let initial = read_params(&initial, &Layout::of(&initial)).unwrap();
    assert!(
        max_abs_diff(&initial, &reference) > 1e-3,
        "training moved the weights"
    );
    let variants = [
        ("plain", plain.clone(), false),
        (
            "buckets of 1000 values",
            Setting {
                bucket_mb: 0.004,
                ..plain.clone()
            },
            false,
        ),
        (
            "ZeRO-1",
            Setting {
                zero_stage: 1,
                ..plain.clone()
            },
            false,
        ),
        (
            "ZeRO-2",
            Setting {
                zero_stage: 2,
                ..plain.clone()
            },
            false,
        ),
        ("TCP", plain.clone(), true),
        (
            "ZeRO-1 over TCP",
            Setting {
                zero_stage: 1,
                ..plain.clone()
            },
            true,
        ),
    ];
    // LoRA: only the adapters' gradients are all-reduced (and sharded under ZeRO-1).
    let lora = Setting {
        lora: true,
        ..plain.clone()
    };
    let (lora_reference, lora_eval) = train(&single, &lora, 2);
    for (name, setting) in [
        ("LoRA", lora.clone()),
        (
            "LoRA with ZeRO-1",
            Setting {
                zero_stage: 1,
                ..lora.clone()
            },
        ),
        (
            "LoRA with ZeRO-2",
            Setting {
                zero_stage: 2,
                ..lora.clone()
            },
        ),
    ] {
        let (params, eval) = train_in_parallel(2, false, &setting);
        assert!(
            params == lora_reference,
            "{name}: differs by {}",
            max_abs_diff(&params, &lora_reference)
        );
        assert!((eval.loss - lora_eval.loss).abs() < 1e-9, "{name}");
    }
    for (name, setting, tcp) in variants {
        let (params, eval) = train_in_parallel(2, tcp, &setting);
        assert!(
            params == reference,
            "{name}: differs by {}",
            max_abs_diff(&params, &reference)
        );
        assert!(
            (eval.loss - reference_eval.loss).abs() < 1e-9,
            "{name}: eval {eval:?} vs {reference_eval:?}"
        );
        assert_eq!(eval.units, reference_eval.units);
    }
    // Dropout: each micro-batch draws its masks from (step, micro-batch index), wherever it runs.
    let dropout = Setting {
        dropout: 0.1,
        ..plain
    };
    let (reference, _) = train(&single, &dropout, 2);
    let (params, _) = train_in_parallel(2, false, &dropout);
    assert!(
        params == reference,
        "dropout: differs by {}",
        max_abs_diff(&params, &reference)
    );
}

/// Any number of ranks with one micro-batch each gives one process accumulating as many, bit
/// for bit: the gradient all-reduce sums in rank order, as accumulation sums micro-batches
/// (`kiln::dist::ordered`; MPI's own reduction associated differently from three ranks on).
/// With several micro-batches on each rank the sums associate differently (`(m0 + m1) + (m2 +
/// m3)` against `((m0 + m1) + m2) + m3`): within 1e-6, and bit for bit with
/// `exact_accumulation`, which reduces each micro-batch apart. (SGD with momentum: see
/// [`Setting::adamw`].)
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn any_number_of_ranks_equals_one_process_accumulating() {
    skip_unless_mpi!();
    let single = ProcessGroup::single();
    // (ranks, accumulation, ZeRO stage, exact_accumulation, bit for bit)
    for (ranks, accumulation, zero_stage, apart, exact) in [
        (3, 1, 0, false, true),
        (4, 1, 1, false, true),
        (3, 1, 2, false, true),
        (2, 2, 0, false, false),
        (2, 2, 0, true, true),
        (3, 2, 2, true, true),
    ] {
        let setting = Setting {
            adamw: false,
            accumulation,
            zero_stage,
            exact: apart,
            ..Setting::plain()
        };
        let (reference, reference_eval) = train(&single, &setting, ranks * accumulation);
        let (params, eval) = train_in_parallel(ranks, false, &setting);
        let diff = max_abs_diff(&params, &reference);
        if exact {
            assert!(
                params == reference,
                "{ranks} ranks x {accumulation}: parameters differ by {diff}, not bit for bit"
            );
        }
        assert!(
            diff <= 1e-6,
            "{ranks} ranks x {accumulation}: parameters differ by {diff}"
        );
        // Evaluation sums its batches' losses across the ranks in MPI's order.
        assert!(
            (eval.loss - reference_eval.loss).abs() <= 1e-6,
            "{eval:?} vs {reference_eval:?}"
        );
        assert_eq!(
            eval.accuracy.map(|a| (a * 1e6).round()),
            reference_eval.accuracy.map(|a| (a * 1e6).round())
        );
    }
}

/// Gradients travelling in f16 or bf16 stay close to f32's run (the loss of precision is
/// measured in docs/benchmarks.md).
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn half_precision_reduction_stays_close_to_f32() {
    skip_unless_mpi!();
    let sgd = Setting {
        adamw: false,
        ..Setting::plain()
    };
    let (reference, _) = train(&ProcessGroup::single(), &sgd, 2);
    let initial = tiny_gpt(&Device::flex(), 11, 16, 0.0);
    let moved = max_abs_diff(
        &read_params(&initial, &Layout::of(&initial)).unwrap(),
        &reference,
    );
    for (dtype, tolerance) in [(ReduceDtype::F16, 1e-3), (ReduceDtype::Bf16, 1e-2)] {
        let setting = Setting {
            reduce_dtype: dtype,
            ..sgd.clone()
        };
        let (params, _) = train_in_parallel(2, false, &setting);
        let diff = max_abs_diff(&params, &reference);
        assert!(
            diff < tolerance * moved,
            "{dtype:?}: parameters differ by {diff}, training moved them by {moved}"
        );
        assert!(
            diff > 0.0,
            "{dtype:?}: the traffic must really be half precision"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Failures: a different model on one rank, a rank that dies.

fn mismatch_child(group: &ProcessGroup) {
    let device = Device::flex().autodiff();
    let d_model = if group.rank() == 1 { 32 } else { 16 };
    let run = RunConfig::new(
        (),
        (),
        AdamWConfig::new(),
        ScheduleConfig::Constant(1e-2),
        TrainerConfig::new()
            .with_max_steps(Some(1))
            .with_batch_size(2)
            .with_quiet(true),
    );
    let data = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let err = Trainer::new(&run, data)
        .unwrap()
        .with_process_group(group.clone())
        .fit(tiny_gpt(&device, 1, d_model, 0.0), &device)
        .err()
        .expect("different models must be refused");
    let message = err.to_string();
    assert!(message.contains("rank 1's model differs"), "{message}");
    assert!(
        message.contains("token_embedding.weight [12, 16]"),
        "{message}"
    );
    assert!(message.contains("[12, 32]"), "{message}");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn different_models_on_the_ranks_are_named() {
    skip_unless_mpi!();
    let output = launch(2, false, "mismatch", &[]);
    assert_success(&output, "the mismatch check");
}

fn exit_early_child(group: &ProcessGroup) {
    let device = Device::flex().autodiff();
    let rank = group.rank();
    let run = RunConfig::new(
        (),
        (),
        AdamWConfig::new(),
        ScheduleConfig::Constant(1e-2),
        TrainerConfig::new()
            .with_max_steps(Some(50))
            .with_batch_size(2)
            .with_quiet(true),
    );
    let data = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let _ = Trainer::new(&run, data)
        .unwrap()
        .with_process_group(group.clone())
        .with_hook(move |step, model| {
            if rank == 1 && step == 2 {
                eprintln!("rank 1 leaves at step 2");
                std::process::exit(3);
            }
            Ok::<_, kiln::Error>(model)
        })
        .fit(tiny_gpt(&device, 1, 16, 0.0), &device);
    panic!("rank {rank} must not finish a run its peer left");
}

/// A rank that dies makes the job fail promptly with a message naming it, never a hang.
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn a_rank_that_exits_early_fails_the_job() {
    skip_unless_mpi!();
    let start = Instant::now();
    let output = launch(2, false, "exit_early", &[]);
    assert!(!output.status.success(), "the job must fail");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("rank 1 leaves at step 2"), "{text}");
    assert!(
        text.contains("exited") || text.contains("non-zero"),
        "mpirun names the failed process: {text}"
    );
    assert!(start.elapsed() < JOB_TIMEOUT, "no hang");
}

// ------------------------------------------------------------------------------------------
// The main job under mpirun: killed with SIGKILL and resumed, it ends where an uninterrupted
// run ends.

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn a_run_killed_with_sigkill_resumes_to_the_same_hash() {
    skip_unless_mpi!();
    let bin = common::example("train_gpt").expect(
        "examples/train_gpt is not built (`cargo test --release --features mpi` builds it)",
    );
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("ck");
    let mut common = common::SMALL_JOB.to_vec();
    common.extend(["--zero-stage", "1"]);
    let full = mpirun(2, false, &[], &bin, &common);
    assert_success(&full, "the uninterrupted run");

    // The killed run: its own process group, so that SIGKILL reaches mpirun and every rank.
    let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--checkpoint-every".into(),
        "5".into(),
        "--checkpoint-dir".into(),
        checkpoints.display().to_string(),
    ]);
    let mut command = Command::new("mpirun");
    command
        .args(["-np", "2", "--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg(&bin)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut job = command.spawn().unwrap();
    let start = Instant::now();
    while !checkpoints.join("step-00000020").exists() {
        assert!(start.elapsed() < JOB_TIMEOUT, "no checkpoint appeared");
        assert!(
            job.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-9", "--", &format!("-{}", job.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = job.wait();
    // mpirun is gone; its ranks die a moment later, and with them their lock on the folder.
    let lock = std::fs::File::open(checkpoints.join("kiln.lock")).unwrap();
    while lock.try_lock().is_err() {
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "the killed ranks still hold the checkpoint folder's lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(lock);
    // A copy of what the killed run left, for the elastic resumes below.
    let one_dir = dir.path().join("one");
    common::copy_folder(&checkpoints, &one_dir);

    args.push("--resume".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let resumed = mpirun(2, false, &[], &bin, &args);
    assert_success(&resumed, "the resumed run");
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resumed from step"));
    assert_eq!(common::sha_of(&resumed), common::sha_of(&full));

    // Elastic (issue 23): the same checkpoint resumed on one process accumulating the two
    // ranks' micro-batches (the ZeRO-1 shards gathered), and that run's later checkpoint
    // resumed on two ranks again, both end where the uninterrupted run ends.
    let resume_args = |dir: &Path, accumulation: &str| -> Vec<String> {
        let mut args: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--checkpoint-every",
                "5",
                "--checkpoint-dir",
                &dir.display().to_string(),
                "--resume",
                "--accum",
                accumulation,
            ]
            .map(String::from),
        );
        args
    };
    let one = Command::new(&bin)
        .args(resume_args(&one_dir, "2"))
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .output()
        .unwrap();
    assert_success(&one, "the run resumed on one process");
    assert!(
        String::from_utf8_lossy(&one.stderr).contains("resharded: written by 2 rank(s)"),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(
        common::sha_of(&one),
        common::sha_of(&full),
        "2 ranks -> 1 process"
    );
    // Back to two ranks from the one process's step-295 checkpoint.
    let two_dir = dir.path().join("two");
    common::copy_folder(&one_dir, &two_dir);
    std::fs::remove_dir_all(two_dir.join("step-00000300")).unwrap();
    let args = resume_args(&two_dir, "1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let two = mpirun(2, false, &[], &bin, &args);
    assert_success(&two, "the run resumed on two ranks");
    assert!(String::from_utf8_lossy(&two.stdout).contains("resumed from step 295"));
    assert_eq!(
        common::sha_of(&two),
        common::sha_of(&full),
        "1 process -> 2 ranks"
    );
}
