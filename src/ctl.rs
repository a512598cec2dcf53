//! What `mdextctl` does beyond create/examine: assemble, stop, detail,
//! status. Library code so the binary stays a thin argument parser.

use crate::assembly::{self, Candidate, Choice, StartMode};
use crate::control::{self, Pong, Request};
use crate::device::{Access, Device};
use crate::kmode::Region;
use crate::managed::{running_arrays, Managed, Record};
use crate::meta::BitmapMode;
use crate::status::ArrayStatus;
use crate::sysfs::{DevNum, MdDev, Sysfs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of mdextctl operations; each message is one line naming the
/// device or array and the problem.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A device problem.
    #[error("{0}: {1}")]
    Device(PathBuf, String),
    /// An array-level problem.
    #[error("{0}")]
    Array(String),
    /// Assembly failed.
    #[error(transparent)]
    Assembly(#[from] assembly::AssemblyError),
    /// The daemon.
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// Assemble options.
#[derive(Clone, Debug, Default)]
pub struct AssembleOptions {
    /// Array name or UUID to pick (required with several arrays found).
    pub array: Option<String>,
    /// Devices; empty with `scan`.
    pub devices: Vec<PathBuf>,
    /// Find members through udev.
    pub scan: bool,
    /// Start degraded if members are missing.
    pub run: bool,
    /// Leave the array read-only.
    pub readonly: bool,
    /// Start a parity array that is dirty and degraded anyway (md refuses
    /// it; see [`Choice::forced_start`]).
    pub force: bool,
    /// md device name to use (else the configuration's, else the highest
    /// free number).
    pub md_name: Option<String>,
    /// The configuration (mdext.conf(5)): `ARRAY ... md=` names the md
    /// device of an array.
    pub config: crate::config::Config,
    /// Where the daemon's socket lives.
    pub run_dir: PathBuf,
    /// The mdextmon binary to start if none runs.
    pub mdextmon: PathBuf,
}

/// What an assembly did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AssembleReport {
    /// md device.
    pub md: String,
    /// Array name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Devices used.
    pub members: Vec<PathBuf>,
    /// Devices not used and why.
    pub left_out: Vec<assembly::LeftOut>,
    /// Missing slots.
    pub missing_slots: Vec<u32>,
    /// Dirty chunks re-armed with `bitmap_set_bits` (degraded start).
    pub rearmed_chunks: u64,
    /// Writes it took (md takes at most a page per write).
    pub rearm_writes: usize,
    /// Devices whose interrupted rebuild was started again.
    pub resumed: Vec<PathBuf>,
    /// Spares handed to mdextmon.
    pub spares: Vec<PathBuf>,
    /// The event recorded for a start forced while dirty and degraded.
    pub forced_start: Option<u64>,
}

fn devnum_of(p: &Path) -> Result<DevNum, CtlError> {
    DevNum::of_block_device(p).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::InvalidInput {
            "not a block device (md members must be block devices; use a loop device for an image)"
                .to_string()
        } else {
            e.to_string()
        };
        CtlError::Device(p.into(), why)
    })
}

/// Block devices udev knows (for `--scan`), excluding md devices.
pub fn scan_block_devices() -> Result<Vec<PathBuf>, CtlError> {
    let mut e = udev::Enumerator::new().map_err(|e| CtlError::Array(format!("udev: {e}")))?;
    e.match_subsystem("block")
        .map_err(|e| CtlError::Array(format!("udev: {e}")))?;
    let mut v = Vec::new();
    for d in e
        .scan_devices()
        .map_err(|e| CtlError::Array(format!("udev: {e}")))?
    {
        if d.sysname().to_string_lossy().starts_with("md") {
            continue;
        }
        if let Some(n) = d.devnode() {
            v.push(n.to_path_buf());
        }
    }
    v.sort();
    Ok(v)
}

/// Read the candidates among `paths`. With `strict`, a device without
/// metadata is an error; otherwise it is skipped (scan).
fn read_candidates(
    sysfs: &Sysfs,
    paths: &[PathBuf],
    strict: bool,
) -> Result<Vec<Candidate>, CtlError> {
    let mut v: Vec<Candidate> = Vec::new();
    for p in paths {
        let dev = match devnum_of(p) {
            Ok(d) => d,
            Err(e) if strict => return Err(e),
            Err(_) => continue,
        };
        if let Some(c) = v.iter().find(|c| c.dev == dev) {
            return Err(CtlError::Device(
                p.clone(),
                format!("given twice (same device as {})", c.path.display()),
            ));
        }
        let read = Device::open(p, Access::Read)
            .and_then(|d| Ok((d.read_superblock()?.superblock, d.size())));
        let (sb, size) = match read {
            Ok(r) => r,
            Err(e) if strict => {
                // The device's errors name it already: once is enough.
                let m = e.to_string();
                let m = m
                    .strip_prefix(&format!("{}: ", p.display()))
                    .map_or(m.clone(), str::to_string);
                return Err(CtlError::Device(p.clone(), m));
            }
            Err(_) => continue,
        };
        if let Ok(k) = sysfs.block_name(dev) {
            if let Some(holder) = holder_md(sysfs, &k) {
                if strict {
                    return Err(CtlError::Device(
                        p.clone(),
                        format!("already in use by {holder}"),
                    ));
                }
                continue;
            }
        }
        v.push(Candidate {
            path: p.clone(),
            dev,
            sb,
            size,
        });
    }
    Ok(v)
}

/// What holds the block device `dev` (an md device using it), if anything.
pub fn holder_of(sysfs: &Sysfs, dev: DevNum) -> Option<String> {
    holder_md(sysfs, &sysfs.block_name(dev).ok()?)
}

fn holder_md(sysfs: &Sysfs, kname: &str) -> Option<String> {
    let dir = sysfs.root().join("class/block").join(kname).join("holders");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
}

/// The md device running the array with this UUID, if any (the kernel's
/// tag narrows the search, the members' metadata confirms it).
pub fn running_md(sysfs: &Sysfs, uuid: &uuid::Uuid) -> Option<String> {
    let tag = format!("external:{}", crate::meta::kernel_tag(uuid));
    sysfs.list_md().into_iter().find(|n| {
        sysfs.md(n).metadata_version().ok().as_deref() == Some(tag.as_str())
            && Record::read(sysfs, n, Access::Read).is_ok_and(|r| r.meta.uuid == *uuid)
    })
}

