//! Fallible allocation of every buffer whose size the caller's input decides: results, C-order copies of
//! strided or broadcast inputs, per-position intermediates.
//!
//! Rust's infallible allocations (`vec![..; n]`, `Array::zeros`, `collect`) abort the whole process when the
//! allocator says no ("memory allocation of N bytes failed"). Here the element count is computed with checked
//! arithmetic and the memory is reserved with [`Vec::try_reserve_exact`] (or a zeroed allocation), so a request
//! that cannot be satisfied is a [`CoreError::Memory`] that names the function, the buffer, its shape and size —
//! `MemoryError` in Python.

use super::dispatch::maybe_parallel;
use super::PAR_REDUCE_MIN;
use crate::error::{CoreError, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use rayon::prelude::*;
use std::alloc::Layout;
use std::borrow::Cow;
use std::mem::MaybeUninit;

/// Element types whose all-zero bit pattern is a valid value (`0`, `0.0`, `false`), so that a zeroed allocation
/// (fresh pages from the allocator, no writes: what `vec![0.0; n]` does) is an initialized buffer.
///
/// # Safety
/// Implement only for types for which a value with every bit zero is valid.
pub unsafe trait Zeroable: Copy {}
// SAFETY: plain integers, floats and bool: all-zero bits are 0, 0.0 and false.
unsafe impl Zeroable for f32 {}
// SAFETY: see above.
unsafe impl Zeroable for f64 {}
// SAFETY: see above.
unsafe impl Zeroable for i64 {}
// SAFETY: see above.
unsafe impl Zeroable for u64 {}
// SAFETY: see above.
unsafe impl Zeroable for u32 {}
// SAFETY: see above.
unsafe impl Zeroable for usize {}
// SAFETY: see above.
unsafe impl Zeroable for u8 {}
// SAFETY: see above.
unsafe impl Zeroable for bool {}

/// NumPy's name of an element type (`float64`, `int64`, ...), or the Rust type's own name.
pub fn dtype_name<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "f64" => "float64",
        "f32" => "float32",
        "i64" => "int64",
        "u64" => "uint64",
        "u32" => "uint32",
        "u8" => "uint8",
        "bool" => "bool",
        "usize" => "uintp",
        other => other.rsplit("::").next().unwrap_or(other),
    }
}

/// The `MemoryError` for `shape` elements of `T`.
pub fn memory_error<T>(func: &'static str, what: &str, shape: &[usize]) -> CoreError {
    CoreError::memory(
        func,
        what,
        shape,
        dtype_name::<T>(),
        std::mem::size_of::<T>(),
    )
}

/// The number of elements of `shape`, when the buffer of `T`s fits in the address space (`isize::MAX` bytes).
fn count<T>(shape: &[usize]) -> Option<usize> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    Layout::array::<T>(n).ok()?;
    Some(n)
}

/// The bytes of `shape` elements of `T`, when they fit in the address space (`isize::MAX` bytes).
pub fn byte_len<T>(shape: &[usize]) -> Option<usize> {
    count::<T>(shape).map(|n| n * std::mem::size_of::<T>())
}

/// An empty `Vec` with room for exactly the elements of `shape`.
pub fn with_capacity<T>(func: &'static str, what: &str, shape: &[usize]) -> Result<Vec<T>> {
    let n = count::<T>(shape).ok_or_else(|| memory_error::<T>(func, what, shape))?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| memory_error::<T>(func, what, shape))?;
    Ok(v)
}

/// The elements of `shape`, all `value`.
pub fn filled<T: Clone>(
    func: &'static str,
    what: &str,
    shape: &[usize],
    value: T,
) -> Result<Vec<T>> {
    let mut v = with_capacity::<T>(func, what, shape)?;
    v.resize(v.capacity(), value);
    Ok(v)
}

/// The elements of `shape`, all zero, from a zeroed allocation (no page is written, like `vec![0.0; n]`).
pub fn zeroed<T: Zeroable>(func: &'static str, what: &str, shape: &[usize]) -> Result<Vec<T>> {
    let err = || memory_error::<T>(func, what, shape);
    let n = count::<T>(shape).ok_or_else(err)?;
    let layout = Layout::array::<T>(n).map_err(|_| err())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if p.is_null() {
        return Err(err());
    }
    // SAFETY: `p` comes from the global allocator with the layout of `[T; n]`, which is the layout a `Vec<T>` of
    // capacity `n` uses; all `n` elements are initialized because an all-zero `T` is valid (`Zeroable`).
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

/// An array of `shape`, all zero, in C or Fortran order.
pub fn zeros_array<T: Zeroable>(
    func: &'static str,
    what: &str,
    shape: &[usize],
    fortran: bool,
) -> Result<ArrayD<T>> {
    let v = zeroed::<T>(func, what, shape)?;
    let a = if fortran {
        ArrayD::from_shape_vec(IxDyn(shape).f(), v)
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), v)
    };
    Ok(a.expect("the buffer has the shape's size"))
}

/// The items of `it` (at most the elements of `shape`: the capacity reserved up front).
pub fn collect<T>(
    func: &'static str,
    what: &str,
    shape: &[usize],
    it: impl IntoIterator<Item = T>,
) -> Result<Vec<T>> {
    let mut v = with_capacity::<T>(func, what, shape)?;
    let cap = v.capacity();
    v.extend(it.into_iter().take(cap));
    Ok(v)
}

