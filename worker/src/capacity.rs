//! What this machine can take on: cores, memory, slots and a relative speed, reported in `Hello`
//! so the scheduler can size leases to what each worker finishes.
//!
//! Slots default to the physical cores (hyperthreads share an FPU and do little for DSP), capped by
//! what the process may use (a container's CPU quota). Speed is a quick measurement of one core on
//! a fixed, renderer-like workload (a biquad filter over a buffer), relative to a reference core:
//! 1.0 means "as fast as the reference", 0.5 half as fast. It takes a few tens of milliseconds.

use std::time::{Duration, Instant};

use sysinfo::{MemoryRefreshKind, System};

#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub hostname: String,
    /// Physical cores of the machine (or logical CPUs when unknown).
    pub cores: u32,
    /// Memory this process may use: the cgroup limit if there is one, else total RAM.
    pub memory_bytes: u64,
    pub slots: usize,
}

impl Capacity {
    /// Reads the machine. `slots` overrides the default of one slot per usable physical core.
    pub fn detect(slots: Option<usize>) -> Self {
        let usable = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let physical = System::physical_core_count().unwrap_or(usable).max(1);
        let mut sys = System::new();
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = sys.total_memory();
        let memory_bytes = match sys.cgroup_limits() {
            Some(limits) if limits.total_memory > 0 && limits.total_memory < total => limits.total_memory,
            _ => total,
        };
        Self {
            hostname: System::host_name().unwrap_or_default(),
            cores: u32::try_from(physical).unwrap_or(u32::MAX),
            memory_bytes,
            slots: slots.unwrap_or_else(|| physical.min(usable)).max(1),
        }
    }
}

/// Samples filtered per measurement round.
const SAMPLES: usize = 1 << 20;
/// How long the reference core takes for one round (an optimised build on a 2.0 GHz 2012 Xeon).
const REFERENCE: Duration = Duration::from_millis(4);

/// One round of the workload: a direct-form biquad over a synthetic signal. Returns a value that
/// depends on every sample, so nothing can be optimised away.
fn workload(samples: usize) -> f32 {
    let (b0, b1, b2, a1, a2) = (0.2929_f32, 0.5858, 0.2929, -0.0, 0.1716);
    let (mut x1, mut x2, mut y1, mut y2) = (0.0_f32, 0.0, 0.0, 0.0);
    let mut acc = 0.0_f32;
    let mut phase = 0.0_f32;
    for _ in 0..samples {
        phase += 0.013;
        if phase > 1.0 {
            phase -= 2.0;
        }
        let x = std::hint::black_box(phase);
        let y = b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
        (x2, x1, y2, y1) = (x1, x, y1, y);
        acc += y.abs();
    }
    acc
}

/// Measures this core's speed relative to the reference: the best of a few short rounds, so a
/// moment of contention does not count. Blocking; run it off the async runtime.
pub fn measure_speed() -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(workload(SAMPLES));
        best = best.min(t.elapsed());
    }
    let secs = best.as_secs_f64().max(1e-6);
    (REFERENCE.as_secs_f64() / secs).clamp(0.01, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_sane() {
        let c = Capacity::detect(None);
        assert!(c.slots >= 1 && c.cores >= 1);
        assert!(c.memory_bytes > 0);
        assert_eq!(Capacity::detect(Some(3)).slots, 3);
        let speed = measure_speed();
        assert!(speed > 0.0 && speed.is_finite(), "{speed}");
    }
}
