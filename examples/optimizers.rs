//! Every kiln optimizer and schedule on the same small job: a tiny GPT learning 3-digit addition
//! (`kiln_data::addition`), the same batches in the same order for every run.
//!
//! ```text
//! cargo run --release --example optimizers                      # table + target/optimizers.svg
//! cargo run --release --example optimizers -- --max-steps 300 --seed 1 --out curves.svg
//! cargo run --release --example optimizers -- --help
//! ```
//!
//! Prints a table of the final training loss (mean of the last 20 steps) and the held-out loss
//! per optimizer/schedule pair, and writes an SVG line plot of the smoothed loss curves (with
//! kiln-train's plotter, `kiln::train::plot`).

use std::path::PathBuf;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use kiln::base::seed;
use kiln::data::addition::{AdditionBatcher, AdditionDataset, SEQ_LEN, VOCAB_SIZE};
use kiln::data::{IGNORE_INDEX, LmBatch};
use kiln::optim::schedule::DecayShape;
use kiln::optim::{
    AdamConfig, AdamWConfig, CosineWarmRestartsConfig, ExponentialDecayConfig, LambConfig,
    OneCycleConfig, SgdConfig, StepDecayConfig, WarmupDecayConfig, clip_grad_norm,
};
use kiln::prelude::*;
use kiln::train::plot::{COLORS, Panel, Series, svg_panels};
use rand::Rng;

/// Every kiln optimizer and schedule on one tiny GPT learning 3-digit addition.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Optimizer steps of every run (the final loss is the mean of the last 20).
    #[arg(long, alias = "steps", default_value_t = 600,
          value_parser = RangedU64ValueParser::<usize>::new().range(30..))]
    max_steps: usize,
    /// Seed of the initial weights and of the batches (the same for every run).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the plot of the loss curves (SVG).
    #[arg(long, default_value = "target/optimizers.svg")]
    out: PathBuf,
}

/// How the gradients are clipped before the step.
enum Clip {
    /// `clip_grad_norm_` at this norm.
    Torch(f64),
    /// LAMB's own global clipping (apex `max_grad_norm`).
    Lamb(LambConfig),
}

/// One row of the comparison.
struct Run {
    name: &'static str,
    optim: ModuleOptimizer,
    schedule: Box<dyn LrScheduler>,
    clip: Clip,
}

fn runs(gpt: &Gpt, steps: usize) -> kiln::Result<Vec<Run>> {
    let warmup = steps / 10;
    let lamb = LambConfig::new().with_max_grad_norm(Some(1.0));
    Ok(vec![
        Run {
            name: "AdamW + warmup-cosine",
            optim: AdamWConfig::new().with_weight_decay(0.1).init(gpt)?,
            schedule: Box::new(WarmupDecayConfig::cosine(3e-3, warmup, steps).init()?),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "AdamW + warmup-constant",
            optim: AdamWConfig::new().with_weight_decay(0.1).init(gpt)?,
            schedule: Box::new(
                WarmupDecayConfig::new(3e-3, warmup)
                    .with_total_steps(Some(steps))
                    .with_shape(DecayShape::Constant)
                    .init()?,
            ),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "AdamW + inverse-sqrt",
            optim: AdamWConfig::new().with_weight_decay(0.1).init(gpt)?,
            schedule: Box::new(
                WarmupDecayConfig::new(3e-3, warmup)
                    .with_total_steps(Some(steps))
                    .with_shape(DecayShape::InverseSqrt { timescale: None })
                    .init()?,
            ),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "AdamW + SGDR (T0 25, Tmult 2)",
            optim: AdamWConfig::new().with_weight_decay(0.1).init(gpt)?,
            schedule: Box::new(
                CosineWarmRestartsConfig::new(3e-3, 25)
                    .with_t_mult(2)
                    .with_eta_min(1e-4)
                    .init()?,
            ),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "Adam + L2 + warmup-linear",
            optim: AdamConfig::new().with_weight_decay(1e-4).init(gpt)?,
            schedule: Box::new(
                WarmupDecayConfig::new(3e-3, warmup)
                    .with_total_steps(Some(steps))
                    .init()?,
            ),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "Adam + exponential",
            optim: AdamConfig::new().init(gpt)?,
            schedule: Box::new(
                ExponentialDecayConfig::new(3e-3, 0.01f64.powf(1.0 / steps as f64)).init()?,
            ),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "LAMB + warmup-polynomial",
            optim: lamb.init(gpt)?,
            schedule: Box::new(
                WarmupDecayConfig::new(2e-2, warmup)
                    .with_total_steps(Some(steps))
                    .with_shape(DecayShape::Polynomial {
                        power: 2.0,
                        end_lr: 1e-4,
                    })
                    .init()?,
            ),
            clip: Clip::Lamb(lamb),
        },
        Run {
            name: "SGD Nesterov + one-cycle",
            optim: SgdConfig::new()
                .with_momentum(0.9)
                .with_nesterov(true)
                .with_weight_decay(1e-4)
                .init(gpt)?,
            schedule: Box::new(
                OneCycleConfig::new(0.3)
                    .with_total_steps(Some(steps))
                    .init()?,
            ),
            clip: Clip::Torch(1.0),
        },
        Run {
            name: "SGD momentum + step",
            optim: SgdConfig::new().with_momentum(0.9).init(gpt)?,
            schedule: Box::new(
                StepDecayConfig::new(0.1, steps / 3)
                    .with_gamma(0.3)
                    .init()?,
            ),
            clip: Clip::Torch(1.0),
        },
    ])
}

