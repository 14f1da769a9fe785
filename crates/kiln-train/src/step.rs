//! One optimizer step: the step's micro-batches, their forward and backward passes (or the
//! pipeline's), the gradients synchronised, unscaled, checked and clipped, the optimizer's
//! step and the hooks.

use burn::module::{ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use kiln_base::{Batch, TrainModel, seed};
use kiln_dist::{ParallelModel, ReduceOp};
use kiln_optim::scale_grads;

use crate::config::{NonFinitePolicy, TrainerConfig};
use crate::error::{Result, TrainError};
use crate::pipeline::pipeline_step;
use crate::recompute::{Recompute, per_block_backward};
use crate::run::Run;

/// One optimizer step's micro-batches on this rank, and how their losses are weighted.
pub struct MicroBatches<B> {
    /// `(index among the step's micro-batches on every rank, batch)`.
    pub batches: Vec<(usize, B)>,
    /// The loss-carrying units of the whole step, on every rank: a micro-batch's loss counts
    /// `weight / units` of the step's, so that gradients summed over micro-batches and ranks
    /// are the average over the whole step.
    pub units: usize,
    /// The loss scaler's factor (1 without loss scaling): the backward pass runs on
    /// `loss · loss_scale`.
    pub loss_scale: f64,
    /// The step's dropout seed: each micro-batch reseeds the device from it and its index, so
    /// that it draws the same masks whichever rank computes it.
    pub seed: u64,
}

impl<B: Batch> MicroBatches<B> {
    /// A micro-batch's share of the step's loss.
    pub fn share(&self, batch: &B) -> f64 {
        batch.weight() as f64 / self.units.max(1) as f64
    }
}

/// What a step did, for the log and what comes after it.
pub(crate) struct StepReport {
    /// The step's mean loss over every rank.
    pub loss: f64,
    /// The whole model's gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// Whether the optimizer stepped (false: the loss or the gradients were not finite).
    pub stepped: bool,
    /// Whether the step's micro-batches finished an epoch.
    pub epoch_ended: bool,
}

impl<M: TrainModel<B> + ParallelModel, B: Batch> Run<M, B> {
    /// Takes one optimizer step: micro-batches → forward/backward (or the pipeline) → gradient
    /// sync → unscale, check, clip → the optimizer's step → the hooks.
    pub(crate) fn train_step(&mut self) -> Result<StepReport> {
        let epoch_before = self.state.position.epoch;
        let step = self.micro_batches()?;
        let (loss, grads) = match self.parallel.stage() {
            Some(stage) => {
                let (loss, grads) = pipeline_step(
                    &self.model,
                    stage,
                    self.config.model_parallel.schedule,
                    &step,
                    self.config.precision,
                    &self.device,
                )?;
                (loss, vec![grads])
            }
            None => accumulate_gradients(
                &self.model,
                &step,
                &self.config,
                self.parallel.keeps_micro_batches(),
                &self.device,
            )?,
        };
        let loss = self.parallel.reduce_loss(loss)?;
        let (grads, grad_norm) =
            self.parallel
                .finalize_grads(&self.model, grads, step.loss_scale)?;

        let lr = self.scheduler.step();
        self.state.step += 1;
        self.state.units_seen = self.state.units_seen.saturating_add(step.units as u64);
        let stepped = loss.is_finite() && grad_norm.is_finite();
        if let Some(scaler) = &mut self.state.scaler {
            scaler.update(!stepped);
        }
        if stepped {
            self.optimizer_step(grads, grad_norm, lr)?;
        } else {
            self.skip_step(loss, grad_norm)?;
        }
        Ok(StepReport {
            loss,
            grad_norm,
            lr,
            stepped,
            epoch_ended: self.state.position.epoch != epoch_before,
        })
    }

    /// The step's micro-batches: `grad_accumulation` on each rank of the data group, this
    /// rank's in one run of the shared order; their units summed over the group.
    fn micro_batches(&mut self) -> Result<MicroBatches<B>> {
        let per_rank = self.config.grad_accumulation;
        let (rank, ranks) = (self.parallel.data().rank(), self.parallel.data().size());
        let mut batches = Vec::with_capacity(per_rank);
        for index in 0..per_rank * ranks {
            let indices = self.order.next_batch(&mut self.state.position)?;
            if index / per_rank == rank {
                batches.push((index, self.train.batch(&indices, &self.device)?));
            }
        }
        let mut units = [batches.iter().map(|(_, b)| b.weight() as f64).sum::<f64>()];
        self.parallel
            .data()
            .all_reduce_f64(&mut units, ReduceOp::Sum)?;
        Ok(MicroBatches {
            batches,
            units: units[0] as usize,
            loss_scale: self.state.scaler.as_ref().map_or(1.0, |s| s.scale()),
            // Dropout draws from the device generator: seeding it per step (and per
            // micro-batch) makes a resumed run draw what the uninterrupted one drew.
            seed: seed::mix(self.config.seed, self.state.step as u64),
        })
    }

    /// Clips, steps and runs the hooks (every rank holds the same gradients and norm, so every
    /// rank decides alike).
    fn optimizer_step(&mut self, mut grads: GradientsParams, norm: f64, lr: f64) -> Result<()> {
        if let Some(max) = self.config.clip_grad_norm
            && norm > max
        {
            grads = scale_grads(&self.model, grads, max / (norm + 1e-6));
        }
        // The optimizer's own preparation (LAMB's global clipping), then the step.
        let (grads, _) = self
            .optimizer_config
            .prepare_gradients(&self.model, grads)?;
        let model = self.model.clone();
        self.model = self
            .parallel
            .optimizer_step(&mut self.optimizer, lr, model, grads)?;
        if !self.logger.memory_reported && self.parallel.world().size() > 1 {
            // A collective: every rank takes part, rank 0 prints.
            let line = self.parallel.report_memory(&self.model, &self.optimizer)?;
            self.logger.memory_reported = true;
            self.logger.println(&line);
        }
        if !self.hooks.is_empty() {
            for hook in &mut self.hooks {
                let model = self.model.clone();
                self.model =
                    hook.after_optimizer_step(self.state.step, model)
                        .map_err(|source| TrainError::Hook {
                            step: self.state.step,
                            source,
                        })?;
            }
            // Whatever a hook computed, parameters enter the next step as leaves.
            self.model = self.model.clone().map(&mut AsLeaves);
        }
        Ok(())
    }

    /// A step whose loss or gradients are not finite: skipped, or the end of the run.
    fn skip_step(&mut self, loss: f64, grad_norm: f64) -> Result<()> {
        self.state.skipped_steps += 1;
        if self.state.scaler.is_none() && self.config.non_finite == NonFinitePolicy::Error {
            return Err(TrainError::NonFinite {
                step: self.state.step,
                loss,
                grad_norm,
            });
        }
        self.logger.println(&format!(
            "step {}: skipped (loss {loss}, gradient norm {grad_norm})",
            self.state.step
        ));
        Ok(())
    }
}

/// Forward and backward of each micro-batch in the configured precision and recomputation,
/// its loss weighted by its [`share`](MicroBatches::share) and the loss scale. Each
/// micro-batch reseeds the device from `(step.seed, its index)`. Returns this rank's share of
/// the mean loss and its gradients (still multiplied by the loss scale): summed, or each
/// micro-batch's `apart` (for the reduction to add them in one process's order).
fn accumulate_gradients<M: TrainModel<B>, B: Batch>(
    model: &M,
    step: &MicroBatches<B>,
    config: &TrainerConfig,
    apart: bool,
    device: &Device,
) -> Result<(f64, Vec<GradientsParams>)> {
    let mut accumulated = GradientsAccumulator::<M>::new();
    let mut kept = Vec::new();
    let mut loss = 0.0;
    for (index, batch) in &step.batches {
        device.seed(seed::mix(step.seed, *index as u64));
        let share = step.share(batch);
        let factor = step.loss_scale * share;
        let (out, grads) = match config.recompute {
            Recompute::PerBlock => {
                per_block_backward(model, batch, factor, config.precision, device)?
            }
            _ => {
                // Cast per micro-batch: a backward pass consumes the cast's graph.
                let compute = config.precision.compute_model(model);
                let out = compute.forward_step(batch).map_err(TrainError::Model)?;
                let backward = (out.loss.clone() * factor).backward();
                (out, GradientsParams::from_grads(backward, model))
            }
        };
        loss += out.loss.into_scalar::<f64>() * share;
        if apart {
            kept.push(grads);
        } else {
            accumulated.accumulate(model, grads);
        }
    }
    if !apart {
        kept.push(accumulated.grads());
    }
    Ok((loss, kept))
}

/// Parameters a hook computed (tracked, not leaves) made leaves again; frozen ones stay as
/// they are.
struct AsLeaves;

impl ModuleMapper for AsLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            if t.is_tracked() && !t.is_require_grad() {
                t.detach().require_grad()
            } else {
                t
            }
        })
    }
}
