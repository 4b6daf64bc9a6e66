//! SIMD building blocks over contiguous slices.
//!
//! Each loop keeps `L` independent f64 accumulators in a lane array, which LLVM maps onto vector registers (eight
//! 256-bit registers for f64 under AVX2), so the loops are both vectorized and free of a serial dependency.
//! Sums run in blocks of `BLOCK` elements; block results are combined in `f64` with Neumaier compensation, so
//! the error does not grow with the length of the input (it stays at a few ulps of one block).

use super::dispatch::{dispatch, Kernel, Mode};
use super::Real;

/// Accumulator lanes (8 x 4 f64 or 4 x 8 f32 in AVX2 registers).
pub const L: usize = 32;
/// Elements per summation block.
pub const BLOCK: usize = 512;

#[inline(always)]
fn tree(mut a: [f64; L]) -> f64 {
    let mut w = L / 2;
    while w > 0 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// Neumaier-compensated running sum in f64.
#[derive(Debug, Clone, Copy, Default)]
pub struct Neumaier {
    s: f64,
    c: f64,
}

impl Neumaier {
    #[inline(always)]
    pub fn add(&mut self, v: f64) {
        let t = self.s + v;
        if self.s.abs() >= v.abs() {
            self.c += (self.s - t) + v;
        } else {
            self.c += (v - t) + self.s;
        }
        self.s = t;
    }
    #[inline(always)]
    pub fn value(self) -> f64 {
        // a non-finite running sum makes the compensation meaningless (inf - inf); keep IEEE semantics
        if self.s.is_finite() {
            self.s + self.c
        } else {
            self.s
        }
    }
}

/// `x` as `&mut [U]` when `T` is `U`.
#[inline(always)]
fn same_type_mut<T: 'static, U: 'static>(x: &mut [T]) -> Option<&mut [U]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>() {
        // SAFETY: T and U are the same type.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<U>(), x.len()) })
    } else {
        None
    }
}

/// `x` as `&[U]` when `T` is `U`.
#[inline(always)]
fn same_type<T: 'static, U: 'static>(x: &[T]) -> Option<&[U]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>() {
        // SAFETY: T and U are the same type.
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<U>(), x.len()) })
    } else {
        None
    }
}

/// Whether the explicit AVX2 loops of [`avx2`] may run: in the fused instantiation, on a CPU that has AVX2+FMA
/// (checked again here so that a `Fused` instantiation run elsewhere stays correct, just slower).
#[inline(always)]
fn use_avx2<M: Mode>() -> bool {
    M::FUSED
        && cfg!(target_arch = "x86_64")
        && super::dispatch::simd_level() == super::dispatch::SimdLevel::Avx2Fma
}

// Block sums accumulate in f64 lanes: exact widening for f32 inputs (float32 sums are as accurate as float64
// ones), and a no-op for f64.
#[inline(always)]
fn block_sum<T: Real, M: Mode>(x: &[T]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        if let Some(x) = same_type::<T, f32>(x) {
            // SAFETY: the CPU has AVX2 and FMA (use_avx2).
            return unsafe { avx2::block_sum_f32(x) };
        }
    }
    // `x - 0` is `x` for every value (-0.0 included): the compiler drops the subtraction
    shifted_sum_lanes(x, T::ZERO)
}

/// Pairwise sum of the lanes.
#[inline(always)]
pub(crate) fn tree_t<T: Real>(mut a: [T; L]) -> T {
    let mut w = L / 2;
    while w > 0 {
        for i in 0..w {
            a[i] = a[i] + a[i + w];
        }
        w /= 2;
    }
    a[0]
}

// Products accumulate in f64 lanes: an f64 FMA for f64 inputs; for f32 inputs the (rounded) f32 product is
// widened and added in f64, which vectorizes (mul, convert, add) and keeps the sum of products exact to f64.
#[inline(always)]
fn block_dot<T: Real, M: Mode>(x: &[T], y: &[T]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        // SAFETY (both): the CPU has AVX2 and FMA (use_avx2).
        if let (Some(x), Some(y)) = (same_type::<T, f64>(x), same_type::<T, f64>(y)) {
            return unsafe { avx2::block_dot_f64::<false>(x, y) };
        }
        if let (Some(x), Some(y)) = (same_type::<T, f32>(x), same_type::<T, f32>(y)) {
            return unsafe { avx2::block_dot_f32(x, y) };
        }
    }
    block_dot_lanes::<T, M>(x, y)
}

/// Sum of squares of a block, loading each vector once. f64: [`block_dot`] of `x` with itself (the same
/// arithmetic, so the same bits). f32: each value is widened first and squared in f64 ([`sumsq_f32_lanes`]), so
/// every square is exact (24-bit significands) and only the additions round; [`SumSq`] keeps that equal to
/// NumPy's f32 squares.
#[inline(always)]
fn block_sumsq<T: Real, M: Mode>(x: &[T]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        // SAFETY (both): the CPU has AVX2 and FMA (use_avx2).
        if let Some(x) = same_type::<T, f64>(x) {
            return unsafe { avx2::block_dot_f64::<true>(x, x) };
        }
        if let Some(x) = same_type::<T, f32>(x) {
            return unsafe { avx2::sumsq_f32(x) };
        }
    }
    if let Some(x) = same_type::<T, f32>(x) {
        return sumsq_f32_lanes(x);
    }
    block_dot_lanes::<T, M>(x, x)
}

/// The f64 sum of squares of f32 values on the lane array of [`shifted_sum_lanes`] (lane `i` takes elements
/// `i`, `i + L`, ...). A square of a widened f32 is exact in f64, so a fused multiply-add and a multiply then
/// add give the same bits.
#[inline(always)]
fn sumsq_f32_lanes(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; L];
    let mut it = x.chunks_exact(L);
    for c in &mut it {
        for i in 0..L {
            let v = c[i] as f64;
            acc[i] += v * v;
        }
    }
    for (i, &v) in it.remainder().iter().enumerate() {
        let v = v as f64;
        acc[i] += v * v;
    }
    tree(acc)
}

#[inline(always)]
fn block_dot_lanes<T: Real, M: Mode>(x: &[T], y: &[T]) -> f64 {
    let mut acc = [0.0f64; L];
    let mut ix = x.chunks_exact(L);
    let mut iy = y.chunks_exact(L);
    for (a, b) in (&mut ix).zip(&mut iy) {
        T::dot_chunk::<M>(a, b, &mut acc);
    }
    for (i, (&a, &b)) in ix.remainder().iter().zip(iy.remainder()).enumerate() {
        acc[i] += (a * b).to_f64();
    }
    tree(acc)
}