fn loss_of(gpt: &Gpt, batch: LmBatch) -> Result<Tensor<1>, ModelError> {
    let logits = gpt.forward(batch.inputs)?;
    Ok(gpt.loss(logits, batch.targets, Some(IGNORE_INDEX)))
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let steps = args.max_steps;

    let device = Device::flex().autodiff();
    // The same initial weights for every run, and from one invocation to the next.
    device.seed(args.seed);
    let config = GptConfig::new(VOCAB_SIZE)
        .with_block_size(SEQ_LEN + 1)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(64);
    let initial = config.init(&device)?;

    // The same batches, in the same order, for every run.
    let (train, held_out) = (AdditionDataset::train(), AdditionDataset::held_out());
    let mut rng = seed::rng(args.seed);
    let mut sample = |set: &AdditionDataset, n: usize| -> LmBatch {
        let problems = set.problems();
        let items = (0..n)
            .map(|_| problems[rng.random_range(0..problems.len())])
            .collect();
        AdditionBatcher.batch(items, &device)
    };
    let batches: Vec<LmBatch> = (0..steps).map(|_| sample(&train, 32)).collect();
    let eval = sample(&held_out, 512);

    let mut table = Vec::new();
    let mut curves = Vec::new();
    for mut run in runs(&initial, steps)? {
        let started = Instant::now();
        let mut gpt = initial.clone();
        let mut losses = Vec::with_capacity(steps);
        for batch in &batches {
            let loss = loss_of(&gpt, batch.clone())?;
            losses.push(loss.clone().into_scalar::<f32>() as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &gpt);
            let (grads, _norm) = match &run.clip {
                Clip::Torch(max) => clip_grad_norm(&gpt, grads, *max)?,
                Clip::Lamb(config) => config.clip_gradients(&gpt, grads)?,
            };
            gpt = run.optim.step(run.schedule.step(), gpt, grads);
        }
        let final_loss = losses[steps - 20..].iter().sum::<f64>() / 20.0;
        let eval_loss = loss_of(&gpt, eval.clone())?.into_scalar::<f32>() as f64;
        println!(
            "{:<32} final {:.4}  held-out {:.4}  ({:.1} s)",
            run.name,
            final_loss,
            eval_loss,
            started.elapsed().as_secs_f64()
        );
        table.push((run.name, final_loss, eval_loss));
        curves.push((run.name, losses));
    }

    println!("\n| optimizer + schedule | final train loss (last 20 steps) | held-out loss |");
    println!("|---|---|---|");
    for (name, final_loss, eval_loss) in &table {
        println!("| {name} | {final_loss:.4} | {eval_loss:.4} |");
    }
    kiln::base::store::write_atomic(&args.out, plot(&curves).as_bytes())?;
    println!("\nloss curves: {}", args.out.display());
    Ok(())
}

/// An exponential moving average, so that the curves are readable.
fn smooth(values: &[f64]) -> Vec<f64> {
    let mut ema = values[0];
    values
        .iter()
        .map(|&v| {
            ema = 0.9 * ema + 0.1 * v;
            ema
        })
        .collect()
}

/// The smoothed loss curves, one line per run.
fn plot(curves: &[(&str, Vec<f64>)]) -> String {
    let series = curves
        .iter()
        .enumerate()
        .map(|(i, (name, losses))| Series {
            label: name,
            color: COLORS[i % COLORS.len()],
            points: smooth(losses)
                .into_iter()
                .enumerate()
                .map(|(i, loss)| ((i + 1) as f64, loss))
                .collect(),
        })
        .collect();
    svg_panels(&[Panel {
        title: "Training loss (EMA 0.9), tiny GPT on 3-digit addition",
        x_label: "step",
        series,
    }])
}
