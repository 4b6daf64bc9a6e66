//! Integer paths (`i64`, wrapping like NumPy's integer arithmetic) of the type-preserving ops: sum, min, max,
//! argmin, argmax, dot, matmul, axpy, fma, scale, clip. Narrower integer dtypes are widened to `i64` by the
//! binding and cast back, which gives NumPy's modular results for `+` and `*`.

use super::alloc;
use super::dispatch::maybe_parallel;
use super::elementwise::{map_into, Input};
use super::layout::{canon, fmt_shape};
use crate::error::{CoreError, Result};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, ArrayViewMutD, Ix2};
use rayon::prelude::*;

fn fold_axis(
    func: &'static str,
    x: &ArrayViewD<i64>,
    axis: Option<isize>,
    c_order: bool,
    f: impl Fn(&mut dyn Iterator<Item = i64>) -> Result<i64>,
) -> Result<ArrayD<i64>> {
    let c = canon(func, x, axis, c_order)?;
    let (outer, n, inner) = (c.outer, c.n, c.inner);
    if n == 0 && func != "sum" {
        // an empty reduced axis has no minimum/maximum even when the result is empty (NumPy raises too)
        f(&mut std::iter::empty())?;
    }
    let d: &[i64] = &c.data;
    let mut out = alloc::with_capacity(func, "result", &c.out_shape)?;
    for o in 0..outer {
        for j in 0..inner {
            let mut it = (0..n).map(|i| d[(o * n + i) * inner + j]);
            out.push(f(&mut it)?);
        }
    }
    Ok(c.wrap(out))
}

/// Sum (wrapping).
pub fn sum(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    fold_axis("sum", x, axis, false, |it| {
        Ok(it.fold(0i64, |a, b| a.wrapping_add(b)))
    })
}

fn extreme(
    func: &'static str,
    x: &ArrayViewD<i64>,
    axis: Option<isize>,
    max: bool,
) -> Result<ArrayD<i64>> {
    let op = if max { "maximum" } else { "minimum" };
    fold_axis(func, x, axis, false, |it| {
        let r = if max { it.max() } else { it.min() };
        r.ok_or_else(|| {
            CoreError::value(
                func,
                "x",
                format!("is a zero-size array: reduction operation {op} has no identity"),
            )
        })
    })
    .and_then(|r| {
        if x.is_empty() && axis.is_none() {
            Err(CoreError::value(
                func,
                "x",
                format!("is a zero-size array: reduction operation {op} has no identity"),
            ))
        } else {
            Ok(r)
        }
    })
}

pub fn min(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    extreme("min", x, axis, false)
}

pub fn max(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    extreme("max", x, axis, true)
}

fn arg(
    func: &'static str,
    x: &ArrayViewD<i64>,
    axis: Option<isize>,
    max: bool,
) -> Result<ArrayD<i64>> {
    if x.is_empty() && axis.is_none() {
        return Err(CoreError::value(
            func,
            "x",
            format!("is empty: attempt to get {func} of an empty sequence"),
        ));
    }
    fold_axis(func, x, axis.or(None), axis.is_none(), |it| {
        let mut best: Option<(i64, i64)> = None;
        for (i, v) in it.enumerate() {
            match best {
                Some((b, _)) if (max && v <= b) || (!max && v >= b) => {}
                _ => best = Some((v, i as i64)),
            }
        }
        best.map(|b| b.1).ok_or_else(|| {
            CoreError::value(
                func,
                "x",
                format!("is empty: attempt to get {func} of an empty sequence"),
            )
        })
    })
}

pub fn argmin(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    arg("argmin", x, axis, false)
}

pub fn argmax(x: &ArrayViewD<i64>, axis: Option<isize>) -> Result<ArrayD<i64>> {
    arg("argmax", x, axis, true)
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
    Ok(x.iter()
        .zip(y.iter())
        .fold(0i64, |s, (&a, &b)| s.wrapping_add(a.wrapping_mul(b))))
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