/// The block loops whose lane arrays LLVM vectorizes only with 128-bit operations (and stack spills) even in the
/// AVX2 copy, written with explicit 256-bit vectors. Each keeps the lane layout of the generic loop (register `k`
/// holds lanes `4k..4k+4` of the 32) and its tree, so the results are the generic fused loop's, bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{tree, L};
    use std::arch::x86_64::*;

    /// The 8 accumulators as the generic loop's lane array.
    ///
    /// # Safety
    /// The CPU must have AVX (it is inlined into the AVX2 functions below only).
    #[inline(always)]
    unsafe fn lanes(acc: &[__m256d; 8]) -> [f64; L] {
        let mut a = [0.0f64; L];
        for (k, v) in acc.iter().enumerate() {
            // SAFETY: 4 f64 at lane 4k, inside `a`.
            unsafe { _mm256_storeu_pd(a.as_mut_ptr().add(4 * k), *v) };
        }
        a
    }

    /// The f64 sum of `x - shift` (in f32) of f32 values, with `SHIFT` (else of `x`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sum_f32<const SHIFT: bool>(x: &[f32], shift: f32) -> f64 {
        let mut acc = [_mm256_setzero_pd(); 8];
        let s = _mm_set1_ps(shift);
        let mut chunks = x.chunks_exact(L);
        for c in &mut chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 4 f32 at 4k inside the chunk of L.
                let mut v = unsafe { _mm_loadu_ps(c.as_ptr().add(4 * k)) };
                if SHIFT {
                    v = _mm_sub_ps(v, s);
                }
                *a = _mm256_add_pd(*a, _mm256_cvtps_pd(v));
            }
        }
        // SAFETY: this function runs only on a CPU with AVX2, which `lanes` needs.
        let mut a = unsafe { lanes(&acc) };
        for (i, &v) in chunks.remainder().iter().enumerate() {
            a[i] += if SHIFT { v - shift } else { v } as f64;
        }
        tree(a)
    }

    /// [`super::sumsq_f32_lanes`]: each f32 widened, then squared and added in one fused multiply-add (13.9 ->
    /// 8.0 us for 100,000 values in cache, against the f32 product widened and added).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sumsq_f32(x: &[f32]) -> f64 {
        let mut acc = [_mm256_setzero_pd(); 8];
        let mut chunks = x.chunks_exact(L);
        for c in &mut chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 4 f32 at 4k inside the chunk of L.
                let v = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(c.as_ptr().add(4 * k)) });
                *a = _mm256_fmadd_pd(v, v, *a);
            }
        }
        // SAFETY: this function runs only on a CPU with AVX2, which `lanes` needs.
        let mut a = unsafe { lanes(&acc) };
        for (i, &v) in chunks.remainder().iter().enumerate() {
            let v = v as f64;
            a[i] += v * v;
        }
        tree(a)
    }

    /// [`super::block_sum`]'s lane loop of f32 values.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_sum_f32(x: &[f32]) -> f64 {
        sum_f32::<false>(x, 0.0)
    }

    /// [`super::shifted_sum_lanes`] of f32 values.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn shifted_sum_f32(x: &[f32], shift: f32) -> f64 {
        sum_f32::<true>(x, shift)
    }

    /// [`super::block_dot_lanes`] of f64 values, fused. With `SQ`, `y` is `x` (a sum of squares) and
    /// each vector is loaded once.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_dot_f64<const SQ: bool>(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len().min(y.len());
        let mut acc = [_mm256_setzero_pd(); 8];
        let (mut xc, mut yc) = (x[..n].chunks_exact(L), y[..n].chunks_exact(L));
        for (a, b) in (&mut xc).zip(&mut yc) {
            for (k, s) in acc.iter_mut().enumerate() {
                // SAFETY: 4 f64 at 4k inside chunks of L.
                let va = unsafe { _mm256_loadu_pd(a.as_ptr().add(4 * k)) };
                // SAFETY: as above.
                let vb = if SQ {
                    va
                } else {
                    unsafe { _mm256_loadu_pd(b.as_ptr().add(4 * k)) }
                };
                *s = _mm256_fmadd_pd(va, vb, *s);
            }
        }
        // SAFETY: this function runs only on a CPU with AVX2, which `lanes` needs.
        let mut acc = unsafe { lanes(&acc) };
        for (i, (&a, &b)) in xc.remainder().iter().zip(yc.remainder()).enumerate() {
            acc[i] += a * b;
        }
        tree(acc)
    }

    /// [`super::block_dot_lanes`] of f32 values: the f32 product, widened and added in f64.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_dot_f32(x: &[f32], y: &[f32]) -> f64 {
        let n = x.len().min(y.len());
        let mut acc = [_mm256_setzero_pd(); 8];
        let (mut xc, mut yc) = (x[..n].chunks_exact(L), y[..n].chunks_exact(L));
        for (a, b) in (&mut xc).zip(&mut yc) {
            for k in 0..4 {
                // SAFETY: 8 f32 at 8k inside chunks of L.
                let va = unsafe { _mm256_loadu_ps(a.as_ptr().add(8 * k)) };
                // SAFETY: as above.
                let vb = unsafe { _mm256_loadu_ps(b.as_ptr().add(8 * k)) };
                let p = _mm256_mul_ps(va, vb);
                acc[2 * k] = _mm256_add_pd(acc[2 * k], _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
                acc[2 * k + 1] = _mm256_add_pd(
                    acc[2 * k + 1],
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(p)),
                );
            }
        }
        // SAFETY: this function runs only on a CPU with AVX2, which `lanes` needs.
        let mut acc = unsafe { lanes(&acc) };
        for (i, (&a, &b)) in xc.remainder().iter().zip(yc.remainder()).enumerate() {
            acc[i] += (a * b) as f64;
        }
        tree(acc)
    }

    /// The explicit extreme loops, one per element type: `$w` lanes per register, 8 registers.
    macro_rules! block_extreme {
        ($(#[$doc:meta])* $name:ident, $t:ty, $v:ty, $w:literal, $set1:ident, $zero:ident, $load:ident,
         $fold:ident, $min:ident, $max:ident, $cmp:ident, $or:ident, $mask:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name<const MAX: bool>(x: &[$t]) -> $t {
                let pick = |v: $v, acc: $v| if MAX { $max(v, acc) } else { $min(v, acc) };
                let better = |v: $t, b: $t| super::better::<$t, MAX>(v, b);
                let mut acc = [$set1(x[0]); 8];
                let mut nan = $zero();
                let mut chunks = x.chunks_exact(8 * $w);
                for c in &mut chunks {
                    // SAFETY: $w values at $w * k inside the chunk of 8 * $w.
                    let v: [$v; 8] = std::array::from_fn(|k| unsafe { $load(c.as_ptr().add($w * k)) });
                    for k in 0..8 {
                        acc[k] = pick(v[k], acc[k]);
                    }
                    for k in 0..4 {
                        nan = $or(nan, $cmp::<_CMP_UNORD_Q>(v[2 * k], v[2 * k + 1]));
                    }
                }
                // the registers pairwise, then the lanes of the last one (a tree: no long serial chain)
                let mut w = 4;
                while w > 0 {
                    for k in 0..w {
                        acc[k] = pick(acc[k + w], acc[k]);
                    }
                    w /= 2;
                }
                // the tail: whole registers, then the last $w values of the block (overlapping values already
                // seen, which changes neither an extreme nor the NaN test); element by element only in blocks
                // shorter than one register
                let rest = chunks.remainder();
                let mut tail = rest.chunks_exact($w);
                for c in &mut tail {
                    // SAFETY: $w values inside the chunk.
                    let v = unsafe { $load(c.as_ptr()) };
                    acc[0] = pick(v, acc[0]);
                    nan = $or(nan, $cmp::<_CMP_UNORD_Q>(v, v));
                }
                let short = x.len() < $w;
                if !short && !tail.remainder().is_empty() {
                    // SAFETY: the block holds at least $w values; these are its last $w.
                    let v = unsafe { $load(x.as_ptr().add(x.len() - $w)) };
                    acc[0] = pick(v, acc[0]);
                    nan = $or(nan, $cmp::<_CMP_UNORD_Q>(v, v));
                }
                let mut best = $fold::<MAX>(acc[0]);
                let mut any_nan = $mask(nan) != 0;
                if short {
                    for &v in x {
                        any_nan |= v.is_nan();
                        best = if better(v, best) { v } else { best };
                    }
                }
                if any_nan {
                    <$t>::NAN
                } else {
                    best
                }
            }
        };
    }

    /// The extreme of the 4 lanes of `v` (`MAX`: the maximum), by halves in registers: 128-bit halves, then
    /// lanes (2 steps instead of 4 dependent scalar compares after a store). Of lanes that hold a NaN or two
    /// equal zeros any one may win, as in the lanes' own `min`/`max` (the callers report a NaN from their mask).
    #[target_feature(enable = "avx2,fma")]
    fn fold_pd<const MAX: bool>(v: __m256d) -> f64 {
        let pick = |a: __m128d, b: __m128d| {
            if MAX {
                _mm_max_pd(a, b)
            } else {
                _mm_min_pd(a, b)
            }
        };
        let m = pick(_mm256_extractf128_pd::<1>(v), _mm256_castpd256_pd128(v));
        _mm_cvtsd_f64(pick(_mm_unpackhi_pd(m, m), m))
    }

    /// [`fold_pd`] of the 8 lanes of `v`.
    #[target_feature(enable = "avx2,fma")]
    fn fold_ps<const MAX: bool>(v: __m256) -> f32 {
        let pick = |a: __m128, b: __m128| {
            if MAX {
                _mm_max_ps(a, b)
            } else {
                _mm_min_ps(a, b)
            }
        };
        let m = pick(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let m = pick(_mm_movehl_ps(m, m), m);
        _mm_cvtss_f32(pick(_mm_shuffle_ps::<1>(m, m), m))
    }

    block_extreme!(
        /// [`super::block_extreme`] of f64 values: one `minpd`/`maxpd` per vector on each of 8 accumulators
        /// (`min(v, acc)` is `v < acc ? v : acc`, the generic loop's select), and one unordered compare per pair
        /// of vectors, OR-ed into a NaN mask off the accumulators' dependency chains; NaN when the block holds
        /// one. The accumulators are combined as a tree. Min and max round nothing, so the value is the generic
        /// loop's (of two equal zeros, either sign may be returned, as in NumPy).
        block_extreme_f64, f64, __m256d, 4, _mm256_set1_pd, _mm256_setzero_pd, _mm256_loadu_pd,
        fold_pd, _mm256_min_pd, _mm256_max_pd, _mm256_cmp_pd, _mm256_or_pd, _mm256_movemask_pd
    );
    block_extreme!(
        /// [`block_extreme_f64`] of f32 values (8 registers of 8 lanes).
        block_extreme_f32, f32, __m256, 8, _mm256_set1_ps, _mm256_setzero_ps, _mm256_loadu_ps,
        fold_ps, _mm256_min_ps, _mm256_max_ps, _mm256_cmp_ps, _mm256_or_ps, _mm256_movemask_ps
    );

    /// The explicit first-equal searches: 4 registers of `$w` lanes compared per step, one mask test. Up to
    /// [`SHORT_SEARCH`] values are compared all at once into one bit mask instead: no exit that depends on the
    /// data (a short row's search would mispredict it every time).
    macro_rules! first_eq {
        ($(#[$doc:meta])* $name:ident, $t:ty, $w:literal, $set1:path, $load:path, $eq:path, $or:path,
         $mask:path) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(x: &[$t], v: $t) -> usize {
                let want = $set1(v);
                if x.len() <= SHORT_SEARCH {
                    let mut bits = 0u64;
                    let mut regs = x.chunks_exact($w);
                    for (k, c) in (&mut regs).enumerate() {
                        // SAFETY: $w values inside the chunk.
                        let m = $mask($eq(unsafe { $load(c.as_ptr()) }, want)) as u32 as u64;
                        bits |= m << ($w * k);
                    }
                    let base = x.len() - regs.remainder().len();
                    for (i, &e) in regs.remainder().iter().enumerate() {
                        bits |= u64::from(e == v) << (base + i);
                    }
                    return (bits.trailing_zeros() as usize).min(x.len());
                }
                let mut chunks = x.chunks_exact(4 * $w);
                let mut base = 0;
                for c in &mut chunks {
                    // SAFETY: $w values at $w * k inside the chunk of 4 * $w.
                    let e: [_; 4] =
                        std::array::from_fn(|k| $eq(unsafe { $load(c.as_ptr().add($w * k)) }, want));
                    // one mask test per step (movemask is the loop's narrowest instruction)
                    if $mask($or($or(e[0], e[1]), $or(e[2], e[3]))) != 0 {
                        let m = e.map(|r| $mask(r));
                        let k = m.iter().position(|&b| b != 0).unwrap_or(0);
                        return base + $w * k + m[k].trailing_zeros() as usize;
                    }
                    base += 4 * $w;
                }
                base + chunks.remainder().iter().position(|&e| e == v).unwrap_or(x.len() - base)
            }
        };
    }

    /// Searches of at most this many values set one mask bit per value (a `u64`).
    const SHORT_SEARCH: usize = 64;

    /// Lanes equal to `b`'s (all ones) or not (zero).
    #[target_feature(enable = "avx2,fma")]
    fn eq_pd(a: __m256d, b: __m256d) -> __m256d {
        _mm256_cmp_pd::<_CMP_EQ_OQ>(a, b)
    }

    /// [`eq_pd`] of f32 lanes.
    #[target_feature(enable = "avx2,fma")]
    fn eq_ps(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b)
    }

    /// 4 i64 values at `p`.
    ///
    /// # Safety
    /// `p` must point to 4 readable values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_i64(p: *const i64) -> __m256i {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// The top bit of each i64 lane.
    #[target_feature(enable = "avx2,fma")]
    fn mask_i64(r: __m256i) -> i32 {
        _mm256_movemask_pd(_mm256_castsi256_pd(r))
    }

    first_eq!(
        /// [`super::first_eq`] of f64 values.
        first_eq_f64, f64, 4, _mm256_set1_pd, _mm256_loadu_pd, eq_pd, _mm256_or_pd, _mm256_movemask_pd
    );
    first_eq!(
        /// [`super::first_eq`] of f32 values.
        first_eq_f32, f32, 8, _mm256_set1_ps, _mm256_loadu_ps, eq_ps, _mm256_or_ps, _mm256_movemask_ps
    );
    first_eq!(
        /// [`super::first_eq`] of i64 values.
        first_eq_i64, i64, 4, _mm256_set1_epi64x, load_i64, _mm256_cmpeq_epi64, _mm256_or_si256, mask_i64
    );

    /// [`super::extreme_i64`]: 8 registers of 4 lanes, each step a 64-bit compare and a blend (AVX2 has no
    /// 64-bit integer min/max); the tail as whole registers, then the last 4 values (overlapping values already
    /// seen), element by element only in slices shorter than one register.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the callers check `use_avx2`); `x` must not be empty.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn extreme_i64<const MAX: bool>(x: &[i64]) -> i64 {
        // the better of a and b: b where it is smaller (larger)
        let pick = |a: __m256i, b: __m256i| {
            let take_b = if MAX {
                _mm256_cmpgt_epi64(b, a)
            } else {
                _mm256_cmpgt_epi64(a, b)
            };
            _mm256_blendv_epi8(a, b, take_b)
        };
        // the 4 values at the start of `v` (the slice index checks that there are 4)
        let load = |v: &[i64]| {
            let q: &[i64; 4] = v[..4].try_into().expect("4 values");
            // SAFETY: `q` is 4 readable values.
            unsafe { load_i64(q.as_ptr()) }
        };
        let mut acc = [_mm256_set1_epi64x(x[0]); 8];
        let mut chunks = x.chunks_exact(32);
        for c in &mut chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = pick(*a, load(&c[4 * k..]));
            }
        }
        let mut w = 4;
        while w > 0 {
            for k in 0..w {
                acc[k] = pick(acc[k], acc[k + w]);
            }
            w /= 2;
        }
        let rest = chunks.remainder();
        let mut tail = rest.chunks_exact(4);
        for c in &mut tail {
            acc[0] = pick(acc[0], load(c));
        }
        if x.len() >= 4 && !tail.remainder().is_empty() {
            acc[0] = pick(acc[0], load(&x[x.len() - 4..]));
        }
        let mut a = [0i64; 4];
        // SAFETY: 4 values inside `a`.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), acc[0]) };
        let better = |a: i64, b: i64| if MAX { a.max(b) } else { a.min(b) };
        let mut best = a.into_iter().fold(a[0], better);
        if x.len() < 4 {
            best = x.iter().fold(best, |b, &v| better(b, v));
        }
        best
    }

    macro_rules! col_extreme {
        ($(#[$doc:meta])* $name:ident, $t:ty, $w:literal, $load:ident, $store:ident, $min:ident, $max:ident,
         $cmp:ident, $blend:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA (the callers check `use_avx2`).
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name<const MAX: bool>(best: &mut [$t], r: &[$t]) {
                let n = best.len().min(r.len());
                let mut i = 0;
                while i + $w <= n {
                    // SAFETY: $w values at i inside both slices (i + $w <= n).
                    unsafe {
                        let b = $load(best.as_ptr().add(i));
                        let v = $load(r.as_ptr().add(i));
                        let m = if MAX { $max(v, b) } else { $min(v, b) };
                        $store(best.as_mut_ptr().add(i), $blend(m, v, $cmp::<_CMP_UNORD_Q>(v, v)));
                    }
                    i += $w;
                }
                super::col_extreme_lanes::<$t, MAX>(&mut best[i..n], &r[i..n]);
            }
        };
    }

    col_extreme!(
        /// [`super::col_extreme_lanes`] of f64 values: `max(v, b)` / `min(v, b)` (`b` when either is NaN, so a
        /// NaN already taken stays), then a blend that takes `v` where it is NaN; the store is unconditional.
        col_extreme_f64, f64, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_min_pd, _mm256_max_pd,
        _mm256_cmp_pd, _mm256_blendv_pd
    );
    col_extreme!(
        /// [`col_extreme_f64`] of f32 values.
        col_extreme_f32, f32, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_min_ps, _mm256_max_ps,
        _mm256_cmp_ps, _mm256_blendv_ps
    );
}

