//! Pipeline parallelism: a [`BlockStack`] cut into stages of consecutive blocks, one per rank
//! of a pipeline group, the step's micro-batches flowing through them (GPipe, Huang et al.
//! 2019; 1F1B, PipeDream-Flush, Narayanan et al. 2021).
//!
//! Stage 0 embeds, every stage runs its blocks, the last stage runs the head and the loss.
//! Activations `[batch, seq, d]` travel forward and their gradients backward between
//! neighbouring stages, as f32 on the host whatever the compute dtype (exact for f16 and bf16).
//! As in [`recompute`](crate::recompute), the backward pass is driven from outside, one
//! `backward()` per micro-batch and stage: on a middle stage the surrogate
//! `sum(output ⊙ g)`, whose gradient with respect to the stage's parameters and its input
//! (a `require_grad` leaf made from the received activation) is the vector-Jacobian product
//! with the gradient `g` the next stage sent back. Each micro-batch's graph lives from its
//! forward pass to its backward pass.
//!
//! Two schedules (kiln-dist's [`PipelineSchedule`]) do the same work in different orders:
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

use std::ops::Range;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_base::{Batch, BlockStack, Precision, StepOutput, TrainModel, seed};
use kiln_dist::model_parallel::stage_blocks;
use kiln_dist::{Pass, PipelineSchedule, ProcessGroup};

use crate::error::{Result, TrainError};

/// This rank's place in a pipeline.
#[derive(Clone, Debug)]
pub struct PipelineStage {
    /// The pipeline group: its rank is the stage index, its size the number of stages.
    pub group: ProcessGroup,
    /// The indices into the model's [`BlockStack`] that this stage runs.
    pub blocks: Range<usize>,
}

impl PipelineStage {
    /// The stage `group.rank()` of a pipeline over `group` through `num_blocks` blocks, with
    /// [`stage_blocks`]'s balanced cut.
    pub fn balanced(group: ProcessGroup, num_blocks: usize) -> Result<Self> {
        let blocks = stage_blocks(num_blocks, group.size(), group.rank())?;
        Ok(Self { group, blocks })
    }

    /// Whether this stage embeds the batch (stage 0).
    pub fn first(&self) -> bool {
        self.group.rank() == 0
    }

    /// Whether this stage runs the head and the loss (the last stage).
    pub fn last(&self) -> bool {
        self.group.rank() + 1 == self.group.size()
    }
}

