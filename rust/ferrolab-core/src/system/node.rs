//! node_exporter-compatible series of the machine, read natively at scrape time.
//!
//! [`register`] adds a collector to the process-wide registry ([`crate::telemetry::metrics::registry`]) that
//! exports, with the names, labels, units and types of Debian's `prometheus-node-exporter` (1.5):
//! `node_load1/5/15`, `node_cpu_seconds_total{cpu,mode}`, `node_memory_{MemTotal,MemAvailable,MemFree}_bytes`,
//! `node_filesystem_{size,avail,free}_bytes{device,fstype,mountpoint}`, `node_disk_io_time_seconds_total{device}`
//! and `node_network_{receive,transmit}_bytes_total{device}`. The names carry no prefix (they are node_exporter's).
//!
//! On Linux everything is read from `/proc` (`loadavg`, `stat`, `meminfo`, `diskstats`, `net/dev`, the mounts of
//! `/proc/1/mounts`) and `statvfs`, with node_exporter's default exclusions: the file systems of the mount points
//! matching Debian's default `--collector.filesystem.mount-points-exclude`
//! (`^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`) or whose type matches
//! `--collector.filesystem.fs-types-exclude` (pseudo file systems: proc, sysfs, cgroup, overlay, ...), and the
//! disks matching `--collector.diskstats.device-exclude` (`^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`:
//! partitions, RAM disks, loop devices), and the loopback interface (`--collector.netdev.device-exclude=^lo$`).
//! Elsewhere the load, memory, file systems and network come from `sysinfo`
//! (there is no per-CPU time there, so no `node_cpu_seconds_total`, and no disk I/O time).

use crate::error::{CoreError, Result};
use crate::sync::MutexExt;
use crate::telemetry::metrics;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// (name, help, type, label names) of every family, node_exporter's help texts included.
const FAMILIES: [(&str, &str, MetricType, &[&str]); 13] = [
    ("node_load1", "1m load average.", MetricType::GAUGE, &[]),
    ("node_load5", "5m load average.", MetricType::GAUGE, &[]),
    ("node_load15", "15m load average.", MetricType::GAUGE, &[]),
    (
        "node_cpu_seconds_total",
        "Seconds the CPUs spent in each mode.",
        MetricType::COUNTER,
        &["cpu", "mode"],
    ),
    (
        "node_memory_MemTotal_bytes",
        "Memory information field MemTotal_bytes.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "node_memory_MemAvailable_bytes",
        "Memory information field MemAvailable_bytes.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "node_memory_MemFree_bytes",
        "Memory information field MemFree_bytes.",
        MetricType::GAUGE,
        &[],
    ),
    (
        "node_filesystem_size_bytes",
        "Filesystem size in bytes.",
        MetricType::GAUGE,
        &["device", "fstype", "mountpoint"],
    ),
    (
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
        MetricType::GAUGE,
        &["device", "fstype", "mountpoint"],
    ),
    (
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes.",
        MetricType::GAUGE,
        &["device", "fstype", "mountpoint"],
    ),
    (
        "node_disk_io_time_seconds_total",
        "Total seconds spent doing I/Os.",
        MetricType::COUNTER,
        &["device"],
    ),
    (
        "node_network_receive_bytes_total",
        "Network device statistic receive_bytes.",
        MetricType::COUNTER,
        &["device"],
    ),
    (
        "node_network_transmit_bytes_total",
        "Network device statistic transmit_bytes.",
        MetricType::COUNTER,
        &["device"],
    ),
];

/// The CPU modes of `/proc/stat`'s columns, in order (guest time is counted in user time and not exported here).
pub const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// A mounted file system as node_exporter reports it, with its `statvfs` numbers in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSystem {
    pub device: String,
    pub fstype: String,
    pub mountpoint: String,
    pub size: u64,
    pub avail: u64,
    pub free: u64,
}

/// `(cpu index, seconds per mode in the order of [`CPU_MODES`])`.
pub type CpuTimes = (usize, [f64; 8]);

/// One read of everything the collector exports.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    pub load: (f64, f64, f64),
    pub cpus: Vec<CpuTimes>,
    pub mem_total: u64,
    pub mem_available: u64,
    pub mem_free: u64,
    pub filesystems: Vec<FileSystem>,
    /// `(device, seconds spent doing I/O)`.
    pub disks: Vec<(String, f64)>,
    /// `(device, received bytes, transmitted bytes)`.
    pub networks: Vec<(String, u64, u64)>,
}

