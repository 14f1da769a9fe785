//! Pipeline parallelism: a [`BlockStack`] cut into stages of consecutive blocks, one per rank
//! of a pipeline group, the step's micro-batches flowing through them (GPipe, Huang et al.
//! 2019; 1F1B, PipeDream-Flush, Narayanan et al. 2021).
//!
//! Stage 0 embeds, every stage runs its blocks, the last stage runs the head and the loss.
//! Which blocks a stage runs, the order of its passes and the transfers between stages are
//! kiln-dist's ([`PipelineStage`], its [`plan`](kiln_dist::pipeline::plan), [`StageLink`]):
//! this file runs the model through them.
//! As in [`recompute`](crate::recompute), the backward pass is driven from outside, one
//! `backward()` per micro-batch and stage: on a middle stage the surrogate
//! `sum(output ⊙ g)`, whose gradient with respect to the stage's parameters and its input
//! (a `require_grad` leaf made from the received activation) is the vector-Jacobian product
//! with the gradient `g` the next stage sent back. Each micro-batch's graph lives from its
//! forward pass to its backward pass.
//!
//! Two schedules ([`PipelineSchedule`]) do the same work in different orders:
//!
//! - **GPipe**: every forward pass, then every backward pass. A stage holds the graphs of all
//!   `m` micro-batches at once.
//! - **1F1B** (the default): `p - s - 1` forward passes to fill the pipeline (stage `s` of
//!   `p`), then one forward and one backward in turn, then the remaining backward passes. A
//!   stage holds at most `min(m, p - s)` graphs ([`PipelineSchedule::peak_in_flight`]): the
//!   activation memory no longer grows with the number of micro-batches.
//!
//! Both idle for the same share of the step, [`bubble_fraction`](kiln_dist::schedule::bubble_fraction) `(p - 1) / (m + p - 1)`:
//! more micro-batches shrink the bubble.
//!
//! Gradients accumulate per stage over the micro-batches with the trainer's weighting (each
//! micro-batch's loss times its share of the step's units); a parameter a stage does not use
//! gets no gradient there. A parameter used by two stages (GPT's tied embedding: the first
//! stage's embedding, the last stage's output layer) gets a part on each, which the caller sums
//! across the pipeline group.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use kiln_base::{Batch, BlockStack, Precision, StepOutput, TrainModel, seed};
use kiln_dist::{Message, Pass, PipelineSchedule, PipelineStage, StageLink, Step};

use crate::error::{Result, TrainError};
use crate::step::MicroBatches;

/// One step of pipeline-parallel training on this rank's stage: the forward and backward
/// passes of every micro-batch of `step` in `schedule`'s order, in `precision` on the training
/// `device`.
///
/// `step` holds the same micro-batches on every stage (stage 0 reads the inputs, the last
/// stage the targets): the last stage weights each micro-batch's loss by
/// `loss_scale · weight / units`, exactly as the trainer's accumulation does, so the gradients
/// summed over the stages are those of one process accumulating the same micro-batches.
/// Returns this stage's share of the step's mean loss (non-zero on the last stage only; sum it
/// across the group) and this stage's gradients, summed over the micro-batches (parameters it
/// does not use have none; sum a shared one, such as a tied embedding, across the group).
///
/// Dropout: before the embedding, each block and the head, the device is reseeded from
/// `(step.seed, the micro-batch's index, 0 | block + 1 | blocks + 1)`, so a micro-batch draws
/// the same masks however the blocks are cut into stages (one stage or many).
///
/// A stage that fails (a bad batch, a dead neighbour) returns its error while its neighbours
/// still wait for it: end the job with [`ProcessGroup::abort`](kiln_dist::ProcessGroup::abort)
/// rather than carry on.
pub fn pipeline_step<M: TrainModel<B>, B: Batch>(
    model: &M,
    stage: &PipelineStage,
    schedule: PipelineSchedule,
    step: &MicroBatches<B>,
    precision: Precision,
    device: &Device,
) -> Result<(f64, GradientsParams)> {
    let num_blocks = check_stage(stack_of(model)?, stage)?;
    let link = StageLink::new(&stage.group, precision.dtype().into(), device);
    let rank = stage.index();
    let batches = &step.batches;
    let mut flights: Vec<InFlight> = batches.iter().map(|_| InFlight::default()).collect();
    let mut accumulated = GradientsAccumulator::<M>::new();
    let mut loss = 0.0;

    for action in stage.plan(schedule, batches.len()) {
        match action {
            Step::Pass(Pass::Forward(i)) => {
                let (index, batch) = &batches[i];
                let reseed = |part: usize| {
                    device.seed(seed::mix(seed::mix(step.seed, *index as u64), part as u64))
                };
                // Cast per micro-batch: a backward pass consumes the cast's graph.
                let compute = precision.compute_model(model);
                let stack = stack_of(&compute)?;
                let flight = &mut flights[i];
                let mut x = match flight.input.clone() {
                    Some(input) => input,
                    None => {
                        reseed(0);
                        stack.embed(batch).map_err(TrainError::Model)?
                    }
                };
                for block in stage.blocks.clone() {
                    reseed(block + 1);
                    x = stack.block(block, x, batch);
                }
                if stage.is_last() {
                    reseed(num_blocks + 1);
                    let out = stack.head(x, batch).map_err(TrainError::Model)?;
                    let share = step.share(batch);
                    loss += out.loss.clone().into_scalar::<f64>() * share;
                    flight.loss = Some(out.loss * (step.loss_scale * share));
                } else {
                    flight.output = Some(x);
                }
            }
            Step::Pass(Pass::Backward(i)) => {
                let flight = &mut flights[i];
                let backward = match (flight.loss.take(), flight.output.take()) {
                    (Some(loss), _) => loss.backward(),
                    (None, Some(output)) => {
                        let g = flight
                            .upstream
                            .take()
                            .expect("the plan receives the gradient before the backward pass");
                        let g = match output.dtype() {
                            dtype if dtype != g.dtype() => g.cast(dtype),
                            _ => g,
                        };
                        (output * g).sum().backward()
                    }
                    (None, None) => unreachable!("the plan runs the forward pass first"),
                };
                if let Some(input) = flight.input.take() {
                    // A block that ignores its input (none does) sends back zeros.
                    let g = input.grad(&backward).unwrap_or_else(|| input.zeros_like());
                    flight.input_grad = Some(g);
                }
                accumulated.accumulate(model, GradientsParams::from_grads(backward, model));
            }
            Step::RecvActivation(i) => {
                let x = link.recv(rank - 1, Message::Activation, i)?;
                flights[i].input = Some(x.require_grad());
            }
            Step::SendActivation(i) => {
                link.send(rank + 1, Message::Activation, i, flights[i].sent_output())?
            }
            Step::RecvGradient(i) => {
                flights[i].upstream = Some(link.recv(rank + 1, Message::Gradient, i)?)
            }
            Step::SendGradient(i) => {
                link.send(rank - 1, Message::Gradient, i, flights[i].sent_input_grad())?
            }
            Step::SendActivationRecvGradient(i, j) => {
                flights[j].upstream =
                    Some(link.exchange(rank + 1, (i, flights[i].sent_output()), j)?);
            }
            Step::SendGradientRecvActivation(j, i) => {
                let x = link.exchange(rank - 1, (j, flights[j].sent_input_grad()), i)?;
                flights[i].input = Some(x.require_grad());
            }
        }
    }
    Ok((loss, accumulated.grads()))
}

