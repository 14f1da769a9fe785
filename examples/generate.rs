//! Continues a prompt with a HuggingFace decoder checkpoint (GPT-2, Llama, Qwen2, Mistral) and
//! its tokenizer, with kiln's KV-cache decoding:
//!
//! ```text
//! cargo run --release --example generate -- --model-dir DIR --prompt "Once upon a time" \
//!     [--max-new-tokens 32] [--temperature 0.8 --top-k 40 --top-p 0.95 --seed 1] [--ids]
//! ```
//!
//! The folder holds `config.json`, safetensors weights and `tokenizer.json`. The prompt is
//! encoded as transformers' `tokenizer(prompt)` encodes it (with the tokenizer's special
//! tokens, Llama's `<|begin_of_text|>` for one); without `--temperature`/`--top-k`/`--top-p`
//! decoding is greedy, which is transformers' greedy `generate` token for token. Generation
//! stops at the checkpoint's end-of-sequence token (`generation_config.json`, else
//! `config.json`; the first of a list). Prints the decoded prompt and continuation on stdout
//! (`--ids`: also the token ids, one line of comma-separated ids).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use kiln::prelude::*;

/// Continue a prompt with a HuggingFace decoder checkpoint.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A folder with config.json, safetensors weights and tokenizer.json.
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature (sampling instead of greedy decoding).
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the `k` most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to `p`.
    #[arg(long)]
    top_p: Option<f64>,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also print the token ids.
    #[arg(long)]
    ids: bool,
    /// Backend: flex, wgpu, vulkan[:N], metal, cuda[:N] or auto; defaults to $KILN_DEVICE, else flex.
    #[arg(long)]
    device: Option<String>,
}

/// The checkpoint's end-of-sequence token: `generation_config.json`'s, else `config.json`'s
/// (an id or a list of them; the first).
fn eos_token(dir: &Path) -> Option<u32> {
    ["generation_config.json", "config.json"]
        .iter()
        .find_map(|file| {
            let text = kiln::data::read_text_file(dir.join(file)).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            match &json["eos_token_id"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::Array(ids) => ids.first().and_then(|v| v.as_u64()),
                _ => None,
            }
        })
        .and_then(|id| u32::try_from(id).ok())
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let device = kiln::device::from_flag(args.device.as_deref())?;
    let gpt = match load_pretrained(&args.model_dir, &device)? {
        HfModel::Gpt2(gpt) | HfModel::Llama(gpt) => gpt,
        _ => {
            return Err(kiln::Error::Usage(format!(
                "{} is not a decoder (GPT-2, Llama, Qwen2 or Mistral)",
                args.model_dir.display()
            )));
        }
    };
    let tokenizer = Tokenizer::from_file(args.model_dir.join("tokenizer.json"))?;
    let prompt = tokenizer.encode_with_special_tokens(&args.prompt)?;
    let sampling = args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some();
    let config = GenerateConfig::new()
        .with_max_new_tokens(args.max_new_tokens)
        .with_do_sample(sampling)
        .with_temperature(args.temperature.unwrap_or(1.0))
        .with_top_k(args.top_k)
        .with_top_p(args.top_p)
        .with_seed(args.seed)
        .with_eos_token(eos_token(&args.model_dir));
    let out = gpt.generate(&[prompt], &config)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", tokenizer.decode(&out[0])?)?;
    if args.ids {
        let ids: Vec<String> = out[0].iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    }
    Ok(())
}