/// `best[j] = extreme(best[j], r[j])` for a row of a column reduction: a NaN is taken like a new extreme and then
/// kept (no comparison with it is true), so the columns need no NaN flag beside them.
#[inline(always)]
pub(crate) fn col_extreme<T: Real, const MAX: bool, M: Mode>(best: &mut [T], r: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        // the generic loop's conditional store compiles to masked stores, slow on AMD CPUs
        if let (Some(b), Some(x)) = (same_type_mut::<T, f64>(best), same_type::<T, f64>(r)) {
            // SAFETY: the CPU has AVX2 and FMA (use_avx2).
            return unsafe { avx2::col_extreme_f64::<MAX>(b, x) };
        }
        if let (Some(b), Some(x)) = (same_type_mut::<T, f32>(best), same_type::<T, f32>(r)) {
            // SAFETY: as above.
            return unsafe { avx2::col_extreme_f32::<MAX>(b, x) };
        }
    }
    col_extreme_lanes::<T, MAX>(best, r)
}

#[inline(always)]
#[allow(clippy::eq_op)]
fn col_extreme_lanes<T: Real, const MAX: bool>(best: &mut [T], r: &[T]) {
    for (b, &v) in best.iter_mut().zip(r) {
        let take = better::<T, MAX>(v, *b) | (v != v);
        *b = if take { v } else { *b };
    }
}

