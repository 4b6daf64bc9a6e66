//! An optional CBLAS `?gemm` loaded at run time: the BLAS that NumPy itself links, so that `matmul` (and the
//! GEMM step of `cdist`) run the same kernels, with the same threads, as `a @ b` in NumPy.
//!
//! Nothing is linked at build time. The Python package finds the library NumPy loaded and passes its path to
//! [`load`]; the symbols tried are the scipy-openblas ones of NumPy's wheels (`scipy_cblas_dgemm64_`, ILP64), the
//! `64_`-suffixed ILP64 ones of other OpenBLAS builds and the plain LP64 `cblas_dgemm`. A tiny product checks the
//! loaded function before it is used. Without a library (or after [`unload`]) the callers use the `gemm` crate.
//!
//! The BLAS is called on the calling thread, never from inside ferrolab's rayon pool: it runs its own threads
//! (OpenBLAS: `OPENBLAS_NUM_THREADS`, the same pool NumPy uses).

use crate::sync::RwLockExt;
use std::ffi::{c_int, OsStr};
use std::sync::{Arc, RwLock};

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Gemm32<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    i32,
    i32,
    i32,
    T,
    *const T,
    i32,
    *const T,
    i32,
    T,
    *mut T,
    i32,
);
type Gemm64<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    i64,
    i64,
    i64,
    T,
    *const T,
    i64,
    *const T,
    i64,
    T,
    *mut T,
    i64,
);

#[derive(Clone, Copy)]
enum Fns {
    Lp64(Gemm32<f32>, Gemm32<f64>),
    Ilp64(Gemm64<f32>, Gemm64<f64>),
}

/// A loaded BLAS: the library stays open while any call holds the `Arc`.
pub struct Blas {
    fns: Fns,
    desc: String,
    _lib: libloading::Library,
}

static BLAS: RwLock<Option<Arc<Blas>>> = RwLock::new(None);

/// The symbol pairs tried, in order: (sgemm, dgemm, ILP64).
const SYMBOLS: [(&str, &str, bool); 4] = [
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", true),
    ("cblas_sgemm64_", "cblas_dgemm64_", true),
    ("scipy_cblas_sgemm", "scipy_cblas_dgemm", false),
    ("cblas_sgemm", "cblas_dgemm", false),
];

fn find(lib: &libloading::Library) -> Option<(Fns, &'static str)> {
    for (s, d, ilp64) in SYMBOLS {
        // SAFETY: the symbols are the CBLAS ?gemm entry points; the signature is the CBLAS one with the integer
        // width the naming convention gives (checked by `self_test` before any other call).
        unsafe {
            if ilp64 {
                if let (Ok(fs), Ok(fd)) = (lib.get::<Gemm64<f32>>(s), lib.get::<Gemm64<f64>>(d)) {
                    return Some((Fns::Ilp64(*fs, *fd), d));
                }
            } else if let (Ok(fs), Ok(fd)) = (lib.get::<Gemm32<f32>>(s), lib.get::<Gemm32<f64>>(d))
            {
                return Some((Fns::Lp64(*fs, *fd), d));
            }
        }
    }
    None
}

/// Loads the CBLAS in the shared library at `path` (already loaded by NumPy: this only adds a reference) and uses
/// it from now on. Returns a description (path and symbol), or why it cannot be used (the previous BLAS, if any,
/// stays).
pub fn load(path: &OsStr) -> std::result::Result<String, String> {
    // SAFETY: loading a BLAS runs no initialisers beyond the library's own (NumPy has already loaded it).
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    let (fns, sym) = find(&lib).ok_or_else(|| "no CBLAS sgemm/dgemm symbols".to_string())?;
    let blas = Blas {
        fns,
        desc: format!("{} ({sym})", path.to_string_lossy()),
        _lib: lib,
    };
    if !self_test(&blas) {
        return Err(format!("{} gives wrong products", blas.desc));
    }
    let desc = blas.desc.clone();
    *BLAS.writing() = Some(Arc::new(blas));
    Ok(desc)
}

/// Stops using the BLAS: `matmul` and `cdist` use the `gemm` crate.
pub fn unload() {
    *BLAS.writing() = None;
}

/// What [`load`] loaded, if anything.
pub fn info() -> Option<String> {
    current().map(|b| b.desc.clone())
}

