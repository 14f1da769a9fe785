//! Issue 14, kiln-model's cases: untrusted checkpoints, configs, ids and targets give typed
//! errors, never a panic, an abort or a silently wrong result. One test per case.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_base::{ClassificationBatch, IGNORE_INDEX, LmBatch, MlmBatch, TrainModel};
use kiln_model::ModelError;
use kiln_model::bert::{BertConfig, BertForSequenceClassificationConfig};
use kiln_model::gpt::{Gpt, GptConfig};
use kiln_model::hf::{HfLoadConfig, HfModel, load_pretrained, load_pretrained_with};
use kiln_model::loss::token_tensor;
use kiln_model::store::{load_model, save_model};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A copy of a fixture with `edit` applied to its config and `patch` to its safetensors bytes.
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    patch: impl FnOnce(&mut Vec<u8>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    patch(&mut weights);
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// Where `tensor`'s bytes start in a safetensors file.
fn data_start(bytes: &[u8], tensor: &str) -> usize {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize
}

fn ints<const D: usize>(values: Vec<i64>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn tiny_gpt(device: &Device) -> Gpt {
    GptConfig::new(17)
        .with_block_size(8)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(8)
        .init(device)
        .unwrap()
}

#[test]
fn an_empty_weight_map_is_a_format_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("gpt2").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, r#"{"weight_map":{}}"#).unwrap();
    let err = load_pretrained(dir.path(), &Device::flex()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Format { file, message } if *file == index && message.contains("no shard")),
        "{err}"
    );
    // A shard outside the folder is refused before it is opened.
    std::fs::write(
        &index,
        r#"{"weight_map":{"wte.weight":"../../etc/passwd"}}"#,
    )
    .unwrap();
    let err = load_pretrained(dir.path(), &Device::flex()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Format { message, .. } if message.contains("not a file name")),
        "{err}"
    );
}

#[test]
fn ids_of_2_pow_31_are_an_error_naming_the_id_and_its_place() {
    let device = Device::flex();
    let big = 1u32 << 31;
    let err = token_tensor(&[vec![1, 2], vec![3, big]], &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::IdOutOfRange { id, at, bound, .. }
            if *id == i64::from(big) && at == &[1, 1] && *bound == 1 << 31),
        "{err}"
    );
    // The largest id that fits reaches the model, which checks it against its vocabulary.
    let ids = token_tensor(&[vec![1, big - 1]], &device).unwrap();
    let err = tiny_gpt(&device).forward(ids).unwrap_err();
    assert!(
        matches!(err, ModelError::TokenOutOfVocab { id, .. } if id == i64::from(big - 1)),
        "{err}"
    );
    // Generation takes u32 prompts: checked against the vocabulary before any tensor is built.
    let err = tiny_gpt(&device)
        .generate(
            &[vec![u32::MAX]],
            &kiln_model::sampling::GenerateConfig::new(),
        )
        .unwrap_err();
    assert!(matches!(err, ModelError::TokenOutOfVocab { .. }), "{err}");
}

#[test]
fn an_out_of_vocab_target_is_an_error_at_the_model_edge() {
    let device = Device::flex();
    let gpt = tiny_gpt(&device);
    let inputs = ints(vec![1, 2, 3, 4], [2, 2], &device);
    let step = |targets: Vec<i64>| {
        gpt.forward_step(&LmBatch {
            inputs: inputs.clone(),
            targets: ints(targets, [2, 2], &device),
        })
    };
    // The ignore index and the last id of the vocabulary are fine.
    assert!(step(vec![IGNORE_INDEX, 16, 0, 5]).is_ok());
    for (targets, bad, at) in [
        (vec![1, 2, 17, 3], 17, [1, 0]),
        (vec![1, -1, 2, 3], -1, [0, 1]),
    ] {
        let err = step(targets).unwrap_err();
        let err = err.downcast_ref::<ModelError>().expect("a ModelError");
        assert!(
            matches!(err, ModelError::IdOutOfRange { id, at: a, bound: 17, .. } if *id == bad && a == &at),
            "{err}"
        );
    }
}

