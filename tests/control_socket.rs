//! The control socket of a real `mdextmon` (on an empty fake sysfs tree, so
//! it manages nothing and needs no md driver): clients that connect and say
//! nothing must not delay anyone else (defect 12); malformed, huge, slow
//! and hostile clients each get one error line or are dropped, and harm
//! neither the daemon nor anyone else; peers that are not root are refused
//! (issue 11, item 5).

use mdext::control::{self, ErrorKind, Request, Response};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MDEXTMON: &str = env!("CARGO_BIN_EXE_mdextmon");
const MDEXTCTL: &str = env!("CARGO_BIN_EXE_mdextctl");

/// An mdextmon on a fake sysfs; killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> Daemon {
    start_with_fd_limit(dir, None)
}

/// An mdextmon, with RLIMIT_NOFILE lowered to `fds` if given.
fn start_with_fd_limit(dir: &Path, fds: Option<u64>) -> Daemon {
    let sys = dir.join("sys");
    std::fs::create_dir_all(sys.join("block")).expect("fake sysfs");
    // prlimit(1) (util-linux) sets the limit and execs the daemon, which
    // keeps its pid.
    let mut c = match fds {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(MDEXTMON);
            c
        }
        None => Command::new(MDEXTMON),
    };
    c.arg("--sysfs")
        .arg(&sys)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().expect("start mdextmon");
    let d = Daemon(child);
    // Wait for the state (the daemon answers), not for a time.
    let mut tries = 0;
    while control::call(&dir.join("run"), &Request::Ping, Duration::from_secs(1)).is_err() {
        tries += 1;
        assert!(tries < 500, "mdextmon never answered on its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

#[test]
fn idle_connections_delay_no_one() {
    let d = tempfile::tempdir().expect("tmp");
    let daemon = start(d.path());
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    let idle: Vec<UnixStream> = (0..500)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let t0 = Instant::now();
    let r = control::ping(&run, Duration::from_secs(20));
    let ping = t0.elapsed();
    match r {
        Ok(p) => assert_eq!(p.pid, daemon.0.id(), "another daemon answered"),
        Err(e) => panic!("ping behind 500 idle connections: {e}"),
    }
    let t0 = Instant::now();
    let o = Command::new(MDEXTCTL)
        .arg("status")
        .arg("--run-dir")
        .arg(&run)
        .output()
        .expect("mdextctl status");
    let status = t0.elapsed();
    assert!(o.status.success(), "mdextctl status: {o:?}");
    // The daemon keeps at most MAX_CLIENTS connections: the oldest idle
    // ones were closed, each with a one-line reason.
    let first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(first), &mut line)
        .expect("read from the oldest idle connection");
    match serde_json::from_str::<control::Response>(&line) {
        Ok(control::Response::Error {
            kind: control::ErrorKind::Busy,
            ..
        }) => {}
        other => panic!("oldest idle connection: {line:?} {other:?}"),
    }
    println!(
        "with {} idle connections open: ping answered in {:.3} s, mdextctl status took {:.3} s",
        idle.len(),
        ping.as_secs_f64(),
        status.as_secs_f64()
    );
}

/// Send `bytes` on a fresh connection (then half-close it if `shut`) and
/// read everything the daemon answers until it closes. Sending may fail
/// once the daemon has refused and closed: what it answered still counts.
fn exchange(sock: &Path, bytes: &[u8], shut: bool) -> String {
    let mut c = UnixStream::connect(sock).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let _ = c.write_all(bytes);
    if shut {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer: the daemon closed with our
            // unread bytes still queued.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading the answer to {:?}: {e}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
            ),
        }
    }
    String::from_utf8(out).expect("utf-8 answer")
}

/// The one answer line in `out`.
fn one_answer(out: &str, what: &str) -> Response {
    assert!(
        out.ends_with('\n') && out.matches('\n').count() == 1,
        "{what}: not one line: {out:?}"
    );
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: {e}: {out:?}"))
}

/// The daemon answers a ping at once, and it is the same process.
fn assert_responsive(run: &Path, daemon: &mut Daemon, what: &str) {
    assert!(
        daemon.0.try_wait().expect("try_wait").is_none(),
        "{what}: mdextmon exited"
    );
    let t0 = Instant::now();
    let p =
        control::ping(run, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: ping: {e}"));
    assert_eq!(p.pid, daemon.0.id(), "{what}: another daemon answered");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "{what}: ping took {:?}",
        t0.elapsed()
    );
}

