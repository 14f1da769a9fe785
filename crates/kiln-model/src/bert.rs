//! BERT (Devlin et al. 2019): a post-norm Transformer encoder with word, position and
//! token-type embeddings, a pooler, and the masked-LM and sequence-classification heads.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::activation::Activation;
use crate::attention::AttentionMask;
use crate::block::{NormPosition, TransformerBlock, TransformerBlockConfig};
use crate::error::{ModelError, Result};
use crate::fused::linear::linear;
use crate::gpt::check_probability;
use crate::inference::{for_inference, host_floats, host_ids};
use crate::init::{materialize, normal_linear};
use crate::limits::{CONTEXT, LAYERS, PARAMS, VOCAB, WIDTH, count};
use crate::loss::{check_id_range, check_token_ids, cross_entropy};
use crate::norm::{Norm, NormKind};

/// Configuration of a [`Bert`] encoder; field names and defaults are HF's `BertConfig`
/// (BERT-base).
#[derive(Config, Debug)]
pub struct BertConfig {
    /// Vocabulary size (30 522 for the original uncased WordPiece vocabulary).
    pub vocab_size: usize,
    /// Model width.
    #[config(default = 768)]
    pub hidden_size: usize,
    /// Number of encoder layers.
    #[config(default = 12)]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[config(default = 12)]
    pub num_attention_heads: usize,
    /// Feed-forward width.
    #[config(default = 3072)]
    pub intermediate_size: usize,
    /// Feed-forward non-linearity (BERT uses the exact GELU).
    #[config(default = "Activation::Gelu")]
    pub hidden_act: Activation,
    /// Dropout on embeddings and residual branches.
    #[config(default = 0.1)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[config(default = 0.1)]
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence.
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    /// Number of segment (token type) ids.
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Standard deviation of the normal init.
    #[config(default = 0.02)]
    pub initializer_range: f64,
}

/// Everything that builds a [`BertForMaskedLm`]: the encoder's [`BertConfig`] (the masked-LM
/// model has no pooler). What [`store::save_model`](crate::store::save_model) writes as
/// `config.json` for one, so that [`store::load_model`](crate::store::load_model) rebuilds it.
#[derive(Config, Debug)]
pub struct BertForMaskedLmConfig {
    /// The encoder.
    pub bert: BertConfig,
}

/// Everything that builds a [`BertForSequenceClassification`]: the encoder's [`BertConfig`]
/// (with pooler) and the number of classes.
#[derive(Config, Debug)]
pub struct BertForSequenceClassificationConfig {
    /// The encoder.
    pub bert: BertConfig,
    /// Number of classes (HF's `num_labels`).
    pub num_labels: usize,
}

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// Word embeddings `[vocab, hidden]` (tied to the masked-LM decoder).
    pub word: Embedding,
    /// Position embeddings `[max_positions, hidden]`.
    pub position: Embedding,
    /// Token-type (segment) embeddings `[type_vocab, hidden]`.
    pub token_type: Embedding,
    /// LayerNorm over the sum.
    pub norm: Norm,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

/// The BERT encoder (HF's `BertModel`).
#[derive(Module, Debug)]
pub struct Bert {
    /// The embeddings.
    pub embeddings: BertEmbeddings,
    /// Post-norm encoder layers.
    pub layers: Vec<TransformerBlock>,
    /// `tanh(W·h_[CLS] + b)`; absent in the masked-LM model.
    pub pooler: Option<Linear>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of token types.
    pub type_vocab_size: usize,
    /// Longest sequence.
    pub max_positions: usize,
}

/// One batch for a BERT model, in HF's conventions.
#[derive(Debug, Clone)]
pub struct BertInput {
    /// Token ids `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// Segment ids `[batch, seq]`; all zeros when `None`.
    pub token_type_ids: Option<Tensor<2, Int>>,
    /// `[batch, seq]`, 1 for real tokens and 0 for padding; all ones when `None`.
    pub attention_mask: Option<Tensor<2, Int>>,
}

impl BertInput {
    /// A batch of ids with no segments and no padding.
    pub fn new(input_ids: Tensor<2, Int>) -> Self {
        Self {
            input_ids,
            token_type_ids: None,
            attention_mask: None,
        }
    }

    /// The same batch off the autodiff device: inputs on a training device switch dropout on
    /// and record a graph, which predictions must not.
    fn for_inference(self) -> Self {
        Self {
            input_ids: self.input_ids.without_autodiff(),
            token_type_ids: self.token_type_ids.map(Tensor::without_autodiff),
            attention_mask: self.attention_mask.map(Tensor::without_autodiff),
        }
    }
}

