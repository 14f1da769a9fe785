//! Saving and loading compressed models: exact round trips, and sizes that reflect compression.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_compress::{
    ActivationQuant, Amount, Archive, Norm, PruningScope, QuantConfig, QuantMode, QuantizedGpt,
    QuantizedTensor, StoredTensor, linear_weights, load_gpt, load_quantized_gpt, magnitude_masks,
    remove_ffn_neurons, save_gpt, save_quantized_gpt, select_ffn_neurons,
};
use kiln_model::gpt::{Gpt, GptConfig};

fn tiny(device: &Device) -> (Gpt, GptConfig) {
    let config = GptConfig::new(12)
        .with_block_size(12)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(32);
    device.seed(5);
    (config.init(device).unwrap(), config)
}

fn ids(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(vec![1i64, 5, 3, 10, 7, 2, 11, 4], [2, 4]),
        device,
    )
}

#[test]
fn archive_round_trips_every_encoding_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let dense: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
    let sparse: Vec<f32> = (0..64)
        .map(|i| if i % 5 == 0 { i as f32 } else { 0.0 })
        .collect();
    let int8 = QuantizedTensor::quantize(&dense, [8, 8], &QuantConfig::new()).unwrap();
    let sparse_int8 = QuantizedTensor::quantize(
        &sparse,
        [4, 16],
        &QuantConfig::new().with_mode(QuantMode::Asymmetric),
    )
    .unwrap();
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "dense".to_string(),
        StoredTensor::F32 {
            shape: vec![8, 8],
            values: dense,
        },
    );
    tensors.insert(
        "sparse".to_string(),
        StoredTensor::F32 {
            shape: vec![64],
            values: sparse,
        },
    );
    tensors.insert("int8".to_string(), StoredTensor::Int8(int8));
    tensors.insert("sparse_int8".to_string(), StoredTensor::Int8(sparse_int8));
    tensors.insert(
        "mask".to_string(),
        StoredTensor::Bits {
            shape: vec![3, 5],
            values: (0..15).map(|i| i % 3 == 0).collect(),
        },
    );
    let archive = Archive {
        meta: serde_json::json!({ "note": "test" }),
        tensors,
    };
    let path = dir.path().join("a.kcz");
    let bytes = archive.save(&path).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(Archive::load(&path).unwrap(), archive);
    // Corrupt files are errors.
    let mut raw = std::fs::read(&path).unwrap();
    raw.truncate(raw.len() - 10);
    assert!(Archive::from_bytes(&raw, &path).is_err());
    assert!(Archive::from_bytes(b"not an archive", &path).is_err());
}

#[test]
fn gpt_round_trip_gives_the_same_logits_and_pruning_shrinks_the_file() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (gpt, config) = tiny(&device);
    let dense_bytes = save_gpt(&gpt, &config, dir.path().join("dense.kcz")).unwrap();
    let (loaded, _) = load_gpt(dir.path().join("dense.kcz"), &device).unwrap();
    assert_eq!(
        gpt.forward(ids(&device)).unwrap().into_data(),
        loaded.forward(ids(&device)).unwrap().into_data()
    );

    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.5),
        PruningScope::Layerwise,
    )
    .unwrap();
    let pruned = masks.apply(gpt.clone());
    let pruned_bytes = save_gpt(&pruned, &config, dir.path().join("pruned.kcz")).unwrap();
    let (loaded, _) = load_gpt(dir.path().join("pruned.kcz"), &device).unwrap();
    assert_eq!(
        pruned.forward(ids(&device)).unwrap().into_data(),
        loaded.forward(ids(&device)).unwrap().into_data()
    );
    assert!(
        pruned_bytes < dense_bytes * 3 / 4,
        "{pruned_bytes} vs {dense_bytes}"
    );

    let kept = select_ffn_neurons(&gpt, 0.5, Norm::L1).unwrap();
    let shrunk = remove_ffn_neurons(gpt.clone(), &kept).unwrap();
    save_gpt(&shrunk, &config, dir.path().join("shrunk.kcz")).unwrap();
    let (loaded, loaded_config) = load_gpt(dir.path().join("shrunk.kcz"), &device).unwrap();
    assert_eq!(loaded_config.d_ff, Some(64));
    assert_eq!(
        shrunk.forward(ids(&device)).unwrap().into_data(),
        loaded.forward(ids(&device)).unwrap().into_data()
    );
}

