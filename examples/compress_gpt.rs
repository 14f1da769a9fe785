//! Compressing the main job's GPT: pruning and int8 quantization, with what each costs and saves.
//!
//! ```text
//! cargo run --release --example compress_gpt                          # train, compress, print the table
//! cargo run --release --example compress_gpt -- --report report.json # also write the rows as JSON
//! cargo run --release --example compress_gpt -- --save-dense DIR      # keep the trained model ...
//! cargo run --release --example compress_gpt -- --load DIR            # ... and reuse it
//! ```
//!
//! Trains (or loads) the 3-digit addition GPT of `train_gpt` (d_model 128, 2 layers, 4 heads),
//! then builds each variant, saves it with kiln-compress's archive format and reports
//! `variant | sparsity | params | bytes on disk | held-out accuracy | inference tokens/s`:
//!
//! - dense f32;
//! - structured: 30% of the FFN neurons of every block removed (the layers shrink), fine-tuned;
//! - 50% unstructured magnitude pruning, reached on Zhu & Gupta's cubic schedule during a short
//!   fine-tune (the masks re-applied after every optimizer step);
//! - 2:4 semi-structured, then fine-tuned under the masks;
//! - int8 per-channel weights, weight-only (dequantize fallback), dynamic (int8 GEMM, a scale per
//!   token at run time) and static (activation ranges calibrated on sample batches);
//! - 50% unstructured + int8 dynamic.
//!
//! Sparsity is the fraction of exact zeros among the Transformer linear weights (the pruned
//! tensors). Tokens/s is a full forward pass of one fixed batch of held-out sequences, after a
//! warm-up, the median of several repetitions; each variant is timed right after a dense run
//! and its speedup is the median of those pairs' ratios (a busy moment of a shared machine hits
//! both halves of a pair alike).
//!
//! Options: `--steps N` (training, default 1800), `--finetune-steps N` (default 300),
//! `--eval N` (held-out problems, default 1000), `--bench-batch N` (default 512),
//! `--reps N` (default 9), `--seed S`, `--out DIR` (archives, default
//! `target/compress_gpt`), `--load DIR`, `--save-dense DIR`, `--report FILE`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Int;
use kiln::compress::{
    ActivationQuant, Amount, Calibration, GradualPruningConfig, Norm, PruningMasks, PruningScope,
    QuantConfig, QuantMode, QuantizedGpt, int8_kernel_name, linear_weights, magnitude_masks,
    n_m_masks, read_params, remove_ffn_neurons, save_gpt, save_quantized_gpt, select_ffn_neurons,
};
use kiln::data::addition::{
    ANSWER_LEN, AdditionBatcher, AdditionDataset, AdditionProblem, SEQ_LEN,
};
use kiln::data::{IGNORE_INDEX, LmBatch};
use kiln::model::loss::token_tensor;
use kiln::model::sampling::GenerateConfig;
use kiln::model::store::{load_model, save_model};
use kiln::optim::warmup_cosine;
use kiln::prelude::*;
use kiln::train::StepHook;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

struct Args {
    steps: usize,
    finetune_steps: usize,
    eval: usize,
    bench_batch: usize,
    reps: usize,
    seed: u64,
    out: PathBuf,
    load: Option<PathBuf>,
    save_dense: Option<PathBuf>,
    report: Option<PathBuf>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            steps: 1800,
            finetune_steps: 300,
            eval: 1000,
            bench_batch: 512,
            reps: 9,
            seed: 1337,
            out: PathBuf::from("target/compress_gpt"),
            load: None,
            save_dense: None,
            report: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| format!("{flag}: `{v}` is not a number"))
            };
            match flag.as_str() {
                "--steps" => args.steps = num(&value)?,
                "--finetune-steps" => args.finetune_steps = num(&value)?,
                "--eval" => args.eval = num(&value)?.max(1),
                "--bench-batch" => args.bench_batch = num(&value)?.max(1),
                "--reps" => args.reps = num(&value)?.max(1),
                "--seed" => args.seed = num(&value)? as u64,
                "--out" => args.out = value.into(),
                "--load" => args.load = Some(value.into()),
                "--save-dense" => args.save_dense = Some(value.into()),
                "--report" => args.report = Some(value.into()),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(args)
    }
}

type Failure = Box<dyn std::error::Error>;

/// The model of `train_gpt`.
fn gpt_config() -> GptConfig {
    GptConfig::new(kiln::data::addition::VOCAB_SIZE)
        .with_block_size(SEQ_LEN + 1)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(128)
}

fn random_batch(
    train: &AdditionDataset,
    rng: &mut StdRng,
    batch: usize,
    device: &Device,
) -> LmBatch {
    let items = (0..batch)
        .map(|_| train.problems()[rng.random_range(0..train.len())])
        .collect();
    AdditionBatcher.batch(items, device)
}

