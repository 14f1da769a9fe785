//! HF `bert` checkpoints (`BertModel`, `BertForMaskedLM`, `BertForSequenceClassification`)
//! into kiln's BERT models.
//!
//! HF's `nn.Linear` stores weights `[out, in]`; Burn's `Linear` is `[in, out]`, so every dense
//! weight is transposed.

use std::path::Path;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Device;
use serde_json::Value;

use super::config::{read_f64, read_usize, read_usize_or};
use super::weights::HfWeights;
use crate::activation::Activation;
use crate::bert::{Bert, BertConfig, BertForMaskedLm, BertForSequenceClassification};
use crate::error::{ModelError, Result};

/// Reads a `BertConfig` from a `bert` `config.json`.
pub fn bert_config(json: &Value, file: &Path) -> Result<BertConfig> {
    let position_type = json["position_embedding_type"]
        .as_str()
        .unwrap_or("absolute");
    if position_type != "absolute" {
        return Err(ModelError::format(
            file,
            format!("position_embedding_type `{position_type}` is not supported (only `absolute`)"),
        ));
    }
    let act_name = json["hidden_act"].as_str().unwrap_or("gelu");
    let hidden_act = Activation::from_hf_name(act_name)
        .ok_or_else(|| ModelError::format(file, format!("unknown hidden_act `{act_name}`")))?;
    Ok(BertConfig::new(read_usize(json, "vocab_size", file)?)
        .with_hidden_size(read_usize(json, "hidden_size", file)?)
        .with_num_hidden_layers(read_usize(json, "num_hidden_layers", file)?)
        .with_num_attention_heads(read_usize(json, "num_attention_heads", file)?)
        .with_intermediate_size(read_usize(json, "intermediate_size", file)?)
        .with_hidden_act(hidden_act)
        .with_hidden_dropout_prob(read_f64(json, "hidden_dropout_prob").unwrap_or(0.1))
        .with_attention_probs_dropout_prob(
            read_f64(json, "attention_probs_dropout_prob").unwrap_or(0.1),
        )
        .with_max_position_embeddings(read_usize_or(json, "max_position_embeddings", 512))
        .with_type_vocab_size(read_usize_or(json, "type_vocab_size", 2))
        .with_layer_norm_eps(read_f64(json, "layer_norm_eps").unwrap_or(1e-12))
        .with_initializer_range(read_f64(json, "initializer_range").unwrap_or(0.02)))
}

/// Number of classes of a sequence classifier: `id2label`'s size, else `num_labels`, else 2.
pub fn num_labels(json: &Value) -> usize {
    json["id2label"]
        .as_object()
        .map(|m| m.len())
        .or_else(|| json["num_labels"].as_u64().map(|n| n as usize))
        .unwrap_or(2)
}

/// Loads an `nn.Linear` (`[out, in]` weight and bias) into a Burn `Linear` (`[in, out]`).
fn load_dense(linear: &mut Linear, weights: &HfWeights, name: &str, device: &Device) -> Result<()> {
    let [d_in, d_out] = linear.weight.dims();
    let weight = weights.tensor(&format!("{name}.weight"), [d_out, d_in], device)?;
    let bias = weights.tensor(&format!("{name}.bias"), [d_out], device)?;
    linear.weight = Param::from_tensor(weight.transpose());
    linear.bias = Some(Param::from_tensor(bias));
    Ok(())
}

/// Loads a LayerNorm, accepting the `gamma`/`beta` names of TF-era checkpoints.
fn load_norm(norm: &mut LayerNorm, weights: &HfWeights, name: &str, device: &Device) -> Result<()> {
    let [d] = norm.gamma.dims();
    let (w, b, g, be) = (
        format!("{name}.weight"),
        format!("{name}.bias"),
        format!("{name}.gamma"),
        format!("{name}.beta"),
    );
    norm.gamma = Param::from_tensor(weights.tensor_any(&[&w, &g], [d], device)?);
    norm.beta = Some(Param::from_tensor(weights.tensor_any(
        &[&b, &be],
        [d],
        device,
    )?));
    Ok(())
}

