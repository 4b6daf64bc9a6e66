//! Integer paths (`i64`, wrapping like NumPy's integer arithmetic) of the type-preserving ops: sum, min, max,
//! argmin, argmax, dot, matmul, axpy, fma, scale, clip. Narrower integer dtypes are widened to `i64` by the
//! binding and cast back, which gives NumPy's modular results for `+` and `*`.

use super::alloc;
use super::dispatch::{dispatch, maybe_parallel, Kernel, Mode};
use super::elementwise::{map_into, Input};
use super::layout::{canon, fmt_shape, Canon};
use super::reduce::Scalar;
use super::reduce::{drive, ArgBuffers, ColAcc};
use super::simd::{extreme_i64, first_eq};
use crate::error::{CoreError, Result};
use crate::telemetry::seam::Op;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, ArrayViewMutD, Ix2};
use rayon::prelude::*;

const SUM: u8 = 0;
const MIN: u8 = 1;
const MAX: u8 = 2;

#[inline(always)]
fn combine<const OP: u8>(a: i64, b: i64) -> i64 {
    match OP {
        SUM => a.wrapping_add(b),
        MIN => a.min(b),
        _ => a.max(b),
    }
}

#[inline(always)]
fn identity<const OP: u8>() -> i64 {
    match OP {
        SUM => 0,
        MIN => i64::MAX,
        _ => i64::MIN,
    }
}

/// The wrapping sum (8 lanes, so that the loop vectorizes), minimum or maximum ([`extreme_i64`]) of a contiguous
/// range.
struct Fold<'a, const OP: u8>(&'a [i64]);
impl<const OP: u8> Kernel for Fold<'_, OP> {
    type Output = i64;
    #[inline(always)]
    fn run<M: Mode>(self) -> i64 {
        if !self.0.is_empty() {
            match OP {
                MIN => return extreme_i64::<false, M>(self.0),
                MAX => return extreme_i64::<true, M>(self.0),
                _ => {}
            }
        }
        let mut acc = [identity::<OP>(); 8];
        let mut it = self.0.chunks_exact(8);
        for c in &mut it {
            for k in 0..8 {
                acc[k] = combine::<OP>(acc[k], c[k]);
            }
        }
        let r = it
            .remainder()
            .iter()
            .fold(identity::<OP>(), |a, &v| combine::<OP>(a, v));
        acc.into_iter().fold(r, combine::<OP>)
    }
}

/// Column folds: one accumulator per column, updated row by row into the other of two buffers (a minimum stored
/// back to the address it was loaded from compiles to a masked store, slow on AMD CPUs).
struct FoldCols<const OP: u8>(Vec<i64>, Vec<i64>);
impl<const OP: u8> ColAcc<i64> for FoldCols<OP> {
    type Out = i64;
    fn new(w: usize) -> Self {
        FoldCols(vec![identity::<OP>(); w], vec![0; w])
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, _i: usize, r: &[i64]) {
        for ((n, &a), &v) in self.1.iter_mut().zip(&self.0).zip(r) {
            *n = combine::<OP>(a, v);
        }
        std::mem::swap(&mut self.0, &mut self.1);
    }
    fn finish(self, _n: usize) -> Vec<i64> {
        self.0
    }
}

fn fold<const OP: u8>(func: &'static str, c: &Canon<i64>) -> Result<Vec<i64>> {
    drive::<i64, i64, FoldCols<OP>>(func, c, |_, s, _| dispatch(Fold::<OP>(s)), combine::<OP>)
}

/// Sum (wrapping).
pub fn sum(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    let c = canon("sum", x, axis, false)?;
    Ok(c.wrap(fold::<SUM>("sum", &c)?))
}

fn no_identity(func: &'static str, max: bool) -> CoreError {
    let op = if max { "maximum" } else { "minimum" };
    CoreError::value(
        func,
        "x",
        format!("is a zero-size array: reduction operation {op} has no identity"),
    )
}

