//! mdextctl: administer md arrays with mdext external metadata.
//!
//! Thin: argument parsing and output; the work is in the library.

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mdext::create::{self, CreateOptions};
use mdext::device;
use mdext::format::{self, FormatError, ReadOutcome};
use mdext::md::{Checkpoint, Level};
use mdext::meta::{MemberState, RebuildKind, Role, Superblock};
use mdext::status::EntryStatus;
use mdext::units::{human, parse_size, Bytes};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// Every print to stdout and stderr in this binary (`mod ops` included,
// which is why these come first) goes through mdext::cli::write_or_die
// instead of std's macros, which panic when the reader has gone away
// (`mdextctl examine DEV | head -1`): the program ends quietly, as by
// SIGPIPE. SIGPIPE itself stays ignored, so that a write to mdextmon's
// control socket fails with an error that is reported.
macro_rules! print {
    ($($t:tt)*) => {
        mdext::cli::write_or_die(mdext::cli::Stream::Stdout, format_args!($($t)*))
    };
}
macro_rules! println {
    () => { print!("\n") };
    ($($t:tt)*) => { print!("{}\n", format_args!($($t)*)) };
}
macro_rules! eprintln {
    ($($t:tt)*) => {
        mdext::cli::write_or_die(
            mdext::cli::Stream::Stderr,
            format_args!("{}\n", format_args!($($t)*)),
        )
    };
}

#[path = "mdextctl/completions.rs"]
mod completions;
#[path = "mdextctl/incremental.rs"]
mod incremental;
#[path = "mdextctl/ops.rs"]
mod ops;
#[path = "mdextctl/watch.rs"]
mod watch;

#[derive(Parser, Debug)]
#[command(
    name = "mdextctl",
    version,
    about = "Manage Linux md RAID arrays with mdext external metadata",
    long_about = "Manage Linux md RAID arrays whose metadata (and write-intent bitmap) \
                  are kept by userspace in the mdext format (see mdext(5)). md itself \
                  runs the array with metadata_version=external; mdextctl creates, \
                  inspects, assembles and stops arrays and manages their members, and \
                  hands running arrays to the daemon mdextmon(8), which keeps their \
                  metadata true while they run."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(about = "Write new mdext metadata on the given devices (destroys what they hold)")]
    Create(CreateArgs),
    #[command(about = "Print the mdext metadata found on member devices")]
    Examine(ExamineArgs),
    #[command(about = "Start an array from its members and hand it to mdextmon")]
    Assemble(ops::AssembleArgs),
    #[command(
        about = "Add one device to its array's pending set; start the array once complete (udev)"
    )]
    Incremental(incremental::IncrementalArgs),
    #[command(about = "Record an array clean and stop it")]
    Stop(ops::StopArgs),
    #[command(about = "Show one running array (like mdadm --detail)")]
    Detail(ops::DetailArgs),
    #[command(about = "Show every running mdext array")]
    Status(ops::StatusArgs),
    #[command(about = "Mark a member faulty (through mdextmon)")]
    Fail(ops::MemberArgs),
    #[command(about = "Detach a failed member (through mdextmon)")]
    Remove(ops::MemberArgs),
    #[command(
        about = "Add a device to a failed or missing slot and rebuild it, or (--spare) as a spare (through mdextmon)"
    )]
    Add(ops::AddArgs),
    #[command(
        about = "Copy a member onto a new device, then fail it, never degraded (through mdextmon)"
    )]
    Replace(ops::ReplaceArgs),
    #[command(
        about = "Change an array's component size, or a raid1's number of mirrors (through mdextmon)"
    )]
    Grow(ops::GrowArgs),
    #[command(about = "Show the dirty chunks of a member's write-intent bitmap")]
    ExamineBitmap(ops::ExamineBitmapArgs),
    #[command(
        about = "Convert a stopped array's members to metadata format version 2 (assemble does it too)"
    )]
    Convert(ConvertArgs),
    #[command(about = "Wait for resync/rebuild to finish, or (--clean) for a clean record")]
    Wait(watch::WaitArgs),
    #[command(about = "Print every array's state for node_exporter's textfile collector")]
    Metrics(watch::MetricsArgs),
    /// Print a completion script (bash, zsh or fish) to stdout.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: completions::Shell,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LevelArg {
    #[value(name = "1", alias = "raid1", alias = "mirror")]
    Raid1,
    #[value(name = "10", alias = "raid10")]
    Raid10,
    #[value(name = "5", alias = "raid5")]
    Raid5,
    #[value(name = "6", alias = "raid6")]
    Raid6,
}

