//! Metrics appended as JSON lines to `metrics.jsonl` in the run folder: one object per logged
//! training step and per evaluation, readable by any plotting tool.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::evaluate::EvalMetrics;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// The optimizer step the values belong to (1-based: after that many steps).
    pub step: usize,
    /// `train` or `eval`.
    pub split: String,
    /// Mean loss.
    pub loss: f64,
    /// Learning rate of the step (train lines).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    /// Global gradient norm before clipping (train lines).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    /// Loss scale (f16 train lines).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss_scale: Option<f64>,
    /// Loss-carrying units per second since the last train line.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub units_per_s: Option<f64>,
    /// Perplexity (eval lines).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub perplexity: Option<f64>,
    /// Accuracy (eval lines, when the model counts correct predictions).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
}

impl MetricsRecord {
    /// A train line: the mean loss of the steps since the last one, with the step's learning
    /// rate, gradient norm and loss scale, and the throughput.
    pub fn train(
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        loss_scale: Option<f64>,
        units_per_s: Option<f64>,
    ) -> Self {
        Self {
            step,
            split: "train".into(),
            loss,
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            loss_scale,
            units_per_s,
            perplexity: None,
            accuracy: None,
        }
    }

    /// An eval line.
    pub fn eval(step: usize, metrics: &EvalMetrics) -> Self {
        Self {
            step,
            split: "eval".into(),
            loss: metrics.loss,
            lr: None,
            grad_norm: None,
            loss_scale: None,
            units_per_s: None,
            perplexity: Some(metrics.perplexity),
            accuracy: metrics.accuracy,
        }
    }
}

/// The log's file name in the run folder.
pub(crate) const METRICS_FILE: &str = "metrics.jsonl";

/// Appends records to a JSONL file.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log at `run_dir/metrics.jsonl`. When resuming from `resume_step`, lines written
    /// after that step by the interrupted run are dropped, so the log reads as one run.
    pub fn open(run_dir: &Path, resume_step: Option<usize>) -> Result<Self> {
        fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let path = run_dir.join(METRICS_FILE);
        let kept = match resume_step {
            Some(step) => read_metrics(&path)?
                .into_iter()
                .filter(|r| r.step <= step)
                .collect(),
            None => Vec::new(),
        };
        let mut text = String::new();
        for record in &kept {
            text.push_str(&serde_json::to_string(record).expect("metrics serialize"));
            text.push('\n');
        }
        kiln_base::store::write_atomic(&path, text.as_bytes())?;
        Ok(Self { path })
    }

    /// Appends one record.
    pub fn append(&self, record: &MetricsRecord) -> Result<()> {
        let mut file = kiln_base::files::append(&self.path)?;
        let line = serde_json::to_string(record).expect("metrics serialize");
        writeln!(file, "{line}").map_err(|e| TrainError::io(&self.path, e))
    }

    /// Everything logged so far.
    pub fn records(&self) -> Result<Vec<MetricsRecord>> {
        read_metrics(&self.path)
    }
}

/// Reads a `metrics.jsonl`; a missing file is empty, a torn last line (a run killed while
/// writing it) is ignored.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(Vec::new());
    }
    let (file, _) = kiln_base::files::open_regular(path)?;
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if let Ok(record) = serde_json::from_str(&line) {
            records.push(record);
        }
    }
    Ok(records)
}
