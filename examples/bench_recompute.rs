//! Activation recomputation: peak memory and step time of each mode on a 12-layer GPT.
//!
//! ```text
//! cargo run --release --example bench_recompute                 # all three modes, a table
//! cargo run --release --example bench_recompute -- --mode per-block --steps 5
//! cargo run --release --example bench_recompute -- --help
//! ```
//!
//! Peak memory is the process's resident-set high-water mark (`VmHWM` in `/proc/self/status`),
//! so each mode runs in its own child process (this program with `--mode`); the model, data
//! and steps are identical. The table also checks that every mode produced the same loss
//! trajectory.
//!
//! Options: `--d-model N --layers N --heads N --seq N --batch N --steps N --device NAME`.

use std::process::Command;
use std::time::Instant;

use burn::optim::GradientsParams;
use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use kiln::base::memory::peak_rss_mib;
use kiln::base::seed;
use kiln::data::LmBatch;
use kiln::prelude::*;
use kiln::train::{Precision, Recompute, TrainError, TrainModel};
use rand::Rng;

/// Peak memory and step time of each activation-recomputation mode on a GPT.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run only this mode and print `median_step_s peak_rss_mib loss` (what each child of the
    /// table does); without it, all modes, each in its own process, as a table.
    #[arg(long, value_enum)]
    mode: Option<Recompute>,
    /// Model width.
    #[arg(long, default_value_t = 256, value_parser = positive())]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 12, value_parser = positive())]
    layers: usize,
    /// Attention heads per block.
    #[arg(long, default_value_t = 8, value_parser = positive())]
    heads: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256, value_parser = positive())]
    seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8, value_parser = positive())]
    batch: usize,
    /// Forward + backward steps (the median time is reported).
    #[arg(long, default_value_t = 4, value_parser = positive())]
    steps: usize,
    /// Backend: flex, wgpu, vulkan[:N], metal, cuda[:N] or auto; defaults to $KILN_DEVICE, else flex.
    #[arg(long)]
    device: Option<String>,
}

impl Args {
    /// --device, else $KILN_DEVICE, else flex.
    fn device(&self) -> kiln::Result<Device> {
        Ok(kiln::device::from_flag(self.device.as_deref())?)
    }

    /// The benchmarked model.
    fn gpt(&self) -> GptConfig {
        GptConfig::new(512)
            .with_block_size(self.seq)
            .with_n_layer(self.layers)
            .with_n_head(self.heads)
            .with_d_model(self.d_model)
    }

    /// The flags of a child process that runs `mode` on the same model and data.
    fn child_args(&self, mode: Recompute) -> Vec<String> {
        let mut args = vec![
            format!("--mode={}", name(mode)),
            format!("--d-model={}", self.d_model),
            format!("--layers={}", self.layers),
            format!("--heads={}", self.heads),
            format!("--seq={}", self.seq),
            format!("--batch={}", self.batch),
            format!("--steps={}", self.steps),
        ];
        args.extend(self.device.iter().map(|d| format!("--device={d}")));
        args
    }
}

/// A count of at least 1.
fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// The mode's name on the command line (`none`, `balanced`, `per-block`).
fn name(mode: Recompute) -> String {
    mode.to_possible_value()
        .expect("every mode has a name")
        .get_name()
        .to_owned()
}

/// One child: forward and backward `steps` times in `recompute` mode; prints
/// `median_step_s peak_rss_mib loss` (the last step's loss).
fn child(args: &Args, recompute: Recompute) -> kiln::Result<()> {
    let base = args.device()?;
    let device = recompute.training_device(&base);
    device.seed(1);
    let gpt = args.gpt().init(&device)?;
    let mut rng = seed::rng(2);
    let ids: Vec<i64> = (0..args.batch * (args.seq + 1))
        .map(|_| rng.random_range(0..512))
        .collect();
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(ids, [args.batch, args.seq + 1]), &device);
    let batch = LmBatch {
        inputs: tokens.clone().slice([0..args.batch, 0..args.seq]),
        targets: tokens.slice([0..args.batch, 1..args.seq + 1]),
    };
    let mut times = Vec::new();
    let mut loss = 0.0;
    for step in 1..=args.steps {
        let start = Instant::now();
        let grads = match recompute {
            Recompute::PerBlock => {
                let (out, grads) = kiln::train::recompute::per_block_backward(
                    &gpt,
                    &batch,
                    1.0,
                    Precision::F32,
                    &device,
                )?;
                loss = out.loss.into_scalar::<f64>();
                grads
            }
            _ => {
                let out = gpt.forward_step(&batch).map_err(TrainError::Model)?;
                let grads = GradientsParams::from_grads(out.loss.clone().backward(), &gpt);
                loss = out.loss.into_scalar::<f64>();
                grads
            }
        };
        let norm = kiln::optim::grad_norm(&gpt, &grads);
        times.push(start.elapsed().as_secs_f64());
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                loss,
                grad_norm: norm,
            }
            .into());
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} {} {}",
        times[times.len() / 2],
        peak_rss_mib().unwrap_or(f64::NAN),
        loss
    );
    Ok(())
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    if let Some(recompute) = args.mode {
        return child(&args, recompute);
    }
    // A bad device or shape is reported here, not by each child.
    args.device()?;
    args.gpt().validate()?;
    println!(
        "GPT d_model {} x {} layers, {} heads, batch {} x seq {}; forward + backward, median of {} steps",
        args.d_model, args.layers, args.heads, args.batch, args.seq, args.steps
    );
    println!("| mode | step time (s) | peak RSS (MiB) | loss |");
    println!("|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for &mode in Recompute::value_variants() {
        let out = Command::new(&exe).args(args.child_args(mode)).output()?;
        let name = name(mode);
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "the `{name}` run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
            .into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        println!("| {name} | {} | {} | {} |", f[0], f[1], f[2]);
    }
    Ok(())
}
