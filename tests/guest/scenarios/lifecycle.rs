//! Issues 3 and 4: create, examine, assemble, use, crash, stop.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use mdext::assembly::{self, ArraySpec, BitmapSpec, MemberSpec, StartMode};
use mdext::md::{ArrayState, Checkpoint, Level};
use mdext::units::{Bytes, Sectors};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub static CREATE_EXAMINE_ACTIVATE: Scenario = Scenario {
    name: "create_examine_activate",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: create_examine_activate,
        ends: Ends::Ok,
    }],
};

pub static FOREIGN_SIGNATURES: Scenario = Scenario {
    name: "create_examine_foreign_signatures_on_block_devices",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: foreign_signatures,
        ends: Ends::Ok,
    }],
};

pub static FILESYSTEM_LIFECYCLE: Scenario = Scenario {
    name: "assemble_filesystem_stop_reassemble",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: filesystem_lifecycle,
        ends: Ends::Ok,
    }],
};

pub static CRASH_RESYNC: Scenario = Scenario {
    name: "crash_then_bitmap_limited_resync",
    disks: &[64, 64],
    phases: &[
        Phase {
            name: "write_then_crash",
            run: crash_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "assemble_resync_check",
            run: crash_phase2,
            ends: Ends::Ok,
        },
    ],
};

pub static TRAILING_DIRTY_RECORD: Scenario = Scenario {
    name: "mirror_writes_leave_record_clean_crash_resyncs_from_bits",
    disks: &[64, 64],
    phases: &[
        Phase {
            name: "writes_held_active_crash",
            run: trailing_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "clean_record_bits_set_resync",
            run: trailing_phase2,
            ends: Ends::Ok,
        },
    ],
};

pub static DEGRADED_ASSEMBLY: Scenario = Scenario {
    name: "assemble_missing_member_needs_run",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: degraded_assembly,
        ends: Ends::Ok,
    }],
};

pub static BAD_INPUT: Scenario = Scenario {
    name: "assemble_bad_input_changes_nothing",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: bad_input,
        ends: Ends::Ok,
    }],
};

fn u(v: &serde_json::Value, k: &str) -> Result<u64> {
    v[k].as_u64()
        .with_context(|| format!("examine: no '{k}' in {v}"))
}

/// `blkid -p DEV`: exit status and output.
fn blkid_p(dev: &Path) -> Result<(i32, String)> {
    let o = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .context("blkid")?;
    Ok((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    ))
}

/// Issue 8, defect 5, on block devices (libblkid treats whole disks and
/// files differently, and create reopens an exclusively held device for
/// libblkid): each foreign signature is refused by name and nothing is
/// written; with --force it is wiped and blkid -p finds nothing.
fn foreign_signatures() -> Result<()> {
    let sigs = crate::signatures::ALL;
    // loop0 stays clean; loop1.. each get one signature, written into the
    // backing file before anything reads the loop device.
    let loops = loop_devices(1 + sigs.len(), 64)?;
    for (i, sig) in sigs.iter().enumerate() {
        let l = &loops[i + 1];
        sig.write(Path::new(&format!("/tmp/disk{}.img", i + 1)));
        let (rc, out) = blkid_p(&l.path)?;
        ensure!(
            rc == 0
                && out
                    .lines()
                    .any(|x| x == format!("TYPE={}", sig.blkid_type())),
            "{sig:?}: blkid -p {}: status {rc}: {out}",
            l.path.display()
        );
        let before = md5(&l.path)?;
        // The signed device first: loop0 carries mdext from the previous
        // round, and the first device refused is the one reported.
        let args = format!(
            "create --level 1 --raid-devices 2 --name f{i} {} /dev/loop0",
            l.path.display()
        );
        let (ok, _, err) = ctl_status(&args)?;
        ensure!(!ok, "{sig:?}: create without --force succeeded");
        let want = format!(
            "mdextctl: {}: carries a signature: {} (",
            l.path.display(),
            sig.blkid_type()
        );
        ensure!(
            err.starts_with(&want) && err.lines().count() == 1,
            "{sig:?}: {err}"
        );
        ensure!(md5(&l.path)? == before, "{sig:?}: a refused create wrote");
        ctl(&format!("{args} --force"))?;
        let (rc, out) = blkid_p(&l.path)?;
        ensure!(
            rc == 2 && out.trim().is_empty(),
            "{sig:?}: blkid -p after create --force: status {rc}: {out}"
        );
        let e = examine(&l.path)?;
        ensure!(e["name"] == format!("f{i}"), "{sig:?}: {e}");
    }
    Ok(())
}