/// Pick the array's devices among the candidates. Devices the user listed
/// (`listed`, not `--scan`) must all be of the array asked for.
fn select(
    cands: Vec<Candidate>,
    want: Option<&str>,
    listed: bool,
) -> Result<Vec<Candidate>, CtlError> {
    let mut uuids: Vec<(uuid::Uuid, String)> = Vec::new();
    for c in &cands {
        if !uuids.iter().any(|(u, _)| *u == c.sb.array.uuid) {
            uuids.push((c.sb.array.uuid, c.sb.array.name.clone()));
        }
    }
    let pick = match want {
        Some(w) => {
            let m: Vec<_> = uuids
                .iter()
                .filter(|(u, n)| n == w || u.to_string() == w || u.simple().to_string() == w)
                .collect();
            match m.as_slice() {
                [one] => one.0,
                [] => {
                    return Err(CtlError::Array(format!(
                        "no array named or with UUID '{w}' among the devices"
                    )))
                }
                _ => {
                    return Err(CtlError::Array(format!(
                        "several arrays are named '{w}'; give the UUID"
                    )))
                }
            }
        }
        None => match uuids.as_slice() {
            [one] => one.0,
            [] => return Err(CtlError::Array("no mdext devices found".into())),
            _ => {
                let names: Vec<String> = uuids.iter().map(|(u, n)| format!("{n} ({u})")).collect();
                return Err(CtlError::Array(format!(
                    "devices of several arrays: {}; name the array to assemble",
                    names.join(", ")
                )));
            }
        },
    };
    if let (true, Some(w)) = (listed, want) {
        if let Some(c) = cands.iter().find(|c| c.sb.array.uuid != pick) {
            return Err(CtlError::Array(format!(
                "{}: belongs to array {} ({}), not '{w}'",
                c.path.display(),
                c.sb.array.name,
                c.sb.array.uuid
            )));
        }
    }
    Ok(cands
        .into_iter()
        .filter(|c| c.sb.array.uuid == pick)
        .collect())
}

/// Assemble an array and hand it to mdextmon.
pub fn assemble(sysfs: &Sysfs, o: &AssembleOptions) -> Result<AssembleReport, CtlError> {
    let paths = if o.scan {
        scan_block_devices()?
    } else {
        if o.devices.is_empty() {
            return Err(CtlError::Array("no devices given (or use --scan)".into()));
        }
        o.devices.clone()
    };
    let cands = read_candidates(sysfs, &paths, !o.scan)?;
    let cands = select(cands, o.array.as_deref(), !o.scan)?;
    // Incremental assembly (udev) may be starting the same array: the
    // pending map's lock orders the two.
    let store = lock_pending(&o.run_dir)?;
    let r = assemble_one(sysfs, o, cands)?;
    forget_pending(&store, &r);
    Ok(r)
}

fn lock_pending(run_dir: &Path) -> Result<crate::pending::Store, CtlError> {
    crate::pending::Store::lock(run_dir).map_err(|e| CtlError::Array(e.to_string()))
}

/// An array started: what incremental assembly recorded for it is moot.
fn forget_pending(store: &crate::pending::Store, r: &AssembleReport) {
    if let Ok(u) = uuid::Uuid::parse_str(&r.uuid) {
        let _ = store.remove(&u);
    }
}

/// Start the array whose devices are `cands` (all of one array), as
/// `assemble` does, for a caller that holds the pending map's lock
/// (incremental assembly).
pub fn assemble_devices(
    sysfs: &Sysfs,
    o: &AssembleOptions,
    cands: Vec<Candidate>,
) -> Result<AssembleReport, CtlError> {
    assemble_one(sysfs, o, cands)
}

/// One array's outcome in [`assemble_all`].
#[derive(Debug)]
pub enum ScanOutcome {
    /// Assembled now.
    Started(AssembleReport),
    /// Already running as this md device; left as it is.
    Running {
        /// The array's name.
        name: String,
        /// Its UUID.
        uuid: uuid::Uuid,
        /// The md device.
        md: String,
    },
    /// Could not be assembled (nothing of it was changed).
    Failed {
        /// The array's name.
        name: String,
        /// Its UUID.
        uuid: uuid::Uuid,
        /// Why.
        error: CtlError,
    },
}

/// `assemble --scan` with no array named: every mdext array whose devices
/// are found, each on its own (one that cannot start does not stop the
/// others); arrays already running are left as they are.
pub fn assemble_all(sysfs: &Sysfs, o: &AssembleOptions) -> Result<Vec<ScanOutcome>, CtlError> {
    // Held for the whole scan: incremental assembly (udev) waits, then
    // finds the arrays running.
    let store = lock_pending(&o.run_dir)?;
    let cands = read_candidates(sysfs, &scan_block_devices()?, false)?;
    let mut groups: Vec<Vec<Candidate>> = Vec::new();
    for c in cands {
        match groups
            .iter_mut()
            .find(|g| g[0].sb.array.uuid == c.sb.array.uuid)
        {
            Some(g) => g.push(c),
            None => groups.push(vec![c]),
        }
    }
    // Arrays already running hold their devices (a scan skips those): they
    // are reported from the kernel's list, as it was before this scan.
    let mut out = Vec::new();
    for md in running_arrays(sysfs) {
        if let Ok(r) = Record::read(sysfs, &md, Access::Read) {
            out.push(ScanOutcome::Running {
                name: r.meta.name.clone(),
                uuid: r.meta.uuid,
                md,
            });
        }
    }
    if groups.is_empty() && out.is_empty() {
        return Err(CtlError::Array("no mdext devices found".into()));
    }
    for g in groups {
        let name = g[0].sb.array.name.clone();
        let uuid = g[0].sb.array.uuid;
        if let Some(md) = running_md(sysfs, &uuid) {
            // A device of a running array that md does not hold (say, a
            // member left out): already reported above.
            let known = out
                .iter()
                .any(|x| matches!(x, ScanOutcome::Running { uuid: u, .. } if *u == uuid));
            if !known {
                out.push(ScanOutcome::Running { name, uuid, md });
            }
            continue;
        }
        out.push(match assemble_one(sysfs, o, g) {
            Ok(r) => {
                forget_pending(&store, &r);
                ScanOutcome::Started(r)
            }
            Err(error) => ScanOutcome::Failed { name, uuid, error },
        });
    }
    Ok(out)
}

