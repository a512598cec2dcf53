//! Issue 10: format version 2 and the crash-safe conversion from version 1.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::time::Duration;

pub static CONVERT_CRASH: Scenario = Scenario {
    name: "convert_v1_crash_mid_conversion_then_assemble",
    disks: &[64, 64],
    phases: &[
        Phase {
            name: "v1_data_convert_stopped_crash",
            run: convert_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "assemble_finishes_and_readd",
            run: convert_phase2,
            ends: Ends::Ok,
        },
    ],
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_SECTORS: u64 = CHUNK / 512;
/// Chunks written with data before the conversion (on both mirrors).
const DATA: [u64; 6] = [0, 1, 2, 50, 300, 900];

fn md() -> MdDev {
    sysfs().md("md127")
}

fn version_line(dev: &str) -> Result<String> {
    let out = ctl(&format!("examine {dev}"))?;
    out.lines()
        .find(|l| l.trim_start().starts_with("Version :"))
        .map(|l| l.split(" : ").nth(1).unwrap_or("").trim().to_string())
        .context("no Version line")
}

fn convert_phase1() -> Result<()> {
    let (a, b) = (Path::new("/dev/vda"), Path::new("/dev/vdb"));
    sh("MDEXT_CREATE_VERSION=1 /bin/mdextctl create --level 1 --raid-devices 2 --name cv --bitmap-chunk 64K --time-base 1 --assume-clean /dev/vda /dev/vdb")?;
    ensure!(version_line("/dev/vda")? == "1", "not created as version 1");
    // Version 1: copy 1 at byte 4096, bits at sector 16.
    ensure!(
        &read_direct(a, 4096, 4096)?[..8] == b"MDEXT\0SB",
        "no version 1 copy 1 at byte 4096"
    );
    let off = examine(a)?["data_offset_sectors"]
        .as_u64()
        .context("data offset")?;
    // Data on both mirrors, as a version 1 array would have left it.
    for dev in [a, b] {
        for &c in &DATA {
            write_direct(dev, off * 512 + c * CHUNK, &pattern(70 + c, CHUNK_LEN))?;
        }
    }
    // Stop after 3 writes: copy 1 (sector 2040) on both members, copy 0 on
    // the first; the second still has its version 1 copy 0 and copy 1.
    let out = sh(
        "MDEXT_FAILPOINT_CONVERT_WRITES=3 /bin/mdextctl convert /dev/vda /dev/vdb 2>&1; echo rc=$?",
    )?;
    println!("{out}");
    ensure!(
        out.contains("failpoint") && out.contains("rc=1"),
        "the failpoint did not stop the conversion: {out}"
    );
    let va = version_line("/dev/vda")?;
    let vb = version_line("/dev/vdb")?;
    println!("mid-conversion: vda version {va}, vdb version {vb}");
    ensure!(
        va.starts_with("2 (conversion") && vb.starts_with("2 (conversion"),
        "mid-conversion versions: {va} / {vb}"
    );
    ensure!(
        read_direct(b, 0, 4096)?[..12] == *b"MDEXT\0SB\x01\0\0\0",
        "vdb's copy 0 is no longer version 1"
    );
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("still alive after sysrq b")
}

fn convert_phase2() -> Result<()> {
    let (a, b) = (Path::new("/dev/vda"), Path::new("/dev/vdb"));
    let (ok, out, err) = ctl_status("assemble cv /dev/vda /dev/vdb")?;
    ensure!(ok, "assemble after the cut: {err}");
    ensure!(
        err.contains("converted 2 members to format version 2"),
        "assemble did not finish the conversion: {out}{err}"
    );
    for dev in ["/dev/vda", "/dev/vdb"] {
        ensure!(version_line(dev)? == "2", "{dev} not version 2");
        let e = examine(Path::new(dev))?;
        ensure!(
            e["copies"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["valid"] == true)),
            "{dev}: a copy is not valid: {}",
            e["copies"]
        );
    }
    // Version 1's copy 1 is gone (zeros, or md's own bitmap superblock
    // where the kernel-managed mode runs); version 2's copy 1 is at sector
    // 2040.
    let at4096 = read_direct(a, 4096, 4096)?;
    ensure!(
        at4096.iter().all(|&x| x == 0) || at4096[..4] == [0x62, 0x69, 0x74, 0x6d],
        "version 1 copy 1 left at byte 4096"
    );
    ensure!(
        read_direct(b, 2040 * 512, 4096)?[..8] == *b"MDEXT\0SB",
        "no copy 1 at sector 2040"
    );
    let md = md();
    for &c in &DATA {
        let got = read_direct(&md.dev_path(), c * CHUNK, CHUNK_LEN)?;
        ensure!(
            got == pattern(70 + c, CHUNK_LEN),
            "chunk {c} reads back wrong"
        );
    }
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the conversion"
    );
    // A bitmap re-add on the converted array rebuilds exactly the chunks
    // written while a member was away.
    ctl("fail md127 /dev/vdb")?;
    wait_until(
        "the failed member to be detached",
        Duration::from_secs(10),
        || (!Path::new("/sys/block/md127/md/dev-vdb").exists()).then_some(()),
    )?;
    ctl("remove md127 /dev/vdb")?;
    let dirty = [3u64, 40, 41];
    for &c in &dirty {
        write_direct(&md.dev_path(), c * CHUNK, &pattern(90 + c, CHUNK_LEN))?;
    }
    let w0 = written_sectors("vdb")?;
    ctl("add md127 /dev/vdb")?;
    wait_until("recovery to end", Duration::from_secs(180), || {
        (md.degraded().ok()? == 0 && md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    let written = written_sectors("vdb")? - w0;
    let data = dirty.len() as u64 * CHUNK_SECTORS;
    println!(
        "bitmap rebuild on the converted array wrote {written} sectors ({data} for {} dirty chunks)",
        dirty.len()
    );
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    for &c in &dirty {
        let got = read_direct(&md.dev_path(), c * CHUNK, CHUNK_LEN)?;
        ensure!(
            got == pattern(90 + c, CHUNK_LEN),
            "chunk {c} reads back wrong"
        );
    }
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt after the re-add");
    ctl("stop md127")?;
    Ok(())
}
