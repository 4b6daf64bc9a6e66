//! Pairwise distances between the rows of two matrices (`scipy.spatial.distance.cdist`).
//!
//! Large problems go through one matrix product (the GEMM formulation) with an exact fix-up fused into the one
//! pass that finishes the output:
//!
//! * euclidean / sqeuclidean: both inputs are first shifted by the mean of all their rows (distances do not
//!   change; the norms, and so the cancellation error, shrink), then `d2 = |a|^2 + |b|^2 - 2 a.b` with the
//!   product from GEMM. Where `d2 < tau (|a|^2 + |b|^2)` (tau = 1/8 for float64, 1/4 for float32) the
//!   cancellation could dominate, and the entry is recomputed directly from the original rows: equal points are
//!   exactly 0 apart and no squared distance is negative. Every other entry has a relative error of at most
//!   about `k eps / tau` (a worst-case bound; typically far smaller), like a direct sum of `k` squares would
//!   within a small factor.
//! * cosine: `1 - a.b / (|a| |b|)` (clipped like SciPy) with the dot products from GEMM: an absolute error of
//!   about `k eps`, as SciPy's own. Entries within `k eps` of 0 are recomputed directly, and rows equal to each
//!   other are exactly 0 apart.
//!
//! Inputs with a NaN or an infinity, and small problems, are computed directly per pair (SIMD over the
//! features, rows of `a` in parallel).

use super::alloc;
use super::dispatch::{dispatch, maybe_parallel, Kernel, Mode};
use super::layout::fmt_shape;
use super::linalg::GemmElem;
use super::simd::{tree_t, L};
use super::Real;
use crate::error::{CoreError, Result};
use ndarray::{Array2, ArrayView2, Ix2};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The fix-up threshold of the GEMM formulation: entries with `d^2 < tau (|a|^2 + |b|^2)` (shifted rows) are
/// recomputed directly; [float64, float32].
pub const TAU: [f64; 2] = [0.125, 0.25];

/// Problems with fewer multiply-adds (m n k) than this are computed directly; the GEMM set-up does not pay off.
pub const GEMM_MIN_DEFAULT: usize = 1 << 16;
static GEMM_MIN: AtomicUsize = AtomicUsize::new(GEMM_MIN_DEFAULT);

/// Sets the size (m n k) from which `cdist` uses the GEMM formulation (0: always, `usize::MAX`: never; the
/// tests use it to cover both paths) and returns the previous one.
pub fn set_gemm_min(v: usize) -> usize {
    GEMM_MIN.swap(v, Ordering::Relaxed)
}

/// Supported metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Euclidean,
    SqEuclidean,
    Cosine,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Metric> {
        match s {
            "euclidean" => Ok(Metric::Euclidean),
            "sqeuclidean" => Ok(Metric::SqEuclidean),
            "cosine" => Ok(Metric::Cosine),
            _ => Err(CoreError::value(
                "cdist",
                "metric",
                format!("is {s:?}; expected 'euclidean', 'sqeuclidean' or 'cosine'"),
            )),
        }
    }
}

#[inline(always)]
fn sqdist<T: Real, M: Mode>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; L];
    let mut ix = x.chunks_exact(L);
    let mut iy = y.chunks_exact(L);
    for (a, b) in (&mut ix).zip(&mut iy) {
        for i in 0..L {
            let d = a[i] - b[i];
            acc[i] = M::madd(d, d, acc[i]);
        }
    }
    // the tail (all of a short row) in 8 independent lanes, not one dependent chain
    let (rx, ry) = (ix.remainder(), iy.remainder());
    let mut acc8 = [T::ZERO; 8];
    let mut jx = rx.chunks_exact(8);
    let mut jy = ry.chunks_exact(8);
    for (a, b) in (&mut jx).zip(&mut jy) {
        for i in 0..8 {
            let d = a[i] - b[i];
            acc8[i] = M::madd(d, d, acc8[i]);
        }
    }
    let mut s = tree_t(acc) + sum8(acc8);
    for (&a, &b) in jx.remainder().iter().zip(jy.remainder()) {
        let d = a - b;
        s = M::madd(d, d, s);
    }
    s
}

