//! The main job: train a small GPT from scratch on the CPU.
//!
//! ```text
//! cargo run --release --example train_gpt                  # 3-digit addition, prints held-out accuracy
//! cargo run --release --example train_gpt -- --data FILE   # character-level LM on any text file
//! ```
//!
//! The addition task is generated in code: `123+456=` followed by the 4-digit sum with its digits
//! reversed (`9750` for 579), which lets the model produce the carry digit by digit, the way
//! one adds by hand. Problems are split by a hash into training and held-out pairs, and the final
//! accuracy is exact match on held-out problems the model never saw.
//!
//! Options: `--steps N --batch N --lr X --d-model N --layers N --heads N --seed S --device NAME
//! --log-every N` (and `--block N --samples N` with `--data`). The device defaults to `KILN_DEVICE`, else `flex`.

use std::process::ExitCode;
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use kiln::data::CharTokenizer;
use kiln::model::loss::token_tensor;
use kiln::optim::warmup_cosine;
use kiln::prelude::*;
use kiln::train::RunningMean;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Everything the command line can set.
struct Args {
    data: Option<String>,
    steps: usize,
    batch: usize,
    lr: f64,
    d_model: usize,
    layers: usize,
    heads: usize,
    block: usize,
    seed: u64,
    device: String,
    log_every: usize,
    samples: usize,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            data: None,
            steps: 1800,
            batch: 64,
            lr: 3e-3,
            d_model: 128,
            layers: 2,
            heads: 4,
            block: 64,
            seed: 1337,
            device: std::env::var(kiln::device::DEVICE_ENV).unwrap_or_else(|_| "flex".into()),
            log_every: 100,
            samples: 3,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| format!("{flag}: `{v}` is not a number"))
            };
            match flag.as_str() {
                "--data" => args.data = Some(value),
                "--steps" => args.steps = num(&value)?,
                "--batch" => args.batch = num(&value)?,
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
                "--log-every" => args.log_every = num(&value)?.max(1),
                "--samples" => args.samples = num(&value)?,
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(args)
    }
}

// ---------------------------------------------------------------------------------------------
// The addition task.

const PLUS: usize = 10;
const EQUALS: usize = 11;
const ADDITION_VOCAB: usize = 12;
/// `aaa+bbb=` then 4 answer digits.
const PROMPT_LEN: usize = 8;
const ANSWER_LEN: usize = 4;
/// Targets that carry no loss (the prompt digits are random: nothing to learn there).
const IGNORE: i64 = -1;

/// About 2% of all pairs are held out, chosen by a hash so the split never changes.
fn is_held_out(a: usize, b: usize) -> bool {
    let mut x = (a * 1000 + b) as u64 ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)).is_multiple_of(50)
}

fn digits(n: usize, len: usize) -> Vec<usize> {
    (0..len)
        .rev()
        .map(|i| n / 10usize.pow(i as u32) % 10)
        .collect()
}

/// `a+b=` as tokens.
fn prompt(a: usize, b: usize) -> Vec<usize> {
    let mut tokens = digits(a, 3);
    tokens.push(PLUS);
    tokens.extend(digits(b, 3));
    tokens.push(EQUALS);
    tokens
}

/// The answer digits, least significant first.
fn answer(a: usize, b: usize) -> Vec<usize> {
    let mut d = digits(a + b, ANSWER_LEN);
    d.reverse();
    d
}

fn random_pair(rng: &mut StdRng, held_out: bool) -> (usize, usize) {
    loop {
        let (a, b) = (rng.random_range(0..1000), rng.random_range(0..1000));
        if is_held_out(a, b) == held_out {
            return (a, b);
        }
    }
}

/// A batch of (inputs, targets): next-token prediction, with loss only on the answer.
fn addition_batch(
    rng: &mut StdRng,
    batch: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let mut inputs = Vec::with_capacity(batch);
    let mut targets = Vec::with_capacity(batch * (PROMPT_LEN + ANSWER_LEN - 1));
    for _ in 0..batch {
        let (a, b) = random_pair(rng, false);
        let mut seq = prompt(a, b);
        seq.extend(answer(a, b));
        for (i, &next) in seq[1..].iter().enumerate() {
            targets.push(if i + 1 >= PROMPT_LEN {
                next as i64
            } else {
                IGNORE
            });
        }
        seq.pop();
        inputs.push(seq);
    }
    let seq = PROMPT_LEN + ANSWER_LEN - 1;
    let targets = Tensor::from_data(TensorData::new(targets, [batch, seq]), device);
    (token_tensor(&inputs, device).expect("valid batch"), targets)
}

/// Exact-match accuracy on `n` held-out problems, decoded greedily with the KV cache.
fn held_out_accuracy(gpt: &Gpt, n: usize, seed: u64) -> Result<f64, ModelError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xACC);
    let pairs: Vec<(usize, usize)> = (0..n).map(|_| random_pair(&mut rng, true)).collect();
    let mut correct = 0;
    for chunk in pairs.chunks(250) {
        let prompts: Vec<Vec<usize>> = chunk.iter().map(|&(a, b)| prompt(a, b)).collect();
        let config = GenerateConfig::new().with_max_new_tokens(ANSWER_LEN);
        let outputs = gpt.generate(&prompts, &config)?;
        correct += chunk
            .iter()
            .zip(&outputs)
            .filter(|((a, b), out)| out[PROMPT_LEN..] == answer(*a, *b)[..])
            .count();
    }
    Ok(correct as f64 / n as f64)
}

