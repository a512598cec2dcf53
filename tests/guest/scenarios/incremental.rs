//! Issue 9, items 1 and 2: incremental assembly (`mdextctl incremental`),
//! `assemble --scan` of several arrays, and the udev rules run by a real
//! systemd-udevd.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub static ONE_BY_ONE: Scenario = Scenario {
    name: "incremental_starts_after_the_last_member",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: one_by_one,
        ends: Ends::Ok,
    }],
};

pub static RUN_READD_REMOVE: Scenario = Scenario {
    name: "incremental_run_degraded_then_readd_and_remove",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: run_readd_remove,
        ends: Ends::Ok,
    }],
};

pub static SCAN_SEVERAL: Scenario = Scenario {
    name: "incremental_assemble_scan_starts_every_array",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: scan_several,
        ends: Ends::Ok,
    }],
};

pub static RACE: Scenario = Scenario {
    name: "incremental_racing_members_start_the_array_once",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: race,
        ends: Ends::Ok,
    }],
};

pub static UDEV_RULES: Scenario = Scenario {
    name: "incremental_udev_rules_assemble_and_name_arrays",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: udev_rules,
        ends: Ends::Ok,
    }],
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_SECTORS: u64 = CHUNK / 512;
const PENDING: &str = "/run/mdext/incremental";

fn mdstat() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/mdstat")?)
}

/// md devices listed in /proc/mdstat.
fn md_lines() -> Result<Vec<String>> {
    Ok(mdstat()?
        .lines()
        .filter(|l| l.starts_with("md"))
        .map(str::to_string)
        .collect())
}