#[inline(always)]
fn sum8<T: Real>(a: [T; 8]) -> T {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

#[inline(always)]
fn dotp<T: Real, M: Mode>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::ZERO; L];
    let mut ix = x.chunks_exact(L);
    let mut iy = y.chunks_exact(L);
    for (a, b) in (&mut ix).zip(&mut iy) {
        for i in 0..L {
            acc[i] = M::madd(a[i], b[i], acc[i]);
        }
    }
    let (rx, ry) = (ix.remainder(), iy.remainder());
    let mut acc8 = [T::ZERO; 8];
    let mut jx = rx.chunks_exact(8);
    let mut jy = ry.chunks_exact(8);
    for (a, b) in (&mut jx).zip(&mut jy) {
        for i in 0..8 {
            acc8[i] = M::madd(a[i], b[i], acc8[i]);
        }
    }
    let mut s = tree_t(acc) + sum8(acc8);
    for (&a, &b) in jx.remainder().iter().zip(jy.remainder()) {
        s = M::madd(a, b, s);
    }
    s
}

/// One row of a against all rows of b.
struct Row<'a, T> {
    x: &'a [T],
    b: &'a [T],
    k: usize,
    metric: Metric,
    xnorm: T,
    bnorms: &'a [T],
    out: &'a mut [T],
}

impl<T: Real> Kernel for Row<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (j, o) in self.out.iter_mut().enumerate() {
            let y = &self.b[j * self.k..(j + 1) * self.k];
            *o = match self.metric {
                Metric::SqEuclidean => sqdist::<T, M>(self.x, y),
                Metric::Euclidean => sqdist::<T, M>(self.x, y).sqrt(),
                Metric::Cosine => {
                    // scipy: cos = uv / (|u| |v|), clipped to [-1, 1]; 1 - cos; equal rows exactly 0
                    let d = one_minus_cos(dotp::<T, M>(self.x, y) / (self.xnorm * self.bnorms[j]));
                    if d < cosine_small::<T>(self.k) && self.x == y {
                        T::ZERO
                    } else {
                        d
                    }
                }
            };
        }
    }
}

/// Distances between every row of `a` (m x k) and of `b` (n x k): an m x n matrix.
pub fn cdist<T: GemmElem>(
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    metric: Metric,
) -> Result<Array2<T>> {
    check_shapes(a, b)?;
    // the result first: it is the large allocation
    let mut out = alloc::zeros_array::<T>("cdist", "result", &[a.nrows(), b.nrows()], false)?
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    cdist_into(a, b, metric, out.as_slice_mut().expect("fresh C array"))?;
    Ok(out)
}

/// Checks that `a` and `b` have as many columns.
pub fn check_shapes<T>(a: &ArrayView2<T>, b: &ArrayView2<T>) -> Result<()> {
    if a.ncols() != b.ncols() {
        return Err(CoreError::value(
            "cdist",
            "b",
            format!(
                "has shape {}; expected {} columns like a of shape {}",
                fmt_shape(b.shape()),
                a.ncols(),
                fmt_shape(a.shape())
            ),
        ));
    }
    Ok(())
}

/// [`cdist`] into `buf`, the m x n result in C order (every element is written).
pub fn cdist_into<T: GemmElem>(
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    metric: Metric,
    buf: &mut [T],
) -> Result<()> {
    check_shapes(a, b)?;
    let (m, n, k) = (a.nrows(), b.nrows(), a.ncols());
    assert_eq!(
        buf.len(),
        m * n,
        "cdist_into: the result buffer has m * n elements"
    );
    if m == 0 || n == 0 {
        return Ok(());
    }
    let ad = alloc::c_order("cdist", "a", &a.view().into_dyn())?;
    let bd = alloc::c_order("cdist", "b", &b.view().into_dyn())?;
    let (ad, bd): (&[T], &[T]) = (&ad, &bd);
    let norms = |d: &[T], rows: usize, name: &str| -> Result<Vec<T>> {
        if metric != Metric::Cosine {
            return Ok(vec![]);
        }
        let norm = |i: usize| {
            dispatch(SqNorm {
                x: &d[i * k..(i + 1) * k],
            })
            .sqrt()
        };
        alloc::collect(
            "cdist",
            &format!("row norms of '{name}'"),
            &[rows],
            (0..rows).map(norm),
        )
    };
    let an = norms(ad, m, "a")?;
    let bn = norms(bd, n, "b")?;
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    if k > 0 && work >= GEMM_MIN.load(Ordering::Relaxed) {
        let done = match metric {
            Metric::Cosine => {
                cosine_gemm(ad, bd, (m, n, k), &an, &bn, buf);
                true
            }
            _ => euclidean_gemm(ad, bd, (m, n, k), metric, buf)?,
        };
        if done {
            return Ok(());
        }
    }
    let row = |(i, o): (usize, &mut [T])| {
        dispatch(Row {
            x: &ad[i * k..(i + 1) * k],
            b: bd,
            k,
            metric,
            xnorm: an.get(i).copied().unwrap_or(T::ONE),
            bnorms: &bn,
            out: o,
        })
    };
    maybe_parallel(work, 1 << 16, |par| {
        if par {
            buf.par_chunks_mut(n).enumerate().for_each(row);
        } else {
            buf.chunks_mut(n).enumerate().for_each(row);
        }
    });
    Ok(())
}