/// What the encoder returns.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// Hidden states of the last layer `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// The pooled `[CLS]` representation `[batch, hidden]`, when the model has a pooler.
    pub pooler_output: Option<Tensor<2>>,
}

impl BertConfig {
    /// Checks sizes and probabilities. Every size is bounded by its ceiling in
    /// [`limits`](crate::limits), and the parameter count by
    /// [`PARAMS`], before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        VOCAB.check("vocab_size", self.vocab_size as u64)?;
        VOCAB.check("type_vocab_size", self.type_vocab_size as u64)?;
        CONTEXT.check(
            "max_position_embeddings",
            self.max_position_embeddings as u64,
        )?;
        LAYERS.check("num_hidden_layers", self.num_hidden_layers as u64)?;
        WIDTH.check("hidden_size", self.hidden_size as u64)?;
        WIDTH.check("intermediate_size", self.intermediate_size as u64)?;
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in sizes {
            if value == 0 {
                return Err(ModelError::config(format!("{name} must be > 0")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        check_probability("hidden_dropout_prob", self.hidden_dropout_prob)?;
        check_probability(
            "attention_probs_dropout_prob",
            self.attention_probs_dropout_prob,
        )?;
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ModelError::config("layer_norm_eps must be > 0"));
        }
        self.check_params(0)
    }

    /// Checks the parameter count of the encoder with its heads (`num_labels` classes, 0 for
    /// none) against [`PARAMS`], in u128.
    fn check_params(&self, num_labels: usize) -> Result<()> {
        let (v, p, t) = (
            self.vocab_size,
            self.max_position_embeddings,
            self.type_vocab_size,
        );
        let (d, ff) = (self.hidden_size, self.intermediate_size);
        let layer = count(&[&[4, d, d], &[2, d, ff], &[9, d], &[1, ff]]);
        let total = count(&[
            &[v, d],
            &[t, d],
            &[p, d],
            &[2, d, d],
            &[6, d],
            &[1, v],
            &[d, num_labels],
            &[1, num_labels],
        ])
        .saturating_add(layer.saturating_mul(self.num_hidden_layers as u128));
        PARAMS.check("the BERT's parameter count", total)?;
        Ok(())
    }

    /// Builds the encoder with BERT's init: N(0, initializer_range) weights and embeddings,
    /// zero biases, unit LayerNorms.
    pub fn init(&self, with_pooler: bool, device: &Device) -> Result<Bert> {
        Ok(materialize(self.init_lazy(with_pooler, device)?))
    }

    /// Builds the encoder without drawing its weights (Burn's lazy initialization; see
    /// [`GptConfig::init_lazy`](crate::gpt::GptConfig::init_lazy)): what loaders fill from a
    /// file.
    pub fn init_lazy(&self, with_pooler: bool, device: &Device) -> Result<Bert> {
        self.validate()?;
        let std = self.initializer_range;
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, self.hidden_size)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let layer = TransformerBlockConfig::new(
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
        )
        .with_norm_position(NormPosition::Post)
        .with_activation(self.hidden_act)
        .with_dropout(self.hidden_dropout_prob)
        .with_attn_dropout(self.attention_probs_dropout_prob)
        .with_layer_norm_eps(self.layer_norm_eps)
        .with_init_std(std)
        .with_out_init_std(std);
        Ok(Bert {
            embeddings: BertEmbeddings {
                word: embedding(self.vocab_size),
                position: embedding(self.max_position_embeddings),
                token_type: embedding(self.type_vocab_size),
                norm: self.layer_norm(device),
                dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            },
            layers: (0..self.num_hidden_layers)
                .map(|_| layer.init(device))
                .collect(),
            pooler: with_pooler
                .then(|| normal_linear(self.hidden_size, self.hidden_size, true, std, device)),
            vocab_size: self.vocab_size,
            type_vocab_size: self.type_vocab_size,
            max_positions: self.max_position_embeddings,
        })
    }

    fn layer_norm(&self, device: &Device) -> Norm {
        Norm::new(
            NormKind::LayerNorm,
            self.hidden_size,
            self.layer_norm_eps,
            device,
        )
    }

    /// Builds the masked-LM model (encoder without pooler, transform head, tied decoder).
    pub fn init_masked_lm(&self, device: &Device) -> Result<BertForMaskedLm> {
        Ok(materialize(self.init_masked_lm_lazy(device)?))
    }

    /// [`init_masked_lm`](Self::init_masked_lm) without drawing the weights.
    pub fn init_masked_lm_lazy(&self, device: &Device) -> Result<BertForMaskedLm> {
        Ok(BertForMaskedLm {
            bert: self.init_lazy(false, device)?,
            transform: normal_linear(
                self.hidden_size,
                self.hidden_size,
                true,
                self.initializer_range,
                device,
            ),
            transform_norm: self.layer_norm(device),
            decoder_bias: Initializer::Zeros.init([self.vocab_size], device),
            activation: self.hidden_act,
        })
    }

