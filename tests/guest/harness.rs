//! Host side: boot guests, run scenario phases, report.

use crate::paths::Paths;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What a phase is expected to end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    /// The phase returns Ok (guest exit status 0).
    Ok,
    /// The phase crashes the guest on purpose (sysrq 'b').
    Crash,
}

/// One boot of a scenario.
pub struct Phase {
    pub name: &'static str,
    pub run: fn() -> anyhow::Result<()>,
    pub ends: Ends,
}

/// A guest test: one or more boots over the same fresh disk images.
pub struct Scenario {
    pub name: &'static str,
    /// Sizes in MiB of raw images attached as virtio disks (vda, vdb, ...).
    pub disks: &'static [u64],
    pub phases: &'static [Phase],
}

/// A guest test in the systemd guest (`scripts/sysguest`): Debian 12 with
/// systemd as PID 1, its root filesystem on an mdext RAID1 over the virtio
/// disks vda and vdb, started by the project's initramfs hook.
pub struct SystemScenario {
    pub name: &'static str,
    /// Sizes in MiB of raw images on a virtio-scsi controller (sda, ...):
    /// disks the guest can hot-remove and rescan.
    pub scsi: &'static [u64],
    /// SCSI disks (phase name, index into `scsi`) left out of that phase's
    /// boot: a member missing when the machine comes up.
    pub absent: &'static [(&'static str, usize)],
    /// More kernel command line (e.g. `mdext.writer`: the early writer
    /// unit runs across the daemon's handover).
    pub cmdline: &'static str,
    pub phases: &'static [Phase],
    /// Run on the host after the last phase, over the images the guest
    /// left: root members first, then the SCSI disks.
    pub after: Option<fn(&HostCheck) -> anyhow::Result<()>>,
}

/// What a host-side check gets.
pub struct HostCheck<'a> {
    pub mdextctl: &'a Path,
    pub disks: &'a [PathBuf],
    /// The serial console of the last phase (its poweroff included).
    pub console: &'a Path,
}

fn find(name: &str) -> Option<&'static [Phase]> {
    crate::scenarios::ALL
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.phases)
        .or_else(|| {
            crate::scenarios::SYSTEM
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.phases)
        })
        .or_else(|| {
            crate::scenarios::SYSTEM_DRACUT
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.phases)
        })
}

/// A phase still running this long after it began is presumed stuck (the
/// host kills the guest at 900 s, boot included): the blocked tasks' stacks
/// go to the console while there is time.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

pub fn run_in_guest(scenario: &str, phase: &str) -> i32 {
    let Some(phases) = find(scenario) else {
        eprintln!("MDEXT-FAIL: no scenario '{scenario}'");
        return 2;
    };
    let Some(p) = phases.iter().find(|p| p.name == phase) else {
        eprintln!("MDEXT-FAIL: scenario '{scenario}' has no phase '{phase}'");
        return 2;
    };
    crate::util::stuck_dump(STUCK_AFTER);
    match (p.run)() {
        Ok(()) => {
            println!("MDEXT-PASS {scenario}/{phase}");
            0
        }
        Err(e) if e.downcast_ref::<crate::util::NotApplicable>().is_some() => {
            println!("MDEXT-SKIP {scenario}/{phase}: {e}");
            NOT_APPLICABLE
        }
        Err(e) => {
            println!("MDEXT-FAIL {scenario}/{phase}: {e:#}");
            crate::util::dump_state();
            1
        }
    }
}

pub fn build_initramfs(paths: &Paths, dir: &Path) -> Result<PathBuf, String> {
    let out = dir.join("base.cpio");
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let st = Command::new(paths.root.join("scripts/guest"))
        .arg("build")
        .arg(&out)
        .arg(&me)
        .arg(&paths.mdextctl)
        .arg(&paths.mdextmon)
        .status()
        .map_err(|e| format!("scripts/guest build: {e}"))?;
    if !st.success() {
        return Err(format!("scripts/guest build failed: {st}"));
    }
    Ok(out)
}

