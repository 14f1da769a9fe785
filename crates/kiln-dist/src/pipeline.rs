//! A pipeline's stages and what each does in a step (GPipe, Huang et al. 2019; 1F1B,
//! PipeDream-Flush, Narayanan et al. 2021): which blocks a stage runs ([`stage_blocks`],
//! [`PipelineStage`]) and its [`plan`], the passes of [`PipelineSchedule`] with the transfers
//! between neighbouring stages around them. [`p2p`](crate::p2p) carries the transfers;
//! kiln-train's `pipeline.rs` runs the model through the plan.

use std::ops::Range;

use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;
use crate::schedule::{Pass, PipelineSchedule};

/// This rank's place in a pipeline: the one place kiln computes which stage a rank is and
/// which blocks it runs.
#[derive(Clone, Debug)]
pub struct PipelineStage {
    /// The pipeline group: its rank is the stage index, its size the number of stages.
    pub group: ProcessGroup,
    /// The indices of the blocks this stage runs (consecutive, into the whole model's blocks).
    pub blocks: Range<usize>,
}

impl PipelineStage {
    /// The stage `group.rank()` of a pipeline over `group` through `num_blocks` blocks, with
    /// [`stage_blocks`]'s balanced cut.
    pub fn balanced(group: ProcessGroup, num_blocks: usize) -> Result<Self> {
        let blocks = stage_blocks(num_blocks, group.size(), group.rank())?;
        Ok(Self { group, blocks })
    }

    /// The stage's index (its rank in the pipeline group).
    pub fn index(&self) -> usize {
        self.group.rank()
    }

    /// The number of stages.
    pub fn stages(&self) -> usize {
        self.group.size()
    }

    /// Whether this stage embeds the batch (stage 0).
    pub fn is_first(&self) -> bool {
        self.index() == 0
    }

    /// Whether this stage runs the head and the loss (the last stage).
    pub fn is_last(&self) -> bool {
        self.index() + 1 == self.stages()
    }

    /// This stage's plan for a step of `micro_batches` in `schedule` ([`plan`]).
    pub fn plan(&self, schedule: PipelineSchedule, micro_batches: usize) -> Vec<Step> {
        plan(schedule, self.stages(), self.index(), micro_batches)
    }
}

/// The blocks stage `stage` of `stages` runs: consecutive, balanced, the earlier stages taking
/// one block more when the blocks do not divide evenly (so stage 0, which also embeds, and
/// the last stage, which also runs the head, are not both loaded). An error when there are
/// no stages, more stages than blocks, or `stage` is not one of them.
///
/// ```
/// use kiln_dist::pipeline::stage_blocks;
///
/// let ranges: Vec<_> = (0..3).map(|s| stage_blocks(7, 3, s).unwrap()).collect();
/// assert_eq!(ranges, [0..3, 3..5, 5..7]);
/// assert!(stage_blocks(2, 3, 0).is_err());
/// ```
pub fn stage_blocks(num_blocks: usize, stages: usize, stage: usize) -> Result<Range<usize>> {
    if stages == 0 || stages > num_blocks || stage >= stages {
        return Err(DistError::InvalidArgument(format!(
            "stage {stage} of {stages}: a model of {num_blocks} blocks gives each of at most {num_blocks} stages one block or more"
        )));
    }
    let (per, extra) = (num_blocks / stages, num_blocks % stages);
    let start = stage * per + stage.min(extra);
    Ok(start..start + per + usize::from(stage < extra))
}

/// What a stage does, in order: its passes and the transfers around them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A forward or backward pass of one micro-batch.
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
pub fn plan(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_cover_the_blocks_in_balanced_consecutive_ranges() {
        for blocks in 1..=12 {
            for stages in 1..=blocks {
                let ranges: Vec<_> = (0..stages)
                    .map(|s| stage_blocks(blocks, stages, s).unwrap())
                    .collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[stages - 1].end, blocks);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start, "consecutive");
                    // Earlier stages take the extra blocks.
                    assert!(pair[0].len() >= pair[1].len());
                }
                let (min, max) = (
                    ranges.iter().map(|r| r.len()).min().unwrap(),
                    ranges.iter().map(|r| r.len()).max().unwrap(),
                );
                assert!(
                    min >= 1 && max - min <= 1,
                    "{blocks} over {stages}: {ranges:?}"
                );
            }
        }
        assert_eq!(stage_blocks(4, 2, 1).unwrap(), 2..4);
        assert_eq!(stage_blocks(5, 2, 0).unwrap(), 0..3);
    }

    #[test]
    fn impossible_cuts_are_errors() {
        for (blocks, stages, stage) in [(4, 0, 0), (2, 3, 0), (0, 1, 0), (4, 2, 2)] {
            let err = stage_blocks(blocks, stages, stage).unwrap_err();
            assert!(
                matches!(err, DistError::InvalidArgument(ref m) if m.contains("stage")),
                "{err}"
            );
        }
    }

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
