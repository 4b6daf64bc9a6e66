//! Pairwise distances between the rows of two matrices (`scipy.spatial.distance.cdist`).
//!
//! Computed directly per pair (not through `|a|^2 + |b|^2 - 2ab`), so distances between close or equal
//! points have no cancellation error; SIMD runs over the features, rows of `a` run in parallel.

use super::alloc;
use super::dispatch::{dispatch, maybe_parallel, Kernel, Mode};
use super::layout::fmt_shape;
use super::simd::{tree_t, L};
use super::Real;
use crate::error::{CoreError, Result};
use ndarray::{Array2, ArrayView2, Ix2};
use rayon::prelude::*;

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
    let mut s = tree_t(acc);
    for (&a, &b) in ix.remainder().iter().zip(iy.remainder()) {
        let d = a - b;
        s = M::madd(d, d, s);
    }
    s
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
    let mut s = tree_t(acc);
    for (&a, &b) in ix.remainder().iter().zip(iy.remainder()) {
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
                    // scipy: cos = uv / (|u| |v|), clipped to [-1, 1]; 1 - cos
                    let c = dotp::<T, M>(self.x, y) / (self.xnorm * self.bnorms[j]);
                    let c = if c > T::ONE {
                        T::ONE
                    } else if c < -T::ONE {
                        -T::ONE
                    } else {
                        c
                    };
                    T::ONE - c
                }
            };
        }
    }
}

/// Distances between every row of `a` (m x k) and of `b` (n x k): an m x n matrix.
pub fn cdist<T: Real>(a: &ArrayView2<T>, b: &ArrayView2<T>, metric: Metric) -> Result<Array2<T>> {
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
    let (m, n, k) = (a.nrows(), b.nrows(), a.ncols());
    // the result first: it is the large allocation
    let mut out = alloc::zeros_array::<T>("cdist", "result", &[m, n], false)?
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    if m == 0 || n == 0 {
        return Ok(out);
    }
    let ad = alloc::c_order("cdist", "a", &a.view().into_dyn())?;
    let bd = alloc::c_order("cdist", "b", &b.view().into_dyn())?;
    let (ad, bd): (&[T], &[T]) = (&ad, &bd);
    let norms = |d: &[T], rows: usize, name: &str| -> Result<Vec<T>> {
        if metric != Metric::Cosine {
            return Ok(vec![]);
        }
        let norm = |i: usize| {
            let r = &d[i * k..(i + 1) * k];
            r.iter().fold(T::ZERO, |s, &v| s + v * v).sqrt()
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
    let buf = out.as_slice_mut().expect("fresh C array");
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
    maybe_parallel(
        m.saturating_mul(n).saturating_mul(k.max(1)),
        1 << 16,
        |par| {
            if par {
                buf.par_chunks_mut(n).enumerate().for_each(row);
            } else {
                buf.chunks_mut(n).enumerate().for_each(row);
            }
        },
    );
    Ok(out)
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