impl From<LevelArg> for Level {
    fn from(l: LevelArg) -> Level {
        match l {
            LevelArg::Raid1 => Level::Raid1,
            LevelArg::Raid10 => Level::Raid10,
            LevelArg::Raid5 => Level::Raid5,
            LevelArg::Raid6 => Level::Raid6,
        }
    }
}

/// `create --bitmap`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BitmapArg {
    /// A write-intent bitmap, its mode chosen by probing the kernel.
    Internal,
    /// No bitmap.
    None,
}

fn size_arg(s: &str) -> Result<Bytes, String> {
    parse_size(s)
}

#[derive(Args, Debug)]
#[command(
    long_about = "Write new mdext metadata (format version 2) on DEV...: superblock copies at \
                  byte 0 and at sector 2040, md's bitmap region at sector 8 and the external \
                  bitmap after it, data from a 1 MiB boundary. \
                  Every check (devices exist, are unused, distinct, large enough, carry no \
                  other signature) runs before anything is written; if one fails, no device \
                  is modified. Without --assume-clean every bitmap bit is set and the first \
                  assembly resyncs the whole array."
)]
struct CreateArgs {
    /// RAID level: 1 (mirror), 10, 5 or 6.
    #[arg(short, long, value_enum)]
    level: LevelArg,
    /// Number of active devices; the first DEVs given, in slot order.
    #[arg(short = 'n', long = "raid-devices")]
    raid_devices: u32,
    /// Number of spares: the DEVs given after the active ones, recorded as
    /// spares (mdextmon rebuilds one into a slot that fails).
    #[arg(short = 'x', long = "spare-devices", default_value_t = 0)]
    spare_devices: u32,
    /// Array name: 1-32 characters of A-Z a-z 0-9 . _ : - (default: "mdext").
    #[arg(short = 'N', long, default_value = "mdext")]
    name: String,
    /// Bytes of array data per bitmap bit; K/M/G suffixes (default 64M).
    /// A power of two, at least 512.
    #[arg(long = "bitmap-chunk", value_parser = size_arg)]
    bitmap_chunk: Option<Bytes>,
    /// Stripe chunk for levels 10, 5 and 6; K/M/G suffixes (default 512K).
    #[arg(short, long, value_parser = size_arg)]
    chunk: Option<Bytes>,
    /// md layout, as mdadm spells it: raid10 n2 (default), f2, o2, n3...
    /// (near, far, offset copies); raid5 and raid6 left-symmetric
    /// (default), left-asymmetric, right-symmetric, right-asymmetric,
    /// parity-first, parity-last, ddf-zero-restart, ddf-N-restart,
    /// ddf-N-continue (la, ra, ls, rs); raid6 also left-symmetric-6 and
    /// the other -6 layouts.
    #[arg(long, visible_alias = "parity", value_name = "LAYOUT")]
    layout: Option<String>,
    /// Flag DEV write-mostly (raid1): md reads from it only when no other
    /// member can serve the read. Recorded in the metadata and applied at
    /// every assembly. May be given several times; not for a spare.
    #[arg(short = 'W', long = "write-mostly", value_name = "DEV")]
    write_mostly: Vec<PathBuf>,
    /// Seconds between bitmap flushes by md (bitmap/time_base), 1-3600.
    #[arg(long = "time-base", default_value_t = create::DEFAULT_TIME_BASE)]
    time_base: u32,
    /// The devices are already identical: zero bitmap, mark clean, no
    /// initial resync. Wrong use leaves mirrors or parity inconsistent.
    #[arg(long = "assume-clean")]
    assume_clean: bool,
    /// Write-intent bitmap: "internal" (default; the mode, md's external
    /// bitmap or md's own bitmap at sector 8, is chosen at each assembly by
    /// probing the kernel) or "none" (no bitmap: a full resync after a
    /// crash, a full rebuild when a member returns).
    #[arg(long = "bitmap", value_enum, default_value = "internal")]
    bitmap: BitmapArg,
    /// Overwrite devices that carry another signature (filesystem,
    /// partition table, mdadm or mdext metadata...); those signatures are
    /// wiped.
    #[arg(short, long)]
    force: bool,
    /// Member devices (block devices, or image files), in slot order, then
    /// the spares (--spare-devices); the word "missing" leaves that slot
    /// empty (the array then starts only with assemble --run, and add or
    /// a spare fills the slot with a full rebuild).
    #[arg(required = true, value_name = "DEV")]
    devices: Vec<PathBuf>,
}