fn current() -> Option<Arc<Blas>> {
    BLAS.reading().clone()
}

fn self_test(b: &Blas) -> bool {
    // x = [[1, 2, 3], [4, 5, 6]]; x @ x.reshape(3, 2), 2 x @ x.T, and the first into a column-major result
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let x32 = x.map(|v| v as f32);
    let (rm23, rm32, xt) = (
        Mat::new(2, 3, 3, 1),
        Mat::new(3, 2, 2, 1),
        Mat::new(3, 2, 1, 3),
    );
    let (rm22, cm22) = (Mat::new(2, 2, 2, 1), Mat::new(2, 2, 1, 2));
    let (mut c1, mut c2, mut c3) = ([f64::NAN; 4], [f64::NAN; 4], [f32::NAN; 4]);
    // SAFETY: 2 x 3, 3 x 2 and 2 x 2 matrices on local arrays, described by their shapes and strides.
    let ran = unsafe {
        f64::call(
            b,
            rm22,
            (rm23, x.as_ptr()),
            (rm32, x.as_ptr()),
            1.0,
            c1.as_mut_ptr(),
        ) && f64::call(
            b,
            rm22,
            (rm23, x.as_ptr()),
            (xt, x.as_ptr()),
            2.0,
            c2.as_mut_ptr(),
        ) && f32::call(
            b,
            cm22,
            (rm23, x32.as_ptr()),
            (rm32, x32.as_ptr()),
            1.0,
            c3.as_mut_ptr(),
        )
    };
    ran && c1 == [22.0, 28.0, 49.0, 64.0]
        && c2 == [28.0, 64.0, 64.0, 154.0]
        && c3 == [22.0, 49.0, 28.0, 64.0]
}

/// A matrix operand: `rows x cols` with element strides `rs`, `cs` (in elements).
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    pub fn new(rows: usize, cols: usize, rs: isize, cs: isize) -> Mat {
        Mat { rows, cols, rs, cs }
    }

    fn t(self) -> Mat {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// As a row-major CBLAS operand: (transposed, leading dimension), when one stride is unit and the other
    /// spans a row (length-1 dimensions take any stride).
    fn cblas(self) -> Option<(bool, usize)> {
        let unit = |s: isize, n: usize| s == 1 || n <= 1;
        let lead = |s: isize, n_other: usize, n_self: usize| -> Option<usize> {
            if n_self <= 1 {
                Some(n_other.max(1))
            } else if s > 0 && s as usize >= n_other.max(1) {
                Some(s as usize)
            } else {
                None
            }
        };
        if unit(self.cs, self.cols) {
            if let Some(ld) = lead(self.rs, self.cols, self.rows) {
                return Some((false, ld));
            }
        }
        if unit(self.rs, self.rows) {
            if let Some(ld) = lead(self.cs, self.rows, self.cols) {
                return Some((true, ld));
            }
        }
        None
    }
}

/// Element types with a CBLAS `?gemm`.
pub trait BlasElem: Copy {
    /// `c = alpha * a @ b` (beta = 0: `c`'s old contents are not read). `false` when a layout or size cannot be
    /// passed to the BLAS (nothing was written then).
    ///
    /// # Safety
    /// As [`gemm`].
    unsafe fn call(
        blas: &Blas,
        c: Mat,
        a: (Mat, *const Self),
        b: (Mat, *const Self),
        alpha: Self,
        cp: *mut Self,
    ) -> bool;
}

