//! Creating an array: [`plan`] checks everything and writes nothing;
//! [`Plan::execute`] writes.
//!
//! [`plan`] refuses a device on which [`probe::probe`] finds any signature
//! (anything libblkid knows, or mdext metadata) unless `force` is set.
//!
//! What create writes on each member, in this order:
//! 1. with `force` on a device that carries signatures, [`probe::wipe`]:
//!    libblkid erases each signature's magic where libblkid found it,
//!    wherever on the device that is (IMSM and DDF anchors at the end, ZFS
//!    labels, the GPT backup header, a LUKS2 second header, mdadm 0.90 and
//!    1.0 superblocks), as `wipefs --all` does, so that nothing (udev's
//!    blkid, mdadm's rules, a firmware RAID) finds the old metadata again;
//!    nothing else in the data area is touched;
//! 2. zeros over everything before the data (`0..data_offset`: both
//!    copies, the bitmap area, the gap);
//! 3. the initial bitmap: every chunk bit set (the first assembly resyncs
//!    from sector 0), or all zero with `assume_clean`;
//! 4. with `force`, a check that libblkid now finds nothing; otherwise the
//!    create stops before any superblock is written;
//! 5. copy 1 with events 1, then copy 0 with events 2 (the same content
//!    otherwise), so both copies are valid and the reader takes events 2;
//! 6. fdatasync.
//!
//! Steps 1-4 run on every member and are synced before any superblock is
//! written, so an interrupted create leaves either no mdext metadata or
//! metadata whose bitmap is already in place.

use crate::bitmap;
use crate::device::{Access, DevId, Device, DeviceError};
use crate::format::{self, FormatError, Layout};
use crate::md::{Checkpoint, Level};
use crate::meta::{
    ArrayMeta, BitmapInfo, BitmapMode, DeviceMeta, Geometry, MemberEntry, MemberState, Superblock,
};
use crate::probe::{self, Found, ProbeError};
use crate::units::{human, Bytes, Sectors};
use std::path::{Path, PathBuf};
use thiserror::Error;
use uuid::Uuid;

/// Default bitmap chunk (mdadm's default for large arrays).
pub const DEFAULT_BITMAP_CHUNK: Bytes = Bytes(64 << 20);
/// Default `time_base`, seconds.
pub const DEFAULT_TIME_BASE: u32 = 5;
/// Largest `time_base` create accepts, seconds.
pub const MAX_CREATE_TIME_BASE: u32 = 3600;
/// Default raid chunk for striped levels.
pub const DEFAULT_CHUNK: Bytes = Bytes(512 << 10);
/// Smallest data area per member: below this an array is pointless and
/// most likely a mistake (a wrong device name).
pub const MIN_DATA_SIZE: Bytes = Bytes(4 << 20);
/// raid1 component sizes are rounded down to this.
pub const RAID1_ROUND: Bytes = Bytes(64 << 10);

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// RAID level.
    pub level: Level,
    /// Number of slots; must equal the number of devices.
    pub raid_devices: u32,
    /// Array name.
    pub name: String,
    /// Bitmap chunk ([`DEFAULT_BITMAP_CHUNK`] when `None`).
    pub bitmap_chunk: Option<Bytes>,
    /// Raid chunk for raid10/5/6 ([`DEFAULT_CHUNK`] when `None`).
    pub chunk: Option<Bytes>,
    /// md layout ([`Level::default_layout`] when `None`); from
    /// [`parse_layout`].
    pub layout: Option<u32>,
    /// Members to flag write-mostly (raid1 only), as given among the
    /// devices.
    pub write_mostly: Vec<PathBuf>,
    /// Bitmap time base, seconds.
    pub time_base: u32,
    /// Skip the initial resync (zeroed bitmap, clean, nothing owed).
    pub assume_clean: bool,
    /// `--bitmap none` ([`BitmapMode::None`]): no write-intent bitmap at
    /// all. Otherwise [`BitmapMode::External`]: a bitmap, whose mode the
    /// first assembly picks by probing the kernel.
    pub bitmap_mode: BitmapMode,
    /// The format version to write: [`format::VERSION`]; version 1 only
    /// for tests of the conversion (`MDEXT_CREATE_VERSION=1`).
    pub version: u32,
    /// Overwrite foreign signatures.
    pub force: bool,
    /// Devices after the first `raid_devices` that are recorded as spares.
    pub spare_devices: u32,
}

