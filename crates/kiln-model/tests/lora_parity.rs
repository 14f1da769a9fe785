//! kiln's LoRA against HF peft 0.21 (`scripts/make_lora_fixtures.py`): adapters on a tiny GPT-2
//! (Conv1D, `c_attn` fused), a tiny Llama 3 (all seven projections, rsLoRA, `lm_head` in
//! `modules_to_save`) and a tiny Qwen2 (a regular expression for `target_modules`, a
//! `rank_pattern` and an `alpha_pattern`), each with `lora_alpha` ≠ `r` and a non-zero `B`.
//! Logits with the adapter within 1e-4 of peft's; one step's adapter gradients within 1e-5 of
//! PyTorch's; merged logits equal unmerged; a saved adapter has peft's names, shapes, values
//! and config fields; the base gets no gradient; bad configs refused by name.

mod common;

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_model::ModelError;
use kiln_model::gpt::Gpt;
use kiln_model::hf::names::{HfModules, Part};
use kiln_model::hf::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter};
use kiln_model::hf::{HfModel, load_pretrained};
use kiln_model::lora::{LoraConfig, LoraInit, LoraLinear, TargetModules};
use kiln_model::loss::cross_entropy;
use serde_json::Value;

use common::{Tensors, fixture, max_diff, safetensors, values};

/// Each adapter fixture and its base model's fixture.
const FIXTURES: [(&str, &str); 3] = [
    ("lora_gpt2", "gpt2"),
    ("lora_llama", "llama3_gqa"),
    ("lora_qwen2_pattern", "qwen2"),
];

