//! A snapshot of the machine and of this process, read with `sysinfo`.
//!
//! [`snapshot`] samples CPU, load, memory, mounted file systems, network counters, this process and the GPUs the
//! backend sees. Two of its numbers are rates over time: the machine's `cpu_percent` and the process's
//! `cpu_percent`. They come from a process-wide sampler that keeps the previous sample, so each snapshot reports the
//! usage *since the previous snapshot* (psutil's `cpu_percent(interval=None)`): the first snapshot of a process
//! reports the machine's usage since boot and 0.0 for the process. Snapshots taken concurrently are serialized by
//! the sampler's lock.
//!
//! On Linux the process's numbers (one read of `/proc/self/stat`) and the network counters (one read of
//! `/proc/net/dev`) are read directly: sysinfo would scan every process of `/proc` to refresh one, and read several
//! sysfs files per interface. Everything else, and all of it on other platforms, comes from `sysinfo`.
//!
//! Submodules: [`node`], the node_exporter-compatible Prometheus series; [`monitor`], the background sampler.

pub mod monitor;
pub mod node;

use crate::sync::MutexExt;
use std::sync::{LazyLock, Mutex};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, System};
#[cfg(not(target_os = "linux"))]
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate};

/// Memory of the machine in bytes; `used = total - available`, `percent = used / total * 100`.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub used: u64,
    pub percent: f64,
}

/// A mounted file system: `free` is the space an unprivileged user may still use (`statvfs`'s `f_bavail`), and
/// `percent = (total - free) / total * 100` (so space reserved for root counts as used).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskUsage {
    pub mount: String,
    pub total: u64,
    pub free: u64,
    pub percent: f64,
}

/// Counters summed over every network interface (loopback included), since boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
}

/// This process: resident memory in bytes, CPU percent since the previous snapshot (100 = one core busy; may
/// exceed 100 with several threads), number of threads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub rss: u64,
    pub cpu_percent: f64,
    pub threads: usize,
}

/// A GPU the backend sees; `memory_used` and `utilization` are not known without NVML (None).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStats {
    pub name: String,
    pub memory_total: u64,
    pub memory_used: Option<u64>,
    pub utilization: Option<f64>,
}

/// One snapshot of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// CPU usage of the whole machine since the previous snapshot, 0..=100.
    pub cpu_percent: f64,
    /// Logical CPUs.
    pub cpu_count: usize,
    /// The 1, 5 and 15 minute load averages (0.0 where the platform has none).
    pub load_avg: (f64, f64, f64),
    pub memory: Memory,
    pub disks: Vec<DiskUsage>,
    pub network: Network,
    pub process: ProcessStats,
    pub gpus: Vec<GpuStats>,
}

struct Sampler {
    sys: System,
    disks: Disks,
    networks: Networks,
    /// The process's CPU seconds and when they were read, at the previous snapshot (Linux).
    prev_proc: Option<(f64, std::time::Instant)>,
}

static SAMPLER: LazyLock<Mutex<Sampler>> = LazyLock::new(|| {
    Mutex::new(Sampler {
        sys: System::new(),
        disks: Disks::new(),
        networks: Networks::new(),
        prev_proc: None,
    })
});

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64 * 100.0
    }
}

/// This process's CPU time (seconds), resident bytes and threads from one read of `/proc/self/stat`.
#[cfg(target_os = "linux")]
fn proc_self_stat() -> Option<(f64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the command name (field 2) is in parentheses and may contain spaces: split after the last ')'
    let rest = stat.rsplit_once(')')?.1;
    // fields after ')' start at field 3 (state): utime 14, stime 15, num_threads 20, rss 24 (pages)
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ticks = (num(14)? + num(15)?) as f64;
    let cpu = if tck > 0 { ticks / tck as f64 } else { 0.0 };
    Some((cpu, num(24)? * page.max(0) as u64, num(20)? as usize))
}

/// Counters of `/proc/net/dev` summed over its interfaces (one read instead of sysfs files per interface).
#[cfg(target_os = "linux")]
fn proc_net_dev() -> Option<Network> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    let mut n = Network::default();
    for line in text.lines().skip(2) {
        let Some((_, counters)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = counters
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() >= 10 {
            // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets ...
            n.bytes_recv += v[0];
            n.packets_recv += v[1];
            n.bytes_sent += v[8];
            n.packets_sent += v[9];
        }
    }
    Some(n)
}