/// `scripts/guest run` booting the initramfs over `disks`, its console
/// kept in `log`, with this binary (its path in the guest) as the command:
/// the caller adds the arguments.
pub fn guest_command(
    paths: &Paths,
    initramfs: &Path,
    disks: &[PathBuf],
    log: &Path,
) -> Result<Command, String> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let bin = format!(
        "/bin/{}",
        me.file_name().and_then(|n| n.to_str()).unwrap_or("guest")
    );
    let mut c = Command::new(paths.root.join("scripts/guest"));
    c.arg("run")
        .arg("--initramfs")
        .arg(initramfs)
        .arg("--log")
        .arg(log);
    c.arg("--timeout")
        .arg(std::env::var("MDEXT_GUEST_TIMEOUT").unwrap_or_else(|_| "900".into()));
    for d in disks {
        c.arg("--disk").arg(d);
    }
    c.arg("--").arg(bin);
    Ok(c)
}

fn run_phase(
    paths: &Paths,
    initramfs: &Path,
    s: &Scenario,
    p: &Phase,
    disks: &[PathBuf],
    log: &Path,
) -> Result<(), String> {
    let mut c = guest_command(paths, initramfs, disks, log)?;
    c.arg("--in-guest").arg(s.name).arg(p.name);
    let out = c.output().map_err(|e| format!("scripts/guest run: {e}"))?;
    show_boot(s.name, p.name, &out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if code == NOT_APPLICABLE {
        // The reason, from the guest's MDEXT-SKIP line.
        let console = std::fs::read(log).unwrap_or_default();
        let reason = String::from_utf8_lossy(&console)
            .lines()
            .find_map(|l| l.split_once("MDEXT-SKIP ").map(|(_, r)| r.to_string()))
            .map(|r| {
                r.split_once(": ")
                    .map_or(r.clone(), |(_, why)| why.to_string())
            })
            .unwrap_or_else(|| "does not apply to this kernel".into());
        return Err(format!("{SKIPPED}{}", reason.trim_end_matches('\r')));
    }
    judge(p, code)
}

/// Marks a phase's "error" that is a skip (the scenario does not apply to
/// the running kernel): the harness counts it as ignored, with the reason.
const SKIPPED: &str = "\u{1}not applicable: ";

/// The guest's exit status for a phase that does not apply to the
/// running kernel (automake's "skipped" status).
pub const NOT_APPLICABLE: i32 = 77;

/// The guest's exit status against what the phase was to end with.
fn judge(p: &Phase, code: i32) -> Result<(), String> {
    match (p.ends, code) {
        (Ends::Ok, 0) | (Ends::Crash, 125) => Ok(()),
        (Ends::Crash, 0) => Err(format!(
            "phase {} was to crash the guest but returned",
            p.name
        )),
        (_, 124) => Err(format!("phase {} timed out", p.name)),
        (_, c) => Err(format!("phase {} ended with status {c}", p.name)),
    }
}

/// Print the harness lines worth keeping (guest up, wall time).
fn show_boot(s: &str, p: &str, stderr: &[u8]) {
    let stderr = String::from_utf8_lossy(stderr);
    for l in stderr
        .lines()
        .filter(|l| l.starts_with("guest: MDEXT-GUEST-UP") || l.contains("never came up"))
    {
        println!("    {s}/{p}: {}", l.trim_start_matches("guest: "));
    }
}

/// Copy a sparse image (the root members' templates).
fn copy_sparse(from: &Path, to: &Path) -> Result<(), String> {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cp {} {}: {st}", from.display(), to.display()))
    }
}

/// Build the systemd guest (root tree, initramfs, root array templates).
fn build_system(paths: &Paths, out: &Path) -> Result<(), String> {
    build_system_variant(paths, out, None)
}

