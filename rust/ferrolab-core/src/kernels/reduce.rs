//! Reductions with `axis`: sum, mean, min, max, argmin, argmax, dot, norm, and the moments behind var/std.
//!
//! All of them go through [`drive`], which walks the canonical `(outer, n, inner)` layout: contiguous rows
//! (`inner == 1`) use the slice kernels of [`super::simd`]; otherwise whole rows are accumulated column-wise
//! (vectorized across the columns) in bands that the pool processes in parallel.

use super::alloc;
use super::dispatch::{dispatch, maybe_parallel, num_threads, par_map_chunks, Kernel, Mode};
use super::layout::{canon, Canon};
use super::simd::{
    norm_of, ArgExtreme, ArgIndex, ArgPart, ArgRows, ArgWhole, Dot, Extreme, Moments, Neumaier,
    SliceMoments, Sum, SumSq,
};
use super::{Real, PAR_CHUNK, PAR_REDUCE_MIN};
use crate::error::{CoreError, Result};
use ndarray::{ArrayD, ArrayViewD};
use rayon::prelude::*;

/// Column-wise accumulation over the rows of one `n x inner` slab, restricted to columns `j0..j1`.
pub(crate) trait ColAcc<T>: Sized {
    type Out: Send + Copy;
    fn new(width: usize) -> Self;
    fn row<M: Mode>(&mut self, i: usize, row: &[T]);
    fn finish(self, n: usize) -> Vec<Self::Out>;
    /// Makes the results of a range of rows that starts at row `first` relative to the whole slab.
    fn from_row(_out: &mut [Self::Out], _first: usize) {}
}

/// The widest band of columns one row-split task accumulates (its accumulators stay in L2; narrower bands
/// re-read each row in shorter runs, which streams worse).
const SPLIT_BAND: usize = 8192;

/// Column bands whose rows are shorter than this many elements are replaced by row ranges (see `drive`).
const SPLIT_MIN_RUN: usize = 2048;

/// What `drive` walks: any plain element (floats, and the integer reductions of `int`).
pub(crate) trait Elem: Copy + Send + Sync {}
impl<T: Copy + Send + Sync> Elem for T {}

struct Cols<'a, T, A> {
    slab: &'a [T],
    n: usize,
    inner: usize,
    j0: usize,
    j1: usize,
    _a: std::marker::PhantomData<A>,
}

impl<T: Elem, A: ColAcc<T>> Kernel for Cols<'_, T, A> {
    type Output = Vec<A::Out>;
    #[inline(always)]
    fn run<M: Mode>(self) -> Vec<A::Out> {
        let mut acc = A::new(self.j1 - self.j0);
        for i in 0..self.n {
            let r = &self.slab[i * self.inner + self.j0..i * self.inner + self.j1];
            acc.row::<M>(i, r);
        }
        acc.finish(self.n)
    }
}

fn cols<T: Elem, A: ColAcc<T>>(
    slab: &[T],
    n: usize,
    inner: usize,
    j0: usize,
    j1: usize,
) -> Vec<A::Out> {
    dispatch(Cols::<T, A> {
        slab,
        n,
        inner,
        j0,
        j1,
        _a: std::marker::PhantomData,
    })
}

