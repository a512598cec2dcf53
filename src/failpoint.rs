//! Fault injection at named points, for the guest tests and the torture
//! campaign: moments too narrow to hit by timing (between the two members'
//! records, half-way through a superblock copy, between recording the array
//! whole and `can_clear=true`).
//!
//! One failpoint per process, from the environment:
//! `MDEXT_FAILPOINT=[PROGRAM/]NAME[:N[:ACTION]]`. The `N`th time (default 1)
//! the process passes `NAME`, it performs `ACTION`:
//! - `abort` (default): die at once, as SIGKILL would leave things;
//! - `crash`: reboot the machine at once (`b` to `/proc/sysrq-trigger`: a
//!   power cut; what the page cache held is lost, what reached the disks
//!   stays), after one line to `/dev/kmsg` so the console shows the moment.
//!
//! `PROGRAM` limits the failpoint to the executable of that name
//! (`mdextmon` or `mdextctl`): mdextctl passes its environment to the
//! mdextmon it starts.
//!
//! The points: `sb-write-before`, `sb-write-torn` (the first half of the
//! copy written and flushed, then the action), `sb-write-after` (the copy
//! written and flushed), all counted over every superblock write of the
//! process; `before-can-clear-true`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the failpoint.
pub const ENV: &str = "MDEXT_FAILPOINT";

/// What a failpoint does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Die at once (`abort`), as SIGKILL would.
    Abort,
    /// Reboot the machine at once (sysrq `b`).
    Crash,
}

/// A parsed `MDEXT_FAILPOINT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Only in the executable of this name.
    pub program: Option<String>,
    /// The point.
    pub name: String,
    /// Fires on this pass (1-based).
    pub nth: u64,
    /// What it does.
    pub action: Action,
}

/// Parse `[PROGRAM/]NAME[:N[:ACTION]]`; None when malformed (a failpoint
/// nobody can mean never fires).
pub fn parse(s: &str) -> Option<Spec> {
    let (program, rest) = match s.split_once('/') {
        Some((p, r)) if !p.is_empty() => (Some(p.to_string()), r),
        Some(_) => return None,
        None => (None, s),
    };
    let mut parts = rest.split(':');
    let name = parts.next().filter(|n| !n.is_empty())?.to_string();
    let nth = match parts.next() {
        Some(n) => n.parse::<u64>().ok().filter(|&n| n > 0)?,
        None => 1,
    };
    let action = match parts.next() {
        None | Some("abort") => Action::Abort,
        Some("crash") => Action::Crash,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Spec {
        program,
        name,
        nth,
        action,
    })
}

fn active() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let spec = parse(&std::env::var(ENV).ok()?)?;
        if let Some(p) = &spec.program {
            let exe = std::env::current_exe().ok()?;
            if exe.file_name()?.to_str()? != p {
                return None;
            }
        }
        Some(spec)
    })
    .as_ref()
}

/// Count a pass through `name`; the action to perform when this pass is the
/// one the failpoint names.
pub fn hit(name: &str) -> Option<Action> {
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let spec = active().filter(|s| s.name == name)?;
    let n = PASSES.fetch_add(1, Ordering::SeqCst) + 1;
    (n == spec.nth).then_some(spec.action)
}

/// Pass through `name`: perform the action if this pass fires it.
pub fn point(name: &str) {
    if let Some(a) = hit(name) {
        perform(name, a);
    }
}

/// Perform `action` for the failpoint `name`. Never returns.
pub fn perform(name: &str, action: Action) -> ! {
    let what = match action {
        Action::Abort => "abort",
        Action::Crash => "crash",
    };
    let line = format!("mdext failpoint {name}: {what}\n");
    // Best effort: the console line (level 2, above a quiet console's
    // threshold), then the deed.
    let _ = std::fs::write("/dev/kmsg", format!("<2>{line}"));
    eprint!("{line}");
    if action == Action::Crash {
        let _ = std::fs::write("/proc/sysrq-trigger", "b");
        // sysrq b does not return; if it was refused, die all the same.
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        assert_eq!(
            parse("before-can-clear-true"),
            Some(Spec {
                program: None,
                name: "before-can-clear-true".into(),
                nth: 1,
                action: Action::Abort
            })
        );
        assert_eq!(
            parse("mdextmon/sb-write-torn:3:crash"),
            Some(Spec {
                program: Some("mdextmon".into()),
                name: "sb-write-torn".into(),
                nth: 3,
                action: Action::Crash
            })
        );
        assert_eq!(parse("sb-write-after:2").map(|s| s.nth), Some(2));
        for bad in ["", "/x", "x:0", "x:y", "x:1:boom", "x:1:crash:more", ":1"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
