//! Writing HuggingFace checkpoints: `save_pretrained` then `load_pretrained` gives the same
//! model, the files match what transformers itself wrote for the fixtures, models transformers
//! cannot express are refused before anything is written, and `config.json` fields are typed.
//!
//! `scripts/check_hf_export.py` runs transformers itself on exports (not in CI: it needs torch).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Distribution, Int, Tensor};
use kiln_model::ModelError;
use kiln_model::activation::Activation;
use kiln_model::bert::{BertConfig, BertInput};
use kiln_model::block::NormPosition;
use kiln_model::feed_forward::FeedForwardKind;
use kiln_model::gpt::{Gpt, GptConfig, PositionEncoding};
use kiln_model::hf::{HfConfig, HfExport, HfModel, HfOutput, load_pretrained, save_pretrained};
use kiln_model::norm::NormKind;
use kiln_model::rotary::RopeScaling;
use safetensors::SafeTensors;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Adds N(0, 0.2) to every parameter, so that biases, LayerNorms and every weight take values a
/// wrong mapping would show (fresh init has zero biases and unit LayerNorms).
fn jitter<M: Module>(model: M) -> M {
    struct Jitter;
    impl ModuleMapper for Jitter {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.clone() + t.random_like(Distribution::Normal(0.0, 0.2)))
        }
    }
    model.map(&mut Jitter)
}

fn ids(device: &Device) -> Tensor<2, Int> {
    Tensor::from_ints([[1, 5, 9, 2, 7, 3], [4, 4, 0, 8, 11, 6]], device)
}

fn bert_input(device: &Device) -> BertInput {
    BertInput {
        input_ids: ids(device),
        token_type_ids: Some(Tensor::from_ints(
            [[0, 0, 0, 1, 1, 1], [0, 1, 2, 2, 1, 0]],
            device,
        )),
        attention_mask: Some(Tensor::from_ints(
            [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]],
            device,
        )),
    }
}

/// Runs a loaded model on the batch of [`bert_input`] (GPT ignores the token types).
fn run(model: &HfModel, device: &Device) -> HfOutput {
    let input = bert_input(device);
    model
        .forward(input.input_ids, input.token_type_ids, input.attention_mask)
        .unwrap()
}

/// Within 1e-6 of the outputs' scale: BERT's weights come back as transposed views of HF's
/// `[out, in]` matrices, and a matmul over a strided operand may sum in another order than over a
/// contiguous one (how many ulps that costs depends on the CPU's gemm kernel: CI's machine gave
/// 1.2e-6 at a scale of 2.9).
fn assert_same<const D: usize>(a: Tensor<D>, b: Tensor<D>) {
    assert_eq!(a.dims(), b.dims());
    let values = |t: Tensor<D>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let (a, b) = (values(a), values(b));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
    assert!(scale > 0.1, "outputs too small to compare ({scale})");
    assert!(
        diff <= 1e-6 * scale.max(1.0),
        "outputs differ by {diff:e} (scale {scale})"
    );
}

fn tiny_gpt() -> GptConfig {
    GptConfig::new(23)
        .with_block_size(10)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(16)
}

fn tiny_bert() -> BertConfig {
    BertConfig::new(19)
        .with_hidden_size(12)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(3)
        .with_intermediate_size(20)
        .with_max_position_embeddings(9)
        .with_type_vocab_size(3)
        .with_hidden_dropout_prob(0.05)
        .with_attention_probs_dropout_prob(0.15)
        .with_layer_norm_eps(1e-7)
}

/// Saves `model`, loads it back, and returns the loaded model and the written config.
fn round_trip(model: &impl HfExport, device: &Device) -> (HfModel, Value) {
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(model, dir.path()).unwrap();
    let config = read_json(&dir.path().join("config.json"));
    (load_pretrained(dir.path(), device).unwrap(), config)
}

