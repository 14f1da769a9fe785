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
//!
//! The weight may be bf16 or f16 ([`Elements`]): a bf16 model decodes by streaming half the
//! bytes of an f32 one, which is what a decoding step is bound by. bf16 is widened as it is read,
//! inside the same loops (a shift, vectorized with the multiply-adds); f16 a row (or column) at
//! a time into a small f32 buffer (F16C). Either way the arithmetic is the f32 one in the same
//! order, so the result is bit for bit that of the f32 product on the widened weight; widening
//! the whole weight first (as the other kernels' doors do) would write and read it again in f32.

use burn::tensor::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::kernel::{Widen, lane_dot, multiversion};

/// Rows up to which [`product`] replaces gemm. Past this the weight's packing is shared by
/// enough rows for gemm's register-blocked microkernel to win: decoding GPT-2 small on an
/// AVX-512 Xeon (`examples/bench_generate`), this product was 1.05–1.15x gemm at 1 row, even at
/// 2, and 0.8x at 4 and 8 rows.
pub(crate) const MAX_ROWS: usize = 2;

/// [`MAX_ROWS`] for a bf16 or f16 weight: gemm would first widen the whole weight to f32 (a
/// write and a read of twice its bytes), which this product saves. At 8 rows (batch-8
/// decoding) a bf16 weight here took 0.87x (a `[768, 3072]` layer) and 0.97x (the tied head)
/// of the f32 weight's time through gemm (`bench_fused_linear`).
pub(crate) const MAX_HALF_ROWS: usize = 8;

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
    Rows { data: Elements<'a>, stride: usize },
    /// `W[i, j] = data[j·stride + i]`.
    Columns { data: Elements<'a>, stride: usize },
}

/// A weight's buffer in its own precision.
#[derive(Clone, Copy)]
pub(crate) enum Elements<'a> {
    /// f32, read in place.
    F32(&'a [f32]),
    /// bf16 bits, widened by a shift.
    Bf16(&'a [u16]),
    /// f16, widened by F16C (`half`'s slice conversion).
    F16(&'a [f16]),
}

impl<'a> Elements<'a> {
    /// How many elements the buffer holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Elements::F32(d) => d.len(),
            Elements::Bf16(d) => d.len(),
            Elements::F16(d) => d.len(),
        }
    }

    /// Elements `start..start + buf.len()` widened into `buf` (inlined into the kernels, so
    /// the bf16 shift vectorizes with them; f16 through F16C).
    #[inline(always)]
    fn widen_into(&self, start: usize, buf: &mut [f32]) {
        let len = buf.len();
        match self {
            Elements::F32(d) => buf.copy_from_slice(&d[start..start + len]),
            Elements::Bf16(d) => {
                for (b, &v) in buf.iter_mut().zip(&d[start..start + len]) {
                    *b = v.widen();
                }
            }
            Elements::F16(d) => d[start..start + len].convert_to_f32_slice(buf),
        }
    }

    /// The buffer from element `start` on.
    fn from(self, start: usize) -> Elements<'a> {
        match self {
            Elements::F32(d) => Elements::F32(&d[start..]),
            Elements::Bf16(d) => Elements::Bf16(&d[start..]),
            Elements::F16(d) => Elements::F16(&d[start..]),
        }
    }
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
            Weight::Rows { data, stride } => (rows_block, data.from(j0), stride),
            Weight::Columns { data, stride } => (columns_block, data.from(j0 * stride), stride),
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
    w: Elements<'a>,
    stride: usize,
    width: usize,
}

/// The block with its weight of element type `E` (f32, or bf16 bits).
#[derive(Clone, Copy)]
struct Typed<'a, E> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [E],
    stride: usize,
    width: usize,
}

