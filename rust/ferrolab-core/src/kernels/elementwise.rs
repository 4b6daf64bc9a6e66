//! Fused elementwise ops with NumPy broadcasting and an optional `out`: axpy, fma, scale, clip.
//!
//! The machinery ([`map_into`]) resolves the broadcast shape, runs the SIMD kernel over contiguous chunks
//! (in parallel above a threshold) and writes either a new array or the caller's `out`. An input may be the
//! very same memory as `out` ([`Input::SameAsOut`], e.g. `axpy(a, x, y, out=y)`): each chunk of `out` is then
//! copied to a scratch buffer before it is overwritten, so no Rust reference ever aliases a mutable one.
//!
//! With `FERROLAB_STREAM_STORES=1`, large outputs (at least [`STREAM_MIN_BYTES`]) are written with non-temporal
//! stores on x86-64 ([`stream_copy`]): the kernel fills a small buffer that stays in L1, which is then streamed to
//! `out` past the caches. Ordinary stores first read every output cache line from memory (read-for-ownership) and
//! later write it back, so on CPUs that do pay that read an output that does not fit in the cache costs twice its
//! size in memory traffic; streamed, it costs its size once. They are off by default: on the AMD EPYC machine the
//! benchmarks ran on, ordinary stores already reach the bandwidth (`np.add(x, y, out=o)` moves 24 bytes per element
//! as fast as a streamed triad) and the streamed kernels were 0-25% slower (README, "Performance").

use super::alloc::{self, Zeroable};
use super::dispatch::{dispatch, num_threads, par_pieces_mut, Kernel, Mode};
use super::layout::fmt_shape;
use super::{Real, PAR_ELEMWISE_MIN};
use crate::error::{CoreError, Result};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn, ShapeBuilder};
use std::borrow::Cow;

/// Elements per chunk of the elementwise driver.
const CH: usize = 4096;
/// The most elements per piece of the parallel fill (a multiple of [`CH`]): one claimed index each
/// ([`par_pieces_mut`]).
const PIECE: usize = 16 * CH;
/// Outputs of at least this many bytes are written with non-temporal stores (larger than the share of the
/// last-level cache that one op can expect to keep: such an output would be evicted before it is read again).
pub const STREAM_MIN_BYTES: usize = 16 << 20;
/// Elements per kernel call on the streaming path: the kernel's output buffer stays in L1.
const STREAM_SUB: usize = 512;

static STREAM_STORES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0); // 0 = unknown, 1 = off, 2 = on

