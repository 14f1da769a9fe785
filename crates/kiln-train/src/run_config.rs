//! One run, one file: the model to build, the data to read, the optimizer, the learning-rate
//! schedule and the loop's settings, as JSON or TOML.
//!
//! The [`Trainer`](crate::Trainer) builds from a [`RunConfig`]: it sizes the schedule from the
//! run's total steps (so the step count is stated once), prepares gradients the way the
//! optimizer asks (LAMB's global clipping), writes the config into the run folder and every
//! checkpoint, and refuses to resume a checkpoint written with a different config, naming the
//! first field that differs.
//!
//! A file may give only the fields it changes: [`RunConfig::merge_file`] lays it over a base
//! (for example a recipe's defaults), and a field the base does not have is an error, so a typo
//! is never silently ignored.

use std::path::Path;

use kiln_optim::{OptimizerConfig, ScheduleConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::TrainerConfig;
use crate::error::{Result, TrainError};

/// Fields that say how a run is watched and stored, not what it computes: they may change
/// when a run resumes.
const OPERATIONAL: [&str; 12] = [
    "trainer.resume",
    // The parallel layout may change on resume as long as the global batch stays the same
    // (checked on its own: data-parallel ranks × grad_accumulation).
    "trainer.grad_accumulation",
    "trainer.data_parallel",
    "trainer.model_parallel",
    "trainer.allow_data_change",
    "trainer.overwrite",
    "trainer.quiet",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.checkpoint_dir",
    "trainer.run_dir",
];

/// Everything a training run is. `M` is the model's config (kiln-train knows no model), `D`
/// the data settings of the program that reads the data (use `()` for none).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "M: Serialize, D: Serialize",
    deserialize = "M: DeserializeOwned, D: DeserializeOwned"
))]
pub struct RunConfig<M, D = ()> {
    /// The model to build.
    pub model: M,
    /// Where the data comes from and how it is cut.
    pub data: D,
    /// The optimizer (its learning rate comes from the schedule).
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule; a `total_steps` left unset is the run's length.
    pub schedule: ScheduleConfig,
    /// The loop: steps, batch size, accumulation, precision, evaluation, checkpoints.
    pub trainer: TrainerConfig,
}

impl<M, D> RunConfig<M, D>
where
    M: Serialize + DeserializeOwned,
    D: Serialize + DeserializeOwned,
{
    /// A run from its parts.
    pub fn new(
        model: M,
        data: D,
        optimizer: impl Into<OptimizerConfig>,
        schedule: impl Into<ScheduleConfig>,
        trainer: TrainerConfig,
    ) -> Self {
        Self {
            model,
            data,
            optimizer: optimizer.into(),
            schedule: schedule.into(),
            trainer,
        }
    }

    /// The config as JSON, the form checkpoints keep.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a run config serializes to JSON")
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a run config serializes to JSON")
    }

    /// TOML. TOML has no null: fields that are `None` (and data settings that are `()`) are
    /// left out, and read back as such.
    pub fn to_toml(&self) -> Result<String> {
        let mut value = self.to_value();
        strip_nulls(&mut value);
        toml::to_string_pretty(&value).map_err(|e| TrainError::RunConfig {
            path: "<toml>".into(),
            reason: e.to_string(),
        })
    }

    /// Writes the config to `path`, as TOML for `.toml` and JSON otherwise, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = match Format::of(path)? {
            Format::Toml => self.to_toml()?,
            Format::Json => self.to_json(),
        };
        Ok(kiln_base::store::write_atomic(path, text.as_bytes())?)
    }

    /// Reads a complete config from a `.json` or `.toml` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        from_value(read_value(path)?, path)
    }

    /// This config with the fields of the (possibly partial) `.json` or `.toml` file at `path`
    /// laid over it. A field this config does not have is an error naming it; an enum (the
    /// optimizer, the schedule) switched to another variant takes the file's variant whole.
    pub fn merge_file(&self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut merged = self.to_value();
        merge(&mut merged, read_value(path)?, "").map_err(|reason| TrainError::RunConfig {
            path: path.into(),
            reason,
        })?;
        from_value(merged, path)
    }
}

