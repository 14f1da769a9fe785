//! LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update,
//! `y = W·x + s·B·A·dropout(x)` with `s = α/r` (or `α/√r`, rsLoRA, Kalajdzievski 2023), as HF
//! peft computes it.
//!
//! [`LoraLinear`] is a [`LinearLayer`] wrapping any other (Burn's f32 `Linear`, kiln-compress's
//! int8 layer): the model's code does not change, [`Gpt::with_lora`] maps its layer table
//! ([`Gpt::map_linears`]) and freezes everything else. The configuration is peft's
//! ([`LoraConfig`]: `r`, `lora_alpha`, `lora_dropout`, `use_rslora`, `target_modules`,
//! `rank_pattern`, ...), and layers are chosen by their transformers module names
//! (`model.layers.3.self_attn.q_proj`, GPT-2's `transformer.h.3.attn.c_attn`) with peft's
//! matching rules, so a peft config means here what it means in Python ([`hf::peft`](crate::hf::peft)
//! reads and writes peft's adapter folders).
//!
//! Why not Burn's own LoRA (`Module::apply_lora`): it reparameterizes the *weight*, computing
//! `W + s·A·B` as a full `d_in × d_out` matrix in every forward pass (and its gradient in every
//! backward), and has no dropout on the adapter's input. Here the update is applied to the
//! activations, `(x·A)·B`, `r·(d_in + d_out)` multiply-adds per token instead of `d_in·d_out`,
//! and the base layer is whatever kiln layer was there (int8 included), untouched.
//!
//! GPT-2 fuses q, k and v in one `c_attn` module; kiln has three layers. Targeting `c_attn` gives
//! each of them an adapter of rank `r` (Llama's q/k/v arrangement): a peft adapter, whose one
//! `lora_A` the three share, loads exactly (its `A` copied to each, its `B` split by rows); see
//! [`hf::peft`](crate::hf::peft) for how three independently trained ones are written back.

use std::collections::BTreeMap;

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::error::{ModelError, Result};
use crate::fused::linear::linear;
use crate::gpt::Gpt;
use crate::hf::names::HfModules;
use crate::init::materialize;
use crate::linear::{LinearLayer, ToLinear, map_leaf};

/// Which layers get an adapter: peft's `target_modules`.
#[derive(Config, Debug, PartialEq)]
pub enum TargetModules {
    /// Module names: a layer is targeted when its full transformers name equals one or ends
    /// with `.` and one (`q_proj` targets every layer's `self_attn.q_proj`).
    Names(Vec<String>),
    /// A regular expression matched against the whole module name; `all-linear` (any case)
    /// means every linear layer but the output layer.
    Pattern(String),
}

/// How a new adapter's weights are drawn (peft's `init_lora_weights`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// peft's default (`true`): `A` Kaiming-uniform (`U(−1/√d_in, 1/√d_in)`, PyTorch's
    /// `nn.Linear` initialization), `B` zero, so the model starts as the base model.
    Kaiming,
    /// `"gaussian"`: `A` from `N(0, 1/r)`, `B` zero.
    Gaussian,
    /// `false`: `B` drawn too (`U(−1/√r, 1/√r)`), so the adapter changes the model from the
    /// start; for tests.
    Random,
}

