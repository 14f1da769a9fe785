//! kiln's decoder against transformers on the Llama family (`scripts/make_llama_fixtures.py`):
//! tiny Llama 3 (GQA, explicit head_dim, llama3 rope scaling, untied), Llama (MQA, tied, linear
//! rope scaling, biases), Qwen2 (q/k/v biases, sharded), Mistral (a sliding window shorter than
//! the inputs) and a bf16 checkpoint, in both config layouts. Logits within 1e-4; the gradient of
//! every parameter for one causal-LM loss within 1e-5; greedy generation token for token; export
//! and reload exact; bad configs refused by name.

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_model::ModelError;
use kiln_model::gpt::Gpt;
use kiln_model::hf::{HfExport, HfModel, load_pretrained, save_pretrained};
use kiln_model::loss::cross_entropy;
use kiln_model::sampling::GenerateConfig;
use serde_json::Value;

use common::{Tensors, fixture, max_diff, safetensors, values};

const FIXTURES: [&str; 5] = [
    "llama3_gqa",
    "llama_mqa_tied",
    "qwen2",
    "mistral_window",
    "llama_bf16",
];

fn reference_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `reference.safetensors`: logits, loss and `grad.<name>` (f32), by name.
fn reference_tensors(name: &str) -> Tensors {
    safetensors(&fixture(name).join("reference.safetensors"))
}

fn rows(value: &Value) -> Vec<Vec<u32>> {
    value
        .as_array()
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
}

fn ids(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

fn load(name: &str, device: &Device) -> Gpt {
    match load_pretrained(fixture(name), device).unwrap() {
        HfModel::Llama(gpt) => gpt,
        other => panic!("{name}: not a Llama-family model: {other:?}"),
    }
}

#[test]
fn logits_match_transformers() {
    let device = Device::flex();
    for name in FIXTURES {
        let gpt = load(name, &device);
        let reference = reference_tensors(name);
        let input = rows(&reference_json(name)["input_ids"]);
        let logits = gpt.forward(ids(&input, &device)).unwrap();
        let (shape, expected) = &reference["logits"];
        assert_eq!(&logits.dims().to_vec(), shape, "{name}");
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.5, "{name}: reference logits too small ({scale})");
        let diff = max_diff(&values(logits), expected);
        assert!(diff <= 1e-4, "{name}: logits differ by {diff:e}");
    }
}

/// Every parameter's gradient as a model of the same shape (so that the export names and lays
/// it out as transformers does); a parameter without a gradient is zeros.
struct GradientsAsParams<'a>(&'a GradientsParams);

impl ModuleMapper for GradientsAsParams<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        param.map(|t| match self.0.get::<D>(id) {
            Some(grad) => Tensor::from_inner(grad),
            None => t.zeros_like(),
        })
    }
}

#[test]
fn one_steps_gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    for name in FIXTURES {
        let gpt = load(name, &device);
        let reference = reference_tensors(name);
        let input = rows(&reference_json(name)["input_ids"]);
        let x = ids(&input, &device);
        let [b, t] = x.dims();
        // transformers' causal-LM loss: position i predicts token i + 1, the mean over tokens.
        let logits = gpt.forward(x.clone()).unwrap().narrow(1, 0, t - 1);
        let targets = x.narrow(1, 1, t - 1);
        let loss = cross_entropy(logits, targets, None);
        let found_loss = values(loss.clone())[0];
        let expected_loss = reference["loss"].1[0];
        assert!(
            (found_loss - expected_loss).abs() <= 1e-5 * expected_loss.abs().max(1.0),
            "{name}: loss {found_loss} vs {expected_loss} ({b} rows)"
        );
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        let as_model = gpt.clone().map(&mut GradientsAsParams(&grads)).valid();
        let checkpoint = as_model.hf_checkpoint().unwrap();
        let mut compared = 0;
        for (hf_name, data) in &checkpoint.tensors {
            let (shape, expected) = reference
                .get(&format!("grad.{hf_name}"))
                .unwrap_or_else(|| panic!("{name}: no reference gradient for {hf_name}"));
            assert_eq!(data.shape().to_vec(), *shape, "{name}: {hf_name}");
            let found: Vec<f32> = data.try_to_vec().unwrap();
            let diff = max_diff(&found, expected);
            assert!(
                diff <= 1e-5,
                "{name}: gradient of {hf_name} differs by {diff:e}"
            );
            assert!(
                found.iter().any(|&g| g != 0.0),
                "{name}: {hf_name} has a zero gradient"
            );
            compared += 1;
        }
        let grads_in_reference = reference.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(
            compared, grads_in_reference,
            "{name}: every parameter compared"
        );
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let device = Device::flex();
    for name in FIXTURES {
        let gpt = load(name, &device);
        let r = reference_json(name);
        let prompt = rows(&r["generate"]["prompt"]);
        let expected = rows(&r["generate"]["greedy"]);
        let config = GenerateConfig::new().with_max_new_tokens(expected[0].len() - prompt[0].len());
        assert_eq!(gpt.generate(&prompt, &config).unwrap(), expected, "{name}");
    }
}