fn input(base: &str, device: &Device) -> Tensor<2, Int> {
    let text = std::fs::read_to_string(fixture(base).join("reference.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<Vec<i64>> = json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(
        TensorData::new(rows.into_iter().flatten().collect::<Vec<_>>(), [b, t]),
        device,
    )
}

fn base(name: &str, device: &Device) -> Gpt {
    match load_pretrained(fixture(name), device).unwrap() {
        HfModel::Gpt2(gpt) | HfModel::Llama(gpt) => gpt,
        other => panic!("{name}: not a decoder: {other:?}"),
    }
}

fn with_adapter(adapter: &str, base_name: &str, device: &Device) -> Gpt<LoraLinear> {
    load_adapter(base(base_name, device), fixture(adapter))
        .unwrap()
        .0
}

#[test]
fn logits_with_the_adapter_match_peft() {
    let device = Device::flex();
    for (adapter, base_name) in FIXTURES {
        let reference = safetensors(&fixture(adapter).join("reference.safetensors"));
        let x = input(base_name, &device);
        let plain = values(base(base_name, &device).forward(x.clone()).unwrap());
        let lora = with_adapter(adapter, base_name, &device);
        let logits = values(lora.forward(x).unwrap());
        let (_, expected) = &reference["logits"];
        let diff = max_diff(&logits, expected);
        assert!(diff <= 1e-4, "{adapter}: logits differ by {diff:e}");
        // The adapter matters: without it the logits are far from peft's.
        let without = max_diff(&plain, expected);
        assert!(
            without > 1e-2,
            "{adapter}: the adapter changes little ({without:e})"
        );
    }
}

#[test]
fn merged_logits_equal_unmerged_and_peft_merged() {
    let device = Device::flex();
    for (adapter, base_name) in FIXTURES {
        let reference = safetensors(&fixture(adapter).join("reference.safetensors"));
        let x = input(base_name, &device);
        let lora = with_adapter(adapter, base_name, &device);
        let unmerged = values(lora.forward(x.clone()).unwrap());
        let unloaded = lora.merge_and_unload();
        let merged = values(unloaded.forward(x.clone()).unwrap());
        assert!(max_diff(&merged, &unmerged) <= 1e-4, "{adapter}");
        let (_, peft_merged) = &reference["merged_logits"];
        assert!(max_diff(&merged, peft_merged) <= 1e-4, "{adapter}");
        // In place, and back: the adapters stay and unmerging restores the function.
        let in_place = lora.merge_adapters();
        assert!(max_diff(&values(in_place.forward(x.clone()).unwrap()), &unmerged) <= 1e-4);
        let back = in_place.unmerge_adapters();
        assert!(max_diff(&values(back.forward(x).unwrap()), &unmerged) <= 1e-5);
        assert_eq!(unloaded.linears().len(), back.linears().len());
    }
}

/// The gradient of each adapter tensor of the file, by its peft key, from kiln's gradients:
/// a fused module's shared `A` gets the sum of its slices' gradients, its `B` their
/// concatenation.
fn adapter_grads(lora: &Gpt<LoraLinear>, grads: &GradientsParams) -> Tensors {
    let names = HfModules::of(lora);
    let grad = |param: &Param<Tensor<2>>, transpose: bool| {
        let g = Tensor::<2>::from_inner(grads.get::<2>(param.id).expect("a gradient"));
        let g = if transpose { g.transpose() } else { g };
        (g.dims().to_vec(), values(g))
    };
    let mut out: Tensors = HashMap::new();
    for (path, adapter) in lora.adapters() {
        let entry = names.linear(&path).unwrap();
        let key = format!("base_model.model.{}", entry.module);
        let (a_shape, a) = grad(&adapter.lora_a, true);
        let (b_shape, b) = grad(&adapter.lora_b, true);
        match entry.part {
            Part::Whole => {
                out.insert(format!("{key}.lora_A.weight"), (a_shape, a));
                out.insert(format!("{key}.lora_B.weight"), (b_shape, b));
            }
            Part::Columns { count, .. } => {
                let a_entry = out
                    .entry(format!("{key}.lora_A.weight"))
                    .or_insert((a_shape, vec![0.0; a.len()]));
                for (s, g) in a_entry.1.iter_mut().zip(&a) {
                    *s += g;
                }
                let b_entry = out
                    .entry(format!("{key}.lora_B.weight"))
                    .or_insert((vec![0, b_shape[1]], Vec::new()));
                b_entry.0[0] += b_shape[0];
                b_entry.1.extend(b);
                assert!(b_entry.0[0] <= count * b_shape[0]);
            }
        }
    }
    if let Some(head) = &lora.lm_head
        && let Some(g) = grads.get::<2>(head.base.weight.id)
    {
        let g = Tensor::<2>::from_inner(g).transpose();
        out.insert(
            "base_model.model.lm_head.weight".into(),
            (g.dims().to_vec(), values(g)),
        );
    }
    out
}

#[test]
fn one_steps_adapter_gradients_match_pytorch_and_the_base_gets_none() {
    let device = Device::flex().autodiff();
    for (adapter, base_name) in FIXTURES {
        let reference = safetensors(&fixture(adapter).join("reference.safetensors"));
        let lora = with_adapter(adapter, base_name, &device);
        let x = input(base_name, &device);
        let t = x.dims()[1];
        let logits = lora.forward(x.clone()).unwrap().narrow(1, 0, t - 1);
        let loss = cross_entropy(logits, x.narrow(1, 1, t - 1), None);
        let found = values(loss.clone())[0];
        let expected = reference["loss"].1[0];
        assert!(
            (found - expected).abs() <= 1e-5 * expected.max(1.0),
            "{adapter}: loss {found} vs {expected}"
        );
        let grads = GradientsParams::from_grads(loss.backward(), &lora);
        let kiln = adapter_grads(&lora, &grads);
        let expected: Vec<_> = reference
            .keys()
            .filter(|k| k.starts_with("grad."))
            .collect();
        assert_eq!(kiln.len(), expected.len(), "{adapter}: {:?}", kiln.keys());
        for key in expected {
            let (shape, want) = &reference[key];
            let (found_shape, found) = kiln
                .get(key.trim_start_matches("grad."))
                .unwrap_or_else(|| panic!("{adapter}: kiln has no gradient for {key}"));
            assert_eq!(found_shape, shape, "{adapter}: {key}");
            let diff = max_diff(found, want);
            assert!(diff <= 1e-5, "{adapter}: {key} differs by {diff:e}");
            assert!(found.iter().any(|&g| g != 0.0), "{adapter}: {key} is zero");
        }
        // Only the adapters (and the saved output layer) have gradients.
        struct Frozen<'a>(&'a GradientsParams, Vec<String>, Vec<String>);
        impl ModuleVisitor for Frozen<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.2.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.2.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let path = self.2.join(".");
                let trains = path.contains(".adapter.") || path.starts_with("lm_head");
                if self.0.get::<D>(param.id).is_some() != trains {
                    self.1.push(path);
                }
            }
        }
        let saves_head = adapter == "lora_llama";
        let mut frozen = Frozen(&grads, Vec::new(), Vec::new());
        lora.visit(&mut frozen);
        let wrong: Vec<_> = frozen
            .1
            .iter()
            .filter(|p| saves_head || !p.starts_with("lm_head"))
            .collect();
        assert!(
            wrong.is_empty(),
            "{adapter}: gradients where they should not be: {wrong:?}"
        );
    }
}