/// The pending files (UUID.json) under /run/mdext/incremental.
fn pending_files() -> Vec<String> {
    std::fs::read_dir(PENDING)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

fn uuid_of(dev: &Path) -> Result<String> {
    Ok(examine(dev)?["array_uuid"]
        .as_str()
        .context("array_uuid")?
        .to_string())
}

/// md5 of the first `mib` MiB of the array.
fn md5_head(md: &MdDev, mib: u64) -> Result<String> {
    Ok(sh(&format!(
        "dd if={} bs=1M count={mib} iflag=direct 2>/dev/null | md5sum",
        md.dev_path().display()
    ))?
    .split_whitespace()
    .next()
    .unwrap_or_default()
    .to_string())
}

fn member_states(dev: &Path) -> Result<Vec<String>> {
    Ok(examine(dev)?["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["state"].as_str().unwrap_or("?").to_string())
        .collect())
}

/// (a) Members fed one at a time: the array starts with the last one, not
/// before; its data reads back; a non-mdext disk is refused quietly.
fn one_by_one() -> Result<()> {
    let loops = loop_devices(4, 64)?;
    ctl("create --level 5 --raid-devices 3 --name inc --chunk 64K --bitmap-chunk 64K --assume-clean /dev/loop0 /dev/loop1 /dev/loop2")?;
    ctl("assemble inc /dev/loop0 /dev/loop1 /dev/loop2")?;
    let md = sysfs().md("md127");
    for c in 0..32u64 {
        write_chunks(&md, &[c], 40)?;
    }
    let sum = md5_head(&md, 2)?;
    ctl("stop md127")?;
    let uuid = uuid_of(&loops[0].path)?;

    // A disk without mdext metadata: status 1, one line, nothing changed.
    let before = md5(&loops[3].path)?;
    let (code, out, err) = ctl_exit("incremental /dev/loop3")?;
    ensure!(code == Some(1), "non-member exited {code:?}");
    ensure!(
        out.is_empty() && err.lines().count() == 1 && err.contains("no mdext metadata"),
        "non-member: out {out:?} err {err:?}"
    );
    ensure!(md5(&loops[3].path)? == before, "non-member was changed");
    let (code, out, _) = ctl_exit("incremental --export /dev/loop3")?;
    ensure!(code == Some(1) && out.is_empty(), "export of a non-member");
    ensure!(pending_files().is_empty(), "non-member recorded");

    for (i, l) in loops[..2].iter().enumerate() {
        let out = ctl(&format!("incremental {}", l.path.display()))?;
        ensure!(out.contains("waiting"), "member {i}: {out}");
        ensure!(
            md_lines()?.is_empty(),
            "array started after {} of 3 members: {}",
            i + 1,
            mdstat()?
        );
        let p: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{PENDING}/{uuid}.json"))?)?;
        ensure!(
            p["devices"].as_array().map(Vec::len) == Some(i + 1),
            "pending set after {} members: {p}",
            i + 1
        );
    }
    let out = ctl("incremental --export /dev/loop2")?;
    ensure!(
        out.contains("MDEXT_INCREMENTAL=started")
            && out.contains("MDEXT_STARTED=yes")
            && out.contains("MDEXT_MD=md127")
            && out.contains(&format!("MDEXT_UUID={uuid}")),
        "{out}"
    );
    let lines = md_lines()?;
    ensure!(
        lines.len() == 1 && lines[0].contains("raid5") && lines[0].contains("loop2"),
        "{}",
        mdstat()?
    );
    ensure!(mdstat()?.contains("[3/3] [UUU]"), "{}", mdstat()?);
    let detail = sh("mdadm --detail /dev/md127")?;
    ensure!(
        detail.contains("Active Devices : 3") && !detail.contains("degraded"),
        "mdadm --detail: {detail}"
    );
    ensure!(
        pending_files().is_empty(),
        "pending set left after the start"
    );
    ensure!(md5_head(&md, 2)? == sum, "data changed across the restart");
    for c in 0..32u64 {
        verify_chunks(&md, &[c], 40)?;
    }
    // udev reports `change` for members too: a member already in is left.
    let (code, out, _) = ctl_exit("incremental /dev/loop1")?;
    ensure!(
        code == Some(0) && out.contains("already a member of /dev/md127"),
        "{code:?} {out}"
    );
    ensure!(pending_files().is_empty(), "a running member recorded");
    ensure!(md.degraded()? == 0, "array degraded");
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt after the start");
    ctl("stop md127")?;
    Ok(())
}

/// (b) `incremental --run` starts a raid1 degraded when a member stays
/// away; the member fed later is re-added and rebuilt from the bitmap only.
/// (c) `incremental --remove` of a running member records it failed; fed
/// again, it comes back with a bitmap rebuild.
fn run_readd_remove() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name rr --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    let uuid = uuid_of(&loops[0].path)?;
    ensure!(
        ctl("incremental /dev/loop0")?.contains("waiting"),
        "one of two"
    );
    ensure!(md_lines()?.is_empty(), "started with one of two");
    // Nothing pending by that name: status 1.
    let (code, _, err) = ctl_exit("incremental --run nosuch")?;
    ensure!(code == Some(1) && err.contains("nosuch"), "{code:?} {err}");
    let out = ctl("incremental --run rr")?;
    ensure!(out.contains("running degraded"), "{out}");
    let md = sysfs().md("md127");
    ensure!(md.degraded()? == 1, "not degraded");
    ensure!(mdstat()?.contains("[2/1]"), "{}", mdstat()?);
    ensure!(pending_files().is_empty(), "pending left after --run");
    // Once running, --run again is a no-op.
    let out = ctl(&format!("incremental --run {uuid}"))?;
    ensure!(out.contains("already running as /dev/md127"), "{out}");

    let dirty = [3u64, 9, 10, 400];
    write_chunks(&md, &dirty, 7)?;
    let w0 = written_sectors("loop1")?;
    let out = ctl("incremental /dev/loop1")?;
    ensure!(out.contains("re-added to /dev/md127"), "{out}");
    wait_whole(&md)?;
    let written = written_sectors("loop1")? - w0;
    let data = dirty.len() as u64 * CHUNK_SECTORS;
    println!(
        "bitmap rebuild after incremental re-add wrote {written} sectors ({data} for {} dirty chunks)",
        dirty.len()
    );
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    verify_chunks(&md, &dirty, 7)?;
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt after the re-add");

    // (c) loop1 "vanishes": recorded failed by the daemon.
    let out = ctl("incremental --remove /dev/loop1")?;
    ensure!(
        out.contains("recorded failed and removed from /dev/md127"),
        "{out}"
    );
    wait_until("loop1 detached", Duration::from_secs(20), || {
        (!Path::new("/sys/block/md127/md/dev-loop1").exists()).then_some(())
    })?;
    ensure!(
        member_states(&loops[0].path)?[1] == "failed",
        "examine of loop0 does not record loop1 failed: {:?}",
        member_states(&loops[0].path)?
    );
    ensure!(md.degraded()? == 1, "not degraded after --remove");
    let detail = sh("mdadm --detail /dev/md127")?;
    ensure!(detail.contains("degraded"), "mdadm --detail: {detail}");
    // A device in no array: status 1.
    let (code, _, _) = ctl_exit("incremental --remove /dev/loop7")?;
    ensure!(code == Some(1), "--remove of a stranger exited {code:?}");
    // The last in-sync member cannot go: status 2, nothing changed.
    let (code, _, err) = ctl_exit("incremental --remove /dev/loop0")?;
    ensure!(
        code == Some(2),
        "--remove of the last member exited {code:?}: {err}"
    );
    ensure!(md.degraded()? == 1, "the last member was failed");

    // Hot-added back: a bitmap rebuild of what was written meanwhile.
    let dirty2 = [20u64, 21];
    write_chunks(&md, &dirty2, 9)?;
    let w0 = written_sectors("loop1")?;
    let out = ctl("incremental /dev/loop1")?;
    ensure!(out.contains("re-added"), "{out}");
    wait_whole(&md)?;
    let written = written_sectors("loop1")? - w0;
    let data = dirty2.len() as u64 * CHUNK_SECTORS;
    println!("second re-add wrote {written} sectors ({data} for 2 dirty chunks)");
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    verify_chunks(&md, &dirty, 7)?;
    verify_chunks(&md, &dirty2, 9)?;
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the second re-add"
    );
    ctl("stop md127")?;
    Ok(())
}

