//! Issue 14: a corrupt or hostile archive is a typed error, never a panic, an abort or a model
//! silently different from the file.

use std::path::Path;

use burn::tensor::Device;
use kiln_compress::{
    ActivationQuant, Archive, CompressError, QuantConfig, QuantizedGpt, QuantizedTensor,
    StoredTensor, load_gpt, load_quantized_gpt, save_gpt, save_quantized_gpt,
};
use kiln_model::gpt::GptConfig;
use serde_json::{Value, json};

/// An archive's bytes from a header and a blob, as the format lays them out.
fn raw(header: &Value, blob: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(header).unwrap();
    let mut bytes = b"KILNCZ01".to_vec();
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header);
    bytes.extend(blob);
    bytes
}

fn tensor(name: &str, encoding: &str, shape: &[u64], offset: u64, len: u64) -> Value {
    json!({ "name": name, "encoding": encoding, "shape": shape, "offset": offset, "len": len })
}

fn config() -> GptConfig {
    GptConfig::new(8)
        .with_block_size(4)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(4)
}

#[test]
fn sizes_in_an_archive_header_are_checked_before_anything_is_read() {
    let file = Path::new("corrupt.kcz");
    let blob = [0u8; 16];
    for entry in [
        // 2^32 · 2^32 wraps to 0 in usize arithmetic: an "empty" tensor of an absurd shape.
        tensor("wrap", "f32", &[1 << 32, 1 << 32], 0, 0),
        // More elements than the bytes can hold in any encoding.
        tensor("huge", "bits", &[1 << 30], 0, 16),
        // Offsets that overflow.
        tensor("offset", "f32", &[1], u64::MAX, 4),
        // An int8 tensor with a parameter count that is neither its rows nor one.
        json!({ "name": "q", "encoding": "i8", "shape": [2, 2], "offset": 0, "len": 16,
                "channels": 3 }),
    ] {
        let bytes = raw(&json!({ "meta": {}, "tensors": [entry.clone()] }), &blob);
        let result = Archive::from_bytes(&bytes, file);
        assert!(
            matches!(
                result,
                Err(CompressError::Format { .. } | CompressError::Limit(_))
            ),
            "{entry}: {result:?}"
        );
    }
    // A header length past the end of the file.
    let mut bytes = raw(&json!({ "meta": {}, "tensors": [] }), &[]);
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(Archive::from_bytes(&bytes, file).is_err());
}

#[test]
fn an_archive_whose_tensors_do_not_fit_the_config_is_an_error() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let gpt = config.init(&device).unwrap();

    // An int8 layer of the wrong shape in a quantized GPT.
    let path = dir.path().join("int8.kcz");
    let q = QuantizedGpt::from_gpt(&gpt, &QuantConfig::new(), ActivationQuant::Dynamic).unwrap();
    save_quantized_gpt(&q, &config, &path).unwrap();
    let mut archive = Archive::load(&path).unwrap();
    let small = QuantizedTensor::quantize(&[1.0, 2.0, 3.0, 4.0], [2, 2], &QuantConfig::new());
    archive.tensors.insert(
        "blocks.0.attn.query.weight".into(),
        StoredTensor::Int8(small.unwrap()),
    );
    archive.save(&path).unwrap();
    let err = load_quantized_gpt(&path, &device).unwrap_err();
    assert!(
        matches!(&err, CompressError::ShapeMismatch { path, .. } if path == "blocks.0.attn.query.weight"),
        "{err}"
    );

    // An f32 GPT with a parameter stored as int8 would keep its random init: refused.
    let path = dir.path().join("f32.kcz");
    save_gpt(&gpt, &config, &path).unwrap();
    let mut archive = Archive::load(&path).unwrap();
    let codes = QuantizedTensor::quantize(&[0.5; 32], [4, 8], &QuantConfig::new()).unwrap();
    archive
        .tensors
        .insert("token_embedding.weight".into(), StoredTensor::Int8(codes));
    archive.save(&path).unwrap();
    let err = load_gpt(&path, &device).unwrap_err();
    assert!(
        matches!(&err, CompressError::Format { message, .. } if message.contains("token_embedding.weight")),
        "{err}"
    );

    // A config far larger than the tensors: refused at the first shape, without building it.
    let path = dir.path().join("larger.kcz");
    save_gpt(&gpt, &config, &path).unwrap();
    let mut archive = Archive::load(&path).unwrap();
    archive.meta["config"]["vocab_size"] = (1u64 << 23).into();
    archive.meta["config"]["d_model"] = 256.into();
    archive.save(&path).unwrap();
    let start = std::time::Instant::now();
    let err = load_gpt(&path, &device).unwrap_err();
    assert!(matches!(err, CompressError::ShapeMismatch { .. }), "{err}");
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());

    // Absurd sizes in the config: kiln-model's ceilings.
    archive.meta["config"]["n_layer"] = 1_000_000_000u64.into();
    archive.save(&path).unwrap();
    let err = load_gpt(&path, &device).unwrap_err();
    assert!(
        matches!(err, CompressError::Model(kiln_model::ModelError::Limit(_))),
        "{err}"
    );
}