#[test]
fn malformed_requests_get_one_error_line_each() {
    let d = tempfile::tempdir().expect("tmp");
    let mut daemon = start(d.path());
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    let cases: &[(&[u8], &str)] = &[
        (b"hello\n", "expected value"),
        (b"\n", "EOF while parsing"),
        (b"   \r\n", "EOF while parsing"),
        (b"[1,2]\n", "invalid type"),
        (b"{\"cmd\":5}\n", "invalid type: integer `5`"),
        (
            b"{\"cmd\":\"format-disk\"}\n",
            "unknown variant `format-disk`",
        ),
        (
            b"{\"cmd\":\"detail\",\"md\":7}\n",
            "invalid type: integer `7`, expected a string",
        ),
        (
            b"{\"cmd\":\"fail\",\"md\":\"md127\"}\n",
            "missing field `device`",
        ),
        (
            b"{\"cmd\":\"manage\",\"md\":\"md127\",\"readonly\":\"yes\"}\n",
            "invalid type",
        ),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"{\"cmd\":\"ping\"}\x00\n", "trailing characters"),
        (
            b"{\"cmd\":\"ping\"}{\"cmd\":\"shutdown\"}\n",
            "trailing characters",
        ),
        // Defect: unknown fields were ignored, so a misspelt "readonly"
        // made the array writable.
        (
            b"{\"cmd\":\"manage\",\"md\":\"md127\",\"read-only\":true}\n",
            "unknown field `read-only`",
        ),
        // Defect: md names went into sysfs paths as given.
        (
            b"{\"cmd\":\"manage\",\"md\":\"/etc\"}\n",
            "md \"/etc\" is not an md device name",
        ),
        (
            b"{\"cmd\":\"manage\",\"md\":\"../..\"}\n",
            "md \"../..\" is not an md device name",
        ),
        (
            b"{\"cmd\":\"stop\",\"md\":\"\"}\n",
            "md \"\" is not an md device name",
        ),
        (
            b"{\"cmd\":\"add\",\"md\":\"sda\",\"device\":\"/dev/sdb\"}\n",
            "md \"sda\" is not an md device name",
        ),
    ];
    for (bytes, want) in cases {
        for shut in [false, true] {
            let what = format!("{:?} (half-closed: {shut})", String::from_utf8_lossy(bytes));
            match one_answer(&exchange(&sock, bytes, shut), &what) {
                Response::Error {
                    kind: ErrorKind::Malformed,
                    message,
                } => assert!(message.contains(want), "{what}: {message}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    // Garbage after a valid request, and a request whose writer half-closes
    // without a newline: the request is answered, the rest ignored.
    for (bytes, shut) in [
        (
            &b"{\"cmd\":\"ping\"}\n\xff\x00garbage\n{\"cmd\":\"shutdown\"}\n"[..],
            false,
        ),
        (&b"{\"cmd\":\"ping\"}"[..], true),
    ] {
        let what = String::from_utf8_lossy(bytes).into_owned();
        match one_answer(&exchange(&sock, bytes, shut), &what) {
            Response::Pong(p) => assert_eq!(p.pid, daemon.0.id()),
            other => panic!("{what}: {other:?}"),
        }
    }
    // Nothing at all, then half-closed: dropped without an answer.
    assert_eq!(exchange(&sock, b"", true), "");
    assert_responsive(&run, &mut daemon, "after malformed requests");
}

#[test]
fn huge_request_is_refused_without_delaying_others() {
    let d = tempfile::tempdir().expect("tmp");
    let mut daemon = start(d.path());
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    // 8 MiB without a newline, and 8 MiB of JSON nesting with one.
    let flat = vec![b'x'; 8 << 20];
    let mut nested = vec![b'['; 8 << 20];
    nested.push(b'\n');
    for (bytes, what) in [
        (&flat, "8 MiB without a newline"),
        (&nested, "8 MiB of '['"),
    ] {
        let s = sock.clone();
        let b = bytes.clone();
        let t = std::thread::spawn(move || exchange(&s, &b, false));
        assert_responsive(&run, &mut daemon, what);
        match one_answer(&t.join().expect("join"), what) {
            Response::Error {
                kind: ErrorKind::Malformed,
                message,
            } => assert!(
                message.contains("too long (at most 65536)"),
                "{what}: {message}"
            ),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_responsive(&run, &mut daemon, "after huge requests");
}

#[test]
fn slow_client_delays_no_one() {
    let d = tempfile::tempdir().expect("tmp");
    let mut daemon = start(d.path());
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    let mut slow = UnixStream::connect(&sock).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // One byte at a time; the others are answered in between.
    for b in b"{\"cmd\":\"status\"}\n" {
        slow.write_all(&[*b]).expect("write one byte");
        assert_responsive(&run, &mut daemon, "beside a slow client");
    }
    let mut line = String::new();
    BufReader::new(&slow)
        .read_line(&mut line)
        .expect("the slow client's answer");
    assert_eq!(
        serde_json::from_str::<Response>(&line).expect("answer"),
        Response::Status { arrays: vec![] }
    );
}

#[test]
fn hostile_clients_harm_no_one() {
    let d = tempfile::tempdir().expect("tmp");
    let mut daemon = start(d.path());
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    // Connect and hang up at once; send a request and hang up before the
    // answer; send half a request and hang up.
    for i in 0..200 {
        let mut c = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        match i % 3 {
            0 => {}
            1 => c.write_all(b"{\"cmd\":\"status\"}\n").expect("write"),
            _ => c.write_all(b"{\"cmd\":\"sta").expect("write"),
        }
    }
    assert_responsive(&run, &mut daemon, "after clients that hung up");
    // 400 connections at once, each sending a request and half-closing:
    // each gets its answer or a one-line busy error, never silence.
    let conns: Vec<UnixStream> = (0..400)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    for c in &conns {
        let _ = (&*c).write_all(b"{\"cmd\":\"ping\"}\n");
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    let (mut pongs, mut busy) = (0, 0);
    for (i, c) in conns.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut out = String::new();
        let _ = BufReader::new(c).read_line(&mut out);
        match serde_json::from_str::<Response>(&out) {
            Ok(Response::Pong(_)) => pongs += 1,
            Ok(Response::Error {
                kind: ErrorKind::Busy,
                ..
            }) => busy += 1,
            other => panic!("connection {i} of 400: {out:?} {other:?}"),
        }
    }
    println!("400 connections at once: {pongs} answered, {busy} told busy");
    assert!(pongs >= control::MAX_CLIENTS, "{pongs} answered");
    assert_responsive(&run, &mut daemon, "after 400 connections at once");
}

/// CPU time (user + system, clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5); rest starts at 3.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Defect: out of file descriptors, `accept` failed with EMFILE, the
/// daemon logged it and returned to `poll`, which woke at once for the
/// still-queued connection: 94 % CPU and 100,000 warnings a second, and
/// no new client was answered until an idle one reached its deadline.
#[test]
fn out_of_descriptors_the_daemon_neither_spins_nor_stalls() {
    let d = tempfile::tempdir().expect("tmp");
    let mut daemon = start_with_fd_limit(d.path(), Some(32));
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    let idle: Vec<UnixStream> = (0..80)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    assert_responsive(&run, &mut daemon, "80 idle connections, 32 descriptors");
    let pid = daemon.0.id();
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - t0;
    assert!(
        used < 50,
        "mdextmon used {used} ticks of CPU in 2 s with nothing to do"
    );
    assert_responsive(&run, &mut daemon, "after the idle wait");
    drop(idle);
}

/// Run as `nobody`: with the directory and socket opened to everyone, only
/// SO_PEERCRED stands between it and the daemon.
fn as_nobody(c: &mut Command) -> &mut Command {
    // SAFETY: setgid/setuid are async-signal-safe and run in the child only.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setgroups(&[]).map_err(std::io::Error::from)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).map_err(std::io::Error::from)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(std::io::Error::from)
        })
    }
}

/// The client half of [`non_root_peers_are_refused`]: run again by it as
/// `nobody`, it sends a ping and prints the answer.
#[test]
fn nobody_client_helper() {
    let Some(sock) = std::env::var_os("MDEXT_TEST_NOBODY_SOCKET") else {
        return;
    };
    print!(
        "ANSWER {}",
        exchange(&PathBuf::from(sock), b"{\"cmd\":\"ping\"}\n", false)
    );
}

#[test]
fn non_root_peers_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::getuid().is_root(),
        "this test runs as root (it becomes nobody in a child)"
    );
    let d = tempfile::tempdir().expect("tmp");
    let mut daemon = start(d.path());
    let run = d.path().join("run");
    let sock = control::socket_path(&run);
    for p in [d.path(), run.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // A raw client (mdextctl on a host without md never reaches the
    // daemon): one error line of kind not-root.
    let o = as_nobody(
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "nobody_client_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MDEXT_TEST_NOBODY_SOCKET", &sock),
    )
    .output()
    .expect("run the helper as nobody");
    let out = String::from_utf8_lossy(&o.stdout);
    let answer = out
        .split_once("ANSWER ")
        .map(|(_, a)| {
            a.split_inclusive('\n')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|| {
            panic!(
                "the helper printed no answer: {out} {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    match one_answer(&answer, "ping as nobody") {
        Response::Error {
            kind: ErrorKind::NotRoot,
            message,
        } => assert_eq!(message, "refused: peer uid 65534 is not root"),
        other => panic!("ping as nobody: {other:?}"),
    }
    assert_responsive(&run, &mut daemon, "after non-root peers");
}