/// (d) `assemble --scan` starts every array it finds (three here), one of
/// which incremental assembly had left waiting: its pending set goes.
fn scan_several() -> Result<()> {
    let _loops = loop_devices(6, 48)?;
    for (i, name) in ["s0", "s1", "s2"].iter().enumerate() {
        ctl(&format!(
            "create --level 1 --raid-devices 2 --name {name} --bitmap-chunk 64K --assume-clean /dev/loop{} /dev/loop{}",
            2 * i,
            2 * i + 1
        ))?;
    }
    ensure!(
        ctl("incremental /dev/loop0")?.contains("waiting"),
        "s0 half"
    );
    ensure!(pending_files().len() == 1, "{:?}", pending_files());
    let out = ctl("assemble --scan")?;
    let lines = md_lines()?;
    ensure!(lines.len() == 3, "{}", mdstat()?);
    ensure!(
        out.matches("has been started with 2 devices").count() == 3,
        "{out}"
    );
    for name in ["s0", "s1", "s2"] {
        let (code, out, _) = ctl_exit(&format!("detail {name}"))?;
        ensure!(code == Some(0), "detail {name} exited {code:?}: {out}");
    }
    for md in ["md125", "md126", "md127"] {
        let d = sh(&format!("mdadm --detail /dev/{md}"))?;
        ensure!(d.contains("Active Devices : 2"), "mdadm --detail {md}: {d}");
    }
    ensure!(
        pending_files().is_empty(),
        "pending left: {:?}",
        pending_files()
    );
    // Again: every array is reported running, nothing fails.
    let (code, _, err) = ctl_exit("assemble --scan")?;
    ensure!(
        code == Some(0) && err.matches("already running").count() == 3,
        "{code:?} {err}"
    );
    // The member of a running array fed to incremental: already in.
    ensure!(
        ctl("incremental /dev/loop3")?.contains("already a member"),
        "loop3"
    );
    for name in ["s0", "s1", "s2"] {
        ctl(&format!("stop {name}"))?;
    }
    Ok(())
}

