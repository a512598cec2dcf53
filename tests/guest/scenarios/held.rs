//! The daemon keeps working when its path view of /sys and /dev vanishes
//! (a daemon started in the initramfs, after switch-root), and an array
//! stopped by somebody else (systemd-shutdown's STOP_ARRAY) is recorded
//! clean before it is forgotten.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use mdext::device::{Access, Device};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::time::{Duration, Instant};

pub static BLIND_DAEMON: Scenario = Scenario {
    name: "held_attrs_daemon_without_sys_and_dev_paths",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: blind_daemon,
        ends: Ends::Ok,
    }],
};

pub static STOPPED_BY_OTHERS: Scenario = Scenario {
    name: "held_attrs_stop_array_by_others_recorded_clean",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: stopped_by_others,
        ends: Ends::Ok,
    }],
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;

fn md() -> MdDev {
    sysfs().md("md127")
}

/// Spawn `PROGRAM ARGS` with stderr appended to `log`.
fn spawn_logged(program: &str, args: &[&str], log: &str) -> Result<std::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Member states and clean flag as recorded on `dev`.
fn recorded(dev: &Path) -> Result<(u64, bool, Vec<String>)> {
    let e = examine(dev)?;
    let states = e["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["state"].as_str().unwrap_or("?").to_string())
        .collect();
    Ok((
        e["events"].as_u64().context("events")?,
        e["state"].as_str() == Some("clean"),
        states,
    ))
}

/// Write one chunk through the md device in a thread; the handle ends when
/// the write completed.
fn write_chunk(md: &MdDev, c: u64, seed: u64) -> std::thread::JoinHandle<Result<()>> {
    let p = md.dev_path();
    std::thread::spawn(move || -> Result<()> {
        let dev = Device::open(&p, Access::SharedWrite)?;
        dev.write_at(c * CHUNK, &pattern(seed, CHUNK_LEN))?;
        Ok(())
    })
}

fn join_written(w: std::thread::JoinHandle<Result<()>>, what: &str) -> Result<()> {
    wait_until(what, Duration::from_secs(60), || {
        w.is_finished().then_some(())
    })?;
    w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?
}

/// A daemon in a private mount namespace whose /sys and /dev are then
/// lazily unmounted (what switch-root leaves a daemon started in the
/// initramfs): a write held in write-pending is answered, a member failed
/// from outside is recorded failed, the array stays managed; `mdextmon
/// --takeover` from the normal namespace then takes over a consistent array.
fn blind_daemon() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name hb --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble hb /dev/loop0 /dev/loop1")?;
    let md = md();
    join_written(write_chunk(&md, 0, 500), "a first write")?;
    // The blind daemon: it takes over from the one assemble spawned, in a
    // mount namespace of its own.
    let log = "/run/mdext/blind.log";
    let mut b = spawn_logged(
        "unshare",
        &[
            "-m",
            "--propagation",
            "private",
            "/bin/mdextmon",
            "--takeover",
        ],
        log,
    )?;
    let bpid = b.id();
    wait_until(
        "the blind daemon to take over",
        Duration::from_secs(30),
        || pong().filter(|p| p.pid == bpid && p.arrays == ["md127"]),
    )?;
    let ns = format!("nsenter -t {bpid} -m");
    sh(&format!("{ns} umount -l /sys"))?;
    sh(&format!("{ns} umount -l /dev"))?;
    let blind = sh(&format!(
        "{ns} sh -c 'test -e /sys/block/md127/md/array_state || test -e /dev/loop0 || echo blind'"
    ))?;
    ensure!(
        blind.trim() == "blind",
        "the daemon's namespace still sees /sys or /dev"
    );
    println!("blind: pid {bpid} no longer sees /sys/block/md127 nor /dev/loop0");

    // 1. A write to the clean array is held in write-pending until the
    // blind daemon answers it; md's bits cover it, so the record stays as
    // it was while md writes (where mdextmon keeps the bits; md's own
    // bitmap mode records it dirty first), and once md is idle the blind
    // daemon takes the array back to clean and writes the record that
    // advances the event count (md's mode: dirty, then clean).
    wait_until("array_state clean", Duration::from_secs(30), || {
        (md.read("array_state").ok()? == "clean").then_some(())
    })?;
    let (ev0, clean0, _) = recorded(&loops[0].path)?;
    ensure!(clean0, "the record is not clean before the write");
    let external = writes_leave_clean(&loops[0].path)?;
    let delay = md.read("safe_mode_delay")?;
    md.write("safe_mode_delay", "30")?;
    let t0 = Instant::now();
    join_written(write_chunk(&md, 1, 501), "the held write to be answered")?;
    println!(
        "blind: a write to the clean array answered in {} ms",
        t0.elapsed().as_millis()
    );
    ensure!(
        md.read("array_state")? == "active",
        "md not active after the answered write"
    );
    md.write("safe_mode_delay", &delay)?;
    let want = if external { ev0 + 1 } else { ev0 + 2 };
    let (ev1, _, _) = wait_until(
        "the blind daemon to take the array back to clean",
        Duration::from_secs(30),
        || {
            let r = recorded(&loops[0].path).ok()?;
            (md.read("array_state").ok()? == "clean" && r.1 && r.0 >= want).then_some(r)
        },
    )?;
    ensure!(
        ev1 == want,
        "events {ev0} -> {ev1} for one write (external mode: {external})"
    );
    println!("blind: clean again at events {ev1} (before the write {ev0})");

    // 2. A member failed from outside is recorded failed on the other.
    sh("echo faulty > /sys/block/md127/md/dev-loop1/state")?;
    let (ev2, _, states) = wait_until(
        "loop0's record to show member 1 failed",
        Duration::from_secs(30),
        || {
            let r = recorded(&loops[0].path).ok()?;
            (r.2.get(1).map(String::as_str) == Some("failed")).then_some(r)
        },
    )?;
    println!("blind: member 1 recorded failed at events {ev2}: {states:?}");
    wait_until(
        "md to drop the failed member",
        Duration::from_secs(30),
        || (!Path::new("/sys/block/md127/md/dev-loop1").exists()).then_some(()),
    )?;
    // Writes go on, degraded.
    join_written(write_chunk(&md, 2, 502), "a degraded write")?;

    // 3. The array is not dropped.
    let p = pong().context("the blind daemon does not answer")?;
    ensure!(
        p.pid == bpid && p.arrays == ["md127"],
        "after all that the blind daemon {} manages {:?}",
        p.pid,
        p.arrays
    );
    let blog = std::fs::read_to_string(log).unwrap_or_default();
    ensure!(
        !blog.contains("no longer managed"),
        "the blind daemon dropped the array:\n{blog}"
    );

    // 4. Takeover from the normal namespace finds it consistent.
    let mut c = spawn_logged("/bin/mdextmon", &["--takeover"], "/run/mdext/c.log")?;
    let cpid = c.id();
    wait_until(
        "the new daemon to take over",
        Duration::from_secs(30),
        || pong().filter(|p| p.pid == cpid && p.arrays == ["md127"]),
    )?;
    let st = wait_until("the blind daemon to exit", Duration::from_secs(30), || {
        b.try_wait().ok().flatten()
    })?;
    ensure!(st.success(), "the blind daemon exited {st}");
    let (ev3, _, states) = recorded(&loops[0].path)?;
    ensure!(
        states == ["in-sync", "failed"],
        "after the takeover loop0 records {states:?}"
    );
    ensure!(ev3 >= ev2, "events went back: {ev2} -> {ev3}");
    // detail exits non-zero for a degraded array, as mdadm does.
    let (_, detail, _) = ctl_status("detail md127")?;
    ensure!(
        detail.contains("Managed : by mdextmon (pid ") && detail.contains("Degraded : 1"),
        "detail after the takeover:\n{detail}"
    );
    // The failed member comes back and is rebuilt; mirrors agree.
    ctl("add md127 /dev/loop1")?;
    wait_until(
        "the rebuild to start or end",
        Duration::from_secs(60),
        || {
            recorded(&loops[0].path)
                .ok()
                .filter(|r| r.2.get(1).map(String::as_str) != Some("failed"))
        },
    )?;
    wait_sync_idle(&md, Duration::from_secs(120))?;
    wait_until("both in sync", Duration::from_secs(60), || {
        let r = recorded(&loops[0].path).ok()?;
        (r.2 == ["in-sync", "in-sync"]).then_some(())
    })?;
    for (ch, seed) in [(0u64, 500u64), (1, 501), (2, 502)] {
        let got = read_direct(&md.dev_path(), ch * CHUNK, CHUNK_LEN)?;
        ensure!(
            got == pattern(seed, CHUNK_LEN),
            "chunk {ch} reads back wrong"
        );
    }
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the rebuild"
    );
    ctl("stop md127")?;
    sh(&format!("kill -TERM {cpid}"))?;
    wait_until("the new daemon to exit", Duration::from_secs(30), || {
        (!alive(cpid)).then_some(())
    })?;
    let _ = c.wait();
    Ok(())
}

