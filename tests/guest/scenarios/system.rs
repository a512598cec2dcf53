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
    name: "systemd_root_on_mdext_raid1_boot_and_poweroff",
    scsi: &[],
    phases: &[Phase {
        name: "boot",
        run: root_boot,
        ends: Ends::Ok,
    }],
    after: Some(root_clean_on_host),
};

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
    // The initramfs assembled it and started the daemon there; it serves
    // the array now.
    let pid = daemon_pid()?;
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv0 = String::from_utf8_lossy(argv0.split(|b| *b == 0).next().unwrap_or_default());
    println!("mdextmon pid {pid}, argv[0] {argv0}");
    let status = ctl("status")?;
    ensure!(
        status.contains(md.name()),
        "mdextctl status does not list {}",
        md.name()
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
    Ok(())
}

/// After `poweroff`: both root members' metadata reads clean, from the
/// host (mdextctl examine works on image files).
fn root_clean_on_host(h: &HostCheck) -> Result<()> {
    let mut events = Vec::new();
    for d in &h.disks[..2] {
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
        "root members disagree on events: {events:?}"
    );
    Ok(())
}