// --- Linux readers ----------------------------------------------------------------------------------------------

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
#[cfg(target_os = "linux")]
pub fn loadavg() -> Option<(f64, f64, f64)> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

#[cfg(target_os = "linux")]
fn user_hz() -> f64 {
    // SAFETY: sysconf has no preconditions
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Seconds per CPU and mode from `/proc/stat`, and the machine's total over all CPUs (the `cpu` line) as
/// `(busy, total)` seconds.
#[cfg(target_os = "linux")]
pub fn cpu_times() -> Option<(Vec<CpuTimes>, (f64, f64))> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let hz = user_hz();
    let mut per = Vec::new();
    let mut all = (0.0, 0.0);
    for line in s.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            break; // the cpu lines come first
        };
        let aggregate = rest.starts_with(char::is_whitespace);
        let mut it = rest.split_whitespace();
        let id = if aggregate {
            None
        } else {
            match it.next().map(str::parse::<usize>) {
                Some(Ok(id)) => Some(id),
                _ => continue,
            }
        };
        let mut v = [0.0; 8];
        for (slot, x) in v.iter_mut().zip(it) {
            *slot = x.parse::<f64>().unwrap_or(0.0) / hz;
        }
        match id {
            Some(id) => per.push((id, v)),
            None => {
                let total: f64 = v.iter().sum();
                all = (total - v[3] - v[4], total);
            }
        }
    }
    Some((per, all))
}

/// `(MemTotal, MemAvailable, MemFree)` in bytes from `/proc/meminfo`.
#[cfg(target_os = "linux")]
pub fn meminfo() -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let (mut total, mut avail, mut free) = (None, None, None);
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let slot = match k {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut avail,
            "MemFree" => &mut free,
            _ => continue,
        };
        let mut f = v.split_whitespace();
        let n: u64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        *slot = Some(if f.next() == Some("kB") { n * 1024 } else { n });
        if total.is_some() && avail.is_some() && free.is_some() {
            break;
        }
    }
    Some((total?, avail.unwrap_or(0), free.unwrap_or(0)))
}

/// Whether a disk matches node_exporter's default `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`.
pub fn disk_excluded(name: &str) -> bool {
    let b = name.as_bytes();
    let digits_from = |i: usize| i < b.len() && b[i..].iter().all(u8::is_ascii_digit);
    for p in ["ram", "loop", "fd"] {
        if name.starts_with(p) && digits_from(p.len()) {
            return true;
        }
    }
    for p in ["hd", "sd", "vd", "xvd"] {
        if name.starts_with(p)
            && b.get(p.len()).is_some_and(u8::is_ascii_lowercase)
            && digits_from(p.len() + 1)
        {
            return true;
        }
    }
    if let Some(rest) = name.strip_prefix("nvme") {
        // \d+ n \d+ p \d+
        let r = rest.as_bytes();
        let mut i = 0;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < r.len() && r[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > s
        };
        if digits(&mut i) && r.get(i) == Some(&b'n') {
            i += 1;
            if digits(&mut i) && r.get(i) == Some(&b'p') {
                i += 1;
                let s = i;
                return digits(&mut i) && i == r.len() && i > s;
            }
        }
    }
    false
}

/// `(device, seconds spent doing I/O)` of the disks of `/proc/diskstats` node_exporter reports.
#[cfg(target_os = "linux")]
pub fn diskstats() -> Option<Vec<(String, f64)>> {
    let s = std::fs::read_to_string("/proc/diskstats").ok()?;
    let mut out = Vec::new();
    for line in s.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // major minor name, then reads ... ; field 13 (index 12) is the milliseconds spent doing I/O
        if f.len() < 13 || disk_excluded(f[2]) {
            continue;
        }
        out.push((
            f[2].to_string(),
            f[12].parse::<f64>().unwrap_or(0.0) / 1000.0,
        ));
    }
    Some(out)
}

/// `(device, received bytes, transmitted bytes)` per interface of `/proc/net/dev`.
#[cfg(target_os = "linux")]
pub fn net_dev() -> Option<Vec<(String, u64, u64)>> {
    let s = std::fs::read_to_string("/proc/net/dev").ok()?;
    let mut out = Vec::new();
    for line in s.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = counters
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() >= 9 {
            out.push((name.trim().to_string(), v[0], v[8]));
        }
    }
    Some(out)
}

