//! Activation recomputation: peak memory and step time of each mode on a 12-layer GPT.
//!
//! ```text
//! cargo run --release --example bench_recompute                 # all three modes, a table
//! cargo run --release --example bench_recompute -- --mode per-block --steps 5
//! ```
//!
//! Peak memory is the process's resident-set high-water mark (`VmHWM` in `/proc/self/status`),
//! so each mode runs in its own child process; the model, data and steps are identical. The
//! table also checks that every mode produced the same loss trajectory.
//!
//! Options: `--d-model N --layers N --heads N --seq N --batch N --steps N --device NAME`.

use std::process::{Command, ExitCode};
use std::time::Instant;

use burn::optim::GradientsParams;
use kiln::data::LmBatch;
use kiln::prelude::*;
use kiln::train::{Precision, Recompute, TrainModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Args {
    mode: Option<Recompute>,
    d_model: usize,
    layers: usize,
    heads: usize,
    seq: usize,
    batch: usize,
    steps: usize,
    device: String,
    rest: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        mode: None,
        d_model: 256,
        layers: 12,
        heads: 8,
        seq: 256,
        batch: 8,
        steps: 4,
        device: "flex".into(),
        rest: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: bad number {v}"))
        };
        if flag != "--mode" {
            args.rest.extend([flag.clone(), value.clone()]);
        }
        match flag.as_str() {
            "--mode" => args.mode = Some(mode(&value)?),
            "--d-model" => args.d_model = num(&value)?,
            "--layers" => args.layers = num(&value)?,
            "--heads" => args.heads = num(&value)?,
            "--seq" => args.seq = num(&value)?,
            "--batch" => args.batch = num(&value)?,
            "--steps" => args.steps = num(&value)?,
            "--device" => args.device = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn mode(name: &str) -> Result<Recompute, String> {
    match name {
        "none" => Ok(Recompute::None),
        "balanced" => Ok(Recompute::Balanced),
        "per-block" => Ok(Recompute::PerBlock),
        other => Err(format!("unknown mode {other}")),
    }
}

/// Peak resident memory of this process in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One child: forward and backward `steps` times in `recompute` mode; prints
/// `median_step_s peak_rss_mib first_loss last_grad_sum`.
fn child(args: &Args, recompute: Recompute) -> Result<(), String> {
    let base = kiln::device::from_name(&args.device).map_err(|e| e.to_string())?;
    let device = recompute.training_device(&base);
    device.seed(1);
    let gpt = GptConfig::new(512)
        .with_block_size(args.seq)
        .with_n_layer(args.layers)
        .with_n_head(args.heads)
        .with_d_model(args.d_model)
        .init(&device)
        .map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(2);
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
    for _ in 0..args.steps {
        let start = Instant::now();
        let grads = match recompute {
            Recompute::PerBlock => {
                let (out, grads) = kiln::train::recompute::per_block_backward(
                    &gpt,
                    &batch,
                    1.0,
                    Precision::F32,
                    &device,
                )
                .map_err(|e| e.to_string())?;
                loss = out.loss.into_scalar::<f64>();
                grads
            }
            _ => {
                let out = gpt.forward_step(&batch).map_err(|e| e.to_string())?;
                let grads = GradientsParams::from_grads(out.loss.clone().backward(), &gpt);
                loss = out.loss.into_scalar::<f64>();
                grads
            }
        };
        let norm = kiln::optim::grad_norm(&gpt, &grads);
        times.push(start.elapsed().as_secs_f64());
        if !norm.is_finite() {
            return Err("non-finite gradient".into());
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

fn main() -> ExitCode {
    let result = parse().and_then(|args| match args.mode {
        Some(recompute) => child(&args, recompute),
        None => {
            println!(
                "GPT d_model {} x {} layers, {} heads, batch {} x seq {}; forward + backward, median of {} steps",
                args.d_model, args.layers, args.heads, args.batch, args.seq, args.steps
            );
            println!("| mode | step time (s) | peak RSS (MiB) | loss |");
            println!("|---|---|---|---|");
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            for name in ["none", "balanced", "per-block"] {
                let out = Command::new(&exe)
                    .args(&args.rest)
                    .args(["--mode", name])
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "{name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let f: Vec<&str> = text.split_whitespace().collect();
                println!("| {name} | {} | {} | {} |", f[0], f[1], f[2]);
            }
            Ok(())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
