//! transformers' module names for the parts of a kiln [`Gpt`]: what peft's `target_modules`,
//! `modules_to_save` and adapter files name (`model.layers.0.self_attn.q_proj`,
//! `transformer.h.0.attn.c_attn`, `lm_head`).
//!
//! The family is the one the model is exported as ([`HfExport`](super::HfExport)): with
//! RMSNorm the Llama family's names (Qwen2 and Mistral use Llama's), else GPT-2's.

use burn::module::Module;

use super::llama::hf_linear_name;
use crate::error::{ModelError, Result};
use crate::gpt::Gpt;
use crate::linear::LinearLayer;
use crate::lora::LoraLinear;
use crate::norm::NormKind;

/// The naming family of a decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `GPT2LMHeadModel`.
    Gpt2,
    /// `LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`.
    Llama,
}

impl Family {
    /// The family's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "GPT-2",
            Family::Llama => "Llama-family",
        }
    }

    /// peft's default `target_modules` for the family
    /// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub fn default_targets(self) -> &'static [&'static str] {
        match self {
            Family::Gpt2 => &["c_attn"],
            Family::Llama => &["q_proj", "v_proj"],
        }
    }

    /// The module of the token embedding.
    pub fn embedding(self) -> &'static str {
        match self {
            Family::Gpt2 => "transformer.wte",
            Family::Llama => "model.embed_tokens",
        }
    }
}

/// Which part of a transformers module a kiln layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole module.
    Whole,
    /// The `index`-th of `count` equal slices of the module's outputs (GPT-2's `c_attn` is
    /// q|k|v; kiln's query, key and value layers are its thirds).
    Columns {
        /// Which slice.
        index: usize,
        /// How many.
        count: usize,
    },
}

/// One linear layer of a kiln model and its transformers module.
#[derive(Clone, Debug, PartialEq)]
pub struct HfLinear {
    /// kiln's parameter path of the layer (`blocks.0.attn.query`, `lm_head`).
    pub kiln: String,
    /// transformers' module name (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// Which part of that module the layer is.
    pub part: Part,
    /// The block index, for `layers_to_transform`.
    pub layer: Option<usize>,
    /// Whether it is the output layer (`all-linear` leaves it out, as peft does).
    pub output: bool,
    /// Whether transformers stores it as GPT-2's `Conv1D` (`[d_in, d_out]`, peft's
    /// `fan_in_fan_out`).
    pub conv1d: bool,
}

/// The transformers names of a kiln decoder's modules.
#[derive(Clone, Debug)]
pub struct HfModules {
    /// The naming family.
    pub family: Family,
    /// Every linear layer, in [`Gpt::linears`] order.
    pub linears: Vec<HfLinear>,
    /// The other modules (embeddings, norms, a tied output layer), with what each is.
    pub others: Vec<(String, &'static str)>,
    /// Whether the output layer is the token embedding.
    pub tied: bool,
}

impl HfModules {
    /// The names of `gpt`'s modules.
    pub fn of<L: LinearLayer>(gpt: &Gpt<L>) -> Self {
        let family = if gpt.final_norm.kind == NormKind::RmsNorm {
            Family::Llama
        } else {
            Family::Gpt2
        };
        let mut linears = Vec::new();
        let mut others = vec![(family.embedding().to_string(), "the token embedding")];
        for (i, block) in gpt.blocks.iter().enumerate() {
            for (name, _, _) in block.linears() {
                let (module, part) = match family {
                    Family::Llama => (
                        format!("model.layers.{i}.{}", hf_linear_name(&name).unwrap_or("")),
                        Part::Whole,
                    ),
                    Family::Gpt2 => {
                        let (module, part) = gpt2_linear(&name);
                        (format!("transformer.h.{i}.{module}"), part)
                    }
                };
                linears.push(HfLinear {
                    kiln: format!("blocks.{i}.{name}"),
                    module,
                    part,
                    layer: Some(i),
                    output: false,
                    conv1d: family == Family::Gpt2,
                });
            }
            let norms: [&str; 2] = match family {
                Family::Llama => ["input_layernorm", "post_attention_layernorm"],
                Family::Gpt2 => ["ln_1", "ln_2"],
            };
            let prefix = match family {
                Family::Llama => format!("model.layers.{i}"),
                Family::Gpt2 => format!("transformer.h.{i}"),
            };
            for norm in norms {
                others.push((format!("{prefix}.{norm}"), "a norm"));
            }
        }
        match family {
            Family::Llama => others.push(("model.norm".into(), "a norm")),
            Family::Gpt2 => {
                others.push(("transformer.ln_f".into(), "a norm"));
                others.push(("transformer.wpe".into(), "the position embedding"));
            }
        }
        let tied = gpt.lm_head.is_none();
        if tied {
            others.push((
                "lm_head".into(),
                "the output layer, tied to the token embedding",
            ));
        } else {
            linears.push(HfLinear {
                kiln: "lm_head".into(),
                module: "lm_head".into(),
                part: Part::Whole,
                layer: None,
                output: true,
                conv1d: false,
            });
        }
        Self {
            family,
            linears,
            others,
            tied,
        }
    }

