//! Times full training steps (forward, backward, AdamW) of kiln's Gpt, and optionally of the
//! same-sized model built from Burn's own `TransformerEncoder` in the same run.
//!
//! ```text
//! cargo run --release --example bench_gpt -- --d-model 256 --layers 4 --heads 4 --seq 128 \
//!     --batch 16 --steps 6 [--vocab 256] [--warmup 2] [--baseline] [--rounds 1] [--device NAME] \
//!     [--arch llama --kv-heads 2] [--precision f32|bf16|f16]
//! cargo run --release --example bench_gpt -- --help
//! ```
//!
//! The last line is `tokens_per_s: X` for kiln's model (median step time), after
//! `peak_rss_mib: X` (the process's resident-set high-water mark). With `--baseline`,
//! kiln and the burn-nn model alternate for `--rounds` rounds (so drift of the machine hits
//! both), and `burn_nn_tokens_per_s: X` and `kiln_vs_burn_nn: R` come just before it.

use std::time::Instant;

use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::FloatDType;
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use kiln::base::seed;
use kiln::model::loss::cross_entropy;
use kiln::prelude::*;
use rand::Rng;

/// Time training steps (forward, backward, AdamW) of kiln's GPT, optionally against burn-nn's.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Model width.
    #[arg(long, default_value_t = 256, value_parser = positive())]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4, value_parser = positive())]
    layers: usize,
    /// Attention heads per block.
    #[arg(long, default_value_t = 4, value_parser = positive())]
    heads: usize,
    /// Tokens per sequence (the context length).
    #[arg(long, default_value_t = 128, value_parser = positive())]
    seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16, value_parser = positive())]
    batch: usize,
    /// Timed steps per round (the median is reported).
    #[arg(long, default_value_t = 6, value_parser = positive())]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Vocabulary size (the tokens are random).
    #[arg(long, default_value_t = 256, value_parser = positive())]
    vocab: usize,
    /// Also time the same-sized GPT built from burn-nn's `TransformerEncoder`.
    #[arg(long)]
    baseline: bool,
    /// Rounds; with --baseline kiln and burn-nn alternate, so drift of the machine hits both.
    #[arg(long, default_value_t = 1, value_parser = positive())]
    rounds: usize,
    /// Backend: flex, wgpu, vulkan[:N], metal, cuda[:N] or auto; defaults to $KILN_DEVICE, else flex.
    #[arg(long)]
    device: Option<String>,
    /// `gpt2` (learned positions, LayerNorm, GELU MLP, tied) or `llama`
    /// (`kiln::recipe::llama_model`: RMSNorm, rotary, SwiGLU, grouped-query attention, untied).
    #[arg(long, default_value = "gpt2", value_parser = ["gpt2", "llama"])]
    arch: String,
    /// Key/value heads of the Llama model (default: half the heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Compute precision of the forward and backward passes (f32 master weights and optimizer
    /// state, as the Trainer's `Precision`; the loss in f32).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
}

/// A count of at least 1.
fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// The same GPT built from burn-nn parts: embeddings, `TransformerEncoder` (pre-norm, GELU,
/// causal mask), final LayerNorm, output projection. The "raw Burn" baseline.
#[derive(Module, Debug)]
struct BurnNnGpt {
    tokens: Embedding,
    positions: Embedding,
    encoder: TransformerEncoder,
    norm: LayerNorm,
    head: Linear,
}

impl BurnNnGpt {
    fn new(a: &Args, device: &Device) -> Self {
        Self {
            tokens: EmbeddingConfig::new(a.vocab, a.d_model).init(device),
            positions: EmbeddingConfig::new(a.seq, a.d_model).init(device),
            encoder: TransformerEncoderConfig::new(a.d_model, 4 * a.d_model, a.heads, a.layers)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(a.d_model).init(device),
            head: LinearConfig::new(a.d_model, a.vocab)
                .with_bias(false)
                .init(device),
        }
    }

    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let pos = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let x = self.tokens.forward(ids) + self.positions.forward(pos);
        let mask = generate_autoregressive_mask(batch, seq, &device);
        let x = self
            .encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.head.forward(self.norm.forward(x))
    }
}

