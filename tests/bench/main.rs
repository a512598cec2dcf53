//! `scripts/bench`: mdext side by side with mdadm's own metadata in one guest.
//!
//! Host mode (the default) builds the guest initramfs, makes fresh disk
//! images (2 × 256 MiB per kind per round; QEMU honours the guest's
//! flushes with the host's fdatasync unless `--disk-cache unsafe`), boots one guest with
//! `scripts/guest run` and this same binary inside it (`--in-guest`),
//! collects one JSON record per kind and round from the console, prints a
//! table of medians with ratios to mdadm 1.2 + internal bitmap and writes
//! the records and medians as JSON.
//!
//! Guest mode runs, for each round, every kind in a rotated order (so noise
//! falls on all alike): create on its two fresh disks, first 4 KiB
//! O_DIRECT|O_SYNC write after the array went clean, 4 KiB QD1 O_DIRECT write
//! IOPS (sequential and random) with the time from the last write to
//! `clean`, daemon footprint and idle wakeups, then fail + remove a member,
//! 10 % scattered writes, re-add and rebuild: sectors written to the
//! returning member over the dirty sectors, and the times.
//!
//! Speed is reported, never asserted: this is not a test and is not part of
//! `cargo test --test guest`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KINDS: [&str; 5] = [
    "mdadm12_bitmap",
    "mdadm12_nobitmap",
    "imsm_mdmon",
    "mdext",
    "mdext64",
];
/// Arrays beside the measured one in the `mdext64` kind (one daemon
/// manages all of them): raid1 over two loop devices each, idle.
const EXTRA_ARRAYS: usize = 63;
const EXTRA_MIB: u64 = 16;
const DISK_MIB: u64 = 256;
const CHUNK: u64 = 1 << 20;
const MARK: &str = "MDEXT-BENCH ";
/// The kinds of the crash-and-resync rounds (`mdext64` is left out: its
/// 63 idle arrays would be resynced too).
const CRASH_KINDS: [&str; 4] = ["mdadm12_bitmap", "mdadm12_nobitmap", "imsm_mdmon", "mdext"];
/// The raid5 kinds (`--raid5-rounds`: one boot per round, three disks
/// each): md 1.2 with its internal bitmap and mdext, same chunks.
const RAID5_KINDS: [&str; 2] = ["mdadm12_bitmap_raid5", "mdext_raid5"];
/// The floor boots' kinds: `floor` is the least handler as a thread of
/// the writing process, `floor_process` the same as a process of its own
/// (as mdextmon is: each answer costs two switches between processes).
const FLOOR_KINDS: [&str; 4] = ["mdadm12_bitmap", "mdext", "floor", "floor_process"];
/// Printed by the crash phase just before the power cut.
const CRASHING: &str = "MDEXT-BENCH-CRASHING";

