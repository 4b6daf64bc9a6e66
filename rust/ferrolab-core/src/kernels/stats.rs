//! Statistics: var, std, standardize, z-score anomalies, quantiles, histograms.

use super::alloc;
use super::dispatch::{dispatch, maybe_parallel, Kernel, Mode};
use super::elementwise::{map_into, Input};
use super::layout::{canon, Canon};
use super::reduce::{min_max_all, moments_canon};
use super::{Real, PAR_CHUNK, PAR_ELEMWISE_MIN, PAR_REDUCE_MIN};
use crate::error::{CoreError, Result};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};
use rayon::prelude::*;

pub fn check_ddof(func: &'static str, ddof: f64) -> Result<()> {
    if !ddof.is_finite() {
        return Err(CoreError::value(
            func,
            "ddof",
            format!("must be finite, got {ddof}"),
        ));
    }
    Ok(())
}

/// Variance over `axis` with `ddof` (one pass over memory, block two-pass + Chan merge).
pub fn var<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>, ddof: f64) -> Result<ArrayD<T>> {
    var_c(canon("var", x, axis, false)?, ddof)
}

/// [`var`] on a canonical layout.
pub fn var_c<T: Real>(c: Canon<T>, ddof: f64) -> Result<ArrayD<T>> {
    check_ddof("var", ddof)?;
    let ms = moments_canon("var", &c)?;
    let v = alloc::collect(
        "var",
        "result",
        &c.out_shape,
        ms.into_iter().map(|m| T::from_f64(m.var(ddof))),
    )?;
    Ok(c.wrap(v))
}

/// Standard deviation over `axis` with `ddof`.
pub fn std<T: Real>(x: &ArrayViewD<T>, axis: Option<isize>, ddof: f64) -> Result<ArrayD<T>> {
    std_c(canon("std", x, axis, false)?, ddof)
}

/// [`std`] on a canonical layout.
pub fn std_c<T: Real>(c: Canon<T>, ddof: f64) -> Result<ArrayD<T>> {
    check_ddof("std", ddof)?;
    let ms = moments_canon("std", &c)?;
    let v = alloc::collect(
        "std",
        "result",
        &c.out_shape,
        ms.into_iter().map(|m| T::from_f64(m.var(ddof).sqrt())),
    )?;
    Ok(c.wrap(v))
}

struct Standardize<'a, T> {
    mean: T,
    std: T,
    x: &'a [T],
    o: &'a mut [T],
}
impl<T: Real> Kernel for Standardize<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (o, &x) in self.o.iter_mut().zip(self.x) {
            *o = (x - self.mean) / self.std;
        }
    }
}

struct StandardizeCols<'a, T> {
    mean: &'a [T],
    std: &'a [T],
    x: &'a [T],
    o: &'a mut [T],
}
impl<T: Real> Kernel for StandardizeCols<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (((o, &x), &m), &s) in self.o.iter_mut().zip(self.x).zip(self.mean).zip(self.std) {
            *o = (x - m) / s;
        }
    }
}

/// `(x - mean(x, axis)) / std(x, axis, ddof)`, into `out` when given.
///
/// Computed in the input precision like NumPy's expression (mean and std rounded to the dtype first).
pub fn standardize<T: Real>(
    x: &ArrayViewD<T>,
    axis: Option<isize>,
    ddof: f64,
    out: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    check_ddof("standardize", ddof)?;
    let c = canon("standardize", x, axis, false)?;
    if x.is_empty() {
        // nothing to standardize: no statistics (their count, the reduced size, may be huge: shape (0, 10**17))
        return map_into(
            "standardize",
            ["x"],
            [Input::View(x.view())],
            out,
            |_, _, _| {},
        );
    }
    let ms = moments_canon("standardize", &c)?;
    let (f, np) = ("standardize", [ms.len()]);
    let mean = alloc::collect(
        f,
        "means",
        &np,
        ms.iter().map(|m| T::from_f64(m.abs_mean())),
    )?;
    let sd = alloc::collect(
        f,
        "deviations",
        &np,
        ms.iter().map(|m| T::from_f64(m.var(ddof).sqrt())),
    )?;
    drop(ms);
    let (n, inner) = (c.n, c.inner);
    // the canonical buffer is x in C order (or, for a Fortran input, x's memory order): present it as a
    // contiguous array of x's shape in that order so the elementwise driver uses it in place
    let shape = x.shape().to_vec();
    let data: &[T] = &c.data;
    let view = if c.reversed {
        ArrayViewD::from_shape(IxDyn(&shape).f(), data)
    } else {
        ArrayViewD::from_shape(IxDyn(&shape), data)
    }
    .expect("canonical buffer has x's size");
    let slab = n * inner;
    map_into(
        "standardize",
        ["x"],
        [Input::View(view)],
        out,
        |start, [xs], o| {
            standardize_range(start, xs, o, slab, inner, &mean, &sd);
        },
    )
}

