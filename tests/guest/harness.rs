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

fn find(name: &str) -> Option<&'static Scenario> {
    crate::scenarios::ALL
        .iter()
        .copied()
        .find(|s| s.name == name)
}

pub fn run_in_guest(scenario: &str, phase: &str) -> i32 {
    let Some(s) = find(scenario) else {
        eprintln!("MDEXT-FAIL: no scenario '{scenario}'");
        return 2;
    };
    let Some(p) = s.phases.iter().find(|p| p.name == phase) else {
        eprintln!("MDEXT-FAIL: scenario '{scenario}' has no phase '{phase}'");
        return 2;
    };
    match (p.run)() {
        Ok(()) => {
            println!("MDEXT-PASS {scenario}/{phase}");
            0
        }
        Err(e) => {
            println!("MDEXT-FAIL {scenario}/{phase}: {e:#}");
            crate::util::dump_state();
            1
        }
    }
}

fn build_initramfs(paths: &Paths, dir: &Path) -> Result<PathBuf, String> {
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

fn run_phase(
    paths: &Paths,
    initramfs: &Path,
    s: &Scenario,
    p: &Phase,
    disks: &[PathBuf],
    log: &Path,
) -> Result<(), String> {
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
    c.arg("--")
        .arg(bin)
        .arg("--in-guest")
        .arg(s.name)
        .arg(p.name);
    let out = c.output().map_err(|e| format!("scripts/guest run: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in stderr
        .lines()
        .filter(|l| l.starts_with("guest: MDEXT-GUEST-UP") || l.contains("never came up"))
    {
        println!(
            "    {}/{}: {}",
            s.name,
            p.name,
            l.trim_start_matches("guest: ")
        );
    }
    let code = out.status.code().unwrap_or(-1);
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

pub fn run_on_host(args: &[String]) -> i32 {
    let list = args.iter().any(|a| a == "--list");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Scenario> = crate::scenarios::ALL
        .iter()
        .copied()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect();
    if list {
        for s in &selected {
            println!("{}: test", s.name);
        }
        return 0;
    }
    let filtered = crate::scenarios::ALL.len() - selected.len();
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
    let initramfs = match build_initramfs(&paths, work.path()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("guest: {e}");
            return 2;
        }
    };
    println!(
        "\nrunning {} guest tests (kernel {})",
        selected.len(),
        kernel_version(&paths)
    );
    let (mut passed, mut failed) = (0, Vec::new());
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
        match res {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({:.1}s)", s.name, t.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!(
                    "test {} ... FAILED ({:.1}s)",
                    s.name,
                    t.elapsed().as_secs_f64()
                );
                failed.push((s.name, e));
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
            if let Ok(text) = std::fs::read_to_string(log) {
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(60)..] {
                    println!("  | {}", l.trim_end_matches('\r'));
                }
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    i32::from(!failed.is_empty())
}

fn kernel_version(paths: &Paths) -> String {
    Command::new(paths.root.join("scripts/guest"))
        .arg("kernel")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
