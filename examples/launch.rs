//! Run a training job under `mpirun` and restart it from its newest checkpoint when a rank
//! fails: torchrun's `--max-restarts` on top of mpirun (`kiln::dist::launch`).
//!
//! ```text
//! cargo build --release --features mpi --example train_gpt --example launch
//! target/release/examples/launch --np 4 --max-restarts 3 -- \
//!     target/release/examples/train_gpt --run-dir runs/a --checkpoint-every 50
//! # a failure costs a machine: restart on 3, then 2 ranks, keeping 4 micro-batches per step
//! target/release/examples/launch --np 4 --min-ranks 2 --accum 1 --max-restarts 3 -- \
//!     target/release/examples/train_gpt --run-dir runs/b --checkpoint-every 50
//! ```
//!
//! A rank that exits with an error, dies by a signal, or hangs (the others' collectives time
//! out after `train_gpt --collective-timeout`, 600 s by default) ends the `mpirun` job; the
//! launcher runs it again with `--resume`, and kiln's trainer continues from the newest
//! complete checkpoint, bit for bit. With `--min-ranks` each restart runs on fewer ranks (the
//! largest number below the last that divides `--np × --accum`), passing the `--accum` that
//! keeps the global batch. The launcher's own progress goes to stderr.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kiln::dist::{DistError, LaunchConfig};

/// Run a job under mpirun; restart it from its newest checkpoint when a rank fails.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Ranks of the first attempt.
    #[arg(long)]
    np: usize,
    /// Restarts after the first attempt.
    #[arg(long, default_value_t = 3)]
    max_restarts: usize,
    /// Restart on fewer ranks after each failure, down to this many (needs --accum).
    #[arg(long)]
    min_ranks: Option<usize>,
    /// The job's micro-batches per step on --np ranks; the launcher passes the job the
    /// `--accum` that keeps `np × accum` on every attempt.
    #[arg(long)]
    accum: Option<usize>,
    /// An argument for mpirun (repeat it: `--mpirun-arg=--mca --mpirun-arg=btl ...`).
    #[arg(long, allow_hyphen_values = true)]
    mpirun_arg: Vec<String>,
    /// Seconds to wait before a restart.
    #[arg(long, default_value_t = 1.0)]
    restart_delay: f64,
    /// The job and its arguments (after `--`).
    #[arg(last = true, required = true)]
    job: Vec<String>,
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let restart_delay = Duration::try_from_secs_f64(args.restart_delay).map_err(|_| {
        DistError::InvalidArgument(format!(
            "--restart-delay must be a number of seconds, not {}",
            args.restart_delay
        ))
    })?;
    let (program, job_args) = args.job.split_first().expect("clap requires the job");
    let mut config = LaunchConfig::new(args.np, PathBuf::from(program), job_args.to_vec());
    config.max_restarts = args.max_restarts;
    config.min_ranks = args.min_ranks;
    config.accumulation = args.accum;
    config.mpirun_args = args.mpirun_arg;
    config.restart_delay = restart_delay;
    let attempts = kiln::dist::launch::launch(&config, |line| eprintln!("launch: {line}"))?;
    eprintln!(
        "launch: the job succeeded after {} attempt(s), on {} rank(s)",
        attempts.len(),
        attempts.last().map_or(0, |a| a.ranks)
    );
    Ok(())
}
