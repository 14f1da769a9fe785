//! The linear layer's product when it has only a few rows: the decoding steps of generation
//! (one new token per sequence, up to batch [`MAX_ROWS`]) and any other call that small.
//!
//! `gemm::gemm` packs the whole weight into its own layout on every call, then multiplies: with
//! a few rows, the packing reads and writes every weight once more than the product reads it,
//! and the product is bound by memory bandwidth, not arithmetic (a profile of GPT-2-sized
//! decoding spent more time in gemm's packing than in its microkernel). Here the weight is read
//! once, where it lies, as contiguous streams:
//! - **rows of the weight contiguous** (Burn's `[d_in, d_out]` Linear weight): each task takes a
//!   stretch of whole rows, four at a time, and adds them into its own accumulators, asking for
//!   the next four rows' cache lines as it reads (the hardware prefetcher alone does not ramp up
//!   on rows a few KiB long);
//! - **columns contiguous** (the tied LM head, the embedding `[vocab, d]` read transposed): each
//!   output is a dot product of a row with a contiguous column.
//!
//! Tasks run on rayon's threads. The split depends on the shape alone and the tasks' partial
//! sums are added in a fixed order, so the result does not depend on the thread count (resume
//! stays bit-exact).
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

use super::kernel::{LANES, Widen, multiversion};

/// Rows of `x` up to which [`product`] replaces gemm (batch-8 decoding). gemm packs the whole
/// weight into its own layout on every call, so with a few rows it reads the weight twice and
/// writes it once where this product reads it once (a bf16 or f16 weight it would first widen
/// to f32 besides). GPT-2 small's decoding products from memory at 8 rows
/// (`bench_fused_linear`, 2-core Xeon VM): the blocks' f32 weights 28.6 ms here against 78.7 ms
/// through gemm, the tied head (read by columns) 14.1 against 15.6 ms. Past this gemm's
/// register-blocked microkernel, sharing its packing over enough rows, wins.
pub(crate) const MAX_ROWS: usize = 8;

/// Outputs per task when the weight's rows are contiguous: 16 KiB of each f32 weight row, a run
/// long enough for the hardware prefetcher to follow across pages. Narrower column strips
/// (1 KiB of each row, as this product first read them) streamed at half the rate of
/// contiguous reads on a 2-core Xeon VM.
const TILE: usize = 4096;
/// Weight elements per task when a tile's rows are split into chunks: each task streams a
/// contiguous stretch of the weight (512 KiB in f32 where the weight is one matrix).
const TASK: usize = 1 << 17;
/// Tiles from which there is enough to share out without splitting the rows.
const MIN_TASKS: usize = 8;
/// Weight rows added per pass over the accumulators: four streams read together, and a quarter
/// of the accumulator traffic of one row at a time.
const FUSED: usize = 4;
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
///
/// Work is split by the shape alone, never by the thread count, and partial sums are added in
/// a fixed order, so the result is the same on any number of threads.
pub(crate) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: Weight<'_>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    debug_assert_eq!(x.len(), m * k);
    let mut y = vec![0.0f32; m * n];
    if let Some(bias) = bias {
        for row in y.chunks_exact_mut(n) {
            row.copy_from_slice(bias);
        }
    }
    match w {
        Weight::Rows { data, stride } => add_rows(x, m, k, n, data, stride, &mut y),
        Weight::Columns { data, stride } => add_columns(x, m, k, n, data, stride, &mut y),
    }
    y
}

/// `par` on rayon's pool when there is enough work and more than one task, else in order.
fn run_tasks(
    tasks: usize,
    work: usize,
    run: impl Fn(usize) -> Vec<f32> + Sync + Send,
) -> Vec<Vec<f32>> {
    if work >= PARALLEL_MIN && tasks > 1 {
        (0..tasks).into_par_iter().map(run).collect()
    } else {
        (0..tasks).map(run).collect()
    }
}