/// Walks a canonical layout and returns one value per `(outer, inner)` position, in canonical order.
///
/// * `whole(row, x, offset)`: reduces the contiguous range `x` of row `row` that starts at `offset` in the row
///   (used for `inner == 1` rows, split into chunks when large),
/// * `merge(a, b)`: combines the values of two consecutive ranges of one row,
/// * `A`: the column accumulator for `inner > 1`.
///
/// The result vector is allocated first, fallibly (`func` names the op in a `MemoryError`).
pub(crate) fn drive<T, U, A>(
    func: &'static str,
    c: &Canon<T>,
    whole: impl Fn(usize, &[T], usize) -> U + Sync,
    merge: impl Fn(U, U) -> U + Sync,
) -> Result<Vec<U>>
where
    T: Elem,
    U: Send + Copy + Default,
    A: ColAcc<T, Out = U>,
{
    let (outer, n, inner) = (c.outer, c.n, c.inner);
    let data: &[T] = &c.data;
    let total = outer * n * inner;
    if inner == 1 {
        // contiguous rows
        let row_of = |o: usize| &data[o * n..(o + 1) * n];
        let mut out = alloc::with_capacity::<U>(func, "result", &c.out_shape)?;
        if total >= PAR_REDUCE_MIN && outer < 4 * num_threads() && n >= PAR_CHUNK {
            // few long rows (fewer than 4 per thread): each row in chunks, the calling thread taking part
            out.extend((0..outer).map(|o| {
                let row = row_of(o);
                par_map_chunks(n, PAR_CHUNK, |r| whole(o, &row[r.clone()], r.start))
                    .into_iter()
                    .reduce(&merge)
                    .expect("non-empty row")
            }));
            return Ok(out);
        }
        maybe_parallel(total, PAR_REDUCE_MIN, |par| {
            if par {
                (0..outer)
                    .into_par_iter()
                    .map(|o| whole(o, row_of(o), 0))
                    .collect_into_vec(&mut out);
            } else {
                out.extend((0..outer).map(|o| whole(o, row_of(o), 0)));
            }
        });
        return Ok(out);
    }
    // column-wise over slabs of n x inner, written in place band by band (a band's accumulators are the only
    // other buffer)
    let mut out = alloc::filled::<U>(func, "result", &c.out_shape, U::default())?;
    if out.is_empty() {
        return Ok(out);
    }
    let slab_of = |o: usize| &data[o * n * inner..(o + 1) * n * inner];
    maybe_parallel(total, PAR_REDUCE_MIN, |par| {
        let parts = num_threads();
        // column bands give each task runs of inner / (4 * parts) elements of every row: for short runs (many
        // narrow columns) each task instead reduces a range of whole rows (contiguous memory, as NumPy walks it)
        // into its own results, band by band, and the ranges' results are merged in row order; for long runs
        // (few wide rows) the bands stream well and need no merge
        if par && n >= 8 * parts && inner < 4 * parts * SPLIT_MIN_RUN {
            if let Ok(mut partial) =
                alloc::filled::<U>(func, "partial results", &[parts - 1, inner], U::default())
            {
                let per = n.div_ceil(parts);
                for (o, row) in out.chunks_mut(inner).enumerate() {
                    let slab = slab_of(o);
                    let dests: Vec<&mut [U]> = std::iter::once(&mut *row)
                        .chain(partial.chunks_mut(inner))
                        .collect();
                    dests.into_par_iter().enumerate().for_each(|(k, dest)| {
                        let (r0, r1) = ((k * per).min(n), ((k + 1) * per).min(n));
                        let rows = &slab[r0 * inner..r1 * inner];
                        for (b, d) in dest.chunks_mut(SPLIT_BAND).enumerate() {
                            let j0 = b * SPLIT_BAND;
                            d.copy_from_slice(&cols::<T, A>(
                                rows,
                                r1 - r0,
                                inner,
                                j0,
                                j0 + d.len(),
                            ));
                            A::from_row(d, r0);
                        }
                    });
                    for p in partial.chunks(inner) {
                        for (c, &v) in row.iter_mut().zip(p) {
                            *c = merge(*c, v);
                        }
                    }
                }
                return;
            }
        }
        let band = if par {
            (inner / (4 * parts)).clamp(256.min(inner), inner)
        } else {
            inner.min(1 << 16)
        };
        let fill = |o: usize, b: usize, ch: &mut [U]| {
            let j0 = b * band;
            ch.copy_from_slice(&cols::<T, A>(slab_of(o), n, inner, j0, j0 + ch.len()));
        };
        if par {
            out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
                row.par_chunks_mut(band)
                    .enumerate()
                    .for_each(|(b, ch)| fill(o, b, ch))
            });
        } else {
            for (o, row) in out.chunks_mut(inner).enumerate() {
                for (b, ch) in row.chunks_mut(band).enumerate() {
                    fill(o, b, ch);
                }
            }
        }
    });
    Ok(out)
}

// -------------------------------------------------------------------------------------------------------
// column accumulators

