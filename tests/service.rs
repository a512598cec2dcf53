//! mdextmon as a service, on an empty fake sysfs tree (no md driver
//! needed): the sd_notify messages systemd gets (`READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`), and `--takeover` of a running daemon, of
//! none, and of an older one that cannot hand over.

use mdext::control::{self, Request};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MDEXTMON: &str = env!("CARGO_BIN_EXE_mdextmon");

/// A child process killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dirs(d: &Path) -> (PathBuf, PathBuf) {
    let sys = d.join("sys");
    std::fs::create_dir_all(sys.join("block")).expect("fake sysfs");
    (sys, d.join("run"))
}

fn mdextmon(sys: &Path, run: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(MDEXTMON);
    c.arg("--sysfs")
        .arg(sys)
        .arg("--run-dir")
        .arg(run)
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Wait until `pid` answers on the socket (a state, not a time).
fn wait_answers(run: &Path, pid: u32) {
    let t0 = Instant::now();
    loop {
        if control::ping(run, Duration::from_secs(1)).is_ok_and(|p| p.pid == pid) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pid {pid} never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = p.0.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "process {} did not exit",
            p.0.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(p: &mut Proc) -> String {
    let mut s = String::new();
    if let Some(e) = p.0.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(e, &mut s);
    }
    s
}

#[test]
fn notify_ready_status_watchdog_stopping() {
    let d = tempfile::tempdir().expect("tmp");
    let (sys, run) = dirs(d.path());
    let sock = d.path().join("notify");
    let rx = UnixDatagram::bind(&sock).expect("notify socket");
    rx.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut p = Proc(
        mdextmon(&sys, &run, &[])
            .env("NOTIFY_SOCKET", &sock)
            // 400 ms: a ping every 200 ms.
            .env("WATCHDOG_USEC", "400000")
            .spawn()
            .expect("start mdextmon"),
    );
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = rx.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1\nSTATUS=no arrays\n");
    // It listens before it says ready.
    control::ping(&run, Duration::from_secs(5)).expect("ping after READY=1");
    for _ in 0..3 {
        assert_eq!(recv(), "WATCHDOG=1\n");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(p.0.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    loop {
        let m = recv();
        if m == "STOPPING=1\n" {
            break;
        }
        assert!(m == "WATCHDOG=1\n" || m.starts_with("STATUS="), "{m:?}");
    }
    assert!(wait_exit(&mut p).success(), "{}", stderr_of(&mut p));
}

#[test]
fn takeover_replaces_a_running_daemon() {
    let d = tempfile::tempdir().expect("tmp");
    let (sys, run) = dirs(d.path());
    let mut a = Proc(mdextmon(&sys, &run, &[]).spawn().expect("start A"));
    wait_answers(&run, a.0.id());
    let mut b = Proc(
        mdextmon(&sys, &run, &["--takeover"])
            .spawn()
            .expect("start B"),
    );
    let st = wait_exit(&mut a);
    assert!(st.success(), "A exited {st}: {}", stderr_of(&mut a));
    assert!(stderr_of(&mut a).contains("handed every array over"));
    wait_answers(&run, b.0.id());
    // B's socket sits where A's was, and nothing is left beside it.
    let names: Vec<String> = std::fs::read_dir(&run)
        .expect("run dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("mdextmon.sock.")),
        "{names:?}"
    );
    let pidfile = std::fs::read_to_string(run.join("mdextmon.pid")).expect("pid file");
    assert_eq!(pidfile.trim(), b.0.id().to_string());
    control::act(&run, &Request::Shutdown, Duration::from_secs(5)).expect("shutdown B");
    assert!(wait_exit(&mut b).success());
    assert!(!control::socket_path(&run).exists());
}

#[test]
fn takeover_with_none_running_just_starts() {
    let d = tempfile::tempdir().expect("tmp");
    let (sys, run) = dirs(d.path());
    let mut b = Proc(
        mdextmon(&sys, &run, &["--takeover"])
            .spawn()
            .expect("start"),
    );
    wait_answers(&run, b.0.id());
    control::act(&run, &Request::Shutdown, Duration::from_secs(5)).expect("shutdown");
    assert!(wait_exit(&mut b).success());
    assert!(stderr_of(&mut b).contains("no mdextmon running"));
}

#[test]
fn takeover_kills_an_older_daemon_that_cannot_hand_over() {
    let d = tempfile::tempdir().expect("tmp");
    let (sys, run) = dirs(d.path());
    std::fs::create_dir_all(&run).expect("run dir");
    // The "old daemon": a process standing for it, and a socket that
    // answers ping with that pid and refuses the handover request as an
    // older version does (unknown request).
    let mut old = Proc(Command::new("sleep").arg("1000").spawn().expect("sleep"));
    let old_pid = old.0.id();
    let l = UnixListener::bind(control::socket_path(&run)).expect("old socket");
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (s, _) = l.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("request");
            let answer = if line.contains("ping") {
                format!(r#"{{"reply":"pong","version":"0.0.9","pid":{old_pid},"arrays":[]}}"#)
            } else {
                r#"{"reply":"error","kind":"malformed","message":"unknown variant `handover`"}"#
                    .to_string()
            };
            writeln!(&s, "{answer}").expect("answer");
        }
    });
    let mut b = Proc(
        mdextmon(&sys, &run, &["--takeover"])
            .spawn()
            .expect("start B"),
    );
    let st = wait_exit(&mut old);
    assert_eq!(
        st.signal(),
        Some(9),
        "the old daemon was not SIGKILLed: {st}"
    );
    server.join().expect("fake old daemon");
    wait_answers(&run, b.0.id());
    control::act(&run, &Request::Shutdown, Duration::from_secs(5)).expect("shutdown");
    assert!(wait_exit(&mut b).success());
    assert!(stderr_of(&mut b).contains("cannot hand over"));
}