/// Sum of a slice, as a compensated f64.
pub struct Sum<'a, T>(pub &'a [T]);
impl<T: Real> Kernel for Sum<'_, T> {
    type Output = f64;
    #[inline(always)]
    fn run<M: Mode>(self) -> f64 {
        let mut acc = Neumaier::default();
        for b in self.0.chunks(BLOCK) {
            acc.add(block_sum::<T, M>(b));
        }
        acc.value()
    }
}

/// Dot product of two equal-length slices, as a compensated f64.
pub struct Dot<'a, T>(pub &'a [T], pub &'a [T]);
impl<T: Real> Kernel for Dot<'_, T> {
    type Output = f64;
    #[inline(always)]
    fn run<M: Mode>(self) -> f64 {
        let mut acc = Neumaier::default();
        for (a, b) in self.0.chunks(BLOCK).zip(self.1.chunks(BLOCK)) {
            acc.add(block_dot::<T, M>(a, b));
        }
        acc.value()
    }
}

/// Sum of squares of a slice, as a compensated f64.
///
/// f32 values are squared exactly in f64 ([`block_sumsq`]), where NumPy squares them in f32. The two sums differ
/// by less than f32's rounding unless squares leave f32's normal range: one above it makes the sum exceed
/// `f32::MAX`, which the caller turns into `inf` as NumPy's f32 arithmetic does ([`norm_of`]); squares below it
/// (values under about 1e-19) can matter only to a sum under [`F32_TINY_SUMSQ`] per element, and such a slice is
/// summed again with f32 squares, as NumPy does.
pub struct SumSq<'a, T>(pub &'a [T]);
impl<T: Real> Kernel for SumSq<'_, T> {
    type Output = f64;
    #[inline(always)]
    fn run<M: Mode>(self) -> f64 {
        let mut acc = Neumaier::default();
        for b in self.0.chunks(BLOCK) {
            acc.add(block_sumsq::<T, M>(b));
        }
        let s = acc.value();
        // (a zero sum means every value is zero, whose f32 squares are zero too)
        if T::DTYPE == "float32" && s != 0.0 && s < self.0.len() as f64 * F32_TINY_SUMSQ {
            let mut acc = Neumaier::default();
            for b in self.0.chunks(BLOCK) {
                acc.add(block_dot::<T, M>(b, b));
            }
            return acc.value();
        }
        s
    }
}

