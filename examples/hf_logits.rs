//! Prints the outputs of a HuggingFace checkpoint as one JSON object, to compare with
//! transformers:
//!
//! ```text
//! cargo run --release --example hf_logits -- --model-dir DIR --input-ids "1,2,3;4,5,6" \
//!     [--token-type-ids "0,0,1;0,1,1"] [--attention-mask "1,1,1;1,1,0"] [--device NAME]
//! ```
//!
//! Rows are separated by `;`, ids by `,`. Prints `{"logits": [[[...]]]}` (batch × seq × vocab
//! for language models, batch × labels for classifiers); a bare `BertModel` prints its
//! `last_hidden_state` as `logits` and adds `last_hidden_state` and `pooler_output`.

use std::process::ExitCode;

use kiln::prelude::*;
use serde_json::{Value, json};

fn parse_rows(text: &str) -> Result<Vec<Vec<u32>>, String> {
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
        .collect()
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

fn run() -> Result<Value, String> {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut ids, mut types, mut mask, mut device) = (
        None,
        None,
        None,
        None,
        std::env::var(kiln::device::DEVICE_ENV).unwrap_or_else(|_| "flex".into()),
    );
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model-dir" => dir = Some(value()?),
            "--input-ids" => ids = Some(value()?),
            "--token-type-ids" => types = Some(value()?),
            "--attention-mask" => mask = Some(value()?),
            "--device" => device = value()?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let dir = dir.ok_or("--model-dir is required")?;
    let ids = ids.ok_or("--input-ids is required")?;
    let device = kiln::device::from_name(&device).map_err(|e| e.to_string())?;
    let tensor = |text: &str| -> Result<Tensor<2, Int>, String> {
        let rows = parse_rows(text)?;
        kiln::model::loss::token_tensor(&rows, &device).map_err(|e| e.to_string())
    };
    let ids = tensor(&ids)?;
    let types = types.as_deref().map(tensor).transpose()?;
    let mask = mask.as_deref().map(tensor).transpose()?;

    let model = load_pretrained(&dir, &device).map_err(|e| e.to_string())?;
    let output = model.forward(ids, types, mask).map_err(|e| e.to_string())?;
    Ok(match output {
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
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
