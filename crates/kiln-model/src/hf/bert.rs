//! HF `bert` checkpoints (`BertModel`, `BertForMaskedLM`, `BertForSequenceClassification`)
//! and kiln's BERT models, both ways.
//!
//! HF's `nn.Linear` stores weights `[out, in]`; Burn's `Linear` is `[in, out]`, so every dense
//! weight is transposed. The heads' classes prefix the encoder's names with `bert.`; a bare
//! `BertModel` has no prefix.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::config::{HfBertConfig, HfConfig};
use super::save::{HfCheckpoint, HfExport, NamedTensors, bias, block_shape, no_hf_equivalent};
use super::weights::HfWeights;
use crate::activation::Activation;
use crate::bert::{Bert, BertConfig, BertForMaskedLm, BertForSequenceClassification};
use crate::block::NormPosition;
use crate::error::{ModelError, Result};
use crate::norm::Norm;

impl HfBertConfig {
    /// The kiln config of this checkpoint; `file` is where it was read (named in errors).
    /// Errors on relative positions and decoders, which kiln's BERT does not implement.
    pub fn bert_config(&self, file: &Path) -> Result<BertConfig> {
        let field_error = |field: &str, message: String| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: field.into(),
            message,
        };
        if self.position_embedding_type != "absolute" {
            return Err(field_error(
                "position_embedding_type",
                format!(
                    "`{}` is not supported (only `absolute`)",
                    self.position_embedding_type
                ),
            ));
        }
        if self.is_decoder {
            return Err(field_error(
                "is_decoder",
                "`true` (causal BERT) is not supported".into(),
            ));
        }
        let name = &self.hidden_act;
        let hidden_act = Activation::from_hf_name(name)
            .ok_or_else(|| field_error("hidden_act", format!("unknown activation `{name}`")))?;
        // BertConfig::validate bounds every size under these same names before anything is built.
        Ok(BertConfig::new(self.vocab_size)
            .with_hidden_size(self.hidden_size)
            .with_num_hidden_layers(self.num_hidden_layers)
            .with_num_attention_heads(self.num_attention_heads)
            .with_intermediate_size(self.intermediate_size)
            .with_hidden_act(hidden_act)
            .with_hidden_dropout_prob(self.hidden_dropout_prob)
            .with_attention_probs_dropout_prob(self.attention_probs_dropout_prob)
            .with_max_position_embeddings(self.max_position_embeddings)
            .with_type_vocab_size(self.type_vocab_size)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_initializer_range(self.initializer_range))
    }
}

/// The shape of a parameter without drawing it: the models are built lazily and every
/// parameter is replaced from the file, checked against this shape first.
fn dims<const D: usize>(param: &Param<Tensor<D>>) -> [usize; D] {
    param.lazy_shape().dims::<D>()
}

/// Loads an `nn.Linear` (`[out, in]` weight and bias) into a Burn `Linear` (`[in, out]`).
fn load_dense(linear: &mut Linear, weights: &HfWeights, name: &str, device: &Device) -> Result<()> {
    let [d_in, d_out] = dims(&linear.weight);
    let weight = weights.linear_weight(&format!("{name}.weight"), [d_out, d_in], device)?;
    let bias = weights.tensor(&format!("{name}.bias"), [d_out], device)?;
    linear.weight = Param::from_tensor(weight);
    linear.bias = Some(Param::from_tensor(bias));
    Ok(())
}

/// Loads a LayerNorm, accepting the `gamma`/`beta` names of TF-era checkpoints.
fn load_norm(norm: &mut Norm, weights: &HfWeights, name: &str, device: &Device) -> Result<()> {
    let [d] = dims(&norm.gamma);
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
    let [v, d] = dims(&emb.word.weight);
    let [p, _] = dims(&emb.position.weight);
    let [t, _] = dims(&emb.token_type.weight);
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
    let mut bert = config.init_lazy(with_pooler, device)?;
    load_encoder(&mut bert, weights, device)?;
    // An encoder is commonly loaded from a pre-training checkpoint: its heads are left.
    weights.check_all_read(|name| bert_buffer(name) || name.starts_with("cls."))?;
    Ok(bert)
}