/// Runs `warmup + steps` training steps and returns the median time of the timed ones.
fn time_steps<M: Module>(
    mut model: M,
    a: &Args,
    device: &Device,
    forward: impl Fn(&M, Tensor<2, Int>) -> Tensor<3>,
) -> f64 {
    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    let mut rng = seed::rng(0);
    let mut times = Vec::new();
    for step in 0..a.warmup + a.steps {
        let data: Vec<i64> = (0..a.batch * (a.seq + 1))
            .map(|_| rng.random_range(0..a.vocab as i64))
            .collect();
        let all = Tensor::<2, Int>::from_data(TensorData::new(data, [a.batch, a.seq + 1]), device);
        let inputs = all.clone().narrow(1, 0, a.seq);
        let targets = all.narrow(1, 1, a.seq);
        let start = Instant::now();
        // The Trainer's mixed precision: the master weights cast inside the graph, the logits
        // back to f32 for the loss.
        let compute = a.precision.compute_model(&model);
        let logits = forward(&compute, inputs).cast(FloatDType::F32);
        let loss = cross_entropy(logits, targets, None);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-4, model, grads);
        // Reading the loss waits for the step to finish on asynchronous backends.
        let _: f32 = loss.into_scalar();
        let seconds = start.elapsed().as_secs_f64();
        if step >= a.warmup {
            times.push(seconds);
        }
    }
    median(times)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn main() -> kiln::Result<()> {
    let a = Args::parse();
    let device = kiln::device::from_flag(a.device.as_deref())?.autodiff();
    let tokens = (a.batch * a.seq) as f64;
    let config = match a.arch.as_str() {
        "llama" => {
            let kv = a.kv_heads.unwrap_or((a.heads / 2).max(1));
            kiln::recipe::llama_model(a.vocab, a.seq, a.layers, a.d_model, a.heads, kv)
        }
        _ => GptConfig::new(a.vocab)
            .with_block_size(a.seq)
            .with_n_layer(a.layers)
            .with_n_head(a.heads)
            .with_d_model(a.d_model),
    };
    let params = config.init(&device)?.num_params();
    println!("adapter: {}", kiln::device::describe(&device)?);
    println!(
        "model: {} d_model {} layers {} heads {} (kv {}) seq {} batch {} vocab {} ({params} parameters), device {device:?}, precision {:?}",
        a.arch,
        a.d_model,
        a.layers,
        a.heads,
        config.n_kv_head(),
        a.seq,
        a.batch,
        a.vocab,
        a.precision,
    );
    let (mut kiln_steps, mut burn_steps) = (Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        let gpt = config.init(&device)?;
        let kiln = time_steps(gpt, &a, &device, |m, ids| {
            m.forward(ids).expect("valid batch")
        });
        kiln_steps.push(kiln);
        let mut line = format!("round {round}: kiln {:.1} ms/step", kiln * 1e3);
        if a.baseline {
            let burn = time_steps(BurnNnGpt::new(&a, &device), &a, &device, BurnNnGpt::forward);
            burn_steps.push(burn);
            line += &format!(", burn-nn {:.1} ms/step", burn * 1e3);
        }
        println!("{line}");
    }
    let kiln_step = median(kiln_steps);
    if a.baseline {
        let burn_step = median(burn_steps);
        println!("burn_nn_step_ms: {:.1}", burn_step * 1e3);
        println!("burn_nn_tokens_per_s: {:.0}", tokens / burn_step);
        println!("kiln_vs_burn_nn: {:.2}", burn_step / kiln_step);
    }
    println!("kiln_step_ms: {:.1}", kiln_step * 1e3);
    if let Some(peak) = kiln::base::memory::peak_rss_mib() {
        println!("peak_rss_mib: {peak:.0}");
    }
    println!("tokens_per_s: {:.0}", tokens / kiln_step);
    // nanoGPT's (PaLM's) count: 6 flops per parameter and token for the forward and backward
    // matmuls, plus attention's 12 * layers * width * context; MFU divides by the device's peak.
    let flops_per_token = 6 * params + 12 * a.layers * a.d_model * a.seq;
    println!("model_flops_per_token: {flops_per_token}");
    println!(
        "model_tflops_per_s: {:.3}",
        flops_per_token as f64 * tokens / kiln_step / 1e12
    );
    Ok(())
}
