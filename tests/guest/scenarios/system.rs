//! Issue 9: mdext as a system component, in a Debian 12 guest with systemd
//! as PID 1 whose root filesystem is on an mdext RAID1 (`scripts/sysguest`):
//! the initramfs hook assembles it, the daemon started there serves it
//! across the switch to the real root.

use crate::harness::{Ends, HostCheck, Phase, SystemScenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::sysfs::MdDev;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub static ROOT_BOOT: SystemScenario = SystemScenario {
    name: "systemd_root_on_mdext_raid1_takeover_kill_poweroff",
    scsi: &[],
    cmdline: "mdext.writer",
    phases: &[Phase {
        name: "boot",
        run: root_boot,
        ends: Ends::Ok,
    }],
    after: Some(root_clean_on_host),
};

/// Longest write allowed across the initramfs-to-service handover, and
/// across a SIGKILL and restart: generous for TCG on a busy 2-core host
/// (the figures measured are printed, and far below).
const HANDOVER_BOUND: Duration = Duration::from_secs(10);
const KILL_BOUND: Duration = Duration::from_secs(30);

/// The md device the root filesystem is mounted from.
fn root_md() -> Result<MdDev> {
    let src = sh("findmnt -n -o SOURCE /")?;
    let src = src.trim();
    let name = Path::new(src)
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("root source {src:?}"))?;
    ensure!(
        name.starts_with("md"),
        "the root filesystem is on {src}, not an md array"
    );
    Ok(sysfs().md(name))
}

/// The pid in mdextmon's pid file, if that process is alive.
fn daemon_pid() -> Result<u32> {
    let s =
        std::fs::read_to_string("/run/mdext/mdextmon.pid").context("/run/mdext/mdextmon.pid")?;
    let pid: u32 = s.trim().parse().context("pid file")?;
    ensure!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "mdextmon pid {pid} (pid file) is not running"
    );
    Ok(pid)
}

/// Write `mib` MiB to `path` in 64 KiB O_DSYNC writes; the longest single
/// write and the data's checksum source.
fn timed_writes(path: &Path, mib: usize, seed: u64) -> Result<Duration> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(nix::libc::O_DSYNC)
        .open(path)
        .with_context(|| path.display().to_string())?;
    let mut longest = Duration::ZERO;
    for i in 0..(mib * 16) as u64 {
        let buf = pattern(seed + i, 64 << 10);
        let t = Instant::now();
        f.write_all(&buf)?;
        longest = longest.max(t.elapsed());
    }
    Ok(longest)
}

fn verify_file(path: &Path, mib: usize, seed: u64) -> Result<()> {
    // Out of the page cache, so the bytes come from the array.
    sh("sync; echo 3 > /proc/sys/vm/drop_caches")?;
    let data = std::fs::read(path).with_context(|| path.display().to_string())?;
    ensure!(
        data.len() == mib << 20,
        "{} is {} bytes",
        path.display(),
        data.len()
    );
    for (i, c) in data.chunks(64 << 10).enumerate() {
        ensure!(
            c == pattern(seed + i as u64, 64 << 10).as_slice(),
            "{}: 64 KiB block {i} reads back wrong",
            path.display()
        );
    }
    Ok(())
}