/// Build the systemd guest with the initramfs of `variant` (`dracut`;
/// None: initramfs-tools).
fn build_system_variant(paths: &Paths, out: &Path, variant: Option<&str>) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let bindir = paths
        .mdextctl
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", paths.mdextctl.display()))?;
    let st = Command::new(paths.root.join("scripts/sysguest"))
        .arg("build")
        .arg(out)
        .arg(bindir)
        .arg(&me)
        .args(variant)
        .status()
        .map_err(|e| format!("scripts/sysguest build: {e}"))?;
    if !st.success() {
        return Err(format!("scripts/sysguest build failed: {st}"));
    }
    Ok(())
}

fn run_system_scenario(
    paths: &Paths,
    sys: &Path,
    work: &Path,
    logs: &Path,
    s: &SystemScenario,
) -> Result<(), String> {
    let mut disks = Vec::new();
    for m in ["root0", "root1"] {
        let p = work.join(format!("{}-{m}.img", s.name));
        copy_sparse(&sys.join(format!("{m}.img")), &p)?;
        disks.push(p);
    }
    let mut scsi = Vec::new();
    for (i, mb) in s.scsi.iter().enumerate() {
        let p = work.join(format!("{}-sd{i}.img", s.name));
        let f = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        f.set_len(mb << 20)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        scsi.push(p);
    }
    let mut last_log = PathBuf::new();
    for p in s.phases {
        let log = logs.join(format!("{}-{}.log", s.name, p.name));
        last_log = log.clone();
        let mut c = Command::new(paths.root.join("scripts/sysguest"));
        c.arg("run").arg(sys).arg("--log").arg(&log);
        c.arg("--append").arg(s.cmdline);
        c.arg("--timeout")
            .arg(std::env::var("MDEXT_GUEST_TIMEOUT").unwrap_or_else(|_| "900".into()));
        for d in &disks {
            c.arg("--disk").arg(d);
        }
        for (i, d) in scsi.iter().enumerate() {
            if !s.absent.contains(&(p.name, i)) {
                c.arg("--scsi").arg(d);
            }
        }
        c.arg("--").arg(s.name).arg(p.name);
        let out = c
            .output()
            .map_err(|e| format!("scripts/sysguest run: {e}"))?;
        show_boot(s.name, p.name, &out.stderr);
        judge(p, out.status.code().unwrap_or(-1))
            .map_err(|e| format!("{e} (console: {})", log.display()))?;
    }
    if let Some(after) = s.after {
        let all: Vec<PathBuf> = disks.iter().chain(scsi.iter()).cloned().collect();
        after(&HostCheck {
            mdextctl: &paths.mdextctl,
            disks: &all,
            console: &last_log,
        })
        .map_err(|e| format!("host check after the last phase: {e:#}"))?;
    }
    for d in disks.iter().chain(scsi.iter()) {
        let _ = std::fs::remove_file(d);
    }
    Ok(())
}

