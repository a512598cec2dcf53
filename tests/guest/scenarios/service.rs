//! Issue 9, items 3 and 4: the daemon as a supervised service. A SIGKILLed
//! mdextmon, restarted, releases the write md held meanwhile; `mdextmon
//! --takeover` replaces a running daemon under a writer with no write left
//! waiting for nobody.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use mdext::device::{Access, Device};
use mdext::sysfs::MdDev;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub static RESTART_RELEASES_HELD_WRITE: Scenario = Scenario {
    name: "daemon_sigkill_restart_releases_held_write",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: restart_releases_held_write,
        ends: Ends::Ok,
    }],
};

pub static TAKEOVER_UNDER_WRITER: Scenario = Scenario {
    name: "takeover_under_writer_hands_over",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: takeover_under_writer,
        ends: Ends::Ok,
    }],
};

pub static STATUS_UNDER_WRITES: Scenario = Scenario {
    name: "status_requests_never_spend_a_write_notification",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: status_under_writes,
        ends: Ends::Ok,
    }],
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const RUN: &str = "/run/mdext";

fn md() -> MdDev {
    sysfs().md("md127")
}

fn daemon_pid() -> Result<u32> {
    Ok(std::fs::read_to_string(format!("{RUN}/mdextmon.pid"))?
        .trim()
        .parse()?)
}

/// Spawn `/bin/mdextmon ARGS` with its stderr appended to `log`; returns
/// the child (reaped by the caller).
fn spawn_mdextmon(args: &[&str], log: &str) -> Result<std::process::Child> {
    std::fs::create_dir_all(RUN)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(std::process::Command::new("/bin/mdextmon")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Both members record the array clean at the same event count, every slot
/// in sync.
fn wait_recorded_clean(devs: &[&Path]) -> Result<u64> {
    wait_until(
        "the metadata on every member to record the array clean",
        Duration::from_secs(30),
        || {
            let mut events = None;
            for d in devs {
                let e = examine(d).ok()?;
                let clean = e["state"].as_str() == Some("clean");
                let in_sync = e["members"]
                    .as_array()?
                    .iter()
                    .all(|m| m["state"].as_str() == Some("in-sync"));
                let ev = e["events"].as_u64()?;
                if !clean || !in_sync || events.is_some_and(|x| x != ev) {
                    return None;
                }
                events = Some(ev);
            }
            events
        },
    )
}

fn verify(md: &MdDev, expect: &BTreeMap<u64, u64>) -> Result<()> {
    for (&c, &seed) in expect {
        let got = read_direct(&md.dev_path(), c * CHUNK, CHUNK_LEN)?;
        ensure!(
            got == pattern(seed, CHUNK_LEN),
            "chunk {c} reads back wrong"
        );
    }
    Ok(())
}

/// The array is started, a writer runs; mdextmon is SIGKILLed while the
/// array is clean, the writer's next write is held (write-pending), and a
/// restarted mdextmon (no arrays named: it adopts every running one)
/// releases it.
fn restart_releases_held_write() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name rs --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble rs /dev/loop0 /dev/loop1")?;
    let md = md();
    let a = daemon_pid()?;
    // mdextctl spawned it with systemd's root storage daemon mark.
    let cmdline = std::fs::read(format!("/proc/{a}/cmdline"))?;
    ensure!(
        cmdline.starts_with(b"@mdextmon\0"),
        "argv[0] of the spawned daemon is {:?}, not @mdextmon",
        String::from_utf8_lossy(&cmdline)
    );
    // The writer: 8 chunks, then it waits to be let go, then 8 more.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let first_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let md = md.clone();
        let first_done = first_done.clone();
        std::thread::spawn(move || -> Result<()> {
            let dev = Device::open(&md.dev_path(), Access::SharedWrite)?;
            for c in 0..8u64 {
                dev.write_at(c * CHUNK, &pattern(100 + c, CHUNK_LEN))?;
            }
            first_done.store(true, Ordering::SeqCst);
            go_rx.recv()?;
            for c in 8..16u64 {
                dev.write_at(c * CHUNK, &pattern(100 + c, CHUNK_LEN))?;
            }
            Ok(())
        })
    };
    wait_until("the first writes", Duration::from_secs(60), || {
        first_done.load(Ordering::SeqCst).then_some(())
    })?;
    // Idle: the daemon writes clean; the next write must be held.
    wait_until("array_state clean", Duration::from_secs(30), || {
        (md.read("array_state").ok()? == "clean").then_some(())
    })?;
    sh(&format!("kill -KILL {a}"))?;
    wait_until("the daemon gone", Duration::from_secs(10), || {
        (!alive(a)).then_some(())
    })?;
    go_tx.send(())?;
    wait_until(
        "the write held (write-pending)",
        Duration::from_secs(30),
        || (md.read("array_state").ok()? == "write-pending").then_some(()),
    )?;
    ensure!(!writer.is_finished(), "a write passed with no daemon");
    let t0 = Instant::now();
    let b = spawn_mdextmon(&[], "/run/mdext/mdextmon.log")?;
    wait_until(
        "the held write to complete",
        Duration::from_secs(30),
        || writer.is_finished().then_some(()),
    )?;
    println!(
        "restart: the held write completed {} ms after the new daemon was started",
        t0.elapsed().as_millis()
    );
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let p = pong().context("the restarted daemon does not answer")?;
    ensure!(p.pid == b.id(), "another daemon answers: {}", p.pid);
    ensure!(
        p.arrays == ["md127"],
        "the new daemon manages {:?}",
        p.arrays
    );
    let expect: BTreeMap<u64, u64> = (0..16).map(|c| (c, 100 + c)).collect();
    verify(&md, &expect)?;
    let ev = wait_recorded_clean(&[&loops[0].path, &loops[1].path])?;
    println!("restart: metadata clean on both members at events {ev}");
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    sigterm_keeps_array_in_use(&md, b, &loops)?;
    ctl("stop md127")?;
    Ok(())
}

