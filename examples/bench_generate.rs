//! Times KV-cache generation (greedy decoding) of a GPT in f32, in bf16 (weights and
//! activations, `Precision::Bf16`'s cast) and with int8 linear layers (`QuantizedGpt`, dynamic
//! activation quantization), alternating in one run.
//!
//! ```text
//! cargo run --release --example bench_generate -- [--batch 1,8] [--prompt 32] [--new-tokens 32] \
//!     [--rounds 3] [--d-model 768 --layers 12 --heads 12 --vocab 50257 --context 1024] \
//!     [--arch llama --kv-heads 4]
//! ```
//!
//! The defaults are GPT-2 small's shape with random weights (`--arch llama`: the same sizes as
//! `kiln::recipe::llama_model`, RMSNorm, rotary, SwiGLU, `--kv-heads` key/value heads) (the speed does not depend on the
//! values). Each measurement runs `generate` twice on the same prompts: once for one new token
//! (the prefill: the prompt through the model, and the first token) and once for `--new-tokens`;
//! **decoding tokens/s** is `batch · (new_tokens − 1)` over the difference, the cost of the
//! cached steps alone. `scripts/bench_generate.py` times HF transformers' `generate` the same
//! way and runs this binary between its own rounds.
//!
//! Per batch size the last lines are `f32_decode_tokens_per_s_b{B}`, then for bf16 and int8
//! `{bf16,int8}_decode_tokens_per_s_b{B}` and `{bf16,int8}_vs_f32_b{B}` (the median of the paired
//! ratios).

use std::time::Instant;

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use kiln::base::{Precision, seed};
use kiln::compress::{ActivationQuant, QuantConfig, QuantizedGpt};
use kiln::prelude::*;
use rand::Rng;

/// Time KV-cache generation of a GPT in f32 and in int8.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8], value_parser = positive())]
    batch: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32, value_parser = positive())]
    prompt: usize,
    /// New tokens per sequence (at least 2: the first comes from the prefill).
    #[arg(long, default_value_t = 32, value_parser = RangedU64ValueParser::<usize>::new().range(2..))]
    new_tokens: usize,
    /// Rounds; f32, bf16 and int8 alternate within each, and the medians are reported.
    #[arg(long, default_value_t = 3, value_parser = positive())]
    rounds: usize,
    /// Model width.
    #[arg(long, default_value_t = 768, value_parser = positive())]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 12, value_parser = positive())]
    layers: usize,
    /// Attention heads per block.
    #[arg(long, default_value_t = 12, value_parser = positive())]
    heads: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 50257, value_parser = positive())]
    vocab: usize,
    /// Context length.
    #[arg(long, default_value_t = 1024, value_parser = positive())]
    context: usize,
    /// Only the f32 model (for comparing builds): no bf16, no int8.
    #[arg(long)]
    f32_only: bool,
    /// Backend: flex, wgpu, vulkan[:N], metal, cuda[:N] or auto; defaults to $KILN_DEVICE, else
    /// flex. int8 (`QuantizedGpt`) runs on flex's CPU kernels only, so elsewhere only f32 is timed.
    #[arg(long)]
    device: Option<String>,
    /// `gpt2` or `llama` (`kiln::recipe::llama_model`).
    #[arg(long, default_value = "gpt2", value_parser = ["gpt2", "llama"])]
    arch: String,
    /// Key/value heads of the Llama model (default: a third of the heads, rounded up).
    #[arg(long)]
    kv_heads: Option<usize>,
}

