//! kiln-compress: pruning and quantization.
//!
//! For now: [`sparsity`], the per-parameter fraction of exact zeros that every pruning method
//! reports. Magnitude pruning (unstructured, structured, N:M) and int8 quantization come with
//! the compression issue.

#![warn(missing_docs)]

mod sparsity;

pub use sparsity::{ParamSparsity, sparsity};
