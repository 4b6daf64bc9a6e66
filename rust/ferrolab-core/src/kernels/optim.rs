//! One in-place Adam / AdamW step, bit-for-bit the arithmetic of PyTorch's single-tensor implementation.

use super::dispatch::{dispatch, maybe_parallel, Kernel, Mode};
use super::layout::fmt_shape;
use super::{Real, PAR_ELEMWISE_MIN};
use crate::error::{CoreError, Result};
use ndarray::{ArrayViewD, ArrayViewMutD, Zip};
use rayon::prelude::*;

/// Hyper-parameters of one step.
#[derive(Debug, Clone, Copy)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW (decoupled weight decay) instead of Adam's L2 penalty.
    pub decoupled: bool,
    /// Step number, starting at 1.
    pub t: u64,
}

/// The constants of one step in the parameters' type (shared by the CPU kernel and the GPU one).
#[derive(Debug, Clone, Copy)]
pub struct Consts<T> {
    /// 1 - beta1 (the lerp weight)
    pub b1w: T,
    /// beta2
    pub b2: T,
    /// 1 - beta2
    pub one_b2: T,
    /// L2 weight decay (0 when decoupled)
    pub wd: T,
    /// 1 - lr * weight_decay for AdamW, else 1
    pub decay: T,
    /// -lr / (1 - beta1^t)
    pub neg_step: T,
    /// sqrt(1 - beta2^t)
    pub bc2s: T,
    pub eps: T,
    /// Which of torch's two lerp formulas applies (weight >= 0.5).
    pub lerp_hi: bool,
}

impl AdamParams {
    /// The parameters of step `t` (the step number, from 1: a `ValueError` naming `t` otherwise); the others are
    /// checked by [`AdamParams::consts`].
    pub fn new(
        t: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Result<Self> {
        if t < 1 {
            let msg = format!("is {t}; expected the step number, >= 1");
            return Err(CoreError::value("adam_step", "t", msg));
        }
        let t = t as u64;
        Ok(AdamParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            t,
        })
    }

    /// Checks the hyper-parameters (a `ValueError` naming the one out of range) and computes the step's constants.
    pub fn consts<T: Real>(&self) -> Result<Consts<T>> {
        let (f, hp) = ("adam_step", self);
        if hp.t == 0 {
            return Err(CoreError::value(
                f,
                "t",
                "must be >= 1 (the step number, counted from 1)",
            ));
        }
        for (name, val, lo, hi) in [
            ("lr", hp.lr, 0.0, f64::INFINITY),
            ("beta1", hp.beta1, 0.0, 1.0),
            ("beta2", hp.beta2, 0.0, 1.0),
            ("eps", hp.eps, 0.0, f64::INFINITY),
            ("weight_decay", hp.weight_decay, 0.0, f64::INFINITY),
        ] {
            if !(val >= lo && (val < hi || (hi.is_infinite() && val.is_finite()))) {
                return Err(CoreError::value(
                    f,
                    name,
                    format!("is {val}; expected a value in [{lo}, {hi})"),
                ));
            }
        }
        let bc1 = 1.0 - hp.beta1.powi(hp.t.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - hp.beta2.powi(hp.t.min(i32::MAX as u64) as i32);
        Ok(Consts {
            b1w: T::from_f64(1.0 - hp.beta1),
            b2: T::from_f64(hp.beta2),
            one_b2: T::from_f64(1.0 - hp.beta2),
            wd: T::from_f64(if hp.decoupled { 0.0 } else { hp.weight_decay }),
            decay: T::from_f64(if hp.decoupled {
                1.0 - hp.lr * hp.weight_decay
            } else {
                1.0
            }),
            neg_step: T::from_f64(-(hp.lr / bc1)),
            bc2s: T::from_f64(bc2.sqrt()),
            eps: T::from_f64(hp.eps),
            lerp_hi: (1.0 - hp.beta1) >= 0.5,
        })
    }
}

#[inline(always)]
fn update<T: Real>(c: &Consts<T>, p: &mut T, g: T, m: &mut T, v: &mut T) {
    let mut g = g;
    if c.wd != T::ZERO {
        g = g + c.wd * *p;
    }
    *p = *p * c.decay;
    // torch lerp_: weight < 0.5 ? self + w * (end - self) : end - (end - self) * (1 - w)
    *m = if c.lerp_hi {
        g - (g - *m) * (T::ONE - c.b1w)
    } else {
        *m + c.b1w * (g - *m)
    };
    *v = *v * c.b2 + c.one_b2 * g * g;
    let denom = v.sqrt() / c.bc2s + c.eps;
    *p = *p + c.neg_step * *m / denom;
}

struct Step<'a, T> {
    c: Consts<T>,
    p: &'a mut [T],
    g: &'a [T],
    m: &'a mut [T],
    v: &'a mut [T],
}
impl<T: Real> Kernel for Step<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<M: Mode>(self) {
        let c = self.c;
        for (((p, &g), m), v) in self
            .p
            .iter_mut()
            .zip(self.g)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            update(&c, p, g, m, v);
        }
    }
}