struct SumCols<T> {
    part: Vec<T>,
    tot: Vec<f64>,
}
impl<T: Real> ColAcc<T> for SumCols<T> {
    type Out = f64;
    fn new(w: usize) -> Self {
        SumCols {
            part: vec![T::ZERO; w],
            tot: vec![0.0; w],
        }
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, i: usize, r: &[T]) {
        for (p, &v) in self.part.iter_mut().zip(r) {
            *p = *p + v;
        }
        if i % 64 == 63 {
            self.flush();
        }
    }
    fn finish(mut self, _n: usize) -> Vec<f64> {
        self.flush();
        self.tot
    }
}
impl<T: Real> SumCols<T> {
    #[inline(always)]
    fn flush(&mut self) {
        for (t, p) in self.tot.iter_mut().zip(self.part.iter_mut()) {
            *t += p.to_f64();
            *p = T::ZERO;
        }
    }
}

struct SumSqCols<T>(SumCols<T>);
impl<T: Real> ColAcc<T> for SumSqCols<T> {
    type Out = f64;
    fn new(w: usize) -> Self {
        SumSqCols(SumCols::new(w))
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, i: usize, r: &[T]) {
        for (p, &v) in self.0.part.iter_mut().zip(r) {
            *p = M::madd(v, v, *p);
        }
        if i % 64 == 63 {
            self.0.flush();
        }
    }
    fn finish(self, n: usize) -> Vec<f64> {
        self.0.finish(n)
    }
}

/// Welford's update, vectorized across columns (in f64), on values shifted by the column's first value.
struct MomentCols {
    shift: Vec<f64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
}
impl<T: Real> ColAcc<T> for MomentCols {
    type Out = Moments;
    fn new(w: usize) -> Self {
        MomentCols {
            shift: Vec::with_capacity(w),
            mean: vec![0.0; w],
            m2: vec![0.0; w],
        }
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, i: usize, r: &[T]) {
        if i == 0 {
            self.shift.extend(r.iter().map(|v| v.to_f64()).map(|k| {
                if k.is_finite() {
                    k
                } else {
                    0.0
                }
            }));
        }
        let inv = 1.0 / (i + 1) as f64;
        for (((mu, q), &v), &k) in self
            .mean
            .iter_mut()
            .zip(self.m2.iter_mut())
            .zip(r)
            .zip(&self.shift)
        {
            let x = v.to_f64() - k;
            let d = x - *mu;
            *mu = M::madd(d, inv, *mu);
            *q = M::madd(d, x - *mu, *q);
        }
    }
    fn finish(self, n: usize) -> Vec<Moments> {
        self.mean
            .into_iter()
            .zip(self.m2)
            .zip(self.shift)
            .map(|((mean, m2), shift)| Moments {
                n: n as f64,
                shift,
                mean,
                m2,
            })
            .collect()
    }
}

/// Column minima or maxima, NaN-propagating (see [`super::simd::col_extreme`]).
struct ExtCols<T, const MAX: bool> {
    best: Vec<T>,
}
impl<T: Real, const MAX: bool> ColAcc<T> for ExtCols<T, MAX> {
    type Out = T;
    fn new(w: usize) -> Self {
        ExtCols {
            best: Vec::with_capacity(w),
        }
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, i: usize, r: &[T]) {
        if i == 0 {
            self.best.extend_from_slice(r);
            return;
        }
        super::simd::col_extreme::<T, MAX, M>(&mut self.best, r);
    }
    fn finish(self, _n: usize) -> Vec<T> {
        self.best
    }
}

/// Per column, the best value so far and the row that first held it, updated row by row into the other of two
/// buffers: a select stored back to the address it was loaded from compiles to a masked store, which is slow on
/// AMD CPUs. Shared by the float and the int64 column arg-extremes.
pub(crate) struct ArgBuffers<T> {
    pub(crate) best: Vec<T>,
    pub(crate) idx: Vec<usize>,
    next: (Vec<T>, Vec<usize>),
}

impl<T: Copy> ArgBuffers<T> {
    /// Buffers for `w` columns (`fill`: any value of the type).
    pub(crate) fn new(w: usize, fill: T) -> Self {
        ArgBuffers {
            best: Vec::with_capacity(w),
            idx: vec![0; w],
            next: (vec![fill; w], vec![0; w]),
        }
    }