#[derive(Clone, Debug)]
struct Opts {
    rounds: usize,
    json: Option<PathBuf>,
    idle: u64,
    iops_secs: u64,
    first_writes: usize,
    trace: bool,
    in_guest: bool,
    /// Crash-and-resync rounds (two boots per kind and round).
    crash_rounds: usize,
    /// Floor rounds (one boot each: md 1.2, mdext and the least handler).
    floor_rounds: usize,
    /// raid5 rounds (one boot each: md 1.2 + bitmap and mdext, 3 disks).
    raid5_rounds: usize,
    /// In the guest: `crash` or `resync` (one kind, two disks), or none
    /// (the main run).
    phase: Option<String>,
    kind: Option<String>,
    /// In the guest: be the `floor_process` handler of this md device.
    respond: Option<String>,
    /// The crash round a phase belongs to (1-based).
    round: usize,
    /// QEMU's cache mode of the disks (`scripts/guest`'s
    /// `MDEXT_DISK_CACHE`): `unsafe` drops the guest's flushes, `none`
    /// honours them with the host's fdatasync.
    disk_cache: String,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        rounds: 2,
        json: None,
        idle: 30,
        iops_secs: 5,
        first_writes: 5,
        trace: false,
        in_guest: false,
        crash_rounds: 2,
        floor_rounds: 2,
        raid5_rounds: 1,
        phase: None,
        kind: None,
        respond: None,
        round: 1,
        disk_cache: "none".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = val("--rounds")?.parse().context("--rounds")?,
            "--json" => o.json = Some(PathBuf::from(val("--json")?)),
            "--idle" => o.idle = val("--idle")?.parse().context("--idle")?,
            "--iops-secs" => o.iops_secs = val("--iops-secs")?.parse().context("--iops-secs")?,
            "--first-writes" => {
                o.first_writes = val("--first-writes")?.parse().context("--first-writes")?
            }
            "--crash-rounds" => {
                o.crash_rounds = val("--crash-rounds")?.parse().context("--crash-rounds")?
            }
            "--floor-rounds" => {
                o.floor_rounds = val("--floor-rounds")?.parse().context("--floor-rounds")?
            }
            "--raid5-rounds" => {
                o.raid5_rounds = val("--raid5-rounds")?.parse().context("--raid5-rounds")?
            }
            "--phase" => o.phase = Some(val("--phase")?),
            "--kind" => o.kind = Some(val("--kind")?),
            "--respond" => o.respond = Some(val("--respond")?),
            "--round" => o.round = val("--round")?.parse().context("--round")?,
            "--disk-cache" => o.disk_cache = val("--disk-cache")?,
            "--in-guest" => o.in_guest = true,
            "--trace" => o.trace = true,
            // cargo's test runner may pass these; nothing to filter here.
            "--nocapture" | "--test-threads=1" => {}
            "-h" | "--help" => {
                println!("usage: scripts/bench [--rounds N (0-2)] [--crash-rounds N] [--floor-rounds N] [--raid5-rounds N] [--json FILE] [--idle SECS] [--iops-secs SECS] [--first-writes N] [--disk-cache unsafe|none|writeback] [--trace]");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    if !["unsafe", "none", "writeback"].contains(&o.disk_cache.as_str()) {
        bail!(
            "--disk-cache {}: unsafe (flushes dropped), none or writeback (flushes reach the host's disk)",
            o.disk_cache
        );
    }
    if !(0..=2).contains(&o.rounds) {
        bail!(
            "--rounds {}: 0 (crash rounds only), 1 or 2 (each round takes 10 fresh virtio disks; the guest's PCI bus holds 24)",
            o.rounds
        );
    }
    Ok(o)
}

fn main() {
    let r = parse_args().and_then(|o| if o.in_guest { guest(&o) } else { host(&o) });
    if let Err(e) = r {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- host side

fn host(o: &Opts) -> Result<()> {
    let me = std::env::current_exe().context("current_exe")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // target/<profile>/deps/bench-HASH -> target/<profile>/
    let bindir = me
        .parent()
        .and_then(Path::parent)
        .context("binary directory")?
        .to_path_buf();
    let ctl = bindir.join("mdextctl");
    let mon = bindir.join("mdextmon");
    for b in [&ctl, &mon] {
        if !b.exists() {
            bail!("{} missing (cargo build --release)", b.display());
        }
    }
    let work = root.join("target/tmp/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).context("target/tmp/bench")?;
    let initramfs = work.join("base.cpio");
    let mut build = Command::new(root.join("scripts/guest"));
    build
        .arg("build")
        .arg(&initramfs)
        .arg(&me)
        .arg(&ctl)
        .arg(&mon);
    for extra in ["mdmon", "strace"] {
        if let Some(m) = which(extra) {
            build.arg(m);
        }
    }
    let st = build.status().context("scripts/guest build")?;
    if !st.success() {
        bail!("scripts/guest build failed: {st}");
    }
    let kver = std::fs::read_to_string(work.join("base.cpio.kver")).unwrap_or_default();
    // Read by `scripts/guest run` for every boot below (one thread here).
    std::env::set_var("MDEXT_DISK_CACHE", &o.disk_cache);
    let mut disks = Vec::new();
    for i in 0..o.rounds * KINDS.len() * 2 {
        let p = work.join(format!("disk{i:02}.img"));
        fresh_disk(&p, &o.disk_cache)?;
        disks.push(p);
    }
    std::fs::create_dir_all(root.join("target/guest-logs"))?;
    let log = root.join("target/guest-logs/bench.log");
    let name = me
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("bench")
        .to_string();
    let mut args: Vec<String> = vec![
        format!("/bin/{name}"),
        "--in-guest".into(),
        "--rounds".into(),
        o.rounds.to_string(),
        "--idle".into(),
        o.idle.to_string(),
        "--iops-secs".into(),
        o.iops_secs.to_string(),
        "--first-writes".into(),
        o.first_writes.to_string(),
    ];
    if o.trace {
        args.push("--trace".into());
    }
    let t0 = Instant::now();
    let mut records = Vec::new();
    let mut guest_kernel = String::new();
    let mut st = std::process::ExitStatus::default();
    if o.rounds > 0 {
        let main = boot(&root, &initramfs, &disks, &args, &log, 3000)?;
        records = main.records;
        guest_kernel = main.kernel;
        st = main.status;
        if records.is_empty() {
            bail!(
                "the guest reported no results ({st}); console in {}",
                log.display()
            );
        }
    }
    for d in &disks {
        let _ = std::fs::remove_file(d);
    }
    // Crash and resync: per kind and round, one boot that writes and cuts
    // the power, one that assembles and resyncs, on two fresh disks.
    for round in 0..o.crash_rounds {
        for i in 0..CRASH_KINDS.len() {
            let kind = CRASH_KINDS[(i + round) % CRASH_KINDS.len()];
            let pair: Vec<PathBuf> = (0..2).map(|j| work.join(format!("crash{j}.img"))).collect();
            for p in &pair {
                fresh_disk(p, &o.disk_cache)?;
            }
            let phase = |ph: &str| -> Vec<String> {
                let mut a = vec![
                    format!("/bin/{name}"),
                    "--in-guest".into(),
                    "--phase".into(),
                    ph.into(),
                    "--kind".into(),
                    kind.into(),
                ];
                a.extend(["--round".into(), (round + 1).to_string()]);
                a
            };
            let clog = root.join(format!("target/guest-logs/bench-crash-{kind}-{round}.log"));
            let a = boot(&root, &initramfs, &pair, &phase("crash"), &clog, 600)?;
            // The guest ends without an exit status (125) when the power
            // is cut; the line before it may not reach the console.
            let b = if a.crashed || a.status.code() == Some(125) {
                let rlog = root.join(format!("target/guest-logs/bench-resync-{kind}-{round}.log"));
                boot(&root, &initramfs, &pair, &phase("resync"), &rlog, 900)?.records
            } else {
                println!(
                    "bench: {kind} round {}: the crash phase ended without a power cut ({}); console in {}",
                    round + 1,
                    a.status,
                    clog.display()
                );
                vec![json!({"kind": kind, "round": round + 1, "phase": "crash",
                    "error": format!("no power cut ({})", a.status)})]
            };
            records.extend(a.records);
            records.extend(b);
        }
    }
    // One boot per round of a phase on `n` fresh disks: the floor (md 1.2,
    // mdext and the least user-space handler), raid5 (md 1.2 + bitmap and
    // mdext on three disks each).
    let phase_boots = |phase: &str, rounds: usize, n: usize, extra: &[String], limit: u64| {
        let mut out = Vec::new();
        for round in 0..rounds {
            let imgs: Vec<PathBuf> = (0..n)
                .map(|j| work.join(format!("{phase}{j}.img")))
                .collect();
            for p in &imgs {
                fresh_disk(p, &o.disk_cache)?;
            }
            let mut args: Vec<String> = vec![
                format!("/bin/{name}"),
                "--in-guest".into(),
                "--phase".into(),
                phase.into(),
                "--round".into(),
                (round + 1).to_string(),
                "--first-writes".into(),
                o.first_writes.to_string(),
            ];
            args.extend_from_slice(extra);
            let log = root.join(format!("target/guest-logs/bench-{phase}-{round}.log"));
            out.extend(boot(&root, &initramfs, &imgs, &args, &log, limit)?.records);
        }
        anyhow::Ok(out)
    };
    records.extend(phase_boots(
        "floor",
        o.floor_rounds,
        2 * FLOOR_KINDS.len(),
        &[],
        900,
    )?);
    let raid5_args = [
        "--iops-secs".to_string(),
        o.iops_secs.to_string(),
        "--idle".into(),
        "0".into(),
    ];
    records.extend(phase_boots(
        "raid5",
        o.raid5_rounds,
        3 * RAID5_KINDS.len(),
        &raid5_args,
        1800,
    )?);
    let wall = t0.elapsed().as_secs_f64();
    let medians = summarise(&records, &KINDS);
    print_table(&medians, &KINDS);
    let raid5 = summarise(&records, &RAID5_KINDS);
    if o.raid5_rounds > 0 {
        print_table(&raid5, &RAID5_KINDS);
    }
    print_floor(&floor_summary(&records));
    let doc = json!({
        "kernel": if guest_kernel.is_empty() { kver.trim().to_string() } else { guest_kernel },
        "rounds": o.rounds,
        "crash_rounds": o.crash_rounds,
        "floor_rounds": o.floor_rounds,
        "floor": floor_summary(&records),
        "raid5_rounds": o.raid5_rounds,
        "raid5": raid5,
        "disk_mib": DISK_MIB,
        "bitmap_chunk": CHUNK,
        "idle_secs": o.idle,
        "disk_cache": o.disk_cache,
        "iops_secs": o.iops_secs,
        "guest_exit": st.code(),
        "guest_wall_secs": wall,
        "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "date": Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ").output().ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "medians": medians,
        "records": records,
    });
    if let Some(p) = &o.json {
        std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| p.display().to_string())?;
        println!("bench: results in {}", p.display());
    }
    // Last: on a filesystem mounted with discard, deleting the images
    // takes a while.
    let _ = std::fs::remove_dir_all(&work);
    if !st.success() {
        bail!("guest ended with {st}; console in {}", log.display());
    }
    Ok(())
}

/// What one guest boot printed.
struct Boot {
    records: Vec<Value>,
    kernel: String,
    status: std::process::ExitStatus,
    /// The crash phase said it was cutting the power.
    crashed: bool,
}

/// A fresh image of `DISK_MIB`. Sparse where the guest's flushes are
/// dropped; written out where they reach the host's disk, so that a
/// flush there costs what a disk's flush costs and not the host file
/// system's block allocation too.
fn fresh_disk(p: &Path, cache: &str) -> Result<()> {
    let f = std::fs::File::create(p).with_context(|| p.display().to_string())?;
    if cache == "unsafe" {
        f.set_len(DISK_MIB << 20)?;
        return Ok(());
    }
    let zero = vec![0u8; 1 << 20];
    for _ in 0..DISK_MIB {
        (&f).write_all(&zero)
            .with_context(|| p.display().to_string())?;
    }
    f.sync_all().with_context(|| p.display().to_string())?;
    Ok(())
}

/// Boot the guest on `disks`, run `args` in it, collect its records.
fn boot(
    root: &Path,
    initramfs: &Path,
    disks: &[PathBuf],
    args: &[String],
    log: &Path,
    timeout: u64,
) -> Result<Boot> {
    let mut run = Command::new(root.join("scripts/guest"));
    run.arg("run")
        .arg("--initramfs")
        .arg(initramfs)
        .arg("--timeout")
        .arg(timeout.to_string())
        .arg("--log")
        .arg(log);
    for d in disks {
        run.arg("--disk").arg(d);
    }
    run.arg("--").args(args);
    let mut child = run
        .stdout(Stdio::piped())
        .spawn()
        .context("scripts/guest run")?;
    let out = child.stdout.take().context("guest stdout")?;
    let mut b = Boot {
        records: Vec::new(),
        kernel: String::new(),
        status: std::process::ExitStatus::default(),
        crashed: false,
    };
    for line in BufReader::new(out).lines() {
        let line = line.unwrap_or_default();
        let line = line.trim_end_matches('\r');
        if let Some(j) = line.find(MARK) {
            match serde_json::from_str::<Value>(&line[j + MARK.len()..]) {
                Ok(v) => b.records.push(v),
                Err(e) => eprintln!("bench: unreadable record ({e}): {line}"),
            }
        } else {
            if let Some(k) = line.split("kernel=").nth(1) {
                b.kernel = k.split_whitespace().next().unwrap_or("").to_string();
            }
            b.crashed |= line.contains(CRASHING);
            println!("{line}");
        }
    }
    b.status = child.wait()?;
    Ok(b)
}

fn which(b: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(b))
        .find(|p| p.exists())
}

/// The metrics of a record, by name, in table order.
const METRICS: [(&str, &str); 25] = [
    ("arrays", "arrays in the daemon"),
    (
        "readd_written_over_dirty",
        "re-add after 10 % scattered writes: written / dirty",
    ),
    ("readd_secs", "re-add: add -> rebuilt, s"),
    (
        "resync_written_over_dirty",
        "resync after a crash under writes to 10 % of chunks: written / dirty",
    ),
    (
        "resync_secs",
        "resync after a crash: assemble -> in sync, s",
    ),
    ("readd_start_secs", "re-add: add -> recovery seen, s"),
    (
        "recovery_end_to_can_clear_ms",
        "re-add: recovery end -> can_clear true, ms",
    ),
    ("fail_remove_secs", "fail + remove (member detached), s"),
    ("add_answer_ms", "add (re-add): the command's answer, ms"),
    (
        "first_write_median_ms",
        "first 4 KiB O_DIRECT\\|O_SYNC write after clean: median, ms",
    ),
    ("first_write_max_ms", "first write after clean: max, ms"),
    ("iops_seq", "4 KiB QD1 O_DIRECT write IOPS, seq"),
    ("iops_rand", "4 KiB QD1 O_DIRECT write IOPS, rand"),
    ("write_end_to_clean_secs", "write end -> array clean, s"),
    ("daemon_rss_kib", "daemon VmRSS, KiB"),
    ("daemon_lck_kib", "daemon VmLck, KiB"),
    ("daemon_threads", "daemon threads"),
    (
        "daemon_cpu_ms_per_first_write",
        "daemon CPU per first write after clean (its whole cycle back to clean), ms",
    ),
    (
        "daemon_switches_per_first_write",
        "daemon context switches per first write after clean",
    ),
    (
        "daemon_cpu_ms_during_iops",
        "daemon CPU during the IOPS runs, ms",
    ),
    (
        "daemon_switches_during_iops",
        "daemon context switches during the IOPS runs",
    ),
    ("daemon_wakeups_idle", "daemon context switches while idle"),
    ("idle_secs", "idle window, s"),
    ("create_secs", "create + start, s"),
    ("bitmap", "bitmap"),
];

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn summarise(records: &[Value], kinds: &[&str]) -> Value {
    let mut out = Map::new();
    for &k in kinds {
        let mine: Vec<&Value> = records.iter().filter(|r| r["kind"] == k).collect();
        let mut m = Map::new();
        for (name, _) in METRICS {
            if name == "bitmap" {
                if let Some(b) = mine.iter().find_map(|r| r["bitmap"].as_str()) {
                    m.insert(name.into(), json!(b));
                }
                continue;
            }
            let mut v: Vec<f64> = mine.iter().filter_map(|r| r[name].as_f64()).collect();
            // The max of first writes is the max over rounds.
            let x = if name == "first_write_max_ms" {
                v.iter().copied().reduce(f64::max)
            } else {
                median(&mut v)
            };
            m.insert(name.into(), x.map_or(Value::Null, |x| json!(x)));
        }
        let errs: Vec<Value> = mine
            .iter()
            .filter_map(|r| r.get("error").cloned())
            .collect();
        if !errs.is_empty() {
            m.insert("errors".into(), Value::Array(errs));
        }
        let main_rounds = mine
            .iter()
            .filter(|r| r.get("phase").is_none() || r["phase"] == "raid5")
            .count();
        m.insert("rounds".into(), json!(main_rounds));
        out.insert(k.into(), Value::Object(m));
    }
    Value::Object(out)
}

/// The floor boots' first writes: per kind, the median over every write
/// of every round, and the number of writes.
fn floor_summary(records: &[Value]) -> Value {
    let mut out = Map::new();
    for k in FLOOR_KINDS {
        let mut all: Vec<f64> = records
            .iter()
            .filter(|r| r["phase"] == "floor" && r["kind"] == k)
            .filter_map(|r| r["floor_first_write_ms"].as_array().cloned())
            .flatten()
            .filter_map(|v| v.as_f64())
            .collect();
        let n = all.len();
        let max = all.iter().copied().reduce(f64::max);
        out.insert(
            k.into(),
            json!({"median_ms": median(&mut all), "max_ms": max, "writes": n}),
        );
    }
    Value::Object(out)
}

fn print_floor(f: &Value) {
    if f["mdadm12_bitmap"]["writes"] == 0 {
        return;
    }
    println!();
    println!("| first write after clean, floor boots | mdadm12_bitmap | mdext | floor (least user-space handler, a thread of the writer) | floor_process (the same, a process) |");
    println!("|---|---|---|---|---|");
    for (key, label) in [
        ("median_ms", "median, ms"),
        ("max_ms", "max, ms"),
        ("writes", "writes"),
    ] {
        let cells: Vec<String> = FLOOR_KINDS.iter().map(|k| fmt(&f[*k][key])).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.abs() >= 100.0 || x.fract() == 0.0 {
                format!("{x:.0}")
            } else if x.abs() >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.3}")
            }
        }
        other => other.to_string(),
    }
}