pub fn run_on_host(args: &[String]) -> i32 {
    let list = args.iter().any(|a| a == "--list");
    // FILTER... selects by substring; `--skip PATTERN` (repeatable, as
    // libtest's) leaves out what contains PATTERN.
    let mut filters: Vec<&String> = Vec::new();
    let mut skips: Vec<&String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--skip" {
            skips.extend(it.next());
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    let wanted = |name: &str| {
        (filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
            && !skips.iter().any(|f| name.contains(f.as_str()))
    };
    let selected: Vec<&Scenario> = crate::scenarios::ALL
        .iter()
        .copied()
        .filter(|s| wanted(s.name))
        .collect();
    let system: Vec<&SystemScenario> = crate::scenarios::SYSTEM
        .iter()
        .copied()
        .filter(|s| wanted(s.name))
        .collect();
    let system_dracut: Vec<&SystemScenario> = crate::scenarios::SYSTEM_DRACUT
        .iter()
        .copied()
        .filter(|s| wanted(s.name))
        .collect();
    if list {
        for s in &system_dracut {
            println!("{}: test", s.name);
        }
        for s in &selected {
            println!("{}: test", s.name);
        }
        for s in &system {
            println!("{}: test", s.name);
        }
        return 0;
    }
    let filtered = crate::scenarios::ALL.len()
        + crate::scenarios::SYSTEM.len()
        + crate::scenarios::SYSTEM_DRACUT.len()
        - selected.len()
        - system.len()
        - system_dracut.len();
    let t0 = Instant::now();
    let paths = match Paths::resolve(&crate::paths::Env::current()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("guest: {e}");
            return 2;
        }
    };
    let work = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("guest: tempdir: {e}");
            return 2;
        }
    };
    let logs = paths.root.join("target/guest-logs");
    let _ = std::fs::create_dir_all(&logs);
    let initramfs = if selected.is_empty() {
        PathBuf::new()
    } else {
        match build_initramfs(&paths, work.path()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("guest: {e}");
                return 2;
            }
        }
    };
    println!(
        "\nrunning {} guest tests (kernel {})",
        selected.len() + system.len() + system_dracut.len(),
        kernel_version(&paths)
    );
    let (mut passed, mut failed, mut ignored) = (0, Vec::new(), 0);
    let mut report = |name: &'static str, t: Instant, res: Result<(), String>| match res {
        Ok(()) => {
            passed += 1;
            println!("test {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64());
        }
        Err(e) if e.starts_with(SKIPPED) => {
            ignored += 1;
            let why = e[SKIPPED.len()..].split(" (console: ").next().unwrap_or("");
            println!(
                "test {name} ... ignored, {why} ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            println!("test {name} ... FAILED ({:.1}s)", t.elapsed().as_secs_f64());
            failed.push((name, e));
        }
    };
    for s in &selected {
        let t = Instant::now();
        let res = (|| {
            let mut disks = Vec::new();
            for (i, mb) in s.disks.iter().enumerate() {
                let p = work.path().join(format!("{}-{i}.img", s.name));
                let f = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                f.set_len(mb << 20)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                disks.push(p);
            }
            for p in s.phases {
                let log = logs.join(format!("{}-{}.log", s.name, p.name));
                run_phase(&paths, &initramfs, s, p, &disks, &log)
                    .map_err(|e| format!("{e} (console: {})", log.display()))?;
            }
            for d in &disks {
                let _ = std::fs::remove_file(d);
            }
            Ok::<(), String>(())
        })();
        report(s.name, t, res);
    }
    if !system.is_empty() {
        let t = Instant::now();
        let sys = work.path().join("sysguest");
        match build_system(&paths, &sys) {
            Ok(()) => println!(
                "    systemd guest built in {:.1}s",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                for s in &system {
                    report(s.name, t, Err(e.clone()));
                }
            }
        }
        if sys.join("initrd.img").exists() {
            for s in &system {
                let t = Instant::now();
                let res = run_system_scenario(&paths, &sys, work.path(), &logs, s);
                report(s.name, t, res);
            }
        }
    }
    if !system_dracut.is_empty() {
        let t = Instant::now();
        let sys = work.path().join("sysguest-dracut");
        match build_system_variant(&paths, &sys, Some("dracut")) {
            Ok(()) => println!(
                "    systemd guest (dracut initrd) built in {:.1}s",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                for s in &system_dracut {
                    report(s.name, t, Err(e.clone()));
                }
            }
        }
        if sys.join("initrd.img").exists() {
            for s in &system_dracut {
                let t = Instant::now();
                let res = run_system_scenario(&paths, &sys, work.path(), &logs, s);
                report(s.name, t, res);
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for (n, e) in &failed {
            println!("---- {n} ----\n{e}");
            let log = e
                .rsplit("console: ")
                .next()
                .unwrap_or("")
                .trim_end_matches(')');
            if let Ok(bytes) = std::fs::read(log) {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(60)..] {
                    println!("  | {}", l.trim_end_matches('\r'));
                }
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    i32::from(!failed.is_empty())
}

pub fn kernel_version(paths: &Paths) -> String {
    Command::new(paths.root.join("scripts/guest"))
        .arg("kernel")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