/// Whether non-temporal stores are enabled (`FERROLAB_STREAM_STORES=1` enables them; read once).
fn stream_stores_enabled() -> bool {
    use std::sync::atomic::Ordering;
    match STREAM_STORES.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = cfg!(target_arch = "x86_64")
                && std::env::var("FERROLAB_STREAM_STORES").is_ok_and(|v| v.trim() == "1");
            STREAM_STORES.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Copies `src` into `dst` with non-temporal stores where the target has them (x86-64: SSE2 `movntdq`, part of
/// the x86-64 baseline, so no feature check is needed); the unaligned head and tail of `dst` (and an element
/// type that is not aligned to its size) are copied normally. The caller issues [`stream_fence`] before the
/// data is handed to another thread.
#[inline]
pub fn stream_copy<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "stream_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let size = std::mem::size_of::<T>();
        let addr = dst.as_ptr() as usize;
        if size > 0 && size <= 16 && 16 % size == 0 && addr % size == 0 {
            let n = dst.len();
            let per = 16 / size; // elements per 16-byte store
            let head = (((16 - addr % 16) % 16) / size).min(n);
            let body = (n - head) / per * per;
            dst[..head].copy_from_slice(&src[..head]);
            // SAFETY: `d` is 16-byte aligned (head skipped to the boundary) and `body` elements from `head` lie
            // inside both slices (`body <= n - head`); the loads are unaligned loads from `src`.
            unsafe {
                let d = dst.as_mut_ptr().add(head) as *mut __m128i;
                let s = src.as_ptr().add(head) as *const __m128i;
                for i in 0..body / per {
                    _mm_stream_si128(d.add(i), _mm_loadu_si128(s.add(i)));
                }
            }
            dst[head + body..].copy_from_slice(&src[head + body..]);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// Orders the non-temporal stores issued so far before any later store (x86-64 `sfence`; nothing elsewhere).
/// Streaming stores are weakly ordered: without it, another thread that sees a later flag could read stale data.
#[inline]
pub fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions (SSE, part of the x86-64 baseline).
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

/// An input of an elementwise op.
pub enum Input<'a, T> {
    View(ArrayViewD<'a, T>),
    /// The input is exactly the `out` array (same memory, shape and strides).
    SameAsOut,
}

/// NumPy's broadcast shape of several shapes, or a `ValueError` naming the first argument that does not fit.
pub fn broadcast_shapes(
    func: &'static str,
    shapes: &[(&'static str, &[usize])],
) -> Result<Vec<usize>> {
    let nd = shapes.iter().map(|s| s.1.len()).max().unwrap_or(0);
    let mut out = vec![1usize; nd];
    for (name, s) in shapes {
        for (k, &d) in s.iter().enumerate() {
            let o = &mut out[nd - s.len() + k];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(CoreError::value(
                    func,
                    name,
                    format!(
                        "has shape {} which does not broadcast with {}",
                        fmt_shape(s),
                        fmt_shape(shapes[0].1)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    C,
    F,
}

/// Contiguous data of `v` in `order` when `v` has exactly `shape` and is contiguous that way.
fn contiguous<'a, T>(v: &ArrayViewD<'a, T>, shape: &[usize], order: Order) -> Option<&'a [T]> {
    if v.shape() != shape {
        return None;
    }
    match order {
        Order::C => v.to_slice(),
        Order::F => {
            if v.t().is_standard_layout() {
                v.to_slice_memory_order()
            } else {
                None
            }
        }
    }
}

/// Runs `kernel(inputs, out)` over chunks and returns the result (a new array, or `None` when written to `out`).
///
/// `kernel(offset, inputs, out)` receives the element offset of the chunk (in the chosen memory order) and `K`
/// input chunks of the same length as the output chunk.
pub fn map_into<'o, T: Zeroable + Default + Send + Sync + 'static, const K: usize>(
    func: &'static str,
    names: [&'static str; K],
    inputs: [Input<'_, T>; K],
    out: Option<ArrayViewMutD<'o, T>>,
    kernel: impl Fn(usize, [&[T]; K], &mut [T]) + Sync,
) -> Result<Option<ArrayD<T>>> {
    // shapes
    let out_shape_given = out.as_ref().map(|o| o.shape().to_vec());
    let mut shapes: Vec<(&'static str, Vec<usize>)> = Vec::with_capacity(K);
    for (name, inp) in names.iter().zip(&inputs) {
        match inp {
            Input::View(v) => shapes.push((name, v.shape().to_vec())),
            Input::SameAsOut => shapes.push((name, out_shape_given.clone().expect("out given"))),
        }
    }
    let refs: Vec<(&'static str, &[usize])> =
        shapes.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    let mut shape = broadcast_shapes(func, &refs)?;
    if let Some(os) = &out_shape_given {
        // as in NumPy, the inputs may also broadcast to a larger `out`
        let with_out = broadcast_shapes(func, &[("x", &shape), ("out", os)]);
        if with_out.as_ref().is_ok_and(|w| w == os) {
            shape.clone_from(os);
        }
        if *os != shape {
            return Err(CoreError::value(
                func,
                "out",
                format!(
                    "has shape {}; expected {}",
                    fmt_shape(os),
                    fmt_shape(&shape)
                ),
            ));
        }
    }
    // (broadcasting makes the result larger than any input: its size may not even fit in a usize)
    let size = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| alloc::memory_error::<T>(func, "result", &shape))?;

    // choose the memory order: Fortran only when every array input is Fortran-contiguous (and not C)
    let views: Vec<Option<&ArrayViewD<T>>> = inputs
        .iter()
        .map(|i| match i {
            Input::View(v) => Some(v),
            Input::SameAsOut => None,
        })
        .collect();
    let all_f = views
        .iter()
        .flatten()
        .all(|v| contiguous(v, &shape, Order::F).is_some())
        && views
            .iter()
            .flatten()
            .any(|v| contiguous(v, &shape, Order::C).is_none());
    let order = if all_f && shape.len() > 1 {
        Order::F
    } else {
        Order::C
    };

    let mut out = out;
    let out_is_direct = |o: &ArrayViewMutD<T>| match order {
        Order::C => o.is_standard_layout(),
        Order::F => o.t().is_standard_layout(),
    };
    let needs_copy = out.as_ref().is_some_and(|o| !out_is_direct(o));
    // SameAsOut inputs need out's values when the output is not written in place
    let out_copy: Option<Vec<T>> =
        if needs_copy && inputs.iter().any(|i| matches!(i, Input::SameAsOut)) {
            let o = out.as_ref().expect("out given");
            Some(in_order(func, "out", &o.view(), order)?)
        } else {
            None
        };
    // a fresh result is not read again by this op either (a temporary for a strided `out` is: it is copied)
    let fresh = out.is_none();
    // the output buffer: out's own memory when contiguous in `order`, else a temporary
    let out_direct = out.as_mut().and_then(|o| {
        if order == Order::C {
            o.as_slice_mut()
        } else if o.t().is_standard_layout() {
            o.as_slice_memory_order_mut()
        } else {
            None
        }
    });
    // inputs as contiguous data in `order` (broadcast or strided ones are materialized once)
    let mut same: [bool; K] = [false; K];
    let mut data: Vec<Cow<[T]>> = Vec::with_capacity(K);
    for (k, inp) in inputs.iter().enumerate() {
        match inp {
            Input::View(v) => data.push(match contiguous(v, &shape, order) {
                Some(s) => Cow::Borrowed(s),
                None => {
                    let b = v.broadcast(IxDyn(&shape)).expect("checked broadcast");
                    Cow::Owned(in_order(func, names[k], &b, order)?)
                }
            }),
            Input::SameAsOut => match &out_copy {
                Some(c) => data.push(Cow::Borrowed(c.as_slice())),
                None => {
                    same[k] = true;
                    data.push(Cow::Borrowed(&[]));
                }
            },
        }
    }

    let stream = (out_direct.is_some() || fresh) && streams::<T>(size);
    let data: [&[T]; K] = std::array::from_fn(|k| &*data[k]);

    match out_direct {
        Some(buf) => {
            fill(data, same, buf, stream, &kernel);
            Ok(None)
        }
        None => {
            let mut tmp = alloc::zeroed::<T>(func, "result", &shape)?;
            fill(data, same, &mut tmp, stream, &kernel);
            let arr = match order {
                Order::C => ArrayD::from_shape_vec(IxDyn(&shape), tmp),
                Order::F => ArrayD::from_shape_vec(IxDyn(&shape).f(), tmp),
            }
            .expect("shape");
            match out {
                Some(mut o) => {
                    o.assign(&arr);
                    Ok(None)
                }
                None => Ok(Some(arr)),
            }
        }
    }
}

/// Whether an output of `size` elements of `T` is written with non-temporal stores.
fn streams<T>(size: usize) -> bool {
    size.saturating_mul(std::mem::size_of::<T>()) >= STREAM_MIN_BYTES && stream_stores_enabled()
}

/// Fills `out` with `kernel` over chunks of the inputs `data` (each of out's length, in its memory order), in
/// parallel above [`PAR_ELEMWISE_MIN`] and with non-temporal stores when `stream`. An input whose `same` flag is
/// set is `out` itself (its `data` is empty): each chunk of `out` is copied to a scratch buffer and read from
/// there before it is overwritten.
fn fill<T: Default + Copy + Send + Sync, const K: usize>(
    data: [&[T]; K],
    same: [bool; K],
    out: &mut [T],
    stream: bool,
    kernel: &(impl Fn(usize, [&[T]; K], &mut [T]) + Sync),
) {
    let any_same = same.iter().any(|&s| s);
    let run_chunk = |off: usize, o: &mut [T]| {
        let n = o.len();
        if stream {
            // compute STREAM_SUB elements at a time into a buffer in L1, then stream them to `o`
            let mut buf = [T::default(); STREAM_SUB];
            let mut cur = [T::default(); STREAM_SUB];
            for (k, oc) in o.chunks_mut(STREAM_SUB).enumerate() {
                let (m, at) = (oc.len(), off + k * STREAM_SUB);
                if any_same {
                    cur[..m].copy_from_slice(oc);
                }
                let ins: [&[T]; K] = std::array::from_fn(|k| {
                    if same[k] {
                        &cur[..m]
                    } else {
                        &data[k][at..at + m]
                    }
                });
                kernel(at, ins, &mut buf[..m]);
                stream_copy(oc, &buf[..m]);
            }
            stream_fence();
            return;
        }
        if any_same {
            let mut scratch = [T::default(); CH];
            scratch[..n].copy_from_slice(o);
            let ins: [&[T]; K] = std::array::from_fn(|k| {
                if same[k] {
                    &scratch[..n]
                } else {
                    &data[k][off..off + n]
                }
            });
            kernel(off, ins, o);
        } else {
            kernel(off, std::array::from_fn(|k| &data[k][off..off + n]), o);
        }
    };
    let chunks = |at: usize, piece: &mut [T]| {
        for (i, o) in piece.chunks_mut(CH).enumerate() {
            run_chunk(at + i * CH, o);
        }
    };
    let size = out.len();
    if size >= PAR_ELEMWISE_MIN {
        // pieces of whole chunks, at least 4 per thread and at most PIECE elements, the calling thread taking
        // part (the result does not depend on the split)
        let piece = (size / (4 * num_threads())).clamp(CH, PIECE) / CH * CH;
        par_pieces_mut(out, piece, chunks);
    } else {
        chunks(0, out);
    }
}

/// [`map_into`] for inputs that are already contiguous and of out's length (no broadcasting, no copies): each
/// input as its elements, or `None` where it is `out` itself (computed in place).
///
/// # Panics
/// If an input's length differs from out's (the caller checked the shapes).
pub fn map_flat<T: Default + Copy + Send + Sync, const K: usize>(
    inputs: [Option<&[T]>; K],
    out: &mut [T],
    kernel: impl Fn(usize, [&[T]; K], &mut [T]) + Sync,
) {
    let same = inputs.map(|i| i.is_none());
    let data = inputs.map(|i| i.unwrap_or(&[]));
    for (d, s) in data.iter().zip(same) {
        assert!(
            s || d.len() == out.len(),
            "map_flat: an input's length differs from out's"
        );
    }
    let stream = streams::<T>(out.len());
    fill(data, same, out, stream, &kernel);
}

/// A copy of `v` (input `name`, possibly broadcast to the result's shape) in `order`.
fn in_order<T: Copy + Send + Sync>(
    func: &'static str,
    name: &str,
    v: &ArrayViewD<T>,
    order: Order,
) -> Result<Vec<T>> {
    let what = format!("copy of '{name}'");
    match order {
        Order::C => alloc::copy_c(func, &what, v),
        Order::F => alloc::copy_c(func, &what, &v.t()),
    }
}

// -------------------------------------------------------------------------------------------------------
// kernels

struct Axpy<'a, T> {
    a: T,
    x: &'a [T],
    y: &'a [T],
    o: &'a mut [T],
}
impl<T: Real> Kernel for Axpy<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for ((o, &x), &y) in self.o.iter_mut().zip(self.x).zip(self.y) {
            *o = M::madd(self.a, x, y);
        }
    }
}

struct Fma3<'a, T> {
    x: &'a [T],
    y: &'a [T],
    z: &'a [T],
    o: &'a mut [T],
}
impl<T: Real> Kernel for Fma3<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (((o, &x), &y), &z) in self.o.iter_mut().zip(self.x).zip(self.y).zip(self.z) {
            *o = M::madd(x, y, z);
        }
    }
}

struct Scale<'a, T> {
    a: T,
    x: &'a [T],
    o: &'a mut [T],
}
impl<T: Real> Kernel for Scale<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (o, &x) in self.o.iter_mut().zip(self.x) {
            *o = self.a * x;
        }
    }
}

struct Clip<'a, T> {
    lo: T,
    hi: T,
    x: &'a [T],
    o: &'a mut [T],
}
impl<T: Real> Kernel for Clip<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        for (o, &x) in self.o.iter_mut().zip(self.x) {
            // NaN in x stays NaN (both comparisons are false), as np.clip
            let v = if x < self.lo { self.lo } else { x };
            *o = if v > self.hi { self.hi } else { v };
        }
    }
}