nix::ioctl_none!(md_stop_array, 9, 0x32);

/// What systemd-shutdown does to an md device it finds: open it
/// exclusively and issue STOP_ARRAY.
fn stop_array_like_systemd(dev: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL | nix::libc::O_CLOEXEC)
        .open(dev)
        .with_context(|| format!("opening {}", dev.display()))?;
    // SAFETY: STOP_ARRAY takes no argument; the fd is open for the call.
    unsafe { md_stop_array(f.as_raw_fd()) }
        .with_context(|| format!("STOP_ARRAY on {}", dev.display()))?;
    Ok(())
}

/// The array is managed and active (a write just done, safe_mode_delay
/// large); STOP_ARRAY as systemd-shutdown issues it; every member's record
/// reads clean, the daemon forgets the array, and the next assembly does no
/// resync.
fn stopped_by_others() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name so --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble so /dev/loop0 /dev/loop1")?;
    let md = md();
    wait_until(
        "the daemon to manage md127",
        Duration::from_secs(30),
        || pong().filter(|p| p.arrays == ["md127"]),
    )?;
    md.write("safe_mode_delay", "1000")?;
    join_written(write_chunk(&md, 3, 600), "a write")?;
    // md's bits cover the write: the record stays clean where mdextmon
    // keeps them; md's own bitmap mode records the array dirty.
    let external = writes_leave_clean(&loops[0].path)?;
    let ev = wait_until(
        "every member's record to cover the write",
        Duration::from_secs(30),
        || {
            let a = recorded(&loops[0].path).ok()?;
            let b = recorded(&loops[1].path).ok()?;
            (a.1 == external && b.1 == external && a.0 == b.0).then_some(a.0)
        },
    )?;
    ensure!(
        md.read("array_state")? == "active",
        "array_state is {} (safe_mode_delay did not keep it active)",
        md.read("array_state")?
    );
    println!("stop: recorded at events {ev} (clean: {external}), array active; STOP_ARRAY");
    sh("dmesg -c > /dev/null")?;
    stop_array_like_systemd(&md.dev_path())?;
    let evs = wait_until(
        "every member to record the array clean",
        Duration::from_secs(30),
        || {
            let a = recorded(&loops[0].path).ok()?;
            let b = recorded(&loops[1].path).ok()?;
            let ok = a.1 && b.1 && a.0 == b.0 && a.2 == ["in-sync", "in-sync"] && b.2 == a.2;
            ok.then_some(a.0)
        },
    )?;
    println!("stop: recorded clean at events {evs} after STOP_ARRAY");
    wait_until(
        "the daemon to forget md127",
        Duration::from_secs(30),
        || pong().filter(|p| p.arrays.is_empty()),
    )?;
    // The next assembly: no resync.
    ctl("assemble so /dev/loop0 /dev/loop1")?;
    let rs = md.read("resync_start")?;
    ensure!(rs == "none", "resync_start after assembly is {rs}");
    wait_until(
        "the daemon to manage it again",
        Duration::from_secs(30),
        || pong().filter(|p| p.arrays == ["md127"]),
    )?;
    wait_until(
        "the array writable and idle",
        Duration::from_secs(30),
        || {
            let st = md.read("array_state").ok()?;
            let idle = md.read("sync_action").ok()? == "idle";
            (matches!(st.as_str(), "clean" | "active" | "active-idle") && idle).then_some(())
        },
    )?;
    let mdstat = std::fs::read_to_string("/proc/mdstat")?;
    print!("{mdstat}");
    ensure!(
        !mdstat.contains("resync"),
        "mdstat shows a resync:\n{mdstat}"
    );
    let dmesg = sh("dmesg")?;
    ensure!(
        !dmesg.contains("resync of RAID array md127"),
        "md resynced md127 after the stop:\n{dmesg}"
    );
    let got = read_direct(&md.dev_path(), 3 * CHUNK, CHUNK_LEN)?;
    ensure!(got == pattern(600, CHUNK_LEN), "chunk 3 reads back wrong");
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}