/// Finishes the rows of `out` (m x n, C order) with `f(i, row)`: in parallel, or on this thread when `serial`.
fn rows_par<T: Real>(
    out: &mut [T],
    n: usize,
    serial: bool,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let m = out.len() / n;
    let min = if serial { usize::MAX } else { 1 << 15 };
    maybe_parallel(out.len(), min, |par| {
        if par {
            // a few rows per task: enough to amortise the task, small enough to balance
            let rows = (m / (8 * rayon::current_num_threads())).clamp(1, 64);
            out.par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(c, blk)| {
                    for (r, o) in blk.chunks_mut(n).enumerate() {
                        f(c * rows + r, o)
                    }
                });
        } else {
            out.chunks_mut(n).enumerate().for_each(|(i, o)| f(i, o));
        }
    });
}

/// Outputs up to this many elements take the product from the BLAS NumPy loaded (when one is in use) and the
/// fix-up on the calling thread; larger ones the `gemm` crate's kernels in ferrolab's pool and a parallel fix-up.
/// A BLAS's threads keep spinning for a while after each call, so a parallel pass right after it would compete
/// with them for the cores; for a small output the serial fix-up is cheap and the BLAS product faster
/// (2048x128x64: 1.4-1.8x faster in all), for a large one the parallel fix-up pays (2000x2000x64: up to 1.4x
/// slower the other way).
const BLAS_OUT_MAX: usize = 1 << 19;

/// `a @ b.T` (m x k times (n x k).T) scaled by `alpha`, into `out` (m x n, C order): see [`BLAS_OUT_MAX`] for
/// where it runs. `true` when it ran on the BLAS (the fix-up then stays on this thread).
fn gram<T: GemmElem>(
    a: &[T],
    b: &[T],
    (m, n, k): (usize, usize, usize),
    alpha: T,
    out: &mut [T],
) -> bool {
    let (ks, ns) = (k as isize, n as isize);
    // SAFETY: a is m x k and b is n x k in C order, out is a separate m x n C-order buffer, all dimensions > 0.
    unsafe {
        super::linalg::product(
            (m, n, k),
            (out.as_mut_ptr(), ns, 1),
            (a.as_ptr(), ks, 1),
            (b.as_ptr(), 1, ks),
            alpha,
            m * n <= BLAS_OUT_MAX,
        )
    }
}

/// Euclidean / squared euclidean through GEMM with the fused fix-up (see the module notes). `false` (nothing
/// written) when an input has a NaN or an infinity or the shifted norms overflow: the direct path handles them.
fn euclidean_gemm<T: GemmElem>(
    ad: &[T],
    bd: &[T],
    (m, n, k): (usize, usize, usize),
    metric: Metric,
    out: &mut [T],
) -> Result<bool> {
    // the mean of all rows, in float64 (a non-finite input makes it non-finite)
    let mut mean = vec![0.0f64; k];
    for r in ad.chunks_exact(k).chain(bd.chunks_exact(k)) {
        for (s, &v) in mean.iter_mut().zip(r) {
            *s += v.to_f64();
        }
    }
    let rows = (m + n) as f64;
    if !mean.iter().all(|s| s.is_finite()) {
        return Ok(false);
    }
    let mean: Vec<T> = mean.iter().map(|&s| T::from_f64(s / rows)).collect();
    let shifted = |d: &[T], rows: usize, name: &str| -> Result<(Vec<T>, Vec<T>)> {
        let what = format!("shifted copy of '{name}'");
        let mut c = alloc::with_capacity::<T>("cdist", &what, &[rows, k])?;
        for r in d.chunks_exact(k) {
            c.extend(r.iter().zip(&mean).map(|(&v, &mu)| v - mu));
        }
        let nn = alloc::collect(
            "cdist",
            &format!("row norms of '{name}'"),
            &[rows],
            c.chunks_exact(k).map(|r| dispatch(SqNorm { x: r })),
        )?;
        Ok((c, nn))
    };
    let (ac, aa) = shifted(ad, m, "a")?;
    let (bc, bb) = shifted(bd, n, "b")?;
    if !aa.iter().chain(&bb).all(|v| v.to_f64().is_finite()) {
        return Ok(false);
    }
    drop(mean);
    let serial = gram(&ac, &bc, (m, n, k), T::from_f64(-2.0), out);
    drop((ac, bc));
    let tau = T::from_f64(TAU[usize::from(T::EPSILON.to_f64() > 1e-10)]);
    let sqrt = metric == Metric::Euclidean;
    rows_par(out, n, serial, |i, o| {
        dispatch(EuclidFix {
            x: &ad[i * k..(i + 1) * k],
            b: bd,
            k,
            xx: aa[i],
            bb: &bb,
            tau,
            sqrt,
            out: o,
        })
    });
    Ok(true)
}