/// The table of `kinds` (the first is the base of the ratios); rows no
/// kind has are left out.
fn print_table(m: &Value, kinds: &[&str]) {
    let base_kind = kinds[0];
    println!();
    println!("| metric | {} |", kinds.join(" | "));
    println!("|---|{}", "---|".repeat(kinds.len()));
    for (name, label) in METRICS {
        if kinds.iter().all(|k| m[*k][name].is_null()) {
            continue;
        }
        let base = m[base_kind][name].as_f64();
        let cells: Vec<String> = kinds
            .iter()
            .map(|k| {
                let v = &m[*k][name];
                match (v.as_f64(), base) {
                    (Some(x), Some(b)) if b != 0.0 && *k != base_kind && name != "idle_secs" => {
                        format!("{} ({:.2}×)", fmt(v), x / b)
                    }
                    _ => fmt(v),
                }
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    for k in kinds {
        if let Some(e) = m[*k].get("errors") {
            println!("{k}: errors: {e}");
        }
    }
    println!("(medians over rounds; (×) = ratio to {base_kind})");
}

// --------------------------------------------------------------- guest side

fn sh(cmd: &str) -> Result<String> {
    sh_env(cmd, &[])
}

fn sh_env(cmd: &str, env: &[(&str, &str)]) -> Result<String> {
    // Output goes to a file, not a pipe: a daemon the command forks (mdmon)
    // keeps its inherited descriptors, and a pipe would never reach EOF.
    // Every command is bounded (busybox timeout).
    let out_path = "/tmp/bench-sh.out";
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!(
            "timeout 300 /bin/sh -c '{}' >{out_path} 2>&1 </dev/null",
            cmd.replace('\'', "'\\''")
        ))
        .env("MDADM_NO_MDMON", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    if env.iter().any(|(k, _)| *k == "IMSM_NO_PLATFORM") {
        c.env_remove("MDADM_NO_MDMON");
    }
    let st = c.status().with_context(|| cmd.to_string())?;
    let out = std::fs::read_to_string(out_path).unwrap_or_default();
    if !st.success() {
        bail!("`{cmd}` failed ({st}): {}", out.trim());
    }
    Ok(out)
}

fn read(p: &str) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| p.to_string())?
        .trim()
        .to_string())
}

