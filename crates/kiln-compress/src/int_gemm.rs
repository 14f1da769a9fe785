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

    /// 64 bytes of `p[..len]` (zeros past `len`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(p: *const i8, len: usize) -> __m512i {
        if len >= 64 {
            // SAFETY: 64 readable bytes.
            unsafe { _mm512_loadu_si512(p as *const _) }
        } else {
            let mask: __mmask64 = (1u64 << len) - 1;
            // SAFETY: the mask only reads the first `len` bytes.
            unsafe { _mm512_maskz_loadu_epi8(mask, p) }
        }
    }

    /// Rows of `a` (i8, shifted to u8 by flipping the sign bit) against every row of `b`, in
    /// 4 × 4 tiles: 16 accumulators, each a-load and b-load reused four times.
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
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut r = 0;
        while r < rows {
            let rr = (rows - r).min(4);
            let mut o = 0;
            while o < n {
                let oo = (n - o).min(4);
                let mut acc = [[_mm512_setzero_si512(); 4]; 4];
                let mut i = 0;
                while i < k {
                    let len = k - i;
                    let mut av = [_mm512_setzero_si512(); 4];
                    let mut bv = [_mm512_setzero_si512(); 4];
                    for (x, v) in av.iter_mut().enumerate().take(rr) {
                        // SAFETY: row r + x exists and has k - i bytes from i.
                        let raw = unsafe { load(a.as_ptr().add((r + x) * k + i), len) };
                        // Zero-padded tail bytes flip to 128; the matching b bytes are zero.
                        *v = _mm512_xor_si512(raw, flip);
                    }
                    for (y, v) in bv.iter_mut().enumerate().take(oo) {
                        // SAFETY: row o + y of b exists and has k - i bytes from i.
                        *v = unsafe { load(b.as_ptr().add((o + y) * k + i), len) };
                    }
                    for x in 0..rr {
                        for y in 0..oo {
                            acc[x][y] = _mm512_dpbusd_epi32(acc[x][y], av[x], bv[y]);
                        }
                    }
                    i += 64;
                }
                for x in 0..rr {
                    for y in 0..oo {
                        // Σ (a + 128)·b = Σ a·b + 128·Σ b.
                        out[(r + x) * n + o + y] =
                            _mm512_reduce_add_epi32(acc[x][y]) - 128 * b_sums[o + y];
                    }
                }
                o += 4;
            }
            r += 4;
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
