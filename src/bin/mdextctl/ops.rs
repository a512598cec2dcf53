//! Subcommands that act on running arrays: assemble, stop, detail, status.

use anyhow::{bail, Result};
use clap::Args;
use mdext::ctl::{self, AssembleOptions};
use mdext::sysfs::Sysfs;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options shared by the commands that talk to mdextmon.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Directory of mdextmon's control socket.
    #[arg(long, default_value = mdext::control::RUN_DIR, hide = true)]
    pub run_dir: PathBuf,
}

#[derive(Args, Debug)]
#[command(
    long_about = "Read the mdext metadata of the given devices (or, with --scan, of every \
    block device udev knows), group them by array UUID, use the members the newest metadata \
    records in sync, and start the array through sysfs: metadata_version=external, members with \
    their data offset, size and slot, the external bitmap, resync_start from the metadata \
    (none when clean, 0 after an unclean shutdown so the bitmap limits the resync, the \
    checkpoint of an interrupted resync). A device whose metadata is older than the array's is \
    left out and reported, as is a device smaller than the data area it records. With members \
    missing, the array starts only with --run; the bits of the missing members are kept. A \
    raid5/raid6 array that is both dirty and degraded is refused (md would refuse it: the \
    write hole) unless --force is given too. mdextmon is started if none runs, and manages the array \
    before it accepts writes."
)]
pub struct AssembleArgs {
    /// Array name or UUID (needed when the devices hold several arrays).
    #[arg(value_name = "NAME|UUID")]
    array: Option<String>,
    /// Member devices.
    #[arg(value_name = "DEV")]
    devices: Vec<PathBuf>,
    /// Find the members among all block devices (udev).
    #[arg(short, long)]
    scan: bool,
    /// Start even if members are missing (degraded).
    #[arg(short = 'R', long)]
    run: bool,
    /// With --run: start a raid5/raid6 that is dirty (not shut down
    /// cleanly) and degraded, which md refuses. Stripes written at the
    /// crash may hold stale parity (the write hole); recorded in the
    /// metadata.
    #[arg(short, long)]
    force: bool,
    /// Start read-only.
    #[arg(short = 'o', long)]
    readonly: bool,
    /// md device to create (e.g. md127); default: the highest free number.
    #[arg(long = "md", value_name = "mdN")]
    md: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args, Debug)]
#[command(
    long_about = "Wait for writes to end, record the array clean on every member, and stop \
    the md device. Through mdextmon when it manages the array, directly otherwise."
)]
pub struct StopArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args, Debug)]
pub struct DetailArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
}

fn mdextmon_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mdextmon")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mdextmon"))
}

