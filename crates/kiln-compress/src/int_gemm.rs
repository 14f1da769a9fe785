//! The int8 × int8 → i32 matrix product behind [`QuantizedLinear`](crate::QuantizedLinear).
//!
//! `acc[r, o] = Σ_k a[r, k] · b[o, k]`: both operands row-major with the reduction dimension
//! contiguous. On x86-64 CPUs with AVX-512 VNNI the kernel uses `vpdpbusd` (64 multiply-adds of
//! u8 × i8 into i32 per instruction; the activations are shifted by +128 into u8 and the shift is
//! taken back out with the precomputed weight sums); elsewhere a portable loop, compiled for
//! AVX2 where the CPU has it. Rows are split across threads for large products.

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

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512f")
}

/// `acc[r·n + o] = Σ_k a[r·k + i] · b[o·k + i]` for `a: [rows, k]`, `b: [n, k]`;
/// `b_sums[o] = Σ_i b[o·k + i]` (the VNNI kernel needs it). Panics only on inconsistent
/// lengths, which callers inside the crate rule out.
pub(crate) fn gemm_i8(
    a: &[i8],
    b: &[i8],
    b_sums: &[i32],
    rows: usize,
    n: usize,
    k: usize,
) -> Vec<i32> {
    assert_eq!(a.len(), rows * k);
    assert_eq!(b.len(), n * k);
    let mut out = vec![0i32; rows * n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    // Below ~1M multiply-adds a thread costs more than it saves.
    let threads = if rows * n * k < (1 << 20) {
        1
    } else {
        threads.min(rows.div_ceil(4)).max(1)
    };
    if threads == 1 {
        gemm_rows(a, b, b_sums, n, k, &mut out);
        return out;
    }
    let rows_per = rows.div_ceil(threads).next_multiple_of(4);
    std::thread::scope(|scope| {
        for (chunk, out) in a.chunks(rows_per * k).zip(out.chunks_mut(rows_per * n)) {
            scope.spawn(move || gemm_rows(chunk, b, b_sums, n, k, out));
        }
    });
    out
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
    const COLS: usize = 64;
    /// Rows per tile: 4 × 4 = 16 accumulator registers.
    const ROWS: usize = 4;

    /// `b: [n, k]` repacked as `[k/4][n_pad][4]`: for each group of 4 reduction indices, the 4
    /// bytes of output `o` are adjacent, so one 64-byte load holds 16 outputs × 4 weights, the
    /// operand `vpdpbusd` multiplies against 4 broadcast activation bytes. No horizontal sums.
    fn pack(b: &[i8], n: usize, k: usize) -> (Vec<i8>, usize, usize) {
        let k4 = k.div_ceil(4);
        let n_pad = n.next_multiple_of(COLS);
        let mut packed = vec![0i8; k4 * n_pad * 4];
        for o in 0..n {
            for i in 0..k {
                packed[((i / 4) * n_pad + o) * 4 + i % 4] = b[o * k + i];
            }
        }
        (packed, k4, n_pad)
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
                let mut acc = [[_mm512_setzero_si512(); 4]; ROWS];
                for i in 0..k4 {
                    let mut w = [_mm512_setzero_si512(); 4];
                    for (c, w) in w.iter_mut().enumerate() {
                        // SAFETY: o0 + 16c + 16 <= n_pad, so 64 bytes are in bounds.
                        *w = unsafe {
                            _mm512_loadu_si512(
                                packed.as_ptr().add((i * n_pad + o0 + 16 * c) * 4) as *const _
                            )
                        };
                    }
                    for (x, acc) in acc.iter_mut().enumerate().take(rr) {
                        let at = (r0 + x) * k4 * 4 + i * 4;
                        let group = i32::from_le_bytes([
                            a_u8[at],
                            a_u8[at + 1],
                            a_u8[at + 2],
                            a_u8[at + 3],
                        ]);
                        let xb = _mm512_set1_epi32(group);
                        for c in 0..4 {
                            acc[c] = _mm512_dpbusd_epi32(acc[c], xb, w[c]);
                        }
                    }
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_the_definition() {
        for &(rows, n, k) in &[(1, 1, 1), (5, 7, 63), (9, 6, 130), (8, 8, 64), (3, 2, 200)] {
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
            let got = gemm_i8(&a, &b, &sums, rows, n, k);
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
        }
    }
}