    /// Row `i`: each column takes `v` where `take(v, best)`.
    #[inline(always)]
    pub(crate) fn row(&mut self, i: usize, r: &[T], take: impl Fn(T, T) -> bool) {
        if i == 0 {
            self.best.extend_from_slice(r);
            return;
        }
        let old = self.best.iter().zip(&self.idx);
        let new = self.next.0.iter_mut().zip(self.next.1.iter_mut());
        for (((&b, &k), (nb, nk)), &v) in old.zip(new).zip(r) {
            let t = take(v, b);
            *nb = if t { v } else { b };
            *nk = if t { i } else { k };
        }
        std::mem::swap(&mut self.best, &mut self.next.0);
        std::mem::swap(&mut self.idx, &mut self.next.1);
    }
}

/// Column arg-extremes of floats: a NaN is taken and then kept.
struct ArgCols<T, const MAX: bool>(ArgBuffers<T>);
impl<T: Real, const MAX: bool> ColAcc<T> for ArgCols<T, MAX> {
    type Out = ArgPart<T>;
    fn new(w: usize) -> Self {
        ArgCols(ArgBuffers::new(w, T::ZERO))
    }
    #[inline(always)]
    fn row<M: Mode>(&mut self, i: usize, r: &[T]) {
        self.0.row(i, r, |v, b| {
            !b.is_nan() & (v.is_nan() | if MAX { v > b } else { v < b })
        });
    }
    /// One resolved part per column (`block` is the row, `block_len` 1), which `arg_merge` combines.
    fn finish(self, _n: usize) -> Vec<ArgPart<T>> {
        let ArgBuffers { best, idx, .. } = self.0;
        best.into_iter()
            .zip(idx)
            .map(|(best, k)| ArgPart {
                nan_at: best.is_nan().then_some(k),
                best,
                block: k,
                block_len: 1,
            })
            .collect()
    }
    fn from_row(out: &mut [ArgPart<T>], first: usize) {
        for p in out {
            p.block += first;
            if let Some(i) = &mut p.nan_at {
                *i += first;
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------------
// public reductions

/// `f` of the f64 results `v`, in the result dtype: in place for float64, else in a new (fallibly allocated)
/// buffer.
fn map_to_t<T: Real>(
    func: &'static str,
    mut v: Vec<f64>,
    f: impl Fn(f64) -> f64,
) -> Result<Vec<T>> {
    // `f` in place first (in the kernels' instruction set), then the conversion: two simple loops vectorize, one
    // fused loop did not
    struct Apply<'a, F>(&'a mut [f64], F);
    impl<F: Fn(f64) -> f64> Kernel for Apply<'_, F> {
        type Output = ();
        #[inline(always)]
        fn run<M: Mode>(self) {
            self.0.iter_mut().for_each(|x| *x = (self.1)(*x));
        }
    }
    dispatch(Apply(&mut v, f));
    if let Some(same) = (&mut v as &mut dyn std::any::Any).downcast_mut::<Vec<T>>() {
        // T is f64
        return Ok(std::mem::take(same));
    }
    alloc::collect(
        func,
        "result",
        &[v.len()],
        v.iter().map(|&x| T::from_f64(x)),
    )
}

fn plus(a: f64, b: f64) -> f64 {
    let mut n = Neumaier::default();
    n.add(a);
    n.add(b);
    n.value()
}

/// Sum over `axis` (`None` = all elements); the sum of nothing is 0.
pub fn sum<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<T>> {
    sum_c(canon("sum", x, axis, false)?)
}

/// [`sum`] on a canonical layout (e.g. [`Canon::flat`] of a contiguous buffer).
pub fn sum_c<T: Real>(c: Canon<T>) -> Result<ArrayD<T>> {
    let v = sum_canon("sum", &c)?;
    Ok(c.wrap(map_to_t("sum", v, |s| s)?))
}

pub(crate) fn sum_canon<T: Real>(func: &'static str, c: &Canon<T>) -> Result<Vec<f64>> {
    if c.n == 0 {
        return alloc::zeroed(func, "result", &c.out_shape);
    }
    drive::<T, f64, SumCols<T>>(func, c, |_, s, _| dispatch(Sum(s)), plus)
}

/// Mean over `axis`; NaN for an empty reduction (the Python layer warns as NumPy does).
pub fn mean<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<T>> {
    mean_c(canon("mean", x, axis, false)?)
}

/// [`mean`] on a canonical layout.
pub fn mean_c<T: Real>(c: Canon<T>) -> Result<ArrayD<T>> {
    let n = c.n as f64;
    let s = sum_canon("mean", &c)?;
    Ok(c.wrap(map_to_t("mean", s, |s| s / n)?))
}

/// Moments (count, mean, M2) per reduced position.
pub(crate) fn moments_canon<T: Real>(func: &'static str, c: &Canon<T>) -> Result<Vec<Moments>> {
    let r = if c.n == 0 {
        alloc::filled(func, "result", &c.out_shape, Moments::default())
    } else {
        let data: &[T] = &c.data;
        let n = c.n;
        // every part of a row shares the row's first element as its shift
        drive::<T, Moments, MomentCols>(
            func,
            c,
            |row, s, _| dispatch(SliceMoments(s, data[row * n])),
            Moments::merge,
        )
    };
    r.map_err(|e| match e {
        // name the buffer in NumPy's terms: 4 float64 per position
        CoreError::Memory { .. } => {
            let mut shape = c.out_shape.clone();
            shape.push(4);
            CoreError::memory(func, "intermediate moments", &shape, "float64", 8)
        }
        e => e,
    })
}

fn empty_reduction(func: &'static str, op: &str) -> CoreError {
    CoreError::value(
        func,
        "x",
        format!("is a zero-size array: reduction operation {op} has no identity"),
    )
}

fn extreme<T: Real, const MAX: bool>(func: &'static str, c: &Canon<T>) -> Result<ArrayD<T>> {
    // NumPy raises for an empty reduced axis even when the result itself is empty
    if c.n == 0 {
        return Err(empty_reduction(
            func,
            if MAX { "maximum" } else { "minimum" },
        ));
    }
    let v = drive::<T, T, ExtCols<T, MAX>>(
        func,
        c,
        |_, s, _| dispatch(Extreme::<T, MAX>(s)),
        |a, b| {
            if a.is_nan() || b.is_nan() {
                T::NAN
            } else if (MAX && b > a) || (!MAX && b < a) {
                b
            } else {
                a
            }
        },
    )?;
    Ok(c.wrap(v))
}

/// Minimum over `axis`, NaN-propagating; an empty reduction is a `ValueError`, as in NumPy.
pub fn min<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<T>> {
    min_c(canon("min", x, axis, false)?)
}

/// [`min`] on a canonical layout.
pub fn min_c<T: Real>(c: Canon<T>) -> Result<ArrayD<T>> {
    extreme::<T, false>("min", &c)
}

/// Maximum over `axis`, NaN-propagating.
pub fn max<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<T>> {
    max_c(canon("max", x, axis, false)?)
}

/// [`max`] on a canonical layout.
pub fn max_c<T: Real>(c: Canon<T>) -> Result<ArrayD<T>> {
    extreme::<T, true>("max", &c)
}

/// Minimum and maximum of all elements of a non-empty `x` for `func` (NaN-propagating), from one canonical
/// layout (at most one C-order copy of a strided input).
pub(crate) fn min_max_all<T: Real>(func: &'static str, x: &ArrayViewD<T>) -> Result<(T, T)> {
    let c = canon(func, x, None, false)?;
    let lo = extreme::<T, false>(func, &c)?;
    let hi = extreme::<T, true>(func, &c)?;
    Ok((lo[[]], hi[[]]))
}

fn arg_merge<T: Real, const MAX: bool>(a: ArgPart<T>, b: ArgPart<T>) -> ArgPart<T> {
    if a.nan_at.is_some() {
        return a;
    }
    if b.nan_at.is_some() {
        return b;
    }
    if (MAX && b.best > a.best) || (!MAX && b.best < a.best) {
        b
    } else {
        a
    }
}

/// Rows shorter than this are searched in one scalar pass (the block kernels' set-up costs more).
const SHORT_ROW: usize = 8;

/// The resolved arg-extreme part of a whole short row: the first NaN, else the first best value.
fn short_arg_extreme<T: Real, const MAX: bool>(row: &[T]) -> ArgPart<T> {
    let (mut best, mut at) = (row[0], 0);
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            return ArgPart {
                nan_at: Some(i),
                best: v,
                block: i,
                block_len: 1,
            };
        }
        if (MAX && v > best) || (!MAX && v < best) {
            (best, at) = (v, i);
        }
    }
    ArgPart {
        nan_at: None,
        best,
        block: at,
        block_len: 1,
    }
}