/// Poll a condition (a measurement loop, not synchronisation of a test).
fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(x) = f() {
            return Ok(x);
        }
        if t0.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn written_sectors(disk: &str) -> Result<u64> {
    let s = read(&format!("/sys/block/{disk}/stat"))?;
    s.split_whitespace()
        .nth(6)
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("/sys/block/{disk}/stat: {s}"))
}

/// The raid1 md device that holds `disk`.
fn md_of(disk: &str) -> Result<String> {
    let mut found = None;
    for e in std::fs::read_dir(format!("/sys/block/{disk}/holders"))? {
        let n = e?.file_name().to_string_lossy().to_string();
        // (Not an IMSM container, which holds the disk too.)
        let level = read(&format!("/sys/block/{n}/md/level")).unwrap_or_default();
        if level == "raid1" || level == "raid5" {
            found = Some(n);
        }
    }
    found.with_context(|| format!("no raid1 or raid5 array holds {disk}"))
}

fn md_attr(md: &str, a: &str) -> String {
    read(&format!("/sys/block/{md}/md/{a}")).unwrap_or_default()
}

/// A page-aligned 4 KiB buffer.
struct Buf {
    v: Vec<u8>,
    off: usize,
}

impl Buf {
    fn new(seed: u8) -> Buf {
        let mut v = vec![seed; 8192];
        let off = (4096 - (v.as_ptr() as usize % 4096)) % 4096;
        v[off] = seed.wrapping_add(1);
        Buf { v, off }
    }
    fn get(&self) -> &[u8] {
        &self.v[self.off..self.off + 4096]
    }
}

