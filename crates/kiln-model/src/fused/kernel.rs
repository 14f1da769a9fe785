//! What the fused flex kernels share: reading and writing a `FlexTensor`'s f32 buffer, the
//! split of a buffer across rayon's threads, the choice of the widest vector instructions the
//! CPU has, and `exp`/`erfc` and row reductions written so that a loop of them vectorizes.
//!
//! The kernels are plain loops over slices (no bounds checks in the inner loop), compiled three
//! times: for AVX-512, for AVX2 + FMA (chosen at run time with `is_x86_feature_detected!`), and
//! for the baseline target. `f32::exp` and `erff` are scalar libm calls that stop LLVM from
//! vectorizing a loop, hence the polynomial versions here.

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{Bytes, DType, FloatDType, Shape, bf16, f16};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements one rayon task handles: below twice this ([`PARALLEL_MIN`]), a kernel runs on the
/// calling thread (spawning costs more than it saves on small tensors).
pub(crate) const CHUNK: usize = 1 << 14;

/// Elements below which a kernel runs on the calling thread.
pub(crate) const PARALLEL_MIN: usize = 2 * CHUNK;

/// The lanes the row reductions accumulate in: AVX-512's 16 `f32`s.
pub(crate) const LANES: usize = 16;

/// `x` as a contiguous f32 tensor: itself when it already is one, else cast and/or copied.
pub(crate) fn f32_contiguous(x: FlexTensor) -> FlexTensor {
    let x = as_f32(x);
    if x.as_slice::<f32>().is_some() {
        x
    } else {
        x.to_contiguous()
    }
}

/// `x` as f32: itself, or converted (bf16 and f16 tensors run the f32 kernels: their values are
/// exact in f32, and the kernels accumulate in f32 anyway). Burn-flex 0.22.1's `float_cast`
/// converts one element at a time through a generic conversion on one thread (17% of a bf16
/// training step); here bf16 is a vectorized loop ([`widen_bf16`], [`narrow_bf16`], on rayon's
/// threads for large tensors) and f16 `half`'s slice conversion (F16C).
pub(crate) fn as_f32(x: FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let out: Vec<f32> = match x.dtype() {
        DType::F32 => return x,
        DType::BF16 => {
            let x = contiguous::<bf16>(x);
            let src: &[u16] = bytemuck::cast_slice(x.as_slice::<bf16>().unwrap_or_default());
            convert(src, widen_bf16)
        }
        DType::F16 => {
            // `half`'s slice conversion uses F16C's vector instructions where the CPU has them.
            let x = contiguous::<f16>(x);
            let src = x.as_slice::<f16>().unwrap_or_default();
            let mut out = vec![0.0f32; src.len()];
            src.convert_to_f32_slice(&mut out);
            out
        }
        _ => return Flex::float_cast(x, FloatDType::F32),
    };
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// A kernel's f32 result in `dtype`, the dtype of the tensors it came from (rounded to nearest
/// even, as `half` and Burn round).
pub(crate) fn in_dtype(x: FlexTensor, dtype: DType) -> FlexTensor {
    if x.dtype() == dtype {
        return x;
    }
    if x.dtype() != DType::F32 || !matches!(dtype, DType::BF16 | DType::F16) {
        return Flex::float_cast(x, dtype.into());
    }
    let shape = Layout::contiguous(x.layout().shape().clone());
    let x = contiguous::<f32>(x);
    let src = x.as_slice::<f32>().unwrap_or_default();
    if dtype == DType::BF16 {
        FlexTensor::new(
            Bytes::from_elems(convert(src, narrow_bf16)),
            shape,
            DType::BF16,
        )
    } else {
        let mut out = vec![f16::ZERO; src.len()];
        out.convert_from_f32_slice(src);
        FlexTensor::new(Bytes::from_elems(out), shape, DType::F16)
    }
}

/// `x` with its elements (of type `E`) in order in its buffer.
fn contiguous<E: burn::tensor::Element + bytemuck::Pod>(x: FlexTensor) -> FlexTensor {
    if x.as_slice::<E>().is_some() {
        x
    } else {
        x.to_contiguous()
    }
}

/// Elements below which a conversion runs on the calling thread: it only streams memory, so
/// waking rayon's threads pays for large tensors only.
const PARALLEL_CONVERT: usize = 1 << 18;

/// `src` converted element by element by `f`, written straight into the new buffer (no
/// zero-filling first), on rayon's threads when it is large.
fn convert<S: Sync, D: Send>(src: &[S], f: fn(&[S], &mut [MaybeUninit<D>])) -> Vec<D> {
    let mut out = Vec::with_capacity(src.len());
    let dst = &mut out.spare_capacity_mut()[..src.len()];
    if src.len() < PARALLEL_CONVERT {
        f(src, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(s, d));
    }
    // SAFETY: `f` wrote every one of the `src.len()` elements.
    unsafe { out.set_len(src.len()) };
    out
}

/// The f32 elements of a tensor [`f32_contiguous`] returned.
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

/// A flex tensor of `shape` over `values` (no copy), cast to `dtype` when it is not f32.
pub(crate) fn from_f32(values: Vec<f32>, shape: impl Into<Shape>, dtype: DType) -> FlexTensor {
    let out = FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape.into()),
        DType::F32,
    );
    in_dtype(out, dtype)
}