pub fn assemble(a: AssembleArgs) -> Result<ExitCode> {
    // A lone positional that is a path is a device, not an array name.
    let (array, mut devices) = match a.array {
        Some(x) if x.starts_with('/') => (None, vec![PathBuf::from(x)]),
        other => (other, Vec::new()),
    };
    devices.extend(a.devices);
    if a.scan && !devices.is_empty() {
        bail!("give devices or --scan, not both");
    }
    let o = AssembleOptions {
        array,
        devices,
        scan: a.scan,
        run: a.run,
        readonly: a.readonly,
        force: a.force,
        md_name: a.md,
        run_dir: a.daemon.run_dir,
        mdextmon: mdextmon_path(),
    };
    let r = ctl::assemble(&Sysfs::default(), &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "mdextctl: /dev/{} has been started with {} device{} (array {} {})",
            r.md,
            r.members.len(),
            if r.members.len() == 1 { "" } else { "s" },
            r.name,
            r.uuid
        );
        if let Some(e) = r.forced_start {
            println!(
                "mdextctl: dirty and degraded, started because of --force (forced start recorded at event {e}): stripes written at the crash may hold stale parity; their chunks stay dirty in the bitmap for the missing member's rebuild"
            );
        }
        for p in &r.resumed {
            println!(
                "mdextctl: {} was being rebuilt; its rebuild starts again",
                p.display()
            );
        }
        for l in &r.left_out {
            println!("mdextctl: {} not used: {}", l.path.display(), l.reason);
        }
        if !r.missing_slots.is_empty() {
            println!(
                "mdextctl: running degraded, slots {:?} missing; {} dirty chunk{} kept for their return{}",
                r.missing_slots,
                r.rearmed_chunks,
                if r.rearmed_chunks == 1 { "" } else { "s" },
                if r.rearm_writes > 1 {
                    format!(" ({} writes to md's bitmap_set_bits)", r.rearm_writes)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stop(a: StopArgs) -> Result<ExitCode> {
    let md = ctl::stop(&Sysfs::default(), &a.daemon.run_dir, &a.array)?;
    println!("mdextctl: stopped /dev/{md}");
    Ok(ExitCode::SUCCESS)
}

pub fn detail(a: DetailArgs) -> Result<ExitCode> {
    let v = ctl::detail(&Sysfs::default(), &a.daemon.run_dir, &a.array)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", ctl::render_detail(&v));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let v = ctl::status(&Sysfs::default(), &a.daemon.run_dir)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v.is_empty() {
        println!("no mdext arrays are running");
    } else {
        for d in &v {
            print!("{}", ctl::render_detail(d));
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
#[command(
    long_about = "Member management, through mdextmon (it owns the metadata). \
    fail: mark a member faulty; mdextmon records it failed on the other members, \
    forbids the kernel to clear bitmap bits, and removes it. \
    remove: detach a failed member. \
    add: put a device into a failed or missing slot and rebuild it. A returning member \
    whose own metadata shows it missed no cleared bitmap bit is rebuilt from the bitmap \
    (only the chunks written while it was away); any other device gets a full rebuild."
)]
pub struct MemberArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    /// The member device.
    device: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// Which member operation.
#[derive(Clone, Copy, Debug)]
pub enum MemberOp {
    /// Fail it.
    Fail,
    /// Remove it.
    Remove,
    /// Add it.
    Add,
}

pub fn member(op: MemberOp, a: MemberArgs) -> Result<ExitCode> {
    use mdext::control::{call, Request, Response};
    let sysfs = Sysfs::default();
    let md = ctl::resolve_md(&sysfs, &a.array)?;
    let device = a.device.to_string_lossy().into_owned();
    let req = match op {
        MemberOp::Fail => Request::Fail {
            md: md.clone(),
            device,
        },
        MemberOp::Remove => Request::Remove {
            md: md.clone(),
            device,
        },
        MemberOp::Add => Request::Add {
            md: md.clone(),
            device,
        },
    };
    match call(&a.daemon.run_dir, &req, std::time::Duration::from_secs(60))? {
        Response::Ok { .. } => {
            let verb = match op {
                MemberOp::Fail => "failed",
                MemberOp::Remove => "removed",
                MemberOp::Add => "added",
            };
            println!(
                "mdextctl: {verb} {} {} /dev/{md}",
                a.device.display(),
                if matches!(op, MemberOp::Add) {
                    "to"
                } else {
                    "in"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
    }
}

#[derive(Args, Debug)]
#[command(
    long_about = "Read the write-intent bitmap area of a member and show how many chunks \
    are dirty (would be resynced or rebuilt) and where: a grid of cells, each covering an equal \
    run of chunks, drawn '.' all clean, '+' some dirty, '#' all dirty."
)]
pub struct ExamineBitmapArgs {
    /// A member device or image file.
    device: PathBuf,
    /// JSON output (with the dirty chunk ranges).
    #[arg(long)]
    json: bool,
}

pub fn examine_bitmap(a: ExamineBitmapArgs) -> Result<ExitCode> {
    use mdext::bitmap;
    use mdext::device::{Access, Device};
    let d = Device::open(&a.device, Access::Read)?;
    let sb = d.read_superblock()?.superblock;
    let bits = d.read_bitmap(&sb.array.bitmap)?;
    let chunks = sb.array.bitmap_chunks();
    let dirty = bitmap::count_dirty(&bits, chunks);
    let ranges = bitmap::dirty_ranges(&bits, chunks);
    if a.json {
        let v = serde_json::json!({
            "device": a.device,
            "chunks": chunks,
            "chunk_bytes": sb.array.bitmap.chunk.0,
            "dirty": dirty,
            "dirty_ranges": ranges,
            "stray_bits": bitmap::has_stray_bits(&bits, chunks),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (w, r) = (64, 16);
    println!("{}:", a.device.display());
    println!(
        "  Bitmap : {} chunks of {}, {} dirty ({})",
        chunks,
        mdext::units::human(sb.array.bitmap.chunk),
        dirty,
        mdext::units::human(mdext::units::Bytes(
            dirty.saturating_mul(sb.array.bitmap.chunk.0)
        ))
    );
    println!(
        "  Grid   : one cell = {} chunk(s); '.' clean, '+' some dirty, '#' all dirty",
        bitmap::grid_cell_chunks(chunks, w, r)
    );
    for l in bitmap::grid(&bits, chunks, w, r) {
        println!("  {l}");
    }
    Ok(ExitCode::SUCCESS)
}
