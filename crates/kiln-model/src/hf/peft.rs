//! HF peft's LoRA adapter folders, both ways: `adapter_config.json` and
//! `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes them and
//! `PeftModel.from_pretrained(base, dir)` reads them.
//!
//! The file holds, for each adapted module, `base_model.model.<module>.lora_A.weight`
//! (`[r, d_in]`) and `.lora_B.weight` (`[d_out, r]`), whatever the module's own layout
//! (GPT-2's `Conv1D` included: peft's `fan_in_fan_out` only changes how it merges), and each
//! module of `modules_to_save` whole under `base_model.model.<module>.weight`.
//!
//! Every field of `adapter_config.json` is read or refused by name: an option kiln does not
//! build (DoRA, a bias in the adapter, initialisations that rewrite the base such as PiSSA or
//! LoftQ, `layers_pattern`, layer replication, another PEFT type) is an error, never ignored;
//! a field kiln does not know is accepted only when it holds peft's "off" (`null`, `false`,
//! an empty list or object).
//!
//! GPT-2's `c_attn` is one module for kiln's three q, k, v layers. A peft adapter on it has one
//! `lora_A` the three share: it loads as three adapters with that `A` and the thirds of `B`. On
//! saving, three adapters with the same `A` are written back that way; three trained apart are
//! written as one adapter of rank `r_q + r_k + r_v` whose `A` stacks theirs and whose `B` is
//! block-diagonal, with `rank_pattern` and `alpha_pattern` entries for that module so that
//! peft computes the same update.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData};
use kiln_base::OutputDir;
use serde_json::{Map, Value, json};

use super::names::{HfModules, Part, Saved};
use super::save::safetensors_bytes;
use super::weights::HfWeights;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::limits::read_config_text;
use crate::linear::{LinearLayer, ToLinear};
use crate::lora::{LoraConfig, LoraInit, LoraLinear, TargetModules};

/// The adapter's config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix peft puts before every module name (its `PeftModel` and `LoraModel` wrappers).
const PREFIX: &str = "base_model.model.";

/// Fields that only describe the adapter (where it came from, how it was saved).
const INFORMATIONAL: &[&str] = &[
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "megatron_core",
    "qalora_group_size",
];

/// Reads `dir/adapter_config.json` into a [`LoraConfig`]; see the module docs for what is
/// refused.
pub fn read_adapter_config(dir: impl AsRef<Path>) -> Result<LoraConfig> {
    let file = dir.as_ref().join(ADAPTER_CONFIG);
    let text = read_config_text(&file)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::format(&file, e))?;
    let map = json
        .as_object()
        .ok_or_else(|| ModelError::format(&file, "not a JSON object"))?;
    parse_adapter_config(map, &file)
}