fn root_boot() -> Result<()> {
    let init = std::fs::read_to_string("/proc/1/comm")?;
    ensure!(init.trim() == "systemd", "PID 1 is {init:?}, not systemd");
    let md = root_md()?;
    let version = md.metadata_version()?;
    println!("root on /dev/{} ({version})", md.name());
    ensure!(
        mdext::meta::is_mdext_version(&version),
        "root array's metadata_version is {version}, not mdext"
    );
    ensure!(md.read("level")? == "raid1", "root array is not raid1");
    let mut members = md.members();
    members.sort();
    ensure!(
        members == ["dev-vda", "dev-vdb"] || members == ["vda", "vdb"],
        "root array members are {members:?}, expected vda and vdb"
    );
    ensure!(md.degraded()? == 0, "root array is degraded");
    // The initramfs assembled it and started the daemon there; after the
    // switch to the real root mdextmon.service took it over: the
    // initramfs instance is gone and the service's main process manages
    // the array.
    let initramfs_pid: u32 = std::fs::read_to_string("/run/mdext/initramfs.pid")
        .context("/run/mdext/initramfs.pid (written by local-top/mdext)")?
        .trim()
        .parse()
        .context("/run/mdext/initramfs.pid")?;
    let pid = daemon_pid()?;
    let main_pid: u32 = unit_prop("MainPID")?.parse().context("MainPID")?;
    let active = sh("systemctl is-active mdextmon.service || true")?;
    println!(
        "initramfs mdextmon pid {initramfs_pid}; mdextmon.service {} MainPID {main_pid}; pid file {pid}",
        active.trim()
    );
    ensure!(
        active.trim() == "active",
        "mdextmon.service is {}",
        active.trim()
    );
    ensure!(
        main_pid == pid,
        "the pid file names {pid}, mdextmon.service's MainPID is {main_pid}"
    );
    ensure!(
        !Path::new(&format!("/proc/{initramfs_pid}")).exists(),
        "the initramfs mdextmon (pid {initramfs_pid}) still runs after the takeover"
    );
    let root = std::fs::read_link(format!("/proc/{pid}/root"))?;
    ensure!(
        root == Path::new("/"),
        "the managing mdextmon's root is {}, not the real root",
        root.display()
    );
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv0 = String::from_utf8_lossy(argv0.split(|b| *b == 0).next().unwrap_or_default());
    ensure!(
        argv0.starts_with('@'),
        "mdextmon's argv[0] is {argv0:?}: systemd's final killing spree would not spare it"
    );
    let status = ctl("status")?;
    ensure!(
        status.contains(md.name()),
        "mdextctl status does not list {}",
        md.name()
    );
    // The early writer wrote on the root filesystem from before
    // mdextmon.service started until now: across the handover.
    let r = early_writer_report()?;
    let started: u64 = unit_prop("ExecMainStartTimestampMonotonic")?
        .parse()
        .context("ExecMainStartTimestampMonotonic")?;
    let ready: u64 = unit_prop("ActiveEnterTimestampMonotonic")?
        .parse()
        .context("ActiveEnterTimestampMonotonic")?;
    println!(
        "handover: writer {} writes from {:.3}s to {:.3}s; mdextmon.service started {:.3}s, ready {:.3}s; \
         longest write {:.1} ms at {:.3}s",
        r.writes,
        r.first_us as f64 / 1e6,
        r.last_us as f64 / 1e6,
        started as f64 / 1e6,
        ready as f64 / 1e6,
        r.longest_us as f64 / 1e3,
        r.longest_at_us as f64 / 1e6
    );
    ensure!(
        r.first_us < started && r.last_us > ready,
        "the writer did not run across the handover"
    );
    ensure!(
        Duration::from_micros(r.longest_us) < HANDOVER_BOUND,
        "a write waited {:.1} ms across the handover (bound {HANDOVER_BOUND:?})",
        r.longest_us as f64 / 1e3
    );
    // Writes on the root filesystem go through (md holds each first write
    // of an idle array until the daemon records it dirty).
    let f = PathBuf::from("/var/tmp/mdext-root-write");
    let longest = timed_writes(&f, 8, 9)?;
    println!("8 MiB of O_DSYNC writes on the root filesystem, longest write {longest:?}");
    verify_file(&f, 8, 9)?;
    // The members' metadata records both in sync.
    for m in ["/dev/vda", "/dev/vdb"] {
        let e = examine(Path::new(m))?;
        let states: Vec<&str> = e["members"]
            .as_array()
            .context("members")?
            .iter()
            .filter_map(|m| m["state"].as_str())
            .collect();
        ensure!(
            states == ["in-sync", "in-sync"],
            "{m} records members {states:?}"
        );
    }
    // md's own scrub: the two halves of the mirror agree.
    let mism = check_mismatches(&md)?;
    println!("check scrub of the root array: mismatch_cnt {mism}");
    ensure!(mism == 0, "root array check: mismatch_cnt {mism}");
    kill_restart(&md)
}

