//! The int8 × int8 → i32 matrix product behind [`QuantizedLinear`](crate::QuantizedLinear).
//!
//! `acc[r, o] = Σ_k a[r, k] · b[o, k]`: both operands row-major with the reduction dimension
//! contiguous. On x86-64 CPUs with AVX-512 VNNI the kernel uses `vpdpbusd` (64 multiply-adds of
//! u8 × i8 into i32 per instruction; the activations are shifted by +128 into u8 and the shift is
//! taken back out with the precomputed weight sums); elsewhere a portable loop, compiled for
//! AVX2 where the CPU has it. Rows (or, for 4 rows or fewer, output columns) are split across
//! rayon's threads for large products; a thread spawned per call cost more than a small product.

use rayon::prelude::*;

use crate::error::{CompressError, Result};

/// Which kernel [`gemm_i8`] uses on this CPU.
pub fn int8_kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if has_vnni() {
            return "avx512-vnni";
        }
        if std::is_x86_feature_detected!("avx2") {
            return "avx2 (auto-vectorized)";
        }
    }
    "portable"
}

use crate::quantize::{QuantMode, QuantParams};

/// A weight `[n, k]` repacked once for the VNNI kernel (see `vnni::pack`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Packed {
    data: Vec<i8>,
    k4: usize,
    n_pad: usize,
}

/// The packed weight, or `None` where the CPU has no VNNI (the caller then uses [`gemm_i8`]).
pub(crate) fn pack_for_vnni(b: &[i8], n: usize, k: usize) -> Option<Packed> {
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        let (data, k4, n_pad) = vnni::pack(b, n, k);
        return Some(Packed { data, k4, n_pad });
    }
    let _ = (b, n, k);
    None
}

/// Per-output-channel terms of the rescaling: weight scale and zero point, the sum of the
/// weight codes, and the bias.
pub(crate) struct Columns<'a> {
    pub scale: &'a [f32],
    pub zero: &'a [i32],
    pub sums: &'a [i32],
    pub bias: &'a [f32],
}

/// The quantized linear layer in one pass over row blocks: quantize 4 input rows (with
/// `fixed` parameters, or a symmetric scale per row when `None`), multiply them against the
/// packed weight with VNNI, rescale to f32 and add the bias. No intermediate buffer larger than
/// 4 rows. Returns `false` (doing nothing) where the CPU lacks VNNI.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_linear(
    x: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    packed: &Packed,
    fixed: Option<QuantParams>,
    cols: &Columns<'_>,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        let rows_per = rows_per_thread(rows, n, k);
        let column_threads = column_threads(rows, n, k);
        if rows_per >= rows && column_threads > 1 {
            // Few rows (decoding): the threads split the output columns instead, each
            // quantizing the same rows (a few hundred values) and streaming its part of the
            // weight into its own buffer.
            let per = n.div_ceil(column_threads).next_multiple_of(vnni::COLS);
            let ranges: Vec<_> = (0..n).step_by(per).map(|o| o..(o + per).min(n)).collect();
            let parts: Vec<Vec<f32>> = ranges
                .par_iter()
                .map(|range| {
                    let mut part = vec![0f32; rows * range.len()];
                    // SAFETY: the CPU has the features the function is compiled for; the range
                    // starts on a tile boundary.
                    unsafe { vnni::fused(x, k, packed, fixed, cols, range.clone(), &mut part) };
                    part
                })
                .collect();
            for (range, part) in ranges.iter().zip(&parts) {
                for (r, src) in part.chunks_exact(range.len()).enumerate() {
                    out[r * n + range.start..r * n + range.end].copy_from_slice(src);
                }
            }
            return true;
        }
        x.par_chunks(rows_per * k)
            .zip(out.par_chunks_mut(rows_per * n))
            // SAFETY: the CPU has the features the function is compiled for.
            .for_each(|(x, out)| unsafe { vnni::fused(x, k, packed, fixed, cols, 0..n, out) });
        return true;
    }
    let _ = (x, rows, k, n, packed, fixed, cols, out);
    false
}