#[derive(Args, Debug)]
#[command(
    long_about = "Read both superblock copies of each DEV, take the valid one with the \
                  higher event count, and print it. A damaged copy is reported on its own \
                  line. Exits non-zero if any DEV has no usable mdext metadata."
)]
struct ExamineArgs {
    /// Print a JSON array with one object per device (keys documented in
    /// mdext(5), stable across versions).
    #[arg(long, conflicts_with = "export")]
    json: bool,
    /// Print KEY=value lines for udev (IMPORT{program}): MDEXT_UUID,
    /// MDEXT_NAME, MDEXT_LEVEL, MDEXT_RAID_DISKS, MDEXT_MEMBER_UUID,
    /// MDEXT_MEMBER_ROLE, MDEXT_EVENTS, MDEXT_STATE.
    #[arg(long)]
    export: bool,
    /// Member devices or image files.
    #[arg(required = true, value_name = "DEV")]
    devices: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Create(a) => run_create(a),
        Cmd::Examine(a) => run_examine(&a),
        Cmd::Assemble(a) => ops::assemble(a),
        Cmd::Incremental(a) => incremental::incremental(&a),
        Cmd::Stop(a) => ops::stop(&a),
        Cmd::Detail(a) => ops::detail(&a),
        Cmd::Status(a) => ops::status(&a),
        Cmd::Fail(a) => ops::member(ops::MemberOp::Fail, &a),
        Cmd::Remove(a) => ops::member(ops::MemberOp::Remove, &a),
        Cmd::Add(a) => ops::add(&a),
        Cmd::Replace(a) => ops::replace(&a),
        Cmd::Grow(a) => ops::grow(&a),
        Cmd::ExamineBitmap(a) => ops::examine_bitmap(&a),
        Cmd::Convert(a) => run_convert(&a),
        Cmd::Wait(a) => watch::wait(&a),
        Cmd::Metrics(a) => watch::metrics(&a),
        Cmd::Completions { shell } => completions::print(shell),
    };
    let code = match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mdextctl: {}", mdext::cli::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    };
    mdext::cli::flush_or_die();
    code
}

#[derive(Args, Debug)]
#[command(
    long_about = "Convert the members of a stopped mdext array from metadata format version 1 \
                  to version 2 (mdext(5), \"Conversion from version 1\"): crash-safe, one \
                  write at a time; a power cut at any point leaves an array that assembles, \
                  and the next assemble or convert finishes the job. Members the newest \
                  record does not list in sync are left alone. assemble converts by itself; \
                  this does it now."
)]
struct ConvertArgs {
    /// Member devices of one array (not in use).
    #[arg(required = true, value_name = "DEV")]
    devices: Vec<PathBuf>,
}

fn run_convert(a: &ConvertArgs) -> Result<ExitCode> {
    let msg = mdext::ctl::convert(&mdext::sysfs::Sysfs::default(), &a.devices)?;
    eprintln!("mdextctl: {msg}");
    Ok(ExitCode::SUCCESS)
}