/// Assemble the array whose devices are `cands` (all of one UUID).
fn assemble_one(
    sysfs: &Sysfs,
    o: &AssembleOptions,
    cands: Vec<Candidate>,
) -> Result<AssembleReport, CtlError> {
    let uuid = cands
        .first()
        .map(|c| c.sb.array.uuid)
        .ok_or_else(|| CtlError::Array("no mdext devices found".into()))?;
    if let Some(md) = running_md(sysfs, &uuid) {
        return Err(CtlError::Array(format!(
            "array {uuid} is already running as {md}"
        )));
    }
    let mut choice = assembly::choose(cands, o.run)?;
    if let Some(p) = convert_choice(&mut choice)? {
        eprintln!(
            "mdextctl: {}: converted {} members to format version {} (events {}){}",
            choice.meta.name,
            choice.members.len(),
            p.record.version,
            p.record.events,
            p.relocated
                .map(|s| format!("; the bitmap moved to sector {}", s.0))
                .unwrap_or_default()
        );
    }
    if choice.members.len() < min_members(&choice) {
        return Err(CtlError::Array(format!(
            "only {} of {} members usable; the array cannot run",
            choice.members.len(),
            choice.meta.geometry.raid_disks
        )));
    }
    // A dirty degraded parity array: refused here, before the kernel, or
    // (--force) recorded clean and force-started first, as mdadm does.
    if let Some(mut record) = choice.forced_start(o.force)? {
        record.utime = crate::meta::unix_now();
        write_record(&choice, &record, "recording the forced start")?;
        choice.meta = record;
    }
    // The array starts read-only (a write fails, it cannot hang), so the
    // daemon is ensured after activation: a kernel that refuses the array
    // leaves no daemon started for nothing. Until mdextmon has taken the
    // array over, it stays read-only; if that fails, it is taken apart.
    let md_name = o.md_name.clone().or_else(|| {
        o.config
            .md_device(&choice.meta.name, &choice.meta.uuid)
            .map(str::to_string)
    });
    let (md, rearmed, rearm_writes) = activate_choice(sysfs, &mut choice, md_name, o.readonly)?;
    let mut left_out_extra: Vec<assembly::LeftOut> = Vec::new();
    let handed = ensure_daemon(&o.run_dir, &o.mdextmon).and_then(|()| {
        let req = Request::Manage {
            md: md.name().to_string(),
            readonly: o.readonly,
        };
        control::act(&o.run_dir, &req, Duration::from_secs(10)).map_err(|e| match e {
            control::ControlError::Daemon { message, .. } => {
                CtlError::Array(format!("{}: mdextmon refused it: {message}", md.name()))
            }
            e => e.into(),
        })
    });
    if let Err(e) = handed {
        let _ = assembly::teardown(sysfs, &md);
        return Err(e);
    }
    // Rebuilds that a crash or stop interrupted start again; mdextmon
    // decides bitmap or full from each device's own record.
    let mut resumed = Vec::new();
    for (_, c) in &choice.resume {
        let req = Request::Add {
            md: md.name().to_string(),
            device: c.path.to_string_lossy().into_owned(),
            write_mostly: false,
            spare: false,
        };
        match control::act(&o.run_dir, &req, Duration::from_secs(60)) {
            Ok(()) => resumed.push(c.path.clone()),
            Err(e) => left_out_extra.push(assembly::LeftOut {
                path: c.path.clone(),
                reason: format!("its interrupted rebuild could not be resumed: {e}"),
            }),
        }
    }
    // Spares after the resumed rebuilds, which take their own slots first.
    let mut spares = Vec::new();
    for (_, c) in &choice.spares {
        let req = Request::Add {
            md: md.name().to_string(),
            device: c.path.to_string_lossy().into_owned(),
            write_mostly: false,
            spare: true,
        };
        match control::act(&o.run_dir, &req, Duration::from_secs(60)) {
            Ok(()) => spares.push(c.path.clone()),
            Err(e) => left_out_extra.push(assembly::LeftOut {
                path: c.path.clone(),
                reason: format!("a spare that could not be added: {e}"),
            }),
        }
    }
    Ok(AssembleReport {
        md: md.name().to_string(),
        name: choice.meta.name.clone(),
        uuid: choice.meta.uuid.to_string(),
        members: choice.members.iter().map(|(_, c)| c.path.clone()).collect(),
        left_out: choice
            .left_out
            .iter()
            .cloned()
            .chain(left_out_extra)
            .collect(),
        resumed,
        spares,
        missing_slots: choice.missing_slots.clone(),
        forced_start: choice.meta.forced_start,
        rearmed_chunks: rearmed,
        rearm_writes,
    })
}

/// The failpoint that stops a conversion after this many writes (guest
/// tests crash the machine there): `MDEXT_FAILPOINT_CONVERT_WRITES=N`.
pub const FAILPOINT_CONVERT: &str = "MDEXT_FAILPOINT_CONVERT_WRITES";

