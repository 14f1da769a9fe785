//! Prints the outputs of a HuggingFace checkpoint as one JSON object, to compare with
//! transformers:
//!
//! ```text
//! cargo run --release --example hf_logits -- --model-dir DIR --input-ids "1,2,3;4,5,6" \
//!     [--token-type-ids "0,0,1;0,1,1"] [--attention-mask "1,1,1;1,1,0"] [--device NAME] \
//!     [--allow-non-finite] [--lora ADAPTER_DIR]
//! cargo run --release --example hf_logits -- --help
//! ```
//!
//! Rows are separated by `;`, ids by `,`. Prints `{"logits": [[[...]]]}` (batch × seq × vocab
//! for language models, batch × labels for classifiers); a bare `BertModel` prints its
//! `last_hidden_state` as `logits` and adds `last_hidden_state` and `pooler_output`.
//! `--token-type-ids` is for BERT checkpoints only (kiln's GPT-2 has no token types). A
//! checkpoint with NaN or infinite weights is an error naming the tensor, unless
//! `--allow-non-finite` (then a warning on stderr). `--lora` adds a peft LoRA adapter folder
//! (`adapter_config.json`, `adapter_model.safetensors`) to a decoder: the logits of
//! `PeftModel.from_pretrained(base, ADAPTER_DIR)`.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use kiln::model::hf::HfLoadConfig;
use kiln::prelude::*;
use serde_json::{Value, json};

/// Print a HuggingFace checkpoint's outputs on a batch as JSON, to compare with transformers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A folder with `config.json` and safetensors weights (GPT-2, BERT, Llama, Qwen2 or
    /// Mistral).
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,
    /// Token ids: rows separated by `;`, ids by `,` (all rows the same length).
    #[arg(long, value_name = "ROWS", value_parser = parse_rows)]
    input_ids: Rows,
    /// BERT's segment ids, shaped like --input-ids.
    #[arg(long, value_name = "ROWS", value_parser = parse_rows)]
    token_type_ids: Option<Rows>,
    /// 1 for a token, 0 for padding, shaped like --input-ids.
    #[arg(long, value_name = "ROWS", value_parser = parse_rows)]
    attention_mask: Option<Rows>,
    /// Backend: flex, wgpu, vulkan[:N], metal, cuda[:N] or auto; defaults to $KILN_DEVICE, else flex.
    #[arg(long)]
    device: Option<String>,
    /// Load a checkpoint with NaN or infinite weights, with a warning, instead of failing.
    #[arg(long)]
    allow_non_finite: bool,
    /// A peft LoRA adapter folder to apply to the (decoder) model.
    #[arg(long, value_name = "ADAPTER_DIR")]
    lora: Option<PathBuf>,
}

/// A batch of ids, one `Vec` per row.
#[derive(Clone, Debug)]
struct Rows(Vec<Vec<u32>>);

fn parse_rows(text: &str) -> Result<Rows, String> {
    text.split(';')
        .map(|row| {
            row.split(',')
                .map(|id| {
                    id.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("`{id}` is not a token id"))
                })
                .collect()
        })
        .collect::<Result<_, _>>()
        .map(Rows)
}

fn to_json<const D: usize>(tensor: Tensor<D>) -> Value {
    let dims = tensor.dims();
    let values: Vec<f32> = tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data");
    fn nest(values: &[f32], dims: &[usize]) -> Value {
        if dims.len() == 1 {
            return json!(values);
        }
        let stride: usize = dims[1..].iter().product();
        Value::Array(
            values
                .chunks(stride)
                .map(|chunk| nest(chunk, &dims[1..]))
                .collect(),
        )
    }
    nest(&values, &dims)
}

pub fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let device = kiln::device::from_flag(args.device.as_deref())?;
    let tensor = |rows: &Rows| kiln::model::loss::token_tensor(&rows.0, &device);
    let ids = tensor(&args.input_ids)?;
    let types = args.token_type_ids.as_ref().map(tensor).transpose()?;
    let mask = args.attention_mask.as_ref().map(tensor).transpose()?;

    let options = HfLoadConfig::new().with_allow_non_finite(args.allow_non_finite);
    let model = kiln::model::hf::load_pretrained_with(&args.model_dir, &device, &options)?;
    if types.is_some() && matches!(model, HfModel::Gpt2(_) | HfModel::Llama(_)) {
        return Err(kiln::Error::Usage(
            "--token-type-ids applies to BERT checkpoints; this one is a decoder".into(),
        ));
    }
    let output = match (&args.lora, model) {
        (None, model) => model.forward(ids, types, mask)?,
        (Some(adapter), HfModel::Gpt2(gpt) | HfModel::Llama(gpt)) => {
            let (gpt, _) = kiln::model::hf::peft::load_adapter(gpt, adapter)?;
            let padding = mask.map(kiln::model::padding_mask);
            HfOutput::TokenLogits(gpt.forward_masked(ids, padding)?)
        }
        (Some(_), _) => {
            return Err(kiln::Error::Usage(
                "--lora applies to decoders (GPT-2 and the Llama family)".into(),
            ));
        }
    };
    let value = match output {
        HfOutput::TokenLogits(logits) => json!({ "logits": to_json(logits) }),
        HfOutput::ClassLogits(logits) => json!({ "logits": to_json(logits) }),
        HfOutput::Hidden {
            last_hidden_state,
            pooler_output,
        } => {
            let states = to_json(last_hidden_state);
            json!({
                "logits": states,
                "last_hidden_state": states,
                "pooler_output": pooler_output.map(to_json),
            })
        }
    };
    // Written, not println!'d: a closed pipe (`| head`) is an error, not a panic.
    writeln!(std::io::stdout(), "{value}")?;
    Ok(())
}