/// A count of at least 1.
fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// Seconds of the cached decoding steps: `generate` for `new_tokens` minus `generate` for one.
fn decode_seconds(
    generate: &impl Fn(&[Vec<u32>], &GenerateConfig) -> kiln::Result<Vec<Vec<u32>>>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> kiln::Result<(f64, Vec<Vec<u32>>)> {
    let timed = |n: usize| -> kiln::Result<(f64, Vec<Vec<u32>>)> {
        let config = GenerateConfig::new().with_max_new_tokens(n);
        let start = Instant::now();
        let out = generate(prompts, &config)?;
        Ok((start.elapsed().as_secs_f64(), out))
    };
    let (prefill, _) = timed(1)?;
    let (all, tokens) = timed(new_tokens)?;
    Ok(((all - prefill).max(1e-9), tokens))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A model's `generate`, boxed so the variants can be timed in one loop.
type Generate<'a> = Box<dyn Fn(&[Vec<u32>], &GenerateConfig) -> kiln::Result<Vec<Vec<u32>>> + 'a>;

pub fn main() -> kiln::Result<()> {
    let a = Args::parse();
    if a.prompt + a.new_tokens > a.context {
        return Err(kiln::Error::Usage(format!(
            "--prompt {} + --new-tokens {} exceed the context {}",
            a.prompt, a.new_tokens, a.context
        )));
    }
    let device = kiln::device::from_flag(a.device.as_deref())?;
    println!("adapter: {}", kiln::device::describe(&device)?);
    let int8_here = !a.f32_only && device == Device::flex();
    if !a.f32_only && !int8_here {
        println!("int8: not timed (QuantizedGpt runs on flex only)");
    }
    let config = match a.arch.as_str() {
        "llama" => {
            let kv = a.kv_heads.unwrap_or(a.heads.div_ceil(3));
            kiln::recipe::llama_model(a.vocab, a.context, a.layers, a.d_model, a.heads, kv)
        }
        _ => GptConfig::new(a.vocab)
            .with_block_size(a.context)
            .with_n_layer(a.layers)
            .with_n_head(a.heads)
            .with_d_model(a.d_model),
    };
    device.seed(0);
    let gpt = config.init(&device)?;
    let int8 = int8_here
        .then(|| QuantizedGpt::from_gpt(&gpt, &QuantConfig::new(), ActivationQuant::Dynamic))
        .transpose()?;
    // bf16 weights and activations (f32 accumulation): half the bytes per decoding step.
    let bf16 = (!a.f32_only).then(|| Precision::Bf16.compute_model(&gpt));
    println!(
        "model: {} d_model {} layers {} heads {} (kv {}) vocab {} ({} parameters); prompt {}, {} new tokens; int8 kernel {}",
        a.arch,
        a.d_model,
        a.layers,
        a.heads,
        config.n_kv_head(),
        a.vocab,
        gpt.num_params(),
        a.prompt,
        a.new_tokens,
        kiln::compress::int8_kernel_name(),
    );
    let mut variants: Vec<(&str, Generate<'_>)> =
        vec![("f32", Box::new(|p, c| Ok(gpt.generate(p, c)?)))];
    if let Some(m) = &bf16 {
        variants.push(("bf16", Box::new(move |p, c| Ok(m.generate(p, c)?))));
    }
    if let Some(q) = &int8 {
        variants.push(("int8", Box::new(move |p, c| Ok(q.generate(p, c)?))));
    }
    let mut rng = seed::rng(0);
    for &batch in &a.batch {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..a.prompt)
                    .map(|_| rng.random_range(0..a.vocab as u32))
                    .collect()
            })
            .collect();
        let decoded = (batch * (a.new_tokens - 1)) as f64;
        // One untimed call each, so page faults of the first run are not counted.
        for (_, generate) in &variants {
            generate(&prompts, &GenerateConfig::new().with_max_new_tokens(2))?;
        }
        let mut rates = vec![Vec::new(); variants.len()];
        let mut ratios = vec![Vec::new(); variants.len()];
        let mut agreement = vec![0.0; variants.len()];
        for round in 1..=a.rounds {
            let mut line = format!("batch {batch} round {round}:");
            let mut f32_run: Option<(f64, Vec<Vec<u32>>)> = None;
            for (v, (name, generate)) in variants.iter().enumerate() {
                let (seconds, tokens) = decode_seconds(generate, &prompts, a.new_tokens)?;
                rates[v].push(decoded / seconds);
                line += &format!(
                    " {name} {:.1} ms/token",
                    seconds * 1e3 / (a.new_tokens - 1) as f64
                );
                match &f32_run {
                    None => f32_run = Some((seconds, tokens)),
                    Some((f32_s, f32_tokens)) => {
                        ratios[v].push(f32_s / seconds);
                        line += &format!(" ({:.2}x)", f32_s / seconds);
                        // How many generated tokens a variant shares with f32 (random weights
                        // make the logits nearly flat, so this is a sanity check, not an
                        // accuracy figure).
                        let same = f32_tokens
                            .iter()
                            .zip(&tokens)
                            .map(|(f, q)| {
                                f[a.prompt..]
                                    .iter()
                                    .zip(&q[a.prompt..])
                                    .take_while(|(x, y)| x == y)
                                    .count()
                            })
                            .sum::<usize>();
                        agreement[v] = same as f64 / (batch * a.new_tokens) as f64;
                    }
                }
                line += ",";
            }
            println!("{}", line.trim_end_matches(','));
        }
        for (v, (name, _)) in variants.iter().enumerate() {
            println!(
                "{name}_decode_tokens_per_s_b{batch}: {:.1}",
                median(rates[v].clone())
            );
            if v > 0 {
                println!(
                    "{name}_greedy_prefix_agreement_b{batch}: {:.3}",
                    agreement[v]
                );
                println!("{name}_vs_f32_b{batch}: {:.2}", median(ratios[v].clone()));
            }
        }
    }
    if let Some(peak) = kiln::base::memory::peak_rss_mib() {
        println!("peak_rss_mib: {peak:.0}");
    }
    Ok(())
}