/// Convert the members `choice` uses (those the newest record lists in
/// sync) to format version 2 if any still holds version 1 (`man 5 mdext`,
/// "Conversion from version 1"). The members are not in use. Returns the
/// plan run, or `None` when there was nothing to do or the array cannot
/// be converted (it stays version 1, said on stderr).
pub fn convert_choice(choice: &mut Choice) -> Result<Option<crate::convert::Plan>, CtlError> {
    let mut members = Vec::new();
    for (_, c) in &choice.members {
        let read = Device::open(&c.path, Access::Read).and_then(|d| {
            let outcome = d.read_superblock()?;
            let bits = d.read_bitmap(&choice.meta.bitmap)?;
            Ok(crate::convert::Member { outcome, bits })
        });
        members.push(read.map_err(|e| CtlError::Device(c.path.clone(), e.to_string()))?);
    }
    let plan = match crate::convert::plan(&members, crate::meta::unix_now()) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e @ crate::convert::ConvertError::NoRoom(_)) => {
            eprintln!("mdextctl: {}: {e}", choice.meta.name);
            return Ok(None);
        }
        Err(e) => return Err(CtlError::Array(format!("{}: {e}", choice.meta.name))),
    };
    let stop_after: Option<usize> = std::env::var(FAILPOINT_CONVERT)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut open: Vec<Option<Device>> = choice.members.iter().map(|_| None).collect();
    for (n, w) in plan.writes.iter().enumerate() {
        if stop_after == Some(n) {
            return Err(CtlError::Array(format!(
                "{}: failpoint {FAILPOINT_CONVERT}: conversion stopped after {n} of {} writes",
                choice.meta.name,
                plan.writes.len()
            )));
        }
        let path = &choice.members[w.member].1.path;
        let err = |e: crate::device::DeviceError| {
            CtlError::Device(
                path.clone(),
                format!("converting to format version 2: writing {}: {e}", w.what),
            )
        };
        let dev = match &mut open[w.member] {
            Some(d) => d,
            slot => slot.insert(Device::open(path, Access::ExclusiveWrite).map_err(err)?),
        };
        dev.write_at(w.offset, &w.bytes)
            .and_then(|()| dev.sync())
            .map_err(err)?;
    }
    for (_, c) in &mut choice.members {
        c.sb.array = plan.record.clone();
    }
    choice.meta = plan.record.clone();
    Ok(Some(plan))
}

/// `mdextctl convert`: convert an array's members (not running) to format
/// version 2 now rather than at its next assembly. Returns what was done.
pub fn convert(sysfs: &Sysfs, paths: &[PathBuf]) -> Result<String, CtlError> {
    let cands = read_candidates(sysfs, paths, true)?;
    let mut choice = assembly::choose(cands, true)?;
    let name = choice.meta.name.clone();
    let left: Vec<String> = choice
        .left_out
        .iter()
        .map(|l| format!("{} ({})", l.path.display(), l.reason))
        .collect();
    let v = choice.meta.version;
    let done = match convert_choice(&mut choice)? {
        Some(p) => format!(
            "{name}: {} members converted to format version {} (events {}){}",
            choice.members.len(),
            p.record.version,
            p.record.events,
            p.relocated
                .map(|s| format!("; the bitmap moved to sector {}", s.0))
                .unwrap_or_default()
        ),
        None if choice.meta.version == crate::format::VERSION => {
            format!("{name}: already format version {v}; nothing to do")
        }
        None => return Err(CtlError::Array(format!("{name}: not converted"))),
    };
    Ok(if left.is_empty() {
        done
    } else {
        format!("{done}; not converted: {}", left.join(", "))
    })
}

/// Write `record` on every member about to be started (not yet in use).
fn write_record(
    choice: &Choice,
    record: &crate::meta::ArrayMeta,
    what: &str,
) -> Result<(), CtlError> {
    for (_, c) in &choice.members {
        let sb = crate::meta::Superblock {
            array: record.clone(),
            device: c.sb.device,
        };
        Device::open(&c.path, Access::ExclusiveWrite)
            .and_then(|d| d.write_superblock(&sb))
            .map_err(|e| CtlError::Device(c.path.clone(), format!("{what}: {e}")))?;
    }
    Ok(())
}

fn min_members(c: &Choice) -> usize {
    let g = &c.meta.geometry;
    g.level.min_working(g.raid_disks) as usize
}

/// Read the bits of `region` of the member at `path` (the kernel region's
/// bits start at byte 256 of sector 8).
fn read_region(
    path: &Path,
    meta: &crate::meta::ArrayMeta,
    region: Region,
) -> Result<Vec<u8>, CtlError> {
    let err = |e: crate::device::DeviceError| CtlError::Device(path.to_path_buf(), e.to_string());
    let d = Device::open(path, Access::Read).map_err(err)?;
    match region {
        Region::External => d.read_bitmap(&meta.bitmap).map_err(err),
        Region::Kernel => d.read_kernel_bits(meta).map_err(err),
    }
}

/// Write `bits` to `region` of the member at `path` and make them durable;
/// the kernel region gets md's bitmap superblock `sb` in front.
fn write_region(
    path: &Path,
    meta: &crate::meta::ArrayMeta,
    region: Region,
    sb: &[u8; crate::kmode::SB_SIZE],
    bits: &[u8],
) -> Result<(), CtlError> {
    let err = |e: crate::device::DeviceError| CtlError::Device(path.to_path_buf(), e.to_string());
    let d = Device::open(path, Access::ExclusiveWrite).map_err(err)?;
    match region {
        Region::External => d.write_bitmap(&meta.bitmap, bits).map_err(err),
        Region::Kernel => {
            let mut buf = sb.to_vec();
            buf.extend_from_slice(bits);
            d.write_at(crate::format::KERNEL_BITMAP_SECTOR.bytes().0, &buf)
                .and_then(|()| d.sync())
                .map_err(err)
        }
    }
}

/// `MDEXT_BITMAP_MODE=kernel`: start arrays in the kernel-managed bitmap
/// mode even where the kernel offers the external bitmap.
pub const BITMAP_MODE_ENV: &str = "MDEXT_BITMAP_MODE";