/// The first field, other than the operational ones, whose value differs between two run
/// configs in JSON form: `(dotted path, saved value, current value)`.
pub fn first_difference(saved: &Value, current: &Value) -> Option<(String, String, String)> {
    fn walk(a: &Value, b: &Value, path: &str) -> Option<(String, String, String)> {
        if OPERATIONAL.contains(&path) {
            return None;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    let child = join(path, k);
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &child,
                    )
                })
            }
            _ if a == b => None,
            _ => Some((path.to_string(), a.to_string(), b.to_string())),
        }
    }
    walk(saved, current, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Lays `over` onto `base`: objects field by field, anything else replaced.
fn merge(base: &mut Value, over: Value, path: &str) -> std::result::Result<(), String> {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) if !is_other_variant(base, &over) => {
            for (key, value) in over {
                let child = join(path, &key);
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value, &child)?,
                    None => {
                        let known: Vec<&str> = base.keys().map(String::as_str).collect();
                        return Err(format!(
                            "unknown field `{child}` (known here: {})",
                            known.join(", ")
                        ));
                    }
                }
            }
            Ok(())
        }
        (slot, value) => {
            *slot = value;
            Ok(())
        }
    }
}

/// Whether two objects are different variants of an externally tagged enum (one key each,
/// a variant name): the file's variant then replaces the base's whole.
fn is_other_variant(
    base: &serde_json::Map<String, Value>,
    over: &serde_json::Map<String, Value>,
) -> bool {
    let variant = |m: &serde_json::Map<String, Value>| {
        (m.len() == 1)
            .then(|| m.keys().next().cloned())
            .flatten()
            .filter(|k| k.starts_with(|c: char| c.is_ascii_uppercase()))
    };
    matches!((variant(base), variant(over)), (Some(a), Some(b)) if a != b)
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Toml,
}

impl Format {
    fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Ok(Format::Json),
            Some("toml") => Ok(Format::Toml),
            _ => Err(TrainError::RunConfig {
                path: path.into(),
                reason: "a run config is a .json or a .toml file".into(),
            }),
        }
    }
}