fn standardize_range<T: Real>(
    start: usize,
    xs: &[T],
    o: &mut [T],
    slab: usize,
    inner: usize,
    mean: &[T],
    sd: &[T],
) {
    let mut pos = start;
    let mut done = 0;
    while done < xs.len() {
        let outer = pos / slab.max(1);
        let within = pos % slab.max(1);
        if inner == 1 {
            let len = (slab - within).min(xs.len() - done);
            dispatch(Standardize {
                mean: mean[outer],
                std: sd[outer],
                x: &xs[done..done + len],
                o: &mut o[done..done + len],
            });
            done += len;
            pos += len;
        } else {
            let j = within % inner;
            let len = (inner - j).min(xs.len() - done);
            let base = outer * inner + j;
            dispatch(StandardizeCols {
                mean: &mean[base..base + len],
                std: &sd[base..base + len],
                x: &xs[done..done + len],
                o: &mut o[done..done + len],
            });
            done += len;
            pos += len;
        }
    }
}

struct Flag<'a, T> {
    x: &'a [T],
    mean: T,
    std: T,
    thr: T,
    offset: usize,
    out: &'a mut Vec<i64>,
}
impl<T: Real> Kernel for Flag<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        // test 64 values branch-free, then collect the (rare) hits
        for (b, c) in self.x.chunks(64).enumerate() {
            let mut any = false;
            for &v in c {
                any |= ((v - self.mean).abs() / self.std) > self.thr;
            }
            if any {
                for (k, &v) in c.iter().enumerate() {
                    if ((v - self.mean).abs() / self.std) > self.thr {
                        self.out.push((self.offset + b * 64 + k) as i64);
                    }
                }
            }
        }
    }
}

/// Flat (C-order) indices where `|x - mean| / std > threshold`, as `np.flatnonzero` (int64, ascending).
pub fn zscore_anomalies<T: Real>(x: &ArrayViewD<T>, threshold: f64) -> Result<Vec<i64>> {
    if threshold.is_nan() {
        return Err(CoreError::value(
            "zscore_anomalies",
            "threshold",
            "must not be NaN",
        ));
    }
    let c = canon("zscore_anomalies", x, None, true)?;
    let data: &[T] = &c.data;
    if data.is_empty() {
        return Ok(vec![]);
    }
    let m = moments_canon("zscore_anomalies", &c)?[0];
    let (mean, sd, thr) = (
        T::from_f64(m.abs_mean()),
        T::from_f64(m.var(0.0).sqrt()),
        T::from_f64(threshold),
    );
    let func = "zscore_anomalies";
    let grow = |out: &mut Vec<i64>, more: usize| {
        out.try_reserve(more)
            .map_err(|_| alloc::memory_error::<i64>(func, "result", &[out.len() + more]))
    };
    maybe_parallel(data.len(), PAR_REDUCE_MIN, |par| {
        let scan = |(i, ch): (usize, &[T])| {
            let mut v = Vec::new();
            dispatch(Flag {
                x: ch,
                mean,
                std: sd,
                thr,
                offset: i * PAR_CHUNK,
                out: &mut v,
            });
            v
        };
        let mut out = Vec::new();
        if par {
            // the hits of each chunk, then one (fallible) result buffer
            let parts: Vec<Vec<i64>> = data.par_chunks(PAR_CHUNK).enumerate().map(scan).collect();
            grow(&mut out, parts.iter().map(Vec::len).sum())?;
            for p in parts {
                out.extend(p);
            }
        } else {
            for (i, ch) in data.chunks(PAR_CHUNK).enumerate() {
                let hits = scan((i, ch));
                grow(&mut out, hits.len())?;
                out.extend(hits);
            }
        }
        Ok(out)
    })
}

