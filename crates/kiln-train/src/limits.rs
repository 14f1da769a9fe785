//! kiln-train's ceilings (kiln-base's [`Limit`]) on the sizes a run config, a flag or a
//! checkpoint gives the loop, checked before anything is allocated or multiplied. Each can be
//! raised with `KILN_LIMIT_<NAME>`.

use kiln_base::limits::Limit;
/// The ceiling kiln-train shares with the other crates: the bytes of a JSON or TOML file read
/// whole (a checkpoint's `manifest.json`, `trainer.json` and `run.json`; a run config).
pub use kiln_base::limits::TEXT_FILE_BYTES;

/// Examples per micro-batch (`batch_size`, `eval_batch_size`): a million sequences, far above
/// any per-rank batch in practice (GPT-3 took 3.2M tokens per step across hundreds of GPUs).
pub const BATCH_SIZE: Limit = Limit::new("BATCH_SIZE", 1 << 20);

/// Micro-batches per optimizer step (`grad_accumulation`): the loop holds a step's
/// micro-batches in memory at once, so this is also how many batches it allocates for.
pub const GRAD_ACCUMULATION: Limit = Limit::new("GRAD_ACCUMULATION", 1 << 16);

/// Examples per step on one rank (`batch_size × grad_accumulation`), all held in memory while
/// the step runs.
pub const EXAMPLES_PER_STEP: Limit = Limit::new("EXAMPLES_PER_STEP", 1 << 24);

/// Optimizer steps of a run (`max_steps`, `max_epochs`, and the total they make with the
/// data): 2^40, a million times the longest published runs, so that steps × micro-batches ×
/// ranks stays far inside 64 bits.
pub const STEPS: Limit = Limit::new("STEPS", 1 << 40);

/// Micro-batches a run reads over all its steps and ranks (`steps × grad_accumulation ×
/// ranks`): the data position of a checkpoint is computed from it.
pub const MICRO_BATCHES: Limit = Limit::new("MICRO_BATCHES", 1 << 56);

/// Optimizer state files of one checkpoint: one per rank of a ZeRO-1 run.
pub const OPTIMIZER_SHARDS: Limit = Limit::new("OPTIMIZER_SHARDS", 1 << 16);
