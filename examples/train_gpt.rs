//! The main job: train a small GPT from scratch on the CPU, with kiln's Trainer.
//!
//! ```text
//! cargo run --release --example train_gpt                      # 3-digit addition, held-out accuracy
//! cargo run --release --example train_gpt -- --data DIR         # a folder written by prepare_data
//! cargo run --release --example train_gpt -- --data FILE.txt    # character-level LM on a text file
//! ```
//!
//! The addition task (`kiln::data::addition`) is `123+456=` followed by the reversed 4-digit
//! sum; about 2% of all pairs are held out, and the final accuracy is exact match on held-out
//! problems, decoded greedily with the KV cache.
//!
//! The recipe is GPT-3's, scaled down: AdamW (β2 0.99, weight decay 0.1, none on biases, norms
//! and position embeddings), linear warmup over 5% of the steps then cosine decay to 10% of the
//! peak, global gradient clipping at 1.0, evaluation every `--eval-every` steps with early
//! stopping on the held-out loss, and checkpoints for exact resume.
//!
//! Options: `--max-steps N` (alias `--steps`) `--batch N --accum N --lr X --d-model N --layers N
//! --heads N --block N --seed S --device NAME --precision f32|f16|bf16
//! --recompute none|balanced|per-block --eval-every N --log-every N --checkpoint-every N
//! --checkpoint-dir DIR --run-dir DIR --resume --samples N`. The device defaults to
//! `KILN_DEVICE`, else `flex`. At the end it prints `params_sha256: <hex>`, a hash of every
//! parameter's bytes: a run killed at any moment and restarted with `--resume` prints the same
//! hash as an uninterrupted one.

use std::process::ExitCode;
use std::time::Instant;

use burn::data::dataset::Dataset;
use burn::module::{ModuleVisitor, Param};
use kiln::data::addition::{
    ANSWER_LEN, AdditionBatcher, AdditionDataset, AdditionProblem, PROMPT_LEN, VOCAB_SIZE,
};
use kiln::data::{LmBatch, LmBatcher, PackedLmDataset, Tokenizer};
use kiln::optim::{AdamWConfig, DecayShape, WarmupDecayConfig};
use kiln::prelude::*;
use kiln::train::{
    BatchSource, EarlyStoppingConfig, Metric, Precision, Recompute, Trainer, TrainerConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// Everything the command line can set.
struct Args {
    data: Option<String>,
    steps: usize,
    batch: usize,
    accum: usize,
    lr: f64,
    d_model: usize,
    layers: usize,
    heads: usize,
    block: usize,
    seed: u64,
    device: String,
    precision: Precision,
    recompute: Recompute,
    eval_every: usize,
    log_every: usize,
    checkpoint_every: usize,
    checkpoint_dir: Option<String>,
    run_dir: Option<String>,
    resume: bool,
    samples: usize,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            data: None,
            steps: 1800,
            batch: 64,
            accum: 1,
            lr: 3e-3,
            d_model: 128,
            layers: 2,
            heads: 4,
            block: 64,
            seed: 1337,
            device: std::env::var(kiln::device::DEVICE_ENV).unwrap_or_else(|_| "flex".into()),
            precision: Precision::F32,
            recompute: Recompute::None,
            eval_every: 200,
            log_every: 100,
            checkpoint_every: 0,
            checkpoint_dir: None,
            run_dir: None,
            resume: false,
            samples: 3,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--resume" {
                args.resume = true;
                continue;
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| format!("{flag}: `{v}` is not a number"))
            };
            match flag.as_str() {
                "--data" => args.data = Some(value),
                "--steps" | "--max-steps" => args.steps = num(&value)?,
                "--batch" => args.batch = num(&value)?,
                "--accum" => args.accum = num(&value)?,
                "--lr" => {
                    args.lr = value
                        .parse()
                        .map_err(|_| format!("--lr: bad value `{value}`"))?
                }
                "--d-model" => args.d_model = num(&value)?,
                "--layers" => args.layers = num(&value)?,
                "--heads" => args.heads = num(&value)?,
                "--block" => args.block = num(&value)?,
                "--seed" => args.seed = num(&value)? as u64,
                "--device" => args.device = value,
                "--precision" => {
                    args.precision = Precision::parse(&value)
                        .ok_or(format!("--precision: `{value}` is not f32, f16 or bf16"))?
                }
                "--recompute" => {
                    args.recompute = match value.as_str() {
                        "none" => Recompute::None,
                        "balanced" => Recompute::Balanced,
                        "per-block" => Recompute::PerBlock,
                        other => return Err(format!("--recompute: unknown mode `{other}`")),
                    }
                }
                "--eval-every" => args.eval_every = num(&value)?,
                "--log-every" => args.log_every = num(&value)?.max(1),
                "--checkpoint-every" => args.checkpoint_every = num(&value)?,
                "--checkpoint-dir" => args.checkpoint_dir = Some(value),
                "--run-dir" => args.run_dir = Some(value),
                "--samples" => args.samples = num(&value)?,
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if args.checkpoint_every > 0 && args.checkpoint_dir.is_none() && args.run_dir.is_none() {
            args.checkpoint_dir = Some("checkpoints/train_gpt".into());
        }
        if args.resume && args.checkpoint_dir.is_none() && args.run_dir.is_none() {
            args.checkpoint_dir = Some("checkpoints/train_gpt".into());
        }
        Ok(args)
    }

    fn gpt_config(&self, vocab: usize, block: usize) -> GptConfig {
        GptConfig::new(vocab)
            .with_block_size(block)
            .with_n_layer(self.layers)
            .with_n_head(self.heads)
            .with_d_model(self.d_model)
    }

    fn trainer_config(&self) -> TrainerConfig {
        TrainerConfig::new()
            .with_max_steps(Some(self.steps))
            .with_batch_size(self.batch)
            .with_grad_accumulation(self.accum)
            .with_precision(self.precision)
            .with_recompute(self.recompute)
            .with_eval_every(self.eval_every)
            .with_eval_items(Some(2000))
            .with_early_stopping(Some(
                EarlyStoppingConfig::new()
                    .with_metric(Metric::Loss)
                    .with_patience(5),
            ))
            .with_checkpoint_every(self.checkpoint_every)
            .with_checkpoint_dir(self.checkpoint_dir.clone())
            .with_run_dir(self.run_dir.clone())
            .with_resume(self.resume)
            .with_log_every(self.log_every)
            .with_seed(self.seed)
    }
}

