//! Matrix product, into a new array or `out`: through the BLAS NumPy links when one is loaded ([`super::blas`])
//! and the strides suit it, else through the `gemm` crate (BLIS-style packed micro-kernels with runtime
//! AVX2/FMA/AVX-512 dispatch, any strides, on ferrolab's pool).

use super::alloc;
use super::blas::{self, BlasElem, Mat};
use super::dispatch::{pool, usable_threads};
use super::layout::fmt_shape;
use super::Real;
use crate::error::{CoreError, Result};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Ix2};

/// Element types `gemm` (and CBLAS) computes.
pub trait GemmElem: Real + BlasElem {}
impl GemmElem for f32 {}
impl GemmElem for f64 {}

fn check_shapes(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    let (m, k) = (a[0], a[1]);
    let (k2, n) = (b[0], b[1]);
    if k != k2 {
        return Err(CoreError::value(
            "matmul",
            "b",
            format!(
                "has shape {}; expected ({k}, n) to match a of shape {}",
                fmt_shape(b),
                fmt_shape(a)
            ),
        ));
    }
    Ok((m, k, n))
}

/// `a @ b` for 2-D `a` (m x k) and `b` (k x n). Writes into `out` (m x n) when given.
pub fn matmul<T: GemmElem>(
    a: &ArrayView2<T>,
    b: &ArrayView2<T>,
    out: Option<ArrayViewMut2<T>>,
) -> Result<Option<Array2<T>>> {
    let (m, k, n) = check_shapes(a.shape(), b.shape())?;
    let mut owned = None;
    let mut dst = match out {
        Some(o) => {
            if o.shape() != [m, n] {
                return Err(CoreError::value(
                    "matmul",
                    "out",
                    format!("has shape {}; expected ({m}, {n})", fmt_shape(o.shape())),
                ));
            }
            o
        }
        None => {
            // column-major destination when both operands are column-major keeps gemm transpose-free
            let f = a.t().is_standard_layout() && b.t().is_standard_layout() && m > 1 && n > 1;
            let r = alloc::zeros_array::<T>("matmul", "result", &[m, n], f)?;
            owned = Some(r.into_dimensionality::<Ix2>().expect("2-D"));
            owned.as_mut().expect("just set").view_mut()
        }
    };
    if m > 0 && n > 0 {
        if k == 0 {
            dst.fill(T::ZERO);
        } else {
            let (ds, as_, bs) = (dst.strides().to_vec(), a.strides(), b.strides());
            // SAFETY: the pointers and strides describe live, correctly shaped views; dst does not alias a or b
            // (the binding copies an `out` that overlaps an input).
            unsafe {
                product(
                    (m, n, k),
                    (dst.as_mut_ptr(), ds[0], ds[1]),
                    (a.as_ptr(), as_[0], as_[1]),
                    (b.as_ptr(), bs[0], bs[1]),
                    T::ONE,
                    true,
                )
            };
        }
    }
    Ok(owned)
}

/// `c = alpha * a @ b` for `a` (m x k), `b` (k x n), `c` (m x n), each given as (pointer, row stride, column
/// stride) in elements, all dimensions > 0: through the loaded BLAS when `use_blas`, there is one and the
/// strides suit it (called here, on this thread, never inside the pool), else through the `gemm` crate on the
/// pool. `true` when the BLAS computed it.
///
/// # Safety
/// The pointers and strides describe live matrices of those shapes; `c` aliases neither input and its old
/// contents are not read.
pub(crate) unsafe fn product<T: GemmElem>(
    (m, n, k): (usize, usize, usize),
    (cp, crs, ccs): (*mut T, isize, isize),
    (ap, ars, acs): (*const T, isize, isize),
    (bp, brs, bcs): (*const T, isize, isize),
    alpha: T,
    use_blas: bool,
) -> bool {
    let (cm, am, bm) = (
        Mat::new(m, n, crs, ccs),
        Mat::new(m, k, ars, acs),
        Mat::new(k, n, brs, bcs),
    );
    // SAFETY: forwarded from the caller.
    if use_blas && unsafe { blas::gemm(cm, cp, am, ap, bm, bp, alpha) } {
        return true;
    }
    // the pool, when the product is large enough and the pool's threads could be started
    let pool = if m.saturating_mul(n).saturating_mul(k) >= 64 * 64 * 64 {
        pool().filter(|p| usable_threads(p) > 1)
    } else {
        None
    };
    let par = match pool {
        // the threads that other processes leave free (gemm splits the work among that many)
        Some(p) => gemm::Parallelism::Rayon(usable_threads(p)),
        None => gemm::Parallelism::None,
    };
    // raw addresses so the closure can move into the pool
    let (cp, ap, bp) = (cp as usize, ap as usize, bp as usize);
    let run = || {
        // SAFETY: forwarded from the caller; read_dst = false ignores c's old contents.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                cp as *mut T,
                ccs,
                crs,
                false,
                ap as *const T,
                acs,
                ars,
                bp as *const T,
                bcs,
                brs,
                T::ZERO,
                alpha,
                false,
                false,
                false,
                par,
            )
        }
    };
    match pool {
        Some(p) => p.install(run),
        None => run(),
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    #[test]
    fn matmul_matches_naive_for_layouts() {
        let a = Array2::from_shape_fn((70, 33), |(i, j)| ((i * 31 + j * 7) % 13) as f64 - 6.0);
        let b = Array2::from_shape_fn((33, 90), |(i, j)| ((i * 17 + j * 3) % 11) as f64 - 5.0);
        let want = a.dot(&b);
        let got = matmul(&a.view(), &b.view(), None).unwrap().unwrap();
        assert_eq!(got, want);
        let af = a.t().to_owned().reversed_axes(); // same values, Fortran order
        let got = matmul(&af.view(), &b.t().t(), None).unwrap().unwrap();
        assert_eq!(got, want);
        let mut out = Array2::<f64>::zeros((70, 90).f());
        matmul(&a.view(), &b.view(), Some(out.view_mut())).unwrap();
        assert_eq!(out, want);
        let e = matmul(&b.view(), &b.view(), None).unwrap_err();
        assert!(e.to_string().contains("'b'"));
    }

    #[test]
    fn huge_result_is_a_memory_error() {
        // zero-size operands, an impossible (2^40 x 2^40) result
        let a = Array2::<f64>::zeros((1 << 40, 0));
        let b = Array2::<f64>::zeros((0, 1 << 40));
        let e = matmul(&a.view(), &b.view(), None).unwrap_err();
        assert_eq!(e.kind(), "MemoryError");
        assert!(
            e.to_string().starts_with("matmul(): cannot allocate the"),
            "{e}"
        );
    }
}