#[test]
fn export_then_load_is_exact_and_keeps_the_class() {
    let device = Device::flex();
    let input = vec![vec![3u32, 1, 4, 1, 5, 9, 2, 6, 5]];
    for name in FIXTURES {
        let gpt = load(name, &device);
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&gpt, dir.path()).unwrap();
        let again = load_pretrained(dir.path(), &device).unwrap();
        let HfModel::Llama(again) = again else {
            panic!("{name}: reloaded as another model")
        };
        let (a, b) = (
            values(gpt.forward(ids(&input, &device)).unwrap()),
            values(again.forward(ids(&input, &device)).unwrap()),
        );
        assert_eq!(a, b, "{name}: reloaded logits differ");
        let original: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("config.json")).unwrap(),
        )
        .unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            written["architectures"], original["architectures"],
            "{name}"
        );
        assert_eq!(written["model_type"], original["model_type"], "{name}");
    }
}

/// A copy of a fixture's folder in a temporary directory, with `edit` applied to its config.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

#[test]
fn both_config_layouts_give_the_same_model() {
    let device = Device::flex();
    let input = vec![vec![5u32, 17, 3, 40, 8, 1]];
    // llama3_gqa is in the 4.x layout (rope_theta, rope_scaling); its 5.x form is
    // rope_parameters. llama_mqa_tied is in the 5.x layout; its 4.x form the other way.
    let to_5x = |c: &mut serde_json::Map<String, Value>| {
        let mut params = c.remove("rope_scaling").unwrap();
        params["rope_theta"] = c.remove("rope_theta").unwrap();
        c.insert("rope_parameters".into(), params);
    };
    let to_4x = |c: &mut serde_json::Map<String, Value>| {
        let mut params = c.remove("rope_parameters").unwrap();
        let theta = params
            .as_object_mut()
            .unwrap()
            .remove("rope_theta")
            .unwrap();
        c.insert("rope_theta".into(), theta);
        c.insert("rope_scaling".into(), params);
    };
    for (name, change) in [
        (
            "llama3_gqa",
            &to_5x as &dyn Fn(&mut serde_json::Map<String, Value>),
        ),
        ("llama_mqa_tied", &to_4x),
    ] {
        let dir = edited(name, change);
        let HfModel::Llama(other) = load_pretrained(dir.path(), &device).unwrap() else {
            panic!()
        };
        let gpt = load(name, &device);
        let (a, b) = (
            values(gpt.forward(ids(&input, &device)).unwrap()),
            values(other.forward(ids(&input, &device)).unwrap()),
        );
        assert_eq!(a, b, "{name}: the two layouts differ");
    }
    // The scaling matters: without it the llama3 model computes something else.
    let dir = edited("llama3_gqa", |c| {
        c.remove("rope_scaling");
    });
    let HfModel::Llama(unscaled) = load_pretrained(dir.path(), &device).unwrap() else {
        panic!()
    };
    let gpt = load("llama3_gqa", &device);
    let diff = max_diff(
        &values(gpt.forward(ids(&input, &device)).unwrap()),
        &values(unscaled.forward(ids(&input, &device)).unwrap()),
    );
    assert!(diff > 1e-3, "rope scaling changed nothing ({diff})");
}

/// The config field an error names.
fn field_of(err: ModelError) -> String {
    match err {
        ModelError::ConfigField { field, .. } => field,
        other => panic!("expected a config field error, got {other}"),
    }
}

/// An edit of a fixture's `config.json`.
type ConfigEdit = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;

#[test]
fn unsupported_settings_are_refused_by_name() {
    let device = Device::flex();
    let cases: Vec<(&str, ConfigEdit, &str)> = vec![
        (
            "llama3_gqa",
            Box::new(|c| c["rope_scaling"]["rope_type"] = "yarn".into()),
            "rope_scaling.rope_type",
        ),
        (
            "llama_mqa_tied",
            Box::new(|c| c["rope_parameters"]["rope_type"] = "dynamic".into()),
            "rope_parameters.rope_type",
        ),
        (
            "llama3_gqa",
            Box::new(|c| c["rope_scaling"]["attention_factor"] = 2.0.into()),
            "rope_scaling.attention_factor",
        ),
        (
            "llama3_gqa",
            Box::new(|c| {
                c["rope_scaling"]
                    .as_object_mut()
                    .unwrap()
                    .remove("low_freq_factor");
            }),
            "rope_scaling.low_freq_factor",
        ),
        (
            "llama3_gqa",
            Box::new(|c| {
                c.insert("partial_rotary_factor".into(), 0.5.into());
            }),
            "partial_rotary_factor",
        ),
        (
            "llama3_gqa",
            Box::new(|c| {
                c.insert(
                    "quantization_config".into(),
                    serde_json::json!({"quant_method": "gptq"}),
                );
            }),
            "quantization_config",
        ),
        (
            "llama3_gqa",
            Box::new(|c| c["num_key_value_heads"] = 3.into()),
            "num_key_value_heads",
        ),
        (
            "qwen2",
            Box::new(|c| {
                c.insert("use_sliding_window".into(), true.into());
                c["sliding_window"] = 4.into();
                c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
            }),
            "layer_types",
        ),
        (
            "llama3_gqa",
            Box::new(|c| c["hidden_act"] = "swishy".into()),
            "hidden_act",
        ),
        (
            "llama3_gqa",
            Box::new(|c| {
                c["architectures"] = serde_json::json!(["LlamaForSequenceClassification"])
            }),
            "architectures",
        ),
    ];
    for (name, edit, field) in cases {
        let dir = edited(name, edit);
        let err = load_pretrained(dir.path(), &device).unwrap_err();
        assert_eq!(field_of(err), field, "{name}");
    }
}