/// SIGTERM while the array is in use (held open with O_EXCL, as a mount
/// holds it): the daemon keeps managing it (a write to the clean array is
/// answered), and exits, the array recorded clean, once it is let go.
fn sigterm_keeps_array_in_use(
    md: &MdDev,
    mut b: std::process::Child,
    loops: &[Loop],
) -> Result<()> {
    let holder = Arc::new(Device::open(&md.dev_path(), Access::ExclusiveWrite)?);
    wait_until("array_state clean", Duration::from_secs(30), || {
        (md.read("array_state").ok()? == "clean").then_some(())
    })?;
    sh(&format!("kill -TERM {}", b.id()))?;
    wait_until(
        "the daemon to say the array keeps it",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string("/run/mdext/mdextmon.log")
                .ok()?
                .contains("md127: in use")
                .then_some(())
        },
    )?;
    let w = {
        let holder = holder.clone();
        std::thread::spawn(move || holder.write_at(16 * CHUNK, &pattern(116, CHUNK_LEN)))
    };
    wait_until(
        "a write after SIGTERM to complete",
        Duration::from_secs(30),
        || w.is_finished().then_some(()),
    )?;
    w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(
        b.try_wait()?.is_none(),
        "the daemon exited while the array was in use"
    );
    drop(holder);
    let st = wait_until(
        "the daemon to exit once the array is let go",
        Duration::from_secs(60),
        || b.try_wait().ok().flatten(),
    )?;
    ensure!(st.success(), "mdextmon exited {st}");
    let ev = wait_recorded_clean(&[&loops[0].path, &loops[1].path])?;
    println!("SIGTERM: kept while in use, then released clean at events {ev}");
    verify(md, &BTreeMap::from([(16, 116)]))?;
    Ok(())
}

/// Writes until told to stop; returns (last seed per chunk, writes, the
/// longest single write with its fdatasync, and when it started).
struct WriterOut {
    last: BTreeMap<u64, u64>,
    writes: u64,
    /// The longest write that started before B was started, while the
    /// handover ran (until B answered), and after.
    longest: [Duration; 3],
}