/// A LoRA configuration, with peft's field names and defaults.
#[derive(Config, Debug)]
pub struct LoraConfig {
    /// The rank of the update.
    #[config(default = 8)]
    pub r: usize,
    /// The scaling numerator: the update is scaled by `lora_alpha / r` (`/ √r` with
    /// [`use_rslora`](Self::use_rslora)).
    #[config(default = 8.0)]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input.
    #[config(default = 0.0)]
    pub lora_dropout: f64,
    /// rsLoRA's scaling `lora_alpha / √r`, which keeps the update's size independent of the
    /// rank.
    #[config(default = false)]
    pub use_rslora: bool,
    /// The layers adapted; `None`: peft's default for the model type (GPT-2: `c_attn`; the
    /// Llama family: `q_proj`, `v_proj`).
    #[config(default = "None")]
    pub target_modules: Option<TargetModules>,
    /// Layers never adapted, matched as `target_modules` are.
    #[config(default = "None")]
    pub exclude_modules: Option<TargetModules>,
    /// Only the blocks with these indices (with [`TargetModules::Names`]).
    #[config(default = "None")]
    pub layers_to_transform: Option<Vec<usize>>,
    /// Another rank for the layers whose name matches a key (`(.*\.)?(key)$`).
    #[config(default = "BTreeMap::new()")]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Another `lora_alpha` for the layers whose name matches a key.
    #[config(default = "BTreeMap::new()")]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Modules trained whole beside the adapters: `lm_head` (an untied output layer) and the
    /// token embedding (`embed_tokens`, GPT-2's `wte`).
    #[config(default = "Vec::new()")]
    pub modules_to_save: Vec<String>,
    /// How new adapters are drawn.
    #[config(default = "LoraInit::Kaiming")]
    pub init_lora_weights: LoraInit,
}