fn run_create(a: CreateArgs) -> Result<ExitCode> {
    let level: Level = a.level.into();
    let layout = a
        .layout
        .as_deref()
        .map(|l| create::parse_layout(level, l, a.raid_devices))
        .transpose()?;
    let opts = CreateOptions {
        level,
        layout,
        write_mostly: a.write_mostly,
        raid_devices: a.raid_devices,
        name: a.name,
        bitmap_chunk: a.bitmap_chunk,
        chunk: a.chunk,
        time_base: a.time_base,
        assume_clean: a.assume_clean,
        bitmap_mode: match a.bitmap {
            BitmapArg::Internal => mdext::meta::BitmapMode::External,
            BitmapArg::None => mdext::meta::BitmapMode::None,
        },
        // Tests of the conversion need version 1 members.
        version: match std::env::var("MDEXT_CREATE_VERSION").as_deref() {
            Ok("1") => mdext::format::VERSION_1,
            _ => mdext::format::VERSION,
        },
        force: a.force,
        spare_devices: a.spare_devices,
    };
    let plan = create::plan(&opts, &a.devices)?;
    for m in &plan.members {
        for f in &m.found {
            eprintln!(
                "mdextctl: {}: overwriting {f} (--force)",
                m.device.path().display()
            );
        }
    }
    let sbs = plan.execute()?;
    if let Some(sb) = sbs.first() {
        // Slots recorded missing, and the spares after the slots.
        let slots = sb.array.geometry.raid_disks as usize;
        let missing = sb.array.members[..slots.min(sb.array.members.len())]
            .iter()
            .filter(|m| m.state == MemberState::Missing)
            .count();
        let spares = sb.array.members[slots.min(sb.array.members.len())..]
            .iter()
            .filter(|m| m.state == MemberState::Spare)
            .count();
        eprintln!(
            "mdextctl: created {}{} array {} ({}) on {} devices{}{}, {} per device{}",
            sb.array.geometry.level,
            match sb.array.geometry.level {
                Level::Raid1 => String::new(),
                l => format!(" {}", l.layout_name(sb.array.geometry.layout)),
            },
            sb.array.name,
            sb.array.uuid,
            sbs.len() - spares,
            match missing {
                0 => String::new(),
                n => format!(" ({n} slot{} missing)", if n == 1 { "" } else { "s" }),
            },
            match spares {
                0 => String::new(),
                n => format!(" and {n} spare{}", if n == 1 { "" } else { "s" }),
            },
            human(sb.array.geometry.component_size.bytes()),
            if sb.array.clean {
                ", clean"
            } else {
                "; the first assembly resyncs it"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_examine(a: &ExamineArgs) -> Result<ExitCode> {
    let mut failed = false;
    let mut problems = Vec::new();
    let mut json = Vec::new();
    for (i, p) in a.devices.iter().enumerate() {
        let read = device::Device::open(p, device::Access::Read)
            .and_then(|d| Ok((d.read_superblock()?, d.size())));
        let (r, size) = match read {
            Ok(r) => r,
            Err(e) => {
                eprintln!("mdextctl: {e}");
                failed = true;
                continue;
            }
        };
        // The record is printed either way; a device that cannot hold
        // what it records is reported and makes the exit status 1.
        let problem = mdext::assembly::device_too_small(&r.superblock.device, size);
        if a.json {
            json.push(JsonExamine::new(p, &r, problem.clone()));
        } else if a.export {
            if i > 0 {
                println!();
            }
            print!("{}", export(&r.superblock));
        } else {
            print!("{}", human_examine(p, &r));
        }
        if let Some(why) = problem {
            problems.push(format!("{}: {why}; assemble leaves it out", p.display()));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    for w in &problems {
        eprintln!("mdextctl: {w}");
    }
    if failed {
        if a.devices.len() == 1 {
            return Ok(ExitCode::FAILURE);
        }
        bail!("some devices have no usable mdext metadata");
    }
    if !problems.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn state_word(sb: &Superblock) -> &'static str {
    if sb.array.clean {
        "clean"
    } else {
        "dirty"
    }
}

/// A name for a udev `KEY=value` line (and a /dev/md/ link): names are
/// restricted to [A-Za-z0-9._:-] by create; any other character (the
/// format allows more) is replaced for udev's parser.
fn udev_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn export(sb: &Superblock) -> String {
    let a = &sb.array;
    let name = udev_value(&a.name);
    format!(
        "MDEXT_UUID={}\nMDEXT_NAME={}\nMDEXT_LEVEL={}\nMDEXT_RAID_DISKS={}\n\
         MDEXT_MEMBER_UUID={}\nMDEXT_MEMBER_ROLE={}\nMDEXT_EVENTS={}\nMDEXT_STATE={}\n",
        a.uuid,
        name,
        a.geometry.level,
        a.geometry.raid_disks,
        sb.device.uuid,
        sb.role(),
        a.events,
        state_word(sb)
    )
}

fn state_char(s: MemberState) -> char {
    match s {
        MemberState::InSync => 'A',
        MemberState::Rebuilding { .. } => 'R',
        MemberState::Failed => 'F',
        MemberState::Spare => 'S',
        MemberState::Missing | MemberState::Empty => '.',
    }
}

/// UTC time from epoch seconds. A value beyond what a calendar date can
/// say (years past 9999; the metadata is read from disk and may be
/// anything) is shown as the raw number.
fn utc(t: u64) -> String {
    match i64::try_from(t).map(jiff::Timestamp::from_second) {
        Ok(Ok(ts)) => ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        _ => format!("{t} s after 1970 (out of range)"),
    }
}

fn copy_lines(r: &ReadOutcome) -> String {
    let mut s = String::new();
    for (i, e) in r.copy_errors.iter().enumerate() {
        if let Some(e) = e {
            s.push_str(&format!(
                "  copy {i}: {e}; using copy {} (events {})\n",
                r.copy, r.superblock.array.events
            ));
        }
    }
    s
}

fn human_examine(p: &Path, r: &ReadOutcome) -> String {
    let sb = &r.superblock;
    let a = &sb.array;
    let g = &a.geometry;
    let b = &a.bitmap;
    let mut o = format!("{}:\n", p.display());
    let mut kv = |k: &str, v: String| o.push_str(&format!("{k:>17} : {v}\n"));
    kv("Magic", "MDEXT\\0SB".into());
    kv(
        "Version",
        if r.v1_present && a.version == format::VERSION {
            format!("{} (conversion from 1 not finished)", a.version)
        } else {
            a.version.to_string()
        },
    );
    kv("Array UUID", a.uuid.to_string());
    kv("Name", a.name.clone());
    kv("Creation Time", utc(a.ctime));
    kv("Raid Level", g.level.to_string());
    kv("Raid Devices", g.raid_disks.to_string());
    if g.chunk_size.0 != 0 {
        kv("Chunk Size", human(g.chunk_size));
        kv(
            "Layout",
            format!("{} ({})", g.level.layout_name(g.layout), g.layout),
        );
    }
    kv(
        "Avail Dev Size",
        format!(
            "{} ({})",
            sb.device.data_size,
            human(sb.device.data_size.bytes())
        ),
    );
    kv(
        "Used Dev Size",
        format!("{} ({})", g.component_size, human(g.component_size.bytes())),
    );
    kv("Data Offset", sb.device.data_offset.to_string());
    kv("Device UUID", sb.device.uuid.to_string());
    kv("Update Time", utc(a.utime));
    kv("Events", a.events.to_string());
    kv("State", state_word(sb).into());
    kv(
        "Resync",
        match a.resync {
            Checkpoint::None => "none".into(),
            Checkpoint::At(s) => format!("owed from sector {}", s.0),
        },
    );
    kv("Bitmap Mode", b.mode.name().into());
    kv("Bitmap Offset", b.offset.to_string());
    kv("Bitmap Size", b.size.to_string());
    kv(
        "Bitmap Chunk",
        format!("{} ({} chunks)", human(b.chunk), a.bitmap_chunks()),
    );
    kv("Bitmap Time Base", format!("{} s", b.time_base));
    kv("Events Cleared", b.events_cleared.to_string());
    if let Some(e) = a.forced_start {
        kv(
            "Forced Start",
            format!("at event {e} (dirty and degraded, started with --force: stripes written at the crash may hold stale parity)"),
        );
    }
    kv(
        "Device Role",
        match sb.role() {
            Role::Slot(n) => format!("Active device {n}"),
            Role::Spare => "spare".into(),
        },
    );
    let chars: String = a.members[..g.raid_disks as usize]
        .iter()
        .map(|m| state_char(m.state))
        .collect();
    kv(
        "Array State",
        format!("{chars} ('A' in sync, 'R' rebuilding, 'F' failed, '.' missing)"),
    );
    kv(
        "Metadata Copy",
        match r.other_events {
            Some(e) => format!("{} (other copy: events {e})", r.copy),
            None => format!("{} (other copy unusable)", r.copy),
        },
    );
    for (i, m) in a.members.iter().enumerate() {
        let role = if i < g.raid_disks as usize {
            format!("slot {i}")
        } else {
            format!("entry {i}")
        };
        let extra = match m.state {
            MemberState::Rebuilding { kind, checkpoint } => format!(
                " ({} rebuild, at sector {})",
                match kind {
                    RebuildKind::Bitmap => "bitmap",
                    RebuildKind::Full => "full",
                },
                checkpoint.0
            ),
            _ => String::new(),
        };
        let extra = if a.is_write_mostly(&m.uuid) {
            format!("{extra} write-mostly")
        } else {
            extra
        };
        let me = if m.uuid == sb.device.uuid {
            " (this device)"
        } else {
            ""
        };
        o.push_str(&format!(
            "{:>17} : {} {}{} events {}{}\n",
            role,
            m.uuid,
            m.state.name(),
            extra,
            m.events,
            me
        ));
    }
    o.push_str(&copy_lines(r));
    o
}

/// `examine --json` output, one object per device (documented in
/// mdextctl(8), JSON OUTPUT).
#[derive(Serialize)]
struct JsonExamine {
    device: String,
    version: u32,
    array_uuid: uuid::Uuid,
    name: String,
    ctime: u64,
    utime: u64,
    level: Level,
    layout: u32,
    layout_name: String,
    chunk_size_bytes: u64,
    raid_disks: u32,
    component_size_sectors: u64,
    device_uuid: uuid::Uuid,
    data_offset_sectors: u64,
    data_size_sectors: u64,
    events: u64,
    state: RecordState,
    resync_sector: Option<u64>,
    bitmap: JsonBitmap,
    /// This device's slot; `None` for a spare.
    slot: Option<u32>,
    members: Vec<EntryStatus>,
    copy: usize,
    copies: Vec<JsonCopy>,
    /// The event of the last start forced while dirty and degraded.
    forced_start_events: Option<u64>,
    /// What is wrong with the device itself (e.g. smaller than the data
    /// area it records); empty when nothing is.
    problems: Vec<String>,
}

/// Clean or dirty, as the record says.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum RecordState {
    Clean,
    Dirty,
}

#[derive(Serialize)]
struct JsonBitmap {
    offset_sectors: u64,
    size_bytes: u64,
    chunk_bytes: u64,
    chunks: u64,
    time_base: u32,
    events_cleared: u64,
    mode: &'static str,
}

#[derive(Serialize)]
struct JsonCopy {
    index: usize,
    valid: bool,
    error: Option<String>,
}

impl JsonExamine {
    fn new(p: &Path, r: &ReadOutcome, problem: Option<String>) -> JsonExamine {
        let sb = &r.superblock;
        let a = &sb.array;
        let g = &a.geometry;
        JsonExamine {
            device: p.display().to_string(),
            version: a.version,
            array_uuid: a.uuid,
            name: a.name.clone(),
            ctime: a.ctime,
            utime: a.utime,
            level: g.level,
            layout: g.layout,
            layout_name: g.level.layout_name(g.layout),
            chunk_size_bytes: g.chunk_size.0,
            raid_disks: g.raid_disks,
            component_size_sectors: g.component_size.0,
            device_uuid: sb.device.uuid,
            data_offset_sectors: sb.device.data_offset.0,
            data_size_sectors: sb.device.data_size.0,
            events: a.events,
            state: if a.clean {
                RecordState::Clean
            } else {
                RecordState::Dirty
            },
            resync_sector: match a.resync {
                Checkpoint::None => None,
                Checkpoint::At(s) => Some(s.0),
            },
            bitmap: JsonBitmap {
                offset_sectors: a.bitmap.offset.0,
                size_bytes: a.bitmap.size.0,
                chunk_bytes: a.bitmap.chunk.0,
                chunks: a.bitmap_chunks(),
                time_base: a.bitmap.time_base,
                events_cleared: a.bitmap.events_cleared,
                mode: a.bitmap.mode.name(),
            },
            slot: match sb.role() {
                Role::Slot(n) => Some(n),
                Role::Spare => None,
            },
            members: a
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| EntryStatus::of(a, i, m))
                .collect(),
            copy: r.copy,
            copies: r
                .copy_errors
                .iter()
                .enumerate()
                .map(|(index, e): (usize, &Option<FormatError>)| JsonCopy {
                    index,
                    valid: e.is_none(),
                    error: e.as_ref().map(|e| e.to_string()),
                })
                .collect(),
            forced_start_events: a.forced_start,
            problems: problem.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(253_402_207_200), "9999-12-30 22:00:00 UTC");
        assert_eq!(
            utc(253_402_207_201),
            "253402207201 s after 1970 (out of range)"
        );
        assert_eq!(
            utc(u64::MAX),
            "18446744073709551615 s after 1970 (out of range)"
        );
    }
}