fn sum_networks(networks: &Networks) -> Network {
    let mut net = Network::default();
    for data in networks.list().values() {
        net.bytes_sent += data.total_transmitted();
        net.bytes_recv += data.total_received();
        net.packets_sent += data.total_packets_transmitted();
        net.packets_recv += data.total_packets_received();
    }
    net
}

/// Samples the machine (see the module docs for the CPU percentages). Never fails: a part the platform cannot
/// read is zero or empty.
pub fn snapshot() -> Snapshot {
    let mut s = SAMPLER.locked();
    let Sampler {
        sys,
        disks,
        networks,
        prev_proc,
    } = &mut *s;

    sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    // the machine's own parts are read directly on Linux: sysinfo would scan all of /proc for one process and read
    // several sysfs files per network interface
    #[cfg(target_os = "linux")]
    let (process, network) = {
        let process = match proc_self_stat() {
            Some((cpu, rss, threads)) => {
                let now = std::time::Instant::now();
                let pct = match prev_proc.replace((cpu, now)) {
                    Some((c0, t0)) => {
                        let dt = now.duration_since(t0).as_secs_f64();
                        if dt > 0.0 {
                            ((cpu - c0) / dt * 100.0).max(0.0)
                        } else {
                            0.0
                        }
                    }
                    None => 0.0,
                };
                ProcessStats {
                    rss,
                    cpu_percent: pct,
                    threads,
                }
            }
            None => ProcessStats::default(),
        };
        let network = proc_net_dev().unwrap_or_else(|| {
            networks.refresh(true);
            sum_networks(networks)
        });
        (process, network)
    };
    #[cfg(not(target_os = "linux"))]
    let (process, network) = {
        let _ = prev_proc;
        let pid = Pid::from_u32(std::process::id());
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu()
                .with_tasks(),
        );
        networks.refresh(true);
        let process = sys.process(pid).map_or_else(ProcessStats::default, |p| {
            let cpu = f64::from(p.cpu_usage());
            ProcessStats {
                rss: p.memory(),
                cpu_percent: if cpu.is_finite() { cpu } else { 0.0 },
                threads: p.tasks().map_or(1, |t| t.len().max(1)),
            }
        });
        (process, sum_networks(networks))
    };
    // the mount list is read every time (file systems come and go), only the space of each is asked for
    disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());

    let load = System::load_average();
    let total = sys.total_memory();
    let available = sys.available_memory().min(total);
    let used = total - available;

    let mut disk_list = Vec::with_capacity(disks.list().len());
    for d in disks.list() {
        let total = d.total_space();
        let free = d.available_space().min(total);
        let mount = d.mount_point().to_string_lossy().into_owned();
        if disk_list.iter().any(|x: &DiskUsage| x.mount == mount) {
            continue; // a mount point listed twice (bind mounts): the first one is the visible one
        }
        disk_list.push(DiskUsage {
            mount,
            total,
            free,
            percent: percent(total - free, total),
        });
    }

    let gpus = match crate::gpu::status() {
        Ok(g) => g
            .devices
            .iter()
            .map(|d| GpuStats {
                name: d.name.clone(),
                memory_total: d.total_memory,
                memory_used: None,
                utilization: None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };

    let cpu_percent = f64::from(sys.global_cpu_usage()).clamp(0.0, 100.0);
    Snapshot {
        cpu_percent: if cpu_percent.is_finite() {
            cpu_percent
        } else {
            0.0
        },
        cpu_count: sys.cpus().len().max(1),
        load_avg: (load.one, load.five, load.fifteen),
        memory: Memory {
            total,
            available,
            used,
            percent: percent(used, total),
        },
        disks: disk_list,
        network,
        process,
        gpus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_consistent() {
        let a = snapshot();
        let b = snapshot();
        assert!(a.cpu_count >= 1);
        assert!(a.memory.total > 0 && a.memory.used <= a.memory.total);
        assert!((0.0..=100.0).contains(&a.memory.percent));
        assert!((0.0..=100.0).contains(&b.cpu_percent));
        assert!(b.process.rss > 0 && b.process.threads >= 1);
        assert!(b.network.bytes_recv >= a.network.bytes_recv);
        for d in &b.disks {
            assert!(
                d.free <= d.total && (0.0..=100.0).contains(&d.percent),
                "{d:?}"
            );
        }
    }
}
