//! Canonical `(outer, n, inner)` layout of a reduction over one axis, and shape helpers.

use crate::error::{CoreError, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use std::borrow::Cow;

/// A view of an n-d array as `outer x n x inner` over one contiguous buffer, reducing over `n`.
#[derive(Debug)]
pub struct Canon<'a, T: Clone> {
    pub data: Cow<'a, [T]>,
    pub outer: usize,
    pub n: usize,
    pub inner: usize,
    /// Shape of the reduced result (the input shape without `axis`, or `[]` for `axis=None`).
    pub out_shape: Vec<usize>,
    /// The buffer is the C-order layout of the *reversed* shape (a Fortran-contiguous input used in place):
    /// results over `(outer, inner)` must be laid out in Fortran order of `out_shape`.
    pub reversed: bool,
}

/// Checks and normalizes `axis` (negative counts from the end) for an array of `ndim` dimensions.
pub fn normalize_axis(func: &'static str, axis: isize, ndim: usize) -> Result<usize> {
    let nd = ndim as isize;
    if axis < -nd || axis >= nd {
        return Err(CoreError::value(
            func,
            "axis",
            format!("is {axis}, out of bounds for an array of dimension {ndim}"),
        ));
    }
    Ok(if axis < 0 {
        (axis + nd) as usize
    } else {
        axis as usize
    })
}

/// The canonical layout of `x` for a reduction over `axis` (`None` = all elements).
///
/// With `c_order_required`, Fortran-contiguous inputs are copied too (for ops whose result depends on the
/// C-order flattening, like `argmin` with `axis=None`).
pub fn canon<'a, T: Copy + Send + Sync>(
    func: &'static str,
    x: &ArrayViewD<'a, T>,
    axis: Option<isize>,
    c_order_required: bool,
) -> Result<Canon<'a, T>> {
    let shape = x.shape().to_vec();
    let ndim = shape.len();
    let axis = match axis {
        None => None,
        Some(a) => Some(normalize_axis(
            func,
            a,
            ndim.max(if ndim == 0 { 0 } else { 1 }),
        )?),
    };
    if ndim == 0 && axis.is_some() {
        return Err(CoreError::value(
            func,
            "axis",
            "must be None for a 0-dimensional array",
        ));
    }
    let (data, reversed) = if let Some(s) = x.to_slice() {
        (Cow::Borrowed(s), false)
    } else if !c_order_required && ndim > 1 && x.t().to_slice().is_some() {
        (
            Cow::Borrowed(x.to_slice_memory_order().expect("f-contiguous")),
            true,
        )
    } else {
        (
            Cow::Owned(super::alloc::copy_c(func, "C-order copy of 'x'", x)?),
            false,
        )
    };
    let total: usize = shape.iter().product();
    let (outer, n, inner, out_shape) = match axis {
        None => (1, total, 1, vec![]),
        Some(ax) => {
            let mut out_shape = shape.clone();
            out_shape.remove(ax);
            let (sh, ax2): (Vec<usize>, usize) = if reversed {
                (shape.iter().rev().cloned().collect(), ndim - 1 - ax)
            } else {
                (shape.clone(), ax)
            };
            let outer = sh[..ax2].iter().product();
            let inner = sh[ax2 + 1..].iter().product();
            (outer, sh[ax2], inner, out_shape)
        }
    };
    Ok(Canon {
        data,
        outer,
        n,
        inner,
        out_shape,
        reversed,
    })
}

impl<'a, T: Clone> Canon<'a, T> {
    /// All elements of a contiguous buffer, reduced to one value (`axis=None`).
    pub fn flat(data: &'a [T]) -> Self {
        Canon {
            data: Cow::Borrowed(data),
            outer: 1,
            n: data.len(),
            inner: 1,
            out_shape: Vec::new(),
            reversed: false,
        }
    }

    /// Wraps per-`(outer, inner)` results (in canonical order) into an array of `out_shape`.
    pub fn wrap<U>(&self, values: Vec<U>) -> ArrayD<U> {
        debug_assert_eq!(values.len(), self.outer * self.inner);
        let shape = IxDyn(&self.out_shape);
        if self.reversed {
            ArrayD::from_shape_vec(shape.f(), values).expect("result shape")
        } else {
            ArrayD::from_shape_vec(shape, values).expect("result shape")
        }
    }
}