/// Daemon A (spawned by mdextctl) manages the array under an O_DIRECT +
/// fdatasync writer; `mdextmon --takeover` (B) replaces it. A exits, B
/// manages every array, the writer finishes, the data reads back, and the
/// metadata records clean once the writer stops. The longest write across
/// the handover is printed, not asserted.
fn takeover_under_writer() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name tk --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble tk /dev/loop0 /dev/loop1")?;
    let md = md();
    let a = daemon_pid()?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let md = md.clone();
        let stop = stop.clone();
        let count = count.clone();
        let phase = phase.clone();
        std::thread::spawn(move || -> Result<WriterOut> {
            let dev = Device::open(&md.dev_path(), Access::SharedWrite)?;
            let f = dev.reopen_buffered(true)?;
            let mut out = WriterOut {
                last: BTreeMap::new(),
                writes: 0,
                longest: [Duration::ZERO; 3],
            };
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let c = i % 32;
                let seed = 1000 + i;
                let ph = phase.load(Ordering::SeqCst).min(2);
                let t = Instant::now();
                dev.write_at(c * CHUNK, &pattern(seed, CHUNK_LEN))?;
                nix::unistd::fdatasync(&f)?;
                out.longest[ph] = out.longest[ph].max(t.elapsed());
                out.last.insert(c, seed);
                out.writes += 1;
                count.store(out.writes, Ordering::SeqCst);
                i += 1;
            }
            Ok(out)
        })
    };
    let n_at = |n: u64| {
        let count = count.clone();
        move || (count.load(Ordering::SeqCst) >= n).then_some(())
    };
    wait_until("20 writes under A", Duration::from_secs(60), n_at(20))?;
    let before = count.load(Ordering::SeqCst);
    phase.store(1, Ordering::SeqCst);
    let mut b = spawn_mdextmon(&["--takeover"], "/run/mdext/mdextmon-b.log")?;
    wait_until("A to exit", Duration::from_secs(30), || {
        (!alive(a)).then_some(())
    })?;
    wait_until("B to answer on the socket", Duration::from_secs(30), || {
        pong().filter(|p| p.pid == b.id()).map(|_| ())
    })?;
    phase.store(2, Ordering::SeqCst);
    let p = pong().context("B does not answer")?;
    ensure!(p.arrays == ["md127"], "B manages {:?}", p.arrays);
    let during = count.load(Ordering::SeqCst);
    wait_until(
        "20 writes under B",
        Duration::from_secs(60),
        n_at(during + 20),
    )?;
    stop.store(true, Ordering::SeqCst);
    let out = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    println!(
        "takeover: {} writes of 64 KiB + fdatasync ({} before B started); longest write before {} ms, during the handover {} ms, after {} ms",
        out.writes,
        before,
        out.longest[0].as_millis(),
        out.longest[1].as_millis(),
        out.longest[2].as_millis()
    );
    let log = std::fs::read_to_string("/run/mdext/mdextmon-b.log").unwrap_or_default();
    print!("--- B's log\n{log}");
    ensure!(
        log.contains("handed over"),
        "B's log does not show a handover"
    );
    verify(&md, &out.last)?;
    let ev = wait_recorded_clean(&[&loops[0].path, &loops[1].path])?;
    println!("takeover: metadata clean on both members at events {ev}");
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    // A takeover with none running just starts: stop B, start another
    // with --takeover, it manages the array.
    ctl("stop md127")?;
    sh(&format!("kill -TERM {}", b.id()))?;
    let st = b.wait()?;
    ensure!(st.success(), "B exited {st}");
    ensure!(
        !Path::new("/run/mdext/mdextmon.sock").exists(),
        "B left its socket"
    );
    let mut c = spawn_mdextmon(&["--takeover"], "/run/mdext/mdextmon-c.log")?;
    wait_until("C to answer", Duration::from_secs(30), || {
        pong().filter(|p| p.pid == c.id()).map(|_| ())
    })?;
    sh(&format!("kill -TERM {}", c.id()))?;
    ensure!(c.wait()?.success(), "C did not exit cleanly");
    Ok(())
}

/// Rounds of "wait for clean, then write" in [`status_under_writes`].
const STATUS_ROUNDS: u64 = 150;

/// A client asks for the status without a pause while a writer, over and
/// over, waits for the array to be recorded clean and writes one block, so
/// that md holds each write in `write-pending` for the daemon. Every write
/// must pass: the daemon once answered status from a fresh read of the
/// attributes it polls, which spent md's notification of a write that
/// arrived meanwhile and left the write held with the daemon asleep (the
/// systemd guests' hangs: its `STATUS=` line was built the same way).
fn status_under_writes() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name st --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble st /dev/loop0 /dev/loop1")?;
    let md = md();
    // md marks an idle array active-idle after safe_mode_delay; a short
    // one makes every round a clean -> write-pending transition quickly.
    md.write("safe_mode_delay", "0.02")?;
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, asked) = (stop.clone(), asked.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = mdext::control::call(
                    Path::new(RUN),
                    &mdext::control::Request::Status,
                    Duration::from_secs(10),
                );
                if r.is_ok() {
                    asked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let dev = Arc::new(Device::open(&md.dev_path(), Access::SharedWrite)?);
    let result = (|| -> Result<()> {
        for round in 0..STATUS_ROUNDS {
            wait_until("array_state clean", Duration::from_secs(30), || {
                (md.read("array_state").ok()? == "clean").then_some(())
            })?;
            let (tx, rx) = mpsc::channel();
            let d = dev.clone();
            let w = std::thread::spawn(move || {
                let _ = tx.send(d.write_at((round % 64) * CHUNK, &pattern(round, CHUNK_LEN)));
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(r) => {
                    let _ = w.join();
                    r?
                }
                Err(_) => anyhow::bail!(
                    "round {round}: a write after clean still held after 30 s (array_state {})",
                    md.read("array_state").unwrap_or_default()
                ),
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    result?;
    drop(dev);
    let n = asked.load(Ordering::Relaxed);
    println!("{STATUS_ROUNDS} writes after clean passed, {n} status requests answered meanwhile");
    ensure!(n >= STATUS_ROUNDS, "only {n} status requests were answered");
    let expect: BTreeMap<u64, u64> = (STATUS_ROUNDS - 64..STATUS_ROUNDS)
        .map(|r| (r % 64, r))
        .collect();
    verify(&md, &expect)?;
    ctl("stop md127")?;
    drop(loops);
    Ok(())
}