/// The BERT of these cases: a vocabulary of 12, two segments, 8 positions.
fn tiny_bert() -> BertConfig {
    BertConfig::new(12)
        .with_hidden_size(8)
        .with_num_attention_heads(2)
        .with_num_hidden_layers(1)
        .with_max_position_embeddings(8)
}

#[test]
fn a_masked_lm_label_or_segment_id_out_of_range_is_an_error_naming_it() {
    let device = Device::flex();
    let model = tiny_bert().init_masked_lm(&device).unwrap();
    let batch = |label: i64, segment: i64| MlmBatch {
        input_ids: ints(vec![1, 2, 3], [1, 3], &device),
        token_type_ids: ints(vec![0, segment, 0], [1, 3], &device),
        padding_mask: ints(vec![0, 0, 0], [1, 3], &device).equal_elem(1),
        labels: ints(vec![IGNORE_INDEX, label, IGNORE_INDEX], [1, 3], &device),
    };
    assert!(model.forward_step(&batch(11, 1)).is_ok());
    let err = model.forward_step(&batch(12, 0)).unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<ModelError>(),
            Some(ModelError::IdOutOfRange { id: 12, .. })
        ),
        "{err}"
    );
    // Segment ids are called what they are, not token ids.
    let err = model.forward_step(&batch(4, 5)).unwrap_err().to_string();
    assert!(err.contains("segment id 5"), "{err}");
    assert!(err.contains("type_vocab_size"), "{err}");
    assert!(!err.contains("token id"), "{err}");
}

#[test]
fn a_class_label_past_num_labels_is_an_error() {
    // train_bert --classify on three classes: a two-class model must refuse label 2.
    let device = Device::flex();
    let config = tiny_bert();
    let batch = |labels: Vec<i64>| ClassificationBatch {
        input_ids: ints(vec![1, 2, 3, 4], [2, 2], &device),
        token_type_ids: ints(vec![0; 4], [2, 2], &device),
        padding_mask: ints(vec![0; 4], [2, 2], &device).equal_elem(1),
        labels: ints(labels, [2], &device),
    };
    let two = config.init_classifier(2, &device).unwrap();
    let err = two.forward_step(&batch(vec![0, 2])).unwrap_err();
    assert!(
        matches!(err.downcast_ref::<ModelError>(), Some(ModelError::IdOutOfRange { id: 2, at, bound: 2, .. }) if at == &[1]),
        "{err}"
    );
    // Built with the number of classes in the data, it trains on them.
    let three = config.init_classifier(3, &device).unwrap();
    assert!(three.forward_step(&batch(vec![0, 2])).is_ok());
}

#[test]
fn absurd_sizes_in_a_config_json_are_refused_before_anything_is_allocated() {
    let device = Device::flex();
    for (name, field, value, limit) in [
        ("gpt2", "n_layer", 1_000_000_000u64, "KILN_LIMIT_LAYERS"),
        ("gpt2", "vocab_size", 1_000_000_000_000, "KILN_LIMIT_VOCAB"),
        ("gpt2", "n_embd", 1 << 40, "KILN_LIMIT_WIDTH"),
        ("gpt2", "n_positions", 1 << 40, "KILN_LIMIT_CONTEXT"),
        (
            "bert_cls",
            "num_hidden_layers",
            1_000_000_000,
            "KILN_LIMIT_LAYERS",
        ),
        ("bert_cls", "num_labels", 1 << 40, "KILN_LIMIT_VOCAB"),
        (
            "bert_mlm",
            "intermediate_size",
            u64::MAX,
            "KILN_LIMIT_WIDTH",
        ),
        // Each size within its ceiling, the product above the parameter ceiling.
        ("gpt2", "n_inner", 1 << 17, "KILN_LIMIT_PARAMS"),
    ] {
        let dir = edited_copy(
            name,
            |c| {
                c.insert(field.into(), value.into());
                if field == "num_labels" {
                    c.remove("id2label");
                }
                if field == "n_inner" {
                    c.insert("n_layer".into(), 1024.into());
                    c.insert("n_embd".into(), 4096.into());
                    c.insert("n_head".into(), 4.into());
                }
            },
            |_| {},
        );
        match load_pretrained(dir.path(), &device) {
            Err(ModelError::Limit(e)) => assert_eq!(e.env, limit, "{name} {field}: {e}"),
            other => panic!("{name} {field}={value}: expected a limit error, got {other:?}"),
        }
    }
    // The same ceilings guard configs built in code (and from flags).
    let err = GptConfig::new(50)
        .with_n_layer(1_000_000_000)
        .init(&device)
        .unwrap_err();
    assert!(matches!(err, ModelError::Limit(_)), "{err}");
    let err = BertConfig::new(1 << 40).init(false, &device).unwrap_err();
    assert!(matches!(err, ModelError::Limit(_)), "{err}");
}

