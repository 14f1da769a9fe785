//! Every kiln optimizer and schedule on the same small job: a tiny GPT learning 3-digit addition
//! (`kiln_data::addition`), the same batches in the same order for every run.
//!
//! ```text
//! cargo run --release --example optimizers                      # table + target/optimizers.svg
//! cargo run --release --example optimizers -- --steps 300 --seed 1 --out curves.svg
//! ```
//!
//! Prints a table of the final training loss (mean of the last 20 steps) and the held-out loss
//! per optimizer/schedule pair, and writes an SVG line plot of the smoothed loss curves (drawn by
//! hand: no plotting crate).

use std::error::Error;
use std::fmt::Write as _;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use kiln::data::addition::{AdditionBatcher, AdditionDataset, SEQ_LEN, VOCAB_SIZE};
use kiln::data::{IGNORE_INDEX, LmBatch};
use kiln::optim::schedule::DecayShape;
use kiln::optim::{
    AdamConfig, AdamWConfig, CosineWarmRestartsConfig, ExponentialDecayConfig, LambConfig,
    OneCycleConfig, SgdConfig, StepDecayConfig, WarmupDecayConfig, clip_grad_norm,
};
use kiln::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

fn runs(gpt: &Gpt, steps: usize) -> Result<Vec<Run>, Box<dyn Error>> {
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

fn main() -> Result<(), Box<dyn Error>> {
    let mut steps = 600usize;
    let mut out = String::from("target/optimizers.svg");
    let mut seed = 42u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--steps" => steps = value.parse()?,
            "--out" => out = value,
            "--seed" => seed = value.parse()?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if steps < 30 {
        return Err("--steps must be at least 30".into());
    }

    let device = Device::flex().autodiff();
    // The same initial weights for every run, and from one invocation to the next.
    device.seed(seed);
    let config = GptConfig::new(VOCAB_SIZE)
        .with_block_size(SEQ_LEN + 1)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(64);
    let initial = config.init(&device)?;

    // The same batches, in the same order, for every run.
    let (train, held_out) = (AdditionDataset::train(), AdditionDataset::held_out());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sample = |set: &AdditionDataset, n: usize| -> Result<LmBatch, Box<dyn Error>> {
        let items = (0..n)
            .map(|_| set.get(rng.random_range(0..set.len())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AdditionBatcher.batch(items, &device))
    };
    let batches = (0..steps)
        .map(|_| sample(&train, 32))
        .collect::<Result<Vec<_>, _>>()?;
    let eval = sample(&held_out, 512)?;

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
    std::fs::write(&out, svg(&curves))?;
    println!("\nloss curves: {out}");
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

/// A line plot of the smoothed curves with axes, ticks and a legend.
fn svg(curves: &[(&str, Vec<f64>)]) -> String {
    const COLORS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let (width, height) = (960.0, 540.0);
    let (left, right, top, bottom) = (70.0, 300.0, 30.0, 50.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let smoothed: Vec<Vec<f64>> = curves.iter().map(|(_, c)| smooth(c)).collect();
    let steps = smoothed.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let max = smoothed.iter().flatten().cloned().fold(f64::MIN, f64::max);
    let min = smoothed.iter().flatten().cloned().fold(f64::MAX, f64::min);
    let (y_lo, y_hi) = ((min * 10.0).floor() / 10.0, (max * 10.0).ceil() / 10.0);
    let x = |i: usize| left + plot_w * i as f64 / (steps - 1) as f64;
    let y = |v: f64| top + plot_h * (1.0 - (v - y_lo) / (y_hi - y_lo).max(1e-9));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Training loss (EMA 0.9), tiny GPT on 3-digit addition</text>"#,
        left + plot_w / 2.0
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r#"<path d="M{left},{top} V{} H{}" stroke="black" fill="none"/>"#,
        top + plot_h,
        left + plot_w
    );
    for k in 0..=5 {
        let v = y_lo + (y_hi - y_lo) * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}</text>"##,
            left + plot_w,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        );
        let step = (steps - 1) * k / 5;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{step}</text>"#,
            x(step),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">step</text>"#,
        left + plot_w / 2.0,
        height - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">loss</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    // Curves and legend.
    for (i, ((name, _), curve)) in curves.iter().zip(&smoothed).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = curve
            .iter()
            .enumerate()
            .map(|(j, &v)| format!("{:.1},{:.1}", x(j), y(v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + plot_w + 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            name.replace('&', "&amp;")
        );
    }
    s.push_str("</svg>\n");
    s
}