/// What transformers saves with BERT that is not a weight of the model read: the position-id
/// buffer, and the decoder weight tied to the word embeddings (kiln ties it too).
fn bert_buffer(name: &str) -> bool {
    name == "embeddings.position_ids" || name == "cls.predictions.decoder.weight"
}

/// Loads `BertForMaskedLM`; the decoder stays tied to the word embeddings.
pub fn load_bert_masked_lm(
    config: &BertConfig,
    weights: &mut HfWeights,
    device: &Device,
) -> Result<BertForMaskedLm> {
    weights.detect_prefix("bert.", "embeddings.word_embeddings.weight");
    let mut model = config.init_masked_lm_lazy(device)?;
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
    // `BertForPreTraining`'s next-sentence head, and the decoder bias's other name.
    weights.check_all_read(|name| {
        bert_buffer(name)
            || name.starts_with("cls.seq_relationship.")
            || name == "cls.predictions.decoder.bias"
            || name == "cls.predictions.bias"
    })?;
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
    let mut model = config.init_classifier_lazy(num_labels, device)?;
    load_encoder(&mut model.bert, weights, device)?;
    load_dense(&mut model.classifier, weights, "classifier", device)?;
    weights.check_all_read(bert_buffer)?;
    Ok(model)
}

/// Adds an `nn.Linear` (`[out, in]` weight and bias) from a Burn `Linear` (`[in, out]`).
fn save_dense(tensors: &mut NamedTensors, name: &str, linear: &Linear) -> Result<()> {
    tensors.push(&format!("{name}.weight"), linear.weight.val().transpose());
    tensors.push(&format!("{name}.bias"), bias(&linear.bias)?);
    Ok(())
}

/// Adds a LayerNorm under transformers' `weight`/`bias` names.
fn save_norm(tensors: &mut NamedTensors, name: &str, norm: &Norm) -> Result<()> {
    tensors.push(&format!("{name}.weight"), norm.gamma.val());
    tensors.push(&format!("{name}.bias"), bias(&norm.beta)?);
    Ok(())
}

/// Adds the encoder's tensors under `prefix` (`bert.` inside the heads' classes, "" for a bare
/// `BertModel`), the pooler only when `with_pooler`, and returns its config with
/// `architectures` set to `architecture`.
fn save_encoder(
    bert: &Bert,
    prefix: &str,
    with_pooler: bool,
    architecture: &str,
    tensors: &mut NamedTensors,
) -> Result<HfBertConfig> {
    let emb = &bert.embeddings;
    let [vocab_size, hidden] = emb.word.weight.dims();
    let shape = block_shape(&bert.layers, hidden, NormPosition::Post, "BERT")?;
    if emb.norm.epsilon != shape.layer_norm_eps {
        return Err(no_hf_equivalent(
            "the embeddings' LayerNorm epsilon differs from the layers'; BERT has one \
             layer_norm_eps",
        ));
    }
    let name = |s: &str| format!("{prefix}{s}");
    tensors.push(
        &name("embeddings.word_embeddings.weight"),
        emb.word.weight.val(),
    );
    tensors.push(
        &name("embeddings.position_embeddings.weight"),
        emb.position.weight.val(),
    );
    tensors.push(
        &name("embeddings.token_type_embeddings.weight"),
        emb.token_type.weight.val(),
    );
    save_norm(tensors, &name("embeddings.LayerNorm"), &emb.norm)?;
    for (i, layer) in bert.layers.iter().enumerate() {
        let name = |s: &str| format!("{prefix}encoder.layer.{i}.{s}");
        let attn = &layer.attn;
        save_dense(tensors, &name("attention.self.query"), &attn.query)?;
        save_dense(tensors, &name("attention.self.key"), &attn.key)?;
        save_dense(tensors, &name("attention.self.value"), &attn.value)?;
        save_dense(tensors, &name("attention.output.dense"), &attn.out)?;
        save_norm(
            tensors,
            &name("attention.output.LayerNorm"),
            &layer.attn_norm,
        )?;
        save_dense(tensors, &name("intermediate.dense"), &layer.ffn.up)?;
        save_dense(tensors, &name("output.dense"), &layer.ffn.down)?;
        save_norm(tensors, &name("output.LayerNorm"), &layer.ffn_norm)?;
    }
    if let Some(pooler) = bert.pooler.as_ref().filter(|_| with_pooler) {
        save_dense(tensors, &name("pooler.dense"), pooler)?;
    }
    Ok(HfBertConfig {
        architectures: Some(vec![architecture.into()]),
        vocab_size,
        hidden_size: hidden,
        num_hidden_layers: bert.layers.len(),
        num_attention_heads: shape.n_head,
        intermediate_size: shape.d_ff,
        hidden_act: shape.activation.hf_name().into(),
        hidden_dropout_prob: emb.dropout.prob,
        attention_probs_dropout_prob: shape.attn_dropout,
        max_position_embeddings: emb.position.weight.dims()[0],
        type_vocab_size: emb.token_type.weight.dims()[0],
        layer_norm_eps: shape.layer_norm_eps,
        ..HfBertConfig::default()
    })
}