/// Issue 3: the array is activated from what `examine` reads back, not from
/// constants.
fn create_examine_activate() -> Result<()> {
    needs_external_bitmap(
        "activation by hand with an external bitmap (the kernel-managed start is \
         bitmap_mode_of_the_kernel_degraded_restart_readd_exact)",
    )?;
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name t3 --bitmap-chunk 64K /dev/loop0 /dev/loop1")?;
    let ex: Vec<serde_json::Value> = loops
        .iter()
        .map(|l| examine(&l.path))
        .collect::<Result<_>>()?;
    let e0 = &ex[0];
    ensure!(
        e0["array_uuid"] == ex[1]["array_uuid"],
        "members disagree on the array"
    );
    ensure!(e0["level"] == "raid1" && u(e0, "raid_disks")? == 2, "{e0}");
    let bm = &e0["bitmap"];
    let spec = ArraySpec {
        md_name: Some("md127".into()),
        metadata_tag: format!(
            "mdext:{}",
            e0["array_uuid"]
                .as_str()
                .unwrap_or_default()
                .replace('-', "")
        ),
        level: Level::Raid1,
        layout: 0,
        chunk_size: Bytes(0),
        raid_disks: 2,
        component_size: Sectors(u(e0, "component_size_sectors")?).kib_floor(),
        members: loops
            .iter()
            .zip(&ex)
            .map(|(l, e)| {
                Ok(MemberSpec {
                    dev: l.dev,
                    data_offset: Sectors(u(e, "data_offset_sectors")?),
                    size: Sectors(u(e, "data_size_sectors")?).kib_floor(),
                    slot: Some(
                        u32::try_from(e["slot"].as_u64().context("examine: no slot")?)
                            .context("examine: slot out of range")?,
                    ),
                    write_mostly: false,
                })
            })
            .collect::<Result<_>>()?,
        bitmap: Some(BitmapSpec {
            chunk: Bytes(u(bm, "chunk_bytes")?),
            time_base: u32::try_from(u(bm, "time_base")?)
                .context("examine: time_base out of range")?,
            location: Sectors(u(bm, "offset_sectors")?),
        }),
        kernel_bitmap: false,
        resync_start: match e0["resync_sector"].as_u64() {
            Some(s) => Checkpoint::At(Sectors(s)),
            None => Checkpoint::None,
        },
        start: StartMode::Readonly,
    };
    ensure!(
        spec.resync_start == Checkpoint::At(Sectors(0)),
        "a new array owes a resync from 0"
    );
    let sysfs = sysfs();
    let md = assembly::activate(&sysfs, &spec)?;
    ensure!(
        md.bitmap_location()? == Some(Sectors(u(bm, "offset_sectors")?)),
        "location"
    );
    ensure!(
        md.component_size()?.sectors() == Sectors(u(e0, "component_size_sectors")?),
        "component_size"
    );
    // The initial bitmap has every chunk's bit set: the whole array resyncs.
    let bits = read_direct(
        &loops[0].path,
        Sectors(u(bm, "offset_sectors")?).bytes().0,
        4096,
    )?;
    let chunks = u(bm, "chunks")?;
    ensure!(
        set_bits(&bits).len() as u64 == chunks,
        "initial bits: {} of {chunks}",
        set_bits(&bits).len()
    );
    let before = written_sectors("loop1")?;
    let responder = Responder::start(&md)?;
    md.set_array_state(ArrayState::Clean)?;
    wait_sync_idle(&md, Duration::from_secs(120))?;
    let resynced = written_sectors("loop1")? - before;
    println!("initial resync wrote {resynced} sectors to loop1");
    ensure!(
        resynced >= u(e0, "component_size_sectors")?,
        "the initial resync covered only {resynced} sectors"
    );
    write_direct(&md.dev_path(), 1 << 20, &pattern(7, 1 << 20))?;
    ensure!(
        read_direct(&md.dev_path(), 1 << 20, 1 << 20)? == pattern(7, 1 << 20),
        "data"
    );
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatches after the initial resync"
    );
    responder.stop()?;
    assembly::teardown(&sysfs, &md)?;
    Ok(())
}