macro_rules! impl_blas {
    ($t:ty, $idx:tt) => {
        impl BlasElem for $t {
            unsafe fn call(
                blas: &Blas,
                c: Mat,
                (a, ap): (Mat, *const $t),
                (b, bp): (Mat, *const $t),
                alpha: $t,
                cp: *mut $t,
            ) -> bool {
                // row-major C; a column-major C is computed as C^T = B^T A^T
                let (c, a, ap, b, bp) = match c.cblas() {
                    Some((false, _)) => (c, a, ap, b, bp),
                    Some((true, _)) => (c.t(), b.t(), bp, a.t(), ap),
                    None => return false,
                };
                let (Some((_, ldc)), Some((ta, lda)), Some((tb, ldb))) = (c.cblas(), a.cblas(), b.cblas()) else {
                    return false;
                };
                let (m, n, k) = (c.rows, c.cols, a.cols);
                let tr = |t: bool| if t { TRANS } else { NO_TRANS };
                // SAFETY: the caller passes pointers to live matrices of these shapes and strides; CBLAS reads a
                // and b and writes c (beta = 0) within them.
                unsafe {
                    match blas.fns {
                        Fns::Ilp64(..) => {
                            let f: Gemm64<$t> = impl_blas!(@pick blas.fns, Ilp64, $idx);
                            let i = |v: usize| i64::try_from(v).ok();
                            let (Some(m), Some(n), Some(k), Some(lda), Some(ldb), Some(ldc)) =
                                (i(m), i(n), i(k), i(lda), i(ldb), i(ldc))
                            else {
                                return false;
                            };
                            f(ROW_MAJOR, tr(ta), tr(tb), m, n, k, alpha, ap, lda, bp, ldb, 0.0, cp, ldc);
                        }
                        Fns::Lp64(..) => {
                            let f: Gemm32<$t> = impl_blas!(@pick blas.fns, Lp64, $idx);
                            let i = |v: usize| i32::try_from(v).ok();
                            let (Some(m), Some(n), Some(k), Some(lda), Some(ldb), Some(ldc)) =
                                (i(m), i(n), i(k), i(lda), i(ldb), i(ldc))
                            else {
                                return false;
                            };
                            f(ROW_MAJOR, tr(ta), tr(tb), m, n, k, alpha, ap, lda, bp, ldb, 0.0, cp, ldc);
                        }
                    }
                }
                true
            }
        }
    };
    (@pick $fns:expr, $variant:ident, 0) => {
        match $fns {
            Fns::$variant(s, _) => s,
            _ => unreachable!(),
        }
    };
    (@pick $fns:expr, $variant:ident, 1) => {
        match $fns {
            Fns::$variant(_, d) => d,
            _ => unreachable!(),
        }
    };
}
impl_blas!(f32, 0);
impl_blas!(f64, 1);

/// `c = alpha * a @ b` through the loaded BLAS (on the calling thread). `false` when there is none or the
/// layouts do not suit it; the caller then computes the product itself.
///
/// # Safety
/// `ap`, `bp` and `cp` point to live matrices described by `a`, `b` and `c` (`a.cols == b.rows`, `c` is
/// `a.rows x b.cols`, all dimensions > 0); `c` aliases neither input.
pub unsafe fn gemm<T: BlasElem>(
    c: Mat,
    cp: *mut T,
    a: Mat,
    ap: *const T,
    b: Mat,
    bp: *const T,
    alpha: T,
) -> bool {
    match current() {
        // SAFETY: forwarded from the caller.
        Some(blas) => unsafe { T::call(&blas, c, (a, ap), (b, bp), alpha, cp) },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cblas_layouts() {
        assert_eq!(Mat::new(3, 4, 4, 1).cblas(), Some((false, 4)));
        assert_eq!(Mat::new(3, 4, 8, 1).cblas(), Some((false, 8))); // a column slice of a wider array
        assert_eq!(Mat::new(3, 4, 1, 3).cblas(), Some((true, 3))); // Fortran order
        assert_eq!(Mat::new(1, 4, 0, 1).cblas(), Some((false, 4))); // one row: any row stride
        assert_eq!(Mat::new(3, 1, 5, 7).cblas(), Some((false, 5))); // one column: any column stride
        assert_eq!(Mat::new(3, 4, 4, 2).cblas(), None); // no unit stride
        assert_eq!(Mat::new(3, 4, -4, 1).cblas(), None); // negative
        assert_eq!(Mat::new(3, 4, 0, 1).cblas(), None); // broadcast rows
        assert_eq!(Mat::new(3, 4, 2, 1).cblas(), None); // overlapping rows
    }

    #[test]
    fn no_blas_means_false() {
        if info().is_none() {
            let x = [1.0f64; 4];
            let mut c = [0.0f64; 4];
            let m = Mat::new(2, 2, 2, 1);
            // SAFETY: 2 x 2 row-major matrices.
            assert!(!unsafe { gemm(m, c.as_mut_ptr(), m, x.as_ptr(), m, x.as_ptr(), 1.0) });
        }
        assert!(load(OsStr::new("/nonexistent/libnothing.so")).is_err());
    }
}
