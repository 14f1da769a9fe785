//! Parameter groups selected by module path: which parameters get weight decay, LAMB's layer
//! adaptation, and which learning-rate multiplier.
//!
//! Paths are the ones Burn's `ModuleOptimizer` sees: field names joined by dots, `Vec` indices
//! as numbers, e.g. `blocks.0.attn_norm.gamma`, `position_embedding.weight`,
//! `embeddings.position.weight`, `lm_head.bias`. Every parameter's settings are resolved once at
//! `init`: start from the optimizer's own settings, then the [`DEFAULT_NO_DECAY`] convention, then
//! each [`GroupRule`] in order (later rules win, field by field). Parameters with equal settings
//! share one Burn `ParamGroup` (matched by exact path), so optimizer records stay routable.

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{ModuleOptimizer, Optimizer};
use burn::tensor::Tensor;

use crate::error::{OptimError, non_negative};
use crate::regularization::Regularization;

/// The BERT/GPT convention (Devlin et al.; GPT-2/3; HF `no_decay`): no weight decay, and no LAMB
/// layer adaptation, on biases (incl. LayerNorm's `beta`), LayerNorm/RMSNorm weights and position
/// embeddings. Regular expressions searched in the parameter path.
pub const DEFAULT_NO_DECAY: [&str; 3] = [
    // `lm_head.bias`, `decoder_bias`.
    r"bias$",
    // `blocks.0.attn_norm.gamma`, `final_norm.beta`, `embeddings.norm.gamma`, HF `ln_f.weight`.
    r"(^|\.)([^.]*[Nn]orm[^.]*|ln[^.]*)\.(gamma|beta|weight|bias)$",
    // `position_embedding.weight` (Gpt), `embeddings.position.weight` (Bert), HF `wpe.weight`.
    r"(^|\.)([^.]*position[^.]*|wpe)\.weight$",
];

/// The [`DEFAULT_NO_DECAY`] patterns as owned strings (the configs' default).
pub fn default_no_decay() -> Vec<String> {
    DEFAULT_NO_DECAY.iter().map(|p| p.to_string()).collect()
}

/// Overrides for the parameters whose path matches `pattern` (a regex, searched anywhere in the
/// path). Unset fields keep what the parameter had before this rule.
#[derive(Config, Debug, PartialEq)]
pub struct GroupRule {
    /// Regular expression searched in the parameter path, e.g. `^blocks\.0\.` or `lm_head`.
    pub pattern: String,
    /// Multiplies the scheduled learning rate for these parameters (layer-wise lr decay,
    /// a frozen embedding with 0.0).
    pub lr_multiplier: Option<f64>,
    /// Replaces the regularization for these parameters.
    pub regularization: Option<Regularization>,
    /// LAMB only: whether the trust ratio is applied.
    pub layer_adaptation: Option<bool>,
}

/// The settings one parameter ends up with.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSettings {
    /// Multiplies the scheduled learning rate.
    pub lr_multiplier: f64,
    /// The regularization terms.
    pub regularization: Regularization,
    /// LAMB's trust ratio on or off (ignored by the other optimizers).
    pub layer_adaptation: bool,
}

impl GroupSettings {
    /// The optimizer-wide settings: multiplier 1, the given regularization, adaptation on.
    pub fn new(regularization: Regularization) -> Self {
        Self {
            lr_multiplier: 1.0,
            regularization,
            layer_adaptation: true,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), OptimError> {
        non_negative("lr_multiplier", self.lr_multiplier)?;
        self.regularization.validate()
    }
}

/// Every float parameter's id and dotted path, in visiting order.
#[derive(Default)]
struct PathCollector {
    stack: Vec<String>,
    params: Vec<(ParamId, String)>,
}

impl ModuleVisitor for PathCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.params.push((param.id, self.stack.join(".")));
    }
}