#[test]
fn a_saved_adapter_is_the_peft_file() {
    let device = Device::flex();
    for (adapter, base_name) in FIXTURES {
        let (lora, config) = load_adapter(base(base_name, &device), fixture(adapter)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&lora, &config, Some(base_name), dir.path()).unwrap();
        let theirs = safetensors(&fixture(adapter).join(ADAPTER_WEIGHTS));
        let ours = safetensors(&dir.path().join(ADAPTER_WEIGHTS));
        let mut keys: Vec<_> = ours.keys().collect();
        keys.sort();
        let mut want: Vec<_> = theirs.keys().collect();
        want.sort();
        assert_eq!(keys, want, "{adapter}: keys");
        for key in keys {
            assert_eq!(ours[key], theirs[key], "{adapter}: {key}");
        }
        let read = |p: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let ours = read(&dir.path().join(ADAPTER_CONFIG));
        let theirs = read(&fixture(adapter).join(ADAPTER_CONFIG));
        for field in [
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "lora_dropout",
            "use_rslora",
            "rank_pattern",
            "alpha_pattern",
            "bias",
            "fan_in_fan_out",
            "use_dora",
        ] {
            let (a, b) = (&ours[field], &theirs[field]);
            let same = a == b || (a.as_f64().is_some() && a.as_f64() == b.as_f64());
            assert!(same, "{adapter}: {field}: {a} vs {b}");
        }
        let set = |v: &Value| -> Value {
            match v.as_array() {
                Some(list) => {
                    let mut list = list.clone();
                    list.sort_by_key(|v| v.to_string());
                    Value::Array(list)
                }
                None => v.clone(),
            }
        };
        assert_eq!(
            set(&ours["target_modules"]),
            set(&theirs["target_modules"]),
            "{adapter}"
        );
        assert_eq!(
            ours["modules_to_save"], theirs["modules_to_save"],
            "{adapter}"
        );
    }
}

/// GPT-2's `c_attn` adapters trained apart (their `A`s differ) are written as one adapter of
/// rank 3r whose `B` is block-diagonal; read back, the model computes the same logits.
#[test]
fn fused_slices_trained_apart_round_trip_as_a_block_diagonal_adapter() {
    let device = Device::flex();
    device.seed(7);
    let config = LoraConfig::new()
        .with_r(2)
        .with_lora_alpha(6.0)
        .with_target_modules(Some(TargetModules::Names(vec![
            "c_attn".into(),
            "c_fc".into(),
        ])))
        .with_init_lora_weights(LoraInit::Random);
    let lora = base("gpt2", &device).with_lora(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&lora, &config, None, dir.path()).unwrap();
    let saved = safetensors(&dir.path().join(ADAPTER_WEIGHTS));
    let (shape, b) = &saved["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"];
    assert_eq!(shape, &vec![3 * 48, 6]);
    // Block-diagonal: the query rows see only the first two columns.
    assert!(
        b[..48 * 6]
            .chunks(6)
            .all(|row| row[2..].iter().all(|&v| v == 0.0))
    );
    assert_eq!(
        saved["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"].0,
        vec![2, 48]
    );
    let (again, read) = load_adapter(base("gpt2", &device), dir.path()).unwrap();
    assert_eq!(
        read.rank_pattern.values().copied().collect::<Vec<_>>(),
        vec![6, 6]
    );
    let x = input("gpt2", &device);
    let a = values(lora.forward(x.clone()).unwrap());
    let b = values(again.forward(x).unwrap());
    let diff = max_diff(&a, &b);
    assert!(diff <= 1e-5, "logits differ by {diff:e}");
    assert!(
        max_diff(
            &a,
            &values(
                base("gpt2", &device)
                    .forward(input("gpt2", &device))
                    .unwrap()
            )
        ) > 1e-3
    );
}

