//! The ops that have a GPU path, over plain contiguous slices: each op's GPU kernels and the matching CPU kernels,
//! run where [`dispatch::run`] places them. The bindings only borrow the arrays and convert the results.

use super::dispatch::{self, Requested};
use super::exec::{Device, GpuFailure, GpuFloat};
use crate::kernels::elementwise::{self as ew, Input};
use crate::kernels::layout::Canon;
use crate::kernels::{optim, reduce, stats, Real};
use crate::telemetry::seam::Op;
use crate::{CoreError, Result};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};
use std::sync::Mutex;

/// The result of a whole-array reduction: a value of the input's type, or an index (argmin, argmax).
#[derive(Debug, PartialEq)]
pub enum Reduced<T> {
    Value(ArrayD<T>),
    Index(ArrayD<i64>),
}

/// Whether the whole-array path of reduction `op` needs C order (its result depends on the flattening order).
pub fn needs_c_order(op: Op) -> bool {
    matches!(op, Op::Argmin | Op::Argmax)
}

/// Whether `len` elements take the whole-array path of reduction `op` with `ddof` (0 for the ops without one):
/// empty inputs and inputs that leave no degrees of freedom take the general path, which raises or warns like
/// NumPy. An invalid `ddof` is an error.
pub fn flat_applies(op: Op, len: usize, ddof: f64) -> Result<bool> {
    if len == 0 || len as f64 <= ddof {
        return Ok(false);
    }
    if matches!(op, Op::Var | Op::Std) {
        stats::check_ddof(op.name(), ddof)?;
    }
    Ok(true)
}

/// Reduction `op` of all elements of `c` on the CPU: the one table from reduction ops to their kernels.
pub fn reduce_flat<T: Real>(op: Op, c: Canon<'_, T>, ddof: f64) -> Result<Reduced<T>> {
    use Reduced::{Index, Value};
    Ok(match op {
        Op::Sum => Value(reduce::sum_c(c)?),
        Op::Mean => Value(reduce::mean_c(c)?),
        Op::Min => Value(reduce::min_c(c)?),
        Op::Max => Value(reduce::max_c(c)?),
        Op::Norm => Value(reduce::norm_c(c)?),
        Op::Var => Value(stats::var_c(c, ddof)?),
        Op::Std => Value(stats::std_c(c, ddof)?),
        Op::Argmin => Index(reduce::argmin_c(c)?),
        Op::Argmax => Index(reduce::argmax_c(c)?),
        _ => return Err(CoreError::internal(op.name(), "not a reduction")),
    })
}

/// Reduction `op` of all of the contiguous `s` as a scalar, through [`reduce::small`], where that applies (a
/// non-empty input below the parallel threshold; `None` otherwise): the same results as [`reduce_flat`] without
/// its result arrays. [`flat_applies`] must hold.
pub fn reduce_flat_small<T: Real>(op: Op, s: &[T], ddof: f64) -> Option<Result<reduce::Scalar<T>>> {
    use reduce::{small, Scalar::*};
    if !small::applies(s) {
        return None;
    }
    Some(Ok(match op {
        Op::Sum => Value(small::sum(s)),
        Op::Mean => Value(small::mean(s)),
        Op::Min => Value(small::extreme::<T, false>(s)),
        Op::Max => Value(small::extreme::<T, true>(s)),
        Op::Norm => Value(small::norm(s)),
        Op::Var | Op::Std => {
            if let Err(e) = stats::check_ddof(op.name(), ddof) {
                return Some(Err(e));
            }
            let v = small::moments(s).var(ddof);
            Value(T::from_f64(if op == Op::Var { v } else { v.sqrt() }))
        }
        Op::Argmin => Index(small::arg_extreme::<T, false>(s)),
        Op::Argmax => Index(small::arg_extreme::<T, true>(s)),
        _ => return None,
    }))
}

fn scalar<U: Clone>(v: U) -> ArrayD<U> {
    ArrayD::from_elem(IxDyn(&[]), v)
}