#[test]
fn a_gpt_comes_back_with_the_same_logits_tied_or_untied() {
    let device = Device::flex();
    for (tied, activation, d_ff) in [
        (true, Activation::GeluTanh, None),
        (false, Activation::Gelu, Some(24)),
    ] {
        let gpt = jitter(
            tiny_gpt()
                .with_tie_embeddings(tied)
                .with_activation(activation)
                .with_d_ff(d_ff)
                .with_layer_norm_eps(1e-6)
                .with_dropout(0.1)
                .with_attn_dropout(0.2)
                .init(&device)
                .unwrap(),
        );
        let (loaded, config) = round_trip(&gpt, &device);
        let HfModel::Gpt2(loaded) = &loaded else {
            panic!("expected a GPT-2")
        };
        assert_same(
            gpt.forward(ids(&device)).unwrap(),
            loaded.forward(ids(&device)).unwrap(),
        );
        assert_eq!(config["model_type"], "gpt2");
        assert_eq!(config["architectures"][0], "GPT2LMHeadModel");
        assert_eq!(config["tie_word_embeddings"], tied);
        assert_eq!(config["activation_function"], activation.hf_name());
        assert_eq!(config["n_inner"], serde_json::to_value(d_ff).unwrap());
        assert_eq!(config["layer_norm_epsilon"], 1e-6);
        assert_eq!(config["n_head"], 4);
        assert_eq!(
            (config["resid_pdrop"].clone(), config["attn_pdrop"].clone()),
            (0.1.into(), 0.2.into())
        );
        assert_eq!(loaded.lm_head.is_none(), tied);
        // A 23-token vocabulary has no `<|endoftext|>` (50256): transformers would warn.
        assert_eq!(config["eos_token_id"], Value::Null);
    }
    let gpt2_vocab = GptConfig {
        vocab_size: 50257,
        ..tiny_gpt()
    }
    .init(&device)
    .unwrap();
    let HfConfig::Gpt2(config) = gpt2_vocab.hf_checkpoint().unwrap().config else {
        panic!("expected a GPT-2 config")
    };
    assert_eq!(
        (config.bos_token_id, config.eos_token_id),
        (Some(50256), Some(50256))
    );
}

#[test]
fn the_bert_models_come_back_with_the_same_outputs() {
    let device = Device::flex();
    let config = tiny_bert();

    for with_pooler in [true, false] {
        let bert = jitter(config.init(with_pooler, &device).unwrap());
        let expected = bert.forward(bert_input(&device)).unwrap();
        let (loaded, json) = round_trip(&bert, &device);
        assert_eq!(json["architectures"][0], "BertModel");
        assert_eq!(json["layer_norm_eps"], 1e-7);
        assert_eq!(json["hidden_dropout_prob"], 0.05);
        assert_eq!(json["attention_probs_dropout_prob"], 0.15);
        assert_eq!(json["type_vocab_size"], 3);
        let HfOutput::Hidden {
            last_hidden_state,
            pooler_output,
        } = run(&loaded, &device)
        else {
            panic!("expected a bare encoder")
        };
        assert_same(expected.last_hidden_state, last_hidden_state);
        assert_eq!(pooler_output.is_some(), with_pooler);
        if let (Some(a), Some(b)) = (expected.pooler_output, pooler_output) {
            assert_same(a, b);
        }
    }

    let mlm = jitter(config.init_masked_lm(&device).unwrap());
    let (loaded, json) = round_trip(&mlm, &device);
    assert_eq!(json["architectures"][0], "BertForMaskedLM");
    let HfOutput::TokenLogits(logits) = run(&loaded, &device) else {
        panic!("expected token logits")
    };
    assert_same(mlm.forward(bert_input(&device)).unwrap(), logits);

    let classifier = jitter(config.init_classifier(4, &device).unwrap());
    let (loaded, json) = round_trip(&classifier, &device);
    assert_eq!(json["architectures"][0], "BertForSequenceClassification");
    assert_eq!(json["id2label"]["3"], "LABEL_3");
    assert_eq!(json["label2id"]["LABEL_3"], 3);
    let HfOutput::ClassLogits(logits) = run(&loaded, &device) else {
        panic!("expected class logits")
    };
    assert_same(classifier.forward(bert_input(&device)).unwrap(), logits);
}

