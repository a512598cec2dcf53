//! The crash and fault torture campaign (`scripts/torture`).
//!
//! Each run takes a seed and derives from it ([`plan::Run`]) the level, the
//! geometry, the bitmap chunk, a workload and one fault at a seeded moment.
//! The guest runs the runs one after another over the same six virtio
//! disks (four members' backing disks, a spare, a log); a power cut ends the
//! boot and the next boot carries on from the progress recorded on the log
//! disk. The host boots guests until every run has ended, then counts.
//!
//! The witness: a writer stamps each 4 KiB block it writes (seed, block,
//! generation, CRC32C), writes it with O_DIRECT and fdatasync, then records
//! the write as acknowledged on the log disk (O_DIRECT, fdatasync). After
//! the fault and the recovery, every acknowledged write must read back
//! exactly (only the one write in flight at a power cut may hold either
//! value; blocks never written read as zeros), through every member in
//! turn; `check` must give `mismatch_cnt` 0; the array must assemble with
//! the documented commands; every member's metadata must agree; and a
//! bitmap rebuild must write at most the dirty chunks (the ratio is
//! printed).

// Slot numbers, block numbers and sizes of 24 MiB disks, all from the
// campaign's own plan: narrowing them to usize/u8 cannot truncate.
#![allow(clippy::cast_possible_truncation)]

#[path = "torture/plan.rs"]
pub mod plan;
#[path = "torture/run.rs"]
mod run;

use anyhow::{bail, Context, Result};
use mdext::device::{Access, Device};
use plan::Run;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The log disk: progress at byte 0, acknowledgements from 1 MiB.
pub const LOG_DISK: &str = "/dev/vdf";

/// Campaign progress, kept on the log disk across power cuts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Which campaign (a hash of its seed list): a fresh log disk or
    /// another campaign's starts from zero.
    pub campaign: u64,
    /// Index of the run under way.
    pub index: u64,
    /// The boot of that run to do next (0 = start it).
    pub seg: u64,
    /// A segment is under way and was not planned to end in a power cut:
    /// a boot that finds this set lost the previous one unplanned.
    pub running: bool,
}

