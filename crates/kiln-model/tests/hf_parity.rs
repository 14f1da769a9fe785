//! kiln's GPT-2 and BERT against HuggingFace transformers, on tiny checkpoints whose every
//! parameter was redrawn at a visible scale (`scripts/make_hf_fixtures.py`). Bar: 1e-4.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_model::ModelError;
use kiln_model::hf::{HfModel, HfOutput, load_pretrained};
use kiln_model::sampling::GenerateConfig;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Flattens a nested JSON array of numbers and returns (values, shape).
fn flatten(value: &Value) -> (Vec<f64>, Vec<usize>) {
    match value {
        Value::Array(items) => {
            let mut values = Vec::new();
            let mut inner = Vec::new();
            for item in items {
                let (v, s) = flatten(item);
                values.extend(v);
                inner = s;
            }
            let mut shape = vec![items.len()];
            shape.extend(inner);
            (values, shape)
        }
        Value::Number(n) => (vec![n.as_f64().unwrap()], vec![]),
        other => panic!("not a number: {other}"),
    }
}

fn ints(value: &Value, device: &Device) -> Tensor<2, Int> {
    let (values, shape) = flatten(value);
    let values: Vec<i64> = values.into_iter().map(|v| v as i64).collect();
    Tensor::from_data(TensorData::new(values, [shape[0], shape[1]]), device)
}

fn assert_close<const D: usize>(actual: Tensor<D>, expected: &Value, what: &str) {
    let (expected, shape) = flatten(expected);
    assert_eq!(actual.dims().to_vec(), shape, "{what}: shape");
    let actual: Vec<f32> = actual
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let max_diff = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| (*a as f64 - e).abs())
        .fold(0.0, f64::max);
    let scale = expected.iter().map(|e| e.abs()).fold(0.0, f64::max);
    assert!(
        scale > 0.5,
        "{what}: reference values are too small to test a mapping ({scale})"
    );
    assert!(max_diff <= 1e-4, "{what}: max abs diff {max_diff:e} > 1e-4");
}

fn run(name: &str) -> (HfOutput, Value) {
    let device = Device::flex();
    let model = load_pretrained(fixture(name), &device).unwrap();
    let r = reference(name);
    let ids = ints(&r["input_ids"], &device);
    let types = r.get("token_type_ids").map(|v| ints(v, &device));
    let mask = r.get("attention_mask").map(|v| ints(v, &device));
    (model.forward(ids, types, mask).unwrap(), r)
}

#[test]
fn gpt2_lm_head_logits_match_transformers() {
    let (out, r) = run("gpt2");
    let HfOutput::TokenLogits(logits) = out else {
        panic!("expected token logits")
    };
    assert_close(logits, &r["logits"], "gpt2 logits");
}

#[test]
fn gpt2_with_untied_head_and_custom_inner_width_matches_transformers() {
    let (out, r) = run("gpt2_untied");
    let HfOutput::TokenLogits(logits) = out else {
        panic!("expected token logits")
    };
    assert_close(logits, &r["logits"], "gpt2_untied logits");
}

#[test]
fn bert_masked_lm_logits_match_transformers_with_padding_and_segments() {
    let (out, r) = run("bert_mlm");
    let HfOutput::TokenLogits(logits) = out else {
        panic!("expected token logits")
    };
    assert_close(logits, &r["logits"], "bert_mlm logits");
}

#[test]
fn bare_bert_states_and_pooler_match_transformers() {
    let (out, r) = run("bert_base");
    let HfOutput::Hidden {
        last_hidden_state,
        pooler_output,
    } = out
    else {
        panic!("expected hidden states")
    };
    assert_close(
        last_hidden_state,
        &r["last_hidden_state"],
        "bert_base last_hidden_state",
    );
    assert_close(
        pooler_output.expect("pooler"),
        &r["pooler_output"],
        "bert_base pooler_output",
    );
}

#[test]
fn bert_sequence_classifier_logits_match_transformers() {
    let (out, r) = run("bert_cls");
    let HfOutput::ClassLogits(logits) = out else {
        panic!("expected class logits")
    };
    assert_close(logits, &r["logits"], "bert_cls logits");
}

#[test]
fn gpt2_greedy_generation_matches_transformers() {
    let device = Device::flex();
    let HfModel::Gpt2(gpt) = load_pretrained(fixture("gpt2"), &device).unwrap() else {
        panic!()
    };
    let r = reference("gpt2");
    let to_rows = |v: &Value| -> Vec<Vec<u32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    let prompt = to_rows(&r["generate"]["prompt"]);
    let expected = to_rows(&r["generate"]["greedy"]);
    let new_tokens = expected[0].len() - prompt[0].len();
    let out = gpt
        .generate(
            &prompt,
            &GenerateConfig::new().with_max_new_tokens(new_tokens),
        )
        .unwrap();
    assert_eq!(out, expected);
}

/// Copies a fixture into a fresh temporary folder, with `edit` applied to its config.
fn edited_copy(name: &str, tag: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-hf-{name}-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture(name).join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn a_wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = edited_copy("gpt2", "shape", |c| c["vocab_size"] = 70.into());
    let err = load_pretrained(&dir, &Device::flex()).unwrap_err();
    match err {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "transformer.wte.weight");
            assert_eq!(expected, vec![70, 48]);
            assert_eq!(found, vec![61, 48]);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = edited_copy("bert_mlm", "missing", |c| c["num_hidden_layers"] = 3.into());
    let err = load_pretrained(&dir, &Device::flex()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name == "bert.encoder.layer.2.attention.self.query.weight"),
        "{err}"
    );
}

#[test]
fn an_unknown_model_type_is_an_error() {
    let dir = edited_copy("gpt2", "type", |c| c["model_type"] = "falcon".into());
    let err = load_pretrained(&dir, &Device::flex()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnknownModelType(t) if t == "falcon"),
        "{err}"
    );
}

#[test]
fn a_missing_folder_is_an_io_error() {
    let err = load_pretrained("/nonexistent/kiln", &Device::flex()).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}