/// The encoder as `BertModel`, with its pooler when it has one. transformers builds
/// `BertModel` with a pooler unless told `add_pooling_layer=False`, which the config cannot
/// say: load a pooler-less export with that argument.
impl HfExport for Bert {
    fn hf_checkpoint(&self) -> Result<HfCheckpoint> {
        let mut tensors = NamedTensors::default();
        let config = save_encoder(self, "", true, "BertModel", &mut tensors)?;
        Ok(tensors.into_checkpoint(HfConfig::Bert(config)))
    }
}

/// As `BertForMaskedLM`: the encoder without pooler, the transform, the decoder bias (the
/// decoder weight is the word embedding, stored once).
impl HfExport for BertForMaskedLm {
    fn hf_checkpoint(&self) -> Result<HfCheckpoint> {
        let mut tensors = NamedTensors::default();
        let config = save_encoder(&self.bert, "bert.", false, "BertForMaskedLM", &mut tensors)?;
        if self.activation.hf_name() != config.hidden_act {
            return Err(no_hf_equivalent(format!(
                "the masked-LM transform uses {:?} and the layers {}; BERT's hidden_act is both",
                self.activation, config.hidden_act
            )));
        }
        if self.transform_norm.epsilon != config.layer_norm_eps {
            return Err(no_hf_equivalent(
                "the masked-LM transform's LayerNorm epsilon differs from the layers'; BERT has \
                 one layer_norm_eps",
            ));
        }
        save_dense(
            &mut tensors,
            "cls.predictions.transform.dense",
            &self.transform,
        )?;
        save_norm(
            &mut tensors,
            "cls.predictions.transform.LayerNorm",
            &self.transform_norm,
        )?;
        tensors.push("cls.predictions.bias", self.decoder_bias.val());
        Ok(tensors.into_checkpoint(HfConfig::Bert(config)))
    }
}

/// As `BertForSequenceClassification`, labels named `LABEL_i` as transformers does.
impl HfExport for BertForSequenceClassification {
    fn hf_checkpoint(&self) -> Result<HfCheckpoint> {
        if self.bert.pooler.is_none() {
            return Err(no_hf_equivalent(
                "the classifier's encoder has no pooler; BertForSequenceClassification \
                 classifies the pooled [CLS] state",
            ));
        }
        let mut tensors = NamedTensors::default();
        let mut config = save_encoder(
            &self.bert,
            "bert.",
            true,
            "BertForSequenceClassification",
            &mut tensors,
        )?;
        save_dense(&mut tensors, "classifier", &self.classifier)?;
        let labels = self.classifier.weight.dims()[1];
        let names: Vec<String> = (0..labels).map(|i| format!("LABEL_{i}")).collect();
        config.id2label = Some(names.iter().cloned().enumerate().collect());
        config.label2id = Some(names.into_iter().zip(0..).collect());
        let dropout = self.dropout.prob;
        config.classifier_dropout = (dropout != config.hidden_dropout_prob).then_some(dropout);
        Ok(tensors.into_checkpoint(HfConfig::Bert(config)))
    }
}
