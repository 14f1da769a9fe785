//! Fuzz target (issue 14): kiln-compress's archive format on mutated bytes never panics.
//!
//! The seed corpus (`tests/fuzz_corpus/archive/`) holds tiny valid archives written by kiln
//! itself (an f32 GPT, a pruned one, an int8 GPT, one of every encoding);
//! `cargo test --release -p kiln-compress --test fuzz -- --ignored write_corpus` rewrites it.
//! An archive that parses is also loaded as the model its metadata names, and run.
//! `KILN_FUZZ_CASES` sets the number of inputs (see `kiln_base::fuzz`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kiln_base::fuzz;
use kiln_compress::{
    ActivationQuant, Amount, Archive, CompressError, PruningScope, QuantConfig, QuantMode,
    QuantizedGpt, QuantizedTensor, StoredTensor, linear_weights, load_gpt, load_quantized_gpt,
    magnitude_masks, save_gpt, save_quantized_gpt,
};
use kiln_model::gpt::GptConfig;
use kiln_model::loss::token_tensor;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus/archive")
}

/// Parses `bytes` as an archive and, when its metadata names a model, loads and runs it.
fn load(bytes: &[u8], file: &Path, device: &Device) -> Result<(), CompressError> {
    let archive = Archive::from_bytes(bytes, file)?;
    let ids = || token_tensor(&[vec![0, 1]], device);
    if archive.meta["kind"] == "gpt" {
        std::fs::write(file, bytes).unwrap();
        let (gpt, _) = load_gpt(file, device)?;
        gpt.forward(ids()?)?;
    } else if archive.meta["kind"] == "quantized_gpt" {
        std::fs::write(file, bytes).unwrap();
        let q = load_quantized_gpt(file, device)?;
        q.forward(ids()?)?;
    }
    Ok(())
}

#[test]
fn fuzz_archive() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.kcz");
    fuzz::run(
        "archive",
        fuzz::mutated(fuzz::corpus(corpus_dir())),
        |bytes| load(&bytes, &file, &device),
    );
}

/// Rewrites the seed corpus.
#[test]
#[ignore = "writes the committed corpus; run by hand after a format change"]
fn write_corpus() {
    let device = Device::flex();
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = GptConfig::new(8)
        .with_block_size(4)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(4);
    let gpt = config.init(&device).unwrap();
    save_gpt(&gpt, &config, dir.join("gpt")).unwrap();
    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.75),
        PruningScope::Layerwise,
    )
    .unwrap();
    save_gpt(&masks.remove(gpt.clone()), &config, dir.join("pruned_gpt")).unwrap();
    let q = QuantizedGpt::from_gpt(&gpt, &QuantConfig::new(), ActivationQuant::Dynamic).unwrap();
    save_quantized_gpt(&q, &config, dir.join("int8_gpt")).unwrap();

    let values: Vec<f32> = (0..16)
        .map(|i| if i % 3 == 0 { i as f32 } else { 0.0 })
        .collect();
    let asymmetric = QuantConfig::new().with_mode(QuantMode::Asymmetric);
    let tensors = BTreeMap::from([
        (
            "dense".to_string(),
            StoredTensor::F32 {
                shape: vec![2, 3],
                values: vec![1.0, -2.0, 3.0, 4.0, 5.0, 6.0],
            },
        ),
        (
            "sparse".to_string(),
            StoredTensor::F32 {
                shape: vec![16],
                values: values.clone(),
            },
        ),
        (
            "int8".to_string(),
            StoredTensor::Int8(QuantizedTensor::quantize(&values, [4, 4], &asymmetric).unwrap()),
        ),
        (
            "bits".to_string(),
            StoredTensor::Bits {
                shape: vec![3, 3],
                values: (0..9).map(|i| i % 2 == 0).collect(),
            },
        ),
    ]);
    Archive {
        meta: serde_json::json!({ "kind": "tensors" }),
        tensors,
    }
    .save(dir.join("encodings"))
    .unwrap();
}