/// Below this sum of squares per element, f32 squares that underflow (each off by less than `f32::MIN_POSITIVE`)
/// could change an f32 result: `f32::MIN_POSITIVE * 2^25`.
pub const F32_TINY_SUMSQ: f64 = f32::MIN_POSITIVE as f64 * (1u64 << 25) as f64;

/// The norm of type `T` from a sum of squares: `inf` when the sum overflows `T` (as `T`'s own arithmetic, which
/// NumPy uses, would overflow), else its square root.
#[inline]
pub fn norm_of<T: Real>(sumsq: f64) -> f64 {
    if T::from_f64(sumsq).to_f64().is_infinite() {
        f64::INFINITY
    } else {
        sumsq.sqrt()
    }
}

/// Count, mean and sum of squared deviations (M2) of a set of values.
///
/// The mean is kept relative to `shift`, a value of the data (the first element of the row): for data with a
/// large offset and small spread, the partial means that Chan's merge subtracts are then small numbers with full
/// relative precision instead of huge ones whose low digits are lost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub shift: f64,
    /// Mean of `x - shift`.
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    /// The mean of the values.
    #[inline]
    pub fn abs_mean(self) -> f64 {
        self.shift + self.mean
    }

    /// Chan et al.'s parallel merge.
    #[inline(always)]
    pub fn merge(self, o: Moments) -> Moments {
        if o.n == 0.0 {
            return self;
        }
        if self.n == 0.0 {
            return o;
        }
        // bring o into self's frame (a no-op when both share the shift, as all parts of one row do)
        let o_mean = if o.shift == self.shift {
            o.mean
        } else {
            (o.shift - self.shift) + o.mean
        };
        let o = Moments { mean: o_mean, ..o };
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        let mean = if delta.is_finite() {
            self.mean + delta * (o.n / n)
        } else {
            // inf/nan inputs: follow IEEE arithmetic of the plain formula
            (self.mean * self.n + o.mean * o.n) / n
        };
        let m2 = self.m2 + o.m2 + delta * delta * (self.n * o.n / n);
        Moments {
            n,
            shift: self.shift,
            mean,
            m2,
        }
    }

    /// Variance with `ddof` delta degrees of freedom (IEEE division by `max(n - ddof, 0)`, as NumPy).
    #[inline]
    pub fn var(self, ddof: f64) -> f64 {
        let dof = (self.n - ddof).max(0.0);
        self.m2 / dof
    }
}

/// The f64 sum of `x - k` (subtracted in the input precision).
#[inline(always)]
fn shifted_sum<T: Real, M: Mode>(x: &[T], k: T) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        if let Some(x) = same_type::<T, f32>(x) {
            // SAFETY: the CPU has AVX2 and FMA (use_avx2). `k` is an f32 (exact through f64).
            return unsafe { avx2::shifted_sum_f32(x, k.to_f64() as f32) };
        }
    }
    shifted_sum_lanes(x, k)
}

#[inline(always)]
fn shifted_sum_lanes<T: Real>(x: &[T], k: T) -> f64 {
    let mut acc = [0.0f64; L];
    let mut it = x.chunks_exact(L);
    for c in &mut it {
        for i in 0..L {
            acc[i] += (c[i] - k).to_f64();
        }
    }
    for (i, &v) in it.remainder().iter().enumerate() {
        acc[i] += (v - k).to_f64();
    }
    tree(acc)
}

/// Moments of one block of `x - k` by the corrected two-pass algorithm (the block stays in L1 between the
/// passes): the block mean comes from an f64 sum, deviations from it are small and accumulate in the input
/// precision, and the correction term `d` restores the exact block mean.
#[inline(always)]
fn block_moments<T: Real, M: Mode>(x: &[T], k: T) -> Moments {
    let n = x.len();
    if n == 0 {
        return Moments::default();
    }
    let nf = n as f64;
    let mb = T::from_f64(shifted_sum::<T, M>(x, k) / nf);
    let mut d = [T::ZERO; L];
    let mut q = [T::ZERO; L];
    let mut it = x.chunks_exact(L);
    for c in &mut it {
        for i in 0..L {
            let e = (c[i] - k) - mb;
            d[i] = d[i] + e;
            q[i] = M::madd(e, e, q[i]);
        }
    }
    for (i, &v) in it.remainder().iter().enumerate() {
        let e = (v - k) - mb;
        d[i] = d[i] + e;
        q[i] = M::madd(e, e, q[i]);
    }
    let d = tree_t(d).to_f64();
    let q = tree_t(q).to_f64();
    Moments {
        n: nf,
        shift: k.to_f64(),
        mean: mb.to_f64() + d / nf,
        m2: q - d * d / nf,
    }
}

/// Moments of a slice (one pass over memory, numerically stable), relative to `shift` (a value of the row;
/// every part of one row must use the same one).
pub struct SliceMoments<'a, T>(pub &'a [T], pub T);
impl<T: Real> Kernel for SliceMoments<'_, T> {
    type Output = Moments;
    #[inline(always)]
    fn run<M: Mode>(self) -> Moments {
        // a non-finite shift would turn every deviation into NaN: fall back to no shift
        let k = if self.1.to_f64().is_finite() {
            self.1
        } else {
            T::ZERO
        };
        let mut m = Moments::default();
        for b in self.0.chunks(BLOCK) {
            m = m.merge(block_moments::<T, M>(b, k));
        }
        m
    }
}