/// Trains `gpt` with the GPT-3 recipe on `train`, evaluating on `eval`.
fn train(
    gpt: Gpt,
    args: &Args,
    train: BatchSource<LmBatch>,
    eval: BatchSource<LmBatch>,
    device: &Device,
) -> Result<Gpt, String> {
    let optimizer = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_weight_decay(0.1)
        .init(&gpt)
        .map_err(|e| e.to_string())?;
    let schedule = WarmupDecayConfig::new(args.lr, (args.steps / 20).max(1), args.steps)
        .with_shape(DecayShape::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: 0.1,
        })
        .init()
        .map_err(|e| e.to_string())?;
    let trainer = Trainer::new(args.trainer_config(), optimizer, schedule, train)
        .map_err(|e| e.to_string())?
        .with_eval(eval);
    let start = Instant::now();
    let outcome = trainer.fit(gpt, device).map_err(|e| e.to_string())?;
    if let Some(step) = outcome.resumed_from {
        println!("(resumed from step {step})");
    }
    if let Some((step, loss)) = outcome.best {
        println!("best held-out loss {loss:.4} at step {step}");
    }
    println!(
        "trained {} steps in {:.1}s",
        outcome.state.step,
        start.elapsed().as_secs_f64()
    );
    Ok(outcome.model)
}

/// SHA-256 over every parameter's bytes, in module order.
fn params_sha256(gpt: &Gpt) -> String {
    struct Hash(Sha256);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.update(param.val().to_data().as_bytes());
        }
    }
    let mut hash = Hash(Sha256::new());
    gpt.visit(&mut hash);
    hash.0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Exact-match accuracy on `n` held-out problems, decoded greedily with the KV cache.
fn held_out_accuracy(gpt: &Gpt, n: usize, seed: u64) -> Result<f64, ModelError> {
    let held_out = AdditionDataset::held_out();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xACC);
    let problems: Vec<AdditionProblem> = (0..n)
        .map(|_| held_out.problems()[rng.random_range(0..held_out.problems().len())])
        .collect();
    let gpt = gpt.valid();
    let mut correct = 0;
    for chunk in problems.chunks(250) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| p.prompt().into_iter().map(|t| t as u32).collect())
            .collect();
        let config = GenerateConfig::new().with_max_new_tokens(ANSWER_LEN);
        let outputs = gpt.generate(&prompts, &config)?;
        correct += chunk
            .iter()
            .zip(&outputs)
            .filter(|(p, out)| p.is_solved_by(&out.iter().map(|&t| t as usize).collect::<Vec<_>>()))
            .count();
    }
    Ok(correct as f64 / n as f64)
}