fn arg_extreme<T: Real, const MAX: bool>(func: &'static str, c: Canon<T>) -> Result<ArrayD<i64>> {
    if c.n == 0 {
        return Err(CoreError::value(
            func,
            "x",
            format!("is empty: attempt to get {func} of an empty sequence"),
        ));
    }
    let data: &[T] = &c.data;
    if c.inner == 1 && c.n >= SHORT_ROW && c.outer * c.n < PAR_REDUCE_MIN {
        // whole rows on this thread: each row's index straight into the result, under one dispatch
        let mut out = alloc::filled::<i64>(func, "result", &c.out_shape, 0)?;
        dispatch(ArgRows::<T, MAX>(data, c.n, &mut out));
        return Ok(c.wrap(out));
    }
    let parts = drive::<T, ArgPart<T>, ArgCols<T, MAX>>(
        func,
        &c,
        |_, s, off| {
            if off == 0 && s.len() < SHORT_ROW {
                return short_arg_extreme::<T, MAX>(s);
            }
            if off == 0 && s.len() == c.n {
                // a whole row: its index now, while the winning block is in cache (and on this row's thread)
                let i = dispatch(ArgWhole::<T, MAX>(s));
                return ArgPart {
                    nan_at: s[i].is_nan().then_some(i),
                    best: s[i],
                    block: i,
                    block_len: 1,
                };
            }
            dispatch(ArgExtreme::<T, MAX>(s, off))
        },
        arg_merge::<T, MAX>,
    )?;
    let idx = parts
        .into_iter()
        .enumerate()
        .map(|(pos, p)| match (p.nan_at, p.block_len) {
            (Some(i), _) => i as i64,
            // resolved already: a whole row, or a column (the block is the element)
            (None, 1) => p.block as i64,
            // a long row (inner == 1) reduced in parts
            _ => arg_index(&data[pos * c.n..(pos + 1) * c.n], p),
        });
    let out = alloc::collect(func, "result", &c.out_shape, idx)?;
    Ok(c.wrap(out))
}