/// The chunk kernel of `a * x + y`.
fn axpy_kernel<T: Real>(a: T) -> impl Fn(usize, [&[T]; 2], &mut [T]) + Sync {
    move |_, [x, y], o| dispatch(Axpy { a, x, y, o })
}

/// The chunk kernel of `x * y + z`.
fn fma_kernel<T: Real>(_: usize, [x, y, z]: [&[T]; 3], o: &mut [T]) {
    dispatch(Fma3 { x, y, z, o })
}

/// The chunk kernel of `a * x`.
fn scale_kernel<T: Real>(a: T) -> impl Fn(usize, [&[T]; 1], &mut [T]) + Sync {
    move |_, [x], o| dispatch(Scale { a, x, o })
}

/// The chunk kernel of `np.clip(x, lo, hi)`: NaN bounds give NaN, `lo > hi` gives `hi`.
fn clip_kernel<T: Real>(lo: T, hi: T) -> impl Fn(usize, [&[T]; 1], &mut [T]) + Sync {
    move |_, [x], o| match lo.is_nan() || hi.is_nan() {
        true => o.fill(T::NAN),
        false => dispatch(Clip { lo, hi, x, o }),
    }
}

/// `a * x + y` (broadcasting), into `out` when given.
pub fn axpy<'a, T: Real>(
    a: T,
    x: Input<'a, T>,
    y: Input<'a, T>,
    out: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    map_into("axpy", ["x", "y"], [x, y], out, axpy_kernel(a))
}