fn parse_adapter_config(map: &Map<String, Value>, file: &Path) -> Result<LoraConfig> {
    let bad = |field: &str, message: String| ModelError::ConfigField {
        file: file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let refuse = |field: &str, value: &Value, what: &str| {
        bad(
            field,
            format!(
                "{value} is not supported: {what}; kiln refuses the adapter rather than ignore it"
            ),
        )
    };
    let mut config = LoraConfig::new();
    for (key, value) in map {
        let key = key.as_str();
        match key {
            "peft_type" => {
                if value.as_str() != Some("LORA") {
                    return Err(refuse(key, value, "kiln reads LoRA adapters only"));
                }
            }
            "task_type" => {
                if !(value.is_null() || value.as_str() == Some("CAUSAL_LM")) {
                    return Err(refuse(key, value, "kiln adapts causal language models"));
                }
            }
            "r" => {
                config.r =
                    usize_of(value).ok_or_else(|| bad(key, "not a positive integer".into()))?
            }
            "lora_alpha" => {
                config.lora_alpha = value
                    .as_f64()
                    .ok_or_else(|| bad(key, "not a number".into()))?
            }
            "lora_dropout" => {
                config.lora_dropout = value
                    .as_f64()
                    .ok_or_else(|| bad(key, "not a number".into()))?
            }
            "use_rslora" => {
                config.use_rslora = value
                    .as_bool()
                    .ok_or_else(|| bad(key, "not a boolean".into()))?
            }
            "fan_in_fan_out" => {
                // How peft merges into a Conv1D; the stored A and B are the same either way.
                value
                    .as_bool()
                    .ok_or_else(|| bad(key, "not a boolean".into()))?;
            }
            "target_modules" => config.target_modules = targets(value).map_err(|m| bad(key, m))?,
            "exclude_modules" => {
                config.exclude_modules = targets(value).map_err(|m| bad(key, m))?
            }
            "layers_to_transform" => {
                config.layers_to_transform = match value {
                    Value::Null => None,
                    Value::Array(list) if list.is_empty() => None,
                    Value::Array(list) => Some(
                        list.iter()
                            .map(usize_of_any)
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| bad(key, "not a list of layer indices".into()))?,
                    ),
                    v => Some(vec![
                        usize_of_any(v).ok_or_else(|| bad(key, "not a layer index".into()))?,
                    ]),
                }
            }
            "layers_pattern" => {
                if !is_off(value) {
                    return Err(refuse(
                        key,
                        value,
                        "kiln finds the layer index the way peft does without it",
                    ));
                }
            }
            "rank_pattern" => {
                config.rank_pattern = pattern(value, usize_of).map_err(|m| bad(key, m))?
            }
            "alpha_pattern" => {
                config.alpha_pattern = pattern(value, Value::as_f64).map_err(|m| bad(key, m))?
            }
            "modules_to_save" => {
                config.modules_to_save = match value {
                    Value::Null => Vec::new(),
                    v => strings(v).ok_or_else(|| bad(key, "not a list of module names".into()))?,
                }
            }
            "bias" => {
                if value.as_str() != Some("none") {
                    return Err(refuse(
                        key,
                        value,
                        "kiln trains no biases beside the adapters",
                    ));
                }
            }
            "init_lora_weights" => {
                config.init_lora_weights = match value {
                    Value::Bool(true) => LoraInit::Kaiming,
                    Value::Bool(false) => LoraInit::Random,
                    Value::String(s) if s == "gaussian" => LoraInit::Gaussian,
                    v => {
                        return Err(refuse(
                            key,
                            v,
                            "that initialisation rewrites the base weights (or needs data); kiln \
                             reads `true`, `false` and \"gaussian\"",
                        ));
                    }
                }
            }
            "use_dora" => {
                if value != &Value::Bool(false) {
                    return Err(refuse(key, value, "DoRA is not built"));
                }
            }
            "lora_bias" => {
                if value != &Value::Bool(false) {
                    return Err(refuse(key, value, "an adapter with a bias is not built"));
                }
            }
            "ensure_weight_tying" => {
                value
                    .as_bool()
                    .ok_or_else(|| bad(key, "not a boolean".into()))?;
            }
            _ if INFORMATIONAL.contains(&key) => {}
            _ => {
                if !is_off(value) {
                    return Err(refuse(key, value, "a peft option kiln does not build"));
                }
            }
        }
    }
    config
        .validate()
        .map_err(|e| bad("adapter", e.to_string()))?;
    Ok(config)
}

/// peft's way of writing an option that is off.
fn is_off(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

fn usize_of(value: &Value) -> Option<usize> {
    value
        .as_u64()
        .filter(|&v| v > 0)
        .and_then(|v| usize::try_from(v).ok())
}

fn usize_of_any(value: &Value) -> Option<usize> {
    value.as_u64().and_then(|v| usize::try_from(v).ok())
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn targets(value: &Value) -> std::result::Result<Option<TargetModules>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(TargetModules::Pattern(s.clone()))),
        v => strings(v)
            .map(|mut names| {
                // peft stores a set: its order carries no meaning.
                names.sort();
                Some(TargetModules::Names(names))
            })
            .ok_or_else(|| "not a module name, a list of them or a regular expression".into()),
    }
}

fn pattern<T>(
    value: &Value,
    of: impl Fn(&Value) -> Option<T>,
) -> std::result::Result<BTreeMap<String, T>, String> {
    let Some(map) = value.as_object() else {
        return if value.is_null() {
            Ok(BTreeMap::new())
        } else {
            Err("not an object".into())
        };
    };
    map.iter()
        .map(|(k, v)| {
            of(v)
                .map(|v| (k.clone(), v))
                .ok_or_else(|| format!("`{k}`: {v} is not a valid value"))
        })
        .collect()
}