/// Undoes the octal escapes (`\040` for a space, ...) of `/proc/*/mounts`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn unescape_mount(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether node_exporter (Debian's defaults) leaves out a mount point.
pub fn mount_excluded(mountpoint: &str, fstype: &str) -> bool {
    const FS: [&str; 24] = [
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "procfs",
        "pstore",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tracefs",
    ];
    if FS.contains(&fstype) {
        return true;
    }
    // ^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)
    let Some(rest) = mountpoint.strip_prefix('/') else {
        return false;
    };
    for p in ["dev", "proc", "run", "sys", "mnt", "media"] {
        if let Some(after) = rest.strip_prefix(p) {
            if after.is_empty() || after.starts_with('/') {
                return true;
            }
        }
    }
    for p in ["var/lib/docker/", "var/lib/containers/storage/"] {
        if let Some(after) = rest.strip_prefix(p) {
            // .+ then ($|/): anything non-empty
            if !after.is_empty() {
                return true;
            }
        }
    }
    false
}

/// The mounts node_exporter reports, `(device, mountpoint, fstype)`, from `/proc/1/mounts` (its source) or
/// `/proc/self/mounts`, deduplicated.
#[cfg(target_os = "linux")]
pub fn mounts() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string("/proc/1/mounts")
        .or_else(|_| std::fs::read_to_string("/proc/self/mounts"))
        .unwrap_or_default();
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let (dev, mp, fs) = (unescape_mount(f[0]), unescape_mount(f[1]), f[2].to_string());
        if mount_excluded(&mp, &fs) {
            continue;
        }
        let m = (dev, mp, fs);
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// `(size, avail, free)` in bytes of the file system mounted at `path`.
#[cfg(unix)]
pub fn statvfs(path: &str) -> Option<(u64, u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: `c` is a valid C string and `st` a writable statvfs the call fills in
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let bs = st.f_bsize as u64;
    Some((
        st.f_blocks as u64 * bs,
        st.f_bavail as u64 * bs,
        st.f_bfree as u64 * bs,
    ))
}

/// Reads everything [`register`]'s collector exports.
#[cfg(target_os = "linux")]
pub fn read() -> NodeStats {
    let (mem_total, mem_available, mem_free) = meminfo().unwrap_or_default();
    let filesystems = mounts()
        .into_iter()
        .filter_map(|(device, mountpoint, fstype)| {
            let (size, avail, free) = statvfs(&mountpoint)?;
            Some(FileSystem {
                device,
                fstype,
                mountpoint,
                size,
                avail,
                free,
            })
        })
        .collect();
    NodeStats {
        load: loadavg().unwrap_or_default(),
        cpus: cpu_times().map(|c| c.0).unwrap_or_default(),
        mem_total,
        mem_available,
        mem_free,
        filesystems,
        disks: diskstats().unwrap_or_default(),
        networks: net_dev().unwrap_or_default(),
    }
}

/// Reads everything [`register`]'s collector exports that `sysinfo` knows.
#[cfg(not(target_os = "linux"))]
pub fn read() -> NodeStats {
    use sysinfo::{Disks, MemoryRefreshKind, Networks, System};
    let mut sys = System::new();
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let l = System::load_average();
    let disks = Disks::new_with_refreshed_list();
    let nets = Networks::new_with_refreshed_list();
    NodeStats {
        load: (l.one, l.five, l.fifteen),
        cpus: Vec::new(),
        mem_total: sys.total_memory(),
        mem_available: sys.available_memory(),
        mem_free: sys.free_memory(),
        filesystems: disks
            .list()
            .iter()
            .map(|d| FileSystem {
                device: d.name().to_string_lossy().into_owned(),
                fstype: d.file_system().to_string_lossy().into_owned(),
                mountpoint: d.mount_point().to_string_lossy().into_owned(),
                size: d.total_space(),
                avail: d.available_space(),
                free: d.available_space(),
            })
            .collect(),
        disks: Vec::new(),
        networks: nets
            .list()
            .iter()
            .map(|(n, d)| (n.clone(), d.total_received(), d.total_transmitted()))
            .collect(),
    }
}

// --- the collector ----------------------------------------------------------------------------------------------

struct NodeCollector {
    descs: Vec<Desc>,
    /// One scrape at a time reads the machine (concurrent scrapes wait and read it again).
    lock: Mutex<()>,
}

