//! Issue 10: the bitmap mode the running kernel allows (external on 6.1 and
//! 6.12, md's own bitmap at sector 8 from 6.18 on), with exact bitmap
//! rebuilds in both. The scenario asserts what the kernel it runs on
//! offers, so the same scenario runs on every kernel.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::time::Duration;

pub static ANY_KERNEL_READD: Scenario = Scenario {
    name: "bitmap_mode_of_the_kernel_degraded_restart_readd_exact",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: any_kernel_readd,
        ends: Ends::Ok,
    }],
};

/// An array run in the kernel-managed mode (forced with
/// `MDEXT_BITMAP_MODE=kernel`), degraded, written and crashed, comes back
/// on a kernel that offers the external bitmap in the external mode: its
/// dirty chunks are merged into the external region and the returning
/// member is rebuilt from them alone. (The other direction, external to
/// kernel-managed, is `convert_v1_crash_mid_conversion_then_assemble` and
/// every start on 6.18+ of an array made on an older kernel.)
pub static MODE_MOVE: Scenario = Scenario {
    name: "bitmap_mode_move_kernel_to_external_keeps_dirty_chunks",
    disks: &[64, 64],
    phases: &[
        Phase {
            name: "kernel_mode_degrade_write_crash",
            run: move_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "external_mode_readd",
            run: move_phase2,
            ends: Ends::Ok,
        },
    ],
};

/// Chunks written while degraded before the crash.
const MOVE_DIRTY: [u64; 4] = [3, 4, 40, 500];

fn move_phase1() -> Result<()> {
    std::env::set_var(mdext::ctl::BITMAP_MODE_ENV, "kernel");
    ctl("create --level 1 --raid-devices 2 --name mv --bitmap-chunk 64K --time-base 1 --assume-clean /dev/vda /dev/vdb")?;
    ctl("assemble mv /dev/vda /dev/vdb")?;
    let md = md();
    let e = examine(Path::new("/dev/vda"))?;
    ensure!(
        e["bitmap"]["mode"] == "kernel",
        "recorded mode: {}",
        e["bitmap"]
    );
    ensure!(
        md.read("bitmap/location")? == "+8" && md.read("bitmap/metadata")? == "internal",
        "md does not run its own bitmap at +8"
    );
    ensure!(
        fail_and_remove(&md, "/dev/vdb")? == 1,
        "not degraded by one slot"
    );
    write_chunks(&md, &MOVE_DIRTY, 20)?;
    let bits = mode_bits(Path::new("/dev/vda"))?;
    ensure!(bits == MOVE_DIRTY, "bits before the crash: {bits:?}");
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("still alive after sysrq b")
}

fn move_phase2() -> Result<()> {
    let (a, b) = (Path::new("/dev/vda"), Path::new("/dev/vdb"));
    let external = kernel_offers_external_bitmap()?;
    let want = if external { "external" } else { "kernel" };
    let out = ctl("assemble --run mv /dev/vda /dev/vdb")?;
    println!("{out}");
    ensure!(out.contains("/dev/vdb not used"), "{out}");
    let md = md();
    let e = examine(a)?;
    ensure!(
        e["bitmap"]["mode"] == want,
        "recorded mode after the move: {}",
        e["bitmap"]
    );
    let bits = mode_bits(a)?;
    ensure!(
        bits == MOVE_DIRTY,
        "bits in the {want} region after the move: {bits:?}"
    );
    write_chunks(&md, &[100], 20)?;
    let what = format!("kernel -> {want} mode: rebuild");
    readd_exact(&md, "vdb", &[a, b], MOVE_DIRTY.len() + 1, &what)?;
    verify_chunks(&md, &MOVE_DIRTY, 20)?;
    verify_chunks(&md, &[100], 20)?;
    no_mismatch(&md, &what)?;
    ctl("stop md127")?;
    Ok(())
}

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_SECTORS: u64 = CHUNK / 512;

fn md() -> MdDev {
    sysfs().md("md127")
}

/// The mode this kernel allows, probed as a user would: a new md device
/// with `bitmap/metadata` before the start means the external bitmap.
fn expected_mode() -> Result<&'static str> {
    let s = sysfs();
    let probe = s.new_array("md_probe")?;
    let external = probe.has_attr("bitmap/metadata");
    probe.write("array_state", "clear")?;
    Ok(if external { "external" } else { "kernel" })
}

/// The set bits in the region the mode runs from, on `dev`.
fn bits_on(dev: &Path, mode: &str, ext_offset: u64) -> Result<Vec<u64>> {
    if mode == "kernel" {
        let b = read_direct(dev, 8 * 512, 4096)?;
        ensure!(
            b[0..4] == [0x62, 0x69, 0x74, 0x6d],
            "no md bitmap superblock at sector 8 of {}",
            dev.display()
        );
        Ok(set_bits(&b[256..]))
    } else {
        Ok(set_bits(&read_direct(dev, ext_offset * 512, 4096)?))
    }
}

