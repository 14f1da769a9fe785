//! Fuzz targets (issue 14): kiln-model's loaders on mutated bytes never panic.
//!
//! Each input is a model folder packed into one byte string (`pack`: the config's length as a
//! little-endian u32, the config, then the weights), so a mutation can hit either file. The
//! seed corpus (`tests/fuzz_corpus/`) holds tiny valid folders written by kiln itself;
//! `cargo test --release -p kiln-model --test fuzz -- --ignored write_corpus` rewrites it.
//! `KILN_FUZZ_CASES` sets the number of inputs (see `kiln_base::fuzz`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kiln_base::fuzz;
use kiln_model::ModelError;
use kiln_model::bert::{BertConfig, BertForMaskedLmConfig};
use kiln_model::gpt::{GptConfig, PositionEncoding};
use kiln_model::hf::{HfModel, load_pretrained, save_pretrained};
use kiln_model::loss::token_tensor;
use kiln_model::store::{model_from_bytes, save_model};

fn corpus_dir(what: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(what)
}

/// Two files as one input: the first's length (u32, little-endian), the first, the second.
fn pack(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut out = (first.len() as u32).to_le_bytes().to_vec();
    out.extend(first);
    out.extend(second);
    out
}

/// The inverse of [`pack`] on any bytes: a length past the end takes everything.
fn unpack(bytes: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return (bytes, &[]);
    };
    rest.split_at((u32::from_le_bytes(*len) as usize).min(rest.len()))
}

/// Runs an accepted model on a short batch: a config the loader let through must run.
fn run_hf(model: &HfModel, device: &Device) -> Result<(), ModelError> {
    let ids = token_tensor(&[vec![0, 1]], device)?;
    model.forward(ids, None, None).map(|_| ())
}

#[test]
fn fuzz_hf_folder() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    fuzz::run(
        "hf_folder",
        fuzz::mutated(fuzz::corpus(corpus_dir("hf_folder"))),
        |bytes| {
            let (config, weights) = unpack(&bytes);
            std::fs::write(dir.path().join("config.json"), config).unwrap();
            std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
            let model = load_pretrained(dir.path(), &device)?;
            run_hf(&model, &device)
        },
    );
}

#[test]
fn fuzz_model_folder() {
    let device = Device::flex();
    let dir = Path::new("fuzz");
    fuzz::run(
        "model_folder",
        fuzz::mutated(fuzz::corpus(corpus_dir("model_folder"))),
        |bytes| {
            let (config, weights) = unpack(&bytes);
            let gpt = model_from_bytes::<GptConfig>(config, weights.to_vec(), dir, &device);
            let bert =
                model_from_bytes::<BertForMaskedLmConfig>(config, weights.to_vec(), dir, &device);
            match (gpt, bert) {
                (Ok((gpt, _)), _) => gpt.forward(token_tensor(&[vec![0, 1]], &device)?).map(drop),
                (_, Ok(_)) => Ok(()),
                (Err(e), _) => Err(e),
            }
        },
    );
}