impl CreateOptions {
    /// Options with the defaults for everything but level, count and name.
    pub fn new(level: Level, raid_devices: u32, name: &str) -> CreateOptions {
        CreateOptions {
            level,
            raid_devices,
            name: name.to_string(),
            bitmap_chunk: None,
            chunk: None,
            layout: None,
            write_mostly: Vec::new(),
            time_base: DEFAULT_TIME_BASE,
            assume_clean: false,
            bitmap_mode: BitmapMode::External,
            version: format::VERSION,
            force: false,
            spare_devices: 0,
        }
    }
}

/// Why a create was refused or failed.
#[derive(Debug, Error)]
pub enum CreateError {
    /// Opening or reading a device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Probing or wiping signatures failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A device carries a signature.
    #[error("{path}: carries {}; use --force to overwrite", carries(.found))]
    Signature {
        /// The device.
        path: PathBuf,
        /// What was found.
        found: Vec<Found>,
    },
    /// A signature was still found after wiping (nothing but the wipes and
    /// zeros before the data was written).
    #[error("{path}: still carries {} after wiping it; no metadata written", carries(.found))]
    NotWiped {
        /// The device.
        path: PathBuf,
        /// What is still there.
        found: Vec<Found>,
    },
    /// A device is too small.
    #[error("{path}: too small: {size} bytes, need at least {need} bytes ({})", human(Bytes(*.need)))]
    TooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The minimum.
        need: u64,
    },
    /// The same device given twice.
    #[error("{second}: same device as {first}")]
    Duplicate {
        /// First mention.
        first: PathBuf,
        /// Second mention.
        second: PathBuf,
    },
    /// Wrong number of devices.
    #[error("--raid-devices is {raid_devices}{} but {given} devices were given", if *spare_devices > 0 { format!(" and --spare-devices {spare_devices}") } else { String::new() })]
    DeviceCount {
        /// Requested slots.
        raid_devices: u32,
        /// Requested spares.
        spare_devices: u32,
        /// Devices given.
        given: usize,
    },
    /// An option out of range.
    #[error("{option} {value}: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What is required.
        reason: String,
    },
    /// A `--layout` md does not know for the level.
    #[error("--layout: {0}")]
    Layout(String),
    /// The slots given as `missing` leave the array unable to run.
    #[error("{0}")]
    Missing(String),
    /// The resulting metadata would be invalid (a bug, or absurd sizes).
    #[error("metadata: {0}")]
    Format(#[from] FormatError),
}

/// "a signature: X (...)" or "2 signatures: X (...), Y (...)".
fn carries(found: &[Found]) -> String {
    let list = found
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match found.len() {
        1 => format!("a signature: {list}"),
        n => format!("{n} signatures: {list}"),
    }
}