/// Activate by the start protocol ([`crate::monitor::start_plan`]) in the
/// bitmap mode the running kernel allows ([`crate::kmode::decide`], probed
/// on the new md device before anything else): every start holds the
/// kernel's bit clearing with a long `bitmap/time_base` (mdextmon ends the
/// hold once its record is durable on every member); the dirty chunks of
/// the present members, read before activation, are re-armed with
/// `bitmap_set_bits` on a degraded start (external mode) or on every
/// dirty or degraded start (kernel-managed mode). md flushes the bits it
/// took to the bitmap area; every chunk re-armed must be set there on every
/// present member. An array whose record names the other mode first has
/// its dirty chunks merged into the region of the new one on every member,
/// then the new mode recorded.
/// Returns the md device, the re-armed count and the writes it took.
fn activate_choice(
    sysfs: &Sysfs,
    choice: &mut Choice,
    md_name: Option<String>,
    readonly: bool,
) -> Result<(MdDev, u64, usize), CtlError> {
    let name = match md_name {
        Some(n) => n,
        None => sysfs
            .free_md_name()
            .ok_or(assembly::AssemblyError::NoFreeName)?,
    };
    let md = sysfs
        .new_array(&name)
        .map_err(|cause| assembly::AssemblyError::Step {
            md: name.clone(),
            step: assembly::Step::NewArray,
            cause: Box::new(cause),
            rollback: None,
        })?;
    match activate_on(sysfs, choice, &md, readonly) {
        Ok(r) => Ok(r),
        Err(e) => {
            let _ = assembly::teardown(sysfs, &md);
            Err(e)
        }
    }
}

fn activate_on(
    sysfs: &Sysfs,
    choice: &mut Choice,
    md: &MdDev,
    readonly: bool,
) -> Result<(MdDev, u64, usize), CtlError> {
    let nchunks = choice.meta.bitmap_chunks();
    let recorded = choice.meta.bitmap.mode;
    let offers = match std::env::var(BITMAP_MODE_ENV) {
        Err(_) => md.bitmap_offers(),
        // The kernel-managed route works on every kernel mdext runs on;
        // this runs it where the external one is offered too (to move an
        // array to a 6.18+ machine already in that mode, and for tests).
        Ok(v) if v == "kernel" => crate::kmode::Offers {
            bitmap_metadata: false,
            bitmap_type: Some("none [bitmap]".into()),
        },
        Ok(v) => {
            return Err(CtlError::Array(format!(
                "{BITMAP_MODE_ENV}={v:?}: the only value it takes is \"kernel\" (unset: the kernel's offer decides)"
            )))
        }
    };
    let mode = crate::kmode::decide(recorded, &offers)
        .map_err(|e| CtlError::Array(format!("{}: {e}", choice.meta.name)))?;
    if mode == BitmapMode::Kernel && choice.meta.version < crate::format::VERSION {
        return Err(CtlError::Array(format!(
            "{}: this kernel runs only md's own bitmap at sector 8, which format version {} has no room for (it was not converted)",
            choice.meta.name, choice.meta.version
        )));
    }
    let sb = crate::kmode::encode_super(
        &crate::kmode::KernelSuper::for_array(&choice.meta, crate::monitor::HOLD_TIME_BASE)
            .map_err(|e| CtlError::Array(format!("{}: {e}", choice.meta.name)))?,
    )
    .map_err(|e| CtlError::Array(format!("{}: {e}", choice.meta.name)))?;
    if let Some(sw) = crate::kmode::switch(recorded, mode) {
        // Both regions on every member first; the record with the new mode
        // last (a cut before it leaves the old region authoritative).
        for (_, c) in &choice.members {
            let from = read_region(&c.path, &choice.meta, sw.from)?;
            let into = read_region(&c.path, &choice.meta, sw.to)?;
            let merged = crate::kmode::merge(&from, &into, nchunks);
            write_region(&c.path, &choice.meta, sw.to, &sb, &merged)?;
        }
        let mut record = choice.meta.clone();
        record.events += 1;
        record.bitmap.mode = mode;
        record.utime = crate::meta::unix_now();
        write_record(choice, &record, "recording the bitmap mode")?;
        for (_, c) in &mut choice.members {
            c.sb.array = record.clone();
        }
        choice.meta = record;
    }
    let region = crate::kmode::region(mode);
    // The union of every present member's bits (they are mirrors of each
    // other's bitmap; a member may have missed the last page write).
    let mut union: Vec<u8> = Vec::new();
    let want_bits = match mode {
        BitmapMode::None => false,
        BitmapMode::External => choice.degraded() || crate::monitor::dirty_may_trail(&choice.meta),
        BitmapMode::Kernel => true,
    };
    if let Some(region) = region.filter(|_| want_bits) {
        for (_, c) in &choice.members {
            let bits = read_region(&c.path, &choice.meta, region)?;
            union.resize(union.len().max(bits.len()), 0);
            for (u, b) in union.iter_mut().zip(&bits) {
                *u |= b;
            }
        }
    }
    choice.bits_set = !crate::bitmap::dirty_ranges(&union, nchunks).is_empty();
    if mode == BitmapMode::Kernel {
        // md's superblock (events_cleared 1: a degraded attach keeps the
        // bits as needing sync) and the union of the bits, on every member.
        for (_, c) in &choice.members {
            write_region(&c.path, &choice.meta, Region::Kernel, &sb, &union)?;
        }
    }
    let plan = crate::monitor::start_plan(&choice.meta, mode, choice.degraded(), &union);
    let spec = choice.spec(
        Some(md.name().to_string()),
        StartMode::Readonly,
        Some(plan.time_base),
        mode,
    )?;
    let steps = assembly::plan(&spec)?;
    let md = assembly::execute_on(sysfs, md.clone(), &steps[1..], true)?;
    let mut writes = 0;
    let what = if plan.attach_after_start {
        "start"
    } else {
        "degraded start"
    };
    if !plan.rearm.is_empty() {
        writes = md
            .bitmap_set_bits(&plan.rearm, nchunks)
            .map_err(|e| CtlError::Array(format!("{}: {what}: {e}", md.name())))?;
        verify_rearmed(choice, region.unwrap_or(Region::External), &plan.rearm)
            .map_err(|e| CtlError::Array(format!("{}: {what}: {e}", md.name())))?;
    }
    if plan.attach_after_start {
        // `assemble --readonly`: back to read-only before the fence goes
        // (the attach needed `clean`). No write is pending (fenced writes
        // wait before md marks the array dirty), so md accepts the
        // switch; the bitmap stays attached. Not otherwise: returned to
        // read-only, a root array assembled in the initramfs on 7.2.13
        // left its root mount blocked for good (guest), while left
        // `clean` it boots.
        if readonly {
            md.set_array_state(crate::md::ArrayState::Readonly)
                .map_err(|e| {
                    CtlError::Array(format!(
                        "{}: read-only after the bitmap attach: {e}",
                        md.name()
                    ))
                })?;
        }
        md.lift_fence()
            .map_err(|e| CtlError::Array(format!("{}: lifting the write fence: {e}", md.name())))?;
    }
    Ok((md, crate::bitmap::count_dirty(&union, nchunks), writes))
}

