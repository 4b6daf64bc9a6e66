//! Native kernels on strided n-dimensional views.
//!
//! Every kernel takes `ndarray` views (any shape, strides, order) of `f32` or `f64` (`Real`), or `i64` for the
//! integer paths of the type-preserving ops (`int.rs`), and returns owned arrays. Inner loops are SIMD through
//! [`dispatch`]; work above a size threshold is split over the [`dispatch::pool`].
//!
//! Layout: a reduction over `axis` sees its input as `(outer, n, inner)` over one contiguous buffer
//! ([`layout::Canon`]): C-contiguous inputs are used in place, Fortran-contiguous ones through their reversed
//! (C-contiguous) view, anything else is copied once into C order.
//!
//! Memory: every buffer whose size the input decides (results, copies, per-position intermediates) is allocated
//! through [`alloc`], so an impossible size is a `CoreError::Memory` (`MemoryError`), never an abort.

pub mod alloc;
pub mod blas;
pub mod dispatch;
pub mod distance;
pub mod elementwise;
pub mod int;
pub mod layout;
pub mod linalg;
pub mod native;
pub mod optim;
pub mod recycle;
pub mod reduce;
pub mod simd;
pub mod stats;

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Floating-point element types computed natively: `f32` and `f64`.
pub trait Real:
    Copy
    + alloc::Zeroable
    + Send
    + Sync
    + PartialOrd
    + Debug
    + Default
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    const EPSILON: Self;
    /// NumPy's name of the dtype.
    const DTYPE: &'static str;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn floor(self) -> Self;
    fn is_nan(self) -> bool;
    /// `acc[i] += a[i] * b[i]` over one chunk of `simd::L` elements: the product is formed in the input
    /// precision and accumulated in f64.
    fn dot_chunk<M: dispatch::Mode>(a: &[Self], b: &[Self], acc: &mut [f64; simd::L]);
    /// Truncating conversion (saturating; NaN -> 0), as `astype(intp)` does for in-range values.
    fn to_isize_trunc(self) -> isize;
    /// Truncating conversion to i32 (saturating; NaN -> 0).
    fn to_i32_trunc(self) -> i32;
}

macro_rules! impl_real {
    ($t:ty, $name:literal) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAN: Self = <$t>::NAN;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const EPSILON: Self = <$t>::EPSILON;
            const DTYPE: &'static str = $name;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            #[allow(clippy::eq_op)]
            fn is_nan(self) -> bool {
                self != self
            }
            #[inline(always)]
            fn dot_chunk<M: dispatch::Mode>(a: &[Self], b: &[Self], acc: &mut [f64; simd::L]) {
                <$t as DotAcc>::dot_chunk_impl::<M>(a, b, acc)
            }
            #[inline(always)]
            fn to_isize_trunc(self) -> isize {
                self as isize
            }
            #[inline(always)]
            fn to_i32_trunc(self) -> i32 {
                self as i32
            }
        }
    };
}
impl_real!(f32, "float32");
impl_real!(f64, "float64");

impl DotAcc for f32 {
    #[inline(always)]
    fn dot_chunk_impl<M: dispatch::Mode>(a: &[f32], b: &[f32], acc: &mut [f64; simd::L]) {
        // products first (vmulps), then widen and add (vcvtps2pd + vaddpd): two simple loops vectorize where
        // one fused expression does not
        let mut p = [0.0f32; simd::L];
        for i in 0..simd::L {
            p[i] = a[i] * b[i];
        }
        for i in 0..simd::L {
            acc[i] += p[i] as f64;
        }
    }
}
impl DotAcc for f64 {
    #[inline(always)]
    fn dot_chunk_impl<M: dispatch::Mode>(a: &[f64], b: &[f64], acc: &mut [f64; simd::L]) {
        for i in 0..simd::L {
            acc[i] = M::madd(a[i], b[i], acc[i]);
        }
    }
}

/// Per-type product accumulation used by [`Real::dot_chunk`].
pub trait DotAcc {
    fn dot_chunk_impl<M: dispatch::Mode>(a: &[Self], b: &[Self], acc: &mut [f64; simd::L])
    where
        Self: Sized;
}

/// Elements processed per rayon task in reductions (fixed, so results do not depend on the thread count).
pub const PAR_CHUNK: usize = 1 << 16;
/// Reductions over fewer elements run on the calling thread.
pub const PAR_REDUCE_MIN: usize = 1 << 17;
/// Elementwise ops over fewer elements run on the calling thread.
pub const PAR_ELEMWISE_MIN: usize = 1 << 18;