fn opt_err(
    option: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> CreateError {
    CreateError::Option {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The word that stands for an empty slot among create's devices, as in
/// mdadm.
pub const MISSING: &str = "missing";

/// Parse `--layout` for `level` with `raid_devices` slots
/// ([`Level::parse_layout`]).
pub fn parse_layout(level: Level, s: &str, raid_devices: u32) -> Result<u32, CreateError> {
    level
        .parse_layout(s, raid_devices)
        .map_err(CreateError::Layout)
}

/// Array names create accepts: 1-32 bytes of `[A-Za-z0-9._:-]`, not
/// starting with `-` or `.` (they end up in device names and udev
/// properties).
pub fn check_name(name: &str) -> Result<(), CreateError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if name.is_empty()
        || name.len() > crate::meta::MAX_NAME_LEN
        || !ok_chars
        || name.starts_with(['-', '.'])
    {
        return Err(opt_err(
            "--name",
            format!("{name:?}"),
            "must be 1-32 characters of A-Z a-z 0-9 . _ : - and not start with - or .",
        ));
    }
    Ok(())
}

/// One member as planned.
#[derive(Debug)]
pub struct PlannedMember {
    /// The open (exclusive) device.
    pub device: Device,
    /// Foreign signatures found (only nonempty with `force`).
    pub found: Vec<Found>,
    /// Its metadata (the events-2 copy).
    pub superblock: Superblock,
}

/// A checked create, ready to write.
#[derive(Debug)]
pub struct Plan {
    /// Members in slot order.
    pub members: Vec<PlannedMember>,
    /// Where things go.
    pub layout: Layout,
    /// The initial bitmap bytes (identical on every member).
    pub bitmap: Vec<u8>,
}

/// Check everything and build the plan. Opens every device exclusively
/// (kept open in the plan) and reads it; writes nothing.
pub fn plan<P: AsRef<Path>>(opts: &CreateOptions, devices: &[P]) -> Result<Plan, CreateError> {
    check_name(&opts.name)?;
    if devices.len() != opts.raid_devices as usize + opts.spare_devices as usize {
        return Err(CreateError::DeviceCount {
            raid_devices: opts.raid_devices,
            spare_devices: opts.spare_devices,
            given: devices.len(),
        });
    }
    if opts.raid_devices as usize + opts.spare_devices as usize > crate::meta::MAX_MEMBERS {
        return Err(opt_err(
            "--spare-devices",
            opts.spare_devices,
            format!(
                "at most {} devices in all, spares included",
                crate::meta::MAX_MEMBERS
            ),
        ));
    }
    let min = opts.level.min_create_devices();
    if opts.raid_devices < min || opts.raid_devices as usize > crate::meta::MAX_MEMBERS {
        return Err(opt_err(
            "--raid-devices",
            opts.raid_devices,
            format!(
                "{} needs {min}..={} devices",
                opts.level.as_str(),
                crate::meta::MAX_MEMBERS
            ),
        ));
    }
    let bitmap_chunk = opts.bitmap_chunk.unwrap_or(DEFAULT_BITMAP_CHUNK);
    format::check_bitmap_chunk(bitmap_chunk).map_err(|_| {
        opt_err(
            "--bitmap-chunk",
            bitmap_chunk.0,
            "must be a power of two from 512 bytes to 2 GiB",
        )
    })?;
    if opts.time_base == 0 || opts.time_base > MAX_CREATE_TIME_BASE {
        return Err(opt_err(
            "--time-base",
            opts.time_base,
            format!("must be 1..={MAX_CREATE_TIME_BASE} seconds"),
        ));
    }
    let chunk = match opts.level {
        Level::Raid1 => {
            if let Some(c) = opts.chunk {
                return Err(opt_err("--chunk", c.0, "raid1 has no chunk"));
            }
            Bytes(0)
        }
        _ => {
            let c = opts.chunk.unwrap_or(DEFAULT_CHUNK);
            if !c.0.is_power_of_two() || !(4096..=(1 << 30)).contains(&c.0) {
                return Err(opt_err(
                    "--chunk",
                    c.0,
                    "must be a power of two from 4 KiB to 1 GiB",
                ));
            }
            c
        }
    };

    let layout_code = match opts.layout {
        None => opts.level.default_layout(),
        Some(_) if opts.level == Level::Raid1 => {
            return Err(CreateError::Layout("raid1 has no layout".into()))
        }
        Some(l) => {
            let copies_ok = opts.level != Level::Raid10 || opts.level.copies(l) >= 2;
            if !copies_ok || !opts.level.layout_valid(l, opts.raid_devices) {
                return Err(CreateError::Layout(format!(
                    "{l} is not a {} layout md runs on {} devices",
                    opts.level, opts.raid_devices
                )));
            }
            l
        }
    };
    // 'missing' stands for a slot; the spares after the slots are devices.
    let slots = opts.raid_devices as usize;
    if let Some(i) = devices[slots..]
        .iter()
        .position(|p| p.as_ref().as_os_str() == MISSING)
    {
        return Err(CreateError::Missing(format!(
            "spare {i} (device {}) is '{MISSING}': 'missing' stands for a slot, a spare is a device",
            slots + i
        )));
    }
    let present: Vec<bool> = devices[..slots]
        .iter()
        .map(|p| p.as_ref().as_os_str() != MISSING)
        .collect();
    let missing: Vec<usize> = (0..present.len()).filter(|&i| !present[i]).collect();
    if !missing.is_empty() && !opts.level.can_run(layout_code, &present) {
        return Err(CreateError::Missing(format!(
            "{} {} cannot run with slot{} {} missing; give fewer 'missing'",
            opts.level,
            opts.level.layout_name(layout_code),
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // raid6 with one slot missing still has two parity blocks per stripe
    // to make consistent, and md refuses to resync a degraded array;
    // raid5 with one missing and raid6 with two have nothing to sync (the
    // missing member is computed from the others when it is added).
    let missing_parity = opts.level.has_parity() && !missing.is_empty();
    if opts.level == Level::Raid6 && missing.len() == 1 && !opts.assume_clean {
        return Err(CreateError::Missing(
            "raid6 with one slot missing would need a resync of its parity, which md does not run \
             while degraded; give two 'missing' or --assume-clean"
                .into(),
        ));
    }
    if !opts.write_mostly.is_empty() && opts.level != Level::Raid1 {
        return Err(opt_err(
            "--write-mostly",
            opts.write_mostly[0].display(),
            format!("only raid1 members can be write-mostly, not {}", opts.level),
        ));
    }

    // Open everything and reject duplicates.
    let mut opened: Vec<(PathBuf, Device)> = Vec::new();
    for p in devices.iter().filter(|p| p.as_ref().as_os_str() != MISSING) {
        let p = p.as_ref();
        let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if let Some((first, _)) = opened.iter().find(|(c, _)| *c == canon) {
            return Err(CreateError::Duplicate {
                first: first.clone(),
                second: p.to_path_buf(),
            });
        }
        let dev = Device::open(p, Access::ExclusiveWrite).map_err(|e| match e {
            // Our own exclusive open of a file given under another name
            // (hard link, bind mount) makes the second open busy.
            DeviceError::Busy(_) if is_dup_file(&opened, p) => CreateError::Duplicate {
                first: dup_of(&opened, p).unwrap_or_default(),
                second: p.to_path_buf(),
            },
            e => e.into(),
        })?;
        if let Some((first, _)) = opened.iter().find(|(_, d)| same(d.id(), dev.id())) {
            return Err(CreateError::Duplicate {
                first: first.clone(),
                second: p.to_path_buf(),
            });
        }
        opened.push((canon, dev));
    }

    // Signatures and sizes.
    let mut found_all = Vec::new();
    for (_, dev) in &opened {
        let found = probe::probe(dev)?;
        if !found.is_empty() && !opts.force {
            return Err(CreateError::Signature {
                path: dev.path().to_path_buf(),
                found,
            });
        }
        found_all.push(found);
    }
    let min_size = opened
        .iter()
        .map(|(_, d)| d.size().sectors_floor())
        .min()
        .unwrap_or(Sectors(0))
        .min(format::MAX_DEVICE_SECTORS);
    // raid10 with far copies: md uses whole chunks of each far section
    // (`calc_sectors` in raid10.c), so a multiple of chunk x far copies
    // leaves md's component size equal to the recorded one.
    let round = match opts.level {
        Level::Raid1 => RAID1_ROUND,
        Level::Raid10 => Bytes(chunk.0 * u64::from((layout_code >> 8) & 0xff).max(1)),
        _ => chunk,
    }
    .sectors_floor();
    let mut geometry = Geometry {
        level: opts.level,
        layout: layout_code,
        chunk_size: chunk,
        raid_disks: opts.raid_devices,
        // An upper bound for the layout; the real value follows.
        component_size: min_size,
    };
    let layout = format::layout_for(opts.version, &geometry, bitmap_chunk)?;
    // At least MIN_DATA_SIZE of data, and at least one whole chunk (the
    // component size is rounded down to chunks).
    let need = layout.data_offset.bytes().0 + MIN_DATA_SIZE.0.max(round.bytes().0);
    for (_, dev) in &opened {
        if dev.size().0 < need {
            return Err(CreateError::TooSmall {
                path: dev.path().to_path_buf(),
                size: dev.size().0,
                need,
            });
        }
    }
    let data_size = |d: &Device| {
        Sectors(d.size().sectors_floor().0.min(format::MAX_DEVICE_SECTORS.0) - layout.data_offset.0)
    };
    let min_data = opened
        .iter()
        .map(|(_, d)| data_size(d))
        .min()
        .unwrap_or(Sectors(0));
    geometry.component_size = Sectors(min_data.0 / round.0 * round.0);
    if geometry.component_size.0 == 0 {
        return Err(CreateError::TooSmall {
            path: opened
                .first()
                .map(|(_, d)| d.path().to_path_buf())
                .unwrap_or_default(),
            size: min_size.bytes().0,
            need,
        });
    }

    let t = crate::meta::unix_now();
    let array_uuid = Uuid::new_v4();
    let uuids: Vec<Uuid> = opened.iter().map(|_| Uuid::new_v4()).collect();
    let events = 2;
    // Slots in the order given ('missing' ones recorded missing), then the
    // spares.
    let mut next = uuids.iter();
    let mut members: Vec<MemberEntry> = present
        .iter()
        .map(|&here| match if here { next.next() } else { None } {
            Some(&uuid) => MemberEntry {
                uuid,
                state: MemberState::InSync,
                events,
            },
            None => MemberEntry {
                uuid: Uuid::nil(),
                state: MemberState::Missing,
                events,
            },
        })
        .collect();
    members.extend(next.map(|&uuid| MemberEntry {
        uuid,
        state: MemberState::Spare,
        events,
    }));
    let mut write_mostly = Vec::new();
    for w in &opts.write_mostly {
        let canon = std::fs::canonicalize(w).unwrap_or_else(|_| w.clone());
        let at = opened.iter().position(|(c, _)| *c == canon);
        match at {
            // The devices opened after the slots' are the spares.
            Some(i) if i >= present.iter().filter(|&&here| here).count() => {
                return Err(opt_err(
                    "--write-mostly",
                    w.display(),
                    "is a spare; write-mostly is for a device in a slot",
                ))
            }
            Some(i) => write_mostly.push(uuids[i]),
            None => {
                return Err(opt_err(
                    "--write-mostly",
                    w.display(),
                    "is not one of the devices given",
                ))
            }
        }
    }
    // Parity levels created with a slot missing have nothing to resync.
    let clean = opts.assume_clean || missing_parity;
    let array = ArrayMeta {
        version: opts.version,
        uuid: array_uuid,
        name: opts.name.clone(),
        ctime: t,
        utime: t,
        geometry,
        events,
        clean,
        resync: if clean {
            Checkpoint::None
        } else {
            Checkpoint::At(Sectors(0))
        },
        bitmap: BitmapInfo {
            offset: layout.bitmap_offset,
            size: layout.bitmap_size,
            chunk: bitmap_chunk,
            time_base: opts.time_base,
            events_cleared: events,
            mode: opts.bitmap_mode,
        },
        members,
        forced_start: None,
        write_mostly,
    };
    let bits = bitmap::initial(
        array.bitmap_chunks(),
        layout.bitmap_size,
        !clean && opts.bitmap_mode != BitmapMode::None,
    );
    let mut planned = Vec::new();
    for (((_, device), found), uuid) in opened.into_iter().zip(found_all).zip(uuids) {
        let superblock = Superblock {
            array: array.clone(),
            device: DeviceMeta {
                uuid,
                data_offset: layout.data_offset,
                data_size: data_size(&device),
            },
        };
        // Catch any inconsistency now, before anything is written.
        format::encode(&superblock)?;
        format::encode(&first_copy(&superblock))?;
        planned.push(PlannedMember {
            device,
            found,
            superblock,
        });
    }
    Ok(Plan {
        members: planned,
        layout,
        bitmap: bits,
    })
}

fn same(a: DevId, b: DevId) -> bool {
    a == b
}

fn is_dup_file(opened: &[(PathBuf, Device)], p: &Path) -> bool {
    dup_of(opened, p).is_some()
}

fn dup_of(opened: &[(PathBuf, Device)], p: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(p).ok()?;
    let id = if md.file_type().is_file() {
        DevId::File(md.dev(), md.ino())
    } else {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_block_device() {
            return None;
        }
        DevId::Block(md.rdev())
    };
    opened
        .iter()
        .find(|(_, d)| d.id() == id)
        .map(|(c, _)| c.clone())
}

/// The events-1 copy written first: identical but for the event counts.
fn first_copy(sb: &Superblock) -> Superblock {
    let mut s = sb.clone();
    s.array.events = 1;
    s.array.bitmap.events_cleared = 1;
    for m in &mut s.array.members {
        m.events = 1;
    }
    s
}

impl Plan {
    /// Write every member (see the module documentation) and return the
    /// superblocks written (the events-2 copies, slot order).
    pub fn execute(self) -> Result<Vec<Superblock>, CreateError> {
        for m in &self.members {
            let d = &m.device;
            if !m.found.is_empty() {
                probe::wipe(d)?;
            }
            d.zero(0, self.layout.data_offset.bytes().0)?;
            d.write_bitmap(&m.superblock.array.bitmap, &self.bitmap)?;
            if !m.found.is_empty() {
                let left = probe::probe(d)?;
                if !left.is_empty() {
                    return Err(CreateError::NotWiped {
                        path: d.path().to_path_buf(),
                        found: left,
                    });
                }
            }
        }
        for m in &self.members {
            m.device.write_superblock(&first_copy(&m.superblock))?;
            m.device.write_superblock(&m.superblock)?;
        }
        Ok(self.members.into_iter().map(|m| m.superblock).collect())
    }
}

#[cfg(test)]
mod tests;