impl Progress {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(b"MDXPROG1");
        for (i, v) in [self.campaign, self.index, self.seg, u64::from(self.running)]
            .iter()
            .enumerate()
        {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Progress> {
        if b.len() < 4096 || &b[0..8] != b"MDXPROG1" {
            return None;
        }
        if crc32c::crc32c(&b[..4092]).to_le_bytes() != b[4092..4096] {
            return None;
        }
        let w =
            |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
        Some(Progress {
            campaign: w(0),
            index: w(1),
            seg: w(2),
            running: w(3) != 0,
        })
    }

    /// The start of the next run.
    fn next_run(&self) -> Progress {
        Progress {
            campaign: self.campaign,
            index: self.index + 1,
            seg: 0,
            running: false,
        }
    }

    pub fn load(campaign: u64) -> Result<Progress> {
        let d = Device::open(Path::new(LOG_DISK), Access::Read)?;
        let p = Progress::decode(&d.read_at(0, 4096)?).filter(|p| p.campaign == campaign);
        Ok(p.unwrap_or(Progress {
            campaign,
            ..Progress::default()
        }))
    }

    pub fn save(&self) -> Result<()> {
        let d = Device::open(Path::new(LOG_DISK), Access::SharedWrite)?;
        d.write_at(0, &self.encode())?;
        d.sync()?;
        Ok(())
    }
}

/// The seeds of a campaign, from the guest's arguments: `range BASE FIRST
/// COUNT` or `seeds S...` (hex).
pub fn seeds_from(args: &[String]) -> Result<Vec<u64>> {
    let hex = |s: &String| {
        u64::from_str_radix(s.trim_start_matches("0x"), 16).with_context(|| format!("seed {s}"))
    };
    match args.first().map(String::as_str) {
        Some("range") => {
            let (Some(b), Some(f), Some(c)) = (args.get(1), args.get(2), args.get(3)) else {
                bail!("range BASE FIRST COUNT");
            };
            let (b, f, c) = (hex(b)?, f.parse::<u64>()?, c.parse::<u64>()?);
            Ok((f..f + c).map(|i| plan::run_seed(b, i)).collect())
        }
        Some("seeds") => args[1..].iter().map(hex).collect(),
        _ => bail!("usage: range BASE FIRST COUNT | seeds S..."),
    }
}

fn campaign_id(seeds: &[u64]) -> u64 {
    seeds
        .iter()
        .fold(0x7F4A_7C15u64, |h, s| plan::mix(h ^ s))
        .max(1)
}

/// A boot's budget: past it, the guest ends the boot between runs and the
/// host boots the next (the host's hang guard is per boot).
const BOOT_BUDGET: std::time::Duration = std::time::Duration::from_secs(420);

/// In the guest: run the campaign from where the log disk says it stands.
/// `hung`: the host says the previous boot hung (killed by its guard).
pub fn guest_main(args: &[String]) -> i32 {
    let hung = args.first().map(String::as_str) == Some("hung");
    let args = if hung { &args[1..] } else { args };
    let seeds = match seeds_from(args) {
        Ok(s) => s,
        Err(e) => {
            println!("TORTURE-ERROR {e:#}");
            return 2;
        }
    };
    match guest_loop(&seeds, hung) {
        Ok(()) => 0,
        Err(e) => {
            println!("TORTURE-ERROR {e:#}");
            crate::util::dump_state();
            1
        }
    }
}

fn guest_loop(seeds: &[u64], hung: bool) -> Result<()> {
    let t0 = Instant::now();
    let id = campaign_id(seeds);
    let mut p = Progress::load(id)?;
    run::setup_tools()?;
    if p.running || (hung && p.index < seeds.len() as u64) {
        let seed = seeds[p.index as usize];
        let why = if hung {
            "the boot hung (killed by the host's guard)"
        } else {
            "the machine went down where no power cut was planned"
        };
        report_fail(seed, why);
        p = p.next_run();
        p.save()?;
    }
    while (p.index as usize) < seeds.len() {
        if p.seg == 0 && t0.elapsed() > BOOT_BUDGET {
            println!("TORTURE-BOOT-BUDGET index {}", p.index);
            return Ok(());
        }
        let seed = seeds[p.index as usize];
        let r = Run::from_seed(seed);
        if p.seg == 0 {
            println!("TORTURE-START seed={seed:#018x} {}", r.describe());
        } else {
            println!("TORTURE-RESUME seed={seed:#018x} boot {}", p.seg + 1);
        }
        p.running = true;
        p.save()?;
        let t = Instant::now();
        let res = run::execute(&r, &mut p);
        match res {
            Ok(o) => println!(
                "TORTURE-OK seed={seed:#018x} level=raid{} fault={} blocks={} acked={} rebuild={} ratio={} secs={:.1}",
                r.level,
                r.fault.kind(),
                o.blocks,
                o.acked,
                o.rebuild,
                o.ratio.map_or("-".into(), |x| format!("{x:.3}")),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => report_fail(seed, &format!("{e:#}")),
        }
        run::cleanup();
        p = p.next_run();
        p.save()?;
    }
    println!("TORTURE-DONE");
    Ok(())
}

fn report_fail(seed: u64, why: &str) {
    println!(
        "TORTURE-FAIL seed={seed:#018x} {}: {}",
        Run::from_seed(seed).describe(),
        why.replace('\n', " | ")
    );
    println!("TORTURE-REPLAY scripts/torture --seed {seed:#018x}");
    crate::util::dump_state();
}

/// On the host: `--torture [--runs N] [--base HEX] [--first I] [--seed HEX]... [--jobs J]`.
pub fn host_main(args: &[String]) -> i32 {
    match host(args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("torture: {e:#}");
            2
        }
    }
}

fn host(args: &[String]) -> Result<bool> {
    let mut runs = 8u64;
    let mut base = 0x2026u64;
    let mut first = 0u64;
    let mut explicit = Vec::new();
    let mut plan_only = false;
    let mut jobs = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--torture" => {}
            "--plan" => plan_only = true,
            "--jobs" => jobs = val()?.parse::<usize>()?.max(1),
            "--runs" => runs = val()?.parse()?,
            "--first" => first = val()?.parse()?,
            "--base" => base = u64::from_str_radix(val()?.trim_start_matches("0x"), 16)?,
            "--seed" => explicit.push(val()?),
            other => bail!("unknown argument {other}"),
        }
    }
    let guest_args: Vec<String> = if explicit.is_empty() {
        vec![
            "range".into(),
            format!("{base:x}"),
            first.to_string(),
            runs.to_string(),
        ]
    } else {
        std::iter::once("seeds".to_string())
            .chain(explicit)
            .collect()
    };
    let seeds = seeds_from(&guest_args)?;
    if plan_only {
        for s in &seeds {
            println!("{s:#018x} {}", Run::from_seed(*s).describe());
        }
        return Ok(true);
    }
    let paths = crate::paths::Paths::resolve(&crate::paths::Env::current())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let work = tempfile::tempdir()?;
    let initramfs =
        crate::harness::build_initramfs(&paths, work.path()).map_err(|e| anyhow::anyhow!(e))?;
    let logs = paths.root.join("target/guest-logs/torture");
    std::fs::create_dir_all(&logs)?;
    println!(
        "torture: {} runs ({}), {jobs} guest(s) at a time, kernel {}",
        seeds.len(),
        guest_args.join(" "),
        kernel(&paths)
    );
    let t0 = Instant::now();
    // Lane k runs seeds k, k + jobs, ... in its own guest over its own disks.
    let lanes: Vec<Vec<u64>> = (0..jobs)
        .map(|k| seeds.iter().skip(k).step_by(jobs).copied().collect())
        .collect();
    let results: Vec<Result<Tally>> = std::thread::scope(|sc| {
        let handles: Vec<_> = lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| {
                let (paths, initramfs, work, logs) = (&paths, &initramfs, work.path(), &logs);
                sc.spawn(move || lane(paths, initramfs, work, logs, k, l))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("lane panicked")))
            })
            .collect()
    });
    let mut tally = Tally::default();
    for r in results {
        tally.merge(r?);
    }
    tally.print(&seeds, t0.elapsed().as_secs_f64(), &kernel(&paths));
    Ok(tally.failed.is_empty() && tally.ok + tally.failed.len() == seeds.len())
}