#[test]
fn a_config_larger_than_its_weights_fails_on_the_first_shape_without_building_the_model() {
    // Within every ceiling, but 2^31 parameters (8 GiB in f32): the model is built without
    // drawing its weights, so the first tensor's shape mismatch comes back at once.
    let dir = edited_copy(
        "gpt2",
        |c| {
            c.insert("vocab_size".into(), (1u64 << 23).into());
            c.insert("n_embd".into(), 256.into());
        },
        |_| {},
    );
    let start = std::time::Instant::now();
    let err = load_pretrained(dir.path(), &Device::flex()).unwrap_err();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { name, .. } if name == "transformer.wte.weight"),
        "{err}"
    );
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor_unless_allowed() {
    let tensor = "transformer.h.0.ln_1.weight";
    let dir = edited_copy(
        "gpt2",
        |_| {},
        |bytes| {
            let at = data_start(bytes, tensor);
            bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        },
    );
    let device = Device::flex();
    let err = load_pretrained(dir.path(), &device).unwrap_err();
    assert!(
        matches!(&err, ModelError::NonFiniteWeights { name, count: 2, .. } if name == tensor),
        "{err}"
    );
    let allow = HfLoadConfig::new().with_allow_non_finite(true);
    let model = load_pretrained_with(dir.path(), &device, &allow).unwrap();
    assert!(matches!(model, HfModel::Gpt2(_)));
}

#[test]
fn a_corrupt_model_folder_is_an_error() {
    let device = Device::flex();
    let config = GptConfig::new(17)
        .with_block_size(8)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(8);
    let dir = tempfile::tempdir().unwrap();
    save_model(&config.init(&device).unwrap(), &config, dir.path()).unwrap();
    let config_file = dir.path().join("config.json");
    let good = std::fs::read_to_string(&config_file).unwrap();

    // Absurd sizes in the folder's config: refused before the model is built.
    let mut absurd: Value = serde_json::from_str(&good).unwrap();
    absurd["n_layer"] = 1_000_000_000u64.into();
    std::fs::write(&config_file, absurd.to_string()).unwrap();
    let err = load_model::<GptConfig>(dir.path(), &device).unwrap_err();
    assert!(matches!(err, ModelError::Limit(_)), "{err}");

    // Larger than the weights: the first shape mismatch, without drawing 2^31 parameters.
    let mut larger: Value = serde_json::from_str(&good).unwrap();
    larger["vocab_size"] = (1u64 << 23).into();
    larger["d_model"] = 256.into();
    std::fs::write(&config_file, larger.to_string()).unwrap();
    let err = load_model::<GptConfig>(dir.path(), &device).unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }), "{err}");

    // Truncated weights.
    std::fs::write(&config_file, &good).unwrap();
    let weights = dir.path().join("model.bpk");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_model::<GptConfig>(dir.path(), &device).is_err());

    // A classifier config with absurd classes.
    let bert = BertForSequenceClassificationConfig::new(BertConfig::new(12), 1 << 40);
    std::fs::write(&config_file, serde_json::to_string(&bert).unwrap()).unwrap();
    let err = load_model::<BertForSequenceClassificationConfig>(dir.path(), &device).unwrap_err();
    assert!(matches!(err, ModelError::Limit(_)), "{err}");
}