/// Minimum (`MAX = false`) or maximum of a non-empty slice, propagating NaN.
pub struct Extreme<'a, T, const MAX: bool>(pub &'a [T]);
impl<T: Real, const MAX: bool> Kernel for Extreme<'_, T, MAX> {
    type Output = T;
    #[inline(always)]
    fn run<M: Mode>(self) -> T {
        let x = self.0;
        let mut best = x[0];
        for b in x.chunks(BLOCK) {
            let v = block_extreme::<T, MAX, M>(b);
            if v.is_nan() {
                return T::NAN;
            }
            if better::<T, MAX>(v, best) {
                best = v;
            }
        }
        best
    }
}

#[inline(always)]
fn better<T: Real, const MAX: bool>(a: T, b: T) -> bool {
    if MAX {
        a > b
    } else {
        a < b
    }
}

/// Lanes of the extreme search (4 AVX2 registers of f64).
const LE: usize = 16;

/// The extreme of a non-empty block; NaN when the block holds a NaN. Each lane keeps
/// `if better(v, acc) || v is NaN { v } else { acc }`, which sticks to NaN once it has seen one and compiles to
/// compare + or + blend; the AVX2 copy runs explicit loops for f64 and f32 (see [`avx2`]).
#[inline(always)]
fn block_extreme<T: Real, const MAX: bool, M: Mode>(x: &[T]) -> T {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        // SAFETY (both): the CPU has AVX2 and FMA (use_avx2).
        if let Some(x) = same_type::<T, f64>(x) {
            let r = unsafe { avx2::block_extreme_f64::<MAX>(x) };
            return T::from_f64(r);
        }
        if let Some(x) = same_type::<T, f32>(x) {
            let r = unsafe { avx2::block_extreme_f32::<MAX>(x) };
            return T::from_f64(r as f64);
        }
    }
    block_extreme_lanes::<T, MAX>(x)
}

/// [`block_extreme`] on lane arrays (the baseline copy, and element types without an explicit loop).
#[inline(always)]
#[allow(clippy::eq_op)]
fn block_extreme_lanes<T: Real, const MAX: bool>(x: &[T]) -> T {
    let mut acc = [x[0]; LE];
    let mut it = x.chunks_exact(LE);
    for c in &mut it {
        for i in 0..LE {
            let v = c[i];
            acc[i] = if better::<T, MAX>(v, acc[i]) || v != v {
                v
            } else {
                acc[i]
            };
        }
    }
    for &v in it.remainder() {
        acc[0] = if better::<T, MAX>(v, acc[0]) || v != v {
            v
        } else {
            acc[0]
        };
    }
    let mut best = acc[0];
    for &v in &acc[1..] {
        if v.is_nan() {
            return v;
        }
        if better::<T, MAX>(v, best) {
            best = v;
        }
    }
    best
}

/// Index of the first element of `x` equal to `v` (`x.len()` when none is): the explicit AVX2 searches for f64,
/// f32 and i64, else chunks of 16 elements compared at once (vectorized by the compiler), then the chunk that
/// holds it element by element.
#[inline(always)]
pub fn first_eq<T: Copy + PartialEq + 'static, M: Mode>(x: &[T], v: T) -> usize {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        let one = std::slice::from_ref(&v);
        // SAFETY (all three): the CPU has AVX2 and FMA (use_avx2).
        if let (Some(x), Some(v)) = (same_type::<T, f64>(x), same_type::<T, f64>(one)) {
            return unsafe { avx2::first_eq_f64(x, v[0]) };
        }
        if let (Some(x), Some(v)) = (same_type::<T, f32>(x), same_type::<T, f32>(one)) {
            return unsafe { avx2::first_eq_f32(x, v[0]) };
        }
        if let (Some(x), Some(v)) = (same_type::<T, i64>(x), same_type::<T, i64>(one)) {
            return unsafe { avx2::first_eq_i64(x, v[0]) };
        }
    }
    const FE: usize = 16;
    let mut it = x.chunks_exact(FE);
    let mut base = 0;
    for c in &mut it {
        let mut any = false;
        for &e in c {
            any |= e == v;
        }
        if any {
            break;
        }
        base += FE;
    }
    base + x[base..]
        .iter()
        .position(|&e| e == v)
        .unwrap_or(x.len() - base)
}

/// The minimum (`MAX = false`) or maximum of a non-empty slice of i64: the explicit AVX2 loop, else 8 lanes that
/// the compiler vectorizes where it can.
#[inline(always)]
pub fn extreme_i64<const MAX: bool, M: Mode>(x: &[i64]) -> i64 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2::<M>() {
        // SAFETY: the CPU has AVX2 and FMA (use_avx2).
        return unsafe { avx2::extreme_i64::<MAX>(x) };
    }
    let pick = |a: i64, b: i64| if MAX { a.max(b) } else { a.min(b) };
    let mut acc = [x[0]; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] = pick(acc[k], c[k]);
        }
    }
    let r = it.remainder().iter().fold(x[0], |a, &v| pick(a, v));
    acc.into_iter().fold(r, pick)
}

/// Partial result of an arg-extreme search over a range.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArgPart<T> {
    /// Index (global) of the first NaN in the range, if any.
    pub nan_at: Option<usize>,
    /// Best value (NaN-free) and the global start of the first block that holds it.
    pub best: T,
    pub block: usize,
    pub block_len: usize,
}

/// First index of the minimum (`MAX = false`) or maximum of a non-empty range starting at global index
/// `offset`; a NaN wins (NumPy semantics).
pub struct ArgExtreme<'a, T, const MAX: bool>(pub &'a [T], pub usize);
impl<T: Real, const MAX: bool> Kernel for ArgExtreme<'_, T, MAX> {
    type Output = ArgPart<T>;
    #[inline(always)]
    fn run<M: Mode>(self) -> ArgPart<T> {
        let (x, offset) = (self.0, self.1);
        let mut part = ArgPart {
            nan_at: None,
            best: x[0],
            block: offset,
            block_len: 0,
        };
        let mut first = true;
        for (bi, b) in x.chunks(BLOCK).enumerate() {
            let v = block_extreme::<T, MAX, M>(b);
            if v.is_nan() {
                let p = b.iter().position(|v| v.is_nan()).unwrap_or(0);
                part.nan_at = Some(offset + bi * BLOCK + p);
                return part;
            }
            if first || better::<T, MAX>(v, part.best) {
                first = false;
                part.best = v;
                part.block = offset + bi * BLOCK;
                part.block_len = b.len();
            }
        }
        part
    }
}

/// The index in `row` that the merged arg-extreme part `p` of the whole row designates: the first NaN, else the
/// first element of the winning block equal to the best value.
#[inline(always)]
fn arg_resolve<T: Real, M: Mode>(row: &[T], p: ArgPart<T>) -> usize {
    match p.nan_at {
        Some(i) => i,
        None => p.block + first_eq::<T, M>(&row[p.block..p.block + p.block_len], p.best),
    }
}