fn run_addition(args: &Args, device: &Device) -> Result<Gpt, String> {
    device.seed(args.seed);
    let gpt = args
        .gpt_config(VOCAB_SIZE, PROMPT_LEN + ANSWER_LEN)
        .init(device)
        .map_err(|e| e.to_string())?;
    println!(
        "3-digit addition: GPT with {} parameters, {} steps of {} x {}",
        gpt.num_params(),
        args.steps,
        args.accum,
        args.batch
    );
    let train_data = BatchSource::new(AdditionDataset::train(), AdditionBatcher);
    let eval_data = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let gpt = train(gpt, args, train_data, eval_data, device)?;
    let accuracy = held_out_accuracy(&gpt, 1000, args.seed).map_err(|e| e.to_string())?;
    println!("held-out accuracy: {accuracy:.4}");
    Ok(gpt)
}

/// A language model on a prepared folder (token shards + tokenizer.json) or a raw text file
/// (character-level, the last 5% held out).
fn run_text(path: &str, args: &Args, device: &Device) -> Result<Gpt, String> {
    let (tokenizer, train_set, eval_set) = if std::path::Path::new(path).is_dir() {
        let tokenizer = Tokenizer::from_file(std::path::Path::new(path).join("tokenizer.json"))
            .map_err(|e| e.to_string())?;
        let train_set = PackedLmDataset::open(path, args.block).map_err(|e| e.to_string())?;
        let eval_set = PackedLmDataset::open_split(path, "val", args.block)
            .map_err(|e| format!("{e}: the `val` split is too small for one window; rerun prepare_data with a larger --val-fraction"))?;
        (tokenizer, train_set, eval_set)
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let tokenizer = Tokenizer::char_level(&text).map_err(|e| e.to_string())?;
        let ids = tokenizer.encode(&text).map_err(|e| e.to_string())?;
        let cut = ids.len() - ids.len() / 20;
        let train_set = PackedLmDataset::from_tokens(ids[..cut].to_vec(), args.block)
            .map_err(|e| e.to_string())?;
        let eval_set = PackedLmDataset::from_tokens(ids[cut..].to_vec(), args.block)
            .map_err(|e| e.to_string())?;
        (tokenizer, train_set, eval_set)
    };
    device.seed(args.seed);
    let gpt = args
        .gpt_config(tokenizer.vocab_size(), args.block)
        .init(device)
        .map_err(|e| e.to_string())?;
    println!(
        "language model on {path}: {} training windows of {} tokens, vocabulary {}, {} parameters",
        train_set.len(),
        args.block,
        tokenizer.vocab_size(),
        gpt.num_params()
    );
    let first_tokens: Vec<u32> = (0..args.samples)
        .filter_map(|i| train_set.window(i * 7 % train_set.len().max(1)).ok())
        .filter_map(|w| w.first().copied())
        .collect();
    let gpt = train(
        gpt,
        args,
        BatchSource::new(train_set, LmBatcher),
        BatchSource::new(eval_set, LmBatcher),
        device,
    )?;
    let inference = gpt.valid();
    for (i, first) in first_tokens.into_iter().enumerate() {
        let config = GenerateConfig::new()
            .with_max_new_tokens(args.block - 1)
            .with_do_sample(true)
            .with_temperature(0.8)
            .with_top_k(Some(20))
            .with_seed(args.seed + i as u64);
        let out = inference
            .generate(&[vec![first]], &config)
            .map_err(|e| e.to_string())?;
        let sample = tokenizer.decode(&out[0]).map_err(|e| e.to_string())?;
        println!("--- sample {} ---\n{sample}", i + 1);
    }
    Ok(gpt)
}

fn main() -> ExitCode {
    let result = Args::parse().and_then(|args| {
        let device = kiln::device::from_name(&args.device)
            .map_err(|e| e.to_string())?
            .autodiff();
        let gpt = match &args.data {
            Some(path) => run_text(path, &args, &device)?,
            None => run_addition(&args, &device)?,
        };
        println!("params_sha256: {}", params_sha256(&gpt));
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