// -------------------------------------------------------------------------------------------------------
// quantiles

/// NumPy's `_lerp`: `a + (b - a) * t`, computed from the upper end for `t >= 0.5`.
#[inline]
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Total order for the selection (NaNs are handled before selecting).
#[inline]
fn cmp<T: Real>(a: &T, b: &T) -> std::cmp::Ordering {
    a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal)
}

/// Quantiles (NumPy's default "linear" method) of one slice, which is reordered in place.
fn quantiles_of<T: Real>(v: &mut [T], qs: &[f64], out: &mut [f64]) {
    let n = v.len();
    if n == 0 {
        out.iter_mut().for_each(|o| *o = f64::NAN);
        return;
    }
    if v.iter().any(|x| x.is_nan()) {
        out.iter_mut().for_each(|o| *o = f64::NAN);
        return;
    }
    // positions needed, ascending: select each inside the part right of the previous one
    let mut need: Vec<(usize, usize, f64)> = qs
        .iter()
        .enumerate()
        .map(|(k, &q)| {
            let vi = (n - 1) as f64 * q;
            let lo = (vi.floor() as usize).min(n - 1);
            (k, lo, vi - lo as f64)
        })
        .collect();
    need.sort_by_key(|e| e.1);
    let mut lo_bound = 0usize;
    let mut cache: Option<(usize, T, T)> = None;
    for &(k, lo, g) in &need {
        let (a, b) = match cache {
            Some((p, a, b)) if p == lo => (a, b),
            _ => {
                let part = &mut v[lo_bound..];
                let (_, nth, right) = part.select_nth_unstable_by(lo - lo_bound, cmp::<T>);
                let a = *nth;
                let b = if lo + 1 < n {
                    // the next order statistic is the minimum of the right part
                    right
                        .iter()
                        .copied()
                        .fold(T::INFINITY, |m, x| if x < m { x } else { m })
                } else {
                    a
                };
                lo_bound = lo;
                cache = Some((lo, a, b));
                (a, b)
            }
        };
        out[k] = lerp(a.to_f64(), b.to_f64(), g);
    }
}

/// Slices at least this long use the radix selection (no copy of the data).
const RADIX_MIN: usize = 1 << 16;
const RADIX_BITS: u32 = 16;

/// Order-preserving integer key of a non-NaN value (f32 widens to f64 exactly).
#[inline(always)]
fn key<T: Real>(v: T) -> u64 {
    let b = v.to_f64().to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

#[inline(always)]
fn bucket<T: Real>(v: T) -> usize {
    (key(v) >> (64 - RADIX_BITS)) as usize
}

/// The values of the given ranks (ascending, each < len) of a slice, or `None` when it holds a NaN.
///
/// One pass counts the sizes of buckets keyed by the top 16 bits of an order-preserving integer key (in
/// parallel, one histogram per worker), the prefix sums locate the bucket of every rank, a second pass gathers
/// only the values of those buckets, and a selection inside each bucket finishes. No copy of the data.
fn select_ranks<T: Real>(x: &[T], ranks: &[usize]) -> Option<Vec<T>> {
    let nbk = 1usize << RADIX_BITS;
    let count = |(mut h, mut nan): (Vec<u64>, bool), ch: &[T]| {
        for &v in ch {
            nan |= v.is_nan();
            h[bucket(v)] += 1;
        }
        (h, nan)
    };
    let (hist, nan): (Vec<u64>, bool) = maybe_parallel(x.len(), PAR_REDUCE_MIN, |par| {
        if par {
            x.par_chunks(PAR_CHUNK)
                .fold(|| (vec![0u64; nbk], false), count)
                .reduce(
                    || (vec![0u64; nbk], false),
                    |(mut a, na), (b, nb)| {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                        (a, na || nb)
                    },
                )
        } else {
            count((vec![0u64; nbk], false), x)
        }
    });
    if nan {
        return None;
    }
    // bucket and start rank of every wanted rank
    let mut starts = vec![0usize; nbk];
    let mut acc = 0usize;
    for (s, &h) in starts.iter_mut().zip(&hist) {
        *s = acc;
        acc += h as usize;
    }
    let mut slot = vec![usize::MAX; nbk];
    let mut wanted: Vec<usize> = Vec::new();
    let located: Vec<(usize, usize)> = ranks
        .iter()
        .map(|&r| {
            let b = starts.partition_point(|&s| s <= r) - 1;
            if slot[b] == usize::MAX {
                slot[b] = wanted.len();
                wanted.push(b);
            }
            (slot[b], r - starts[b])
        })
        .collect();
    // gather the values of the wanted buckets
    let gather = |mut g: Vec<Vec<T>>, ch: &[T]| {
        for &v in ch {
            let s = slot[bucket(v)];
            if s != usize::MAX {
                g[s].push(v);
            }
        }
        g
    };
    let nw = wanted.len();
    let mut per: Vec<Vec<T>> = maybe_parallel(x.len(), PAR_REDUCE_MIN, |par| {
        if par {
            x.par_chunks(PAR_CHUNK)
                .fold(|| vec![Vec::new(); nw], gather)
                .reduce(
                    || vec![Vec::new(); nw],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(x, mut y)| x.append(&mut y));
                        a
                    },
                )
        } else {
            gather(vec![Vec::new(); nw], x)
        }
    });
    Some(
        located
            .into_iter()
            .map(|(s, r)| *per[s].select_nth_unstable_by(r, cmp::<T>).1)
            .collect(),
    )
}