/// The index in `row` that the merged arg-extreme part `p` of the whole row designates ([`ArgIndex`]).
#[inline]
fn arg_index<T: Real>(row: &[T], p: ArgPart<T>) -> i64 {
    dispatch(ArgIndex(row, p)) as i64
}

/// A whole-array reduction's result: a value of the input's type, or an index (argmin, argmax).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<T> {
    Value(T),
    Index(i64),
}

/// Whole-array reductions of a contiguous, non-empty slice that runs on the calling thread (fewer than
/// [`PAR_REDUCE_MIN`] elements), without the n-d machinery: no canonical layout, no result arrays. The kernels and
/// the arithmetic are those of the n-d path for one row, so the results are the same bits.
pub mod small {
    use super::*;

    /// Whether `s` takes these paths.
    #[inline]
    pub fn applies<T>(s: &[T]) -> bool {
        !s.is_empty() && s.len() < PAR_REDUCE_MIN
    }

    #[inline]
    pub fn sum<T: Real>(s: &[T]) -> T {
        T::from_f64(dispatch(Sum(s)))
    }

    #[inline]
    pub fn mean<T: Real>(s: &[T]) -> T {
        T::from_f64(dispatch(Sum(s)) / s.len() as f64)
    }

    #[inline]
    pub fn extreme<T: Real, const MAX: bool>(s: &[T]) -> T {
        dispatch(Extreme::<T, MAX>(s))
    }

    #[inline]
    pub fn arg_extreme<T: Real, const MAX: bool>(s: &[T]) -> i64 {
        dispatch(ArgWhole::<T, MAX>(s)) as i64
    }

    #[inline]
    pub fn norm<T: Real>(s: &[T]) -> T {
        T::from_f64(norm_of::<T>(dispatch(SumSq(s))))
    }

    /// Count, mean and M2 (the variance is `m.var(ddof)`).
    #[inline]
    pub fn moments<T: Real>(s: &[T]) -> Moments {
        dispatch(SliceMoments(s, s[0]))
    }

