//! Pipeline schedules: the order in which a stage runs the forward and backward passes of a
//! step's micro-batches (GPipe, Huang et al. 2019; 1F1B, PipeDream-Flush, Narayanan et al.
//! 2021), what each costs in idle time and in activations kept. [`pipeline`](crate::pipeline)
//! turns them into a stage's plan; kiln-train's `pipeline.rs` runs it.

use burn::config::Config;

/// The order in which a stage runs its micro-batches' forward and backward passes.
#[derive(Config, Copy, Debug, PartialEq, Eq)]
pub enum PipelineSchedule {
    /// Every forward pass, then every backward pass: simple, but each stage keeps the graphs
    /// of all the step's micro-batches.
    GPipe,
    /// PipeDream-Flush: a warm-up of forward passes, then one forward and one backward in
    /// turn, then the remaining backward passes; at most `p - stage` graphs per stage.
    OneFOneB,
}

impl Default for PipelineSchedule {
    /// 1F1B: GPipe's bubble with a fraction of its activation memory.
    fn default() -> Self {
        PipelineSchedule::OneFOneB
    }
}

/// On the command line: `gpipe`, `1f1b`. (Written out: the derive would spell them `g-pipe`
/// and `one-f-one-b`, and Burn's `Config` derive copies the variants without clap's
/// attributes.)
#[cfg(feature = "clap")]
impl clap::ValueEnum for PipelineSchedule {
    fn value_variants<'a>() -> &'a [Self] {
        &[PipelineSchedule::GPipe, PipelineSchedule::OneFOneB]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            PipelineSchedule::GPipe => "gpipe",
            PipelineSchedule::OneFOneB => "1f1b",
        }))
    }
}

/// One pass of one micro-batch on a stage; the number is the micro-batch's position in the
/// step's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The forward pass of a micro-batch.
    Forward(usize),
    /// Its backward pass.
    Backward(usize),
}

impl PipelineSchedule {
    /// Forward passes stage `stage` of `stages` runs before its first backward pass, when
    /// the step has more micro-batches than that.
    pub fn warmup(self, stages: usize, stage: usize, micro_batches: usize) -> usize {
        match self {
            PipelineSchedule::GPipe => micro_batches,
            PipelineSchedule::OneFOneB => stages.saturating_sub(stage + 1).min(micro_batches),
        }
    }

    /// The passes stage `stage` of `stages` runs, in order, for a step of `micro_batches`:
    /// warm-up forward passes, then forward and backward in turn, then the remaining backward
    /// passes (GPipe's warm-up is every forward pass). Micro-batches go backward in the order
    /// they went forward, on every stage.
    ///
    /// ```
    /// use kiln_dist::{Pass::*, PipelineSchedule};
    ///
    /// // The first of two stages, three micro-batches.
    /// assert_eq!(
    ///     PipelineSchedule::OneFOneB.passes(2, 0, 3),
    ///     [Forward(0), Forward(1), Backward(0), Forward(2), Backward(1), Backward(2)]
    /// );
    /// assert_eq!(
    ///     PipelineSchedule::GPipe.passes(2, 0, 3),
    ///     [Forward(0), Forward(1), Forward(2), Backward(0), Backward(1), Backward(2)]
    /// );
    /// ```
    pub fn passes(self, stages: usize, stage: usize, micro_batches: usize) -> Vec<Pass> {
        let warmup = self.warmup(stages, stage, micro_batches);
        let mut passes: Vec<Pass> = (0..warmup).map(Pass::Forward).collect();
        for i in 0..micro_batches - warmup {
            passes.extend([Pass::Forward(warmup + i), Pass::Backward(i)]);
        }
        passes.extend((micro_batches - warmup..micro_batches).map(Pass::Backward));
        passes
    }

    /// The most micro-batches whose graphs stage `stage` of `stages` holds at once (between
    /// their forward and backward passes): all `m` under GPipe, `min(m, stages - stage)` under
    /// 1F1B. Activation memory per stage is this many micro-batches' graphs of its blocks.
    pub fn peak_in_flight(self, stages: usize, stage: usize, micro_batches: usize) -> usize {
        match self {
            PipelineSchedule::GPipe => micro_batches,
            PipelineSchedule::OneFOneB => micro_batches.min(stages.saturating_sub(stage)),
        }
    }
}

/// The share of a step each stage idles, `(p - 1) / (m + p - 1)` for `p` stages and `m`
/// micro-batches, the same for GPipe and 1F1B (taking a backward pass to cost a fixed multiple
/// of a forward pass): the pipeline fills for `p - 1` passes and drains for as many. `0` for
/// one stage; `1` for no micro-batches.
///
/// ```
/// use kiln_dist::schedule::bubble_fraction;
///
/// assert_eq!(bubble_fraction(4, 8), 3.0 / 11.0);
/// assert_eq!(bubble_fraction(1, 8), 0.0);
/// ```
pub fn bubble_fraction(stages: usize, micro_batches: usize) -> f64 {
    let idle = stages.saturating_sub(1) as f64;
    let span = micro_batches as f64 + idle;
    if span == 0.0 { 1.0 } else { idle / span }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULES: [PipelineSchedule; 2] = [PipelineSchedule::GPipe, PipelineSchedule::OneFOneB];

    #[test]
    fn bubble_fraction_is_the_fill_and_drain_share() {
        assert_eq!(bubble_fraction(1, 4), 0.0);
        assert_eq!(bubble_fraction(2, 4), 1.0 / 5.0);
        assert_eq!(bubble_fraction(4, 8), 3.0 / 11.0);
        assert_eq!(bubble_fraction(4, 1), 3.0 / 4.0);
        assert_eq!(bubble_fraction(0, 0), 1.0);
        // More micro-batches, a smaller bubble.
        assert!(bubble_fraction(4, 32) < bubble_fraction(4, 8));
    }

    #[test]
    fn every_micro_batch_goes_forward_then_backward_once() {
        for schedule in SCHEDULES {
            for stages in 1..=6 {
                for stage in 0..stages {
                    for m in 0..=10 {
                        let passes = schedule.passes(stages, stage, m);
                        let mut forward = vec![None; m];
                        let mut backward = vec![None; m];
                        let (mut live, mut peak) = (0usize, 0usize);
                        for (at, pass) in passes.iter().enumerate() {
                            match *pass {
                                Pass::Forward(i) => {
                                    assert!(forward[i].replace(at).is_none(), "{pass:?} twice");
                                    live += 1;
                                }
                                Pass::Backward(i) => {
                                    assert!(forward[i].is_some_and(|f| f < at), "{pass:?} first");
                                    assert!(backward[i].replace(at).is_none(), "{pass:?} twice");
                                    live -= 1;
                                }
                            }
                            peak = peak.max(live);
                        }
                        assert!(forward.iter().chain(&backward).all(Option::is_some));
                        assert_eq!(passes.len(), 2 * m, "the same work in both schedules");
                        assert_eq!(
                            peak,
                            schedule.peak_in_flight(stages, stage, m),
                            "{schedule:?}: stage {stage} of {stages}, {m} micro-batches"
                        );
                        if schedule == PipelineSchedule::OneFOneB {
                            assert!(peak <= stages - stage);
                        }
                    }
                }
            }
        }
        // 1F1B's last stage never holds more than one graph.
        assert_eq!(PipelineSchedule::OneFOneB.peak_in_flight(4, 3, 8), 1);
        assert_eq!(PipelineSchedule::GPipe.peak_in_flight(4, 3, 8), 8);
    }
}