    /// Builds a sequence classifier over `num_labels` classes on the pooled `[CLS]` state.
    pub fn init_classifier(
        &self,
        num_labels: usize,
        device: &Device,
    ) -> Result<BertForSequenceClassification> {
        Ok(materialize(self.init_classifier_lazy(num_labels, device)?))
    }

    /// [`init_classifier`](Self::init_classifier) without drawing the weights.
    pub fn init_classifier_lazy(
        &self,
        num_labels: usize,
        device: &Device,
    ) -> Result<BertForSequenceClassification> {
        if num_labels == 0 {
            return Err(ModelError::config("num_labels must be > 0"));
        }
        VOCAB.check("num_labels", num_labels as u64)?;
        self.validate()?;
        self.check_params(num_labels)?;
        Ok(BertForSequenceClassification {
            bert: self.init_lazy(true, device)?,
            dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            classifier: normal_linear(
                self.hidden_size,
                num_labels,
                true,
                self.initializer_range,
                device,
            ),
            num_labels,
        })
    }
}

impl Bert {
    /// Encodes a batch. Errors on empty or over-long batches, ids outside the vocabulary or
    /// token types, and masks of the wrong shape.
    pub fn forward(&self, input: BertInput) -> Result<BertOutput> {
        let padding = self.check(&input)?;
        Ok(self.encode(input, padding))
    }

    pub(crate) fn check(&self, input: &BertInput) -> Result<Option<Tensor<2, Bool>>> {
        let ids = &input.input_ids;
        check_token_ids(ids, self.vocab_size, self.max_positions)?;
        let shape_of = |name: &str, t: &Tensor<2, Int>| {
            if t.dims() == ids.dims() {
                Ok(())
            } else {
                Err(ModelError::BadInput(format!(
                    "{name} has shape {:?}, input_ids have {:?}",
                    t.dims(),
                    ids.dims()
                )))
            }
        };
        if let Some(types) = &input.token_type_ids {
            shape_of("token_type_ids", types)?;
            // Segment ids have their own, tiny vocabulary: an error about "token ids" would
            // send a user to the wrong tensor.
            check_id_range(types, self.type_vocab_size).map_err(|e| match e {
                ModelError::TokenOutOfVocab { id, vocab_size } => ModelError::BadInput(format!(
                    "segment id {id} (token_type_ids) is outside 0..{vocab_size} \
                     (type_vocab_size)"
                )),
                other => other,
            })?;
        }
        input
            .attention_mask
            .as_ref()
            .map(|mask| {
                shape_of("attention_mask", mask)?;
                Ok(mask.clone().equal_elem(0))
            })
            .transpose()
    }

    fn encode(&self, input: BertInput, padding: Option<Tensor<2, Bool>>) -> BertOutput {
        let mut x = self.embed(input.input_ids, input.token_type_ids);
        for layer in &self.layers {
            x = layer.forward(x, Self::mask(padding.as_ref()), None, None);
        }
        BertOutput {
            pooler_output: self.pool(x.clone()),
            last_hidden_state: x,
        }
    }

    /// The first stage of the forward pass, without input checks: word + token-type + position
    /// embeddings, LayerNorm and dropout. The result feeds `layers[0]`, which take
    /// [`Bert::mask`] of the padding; [`pool`](Self::pool) follows the last layer. Training
    /// loops that recompute activations layer by layer call the pieces separately.
    pub fn embed(&self, ids: Tensor<2, Int>, token_type_ids: Option<Tensor<2, Int>>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let emb = &self.embeddings;
        let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([batch, seq], &device));
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let mut x = emb.word.forward(ids) + emb.token_type.forward(types);
        let hidden = x.dims()[2];
        x = x + emb.position.forward(positions).expand([batch, seq, hidden]);
        emb.dropout.forward(emb.norm.forward(x))
    }

    /// The encoder layers' attention mask: bidirectional, `padding` `true` at padding keys.
    pub fn mask(padding: Option<&Tensor<2, Bool>>) -> AttentionMask<'_> {
        AttentionMask {
            causal: false,
            padding,
        }
    }

    /// The pooled `[CLS]` state `tanh(W·h_[CLS] + b)` of the last layer's output, when the
    /// model has a pooler.
    pub fn pool(&self, x: Tensor<3>) -> Option<Tensor<2>> {
        let [batch, _, hidden] = x.dims();
        self.pooler.as_ref().map(|pooler| {
            let cls = x.narrow(1, 0, 1).reshape([batch, hidden]);
            pooler.forward(cls).tanh()
        })
    }
}

