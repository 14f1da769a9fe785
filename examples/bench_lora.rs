//! Times training steps and measures peak memory of fine-tuning a Llama-shaped decoder: full
//! fine-tuning, LoRA over an f32 base, LoRA over an int8 base. One mode per process, since peak
//! memory is a process's high-water mark:
//!
//! ```text
//! for mode in full lora lora-int8; do
//!   cargo run --release --example bench_lora -- --mode $mode [--d-model 1024 --layers 8 \
//!       --heads 16 --kv-heads 4 --vocab 8192 --seq 128 --batch 4 --steps 4 --lora-r 8]
//! done
//! ```
//!
//! Each step is forward, backward and AdamW (Burn's optimizer, which keeps state only for
//! parameters with a gradient), on random tokens. LoRA targets every projection
//! (`all-linear`, rank `--lora-r`). Prints the parameter counts, `step_s: X` (median), and
//! `peak_rss_mib: X`, the high-water mark over the steps (reset after the model is built,
//! where Linux allows it).

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use clap::Parser;
use kiln::compress::{ActivationQuant, QuantConfig, quantize_lora_base};
use kiln::model::linear::LinearLayer;
use kiln::model::lora::{LoraConfig, TargetModules};
use kiln::model::loss::cross_entropy;
use kiln::prelude::*;
use rand::Rng;

/// What is trained.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Every parameter.
    Full,
    /// LoRA adapters over the frozen f32 model.
    Lora,
    /// LoRA adapters over the frozen model with int8 linear layers.
    LoraInt8,
}

/// Time fine-tuning steps: full, LoRA, LoRA over int8.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// What is trained.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Model width.
    #[arg(long, default_value_t = 1024)]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Query heads.
    #[arg(long, default_value_t = 16)]
    heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// Vocabulary.
    #[arg(long, default_value_t = 8192)]
    vocab: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed steps (the median is reported), after one untimed.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// The adapters' rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    if args.seq < 2 || args.batch == 0 || args.steps == 0 {
        return Err(kiln::Error::Usage(
            "--seq 2 or more, --batch and --steps 1 or more".into(),
        ));
    }
    let device = Device::flex().autodiff();
    device.seed(1);
    let config = kiln::recipe::llama_model(
        args.vocab,
        args.seq,
        args.layers,
        args.d_model,
        args.heads,
        args.kv_heads,
    );
    let gpt = config.init(&device)?;
    let lora = LoraConfig::new()
        .with_r(args.lora_r)
        .with_lora_alpha(2.0 * args.lora_r as f64)
        .with_target_modules(Some(TargetModules::Pattern("all-linear".into())));
    let mut rng = kiln::base::seed::rng(2);
    let tokens: Vec<i64> = (0..args.batch * (args.seq + 1))
        .map(|_| rng.random_range(0..args.vocab as i64))
        .collect();
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(tokens, [args.batch, args.seq + 1]), &device);
    let (inputs, targets) = (
        ids.clone().narrow(1, 0, args.seq),
        ids.narrow(1, 1, args.seq),
    );
    let times = match args.mode {
        Mode::Full => {
            report(gpt.num_params(), gpt.num_params());
            steps(gpt, &inputs, &targets, args.steps)
        }
        Mode::Lora => {
            let model = gpt.with_lora(&lora)?;
            let (trainable, total) = model.trainable_parameters();
            report(trainable, total);
            steps(model, &inputs, &targets, args.steps)
        }
        Mode::LoraInt8 => {
            let model = quantize_lora_base(
                &gpt.with_lora(&lora)?,
                &QuantConfig::new(),
                ActivationQuant::Dynamic,
            )?;
            let (trainable, total) = model.trainable_parameters();
            report(trainable, total);
            steps(model, &inputs, &targets, args.steps)
        }
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!("step_s: {:.3}", sorted[sorted.len() / 2]);
    println!(
        "tokens_per_s: {:.0}",
        (args.batch * args.seq) as f64 / sorted[sorted.len() / 2]
    );
    if let Some(peak) = kiln::base::memory::peak_rss_mib() {
        println!("peak_rss_mib: {peak:.0}");
    }
    Ok(())
}

fn report(trainable: usize, total: usize) {
    println!(
        "trainable params: {trainable} || all params: {total} || trainable%: {:.4}",
        100.0 * trainable as f64 / total as f64
    );
}

/// `1 + n` steps of forward, backward and AdamW; the times of the last `n`. The peak memory
/// is measured from here: building the int8 model went through the f32 one.
fn steps<L: LinearLayer + 'static>(
    mut model: Gpt<L>,
    inputs: &Tensor<2, Int>,
    targets: &Tensor<2, Int>,
    n: usize,
) -> Vec<f64> {
    let reset = kiln::base::memory::reset_peak_rss();
    println!("peak memory measured over the steps only: {reset}");
    let mut optimizer = AdamWConfig::new().init();
    let mut times = Vec::new();
    for step in 0..=n {
        let start = Instant::now();
        let logits = model.forward(inputs.clone()).expect("a forward pass");
        let loss = cross_entropy(logits, targets.clone(), None);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-4, model, grads);
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times
}
