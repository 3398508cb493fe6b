//! Real `kiln` processes for end-to-end tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
///
/// Chosen outside the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–
/// 60999 by default, often wider in containers): a node restarted on its old port must not find it
/// taken by some client's outgoing connection, which an ephemeral port can be at any time (binding
/// port 0 hands out ports from that very range).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let candidates = ports_outside(ephemeral_range());
    let span = candidates.iter().map(|(lo, hi)| hi - lo + 1).sum::<u32>();
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for _ in 0..span {
        let mut offset = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(13)) % span;
        let port = candidates
            .iter()
            .find_map(|(lo, hi)| {
                if offset <= hi - lo {
                    Some(lo + offset)
                } else {
                    offset -= hi - lo + 1;
                    None
                }
            })
            .unwrap_or(LOWEST_PORT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {candidates:?}")
}

/// Test ports start here: below are well-known services a developer may run.
const LOWEST_PORT: u32 = 10_000;

/// The kernel's ephemeral port range (Linux's default where it cannot be read).
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(str::parse::<u32>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// The ranges of ports from [`LOWEST_PORT`] up that lie outside `ephemeral`; when the ephemeral
/// range leaves nothing, 20000–31999 (restarts on a fixed port may then collide, rarely).
fn ports_outside((lo, hi): (u32, u32)) -> Vec<(u32, u32)> {
    let mut ranges = Vec::new();
    if lo > LOWEST_PORT + 1000 {
        ranges.push((LOWEST_PORT, lo - 1));
    }
    if hi + 1000 < 65_535 {
        ranges.push((hi.max(LOWEST_PORT - 1) + 1, 65_535));
    }
    if ranges.is_empty() {
        ranges.push((20_000, 31_999));
    }
    ranges
}

/// A long-running `kiln` child (scheduler or worker) whose output goes to a log file.
pub struct KilnProcess {
    pub name: String,
    binary: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl KilnProcess {
    pub fn start(name: &str, binary: &Path, args: &[&str], envs: &[(&str, &str)], log_dir: &Path) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            binary: binary.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let err = log.try_clone().unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", self.name, self.binary.display()));
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no flush, nothing.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the process stays alive with its sockets open but answers nothing, like a node
    /// behind a partition (or a long GC pause).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        if let Some(c) = &self.child {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
            unsafe {
                libc::kill(c.id() as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status, or `None` if it
    /// is still running (or was never started).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => return Some(status),
                Some(Ok(None)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KilnProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a short `kiln` command to completion.
pub fn run(binary: &Path, args: &[&str]) -> Output {
    Command::new(binary).args(args).output().unwrap_or_else(|e| panic!("cannot run kiln {args:?}: {e}"))
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after `timeout`. Tests wait
/// on processes this way instead of sleeping a fixed time.
pub fn wait_for(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    wait_for_or_explain(what, timeout, check, String::new);
}

/// [`wait_for`], and on a timeout the panic also carries `explain()`: the processes' logs, say,
/// so that a failure seen only in CI can be understood from its output.
pub fn wait_for_or_explain(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}\n{}", explain());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ports_avoid_the_ephemeral_range() {
        assert_eq!(ports_outside((32_768, 60_999)), vec![(10_000, 32_767), (61_000, 65_535)]);
        assert_eq!(ports_outside((1024, 65_000)), vec![(20_000, 31_999)]);
        assert_eq!(ports_outside((15_000, 65_535)), vec![(10_000, 14_999)]);
        let port = u32::from(free_port());
        let (lo, hi) = ephemeral_range();
        assert!(port < lo || port > hi || (lo <= 11_000 && hi + 1000 >= 65_535), "{port} in {lo}–{hi}");
    }
}