/// One guest running `seeds` one after another over its own disks, booted
/// again after every power cut until they are all done.
fn lane(
    paths: &crate::paths::Paths,
    initramfs: &Path,
    work: &Path,
    logs: &Path,
    k: usize,
    seeds: &[u64],
) -> Result<Tally> {
    let mut disks = Vec::new();
    for i in 0..=plan::DATA_DISKS {
        let p = work.join(format!("lane{k}-t{i}.img"));
        let mib = if i == plan::DATA_DISKS {
            plan::LOG_DISK_MIB
        } else {
            plan::DISK_MIB
        };
        std::fs::File::create(&p)?.set_len(mib << 20)?;
        disks.push(p);
    }
    let guest_args: Vec<String> = std::iter::once("seeds".to_string())
        .chain(seeds.iter().map(|s| format!("{s:x}")))
        .collect();
    let mut tally = Tally::default();
    let mut hung = false;
    let max_boots = seeds.len() * 4 + 4;
    for boot in 0..max_boots {
        let log = logs.join(format!("lane{k}-boot-{boot:04}.log"));
        let mut c = crate::harness::guest_command(paths, initramfs, &disks, &log)
            .map_err(|e| anyhow::anyhow!(e))?;
        c.arg("--in-guest-torture");
        if hung {
            c.arg("hung");
        }
        c.args(&guest_args);
        let out = c.output().context("scripts/guest run")?;
        let code = out.status.code().unwrap_or(-1);
        hung = code == 124;
        let console =
            String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        if tally.read(&console) {
            break;
        }
        if code != 0 && code != 125 && code != 124 {
            bail!(
                "lane {k} boot {boot} ended with status {code} without finishing (console: {})",
                log.display()
            );
        }
    }
    Ok(tally)
}