/// What md took from `bitmap_set_bits`: it flushes the bits to the bitmap
/// area of every member before the write returns, so each re-armed chunk
/// must be set on each present member. This proves the list is durable
/// where the next start reads it (a crash now loses nothing); it cannot
/// tell a chunk md marked as needing sync from one it merely loaded at
/// activation (both read as set), which the exact bitmap rebuild shows.
fn verify_rearmed(choice: &Choice, region: Region, ranges: &[(u64, u64)]) -> Result<(), String> {
    for (_, c) in &choice.members {
        let bits = read_region(&c.path, &choice.meta, region)
            .map_err(|e| format!("reading back the bitmap: {e}"))?;
        if let Some(n) = crate::bitmap::first_missing(&bits, ranges) {
            return Err(format!(
                "md did not take the dirty-chunk list: chunk {n} is not set in the bitmap of {} after bitmap_set_bits; its bits would be lost, so the array was stopped",
                c.path.display()
            ));
        }
    }
    Ok(())
}

/// Ping the daemon; start it if none answers, and wait for its socket.
///
/// Where systemd runs the machine ([`crate::service::systemd_runs`]), it
/// is asked to start `mdextmon.service` (its daemon then lives in the unit,
/// supervised and restarted on failure; `systemctl start` returns once the
/// daemon said `READY=1`). Elsewhere (an initramfs without systemd, the
/// test guests) the daemon is spawned in its own session with argv[0]
/// `@mdextmon`, systemd's mark for a root storage daemon that no final
/// killing spree may end. `MDEXT_DAEMON_START=systemd|spawn` overrides the
/// choice; a run directory other than the default is always spawned (the
/// unit serves the default one).
pub fn ensure_daemon(run_dir: &Path, mdextmon: &Path) -> Result<(), CtlError> {
    if control::call(run_dir, &Request::Ping, Duration::from_secs(5)).is_ok() {
        return Ok(());
    }
    let env = std::env::var(crate::service::START_ENV).ok();
    let how = crate::service::start_by(env.as_deref(), crate::service::systemd_runs())
        .map_err(CtlError::Array)?;
    if how == crate::service::StartBy::Systemd && run_dir == Path::new(control::RUN_DIR) {
        return start_unit(run_dir);
    }
    spawn_daemon(run_dir, mdextmon)
}

/// `systemctl start mdextmon.service` (`mdextmon-initrd.service` in an
/// initrd), then confirm the daemon answers.
fn start_unit(run_dir: &Path) -> Result<(), CtlError> {
    let unit = crate::service::unit(crate::service::in_initrd());
    let out = std::process::Command::new("systemctl")
        .args(["start", unit])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CtlError::Array(format!("running systemctl start {unit}: {e}")))?;
    if !out.status.success() {
        return Err(CtlError::Array(format!(
            "systemctl start {unit} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if wait_for_socket(run_dir, Duration::from_secs(10)) {
        return Ok(());
    }
    Err(CtlError::Array(format!(
        "systemd started {unit} but mdextmon does not answer on {}",
        control::socket_path(run_dir).display()
    )))
}

/// Spawn mdextmon in its own session, argv[0] `@mdextmon`.
fn spawn_daemon(run_dir: &Path, mdextmon: &Path) -> Result<(), CtlError> {
    use std::os::unix::process::CommandExt;
    // The daemon's stderr, when mdextctl starts it (systemd starts it with
    // the journal instead).
    let _ = std::fs::create_dir_all(run_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("mdextmon.log"))
        .or_else(|_| std::fs::File::create("/dev/null"))
        .map_err(|e| CtlError::Array(format!("starting mdextmon: {e}")))?;
    let mut cmd = std::process::Command::new(mdextmon);
    // A notification socket this mdextctl inherited (run from a unit) is
    // not the daemon's to speak to.
    for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(v);
    }
    cmd.arg0("@mdextmon")
        .arg("--run-dir")
        .arg(run_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the
    // parent; it detaches the daemon from our session before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .map_err(|e| CtlError::Array(format!("starting {}: {e}", mdextmon.display())))?;
    if wait_for_socket(run_dir, Duration::from_secs(10)) {
        return Ok(());
    }
    Err(CtlError::Array(format!(
        "started {} but it does not answer on {}",
        mdextmon.display(),
        control::socket_path(run_dir).display()
    )))
}

/// Wait until the daemon answers on its socket: inotify tells when the
/// socket file appears in the run directory (no polling loop), then a ping
/// confirms it listens.
fn wait_for_socket(run_dir: &Path, limit: Duration) -> bool {
    use inotify::{Inotify, WatchMask};
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let ping = || control::call(run_dir, &Request::Ping, Duration::from_secs(2)).is_ok();
    let mut ino = match Inotify::init() {
        Ok(i) => i,
        Err(_) => return ping(),
    };
    // The daemon creates the directory itself when it is missing.
    let _ = std::fs::create_dir_all(run_dir);
    if ino
        .watches()
        .add(run_dir, WatchMask::CREATE | WatchMask::MOVED_TO)
        .is_err()
    {
        return ping();
    }
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        // Checked after the watch exists, so a socket created meanwhile is
        // not missed.
        if ping() {
            return true;
        }
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return false;
        }
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, t) {
            // poll counts whole milliseconds: go round until the deadline
            // has really passed.
            Ok(0) => {}
            Ok(_) => {
                let _ = ino.read_events(&mut buf);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return ping(),
        }
    }
}

/// The daemon recorded in the pid file, if that process is alive and is
/// mdextmon (a stale pid file may name another program after a reboot).
pub fn daemon_pid(run_dir: &Path) -> Option<u32> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid: u32 = std::fs::read_to_string(run_dir.join("mdextmon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut sys = System::new().ok()?;
    let p = [Pid::from_u32(pid)];
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&p),
        true,
        ProcessRefreshKind::nothing(),
    );
    let name = sys.process(p[0])?.name().to_string_lossy().into_owned();
    (name == "mdextmon").then_some(pid)
}

