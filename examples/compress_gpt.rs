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
//! The dense model is trained exactly as `train_gpt` trains it: `kiln::recipe::addition` on
//! kiln's Trainer; the fine-tunes use the same recipe at a lower peak rate. `--help` lists the
//! options.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Int;
use clap::Parser;
use kiln::base::seed;
use kiln::compress::{
    ActivationQuant, Amount, Calibration, GradualPruningConfig, Norm, PruningMasks, PruningScope,
    QuantConfig, QuantMode, QuantizedGpt, int8_kernel_name, linear_weights, magnitude_masks,
    n_m_masks, read_params, remove_ffn_neurons, save_gpt, save_quantized_gpt, select_ffn_neurons,
};
use kiln::data::addition::{
    ANSWER_LEN, AdditionBatcher, AdditionDataset, AdditionProblem, SEQ_LEN,
};
use kiln::model::loss::token_tensor;
use kiln::model::store::{load_model, save_model};
use kiln::prelude::*;
use rand::Rng;
use rand::seq::SliceRandom;

/// Prune and quantize the main job's GPT; report sparsity, size, accuracy and speed of each.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Training steps of the dense model (the main job's recipe).
    #[arg(long, alias = "steps", default_value_t = kiln::recipe::ADDITION_STEPS)]
    max_steps: usize,
    /// Fine-tuning steps after pruning.
    #[arg(long, default_value_t = 300)]
    finetune_steps: usize,
    /// Held-out problems for the accuracy.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    eval: u64,
    /// Sequences in the timed batch.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    bench_batch: u64,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// Seed of training, fine-tuning and sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Folder for the compressed archives.
    #[arg(long, default_value = "target/compress_gpt")]
    out: PathBuf,
    /// Load the dense model from a folder written by --save-dense instead of training it.
    #[arg(long, conflicts_with = "max_steps")]
    load: Option<PathBuf>,
    /// Keep the trained dense model in this folder.
    #[arg(long)]
    save_dense: Option<PathBuf>,
    /// Write --save-dense into a folder that holds files kiln did not write (they are left
    /// alone); without it such a folder is refused, naming the files.
    #[arg(long)]
    force: bool,
    /// Also write the rows as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// What runs after every optimizer step of a fine-tune (a kiln-train step hook).
type Hook = Box<dyn FnMut(usize, Gpt) -> kiln::Result<Gpt> + Send>;

/// Trains `gpt` with the main job's recipe and Trainer (`kiln::recipe::addition`) for `steps`
/// steps (peaking at `peak_lr` instead of the recipe's when given), calling `hook` after every
/// optimizer step. Fine-tunes (with a
/// hook) run without evaluation: early stopping could go back to weights from before the
/// pruning reached its target.
fn train(
    gpt: Gpt,
    steps: usize,
    peak_lr: Option<f64>,
    seed: u64,
    hook: Option<Hook>,
) -> kiln::Result<Gpt> {
    let device = gpt.token_embedding.weight.device();
    let mut run = kiln::recipe::addition(steps);
    if let Some(lr) = peak_lr {
        run.schedule = run.schedule.with_peak_lr(lr)?;
    }
    run.trainer = run.trainer.with_seed(seed).with_log_every(300);
    let train = BatchSource::new(AdditionDataset::train(), AdditionBatcher);
    let trainer = match hook {
        Some(hook) => {
            run.trainer = run.trainer.with_early_stopping(None);
            Trainer::new(&run, train)?.with_hook(hook)
        }
        None => Trainer::new(&run, train)?.with_eval(BatchSource::new(
            AdditionDataset::held_out(),
            AdditionBatcher,
        )),
    };
    Ok(trainer.fit(gpt, &device)?.model)
}

/// A fixed sample of held-out problems.
fn held_out_sample(n: usize, seed: u64) -> Vec<AdditionProblem> {
    let mut problems = AdditionDataset::held_out().problems().to_vec();
    problems.shuffle(&mut seed::rng(seed));
    problems.truncate(n);
    problems
}

/// How a variant runs: kiln-model's f32 `Gpt` or kiln-compress's `QuantizedGpt`.
enum Model {
    F32(Gpt),
    Int8(QuantizedGpt),
}

impl Model {
    fn generate(&self, prompts: &[Vec<u32>]) -> kiln::Result<Vec<Vec<u32>>> {
        let config = GenerateConfig::new().with_max_new_tokens(ANSWER_LEN);
        Ok(match self {
            Model::F32(gpt) => gpt.generate(prompts, &config)?,
            Model::Int8(q) => q.generate(prompts, &config)?,
        })
    }