fn md127() -> mdext::sysfs::MdDev {
    sysfs().md("md127")
}

fn state_of(dev: &Path) -> Result<String> {
    Ok(examine(dev)?["state"].as_str().unwrap_or("?").to_string())
}

/// Issue 4: create, assemble, a filesystem, clean/dirty in the metadata,
/// stop, reassemble, data intact.
fn filesystem_lifecycle() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    let devs = "/dev/loop0 /dev/loop1";
    ctl(&format!(
        "create --level 1 --raid-devices 2 --name life --bitmap-chunk 64K --time-base 1 {devs}"
    ))?;
    let out = ctl(&format!("assemble life {devs}"))?;
    ensure!(out.contains("/dev/md127"), "{out}");
    let md = md127();
    wait_sync_idle(&md, Duration::from_secs(120))?;
    // The daemon records the end of the initial resync.
    wait_until(
        "metadata to record no resync owed",
        Duration::from_secs(20),
        || {
            examine(&loops[0].path)
                .ok()
                .filter(|e| e["resync_sector"].is_null())
                .map(|_| ())
        },
    )?;
    // Once the initial resync is recorded, md may clear the bits set at
    // create: otherwise every later crash would resync everything.
    wait_until("the initial bits cleared", Duration::from_secs(20), || {
        let out = ctl("examine-bitmap --json /dev/loop0").ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["dirty"] == 0).then_some(())
    })?;
    sh("timeout 120 mkfs.ext4 -q -F /dev/md127")?;
    sh("mkdir -p /mnt/a && timeout 60 mount -t ext4 /dev/md127 /mnt/a")?;
    sh("timeout 60 dd if=/dev/urandom of=/mnt/a/f bs=64k count=64 2>/dev/null && timeout 60 sync")?;
    let sum = md5(Path::new("/mnt/a/f"))?;
    sh("timeout 60 umount /mnt/a")?;
    // Idle: the daemon writes clean and records it.
    wait_until("metadata clean after idle", Duration::from_secs(20), || {
        state_of(&loops[0].path)
            .ok()
            .filter(|s| s == "clean")
            .map(|_| ())
    })?;
    ensure!(
        state_of(&loops[1].path)? == "clean",
        "second member not clean"
    );
    // Writes to a whole mirror whose bitmap mdextmon keeps leave its record
    // as it was however long md stays active: md's bits are its dirty
    // record (a start resyncs their chunks). Once md is clean again one
    // record advances the event count (a copy of a member taken before
    // reads older). Once a burst held active for a while (the daemon
    // checks a second after answering md's first write, and again under
    // steady writes), once a short one (md idle after 0.2 s). With the
    // bitmap md keeps itself (6.18 on) the record is written first: marked
    // dirty, then clean.
    for (burst, hold, at) in [("held", "30", 60u64), ("short", "0.2", 61)] {
        // Each burst starts settled: the last write's bits cleared
        // (time-base 1: two seconds).
        wait_until(
            "the last write's bits cleared",
            Duration::from_secs(20),
            || {
                let out = ctl("examine-bitmap --json /dev/loop0").ok()?;
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                (v["dirty"] == 0).then_some(())
            },
        )?;
        let events: Vec<u64> = loops
            .iter()
            .map(|l| u(&examine(&l.path)?, "events"))
            .collect::<Result<_>>()?;
        md.write("safe_mode_delay", hold)?;
        write_direct(&md.dev_path(), at << 20, &pattern(at, 4096))?;
        if burst == "held" {
            ensure!(
                md.read("array_state")? == "active",
                "md not active after a write with safe_mode_delay {hold}"
            );
            if writes_leave_clean(&loops[0].path)? {
                for (l, e) in loops.iter().zip(&events) {
                    let now = examine(&l.path)?;
                    ensure!(
                        now["state"] == "clean" && u(&now, "events")? == *e,
                        "{}: a record while md writes (events {e} before): {now}",
                        l.path.display()
                    );
                }
            } else {
                wait_recorded(&loops[0].path, "dirty")?;
            }
            md.write("safe_mode_delay", "0.2")?;
        }
        let records = if writes_leave_clean(&loops[0].path)? {
            1
        } else {
            2
        };
        wait_until(
            &format!("clean after the {burst} burst, recorded"),
            Duration::from_secs(20),
            || {
                let done = |p: &Path, e: u64| {
                    examine(p).is_ok_and(|x| {
                        x["state"] == "clean" && x["events"].as_u64() >= Some(e + records)
                    })
                };
                (md.read("array_state").ok()? == "clean"
                    && done(&loops[0].path, events[0])
                    && done(&loops[1].path, events[1]))
                .then_some(())
            },
        )?;
        for (l, e) in loops.iter().zip(&events) {
            let now = examine(&l.path)?;
            let external = now["bitmap"]["mode"] == "external";
            let recorded = i128::from(u(&now, "events")?) - i128::from(*e);
            ensure!(
                recorded == if external { 1 } else { 2 },
                "{}: {recorded} records for the {burst} burst (events {e} before): {now}",
                l.path.display()
            );
        }
    }
    let d = ctl("detail md127")?;
    ensure!(
        d.contains("by mdextmon (pid ") && d.contains("raid1"),
        "{d}"
    );
    // The array is found by its UUID too (md truncates the tag it keeps).
    let uuid = examine(&loops[0].path)?["array_uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let d = ctl(&format!("detail --json {uuid}"))?;
    ensure!(d.contains("\"md\": \"md127\""), "{d}");
    ctl("stop md127")?;
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "md127 still there after stop"
    );
    for l in &loops {
        ensure!(
            state_of(&l.path)? == "clean",
            "{} not clean after stop",
            l.path.display()
        );
    }
    // Read-only: the daemon manages it but leaves it read-only; a write
    // is refused, it does not hang. No daemon runs (defect 4: the daemon
    // that assemble starts took the array over and made it writable before
    // the request saying read-only arrived).
    stop_daemon()?;
    ctl("assemble --readonly life /dev/loop0 /dev/loop1")?;
    ensure!(
        md127().array_state()? == ArrayState::Readonly,
        "--readonly: {}",
        md127().array_state()?
    );
    // The same dd writes to a file, so a refusal below is the array's.
    sh("dd if=/dev/zero of=/tmp/dd-probe bs=4096 count=1 conv=fsync")?;
    ensure!(
        sh("dd if=/dev/zero of=/dev/md127 bs=4096 count=1 conv=fsync").is_err(),
        "dd wrote to a read-only array"
    );
    ensure!(
        write_direct(&md127().dev_path(), 0, &pattern(9, 4096)).is_err(),
        "a write to a read-only array succeeded"
    );
    let d = ctl("detail md127")?;
    ensure!(
        d.contains("State : readonly") && d.contains("by mdextmon (pid "),
        "{d}"
    );
    let v: serde_json::Value = serde_json::from_str(&ctl("detail --json md127")?)?;
    ensure!(
        v["array_state"] == "readonly" && v["managed"] == true && v["health"] == "whole",
        "{v}"
    );
    ctl("stop md127")?;
    // Again, by name through a udev scan.
    ctl("assemble --scan life")?;
    sh("timeout 60 mount -t ext4 /dev/md127 /mnt/a")?;
    ensure!(
        md5(Path::new("/mnt/a/f"))? == sum,
        "file changed across stop/assemble"
    );
    sh("timeout 60 umount /mnt/a")?;
    ensure!(check_mismatches(&md127())? == 0, "mismatches");
    ctl("stop life")?;
    scan_assembles_every_array()
}