/// The (scale, zero point) a row is quantized with: `fixed`, or symmetric over its max |x|.
#[inline(always)]
pub(crate) fn row_params(row: &[f32], fixed: Option<QuantParams>) -> QuantParams {
    fixed.unwrap_or_else(|| {
        let bound = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        QuantParams::from_range(-bound, bound, QuantMode::Symmetric)
    })
}

/// Quantizes `row` with `p` into `q`, returning the sum of the codes. Rounds half away from
/// zero with a truncating cast (`f32::round` is a libm call on baseline x86-64).
#[inline(always)]
pub(crate) fn quantize_row(row: &[f32], p: QuantParams, q: &mut [i8]) -> i32 {
    let lo = if p.zero_point == 0 { -127.0 } else { -128.0 };
    let (inv, zp) = (1.0 / p.scale, p.zero_point as f32);
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(row) {
        let t = v * inv;
        let c = ((t + 0.5f32.copysign(t)) as i32 as f32 + zp).clamp(lo, 127.0) as i32;
        sum += c;
        *q = c as i8;
    }
    sum
}

/// `y = sx·sw·(acc - zw·Σx - zx·Σw + k·zx·zw) + b` for one output.
#[inline(always)]
pub(crate) fn rescale(
    acc: i32,
    k: usize,
    row: (QuantParams, i32),
    cols: &Columns<'_>,
    o: usize,
) -> f32 {
    let (p, row_sum) = row;
    let (zx, zw) = (p.zero_point, cols.zero[o]);
    let exact = if zx == 0 && zw == 0 {
        acc
    } else {
        acc - zw * row_sum - zx * cols.sums[o] + k as i32 * zx * zw
    };
    p.scale * cols.scale[o] * exact as f32 + cols.bias[o]
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512f")
}

/// Rows each thread multiplies (a multiple of the kernels' 4-row tiles): all of them below
/// ~1M multiply-adds, where a thread costs more than it saves.
fn rows_per_thread(rows: usize, n: usize, k: usize) -> usize {
    let threads = if rows * n * k < (1 << 20) {
        1
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
        cores.min(rows.div_ceil(4)).max(1)
    };
    rows.div_ceil(threads).next_multiple_of(4)
}

