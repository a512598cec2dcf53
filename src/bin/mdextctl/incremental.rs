//! `mdextctl incremental`: hotplug assembly, one device at a time (udev).

use anyhow::{bail, Result};
use clap::Args;
use mdext::hotplug::{self, HotplugError, IncrementalOptions, Outcome};
use mdext::sysfs::Sysfs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(
    long_about = "Incremental assembly, as udev calls it for each device that appears \
    (mdadm --incremental). Read DEV's mdext metadata and record it in its array's pending \
    set under /run/mdext/incremental; once every member the array's newest record expects \
    is present, start the array as assemble does and hand it to mdextmon. A device of an \
    array that already runs is a returning member: mdextmon adds it back (a rebuild from \
    the bitmap when its own record allows, a full one otherwise). With --run, start the \
    array even with expected members missing, if its level can run without them (this is \
    what the last-resort timer does). --run --scan does that for every pending array, \
    --run NAME|UUID for one. --remove DEV: DEV has gone; mdextmon records it failed in the \
    running array that held it, and it is dropped from any pending set. Calls for several \
    devices may run at once: they are ordered by a lock, and an array starts once. Exit \
    status: 0 done (recorded, started, re-added, or already a member); 1 DEV has no mdext \
    metadata or is not known (nothing was changed); 2 an mdext device that could not be \
    added, or an array that could not start."
)]
pub struct IncrementalArgs {
    /// The device (a udev devnode); with --run also an array name or UUID.
    #[arg(value_name = "DEV|NAME")]
    target: Option<PathBuf>,
    /// Start degraded when expected members are missing (if the level
    /// allows).
    #[arg(short = 'R', long)]
    run: bool,
    /// With --run: every pending array.
    #[arg(short, long, requires = "run", conflicts_with = "target")]
    scan: bool,
    /// DEV has gone: record it failed in its running array and forget it.
    #[arg(short = 'f', long, visible_alias = "fail", conflicts_with_all = ["run", "scan"])]
    remove: bool,
    /// Print KEY=value lines for udev (IMPORT{program}) instead of
    /// messages: MDEXT_UUID, MDEXT_INCREMENTAL (waiting, started, readded,
    /// member, running, spare, removed, forgotten), MDEXT_STARTED (yes or
    /// no: whether the array runs now), MDEXT_MD (its md device).
    #[arg(long)]
    export: bool,
    #[command(flatten)]
    daemon: crate::ops::DaemonArgs,
}

fn failed(e: &HotplugError) -> ExitCode {
    eprintln!("mdextctl: {}", mdext::cli::error_line(e));
    ExitCode::from(e.exit_code())
}

pub fn incremental(a: &IncrementalArgs) -> Result<ExitCode> {
    let sysfs = Sysfs::default();
    let o = IncrementalOptions {
        run: a.run,
        run_dir: a.daemon.run_dir.clone(),
        mdextmon: crate::ops::mdextmon_path(),
    };
    if a.remove {
        let Some(dev) = &a.target else {
            bail!("--remove needs the device that has gone");
        };
        return Ok(match hotplug::remove(&sysfs, &o, dev) {
            Ok(v) => {
                for out in &v {
                    report(out, a.export);
                }
                ExitCode::SUCCESS
            }
            Err(e) => failed(&e),
        });
    }
    let by_array = a.run
        && a.target
            .as_ref()
            .is_some_and(|t| !t.as_os_str().as_encoded_bytes().contains(&b'/') && !t.exists());
    if a.scan || by_array {
        let which = a.target.as_ref().map(|t| t.to_string_lossy().into_owned());
        let v = match hotplug::run_pending(&sysfs, &o, which.as_deref()) {
            Ok(v) => v,
            Err(e) => return Ok(failed(&e)),
        };
        let mut code = ExitCode::SUCCESS;
        for r in &v {
            match r {
                Ok(out) => report(out, a.export),
                Err(e) => code = failed(e),
            }
        }
        return Ok(code);
    }
    let Some(dev) = &a.target else {
        bail!("give a device (or --run --scan)");
    };
    Ok(match hotplug::add(&sysfs, &o, dev) {
        Ok(out) => {
            report(&out, a.export);
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    })
}

fn report(out: &Outcome, export: bool) {
    if export {
        if let Some(u) = out.uuid() {
            println!("MDEXT_UUID={u}");
        }
        println!("MDEXT_INCREMENTAL={}", out.word());
        let runs = out.md().is_some() && !matches!(out, Outcome::Removed { .. });
        println!("MDEXT_STARTED={}", if runs { "yes" } else { "no" });
        if let Some(md) = out.md() {
            println!("MDEXT_MD={md}");
        }
        return;
    }
    match out {
        Outcome::Waiting {
            name,
            uuid,
            present,
            missing,
            runnable,
        } => println!(
            "mdextctl: array {name} ({uuid}): {present} member{} present, waiting for slot{} {missing:?}{}",
            if *present == 1 { "" } else { "s" },
            if missing.len() == 1 { "" } else { "s" },
            if *runnable {
                " (incremental --run starts it degraded)"
            } else {
                " (too few to run degraded)"
            }
        ),
        Outcome::Started { report, readded } => {
            crate::ops::print_assembled(report);
            for (d, r) in readded {
                match r {
                    Ok(()) => println!(
                        "mdextctl: {} re-added to /dev/{} (returning member)",
                        d.display(),
                        report.md
                    ),
                    Err(e) => println!(
                        "mdextctl: {} not re-added to /dev/{}: {e}",
                        d.display(),
                        report.md
                    ),
                }
            }
        }
        Outcome::ReAdded { name, md, .. } => {
            println!("mdextctl: re-added to /dev/{md} (array {name}); it is being rebuilt")
        }
        Outcome::AlreadyIn { name, md, .. } => {
            println!("mdextctl: already a member of /dev/{md} (array {name})")
        }
        Outcome::AlreadyRunning { name, uuid, md } => {
            println!("mdextctl: array {name} ({uuid}) is already running as /dev/{md}")
        }
        Outcome::Spare { name, uuid } => println!(
            "mdextctl: a spare of array {name} ({uuid}), which runs; not added (use mdextctl add)"
        ),
        Outcome::Removed { device, md } => println!(
            "mdextctl: {} recorded failed and removed from /dev/{md}",
            device.display()
        ),
        Outcome::Forgotten { device, uuid } => println!(
            "mdextctl: {} dropped from the pending devices of array {uuid}",
            device.display()
        ),
    }
}
