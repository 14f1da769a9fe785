//! What the fused flex kernels share: reading and writing a `FlexTensor`'s f32 buffer, the
//! split of a buffer across rayon's threads, the choice of the widest vector instructions the
//! CPU has, and `exp`/`erfc` written so that a loop of them vectorizes.
//!
//! The kernels are plain loops over slices (no bounds checks in the inner loop), compiled three
//! times: for AVX-512, for AVX2 + FMA (chosen at run time with `is_x86_feature_detected!`), and
//! for the baseline target. `f32::exp` and `erff` are scalar libm calls that stop LLVM from
//! vectorizing a loop, hence the polynomial versions here.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

/// Elements one rayon task handles: below twice this, a kernel runs on the calling thread
/// (spawning costs more than it saves on small tensors).
pub(crate) const CHUNK: usize = 1 << 14;

/// `x`'s f32 elements in row-major order, without a copy when its layout already is.
pub(crate) fn contiguous(x: FlexTensor) -> FlexTensor {
    if x.as_slice::<f32>().is_some() {
        x
    } else {
        x.to_contiguous()
    }
}

/// The f32 elements of a tensor [`contiguous`] returned.
pub(crate) fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>()
        .expect("a fused kernel's input is an f32 tensor made contiguous first")
}

/// `x` (contiguous) as a buffer to overwrite: its own when nothing else holds it (a gradient,
/// an inference activation), else a copy.
pub(crate) fn owned(x: FlexTensor) -> FlexTensor {
    // `to_contiguous` hands back `x` itself when its buffer is exactly its elements.
    x.to_contiguous()
}

/// A new f32 tensor of `shape` over `values`.
pub(crate) fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Whether `x` is an f32 tensor (the kernels' dtype; the callers take the composite path for
/// the others).
pub(crate) fn is_f32(x: &FlexTensor) -> bool {
    x.dtype() == DType::F32
}

/// Runs `f(src, dst)` on matching chunks of `src` and `dst` (same length), on rayon's threads
/// when the buffer is large.
pub(crate) fn zip_chunks(src: &[f32], dst: &mut [f32], f: fn(&[f32], &mut [f32])) {
    debug_assert_eq!(src.len(), dst.len());
    if dst.len() < 2 * CHUNK {
        f(src, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(s, d));
    }
}

/// A kernel function compiled for AVX-512, for AVX2 + FMA and for the baseline target, the
/// widest the CPU has chosen at each call. The body is a function marked `#[inline(always)]`
/// that each variant calls directly: LLVM then inlines it into every variant (a closure or a
/// generic `FnOnce` may stay out of line, compiled for the baseline).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("bmi2")
                {
                    // SAFETY: the CPU has every feature the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `eˣ` for `x ≤ 0` (Cephes' `expf`: `2ⁿ·p(r)`, `r = x − n·ln 2`; within 2 ulp), without a
/// branch or a libm call so that a loop of it vectorizes. Below −87.3 it returns e^−87.3
/// (≈ 1.2e−38, the smallest normal f32s) rather than a subnormal or zero.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 0.0);
    // n = round(x·log₂e): adding and removing 1.5·2²³ rounds to an integer (|x·log₂e| < 2²²)
    // in two vectorizable adds, where `round`/`floor` are libm calls on the baseline target.
    const ROUND: f32 = 12_582_912.0;
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let er = p * r * r + r + 1.0;
    // 2ⁿ, n in [-126, 0]: built in the exponent field.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * two_n
}

/// `σ(u) = 1/(1 + e⁻ᵘ)`, as `e/(1 + e)` with `e = eᵘ` for negative `u` (so that `exp` never
/// overflows and a small `σ` keeps its relative precision).
#[inline(always)]
pub(crate) fn sigmoid(u: f32) -> f32 {
    let e = exp_neg(-u.abs());
    let s = 1.0 / (1.0 + e);
    if u >= 0.0 { s } else { e * s }
}

/// The complementary error function for `z ≥ 0`, with a relative error under 1.2e−7 for every
/// `z` (Press et al., *Numerical Recipes*, `erfcc`: a Chebyshev fit of `erfc(z)·e^{z²}` in
/// `t = 1/(1 + z/2)`). Relative rather than absolute precision is what GELU needs for negative
/// inputs, where `1 + erf(x/√2)` is small.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
pub(crate) fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77_f32;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_87;
    p = p * t - 1.135_203_98;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_68;
    p = p * t - 1.265_512_23;
    t * exp_neg(p - z * z)
}

/// The sum of `x`, in 16 independent lanes (a float sum only vectorizes when written so).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}
