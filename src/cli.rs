//! What both binaries share as command-line programs: one-line error
//! messages, stderr lines for the journal or a terminal, and the end of
//! the program when the reader of its output has gone away.

use std::error::Error;
use std::fmt;
use std::io::{self, Write};

/// An error and its causes on one line, each cause once.
///
/// The library's errors follow two conventions at once: most put their
/// cause in their own message (`"{path}: {source}"`) *and* return it from
/// `source()`. Printing the whole chain (anyhow's `{:#}`) would then say
/// every cause twice; printing only the top would lose the causes of an
/// error that does not repeat them (an anyhow `context`). So a cause is
/// appended only if the text so far does not already say it. Line breaks
/// inside a message become "; ".
pub fn error_line(e: &(dyn Error + 'static)) -> String {
    let mut line = one_line(&e.to_string());
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = one_line(&c.to_string());
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether standard error is connected to the systemd journal: systemd
/// sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr is a journal
/// stream. The variable is inherited by children whose stderr may go
/// elsewhere (mdextctl started from a unit redirects mdextmon's stderr to a
/// file), so, as systemd.exec(5) advises, it counts only if stderr is that
/// very stream.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// One line for stderr from `program` at `level`. To the journal: the
/// sd-daemon(3) priority prefix (`<3>mdextmon: ...`), which journald turns
/// into the entry's priority. Elsewhere (a terminal, a log file): the level
/// in words, except for plain information (`mdextmon: error: ...`,
/// `mdextmon: managing ...`).
pub fn log_line(
    program: &str,
    level: log::Level,
    journal: bool,
    msg: fmt::Arguments<'_>,
) -> String {
    if journal {
        let prio = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        return format!("<{prio}>{program}: {msg}");
    }
    let word = match level {
        log::Level::Error => "error: ",
        log::Level::Warn => "warning: ",
        log::Level::Info => "",
        log::Level::Debug => "debug: ",
        log::Level::Trace => "trace: ",
    };
    format!("{program}: {word}{msg}")
}

/// Which standard stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Write to stdout or stderr. When the reader has gone away
/// (`mdextctl examine DEV | head -1`: EPIPE), the program ends as SIGPIPE
/// ends a C program, quietly, instead of std's panic in `println!`.
///
/// Rust ignores SIGPIPE and the programs keep it so: a write to mdextmon's
/// control socket whose peer has gone must fail with an error the caller
/// reports (and the daemon must never die of one). Another error on stdout
/// (`> /dev/full`) is reported on stderr and ends the program with status 1;
/// one on stderr has nowhere to be reported and is dropped.
pub fn write_or_die(to: Stream, args: fmt::Arguments<'_>) {
    let r = match to {
        Stream::Stdout => io::stdout().lock().write_fmt(args),
        Stream::Stderr => io::stderr().lock().write_fmt(args),
    };
    check_write(to, r);
}

/// Flush stdout at the end of the program, with [`write_or_die`]'s rules
/// (std flushes at exit too, but drops the error).
pub fn flush_or_die() {
    check_write(Stream::Stdout, io::stdout().lock().flush());
}

fn check_write(to: Stream, r: io::Result<()>) {
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) if to == Stream::Stdout => {
            let prog = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_default();
            let _ = writeln!(io::stderr(), "{prog}: writing to standard output: {e}");
            std::process::exit(1);
        }
        Err(_) => {}
    }
}

/// End the program as SIGPIPE's default action does: the shell sees the
/// same status as for `cat` in `cat big | head -1` (141), and `set -o
/// pipefail` scripts treat it alike.
pub fn die_of_sigpipe() -> ! {
    use nix::sys::signal::{raise, signal, SigHandler, SigSet, Signal};
    // SAFETY: installing SIG_DFL registers no handler code, so no
    // async-signal-safety requirement arises; the program is ending, so
    // nothing still relies on SIGPIPE being ignored.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    let _ = set.thread_unblock();
    let _ = raise(Signal::SIGPIPE);
    // Not reached unless SIGPIPE could not be delivered: the same status.
    std::process::exit(128 + Signal::SIGPIPE as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Repeats {
        path: &'static str,
        source: io::Error,
    }

    #[test]
    fn error_line_says_each_cause_once() {
        let e = anyhow::Error::new(Repeats {
            path: "/dev/sdz",
            source: io::Error::from_raw_os_error(nix::libc::ENOENT),
        });
        assert_eq!(
            error_line(e.as_ref()),
            "/dev/sdz: No such file or directory (os error 2)"
        );
        // A context that does not repeat its cause keeps it.
        let e = e.context("reading the bitmap");
        assert_eq!(
            error_line(e.as_ref()),
            "reading the bitmap: /dev/sdz: No such file or directory (os error 2)"
        );
        let e = anyhow::anyhow!("two\nlines");
        assert_eq!(error_line(e.as_ref()), "two; lines");
    }

    #[test]
    fn log_lines_for_journal_and_terminal() {
        let l = |lv, j| log_line("mdextmon", lv, j, format_args!("x: {}", 1));
        assert_eq!(l(log::Level::Error, true), "<3>mdextmon: x: 1");
        assert_eq!(l(log::Level::Warn, true), "<4>mdextmon: x: 1");
        assert_eq!(l(log::Level::Info, true), "<6>mdextmon: x: 1");
        assert_eq!(l(log::Level::Debug, true), "<7>mdextmon: x: 1");
        assert_eq!(l(log::Level::Error, false), "mdextmon: error: x: 1");
        assert_eq!(l(log::Level::Warn, false), "mdextmon: warning: x: 1");
        assert_eq!(l(log::Level::Info, false), "mdextmon: x: 1");
    }
}