/// Resolve an array argument (`md127`, `/dev/md127`, a name or a UUID) to
/// a running md device.
pub fn resolve_md(sysfs: &Sysfs, arg: &str) -> Result<String, CtlError> {
    let base = arg.trim_start_matches("/dev/").trim_start_matches("md/");
    if sysfs.md_exists(base) {
        let v = sysfs.md(base).metadata_version().unwrap_or_default();
        if !crate::meta::is_mdext_version(&v) {
            return Err(CtlError::Array(format!(
                "{base} is not an mdext array (metadata {v})"
            )));
        }
        return Ok(base.to_string());
    }
    let want_uuid = uuid::Uuid::parse_str(base).ok();
    for n in running_arrays(sysfs) {
        if let Ok(r) = Record::read(sysfs, &n, Access::Read) {
            if r.meta.name == base || want_uuid == Some(r.meta.uuid) {
                return Ok(n);
            }
        }
    }
    Err(CtlError::Array(format!("no running mdext array '{arg}'")))
}

/// Stop an array: through the daemon when it runs (it owns the metadata),
/// otherwise directly.
pub fn stop(sysfs: &Sysfs, run_dir: &Path, arg: &str) -> Result<String, CtlError> {
    let md = resolve_md(sysfs, arg)?;
    let req = Request::Stop { md: md.clone() };
    match control::act(run_dir, &req, Duration::from_secs(30)) {
        Ok(()) => Ok(md),
        Err(control::ControlError::NotRunning(_))
        | Err(control::ControlError::Daemon {
            kind: control::ErrorKind::NotManaged,
            ..
        }) => stop_here(sysfs, &md),
        Err(e) => Err(e.into()),
    }
}

fn stop_here(sysfs: &Sysfs, md: &str) -> Result<String, CtlError> {
    let mut m = Managed::take_over(sysfs, md).map_err(|e| CtlError::Array(e.to_string()))?;
    m.stop().map_err(|e| CtlError::Array(e.to_string()))?;
    Ok(md.to_string())
}

/// The running mdextmon's answer to a ping (`None` when none answers).
fn daemon(run_dir: &Path) -> Option<Pong> {
    control::ping(run_dir, Duration::from_secs(5)).ok()
}

fn describe(
    sysfs: &Sysfs,
    run_dir: &Path,
    md: &str,
    daemon: Option<&Pong>,
) -> Result<ArrayStatus, CtlError> {
    let r = Record::read(sysfs, md, Access::Read).map_err(|e| CtlError::Array(e.to_string()))?;
    let mut s = r.status();
    s.managed = daemon.is_some_and(|p| p.arrays.iter().any(|m| m == md));
    s.mdextmon_pid = daemon.map(|p| p.pid).or_else(|| daemon_pid(run_dir));
    Ok(s)
}

/// Detail of one running array.
pub fn detail(sysfs: &Sysfs, run_dir: &Path, arg: &str) -> Result<ArrayStatus, CtlError> {
    let md = resolve_md(sysfs, arg)?;
    describe(sysfs, run_dir, &md, daemon(run_dir).as_ref())
}

/// One running array as its members record it, without asking mdextmon
/// (for udev's `detail --export`, which must not wait for a daemon):
/// `managed` and `mdextmon_pid` are left unset.
pub fn detail_offline(sysfs: &Sysfs, arg: &str) -> Result<ArrayStatus, CtlError> {
    let md = resolve_md(sysfs, arg)?;
    let r = Record::read(sysfs, &md, Access::Read).map_err(|e| CtlError::Array(e.to_string()))?;
    Ok(r.status())
}

/// Every running mdext array.
pub fn status(sysfs: &Sysfs, run_dir: &Path) -> Result<Vec<ArrayStatus>, CtlError> {
    let d = daemon(run_dir);
    running_arrays(sysfs)
        .into_iter()
        .map(|n| describe(sysfs, run_dir, &n, d.as_ref()))
        .collect()
}