/// `systemctl kill -s KILL mdextmon` while the root array is clean: the
/// next write is held by md until a daemon records the array dirty.
/// systemd restarts the service; the new daemon adopts the array and
/// answers; the write waits less than [`KILL_BOUND`].
fn kill_restart(md: &MdDev) -> Result<()> {
    let restarts0: u64 = unit_prop("NRestarts")?.parse().context("NRestarts")?;
    let old = daemon_pid()?;
    // Idle: the daemon records the array clean; md will hold the next write.
    sh("sync")?;
    wait_until(
        "the root array to be recorded clean",
        Duration::from_secs(120),
        || (md.read("array_state").ok()?.trim() == "clean").then_some(()),
    )?;
    sh("systemctl kill -s KILL mdextmon.service")?;
    wait_until(
        "the killed mdextmon to be gone",
        Duration::from_secs(30),
        || (!Path::new(&format!("/proc/{old}")).exists()).then_some(()),
    )?;
    let state = md.read("array_state")?;
    let f = PathBuf::from("/var/tmp/mdext-after-kill");
    let t = Instant::now();
    let longest = timed_writes(&f, 1, 31)?;
    let waited = t.elapsed();
    let new: u32 = wait_until(
        "mdextmon.service to run again",
        Duration::from_secs(60),
        || {
            let p: u32 = unit_prop("MainPID").ok()?.parse().ok()?;
            (p != 0 && p != old && sh("systemctl is-active mdextmon.service").is_ok()).then_some(p)
        },
    )?;
    let restarts: u64 = unit_prop("NRestarts")?.parse().context("NRestarts")?;
    println!(
        "kill: array {state} when killed; pid {old} -> {new}, NRestarts {restarts0} -> {restarts}; \
         1 MiB written in {:.1} ms, longest write {:.1} ms",
        waited.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3
    );
    ensure!(restarts > restarts0, "systemd did not count a restart");
    ensure!(
        waited < KILL_BOUND,
        "a write waited {waited:?} while mdextmon was restarted (bound {KILL_BOUND:?})"
    );
    verify_file(&f, 1, 31)?;
    ensure!(
        ctl("status")?.contains(md.name()),
        "the restarted mdextmon does not manage {}",
        md.name()
    );
    Ok(())
}

/// After `poweroff`: both root members' metadata reads clean, from the
/// host (mdextctl examine works on image files).
fn root_clean_on_host(h: &HostCheck) -> Result<()> {
    examine_clean(h, &h.disks[..2])
}

/// `mdextctl examine` of image files on the host: each records the array
/// clean, all at the same event count.
fn examine_clean(h: &HostCheck, disks: &[PathBuf]) -> Result<()> {
    let mut events = Vec::new();
    for d in disks {
        let o = std::process::Command::new(h.mdextctl)
            .arg("examine")
            .arg("--json")
            .arg(d)
            .output()?;
        ensure!(
            o.status.success(),
            "examine {}: {}",
            d.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let m = &v[0];
        let state = m["state"].as_str().unwrap_or("?");
        println!(
            "    host: {} state {state}, events {}",
            d.display(),
            m["events"]
        );
        if state != "clean" {
            bail!("{} records the array {state} after poweroff", d.display());
        }
        events.push(m["events"].as_u64().context("events")?);
    }
    ensure!(
        events.windows(2).all(|w| w[0] == w[1]),
        "members disagree on events: {events:?}"
    );
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds: the clock of systemd's `...Monotonic`
/// timestamps.
fn mono_us() -> u64 {
    let mut t = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively
    // borrowed `t` and reads nothing else.
    let rc = unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut t) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1000
}

/// What a writer saw: every 64 KiB O_DSYNC write timed.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WriterReport {
    pub writes: u64,
    /// Monotonic µs of the first write's start and the last write's end.
    pub first_us: u64,
    pub last_us: u64,
    /// The longest single write (µs) and when it started.
    pub longest_us: u64,
    pub longest_at_us: u64,
    /// Errors end the writer; the first one.
    pub error: Option<String>,
}

/// A thread writing 64 KiB O_DSYNC blocks round a 4 MiB file until told
/// to stop.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<WriterReport>,
}

