//! The native clock of the instrumentation seam and of the breaker: the CPU's time-stamp counter where it is
//! invariant (a read costs about 10 ns, a quarter of `clock_gettime`), scaled to nanoseconds by a calibration
//! against the monotonic clock; the monotonic clock itself elsewhere.
//!
//! The calibration measures the counter over a 2 ms sleep (the error is the clock reads' jitter over 2 ms:
//! about 1e-5 where reading the monotonic clock takes tens of nanoseconds, up to about 1e-3 where it takes a
//! microsecond, as with a `kvm-clock` or `hpet` clock source). A busy-loop calibration until the estimate settles (the `quanta` crate's, with a 200 ms limit)
//! reaches that limit on a virtual machine, and every process that imports ferrolab would pay it.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Time-stamp counter ticks to nanoseconds: `ticks * mult >> SHIFT`.
const SHIFT: u32 = 32;

/// A monotonic clock read as raw values, whose differences [`Clock::delta_as_nanos`] converts.
#[derive(Debug)]
pub struct Clock {
    /// `mult` of the counter, or `None`: the monotonic clock's nanoseconds since `epoch`.
    tsc: Option<u64>,
    epoch: Instant,
}

/// The process's clock, calibrated on first use.
pub static CLOCK: LazyLock<Clock> = LazyLock::new(Clock::new);

impl Clock {
    fn new() -> Clock {
        Clock {
            tsc: calibrate(),
            epoch: Instant::now(),
        }
    }

    /// The current raw reading.
    #[inline]
    pub fn raw(&self) -> u64 {
        match self.tsc {
            Some(_) => counter(),
            None => self.epoch.elapsed().as_nanos() as u64,
        }
    }

    /// Nanoseconds from raw reading `start` to raw reading `end` (0 if `end` is earlier).
    #[inline]
    pub fn delta_as_nanos(&self, start: u64, end: u64) -> u64 {
        let d = end.saturating_sub(start);
        match self.tsc {
            Some(mult) => ((d as u128 * mult as u128) >> SHIFT) as u64,
            None => d,
        }
    }
}

/// The counter's `mult`, or `None` without an invariant time-stamp counter (or an implausible measurement).
fn calibrate() -> Option<u64> {
    if !invariant_counter() {
        return None;
    }
    // a counter reading paired with a monotonic one: the counter read on both sides, retried when something
    // (an interrupt, a preemption) came between them
    let pair = || {
        let read = || {
            let (a, t, b) = (counter(), Instant::now(), counter());
            (b.wrapping_sub(a), t, a.wrapping_add(b.wrapping_sub(a) / 2))
        };
        let (_, t, c) = (1..5)
            .map(|_| read())
            .fold(read(), |best, r| if r.0 < best.0 { r } else { best });
        (t, c)
    };
    let (t0, c0) = pair();
    std::thread::sleep(Duration::from_millis(2));
    let (t1, c1) = pair();
    let ns = t1.duration_since(t0).as_nanos() as f64;
    let ticks = c1.checked_sub(c0)? as f64;
    let per_tick = ns / ticks;
    // a counter between 100 MHz and 100 GHz
    (ticks > 0.0 && (0.01..=10.0).contains(&per_tick))
        .then_some((per_tick * (1u64 << SHIFT) as f64) as u64)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn counter() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and only reads the counter
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn counter() -> u64 {
    0
}

/// CPUID leaf 0x8000_0007, EDX bit 8: the counter runs at a constant rate in every power state.
#[cfg(target_arch = "x86_64")]
fn invariant_counter() -> bool {
    use std::arch::x86_64::__cpuid;
    // the leaf exists when the highest extended leaf is at least 0x8000_0007
    __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_counter() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_agrees_with_the_monotonic_clock() {
        // within 1% + 0.1 ms over 50 ms in one of three tries (a preemption between the paired reads on a
        // loaded machine can spoil one try; a wrong scale spoils all three)
        let c = &*CLOCK;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (r0, t0) = (c.raw(), Instant::now());
            std::thread::sleep(Duration::from_millis(50));
            let (r1, t1) = (c.raw(), Instant::now());
            let ours = c.delta_as_nanos(r0, r1) as f64;
            let os = t1.duration_since(t0).as_nanos() as f64;
            if (ours - os).abs() < 0.01 * os + 100_000.0 {
                assert_eq!(c.delta_as_nanos(r1, r0), 0);
                return;
            }
            seen.push((ours, os));
        }
        panic!("the clock disagrees with the monotonic clock (ns, ours and the OS's): {seen:?}");
    }
}