    fn forward(&self, ids: Tensor<2, Int>) -> kiln::Result<Tensor<3>> {
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

fn accuracy(model: &Model, problems: &[AdditionProblem]) -> kiln::Result<f64> {
    let mut correct = 0;
    for chunk in problems.chunks(250) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| p.prompt()).collect();
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

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let config = kiln::recipe::addition(args.max_steps).model;
    let total = Instant::now();

    // 1. The dense model.
    let dense = match &args.load {
        Some(dir) => {
            println!("loading the dense model from {}", dir.display());
            load_model::<GptConfig>(dir, &device)?.0
        }
        None => {
            println!("training the dense model: {} steps", args.max_steps);
            train(config.init(&device)?, args.max_steps, None, args.seed, None)?
        }
    };
    if let Some(dir) = &args.save_dense {
        let out = if args.force {
            kiln::base::OutputDir::forced(dir)
        } else {
            kiln::base::OutputDir::new(dir)
        };
        save_model(&dense, &config, out)?;
        println!("saved the dense model to {}", dir.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let problems = held_out_sample(args.eval as usize, args.seed);
    let mut rows: Vec<Row> = Vec::new();
    // Fine-tunes peak at a third of the main job's rate.
    let ft_lr = Some(3e-4);
    let ft = args.finetune_steps;

    let f32_row = |name: &str, gpt: Gpt, file: &str| -> kiln::Result<Row> {
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
    let shrunk = train(shrunk, ft, ft_lr, args.seed + 3, None)?;
    rows.push(f32_row(
        "structured 30% FFN neurons removed + fine-tune",
        shrunk,
        "structured30.kcz",
    )?);

    // 3. 50% unstructured, reached gradually (Zhu & Gupta) over the first 2/3 of the fine-tune.
    println!("50% unstructured: gradual magnitude pruning during {ft} fine-tuning steps");
    let gradual = GradualPruningConfig::new(0.5, (2 * ft / 3).max(1))
        .with_frequency((ft / 15).max(1))
        .with_scope(PruningScope::Layerwise)
        .init()?;
    let gradual = Arc::new(Mutex::new(gradual));
    let hook = gradual.clone();
    let unstructured = train(
        dense.clone(),
        ft,
        ft_lr,
        args.seed + 1,
        Some(Box::new(move |step, m| {
            Ok(hook
                .lock()
                .expect("one hook")
                .after_optimizer_step(step, m)?)
        })),
    )?;
    let gradual = gradual.lock().expect("training ended");
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
    let masks: PruningMasks = n_m_masks(&dense, &linear_weights, 2, 4)?;
    let pruned = masks.apply(dense.clone());
    let two_four = train(
        pruned,
        ft,
        ft_lr,
        args.seed + 2,
        Some(Box::new(move |_, m| Ok(masks.apply(m)))),
    )?;
    rows.push(f32_row(
        "2:4 semi-structured + fine-tune",
        two_four,
        "two_four.kcz",
    )?);

    // 5. int8.
    let int8_row = |name: &str, gpt: &Gpt, act: ActivationQuant, file: &str| -> kiln::Result<Row> {
        println!("{name}");
        let mut q = QuantizedGpt::from_gpt(gpt, &QuantConfig::new(), act)?;
        if name.contains("static") {
            // Static activation ranges: percentile calibration on 8 training batches.
            let train = AdditionDataset::train();
            let mut rng = seed::rng(seed::mix(args.seed, 1));
            let device = Device::flex();
            let batches: Vec<Tensor<2, Int>> = (0..8)
                .map(|_| {
                    let items = (0..64)
                        .map(|_| train.problems()[rng.random_range(0..train.len())])
                        .collect();
                    AdditionBatcher.batch(items, &device).inputs
                })
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
    let mut rng = seed::rng(seed::mix(args.seed, 2));
    let held = AdditionDataset::held_out();
    let sequences: Vec<Vec<u32>> = (0..args.bench_batch as usize)
        .map(|_| {
            let p = held.problems()[rng.random_range(0..held.len())];
            let mut s = p.prompt();
            s.extend(p.answer());
            s.truncate(SEQ_LEN);
            s
        })
        .collect();
    let ids = token_tensor(
        &sequences,
        &dense.token_embedding.weight.device().without_autodiff(),
    )?;
    let tokens = (args.bench_batch as usize * SEQ_LEN) as f64;
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
    let time = |model: &Model| -> kiln::Result<f64> {
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
        let text = serde_json::to_string_pretty(&json).expect("JSON values serialize");
        kiln::base::store::write_atomic(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