/// Reduction `op` of all of `s` (see [`flat_applies`]) as `requested`: on the GPU, else (or as the fallback) on
/// the CPU with [`reduce_flat`].
pub fn reduction<T: GpuFloat + Real>(
    op: Op,
    requested: Requested,
    s: &[T],
    ddof: f64,
) -> Result<Reduced<T>> {
    let n = s.len();
    let gpu = |d: &Device| -> std::result::Result<Reduced<T>, GpuFailure> {
        let buf = d.upload(s)?;
        let v = match op {
            Op::Argmin | Op::Argmax => {
                let i = d.arg_extreme(&buf, n, op == Op::Argmax)?;
                return Ok(Reduced::Index(scalar(i)));
            }
            Op::Sum => d.sum(&buf, n)?,
            Op::Mean => d.sum(&buf, n)? / n as f64,
            Op::Min => d.minmax(&buf, n)?.0,
            Op::Max => d.minmax(&buf, n)?.1,
            Op::Norm => d.sumsq(&buf, n)?.sqrt(),
            _ => {
                let (count, _, m2) = d.moments(&buf, n)?;
                let var = m2 / (count - ddof);
                if op == Op::Var {
                    var
                } else {
                    var.sqrt()
                }
            }
        };
        Ok(Reduced::Value(scalar(<T as GpuFloat>::from_f64(v))))
    };
    dispatch::run(op, requested, true, &gpu, &|| {
        reduce_flat(op, Canon::flat(s), ddof)
    })
}

/// The scalar operands of an elementwise op with a GPU path (as f64; converted to the arrays' type).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalars {
    Axpy(f64),
    Fma,
    Scale(f64),
    Clip(Option<f64>, Option<f64>),
    Standardize(f64),
}

impl Scalars {
    /// Whether `n` elements of one shape take the GPU path: not when empty, nor when standardize's `ddof`
    /// leaves no degrees of freedom (the CPU path warns like NumPy); an invalid `ddof` is an error.
    pub fn applies(&self, n: usize) -> Result<bool> {
        if n == 0 {
            return Ok(false);
        }
        if let Scalars::Standardize(ddof) = *self {
            stats::check_ddof("standardize", ddof)?;
            return Ok(n as f64 > ddof);
        }
        Ok(true)
    }
}

/// Elementwise op `scalars` of the C-contiguous `slices` (all of `shape`) as `requested`, into a new array.
pub fn elementwise<T: GpuFloat + Real>(
    op: Op,
    requested: Requested,
    scalars: Scalars,
    slices: &[&[T]],
    shape: &[usize],
) -> Result<ArrayD<T>> {
    let n = slices[0].len();
    let t = <T as GpuFloat>::from_f64;
    let cpu = || -> Result<ArrayD<T>> {
        let x = |i: usize| {
            let v = ArrayViewD::from_shape(IxDyn(shape), slices[i]).expect("shape of the slice");
            Input::View(v)
        };
        let r = match scalars {
            Scalars::Axpy(a) => ew::axpy(t(a), x(0), x(1), None),
            Scalars::Fma => ew::fma(x(0), x(1), x(2), None),
            Scalars::Scale(a) => ew::scale(x(0), t(a), None),
            Scalars::Clip(lo, hi) => {
                let (lo, hi) = (lo.map_or(T::NEG_INFINITY, t), hi.map_or(T::INFINITY, t));
                ew::clip(x(0), lo, hi, None)
            }
            Scalars::Standardize(ddof) => {
                let v = ArrayViewD::from_shape(IxDyn(shape), slices[0]).expect("shape");
                return stats::standardize(&v, None, ddof, None).map(|o| o.expect("fresh"));
            }
        };
        r.map(|o| o.expect("a fresh result without out"))
    };
    let gpu = |d: &Device| -> std::result::Result<ArrayD<T>, GpuFailure> {
        let bufs: Vec<_> = slices
            .iter()
            .map(|s| d.upload(s))
            .collect::<std::result::Result<_, _>>()?;
        let mut out = d.alloc_out::<T>(n)?;
        match scalars {
            Scalars::Axpy(a) => d.axpy(t(a), &bufs[0], &bufs[1], &mut out, n)?,
            Scalars::Fma => d.fma(&bufs[0], &bufs[1], &bufs[2], &mut out, n)?,
            Scalars::Scale(a) => d.scale(t(a), &bufs[0], &mut out, n)?,
            Scalars::Clip(lo, hi) => d.clip(&bufs[0], lo.map(t), hi.map(t), &mut out, n)?,
            Scalars::Standardize(ddof) => {
                let (count, mean, m2) = d.moments(&bufs[0], n)?;
                d.standardize(&bufs[0], mean, (m2 / (count - ddof)).sqrt(), &mut out, n)?
            }
        }
        let host = d.download(&out, n)?;
        Ok(ArrayD::from_shape_vec(IxDyn(shape), host).expect("n elements of the shape"))
    };
    dispatch::run(op, requested, true, &gpu, &cpu)
}

