//! Subcommands that act on running arrays: assemble, stop, detail, status.

use anyhow::{bail, Result};
use clap::Args;
use mdext::ctl::{self, AssembleOptions};
use mdext::sysfs::Sysfs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
    /// Member devices, and at most one array name or UUID (needed when the
    /// devices hold several arrays). An argument that contains a '/' or
    /// names an existing file or block device is a device; any other is
    /// the name.
    #[arg(value_name = "DEV|NAME")]
    args: Vec<PathBuf>,
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
    /// md device to create (e.g. md127); default: the one the
    /// configuration file gives the array (ARRAY ... md=), else the
    /// highest free number.
    #[arg(long = "md", value_name = "mdN")]
    md: Option<String>,
    /// Configuration file (mdext.conf(5)); a missing file is no
    /// configuration.
    #[arg(long, value_name = "FILE", default_value = mdext::config::DEFAULT_PATH)]
    config: PathBuf,
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
#[command(
    long_about = "Show one running array, like mdadm --detail. The exit status tells its \
    health, as mdadm --detail --test does (always, with or without --test): 0 whole, \
    1 degraded (a member missing, failed or being rebuilt), 2 unusable (not running, or \
    fewer working members than its level needs), 4 the array cannot be found or read."
)]
pub struct DetailArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    /// JSON output.
    #[arg(long, conflicts_with = "export")]
    json: bool,
    /// Print KEY=value lines for udev (IMPORT{program}), read from the
    /// members' metadata without asking mdextmon: MD_LEVEL, MD_DEVICES,
    /// MD_METADATA (mdext:TAG), MD_UUID, MD_NAME, MD_DEVNAME (as mdadm --detail
    /// --export), MDEXT_UUID, MDEXT_NAME, MDEXT_HEALTH, MDEXT_EVENTS,
    /// MDEXT_STATE. Exits 0 whenever the array could be read (udev ignores
    /// the keys of a program that fails), 4 otherwise.
    #[arg(long)]
    export: bool,
    /// Accepted for mdadm's habit: the exit status always tells the
    /// array's health.
    #[arg(short = 't', long)]
    test: bool,
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

pub fn mdextmon_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mdextmon")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mdextmon"))
}

/// What an argument of `assemble` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// A regular file or a block device (symlinks followed).
    Device,
    /// Something else (a directory, a character device).
    Other,
    /// Nothing.
    Missing,
}

fn found(p: &Path) -> Found {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Found::Device,
        Ok(_) => Found::Other,
        Err(_) => Found::Missing,
    }
}