// ---------------------------------------------------------------------------------------------
// The training loop, shared by both tasks.

/// Trains `gpt` with AdamW (β2 0.99, weight decay 0.1), linear warmup and cosine decay, on
/// batches from `next_batch`. Prints the smoothed loss as it goes.
fn train(
    mut gpt: Gpt,
    args: &Args,
    mut next_batch: impl FnMut() -> (Tensor<2, Int>, Tensor<2, Int>),
) -> Result<Gpt, ModelError> {
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_epsilon(1e-8)
        .with_weight_decay(0.1)
        .init();
    let warmup = (args.steps / 20).max(1);
    let mut loss_mean = RunningMean::new(0.9);
    let start = Instant::now();
    for step in 0..args.steps {
        let lr = warmup_cosine(step, warmup, args.steps, args.lr, args.lr / 10.0);
        let (inputs, targets) = next_batch();
        let logits = gpt.forward(inputs)?;
        let loss = gpt.loss(logits, targets, Some(IGNORE));
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        gpt = optim.step(lr, gpt, grads);
        if (step + 1).is_multiple_of(args.log_every) || step + 1 == args.steps {
            loss_mean.update(loss.into_scalar::<f32>() as f64);
            println!(
                "step {:>5}/{} | loss {:.4} | lr {:.2e} | {:.1}s",
                step + 1,
                args.steps,
                loss_mean.value().unwrap_or(f64::NAN),
                lr,
                start.elapsed().as_secs_f64()
            );
        } else if step.is_multiple_of(10) {
            loss_mean.update(loss.into_scalar::<f32>() as f64);
        }
    }
    Ok(gpt)
}

fn gpt_config(args: &Args, vocab: usize, block: usize) -> GptConfig {
    GptConfig::new(vocab)
        .with_block_size(block)
        .with_n_layer(args.layers)
        .with_n_head(args.heads)
        .with_d_model(args.d_model)
}

fn run_addition(args: &Args, device: &Device) -> Result<(), ModelError> {
    let config = gpt_config(args, ADDITION_VOCAB, PROMPT_LEN + ANSWER_LEN);
    device.seed(args.seed);
    let gpt = config.init(device)?;
    println!(
        "3-digit addition: GPT with {} parameters, {} steps of batch {}",
        gpt.param_count(),
        args.steps,
        args.batch
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let gpt = train(gpt, args, || addition_batch(&mut rng, args.batch, device))?;
    let accuracy = held_out_accuracy(&gpt, 1000, args.seed)?;
    println!("held-out accuracy: {accuracy:.4}");
    Ok(())
}

fn run_text(path: &str, args: &Args, device: &Device) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let tokenizer = CharTokenizer::from_corpus(&text).map_err(|e| e.to_string())?;
    let ids = tokenizer.encode(&text).map_err(|e| e.to_string())?;
    if ids.len() <= args.block + 1 {
        return Err(format!(
            "{path} is too short for a context of {} characters",
            args.block
        ));
    }
    let config = gpt_config(args, tokenizer.vocab_size(), args.block);
    device.seed(args.seed);
    let gpt = config.init(device).map_err(|e| e.to_string())?;
    println!(
        "character LM on {path}: {} characters, vocabulary {}, {} parameters",
        ids.len(),
        tokenizer.vocab_size(),
        gpt.param_count()
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let block = args.block;
    let gpt = train(gpt, args, || {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..args.batch {
            let start = rng.random_range(0..ids.len() - block - 1);
            inputs.push(ids[start..start + block].to_vec());
            targets.extend(ids[start + 1..start + block + 1].iter().map(|&t| t as i64));
        }
        let targets = Tensor::from_data(TensorData::new(targets, [args.batch, block]), device);
        (token_tensor(&inputs, device).expect("valid batch"), targets)
    })
    .map_err(|e| e.to_string())?;
    for i in 0..args.samples {
        let start = rng.random_range(0..ids.len() - 1);
        let config = GenerateConfig::new()
            .with_max_new_tokens(block - 1)
            .with_do_sample(true)
            .with_temperature(0.8)
            .with_top_k(Some(20))
            .with_seed(args.seed + i as u64);
        let out = gpt
            .generate(&[vec![ids[start]]], &config)
            .map_err(|e| e.to_string())?;
        let sample = tokenizer.decode(&out[0]).map_err(|e| e.to_string())?;
        println!("--- sample {} ---\n{sample}", i + 1);
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = Args::parse().and_then(|args| {
        let device = kiln::device::from_name(&args.device)
            .map_err(|e| e.to_string())?
            .autodiff();
        match &args.data {
            Some(path) => run_text(path, &args, &device),
            None => run_addition(&args, &device).map_err(|e| e.to_string()),
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