/// The arrays of one Adam step: parameters, gradient, first and second moments.
pub type AdamViews<'a, T> = (
    ArrayViewMutD<'a, T>,
    ArrayViewD<'a, T>,
    ArrayViewMutD<'a, T>,
    ArrayViewMutD<'a, T>,
);

/// Whether an Adam step has a GPU path: four non-empty C-contiguous arrays of one shape.
pub fn adam_has_gpu_path<T>(v: &AdamViews<'_, T>) -> bool {
    let (p, g, m, s) = v;
    [g.shape(), m.shape(), s.shape()]
        .iter()
        .all(|x| *x == p.shape())
        && p.is_standard_layout()
        && g.is_standard_layout()
        && m.is_standard_layout()
        && s.is_standard_layout()
        && !p.is_empty()
}

/// One in-place Adam step (see [`optim::adam_step`]) of arrays with a GPU path ([`adam_has_gpu_path`]) as
/// `requested`: on the GPU through a device copy, else (or as the fallback) on the CPU.
pub fn adam_step<T: GpuFloat + Real>(
    requested: Requested,
    views: AdamViews<'_, T>,
    hp: optim::AdamParams,
) -> Result<()> {
    let c = hp.consts::<T>()?;
    let n = views.0.len();
    // the views are used once, by whichever path runs (the fallback runs after a failed GPU attempt)
    let views = Mutex::new(Some(views));
    let take = || {
        let mut v = views.lock().unwrap_or_else(|p| p.into_inner());
        v.take()
            .ok_or_else(|| CoreError::internal("adam_step", "the arrays were used twice"))
    };
    let cpu = || -> Result<()> {
        let (p, g, m, v) = take()?;
        optim::adam_step(p, g, m, v, hp)
    };
    let gpu = |d: &Device| -> std::result::Result<(), GpuFailure> {
        let (mut p, g, mut m, mut v) = take().map_err(|e| GpuFailure {
            during: "adam_step".into(),
            error: e.to_string(),
            sticky: false,
        })?;
        let ps: &mut [T] = p.as_slice_mut().expect("C-contiguous");
        let gs: &[T] = g.as_slice().expect("C-contiguous");
        let ms: &mut [T] = m.as_slice_mut().expect("C-contiguous");
        let vs: &mut [T] = v.as_slice_mut().expect("C-contiguous");
        let (mut dp, dg) = (d.upload(&*ps)?, d.upload(gs)?);
        let (mut dm, mut dv) = (d.upload(&*ms)?, d.upload(&*vs)?);
        let k = [
            c.b1w, c.b2, c.one_b2, c.wd, c.decay, c.neg_step, c.bc2s, c.eps,
        ];
        d.adam(&mut dp, &dg, &mut dm, &mut dv, n, k, c.lerp_hi)?;
        d.download_into(&dp, ps)?;
        d.download_into(&dm, ms)?;
        d.download_into(&dv, vs)
    };
    dispatch::run(Op::AdamStep, requested, true, &gpu, &cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_flat_maps_every_reduction() {
        let s = [3.0f64, 1.0, 4.0, 1.0, 5.0];
        let v = |op, ddof| match reduce_flat(op, Canon::flat(&s[..]), ddof).unwrap() {
            Reduced::Value(a) => a[[]],
            Reduced::Index(i) => i[[]] as f64,
        };
        assert_eq!(v(Op::Sum, 0.0), 14.0);
        assert_eq!(v(Op::Mean, 0.0), 2.8);
        assert_eq!(v(Op::Min, 0.0), 1.0);
        assert_eq!(v(Op::Max, 0.0), 5.0);
        assert_eq!(v(Op::Argmin, 0.0), 1.0);
        assert_eq!(v(Op::Argmax, 0.0), 4.0);
        assert!((v(Op::Norm, 0.0) - 52f64.sqrt()).abs() < 1e-12);
        assert!((v(Op::Var, 1.0) - 3.2).abs() < 1e-12);
        assert!((v(Op::Std, 0.0) - 1.6).abs() < 1e-12);
        assert!(reduce_flat(Op::Dot, Canon::flat(&s[..]), 0.0).is_err());
    }

    #[test]
    fn flat_applies_leaves_degenerate_inputs_to_the_general_path() {
        assert!(!flat_applies(Op::Sum, 0, 0.0).unwrap());
        assert!(flat_applies(Op::Sum, 1, 0.0).unwrap());
        assert!(!flat_applies(Op::Var, 2, 2.0).unwrap());
        assert!(flat_applies(Op::Var, 3, 2.0).unwrap());
        assert!(flat_applies(Op::Std, 3, f64::NEG_INFINITY).is_err());
        assert!(needs_c_order(Op::Argmax) && !needs_c_order(Op::Sum));
    }

    #[test]
    fn scalars_apply_to_non_empty_inputs() {
        assert!(!Scalars::Fma.applies(0).unwrap());
        assert!(Scalars::Clip(None, Some(1.0)).applies(1).unwrap());
        assert!(!Scalars::Standardize(1.0).applies(1).unwrap());
        assert!(Scalars::Standardize(f64::NAN).applies(5).is_err());
    }

    #[test]
    fn cpu_requests_run_the_cpu_kernels() {
        let (x, y) = ([1.0f32, 2.0], [10.0f32, 20.0]);
        let r = elementwise(
            Op::Axpy,
            Requested::Cpu,
            Scalars::Axpy(2.0),
            &[&x, &y],
            &[2],
        );
        assert_eq!(r.unwrap().into_raw_vec_and_offset().0, vec![12.0, 24.0]);
        let r = elementwise(
            Op::Clip,
            Requested::Cpu,
            Scalars::Clip(None, Some(1.5)),
            &[&x],
            &[2],
        );
        assert_eq!(r.unwrap().into_raw_vec_and_offset().0, vec![1.0, 1.5]);
        let r = reduction(Op::Argmax, Requested::Cpu, &x, 0.0).unwrap();
        assert_eq!(r, Reduced::Index(scalar(1)));
        let mut p = ndarray::arr1(&[1.0f64, -1.0]).into_dyn();
        let g = ndarray::arr1(&[0.5f64, -0.5]).into_dyn();
        let (mut m, mut v) = (ArrayD::zeros(IxDyn(&[2])), ArrayD::zeros(IxDyn(&[2])));
        let views = (p.view_mut(), g.view(), m.view_mut(), v.view_mut());
        assert!(adam_has_gpu_path(&views));
        let hp = optim::AdamParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            t: 1,
        };
        adam_step(Requested::Cpu, views, hp).unwrap();
        assert!((p[[0]] - 0.9).abs() < 1e-6 && (p[[1]] + 0.9).abs() < 1e-6);
    }
}