/// Cosine through GEMM (see the module notes); `an`, `bn` are the row norms.
fn cosine_gemm<T: GemmElem>(
    ad: &[T],
    bd: &[T],
    (m, n, k): (usize, usize, usize),
    an: &[T],
    bn: &[T],
    out: &mut [T],
) {
    let serial = gram(ad, bd, (m, n, k), T::ONE, out);
    // entries closer to 0 than the product's error are recomputed directly
    let small = cosine_small::<T>(k);
    rows_par(out, n, serial, |i, o| {
        dispatch(CosFix {
            x: &ad[i * k..(i + 1) * k],
            b: bd,
            k,
            xn: an[i],
            bn,
            small,
            out: o,
        })
    });
}

/// Cosine distances below this may be rounding error: rows equal to each other are then given exactly 0.
#[inline(always)]
fn cosine_small<T: Real>(k: usize) -> T {
    T::from_f64(4.0 * (k as f64 + 2.0) * T::EPSILON.to_f64())
}

/// `1 - c` with `c` clipped to [-1, 1] like SciPy (NaN stays NaN).
#[inline(always)]
fn one_minus_cos<T: Real>(c: T) -> T {
    let c = if c > T::ONE {
        T::ONE
    } else if c < -T::ONE {
        -T::ONE
    } else {
        c
    };
    T::ONE - c
}

struct SqNorm<'a, T> {
    x: &'a [T],
}

impl<T: Real> Kernel for SqNorm<'_, T> {
    type Output = T;
    #[inline(always)]
    fn run<M: Mode>(self) -> T {
        dotp::<T, M>(self.x, self.x)
    }
}

/// One output row of the cosine GEMM formulation: `out` holds `a.b`; entries within rounding error of 0 are
/// recomputed directly, equal rows give exactly 0.
struct CosFix<'a, T> {
    x: &'a [T],
    b: &'a [T],
    k: usize,
    xn: T,
    bn: &'a [T],
    small: T,
    out: &'a mut [T],
}

impl<T: Real> Kernel for CosFix<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        let mut near = false;
        for (g, &nb) in self.out.iter_mut().zip(self.bn) {
            *g = one_minus_cos(*g / (self.xn * nb));
            near |= *g < self.small;
        }
        if near {
            for (j, g) in self.out.iter_mut().enumerate() {
                if *g < self.small {
                    let y = &self.b[j * self.k..(j + 1) * self.k];
                    *g = if self.x == y {
                        T::ZERO
                    } else {
                        one_minus_cos(dotp::<T, M>(self.x, y) / (self.xn * self.bn[j]))
                    };
                }
            }
        }
    }
}

/// One output row of the GEMM formulation: `out` holds `-2 a.b`; adds the norms and recomputes the entries
/// that cancellation could spoil directly from the original rows.
struct EuclidFix<'a, T> {
    x: &'a [T],
    b: &'a [T],
    k: usize,
    xx: T,
    bb: &'a [T],
    tau: T,
    sqrt: bool,
    out: &'a mut [T],
}