fn extreme(
    func: &'static str,
    x: &ArrayViewD<i64>,
    axis: Option<isize>,
    max: bool,
) -> Result<ArrayD<i64>> {
    let c = canon(func, x, axis, false)?;
    // an empty reduced axis (all of an empty x for axis=None) has no minimum/maximum even when the result is
    // empty (NumPy raises too)
    if c.n == 0 {
        return Err(no_identity(func, max));
    }
    let v = if max {
        fold::<MAX>(func, &c)?
    } else {
        fold::<MIN>(func, &c)?
    };
    Ok(c.wrap(v))
}

pub fn min(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    extreme("min", x, axis, false)
}

pub fn max(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    extreme("max", x, axis, true)
}

/// The first minimum (`IS_MAX = false`) or maximum of a non-empty range and its index plus `offset`: the extreme
/// of each block of [`ARG_BLOCK`] values, then the first position of the best in the first block that holds it
/// (one pass over the data, and a short search).
struct Arg<'a, const IS_MAX: bool>(&'a [i64], usize);
const ARG_BLOCK: usize = 4096;
impl<const IS_MAX: bool> Kernel for Arg<'_, IS_MAX> {
    type Output = (i64, usize);
    #[inline(always)]
    fn run<M: Mode>(self) -> (i64, usize) {
        let mut best: Option<(i64, usize)> = None;
        for (b, blk) in self.0.chunks(ARG_BLOCK).enumerate() {
            let v = extreme_i64::<IS_MAX, M>(blk);
            if best.is_none_or(|(w, _)| if IS_MAX { v > w } else { v < w }) {
                best = Some((v, b));
            }
        }
        let (v, b) = best.unwrap_or((0, 0));
        let blk = self.0.chunks(ARG_BLOCK).nth(b).unwrap_or_default();
        (v, self.1 + b * ARG_BLOCK + first_eq::<i64, M>(blk, v))
    }
}

/// The better of two consecutive ranges' results (the first on a tie).
fn arg_merge<const IS_MAX: bool>(a: (i64, usize), b: (i64, usize)) -> (i64, usize) {
    if (IS_MAX && b.0 > a.0) || (!IS_MAX && b.0 < a.0) {
        b
    } else {
        a
    }
}

/// Column arg-extremes: the best value and the row that first holds it.
struct ArgCols<const IS_MAX: bool>(ArgBuffers<i64>);
impl<const IS_MAX: bool> ColAcc<i64> for ArgCols<IS_MAX> {
    type Out = (i64, usize);
    fn new(w: usize) -> Self {
        ArgCols(ArgBuffers::new(w, 0))
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, i: usize, r: &[i64]) {
        self.0.row(i, r, |v, b| if IS_MAX { v > b } else { v < b });
    }
    fn finish(self, _n: usize) -> Vec<(i64, usize)> {
        self.0.best.into_iter().zip(self.0.idx).collect()
    }
    fn from_row(out: &mut [(i64, usize)], first: usize) {
        for p in out {
            p.1 += first;
        }
    }
}

fn arg_of<const IS_MAX: bool>(func: &'static str, c: &Canon<i64>) -> Result<Vec<(i64, usize)>> {
    drive::<i64, (i64, usize), ArgCols<IS_MAX>>(
        func,
        c,
        |_, s, off| dispatch(Arg::<IS_MAX>(s, off)),
        arg_merge::<IS_MAX>,
    )
}

fn arg(
    func: &'static str,
    x: &ArrayViewD<i64>,
    axis: Option<isize>,
    max: bool,
) -> Result<ArrayD<i64>> {
    // the flat index refers to C order
    let c = canon(func, x, axis, axis.is_none())?;
    // an empty reduced axis (all of an empty x for axis=None)
    if c.n == 0 {
        return Err(CoreError::value(
            func,
            "x",
            format!("is empty: attempt to get {func} of an empty sequence"),
        ));
    }
    let parts = if max {
        arg_of::<true>(func, &c)?
    } else {
        arg_of::<false>(func, &c)?
    };
    let idx = alloc::collect(
        func,
        "result",
        &c.out_shape,
        parts.into_iter().map(|p| p.1 as i64),
    )?;
    Ok(c.wrap(idx))
}

pub fn argmin(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    arg("argmin", x, axis, false)
}