/// A matrix operand: its first element and its row and column strides, in elements.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl Operand {
    /// The transpose, read through the strides.
    pub(crate) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst = beta·lhs·rhs`, or `dst += beta·lhs·rhs` when `accumulate`, for `lhs` `[m, k]`, `rhs`
/// `[k, n]` and a row-major `dst` whose rows are `dst_rs` elements apart: `gemm::gemm`, whose
/// every operand is read through its strides (no transpose is copied).
///
/// With `k == 0` gemm may leave `dst` as it was: callers that do not accumulate fill it first
/// or handle that case themselves.
///
/// # Safety
/// The operands and `dst` lie in live buffers with these sizes and strides; nothing else
/// reads or writes `dst` meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: as promised by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs `f(src, dst)` on matching chunks of `src` and `dst` (same length), on rayon's threads
/// when the buffer is large.
pub(crate) fn zip_chunks(src: &[f32], dst: &mut [f32], f: fn(&[f32], &mut [f32])) {
    debug_assert_eq!(src.len(), dst.len());
    if dst.len() < PARALLEL_MIN {
        f(src, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(s, d));
    }
}

/// A kernel function compiled for AVX-512, for AVX2 + FMA and for the baseline target, the
/// widest the CPU has chosen at each call. The body is a function marked `#[inline(always)]`
/// that each variant calls directly: LLVM then inlines it (and the `#[inline(always)]` helpers it
/// calls: `exp`, the lane reductions) into every `#[target_feature]` copy and vectorizes its
/// loops at that width (a closure or a generic `FnOnce` may stay out of line, compiled for the
/// baseline). CI's CPUs may lack AVX-512; other architectures get the baseline.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,bmi2")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
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

multiversion! {
    /// bf16 bits to f32: the bits shifted into the high half (exact).
    fn widen_bf16(src: &[u16], dst: &mut [MaybeUninit<f32>]) {
        for (d, &b) in dst.iter_mut().zip(src) {
            d.write(f32::from_bits(u32::from(b) << 16));
        }
    }
}

multiversion! {
    /// f32 to bf16 bits, rounded to nearest even; a NaN stays a (quiet) NaN.
    fn narrow_bf16(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            let bits = v.to_bits();
            let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
            let nan = ((bits >> 16) | 0x40) as u16;
            d.write(bf16::from_bits(if v.is_nan() { nan } else { rounded }));
        }
    }
}

/// `e^x` to about 1 ulp (Cephes' `expf`: `2^n · p(r)` with `r = x − n·ln 2`), in plain
/// arithmetic that LLVM vectorizes (`f32::exp` is a libm call per element). Exactly 0
/// below −87 (where `e^x` leaves the normal range) and for `-inf`; NaN stays NaN; inputs
/// above 88 are clamped (softmax and log-softmax only take `x − max ≤ 0`).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // t's low mantissa bits hold n: 2^n as the float with exponent n + 127.
    let two_n = f32::from_bits(
        t.to_bits()
            .wrapping_sub(0x4B40_0000)
            .wrapping_add(127)
            .wrapping_shl(23),
    );
    if x < -87.0 { 0.0 } else { p * two_n }
}

/// `σ(u) = 1/(1 + e⁻ᵘ)`, as `e/(1 + e)` with `e = eᵘ` for negative `u` (so that `exp` never
/// overflows and a small `σ` keeps its relative precision).
#[inline(always)]
pub(crate) fn sigmoid(u: f32) -> f32 {
    let e = exp(-u.abs());
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
    t * exp(p - z * z)
}

/// The largest element (`-inf` for an empty slice), in `LANES` independent lanes so that
/// the loop vectorizes.
#[inline(always)]
pub(crate) fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The sum of the elements, in `LANES` independent lanes.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// `Σ a ⊙ b` over the shorter of the two, in `LANES` independent lanes; `b` may be bf16 bits,
/// widened as they are read (the same sums in the same order as on their f32 values).
#[inline(always)]
pub(crate) fn lane_dot<E: Widen>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y.widen())
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l].widen();
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// An element a kernel reads as f32: f32 itself, or bf16 bits (`u16`), widened exactly by a
/// shift into the high half, which vectorizes with the arithmetic around it.
pub(crate) trait Widen: Copy + Sync {
    /// The value as f32.
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

/// Runs `f(first_row, rows)` over `out` in blocks of whole rows of `row_len` outputs, on
/// rayon's pool when the work (`work_per_row` elements read per row) pays for it.
pub(crate) fn for_row_blocks(
    out: &mut [f32],
    row_len: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    if rows * work_per_row < PARALLEL_MIN {
        return f(0, out);
    }
    let rows = (CHUNK / work_per_row.max(1)).max(1);
    out.par_chunks_mut(rows * row_len)
        .enumerate()
        .for_each(|(n, block)| f(n * rows, block));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}