impl Writer {
    /// Start writing `dir/writer.dat`; returns once the first write is
    /// done (so a later event surely falls among the writes).
    pub fn start(dir: &Path) -> Result<Writer> {
        use std::sync::atomic::{AtomicBool, Ordering};
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(nix::libc::O_DSYNC)
            .open(dir.join("writer.dat"))?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            use std::io::{Seek, SeekFrom};
            let mut r = WriterReport::default();
            let buf = pattern(77, 64 << 10);
            let mut i = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let t0 = mono_us();
                let res = f
                    .seek(SeekFrom::Start((i % 64) * (64 << 10)))
                    .and_then(|_| f.write_all(&buf));
                let t1 = mono_us();
                if let Err(e) = res {
                    r.error = Some(e.to_string());
                    break;
                }
                if r.writes == 0 {
                    r.first_us = t0;
                    let _ = tx.send(());
                }
                r.writes += 1;
                r.last_us = t1;
                if t1 - t0 > r.longest_us {
                    r.longest_us = t1 - t0;
                    r.longest_at_us = t0;
                }
                i += 1;
            }
            drop(tx);
            r
        });
        // Bounded: a first write that never returns is the failure.
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            bail!("the writer's first write did not complete within 120 s");
        }
        Ok(Writer { stop, handle })
    }

    pub fn stop(self) -> Result<WriterReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))
    }
}

const WRITER_STOP: &str = "/run/mdext-writer.stop";
const WRITER_REPORT: &str = "/run/mdext-writer.json";

/// `guest --writer DIR`: the early writer unit of the systemd guest
/// (`mdext-writer.service`, ordered before mdextmon.service). Starts
/// writing on the root filesystem, tells systemd it is ready after the
/// first write (so the daemon's start, and its takeover of the initramfs
/// daemon, happen while it writes), writes until `/run/mdext-writer.stop`
/// appears, then leaves its report in `/run/mdext-writer.json`.
pub fn writer_service(dir: &Path) -> i32 {
    let w = match Writer::start(dir) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("writer: {e:#}");
            return 1;
        }
    };
    if let Some(sock) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
            let _ = s.send_to(b"READY=1", sock);
        }
    }
    // Bounded wait on the stop file (the test phase creates it).
    let stopped = wait_until("the stop file", Duration::from_secs(1800), || {
        Path::new(WRITER_STOP).exists().then_some(())
    });
    let r = w.stop();
    let out = match (stopped, r) {
        (Ok(()), Ok(r)) => serde_json::to_string(&r).unwrap_or_default(),
        (Err(e), _) | (_, Err(e)) => serde_json::to_string(&WriterReport {
            error: Some(format!("{e:#}")),
            ..WriterReport::default()
        })
        .unwrap_or_default(),
    };
    match std::fs::write(WRITER_REPORT, out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("writer: {WRITER_REPORT}: {e}");
            1
        }
    }
}

/// Stop the early writer unit and read its report.
fn early_writer_report() -> Result<WriterReport> {
    std::fs::write(WRITER_STOP, "")?;
    let r = wait_until(
        "the early writer's report",
        Duration::from_secs(120),
        || {
            std::fs::read(WRITER_REPORT)
                .ok()
                .and_then(|b| serde_json::from_slice::<WriterReport>(&b).ok())
        },
    )?;
    if let Some(e) = &r.error {
        bail!("the early writer failed: {e}");
    }
    Ok(r)
}

/// `systemctl show -p PROP --value mdextmon`.
fn unit_prop(prop: &str) -> Result<String> {
    Ok(sh(&format!(
        "systemctl show -p {prop} --value mdextmon.service"
    ))?
    .trim()
    .to_string())
}