/// `x * y + z` (broadcasting), into `out` when given.
pub fn fma<'a, T: Real>(
    x: Input<'a, T>,
    y: Input<'a, T>,
    z: Input<'a, T>,
    out: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    map_into("fma", ["x", "y", "z"], [x, y, z], out, fma_kernel)
}

/// `a * x`, into `out` when given.
pub fn scale<T: Real>(
    x: Input<T>,
    a: T,
    out: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    map_into("scale", ["x"], [x], out, scale_kernel(a))
}

/// `np.clip(x, lo, hi)`: NaN bounds give NaN, `lo > hi` gives `hi`.
pub fn clip<T: Real>(
    x: Input<T>,
    lo: T,
    hi: T,
    out: Option<ArrayViewMutD<T>>,
) -> Result<Option<ArrayD<T>>> {
    map_into("clip", ["x"], [x], out, clip_kernel(lo, hi))
}

/// An elementwise op on inputs of out's length, contiguous in its memory order: [`map_flat`] with the kernel of
/// each op (`None` inputs are `out` itself).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Flat<T> {
    Axpy(T),
    Fma,
    Scale(T),
    Clip(T, T),
}

impl<T: Real> Flat<T> {
    /// The number of array inputs.
    pub fn arity(&self) -> usize {
        match self {
            Flat::Axpy(_) => 2,
            Flat::Fma => 3,
            Flat::Scale(_) | Flat::Clip(..) => 1,
        }
    }

