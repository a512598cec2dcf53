//! In-guest helpers for scenarios.

use anyhow::{bail, ensure, Context, Result};
use mdext::device::{Access, Device};
use mdext::md::ArrayState;
use mdext::sysfs::{poll_watches, DevNum, MdDev, Sysfs};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Run a shell command; its stdout, or an error with its stderr.
pub fn sh(cmd: &str) -> Result<String> {
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("sh -c {cmd}"))?;
    if !o.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A loop device over a fresh file in the guest's tmpfs.
pub struct Loop {
    pub path: PathBuf,
    pub dev: DevNum,
}

/// `n` fresh loop devices of `mib` MiB each.
pub fn loop_devices(n: usize, mib: u64) -> Result<Vec<Loop>> {
    loop_devices_from(0, n, mib)
}

/// `n` fresh loop devices of `mib` MiB each, from `/dev/loop{first}` on
/// (for a scenario whose lower loop devices are in use).
pub fn loop_devices_from(first: usize, n: usize, mib: u64) -> Result<Vec<Loop>> {
    let mut v = Vec::new();
    for i in first..first + n {
        let img = format!("/tmp/disk{i}.img");
        let f = File::create(&img)?;
        f.set_len(mib << 20)?;
        drop(f);
        let path = PathBuf::from(format!("/dev/loop{i}"));
        // Beyond the kernel's first eight, opening a node of the loop
        // major makes the device (block legacy autoload).
        if !path.exists() {
            sh(&format!("mknod {} b 7 {i}", path.display()))?;
        }
        sh(&format!("losetup {} {img}", path.display()))?;
        v.push(Loop {
            dev: devnum(&path)?,
            path,
        });
    }
    Ok(v)
}

/// The device number of a block device node.
pub fn devnum(p: &Path) -> Result<DevNum> {
    DevNum::of_block_device(p).with_context(|| p.display().to_string())
}

/// Read `len` bytes at `off` (both multiples of 4096) with O_DIRECT,
/// bypassing the page cache.
pub fn read_direct(p: &Path, off: u64, len: usize) -> Result<Vec<u8>> {
    let d = Device::open(p, Access::Read)?;
    Ok(d.read_at(off, len)?[..len].to_vec())
}

/// Write with O_DIRECT (offset and length multiples of 4096).
pub fn write_direct(p: &Path, off: u64, data: &[u8]) -> Result<()> {
    Ok(Device::open(p, Access::SharedWrite)?.write_at(off, data)?)
}

/// Deterministic test data: `len` bytes for (seed, position).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0] // the low byte
        })
        .collect()
}

/// Chunk numbers whose bit is set in a bitmap area.
pub fn set_bits(bytes: &[u8]) -> Vec<u64> {
    mdext::bitmap::dirty_chunks(bytes, bytes.len() as u64 * 8)
}

/// Poll until `f` returns Some, or fail after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal write-pending responder (the experiments' "monitor lite"): a
/// thread that waits on array_state notifications and answers
/// `write-pending` with `active`. Stands in for mdextmon in tests of the
/// sysfs layer alone.
pub struct Responder {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64>>>,
}

impl Responder {
    pub fn start(md: &MdDev) -> Result<Responder> {
        let md = md.clone();
        let w = md.watch("array_state")?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || -> Result<u64> {
            let mut answered = 0;
            while !s2.load(Ordering::Relaxed) {
                poll_watches(&[&w], Some(Duration::from_millis(200)))?;
                if w.read_fresh()?.trim() == "write-pending" {
                    md.set_array_state(ArrayState::Active)?;
                    answered += 1;
                }
            }
            Ok(answered)
        });
        Ok(Responder {
            stop,
            handle: Some(handle),
        })
    }

    /// Stop; returns how many write-pending states were answered.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("responder thread panicked"),
            None => Ok(0),
        }
    }
}