    /// The layer at kiln path `path`.
    pub fn linear(&self, path: &str) -> Result<&HfLinear> {
        self.linears
            .iter()
            .find(|l| l.kiln == path)
            .ok_or_else(|| ModelError::InvalidConfig(format!("no linear layer `{path}`")))
    }

    /// What a `target_modules` name refers to when it names no linear layer but another module
    /// (`embed_tokens`: "the token embedding"); `None` when it names a linear layer or nothing.
    pub fn non_linear(&self, name: &str) -> Option<String> {
        let named = |module: &str| module == name || module.ends_with(&format!(".{name}"));
        if self.linears.iter().any(|l| named(&l.module)) {
            return None;
        }
        self.others
            .iter()
            .find(|(m, _)| named(m))
            .map(|(m, what)| format!("{what} (`{m}`)"))
    }

    /// Checks a `modules_to_save` entry: the untied output layer or the token embedding of an
    /// untied model; anything else is refused by name.
    pub fn check_saved(&self, module: &str) -> Result<()> {
        let refuse = |why: String| {
            Err(ModelError::InvalidConfig(format!(
                "LoRA `modules_to_save`: `{module}` {why}"
            )))
        };
        match self.saved(module) {
            Some(_) if self.tied => refuse(
                "is the token embedding or the output layer of a model that ties them; peft \
                 would train an untied copy, which this model cannot hold"
                    .into(),
            ),
            Some(_) => Ok(()),
            None => refuse(format!(
                "is not supported: kiln trains the output layer (`lm_head`) and the token \
                 embedding (`{}`) whole",
                self.family.embedding()
            )),
        }
    }

    /// Which whole-trained module `module` names.
    pub fn saved(&self, module: &str) -> Option<Saved> {
        let named = |full: &str| full == module || full.ends_with(&format!(".{module}"));
        if named("lm_head") {
            Some(Saved::LmHead)
        } else if named(self.family.embedding()) {
            Some(Saved::Embedding)
        } else {
            None
        }
    }

    /// `model` with the module of a `modules_to_save` entry trainable again.
    pub fn unfreeze<L: LinearLayer>(
        &self,
        mut model: Gpt<LoraLinear<L>>,
        module: &str,
    ) -> Result<Gpt<LoraLinear<L>>> {
        self.check_saved(module)?;
        match self.saved(module) {
            Some(Saved::LmHead) => {
                model.lm_head = model.lm_head.map(|h| h.set_require_grad(true));
            }
            Some(Saved::Embedding) => {
                model.token_embedding = model.token_embedding.set_require_grad(true);
            }
            None => {}
        }
        Ok(model)
    }
}

/// A module trained whole (peft's `modules_to_save`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The output layer.
    LmHead,
    /// The token embedding.
    Embedding,
}

/// GPT-2's module of a kiln layer name below a block.
fn gpt2_linear(name: &str) -> (&'static str, Part) {
    let third = |index| Part::Columns { index, count: 3 };
    match name {
        "attn.query" => ("attn.c_attn", third(0)),
        "attn.key" => ("attn.c_attn", third(1)),
        "attn.value" => ("attn.c_attn", third(2)),
        "attn.out" => ("attn.c_proj", Part::Whole),
        "ffn.up" => ("mlp.c_fc", Part::Whole),
        "ffn.down" => ("mlp.c_proj", Part::Whole),
        _ => ("", Part::Whole),
    }
}