/// [`arg_resolve`] under dispatch.
pub struct ArgIndex<'a, T>(pub &'a [T], pub ArgPart<T>);
impl<T: Real> Kernel for ArgIndex<'_, T> {
    type Output = usize;
    #[inline(always)]
    fn run<M: Mode>(self) -> usize {
        arg_resolve::<T, M>(self.0, self.1)
    }
}

/// Rows of at most this many bytes are searched whole by [`ArgWhole`]: their extreme, then the first element equal
/// to it. They stay in L1 between the two passes, and the search over the whole row costs less than the best
/// block's bookkeeping (1,000 values: 61 -> 46 ns for float32, 104 -> 90 ns for float64 in a Rust loop; 4,000
/// float32 values were slower whole, 240 against 179 ns).
const ARG_WHOLE_BYTES: usize = 8192;

/// Index of the first minimum (`MAX = false`) or maximum of a whole non-empty row, a NaN winning, under one
/// dispatch: a short row ([`ARG_WHOLE_BYTES`]) searched whole, a longer one by its best block ([`ArgExtreme`]) and
/// the search in that block ([`arg_resolve`]). Both give the first index of the extreme (equal zeros of either
/// sign are equal), or of the first NaN.
pub struct ArgWhole<'a, T, const MAX: bool>(pub &'a [T]);
impl<T: Real, const MAX: bool> Kernel for ArgWhole<'_, T, MAX> {
    type Output = usize;
    #[inline(always)]
    fn run<M: Mode>(self) -> usize {
        let x = self.0;
        if std::mem::size_of_val(x) <= ARG_WHOLE_BYTES {
            let v = block_extreme::<T, MAX, M>(x);
            return if v.is_nan() {
                x.iter().position(|e| e.is_nan()).unwrap_or(0)
            } else {
                first_eq::<T, M>(x, v)
            };
        }
        arg_resolve::<T, M>(x, ArgExtreme::<T, MAX>(x, 0).run::<M>())
    }
}

/// [`ArgWhole`] of every row of `n` values in the contiguous rows `.0`, into `out` (one index per row): the rows
/// under one dispatch, so a short row's search costs no call of its own.
pub struct ArgRows<'a, T, const MAX: bool>(pub &'a [T], pub usize, pub &'a mut [i64]);
impl<T: Real, const MAX: bool> Kernel for ArgRows<'_, T, MAX> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (row, o) in self.0.chunks_exact(self.1).zip(self.2.iter_mut()) {
            *o = ArgWhole::<T, MAX>(row).run::<M>() as i64;
        }
    }
}