#[test]
fn a_classifier_dropout_of_its_own_is_written_and_read() {
    let device = Device::flex();
    let mut classifier = tiny_bert().init_classifier(2, &device).unwrap();
    classifier.dropout = burn::nn::DropoutConfig::new(0.3).init();
    let (loaded, json) = round_trip(&classifier, &device);
    assert_eq!(json["classifier_dropout"], 0.3);
    let HfModel::BertForSequenceClassification(loaded) = loaded else {
        panic!("expected a classifier")
    };
    assert_eq!(loaded.dropout.prob, 0.3);
    assert_eq!(loaded.bert.embeddings.dropout.prob, 0.05);
}

/// (name, shape, dtype, bytes) of every tensor of a safetensors file, sorted by name.
fn tensors(file: &Path) -> Vec<(String, Vec<usize>, String, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            (name, view.shape().to_vec(), dtype, view.data().to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn exporting_a_transformers_checkpoint_writes_back_the_files_transformers_wrote() {
    // The fixtures were written by transformers' `save_pretrained`: an export of what kiln
    // loaded from them has the same tensor names, shapes, dtypes and bytes, and the same value
    // for every config field both files have.
    for name in ["gpt2", "gpt2_untied", "bert_base", "bert_mlm", "bert_cls"] {
        let model = load_pretrained(fixture(name), &Device::flex()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&model, dir.path()).unwrap();
        let (ours, theirs) = (
            tensors(&dir.path().join("model.safetensors")),
            tensors(&fixture(name).join("model.safetensors")),
        );
        let names = |t: &[(String, Vec<usize>, String, Vec<u8>)]| {
            t.iter().map(|t| t.0.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&ours), names(&theirs), "{name}: tensor names");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!((&a.1, &a.2), (&b.1, &b.2), "{name}: {} shape, dtype", a.0);
            assert!(a.3 == b.3, "{name}: {} values differ", a.0);
        }
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            metadata.metadata().as_ref().and_then(|m| m.get("format")),
            Some(&"pt".to_string()),
            "{name}: transformers needs format=pt"
        );

        let ours = read_json(&dir.path().join("config.json"));
        let theirs = read_json(&fixture(name).join("config.json"));
        let mut shared = 0;
        for (key, value) in ours.as_object().unwrap() {
            // transformers writes GPT-2's 50256 whatever the vocabulary; kiln writes null when
            // the vocabulary has no such id.
            if key.ends_with("_token_id") {
                assert_eq!(
                    value,
                    &Value::Null,
                    "{name}: `{key}` outside the vocabulary"
                );
                continue;
            }
            if let Some(expected) = theirs.get(key) {
                assert_eq!(value, expected, "{name}: config field `{key}`");
                shared += 1;
            }
        }
        assert!(shared >= 14, "{name}: only {shared} config fields compared");
    }
}

/// Saves `model` into a folder that does not exist yet; expects a refusal whose reason
/// contains `why`, and that nothing was created.
fn assert_refused(model: &impl HfExport, why: &str) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("export");
    match save_pretrained(model, &dir) {
        Err(ModelError::NoHfEquivalent(reason)) => {
            assert!(reason.contains(why), "reason `{reason}` lacks `{why}`")
        }
        other => panic!("expected a refusal mentioning `{why}`, got {other:?}"),
    }
    assert!(!dir.exists(), "a refused export created {}", dir.display());
}

/// Removes the last head of block `b`: the query/key/value output columns and the output
/// projection's input rows of that head (what structured pruning does).
fn remove_last_head(mut gpt: Gpt, b: usize) -> Gpt {
    let attn = &mut gpt.blocks[b].attn;
    let [d, width] = attn.query.weight.dims();
    let keep = width - width / attn.n_head;
    for proj in [&mut attn.query, &mut attn.key, &mut attn.value] {
        proj.weight = Param::from_tensor(proj.weight.val().narrow(1, 0, keep));
        proj.bias = proj
            .bias
            .take()
            .map(|b| Param::from_tensor(b.val().narrow(0, 0, keep)));
    }
    attn.out.weight = Param::from_tensor(attn.out.weight.val().narrow(0, 0, keep));
    attn.n_head -= 1;
    assert_eq!(attn.out.weight.dims(), [keep, d]);
    gpt
}