/// The forward pass of every batch through the pipeline, for evaluation: `model` as given
/// (pass `model.valid()` on a device without autodiff, as evaluation does), activations in
/// `precision`'s dtype. Returns each batch's output on the last stage, nothing on the others.
pub fn pipeline_forward<M: TrainModel<B>, B: Batch>(
    model: &M,
    stage: &PipelineStage,
    batches: &[B],
    precision: Precision,
    device: &Device,
) -> Result<Vec<StepOutput>> {
    let compute = precision.compute_model(model);
    let stack = stack_of(&compute)?;
    check_stage(stack, stage)?;
    let link = StageLink::new(&stage.group, precision.dtype().into(), device);
    let rank = stage.index();
    let mut outputs = Vec::new();
    // Activations only flow forward: every send is received by a stage that sends only
    // further on, so plain blocking sends cannot wait on each other in a cycle.
    for (i, batch) in batches.iter().enumerate() {
        let mut x = if stage.is_first() {
            stack.embed(batch).map_err(TrainError::Model)?
        } else {
            link.recv(rank - 1, Message::Activation, i)?
        };
        for block in stage.blocks.clone() {
            x = stack.block(block, x, batch);
        }
        if stage.is_last() {
            outputs.push(stack.head(x, batch).map_err(TrainError::Model)?);
        } else {
            link.send(rank + 1, Message::Activation, i, x)?;
        }
    }
    Ok(outputs)
}

/// The stack of a model, or the error that it is not one.
fn stack_of<M: TrainModel<B>, B: Batch>(model: &M) -> Result<&dyn BlockStack<B>> {
    model.block_stack().ok_or_else(|| {
        TrainError::InvalidConfig(
            "pipeline parallelism needs a model that is a BlockStack (TrainModel::block_stack)"
                .into(),
        )
    })
}

/// The model's number of blocks, once the stage's blocks are known to be among them.
fn check_stage<B: Batch>(stack: &dyn BlockStack<B>, stage: &PipelineStage) -> Result<usize> {
    let num_blocks = stack.num_blocks();
    if stage.blocks.start > stage.blocks.end || stage.blocks.end > num_blocks {
        return Err(TrainError::InvalidConfig(format!(
            "pipeline stage {} runs blocks {:?}, but the model has {num_blocks}",
            stage.index(),
            stage.blocks
        )));
    }
    Ok(num_blocks)
}

/// What a stage keeps of one micro-batch between its passes.
#[derive(Default)]
struct InFlight {
    /// The activation received from the previous stage: a leaf whose gradient goes back.
    input: Option<Tensor<3>>,
    /// The stage's output, with its graph, until the gradient for it comes back.
    output: Option<Tensor<3>>,
    /// The last stage's weighted loss, with its graph.
    loss: Option<Tensor<1>>,
    /// The gradient of the output, from the next stage.
    upstream: Option<Tensor<3>>,
    /// The gradient of the input, to send to the previous stage.
    input_grad: Option<Tensor<3>>,
}

impl InFlight {
    /// The output's values for the next stage (the graph stays for the backward pass).
    fn sent_output(&self) -> Tensor<3> {
        self.output
            .clone()
            .expect("the plan sends an activation after its forward pass")
    }

    fn sent_input_grad(&mut self) -> Tensor<3> {
        self.input_grad
            .take()
            .expect("the plan sends a gradient after its backward pass")
    }
}