pub static HOTPLUG: SystemScenario = SystemScenario {
    name: "systemd_udev_hot_remove_readd_rebuilds_dirty_chunks",
    scsi: &[64, 64],
    cmdline: "",
    phases: &[Phase {
        name: "hotplug",
        run: hotplug,
        ends: Ends::Ok,
    }],
    after: Some(all_clean_on_host),
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_SECTORS: u64 = CHUNK / 512;

/// SCSI disks (sd*) present now, sorted.
fn scsi_disks() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("sd"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn member_states(dev: &Path) -> Result<Vec<String>> {
    let e = examine(dev)?;
    Ok(e["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["state"].as_str().unwrap_or("?").to_string())
        .collect())
}

fn hotplug() -> Result<()> {
    let disks = scsi_disks();
    ensure!(
        disks == ["sda", "sdb"],
        "SCSI disks {disks:?}, expected sda and sdb"
    );
    // udev watches the disks: the writes of create end in a change event,
    // on which the rules' `mdextctl incremental` starts the array.
    ctl("create --level 1 --raid-devices 2 --name data --bitmap-chunk 64K --time-base 1 --assume-clean /dev/sda /dev/sdb")?;
    let node = wait_until(
        "udev to start /dev/md/data",
        Duration::from_secs(120),
        || std::fs::canonicalize("/dev/md/data").ok(),
    )?;
    let name = node
        .file_name()
        .and_then(|n| n.to_str())
        .context("/dev/md/data")?
        .to_string();
    let md = sysfs().md(&name);
    println!("udev assembled data as /dev/{name}");
    wait_until(
        "the data array managed and whole",
        Duration::from_secs(60),
        || (md.can_clear().ok()? == Some(true)).then_some(()),
    )?;
    for c in 0..8 {
        write_direct(&node, c * CHUNK, &pattern(100 + c, CHUNK_LEN))?;
    }
    // Hot-remove sdb (the SCSI device goes away, as an unplugged disk).
    let removed_uuid = examine(Path::new("/dev/sdb"))?["device_uuid"]
        .as_str()
        .context("device_uuid")?
        .to_string();
    sh("echo 1 > /sys/block/sdb/device/delete")?;
    wait_until(
        "the removal recorded (udev: incremental --remove)",
        Duration::from_secs(60),
        || {
            let s = member_states(Path::new("/dev/sda")).ok()?;
            (s.get(1).map(String::as_str) != Some("in-sync") && md.degraded().ok()? == 1)
                .then_some(s)
        },
    )
    .map(|s| println!("after hot-remove sda records {s:?}"))?;
    let dirty = [10u64, 20, 21, 300, 900];
    for &c in &dirty {
        write_direct(&node, c * CHUNK, &pattern(200 + c, CHUNK_LEN))?;
    }
    // Bring it back: a rescan of every SCSI host finds the disk again
    // (possibly under another name); udev's rules re-add it.
    sh("for h in /sys/class/scsi_host/host*/scan; do echo '- - -' > $h; done")?;
    let back = wait_until("the disk back", Duration::from_secs(60), || {
        scsi_disks().into_iter().find(|d| d != "sda")
    })?;
    println!("hot-added back as {back}");
    let back_path = PathBuf::from(format!("/dev/{back}"));
    ensure!(
        examine(&back_path)?["device_uuid"].as_str() == Some(removed_uuid.as_str()),
        "{back} is not the removed member"
    );
    wait_until(
        "udev to re-add it and the rebuild to end",
        Duration::from_secs(300),
        || {
            let whole = md.degraded().ok()? == 0
                && md.read("sync_action").ok()? == "idle"
                && md.can_clear().ok()? == Some(true);
            whole.then_some(())
        },
    )?;
    // A new disk's counters start at zero: all it was written is the
    // rebuild and its metadata.
    let written = written_sectors(&back)?;
    let data = dirty.len() as u64 * CHUNK_SECTORS;
    println!(
        "bitmap rebuild wrote {written} sectors to the returning member ({data} for {} dirty chunks)",
        dirty.len()
    );
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    for p in ["/dev/sda", back_path.to_str().unwrap_or_default()] {
        let s = member_states(Path::new(p))?;
        ensure!(
            s == ["in-sync", "in-sync"],
            "{p} records {s:?} after the rebuild"
        );
    }
    for c in 0..8u64 {
        let seed = if dirty.contains(&c) { 200 } else { 100 };
        ensure!(
            read_direct(&node, c * CHUNK, CHUNK_LEN)? == pattern(seed + c, CHUNK_LEN),
            "chunk {c} reads back wrong"
        );
    }
    for &c in &dirty {
        ensure!(
            read_direct(&node, c * CHUNK, CHUNK_LEN)? == pattern(200 + c, CHUNK_LEN),
            "chunk {c} reads back wrong"
        );
    }
    let mism = check_mismatches(&md)?;
    println!("check scrub of the data array: mismatch_cnt {mism}");
    ensure!(mism == 0, "data array check: mismatch_cnt {mism}");
    // Left running: poweroff must leave it clean too.
    Ok(())
}

/// After `poweroff`: every array's members (root and the SCSI data disks)
/// read clean from the host.
fn all_clean_on_host(h: &HostCheck) -> Result<()> {
    root_clean_on_host(h)?;
    examine_clean(h, &h.disks[2..])
}