/// Print what helps debug a failure: /proc/mdstat, every array's state,
/// where each mdextmon thread and every blocked task waits, and the kernel
/// log tail. Each command is bounded: a hang is what is being debugged.
pub fn dump_state() {
    for c in [
        "cat /proc/mdstat",
        "grep -H . /sys/block/md*/md/array_state",
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = mdextmon ] || continue; \
           for t in $p/task/*; do echo \"$t $(cat $t/comm) wchan=$(cat $t/wchan)\"; \
           cat $t/stack; done; done",
        "for t in /proc/[0-9]*; do grep -q '^State:.*D' $t/status 2>/dev/null && \
           echo \"$t $(cat $t/comm) wchan=$(cat $t/wchan)\"; done",
        "timeout 5 systemctl status --no-pager mdextmon.service",
        "dmesg | tail -40",
    ] {
        if let Ok(o) = sh(&format!("{c}; true")) {
            println!("--- {c}\n{o}");
        }
    }
}

/// Once `after` has passed, dump what a stuck guest is stuck on: SysRq `w`
/// (every blocked task's kernel stack, printed to the console whatever the
/// log level, and without reading any filesystem a held array may be
/// under) and every md array's state. A diagnostic only: it never decides
/// a test. The failing phase's own [`dump_state`] runs where the phase can
/// still fail by itself; this is for the phase that never returns.
pub fn stuck_dump(after: Duration) {
    let _ = std::thread::Builder::new()
        .name("stuck-dump".into())
        .spawn(move || {
            std::thread::sleep(after);
            let _ = std::fs::write("/proc/sysrq-trigger", "w");
            let mut states = Vec::new();
            if let Ok(rd) = std::fs::read_dir("/sys/block") {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if let Ok(st) = std::fs::read_to_string(e.path().join("md/array_state")) {
                        states.push(format!("{n} {}", st.trim()));
                    }
                }
            }
            eprintln!(
                "MDEXT-STUCK: the phase still runs after {} s; blocked tasks dumped (SysRq w); arrays: {}",
                after.as_secs(),
                states.join(", ")
            );
        });
}

/// The real sysfs.
pub fn sysfs() -> Sysfs {
    Sysfs::default()
}

/// Run `mdextctl ARGS` (split on whitespace) with a bound on its run time;
/// returns stdout, or an error carrying its status and stderr.
pub fn ctl(args: &str) -> Result<String> {
    let (ok, out, err) = ctl_status(args)?;
    if !ok {
        bail!("mdextctl {args} failed: {}", err.trim());
    }
    Ok(out)
}

/// Like [`ctl`] but returns (success, stdout, stderr) instead of failing.
pub fn ctl_status(args: &str) -> Result<(bool, String, String)> {
    let (code, out, err) = ctl_exit(args)?;
    Ok((code == Some(0), out, err))
}

/// Like [`ctl`] but returns (exit code, stdout, stderr) instead of failing.
pub fn ctl_exit(args: &str) -> Result<(Option<i32>, String, String)> {
    let o = Command::new("timeout")
        .arg("120")
        .arg("/bin/mdextctl")
        .args(args.split_whitespace())
        .output()
        .with_context(|| format!("mdextctl {args}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    print!("$ mdextctl {args}\n{out}{err}");
    if o.status.code() == Some(124) {
        bail!("mdextctl {args} hung (killed after 120 s)");
    }
    Ok((o.status.code(), out, err))
}

/// Stop the running mdextmon (SIGTERM) and wait until it is gone.
pub fn stop_daemon() -> Result<()> {
    sh("kill -TERM $(cat /run/mdext/mdextmon.pid)")?;
    wait_until("mdextmon to exit", Duration::from_secs(20), || {
        (!Path::new("/run/mdext/mdextmon.sock").exists()).then_some(())
    })
}

/// `mdextctl examine --json DEV` of one device.
pub fn examine(dev: &Path) -> Result<serde_json::Value> {
    let out = ctl(&format!("examine --json {}", dev.display()))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v.get(0).cloned().context("examine printed no device")
}

/// Wait until `dev`'s record (`examine`) reads `state` ("dirty",
/// "clean"). The record that marks a clean mirror dirty follows md's first
/// write instead of preceding it (`monitor::dirty_may_trail`), so a test
/// that just wrote waits for it.
pub fn wait_recorded(dev: &Path, state: &str) -> Result<()> {
    wait_until(
        &format!("{} to be recorded {state}", dev.display()),
        Duration::from_secs(30),
        || {
            examine(dev)
                .ok()
                .filter(|e| e["state"] == state)
                .map(|_| ())
        },
    )
}

/// Whether `dev`'s record is of a whole mirror whose bitmap mdextmon keeps
/// (external mode): md's writes leave such a record clean
/// (`monitor::dirty_may_trail`), its bits being the dirty record.
pub fn writes_leave_clean(dev: &Path) -> Result<bool> {
    let e = examine(dev)?;
    let members = e["members"].as_array().context("examine: no members")?;
    Ok((e["level"] == "raid1" || e["level"] == "raid10")
        && e["bitmap"]["mode"] == "external"
        && members.iter().all(|m| m["state"] == "in-sync"))
}

/// Wait until `dev`'s record covers the writes just made, and say how:
/// "dirty" when it marks the array dirty (parity levels, a member out,
/// md's own bitmap mode); "bits" for a whole mirror whose bits mdextmon
/// keeps ([`writes_leave_clean`]), whose record stays clean while md's bits
/// of the written chunks are set on `dev` (a start resyncs them).
pub fn wait_writes_covered(dev: &Path) -> Result<&'static str> {
    let bits = writes_leave_clean(dev)?;
    wait_until(
        &format!("{}'s record or bits to cover the writes", dev.display()),
        Duration::from_secs(30),
        || {
            let e = examine(dev).ok()?;
            match (bits, e["state"].as_str()?) {
                (false, "dirty") => Some("dirty"),
                (true, "clean") => (!mode_bits(dev).ok()?.is_empty()).then_some("bits"),
                _ => None,
            }
        },
    )
}

/// Wait for a running resync/recovery to end (sync_action idle, resync_start
/// none).
pub fn wait_sync_idle(md: &MdDev, limit: Duration) -> Result<()> {
    wait_until("resync/recovery to finish", limit, || {
        let idle = md.read("sync_action").ok()? == "idle";
        let done = md.read("resync_start").ok()? == "none";
        (idle && done).then_some(())
    })
}

/// Run md's own scrub and return mismatch_cnt.
pub fn check_mismatches(md: &MdDev) -> Result<u64> {
    md.write("sync_action", "check")?;
    wait_until("check to start", Duration::from_secs(10), || {
        (md.read("sync_action").ok()? == "check" || md.read("mismatch_cnt").is_ok()).then_some(())
    })?;
    wait_until("check to finish", Duration::from_secs(300), || {
        (md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    Ok(md.mismatch_cnt()?)
}

/// Sectors written to a block device since boot.
pub fn written_sectors(kname: &str) -> Result<u64> {
    Ok(sysfs().block_stat(kname)?.write_sectors.0)
}

/// md5 of a whole file or device (busybox md5sum).
pub fn md5(p: &Path) -> Result<String> {
    Ok(sh(&format!("md5sum {}", p.display()))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The set bits of `dev` in the region its recorded bitmap mode runs from:
/// md's own region at sector 8 (bits from byte 256) in mode `kernel`, the
/// external region at the recorded offset otherwise (first 4 KiB).
pub fn mode_bits(dev: &Path) -> Result<Vec<u64>> {
    let len = if mode_bits_at(dev)? % 512 == 0 {
        4096
    } else {
        4096 - 256
    };
    mode_bits_len(dev, len)
}

/// The set bits of `dev` in the first `len` bytes of its mode's bitmap.
pub fn mode_bits_len(dev: &Path, len: usize) -> Result<Vec<u64>> {
    Ok(set_bits(&mode_bytes(dev, len)?))
}

/// The first `len` bytes of `dev`'s bitmap, in the region its recorded
/// mode runs from ([`mode_bits_at`]).
pub fn mode_bytes(dev: &Path, len: usize) -> Result<Vec<u8>> {
    let at = mode_bits_at(dev)?;
    // O_DIRECT: read whole 4 KiB blocks around the bits.
    let from = usize::try_from(at % 4096)?;
    let bytes = read_direct(dev, at - at % 4096, (from + len).div_ceil(4096) * 4096)?;
    Ok(bytes[from..from + len].to_vec())
}

/// `mdextctl fail` then `remove` of `dev` in md127, waiting for mdextmon to
/// detach it; `can_clear` must stay false after each (external mode).
/// Returns how many slots are degraded after the removal (at least one).
pub fn fail_and_remove(md: &MdDev, dev: &str) -> Result<u32> {
    ctl(&format!("fail md127 {dev}"))?;
    ensure!(can_clear_is(md, false)?, "can_clear after fail");
    // mdextmon records the failure and detaches the member by itself.
    let kname = dev.trim_start_matches("/dev/");
    wait_until(
        "the failed member to be detached",
        Duration::from_secs(10),
        || (!Path::new(&format!("/sys/block/md127/md/dev-{kname}")).exists()).then_some(()),
    )?;
    ctl(&format!("remove md127 {dev}"))?;
    ensure!(can_clear_is(md, false)?, "can_clear after remove");
    let degraded = md.degraded()?;
    ensure!(degraded >= 1, "not degraded after remove");
    Ok(degraded)
}

/// The byte offset on `dev` of the first bitmap bit in the region its
/// recorded bitmap mode runs from: byte 256 of sector 8 in mode `kernel`,
/// the external region's start otherwise.
pub fn mode_bits_at(dev: &Path) -> Result<u64> {
    let e = examine(dev)?;
    if e["bitmap"]["mode"] == "kernel" {
        Ok(8 * 512 + 256)
    } else {
        Ok(e["bitmap"]["offset_sectors"]
            .as_u64()
            .context("examine: bitmap offset")?
            * 512)
    }
}

/// The daemon's answer to a ping on the default run directory, if it
/// answers.
pub fn pong() -> Option<mdext::control::Pong> {
    mdext::control::ping(Path::new("/run/mdext"), Duration::from_secs(2)).ok()
}

/// Whether `pid` runs (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
    })
}

/// The array runs md's own bitmap at sector 8 (kernels from 6.18 on),
/// where `can_clear` is inert: the can_clear checks do not apply.
pub fn kernel_mode(md: &MdDev) -> bool {
    md.read("bitmap/metadata").is_ok_and(|m| m == "internal")
}

/// `can_clear` reads `want`, or the array runs in the kernel-managed mode.
pub fn can_clear_is(md: &MdDev, want: bool) -> Result<bool> {
    Ok(kernel_mode(md) || md.can_clear()? == Some(want))
}

/// A scenario that does not apply to the running kernel (it tests the
/// external bitmap's can_clear protocol, and md from 6.18 on offers no
/// external bitmap): the harness reports it as ignored, with the reason.
#[derive(Debug)]
pub struct NotApplicable(pub String);

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotApplicable {}

/// Whether this kernel offers md's external bitmap to an external-metadata
/// array (md up to 6.17): probed on a scratch md device, as mdext does.
pub fn kernel_offers_external_bitmap() -> Result<bool> {
    let sysfs = sysfs();
    let name = "md_probe";
    let md = sysfs.new_array(name)?;
    let offered = md.has_attr("bitmap/metadata");
    // `clear` takes the scratch device away again.
    md.set_array_state(mdext::md::ArrayState::Clear)?;
    Ok(offered)
}

/// End the scenario as not applicable unless the kernel offers the
/// external bitmap.
pub fn needs_external_bitmap(what: &str) -> Result<()> {
    if kernel_offers_external_bitmap()? {
        return Ok(());
    }
    Err(NotApplicable(format!(
        "{what}: this kernel offers no external bitmap (md from 6.18 on runs the kernel-managed mode)"
    ))
    .into())
}

/// Write 64 KiB array chunks `chunks` (O_DIRECT), each with the pattern
/// of `seed + chunk`.
pub fn write_chunks(md: &MdDev, chunks: &[u64], seed: u64) -> Result<()> {
    for &c in chunks {
        write_direct(&md.dev_path(), c << 16, &pattern(seed + c, 64 << 10))?;
    }
    Ok(())
}

/// Read back 64 KiB array chunks written by [`write_chunks`] with `seed`.
pub fn verify_chunks(md: &MdDev, chunks: &[u64], seed: u64) -> Result<()> {
    for &c in chunks {
        let got = read_direct(&md.dev_path(), c << 16, 64 << 10)?;
        if got != pattern(seed + c, 64 << 10) {
            bail!("chunk {c} reads back wrong");
        }
    }
    Ok(())
}

/// Wait for a rebuild to end (no slot degraded, no sync running) and the
/// daemon to allow clearing again.
pub fn wait_whole(md: &MdDev) -> Result<()> {
    wait_until("recovery to end", Duration::from_secs(180), || {
        (md.degraded().ok()? == 0 && md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    wait_until(
        "can_clear true after the rebuild",
        Duration::from_secs(20),
        || can_clear_is(md, true).ok()?.then_some(()),
    )
}

/// Start mdextmon (no arguments: it takes over every mdext array), its
/// stderr appended to /run/mdext/mdextmon.log, with `MDEXT_FAILPOINT` set
/// to `failpoint` if given; wait until it answers.
pub fn start_daemon(failpoint: Option<&str>) -> Result<()> {
    std::fs::create_dir_all("/run/mdext")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/run/mdext/mdextmon.log")?;
    let mut c = std::process::Command::new("/bin/mdextmon");
    if let Some(f) = failpoint {
        c.env("MDEXT_FAILPOINT", f);
    }
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    c.spawn()?;
    wait_until("mdextmon to answer", Duration::from_secs(10), || {
        mdext::control::call(
            Path::new("/run/mdext"),
            &mdext::control::Request::Ping,
            Duration::from_secs(1),
        )
        .ok()
        .map(|_| ())
    })
}