/// Loads the peft adapter in `dir` onto `model`: the model [`Gpt::with_lora`] builds from the
/// adapter's config, with the file's `A`, `B` and saved modules. Every tensor of the file must
/// have its place and every adapter its tensors, with the shapes the config gives.
pub fn load_adapter(model: Gpt, dir: impl AsRef<Path>) -> Result<(Gpt<LoraLinear>, LoraConfig)> {
    let dir = dir.as_ref();
    let config = read_adapter_config(dir)?;
    let names = HfModules::of(&model);
    let device = model.token_embedding.weight.device();
    let mut lora = model.with_lora(&config)?;
    let weights = HfWeights::open_file(&dir.join(ADAPTER_WEIGHTS))?;
    let mut used = Vec::new();
    let mut read = |name: String| {
        used.push(name.clone());
        name
    };
    let d_model = lora.token_embedding.weight.dims()[1];
    for (path, layer) in lora.linears_mut() {
        let entry = names.linear(&path)?;
        let Some(adapter) = layer.adapter.as_mut() else {
            continue;
        };
        let (d_in, d_out, r) = (layer.base.d_in(), layer.base.d_out(), adapter.rank());
        let a = read(format!("{PREFIX}{}.lora_A.weight", entry.module));
        let b = read(format!("{PREFIX}{}.lora_B.weight", entry.module));
        adapter.lora_a = Param::from_tensor(weights.linear_weight(&a, [r, d_in], &device)?)
            .set_require_grad(true);
        let b = match entry.part {
            Part::Whole => weights.linear_weight(&b, [d_out, r], &device)?,
            Part::Columns { index, count } => {
                let whole = weights.linear_weight(&b, [count * d_out, r], &device)?;
                contiguous(whole.slice([0..r, index * d_out..(index + 1) * d_out]))
            }
        };
        adapter.lora_b = Param::from_tensor(b).set_require_grad(true);
    }
    for module in &config.modules_to_save {
        match names.saved(module) {
            Some(Saved::LmHead) => {
                let name = read(format!("{PREFIX}lm_head.weight"));
                if let Some(head) = lora.lm_head.as_mut() {
                    let vocab = head.base.d_out();
                    head.base.weight = Param::from_tensor(weights.linear_weight(
                        &name,
                        [vocab, d_model],
                        &device,
                    )?)
                    .set_require_grad(true);
                }
            }
            Some(Saved::Embedding) => {
                let name = read(format!("{PREFIX}{}.weight", names.family.embedding()));
                let shape = lora.token_embedding.weight.dims();
                lora.token_embedding.weight =
                    Param::from_tensor(weights.tensor(&name, shape, &device)?)
                        .set_require_grad(true);
            }
            None => names.check_saved(module)?,
        }
    }
    if let Some(extra) = weights
        .names()
        .into_iter()
        .find(|n| !used.iter().any(|u| u == n))
    {
        return Err(ModelError::UnexpectedTensor {
            name: extra.to_string(),
            file: dir.join(ADAPTER_WEIGHTS),
        });
    }
    Ok((lora, config))
}

/// A copy of `t` laid out contiguously (a slice is a view; the fused linear layer would take
/// another path through gemm for it than for the loaded weight it stands for).
fn contiguous(t: Tensor<2>) -> Tensor<2> {
    let device = t.device();
    Tensor::from_data(t.into_data(), &device)
}