/// Render `detail` for humans, modelled on `mdadm --detail`.
pub fn render_detail(s: &ArrayStatus) -> String {
    fn or_unknown<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "unknown".into(), |v| v.to_string())
    }
    let mut out = String::new();
    out.push_str(&format!("/dev/{}:\n", s.md));
    let size = crate::units::Sectors(s.component_size_sectors);
    let rows = [
        ("Name", s.name.clone()),
        ("UUID", s.uuid.to_string()),
        ("Raid Level", s.level.to_string()),
        ("Raid Devices", s.raid_disks.to_string()),
        (
            "Layout",
            match s.level {
                crate::md::Level::Raid1 => "-".into(),
                l => format!(
                    "{} ({}), chunk {}",
                    l.layout_name(s.layout),
                    s.layout,
                    crate::units::human(crate::units::Bytes(s.chunk_size_bytes))
                ),
            },
        ),
        (
            "Component Size",
            format!("{} sectors ({})", size.0, crate::units::human(size.bytes())),
        ),
        ("State", or_unknown(s.array_state)),
        ("Health", s.health.as_str().into()),
        ("Degraded", or_unknown(s.degraded)),
        ("Sync Action", or_unknown(s.sync_action)),
        (
            "Sync Completed",
            match s.sync_completed {
                Some(p) => format!("{} / {} sectors", p.done_sectors, p.total_sectors),
                None => "none".into(),
            },
        ),
        ("Events", s.events.to_string()),
        ("Metadata", if s.clean { "clean" } else { "dirty" }.into()),
        (
            "Resync Owed",
            s.resync_sector
                .map_or_else(|| "none".into(), |n| format!("from sector {n}")),
        ),
        (
            "Forced Start",
            match s.forced_start_events {
                Some(e) => format!("at event {e} (dirty and degraded, started with --force)"),
                None => "never".into(),
            },
        ),
        (
            "Bitmap",
            format!(
                "+{} sectors, chunk {}, time_base {} s, events_cleared {}",
                s.bitmap.offset_sectors,
                crate::units::human(crate::units::Bytes(s.bitmap.chunk_bytes)),
                s.bitmap.time_base,
                s.bitmap.events_cleared
            ),
        ),
        (
            "Can Clear",
            s.can_clear
                .map_or_else(|| "unknown".into(), |b| b.to_string()),
        ),
        (
            "Managed",
            match (s.managed, s.mdextmon_pid) {
                (true, Some(pid)) => format!("by mdextmon (pid {pid})"),
                (true, None) => "by mdextmon".into(),
                (false, _) => {
                    "NO (writes will hang; run mdextctl assemble or start mdextmon)".into()
                }
            },
        ),
    ];
    for (k, val) in rows {
        out.push_str(&format!("{k:>16} : {val}\n"));
    }
    out.push_str("\n    Slot  State        Events  Device        UUID\n");
    for m in &s.members {
        let e = &m.entry;
        let state = match (e.rebuild_kind, e.rebuild_checkpoint_sectors) {
            (Some(k), Some(cp)) => format!(
                "{} ({}, at sector {cp})",
                e.state.as_str(),
                match k {
                    crate::meta::RebuildKind::Bitmap => "bitmap",
                    crate::meta::RebuildKind::Full => "full",
                }
            ),
            _ => e.state.as_str().into(),
        };
        let state = if e.write_mostly {
            format!("{state} (write-mostly)")
        } else {
            state
        };
        out.push_str(&format!(
            "    {:>4}  {:<11}  {:>6}  {:<12}  {}\n",
            e.index,
            state,
            e.events,
            m.device.as_deref().unwrap_or("-"),
            e.uuid,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_pid_checks_the_process_name() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(daemon_pid(d.path()), None, "no pid file");
        // Our own pid is alive but is not mdextmon.
        std::fs::write(
            d.path().join("mdextmon.pid"),
            format!("{}\n", std::process::id()),
        )
        .expect("write");
        assert_eq!(daemon_pid(d.path()), None);
        std::fs::write(d.path().join("mdextmon.pid"), "4194305\n").expect("write");
        assert_eq!(daemon_pid(d.path()), None, "no such process");
        std::fs::write(d.path().join("mdextmon.pid"), "garbage").expect("write");
        assert_eq!(daemon_pid(d.path()), None);
    }

    #[test]
    fn verify_rearmed_names_the_first_chunk_md_did_not_take() {
        use crate::units::{Bytes, Sectors};
        let d = tempfile::tempdir().expect("tmp");
        let meta = crate::meta::test_raid1(2, Sectors(1 << 16), Bytes(65536), 3);
        // Bitmap area: 4096 bytes at sector 8. Chunks 2, 3 and 9 set.
        let path = d.path().join("m0");
        let mut img = vec![0u8; 8192];
        img[4096] = 0b0000_1100;
        img[4097] = 0b0000_0010;
        std::fs::write(&path, &img).expect("write");
        let c = Candidate {
            path: path.clone(),
            dev: DevNum { major: 7, minor: 0 },
            sb: crate::meta::Superblock {
                array: meta.clone(),
                device: crate::meta::DeviceMeta {
                    uuid: meta.members[0].uuid,
                    data_offset: Sectors(2048),
                    data_size: Sectors(1 << 16),
                },
            },
            size: Bytes(8192),
        };
        let choice = Choice {
            meta,
            members: vec![(0, c)],
            left_out: Vec::new(),
            missing_slots: vec![1],
            resume: Vec::new(),
            spares: Vec::new(),
            bits_set: false,
        };
        assert_eq!(
            verify_rearmed(&choice, Region::External, &[(2, 3), (9, 9)]),
            Ok(())
        );
        let e = verify_rearmed(&choice, Region::External, &[(2, 3), (9, 12)])
            .expect_err("10 is not set");
        assert!(e.contains("chunk 10 ") && e.contains("m0"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    /// Defect: `assemble one A B` with B of another array dropped B
    /// without a word; the refusal then said only that a member was
    /// missing.
    #[test]
    fn listed_devices_of_another_array_are_named() {
        use crate::units::{Bytes, Sectors};
        let cand = |name: &str, uuid: u128, path: &str| {
            let mut meta = crate::meta::test_raid1(2, Sectors(1 << 16), Bytes(65536), 3);
            meta.name = name.into();
            meta.uuid = uuid::Uuid::from_u128(uuid);
            Candidate {
                path: path.into(),
                dev: DevNum { major: 7, minor: 0 },
                sb: crate::meta::Superblock {
                    device: crate::meta::DeviceMeta {
                        uuid: meta.members[0].uuid,
                        data_offset: Sectors(2048),
                        data_size: Sectors(1 << 16),
                    },
                    array: meta,
                },
                size: Bytes(64 << 20),
            }
        };
        let cands = || vec![cand("one", 1, "/dev/loop0"), cand("three", 3, "/dev/loop5")];
        let e = select(cands(), Some("one"), true).expect_err("another array's device");
        assert_eq!(
            e.to_string(),
            format!(
                "/dev/loop5: belongs to array three ({}), not 'one'",
                uuid::Uuid::from_u128(3)
            )
        );
        // --scan: the others' devices are simply not this array's.
        let picked = select(cands(), Some("one"), false).expect("scan");
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].path, std::path::Path::new("/dev/loop0"));
    }

    #[test]
    fn socket_wait_gives_up() {
        let d = tempfile::tempdir().expect("tmp");
        let t0 = Instant::now();
        assert!(!wait_for_socket(d.path(), Duration::from_millis(300)));
        assert!(t0.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn socket_wait_sees_a_listener_appear() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().to_path_buf();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let l = control::listen(&dir).expect("listen");
            let (s, _) = l.accept().expect("accept");
            let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            std::io::BufRead::read_line(&mut r, &mut line).expect("read");
            std::io::Write::write_all(
                &mut &s,
                b"{\"reply\":\"pong\",\"version\":\"0\",\"pid\":1,\"arrays\":[]}\n",
            )
            .expect("write");
        });
        assert!(wait_for_socket(d.path(), Duration::from_secs(10)));
        t.join().expect("join");
    }
}