/// Threads that split the output columns of a product with too few rows to split them
/// ([`rows_per_thread`] gives one thread up to 4 rows): one per ~1M multiply-adds, at most one
/// per core and per 64-column tile.
fn column_threads(rows: usize, n: usize, k: usize) -> usize {
    let work = rows * n * k;
    if work < (1 << 20) {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
    cores.min(work >> 20).min(n.div_ceil(64)).max(1)
}

/// `acc[r·n + o] = Σ_k a[r·k + i] · b[o·k + i]` for `a: [rows, k]`, `b: [n, k]`;
/// `b_sums[o] = Σ_i b[o·k + i]` (the VNNI kernel needs it). Errors when a length does not fit
/// the sizes.
pub fn gemm_i8(
    a: &[i8],
    b: &[i8],
    b_sums: &[i32],
    rows: usize,
    n: usize,
    k: usize,
) -> Result<Vec<i32>> {
    if a.len() != rows * k || b.len() != n * k || b_sums.len() != n || k == 0 {
        return Err(CompressError::arg(format!(
            "gemm_i8: a has {} values, b {}, b_sums {}, for rows {rows}, n {n}, k {k}",
            a.len(),
            b.len(),
            b_sums.len()
        )));
    }
    let mut out = vec![0i32; rows * n];
    let rows_per = rows_per_thread(rows, n, k);
    if rows_per >= rows {
        gemm_rows(a, b, b_sums, n, k, &mut out);
        return Ok(out);
    }
    a.par_chunks(rows_per * k)
        .zip(out.par_chunks_mut(rows_per * n))
        .for_each(|(chunk, out)| gemm_rows(chunk, b, b_sums, n, k, out));
    Ok(out)
}

fn gemm_rows(a: &[i8], b: &[i8], b_sums: &[i32], n: usize, k: usize, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_vnni() {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { vnni::gemm(a, b, b_sums, n, k, out) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { gemm_avx2(a, b, n, k, out) };
            return;
        }
    }
    let _ = b_sums;
    gemm_portable(a, b, n, k, out);
}

#[inline(always)]
fn gemm_portable(a: &[i8], b: &[i8], n: usize, k: usize, out: &mut [i32]) {
    for (row, out) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (o, col) in out.iter_mut().zip(b.chunks_exact(k)) {
            *o = row
                .iter()
                .zip(col)
                .map(|(&x, &w)| x as i32 * w as i32)
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gemm_avx2(a: &[i8], b: &[i8], n: usize, k: usize, out: &mut [i32]) {
    gemm_portable(a, b, n, k, out)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    /// Output columns per tile: 4 registers of 16 i32 lanes.
    pub(super) const COLS: usize = 64;
    /// Rows per tile: 4 × 4 = 16 accumulator registers.
    const ROWS: usize = 4;
    /// Rows quantized together and run against each tile in turn (batch-16 decoding in one
    /// pass), so that a tile streamed from memory serves them all from cache.
    const PASS: usize = 16;

    /// `b: [n, k]` repacked as `[n_pad/COLS][k/4][COLS][4]`: for each group of 4 reduction
    /// indices, the 4 bytes of output `o` are adjacent, so one 64-byte load holds 16 outputs × 4
    /// weights, the operand `vpdpbusd` multiplies against 4 broadcast activation bytes (no
    /// horizontal sums); and each tile of [`COLS`] outputs is one contiguous stretch, which the
    /// micro-kernel streams from start to end. (Tiles interleaved group by group, as this
    /// packing first was, made each tile a 256-byte run every `n_pad·4` bytes, a stride the
    /// hardware prefetcher follows poorly: the same cost the f32 decoding product had.)
    pub(super) fn pack(b: &[i8], n: usize, k: usize) -> (Vec<i8>, usize, usize) {
        let k4 = k.div_ceil(4);
        let n_pad = n.next_multiple_of(COLS);
        let mut packed = vec![0i8; k4 * n_pad * 4];
        for o in 0..n {
            for i in 0..k {
                packed[at(k4, o, i / 4) + i % 4] = b[o * k + i];
            }
        }
        (packed, k4, n_pad)
    }

    /// Where the 4 bytes of output `o` for the group `g` of 4 reduction indices start in the
    /// packing.
    #[inline(always)]
    fn at(k4: usize, o: usize, g: usize) -> usize {
        ((o / COLS * k4 + g) * COLS + o % COLS) * 4
    }

    /// The micro-kernel shared by [`gemm`] and [`fused`]: the first `rr` (≤ `ROWS`) rows of
    /// `a_u8` (u8 codes, row stride `k4·4`) against the 64 packed output columns from `o0`.
    /// `acc[x][c]` holds the i32 sums of row `x` for outputs `o0 + 16c .. o0 + 16c + 16`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 VNNI, and `packed` must hold `k4 × n_pad × 4` bytes with
    /// `o0 + COLS <= n_pad`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_products(
        a_u8: &[u8],
        rr: usize,
        packed: &[i8],
        k4: usize,
        n_pad: usize,
        o0: usize,
    ) -> [[__m512i; 4]; ROWS] {
        debug_assert!(o0.is_multiple_of(COLS) && o0 + COLS <= n_pad);
        let mut acc = [[_mm512_setzero_si512(); 4]; ROWS];
        for i in 0..k4 {
            let mut w = [_mm512_setzero_si512(); 4];
            for (c, w) in w.iter_mut().enumerate() {
                // SAFETY: the tile from o0 holds k4 groups of COLS × 4 bytes, in bounds.
                *w = unsafe {
                    _mm512_loadu_si512(packed.as_ptr().add(at(k4, o0 + 16 * c, i)) as *const _)
                };
            }
            for (x, acc) in acc.iter_mut().enumerate().take(rr) {
                let at = x * k4 * 4 + i * 4;
                let group =
                    i32::from_le_bytes([a_u8[at], a_u8[at + 1], a_u8[at + 2], a_u8[at + 3]]);
                let xb = _mm512_set1_epi32(group);
                for c in 0..4 {
                    acc[c] = _mm512_dpbusd_epi32(acc[c], xb, w[c]);
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm(
        a: &[i8],
        b: &[i8],
        b_sums: &[i32],
        n: usize,
        k: usize,
        out: &mut [i32],
    ) {
        let rows = a.len() / k;
        let (packed, k4, n_pad) = pack(b, n, k);
        // Activations shifted to u8 (x + 128), each row padded to whole groups of 4 with the
        // zero-weight padding making the pad bytes irrelevant.
        let mut a_u8 = vec![0u8; rows * k4 * 4];
        for r in 0..rows {
            for i in 0..k {
                a_u8[r * k4 * 4 + i] = (a[r * k + i] as u8) ^ 0x80;
            }
        }
        let mut tile = [0i32; 16];
        let mut r0 = 0;
        while r0 < rows {
            let rr = (rows - r0).min(ROWS);
            let mut o0 = 0;
            while o0 < n {
                // SAFETY: the features are enabled on this function; `packed` is `k4 × n_pad × 4`.
                let acc =
                    unsafe { tile_products(&a_u8[r0 * k4 * 4..], rr, &packed, k4, n_pad, o0) };
                for (x, acc) in acc.iter().enumerate().take(rr) {
                    for (c, acc) in acc.iter().enumerate() {
                        let first = o0 + 16 * c;
                        if first >= n {
                            break;
                        }
                        // SAFETY: `tile` has 16 i32.
                        unsafe { _mm512_storeu_si512(tile.as_mut_ptr() as *mut _, *acc) };
                        let len = (n - first).min(16);
                        let row = &mut out[(r0 + x) * n + first..(r0 + x) * n + first + len];
                        for (j, y) in row.iter_mut().enumerate() {
                            // Σ (a + 128)·b = Σ a·b + 128·Σ b.
                            *y = tile[j] - 128 * b_sums[first + j];
                        }
                    }
                }
                o0 += COLS;
            }
            r0 += ROWS;
        }
    }
    /// Quantizes one row into u8 codes shifted by +128, 16 values per step: the activation
    /// quantization of the fused kernel. Rounds to nearest (ties to even). Returns the row's
    /// parameters and the sum of its signed codes.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn quantize_row_u8(
        row: &[f32],
        fixed: Option<super::QuantParams>,
        dst: &mut [u8],
    ) -> (super::QuantParams, i32) {
        let k = row.len();
        let mask_of = |i: usize| -> __mmask16 {
            if k - i >= 16 {
                0xFFFF
            } else {
                ((1u32 << (k - i)) - 1) as __mmask16
            }
        };
        let p = match fixed {
            Some(p) => p,
            None => {
                let mut m = _mm512_setzero_ps();
                let mut i = 0;
                while i < k {
                    // SAFETY: the mask reads only elements inside the row.
                    let v = unsafe { _mm512_maskz_loadu_ps(mask_of(i), row.as_ptr().add(i)) };
                    m = _mm512_max_ps(m, _mm512_abs_ps(v));
                    i += 16;
                }
                let bound = _mm512_reduce_max_ps(m);
                super::QuantParams::from_range(-bound, bound, super::QuantMode::Symmetric)
            }
        };
        let lo = if p.zero_point == 0 { -127 } else { -128 };
        let inv = _mm512_set1_ps(1.0 / p.scale);
        let (zp, lo, hi) = (
            _mm512_set1_epi32(p.zero_point),
            _mm512_set1_epi32(lo),
            _mm512_set1_epi32(127),
        );
        let flip = _mm_set1_epi8(i8::MIN);
        let mut sum = _mm512_setzero_si512();
        let mut i = 0;
        while i < k {
            let mask = mask_of(i);
            // SAFETY: masked to the row.
            let v = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i)) };
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, zp), lo), hi);
            let q = _mm512_maskz_mov_epi32(mask, q);
            sum = _mm512_add_epi32(sum, q);
            let bytes = _mm_xor_si128(_mm512_cvtepi32_epi8(q), flip);
            // SAFETY: masked to the destination's `k` bytes.
            unsafe { _mm_mask_storeu_epi8(dst.as_mut_ptr().add(i) as *mut i8, mask, bytes) };
            i += 16;
        }
        (p, _mm512_reduce_add_epi32(sum))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    /// The output columns `range` (starting on a multiple of [`COLS`]) of the rows of `x`, into
    /// `out` with rows of `range.len()`.
    pub(super) unsafe fn fused(
        x: &[f32],
        k: usize,
        packed: &super::Packed,
        fixed: Option<super::QuantParams>,
        cols: &super::Columns<'_>,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        debug_assert_eq!(range.start % COLS, 0);
        let width = range.len();
        let rows = x.len() / k;
        let (k4, n_pad) = (packed.k4, packed.n_pad);
        let mut a_u8 = vec![0u8; PASS * k4 * 4];
        let mut row_info = [(
            super::QuantParams {
                scale: 1.0,
                zero_point: 0,
            },
            0i32,
        ); PASS];
        let mut tile = [0i32; 16];
        let mut p0 = 0;
        while p0 < rows {
            let pass = (rows - p0).min(PASS);
            for xr in 0..pass {
                let row = &x[(p0 + xr) * k..(p0 + xr + 1) * k];
                // SAFETY: the features are enabled on this function.
                row_info[xr] =
                    unsafe { quantize_row_u8(row, fixed, &mut a_u8[xr * k4 * 4..xr * k4 * 4 + k]) };
            }
            let mut o0 = range.start;
            while o0 < range.end {
                // Every row of the pass against this tile: the tile is read from memory once,
                // then from cache.
                let mut r0 = 0;
                while r0 < pass {
                    let rr = (pass - r0).min(ROWS);
                    // SAFETY: the features are enabled on this function; `packed` is
                    // `k4 × n_pad × 4`.
                    let acc = unsafe {
                        tile_products(&a_u8[r0 * k4 * 4..], rr, &packed.data, k4, n_pad, o0)
                    };
                    for (xr, acc) in acc.iter().enumerate().take(rr) {
                        for (c, acc) in acc.iter().enumerate() {
                            let first = o0 + 16 * c;
                            if first >= range.end {
                                break;
                            }
                            // SAFETY: `tile` has 16 i32.
                            unsafe { _mm512_storeu_si512(tile.as_mut_ptr() as *mut _, *acc) };
                            let len = (range.end - first).min(16);
                            let at = (p0 + r0 + xr) * width + first - range.start;
                            let y = &mut out[at..at + len];
                            for (j, y) in y.iter_mut().enumerate() {
                                // Σ (x + 128)·w = Σ x·w + 128·Σ w.
                                let acc = tile[j] - 128 * cols.sums[first + j];
                                *y = super::rescale(acc, k, row_info[r0 + xr], cols, first + j);
                            }
                        }
                    }
                    r0 += ROWS;
                }
                o0 += COLS;
            }
            p0 += PASS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_the_definition() {
        // Several 64-column tiles too (the packing is tile-major).
        for &(rows, n, k) in &[
            (1, 1, 1),
            (5, 7, 63),
            (9, 6, 130),
            (8, 8, 64),
            (3, 2, 200),
            (6, 150, 70),
        ] {
            let a: Vec<i8> = (0..rows * k)
                .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
                .collect();
            let b: Vec<i8> = (0..n * k)
                .map(|i| ((i * 53 + 5) % 256) as u8 as i8)
                .collect();
            let sums: Vec<i32> = b
                .chunks(k)
                .map(|c| c.iter().map(|&x| x as i32).sum())
                .collect();
            let got = gemm_i8(&a, &b, &sums, rows, n, k).unwrap();
            let mut want = vec![0i32; rows * n];
            for r in 0..rows {
                for o in 0..n {
                    want[r * n + o] = (0..k)
                        .map(|i| a[r * k + i] as i32 * b[o * k + i] as i32)
                        .sum();
                }
            }
            assert_eq!(
                got,
                want,
                "rows {rows} n {n} k {k} on {}",
                int8_kernel_name()
            );
            // The fallbacks too, whatever this CPU would pick.
            let mut portable = vec![0i32; rows * n];
            gemm_portable(&a, &b, n, k, &mut portable);
            assert_eq!(portable, want);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                let mut avx2 = vec![0i32; rows * n];
                // SAFETY: the CPU has AVX2.
                unsafe { gemm_avx2(&a, &b, n, k, &mut avx2) };
                assert_eq!(avx2, want);
            }
        }
    }

    #[test]
    fn gemm_rejects_inconsistent_lengths() {
        assert!(gemm_i8(&[1, 2, 3], &[1, 2], &[3], 1, 1, 2).is_err());
        assert!(gemm_i8(&[], &[], &[], 0, 0, 0).is_err());
    }

    /// The fused VNNI layer (columns split over threads for a few rows; passes of 16 rows
    /// against each tile for more) gives bit for bit the portable path: each row quantized,
    /// one integer product, the same rescaling.
    #[test]
    fn the_fused_kernel_matches_the_portable_path() {
        for &(rows, n, k) in &[(2, 1000, 1100), (20, 130, 300), (8, 70, 33)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) / 20.0)
                .collect();
            let w: Vec<i8> = (0..n * k)
                .map(|i| ((i * 53 + 5) % 256) as u8 as i8)
                .collect();
            let sums: Vec<i32> = w
                .chunks(k)
                .map(|c| c.iter().map(|&v| v as i32).sum())
                .collect();
            let scale: Vec<f32> = (0..n).map(|o| 0.01 + o as f32 * 1e-4).collect();
            let zero = vec![0i32; n];
            let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.1).collect();
            let cols = Columns {
                scale: &scale,
                zero: &zero,
                sums: &sums,
                bias: &bias,
            };
            // Without VNNI there is no packing, and the fused path declines, writing nothing.
            let packed = pack_for_vnni(&w, n, k).unwrap_or(Packed {
                data: Vec::new(),
                k4: 0,
                n_pad: 0,
            });
            let mut fused = vec![0f32; rows * n];
            let ran = fused_linear(&x, rows, k, n, &packed, None, &cols, &mut fused);
            assert_eq!(ran, int8_kernel_name() == "avx512-vnni");
            let mut xq = vec![0i8; rows * k];
            let mut info = Vec::new();
            for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(k)) {
                let p = row_params(row, None);
                info.push((p, quantize_row(row, p, q)));
            }
            let acc = gemm_i8(&xq, &w, &sums, rows, n, k).unwrap();
            let want: Vec<f32> = (0..rows * n)
                .map(|t| rescale(acc[t], k, info[t / n], &cols, t % n))
                .collect();
            if ran {
                assert_eq!(fused, want, "rows {rows} n {n} k {k}");
            } else {
                assert!(fused.iter().all(|&v| v == 0.0));
            }
        }
    }
}