fn open_direct(dev: &str, sync: bool) -> Result<std::fs::File> {
    let mut flags = nix::libc::O_DIRECT;
    if sync {
        flags |= nix::libc::O_SYNC;
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(dev)
        .with_context(|| format!("open {dev} O_DIRECT"))
}

/// A tiny xorshift for random offsets (no dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Kind {
    name: &'static str,
    /// Two disks (raid1), three for the raid5 kinds.
    disks: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

impl Kind {
    fn sh(&self, cmd: &str) -> Result<String> {
        sh_env(cmd, &self.env)
    }

    /// The `mdext64` kind's idle arrays, started first so that the
    /// measured array is the 64th of one daemon.
    fn create_extra(&self) -> Result<()> {
        for i in 0..EXTRA_ARRAYS {
            let mut devs = Vec::new();
            for j in 0..2 {
                let n = 2 * i + j;
                let img = format!("/tmp/extra{n}.img");
                std::fs::File::create(&img)?.set_len(EXTRA_MIB << 20)?;
                let dev = format!("/dev/loop{n}");
                sh(&format!(
                    "[ -e {dev} ] || mknod {dev} b 7 {n}; losetup {dev} {img}"
                ))?;
                devs.push(dev);
            }
            let d = devs.join(" ");
            self.sh(&format!("mdextctl create --level 1 --raid-devices 2 --name x{i} --bitmap-chunk 1M --assume-clean {d}"))?;
            self.sh(&format!("mdextctl assemble x{i} {d}"))?;
        }
        Ok(())
    }

    fn stop_extra(&self) -> Result<()> {
        for i in 0..EXTRA_ARRAYS {
            self.sh(&format!("mdextctl stop x{i}"))?;
        }
        for n in 0..2 * EXTRA_ARRAYS {
            let _ = sh(&format!("losetup -d /dev/loop{n}; rm -f /tmp/extra{n}.img"));
        }
        Ok(())
    }

    /// Create and start the array; returns the bitmap description.
    fn create(&self) -> Result<String> {
        let (a, b) = (&self.disks[0], &self.disks[1]);
        let all = self
            .disks
            .iter()
            .map(|d| format!("/dev/{d}"))
            .collect::<Vec<_>>()
            .join(" ");
        match self.name {
            "mdext_raid5" => {
                self.sh(&format!("mdextctl create --level 5 --raid-devices 3 --chunk 512K --name bench --bitmap-chunk 1M --assume-clean {all}"))?;
                self.sh(&format!("mdextctl assemble bench {all}"))?;
                Ok("mdext external, 1 MiB".into())
            }
            "mdadm12_bitmap_raid5" => {
                self.sh(&format!("mdadm --create /dev/md0 --run --metadata=1.2 --level=5 --raid-devices=3 --chunk=512 --bitmap=internal --bitmap-chunk=1M --assume-clean {all} 2>&1"))?;
                Ok("internal, 1 MiB".into())
            }
            "mdext" | "mdext64" => {
                if self.name == "mdext64" {
                    self.create_extra()?;
                }
                self.sh(&format!("mdextctl create --level 1 --raid-devices 2 --name bench --bitmap-chunk 1M --assume-clean /dev/{a} /dev/{b}"))?;
                self.sh(&format!("mdextctl assemble bench /dev/{a} /dev/{b}"))?;
                Ok("mdext external, 1 MiB".into())
            }
            "mdadm12_bitmap" => {
                self.sh(&format!("mdadm --create /dev/md0 --run --metadata=1.2 --level=1 --raid-devices=2 --bitmap=internal --bitmap-chunk=1M --assume-clean /dev/{a} /dev/{b} 2>&1"))?;
                Ok("internal, 1 MiB".into())
            }
            "mdadm12_nobitmap" => {
                self.sh(&format!("mdadm --create /dev/md0 --run --metadata=1.2 --level=1 --raid-devices=2 --bitmap=none --assume-clean /dev/{a} /dev/{b} 2>&1"))?;
                Ok("none".into())
            }
            "imsm_mdmon" => {
                self.sh(&format!(
                    "mdadm --create /dev/md100 --run --metadata=imsm --raid-devices=2 /dev/{a} /dev/{b} 2>&1"
                ))?;
                let base =
                    "mdadm --create /dev/md101 --run --level=1 --raid-devices=2 --assume-clean";
                for (opt, what) in [
                    (
                        "--bitmap=internal --bitmap-chunk=1M",
                        "imsm internal, 1 MiB",
                    ),
                    ("--bitmap=internal", "imsm internal, default chunk"),
                    ("", "none (IMSM bitmap refused)"),
                ] {
                    match self.sh(&format!("{base} {opt} /dev/md100 2>&1")) {
                        Ok(_) => return Ok(what.into()),
                        Err(e) => println!("bench: imsm volume with '{opt}': {e:#}"),
                    }
                }
                bail!("IMSM volume could not be created")
            }
            _ => bail!("unknown kind"),
        }
    }

    fn daemon_pid(&self) -> Option<u32> {
        let p = match self.name {
            "mdext" | "mdext64" | "mdext_raid5" => read("/run/mdext/mdextmon.pid").ok()?,
            "imsm_mdmon" => sh("pidof mdmon")
                .ok()?
                .split_whitespace()
                .next()?
                .to_string(),
            _ => return None,
        };
        p.trim().parse().ok()
    }

    fn fail_remove(&self, md: &str) -> Result<()> {
        let b = &self.disks[1];
        match self.name {
            "mdext" | "mdext64" | "mdext_raid5" => {
                self.sh(&format!("mdextctl fail {md} /dev/{b}"))?;
                wait(
                    "the failed member to be detached",
                    Duration::from_secs(30),
                    || (!Path::new(&format!("/sys/block/{md}/md/dev-{b}")).exists()).then_some(()),
                )?;
                self.sh(&format!("mdextctl remove {md} /dev/{b}"))?;
            }
            "imsm_mdmon" => {
                self.sh(&format!("mdadm /dev/{md} --fail /dev/{b} 2>&1"))?;
                wait(
                    "mdmon to detach the failed member",
                    Duration::from_secs(30),
                    || (!Path::new(&format!("/sys/block/{md}/md/dev-{b}")).exists()).then_some(()),
                )?;
                self.sh(&format!("mdadm /dev/md100 --remove /dev/{b} 2>&1"))?;
            }
            _ => {
                self.sh(&format!(
                    "mdadm /dev/{md} --fail /dev/{b} --remove /dev/{b} 2>&1"
                ))?;
            }
        }
        Ok(())
    }

    fn readd(&self, md: &str) -> Result<()> {
        let b = &self.disks[1];
        match self.name {
            "mdext" | "mdext64" | "mdext_raid5" => {
                self.sh(&format!("mdextctl add {md} /dev/{b}"))?
            }
            "imsm_mdmon" => self.sh(&format!("mdadm /dev/md100 --add /dev/{b} 2>&1"))?,
            "mdadm12_bitmap" => self.sh(&format!("mdadm /dev/{md} --re-add /dev/{b} 2>&1"))?,
            _ => self.sh(&format!(
                "mdadm /dev/{md} --re-add /dev/{b} 2>&1 || mdadm /dev/{md} --add /dev/{b} 2>&1"
            ))?,
        };
        Ok(())
    }

    fn stop(&self, md: &str) -> Result<()> {
        match self.name {
            "mdext" | "mdext64" | "mdext_raid5" => {
                self.sh(&format!("mdextctl stop {md}"))?;
                if self.name == "mdext64" {
                    self.stop_extra()?;
                }
                if let Some(pid) = self.daemon_pid() {
                    let _ = sh(&format!("kill -TERM {pid}"));
                    wait("mdextmon to exit", Duration::from_secs(30), || {
                        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
                    })?;
                }
            }
            "imsm_mdmon" => {
                self.sh(&format!("mdadm --stop /dev/{md} 2>&1"))?;
                self.sh("mdadm --stop /dev/md100 2>&1")?;
                let _ = wait("mdmon to exit", Duration::from_secs(30), || {
                    sh("pidof mdmon").is_err().then_some(())
                });
            }
            _ => {
                self.sh(&format!("mdadm --stop /dev/{md} 2>&1"))?;
            }
        }
        Ok(())
    }
}

fn wait_clean(md: &str) -> Result<f64> {
    let t0 = Instant::now();
    let mut last = String::new();
    let r = wait(&format!("{md} clean"), Duration::from_secs(60), || {
        last = md_attr(md, "array_state");
        (last == "clean").then_some(())
    });
    r.with_context(|| format!("array_state of {md} stayed '{last}'"))?;
    Ok(t0.elapsed().as_secs_f64())
}

fn kind_env(name: &str) -> Vec<(&'static str, &'static str)> {
    if name == "imsm_mdmon" {
        vec![("IMSM_NO_PLATFORM", "1"), ("IMSM_DEVNAME_AS_SERIAL", "1")]
    } else {
        vec![]
    }
}

/// The chunks the crash phase keeps writing: every tenth.
fn crash_chunks(bytes: u64) -> Vec<u64> {
    (0..bytes / CHUNK).step_by(10).collect()
}

/// Boot 1 of a crash round: create the array, keep writing 4 KiB into
/// every tenth chunk, and once every chunk of the set was written and the
/// array reads `active` (its metadata says dirty), cut the power (sysrq b;
/// never returns).
fn crash_phase(k: &Kind) -> Result<()> {
    sh("echo 1 > /proc/sys/kernel/sysrq")?;
    let t0 = Instant::now();
    let bitmap = k.create()?;
    let md = wait("the array to appear", Duration::from_secs(30), || {
        md_of(&k.disks[0]).ok()
    })?;
    let dev = format!("/dev/{md}");
    wait_started(&md, &dev)?;
    println!(
        "bench: crash phase: {} ({bitmap}) on {md} started in {:.1} s",
        k.name,
        t0.elapsed().as_secs_f64()
    );
    // mdadm writes a new internal bitmap with every bit set; md clears
    // them once the array is clean for a few bitmap periods. A crash
    // before then resyncs everything whatever was written: wait until the
    // bitmap shows nothing dirty (`mdadm -X`), as on an array that has run
    // a while.
    let t = Instant::now();
    let settled = match k.name {
        "mdadm12_bitmap" | "imsm_mdmon" => {
            let dev_a = format!("/dev/{}", k.disks[0]);
            wait(
                "the bitmap to show no dirty chunk",
                Duration::from_secs(120),
                || {
                    let x = k.sh(&format!("mdadm -X {dev_a} 2>&1")).ok()?;
                    x.lines()
                        .any(|l| l.contains("Bitmap :") && l.contains(" 0 dirty"))
                        .then_some(())
                },
            )
            .is_ok()
        }
        _ => true,
    };
    let mut rec = Map::new();
    rec.insert("kind".into(), json!(k.name));
    rec.insert("phase".into(), json!("crash"));
    rec.insert("bitmap_settled".into(), json!(settled));
    rec.insert(
        "bitmap_settle_secs".into(),
        json!(t.elapsed().as_secs_f64()),
    );
    println!("{MARK}{}", Value::Object(rec));
    let sectors: u64 = md_attr(&md, "../size").parse().context("array size")?;
    let chunks = crash_chunks(sectors * 512);
    let passes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = passes.clone();
    let d2 = dev.clone();
    std::thread::spawn(move || -> Result<()> {
        let f = open_direct(&d2, false)?;
        let buf = Buf::new(0x3c);
        loop {
            for c in &chunks {
                f.write_at(buf.get(), c * CHUNK + (c * 7 % 256) * 4096)?;
            }
            p2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    wait(
        "two passes over the chunks with the array active",
        Duration::from_secs(300),
        || {
            (passes.load(std::sync::atomic::Ordering::SeqCst) >= 2
                && md_attr(&md, "array_state") == "active")
                .then_some(())
        },
    )?;
    println!("{CRASHING} {md} active");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(600));
    bail!("still running after sysrq b")
}

/// Boot 2 of a crash round: assemble the crashed array as its tools do,
/// and measure the resync: sectors written to both members since boot,
/// over the chunks the crash phase wrote.
fn resync_phase(k: &Kind, rec: &mut Map<String, Value>) -> Result<()> {
    let (a, b) = (&k.disks[0], &k.disks[1]);
    let t = Instant::now();
    match k.name {
        "mdext" => {
            k.sh(&format!("mdextctl assemble bench /dev/{a} /dev/{b}"))?;
        }
        "imsm_mdmon" => {
            k.sh(&format!(
                "mdadm --assemble /dev/md100 /dev/{a} /dev/{b} 2>&1"
            ))?;
            k.sh("mdadm --incremental /dev/md100 2>&1")?;
        }
        _ => {
            k.sh(&format!("mdadm --assemble /dev/md0 /dev/{a} /dev/{b} 2>&1"))?;
        }
    }
    let md = wait("the array to appear", Duration::from_secs(60), || {
        md_of(a).ok()
    })?;
    let dev = format!("/dev/{md}");
    // An array started read-auto resyncs only once written: one write into
    // a chunk the crash phase dirtied already.
    wait("the array to run", Duration::from_secs(60), || {
        let s = md_attr(&md, "array_state");
        (!s.is_empty() && s != "inactive").then_some(())
    })?;
    if md_attr(&md, "array_state") == "read-auto" {
        open_direct(&dev, true)?.write_at(Buf::new(2).get(), 0)?;
    }
    wait("the resync to end", Duration::from_secs(850), || {
        (md_attr(&md, "resync_start") == "none"
            && md_attr(&md, "sync_action") == "idle"
            && md_attr(&md, "degraded") == "0")
            .then_some(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    let written = written_sectors(a)? + written_sectors(b)?;
    let sectors: u64 = md_attr(&md, "../size").parse().context("array size")?;
    let dirty = crash_chunks(sectors * 512).len() as u64;
    rec.insert("resync_secs".into(), json!(secs));
    rec.insert("resync_dirty_chunks".into(), json!(dirty));
    rec.insert("resync_written_sectors".into(), json!(written));
    rec.insert(
        "resync_written_over_dirty".into(),
        json!(written as f64 / (dirty * (CHUNK / 512)) as f64),
    );
    rec.insert(
        "resync_mismatch_cnt".into(),
        json!(md_attr(&md, "mismatch_cnt")),
    );
    // What md said about the bitmap and the resync (why a resync was full).
    let said: Vec<String> = sh("dmesg")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("md") && (l.contains("bitmap") || l.contains("sync")))
        .map(|l| l.split_once("] ").map_or(l, |(_, m)| m).to_string())
        .collect();
    rec.insert("resync_kernel_said".into(), json!(said));
    Ok(())
}

/// After create: an external-metadata array may start `read-auto` until its
/// first write (mdmon's IMSM volumes do); one write and the wait for
/// `clean` follow.
fn wait_started(md: &str, dev: &str) -> Result<()> {
    wait(&format!("{md} to start"), Duration::from_secs(60), || {
        let s = md_attr(md, "array_state");
        (s == "clean" || s == "read-auto" || s == "active").then_some(())
    })?;
    if md_attr(md, "array_state") == "read-auto" {
        let f = open_direct(dev, true)?;
        f.write_at(Buf::new(1).get(), 0)?;
    }
    wait_clean(md)?;
    Ok(())
}

/// (time on a CPU in ms, context switches), summed over all threads.
/// The time is the scheduler's own count (`schedstat`, in ns): `stat`'s
/// utime and stime are sampled at the tick, 10 ms a step, too coarse for
/// a daemon that runs a few ms in a whole IOPS run.
fn daemon_counters(pid: u32) -> (f64, u64) {
    let mut ns = 0u64;
    let mut sw = 0;
    let mut seen = false;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let run = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            if let Some(n) = run
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
            {
                ns += n;
                seen = true;
            }
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in st.lines() {
                if l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
                {
                    sw += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    let cpu = if seen { ns as f64 / 1e6 } else { f64::NAN };
    (cpu, sw)
}

fn status_kib(pid: u32, key: &str) -> Option<f64> {
    let st = read(&format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `n` times: wait until the array reads `clean`, then time one 4 KiB
/// `O_DIRECT|O_SYNC` write at a random block; the times in ms.
fn first_writes(md: &str, n: usize, rng: &mut Rng) -> Result<Vec<f64>> {
    let dev = format!("/dev/{md}");
    let sectors: u64 = md_attr(md, "../size").parse().context("array size")?;
    let blocks = sectors / 8;
    let buf = Buf::new(0x5a);
    let f = open_direct(&dev, true)?;
    let mut lat = Vec::new();
    for _ in 0..n {
        wait_clean(md)?;
        // A little past the moment of `clean`, so the metadata write that
        // marked it clean has finished everywhere.
        std::thread::sleep(Duration::from_millis(300));
        let off = (rng.next() % blocks) * 4096;
        let t = Instant::now();
        f.write_at(buf.get(), off)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The last cycle back to clean too (the daemon's CPU counts whole
    // cycles), with the record after `clean` done.
    wait_clean(md)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(lat)
}

/// The floor boot: in one guest, the first write after clean of md 1.2 +
/// bitmap, of mdext, and of an mdext array whose daemon was replaced by
/// the least a metadata handler in user space can do (`floor`: a thread
/// that answers `write-pending` with `active` and `active-idle` with
/// `clean` at once, recording nothing). What `floor` costs over md's own
/// is the price of handling the metadata in user space at all (md's
/// notification, two wakeups, two sysfs writes); what mdext costs over
/// `floor` is its own work (the snapshot, the record on every member).
fn floor_phase(o: &Opts, disks: &[String]) -> Result<()> {
    let kinds = FLOOR_KINDS;
    for i in 0..kinds.len() {
        // Rotated by round, as the main run's kinds are.
        let j = (i + o.round.saturating_sub(1)) % kinds.len();
        let name = &kinds[j];
        let k = Kind {
            name: if name.starts_with("floor") {
                "mdext"
            } else {
                name
            },
            disks: vec![
                disks.get(2 * j).context("disks")?.clone(),
                disks.get(2 * j + 1).context("disks")?.clone(),
            ],
            env: Vec::new(),
        };
        let mut rec = Map::new();
        rec.insert("kind".into(), json!(name));
        rec.insert("phase".into(), json!("floor"));
        rec.insert("round".into(), json!(o.round));
        let r = (|| -> Result<()> {
            k.create()?;
            let md = wait("the array to appear", Duration::from_secs(30), || {
                md_of(&k.disks[0]).ok()
            })?;
            wait_started(&md, &format!("/dev/{md}"))?;
            let responder = if name.starts_with("floor") {
                let pid = k.daemon_pid().context("mdextmon's pid")?;
                sh(&format!("kill -KILL {pid}"))?;
                wait("mdextmon to die", Duration::from_secs(30), || {
                    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
                })?;
                Some(if *name == "floor" {
                    Responder::Thread(floor_responder(&md)?)
                } else {
                    let exe = std::env::current_exe().context("current_exe")?;
                    Responder::Process(
                        Command::new(exe)
                            .args(["--in-guest", "--respond", md.as_str()])
                            .spawn()
                            .context("the floor_process handler")?,
                    )
                })
            } else {
                None
            };
            let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ j as u64);
            let mut lat = first_writes(&md, o.first_writes, &mut rng)?;
            rec.insert("floor_first_write_ms".into(), json!(lat.clone()));
            rec.insert(
                "floor_first_write_median_ms".into(),
                json!(median(&mut lat)),
            );
            match responder {
                // No daemon: md's own stop (the record stays as it was).
                Some(r) => {
                    wait_clean(&md)?;
                    match r {
                        Responder::Thread(stop) => {
                            stop.store(true, std::sync::atomic::Ordering::SeqCst)
                        }
                        Responder::Process(mut c) => {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                    }
                    sh(&format!("echo clear > /sys/block/{md}/md/array_state"))?;
                }
                // The next mdext array of this boot is named `bench` too.
                None => k.stop(&md)?,
            }
            Ok(())
        })();
        if let Err(e) = r {
            println!("bench: floor {name}: {e:#}");
            rec.insert("error".into(), json!(format!("{e:#}")));
        }
        println!("{MARK}{}", Value::Object(rec));
    }
    Ok(())
}

/// The raid5 boot: md 1.2 + bitmap and mdext, three disks each, the main
/// run's workloads (no idle window), kinds rotated by round.
fn raid5_phase(o: &Opts, disks: &[String]) -> Result<()> {
    for i in 0..RAID5_KINDS.len() {
        let j = (i + o.round.saturating_sub(1)) % RAID5_KINDS.len();
        let name = RAID5_KINDS[j];
        let k = Kind {
            name,
            disks: (0..3)
                .map(|d| disks.get(3 * j + d).cloned().context("disks"))
                .collect::<Result<_>>()?,
            env: kind_env(name),
        };
        println!(
            "bench: raid5 round {} {name} on {}",
            o.round,
            k.disks.join(" ")
        );
        let mut rec = Map::new();
        rec.insert("kind".into(), json!(name));
        rec.insert("phase".into(), json!("raid5"));
        rec.insert("round".into(), json!(o.round));
        let t = Instant::now();
        if let Err(e) = run_kind(&k, o, &mut rec) {
            println!("bench: {name}: {e:#}");
            rec.insert("error".into(), json!(format!("{e:#}")));
            let _ = sh("mdadm --stop --scan 2>&1");
        }
        rec.insert("wall_secs".into(), json!(t.elapsed().as_secs_f64()));
        println!("{MARK}{}", Value::Object(rec));
    }
    Ok(())
}

/// A floor handler: a thread of this process, or a process of its own.
enum Responder {
    Thread(std::sync::Arc<std::sync::atomic::AtomicBool>),
    Process(std::process::Child),
}

/// The `floor` handler (see [`floor_phase`]); stops when the flag is set
/// (after its next wake).
fn floor_responder(md: &str) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let f = open_array_state(md)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || respond(&f, &s2));
    Ok(stop)
}

fn open_array_state(md: &str) -> Result<File> {
    let path = format!("/sys/block/{md}/md/array_state");
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| path.clone())
}

/// The least handler's loop: `write-pending` -> `active`, `active-idle` ->
/// `clean`, nothing recorded.
fn respond(f: &File, stop: &std::sync::atomic::AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    {
        let mut buf = [0u8; 64];
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let n = f.read_at(&mut buf, 0).unwrap_or(0);
            let state = std::str::from_utf8(&buf[..n]).unwrap_or("").trim();
            let answer: &[u8] = match state {
                "write-pending" => b"active",
                "active-idle" => b"clean",
                _ => b"",
            };
            if !answer.is_empty() {
                let _ = f.write_at(answer, 0);
                continue;
            }
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
            let _ = poll(&mut fds, PollTimeout::from(1000u16));
        }
    }
}

fn run_kind(k: &Kind, o: &Opts, rec: &mut Map<String, Value>) -> Result<()> {
    let t0 = Instant::now();
    let bitmap = k.create()?;
    rec.insert("bitmap".into(), json!(bitmap));
    let md = wait("the array to appear", Duration::from_secs(30), || {
        md_of(&k.disks[0]).ok()
    })?;
    rec.insert("md".into(), json!(md));
    wait_started(&md, &format!("/dev/{md}"))?;
    rec.insert("create_secs".into(), json!(t0.elapsed().as_secs_f64()));
    let dev = format!("/dev/{md}");
    let sectors: u64 = md_attr(&md, "../size").parse().context("array size")?;
    let bytes = sectors * 512;
    let blocks = bytes / 4096;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k.name.len() as u64) << 7);
    let buf = Buf::new(0x5a);

    // First write after the array went clean; the daemon's share of each
    // whole cycle (the write, then back to clean).
    let pid = k.daemon_pid();
    let c0 = pid.map(daemon_counters);
    let lat = first_writes(&md, o.first_writes, &mut rng)?;
    if let (Some(p), Some(c0), false) = (pid, c0, lat.is_empty()) {
        let c1 = daemon_counters(p);
        let n = lat.len() as f64;
        rec.insert(
            "daemon_cpu_ms_per_first_write".into(),
            json!((c1.0 - c0.0) / n),
        );
        rec.insert(
            "daemon_switches_per_first_write".into(),
            json!((c1.1 - c0.1) as f64 / n),
        );
    }
    rec.insert("first_write_ms".into(), json!(lat));
    rec.insert(
        "first_write_median_ms".into(),
        json!(median(&mut lat.clone())),
    );
    rec.insert(
        "first_write_max_ms".into(),
        json!(lat.iter().copied().reduce(f64::max)),
    );

    if o.trace && rec["round"] == 1 {
        if let Some(pid) = k.daemon_pid() {
            if let Err(e) = trace_first_write(&md, &dev, pid) {
                println!("bench: trace: {e:#}");
            }
        }
    }

    // QD1 IOPS, then write end -> clean.
    let pid = k.daemon_pid();
    let c0 = pid.map(daemon_counters);
    let mut to_clean = Vec::new();
    for mode in ["seq", "rand"] {
        wait_clean(&md)?;
        let f = open_direct(&dev, false)?;
        let t = Instant::now();
        let limit = Duration::from_secs(o.iops_secs);
        let mut n = 0u64;
        while t.elapsed() < limit {
            let blk = if mode == "seq" {
                n % blocks
            } else {
                rng.next() % blocks
            };
            f.write_at(buf.get(), blk * 4096)?;
            n += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        drop(f);
        rec.insert(format!("iops_{mode}"), json!(n as f64 / secs));
        to_clean.push(wait_clean(&md)?);
    }
    if let (Some(p), Some(c0)) = (pid, c0) {
        let c1 = daemon_counters(p);
        rec.insert("daemon_cpu_ms_during_iops".into(), json!(c1.0 - c0.0));
        rec.insert("daemon_switches_during_iops".into(), json!(c1.1 - c0.1));
    }
    rec.insert("write_end_to_clean_all".into(), json!(to_clean));
    rec.insert(
        "write_end_to_clean_secs".into(),
        json!(median(&mut to_clean)),
    );

    // Footprint and idle wakeups.
    if let Some(p) = pid {
        rec.insert("daemon_rss_kib".into(), json!(status_kib(p, "VmRSS:")));
        rec.insert("daemon_lck_kib".into(), json!(status_kib(p, "VmLck:")));
        rec.insert("daemon_threads".into(), json!(status_kib(p, "Threads:")));
        if o.idle > 0 {
            wait_clean(&md)?;
            // Let the bitmap's own clearing (time_base) settle first.
            std::thread::sleep(Duration::from_secs(12));
            let a = daemon_counters(p);
            std::thread::sleep(Duration::from_secs(o.idle));
            let b = daemon_counters(p);
            rec.insert("daemon_wakeups_idle".into(), json!(b.1.saturating_sub(a.1)));
            rec.insert("idle_secs".into(), json!(o.idle));
        }
    }

    // Re-add after 10 % scattered writes.
    let t = Instant::now();
    k.fail_remove(&md)?;
    rec.insert("fail_remove_secs".into(), json!(t.elapsed().as_secs_f64()));
    let chunks = bytes / CHUNK;
    let f = open_direct(&dev, false)?;
    let mut dirty = 0u64;
    for c in (0..chunks).step_by(10) {
        let within = (rng.next() % (CHUNK / 4096)) * 4096;
        f.write_at(buf.get(), c * CHUNK + within)?;
        dirty += 1;
    }
    drop(f);
    let b = &k.disks[1];
    let w0 = written_sectors(b)?;
    let t = Instant::now();
    k.readd(&md)?;
    rec.insert(
        "add_answer_ms".into(),
        json!(t.elapsed().as_secs_f64() * 1000.0),
    );
    let mut started = None;
    wait("the rebuild to end", Duration::from_secs(900), || {
        let action = md_attr(&md, "sync_action");
        if started.is_none() && action == "recover" {
            started = Some(t.elapsed().as_secs_f64());
        }
        let degraded = md_attr(&md, "degraded");
        (degraded == "0" && action == "idle").then_some(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    let written = written_sectors(b)? - w0;
    // mdext: from the rebuild's end (as seen above) to the daemon's
    // `can_clear = true` (the record of the array whole comes first).
    if k.name.starts_with("mdext") {
        let end = Instant::now();
        wait(
            "can_clear true after the rebuild",
            Duration::from_secs(60),
            || (md_attr(&md, "bitmap/can_clear") == "true").then_some(()),
        )?;
        rec.insert(
            "recovery_end_to_can_clear_ms".into(),
            json!(end.elapsed().as_secs_f64() * 1000.0),
        );
    }
    let dirty_sectors = dirty * (CHUNK / 512);
    rec.insert("readd_secs".into(), json!(secs));
    rec.insert("readd_start_secs".into(), json!(started));
    rec.insert("readd_dirty_chunks".into(), json!(dirty));
    rec.insert("readd_written_sectors".into(), json!(written));
    rec.insert(
        "readd_written_over_dirty".into(),
        json!(written as f64 / dirty_sectors as f64),
    );
    wait_clean(&md)?;
    k.stop(&md)?;
    Ok(())
}

/// strace the daemon (all threads, times per call) across one first write
/// after clean; the trace goes to the console with a MDEXT-TRACE prefix.
/// Separate from the timed writes: ptrace slows every call it sees.
fn trace_first_write(md: &str, dev: &str, pid: u32) -> Result<()> {
    let tr = format!("/tmp/trace.{pid}");
    sh(&format!(
        "(strace -f -tt -T -s 64 -o {tr} -p {pid} >/dev/null 2>&1 &) ; sleep 2"
    ))?;
    for seed in 0..2u8 {
        wait_clean(md)?;
        std::thread::sleep(Duration::from_millis(500));
        let f = open_direct(dev, true)?;
        let t = Instant::now();
        f.write_at(Buf::new(seed).get(), 4096 * (7 + u64::from(seed)))?;
        println!(
            "MDEXT-TRACE write {} returned after {:.3} ms (under strace)",
            seed,
            t.elapsed().as_secs_f64() * 1000.0
        );
        wait_clean(md)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = sh("kill $(pidof strace)");
    std::thread::sleep(Duration::from_millis(500));
    for l in std::fs::read_to_string(&tr).unwrap_or_default().lines() {
        println!("MDEXT-TRACE {l}");
    }
    Ok(())
}

fn guest(o: &Opts) -> Result<()> {
    // mdadm looks for mdmon in /sbin.
    let _ =
        sh("[ -e /bin/mdmon ] && ln -sf /bin/mdmon /sbin/mdmon; mkdir -p /run/mdadm /run/mdext");
    let mut disks: Vec<String> = std::fs::read_dir("/sys/block")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("vd"))
        .collect();
    disks.sort_by_key(|d| (d.len(), d.clone()));
    if let Some(md) = &o.respond {
        let f = open_array_state(md)?;
        respond(&f, &std::sync::atomic::AtomicBool::new(false));
        return Ok(());
    }
    if o.phase.as_deref() == Some("floor") {
        return floor_phase(o, &disks);
    }
    if o.phase.as_deref() == Some("raid5") {
        return raid5_phase(o, &disks);
    }
    if let Some(phase) = &o.phase {
        let name = o.kind.as_deref().context("--phase needs --kind")?;
        let name = CRASH_KINDS
            .into_iter()
            .find(|k| *k == name)
            .with_context(|| format!("--kind {name}: not a crash kind"))?;
        let k = Kind {
            name,
            disks: vec![
                disks.first().context("no disk")?.clone(),
                disks.get(1).context("one disk")?.clone(),
            ],
            env: kind_env(name),
        };
        return match phase.as_str() {
            "crash" => crash_phase(&k),
            "resync" => {
                let mut rec = Map::new();
                rec.insert("kind".into(), json!(name));
                rec.insert("round".into(), json!(o.round));
                rec.insert("phase".into(), json!("resync"));
                if let Err(e) = resync_phase(&k, &mut rec) {
                    println!("bench: {name} resync: {e:#}");
                    rec.insert("error".into(), json!(format!("{e:#}")));
                }
                println!("{MARK}{}", Value::Object(rec));
                Ok(())
            }
            other => bail!("--phase {other}: crash or resync"),
        };
    }
    let need = o.rounds * KINDS.len() * 2;
    if disks.len() < need {
        bail!("{} virtio disks, {need} needed", disks.len());
    }
    println!(
        "bench: kernel {}, {} disks, mdadm {}",
        read("/proc/sys/kernel/osrelease")?,
        disks.len(),
        sh("mdadm --version 2>&1").unwrap_or_default().trim()
    );
    let mut next = 0;
    for round in 0..o.rounds {
        for i in 0..KINDS.len() {
            let name = KINDS[(i + round) % KINDS.len()];
            let k = Kind {
                name,
                disks: vec![disks[next].clone(), disks[next + 1].clone()],
                env: kind_env(name),
            };
            next += 2;
            println!(
                "bench: round {} {name} on {} {}",
                round + 1,
                k.disks[0],
                k.disks[1]
            );
            let mut rec = Map::new();
            rec.insert("kind".into(), json!(name));
            if name == "mdext64" {
                rec.insert("arrays".into(), json!(EXTRA_ARRAYS + 1));
            }
            rec.insert("round".into(), json!(round + 1));
            let t = Instant::now();
            if let Err(e) = run_kind(&k, o, &mut rec) {
                println!("bench: {name} round {}: {e:#}", round + 1);
                rec.insert("error".into(), json!(format!("{e:#}")));
                println!(
                    "{}",
                    sh("cat /proc/mdstat; ps | grep -e mdmon -e mdextmon").unwrap_or_default()
                );
                // Leave nothing running for the next kind.
                let _ = sh("mdadm --stop --scan 2>&1; mdextctl stop --help >/dev/null 2>&1");
            }
            rec.insert("wall_secs".into(), json!(t.elapsed().as_secs_f64()));
            println!("{MARK}{}", Value::Object(rec));
        }
    }
    Ok(())
}