#[test]
fn a_gpt_without_a_gpt2_shape_is_refused_before_anything_is_written() {
    let device = Device::flex();
    let gpt = |config: GptConfig| config.init(&device).unwrap();
    assert_refused(
        &gpt(tiny_gpt().with_positions(PositionEncoding::Rotary)),
        "rotary",
    );
    assert_refused(
        &gpt(tiny_gpt().with_ff_kind(FeedForwardKind::SwiGlu)),
        "SwiGLU",
    );
    assert_refused(
        &gpt(tiny_gpt().with_norm_position(NormPosition::Post)),
        "Post-norm",
    );
    assert_refused(&gpt(tiny_gpt().with_bias(false)), "no bias");
    let pruned = remove_last_head(gpt(tiny_gpt()), 1);
    // The pruned model still runs: the refusal is about HF, not a broken model.
    pruned.forward(ids(&device)).unwrap();
    assert_refused(&pruned, "heads removed by pruning");

    let mut narrower = gpt(tiny_gpt());
    let ffn = &mut narrower.blocks[1].ffn;
    ffn.up.weight = Param::from_tensor(ffn.up.weight.val().narrow(1, 0, 40));
    ffn.up.bias = Some(Param::from_tensor(
        ffn.up.bias.as_ref().unwrap().val().narrow(0, 0, 40),
    ));
    ffn.down.weight = Param::from_tensor(ffn.down.weight.val().narrow(0, 0, 40));
    narrower.forward(ids(&device)).unwrap();
    assert_refused(&narrower, "feed-forward widths");
}

#[test]
fn bert_models_without_a_bert_shape_are_refused_before_anything_is_written() {
    let device = Device::flex();
    let mut pre_norm = tiny_bert().init(true, &device).unwrap();
    pre_norm.layers[1].norm_position = NormPosition::Pre;
    assert_refused(&pre_norm, "Pre-norm");

    let mut no_pooler = tiny_bert().init_classifier(3, &device).unwrap();
    no_pooler.bert.pooler = None;
    assert_refused(&no_pooler, "no pooler");

    let mut relu_head = tiny_bert().init_masked_lm(&device).unwrap();
    relu_head.activation = Activation::Relu;
    assert_refused(&relu_head, "hidden_act");
}

/// A copy of a fixture in a temporary folder, with `edit` applied to its config.
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture(name).join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config = read_json(&fixture(name).join("config.json"));
    edit(config.as_object_mut().unwrap());
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn a_config_field_of_the_wrong_type_is_an_error_naming_it() {
    for (name, field, value) in [
        ("gpt2", "layer_norm_epsilon", Value::from("x")),
        ("gpt2", "n_inner", Value::from(2.5)),
        ("bert_mlm", "num_attention_heads", Value::from(-4)),
        ("bert_cls", "id2label", Value::from(vec![1, 2])),
        ("bert_base", "architectures", Value::from("BertModel")),
    ] {
        let dir = edited_copy(name, |c| {
            c.insert(field.into(), value.clone());
        });
        match load_pretrained(dir.path(), &Device::flex()) {
            Err(ModelError::ConfigField { file, field: f, .. }) => {
                assert_eq!(f, field);
                assert_eq!(file, dir.path().join("config.json"));
            }
            other => panic!("{name} with {field}={value}: expected a field error, got {other:?}"),
        }
    }
    // A value of the right type that kiln does not implement is also named.
    let dir = edited_copy("gpt2", |c| {
        c.insert("scale_attn_by_inverse_layer_idx".into(), true.into());
    });
    let err = load_pretrained(dir.path(), &Device::flex()).unwrap_err();
    assert!(
        matches!(&err, ModelError::ConfigField { field, .. } if field == "scale_attn_by_inverse_layer_idx"),
        "{err}"
    );
}