/// One step of pipeline-parallel training on this rank's stage: the forward and backward
/// passes of every micro-batch in `schedule`'s order, in `precision` on the training `device`.
///
/// `batches` are the step's micro-batches `(index, batch)`, the same list on every stage
/// (stage 0 reads the inputs, the last stage the targets), `units` the loss-carrying units of
/// the whole step, `loss_scale` the loss scaler's factor: the last stage weights each
/// micro-batch's loss by `loss_scale · weight / units`, exactly as the trainer's accumulation
/// does, so the gradients summed over the stages are those of one process accumulating the
/// same micro-batches. Returns this stage's share of the step's mean loss (non-zero on the
/// last stage only; sum it across the group) and this stage's gradients, summed over the
/// micro-batches (parameters it does not use have none; sum a shared one, such as a tied
/// embedding, across the group).
///
/// Dropout: before the embedding, each block and the head, the device is reseeded from
/// `(step_seed, the micro-batch's index, 0 | block + 1 | blocks + 1)`, so a micro-batch draws
/// the same masks however the blocks are cut into stages (one stage or many).
///
/// A stage that fails (a bad batch, a dead neighbour) returns its error while its neighbours
/// still wait for it: end the job with [`ProcessGroup::abort`] rather than carry on.
#[allow(clippy::too_many_arguments)]
pub fn pipeline_step<M: TrainModel<B>, B: Batch>(
    model: &M,
    stage: &PipelineStage,
    schedule: PipelineSchedule,
    batches: &[(usize, B)],
    units: usize,
    loss_scale: f64,
    step_seed: u64,
    precision: Precision,
    device: &Device,
) -> Result<(f64, GradientsParams)> {
    let num_blocks = check_stage(stack_of(model)?, stage)?;
    let link = Link::new(&stage.group, precision.dtype().into(), device);
    let (stages, rank) = (stage.group.size(), stage.group.rank());
    let mut flights: Vec<InFlight> = batches.iter().map(|_| InFlight::default()).collect();
    let mut accumulated = GradientsAccumulator::<M>::new();
    let mut loss = 0.0;

    for step in plan(schedule, stages, rank, batches.len()) {
        match step {
            Step::Pass(Pass::Forward(i)) => {
                let (index, batch) = &batches[i];
                let reseed = |part: usize| {
                    device.seed(seed::mix(seed::mix(step_seed, *index as u64), part as u64))
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
                if stage.last() {
                    reseed(num_blocks + 1);
                    let out = stack.head(x, batch).map_err(TrainError::Model)?;
                    let share = batch.weight() as f64 / units.max(1) as f64;
                    loss += out.loss.clone().into_scalar::<f64>() * share;
                    flight.loss = Some(out.loss * (loss_scale * share));
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
                flights[i].input = Some(link.recv(rank - 1, ACTIVATION, i)?.require_grad());
            }
            Step::SendActivation(i) => {
                link.send(rank + 1, ACTIVATION, i, flights[i].sent_output())?
            }
            Step::RecvGradient(i) => {
                flights[i].upstream = Some(link.recv(rank + 1, GRADIENT, i)?)
            }
            Step::SendGradient(i) => {
                link.send(rank - 1, GRADIENT, i, flights[i].sent_input_grad())?
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
    let link = Link::new(&stage.group, precision.dtype().into(), device);
    let rank = stage.group.rank();
    let mut outputs = Vec::new();
    // Activations only flow forward: every send is received by a stage that sends only
    // further on, so plain blocking sends cannot wait on each other in a cycle.
    for (i, batch) in batches.iter().enumerate() {
        let mut x = if stage.first() {
            stack.embed(batch).map_err(TrainError::Model)?
        } else {
            link.recv(rank - 1, ACTIVATION, i)?
        };
        for block in stage.blocks.clone() {
            x = stack.block(block, x, batch);
        }
        if stage.last() {
            outputs.push(stack.head(x, batch).map_err(TrainError::Model)?);
        } else {
            link.send(rank + 1, ACTIVATION, i, x)?;
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
            stage.group.rank(),
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

// ------------------------------------------------------------------------------------------
// The plan: the passes and the messages between them.

/// What a stage does, in order: its passes and the transfers around them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Pass(Pass),
    /// Micro-batch i's activation from the previous stage.
    RecvActivation(usize),
    /// Micro-batch i's output to the next stage.
    SendActivation(usize),
    /// The gradient of micro-batch i's output, from the next stage.
    RecvGradient(usize),
    /// The gradient of micro-batch i's input, to the previous stage.
    SendGradient(usize),
    /// Output i to the next stage while the gradient of output j comes back from it
    /// (Megatron's `send_forward_recv_backward`).
    SendActivationRecvGradient(usize, usize),
    /// Input gradient j to the previous stage while activation i comes from it (Megatron's
    /// `send_backward_recv_forward`).
    SendGradientRecvActivation(usize, usize),
}

/// The steps of stage `stage` of `stages`: each pass preceded by what it receives and
/// followed by what it sends.
///
/// Why it cannot deadlock, even with sends that block until they are received. In GPipe, and
/// in 1F1B's warm-up and cool-down, a stage alternates between sending one way and receiving
/// from the other side, and the chain of waits ends at a pipeline end, which does not send
/// that way. In 1F1B's steady phase, stage `s` sends output `i` to `s + 1` and then needs the
/// gradient `j` from `s + 1`, while `s + 1` sends that gradient `j` and then needs activation
/// `i`: two plain sends would wait on each other. There, and only there, the send and the
/// receive are one exchange, and its mirror is exactly the exchange the neighbour makes at
/// that point (`s + 1` is in its steady phase whenever `s` is, with one warm-up pass less), so
/// both complete together. The unit tests run every stage's plan against its neighbours' with
/// blocking sends, for many pipelines.
fn plan(
    schedule: PipelineSchedule,
    stages: usize,
    stage: usize,
    micro_batches: usize,
) -> Vec<Step> {
    let (first, last) = (stage == 0, stage + 1 == stages);
    // 1F1B with a steady phase: the only place forward and backward passes alternate.
    let steady = schedule.warmup(stages, stage, micro_batches) < micro_batches;
    let mut steps = Vec::new();
    let mut pending = None;
    for pass in schedule.passes(stages, stage, micro_batches) {
        let receive = match pass {
            Pass::Forward(i) if !first => Some(Step::RecvActivation(i)),
            Pass::Backward(i) if !last => Some(Step::RecvGradient(i)),
            _ => None,
        };
        match (pending.take(), receive) {
            (Some(Step::SendActivation(i)), Some(Step::RecvGradient(j))) if steady => {
                steps.push(Step::SendActivationRecvGradient(i, j))
            }
            (Some(Step::SendGradient(j)), Some(Step::RecvActivation(i))) if steady => {
                steps.push(Step::SendGradientRecvActivation(j, i))
            }
            (send, receive) => steps.extend(send.into_iter().chain(receive)),
        }
        steps.push(Step::Pass(pass));
        pending = match pass {
            Pass::Forward(i) if !last => Some(Step::SendActivation(i)),
            Pass::Backward(i) if !first => Some(Step::SendGradient(i)),
            _ => None,
        };
    }
    steps.extend(pending);
    steps
}

// ------------------------------------------------------------------------------------------
// The wire: a header, then the values as f32.

/// Tags of the plain transfers (the exchanges use the communicator's `send_recv`).
const ACTIVATION: u16 = 1;
const GRADIENT: u16 = 2;

/// Header of a transfer: the micro-batch's position in the step and the tensor's `[b, s, d]`.
const HEADER: usize = 4 * 8;

/// Transfers of `[b, s, d]` tensors with the neighbouring stages.
struct Link<'a> {
    group: &'a ProcessGroup,
    dtype: DType,
    device: &'a Device,
}

impl<'a> Link<'a> {
    /// Received tensors come back in `dtype` on `device`.
    fn new(group: &'a ProcessGroup, dtype: DType, device: &'a Device) -> Self {
        Self {
            group,
            dtype,
            device,
        }
    }

    fn send(&self, to: usize, tag: u16, position: usize, tensor: Tensor<3>) -> Result<()> {
        let (header, values) = encode(position, &tensor)?;
        let comm = self.group.communicator();
        comm.send(&header, to, tag)?;
        self.group.send_f32(&values, to, tag)?;
        Ok(())
    }

    fn recv(&self, from: usize, tag: u16, position: usize) -> Result<Tensor<3>> {
        let mut header = [0u8; HEADER];
        self.group.communicator().recv(&mut header, from, tag)?;
        let dims = self.check(&header, from, position)?;
        let mut values = vec![0.0f32; dims.iter().product()];
        self.group.recv_f32(&mut values, from, tag)?;
        Ok(self.tensor(values, dims))
    }

    /// Sends `(position, tensor)` to `peer` while receiving the tensor of micro-batch
    /// `expected` from it. Both sides learn both shapes first; the values then travel in
    /// buffers of the longer length, as `send_recv` wants.
    fn exchange(
        &self,
        peer: usize,
        (position, tensor): (usize, Tensor<3>),
        expected: usize,
    ) -> Result<Tensor<3>> {
        let comm = self.group.communicator();
        let (header, mut values) = encode(position, &tensor)?;
        let mut theirs = [0u8; HEADER];
        comm.send_recv(&header, peer, &mut theirs, peer)?;
        let dims = self.check(&theirs, peer, expected)?;
        let len: usize = dims.iter().product();
        let longest = len.max(values.len());
        values.resize(longest, 0.0);
        let mut received = vec![0.0f32; longest];
        comm.send_recv(
            bytemuck::cast_slice(&values),
            peer,
            bytemuck::cast_slice_mut(&mut received),
            peer,
        )?;
        received.truncate(len);
        Ok(self.tensor(received, dims))
    }

    /// The dims of a received header, which must be for micro-batch `expected`.
    fn check(&self, header: &[u8; HEADER], from: usize, expected: usize) -> Result<[usize; 3]> {
        let word = |k: usize| {
            u64::from_le_bytes(header[8 * k..8 * k + 8].try_into().expect("8 bytes")) as usize
        };
        let (position, dims) = (word(0), [word(1), word(2), word(3)]);
        let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if position != expected || elements.is_none() {
            return Err(TrainError::InvalidConfig(format!(
                "pipeline stage {} expected micro-batch {expected} from stage {from} and received \
                 micro-batch {position} of shape {dims:?}: every stage must run the same schedule \
                 on the same micro-batches",
                self.group.rank()
            )));
        }
        Ok(dims)
    }

    /// The received values in the compute dtype (`from_data` without a dtype would take the
    /// device's default, f32).
    fn tensor(&self, values: Vec<f32>, dims: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values, dims), (self.device, self.dtype))
    }
}

/// The header and the f32 values of a tensor.
fn encode(position: usize, tensor: &Tensor<3>) -> Result<([u8; HEADER], Vec<f32>)> {
    let mut header = [0u8; HEADER];
    let words = [
        position,
        tensor.dims()[0],
        tensor.dims()[1],
        tensor.dims()[2],
    ];
    for (k, word) in words.into_iter().enumerate() {
        header[8 * k..8 * k + 8].copy_from_slice(&(word as u64).to_le_bytes());
    }
    let values = tensor
        .to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| TrainError::Dist(kiln_dist::DistError::Tensor(format!("{e:?}"))))?;
    Ok((header, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULES: [PipelineSchedule; 2] = [PipelineSchedule::GPipe, PipelineSchedule::OneFOneB];

    /// What a step sends to or receives from a neighbour: `(peer, activation?, micro-batch)`.
    type Message = (usize, bool, usize);

    /// The transfers of a step of stage `s`: plain sends and receives, or an exchange.
    fn transfers(step: Step, s: usize) -> (Option<Message>, Option<Message>, bool) {
        match step {
            Step::Pass(_) => (None, None, false),
            Step::RecvActivation(i) => (None, Some((s - 1, true, i)), false),
            Step::SendActivation(i) => (Some((s + 1, true, i)), None, false),
            Step::RecvGradient(i) => (None, Some((s + 1, false, i)), false),
            Step::SendGradient(i) => (Some((s - 1, false, i)), None, false),
            Step::SendActivationRecvGradient(i, j) => {
                (Some((s + 1, true, i)), Some((s + 1, false, j)), true)
            }
            Step::SendGradientRecvActivation(j, i) => {
                (Some((s - 1, false, j)), Some((s - 1, true, i)), true)
            }
        }
    }

    /// Runs every stage's plan with sends that block until received (the strictest MPI
    /// semantics): every transfer must meet its mirror, an exchange an exchange, in order,
    /// and every stage must finish.
    fn run_pipeline(schedule: PipelineSchedule, stages: usize, m: usize) {
        let plans: Vec<Vec<Step>> = (0..stages).map(|s| plan(schedule, stages, s, m)).collect();
        let mut at = vec![0usize; stages];
        let current = |at: &[usize], s: usize| plans[s].get(at[s]).copied();
        loop {
            let mut moved = false;
            for s in 0..stages {
                let Some(step) = current(&at, s) else {
                    continue;
                };
                let (send, receive, exchange) = transfers(step, s);
                let peer = match (send, receive) {
                    (None, None) => {
                        at[s] += 1;
                        moved = true;
                        continue;
                    }
                    (Some((peer, ..)), _) | (None, Some((peer, ..))) => peer,
                };
                let Some(theirs) = current(&at, peer) else {
                    continue;
                };
                let (their_send, their_receive, their_exchange) = transfers(theirs, peer);
                // A receive waits for the peer's send, which it handles from the sending side.
                if send.is_none() {
                    continue;
                }
                let send = send.map(|(_, act, i)| (s, act, i));
                let receive = receive.map(|(_, act, i)| (s, act, i));
                let matched = if exchange {
                    their_exchange && their_receive == send && their_send == receive
                } else {
                    !their_exchange && their_send.is_none() && their_receive == send
                };
                if matched {
                    at[s] += 1;
                    at[peer] += 1;
                    moved = true;
                } else if their_receive.is_some_and(|r| r.0 == s) && their_receive != send {
                    panic!("{schedule:?} {stages}x{m}: stage {s} {step:?} meets {theirs:?}");
                }
            }
            if (0..stages).all(|s| at[s] == plans[s].len()) {
                return;
            }
            assert!(
                moved,
                "{schedule:?}, {stages} stages, {m} micro-batches: deadlock at {:?}",
                (0..stages).map(|s| current(&at, s)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn the_plans_of_neighbouring_stages_fit_without_deadlock() {
        for schedule in SCHEDULES {
            for stages in 1..=8 {
                for m in 0..=12 {
                    run_pipeline(schedule, stages, m);
                }
            }
        }
    }

    #[test]
    fn one_f_one_b_exchanges_in_its_steady_phase_only() {
        use Step::*;
        let f = |i| Pass(super::Pass::Forward(i));
        let b = |i| Pass(super::Pass::Backward(i));
        // The first of two stages, three micro-batches: one warm-up pass, then exchanges.
        assert_eq!(
            plan(PipelineSchedule::OneFOneB, 2, 0, 3),
            [
                f(0),
                SendActivation(0),
                f(1),
                SendActivationRecvGradient(1, 0),
                b(0),
                f(2),
                SendActivationRecvGradient(2, 1),
                b(1),
                RecvGradient(2),
                b(2),
            ]
        );
        assert_eq!(
            plan(PipelineSchedule::OneFOneB, 2, 1, 3),
            [
                RecvActivation(0),
                f(0),
                b(0),
                SendGradientRecvActivation(0, 1),
                f(1),
                b(1),
                SendGradientRecvActivation(1, 2),
                f(2),
                b(2),
                SendGradient(2),
            ]
        );
        // GPipe never needs one.
        assert!(
            plan(PipelineSchedule::GPipe, 4, 1, 8)
                .iter()
                .all(|s| !matches!(
                    s,
                    SendActivationRecvGradient(..) | SendGradientRecvActivation(..)
                ))
        );
    }
}