fn metric(pairs: &[(&str, &str)], t: MetricType, v: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(
        pairs
            .iter()
            .map(|(k, v)| {
                let mut l = proto::LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    );
    if t == MetricType::COUNTER {
        let mut c = proto::Counter::default();
        c.set_value(v);
        m.set_counter(c);
    } else {
        let mut g = proto::Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    }
    m
}

impl NodeCollector {
    fn new() -> NodeCollector {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|s| s.to_string()).collect(),
                    HashMap::new(),
                )
                .expect("valid node_exporter series names")
            })
            .collect();
        NodeCollector {
            descs,
            lock: Mutex::new(()),
        }
    }
}

impl Collector for NodeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _g = self.lock.locked();
        let s = read();
        let mut by: Vec<Vec<proto::Metric>> = vec![Vec::new(); FAMILIES.len()];
        let g = MetricType::GAUGE;
        let c = MetricType::COUNTER;
        by[0].push(metric(&[], g, s.load.0));
        by[1].push(metric(&[], g, s.load.1));
        by[2].push(metric(&[], g, s.load.2));
        for (id, modes) in &s.cpus {
            let cpu = id.to_string();
            for (mode, v) in CPU_MODES.iter().zip(modes) {
                by[3].push(metric(&[("cpu", &cpu), ("mode", mode)], c, *v));
            }
        }
        if s.mem_total > 0 {
            by[4].push(metric(&[], g, s.mem_total as f64));
            by[5].push(metric(&[], g, s.mem_available as f64));
            by[6].push(metric(&[], g, s.mem_free as f64));
        }
        for f in &s.filesystems {
            let l = [
                ("device", f.device.as_str()),
                ("fstype", f.fstype.as_str()),
                ("mountpoint", f.mountpoint.as_str()),
            ];
            by[7].push(metric(&l, g, f.size as f64));
            by[8].push(metric(&l, g, f.avail as f64));
            by[9].push(metric(&l, g, f.free as f64));
        }
        for (d, secs) in &s.disks {
            by[10].push(metric(&[("device", d)], c, *secs));
        }
        // node_exporter's default --collector.netdev.device-exclude is ^lo$
        for (d, rx, tx) in s.networks.iter().filter(|n| n.0 != "lo") {
            by[11].push(metric(&[("device", d)], c, *rx as f64));
            by[12].push(metric(&[("device", d)], c, *tx as f64));
        }
        FAMILIES
            .iter()
            .zip(by)
            .filter(|(_, ms)| !ms.is_empty())
            .map(|((name, help, t, _), ms)| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(*t);
                mf.set_metric(ms);
                mf
            })
            .collect()
    }
}

static REGISTERED: AtomicBool = AtomicBool::new(false);
static REGISTER_LOCK: Mutex<()> = Mutex::new(());

/// Adds the node_exporter-compatible series to the process-wide registry. `Ok(true)` when they were added now,
/// `Ok(false)` when they already were (registering twice is a no-op); a value error when user metrics already use
/// one of their names.
pub fn register() -> Result<bool> {
    let _g = REGISTER_LOCK.locked();
    if REGISTERED.load(Ordering::Acquire) {
        return Ok(false);
    }
    metrics::registry()
        .register(Box::new(NodeCollector::new()))
        .map_err(|e| {
            CoreError::value(
                "register_metrics",
                "registry",
                format!("already has a metric named like a node_exporter series ({e})"),
            )
        })?;
    REGISTERED.store(true, Ordering::Release);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_follow_node_exporter() {
        for d in ["sda1", "vda2", "xvda1", "loop0", "ram3", "nvme0n1p2", "fd0"] {
            assert!(disk_excluded(d), "{d}");
        }
        for d in ["sda", "vda", "nvme0n1", "zram0", "dm-0", "md0", "sr0"] {
            assert!(!disk_excluded(d), "{d}");
        }
        assert!(mount_excluded("/proc", "proc"));
        assert!(mount_excluded("/dev/shm", "tmpfs"));
        assert!(mount_excluded("/mnt/x", "ext4"));
        assert!(mount_excluded("/var/lib/docker/overlay", "ext4"));
        assert!(!mount_excluded("/var/lib/docker", "ext4"));
        assert!(!mount_excluded("/", "ext4"));
        assert!(!mount_excluded("/devices", "ext4"));
        assert!(mount_excluded("/", "overlay"));
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    #[test]
    fn collector_exports_the_families() {
        register().unwrap();
        assert!(!register().unwrap());
        let text = metrics::exposition().unwrap();
        assert!(text.contains("# TYPE node_load1 gauge"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("# TYPE node_cpu_seconds_total counter"));
        assert!(text.contains("node_memory_MemTotal_bytes "));
    }
}