impl<'a> Block<'a> {
    fn typed<E>(self, w: &'a [E]) -> Typed<'a, E> {
        let Block {
            x,
            m,
            k,
            stride,
            width,
            ..
        } = self;
        Typed {
            x,
            m,
            k,
            w,
            stride,
            width,
        }
    }
}

/// `out[r, ..width] += Σ_i x[r, i] · w[i·stride + ..width]`, in order of `i`.
#[inline(always)]
fn rows<E: Widen>(b: Typed<'_, E>, out: &mut [f32]) {
    let Typed {
        x,
        m,
        k,
        w,
        stride,
        width,
    } = b;
    for i in 0..k {
        let w = &w[i * stride..i * stride + width];
        for (r, out) in out.chunks_exact_mut(width).enumerate().take(m) {
            let a = x[r * k + i];
            for (o, &w) in out.iter_mut().zip(w) {
                *o += a * w.widen();
            }
        }
    }
}

/// `out[r, j] += x[r, ..] · w[j·stride + ..k]` for `j < width`.
#[inline(always)]
fn columns<E: Widen>(b: Typed<'_, E>, out: &mut [f32]) {
    let Typed {
        x,
        m,
        k,
        w,
        stride,
        width,
    } = b;
    for j in 0..width {
        let column = &w[j * stride..j * stride + k];
        for r in 0..m {
            out[r * width + j] += lane_dot(&x[r * k..(r + 1) * k], column);
        }
    }
}

multiversion! {
    /// [`rows`] over the block's weight in its own precision.
    fn rows_block(block: Block<'_>, out: &mut [f32]) {
        match block.w {
            Elements::F32(w) => rows(block.typed(w), out),
            // One row of `x`: each weight element is read once, widened as it is read.
            Elements::Bf16(w) if block.m == 1 => rows(block.typed(w), out),
            // More rows read each weight row more than once (and f16 has no cheap inline
            // widening): widen it once, into L1, then the f32 loop over that row alone.
            half => {
                let mut buf = [0.0f32; ROW_BLOCK];
                let Block { x, m, k, stride, width, .. } = block;
                for i in 0..k {
                    let w = &mut buf[..width];
                    half.widen_into(i * stride, w);
                    for (r, out) in out.chunks_exact_mut(width).enumerate().take(m) {
                        let a = x[r * k + i];
                        for (o, &w) in out.iter_mut().zip(&*w) {
                            *o += a * w;
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// [`columns`] over the block's weight in its own precision.
    fn columns_block(block: Block<'_>, out: &mut [f32]) {
        match block.w {
            Elements::F32(w) => columns(block.typed(w), out),
            Elements::Bf16(w) if block.m == 1 => columns(block.typed(w), out),
            half => {
                let mut buf = vec![0.0f32; block.k];
                let Block { x, m, k, stride, width, .. } = block;
                for j in 0..width {
                    half.widen_into(j * stride, &mut buf);
                    for r in 0..m {
                        out[r * width + j] += lane_dot(&x[r * k..(r + 1) * k], &buf[..]);
                    }
                }
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
                        data: Elements::F32(&w),
                        stride: n,
                    },
                    Weight::Columns {
                        data: Elements::F32(&wt),
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

    /// A bf16 or f16 weight gives exactly the f32 product on the widened weight (the same
    /// arithmetic in the same order), in both layouts, with partial blocks.
    #[test]
    fn half_weights_give_the_f32_product_of_their_values_bit_for_bit() {
        use burn::tensor::bf16;
        for &(m, k, n) in &[(1, 70, 300), (2, 33, 129), (1, 768, 513)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 9.0)
                .collect();
            let raw: Vec<f32> = (0..k * n)
                .map(|i| ((i * 13 % 101) as f32 - 50.0) / 37.0)
                .collect();
            let b16: Vec<u16> = raw.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let h16: Vec<f16> = raw.iter().map(|&v| f16::from_f32(v)).collect();
            let wide_b: Vec<f32> = b16
                .iter()
                .map(|&b| f32::from_bits(u32::from(b) << 16))
                .collect();
            let wide_h: Vec<f32> = h16.iter().map(|h| h.to_f32()).collect();
            for (half, wide) in [
                (Elements::Bf16(&b16), &wide_b),
                (Elements::F16(&h16), &wide_h),
            ] {
                // The same buffer read as rows (`[k, n]`) and as columns (`[n, k]`).
                let rows = product(
                    &x,
                    m,
                    k,
                    n,
                    Weight::Rows {
                        data: half,
                        stride: n,
                    },
                    None,
                );
                let rows_f32 = product(
                    &x,
                    m,
                    k,
                    n,
                    Weight::Rows {
                        data: Elements::F32(wide),
                        stride: n,
                    },
                    None,
                );
                assert_eq!(rows, rows_f32, "{m}x{k}x{n} rows");
                let (k2, n2) = (n, k);
                let x2: Vec<f32> = (0..m * k2)
                    .map(|i| ((i * 5 % 19) as f32 - 9.0) / 7.0)
                    .collect();
                let cols = product(
                    &x2,
                    m,
                    k2,
                    n2,
                    Weight::Columns {
                        data: half,
                        stride: k2,
                    },
                    None,
                );
                let cols_f32 = product(
                    &x2,
                    m,
                    k2,
                    n2,
                    Weight::Columns {
                        data: Elements::F32(wide),
                        stride: k2,
                    },
                    None,
                );
                assert_eq!(cols, cols_f32, "{m}x{k}x{n} columns");
                assert!(rows.iter().chain(&cols).all(|v| v.is_finite()));
            }
        }
    }
}
