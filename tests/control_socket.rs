//! The control socket of a real `mdextmon` (on an empty fake sysfs tree, so
//! it manages nothing and needs no md driver): clients that connect and say
//! nothing must not delay anyone else (defect 12).

use mdext::control::{self, Request};
use std::os::unix::net::UnixStream;
use std::path::Path;
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
    let sys = dir.join("sys");
    std::fs::create_dir_all(sys.join("block")).expect("fake sysfs");
    let child = Command::new(MDEXTMON)
        .arg("--sysfs")
        .arg(&sys)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mdextmon");
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