/// Quantiles of a long NaN-free-or-not slice without copying it (radix selection).
fn quantiles_radix<T: Real>(x: &[T], qs: &[f64], out: &mut [f64]) {
    let n = x.len();
    let pos: Vec<(usize, f64)> = qs
        .iter()
        .map(|&q| {
            let vi = (n - 1) as f64 * q;
            let lo = (vi.floor() as usize).min(n - 1);
            (lo, vi - lo as f64)
        })
        .collect();
    let mut ranks: Vec<usize> = pos
        .iter()
        .flat_map(|&(lo, _)| [lo, (lo + 1).min(n - 1)])
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    match select_ranks(x, &ranks) {
        None => out.iter_mut().for_each(|o| *o = f64::NAN),
        Some(vals) => {
            let at = |r: usize| vals[ranks.binary_search(&r).expect("rank selected")].to_f64();
            for (o, &(lo, g)) in out.iter_mut().zip(&pos) {
                *o = lerp(at(lo), at((lo + 1).min(n - 1)), g);
            }
        }
    }
}

/// Quantiles `qs` (each in [0, 1]) over `axis`; result shape `(len(qs),) + reduced shape`.
pub fn quantile<T: Real>(x: &ArrayViewD<T>, qs: &[f64], axis: Option<isize>) -> Result<ArrayD<T>> {
    if let Some(q) = qs.iter().find(|q| !(0.0..=1.0).contains(*q)) {
        return Err(CoreError::value(
            "quantile",
            "q",
            format!("must be in the range [0, 1], got {q}"),
        ));
    }
    let c = canon("quantile", x, axis, false)?;
    let (outer, n, inner) = (c.outer, c.n, c.inner);
    if n == 0 {
        return Err(CoreError::value(
            "quantile",
            "x",
            "is empty along the reduced axis: quantiles of an empty sequence are undefined",
        ));
    }
    let npos = outer * inner;
    let nq = qs.len();
    let data: &[T] = &c.data;
    // result: (q, reduced...), allocated before the work
    let mut shape = vec![nq];
    shape.extend_from_slice(&c.out_shape);
    let mut res = alloc::zeros_array::<T>("quantile", "result", &shape, false)?;
    if res.is_empty() {
        return Ok(res);
    }
    // the quantiles of each position, nq per position, in canonical order
    let mut per_pos = alloc::zeroed::<f64>("quantile", "intermediate result", &[npos, nq])?;
    let job = |(p, r): (usize, &mut [f64])| {
        let (o, j) = (p / inner, p % inner);
        if inner == 1 && n >= RADIX_MIN {
            quantiles_radix(&data[o * n..(o + 1) * n], qs, r);
            return;
        }
        // short or strided slices: gather a copy and select in it
        let mut v: Vec<T> = if inner == 1 {
            data[o * n..(o + 1) * n].to_vec()
        } else {
            (0..n).map(|i| data[(o * n + i) * inner + j]).collect()
        };
        quantiles_of(&mut v, qs, r);
    };
    if npos > 1 && npos * n >= PAR_REDUCE_MIN {
        maybe_parallel(npos * n, PAR_REDUCE_MIN, |par| {
            if par {
                per_pos.par_chunks_mut(nq).enumerate().for_each(job);
            } else {
                per_pos.chunks_mut(nq).enumerate().for_each(job);
            }
        });
    } else {
        per_pos.chunks_mut(nq).enumerate().for_each(job);
    }
    // position p of the canonical order is the p-th element of the reduced shape in C order, or in Fortran order
    // for a reversed (Fortran-contiguous) input
    for k in 0..nq {
        let sub = res.index_axis_mut(ndarray::Axis(0), k);
        let sub = if c.reversed { sub.reversed_axes() } else { sub };
        for (o, r) in sub.into_iter().zip(per_pos.chunks(nq)) {
            *o = T::from_f64(r[k]);
        }
    }
    Ok(res)
}

