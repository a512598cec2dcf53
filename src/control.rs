//! The control socket between `mdextctl` and `mdextmon`.
//!
//! A Unix stream socket in `/run/mdext/` (mode 0600, root only; every peer is
//! checked with `SO_PEERCRED`), speaking JSON lines: one [`Request`] per line,
//! one [`Response`] line back. A malformed line gets an error response naming
//! the problem, and changes nothing.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default directory for the socket and the pid file.
pub const RUN_DIR: &str = "/run/mdext";
/// Socket file name.
pub const SOCKET_NAME: &str = "mdextmon.sock";
/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// The socket path under a run directory.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// A request from mdextctl.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Is the daemon alive? Answers with its version and pid.
    Ping,
    /// Take over the running md device `md` (e.g. `md127`).
    Manage {
        /// md device name.
        md: String,
        /// Leave it read-only (otherwise a read-only array is made writable).
        #[serde(default)]
        readonly: bool,
    },
    /// Stop managing `md` (it stays running; metadata left clean if possible).
    Release {
        /// md device name.
        md: String,
    },
    /// Mark `md` clean and stop it.
    Stop {
        /// md device name.
        md: String,
    },
    /// Every managed array's state.
    Status,
    /// One array's state.
    Detail {
        /// md device name.
        md: String,
    },
    /// Fail a member (`device` is a path or kernel name).
    Fail {
        /// md device name.
        md: String,
        /// Member device.
        device: String,
    },
    /// Remove a failed or spare member.
    Remove {
        /// md device name.
        md: String,
        /// Member device.
        device: String,
    },
    /// Add a device: a returning member (rebuilt from the bitmap when that
    /// is safe) or a new one (full rebuild).
    Add {
        /// md device name.
        md: String,
        /// Device path.
        device: String,
    },
    /// Exit after leaving every array clean.
    Shutdown,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Response {
    /// Done; `data` holds the answer, if any.
    Ok {
        /// Payload (status, detail, ping).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        data: serde_json::Value,
    },
    /// Refused or failed; nothing was changed unless `message` says so.
    Error {
        /// One line naming the problem.
        message: String,
    },
}

impl Response {
    /// An empty success.
    pub fn ok() -> Response {
        Response::Ok {
            data: serde_json::Value::Null,
        }
    }
    /// An error with a message.
    pub fn error(m: impl Into<String>) -> Response {
        Response::Error { message: m.into() }
    }
}

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens.
    #[error("mdextmon is not running (no socket at {0})")]
    NotRunning(PathBuf),
    /// I/O on the socket.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that is not a valid message.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// A peer that is not root.
    #[error("refused: peer uid {0} is not root")]
    NotRoot(u32),
}

/// Parse one request line. Errors name what is wrong.
pub fn parse_request(line: &str) -> Result<Request, ControlError> {
    if line.len() > MAX_LINE {
        return Err(ControlError::Malformed(format!(
            "line of {} bytes is too long",
            line.len()
        )));
    }
    serde_json::from_str(line.trim()).map_err(|e| ControlError::Malformed(e.to_string()))
}

/// Send one request and wait for the answer.
pub fn call(run_dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let path = socket_path(run_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path));
        }
        Err(e) => return Err(io(e)),
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_string(req).map_err(|e| ControlError::Malformed(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut r = BufReader::new(s);
    let mut answer = String::new();
    r.read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(ControlError::Malformed(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(answer.trim()).map_err(|e| ControlError::Malformed(e.to_string()))
}

/// Create the listening socket: the run directory (0700) and a socket file
/// (0600). A stale socket file with nobody listening is replaced.
pub fn listen(run_dir: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(run_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(io)?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another mdextmon is listening",
            )));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let l = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Check the peer is root (`SO_PEERCRED`).
pub fn check_peer(s: &UnixStream) -> Result<(), ControlError> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(s, PeerCredentials).map_err(|e| ControlError::Io {
        path: PathBuf::from("peer"),
        source: e.into(),
    })?;
    if cred.uid() != 0 {
        return Err(ControlError::NotRoot(cred.uid()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Ping,
            Request::Manage {
                md: "md127".into(),
                readonly: false,
            },
            Request::Fail {
                md: "md127".into(),
                device: "/dev/loop1".into(),
            },
            Request::Status,
            Request::Shutdown,
        ] {
            let s = serde_json::to_string(&r).expect("ser");
            assert_eq!(parse_request(&s).expect("parse"), r);
        }
        assert_eq!(
            parse_request(r#"{"cmd":"manage","md":"md1"}"#).expect("parse"),
            Request::Manage {
                md: "md1".into(),
                readonly: false
            }
        );
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let e = parse_request("{not json").expect_err("bad");
        assert!(e.to_string().starts_with("malformed control message"));
        let e = parse_request(r#"{"cmd":"format-disk"}"#).expect_err("unknown");
        assert!(e.to_string().contains("format-disk"), "{e}");
        let e = parse_request(r#"{"cmd":"manage"}"#).expect_err("missing md");
        assert!(e.to_string().contains("md"), "{e}");
        let long = "x".repeat(MAX_LINE + 1);
        assert!(parse_request(&long)
            .expect_err("long")
            .to_string()
            .contains("too long"));
    }

    #[test]
    fn non_root_peer_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::getuid().is_root() {
            // The check under test compares against uid 0; as non-root the
            // client below would be "root" relative to nothing. CI runs as
            // root (the guest tests need it), so this branch is not taken there.
            panic!("this test must run as root");
        }
        let d = tempfile::tempdir().expect("tmp");
        let l = listen(d.path()).expect("listen");
        // Open the directory and socket to everyone, so that only
        // SO_PEERCRED stands between a non-root client and the daemon.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(
            socket_path(d.path()),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        let mut c = std::process::Command::new("python3");
        c.arg("-c")
            .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"cmd\":\"ping\"}\\n'); s.recv(100)")
            .arg(socket_path(d.path()));
        // SAFETY: setuid is async-signal-safe and runs in the child only.
        unsafe {
            c.pre_exec(|| {
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(std::io::Error::from)
            });
        }
        let mut child = c.spawn().expect("python3 (installed by scripts/deps)");
        let (s, _) = l.accept().expect("accept");
        let e = check_peer(&s).expect_err("a non-root peer must be refused");
        assert!(matches!(e, ControlError::NotRoot(65534)), "{e}");
        assert!(e.to_string().contains("not root"), "{e}");
        drop(s);
        let _ = child.wait();
    }

    #[test]
    fn call_reports_not_running() {
        let d = tempfile::tempdir().expect("tmp");
        let e = call(d.path(), &Request::Ping, Duration::from_secs(1)).expect_err("none");
        assert!(matches!(e, ControlError::NotRunning(_)), "{e}");
    }

    #[test]
    fn listen_and_call() {
        let d = tempfile::tempdir().expect("tmp");
        let l = listen(d.path()).expect("listen");
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            check_peer(&s).expect("we run as root in tests or the check is skipped");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            let req = parse_request(&line).expect("parse");
            assert_eq!(req, Request::Ping);
            let mut w = s;
            w.write_all(b"{\"status\":\"ok\",\"data\":{\"pid\":1}}\n")
                .expect("write");
        });
        let r = call(d.path(), &Request::Ping, Duration::from_secs(5)).expect("call");
        assert_eq!(
            r,
            Response::Ok {
                data: serde_json::json!({"pid": 1})
            }
        );
        t.join().expect("join");
        // A second listener refuses while... the first is gone now, so the
        // stale socket is replaced.
        assert!(listen(d.path()).is_ok());
    }
}