#[test]
fn weights_that_disagree_with_the_config_are_named() {
    let device = Device::flex();
    // A wider model than its weights: the first tensor names both shapes.
    let dir = edited("llama3_gqa", |c| c["hidden_size"] = 48.into());
    match load_pretrained(dir.path(), &device).unwrap_err() {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "model.embed_tokens.weight");
            assert_eq!((expected, found), (vec![64, 48], vec![64, 32]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    // An untied checkpoint read as tied: its lm_head has no place.
    let dir = edited("llama3_gqa", |c| c["tie_word_embeddings"] = true.into());
    match load_pretrained(dir.path(), &device).unwrap_err() {
        ModelError::UnexpectedTensor { name, .. } => {
            assert!(name.starts_with("lm_head.weight"), "{name}")
        }
        other => panic!("expected an unexpected tensor, got {other}"),
    }
    // Qwen2's q/k/v biases read as a Llama without attention biases.
    let dir = edited("qwen2", |c| {
        c["model_type"] = "llama".into();
        c["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    });
    match load_pretrained(dir.path(), &device).unwrap_err() {
        ModelError::UnexpectedTensor { name, .. } => {
            assert!(
                name.contains("self_attn.") && name.contains("_proj.bias"),
                "{name}"
            )
        }
        other => panic!("expected an unexpected tensor, got {other}"),
    }
    // A tensor missing from the file.
    let dir = edited("llama_mqa_tied", |c| c["num_hidden_layers"] = 3.into());
    match load_pretrained(dir.path(), &device).unwrap_err() {
        ModelError::MissingTensor { name, .. } => {
            assert_eq!(name, "model.layers.2.input_layernorm.weight")
        }
        other => panic!("expected a missing tensor, got {other}"),
    }
}

/// kiln's own model folder round-trips a Llama-family model exactly; and a GPT config written
/// before the family's fields existed (none of `n_kv_head`, `head_dim`, `norm`, `rope_scaling`,
/// the per-projection biases, `sliding_window`) reads back as the GPT-2 model it described,
/// with the parameter paths it had.
#[test]
fn kiln_folders_old_and_new_read_back() {
    use burn::config::Config as _;
    use kiln_model::gpt::GptConfig;
    use kiln_model::store::{load_model, save_model};

    let device = Device::flex();
    let config = kiln_model::hf::gpt_config_of(fixture("llama3_gqa")).unwrap();
    let gpt = load("llama3_gqa", &device);
    let dir = tempfile::tempdir().unwrap();
    save_model(&gpt, &config, dir.path()).unwrap();
    let (again, read) = load_model::<GptConfig>(dir.path(), &device).unwrap();
    let input = vec![vec![1u32, 2, 3, 4]];
    assert_eq!(
        values(gpt.forward(ids(&input, &device)).unwrap()),
        values(again.forward(ids(&input, &device)).unwrap())
    );
    assert_eq!(read.n_kv_head, Some(2));
    assert_eq!(read.head_dim, Some(16));

    let gpt2 = GptConfig::new(23)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(8);
    let mut json: Value = serde_json::from_str(&serde_json::to_string(&gpt2).unwrap()).unwrap();
    for field in [
        "n_kv_head",
        "head_dim",
        "norm",
        "rope_scaling",
        "qkv_bias",
        "attn_out_bias",
        "mlp_bias",
        "sliding_window",
    ] {
        assert!(
            json.as_object_mut().unwrap().remove(field).is_some(),
            "{field}"
        );
    }
    let old = GptConfig::load_binary(json.to_string().as_bytes()).unwrap();
    assert_eq!(
        serde_json::to_string(&old).unwrap(),
        serde_json::to_string(&gpt2).unwrap()
    );
    let model = old.init(&device).unwrap();
    let kv_width = kiln_model::linear::LinearLayer::d_out(&model.blocks[0].attn.key);
    assert_eq!(kv_width, 8, "multi-head, as GPT-2");
    let layout = kiln_dist::flat::Layout::of(&model);
    let names: Vec<&str> = layout.slots.iter().map(|s| s.path.as_str()).collect();
    for path in [
        "blocks.0.attn_norm.gamma",
        "blocks.0.attn_norm.beta",
        "blocks.0.attn.query.bias",
        "blocks.0.ffn.up.bias",
        "final_norm.beta",
    ] {
        assert!(names.contains(&path), "{path} in {names:?}");
    }
}