// -------------------------------------------------------------------------------------------------------
// histograms

/// Bin specification resolved by the caller (the edges array comes from NumPy's own `linspace` so the edges are
/// bit-identical).
pub struct Bins<'a, T> {
    pub edges: &'a [T],
    /// `true` when the edges are uniform (`bins` was an int): index by arithmetic, then correct against the
    /// edges exactly like NumPy's fast path.
    pub uniform: bool,
}

/// `(min, max)` of x for the automatic range, as NumPy computes it (errors on empty input are left to the caller).
pub fn finite_range<T: Real>(x: &ArrayViewD<T>) -> Result<(T, T)> {
    if x.is_empty() {
        return Ok((T::ZERO, T::ONE));
    }
    min_max_all("histogram", x)
}

#[inline(always)]
fn bin_index<T: Real>(v: T, b: &Bins<T>, first: T, last: T, norm: T, nb: usize) -> Option<usize> {
    if !(v >= first && v <= last) {
        return None; // outside the range, or NaN
    }
    let e = b.edges;
    if b.uniform {
        // numpy: f = (x - first) / (last - first) * n;  i = int(f); i == n -> n - 1; then correct with edges
        let f = ((v - first) / norm) * T::from_f64(nb as f64);
        let mut i = (f.to_isize_trunc().max(0) as usize).min(nb);
        if i == nb {
            i -= 1;
        }
        if v < e[i] {
            i = i.saturating_sub(1);
        } else if i != nb - 1 && v >= e[i + 1] {
            i += 1;
        }
        Some(i)
    } else {
        // searchsorted(edges, v, 'right') - 1, with the last edge closed
        let i = e.partition_point(|&ed| ed <= v);
        Some(if i >= e.len() { nb - 1 } else { i - 1 })
    }
}

/// Counts per bin (int64). Values outside `[edges[0], edges[-1]]` and NaNs are not counted; the last bin is
/// closed on the right.
pub fn histogram_counts<T: Real>(x: &ArrayViewD<T>, bins: &Bins<T>) -> Result<Vec<i64>> {
    let e = bins.edges;
    if e.len() < 2 {
        return Err(CoreError::value(
            "histogram",
            "bins",
            "needs at least 2 edges",
        ));
    }
    if e.windows(2)
        .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_gt()))
    {
        return Err(CoreError::value(
            "histogram",
            "bins",
            "must increase monotonically, when an array",
        ));
    }
    let nb = e.len() - 1;
    let (first, last) = (e[0], e[nb]);
    let norm = last - first;
    let data = alloc::c_order("histogram", "x", x)?;
    let count = |ch: &[T]| {
        // the counters of one chunk: 4 sub-histograms of nb + 1 slots and the totals
        let h = alloc::zeroed::<u32>("histogram", "bin counters", &[4 * (nb + 1)])?;
        let out = alloc::zeroed::<i64>("histogram", "result", &[nb])?;
        Ok(dispatch(Count {
            x: ch,
            bins,
            first,
            last,
            norm,
            nb,
            h,
            out,
        }))
    };
    maybe_parallel(data.len(), PAR_ELEMWISE_MIN * 2, |par| {
        if par {
            data.par_chunks(PAR_CHUNK)
                .map(count)
                .try_reduce_with(|mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    Ok(a)
                })
                .expect("non-empty input")
        } else {
            count(&data)
        }
    })
}

