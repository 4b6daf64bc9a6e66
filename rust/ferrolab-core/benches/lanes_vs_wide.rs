//! The kernels' lane arrays under run-time dispatch against the `wide` crate's SIMD types, on the same loops.
//!
//! `cargo bench -p ferrolab-core --bench lanes_vs_wide` prints, for sum and dot of float64 and float32 vectors
//! that stay in L1/L2 (so the arithmetic, not memory, decides), the median time of:
//!
//! * `lanes, dispatched`: ferrolab's kernel ([`dispatch`]: the AVX2+FMA copy on a CPU that has it),
//! * `lanes, baseline`: the same kernel's baseline (SSE2) copy, as a CPU without AVX2 runs it,
//! * `wide`: the loop written with `wide::f64x4` / `wide::f32x8` (four accumulators, FMA where compiled in),
//!   compiled for the build's target: a wheel built for x86-64 gets `wide`'s SSE2 code on every CPU, because
//!   `wide` picks its implementation with `cfg(target_feature)` at compile time.
//!
//! The kernels accumulate float32 input in float64 (for accuracy); the `wide` float32 loops accumulate in float32
//! (less work, less accuracy), which favours `wide`.

use ferrolab_core::kernels::dispatch::{dispatch, Kernel, Unfused};
use ferrolab_core::kernels::simd::{Dot, Sum};
use std::hint::black_box;
use std::time::Instant;
use wide::{f32x8, f64x4};

fn wide_sum_f64(x: &[f64]) -> f64 {
    let mut acc = [f64x4::ZERO; 4];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f64x4::from(<[f64; 4]>::try_from(&c[4 * k..4 * k + 4]).unwrap());
        }
    }
    (acc[0] + acc[1] + acc[2] + acc[3]).reduce_add() + it.remainder().iter().sum::<f64>()
}

fn wide_dot_f64(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [f64x4::ZERO; 4];
    let (mut ix, mut iy) = (x.chunks_exact(16), y.chunks_exact(16));
    for (a, b) in (&mut ix).zip(&mut iy) {
        for (k, s) in acc.iter_mut().enumerate() {
            let va = f64x4::from(<[f64; 4]>::try_from(&a[4 * k..4 * k + 4]).unwrap());
            let vb = f64x4::from(<[f64; 4]>::try_from(&b[4 * k..4 * k + 4]).unwrap());
            *s = va.mul_add(vb, *s);
        }
    }
    let tail: f64 = ix
        .remainder()
        .iter()
        .zip(iy.remainder())
        .map(|(a, b)| a * b)
        .sum();
    (acc[0] + acc[1] + acc[2] + acc[3]).reduce_add() + tail
}

fn wide_sum_f32(x: &[f32]) -> f64 {
    let mut acc = [f32x8::ZERO; 4];
    let mut it = x.chunks_exact(32);
    for c in &mut it {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f32x8::from(<[f32; 8]>::try_from(&c[8 * k..8 * k + 8]).unwrap());
        }
    }
    let s = (acc[0] + acc[1] + acc[2] + acc[3]).reduce_add() as f64;
    s + it.remainder().iter().map(|&v| v as f64).sum::<f64>()
}

fn wide_dot_f32(x: &[f32], y: &[f32]) -> f64 {
    let mut acc = [f32x8::ZERO; 4];
    let (mut ix, mut iy) = (x.chunks_exact(32), y.chunks_exact(32));
    for (a, b) in (&mut ix).zip(&mut iy) {
        for (k, s) in acc.iter_mut().enumerate() {
            let va = f32x8::from(<[f32; 8]>::try_from(&a[8 * k..8 * k + 8]).unwrap());
            let vb = f32x8::from(<[f32; 8]>::try_from(&b[8 * k..8 * k + 8]).unwrap());
            *s = va.mul_add(vb, *s);
        }
    }
    let tail: f64 = ix
        .remainder()
        .iter()
        .zip(iy.remainder())
        .map(|(a, b)| (a * b) as f64)
        .sum();
    (acc[0] + acc[1] + acc[2] + acc[3]).reduce_add() as f64 + tail
}

/// Median seconds per call over 31 repetitions of enough calls to last ~2 ms.
fn time(mut f: impl FnMut() -> f64) -> f64 {
    let mut calls = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            black_box(f());
        }
        if t.elapsed().as_secs_f64() > 2e-3 {
            break;
        }
        calls *= 2;
    }
    let mut ts: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                black_box(f());
            }
            t.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn row(name: &str, n: usize, bytes: usize, lanes: f64, base: f64, wide: f64) {
    let gbs = |t: f64| bytes as f64 / t / 1e9;
    println!(
        "{name:<12} {n:>7}  {:>8.2} GB/s  {:>8.2} GB/s  {:>8.2} GB/s  {:>6.2}x  {:>6.2}x",
        gbs(lanes),
        gbs(base),
        gbs(wide),
        wide / lanes,
        wide / base
    );
}

fn main() {
    println!(
        "simd level: {}; wide compiled for: {}",
        ferrolab_core::kernels::dispatch::simd_level().as_str(),
        if cfg!(target_feature = "avx2") {
            "avx2"
        } else {
            "the target's baseline (no avx2)"
        }
    );
    println!(
        "{:<12} {:>7}  {:>13}  {:>13}  {:>13}  {:>7}  {:>7}",
        "kernel", "n", "lanes, disp.", "lanes, base", "wide", "w/disp", "w/base"
    );
    for n in [4096usize, 32768] {
        let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1009) as f64 * 1e-3).collect();
        let y: Vec<f64> = (0..n).map(|i| ((i * 104729) % 997) as f64 * 1e-3).collect();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let yf: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        // the results agree (to rounding) before anything is timed
        assert!((dispatch(Sum(&x[..])) - wide_sum_f64(&x)).abs() < 1e-6 * n as f64);
        assert!((dispatch(Dot(&xf[..], &yf[..])) - wide_dot_f32(&xf, &yf)).abs() < 1e-2 * n as f64);
        row(
            "sum f64",
            n,
            8 * n,
            time(|| dispatch(Sum(black_box(&x[..])))),
            time(|| Sum(black_box(&x[..])).run::<Unfused>()),
            time(|| wide_sum_f64(black_box(&x))),
        );
        row(
            "dot f64",
            n,
            16 * n,
            time(|| dispatch(Dot(black_box(&x[..]), black_box(&y[..])))),
            time(|| Dot(black_box(&x[..]), black_box(&y[..])).run::<Unfused>()),
            time(|| wide_dot_f64(black_box(&x), black_box(&y))),
        );
        row(
            "sum f32",
            n,
            4 * n,
            time(|| dispatch(Sum(black_box(&xf[..])))),
            time(|| Sum(black_box(&xf[..])).run::<Unfused>()),
            time(|| wide_sum_f32(black_box(&xf))),
        );
        row(
            "dot f32",
            n,
            8 * n,
            time(|| dispatch(Dot(black_box(&xf[..]), black_box(&yf[..])))),
            time(|| Dot(black_box(&xf[..]), black_box(&yf[..])).run::<Unfused>()),
            time(|| wide_dot_f32(black_box(&xf), black_box(&yf))),
        );
    }
}
