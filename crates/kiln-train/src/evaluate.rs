//! Evaluation on a held-out split: loss, perplexity and accuracy, weighted like training.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use kiln_base::{Batch, Precision, TrainModel};
use kiln_dist::{ParallelModel, PipelineStage, ProcessGroup, ReduceOp};

use crate::batch_source::BatchSource;
use crate::config::TrainerConfig;
use crate::error::{Result, TrainError};
use crate::parallel::Parallelism;
use crate::pipeline::pipeline_forward;

/// Evaluation during a run: the held-out data, and when it is due.
pub(crate) struct Evaluator<B> {
    data: BatchSource<B>,
    /// Every this many steps; 0: at the end of each epoch.
    every: usize,
    batch_size: usize,
    items: Option<usize>,
}

impl<B: Batch> Evaluator<B> {
    /// Evaluation on `data` with `config`'s schedule and sizes.
    pub fn new(data: BatchSource<B>, config: &TrainerConfig) -> Self {
        Self {
            data,
            every: config.eval_every,
            batch_size: config.eval_batch_size,
            items: config.eval_items,
        }
    }

    /// Whether an evaluation is due after `step`: every `eval_every` steps (at the end of each
    /// epoch when 0), and after the last step.
    pub fn due(&self, step: usize, epoch_ended: bool, last: bool) -> bool {
        last || match self.every {
            0 => epoch_ended,
            every => step.is_multiple_of(every),
        }
    }

    /// Evaluates this rank's part of the model with the ranks of `parallel`: the replicas take
    /// batches in turn, the stages of a pipeline pass activations on.
    pub fn evaluate<M: TrainModel<B> + ParallelModel>(
        &self,
        model: &M,
        device: &Device,
        parallel: &Parallelism<M>,
    ) -> Result<EvalMetrics> {
        let ranks = EvalRanks {
            replicas: parallel.data(),
            all: parallel.world(),
            stage: parallel.stage(),
            reports: parallel.reports_loss(),
        };
        evaluate_on(
            model,
            &self.data,
            self.batch_size,
            self.items,
            device,
            &ranks,
        )
    }
}

/// What an evaluation measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean loss per unit (token or example).
    pub loss: f64,
    /// `exp(loss)`: for language models, the per-token perplexity.
    pub perplexity: f64,
    /// Fraction of units predicted right, when the model counts them.
    pub accuracy: Option<f64>,
    /// Units evaluated.
    pub units: usize,
}

impl std::fmt::Display for EvalMetrics {
    /// `loss 0.1234 | perplexity 1.131 | accuracy 0.9500 (2000 units)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss {:.4} | perplexity {:.3}",
            self.loss, self.perplexity
        )?;
        if let Some(accuracy) = self.accuracy {
            write!(f, " | accuracy {accuracy:.4}")?;
        }
        Ok(())
    }
}

/// Evaluates `model` without autodiff and without dropout on the first `max_items` items of
/// `data` (all of them when `None`), in order, `batch_size` at a time.
pub fn evaluate<M, B>(
    model: &M,
    data: &BatchSource<B>,
    batch_size: usize,
    max_items: Option<usize>,
    device: &Device,
) -> Result<EvalMetrics>
where
    M: TrainModel<B>,
    B: Batch,
{
    evaluate_in(
        model,
        data,
        batch_size,
        max_items,
        device,
        &ProcessGroup::single(),
    )
}

/// [`evaluate`] shared by the ranks of `group`: rank r takes batches r, r + N, ..., and the
/// sums are all-reduced, so every rank gets the metrics of the whole evaluation set.
pub fn evaluate_in<M, B>(
    model: &M,
    data: &BatchSource<B>,
    batch_size: usize,
    max_items: Option<usize>,
    device: &Device,
    group: &ProcessGroup,
) -> Result<EvalMetrics>
where
    M: TrainModel<B>,
    B: Batch,
{
    let ranks = EvalRanks {
        replicas: group,
        all: group,
        stage: None,
        reports: true,
    };
    evaluate_on(model, data, batch_size, max_items, device, &ranks)
}

/// How the ranks of a run share an evaluation.
struct EvalRanks<'a> {
    /// The ranks that take batches in turn (the data-parallel replicas of the model).
    pub replicas: &'a ProcessGroup,
    /// The ranks the sums are reduced over: every rank of the run, so that all act alike.
    pub all: &'a ProcessGroup,
    /// This rank's pipeline stage, when the model is cut into stages.
    pub stage: Option<&'a PipelineStage>,
    /// Whether this rank's sums count (one rank per replica: the last stage's first
    /// tensor-parallel rank).
    pub reports: bool,
}

/// [`evaluate_in`] for any way of sharing the model and the data.
fn evaluate_on<M, B>(
    model: &M,
    data: &BatchSource<B>,
    batch_size: usize,
    max_items: Option<usize>,
    device: &Device,
    ranks: &EvalRanks<'_>,
) -> Result<EvalMetrics>
where
    M: TrainModel<B>,
    B: Batch,
{
    let model = model.valid();
    let device = device.clone().without_autodiff();
    let items = max_items.map_or(data.len(), |m| m.min(data.len()));
    // [loss · units, units, correct, batches that did not count correct predictions]
    let mut sums = [0.0f64; 4];
    let indices: Vec<usize> = (0..items).collect();
    let chunks = indices.chunks(batch_size.max(1));
    let mut batches = Vec::new();
    for chunk in chunks
        .skip(ranks.replicas.rank())
        .step_by(ranks.replicas.size())
    {
        batches.push(data.batch(chunk, &device)?);
    }
    let outputs = match ranks.stage {
        Some(stage) => pipeline_forward(&model, stage, &batches, Precision::F32, &device)?,
        None => batches
            .iter()
            .map(|batch| model.forward_step(batch).map_err(TrainError::Model))
            .collect::<Result<Vec<_>>>()?,
    };
    if ranks.reports {
        for (batch, out) in batches.iter().zip(outputs) {
            let weight = batch.weight();
            sums[0] += out.loss.into_scalar::<f64>() * weight as f64;
            sums[1] += weight as f64;
            match out.correct {
                Some(c) => sums[2] += c.into_scalar::<i64>() as f64,
                None => sums[3] += 1.0,
            }
        }
    }
    ranks.all.all_reduce_f64(&mut sums, ReduceOp::Sum)?;
    let [loss_sum, units, correct, uncounted] = sums;
    let loss = if units == 0.0 {
        f64::NAN
    } else {
        loss_sum / units
    };
    Ok(EvalMetrics {
        loss,
        perplexity: loss.exp(),
        accuracy: (uncounted == 0.0 && units > 0.0).then(|| correct / units),
        units: units as usize,
    })
}
