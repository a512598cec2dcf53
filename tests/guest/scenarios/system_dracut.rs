//! Issue 9, item 5 with dracut: the Debian 12 systemd guest
//! (`scripts/sysguest build ... dracut`) whose initrd is made by Debian's
//! dracut with mdext's module (`contrib/dracut/90mdext`) and runs systemd
//! itself, as Fedora's does. The root filesystem is on an mdext RAID1; the
//! initrd's daemon runs in `mdextmon-initrd.service`, survives the switch
//! to the real root and is taken over by `mdextmon.service`.

use super::system::{root_clean_on_host, root_md, timed_writes, verify_file};
use crate::harness::{Ends, Phase, SystemScenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

pub static ROOT_BOOT_DRACUT: SystemScenario = SystemScenario {
    name: "systemd_dracut_root_on_mdext_raid1_takeover_poweroff",
    scsi: &[],
    absent: &[],
    cmdline: "",
    phases: &[Phase {
        name: "boot",
        run: root_boot,
        ends: Ends::Ok,
    }],
    after: Some(root_clean_on_host),
};

fn sysctl_prop(unit: &str, prop: &str) -> Result<String> {
    Ok(sh(&format!("systemctl show -p {prop} --value {unit}"))?
        .trim()
        .to_string())
}

fn root_boot() -> Result<()> {
    let init = std::fs::read_to_string("/proc/1/comm")?;
    ensure!(init.trim() == "systemd", "PID 1 is {init:?}, not systemd");
    // How long the boot took: systemd's monotonic timestamps of the
    // initrd's start and of the real root's systemd (the switch), and now
    // (this test unit runs once multi-user.target is reached, so
    // `systemd-analyze time` would say the boot is not finished yet).
    let ts = |p: &str| -> f64 {
        sh(&format!("systemctl show -p {p} --value"))
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1e6
    };
    let up: f64 = std::fs::read_to_string("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!(
        "boot: initrd (dracut, systemd) started at {:.1}s, switch to the real root at {:.1}s, multi-user reached and test running at {up:.1}s (uptime, TCG)",
        ts("InitRDTimestampMonotonic"),
        ts("UserspaceTimestampMonotonic"),
    );
    // dracut's initrd, run by systemd: its services left their lines in
    // the journal (kept in /run across the switch).
    let dracut = sh("journalctl -b -q --no-pager -o cat -u dracut-cmdline.service -u dracut-pre-trigger.service | wc -l")?;
    let initrd_units = sh(
        "journalctl -b -q --no-pager -o short-monotonic -u mdextmon-initrd.service | head -n 20",
    )?;
    println!(
        "journal of mdextmon-initrd.service:\n{}",
        initrd_units.trim_end()
    );
    ensure!(
        dracut.trim().parse::<u64>().unwrap_or(0) > 0,
        "no dracut-cmdline/dracut-pre-trigger service ran in this boot's initrd"
    );
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

    // The initrd's daemon (mdextmon-initrd.service wrote its pid) was
    // taken over by mdextmon.service: it is gone, the service's main
    // process manages the array, from the real root, as @mdextmon.
    let initrd_pid: u32 = std::fs::read_to_string("/run/mdext/initramfs.pid")
        .context("/run/mdext/initramfs.pid (written by mdextmon-initrd.service)")?
        .trim()
        .parse()
        .context("/run/mdext/initramfs.pid")?;
    let pid: u32 = std::fs::read_to_string("/run/mdext/mdextmon.pid")
        .context("/run/mdext/mdextmon.pid")?
        .trim()
        .parse()
        .context("/run/mdext/mdextmon.pid")?;
    let main_pid: u32 = sysctl_prop("mdextmon.service", "MainPID")?
        .parse()
        .context("MainPID")?;
    let active = sh("systemctl is-active mdextmon.service || true")?;
    let initrd_state = sysctl_prop("mdextmon-initrd.service", "ActiveState")?;
    let initrd_result = sysctl_prop("mdextmon-initrd.service", "Result")?;
    println!(
        "initrd mdextmon pid {initrd_pid} (mdextmon-initrd.service now {initrd_state}, result {initrd_result}); \
         mdextmon.service {} MainPID {main_pid}; pid file {pid}",
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
        main_pid != initrd_pid,
        "mdextmon.service's MainPID is the initrd's daemon {initrd_pid}: no takeover happened"
    );
    ensure!(
        !Path::new(&format!("/proc/{initrd_pid}")).exists(),
        "the initrd's mdextmon (pid {initrd_pid}) still runs after the takeover"
    );
    ensure!(
        initrd_state != "active" && initrd_state != "failed" && initrd_result == "success",
        "mdextmon-initrd.service is {initrd_state} (result {initrd_result}), expected ended cleanly after the handover"
    );
    // mdextmon.service's own words: it took over from the initrd's pid
    // (which therefore lived through the switch and answered).
    let svc_log = sh("journalctl -b -q --no-pager -o cat -u mdextmon.service")?;
    let took = format!("(pid {initrd_pid})");
    let line = svc_log
        .lines()
        .find(|l| l.contains("taking over from") && l.contains(&took))
        .with_context(|| {
            format!("mdextmon.service's journal does not say it took over from pid {initrd_pid}:\n{svc_log}")
        })?;
    println!("mdextmon.service: {line}");
    if let Some(l) = svc_log.lines().find(|l| l.contains("handed over after")) {
        println!("mdextmon.service: {l}");
    }
    let root = std::fs::read_link(format!("/proc/{pid}/root"))?;
    ensure!(
        root == Path::new("/"),
        "the managing mdextmon's root is {}, not the real root",
        root.display()
    );
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv0 = String::from_utf8_lossy(argv0.split(|b| *b == 0).next().unwrap_or_default());
    println!("managing daemon pid {pid}: argv[0] {argv0:?}");
    ensure!(
        argv0.starts_with('@'),
        "mdextmon's argv[0] is {argv0:?}: systemd's final killing spree would not spare it"
    );
    ensure!(
        ctl("status")?.contains(md.name()),
        "mdextctl status does not list {}",
        md.name()
    );
    // A write to the root filesystem goes through and reads back from the
    // array (out of the page cache).
    let f = PathBuf::from("/var/tmp/mdext-dracut-root-write");
    let longest = timed_writes(&f, 8, 41)?;
    println!("8 MiB of O_DSYNC writes on the root filesystem, longest write {longest:?}");
    verify_file(&f, 8, 41)?;
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
    let mism = check_mismatches(&md)?;
    println!("check scrub of the root array: mismatch_cnt {mism}");
    ensure!(mism == 0, "root array check: mismatch_cnt {mism}");
    Ok(())
}