/// AdamW (β2 0.99, weight decay 0.1) with warmup + cosine, calling `hook` after every step
/// (the shape of kiln-train's after-optimizer-step hook).
fn train(
    mut gpt: Gpt,
    steps: usize,
    peak_lr: f64,
    seed: u64,
    mut hook: impl FnMut(usize, Gpt) -> Gpt,
) -> Result<Gpt, Failure> {
    let device = gpt.token_embedding.weight.device();
    let train = AdditionDataset::train();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_weight_decay(0.1)
        .init();
    let warmup = (steps / 20).max(1);
    let start = Instant::now();
    for step in 0..steps {
        let lr = warmup_cosine(step, warmup, steps, peak_lr, peak_lr / 10.0);
        let batch = random_batch(&train, &mut rng, 64, &device);
        let logits = gpt.forward(batch.inputs)?;
        let loss = gpt.loss(logits, batch.targets, Some(IGNORE_INDEX));
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        gpt = optim.step(lr, gpt, grads);
        gpt = hook(step, gpt);
        if (step + 1) % 300 == 0 || step + 1 == steps {
            println!(
                "  step {:>5}/{steps} | loss {:.4} | {:.1}s",
                step + 1,
                loss.into_scalar::<f32>(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(gpt)
}

/// A fixed sample of held-out problems.
fn held_out_sample(n: usize, seed: u64) -> Vec<AdditionProblem> {
    let mut problems = AdditionDataset::held_out().problems().to_vec();
    problems.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xACC));
    problems.truncate(n);
    problems
}

/// How a variant runs: kiln-model's f32 `Gpt` or kiln-compress's `QuantizedGpt`.
enum Model {
    F32(Gpt),
    Int8(QuantizedGpt),
}

impl Model {
    fn generate(&self, prompts: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Failure> {
        let prompts: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| p.iter().map(|&t| t as u32).collect())
            .collect();
        let config = GenerateConfig::new().with_max_new_tokens(ANSWER_LEN);
        let out = match self {
            Model::F32(gpt) => gpt.generate(&prompts, &config)?,
            Model::Int8(q) => q.generate(&prompts, &config)?,
        };
        Ok(out
            .into_iter()
            .map(|s| s.into_iter().map(|t| t as usize).collect())
            .collect())
    }

    fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>, Failure> {
        Ok(match self {
            Model::F32(gpt) => gpt.forward(ids)?,
            Model::Int8(q) => q.forward(ids)?,
        })
    }

    fn params(&self) -> usize {
        match self {
            Model::F32(gpt) => gpt.num_params(),
            Model::Int8(q) => q.num_params(),
        }
    }
}

fn accuracy(model: &Model, problems: &[AdditionProblem]) -> Result<f64, Failure> {
    let mut correct = 0;
    for chunk in problems.chunks(250) {
        let prompts: Vec<Vec<usize>> = chunk.iter().map(|p| p.prompt()).collect();
        let out = model.generate(&prompts)?;
        correct += chunk
            .iter()
            .zip(&out)
            .filter(|(p, o)| p.is_solved_by(o))
            .count();
    }
    Ok(correct as f64 / problems.len() as f64)
}

/// Zeros among the Transformer linear weights.
fn linear_sparsity(gpt: &Gpt) -> f64 {
    let params = read_params(gpt, &linear_weights);
    let n: usize = params.iter().map(|p| p.values.len()).sum();
    let z: usize = params
        .iter()
        .map(|p| p.values.iter().filter(|&&v| v == 0.0).count())
        .sum();
    z as f64 / n as f64
}

/// Multiply-add FLOPs of one forward pass per token at sequence length `seq` (linear layers,
/// attention scores and context, LM head); 2 FLOPs per multiply-add.
fn flops_per_token(gpt: &Gpt, seq: usize) -> f64 {
    let linear: usize = read_params(gpt, &linear_weights)
        .iter()
        .map(|p| p.values.len())
        .sum();
    let d_model = gpt.token_embedding.weight.dims()[1];
    // Causal attention: on average (seq + 1) / 2 keys per query, for scores and context.
    let attention = gpt.blocks.len() as f64 * 2.0 * d_model as f64 * (seq as f64 + 1.0) / 2.0;
    let head = (d_model * gpt.vocab_size) as f64;
    2.0 * (linear as f64 + attention + head)
}

struct Row {
    variant: String,
    sparsity: f64,
    params: usize,
    bytes: u64,
    accuracy: f64,
    tokens_per_s: f64,
    model: Model,
    flops: Option<f64>,
    samples: Vec<f64>,
    /// Dense time / this variant's time, each pair measured back to back.
    speedups: Vec<f64>,
    speedup: f64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Failure> {
    let args = Args::parse()?;
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let config = gpt_config();
    let total = Instant::now();

    // 1. The dense model.
    let dense = match &args.load {
        Some(dir) => {
            println!("loading the dense model from {}", dir.display());
            load_model::<GptConfig>(dir, &device)?.0
        }
        None => {
            println!("training the dense model: {} steps", args.steps);
            train(config.init(&device)?, args.steps, 3e-3, args.seed, |_, m| m)?
        }
    };
    if let Some(dir) = &args.save_dense {
        save_model(&dense, &config, dir)?;
        println!("saved the dense model to {}", dir.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let problems = held_out_sample(args.eval, args.seed);
    let mut rows: Vec<Row> = Vec::new();
    let ft_lr = 1e-3;
    let ft = args.finetune_steps;

    let f32_row = |name: &str, gpt: Gpt, file: &str| -> Result<Row, Failure> {
        let bytes = save_gpt(&gpt, &config, args.out.join(file))?;
        let gpt = gpt.valid();
        let model = Model::F32(gpt.clone());
        Ok(Row {
            variant: name.into(),
            sparsity: linear_sparsity(&gpt),
            params: gpt.num_params(),
            bytes,
            accuracy: accuracy(&model, &problems)?,
            tokens_per_s: 0.0,
            flops: Some(flops_per_token(&gpt, SEQ_LEN)),
            model,
            samples: Vec::new(),
            speedups: Vec::new(),
            speedup: 1.0,
        })
    };

    println!("dense f32");
    rows.push(f32_row("dense f32", dense.clone(), "dense.kcz")?);

    // 2. Structured (listed before the unstructured rows: a search for "structured" in the
    // variant names then finds it first): 30% of the FFN neurons removed.
    println!("structured: 30% of FFN neurons removed + {ft} fine-tuning steps");
    let kept = select_ffn_neurons(&dense, 0.3, Norm::L2)?;
    let shrunk = remove_ffn_neurons(dense.clone(), &kept)?;
    let shrunk = train(shrunk, ft, ft_lr, args.seed + 3, |_, m| m)?;
    rows.push(f32_row(
        "structured 30% FFN neurons removed + fine-tune",
        shrunk,
        "structured30.kcz",
    )?);

    // 3. 50% unstructured, reached gradually (Zhu & Gupta) over the first 2/3 of the fine-tune.
    println!("50% unstructured: gradual magnitude pruning during {ft} fine-tuning steps");
    let mut gradual = GradualPruningConfig::new(0.5, (2 * ft / 3).max(1))
        .with_frequency((ft / 15).max(1))
        .with_scope(PruningScope::Layerwise)
        .init()?;
    let unstructured = train(dense.clone(), ft, ft_lr, args.seed + 1, |step, m| {
        gradual.after_optimizer_step(step, m)
    })?;
    if let Some(e) = gradual.error() {
        return Err(format!("gradual pruning: {e}").into());
    }
    // Exactly 50% in every layer at the end (the schedule reaches it at its last event).
    let mut final_masks = magnitude_masks(
        &unstructured,
        &linear_weights,
        Amount::Fraction(0.5),
        PruningScope::Layerwise,
    )?;
    final_masks.merge(gradual.masks())?;
    let unstructured = final_masks.remove(unstructured);
    rows.push(f32_row(
        "50% unstructured + fine-tune",
        unstructured.clone(),
        "unstructured50.kcz",
    )?);

    // 4. 2:4.
    println!("2:4 semi-structured + {ft} fine-tuning steps");
    let mut masks: PruningMasks = n_m_masks(&dense, &linear_weights, 2, 4)?;
    let pruned = masks.apply(dense.clone());
    let two_four = train(pruned, ft, ft_lr, args.seed + 2, |step, m| {
        masks.after_optimizer_step(step, m)
    })?;
    rows.push(f32_row(
        "2:4 semi-structured + fine-tune",
        two_four,
        "two_four.kcz",
    )?);

    // 5. int8.
    let int8_row =
        |name: &str, gpt: &Gpt, act: ActivationQuant, file: &str| -> Result<Row, Failure> {
            println!("{name}");
            let mut q = QuantizedGpt::from_gpt(gpt, &QuantConfig::new(), act)?;
            if name.contains("static") {
                // Static activation ranges: percentile calibration on 8 training batches.
                let train = AdditionDataset::train();
                let mut rng = StdRng::seed_from_u64(args.seed ^ 0xCA1);
                let device = Device::flex();
                let batches: Vec<Tensor<2, Int>> = (0..8)
                    .map(|_| random_batch(&train, &mut rng, 64, &device).inputs)
                    .collect();
                q.calibrate(
                    &batches,
                    Calibration::Percentile(99.99),
                    QuantMode::Asymmetric,
                )?;
            }
            let bytes = save_quantized_gpt(&q, &config, args.out.join(file))?;
            let model = Model::Int8(q);
            Ok(Row {
                variant: name.into(),
                sparsity: linear_sparsity(&gpt.clone().valid()),
                params: model.params(),
                bytes,
                accuracy: accuracy(&model, &problems)?,
                tokens_per_s: 0.0,
                flops: None,
                model,
                samples: Vec::new(),
                speedups: Vec::new(),
                speedup: 1.0,
            })
        };
    rows.push(int8_row(
        "int8 per-channel weight-only",
        &dense,
        ActivationQuant::None,
        "int8_weight_only.kcz",
    )?);
    rows.push(int8_row(
        "int8 per-channel dynamic",
        &dense,
        ActivationQuant::Dynamic,
        "int8_dynamic.kcz",
    )?);
    rows.push(int8_row(
        "int8 per-channel static (asymmetric activations, 99.99th percentile calibration)",
        &dense,
        ActivationQuant::Dynamic,
        "int8_static.kcz",
    )?);
    rows.push(int8_row(
        "50% unstructured + int8 dynamic",
        &unstructured,
        ActivationQuant::Dynamic,
        "unstructured50_int8.kcz",
    )?);

    // Inference speed: one batch of held-out sequences, the variants interleaved.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0xBE);
    let held = AdditionDataset::held_out();
    let sequences: Vec<Vec<u32>> = (0..args.bench_batch)
        .map(|_| {
            let p = held.problems()[rng.random_range(0..held.len())];
            let mut s = p.prompt();
            s.extend(p.answer());
            s.truncate(SEQ_LEN);
            s.into_iter().map(|t| t as u32).collect()
        })
        .collect();
    let ids = token_tensor(
        &sequences,
        &dense.token_embedding.weight.device().without_autodiff(),
    )?;
    let tokens = (args.bench_batch * SEQ_LEN) as f64;
    println!(
        "timing: batch {} x {SEQ_LEN} tokens, {} repetitions, int8 kernel: {}",
        args.bench_batch,
        args.reps,
        int8_kernel_name()
    );
    for row in &rows {
        for _ in 0..2 {
            let _ = row.model.forward(ids.clone())?.into_data();
        }
    }
    let time = |model: &Model| -> Result<f64, Failure> {
        let start = Instant::now();
        let _ = model.forward(ids.clone())?.into_data();
        Ok(start.elapsed().as_secs_f64())
    };
    // Each variant right after a dense run: the pair sees the same load on a shared machine,
    // and the speedup is the median of the pairs' ratios.
    for _ in 0..args.reps {
        for i in 1..rows.len() {
            let dense_time = time(&rows[0].model)?;
            rows[0].samples.push(tokens / dense_time);
            let t = time(&rows[i].model)?;
            rows[i].samples.push(tokens / t);
            rows[i].speedups.push(dense_time / t);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(1.0)
    };
    for row in &mut rows {
        row.tokens_per_s = median(&mut row.samples);
        if !row.speedups.is_empty() {
            row.speedup = median(&mut row.speedups);
        }
    }

    // The table.
    let dense_row = &rows[0];
    println!();
    println!(
        "| variant | sparsity | params | bytes on disk | held-out accuracy | tokens/s (speedup vs dense, paired) |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1}% | {} | {} ({:.2}x smaller) | {:.4} | {:.0} ({:.2}x) |",
            r.variant,
            100.0 * r.sparsity,
            r.params,
            r.bytes,
            dense_row.bytes as f64 / r.bytes as f64,
            r.accuracy,
            r.tokens_per_s,
            r.speedup,
        );
    }
    if let Some(s) = rows.iter().find(|r| r.variant.starts_with("structured")) {
        let (fd, fs) = (dense_row.flops.unwrap_or(1.0), s.flops.unwrap_or(1.0));
        let flop_saving = 1.0 - fs / fd;
        let time_saving = 1.0 - 1.0 / s.speedup;
        println!(
            "\nstructured: FLOPs/token {:.0} -> {:.0} ({:.1}% fewer, {:.3}x); time per token {:.1}% less ({:.3}x); realized {:.0}% of the FLOP saving",
            fd,
            fs,
            100.0 * flop_saving,
            fd / fs,
            100.0 * time_saving,
            s.speedup,
            100.0 * time_saving / flop_saving
        );
    }
    println!("total {:.0}s", total.elapsed().as_secs_f64());

    if let Some(path) = &args.report {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "variant": r.variant,
                    "sparsity": r.sparsity,
                    "params": r.params,
                    "bytes": r.bytes,
                    "accuracy": r.accuracy,
                    "tokens_per_s": r.tokens_per_s,
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