pub fn argmax(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    arg("argmax", x, axis, true)
}

/// Whether [`reduce_flat_small`] computes `op` of `s`.
pub fn flat_small_applies(op: Op, s: &[i64]) -> bool {
    matches!(op, Op::Sum | Op::Min | Op::Max | Op::Argmin | Op::Argmax)
        && super::reduce::small::applies(s)
}

/// Whole-array `sum`, `min`, `max`, `argmin` or `argmax` of a contiguous, non-empty slice of fewer than
/// [`super::PAR_REDUCE_MIN`] values (`argmin`/`argmax`: in C order), on the calling thread and without the
/// n-d machinery; the same kernels as the n-d path, so the same results. `None` for other ops and sizes.
pub fn reduce_flat_small(op: Op, s: &[i64]) -> Option<Scalar<i64>> {
    if !flat_small_applies(op, s) {
        return None;
    }
    Some(match op {
        Op::Sum => Scalar::Value(dispatch(Fold::<SUM>(s))),
        Op::Min => Scalar::Value(dispatch(Fold::<MIN>(s))),
        Op::Max => Scalar::Value(dispatch(Fold::<MAX>(s))),
        Op::Argmin => Scalar::Index(dispatch(Arg::<false>(s, 0)).1 as i64),
        Op::Argmax => Scalar::Index(dispatch(Arg::<true>(s, 0)).1 as i64),
        _ => return None,
    })
}

/// The wrapping dot product of two contiguous ranges of one length (8 lanes).
struct Dot<'a>(&'a [i64], &'a [i64]);
impl Kernel for Dot<'_> {
    type Output = i64;
    #[inline(always)]
    fn run<M: Mode>(self) -> i64 {
        let mut acc = [0i64; 8];
        let (mut a, mut b) = (self.0.chunks_exact(8), self.1.chunks_exact(8));
        for (x, y) in (&mut a).zip(&mut b) {
            for k in 0..8 {
                acc[k] = acc[k].wrapping_add(x[k].wrapping_mul(y[k]));
            }
        }
        let r = a
            .remainder()
            .iter()
            .zip(b.remainder())
            .fold(0i64, |s, (&x, &y)| s.wrapping_add(x.wrapping_mul(y)));
        acc.into_iter().fold(r, i64::wrapping_add)
    }
}

pub fn dot(x: &ArrayViewD<i64>, y: &ArrayViewD<i64>) -> Result<i64> {
    if x.ndim() != 1 || y.ndim() != 1 || x.len() != y.len() {
        return Err(CoreError::value(
            "dot",
            "y",
            format!(
                "has shape {}; expected 1-D of the length of x {}",
                fmt_shape(y.shape()),
                fmt_shape(x.shape())
            ),
        ));
    }
    let (a, b) = (
        alloc::c_order("dot", "x", x)?,
        alloc::c_order("dot", "y", y)?,
    );
    Ok(dispatch(Dot(&a, &b)))
}

pub fn matmul(a: &ArrayView2<i64>, b: &ArrayView2<i64>) -> Result<Array2<i64>> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 {
        return Err(CoreError::value(
            "matmul",
            "b",
            format!(
                "has shape {}; expected ({k}, n) to match a of shape {}",
                fmt_shape(b.shape()),
                fmt_shape(a.shape())
            ),
        ));
    }
    let mut out = alloc::zeros_array::<i64>("matmul", "result", &[m, n], false)?
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    if n == 0 || m == 0 {
        return Ok(out);
    }
    let bd = alloc::c_order("matmul", "b", &b.view().into_dyn())?;
    let b = ArrayView2::from_shape((k, n), &bd).expect("b's shape");
    let row = |(i, row): (usize, &mut [i64])| {
        for p in 0..k {
            let av = a[[i, p]];
            for (o, &bv) in row.iter_mut().zip(b.row(p)) {
                *o = o.wrapping_add(av.wrapping_mul(bv));
            }
        }
    };
    let buf = out.as_slice_mut().expect("fresh C array");
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