/// Writes `model`'s adapters (and the modules of `modules_to_save`) as a peft adapter folder:
/// `PeftModel.from_pretrained(base, dir)` loads it onto the base model with no missing or
/// unexpected keys and computes kiln's logits. `base_model` is recorded as
/// `base_model_name_or_path`. Both files are written atomically, the weights first.
pub fn save_adapter<L: ToLinear>(
    model: &Gpt<LoraLinear<L>>,
    config: &LoraConfig,
    base_model: Option<&str>,
    dir: impl Into<OutputDir>,
) -> Result<()> {
    let out = dir.into();
    let dir = out.path();
    let names = HfModules::of(model);
    let mut tensors: Vec<(String, TensorData)> = Vec::new();
    let mut rank_pattern = config.rank_pattern.clone();
    let mut alpha_pattern = config.alpha_pattern.clone();
    let host = |t: Tensor<2>| t.into_data().convert::<f32>();
    let linears = model.linears();
    let mut i = 0;
    while i < linears.len() {
        let (path, layer) = &linears[i];
        let entry = names.linear(path)?;
        let Some(adapter) = &layer.adapter else {
            i += 1;
            continue;
        };
        let module = format!("{PREFIX}{}", entry.module);
        match entry.part {
            Part::Whole => {
                tensors.push((
                    format!("{module}.lora_A.weight"),
                    host(adapter.lora_a.val().transpose()),
                ));
                tensors.push((
                    format!("{module}.lora_B.weight"),
                    host(adapter.lora_b.val().transpose()),
                ));
                i += 1;
            }
            Part::Columns { count, .. } => {
                let group: Vec<_> = linears[i..(i + count).min(linears.len())]
                    .iter()
                    .map(|(p, l)| (names.linear(p), l.adapter.as_ref()))
                    .collect();
                let adapters = group
                    .iter()
                    .map(|(e, a)| match (e, a) {
                        (Ok(e), Some(a)) if e.module == entry.module => Ok(*a),
                        _ => Err(ModelError::NoHfEquivalent(format!(
                            "`{}` is one module in transformers and kiln's layers in it do not \
                             all have an adapter",
                            entry.module
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (a, b, rank, alpha) = fused_columns(&adapters, config);
                if let Some((rank, alpha)) = rank.zip(alpha) {
                    let key = regex::escape(&entry.module);
                    rank_pattern.insert(key.clone(), rank);
                    alpha_pattern.insert(key, alpha);
                }
                tensors.push((format!("{module}.lora_A.weight"), host(a)));
                tensors.push((format!("{module}.lora_B.weight"), host(b)));
                i += count;
            }
        }
    }
    for module in &config.modules_to_save {
        match names.saved(module) {
            Some(Saved::LmHead) => {
                if let Some(head) = &model.lm_head {
                    let dense: Linear = head.base.to_linear(&model.token_embedding.weight.device());
                    tensors.push((
                        format!("{PREFIX}lm_head.weight"),
                        host(dense.weight.val().transpose()),
                    ));
                }
            }
            Some(Saved::Embedding) => tensors.push((
                format!("{PREFIX}{}.weight", names.family.embedding()),
                host(model.token_embedding.weight.val()),
            )),
            None => names.check_saved(module)?,
        }
    }
    let target_modules = match &config.target_modules {
        Some(TargetModules::Names(list)) => json!(list),
        Some(TargetModules::Pattern(p)) => json!(p),
        None => json!(names.family.default_targets()),
    };
    let exclude_modules = match &config.exclude_modules {
        Some(TargetModules::Names(list)) => json!(list),
        Some(TargetModules::Pattern(p)) => json!(p),
        None => Value::Null,
    };
    let init = match config.init_lora_weights {
        LoraInit::Kaiming => json!(true),
        LoraInit::Random => json!(false),
        LoraInit::Gaussian => json!("gaussian"),
    };
    let adapter_config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": null,
        "inference_mode": true,
        "r": config.r,
        "lora_alpha": number(config.lora_alpha),
        "lora_dropout": config.lora_dropout,
        "use_rslora": config.use_rslora,
        "target_modules": target_modules,
        "exclude_modules": exclude_modules,
        "layers_to_transform": config.layers_to_transform,
        "layers_pattern": null,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern.into_iter().map(|(k, v)| (k, number(v))).collect::<Map<String, Value>>(),
        "modules_to_save": if config.modules_to_save.is_empty() { Value::Null } else { json!(config.modules_to_save) },
        "fan_in_fan_out": names.linears.iter().any(|l| l.conv1d),
        "bias": "none",
        "init_lora_weights": init,
        "use_dora": false,
    });
    let weights_file = dir.join(ADAPTER_WEIGHTS);
    let config_file = dir.join(ADAPTER_CONFIG);
    let bytes = safetensors_bytes(&tensors, &weights_file)?;
    let text = serde_json::to_string_pretty(&adapter_config)
        .map_err(|e| ModelError::format(&config_file, e))?;
    out.claim(&[ADAPTER_WEIGHTS, ADAPTER_CONFIG])?;
    out.write(ADAPTER_WEIGHTS, &bytes)?;
    Ok(out.write(ADAPTER_CONFIG, text.as_bytes())?)
}

/// `x` as JSON, an integer when it is one (peft's configs write `lora_alpha: 16`).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// peft's `lora_A` `[r, d_in]` and `lora_B` `[count·d_out, r]` of one fused module from kiln's
/// adapters on its slices: one shared `A` when theirs are the same (a loaded adapter, or one
/// not trained since), else `A`s stacked and `B` block-diagonal, with the rank and
/// `lora_alpha` that module needs in `rank_pattern` and `alpha_pattern`.
fn fused_columns(
    adapters: &[&crate::lora::LoraAdapter],
    config: &LoraConfig,
) -> (Tensor<2>, Tensor<2>, Option<usize>, Option<f64>) {
    let first = adapters[0];
    let a0 = first.lora_a.val().into_data();
    let shared = adapters
        .iter()
        .all(|a| a.scaling == first.scaling && a.lora_a.val().into_data() == a0);
    let b_t: Vec<Tensor<2>> = adapters
        .iter()
        .map(|a| a.lora_b.val().transpose())
        .collect();
    if shared {
        return (
            first.lora_a.val().transpose(),
            Tensor::cat(b_t, 0),
            None,
            None,
        );
    }
    let ranks: Vec<usize> = adapters.iter().map(|a| a.rank()).collect();
    let total: usize = ranks.iter().sum();
    let scaling = first.scaling;
    let alpha = if config.use_rslora {
        scaling * (total as f64).sqrt()
    } else {
        scaling * total as f64
    };
    let a = Tensor::cat(
        adapters
            .iter()
            .map(|a| a.lora_a.val().transpose())
            .collect(),
        0,
    );
    let device = a.device();
    let mut rows = Vec::new();
    let mut at = 0;
    for (adapter, b) in adapters.iter().zip(b_t) {
        let [d_out, r] = b.dims();
        // The block's own scaling relative to the one peft applies to the whole module.
        let b = b.mul_scalar(adapter.scaling / scaling);
        let mut parts = Vec::new();
        if at > 0 {
            parts.push(Tensor::zeros([d_out, at], &device));
        }
        parts.push(b);
        if total - at - r > 0 {
            parts.push(Tensor::zeros([d_out, total - at - r], &device));
        }
        rows.push(Tensor::cat(parts, 1));
        at += r;
    }
    (a, Tensor::cat(rows, 0), Some(total), Some(alpha))
}

/// The folder an adapter is read from, checked to hold both files.
pub fn check_adapter_dir(dir: &Path) -> Result<PathBuf> {
    for file in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(ModelError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a peft adapter folder (adapter_config.json and adapter_model.safetensors)",
                ),
            ));
        }
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> Result<LoraConfig> {
        parse_adapter_config(json.as_object().unwrap(), Path::new("adapter_config.json"))
    }

    fn refused_field(json: Value) -> String {
        match parse(json) {
            Err(ModelError::ConfigField { field, .. }) => field,
            other => panic!("expected a refused field, got {other:?}"),
        }
    }

    #[test]
    fn peft_fields_are_read() {
        let config = parse(json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 6,
            "lora_dropout": 0.05, "use_rslora": true, "target_modules": ["v_proj", "q_proj"],
            "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"v_proj": 5},
            "layers_to_transform": 1, "modules_to_save": ["lm_head"], "bias": "none",
            "init_lora_weights": "gaussian", "use_dora": false, "loftq_config": {},
            "megatron_config": null, "peft_version": "0.21.2", "a_future_option": null,
        }))
        .unwrap();
        assert_eq!(config.r, 4);
        assert_eq!(config.lora_alpha, 6.0);
        assert!(config.use_rslora);
        assert_eq!(
            config.target_modules,
            Some(TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]))
        );
        assert_eq!(config.rank_pattern.get("v_proj"), Some(&2));
        assert_eq!(config.alpha_pattern.get("v_proj"), Some(&5.0));
        assert_eq!(config.layers_to_transform, Some(vec![1]));
        assert_eq!(config.modules_to_save, vec!["lm_head".to_string()]);
        assert_eq!(config.init_lora_weights, LoraInit::Gaussian);
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (field, value) in [
            ("peft_type", json!("IA3")),
            ("task_type", json!("SEQ_CLS")),
            ("use_dora", json!(true)),
            ("lora_bias", json!(true)),
            ("bias", json!("lora_only")),
            ("init_lora_weights", json!("pissa")),
            ("layers_pattern", json!("layers")),
            ("layer_replication", json!([[0, 2]])),
            ("loftq_config", json!({"loftq_bits": 4})),
            ("a_future_option", json!(3)),
            ("r", json!(0)),
            ("rank_pattern", json!({"q_proj": "big"})),
            ("target_modules", json!(7)),
        ] {
            let json = json!({"peft_type": "LORA", "r": 4, field: value});
            assert_eq!(refused_field(json), field, "{field}");
        }
    }
}