    /// Whether a dot product of two slices of `n` values of `T` each takes [`dot`] (on the calling thread): below
    /// the bytes that a one-array float64 reduction reads at its parallel threshold (1 MiB). Two float64 arrays
    /// reach that at 65,536 values (more than one core's L2 cache holds on some machines, where two cores' caches
    /// hold it), two float32 ones at 131,072.
    #[inline]
    pub fn dot_applies<T>(n: usize) -> bool {
        2 * n * std::mem::size_of::<T>() < PAR_REDUCE_MIN * std::mem::size_of::<f64>()
    }

    /// Inner product of two slices of equal length.
    #[inline]
    pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
        assert_eq!(a.len(), b.len(), "dot: lengths differ");
        T::from_f64(dispatch(Dot(a, b)))
    }
}

/// Index of the first minimum over `axis` (`None`: flat C-order index); a NaN counts as the minimum.
pub fn argmin<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    // the flat index refers to C order, so Fortran inputs are copied for axis=None
    argmin_c(canon("argmin", x, axis, axis.is_none())?)
}

/// [`argmin`] on a canonical layout (for `axis=None` the buffer must be in C order).
pub fn argmin_c<T: Real>(c: Canon<T>) -> Result<ArrayD<i64>> {
    arg_extreme::<T, false>("argmin", c)
}

/// Index of the first maximum over `axis`.
pub fn argmax<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    argmax_c(canon("argmax", x, axis, axis.is_none())?)
}

/// [`argmax`] on a canonical layout (for `axis=None` the buffer must be in C order).
pub fn argmax_c<T: Real>(c: Canon<T>) -> Result<ArrayD<i64>> {
    arg_extreme::<T, true>("argmax", c)
}

/// Values of each input per parallel task of [`dot`]. A quarter of [`PAR_CHUNK`]: from the parallel threshold on
/// (two float64 arrays of 65,536 values, [`small::dot_applies`]) the work splits into enough pieces to keep both
/// threads of a 2-core machine busy to the end (with pieces of twice the size, 100,000 values were 4 pieces, 3 of
/// them whole: one thread did twice the other's share). Fixed, so the result does not depend on the thread count.
const DOT_CHUNK: usize = PAR_CHUNK / 4;

/// Inner product of two 1-D arrays of equal length.
pub fn dot<T: Real>(x: &ArrayViewD<T>, y: &ArrayViewD<T>) -> Result<T> {
    if x.ndim() != 1 {
        return Err(CoreError::value(
            "dot",
            "x",
            format!("must be 1-D, got {} dimensions", x.ndim()),
        ));
    }
    if y.ndim() != 1 {
        return Err(CoreError::value(
            "dot",
            "y",
            format!("must be 1-D, got {} dimensions", y.ndim()),
        ));
    }
    if x.len() != y.len() {
        return Err(CoreError::value(
            "dot",
            "y",
            format!(
                "has length {}; expected {} (the length of x)",
                y.len(),
                x.len()
            ),
        ));
    }
    let a = alloc::c_order("dot", "x", x)?;
    let b = alloc::c_order("dot", "y", y)?;
    let n = a.len();
    let v = if !small::dot_applies::<T>(n) {
        par_map_chunks(n, DOT_CHUNK, |r| dispatch(Dot(&a[r.clone()], &b[r])))
            .into_iter()
            .fold(0.0, plus)
    } else {
        dispatch(Dot(&a, &b))
    };
    Ok(T::from_f64(v))
}

/// L2 norm over `axis` (`None`: of all elements); 0 for an empty input.
pub fn norm<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>) -> Result<ArrayD<T>> {
    norm_c(canon("norm", x, axis, false)?)
}