/// Rewrites the seed corpus: tiny GPT-2 and BERT checkpoints, and kiln model folders.
#[test]
#[ignore = "writes the committed corpus; run by hand after a format change"]
fn write_corpus() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let folder = |name: &str, config: &str, weights: &str| {
        let read = |f: &str| std::fs::read(tmp.path().join(name).join(f)).unwrap();
        pack(&read(config), &read(weights))
    };
    let gpt = GptConfig::new(8)
        .with_block_size(4)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(4);
    let bert = BertConfig::new(8)
        .with_hidden_size(4)
        .with_num_attention_heads(2)
        .with_num_hidden_layers(1)
        .with_intermediate_size(8)
        .with_max_position_embeddings(4);
    let hf = corpus_dir("hf_folder");
    let store = corpus_dir("model_folder");
    for d in [&hf, &store] {
        std::fs::create_dir_all(d).unwrap();
    }
    let hf_files = ("config.json", "model.safetensors");
    save_pretrained(&gpt.init(&device).unwrap(), tmp.path().join("gpt2")).unwrap();
    save_pretrained(
        &bert.init_masked_lm(&device).unwrap(),
        tmp.path().join("bert_mlm"),
    )
    .unwrap();
    save_pretrained(
        &bert.init_classifier(3, &device).unwrap(),
        tmp.path().join("bert_cls"),
    )
    .unwrap();
    for name in ["gpt2", "bert_mlm", "bert_cls"] {
        let bytes = folder(name, hf_files.0, hf_files.1);
        std::fs::write(hf.join(name), bytes).unwrap();
    }
    let rotary = gpt.clone().with_positions(PositionEncoding::Rotary);
    save_model(
        &gpt.init(&device).unwrap(),
        &gpt,
        tmp.path().join("kiln_gpt"),
    )
    .unwrap();
    save_model(
        &rotary.init(&device).unwrap(),
        &rotary,
        tmp.path().join("kiln_rotary"),
    )
    .unwrap();
    let mlm = BertForMaskedLmConfig::new(bert.clone());
    save_model(
        &bert.init_masked_lm(&device).unwrap(),
        &mlm,
        tmp.path().join("kiln_bert_mlm"),
    )
    .unwrap();
    for name in ["kiln_gpt", "kiln_rotary", "kiln_bert_mlm"] {
        let bytes = folder(name, "config.json", "model.bpk");
        std::fs::write(store.join(name), bytes).unwrap();
    }
}

/// Saved folders with edited configs (issue 26): a field of a saved GPT's `config.json`
/// replaced by a neighbouring value (a layer count, a width, a flag flipped, a variant
/// swapped). Each folder either loads as the model its config describes, with every tensor of
/// the weights used (never a silently different model), or is a typed error.
#[test]
fn fuzz_model_folder_config_edits() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::store::burn_pack::Reader;
    use burn::tensor::{Bytes, Tensor};
    use proptest::prelude::*;
    use serde_json::Value;

    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let config = GptConfig::new(9)
        .with_block_size(6)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(8);
    save_model(&config.init(&device).unwrap(), &config, dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let weights = std::fs::read(dir.path().join("model.bpk")).unwrap();
    let original: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    let fields: Vec<String> = original.keys().cloned().collect();
    let in_file = Reader::from_bytes(Bytes::from_bytes_vec(weights.clone()))
        .unwrap()
        .into_tensors()
        .unwrap()
        .len();

    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.0 += 1;
        }
    }
    // A neighbouring value of the same kind: numbers moved, flags flipped, strings swapped for
    // the variants kiln writes.
    let neighbour = |value: &Value, pick: u8| -> Value {
        match value {
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) => {
                let v = n.as_f64().unwrap_or(0.0);
                let choices = [0.0, 1.0, v - 1.0, v + 1.0, 2.0 * v, v / 2.0];
                let x = choices[pick as usize % choices.len()];
                if n.is_f64() {
                    Value::from(x)
                } else {
                    Value::from(x.max(0.0) as u64)
                }
            }
            Value::String(_) => {
                let choices = [
                    "Learned",
                    "Rotary",
                    "LayerNorm",
                    "RmsNorm",
                    "Gelu",
                    "SwiGlu",
                ];
                Value::from(choices[pick as usize % choices.len()])
            }
            Value::Null => Value::from(pick as u64 % 4),
            other => other.clone(),
        }
    };
    let edits = proptest::collection::vec((0..fields.len(), any::<u8>()), 1..3);
    fuzz::run("model_folder_config_edits", edits, |edits| {
        let mut edited = original.clone();
        for (field, pick) in &edits {
            let name = &fields[*field];
            let value = neighbour(&edited[name], *pick);
            edited.insert(name.clone(), value);
        }
        let bytes = serde_json::to_vec(&edited).unwrap();
        let (gpt, _) =
            model_from_bytes::<GptConfig>(&bytes, weights.clone(), Path::new("fuzz"), &device)?;
        let mut count = Count(0);
        gpt.visit(&mut count);
        assert_eq!(
            count.0, in_file,
            "{edits:?} loaded a model with another set of tensors than the file's"
        );
        gpt.forward(token_tensor(&[vec![0, 1]], &device)?).map(drop)
    });
}