/// `mdextctl add md127 /dev/KNAME` and the rebuild awaited; it must have
/// written `chunks` dirty chunks' data to the member, plus metadata.
/// `what` labels the printed figures.
fn readd_exact(
    md: &MdDev,
    kname: &str,
    members: &[&Path],
    chunks: usize,
    what: &str,
) -> Result<()> {
    let w0 = written_sectors(kname)?;
    ctl(&format!("add md127 /dev/{kname}"))?;
    wait_rebuilt(md, members)?;
    let written = written_sectors(kname)? - w0;
    let data = chunks as u64 * CHUNK_SECTORS;
    println!("{what} wrote {written} sectors ({data} for {chunks} dirty chunks)");
    ensure!(
        written >= data && written < data + 200,
        "{what} wrote {written} sectors, expected {data} plus metadata"
    );
    Ok(())
}

/// md's scrub finds every copy alike.
fn no_mismatch(md: &MdDev, what: &str) -> Result<()> {
    let mm = check_mismatches(md)?;
    println!("{what}: mismatch_cnt {mm}");
    ensure!(mm == 0, "mismatch_cnt after the {what}: {mm}");
    Ok(())
}

fn wait_rebuilt(md: &MdDev, members: &[&Path]) -> Result<()> {
    wait_until("recovery to end", Duration::from_secs(180), || {
        (md.degraded().ok()? == 0 && md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    wait_until(
        "every member recorded in sync",
        Duration::from_secs(20),
        || {
            members
                .iter()
                .all(|p| {
                    examine(p).ok().is_some_and(|e| {
                        e["members"]
                            .as_array()
                            .is_some_and(|m| m.iter().all(|m| m["state"] == "in-sync"))
                    })
                })
                .then_some(())
        },
    )
}

fn any_kernel_readd() -> Result<()> {
    let mode = expected_mode()?;
    println!("this kernel's bitmap mode: {mode}");
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name km --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble km /dev/loop0 /dev/loop1")?;
    let md = md();
    let e = examine(&loops[0].path)?;
    ensure!(
        e["bitmap"]["mode"] == mode,
        "recorded mode: {}",
        e["bitmap"]
    );
    let ext_offset = e["bitmap"]["offset_sectors"]
        .as_u64()
        .context("examine: offset")?;
    // What md runs: its own bitmap at +8 ("internal" format) or the
    // external one at the recorded offset.
    let loc = md.read("bitmap/location")?;
    let meta = md.read("bitmap/metadata")?;
    if mode == "kernel" {
        ensure!(loc == "+8" && meta == "internal", "{loc} {meta}");
    } else {
        ensure!(
            loc == format!("+{ext_offset}") && meta == "external",
            "{loc} {meta}"
        );
    }
    // The array takes writes (the fence was lifted), and md clears their
    // bits on a whole array.
    write_chunks(&md, &[1], 0)?;
    wait_until(
        "the bits of a whole array cleared",
        Duration::from_secs(20),
        || {
            bits_on(&loops[0].path, mode, ext_offset)
                .ok()
                .filter(|b| b.is_empty())
        },
    )?;
    ensure!(
        fail_and_remove(&md, "/dev/loop1")? == 1,
        "not degraded by one slot"
    );
    let dirty = [2u64, 7, 8, 100];
    write_chunks(&md, &dirty, 0)?;
    // Several time_base periods: md keeps the bits of degraded writes.
    std::thread::sleep(Duration::from_secs(4));
    let on = bits_on(&loops[0].path, mode, ext_offset)?;
    ensure!(on == dirty, "bits while degraded: {on:?}");
    // A degraded restart: the dirty chunks must survive it.
    ctl("stop md127")?;
    let out = ctl("assemble --run km /dev/loop0 /dev/loop1")?;
    println!("{out}");
    ensure!(out.contains("/dev/loop1 not used"), "{out}");
    std::thread::sleep(Duration::from_secs(4));
    let on = bits_on(&loops[0].path, mode, ext_offset)?;
    ensure!(on == dirty, "bits after the degraded restart: {on:?}");
    write_chunks(&md, &[300], 0)?;
    let paths: Vec<&Path> = loops.iter().map(|l| l.path.as_path()).collect();
    let what = format!("{mode} mode: bitmap rebuild after a degraded restart");
    readd_exact(&md, "loop1", &paths, dirty.len() + 1, &what)?;
    verify_chunks(&md, &dirty, 0)?;
    verify_chunks(&md, &[1, 300], 0)?;
    no_mismatch(&md, &what)?;
    ctl("stop md127")?;
    sync_del_gendisk()
}

/// md from 6.18 on: mdext asks for the synchronous del_gendisk mode before
/// its first md device, as mdadm 4.5+ does. Witnesses: the parameter reads
/// N, the stopped array's block device is gone as the stop returns (the
/// legacy mode leaves it until the last reference goes), and the kernel
/// never warned that the legacy mode will be removed.
fn sync_del_gendisk() -> Result<()> {
    let p = Path::new("/sys/module/md_mod/parameters/legacy_async_del_gendisk");
    if !p.exists() {
        println!("no legacy_async_del_gendisk parameter on this kernel (md before 6.18)");
        return Ok(());
    }
    let v = std::fs::read_to_string(p)?;
    ensure!(v.trim() == "N", "legacy_async_del_gendisk reads {v:?}");
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "/sys/block/md127 is still there after the stop returned"
    );
    let log = sh("dmesg")?;
    ensure!(
        !log.contains("async del_gendisk mode will be removed"),
        "the kernel warned about the legacy del_gendisk mode"
    );
    println!("legacy_async_del_gendisk N; md127 gone when the stop returned; no warning");
    Ok(())
}