/// Counting kernel: bin indices of 256 values at a time (the arithmetic vectorizes), then increments spread
/// over 4 sub-histograms so that runs of values in one bin do not serialize on store forwarding.
struct Count<'a, T> {
    x: &'a [T],
    bins: &'a Bins<'a, T>,
    first: T,
    last: T,
    norm: T,
    nb: usize,
    /// Zeroed counters: 4 sub-histograms of `nb + 1` slots (the last one of each collects the values not counted).
    h: Vec<u32>,
    /// Zeroed totals, the result.
    out: Vec<i64>,
}

impl<T: Real> Kernel for Count<'_, T> {
    type Output = Vec<i64>;
    #[inline(always)]
    fn run<M: Mode>(self) -> Vec<i64> {
        let nb = self.nb;
        let (mut h, mut out) = (self.h, self.out);
        let mut idx = [0usize; 256];
        let mut since_flush = 0usize;
        for c in self.x.chunks(256) {
            if self.bins.uniform && nb < (1 << 30) {
                uniform_indices(
                    c,
                    &mut idx,
                    self.bins.edges,
                    self.first,
                    self.last,
                    self.norm,
                    nb,
                );
            } else {
                for (k, &v) in c.iter().enumerate() {
                    idx[k] =
                        bin_index(v, self.bins, self.first, self.last, self.norm, nb).unwrap_or(nb);
                }
            }
            // slot nb of each sub-histogram collects the values that are not counted
            for (k, &i) in idx[..c.len()].iter().enumerate() {
                h[(k & 3) * (nb + 1) + i] += 1;
            }
            since_flush += c.len();
            if since_flush >= (1 << 30) {
                flush(&mut h, &mut out, nb);
                since_flush = 0;
            }
        }
        flush(&mut h, &mut out, nb);
        out
    }
}

/// NumPy's equal-width bin computation (arithmetic estimate, then one correction step against the edges);
/// values outside `[first, last]` and NaNs get index `nb` (not counted).
///
/// The correction can only change the estimate when the scaled position lies near an integer: within a few ulps,
/// plus what the rounding of the edges themselves moves them by, which grows with the range's magnitude over its
/// width (a range of a few ulps at 7.7e6 has bins about one ulp wide, so an edge may lie a third of a bin from
/// its arithmetic position). The vectorized first loop flags such values and only those take the exact,
/// edge-comparing path.
#[inline(always)]
fn uniform_indices<T: Real>(
    c: &[T],
    idx: &mut [usize],
    e: &[T],
    first: T,
    last: T,
    norm: T,
    nb: usize,
) {
    let nbf = T::from_f64(nb as f64);
    // edges are rounded to the ulp of the range's magnitude: in bin units, up to about eps * magnitude / width * nb
    let (a, b) = (first.abs(), last.abs());
    let coarse = if a > b { a } else { b } / norm;
    let delta = (T::from_f64(nb as f64 * 64.0) * (T::ONE + coarse) + T::ONE) * T::EPSILON;
    let hi = nb as i32 - 1;
    let mut near = false;
    for (k, &v) in c.iter().enumerate() {
        let f = ((v - first) / norm) * nbf;
        let i = f.to_i32_trunc().clamp(0, hi);
        let fr = f - T::from_f64(i as f64);
        let keep = v >= first && v <= last;
        near |= keep & !(fr >= delta && fr <= T::ONE - delta);
        idx[k] = if keep { i as usize } else { nb };
    }
    if near {
        for (k, &v) in c.iter().enumerate() {
            if idx[k] != nb {
                let mut i = idx[k];
                i -= (v < e[i]) as usize & (i > 0) as usize;
                i += (v >= e[i + 1]) as usize & (i != nb - 1) as usize;
                idx[k] = i;
            }
        }
    }
}

