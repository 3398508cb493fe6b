//! Failpoints: named steps of the storage code where a test can cut the power or fill the disk.
//!
//! Crash tests need a process that dies *between* two writes — after the snapshot is renamed but
//! before the commit index reaches the disk, say — without the destructors that a panic or a
//! graceful stop would run (sled flushes on drop, which would hide exactly the window under test).
//! Each step calls [`hit`] with its name; the `KILN_FAILPOINTS` environment variable arms some:
//!
//! ```text
//! KILN_FAILPOINTS=snapshot-after-rename:abort,append-before-write:enospc@3
//! ```
//!
//! `name:action[@n]` fires on the n-th time the step is reached (default the first), once.
//! Actions: `abort` (`std::process::abort()`: like SIGKILL, nothing is flushed), `enospc` and
//! `eio` (the step fails with that I/O error, as a full or failing disk would make it).
//!
//! Unset, the cost of a step is one load of an initialised `OnceLock` and an empty-slice check.
//! The `fail` crate was considered: it has no abort action (its panic unwinds and runs the very
//! destructors a power cut does not) and must be compiled in with a feature, while these tests
//! drive the `kiln` binary users run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV: &str = "KILN_FAILPOINTS";

/// Every step a failpoint can be armed at, so a typo in `KILN_FAILPOINTS` is refused, not ignored.
pub const STEPS: &[&str] = &[
    // A snapshot this node takes (then compacts its log to it).
    "snapshot-before-write",
    "snapshot-after-write",
    "snapshot-after-fsync",
    "snapshot-after-rename",
    "snapshot-after-compaction",
    // A snapshot received from the leader, installed in place of the log.
    "install-before-write",
    "install-after-rename",
    "install-after-log-clear",
    // New log entries and the hard state.
    "append-before-write",
    "append-after-write",
    "append-after-sync",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Fail(i32),
}

struct Armed {
    step: &'static str,
    action: Action,
    /// Fires when the step is reached for the `at`-th time.
    at: u64,
    reached: AtomicU64,
}

static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();

/// Why `KILN_FAILPOINTS` was refused.
#[derive(Debug, thiserror::Error)]
#[error("{ENV}: {0}")]
pub struct ParseError(String);

fn parse(spec: &str) -> Result<Vec<Armed>, ParseError> {
    let mut armed = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, rest) = item.split_once(':').ok_or_else(|| ParseError(format!("`{item}` is not step:action")))?;
        let step = STEPS
            .iter()
            .find(|s| **s == name)
            .ok_or_else(|| ParseError(format!("unknown step `{name}` (known: {})", STEPS.join(", "))))?;
        let (action, at) = match rest.split_once('@') {
            Some((a, n)) => (a, n.parse().map_err(|_| ParseError(format!("`{n}` in `{item}` is not a count")))?),
            None => (rest, 1),
        };
        let action = match action {
            "abort" => Action::Abort,
            "enospc" => Action::Fail(ENOSPC),
            "eio" => Action::Fail(EIO),
            other => return Err(ParseError(format!("unknown action `{other}` (abort, enospc or eio)"))),
        };
        armed.push(Armed { step, action, at: u64::max(at, 1), reached: AtomicU64::new(0) });
    }
    Ok(armed)
}

// Linux errno values (the crash tests run on Linux; elsewhere only the injected error's wording
// would differ).
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// Reads `KILN_FAILPOINTS` once, at start-up. Called by [`crate::start`]; steps reached without it
/// (unit tests, simulations) are all off.
pub fn init_from_env() -> Result<(), ParseError> {
    let spec = std::env::var(ENV).unwrap_or_default();
    let armed = parse(&spec)?;
    if !armed.is_empty() {
        let list: Vec<String> = armed.iter().map(|a| format!("{}@{}", a.step, a.at)).collect();
        tracing::warn!(failpoints = %list.join(","), "failpoints armed: this process will fail on purpose");
    }
    let _ = ARMED.set(armed);
    Ok(())
}

/// Marks that `step` is reached. An armed `abort` ends the process here; an armed error is
/// returned for the caller to report as it would the real one.
#[inline]
pub fn hit(step: &'static str) -> std::io::Result<()> {
    let Some(armed) = ARMED.get() else { return Ok(()) };
    if armed.is_empty() {
        return Ok(());
    }
    fire(armed, step)
}

#[cold]
fn fire(armed: &[Armed], step: &'static str) -> std::io::Result<()> {
    for a in armed.iter().filter(|a| a.step == step) {
        if a.reached.fetch_add(1, Ordering::Relaxed) + 1 != a.at {
            continue;
        }
        match a.action {
            Action::Abort => {
                eprintln!("failpoint {step}: aborting the process");
                std::process::abort();
            }
            Action::Fail(errno) => {
                tracing::warn!(step, errno, "failpoint: injecting an I/O error");
                return Err(std::io::Error::from_raw_os_error(errno));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_known_steps_actions_and_counts() {
        let armed = parse(" snapshot-after-rename:abort , append-before-write:enospc@3,").expect("parse");
        assert_eq!(armed.len(), 2);
        assert_eq!((armed[0].step, armed[0].action, armed[0].at), ("snapshot-after-rename", Action::Abort, 1));
        assert_eq!((armed[1].step, armed[1].action, armed[1].at), ("append-before-write", Action::Fail(28), 3));
        assert!(parse("").expect("empty").is_empty());
    }

    #[test]
    fn a_typo_in_the_spec_is_refused() {
        for bad in ["snapshot-after-renam:abort", "append-after-write", "append-after-write:explode", "x:abort@many"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_error_fires_once_on_the_nth_hit() {
        let armed = parse("append-after-sync:enospc@2").expect("parse");
        assert!(fire(&armed, "append-after-sync").is_ok());
        let err = fire(&armed, "append-after-sync").expect_err("second hit fails");
        assert_eq!(err.raw_os_error(), Some(28));
        assert!(fire(&armed, "append-after-sync").is_ok(), "fires once");
        assert!(fire(&armed, "append-before-write").is_ok(), "other steps are untouched");
    }
}
