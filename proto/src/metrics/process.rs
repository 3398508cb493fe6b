//! The standard `process_*` series (as every official Prometheus client exports them), read from
//! `/proc/self` at scrape time. `prometheus-client` ships no process collector, and these few
//! files are all it takes on Linux.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/*/stat`: `USER_HZ`, fixed at 100 in the kernel's user ABI
/// (Prometheus's own procfs reader assumes the same).
const USER_HZ: f64 = 100.0;

/// What the collector reads; every figure optional, so a missing file drops its series only.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

/// Parses `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses, so the
/// fields are counted from its closing parenthesis.
fn parse_stat(stat: &str, boot_time: Option<f64>) -> Figures {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Figures::default();
    };
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu = match (field(14), field(15)) {
        (Some(utime), Some(stime)) => Some((utime + stime) / USER_HZ),
        _ => None,
    };
    Figures {
        cpu_seconds: cpu,
        threads: field(20),
        start_time_seconds: boot_time.zip(field(22)).map(|(boot, ticks)| boot + ticks / USER_HZ),
        virtual_bytes: field(23),
        ..Figures::default()
    }
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Resident memory from `VmRSS` (in kB) in `/proc/self/status`: no page size to look up.
fn resident_bytes(status: &str) -> Option<f64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?;
    kb.parse::<f64>().ok().map(|kb| kb * 1024.0)
}

fn read() -> Figures {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Figures::default();
    };
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let mut figures = parse_stat(&stat, boot);
    figures.resident_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| resident_bytes(&s));
    figures.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    figures.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| max_fds(&s));
    figures
}

/// Reads `/proc/self` on every scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = read();
        if let Some(v) = f.cpu_seconds {
            let counter = ConstCounter::new(v);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", f.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", f.virtual_bytes),
            ("process_threads", "Number of OS threads in the process.", f.threads),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                f.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors.", f.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", f.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces() {
        // A real line's shape, with a hostile command name.
        let stat = "4242 (kiln (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let f = parse_stat(stat, Some(1_700_000_000.0));
        assert_eq!(f.cpu_seconds, Some(3.0));
        assert_eq!(f.threads, Some(7.0));
        assert_eq!(f.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(f.virtual_bytes, Some(104_857_600.0));
    }

    #[test]
    fn memory_boot_time_and_fd_limit_are_read_from_their_files() {
        assert_eq!(resident_bytes("Name:\tkiln\nVmRSS:\t   2048 kB\n"), Some(2_097_152.0));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_fds(limits), Some(1024.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_its_own_memory_and_descriptors() {
        let f = read();
        assert!(f.resident_bytes.is_some_and(|b| b > 1_000_000.0), "{f:?}");
        assert!(f.open_fds.is_some_and(|n| n >= 3.0), "{f:?}");
        assert!(f.cpu_seconds.is_some(), "{f:?}");
        assert!(f.start_time_seconds.is_some_and(|t| t > 1_600_000_000.0), "{f:?}");
    }
}