/// Formats a shape the way NumPy prints it: `(3,)`, `(2, 5)`, `()`.
pub fn fmt_shape(s: &[usize]) -> String {
    match s.len() {
        0 => "()".into(),
        1 => format!("({},)", s[0]),
        _ => format!(
            "({})",
            s.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The length of the axis a reduction over `axis` of `shape` reduces (all elements for `None`); `None` when the
/// axis is out of range (the reduction reports it).
pub fn reduced_len(shape: &[usize], axis: Option<isize>) -> Option<usize> {
    let Some(ax) = axis else {
        return Some(shape.iter().product());
    };
    let nd = shape.len() as isize;
    let k = if ax < 0 { ax + nd } else { ax };
    (0..nd).contains(&k).then(|| shape[k as usize])
}

/// The bytes `[start, end)` spanned by the elements of an array at address `ptr` with `itemsize`, `shape` and
/// `strides` (in bytes); `start == end` when it has no elements.
pub fn byte_span(
    ptr: usize,
    itemsize: usize,
    shape: &[usize],
    strides: &[isize],
) -> (usize, usize) {
    if shape.contains(&0) {
        return (ptr, ptr);
    }
    let (mut lo, mut hi) = (ptr as isize, (ptr + itemsize) as isize);
    for (&d, &s) in shape.iter().zip(strides) {
        let span = (d as isize - 1) * s;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    (lo as usize, hi as usize)
}

/// Where an array's elements lie: the byte range from its lowest to one past its highest element, and its
/// strides and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub lo: usize,
    pub hi: usize,
    pub strides: Vec<isize>,
    pub shape: Vec<usize>,
}

impl Extent {
    /// The extent of `shape` elements of `itemsize` bytes at `ptr` with byte `strides`.
    pub fn of(ptr: usize, itemsize: usize, shape: &[usize], strides: &[isize]) -> Extent {
        let (lo, hi) = byte_span(ptr, itemsize, shape, strides);
        let (strides, shape) = (strides.to_vec(), shape.to_vec());
        Extent {
            lo,
            hi,
            strides,
            shape,
        }
    }
}

/// How an output array shares memory with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    None,
    /// The same elements (same start, strides and shape): the op can run in place.
    Same,
    Partial,
}

/// How `out` shares memory with `x`.
pub fn alias(out: &Extent, x: &Extent) -> Alias {
    let same = (out.lo, &out.strides, &out.shape) == (x.lo, &x.strides, &x.shape);
    overlap((out.lo, out.hi), (x.lo, x.hi), same)
}

/// [`alias`] of two arrays of one shape, element type and contiguous layout, `bytes` long, at addresses `out`
/// and `x`: the same elements exactly when they start at the same address.
pub fn alias_flat(out: usize, x: usize, bytes: usize) -> Alias {
    overlap((out, out + bytes), (x, x + bytes), out == x)
}

/// The one rule of [`alias`]: byte ranges `[lo, hi)`; `same` when both address the same elements the same way.
fn overlap(out: (usize, usize), x: (usize, usize), same: bool) -> Alias {
    if out.0 != out.1 && same {
        Alias::Same
    } else if out.0 < x.1 && x.0 < out.1 {
        Alias::Partial
    } else {
        Alias::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, ShapeBuilder};

    #[test]
    fn alias_of_extents() {
        let e = |ptr, shape: &[usize], strides: &[isize]| Extent::of(ptr, 8, shape, strides);
        let a = e(1000, &[10], &[8]);
        assert_eq!(alias(&a, &a.clone()), Alias::Same);
        assert_eq!(alias(&a, &e(1008, &[10], &[8])), Alias::Partial);
        assert_eq!(alias(&a, &e(1000, &[5], &[16])), Alias::Partial);
        assert_eq!(alias(&a, &e(1080, &[10], &[8])), Alias::None);
        assert_eq!(alias_flat(1000, 1000, 80), Alias::Same);
        assert_eq!(alias_flat(1000, 1072, 80), Alias::Partial);
        assert_eq!(alias_flat(1000, 1080, 80), Alias::None);
        assert_eq!(alias_flat(1000, 1000, 0), Alias::None);
        // reversed: the same bytes, other strides
        assert_eq!(alias(&a, &e(1072, &[10], &[-8])), Alias::Partial);
        // empty arrays share nothing
        let empty = e(1000, &[0], &[8]);
        assert_eq!(alias(&empty, &empty.clone()), Alias::None);
    }

    #[test]
    fn c_f_and_strided_layouts() {
        let a = Array::from_shape_vec((2, 3, 4), (0..24).collect::<Vec<i32>>()).unwrap();
        let c = canon("t", &a.view().into_dyn(), Some(1), false).unwrap();
        assert_eq!((c.outer, c.n, c.inner), (2, 3, 4));
        assert!(matches!(c.data, Cow::Borrowed(_)));
        assert_eq!(c.out_shape, vec![2, 4]);

        let f = Array::from_shape_vec((2, 3, 4).f(), (0..24).collect::<Vec<i32>>()).unwrap();
        let c = canon("t", &f.view().into_dyn(), Some(0), false).unwrap();
        assert!(c.reversed);
        assert_eq!((c.outer, c.n, c.inner), (12, 2, 1));
        let c = canon("t", &f.view().into_dyn(), Some(0), true).unwrap();
        assert!(!c.reversed);

        let s = a.slice(ndarray::s![.., ..;2, ..]);
        let c = canon("t", &s.into_dyn(), None, false).unwrap();
        assert_eq!(c.n, 16);
        assert!(matches!(c.data, Cow::Owned(_)));
    }

    #[test]
    fn bad_axis_is_a_value_error() {
        let a = Array::<f64, _>::zeros((2, 3)).into_dyn();
        let e = canon("sum", &a.view(), Some(2), false).unwrap_err();
        assert_eq!(e.kind(), "ValueError");
        assert!(e.to_string().contains("axis"));
        assert!(canon("sum", &a.view(), Some(-2), false).is_ok());
        assert_eq!(fmt_shape(&[3]), "(3,)");
    }

    #[test]
    fn reduced_lengths() {
        assert_eq!(reduced_len(&[2, 3, 4], None), Some(24));
        assert_eq!(reduced_len(&[2, 3, 4], Some(-1)), Some(4));
        assert_eq!(reduced_len(&[2, 3, 4], Some(1)), Some(3));
        assert_eq!(reduced_len(&[2, 3, 4], Some(3)), None);
        assert_eq!(reduced_len(&[2, 3, 4], Some(-4)), None);
    }

    #[test]
    fn byte_spans_cover_every_element() {
        assert_eq!(byte_span(1000, 8, &[3, 4], &[32, 8]), (1000, 1096));
        // reversed rows: the first element is the last row
        assert_eq!(byte_span(1064, 8, &[3, 4], &[-32, 8]), (1000, 1096));
        assert_eq!(byte_span(1000, 8, &[2, 2], &[8, 16]), (1000, 1032));
        assert_eq!(byte_span(1000, 8, &[5, 0], &[8, 8]), (1000, 1000));
        assert_eq!(byte_span(1000, 4, &[], &[]), (1000, 1004));
    }
}
