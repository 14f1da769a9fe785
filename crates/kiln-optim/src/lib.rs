//! kiln-optim: optimizers, regularization, gradient clipping and learning-rate schedules.
//!
//! For now: [`warmup_cosine`], the GPT-3 schedule as a pure function. The optimizer configs,
//! parameter groups and Burn `LrScheduler` implementations come with the optimizer issue.

#![warn(missing_docs)]

mod warmup_cosine;

pub use warmup_cosine::warmup_cosine;