/// The trainable part of a [`LoraLinear`]: `s·B·A·dropout(x)`, stored as Burn stores a linear
/// layer's weight (`[d_in, r]` and `[r, d_out]`; peft's `lora_A.weight` and `lora_B.weight`
/// are their transposes).
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `A`, `[d_in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// `B`, `[r, d_out]`.
    pub lora_b: Param<Tensor<2>>,
    /// Dropout on the input.
    pub dropout: Dropout,
    /// `s`: `lora_alpha / r` or `lora_alpha / √r`.
    pub scaling: f64,
}

impl LoraAdapter {
    /// A new adapter `d_in → d_out` of rank `r`, drawn as `init` says.
    pub fn new(
        d_in: usize,
        d_out: usize,
        r: usize,
        scaling: f64,
        dropout: f64,
        init: LoraInit,
        device: &Device,
    ) -> Self {
        let uniform = |fan_in: usize| {
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            Initializer::Uniform {
                min: -bound,
                max: bound,
            }
        };
        let a = match init {
            LoraInit::Gaussian => Initializer::Normal {
                mean: 0.0,
                std: 1.0 / r as f64,
            },
            LoraInit::Kaiming | LoraInit::Random => uniform(d_in),
        };
        let b = match init {
            LoraInit::Random => uniform(r),
            LoraInit::Kaiming | LoraInit::Gaussian => Initializer::Zeros,
        };
        materialize(Self {
            lora_a: a.init([d_in, r], device),
            lora_b: b.init([r, d_out], device),
            dropout: DropoutConfig::new(dropout).init(),
            scaling,
        })
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// `s·B·A·dropout(x)`: `[batch, seq, d_in] -> [batch, seq, d_out]`. The scaling multiplies
    /// the rank-`r` intermediate, the smallest tensor on the way.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let down = linear(self.dropout.forward(x), self.lora_a.val(), None);
        linear(down.mul_scalar(self.scaling), self.lora_b.val(), None)
    }

    /// The update as a weight, `s·A·B`, `[d_in, d_out]` (Burn's layout).
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a
            .val()
            .matmul(self.lora_b.val())
            .mul_scalar(self.scaling)
    }
}

/// A linear layer with a LoRA adapter: `base(x) + adapter(x)`. Without an adapter (a layer
/// not targeted) or once merged, the base alone.
#[derive(Module, Debug)]
pub struct LoraLinear<L: LinearLayer = Linear> {
    /// The frozen layer.
    pub base: L,
    /// The adapter, on targeted layers.
    pub adapter: Option<LoraAdapter>,
    /// Whether the update has been added into the base's weight ([`merge`](Self::merge)).
    pub merged: bool,
}

impl<L: LinearLayer> LinearLayer for LoraLinear<L> {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match (&self.adapter, self.merged) {
            (Some(adapter), false) => self.base.forward(x.clone()) + adapter.forward(x),
            _ => self.base.forward(x),
        }
    }

    fn d_out(&self) -> usize {
        self.base.d_out()
    }

    fn d_in(&self) -> usize {
        self.base.d_in()
    }
}

impl LoraLinear<Linear> {
    /// Adds the update into the base weight (peft's `merge_adapter`): the same function, one
    /// product per layer instead of three. Idempotent.
    pub fn merge(mut self) -> Self {
        if let (Some(adapter), false) = (&self.adapter, self.merged) {
            let delta = adapter.delta_weight().without_autodiff();
            self.base.weight = self.base.weight.map(|w| map_leaf(w, |w| w + delta));
            self.merged = true;
        }
        self
    }

    /// Takes the update back out of the base weight (peft's `unmerge_adapter`); equal to the
    /// weight before [`merge`](Self::merge) up to rounding.
    pub fn unmerge(mut self) -> Self {
        if let (Some(adapter), true) = (&self.adapter, self.merged) {
            let delta = adapter.delta_weight().without_autodiff();
            self.base.weight = self.base.weight.map(|w| map_leaf(w, |w| w - delta));
            self.merged = false;
        }
        self
    }
}

impl<L: ToLinear> LoraLinear<L> {
    /// The layer as a plain f32 `Linear` with the update added to its (dequantized) weight.
    pub fn merged_linear(&self, device: &Device) -> Linear {
        let mut dense = self.base.to_linear(device);
        if let (Some(adapter), false) = (&self.adapter, self.merged) {
            let delta = adapter.delta_weight().without_autodiff();
            dense.weight = dense.weight.map(|w| map_leaf(w, |w| w + delta));
        }
        dense
    }
}

/// How one layer of a model is adapted, resolved from a [`LoraConfig`] and the layer's
/// transformers name.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// The rank.
    pub r: usize,
    /// `lora_alpha` for this layer.
    pub alpha: f64,
    /// The scaling `s`.
    pub scaling: f64,
}

impl LoraConfig {
    /// Checks the settings that do not depend on a model.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(ModelError::InvalidConfig(format!(
                "LoRA `{field}`: {message}"
            )))
        };
        if self.r == 0 || self.r as u64 > crate::limits::WIDTH.max() {
            return bad(
                "r",
                format!("{} is not in 1..={}", self.r, crate::limits::WIDTH.max()),
            );
        }
        if !self.lora_alpha.is_finite() {
            return bad("lora_alpha", format!("{} is not finite", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(
                "lora_dropout",
                format!("{} is not in [0, 1)", self.lora_dropout),
            );
        }
        for (key, &r) in &self.rank_pattern {
            if r == 0 || r as u64 > crate::limits::WIDTH.max() {
                return bad("rank_pattern", format!("`{key}`: rank {r} is out of range"));
            }
            pattern_regex(key, "rank_pattern")?;
        }
        for (key, alpha) in &self.alpha_pattern {
            if !alpha.is_finite() {
                return bad("alpha_pattern", format!("`{key}`: {alpha} is not finite"));
            }
            pattern_regex(key, "alpha_pattern")?;
        }
        for (field, targets) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            if let Some(TargetModules::Pattern(p)) = targets
                && !p.eq_ignore_ascii_case("all-linear")
            {
                regex(&format!("^(?:{p})$"), field)?;
            }
        }
        Ok(())
    }

    /// The adapter of the layer named `module` (its transformers name), or `None` when the
    /// config does not target it. `layer` is the block index in the name, `output` whether it
    /// is the output layer (never targeted by `all-linear`). Errors for a pattern matching the
    /// layer ambiguously.
    pub fn plan(
        &self,
        module: &str,
        layer: Option<usize>,
        output: bool,
        defaults: &[&str],
    ) -> Result<Option<LayerPlan>> {
        if let Some(exclude) = &self.exclude_modules
            && matches(exclude, module, output, "exclude_modules")?
        {
            return Ok(None);
        }
        if self
            .modules_to_save
            .iter()
            .any(|m| module == m || module.ends_with(&format!(".{m}")))
        {
            return Ok(None);
        }
        let default;
        let targets = match &self.target_modules {
            Some(t) => t,
            None => {
                default = TargetModules::Names(defaults.iter().map(|s| s.to_string()).collect());
                &default
            }
        };
        if !matches(targets, module, output, "target_modules")? {
            return Ok(None);
        }
        if let (TargetModules::Names(_), Some(layers)) = (targets, &self.layers_to_transform)
            && !layer.is_some_and(|l| layers.contains(&l))
        {
            return Ok(None);
        }
        let r = pattern_value(&self.rank_pattern, module, "rank_pattern")?.unwrap_or(self.r);
        let alpha =
            pattern_value(&self.alpha_pattern, module, "alpha_pattern")?.unwrap_or(self.lora_alpha);
        let scaling = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        Ok(Some(LayerPlan { r, alpha, scaling }))
    }
}

fn regex(pattern: &str, field: &str) -> Result<regex::Regex> {
    regex::Regex::new(pattern).map_err(|e| {
        ModelError::InvalidConfig(format!(
            "LoRA `{field}`: `{pattern}` is not a regular expression kiln can run: {e}"
        ))
    })
}

/// peft's pattern-key regex: `key` matches a module named `key` or ending in `.key`.
fn pattern_regex(key: &str, field: &str) -> Result<regex::Regex> {
    regex(&format!(r"^(?:.*\.)?(?:{key})$"), field)
}

/// Whether `targets` names `module`, with peft's rules.
fn matches(targets: &TargetModules, module: &str, output: bool, field: &str) -> Result<bool> {
    Ok(match targets {
        TargetModules::Pattern(p) if p.eq_ignore_ascii_case("all-linear") => !output,
        TargetModules::Pattern(p) => regex(&format!("^(?:{p})$"), field)?.is_match(module),
        TargetModules::Names(names) => names
            .iter()
            .any(|n| module == n || module.ends_with(&format!(".{n}"))),
    })
}

/// The value of the one pattern key matching `module`; two keys matching with different
/// values is an error, since peft would pick by the order of the JSON object's keys.
fn pattern_value<T: Copy + PartialEq + std::fmt::Debug>(
    patterns: &BTreeMap<String, T>,
    module: &str,
    field: &str,
) -> Result<Option<T>> {
    let mut found: Option<(&str, T)> = None;
    for (key, &value) in patterns {
        if pattern_regex(key, field)?.is_match(module) {
            match found {
                Some((other, v)) if v != value => {
                    return Err(ModelError::InvalidConfig(format!(
                        "LoRA `{field}`: keys `{other}` and `{key}` both match `{module}` with \
                         different values"
                    )));
                }
                _ => found = Some((key, value)),
            }
        }
    }
    Ok(found.map(|(_, v)| v))
}

impl<L: LinearLayer> Gpt<L> {
    /// The model with LoRA adapters on the layers `config` targets, every other parameter
    /// frozen (no gradient, no optimizer state) except the modules of
    /// [`modules_to_save`](LoraConfig::modules_to_save).
    ///
    /// Layers are named as transformers names them ([`HfModules`]), so peft's configs select
    /// the same layers. Errors: invalid settings; a target that names no linear layer (peft
    /// errors the same way) or names a module kiln does not adapt (an embedding, a norm);
    /// `lm_head` in `modules_to_save` on a model whose output layer is the embedding.
    pub fn with_lora(self, config: &LoraConfig) -> Result<Gpt<LoraLinear<L>>> {
        config.validate()?;
        let names = HfModules::of(&self);
        check_targets(config, &names)?;
        let device = self.token_embedding.weight.device();
        let frozen = self.no_grad();
        let mut adapted = 0;
        let mut model = frozen.map_linears(|path, layer| -> Result<LoraLinear<L>> {
            let entry = names.linear(path)?;
            let plan = config.plan(
                &entry.module,
                entry.layer,
                entry.output,
                names.family.default_targets(),
            )?;
            let d_in = layer.d_in();
            let adapter = plan.map(|p| {
                adapted += 1;
                LoraAdapter::new(
                    d_in,
                    layer.d_out(),
                    p.r,
                    p.scaling,
                    config.lora_dropout,
                    config.init_lora_weights,
                    &device,
                )
            });
            Ok(LoraLinear {
                base: layer.clone(),
                adapter,
                merged: false,
            })
        })?;
        if adapted == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "LoRA `target_modules`: {:?} matches no linear layer of this {} model",
                config.target_modules,
                names.family.name()
            )));
        }
        for module in &config.modules_to_save {
            model = names.unfreeze(model, module)?;
        }
        Ok(model)
    }
}

/// Each name of a [`TargetModules::Names`] list must be a linear layer of the model (or end
/// one's name): a name of a module kiln does not adapt is refused by name.
fn check_targets(config: &LoraConfig, names: &HfModules) -> Result<()> {
    for (field, targets) in [
        ("target_modules", &config.target_modules),
        ("exclude_modules", &config.exclude_modules),
    ] {
        let Some(TargetModules::Names(list)) = targets else {
            continue;
        };
        for name in list {
            if let Some(other) = names.non_linear(name) {
                return Err(ModelError::InvalidConfig(format!(
                    "LoRA `{field}`: `{name}` is {other}; kiln adapts linear layers only"
                )));
            }
        }
    }
    for module in &config.modules_to_save {
        names.check_saved(module)?;
    }
    Ok(())
}

impl<L: ToLinear> Gpt<LoraLinear<L>> {
    /// The model with every update added into its layers' weights, as a plain f32 [`Gpt`]
    /// (peft's `merge_and_unload`): same outputs, no adapter cost; an int8 base is dequantized.
    /// Parameters keep their gradient settings' default (trainable), as a loaded model has.
    pub fn merge_and_unload(&self) -> Gpt {
        let device = self.token_embedding.weight.device();
        let merged = self
            .map_linears(|_, layer| Ok::<_, std::convert::Infallible>(layer.merged_linear(&device)))
            .unwrap_or_else(|never| match never {});
        merged.set_require_grad(true)
    }
}

impl Gpt<LoraLinear<Linear>> {
    /// Adds every update into its base weight in place (peft's `merge_adapter`).
    pub fn merge_adapters(self) -> Self {
        self.map_each(LoraLinear::merge)
    }

    /// Takes every update back out (peft's `unmerge_adapter`).
    pub fn unmerge_adapters(self) -> Self {
        self.map_each(LoraLinear::unmerge)
    }

    /// Every layer (the blocks' and the untied head) replaced by `f(layer)`, in place.
    fn map_each(mut self, f: fn(LoraLinear) -> LoraLinear) -> Self {
        for block in &mut self.blocks {
            for (_, layer) in block.linears_mut() {
                *layer = f(std::mem::replace(layer, empty_lora()));
            }
        }
        self.lm_head = self.lm_head.take().map(f);
        self
    }
}

/// A placeholder swapped in while a layer is moved out and back.
fn empty_lora() -> LoraLinear<Linear> {
    LoraLinear {
        base: Linear {
            weight: Param::from_tensor(Tensor::empty([0, 0], &Device::default())),
            bias: None,
        },
        adapter: None,
        merged: false,
    }
}

impl<L: LinearLayer> Gpt<LoraLinear<L>> {
    /// The adapters by parameter path of their layer (`blocks.0.attn.query`, `lm_head`).
    pub fn adapters(&self) -> Vec<(String, &LoraAdapter)> {
        self.linears()
            .into_iter()
            .filter_map(|(path, layer)| layer.adapter.as_ref().map(|a| (path, a)))
            .collect()
    }

    /// Parameters that train (adapters and saved modules) and parameters in all, as peft's
    /// `print_trainable_parameters` counts them (an int8 base's weights included).
    pub fn trainable_parameters(&self) -> (usize, usize) {
        use kiln_dist::flat::Layout;
        // Weights a base layer holds outside Burn's parameters (int8) are not visited: each
        // layer adds what its own count has beyond its visited parameters.
        let host: usize = self
            .linears()
            .into_iter()
            .map(|(_, layer)| Module::num_params(&layer.base) - Layout::of(&layer.base).len)
            .sum();
        (Layout::trainable(self).len, Layout::of(self).len + host)
    }
}