fn read_value(path: &Path) -> Result<Value> {
    let bad = |reason: String| TrainError::RunConfig {
        path: path.into(),
        reason,
    };
    let format = Format::of(path)?;
    let bytes = kiln_base::limits::read_bounded(path, &crate::limits::TEXT_FILE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    match format {
        Format::Json => serde_json::from_str(&text).map_err(|e| bad(e.to_string())),
        Format::Toml => {
            let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
            // JSON has no NaN or infinity, and serde_json turns them into null: in a TOML file
            // `clip_grad_norm = nan` would read as "unset". A setting is unset by leaving it out.
            if let Some(field) = non_finite_float(&toml::Value::Table(table.clone()), "") {
                return Err(bad(format!(
                    "`{field}` is not a finite number (leave a setting out to leave it unset)"
                )));
            }
            serde_json::to_value(table).map_err(|e| bad(e.to_string()))
        }
    }
}

/// The dotted path of the first NaN or infinite float in `value`.
fn non_finite_float(value: &toml::Value, path: &str) -> Option<String> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(path.to_string()),
        toml::Value::Table(table) => table
            .iter()
            .find_map(|(k, v)| non_finite_float(v, &join(path, k))),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite_float(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Removes the null fields of every object (TOML cannot write them).
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn from_value<T: DeserializeOwned>(mut value: Value, path: &Path) -> Result<T> {
    // Data settings of `()` are null in JSON and absent in TOML.
    if let Value::Object(map) = &mut value {
        map.entry("data").or_insert(Value::Null);
    }
    serde_path_to_error::deserialize(value).map_err(|e| TrainError::RunConfig {
        path: path.into(),
        reason: format!("`{}`: {}", e.path(), e.inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_optim::{AdamWConfig, LambConfig, WarmupDecayConfig};
    // Burn's Config derive needs the standard Result, not kiln-train's alias.
    use std::result::Result;

    /// A stand-in for a model config and a program's data settings.
    #[derive(burn::config::Config, Debug, PartialEq)]
    struct Tiny {
        width: usize,
        #[config(default = "None")]
        dropout: Option<f64>,
    }

    fn recipe() -> RunConfig<Tiny, String> {
        RunConfig::new(
            Tiny::new(8),
            "addition".to_string(),
            AdamWConfig::new().with_weight_decay(0.1),
            WarmupDecayConfig::cosine(3e-3, 10, 100),
            TrainerConfig::new().with_max_steps(Some(100)),
        )
    }

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_run_without_data_settings_round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunConfig::new(
            Tiny::new(4),
            (),
            AdamWConfig::new(),
            WarmupDecayConfig::cosine(1e-3, 2, None),
            TrainerConfig::new().with_max_steps(Some(10)),
        );
        let path = dir.path().join("run.toml");
        run.save(&path).unwrap();
        let back = RunConfig::<Tiny, ()>::load(&path).unwrap();
        assert_eq!(back.to_value(), run.to_value());
    }

    #[test]
    fn json_and_toml_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = recipe();
        for name in ["run.json", "run.toml"] {
            let path = dir.path().join(name);
            run.save(&path).unwrap();
            let back = RunConfig::<Tiny, String>::load(&path).unwrap();
            assert_eq!(back.to_value(), run.to_value(), "{name}");
        }
    }

    #[test]
    fn a_partial_file_overrides_only_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "run.toml",
            "[trainer]\nbatch_size = 8\nmax_steps = 300\n\n[optimizer.AdamW]\nbeta_2 = 0.95\n\n[model]\ndropout = 0.1\n",
        );
        let merged = recipe().merge_file(&path).unwrap();
        assert_eq!(merged.trainer.batch_size, 8);
        assert_eq!(merged.trainer.max_steps, Some(300));
        assert_eq!(merged.model, Tiny::new(8).with_dropout(Some(0.1)));
        match &merged.optimizer {
            OptimizerConfig::AdamW(c) => {
                assert_eq!(c.beta_2, 0.95);
                assert_eq!(c.weight_decay, 0.1, "kept from the base");
            }
            other => panic!("{other:?}"),
        }
        let expected = recipe();
        assert_eq!(merged.trainer.seed, expected.trainer.seed);
        assert_eq!(
            merged.to_value()["schedule"],
            expected.to_value()["schedule"]
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let typo = file(&dir, "typo.json", r#"{"trainer": {"batchsize": 8}}"#);
        let err = recipe().merge_file(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown field `trainer.batchsize`"), "{err}");
        let bad = file(&dir, "bad.toml", "[trainer]\nbatch_size = \"eight\"\n");
        let err = recipe().merge_file(&bad).unwrap_err().to_string();
        assert!(err.contains("trainer.batch_size"), "{err}");
        let ext = file(&dir, "run.yaml", "trainer: {}");
        assert!(recipe().merge_file(&ext).is_err());
    }

    #[test]
    fn switching_the_optimizer_takes_the_files_variant_whole() {
        let dir = tempfile::tempdir().unwrap();
        let lamb = serde_json::json!({ "optimizer": serde_json::to_value(OptimizerConfig::from(LambConfig::new())).unwrap() });
        let path = file(&dir, "lamb.json", &lamb.to_string());
        let merged = recipe().merge_file(&path).unwrap();
        assert!(matches!(merged.optimizer, OptimizerConfig::Lamb(_)));
    }

    #[test]
    fn the_first_difference_skips_operational_fields() {
        let a = recipe();
        let mut b = recipe();
        b.trainer.log_every = 1;
        b.trainer.resume = true;
        b.trainer.run_dir = Some("elsewhere".into());
        assert_eq!(first_difference(&a.to_value(), &b.to_value()), None);
        b.model.width = 16;
        assert_eq!(
            first_difference(&a.to_value(), &b.to_value()),
            Some(("model.width".into(), "8".into(), "16".into()))
        );
    }
}