/// `y += x·W` with the weight's rows contiguous. Each task streams whole rows of a tile of up
/// to [`TILE`] outputs; where the tiles are too few to share out (every block layer of GPT-2
/// or Llama), a tile's rows are cut into chunks of about [`TASK`] elements, each adding into
/// its own accumulators, which are then added to `y` chunk after chunk.
fn add_rows(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    data: Elements<'_>,
    stride: usize,
    y: &mut [f32],
) {
    let tile = n.min(TILE);
    let tiles = n.div_ceil(tile);
    let chunk_rows = if tiles >= MIN_TASKS {
        k
    } else {
        let chunks = (k * tile).div_ceil(TASK).max(1);
        // At least 16 weight rows per row of x, so that the partial sums stay a sixteenth of
        // the weight's elements.
        k.div_ceil(chunks)
            .next_multiple_of(FUSED)
            .max(16 * m)
            .min(k)
    };
    let chunks = k.div_ceil(chunk_rows);
    let parts = run_tasks(tiles * chunks, m * n * k, |task| {
        let (t, c) = (task / chunks, task % chunks);
        let (j0, i0) = (t * tile, c * chunk_rows);
        let width = tile.min(n - j0);
        let mut acc = vec![0.0f32; m * width];
        let chunk = Chunk {
            x,
            m,
            k,
            i0,
            rows: chunk_rows.min(k - i0),
            w: data.from(i0 * stride + j0),
            stride,
            width,
        };
        rows_chunk(chunk, &mut acc);
        acc
    });
    add_parts(y, n, &parts, |task| task / chunks * tile);
}

/// `y += x·W` with the weight's columns contiguous: blocks of [`COLUMN_BLOCK`] outputs, each a
/// dot product of a row of `x` with a contiguous column, so each block streams one contiguous
/// stretch of the weight.
fn add_columns(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    data: Elements<'_>,
    stride: usize,
    y: &mut [f32],
) {
    let blocks = n.div_ceil(COLUMN_BLOCK);
    let parts = run_tasks(blocks, m * n * k, |b| {
        let j0 = b * COLUMN_BLOCK;
        let width = COLUMN_BLOCK.min(n - j0);
        let mut out = vec![0.0f32; m * width];
        let block = Block {
            x,
            m,
            k,
            w: data.from(j0 * stride),
            stride,
            width,
        };
        columns_block(block, &mut out);
        out
    });
    add_parts(y, n, &parts, |b| b * COLUMN_BLOCK);
}

/// `y[r, j0 + ..] += part[r, ..]` for each task's part, in task order, `j0` its first output:
/// the partial sums of tasks on the same outputs are added in a fixed order.
fn add_parts(y: &mut [f32], n: usize, parts: &[Vec<f32>], first: impl Fn(usize) -> usize) {
    if y.is_empty() {
        return;
    }
    let m = y.len() / n;
    for (task, part) in parts.iter().enumerate() {
        let (j0, width) = (first(task), part.len() / m);
        for (r, src) in part.chunks_exact(width).enumerate() {
            for (y, &p) in y[r * n + j0..r * n + j0 + width].iter_mut().zip(src) {
                *y += p;
            }
        }
    }
}

/// A chunk of a rows-contiguous weight: rows `i0..i0 + rows` of `x`'s columns, the weight from
/// element `(i0, j0)` with its row `stride`, for `width` outputs.
#[derive(Clone, Copy)]
struct Chunk<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    i0: usize,
    rows: usize,
    w: Elements<'a>,
    stride: usize,
    width: usize,
}

/// Outputs taken at a time from a group's rows: two AVX-512 vectors, held in registers (as
/// f32) while every row of `x` adds them in.
const LINE: usize = 32;