#[derive(Default)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
    by_kind: BTreeMap<String, usize>,
    by_level: BTreeMap<String, usize>,
    blocks: u64,
    acked: u64,
    worst_ratio: f64,
    crashes: usize,
    failpoints: usize,
    /// Starts that followed the refusal's `--force` (a power cut right
    /// after a failure record on a parity array).
    forced: usize,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed.extend(o.failed);
        for (k, v) in o.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        for (k, v) in o.by_level {
            *self.by_level.entry(k).or_default() += v;
        }
        self.blocks += o.blocks;
        self.acked += o.acked;
        self.worst_ratio = self.worst_ratio.max(o.worst_ratio);
        self.crashes += o.crashes;
        self.failpoints += o.failpoints;
        self.forced += o.forced;
    }

    /// Count one console; true when the campaign is done.
    fn read(&mut self, console: &str) -> bool {
        let mut done = false;
        for l in console.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(rest) = l.strip_prefix("TORTURE-OK ") {
                self.ok += 1;
                let f = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or("")
                        .to_string()
                };
                *self.by_kind.entry(f("fault=")).or_default() += 1;
                *self.by_level.entry(f("level=")).or_default() += 1;
                self.blocks += f("blocks=").parse::<u64>().unwrap_or(0);
                self.acked += f("acked=").parse::<u64>().unwrap_or(0);
                if let Ok(r) = f("ratio=").parse::<f64>() {
                    self.worst_ratio = self.worst_ratio.max(r);
                }
                println!("  ok   {rest}");
            } else if let Some(rest) = l.strip_prefix("TORTURE-FAIL ") {
                self.failed.push(rest.to_string());
                println!("  FAIL {rest}");
            } else if let Some(cmd) = l.strip_prefix("TORTURE-REPLAY ") {
                println!("       replay: {cmd}");
            } else if l.contains("TORTURE-CRASHING") {
                self.crashes += 1;
            } else if let Some(why) = l.strip_prefix("TORTURE-FORCED ") {
                self.forced += 1;
                println!(
                    "       forced start: {}",
                    why.chars().take(120).collect::<String>()
                );
            } else if l.contains("mdext failpoint ") {
                self.failpoints += 1;
            } else if l.starts_with("TORTURE-DONE") {
                done = true;
            } else if let Some(e) = l.strip_prefix("TORTURE-ERROR ") {
                println!("  campaign error: {e}");
            }
        }
        done
    }

    fn print(&self, seeds: &[u64], secs: f64, kernel: &str) {
        println!(
            "\ntorture: {} runs on kernel {kernel}: {} ok, {} failed, {} not finished; {} power cuts planned, {} failpoints fired, {} starts with --force as refused",
            seeds.len(),
            self.ok,
            self.failed.len(),
            seeds.len() - self.ok - self.failed.len(),
            self.crashes,
            self.failpoints,
            self.forced
        );
        println!("  faults: {:?}", self.by_kind);
        println!("  levels: {:?}", self.by_level);
        println!(
            "  blocks verified: {} (acknowledged writes {}); worst bitmap rebuild written/dirty {:.3}; {:.0} s",
            self.blocks, self.acked, self.worst_ratio, secs
        );
        println!(
            "\n{} passed, {} failed",
            self.ok,
            self.failed.len() + (seeds.len() - self.ok - self.failed.len())
        );
    }
}

/// The guest kernel's version.
fn kernel(paths: &crate::paths::Paths) -> String {
    crate::harness::kernel_version(paths)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