/// Split `assemble`'s arguments into the array's name (or UUID) and its
/// devices, as an mdadm user expects: an argument that contains a '/' or
/// names an existing file or block device is a device (`d0.img` in the
/// current directory, `/dev/sdb`, `./new.img`); any other is the name, and
/// there may be one at most. A path (it contains a '/') that does not exist
/// is an error here, named, rather than later. Pure but for `look`.
fn split_assemble_args(
    args: &[PathBuf],
    look: impl Fn(&Path) -> Found,
) -> Result<(Option<String>, Vec<PathBuf>), String> {
    let mut names = Vec::new();
    let mut devices = Vec::new();
    for a in args {
        let has_slash = a.as_os_str().as_bytes().contains(&b'/');
        match look(a) {
            Found::Device => devices.push(a.clone()),
            Found::Missing if has_slash => {
                return Err(format!("{}: no such device or file", a.display()));
            }
            _ if has_slash => devices.push(a.clone()),
            _ => names.push(a),
        }
    }
    match names.as_slice() {
        [] => Ok((None, devices)),
        [one] => match one.to_str() {
            Some(n) => Ok((Some(n.to_string()), devices)),
            // Array names and UUIDs are ASCII: this was meant as a file.
            None => Err(format!("{}: no such device or file", one.display())),
        },
        many => Err(format!(
            "{}: no such device or file, and only one array name or UUID may be given",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

pub fn assemble(a: AssembleArgs) -> Result<ExitCode> {
    let (array, devices) = split_assemble_args(&a.args, found).map_err(anyhow::Error::msg)?;
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
        config: mdext::config::Config::load(&a.config)?,
        run_dir: a.daemon.run_dir,
        mdextmon: mdextmon_path(),
    };
    if o.scan && o.array.is_none() {
        return assemble_all(&o, a.json);
    }
    let r = ctl::assemble(&Sysfs::default(), &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_assembled(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// `assemble --scan` with no array named: every array found, each on its
/// own. Exit 1 when any could not be assembled (the others still are).
fn assemble_all(o: &ctl::AssembleOptions, json: bool) -> Result<ExitCode> {
    if o.md_name.is_some() {
        bail!("--md names one md device: name the array to assemble too");
    }
    let outcomes = ctl::assemble_all(&Sysfs::default(), o)?;
    let mut failed = false;
    let mut reports = Vec::new();
    for out in &outcomes {
        match out {
            ctl::ScanOutcome::Started(r) => {
                if !json {
                    print_assembled(r);
                }
                reports.push(r);
            }
            ctl::ScanOutcome::Running { name, uuid, md } => {
                eprintln!("mdextctl: array {name} ({uuid}) is already running as /dev/{md}");
            }
            ctl::ScanOutcome::Failed { name, uuid, error } => {
                failed = true;
                eprintln!("mdextctl: array {name} ({uuid}): {error}");
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn print_assembled(r: &ctl::AssembleReport) {
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
    for p in &r.spares {
        println!("mdextctl: {} added as a spare", p.display());
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

pub fn stop(a: &StopArgs) -> Result<ExitCode> {
    let md = ctl::stop(&Sysfs::default(), &a.daemon.run_dir, &a.array)?;
    println!("mdextctl: stopped /dev/{md}");
    Ok(ExitCode::SUCCESS)
}

/// `detail` exits as `mdadm --detail --test` does: 0 whole, 1 degraded,
/// 2 unusable, 4 when the array cannot be found or read.
pub fn detail(a: &DetailArgs) -> Result<ExitCode> {
    // Accepted for mdadm's habit; the exit status says the health always.
    let _ = a.test;
    if a.export {
        return Ok(match ctl::detail_offline(&Sysfs::default(), &a.array) {
            Ok(s) => {
                print!("{}", detail_export(&s));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mdextctl: {e}");
                ExitCode::from(mdext::status::EXIT_ERROR)
            }
        });
    }
    let s = match ctl::detail(&Sysfs::default(), &a.daemon.run_dir, &a.array) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mdextctl: {e}");
            return Ok(ExitCode::from(mdext::status::EXIT_ERROR));
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", ctl::render_detail(&s));
    }
    Ok(ExitCode::from(s.health.exit_code()))
}

/// `detail --export`: mdadm's `--detail --export` keys (what
/// 63-md-raid-arrays.rules and other tools look for) and mdext's own.
pub fn detail_export(s: &mdext::status::ArrayStatus) -> String {
    let name = crate::udev_value(&s.name);
    format!(
        "MD_LEVEL={}\nMD_DEVICES={}\nMD_METADATA={}\nMD_UUID={}\nMD_NAME={name}\n\
         MD_DEVNAME={name}\nMDEXT_UUID={}\nMDEXT_NAME={name}\nMDEXT_HEALTH={}\n\
         MDEXT_EVENTS={}\nMDEXT_STATE={}\n",
        s.level,
        s.raid_disks,
        mdext::meta::kernel_tag(&s.uuid),
        s.uuid,
        s.uuid,
        s.health.as_str(),
        s.events,
        if s.clean { "clean" } else { "dirty" }
    )
}

pub fn status(a: &StatusArgs) -> Result<ExitCode> {
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

const MEMBER_ABOUT: &str = "Member management, through mdextmon (it owns the metadata). \
    fail: mark a member faulty; mdextmon records it failed on the other members, \
    forbids the kernel to clear bitmap bits, and removes it. \
    remove: detach a failed member. \
    add: put a device into a failed or missing slot and rebuild it. A returning member \
    whose own metadata shows it missed no cleared bitmap bit is rebuilt from the bitmap \
    (only the chunks written while it was away); any other device gets a full rebuild. \
    add --spare keeps the device as a spare instead, rebuilt into the first slot that fails.";

#[derive(Args, Debug)]
#[command(long_about = MEMBER_ABOUT)]
pub struct MemberArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    /// The member device.
    device: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// `add`: [`MemberArgs`] and its own option.
#[derive(Args, Debug)]
#[command(long_about = MEMBER_ABOUT)]
pub struct AddArgs {
    #[command(flatten)]
    pub member: MemberArgs,
    /// raid1: record the device write-mostly and set md's writemostly
    /// flag on it (md then reads from it only when no other member can
    /// serve the read); kept at every assembly.
    #[arg(short = 'W', long = "write-mostly")]
    pub write_mostly: bool,
    /// Keep the device as a spare: recorded as a spare and held by md
    /// without a slot; mdextmon rebuilds it into the first slot that fails.
    #[arg(long, conflicts_with = "write_mostly")]
    pub spare: bool,
}

/// `mdextctl replace`'s arguments.
#[derive(Args, Debug)]
pub struct ReplaceArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    /// The member to replace.
    old: PathBuf,
    /// The device to copy it onto (blank, or carrying nothing mdext needs).
    new: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// `mdextctl replace`: through mdextmon; returns once md copies.
pub fn replace(a: &ReplaceArgs) -> Result<ExitCode> {
    use mdext::control::{act, Request};
    let sysfs = Sysfs::default();
    let md = ctl::resolve_md(&sysfs, &a.array)?;
    let req = Request::Replace {
        md: md.clone(),
        old: a.old.to_string_lossy().into_owned(),
        new: a.new.to_string_lossy().into_owned(),
    };
    act(&a.daemon.run_dir, &req, std::time::Duration::from_secs(60))?;
    println!(
        "mdextctl: replacing {} with {} in /dev/{md}; md copies it, then fails {}",
        a.old.display(),
        a.new.display(),
        a.old.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `mdextctl grow`'s arguments.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["size", "raid_devices"])))]
pub struct GrowArgs {
    /// The array: md device (md127, /dev/md127), name or UUID.
    array: String,
    /// New component size (per member) with K/M/G suffixes, or "max": as
    /// large as every device allows. raid1 only.
    #[arg(short = 'z', long)]
    size: Option<String>,
    /// raid1: the number of mirrors. More take the array's spares, one
    /// each; fewer drop empty slots (fail and remove legs first).
    #[arg(short = 'n', long = "raid-devices")]
    raid_devices: Option<u32>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// `mdextctl grow`: through mdextmon.
pub fn grow(a: &GrowArgs) -> Result<ExitCode> {
    use mdext::control::{act, Request};
    let sysfs = Sysfs::default();
    let md = ctl::resolve_md(&sysfs, &a.array)?;
    let (size_sectors, max) = match a.size.as_deref() {
        None => (None, false),
        Some("max") => (None, true),
        Some(s) => {
            let b = mdext::units::parse_size(s).map_err(|e| anyhow::anyhow!("--size {s}: {e}"))?;
            (Some(b.0 / 512), false)
        }
    };
    let req = Request::Grow {
        md: md.clone(),
        size_sectors,
        max,
        raid_devices: a.raid_devices,
    };
    act(&a.daemon.run_dir, &req, std::time::Duration::from_secs(60))?;
    println!("mdextctl: /dev/{md} grown");
    Ok(ExitCode::SUCCESS)
}

/// Which member operation.
#[derive(Clone, Copy, Debug)]
pub enum MemberOp {
    /// Fail it.
    Fail,
    /// Remove it.
    Remove,
    /// Add it (as a spare if true).
    Add(bool),
}

/// `mdextctl add`.
pub fn add(a: &AddArgs) -> Result<ExitCode> {
    member_with(MemberOp::Add(a.spare), &a.member, a.write_mostly)
}

pub fn member(op: MemberOp, a: &MemberArgs) -> Result<ExitCode> {
    member_with(op, a, false)
}

/// [`member`]; `write_mostly` for add.
pub fn member_with(op: MemberOp, a: &MemberArgs, write_mostly: bool) -> Result<ExitCode> {
    use mdext::control::{act, Request};
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
        MemberOp::Add(spare) => Request::Add {
            md: md.clone(),
            device,
            write_mostly,
            spare,
        },
    };
    act(&a.daemon.run_dir, &req, std::time::Duration::from_secs(60))?;
    let verb = match op {
        MemberOp::Fail => "failed",
        MemberOp::Remove => "removed",
        MemberOp::Add(false) => "added",
        MemberOp::Add(true) => "added as a spare",
    };
    println!(
        "mdextctl: {verb} {} {} /dev/{md}",
        a.device.display(),
        if matches!(op, MemberOp::Add(_)) {
            "to"
        } else {
            "in"
        }
    );
    Ok(ExitCode::SUCCESS)
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

/// `examine-bitmap --json` (documented in mdextctl(8), JSON OUTPUT).
#[derive(serde::Serialize)]
struct JsonBitmap {
    device: String,
    chunks: u64,
    chunk_bytes: u64,
    dirty: u64,
    /// Inclusive `[first, last]` chunk ranges.
    dirty_ranges: Vec<(u64, u64)>,
    stray_bits: bool,
}

pub fn examine_bitmap(a: &ExamineBitmapArgs) -> Result<ExitCode> {
    use mdext::bitmap;
    use mdext::device::{Access, Device};
    let d = Device::open(&a.device, Access::Read)?;
    let sb = d.read_superblock()?.superblock;
    let bits = d.read_mode_bits(&sb.array)?;
    // As examine: the bitmap is shown either way; a device that cannot hold
    // what it records is reported, and the exit status says so.
    let shrunk = mdext::assembly::device_too_small(&sb.device, d.size()).map(|why| {
        format!(
            "mdextctl: {}: {why}; assemble leaves it out",
            a.device.display()
        )
    });
    let status = match &shrunk {
        Some(_) => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    };
    let chunks = sb.array.bitmap_chunks();
    let dirty = bitmap::count_dirty(&bits, chunks);
    let ranges = bitmap::dirty_ranges(&bits, chunks);
    if a.json {
        let v = JsonBitmap {
            device: a.device.display().to_string(),
            chunks,
            chunk_bytes: sb.array.bitmap.chunk.0,
            dirty,
            dirty_ranges: ranges,
            stray_bits: bitmap::has_stray_bits(&bits, chunks),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        if let Some(w) = &shrunk {
            eprintln!("{w}");
        }
        return Ok(status);
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
    if let Some(w) = &shrunk {
        eprintln!("{w}");
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::{split_assemble_args, Found};
    use std::path::{Path, PathBuf};

    /// `d0.img`, `d1.img` and `/dev/sdb` exist; `data` is a directory.
    fn look(p: &Path) -> Found {
        match p.to_str() {
            Some("d0.img" | "d1.img" | "/dev/sdb" | "sub/d2.img") => Found::Device,
            Some("data" | "/dev/null") => Found::Other,
            _ => Found::Missing,
        }
    }

    fn split(args: &[&str]) -> Result<(Option<String>, Vec<String>), String> {
        let args: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
        split_assemble_args(&args, look).map(|(n, d)| {
            (
                n,
                d.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            )
        })
    }

    fn ok(name: Option<&str>, devs: &[&str]) -> Result<(Option<String>, Vec<String>), String> {
        Ok((
            name.map(str::to_string),
            devs.iter().map(|d| d.to_string()).collect(),
        ))
    }

    #[test]
    fn existing_files_are_devices_even_without_a_slash() {
        assert_eq!(
            split(&["d0.img", "d1.img"]),
            ok(None, &["d0.img", "d1.img"])
        );
        assert_eq!(split(&["d0.img"]), ok(None, &["d0.img"]));
        assert_eq!(
            split(&["sub/d2.img", "/dev/sdb"]),
            ok(None, &["sub/d2.img", "/dev/sdb"])
        );
    }

    #[test]
    fn one_other_word_is_the_name_wherever_it_stands() {
        assert_eq!(split(&["web", "d0.img"]), ok(Some("web"), &["d0.img"]));
        assert_eq!(
            split(&["d0.img", "web", "d1.img"]),
            ok(Some("web"), &["d0.img", "d1.img"])
        );
        let u = "5d0c3f8e-2b1a-4c5d-9e8f-0a1b2c3d4e5f";
        assert_eq!(split(&[u, "/dev/sdb"]), ok(Some(u), &["/dev/sdb"]));
        // A directory is not a member: the word is the name.
        assert_eq!(split(&["data", "d0.img"]), ok(Some("data"), &["d0.img"]));
        // --scan: only a name.
        assert_eq!(split(&["web"]), ok(Some("web"), &[]));
        assert_eq!(split(&[]), ok(None, &[]));
    }

    #[test]
    fn a_path_is_a_device_and_must_exist() {
        // /dev/null exists but is no block device: assemble names it later.
        assert_eq!(split(&["/dev/null"]), ok(None, &["/dev/null"]));
        assert_eq!(
            split(&["./d9.img", "d0.img"]),
            Err("./d9.img: no such device or file".into())
        );
        assert_eq!(
            split(&["web", "/dev/sdz"]),
            Err("/dev/sdz: no such device or file".into())
        );
    }

    #[test]
    fn two_names_are_refused_naming_both() {
        assert_eq!(
            split(&["d9.img", "web", "d0.img"]),
            Err(
                "d9.img, web: no such device or file, and only one array name or UUID \
                 may be given"
                    .into()
            )
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_was_meant_as_a_file() {
        use std::os::unix::ffi::OsStrExt;
        let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"d\xff.img"));
        let r = split_assemble_args(&[bad, PathBuf::from("d0.img")], look);
        assert_eq!(r, Err("d\u{fffd}.img: no such device or file".into()));
    }
}
