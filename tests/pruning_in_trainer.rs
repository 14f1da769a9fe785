//! kiln-compress's gradual pruning as a kiln-train step hook: the two crates know nothing of
//! each other, a closure joins them.

use std::sync::{Arc, Mutex};

use kiln::compress::{GradualPruningConfig, linear_weights, read_params};
use kiln::data::addition::{AdditionBatcher, AdditionDataset, VOCAB_SIZE};
use kiln::optim::SgdConfig;
use kiln::prelude::*;

/// The run ends at exactly the final sparsity in every linear weight, the pruned weights are
/// zero, and the masks the hook kept are the ones in the model.
#[test]
fn gradual_pruning_runs_inside_the_trainer() -> kiln::Result<()> {
    let device = Device::flex().autodiff();
    let gpt = GptConfig::new(VOCAB_SIZE)
        .with_block_size(12)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(16)
        .init(&device)?;
    let pruning = GradualPruningConfig::new(0.5, 20)
        .with_frequency(5)
        .init()?;
    let pruning = Arc::new(Mutex::new(pruning));
    let hook = pruning.clone();
    let trainer = TrainerConfig::new()
        .with_max_steps(Some(20))
        .with_batch_size(8)
        .with_quiet(true);
    let run = RunConfig::new(
        (),
        (),
        SgdConfig::new(),
        ScheduleConfig::Constant(0.1),
        trainer,
    );
    let data = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let outcome = Trainer::new(&run, data)?
        .with_hook(move |step, model| hook.lock().unwrap().after_optimizer_step(step, model))
        .fit(gpt, &device)?;
    let weights = read_params(&outcome.model, &linear_weights);
    assert!(!weights.is_empty());
    let masks = pruning.lock().unwrap();
    for w in weights {
        let zeros = w.values.iter().filter(|v| **v == 0.0).count();
        let expected = (w.values.len() as f64 * 0.5).round() as usize;
        assert_eq!(zeros, expected, "{}", w.path);
        let mask = masks
            .masks()
            .get(&w.path)
            .expect("a mask per linear weight");
        for (m, v) in mask.iter().zip(&w.values) {
            if *m == 0.0 {
                assert_eq!(*v, 0.0, "{}", w.path);
            }
        }
    }
    Ok(())
}