/// [`norm`] on a canonical layout.
pub fn norm_c<T: Real>(c: Canon<T>) -> Result<ArrayD<T>> {
    if c.n == 0 {
        return Ok(c.wrap(alloc::zeroed("norm", "result", &c.out_shape)?));
    }
    let v = drive::<T, f64, SumSqCols<T>>("norm", &c, |_, s, _| dispatch(SumSq(s)), plus)?;
    Ok(c.wrap(map_to_t("norm", v, norm_of::<T>)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, ArrayD, Axis, IxDyn, ShapeBuilder};

    fn arr(shape: &[usize], f: bool) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1009) as f64 - 500.0).collect();
        if f {
            Array::from_shape_vec(IxDyn(shape).f(), v).unwrap()
        } else {
            Array::from_shape_vec(IxDyn(shape), v).unwrap()
        }
    }

    #[test]
    fn sum_matches_ndarray_on_every_axis_and_layout() {
        for &f in &[false, true] {
            for shape in [vec![7usize], vec![3, 5], vec![4, 3, 300], vec![2, 70000]] {
                let a = arr(&shape, f);
                let total: f64 = a.iter().sum();
                let s = sum(&a.view(), None).unwrap();
                assert!((s[[]] - total).abs() < 1e-6);
                for ax in 0..shape.len() {
                    let got = sum(&a.view(), Some(ax as isize)).unwrap();
                    let want = a.sum_axis(Axis(ax));
                    assert_eq!(got.shape(), want.shape());
                    for (g, w) in got.iter().zip(want.iter()) {
                        assert!((g - w).abs() < 1e-6, "{shape:?} {ax} {f}");
                    }
                }
            }
        }
    }

    #[test]
    fn argmax_first_occurrence_and_nan() {
        let mut v = vec![1.0f64; 300_000];
        v[200_001] = 5.0;
        v[250_000] = 5.0;
        let a = Array::from_vec(v.clone()).into_dyn();
        assert_eq!(argmax(&a.view(), None).unwrap()[[]], 200_001);
        v[260_000] = f64::NAN;
        let a = Array::from_vec(v).into_dyn();
        assert_eq!(argmax(&a.view(), None).unwrap()[[]], 260_000);
        assert_eq!(argmin(&a.view(), None).unwrap()[[]], 260_000);
        let e: ArrayD<f64> = Array::zeros(IxDyn(&[0]));
        assert!(argmin(&e.view(), None).is_err());
        assert!(min(&e.view(), None).is_err());
        assert_eq!(sum(&e.view(), None).unwrap()[[]], 0.0);
    }

    #[test]
    fn small_paths_equal_the_nd_ones() {
        for n in [1usize, 2, 15, 16, 17, 511, 512, 513, 1000, 4097] {
            let v: Vec<f64> = (0..n)
                .map(|i| ((i * 7919) % 1009) as f64 * 0.37 - 150.0)
                .collect();
            let w: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let a = Array::from_vec(v.clone()).into_dyn();
            let b = Array::from_vec(w.clone()).into_dyn();
            assert_eq!(small::sum(&v), sum(&a.view(), None).unwrap()[[]]);
            assert_eq!(small::sum(&w), sum(&b.view(), None).unwrap()[[]]);
            assert_eq!(small::mean(&w), mean(&b.view(), None).unwrap()[[]]);
            assert_eq!(small::norm(&v), norm(&a.view(), None).unwrap()[[]]);
            assert_eq!(
                small::extreme::<_, true>(&w),
                max(&b.view(), None).unwrap()[[]]
            );
            assert_eq!(
                small::extreme::<_, false>(&v),
                min(&a.view(), None).unwrap()[[]]
            );
            assert_eq!(
                small::arg_extreme::<_, true>(&v),
                argmax(&a.view(), None).unwrap()[[]]
            );
            assert_eq!(
                small::arg_extreme::<_, false>(&w),
                argmin(&b.view(), None).unwrap()[[]]
            );
            assert_eq!(small::dot(&v, &v), dot(&a.view(), &a.view()).unwrap());
            // the first of equal extremes, and a NaN anywhere
            let mut e = v.clone();
            e[n / 2] = 1e9;
            e[n - 1] = 1e9;
            assert_eq!(small::arg_extreme::<_, true>(&e), (n / 2) as i64);
            e[n - 1] = f64::NAN;
            assert_eq!(small::arg_extreme::<_, false>(&e), (n - 1) as i64);
            assert!(small::extreme::<_, true>(&e).is_nan());
        }
    }

    #[test]
    fn dot_and_norm() {
        let a = Array::from_vec((0..1000).map(|i| i as f32).collect()).into_dyn();
        let d = dot(&a.view(), &a.view()).unwrap();
        let n = norm(&a.view(), None).unwrap()[[]];
        assert!((d as f64 - 332_833_500.0).abs() / 332_833_500.0 < 1e-7);
        assert!((n * n - d).abs() / d < 1e-6);
    }
}