#[test]
fn missing_config_fields_take_transformers_defaults() {
    // The fixture's values of these fields are transformers' defaults: without them the model
    // is the same.
    let device = Device::flex();
    let dir = edited_copy("gpt2", |c| {
        for key in [
            "activation_function",
            "n_inner",
            "layer_norm_epsilon",
            "scale_attn_weights",
        ] {
            c.remove(key).unwrap();
        }
    });
    let full = load_pretrained(fixture("gpt2"), &device).unwrap();
    let trimmed = load_pretrained(dir.path(), &device).unwrap();
    let (HfOutput::TokenLogits(a), HfOutput::TokenLogits(b)) =
        (run(&full, &device), run(&trimmed, &device))
    else {
        panic!("expected token logits")
    };
    assert_same(a, b);
    // ... and a dropout the file does not state is transformers' 0.1.
    let dir = edited_copy("gpt2", |c| {
        c.remove("resid_pdrop").unwrap();
    });
    let HfModel::Gpt2(gpt) = load_pretrained(dir.path(), &device).unwrap() else {
        panic!("expected a GPT-2")
    };
    assert_eq!(gpt.blocks[0].attn.resid_dropout.prob, 0.1);
}

/// Writes exports of jittered random models for `scripts/check_hf_export.py` into
/// `$KILN_HF_EXPORT_DIR/{gpt2,gpt2_untied,bert,bert_mlm,bert_cls}`.
#[test]
#[ignore = "writes folders for scripts/check_hf_export.py; needs KILN_HF_EXPORT_DIR"]
fn write_exports_for_transformers() {
    let root = PathBuf::from(std::env::var("KILN_HF_EXPORT_DIR").expect("KILN_HF_EXPORT_DIR"));
    let device = Device::flex();
    device.seed(7);
    let gpt = |config: GptConfig| jitter(config.init(&device).unwrap());
    save_pretrained(&gpt(tiny_gpt()), root.join("gpt2")).unwrap();
    let untied = tiny_gpt()
        .with_tie_embeddings(false)
        .with_activation(Activation::Gelu)
        .with_d_ff(Some(24))
        .with_layer_norm_eps(1e-6);
    save_pretrained(&gpt(untied), root.join("gpt2_untied")).unwrap();
    let bert = tiny_bert();
    save_pretrained(
        &jitter(bert.init(true, &device).unwrap()),
        root.join("bert"),
    )
    .unwrap();
    save_pretrained(
        &jitter(bert.init_masked_lm(&device).unwrap()),
        root.join("bert_mlm"),
    )
    .unwrap();
    save_pretrained(
        &jitter(bert.init_classifier(3, &device).unwrap()),
        root.join("bert_cls"),
    )
    .unwrap();
    // The Llama family: GQA with llama3 scaling (LlamaForCausalLM), q/k/v biases and tied
    // embeddings (Qwen2ForCausalLM), a sliding window (MistralForCausalLM).
    let llama = || {
        GptConfig::new(31)
            .with_block_size(16)
            .with_n_layer(2)
            .with_n_head(4)
            .with_n_kv_head(Some(2))
            .with_head_dim(Some(6))
            .with_d_model(16)
            .with_d_ff(Some(40))
            .with_positions(PositionEncoding::Rotary)
            .with_rope_theta(500000.0)
            .with_ff_kind(FeedForwardKind::SwiGlu)
            .with_norm(Some(NormKind::RmsNorm))
            .with_bias(false)
            .with_tie_embeddings(false)
    };
    let scaled = llama().with_rope_scaling(Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8,
    }));
    save_pretrained(&gpt(scaled), root.join("llama")).unwrap();
    let qwen2 = llama().with_qkv_bias(Some(true)).with_tie_embeddings(true);
    save_pretrained(&gpt(qwen2), root.join("qwen2")).unwrap();
    let mistral = llama().with_sliding_window(Some(3));
    save_pretrained(&gpt(mistral), root.join("mistral")).unwrap();
}