/// BERT with the masked-LM head (HF's `BertForMaskedLM`): dense + activation + LayerNorm, then
/// a decoder tied to the word embeddings plus its own bias.
#[derive(Module, Debug)]
pub struct BertForMaskedLm {
    /// The encoder (without pooler).
    pub bert: Bert,
    /// The transform's dense layer.
    pub transform: Linear,
    /// The transform's LayerNorm.
    pub transform_norm: Norm,
    /// Output bias over the vocabulary.
    pub decoder_bias: Param<Tensor<1>>,
    /// The transform's non-linearity.
    #[module(skip)]
    pub activation: Activation,
}

impl BertForMaskedLm {
    /// Logits `[batch, seq, vocab]`.
    pub fn forward(&self, input: BertInput) -> Result<Tensor<3>> {
        Ok(self.head(self.bert.forward(input)?.last_hidden_state))
    }

    /// The masked-LM head on the encoder's last hidden states: logits `[batch, seq, vocab]`.
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let h = self
            .transform_norm
            .forward(self.activation.forward(self.transform.forward(hidden)));
        let decoder = self.bert.embeddings.word.weight.val().transpose();
        linear(h, decoder, Some(self.decoder_bias.val()))
    }

    /// The most likely token id at every position, `[batch][seq]` (the argmax of
    /// [`forward`](Self::forward)'s logits), without dropout: read it at the `[MASK]` positions
    /// to fill them in. The argmax runs on the device; only the ids come back. Errors as
    /// [`Bert::forward`] on bad input.
    pub fn predict(&self, input: BertInput) -> Result<Vec<Vec<u32>>> {
        let logits = for_inference(self).forward(input.for_inference())?;
        let [_, seq, _] = logits.dims();
        let ids = host_ids(logits.argmax(2))?;
        Ok(ids.chunks(seq).map(<[u32]>::to_vec).collect())
    }

    /// Mean cross-entropy over the positions whose label is not `-100` (the unmasked ones).
    pub fn loss(&self, logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
        cross_entropy(logits, labels, Some(-100))
    }
}

/// BERT with a linear classifier on the pooled `[CLS]` state (HF's
/// `BertForSequenceClassification`).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification {
    /// The encoder (with pooler).
    pub bert: Bert,
    /// Dropout on the pooled state.
    pub dropout: Dropout,
    /// `hidden -> num_labels`.
    pub classifier: Linear,
    /// Number of classes.
    pub num_labels: usize,
}

impl BertForSequenceClassification {
    /// Class logits `[batch, num_labels]`.
    pub fn forward(&self, input: BertInput) -> Result<Tensor<2>> {
        self.head(self.bert.forward(input)?.last_hidden_state)
    }

    /// The classifier on the encoder's last hidden states (pooler, dropout, linear): class
    /// logits `[batch, num_labels]`.
    pub fn head(&self, hidden: Tensor<3>) -> Result<Tensor<2>> {
        let pooled = self
            .bert
            .pool(hidden)
            .ok_or_else(|| ModelError::config("the classifier's encoder has no pooler"))?;
        Ok(self.classifier.forward(self.dropout.forward(pooled)))
    }

    /// The most likely class of each example (the argmax of [`forward`](Self::forward)'s
    /// logits), without dropout. Errors as [`Bert::forward`] on bad input.
    ///
    /// Class ids come back as `u32` on the host. (Reading an argmax tensor yourself: `Int`
    /// tensors are i32 on flex, so convert the data to `i64` or read `i32`.)
    pub fn predict(&self, input: BertInput) -> Result<Vec<u32>> {
        host_ids(
            for_inference(self)
                .forward(input.for_inference())?
                .argmax(1),
        )
    }

    /// The probability of every class for each example, `[batch][num_labels]` (softmax of the
    /// logits; each row sums to 1), without dropout. Errors as [`Bert::forward`] on bad input.
    pub fn predict_probabilities(&self, input: BertInput) -> Result<Vec<Vec<f32>>> {
        let probabilities = softmax(for_inference(self).forward(input.for_inference())?, 1);
        let [_, labels] = probabilities.dims();
        let values = host_floats(probabilities)?;
        Ok(values.chunks(labels).map(<[f32]>::to_vec).collect())
    }

    /// Mean cross-entropy of `logits` `[batch, num_labels]` against `labels` `[batch]`.
    pub fn loss(&self, logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
        let [batch, n] = logits.dims();
        cross_entropy(
            logits.reshape([batch, 1, n]),
            labels.reshape([batch, 1]),
            None,
        )
    }
}
