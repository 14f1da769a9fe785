//! Distributed training: what communication costs. Run under `mpirun` (built with
//! `--features mpi`); `scripts/bench_dist.sh` runs every case below and prints the tables of
//! `docs/benchmarks.md`.
//!
//! ```text
//! mpirun -np 2 target/release/examples/bench_dist collectives          # all-reduce bandwidth
//! mpirun -np 2 --mca btl tcp,self target/release/examples/bench_dist collectives
//! mpirun -np 1 target/release/examples/bench_dist step --bucket-mb 25  # step time, 1 process
//! mpirun -np 2 target/release/examples/bench_dist step --bucket-mb 25  # ... 2 ranks
//! ```
//!
//! `collectives`: the all-reduce of 4 MB and 64 MB of f32 through kiln (`ProcessGroup`, the
//! rank-ordered sum data parallelism uses, and the f16/bf16 ring) against the raw `mpi`
//! crate's `all_reduce_into`, in the same run, the
//! median of `--reps` calls. Bandwidth is the algorithm's (bytes / time) and the bus's
//! (`2(n−1)/n` of it: what each rank sends, as NCCL's tests report).
//!
//! `step`: the training step of a GPT (per-rank batch fixed) with data parallelism, the median
//! over `--steps` steps after two warm-up steps.

use std::time::Instant;

use clap::{Parser, Subcommand};
use kiln::data::addition::{AdditionBatcher, AdditionDataset, VOCAB_SIZE};
use kiln::dist::mpi::collective::SystemOperation;
use kiln::dist::mpi::topology::SimpleCommunicator;
use kiln::dist::mpi::traits::CommunicatorCollectives;
use kiln::dist::{DataParallelConfig, ProcessGroup, ReduceDtype, ReduceOp};
use kiln::prelude::*;

/// Communication cost of data-parallel training (run under mpirun).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// All-reduce bandwidth of kiln's collectives against the raw mpi crate.
    Collectives {
        /// Calls per size (the median is reported).
        #[arg(long, default_value_t = 15)]
        reps: usize,
    },
    /// The step time of data-parallel training.
    Step {
        /// Gradient bucket size, in MB.
        #[arg(long, default_value_t = 25.0)]
        bucket_mb: f64,
        /// The dtype gradients travel in.
        #[arg(long, value_enum, default_value = "f32")]
        reduce_dtype: ReduceDtype,
        /// Timed steps (after two warm-up steps).
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Model width.
        #[arg(long, default_value_t = 256)]
        d_model: usize,
        /// Transformer blocks.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// Sequences per rank per step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let group = ProcessGroup::from_env()?;
    match args.bench {
        Bench::Collectives { reps } => collectives(&group, reps),
        Bench::Step {
            bucket_mb,
            reduce_dtype,
            steps,
            d_model,
            layers,
            batch,
        } => step(
            &group,
            bucket_mb,
            reduce_dtype,
            steps,
            d_model,
            layers,
            batch,
        ),
    }
}

fn collectives(group: &ProcessGroup, reps: usize) -> kiln::Result<()> {
    let n = group.size();
    let raw = SimpleCommunicator::world();
    if group.is_main() {
        println!("| size | engine | median time | algorithm bandwidth | bus bandwidth |");
        println!("|---|---|---|---|---|");
    }
    for mb in [4usize, 64] {
        let len = mb * (1 << 20) / 4;
        let data: Vec<f32> = (0..len).map(|i| (i % 1000) as f32 * 1e-3).collect();
        let time = |name: &str, f: &mut dyn FnMut(&mut Vec<f32>)| -> kiln::Result<()> {
            let mut samples = Vec::with_capacity(reps);
            for _ in 0..reps + 1 {
                let mut buffer = data.clone();
                group.barrier()?;
                let start = Instant::now();
                f(&mut buffer);
                samples.push(start.elapsed().as_secs_f64());
            }
            samples.remove(0);
            let t = median(samples);
            let bytes = (len * 4) as f64;
            if group.is_main() {
                println!(
                    "| {mb} MB | {name} | {:.2} ms | {:.2} GB/s | {:.2} GB/s |",
                    t * 1e3,
                    bytes / t / 1e9,
                    bytes / t / 1e9 * 2.0 * (n - 1) as f64 / n as f64
                );
            }
            Ok(())
        };
        time("raw mpi crate (MPI_Allreduce)", &mut |b: &mut Vec<f32>| {
            let send = b.clone();
            raw.all_reduce_into(&send[..], &mut b[..], SystemOperation::sum());
        })?;
        time("kiln ProcessGroup::all_reduce_f32", &mut |b: &mut Vec<
            f32,
        >| {
            group.all_reduce_f32(b, ReduceOp::Sum).expect("all-reduce");
        })?;
        time(
            "kiln ordered (rank order, what data parallelism uses for f32)",
            &mut |b: &mut Vec<f32>| {
                kiln::dist::ordered::all_reduce_sum(group, b).expect("ordered");
            },
        )?;
        for dtype in [ReduceDtype::F16, ReduceDtype::Bf16] {
            time(
                &format!("kiln ring, {dtype:?} on the wire"),
                &mut |b: &mut Vec<f32>| {
                    kiln::dist::ring::all_reduce(group, b, ReduceOp::Sum, dtype).expect("ring");
                },
            )?;
        }
    }
    Ok(())
}

fn step(
    group: &ProcessGroup,
    bucket_mb: f64,
    reduce_dtype: ReduceDtype,
    steps: usize,
    d_model: usize,
    layers: usize,
    batch: usize,
) -> kiln::Result<()> {
    let device = Device::flex();
    let model = GptConfig::new(VOCAB_SIZE)
        .with_block_size(12)
        .with_n_layer(layers)
        .with_n_head(4)
        .with_d_model(d_model);
    let mut run = kiln::recipe::gpt(model, (), 1e-3, steps + 2);
    run.trainer = run
        .trainer
        .with_batch_size(batch)
        .with_early_stopping(None)
        .with_log_every(1)
        .with_quiet(true)
        .with_data_parallel(
            DataParallelConfig::new()
                .with_bucket_mb(bucket_mb)
                .with_reduce_dtype(reduce_dtype),
        );
    device.seed(1);
    let gpt = run.model.init(&device)?;
    let params = gpt.num_params();
    let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = times.clone();
    let mut last = Instant::now();
    Trainer::new(
        &run,
        BatchSource::new(AdditionDataset::train(), AdditionBatcher),
    )?
    .with_process_group(group.clone())
    .with_hook(move |_, model| {
        let now = Instant::now();
        record
            .lock()
            .expect("one hook")
            .push((now - last).as_secs_f64());
        last = now;
        Ok::<_, kiln::Error>(model)
    })
    .fit(gpt, &device)?;
    let mut times = times.lock().expect("training ended").clone();
    times.drain(..2.min(times.len()));
    if group.is_main() {
        println!(
            "{} rank(s), {params} parameters ({:.1} MB of gradients), batch {batch} per rank, bucket {bucket_mb} MB, {reduce_dtype:?}: {:.1} ms/step (median of {})",
            group.size(),
            params as f64 * 4.0 / 1e6,
            median(times.clone()) * 1e3,
            times.len()
        );
    }
    Ok(())
}