/// `acc[r, j] += a_r[0]·w_0[j] + a_r[1]·w_1[j] + a_r[2]·w_2[j] + a_r[3]·w_3[j]` for the `m`
/// rows of `x` (`acc` is `[m, width]`, `a_r` row `r`'s four values at `x[r·k + at..]`), the
/// four terms summed left to right before they are added: the same expression for every
/// element type, so a bf16 weight gives bit for bit the f32 result on its widened values.
///
/// Each [`LINE`] of the four rows is widened once and used by every row of `x`: at 8 rows
/// (batch-8 decoding) the weight is read from cache once instead of once per row.
///
/// With `ahead`, the cache lines `ahead` elements further on (the next group's rows) are asked
/// for as each line is read. The rows of a decoding layer are a few KiB each, too short a
/// stream for the hardware prefetcher to ramp up on: streaming GPT-2's `[768, 768]` and
/// `[768, 3072]` bf16 rows four at a time from memory went from 14 and 21 GB/s to 22 and 27 GB/s
/// on a 2-core Xeon VM (a burst of prefetches per group instead filled the line buffers).
#[inline(always)]
fn add_group<E: Widen>(
    acc: &mut [f32],
    x: &[f32],
    (m, k, at): (usize, usize, usize),
    w: [&[E]; FUSED],
    ahead: usize,
) {
    let width = w[0].len();
    let mut j = 0;
    while j < width {
        let len = LINE.min(width - j);
        for row in w {
            let at = row.as_ptr().wrapping_add(j + ahead);
            prefetch(at);
            if std::mem::size_of::<E>() * LINE > 64 {
                prefetch(at.wrapping_add(64 / std::mem::size_of::<E>()));
            }
        }
        if len == LINE {
            // Plain loops: `<[T; N]>::map` stays an out-of-line call, compiled without the
            // kernel's target features (8% of a decoding step in `perf`).
            let mut v = [[0.0f32; LINE]; FUSED];
            for (v, row) in v.iter_mut().zip(w) {
                let line: &[E; LINE] = row[j..j + LINE].try_into().expect("a whole line");
                for e in 0..LINE {
                    v[e] = line[e].widen();
                }
            }
            for r in 0..m {
                let a: &[f32; FUSED] = x[r * k + at..r * k + at + FUSED]
                    .try_into()
                    .expect("four values");
                let acc: &mut [f32; LINE] = (&mut acc[r * width + j..r * width + j + LINE])
                    .try_into()
                    .expect("a whole line");
                for e in 0..LINE {
                    acc[e] += a[0] * v[0][e] + a[1] * v[1][e] + a[2] * v[2][e] + a[3] * v[3][e];
                }
            }
        } else {
            for r in 0..m {
                let a = &x[r * k + at..r * k + at + FUSED];
                for e in j..width {
                    acc[r * width + e] += a[0] * w[0][e].widen()
                        + a[1] * w[1][e].widen()
                        + a[2] * w[2][e].widen()
                        + a[3] * w[3][e].widen();
                }
            }
        }
        j += len;
    }
}

/// `acc[r, ..width] += x[r, at] · w[..width]`: one row of the weight (a chunk's last rows).
#[inline(always)]
fn add_row<E: Widen>(acc: &mut [f32], x: &[f32], (m, k, at): (usize, usize, usize), w: &[E]) {
    for (r, acc) in acc.chunks_exact_mut(w.len()).enumerate().take(m) {
        let a = x[r * k + at];
        for (o, &v) in acc.iter_mut().zip(w) {
            *o += a * v.widen();
        }
    }
}

/// Asks for the cache line at `at` (a hint, which never faults; nothing on other
/// architectures).
#[inline(always)]
fn prefetch<E>(at: *const E) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// The rows of `chunk` in groups of [`FUSED`], each read where it lies, then the last rows one
/// at a time.
#[inline(always)]
fn rows_typed<E: Widen>(c: Chunk<'_>, w: &[E], acc: &mut [f32]) {
    let row = |i: usize| &w[i * c.stride..i * c.stride + c.width];
    let groups = c.rows / FUSED * FUSED;
    for i in (0..groups).step_by(FUSED) {
        let group = std::array::from_fn(|d| row(i + d));
        add_group(acc, c.x, (c.m, c.k, c.i0 + i), group, FUSED * c.stride);
    }
    for i in groups..c.rows {
        add_row(acc, c.x, (c.m, c.k, c.i0 + i), row(i));
    }
}