pub fn axpy<'a>(
    a: i64,
    x: Input<'a, i64>,
    y: Input<'a, i64>,
    out: Option<ArrayViewMutD<i64>>,
) -> Result<Option<ArrayD<i64>>> {
    map_into("axpy", ["x", "y"], [x, y], out, |_, [x, y], o| {
        for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
            *o = a.wrapping_mul(x).wrapping_add(y);
        }
    })
}

pub fn fma<'a>(
    x: Input<'a, i64>,
    y: Input<'a, i64>,
    z: Input<'a, i64>,
    out: Option<ArrayViewMutD<i64>>,
) -> Result<Option<ArrayD<i64>>> {
    map_into("fma", ["x", "y", "z"], [x, y, z], out, |_, [x, y, z], o| {
        for (((o, &x), &y), &z) in o.iter_mut().zip(x).zip(y).zip(z) {
            *o = x.wrapping_mul(y).wrapping_add(z);
        }
    })
}

pub fn scale(
    x: Input<i64>,
    a: i64,
    out: Option<ArrayViewMutD<i64>>,
) -> Result<Option<ArrayD<i64>>> {
    map_into("scale", ["x"], [x], out, |_, [x], o| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = a.wrapping_mul(x);
        }
    })
}

pub fn clip(
    x: Input<i64>,
    lo: i64,
    hi: i64,
    out: Option<ArrayViewMutD<i64>>,
) -> Result<Option<ArrayD<i64>>> {
    map_into("clip", ["x"], [x], out, |_, [x], o| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x.max(lo).min(hi);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn arg_blocks_find_the_first_extreme_in_any_block() {
        use crate::kernels::dispatch::Unfused;
        let n = 3 * ARG_BLOCK + 100;
        let base: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 1009).collect();
        // the extreme in the last (short) block, in a middle block, and tied across blocks (first wins)
        for spots in [
            vec![n - 1],
            vec![ARG_BLOCK + 7],
            vec![2 * ARG_BLOCK + 3, ARG_BLOCK - 1, n - 2],
        ] {
            let (mut lo, mut hi) = (base.clone(), base.clone());
            for &p in &spots {
                lo[p] = -5;
                hi[p] = 5000;
            }
            let first = *spots.iter().min().unwrap();
            assert_eq!(dispatch(Arg::<false>(&lo, 10)), (-5, first + 10));
            assert_eq!(dispatch(Arg::<true>(&hi, 0)), (5000, first));
            assert_eq!(Arg::<false>(&lo, 0).run::<Unfused>(), (-5, first));
            assert_eq!(
                reduce_flat_small(Op::Argmax, &hi),
                Some(Scalar::Index(first as i64))
            );
        }
        assert_eq!(reduce_flat_small(Op::Mean, &base), None);
        assert_eq!(reduce_flat_small(Op::Min, &[]), None);
    }

    #[test]
    fn integer_paths() {
        let a2 = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as i64 - 5);
        let a = a2.clone().into_dyn();
        assert_eq!(sum(&a.view(), None).unwrap()[[]], 66 - 60);
        assert_eq!(
            sum(&a.view(), Some(0)).unwrap().as_slice().unwrap(),
            &[-3, 0, 3, 6]
        );
        assert_eq!(argmax(&a.view(), None).unwrap()[[]], 11);
        assert_eq!(
            argmin(&a.view(), Some(1)).unwrap().as_slice().unwrap(),
            &[0, 0, 0]
        );
        assert_eq!(min(&a.view(), None).unwrap()[[]], -5);
        let e = ndarray::ArrayD::<i64>::zeros(ndarray::IxDyn(&[0]));
        assert!(max(&e.view(), None).is_err());
        let m = matmul(&Array2::eye(3).view(), &Array2::from_elem((3, 2), 7).view()).unwrap();
        assert_eq!(m.sum(), 42);
        let (r0, r1) = (
            a2.row(0).to_owned().into_dyn(),
            a2.row(1).to_owned().into_dyn(),
        );
        assert_eq!(dot(&r0.view(), &r1.view()).unwrap(), -2); // (-5)(-1) + (-4)(0) + (-3)(1) + (-2)(2)
    }
}