/// The dotted path of every float parameter of `module`, as `ModuleOptimizer` names them.
pub fn param_paths<M: Module>(module: &M) -> Vec<String> {
    collect(module).into_iter().map(|(_, path)| path).collect()
}

fn collect<M: Module>(module: &M) -> Vec<(ParamId, String)> {
    let mut collector = PathCollector::default();
    module.visit(&mut collector);
    collector.params
}

fn regex_group(pattern: &str) -> Result<ParamGroup, OptimError> {
    ParamGroup::from_regex(pattern).map_err(|e| OptimError::InvalidPattern {
        pattern: pattern.to_string(),
        reason: format!("{e:?}"),
    })
}

/// Resolves the settings of every parameter: `(path, settings)` in visiting order.
///
/// Errors: a rule whose pattern matches no parameter, an invalid regex, bad settings.
pub fn resolve_groups<M: Module>(
    module: &M,
    base: &GroupSettings,
    no_decay: &[String],
    rules: &[GroupRule],
) -> Result<Vec<(String, GroupSettings)>, OptimError> {
    base.validate()?;
    let params = collect(module);
    let no_decay = no_decay
        .iter()
        .map(|p| regex_group(p))
        .collect::<Result<Vec<_>, _>>()?;
    let rule_groups = rules
        .iter()
        .map(|rule| regex_group(&rule.pattern))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rule_used = vec![false; rules.len()];

    let mut resolved = Vec::with_capacity(params.len());
    for (id, path) in params {
        let mut settings = base.clone();
        // The convention, deliberately unchecked: a model without biases is fine.
        if no_decay.iter().any(|g| g.matches(&id, Some(&path))) {
            settings.regularization = Regularization::new();
            settings.layer_adaptation = false;
        }
        for (i, (rule, group)) in rules.iter().zip(&rule_groups).enumerate() {
            if group.matches(&id, Some(&path)) {
                rule_used[i] = true;
                if let Some(m) = rule.lr_multiplier {
                    settings.lr_multiplier = m;
                }
                if let Some(r) = &rule.regularization {
                    settings.regularization = r.clone();
                }
                if let Some(a) = rule.layer_adaptation {
                    settings.layer_adaptation = a;
                }
            }
        }
        settings.validate()?;
        resolved.push((path, settings));
    }

    if let Some(unused) = rule_used.iter().position(|used| !used) {
        return Err(OptimError::PatternMatchesNothing {
            pattern: rules[unused].pattern.clone(),
            example: resolved
                .first()
                .map(|(path, _)| path.clone())
                .unwrap_or_else(|| "<the model has no parameters>".to_string()),
        });
    }
    Ok(resolved)
}

/// Builds a `ModuleOptimizer` with one per-tensor optimizer per distinct settings.
///
/// `make` turns settings into the per-tensor optimizer (the optimizer-wide hyperparameters are
/// captured by the closure). The optimizer-wide settings form the fallback group (Burn requires
/// a first group matching everything); every other distinct settings value gets a `ParamGroup`
/// of exact paths.
pub(crate) fn build_module_optimizer<M: Module, O: Optimizer>(
    module: &M,
    base: GroupSettings,
    no_decay: &[String],
    rules: &[GroupRule],
    make: impl Fn(GroupSettings) -> O,
) -> Result<ModuleOptimizer, OptimError> {
    let resolved = resolve_groups(module, &base, no_decay, rules)?;
    let mut distinct: Vec<(GroupSettings, Vec<String>)> = Vec::new();
    for (path, settings) in resolved {
        if settings == base {
            continue;
        }
        match distinct.iter_mut().find(|(s, _)| *s == settings) {
            Some((_, paths)) => paths.push(path),
            None => distinct.push((settings, vec![path])),
        }
    }
    let mut optimizer = ModuleOptimizer::from(make(base));
    for (settings, paths) in distinct {
        optimizer = optimizer.with_group(ParamGroup::from_paths(paths), make(settings), None);
    }
    Ok(optimizer)
}