impl<T: Real> Kernel for EuclidFix<'_, T> {
    type Output = ();
    #[inline(always)]
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(d2 >= lim)` is also true for NaN, on purpose
    fn run<M: Mode>(self) {
        // the row stays in L1 across these loops: one pass over the output in memory
        let mut bad = false;
        for (o, &bb) in self.out.iter_mut().zip(self.bb) {
            let s = self.xx + bb;
            let d2 = s + *o;
            // also catches NaN (an overflowing product)
            bad |= !(d2 >= self.tau * s);
            *o = d2;
        }
        if bad {
            for (j, (o, &bb)) in self.out.iter_mut().zip(self.bb).enumerate() {
                if !(*o >= self.tau * (self.xx + bb)) {
                    *o = sqdist::<T, M>(self.x, &self.b[j * self.k..(j + 1) * self.k]);
                }
            }
        }
        if self.sqrt {
            for o in self.out.iter_mut() {
                *o = o.sqrt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn cdist_metrics() {
        let a = Array2::from_shape_vec((2, 2), vec![0.0, 0.0, 1.0, 1.0]).unwrap();
        let b = Array2::from_shape_vec((3, 2), vec![0.0, 0.0, 3.0, 4.0, 1.0, 0.0]).unwrap();
        let d = cdist(&a.view(), &b.view(), Metric::Euclidean).unwrap();
        assert_eq!(d[[0, 1]], 5.0);
        assert_eq!(d[[0, 0]], 0.0);
        let d = cdist(&a.view(), &b.view(), Metric::SqEuclidean).unwrap();
        assert_eq!(d[[1, 1]], 4.0 + 9.0);
        let d = cdist(&a.view(), &b.view(), Metric::Cosine).unwrap();
        assert!((d[[1, 2]] - (1.0 - 1.0 / 2f64.sqrt())).abs() < 1e-12);
        assert!(d[[0, 1]].is_nan());
        assert!(Metric::parse("manhattan").is_err());
    }

    #[test]
    fn gemm_formulation_matches_direct() {
        // offset rows (cancellation-prone), equal rows, near rows
        let (m, n, k) = (37, 29, 13);
        let a = Array2::from_shape_fn((m, k), |(i, j)| {
            1e4 + ((i * 31 + j * 7) % 17) as f64 * 0.37 - (j as f64).sin()
        });
        let mut b = Array2::from_shape_fn((n, k), |(i, j)| {
            1e4 + ((i * 13 + j * 11) % 19) as f64 * 0.29
        });
        b.row_mut(3).assign(&a.row(5));
        b.row_mut(4).assign(&a.row(6).mapv(|v| v + 1e-9));
        let (ad, bd) = (a.as_slice().unwrap(), b.as_slice().unwrap());
        for metric in [Metric::Euclidean, Metric::SqEuclidean] {
            let want = cdist(&a.view(), &b.view(), metric).unwrap(); // small: direct
            let mut got = vec![f64::NAN; m * n];
            assert!(euclidean_gemm(ad, bd, (m, n, k), metric, &mut got).unwrap());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-12 * w.abs(), "{g} vs {w}");
            }
            assert_eq!(got[5 * n + 3], 0.0);
            assert!(got[6 * n + 4] > 0.0);
        }
        let norm = |r: ndarray::ArrayView1<f64>| r.iter().fold(0.0, |s, &v| s + v * v).sqrt();
        let an: Vec<f64> = a.rows().into_iter().map(norm).collect();
        let bn: Vec<f64> = b.rows().into_iter().map(norm).collect();
        let want = cdist(&a.view(), &b.view(), Metric::Cosine).unwrap();
        let mut got = vec![f64::NAN; m * n];
        cosine_gemm(ad, bd, (m, n, k), &an, &bn, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-14, "{g} vs {w}");
        }
        assert_eq!(got[5 * n + 3], 0.0);
        // a NaN or an infinity: left to the direct path
        let mut bad = a.clone();
        bad[[2, 2]] = f64::INFINITY;
        let mut got = vec![0.0; m * n];
        let r = euclidean_gemm(
            bad.as_slice().unwrap(),
            bd,
            (m, n, k),
            Metric::Euclidean,
            &mut got,
        );
        assert!(!r.unwrap());
    }

    #[test]
    fn huge_result_is_a_memory_error() {
        // 2^25 x 2^25 distances between points without features: 9 PB
        let a = Array2::<f64>::zeros((1 << 25, 0));
        let e = cdist(&a.view(), &a.view(), Metric::Cosine).unwrap_err();
        assert_eq!(e.kind(), "MemoryError");
        assert_eq!(
            e.to_string(),
            "cdist(): cannot allocate the 9.0 PB result (33554432 x 33554432 float64)"
        );
    }
}