/// (e) Three incremental calls for the three members of one array, started
/// together (as udev workers run them): the array starts exactly once,
/// with every member, round after round.
fn race() -> Result<()> {
    let _loops = loop_devices(3, 48)?;
    ctl("create --level 1 --raid-devices 3 --name race --bitmap-chunk 64K --assume-clean /dev/loop0 /dev/loop1 /dev/loop2")?;
    for round in 0..5 {
        let procs: Vec<std::process::Child> = (0..3)
            .map(|i| {
                Command::new("/bin/mdextctl")
                    .arg("incremental")
                    .arg(format!("/dev/loop{}", (i + round) % 3))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        let t0 = Instant::now();
        let mut outs = Vec::new();
        for p in procs {
            let o = p.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            print!("round {round}: {text}");
            ensure!(o.status.success(), "round {round}: {text}");
            outs.push(text);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "round {round} hung"
        );
        let started = outs
            .iter()
            .filter(|o| o.contains("has been started"))
            .count();
        ensure!(started == 1, "round {round}: started {started} times");
        let lines = md_lines()?;
        ensure!(lines.len() == 1, "round {round}: {}", mdstat()?);
        ensure!(
            mdstat()?.contains("[3/3] [UUU]"),
            "round {round}: {}",
            mdstat()?
        );
        ensure!(pending_files().is_empty(), "round {round}: pending left");
        ctl("stop race")?;
    }
    Ok(())
}

fn udevadm(args: &str) -> Result<String> {
    sh(&format!("udevadm {args}"))
}

/// The rules themselves, run by systemd-udevd: members appear (loop
/// devices attached), udev calls examine and incremental, the array starts
/// after the second; it gets its names and MD_* keys, next to Debian's own
/// md rule.
fn udev_rules() -> Result<()> {
    if !Path::new("/bin/systemd-udevd").exists() {
        bail!("systemd-udevd is not in the guest (host package udev)");
    }
    // Two members on image files, created while no loop device is bound.
    let _ = loop_devices(2, 48)?;
    ctl("create --level 1 --raid-devices 2 --name web --bitmap-chunk 64K --assume-clean /dev/loop0 /dev/loop1")?;
    let uuid = uuid_of(Path::new("/dev/loop0"))?;
    sh("losetup -d /dev/loop0 && losetup -d /dev/loop1")?;
    // The daemon runs already (as under systemd): a program run by udev
    // must not leave daemons behind.
    sh("mkdir -p /run/mdext && setsid /bin/mdextmon --run-dir /run/mdext </dev/null >/run/mdext/mdextmon.log 2>&1 &")?;
    wait_until("mdextmon's socket", Duration::from_secs(20), || {
        Path::new("/run/mdext/mdextmon.sock").exists().then_some(())
    })?;
    sh("mkdir -p /etc/udev/rules.d /run/udev && cp /etc/mdext-udev/*.rules /etc/udev/rules.d/")?;
    sh("/bin/systemd-udevd --daemon --resolve-names=never")?;
    udevadm("settle --timeout=60")?;
    // Members come back one by one.
    sh("losetup /dev/loop0 /tmp/disk0.img")?;
    udevadm("settle --timeout=60")?;
    let info0 = udevadm("info --query=property --name=/dev/loop0")?;
    print!("{info0}");
    ensure!(
        info0.contains(&format!("MDEXT_UUID={uuid}"))
            && info0.contains("ID_FS_TYPE=mdext_raid_member")
            && info0.contains("ID_FS_USAGE=raid")
            && info0.contains("MDEXT_INCREMENTAL=waiting"),
        "loop0's udev properties: {info0}"
    );
    ensure!(md_lines()?.is_empty(), "started with one: {}", mdstat()?);
    ensure!(pending_files().len() == 1, "{:?}", pending_files());
    sh("losetup /dev/loop1 /tmp/disk1.img")?;
    udevadm("settle --timeout=60")?;
    wait_until("md127 to run", Duration::from_secs(60), || {
        (mdstat().ok()?.contains("[2/2] [UU]")).then_some(())
    })?;
    udevadm("settle --timeout=60")?;
    let info1 = udevadm("info --query=property --name=/dev/loop1")?;
    ensure!(
        info1.contains("MDEXT_INCREMENTAL=started") && info1.contains("MDEXT_MD=md127"),
        "loop1: {info1}"
    );
    let md = udevadm("info --query=property --name=/dev/md127")?;
    print!("{md}");
    for want in [
        format!("MD_UUID={uuid}"),
        "MD_NAME=web".to_string(),
        "MD_DEVNAME=web".to_string(),
        "MD_LEVEL=raid1".to_string(),
        "MD_DEVICES=2".to_string(),
        format!("MD_METADATA=mdext:{}", &uuid.replace('-', "")[..10]),
        format!("MDEXT_UUID={uuid}"),
        "MDEXT_HEALTH=whole".to_string(),
    ] {
        ensure!(md.contains(&want), "md127 lacks {want}: {md}");
    }
    for link in [
        "/dev/md/web".to_string(),
        format!("/dev/disk/by-id/md-uuid-{uuid}"),
        "/dev/disk/by-id/md-name-web".to_string(),
    ] {
        let target = std::fs::canonicalize(&link).with_context(|| link.clone())?;
        ensure!(
            target == Path::new("/dev/md127"),
            "{link} -> {}",
            target.display()
        );
    }
    println!(
        "mdadm --detail --export of the mdext array (Debian's 63-md-raid-arrays.rules runs it):"
    );
    print!("{}", sh("mdadm --detail --export /dev/md127 || true")?);
    ensure!(pending_files().is_empty(), "pending left");
    // The data path works through the name.
    write_direct(Path::new("/dev/md/web"), 0, &pattern(5, 65536))?;
    ensure!(
        read_direct(Path::new("/dev/md127"), 0, 65536)? == pattern(5, 65536),
        "data written through /dev/md/web"
    );
    ctl("stop web")?;
    udevadm("settle --timeout=60")?;
    ensure!(
        !Path::new("/dev/md/web").exists(),
        "/dev/md/web left after stop"
    );
    sh("udevadm control --exit")?;
    Ok(())
}