/// `assemble --scan` with no name starts every array it finds, each on its
/// own; a second scan leaves running arrays as they are and succeeds.
fn scan_assembles_every_array() -> Result<()> {
    // loop0 and loop1 hold "life".
    let loops = loop_devices_from(2, 2, 64)?;
    let devs: Vec<String> = loops.iter().map(|l| l.path.display().to_string()).collect();
    let devs = devs.join(" ");
    ctl(&format!(
        "create --level 1 --raid-devices 2 --name two --bitmap-chunk 64K --assume-clean --force {devs}"
    ))?;
    // Both arrays stopped: one scan starts both.
    let out = ctl("assemble --scan")?;
    for name in ["life", "two"] {
        ensure!(
            out.contains(&format!("(array {name} ")),
            "scan did not start {name}: {out}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&ctl("status --json")?)?;
    let arrays = v.as_array().context("status --json is not a list")?;
    let mut names: Vec<&str> = arrays.iter().filter_map(|a| a["name"].as_str()).collect();
    names.sort_unstable();
    ensure!(names == ["life", "two"], "status lists {names:?}");
    ensure!(
        arrays.iter().all(|a| a["managed"] == true),
        "not all managed: {v}"
    );
    // Again: nothing to start, nothing failed.
    let (code, _, err) = ctl_exit("assemble --scan")?;
    ensure!(code == Some(0), "second scan exited {code:?}: {err}");
    ensure!(
        err.matches("is already running").count() == 2,
        "second scan: {err}"
    );
    ctl("stop life")?;
    ctl("stop two")?;
    Ok(())
}

// Chunks written while the array is dirty, before the crash (64 KiB chunks).
const CRASH_CHUNKS: [u64; 4] = [3, 50, 51, 400];
const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;

fn crash_phase1() -> Result<()> {
    ctl("create --level 1 --raid-devices 2 --name crash --bitmap-chunk 64K --time-base 5 --assume-clean /dev/vda /dev/vdb")?;
    ctl("assemble crash /dev/vda /dev/vdb")?;
    let md = md127();
    // Hold the array active (dirty) for a while after the writes.
    md.write("safe_mode_delay", "30")?;
    for c in CRASH_CHUNKS {
        write_direct(&md.dev_path(), c * CHUNK, &pattern(c, CHUNK_LEN))?;
    }
    wait_writes_covered(Path::new("/dev/vda"))?;
    let bits = mode_bits(Path::new("/dev/vda"))?;
    ensure!(bits == CRASH_CHUNKS, "bits before the crash: {bits:?}");
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    anyhow::bail!("still alive after sysrq b")
}

fn crash_phase2() -> Result<()> {
    let a = PathBuf::from("/dev/vda");
    // A whole mirror's writes leave its record clean where mdextmon keeps
    // the bits; md's own bitmap mode records it dirty.
    let want = if writes_leave_clean(&a)? {
        "clean"
    } else {
        "dirty"
    };
    let state = state_of(&a)?;
    ensure!(
        state == want,
        "metadata {state} after the crash, expected {want}"
    );
    let bits = mode_bits(&a)?;
    ensure!(bits == CRASH_CHUNKS, "bits after the crash: {bits:?}");
    resync_repairs("crash", &CRASH_CHUNKS, 50)
}

/// Make the mirrors vda/vdb differ inside chunk `differ` (one of
/// `chunks`, the bits set), assemble array `name`: the resync must write
/// only those chunks (copying slot 0 to slot 1), the data reads back and
/// `mismatch_cnt` is 0.
fn resync_repairs(name: &str, chunks: &[u64], differ: u64) -> Result<()> {
    let a = PathBuf::from("/dev/vda");
    write_direct(
        Path::new("/dev/vdb"),
        (2048 * 512) + differ * CHUNK,
        &vec![0xEE; CHUNK_LEN],
    )?;
    let w0 = written_sectors("vda")? + written_sectors("vdb")?;
    ctl(&format!("assemble {name} /dev/vda /dev/vdb"))?;
    let md = md127();
    wait_sync_idle(&md, Duration::from_secs(120))?;
    wait_until(
        "metadata to record the resync done",
        Duration::from_secs(30),
        || {
            examine(&a)
                .ok()
                .filter(|e| e["resync_sector"].is_null())
                .map(|_| ())
        },
    )?;
    let written = written_sectors("vda")? + written_sectors("vdb")? - w0;
    let data = chunks.len() as u64 * CHUNK / 512;
    println!(
        "resync after the crash: {written} sectors written to the members ({data} of them data for {} dirty chunks)",
        chunks.len()
    );
    // Metadata and bitmap writes add a few dozen sectors; a full resync would
    // be ~129000.
    ensure!(
        written >= data && written < data + 400,
        "resync wrote {written} sectors, expected {data} plus metadata"
    );
    for &c in chunks {
        ensure!(
            read_direct(&md.dev_path(), c * CHUNK, CHUNK_LEN)? == pattern(c, CHUNK_LEN),
            "chunk {c} data"
        );
    }
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the bitmap resync"
    );
    ctl("stop md127")?;
    Ok(())
}

fn degraded_assembly() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name deg --bitmap-chunk 64K --assume-clean /dev/loop0 /dev/loop1")?;
    let before = md5(&loops[0].path)?;
    let (ok, _, err) = ctl_status("assemble deg /dev/loop0")?;
    ensure!(!ok, "a degraded assembly without --run was accepted");
    ensure!(
        err.contains("--run") && err.lines().count() == 1,
        "error: {err}"
    );
    ensure!(
        md5(&loops[0].path)? == before,
        "a refused assembly changed the device"
    );
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "a refused assembly left an md device"
    );
    let out = ctl("assemble --run deg /dev/loop0")?;
    ensure!(out.contains("degraded"), "{out}");
    let md = md127();
    ensure!(md.degraded()? == 1, "degraded {}", md.degraded()?);
    // `detail` exits 1 for a degraded array, as `mdadm --detail --test`.
    let (code, out, _) = ctl_exit("detail md127")?;
    ensure!(
        code == Some(1),
        "detail of a degraded array exited {code:?}"
    );
    ensure!(out.contains("Health : degraded"), "{out}");
    let (code, out, _) = ctl_exit("detail --test --json md127")?;
    ensure!(code == Some(1), "detail --test exited {code:?}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(v["health"] == "degraded" && v["degraded"] == 1, "{v}");
    wait_until(
        "can_clear false while degraded (external bitmap mode)",
        Duration::from_secs(10),
        || can_clear_is(&md, false).ok()?.then_some(()),
    )?;
    let detail = sh("mdadm --detail /dev/md127")?;
    ensure!(detail.contains("degraded"), "mdadm --detail: {detail}");
    write_direct(&md.dev_path(), 0, &pattern(3, 65536))?;
    ensure!(
        read_direct(&md.dev_path(), 0, 65536)? == pattern(3, 65536),
        "data"
    );
    ctl("stop deg")?;
    Ok(())
}