#[test]
fn targets_kiln_cannot_adapt_are_refused_by_name() {
    let device = Device::flex();
    let refused = |base_name: &str, config: LoraConfig, needle: &str| match base(base_name, &device)
        .with_lora(&config)
    {
        Err(ModelError::InvalidConfig(message)) => {
            assert!(message.contains(needle), "{message}")
        }
        other => panic!(
            "expected a refusal naming {needle}, got {:?}",
            other.map(|_| ())
        ),
    };
    let names = |list: &[&str]| {
        Some(TargetModules::Names(
            list.iter().map(|s| s.to_string()).collect(),
        ))
    };
    refused(
        "llama3_gqa",
        LoraConfig::new().with_target_modules(names(&["embed_tokens"])),
        "embed_tokens",
    );
    refused(
        "llama3_gqa",
        LoraConfig::new().with_target_modules(names(&["nothing_here"])),
        "matches no linear layer",
    );
    refused(
        "gpt2",
        LoraConfig::new().with_modules_to_save(vec!["lm_head".into()]),
        "ties",
    );
    refused(
        "llama3_gqa",
        LoraConfig::new().with_modules_to_save(vec!["score".into()]),
        "score",
    );
    refused(
        "llama3_gqa",
        LoraConfig::new().with_target_modules(Some(TargetModules::Pattern("(?<=x)q".into()))),
        "target_modules",
    );
    refused("llama3_gqa", LoraConfig::new().with_r(0), "`r`");
    let mut twice = LoraConfig::new();
    twice.rank_pattern.insert("q_proj".into(), 2);
    twice.rank_pattern.insert("self_attn.q_proj".into(), 3);
    refused("llama3_gqa", twice, "both match");
}

/// peft's matching rules: a name matches a module or a suffix after a dot, `all-linear` leaves
/// the output layer out, `layers_to_transform` picks blocks, `exclude_modules` wins.
#[test]
fn targets_match_as_peft_matches_them() {
    let device = Device::flex();
    let adapted = |config: LoraConfig| -> Vec<String> {
        let lora = base("llama3_gqa", &device).with_lora(&config).unwrap();
        lora.adapters().into_iter().map(|(p, _)| p).collect()
    };
    let names = |list: &[&str]| {
        Some(TargetModules::Names(
            list.iter().map(|s| s.to_string()).collect(),
        ))
    };
    assert_eq!(
        adapted(LoraConfig::new()),
        [
            "blocks.0.attn.query",
            "blocks.0.attn.value",
            "blocks.1.attn.query",
            "blocks.1.attn.value"
        ],
        "peft's default for llama: q_proj, v_proj"
    );
    let all = adapted(
        LoraConfig::new().with_target_modules(Some(TargetModules::Pattern("all-linear".into()))),
    );
    assert_eq!(all.len(), 14, "{all:?}");
    assert!(!all.contains(&"lm_head".to_string()));
    assert_eq!(
        adapted(
            LoraConfig::new()
                .with_target_modules(names(&["o_proj"]))
                .with_layers_to_transform(Some(vec![1]))
        ),
        ["blocks.1.attn.out"]
    );
    assert_eq!(
        adapted(
            LoraConfig::new()
                .with_target_modules(names(&["mlp.up_proj", "lm_head"]))
                .with_exclude_modules(Some(TargetModules::Pattern(r"model\.layers\.0\..*".into())))
        ),
        ["blocks.1.ffn.up", "lm_head"]
    );
    // The base is frozen, the adapters train.
    let lora = base("llama3_gqa", &device)
        .with_lora(&LoraConfig::new())
        .unwrap();
    let (trainable, total) = lora.trainable_parameters();
    let per_layer = |d_in: usize, d_out: usize| 8 * (d_in + d_out);
    assert_eq!(trainable, 2 * (per_layer(32, 64) + per_layer(32, 32)));
    assert!(total > 10 * trainable);
}