    /// Runs the op into `out`.
    ///
    /// # Panics
    /// If `inputs` has not [`Self::arity`] entries, or an input's length differs from out's.
    pub fn run(self, inputs: &[Option<&[T]>], out: &mut [T]) {
        let k = |i: usize| inputs[i];
        assert_eq!(inputs.len(), self.arity(), "Flat::run: number of inputs");
        match self {
            Flat::Axpy(a) => map_flat([k(0), k(1)], out, axpy_kernel(a)),
            Flat::Fma => map_flat([k(0), k(1), k(2)], out, fma_kernel),
            Flat::Scale(a) => map_flat([k(0)], out, scale_kernel(a)),
            Flat::Clip(lo, hi) => map_flat([k(0)], out, clip_kernel(lo, hi)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, Array2};

    #[test]
    fn axpy_broadcasts_and_writes_out_in_place() {
        let x = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64).into_dyn();
        let y = Array::from_vec(vec![1.0, 2.0, 3.0, 4.0]).into_dyn();
        let r = axpy(2.0, Input::View(x.view()), Input::View(y.view()), None)
            .unwrap()
            .unwrap();
        assert_eq!(r[[2, 3]], 2.0 * 11.0 + 4.0);
        let mut o = x.clone();
        axpy(
            3.0,
            Input::View(x.view()),
            Input::SameAsOut,
            Some(o.view_mut()),
        )
        .unwrap();
        assert_eq!(o[[1, 1]], 3.0 * 5.0 + 5.0);
        let bad = Array::from_vec(vec![1.0, 2.0, 3.0]).into_dyn();
        let e = axpy(1.0, Input::View(x.view()), Input::View(bad.view()), None).unwrap_err();
        assert!(e.to_string().contains("'y'"));
        // the inputs broadcast to a larger out, as in NumPy; an out they do not broadcast to is an error
        let mut big = Array::zeros(IxDyn(&[2, 3, 4]));
        axpy(
            1.0,
            Input::View(x.view()),
            Input::View(y.view()),
            Some(big.view_mut()),
        )
        .unwrap();
        assert_eq!(big[[1, 2, 3]], 11.0 + 4.0);
        let mut odd = Array::zeros(IxDyn(&[3, 5]));
        let e = axpy(
            1.0,
            Input::View(x.view()),
            Input::View(y.view()),
            Some(odd.view_mut()),
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("'out' has shape (3, 5)"));
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn flat_ops_equal_map_into_also_in_place_and_in_parallel() {
        for n in [0, 1, 4097, PAR_ELEMWISE_MIN + 3] {
            let x: Vec<f64> = (0..n).map(|i| (i % 97) as f64 - 40.5).collect();
            let y: Vec<f64> = (0..n).map(|i| (i % 13) as f64 * 0.25).collect();
            fn view(v: &[f64]) -> Input<'_, f64> {
                Input::View(ArrayViewD::from_shape(IxDyn(&[v.len()]), v).unwrap())
            }
            let ops = [
                Flat::Axpy(1.5),
                Flat::Fma,
                Flat::Scale(-2.0),
                Flat::Clip(-3.0, 0.5),
                Flat::Clip(f64::NAN, 1.0),
            ];
            for op in ops {
                let want = match op {
                    Flat::Axpy(a) => axpy(a, view(&x), view(&y), None),
                    Flat::Fma => fma(view(&x), view(&y), view(&x), None),
                    Flat::Scale(a) => scale(view(&x), a, None),
                    Flat::Clip(lo, hi) => clip(view(&x), lo, hi, None),
                }
                .unwrap()
                .unwrap()
                .into_raw_vec_and_offset()
                .0;
                let all: [Option<&[f64]>; 3] = [Some(&x), Some(&y), Some(&x)];
                let mut o = vec![7.0; n];
                op.run(&all[..op.arity()], &mut o);
                assert_eq!(bits(&o), bits(&want));
                // in place: x is out itself
                let mut o = x.clone();
                let ins: [Option<&[f64]>; 3] = [None, Some(&y), None];
                op.run(&ins[..op.arity()], &mut o);
                assert_eq!(bits(&o), bits(&want));
            }
        }
    }

    #[test]
    #[should_panic(expected = "length differs")]
    fn flat_ops_check_the_input_lengths() {
        Flat::Scale(2.0).run(&[Some(&[1.0, 2.0][..])], &mut [0.0; 3]);
    }

    #[test]
    fn huge_broadcast_result_is_a_memory_error() {
        let col = Array::from_vec(vec![1.0f64])
            .into_shape_with_order((1, 1))
            .unwrap()
            .into_dyn();
        let x = col.broadcast(IxDyn(&[1 << 20, 1])).unwrap();
        let y = col.broadcast(IxDyn(&[1, 1 << 30])).unwrap();
        // 8 PB
        let e = axpy(2.0, Input::View(x.view()), Input::View(y.view()), None).unwrap_err();
        assert_eq!(e.kind(), "MemoryError");
        assert!(e.to_string().contains("axpy(): cannot allocate"), "{e}");
        // a copy of a broadcast input larger than the address space (1 PB)
        let x = col.broadcast(IxDyn(&[1 << 47, 1])).unwrap();
        let e = scale(Input::View(x.view()), 2.0, None).unwrap_err();
        assert_eq!(e.kind(), "MemoryError");
        // a result whose size overflows a usize
        let x = col.broadcast(IxDyn(&[1 << 40, 1])).unwrap();
        let y = col.broadcast(IxDyn(&[1, 1 << 40])).unwrap();
        assert_eq!(e.kind(), "MemoryError");
        let e = fma(
            Input::View(x.view()),
            Input::View(y.view()),
            Input::View(x.view()),
            None,
        );
        let e = e.unwrap_err();
        assert_eq!(e.kind(), "MemoryError");
        assert!(
            e.to_string().starts_with("fma(): cannot allocate the "),
            "{e}"
        );
    }

    #[test]
    fn stream_copy_handles_unaligned_heads_and_tails() {
        let src: Vec<f32> = (0..103).map(|i| i as f32).collect();
        let src64: Vec<f64> = (0..103).map(|i| i as f64).collect();
        for start in 0..5 {
            for end in [start, start + 1, start + 3, 50, 103] {
                let mut dst = vec![-1.0f32; 103];
                stream_copy(&mut dst[start..end], &src[start..end]);
                let mut dst64 = vec![-1.0f64; 103];
                stream_copy(&mut dst64[start..end], &src64[start..end]);
                stream_fence();
                assert_eq!(&dst[start..end], &src[start..end]);
                assert_eq!(&dst64[start..end], &src64[start..end]);
                assert!(dst[..start].iter().chain(&dst[end..]).all(|&v| v == -1.0));
                assert!(dst64[..start]
                    .iter()
                    .chain(&dst64[end..])
                    .all(|&v| v == -1.0));
            }
        }
    }

    #[test]
    fn streamed_outputs_equal_ordinary_ones() {
        use std::sync::atomic::Ordering;
        // large enough for the streaming path; an odd length and an offset start cover heads and tails
        let n = STREAM_MIN_BYTES / 8 + 1001;
        let x = Array::from_shape_fn(n, |i| (i % 977) as f64 - 300.0).into_dyn();
        let y = Array::from_shape_fn(n, |i| (i % 13) as f64).into_dyn();
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(a, b)| 1.5f64.mul_add(*a, *b))
            .collect();
        let before = STREAM_STORES.load(Ordering::Relaxed);
        STREAM_STORES.store(2, Ordering::Relaxed);
        let mut out = Array::from_elem(n + 1, 0.0f64).into_dyn();
        let mut o = out.slice_mut(ndarray::s![1..]).into_dyn();
        axpy(
            1.5,
            Input::View(x.view()),
            Input::View(y.view()),
            Some(o.view_mut()),
        )
        .unwrap();
        let fresh = axpy(1.5, Input::View(x.view()), Input::View(y.view()), None)
            .unwrap()
            .unwrap();
        // in place (out is y)
        let mut yy = y.clone();
        axpy(
            1.5,
            Input::View(x.view()),
            Input::SameAsOut,
            Some(yy.view_mut()),
        )
        .unwrap();
        STREAM_STORES.store(before, Ordering::Relaxed);
        for (i, w) in want.iter().enumerate() {
            // Unfused baseline and fused avx2 may round differently
            assert!((o[[i]] - w).abs() <= 1e-12 * w.abs().max(1.0), "{i}");
            assert_eq!(o[[i]], fresh[[i]], "{i}");
            assert_eq!(o[[i]], yy[[i]], "{i}");
        }
        assert_eq!(out[[0]], 0.0);
    }

    #[test]
    fn clip_nan_and_fortran_out() {
        let x = Array::from_vec(vec![-2.0f32, 0.5, f32::NAN, 9.0]).into_dyn();
        let r = clip(Input::View(x.view()), 0.0, 1.0, None)
            .unwrap()
            .unwrap();
        assert_eq!(r[[0]], 0.0);
        assert!(r[[2]].is_nan());
        assert_eq!(r[[3]], 1.0);
        let f = Array2::from_shape_fn((5, 3).f(), |(i, j)| (i + 10 * j) as f64).into_dyn();
        let mut out = Array2::<f64>::zeros((5, 3).f()).into_dyn();
        scale(Input::View(f.view()), 2.0, Some(out.view_mut())).unwrap();
        assert_eq!(out[[4, 2]], 2.0 * 24.0);
    }
}