/// Runs a kernel on the best instruction set (re-exported for the reduction drivers).
#[inline(always)]
pub fn run<K: Kernel>(k: K) -> K::Output {
    dispatch(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_compensated() {
        let x = vec![0.1f32; 10_000_000];
        let s = run(Sum(&x));
        let exact = 10_000_000.0 * (0.1f32 as f64);
        assert!((s - exact).abs() / exact < 1e-9, "{s} vs {exact}");
    }

    #[test]
    fn avx2_extremes_equal_the_lane_loops() {
        use crate::kernels::dispatch::Fused;
        fn check<T: Real + std::fmt::Debug>(x: &[T]) {
            let same = |a: T, b: T| (a.is_nan() && b.is_nan()) || a == b;
            let (lo, hi) = (
                block_extreme::<T, false, Fused>(x),
                block_extreme::<T, true, Fused>(x),
            );
            assert!(same(lo, block_extreme_lanes::<T, false>(x)), "{x:?}");
            assert!(same(hi, block_extreme_lanes::<T, true>(x)), "{x:?}");
        }
        // lengths around the register widths (4, 8), the chunks (32, 64) and the tails (whole registers, then
        // an overlapping last register)
        for n in [
            1usize, 2, 3, 4, 5, 7, 8, 9, 15, 31, 32, 33, 36, 40, 63, 64, 65, 71, 100, 488, 511, 512,
        ] {
            let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1009) as f64 - 500.0).collect();
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            check(&x);
            check(&xf);
            // a NaN, an infinity and an extreme at every position, the chunk loops' and the remainder's
            for at in 0..n {
                for special in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1e300, 1e300] {
                    let mut y = x.clone();
                    y[at] = special;
                    let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                    check(&y);
                    check(&yf);
                }
            }
        }
    }

    #[test]
    fn arg_whole_gives_the_first_extreme_or_nan_on_both_paths() {
        use crate::kernels::dispatch::{Fused, Unfused};
        // the first index of the extreme (a NaN: of the first NaN), by definition
        fn want<T: Real, const MAX: bool>(x: &[T]) -> usize {
            if let Some(i) = x.iter().position(|v| v.is_nan()) {
                return i;
            }
            let mut at = 0;
            for (i, &v) in x.iter().enumerate() {
                if better::<T, MAX>(v, x[at]) {
                    at = i;
                }
            }
            at
        }
        fn check<T: Real + std::fmt::Debug>(x: &[T]) {
            for (got, w) in [
                (ArgWhole::<T, false>(x).run::<Fused>(), want::<T, false>(x)),
                (
                    ArgWhole::<T, false>(x).run::<Unfused>(),
                    want::<T, false>(x),
                ),
                (ArgWhole::<T, true>(x).run::<Fused>(), want::<T, true>(x)),
                (ArgWhole::<T, true>(x).run::<Unfused>(), want::<T, true>(x)),
            ] {
                assert_eq!(got, w, "n = {}", x.len());
            }
        }
        // lengths around the whole-row limit (1,024 float64 or 2,048 float32 values) and the blocks
        for n in [
            1usize, 7, 100, 511, 512, 513, 1000, 1023, 1024, 1025, 2047, 2048, 2049, 3000,
        ] {
            // values repeat (ties), and include zeros of both signs
            let x: Vec<f64> = (0..n)
                .map(|i| (((i * 7919) % 101) as f64 - 50.0) * if i % 3 == 0 { -1.0 } else { 1.0 })
                .collect();
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            check(&x);
            check(&xf);
            // zeros of both signs as the extreme: the minimum of non-negative values, the maximum of non-positive
            // ones, and rows of zeros only (each sign first)
            let zeros = |sign: f64, first_neg: bool| -> Vec<f64> {
                (0..n)
                    .map(|i| match i % 7 {
                        1 | 4 => {
                            if (i % 2 == 1) == first_neg {
                                -0.0
                            } else {
                                0.0
                            }
                        }
                        _ => sign * (1.0 + (i % 5) as f64),
                    })
                    .collect()
            };
            for z in [
                zeros(1.0, true),
                zeros(1.0, false),
                zeros(-1.0, true),
                zeros(-1.0, false),
                zeros(0.0, true),
                zeros(0.0, false),
            ] {
                check(&z);
                check(&z.iter().map(|&v| v as f32).collect::<Vec<f32>>());
            }
            for at in [0, n / 3, n - 1] {
                for special in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0] {
                    let mut y = x.clone();
                    y[at] = special;
                    let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                    check(&y);
                    check(&yf);
                }
            }
        }
    }

    #[test]
    fn avx2_first_eq_finds_the_first_match() {
        use crate::kernels::dispatch::{Fused, Unfused};
        fn check<T: Real + std::fmt::Debug>(x: &[T], v: T) {
            let want = x.iter().position(|&e| e == v).unwrap_or(x.len());
            assert_eq!(first_eq::<T, Fused>(x, v), want, "{v:?} in {x:?}");
            assert_eq!(first_eq::<T, Unfused>(x, v), want, "{v:?} in {x:?}");
        }
        for n in [
            0usize, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 512,
        ] {
            let x: Vec<f64> = (0..n).map(|i| (i % 7) as f64).collect();
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            for v in [0.0, 3.0, 6.0, 9.0, f64::NAN] {
                check(&x, v);
                check(&xf, v as f32);
            }
            // a single match at every position, and a second one after it
            for at in 0..n {
                let mut y = vec![1.0f64; n];
                y[at] = -2.0;
                if at + 5 < n {
                    y[at + 5] = -2.0;
                }
                let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                check(&y, -2.0);
                check(&yf, -2.0f32);
            }
        }
    }

    #[test]
    fn avx2_int64_extremes_and_search() {
        use crate::kernels::dispatch::{Fused, Unfused};
        for n in [
            1usize, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 36, 63, 64, 65, 100, 1000,
        ] {
            let x: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 1009 - 500).collect();
            // an extreme (and the values at the type's ends) at every position
            for at in 0..n {
                for special in [i64::MIN, i64::MAX, -501, 509, 0] {
                    let mut y = x.clone();
                    y[at] = special;
                    let (lo, hi) = (*y.iter().min().unwrap(), *y.iter().max().unwrap());
                    assert_eq!(extreme_i64::<false, Fused>(&y), lo, "{y:?}");
                    assert_eq!(extreme_i64::<true, Fused>(&y), hi, "{y:?}");
                    assert_eq!(extreme_i64::<false, Unfused>(&y), lo, "{y:?}");
                    assert_eq!(extreme_i64::<true, Unfused>(&y), hi, "{y:?}");
                    let want = y.iter().position(|&v| v == special).unwrap();
                    assert_eq!(first_eq::<i64, Fused>(&y, special), want, "{y:?}");
                    assert_eq!(first_eq::<i64, Unfused>(&y, special), want, "{y:?}");
                }
            }
            assert_eq!(first_eq::<i64, Fused>(&x, 10_000), n);
        }
    }

    #[test]
    fn avx2_loops_equal_the_lane_loops() {
        use crate::kernels::dispatch::Fused;
        for n in [0usize, 1, 31, 32, 33, 100, 511, 512, 2049] {
            let x: Vec<f64> = (0..n)
                .map(|i| ((i * 7919) % 1009) as f64 * 0.123 - 60.0)
                .collect();
            let y: Vec<f64> = (0..n).map(|i| ((i * 104729) % 997) as f64 * 1e-3).collect();
            let (xf, yf): (Vec<f32>, Vec<f32>) = x
                .iter()
                .zip(&y)
                .map(|(&a, &b)| (a as f32, b as f32))
                .unzip();
            let bits = |v: f64| v.to_bits();
            assert_eq!(
                bits(block_sum::<f32, Fused>(&xf)),
                bits(shifted_sum_lanes(&xf, 0.0)),
                "{n}"
            );
            let k = xf.first().copied().unwrap_or(1.5);
            assert_eq!(
                bits(shifted_sum::<f32, Fused>(&xf, k)),
                bits(shifted_sum_lanes(&xf, k)),
                "{n}"
            );
            assert_eq!(
                bits(block_dot::<f64, Fused>(&x, &y)),
                bits(block_dot_lanes::<f64, Fused>(&x, &y)),
                "{n}"
            );
            assert_eq!(
                bits(block_dot::<f32, Fused>(&xf, &yf)),
                bits(block_dot_lanes::<f32, Fused>(&xf, &yf)),
                "{n}"
            );
            assert_eq!(
                bits(block_sumsq::<f64, Fused>(&x)),
                bits(block_dot_lanes::<f64, Fused>(&x, &x)),
                "{n}"
            );
            assert_eq!(
                bits(block_sumsq::<f32, Fused>(&xf)),
                bits(sumsq_f32_lanes(&xf)),
                "{n}"
            );
            // the squares are exact: the only rounding is the f64 additions of the lane loop
            let exact: f64 = xf.iter().map(|&v| (v as f64) * (v as f64)).sum();
            assert!(
                (block_sumsq::<f32, Fused>(&xf) - exact).abs() <= 1e-12 * exact.max(1.0),
                "{n}"
            );
            // squares outside f32's normal range: NumPy's f32 results (inf; the underflowed squares)
            if n > 0 {
                let big = vec![1e20f32; n];
                assert_eq!(norm_of::<f32>(run(SumSq(&big))), f64::INFINITY);
                let tiny = vec![1e-30f32; n];
                assert_eq!(run(SumSq(&tiny)), 0.0, "1e-30 squared is 0 in f32");
                assert_eq!(run(SumSq(&vec![0.0f32; n])), 0.0);
                let mut mixed = vec![1e-30f32; n];
                mixed[n / 2] = 1.0;
                assert_eq!(run(SumSq(&mixed)), 1.0);
                assert_eq!(norm_of::<f64>(4.0), 2.0);
            }
        }
    }

    #[test]
    fn moments_match_two_pass_with_offset() {
        let x: Vec<f64> = (0..100_003)
            .map(|i| 1e9 + ((i * 7919) % 1000) as f64 * 1e-3)
            .collect();
        let m = run(SliceMoments(&x, x[0]));
        let mean = x.iter().map(|v| v - 1e9).sum::<f64>() / x.len() as f64 + 1e9;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / x.len() as f64;
        assert!(
            (m.var(0.0) - var).abs() / var < 1e-6,
            "{} vs {}",
            m.var(0.0),
            var
        );
    }

    #[test]
    fn extremes_and_nan() {
        let mut x: Vec<f64> = (0..5000).map(|i| ((i * 37) % 1001) as f64).collect();
        assert_eq!(run(Extreme::<_, false>(&x)), 0.0);
        assert_eq!(run(Extreme::<_, true>(&x)), 1000.0);
        x[4000] = f64::INFINITY;
        assert_eq!(run(Extreme::<_, true>(&x)), f64::INFINITY);
        x[3000] = f64::NAN;
        assert!(run(Extreme::<_, false>(&x)).is_nan());
        let p = run(ArgExtreme::<_, true>(&x, 10));
        assert_eq!(p.nan_at, Some(3010));
    }
}
