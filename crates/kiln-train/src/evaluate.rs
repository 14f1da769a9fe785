//! Evaluation on a held-out split: loss, perplexity and accuracy, weighted like training.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use kiln_core::{Batch, TrainModel};

use crate::batch_source::BatchSource;
use crate::error::{Result, TrainError};

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
    let model = model.valid();
    let device = device.clone().without_autodiff();
    let items = max_items.map_or(data.len(), |m| m.min(data.len()));
    let (mut loss_sum, mut units, mut correct, mut counts_correct) = (0.0, 0usize, 0i64, true);
    let indices: Vec<usize> = (0..items).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = data.batch(chunk, &device)?;
        let weight = batch.weight();
        let out = model.forward_step(&batch).map_err(TrainError::Model)?;
        loss_sum += out.loss.into_scalar::<f64>() * weight as f64;
        units += weight;
        match out.correct {
            Some(c) => correct += c.into_scalar::<i64>(),
            None => counts_correct = false,
        }
    }
    let loss = if units == 0 {
        f64::NAN
    } else {
        loss_sum / units as f64
    };
    Ok(EvalMetrics {
        loss,
        perplexity: loss.exp(),
        accuracy: (counts_correct && units > 0).then(|| correct as f64 / units as f64),
        units,
    })
}