/// The elements of `x` in C order: borrowed when `x` is C-contiguous, else a copy (`arg` names the input).
pub fn c_order<'a, T: Copy + Send + Sync>(
    func: &'static str,
    arg: &str,
    x: &ArrayViewD<'a, T>,
) -> Result<Cow<'a, [T]>> {
    match x.to_slice() {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => Ok(Cow::Owned(copy_c(
            func,
            &format!("C-order copy of '{arg}'"),
            x,
        )?)),
    }
}

/// A copy of the elements of `x` (any strides, negative and zero included) in C order.
///
/// Row by row: the last axis is a slice copy when it is contiguous, else a strided loop; large copies run on the
/// pool. (ndarray's element iterator over a dynamic-dimension view costs about 20 ns per element.)
pub fn copy_c<T: Copy + Send + Sync>(
    func: &'static str,
    what: &str,
    x: &ArrayViewD<'_, T>,
) -> Result<Vec<T>> {
    let mut v = with_capacity::<T>(func, what, x.shape())?;
    let (shape, strides) = (x.shape(), x.strides());
    let Some((&n_in, outer)) = shape.split_last() else {
        v.extend(x.first().copied());
        return Ok(v);
    };
    if x.is_empty() {
        return Ok(v);
    }
    let s_in = strides[shape.len() - 1];
    let rows: usize = outer.iter().product();
    let base = ViewPtr(x.as_ptr());
    // the offset of row r's first element: r's index over the outer axes, times their strides
    let row_offset = |mut r: usize| {
        let mut off = 0isize;
        for d in (0..outer.len()).rev() {
            off += (r % outer[d]) as isize * strides[d];
            r /= outer[d];
        }
        off
    };
    let fill = |r: usize, d: &mut [MaybeUninit<T>]| {
        // the whole `ViewPtr` is captured (a closure naming only `base.0` would capture the raw pointer, which is
        // not Sync)
        let p = base;
        // SAFETY: `row_offset(r)` is the offset of element (r's index..., 0) of the view and `j * s_in` that of
        // its row's j-th element, j < n_in = d.len(): every such element exists in the view's memory, which `x`
        // borrows for this call; `d` is this row's part of the destination.
        unsafe {
            let row = p.0.offset(row_offset(r));
            if s_in == 1 {
                std::ptr::copy_nonoverlapping(row, d.as_mut_ptr().cast::<T>(), d.len());
            } else {
                for (j, e) in d.iter_mut().enumerate() {
                    e.write(*row.offset(j as isize * s_in));
                }
            }
        }
    };
    let dst = &mut v.spare_capacity_mut()[..rows * n_in];
    maybe_parallel(rows * n_in, PAR_REDUCE_MIN, |par| {
        if par {
            dst.par_chunks_mut(n_in)
                .enumerate()
                .for_each(|(r, d)| fill(r, d));
        } else {
            dst.chunks_mut(n_in)
                .enumerate()
                .for_each(|(r, d)| fill(r, d));
        }
    });
    // SAFETY: every one of the rows * n_in elements was written above.
    unsafe { v.set_len(rows * n_in) };
    Ok(v)
}

/// The first element of a borrowed view, shared with the pool's threads for a copy.
#[derive(Clone, Copy)]
struct ViewPtr<T>(*const T);
// SAFETY: the pointer is only read, while the view it comes from is borrowed (`copy_c`), and `T: Sync`.
unsafe impl<T: Sync> Send for ViewPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for ViewPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_memory_errors() {
        // 9 PB: more than any machine has and more than the 128 TB of x86-64 user address space
        let e = zeroed::<f64>("cdist", "result", &[1 << 20, 1 << 30]).unwrap_err();
        assert_eq!(e.kind(), "MemoryError");
        assert_eq!(
            e.to_string(),
            "cdist(): cannot allocate the 9.0 PB result (1048576 x 1073741824 float64)"
        );
        assert!(filled::<u8>("f", "result", &[usize::MAX, 2], 0).is_err());
        assert!(with_capacity::<f32>("f", "result", &[usize::MAX / 2]).is_err());
        assert!(zeros_array::<i64>("f", "result", &[1 << 40, 1 << 20], true).is_err());
        let one = [1.0f64];
        let one = ndarray::ArrayView1::from(&one[..]);
        let big = one.broadcast(IxDyn(&[1 << 31, 1 << 31])).unwrap();
        let e = c_order("sum", "x", &big).unwrap_err();
        assert!(e.to_string().contains("C-order copy of 'x'"), "{e}");
    }

    #[test]
    fn small_buffers() {
        let z = zeroed::<f64>("f", "result", &[3, 2]).unwrap();
        assert_eq!(z, vec![0.0; 6]);
        assert!(zeroed::<f64>("f", "result", &[0, 5]).unwrap().is_empty());
        assert_eq!(filled("f", "r", &[3], 7u32).unwrap(), vec![7, 7, 7]);
        let a = zeros_array::<f32>("f", "r", &[2, 3], true).unwrap();
        assert!(a.t().is_standard_layout());
        assert_eq!(collect("f", "r", &[2], [1, 2]).unwrap(), vec![1, 2]);
        assert_eq!(dtype_name::<f32>(), "float32");
        assert_eq!(byte_len::<f64>(&[3, 2]), Some(48));
        assert_eq!(byte_len::<f32>(&[0, usize::MAX]), Some(0));
        assert_eq!(byte_len::<f64>(&[usize::MAX / 8 + 1]), None);
        assert_eq!(byte_len::<u8>(&[usize::MAX, 2]), None);
    }
}
