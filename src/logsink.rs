//! mdextmon's stderr, written so that it never blocks the daemon.
//!
//! Under systemd, stderr is a stream socket to journald, and journald
//! writes its files to the root file system, which may sit on an array the
//! daemon manages. While md holds a write to that array until the daemon
//! records it dirty, journald can be stuck behind that very write; once the
//! socket's buffer fills, a blocking write of a log line would stop the one
//! process that can release it, and the machine hangs. So, when stderr is a
//! socket, each line is sent with `MSG_DONTWAIT`: a line that does not fit
//! now is dropped and counted, and the next line that goes out says how
//! many were lost. A line cut short (the buffer filled part-way) is ended
//! with a newline before anything else is written.
//!
//! On a terminal, a file or a pipe, a line is written as usual (nothing
//! of the kind can hold up the daemon's arrays; a pipe nobody reads is the
//! spawner's mistake).

use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use nix::sys::stat::{fstat, SFlag};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

/// What was lost since the last line that went out.
#[derive(Debug, Default)]
struct Lost {
    /// Lines dropped whole.
    dropped: u64,
    /// A line went out without its end: a newline is owed.
    cut: bool,
}

static LOST: Mutex<Lost> = Mutex::new(Lost {
    dropped: 0,
    cut: false,
});

/// Whether stderr is a socket (a journal stream).
fn stderr_is_socket() -> bool {
    fstat(io::stderr()).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK
    })
}

/// Send `buf` on the socket `fd` without blocking: how many bytes went.
/// `Ok(0)` when nothing fit.
fn send_some(fd: i32, buf: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < buf.len() {
        match send(
            fd,
            &buf[off..],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(off)
}

/// Write one log line (`line` without its newline) to stderr, never
/// blocking when stderr is a socket. Errors are dropped: a log line has
/// nowhere else to go.
pub fn write_line(line: &str) {
    let mut lost = LOST.lock().unwrap_or_else(|p| p.into_inner());
    if stderr_is_socket() {
        put(io::stderr().as_raw_fd(), &mut lost, line);
    } else {
        let _ = writeln!(io::stderr().lock(), "{line}");
    }
}

/// Send `line` and a newline on the socket `fd` without blocking, after
/// the newline owed by a cut line and the count of dropped lines, and
/// account in `lost` for what did not go.
fn put(fd: RawFd, lost: &mut Lost, line: &str) {
    let mut out = String::new();
    if lost.cut {
        out.push('\n');
    }
    if lost.dropped > 0 {
        // Same priority prefix as the line itself, if it has one.
        let prefix = line
            .strip_prefix('<')
            .and_then(|r| r.find('>').map(|i| &line[..i + 2]))
            .unwrap_or("");
        out.push_str(&format!(
            "{prefix}mdextmon: {} log line(s) dropped: stderr was full\n",
            lost.dropped
        ));
    }
    let owed = out.len();
    out.push_str(line);
    out.push('\n');
    let n = send_some(fd, out.as_bytes()).unwrap_or(0);
    if n == out.len() {
        *lost = Lost::default();
    } else if n > 0 {
        // Part went: the owed newline and the notice (`owed` bytes), then
        // maybe part of the line.
        lost.cut = out.as_bytes()[n - 1] != b'\n';
        lost.dropped = match n.cmp(&owed) {
            std::cmp::Ordering::Greater => 0,
            std::cmp::Ordering::Equal => 1,
            std::cmp::Ordering::Less => lost.dropped + 1,
        };
    } else {
        lost.dropped += 1;
    }
}

/// A [`Write`] for `env_logger`'s pipe target: each formatted record goes
/// through [`write_line`].
#[derive(Debug, Default)]
pub struct Stderr {
    buf: Vec<u8>,
}

impl Write for Stderr {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        while let Some(nl) = self.buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            write_line(String::from_utf8_lossy(&line[..nl]).as_ref());
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            write_line(String::from_utf8_lossy(&line).as_ref());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn drain(r: &mut UnixStream) -> String {
        r.set_nonblocking(true).expect("nonblocking");
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        String::from_utf8(all).expect("utf-8")
    }

    #[test]
    fn a_full_socket_drops_lines_without_blocking_and_says_so() {
        let (w, mut r) = UnixStream::pair().expect("pair");
        let mut lost = Lost::default();
        let line = format!("<6>mdextmon: {}", "x".repeat(1000));
        // Nobody reads: this would block forever with a plain write.
        let mut sent = 0;
        while lost.dropped < 3 {
            put(w.as_raw_fd(), &mut lost, &line);
            sent += 1;
            assert!(sent < 100_000, "the socket never filled");
        }
        let first = drain(&mut r);
        put(w.as_raw_fd(), &mut lost, "<4>mdextmon: after");
        let then = drain(&mut r);
        assert_eq!(lost.dropped, 0);
        assert!(!lost.cut);
        let all = first + &then;
        // Every line is whole: either the logged line, or the notice, or
        // the last one; a line cut short ends where the newline is owed.
        let lines: Vec<&str> = all.lines().collect();
        let notice = lines
            .iter()
            .find(|l| l.contains("dropped"))
            .expect("a notice of the dropped lines");
        assert!(notice.starts_with("<4>mdextmon: "), "{notice}");
        let n: u64 = notice["<4>mdextmon: ".len()..]
            .split(' ')
            .next()
            .and_then(|x| x.parse().ok())
            .expect("a count");
        assert!(n >= 3, "{notice}");
        assert_eq!(lines.last(), Some(&"<4>mdextmon: after"));
        let whole = lines.iter().filter(|l| **l == line).count();
        assert!(
            whole as u64 + n + 1 >= sent as u64 - 1,
            "{whole} whole, {n} dropped of {sent}"
        );
    }
}