#[test]
fn quantized_gpt_round_trip_gives_the_same_logits_in_a_quarter_of_the_bytes() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (gpt, config) = tiny(&device);
    let dense_bytes = save_gpt(&gpt, &config, dir.path().join("dense.kcz")).unwrap();
    for act in [ActivationQuant::None, ActivationQuant::Dynamic] {
        let q = QuantizedGpt::from_gpt(
            &gpt,
            &QuantConfig::new().with_mode(QuantMode::Asymmetric),
            act,
        )
        .unwrap();
        let path = dir.path().join("q.kcz");
        let bytes = save_quantized_gpt(&q, &config, &path).unwrap();
        let loaded = load_quantized_gpt(&path, &device).unwrap();
        assert_eq!(
            q.forward(ids(&device)).unwrap().into_data(),
            loaded.forward(ids(&device)).unwrap().into_data()
        );
        // The linear weights are 4x smaller; embeddings and norms stay f32.
        assert!(
            (bytes as f64) < dense_bytes as f64 / 2.5,
            "{bytes} vs {dense_bytes}"
        );
        // The tied output projection is an int8 layer of its own, and it round-trips.
        assert!(config.tie_embeddings && gpt.lm_head.is_none());
        assert_eq!(q.linears().last().unwrap().0, "lm_head");
        assert_eq!(loaded.gpt.lm_head.as_ref().unwrap().weight.shape, [12, 32]);

        // An archive written before the tied head was quantized (no `lm_head.weight`) still
        // loads, its head quantized from the stored embedding; one whose head has the wrong
        // shape is refused.
        let mut archive = Archive::load(&path).unwrap();
        assert!(archive.tensors.remove("lm_head.weight").is_some());
        archive.save(dir.path().join("old.kcz")).unwrap();
        let old = load_quantized_gpt(dir.path().join("old.kcz"), &device).unwrap();
        assert_eq!(old.gpt.lm_head.as_ref().unwrap().weight.shape, [12, 32]);
        let (want, got) = (
            q.forward(ids(&device)).unwrap(),
            old.forward(ids(&device)).unwrap(),
        );
        let scale: f32 = want.clone().abs().max().into_scalar();
        let error: f32 = (got - want).abs().max().into_scalar();
        assert!(error <= 0.02 * scale, "{error} vs logits up to {scale}");
        let query = archive.tensors["blocks.0.attn.query.weight"].clone();
        archive.tensors.insert("lm_head.weight".into(), query);
        archive.save(dir.path().join("bad.kcz")).unwrap();
        let err = load_quantized_gpt(dir.path().join("bad.kcz"), &device).unwrap_err();
        assert!(err.to_string().contains("lm_head"), "{err}");
    }
    assert!(load_gpt(dir.path().join("q.kcz"), &device).is_err());
    assert!(load_quantized_gpt(dir.path().join("dense.kcz"), &device).is_err());
    assert!(load_gpt(dir.path().join("missing.kcz"), &device).is_err());
}

#[test]
fn masks_round_trip_in_a_bit_per_weight() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (gpt, _) = tiny(&device);
    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.5),
        PruningScope::Global,
    )
    .unwrap();
    let path = dir.path().join("masks.kcz");
    let bytes = masks.save(&path).unwrap();
    assert_eq!(kiln_compress::PruningMasks::load(&path).unwrap(), masks);
    let weights: usize = masks.sparsity().iter().map(|s| s.numel).sum();
    // One bit per weight, plus the header.
    assert!(
        (bytes as usize) < weights / 8 + 2048,
        "{bytes} for {weights}"
    );
    assert!(kiln_compress::PruningMasks::load(dir.path().join("missing")).is_err());
    save_gpt(
        &gpt,
        &GptConfig::new(12)
            .with_block_size(12)
            .with_n_layer(2)
            .with_n_head(2)
            .with_d_model(32),
        dir.path().join("g.kcz"),
    )
    .unwrap();
    assert!(kiln_compress::PruningMasks::load(dir.path().join("g.kcz")).is_err());
}