/// Fills an encoder from names relative to the `bert.` prefix (or none, for a bare `BertModel`).
fn load_encoder(bert: &mut Bert, weights: &HfWeights, device: &Device) -> Result<()> {
    let emb = &mut bert.embeddings;
    let [v, d] = emb.word.weight.dims();
    let [p, _] = emb.position.weight.dims();
    let [t, _] = emb.token_type.weight.dims();
    emb.word.weight =
        Param::from_tensor(weights.tensor("embeddings.word_embeddings.weight", [v, d], device)?);
    emb.position.weight = Param::from_tensor(weights.tensor(
        "embeddings.position_embeddings.weight",
        [p, d],
        device,
    )?);
    emb.token_type.weight = Param::from_tensor(weights.tensor(
        "embeddings.token_type_embeddings.weight",
        [t, d],
        device,
    )?);
    load_norm(&mut emb.norm, weights, "embeddings.LayerNorm", device)?;

    for (i, layer) in bert.layers.iter_mut().enumerate() {
        let name = |s: &str| format!("encoder.layer.{i}.{s}");
        let attn = &mut layer.attn;
        load_dense(
            &mut attn.query,
            weights,
            &name("attention.self.query"),
            device,
        )?;
        load_dense(&mut attn.key, weights, &name("attention.self.key"), device)?;
        load_dense(
            &mut attn.value,
            weights,
            &name("attention.self.value"),
            device,
        )?;
        load_dense(
            &mut layer.attn.out,
            weights,
            &name("attention.output.dense"),
            device,
        )?;
        load_norm(
            &mut layer.attn_norm,
            weights,
            &name("attention.output.LayerNorm"),
            device,
        )?;
        load_dense(
            &mut layer.ffn.up,
            weights,
            &name("intermediate.dense"),
            device,
        )?;
        load_dense(&mut layer.ffn.down, weights, &name("output.dense"), device)?;
        load_norm(
            &mut layer.ffn_norm,
            weights,
            &name("output.LayerNorm"),
            device,
        )?;
    }
    if let Some(pooler) = bert.pooler.as_mut() {
        load_dense(pooler, weights, "pooler.dense", device)?;
    }
    Ok(())
}

/// Loads a bare `BertModel` (with its pooler when the checkpoint has one).
pub fn load_bert(config: &BertConfig, weights: &mut HfWeights, device: &Device) -> Result<Bert> {
    weights.detect_prefix("bert.", "embeddings.word_embeddings.weight");
    let with_pooler = weights.contains("pooler.dense.weight");
    let mut bert = config.init(with_pooler, device)?;
    load_encoder(&mut bert, weights, device)?;
    Ok(bert)
}

/// Loads `BertForMaskedLM`; the decoder stays tied to the word embeddings.
pub fn load_bert_masked_lm(
    config: &BertConfig,
    weights: &mut HfWeights,
    device: &Device,
) -> Result<BertForMaskedLm> {
    weights.detect_prefix("bert.", "embeddings.word_embeddings.weight");
    let mut model = config.init_masked_lm(device)?;
    load_encoder(&mut model.bert, weights, device)?;
    load_dense(
        &mut model.transform,
        weights,
        "cls.predictions.transform.dense",
        device,
    )?;
    load_norm(
        &mut model.transform_norm,
        weights,
        "cls.predictions.transform.LayerNorm",
        device,
    )?;
    let v = config.vocab_size;
    model.decoder_bias = Param::from_tensor(weights.tensor_any(
        &["cls.predictions.bias", "cls.predictions.decoder.bias"],
        [v],
        device,
    )?);
    Ok(model)
}

/// Loads `BertForSequenceClassification`.
pub fn load_bert_classifier(
    config: &BertConfig,
    num_labels: usize,
    weights: &mut HfWeights,
    device: &Device,
) -> Result<BertForSequenceClassification> {
    weights.detect_prefix("bert.", "embeddings.word_embeddings.weight");
    let mut model = config.init_classifier(num_labels, device)?;
    load_encoder(&mut model.bert, weights, device)?;
    load_dense(&mut model.classifier, weights, "classifier", device)?;
    Ok(model)
}
