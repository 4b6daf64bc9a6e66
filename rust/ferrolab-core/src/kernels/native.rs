//! The type-preserving ops for every natively computed dtype (`f64`, `f32`, `i64`): the one table from element
//! type to kernel (the float kernels of [`reduce`] and [`elementwise`], the integer ones of [`int`]).

use super::elementwise::{self, Input};
use super::{int, reduce};
use crate::Result;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

/// The `out` view of an elementwise kernel.
pub type Out<'a, T> = Option<ArrayViewMutD<'a, T>>;
/// The result of an elementwise kernel: a new array, or `None` when it was written into `out`.
pub type Fresh<T> = Result<Option<ArrayD<T>>>;
type View<'a, 'b, T> = &'a ArrayViewD<'b, T>;

/// An element type with native kernels for the type-preserving ops.
pub trait Native: Copy + Send + Sync + Default + 'static {
    /// Missing `clip` bounds are the type's extremes.
    const LOWEST: Self;
    const HIGHEST: Self;
    fn sum(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<Self>>;
    fn min(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<Self>>;
    fn max(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<Self>>;
    fn argmin(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<i64>>;
    fn argmax(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<i64>>;
    fn dot(x: View<Self>, y: View<Self>) -> Result<Self>;
    fn axpy<'a>(a: Self, x: Input<'a, Self>, y: Input<'a, Self>, o: Out<'a, Self>) -> Fresh<Self>;
    fn fma<'a>(
        x: Input<'a, Self>,
        y: Input<'a, Self>,
        z: Input<'a, Self>,
        o: Out<'a, Self>,
    ) -> Fresh<Self>;
    fn scale<'a>(x: Input<'a, Self>, a: Self, o: Out<'a, Self>) -> Fresh<Self>;
    fn clip<'a>(x: Input<'a, Self>, lo: Self, hi: Self, o: Out<'a, Self>) -> Fresh<Self>;
}

macro_rules! native {
    ($t:ty, $lo:expr, $hi:expr, $red:ident, $ew:ident) => {
        impl Native for $t {
            const LOWEST: Self = $lo;
            const HIGHEST: Self = $hi;
            fn sum(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<Self>> {
                $red::sum(x, axis)
            }
            fn min(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<Self>> {
                $red::min(x, axis)
            }
            fn max(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<Self>> {
                $red::max(x, axis)
            }
            fn argmin(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<i64>> {
                $red::argmin(x, axis)
            }
            fn argmax(x: View<Self>, axis: Option<isize>) -> Result<ArrayD<i64>> {
                $red::argmax(x, axis)
            }
            fn dot(x: View<Self>, y: View<Self>) -> Result<Self> {
                $red::dot(x, y)
            }
            fn axpy<'a>(
                a: Self,
                x: Input<'a, Self>,
                y: Input<'a, Self>,
                o: Out<'a, Self>,
            ) -> Fresh<Self> {
                $ew::axpy(a, x, y, o)
            }
            fn fma<'a>(
                x: Input<'a, Self>,
                y: Input<'a, Self>,
                z: Input<'a, Self>,
                o: Out<'a, Self>,
            ) -> Fresh<Self> {
                $ew::fma(x, y, z, o)
            }
            fn scale<'a>(x: Input<'a, Self>, a: Self, o: Out<'a, Self>) -> Fresh<Self> {
                $ew::scale(x, a, o)
            }
            fn clip<'a>(x: Input<'a, Self>, lo: Self, hi: Self, o: Out<'a, Self>) -> Fresh<Self> {
                $ew::clip(x, lo, hi, o)
            }
        }
    };
}
native!(f64, f64::NEG_INFINITY, f64::INFINITY, reduce, elementwise);
native!(f32, f32::NEG_INFINITY, f32::INFINITY, reduce, elementwise);
native!(i64, i64::MIN, i64::MAX, int, int);

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn check<T: Native + PartialEq + std::fmt::Debug + From<i8>>() {
        let v = |x: &[i8]| arr1(&x.iter().map(|&e| T::from(e)).collect::<Vec<_>>()).into_dyn();
        let (x, y) = (v(&[3, -1, 4]), v(&[1, 2, 3]));
        assert_eq!(
            T::sum(&x.view(), None).unwrap(),
            v(&[6]).into_shape_with_order(()).unwrap().into_dyn()
        );
        assert_eq!(T::min(&x.view(), Some(0)).unwrap()[[]], T::from(-1));
        assert_eq!(T::max(&x.view(), None).unwrap()[[]], T::from(4));
        assert_eq!(T::argmin(&x.view(), None).unwrap()[[]], 1);
        assert_eq!(T::argmax(&x.view(), None).unwrap()[[]], 2);
        assert_eq!(T::dot(&x.view(), &y.view()).unwrap(), T::from(13));
        let fresh = |r: Fresh<T>| r.unwrap().unwrap();
        fn input<T>(a: &ArrayD<T>) -> Input<'_, T> {
            Input::View(a.view())
        }
        assert_eq!(
            fresh(T::axpy(T::from(2), input(&x), input(&y), None)),
            v(&[7, 0, 11])
        );
        assert_eq!(
            fresh(T::fma(input(&x), input(&y), input(&y), None)),
            v(&[4, 0, 15])
        );
        assert_eq!(
            fresh(T::scale(input(&x), T::from(-1), None)),
            v(&[-3, 1, -4])
        );
        assert_eq!(
            fresh(T::clip(input(&x), T::LOWEST, T::from(2), None)),
            v(&[2, -1, 2])
        );
        assert_eq!(
            fresh(T::clip(input(&x), T::from(0), T::HIGHEST, None)),
            v(&[3, 0, 4])
        );
    }

    #[test]
    fn every_native_dtype_maps_to_its_kernels() {
        check::<f64>();
        check::<f32>();
        check::<i64>();
    }
}