fn flush(h: &mut [u32], out: &mut [i64], nb: usize) {
    for r in 0..4 {
        for (o, c) in out.iter_mut().zip(&mut h[r * (nb + 1)..r * (nb + 1) + nb]) {
            *o += *c as i64;
            *c = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn var_with_large_offset() {
        let v: Vec<f64> = (0..1_000_000)
            .map(|i| 1e8 + (i % 7) as f64 * 0.01)
            .collect();
        let a = Array::from_vec(v.clone()).into_dyn();
        let got = var(&a.view(), None, 0.0).unwrap()[[]];
        let m = v.iter().map(|x| x - 1e8).sum::<f64>() / v.len() as f64;
        let want = v.iter().map(|x| (x - 1e8 - m).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((got - want).abs() / want < 1e-9, "{got} {want}");
        assert!(var(&a.view(), None, f64::NAN).is_err());
    }

    #[test]
    fn quantile_linear_matches_definition() {
        let a = Array::from_vec(vec![4.0f64, 1.0, 3.0, 2.0, 5.0]).into_dyn();
        let q = quantile(&a.view(), &[0.0, 0.1, 0.5, 1.0], None).unwrap();
        assert_eq!(q.as_slice().unwrap(), &[1.0, 1.4, 3.0, 5.0]);
        assert!(quantile(&a.view(), &[1.5], None).is_err());
    }

    #[test]
    fn radix_quantiles_match_sorting() {
        let v: Vec<f64> = (0..200_003)
            .map(|i| (((i * 7919) % 100_003) as f64 - 5e4) * 1e-3)
            .collect();
        let mut s = v.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let qs = [0.0, 0.01, 0.25, 0.5, 0.999, 1.0];
        let a = Array::from_vec(v.clone()).into_dyn();
        let got = quantile(&a.view(), &qs, None).unwrap();
        for (k, &q) in qs.iter().enumerate() {
            let vi = (s.len() - 1) as f64 * q;
            let lo = vi.floor() as usize;
            let hi = (lo + 1).min(s.len() - 1);
            assert_eq!(got[[k]], lerp(s[lo], s[hi], vi - lo as f64), "q={q}");
        }
        // infinities switch to key buckets
        let mut u = v.clone();
        u[5] = f64::INFINITY;
        u[9] = f64::NEG_INFINITY;
        let mut su = u.clone();
        su.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let a = Array::from_vec(u).into_dyn();
        let got = quantile(&a.view(), &[0.25, 0.75], None).unwrap();
        let n1 = (su.len() - 1) as f64;
        for (k, q) in [0.25f64, 0.75].into_iter().enumerate() {
            let lo = (n1 * q).floor() as usize;
            assert_eq!(got[[k]], lerp(su[lo], su[lo + 1], n1 * q - lo as f64));
        }
        let mut w = v;
        w[77] = f64::NAN;
        let a = Array::from_vec(w).into_dyn();
        assert!(quantile(&a.view(), &[0.5], None).unwrap()[[0]].is_nan());
    }

    #[test]
    fn histogram_of_a_range_few_ulps_wide_bins_by_the_edges() {
        // bins about one ulp wide: the rounded edges, not the arithmetic positions, decide (as in NumPy)
        let u = f64::EPSILON;
        let (lo, hi) = (1.0 + 5.0 * u, 1.0 + 14.0 * u);
        let edges: Vec<f64> = (0..=4).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect();
        let b = Bins {
            edges: &edges,
            uniform: true,
        };
        for k in 5..=14 {
            let v = 1.0 + k as f64 * u;
            let a = Array::from_vec(vec![v]).into_dyn();
            let counts = histogram_counts(&a.view(), &b).unwrap();
            let want = edges[..4].iter().rposition(|&e| v >= e).unwrap().min(3);
            assert_eq!(
                counts.iter().position(|&c| c == 1),
                Some(want),
                "{k}: {edges:?}"
            );
        }
    }

    #[test]
    fn histogram_counts_closed_last_bin() {
        let a = Array::from_vec(vec![0.0f64, 0.5, 1.0, 1.0, 2.0, f64::NAN, 3.0]).into_dyn();
        let edges = [0.0, 1.0, 2.0];
        let h = histogram_counts(
            &a.view(),
            &Bins {
                edges: &edges,
                uniform: true,
            },
        )
        .unwrap();
        assert_eq!(h, vec![2, 3]);
        let h = histogram_counts(
            &a.view(),
            &Bins {
                edges: &edges,
                uniform: false,
            },
        )
        .unwrap();
        assert_eq!(h, vec![2, 3]);
    }

    #[test]
    fn zscore_finds_outliers() {
        let mut v = vec![0.0f64; 100_000];
        for (i, x) in v.iter_mut().enumerate() {
            *x = ((i * 7919) % 100) as f64 / 100.0;
        }
        v[777] = 1e3;
        v[99_999] = -1e3;
        let a = Array::from_vec(v).into_dyn();
        assert_eq!(zscore_anomalies(&a.view(), 3.0).unwrap(), vec![777, 99_999]);
    }
}
