//! What a run prints and logs: the progress display on every run, and on rank 0 of a run with
//! a run folder, `run.json`, `metrics.jsonl` and, at the end, `plot.svg`.

use std::path::PathBuf;

use crate::checkpoint::TrainerState;
use crate::error::Result;
use crate::evaluate::EvalMetrics;
use crate::metrics_log::{MetricsLog, MetricsRecord};
use crate::plot::training_plot;
use crate::progress::Progress;
use crate::step::StepReport;

/// The run's config, beside `metrics.jsonl` in the run folder.
const RUN_FILE: &str = "run.json";

/// The progress display and the metrics log of one run.
pub(crate) struct Logger {
    progress: Progress,
    /// What the progress display was made with: `(total, units, quiet)`.
    display: (usize, &'static str, bool),
    /// The run folder and its log, on the rank that writes them.
    log: Option<(PathBuf, MetricsLog)>,
    log_every: usize,
    /// The losses of the steps taken since the last train line, summed, and their count.
    since_last_line: (f64, usize),
    /// Whether the parameters and optimizer state per rank have been printed.
    pub memory_reported: bool,
}

impl Logger {
    /// Progress over the steps `start..total` of a loop whose loss averages over `units`;
    /// silent with `quiet`. A train line every `log_every` steps.
    pub fn new(
        start: usize,
        total: usize,
        units: &'static str,
        quiet: bool,
        log_every: usize,
    ) -> Self {
        Self {
            progress: Progress::new(start, total, units, quiet),
            display: (total, units, quiet),
            log: None,
            log_every,
            since_last_line: (0.0, 0),
            memory_reported: false,
        }
    }

    /// The progress display of a run resumed at `step`.
    pub fn resume_at(&mut self, step: usize) {
        let (total, units, quiet) = self.display;
        self.progress = Progress::new(step, total, units, quiet);
    }

    /// Starts the log in `dir` (lines after `resumed_from` dropped) and writes the run's
    /// config beside it.
    pub fn open(
        &mut self,
        dir: PathBuf,
        resumed_from: Option<usize>,
        run: &serde_json::Value,
    ) -> Result<()> {
        let log = MetricsLog::open(&dir, resumed_from)?;
        let run = serde_json::to_vec_pretty(run).expect("JSON values serialize");
        kiln_base::store::write_atomic(&dir.join(RUN_FILE), &run)?;
        self.log = Some((dir, log));
        Ok(())
    }

    /// Prints a line (on a run that is not quiet).
    pub fn println(&self, line: &str) {
        self.progress.println(line);
    }

    /// After a step: a step that stepped counts towards the next train line, which is written
    /// every `log_every` steps and after the last.
    pub fn step(&mut self, state: &TrainerState, step: &StepReport, last: bool) -> Result<()> {
        if step.stepped {
            self.since_last_line.0 += step.loss;
            self.since_last_line.1 += 1;
        }
        if !(state.step.is_multiple_of(self.log_every) || last) {
            return Ok(());
        }
        let (sum, count) = std::mem::take(&mut self.since_last_line);
        let mean = sum / count.max(1) as f64;
        let rate = self
            .progress
            .update(state.step, mean, step.lr, state.units_seen);
        if let Some((_, log)) = &self.log {
            let scale = state.scaler.as_ref().map(|s| s.scale());
            log.append(&MetricsRecord::train(
                state.step,
                mean,
                step.lr,
                step.grad_norm,
                scale,
                rate,
            ))?;
        }
        Ok(())
    }

    /// An evaluation's line.
    pub fn eval(&self, step: usize, metrics: &EvalMetrics) -> Result<()> {
        self.println(&format!("step {step}: held-out {metrics}"));
        match &self.log {
            Some((_, log)) => log.append(&MetricsRecord::eval(step, metrics)),
            None => Ok(()),
        }
    }

    /// Ends the display and draws the run's plot.
    pub fn finish(&self) -> Result<()> {
        self.progress.finish();
        if let Some((dir, log)) = &self.log {
            let svg = training_plot(&log.records()?);
            kiln_base::store::write_atomic(&dir.join("plot.svg"), svg.as_bytes())?;
        }
        Ok(())
    }
}