/// `(param, m, v, grad)` as contiguous slices in one memory order.
type Slices<'a, T> = (&'a mut [T], &'a mut [T], &'a mut [T], &'a [T]);

fn slices_same_order<'a, T>(
    p: &'a mut ArrayViewMutD<T>,
    m: &'a mut ArrayViewMutD<T>,
    v: &'a mut ArrayViewMutD<T>,
    g: &'a ArrayViewD<T>,
) -> Option<Slices<'a, T>> {
    let c = p.is_standard_layout()
        && m.is_standard_layout()
        && v.is_standard_layout()
        && g.is_standard_layout();
    let f = p.t().is_standard_layout()
        && m.t().is_standard_layout()
        && v.t().is_standard_layout()
        && g.t().is_standard_layout();
    if !(c || f) {
        return None;
    }
    Some((
        p.as_slice_memory_order_mut()?,
        m.as_slice_memory_order_mut()?,
        v.as_slice_memory_order_mut()?,
        g.to_slice_memory_order()?,
    ))
}

/// Updates `param`, `m` and `v` in place with one Adam (or AdamW) step for gradient `grad`.
pub fn adam_step<T: Real>(
    mut param: ArrayViewMutD<T>,
    grad: ArrayViewD<T>,
    mut m: ArrayViewMutD<T>,
    mut v: ArrayViewMutD<T>,
    hp: AdamParams,
) -> Result<()> {
    let f = "adam_step";
    let shape = param.shape().to_vec();
    for (name, s) in [("grad", grad.shape()), ("m", m.shape()), ("v", v.shape())] {
        if s != shape.as_slice() {
            return Err(CoreError::value(
                f,
                name,
                format!(
                    "has shape {}; expected {} (the shape of param)",
                    fmt_shape(s),
                    fmt_shape(&shape)
                ),
            ));
        }
    }
    let c = hp.consts::<T>()?;
    let n = param.len();
    if let Some((p, m, v, g)) = slices_same_order(&mut param, &mut m, &mut v, &grad) {
        const CH: usize = 8192;
        maybe_parallel(n, PAR_ELEMWISE_MIN, |par| {
            #[allow(clippy::type_complexity)]
            let step = |(((p, g), m), v): (((&mut [T], &[T]), &mut [T]), &mut [T])| {
                dispatch(Step { c, p, g, m, v })
            };
            if par {
                p.par_chunks_mut(CH)
                    .zip(g.par_chunks(CH))
                    .zip(m.par_chunks_mut(CH))
                    .zip(v.par_chunks_mut(CH))
                    .for_each(step);
            } else {
                step((((p, g), m), v));
            }
        });
    } else {
        Zip::from(&mut param)
            .and(&grad)
            .and(&mut m)
            .and(&mut v)
            .for_each(|p, &g, m, v| update(&c, p, g, m, v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn new_checks_the_step_number() {
        let e = AdamParams::new(0, 1e-3, 0.9, 0.999, 1e-8, 0.0, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "adam_step(): argument 't' is 0; expected the step number, >= 1"
        );
        assert_eq!(
            AdamParams::new(-3, 1e-3, 0.9, 0.999, 1e-8, 0.0, false)
                .unwrap_err()
                .kind(),
            e.kind()
        );
        let hp = AdamParams::new(7, 0.1, 0.8, 0.99, 1e-6, 0.01, true).unwrap();
        assert_eq!((hp.t, hp.lr, hp.decoupled), (7, 0.1, true));
    }

    #[test]
    fn first_step_moves_by_lr() {
        // at t = 1 the bias-corrected update is lr * g / (|g| + eps) ~= lr * sign(g)
        let mut p = Array::from_vec(vec![1.0f64, -1.0, 0.5]).into_dyn();
        let g = Array::from_vec(vec![0.3f64, -2.0, 0.0]).into_dyn();
        let mut m = Array::zeros(p.raw_dim());
        let mut v = Array::zeros(p.raw_dim());
        let hp = AdamParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            t: 1,
        };
        adam_step(p.view_mut(), g.view(), m.view_mut(), v.view_mut(), hp).unwrap();
        assert!((p[[0]] - 0.9).abs() < 1e-6);
        assert!((p[[1]] + 0.9).abs() < 1e-6);
        assert_eq!(p[[2]], 0.5);
        let bad = Array::zeros(ndarray::IxDyn(&[2]));
        let e = adam_step(p.view_mut(), bad.view(), m.view_mut(), v.view_mut(), hp).unwrap_err();
        assert!(e.to_string().contains("'grad'"));
    }
}
