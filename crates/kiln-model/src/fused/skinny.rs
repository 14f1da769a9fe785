//! The linear layer's product when it has only a few rows: the decoding steps of generation
//! (one new token per sequence, batch 1 or 2) and any other call with up to [`MAX_ROWS`] rows.
//!
//! `gemm::gemm` packs the whole weight into its own layout on every call, then multiplies: with
//! one or a few rows, the packing reads and writes every weight once more than the product reads
//! it, and the product is bound by memory bandwidth, not arithmetic (a profile of GPT-2-sized
//! decoding spent more time in gemm's packing than in its microkernel). Here the weight is read
//! once, where it lies:
//! - **rows of the weight contiguous** (Burn's `[d_in, d_out]` Linear weight): each row `W[k, ..]`
//!   is added `x[r, k]` times into a block of outputs, a contiguous stream;
//! - **columns contiguous** (the tied LM head, the embedding `[vocab, d]` read transposed): each
//!   output is a dot product of a row with a contiguous column.
//!
//! Blocks of outputs run on rayon's threads; each output's sum runs in a fixed order, so the
//! result does not depend on the thread count (resume stays bit-exact).

use rayon::prelude::*;

use super::kernel::{lane_dot, multiversion};

/// Rows up to which [`product`] replaces gemm. Past this the weight's packing is shared by
/// enough rows for gemm's register-blocked microkernel to win: decoding GPT-2 small on an
/// AVX-512 Xeon (`examples/bench_generate`), this product was 1.05–1.15x gemm at 1 row, even at
/// 2, and 0.8x at 4 and 8 rows.
pub(crate) const MAX_ROWS: usize = 2;

/// Outputs per block when the weight's rows are contiguous: 1 KiB of each weight row streamed
/// per step, the accumulators (`rows × 256` f32) staying in L1.
const ROW_BLOCK: usize = 256;
/// Outputs per block when the weight's columns are contiguous (each a `d_in`-long dot product).
const COLUMN_BLOCK: usize = 128;
/// Multiply-adds below which the product runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 17;

/// A `[k, n]` weight: its elements from the first, with one of its strides 1.
#[derive(Clone, Copy)]
pub(crate) enum Weight<'a> {
    /// `W[i, j] = data[i·stride + j]`.
    Rows { data: &'a [f32], stride: usize },
    /// `W[i, j] = data[j·stride + i]`.
    Columns { data: &'a [f32], stride: usize },
}

/// `x·W (+ bias)` for `x` `[m, k]` (row-major, contiguous) and `W` `[k, n]`: a new `[m, n]`
/// buffer.
pub(crate) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: Weight<'_>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    debug_assert_eq!(x.len(), m * k);
    let block = match w {
        Weight::Rows { .. } => ROW_BLOCK,
        Weight::Columns { .. } => COLUMN_BLOCK,
    };
    let run = |b: usize| -> Vec<f32> {
        let j0 = b * block;
        let width = block.min(n - j0);
        let mut out = vec![0.0f32; m * width];
        if let Some(bias) = bias {
            for row in out.chunks_exact_mut(width) {
                row.copy_from_slice(&bias[j0..j0 + width]);
            }
        }
        let (kernel, w, stride): (fn(Block<'_>, &mut [f32]), _, _) = match w {
            Weight::Rows { data, stride } => (rows_block, &data[j0..], stride),
            Weight::Columns { data, stride } => (columns_block, &data[j0 * stride..], stride),
        };
        let block = Block {
            x,
            m,
            k,
            w,
            stride,
            width,
        };
        kernel(block, &mut out);
        out
    };
    let blocks = n.div_ceil(block);
    let parts: Vec<Vec<f32>> = if m * n * k >= PARALLEL_MIN && blocks > 1 {
        (0..blocks).into_par_iter().map(run).collect()
    } else {
        (0..blocks).map(run).collect()
    };
    let mut y = vec![0.0f32; m * n];
    for (b, part) in parts.iter().enumerate() {
        let j0 = b * block;
        let width = block.min(n - j0);
        for (r, src) in part.chunks_exact(width).enumerate() {
            y[r * n + j0..r * n + j0 + width].copy_from_slice(src);
        }
    }
    y
}

/// One block of outputs: the rows `x` (`[m, k]`) and the weight `w` from the block's first
/// output, with its non-unit `stride`, for `width` outputs.
#[derive(Clone, Copy)]
struct Block<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [f32],
    stride: usize,
    width: usize,
}

multiversion! {
    /// `out[r, ..width] += Σ_i x[r, i] · w[i·stride + ..width]`, in order of `i`.
    fn rows_block(block: Block<'_>, out: &mut [f32]) {
        let Block { x, m, k, w, stride, width } = block;
        for i in 0..k {
            let w = &w[i * stride..i * stride + width];
            for (r, out) in out.chunks_exact_mut(width).enumerate().take(m) {
                let a = x[r * k + i];
                for (o, &w) in out.iter_mut().zip(w) {
                    *o += a * w;
                }
            }
        }
    }
}

multiversion! {
    /// `out[r, j] += x[r, ..] · w[j·stride + ..k]` for `j < width`.
    fn columns_block(block: Block<'_>, out: &mut [f32]) {
        let Block { x, m, k, w, stride, width } = block;
        for j in 0..width {
            let column = &w[j * stride..j * stride + k];
            for r in 0..m {
                out[r * width + j] += lane_dot(&x[r * k..(r + 1) * k], column);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both layouts, with and without bias, against the definition, at sizes that leave partial
    /// blocks and partial vectors, on one thread and on several.
    #[test]
    fn matches_the_definition() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 70, 300),
            (3, 33, 129),
            (8, 768, 700),
            (5, 17, 2),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) / 40.0)
                .collect();
            let wt: Vec<f32> = (0..n * k).map(|t| w[(t % k) * n + t / k]).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
            for b in [None, Some(&bias[..])] {
                let want: Vec<f64> = (0..m * n)
                    .map(|t| {
                        let (r, j) = (t / n, t % n);
                        let s: f64 = (0..k)
                            .map(|i| x[r * k + i] as f64 * w[i * n + j] as f64)
                            .sum();
                        s + b.map_or(0.0, |b| b[j] as f64)
                    })
                    .collect();
                for layout in [
                    Weight::Rows {
                        data: &w,
                        stride: n,
                    },
                    Weight::Columns {
                        data: &wt,
                        stride: k,
                    },
                ] {
                    let got = product(&x, m, k, n, layout, b);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{m}x{k}x{n}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