multiversion! {
    /// `acc[r, ..width] += Σ_i x[r, i0 + i] · w[i·stride + ..width]` over the chunk's rows, the
    /// weight in its own precision.
    fn rows_chunk(c: Chunk<'_>, acc: &mut [f32]) {
        match c.w {
            Elements::F32(w) => rows_typed(c, w, acc),
            // Widened as it is read (a shift), once per line for all rows of `x`.
            Elements::Bf16(w) => rows_typed(c, w, acc),
            // f16 has no cheap inline widening: a row at a time through F16C into a buffer,
            // then the f32 loop over the buffer.
            Elements::F16(w) => {
                let mut buf = vec![0.0f32; FUSED * c.width];
                let groups = c.rows / FUSED * FUSED;
                let mut i = 0;
                while i < c.rows {
                    let f = if i < groups { FUSED } else { 1 };
                    for (d, b) in buf.chunks_exact_mut(c.width).enumerate().take(f) {
                        let at = (i + d) * c.stride;
                        w[at..at + c.width].convert_to_f32_slice(b);
                    }
                    let at = (c.m, c.k, c.i0 + i);
                    if f == FUSED {
                        let group = std::array::from_fn(|d| &buf[d * c.width..(d + 1) * c.width]);
                        add_group(acc, c.x, at, group, 0);
                    } else {
                        add_row(acc, c.x, at, &buf[..c.width]);
                    }
                    i += f;
                }
            }
        }
    }
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

/// `x_r · column` for the `M` rows of `x` (`[M, k]`), each in [`lane_dot`]'s order (`LANES`
/// lanes, the lanes summed, then the remainder), so that each result is bit for bit the one-row
/// dot product. The column is read (and widened) once for all rows; `M` is a constant so that
/// the accumulators stay in registers.
///
/// [`lane_dot`]: super::kernel::lane_dot
#[inline(always)]
fn dots<E: Widen, const M: usize>(x: &[f32], k: usize, column: &[E]) -> [f32; M] {
    let mut acc = [[0.0f32; LANES]; M];
    let whole = k / LANES * LANES;
    for i in (0..whole).step_by(LANES) {
        let c: &[E; LANES] = column[i..i + LANES].try_into().expect("a whole vector");
        for (acc, x) in acc.iter_mut().zip(x.chunks_exact(k)) {
            let x: &[f32; LANES] = x[i..i + LANES].try_into().expect("a whole vector");
            for l in 0..LANES {
                acc[l] += x[l] * c[l].widen();
            }
        }
    }
    let mut out = [0.0f32; M];
    for ((out, acc), x) in out.iter_mut().zip(&acc).zip(x.chunks_exact(k)) {
        let rest: f32 = x[whole..]
            .iter()
            .zip(&column[whole..k])
            .map(|(x, w)| x * w.widen())
            .sum();
        *out = acc.iter().sum::<f32>() + rest;
    }
    out
}

/// `out[r, j] += x[r, ..] · w[j·stride + ..k]` for `j < width`, the `M` rows at once.
#[inline(always)]
fn columns_of<E: Widen, const M: usize>(b: Block<'_>, w: &[E], out: &mut [f32]) {
    let Block {
        x,
        k,
        stride,
        width,
        ..
    } = b;
    for j in 0..width {
        let sums = dots::<E, M>(x, k, &w[j * stride..j * stride + k]);
        for (r, sum) in sums.into_iter().enumerate() {
            out[r * width + j] += sum;
        }
    }
}

/// [`columns_of`] for the block's number of rows.
#[inline(always)]
fn columns<E: Widen>(b: Block<'_>, w: &[E], out: &mut [f32]) {
    match b.m {
        1 => columns_of::<E, 1>(b, w, out),
        2 => columns_of::<E, 2>(b, w, out),
        3 => columns_of::<E, 3>(b, w, out),
        4 => columns_of::<E, 4>(b, w, out),
        5 => columns_of::<E, 5>(b, w, out),
        6 => columns_of::<E, 6>(b, w, out),
        7 => columns_of::<E, 7>(b, w, out),
        _ => columns_of::<E, MAX_ROWS>(b, w, out),
    }
}

multiversion! {
    /// [`columns`] over the block's weight in its own precision.
    fn columns_block(block: Block<'_>, out: &mut [f32]) {
        match block.w {
            Elements::F32(w) => columns(block, w, out),
            Elements::Bf16(w) => columns(block, w, out),
            // f16 a column at a time through F16C into a buffer, each then read as a weight
            // of one column.
            Elements::F16(w) => {
                let mut buf = vec![0.0f32; block.k];
                let width = block.width;
                for j in 0..width {
                    let at = j * block.stride;
                    w[at..at + block.k].convert_to_f32_slice(&mut buf);
                    let one = Block { width: 1, stride: block.k, ..block };
                    let mut sums = [0.0f32; MAX_ROWS];
                    columns(one, &buf, &mut sums[..block.m]);
                    for (r, sum) in sums.into_iter().enumerate().take(block.m) {
                        out[r * width + j] += sum;
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
            // Several tiles of outputs, their rows cut into chunks; and tiles enough alone.
            (1, 40, 9000),
            (2, 9, 40000),
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
        for &(m, k, n) in &[(1, 70, 300), (2, 33, 129), (1, 768, 513), (8, 771, 700)] {
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

    /// The split into tasks and the order of their partial sums depend on the shape alone: one
    /// thread and three give the same bits, in both layouts and for a bf16 weight.
    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        let (m, k, n) = (3, 1000, 3000);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 29 % 83) as f32 - 41.0) / 30.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 23 % 97) as f32 - 48.0) / 45.0)
            .collect();
        let b16: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            pool.install(|| {
                [
                    Weight::Rows {
                        data: Elements::F32(&w),
                        stride: n,
                    },
                    Weight::Columns {
                        data: Elements::F32(&w),
                        stride: k,
                    },
                    Weight::Rows {
                        data: Elements::Bf16(&b16),
                        stride: n,
                    },
                ]
                .map(|layout| product(&x, m, k, n, layout, None))
            })
        };
        assert_eq!(on(1), on(3));
    }
}
