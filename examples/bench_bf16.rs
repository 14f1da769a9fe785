//! What bf16 arithmetic can gain on this CPU (issue 25's first question): the multiply-adds per
//! second of one thread in f32 (AVX-512 `vfmadd` on 16 lanes) against bf16 (AVX-512 BF16's
//! `vdpbf16ps`: two bf16 products into each of 16 f32 lanes), both from 24 independent
//! accumulators held in registers, so that each loop runs at its instruction's throughput, not
//! its latency.
//!
//! ```text
//! cargo run --release --example bench_bf16
//! ```
//!
//! bf16 training pays on a CPU only where the bf16 instruction does more multiply-adds per
//! cycle than f32's FMA (or where AMX tiles are exposed, `amx_bf16` in `/proc/cpuinfo`); this
//! prints the ratio, and the features found, so that a figure in `docs/benchmarks.md` says
//! which kind of machine it came from.

use std::time::Instant;

/// Iterations of each loop (each runs 24 instructions).
const ITERATIONS: usize = 20_000_000;

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::x86_64::*;

    /// `ITERATIONS × 24` bf16 dot-product instructions; returns a sum so nothing is dropped.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_dots(iterations: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        // SAFETY: 512-bit integer vectors reinterpreted as 32 bf16 values each.
        let (a, b): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3c00_3c00)),
            )
        };
        for _ in 0..iterations {
            for lane in &mut acc {
                *lane = _mm512_dpbf16_ps(*lane, a, b);
            }
        }
        total(&acc)
    }

    /// Every lane of every accumulator added up (what keeps the loops from being dropped).
    #[target_feature(enable = "avx512f")]
    fn total(acc: &[__m512; 24]) -> f32 {
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
        _mm512_reduce_add_ps(sum)
    }

    /// `ITERATIONS × 24` f32 fused multiply-adds.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn f32_fmas(iterations: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        let (a, b) = (_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        for _ in 0..iterations {
            for lane in &mut acc {
                *lane = _mm512_fmadd_ps(*lane, a, b);
            }
        }
        total(&acc)
    }
}

/// Multiply-adds per second of `run`, which performs `macs` of them.
fn rate(macs: f64, run: impl FnOnce() -> f32) -> f64 {
    let start = Instant::now();
    std::hint::black_box(run());
    macs / start.elapsed().as_secs_f64()
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            "avx512bf16" => std::is_x86_feature_detected!("avx512bf16"),
            // Rust's AMX detection is unstable: Linux's flag, where there is one.
            "amx-bf16" => std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "amx_bf16")),
            _ => false,
        };
        let features: Vec<&str> = ["avx512f", "avx512bf16", "amx-bf16"]
            .into_iter()
            .filter(|f| has(f))
            .collect();
        println!("CPU features: {}", features.join(" "));
        if !has("avx512f") {
            println!("no AVX-512: nothing to compare");
            return;
        }
        let instructions = (ITERATIONS * 24) as f64;
        // SAFETY: AVX-512F is present (checked above).
        let f32_rate = rate(instructions * 16.0, || unsafe {
            probe::f32_fmas(ITERATIONS)
        });
        println!(
            "f32 FMA (16 lanes):           {:6.1} G multiply-adds/s per thread",
            f32_rate / 1e9
        );
        if has("avx512bf16") {
            // SAFETY: AVX-512 BF16 is present (checked).
            let bf16_rate = rate(instructions * 32.0, || unsafe {
                probe::bf16_dots(ITERATIONS)
            });
            println!(
                "bf16 vdpbf16ps (16 × 2 pairs): {:6.1} G multiply-adds/s per thread: {:.2}x f32",
                bf16_rate / 1e9,
                bf16_rate / f32_rate
            );
        } else {
            println!("no AVX-512 BF16: bf16 can only save memory here, not time");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("the probe is for x86-64 CPUs");
}