fn bad_input() -> Result<()> {
    let loops = loop_devices(4, 64)?;
    ctl("create --level 1 --raid-devices 2 --name one --bitmap-chunk 64K --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("create --level 1 --raid-devices 2 --name two --bitmap-chunk 64K --assume-clean /dev/loop2 /dev/loop3")?;
    let sums: Vec<String> = loops.iter().map(|l| md5(&l.path)).collect::<Result<_>>()?;
    let refused = |args: &str, want: &str| -> Result<()> {
        let (ok, _, err) = ctl_status(args)?;
        ensure!(!ok, "`mdextctl {args}` was accepted");
        // Our own errors are one line; clap adds a usage hint after its
        // first line, which must name the problem.
        let first = err.lines().next().unwrap_or_default();
        ensure!(
            first.contains(want),
            "`{args}`: first error line does not mention '{want}': {err}"
        );
        ensure!(
            err.trim().lines().count() == 1 || first.starts_with("error: unexpected argument"),
            "`{args}`: not one line: {err}"
        );
        Ok(())
    };
    refused("stop nosuch", "nosuch")?;
    refused("detail md99", "md99")?;
    let (code, _, _) = ctl_exit("detail md99")?;
    ensure!(code == Some(4), "detail of no array exited {code:?}, not 4");
    refused("assemble /dev/loop0 /dev/loop2", "several arrays")?;
    refused("assemble /dev/loop0 /dev/loop0", "given twice")?;
    refused("assemble three /dev/loop0 /dev/loop1", "three")?;
    refused("assemble /dev/loop0 /dev/null", "/dev/null")?;
    refused("assemble --bogus-flag /dev/loop0", "--bogus-flag")?;
    for (l, s) in loops.iter().zip(&sums) {
        ensure!(
            md5(&l.path)? == *s,
            "{} changed by refused commands",
            l.path.display()
        );
    }
    ensure!(
        sysfs().list_md().is_empty(),
        "refused commands left md devices: {:?}",
        sysfs().list_md()
    );
    // A stale member: run degraded on loop0 and write, then offer both.
    ctl("assemble --run one /dev/loop0")?;
    write_direct(&md127().dev_path(), 0, &pattern(5, 4096))?;
    ctl("stop one")?;
    let out = ctl("assemble --run one /dev/loop0 /dev/loop1")?;
    ensure!(
        out.contains("/dev/loop1 not used") && out.contains("stale"),
        "stale member not reported: {out}"
    );
    ensure!(md127().degraded()? == 1, "the stale member was used");
    // SIGTERM: the daemon leaves the array clean, then exits.
    write_direct(&md127().dev_path(), 4096, &pattern(6, 4096))?;
    stop_daemon()?;
    ensure!(
        state_of(&loops[0].path)? == "clean",
        "SIGTERM left the metadata dirty"
    );
    ensure!(
        md127().array_state()? == ArrayState::Clean,
        "SIGTERM left the array {}",
        md127().array_state()?
    );
    // With no daemon, member management is refused and nothing changes.
    refused("fail md127 /dev/loop0", "mdextmon is not running")?;
    ensure!(
        md127().member("loop0").flags()?.in_sync,
        "fail without a daemon changed the member"
    );
    ctl("stop one")?;
    Ok(())
}

/// Chunks the first write after clean covers in the trailing-record test.
const TRAILING_CHUNKS: [u64; 2] = [7, 90];

fn record_events(dev: &Path) -> Result<u64> {
    u(&examine(dev)?, "events")
}

/// A clean raid1's writes leave its record clean
/// (`monitor::dirty_may_trail`): md's bits cover them. The power goes
/// while md is active after writes to two chunks: the record clean with
/// the event count it had, the bits of both chunks set.
fn trailing_phase1() -> Result<()> {
    needs_external_bitmap("writes that leave the record clean")?;
    let (a, b) = (Path::new("/dev/vda"), Path::new("/dev/vdb"));
    // time-base 3600: md clears no bit before the power cut.
    ctl("create --level 1 --raid-devices 2 --name trail --bitmap-chunk 64K --time-base 3600 --assume-clean /dev/vda /dev/vdb")?;
    ctl("assemble trail /dev/vda /dev/vdb")?;
    let md = md127();
    wait_until("the array settled clean", Duration::from_secs(60), || {
        let settled = md.read("array_state").ok()? == "clean"
            && md.read("bitmap/time_base").ok()? == "3600"
            && state_of(a).ok()? == "clean"
            && state_of(b).ok()? == "clean";
        settled.then_some(())
    })?;
    let e0 = record_events(a)?;
    // md's first write after clean and one more; the array stays active.
    md.write("safe_mode_delay", "30")?;
    for c in TRAILING_CHUNKS {
        write_direct(&md.dev_path(), c * CHUNK, &pattern(c, CHUNK_LEN))?;
    }
    ensure!(
        md.read("array_state")? == "active",
        "md not active after the writes"
    );
    for d in [a, b] {
        ensure!(
            state_of(d)? == "clean" && record_events(d)? == e0,
            "{}: a record was written for the writes: {}",
            d.display(),
            examine(d)?
        );
    }
    let bits = mode_bits(a)?;
    ensure!(bits == TRAILING_CHUNKS, "bits before the crash: {bits:?}");
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    anyhow::bail!("still alive after sysrq b")
}

/// The start finds the record clean and bits set: it resyncs the bits'
/// chunks (a copy made to differ inside one is repaired).
fn trailing_phase2() -> Result<()> {
    let a = PathBuf::from("/dev/vda");
    ensure!(state_of(&a)? == "clean", "record not clean after the crash");
    let bits = mode_bits(&a)?;
    ensure!(bits == TRAILING_CHUNKS, "bits after the crash: {bits:?}");
    resync_repairs("trail", &TRAILING_CHUNKS, TRAILING_CHUNKS[1])
}
