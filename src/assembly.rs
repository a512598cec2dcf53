//! The activation sequence: how an external-metadata array with an external
//! bitmap is put together through sysfs.
//!
//! The order is the kernel's contract (observed on 6.1 and 6.12, see
//! `man mdext(5)` and the project notes):
//! 1. `new_array` creates the md device;
//! 2. `metadata_version=external:...` **before any member** (a member added
//!    first is imported as non-persistent, and the later write fails EBUSY);
//! 3. `level`, `layout`, `chunk_size`, `raid_disks`, `component_size`;
//! 4. each member: `new_dev`, `dev-X/offset`, `dev-X/size`, `dev-X/slot`;
//! 5. `bitmap/metadata=external` **before** `bitmap/location` (EINVAL
//!    otherwise), then `bitmap/chunksize` and `bitmap/time_base` (6.12 wants
//!    both before `location`), then `bitmap/location`;
//! 6. `resync_start`;
//! 7. `array_state=readonly` starts the array; `clean` or `active` makes it
//!    writable later (the daemon does that once it manages the array).
//!
//! [`plan`] produces the steps in that order; [`execute`] runs them and, if
//! one fails, takes the half-built array apart again so nothing is left
//! behind, and reports the step that failed.

use crate::md::{ArrayState, Checkpoint, Level};
use crate::sysfs::{DevNum, MdDev, Sysfs, SysfsError};
use crate::units::{Bytes, KiB, Sectors};
use std::fmt;
use std::time::{Duration, Instant};

/// A member to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Its device number.
    pub dev: DevNum,
    /// Where its data starts (`dev-X/offset`).
    pub data_offset: Sectors,
    /// Its data size (`dev-X/size`).
    pub size: KiB,
    /// Its slot; `None` adds it as a spare.
    pub slot: Option<u32>,
    /// raid1: `dev-X/state=writemostly` before the start.
    pub write_mostly: bool,
}

/// The external bitmap's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapSpec {
    /// `bitmap/chunksize`.
    pub chunk: Bytes,
    /// `bitmap/time_base`, seconds.
    pub time_base: u32,
    /// `bitmap/location`: sectors from each member's sector 0.
    pub location: Sectors,
}

/// How to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Configure only; leave the array inactive.
    NoStart,
    /// Start read-only (`readonly`). The daemon makes it writable.
    Readonly,
}

/// Everything needed to activate an array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArraySpec {
    /// md device name (`md127`); `None` picks a free one.
    pub md_name: Option<String>,
    /// What follows `external:` in `metadata_version`.
    pub metadata_tag: String,
    /// RAID level.
    pub level: Level,
    /// md layout (written only when non-zero).
    pub layout: u32,
    /// Stripe chunk (written only when non-zero).
    pub chunk_size: Bytes,
    /// Slots.
    pub raid_disks: u32,
    /// Per-member data size used by the array.
    pub component_size: KiB,
    /// Members.
    pub members: Vec<MemberSpec>,
    /// External bitmap, if any.
    pub bitmap: Option<BitmapSpec>,
    /// The kernel-managed bitmap at sector 8 (bitmap mode `kernel`): the
    /// `SET_ARRAY_INFO` ioctl before `metadata_version`, then after the
    /// readonly start: writes fenced, `clean`, `bitmap/location +8`. The
    /// caller re-arms, returns the array to `readonly` for `assemble
    /// --readonly`, and lifts the fence. Only with `bitmap` `None`.
    pub kernel_bitmap: bool,
    /// `resync_start`.
    pub resync_start: Checkpoint,
    /// Whether to start.
    pub start: StartMode,
}

/// One sysfs write of the sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `new_array`.
    NewArray,
    /// `metadata_version=external:TAG`.
    MetadataVersion(String),
    /// `level`.
    Level(Level),
    /// `layout`.
    Layout(u32),
    /// `chunk_size`.
    ChunkSize(Bytes),
    /// `raid_disks`.
    RaidDisks(u32),
    /// `component_size`.
    ComponentSize(KiB),
    /// `new_dev`.
    NewDev(DevNum),
    /// `dev-X/offset`.
    Offset(DevNum, Sectors),
    /// `dev-X/size`.
    Size(DevNum, KiB),
    /// `dev-X/slot`.
    Slot(DevNum, u32),
    /// `dev-X/state=writemostly`.
    WriteMostly(DevNum),
    /// `bitmap/metadata=external`.
    BitmapExternal,
    /// `bitmap/chunksize`.
    BitmapChunk(Bytes),
    /// `bitmap/time_base`.
    BitmapTimeBase(u32),
    /// `bitmap/location`.
    BitmapLocation(Sectors),
    /// `resync_start`.
    ResyncStart(Checkpoint),
    /// `array_state`.
    ArrayState(ArrayState),
    /// The `SET_ARRAY_INFO` ioctl (level, raid_disks, chunk, layout),
    /// before `metadata_version`: md's default bitmap offset 8.
    SetArrayInfo(Level, u32, Bytes, u32),
    /// `suspend_lo=0`, `suspend_hi=<array sectors>`: every write waits.
    FenceWrites,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::NewArray => write!(f, "new_array"),
            Step::MetadataVersion(t) => write!(f, "metadata_version=external:{t}"),
            Step::Level(l) => write!(f, "level={l}"),
            Step::Layout(l) => write!(f, "layout={l}"),
            Step::ChunkSize(c) => write!(f, "chunk_size={}", c.0),
            Step::RaidDisks(n) => write!(f, "raid_disks={n}"),
            Step::ComponentSize(k) => write!(f, "component_size={}", k.0),
            Step::NewDev(d) => write!(f, "new_dev={d}"),
            Step::Offset(d, s) => write!(f, "dev({d})/offset={}", s.0),
            Step::Size(d, k) => write!(f, "dev({d})/size={}", k.0),
            Step::Slot(d, s) => write!(f, "dev({d})/slot={s}"),
            Step::WriteMostly(d) => write!(f, "dev({d})/state=writemostly"),
            Step::BitmapExternal => write!(f, "bitmap/metadata=external"),
            Step::BitmapChunk(c) => write!(f, "bitmap/chunksize={}", c.0),
            Step::BitmapTimeBase(t) => write!(f, "bitmap/time_base={t}"),
            Step::BitmapLocation(s) => write!(f, "bitmap/location=+{}", s.0),
            Step::ResyncStart(c) => write!(f, "resync_start={c}"),
            Step::ArrayState(s) => write!(f, "array_state={s}"),
            Step::SetArrayInfo(l, n, c, lay) => write!(
                f,
                "ioctl SET_ARRAY_INFO(level {l}, raid_disks {n}, chunk {}, layout {lay})",
                c.0
            ),
            Step::FenceWrites => write!(f, "suspend_lo=0 suspend_hi=<array size>"),
        }
    }
}

/// Activation errors.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// The spec is inconsistent; nothing was written.
    #[error("invalid array: {0}")]
    Spec(String),
    /// A start md would refuse (or that would lose data), refused before
    /// anything was written; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// No free md device name.
    #[error("no free md device name (md0..md127 all exist)")]
    NoFreeName,
    /// A step failed; the half-built array was taken apart.
    #[error("{md}: step '{step}' failed: {cause}{}", rollback.as_ref().map(|r| format!("; rollback also failed: {r}")).unwrap_or_default())]
    Step {
        /// The md device.
        md: String,
        /// The step.
        step: Step,
        /// The kernel's answer.
        cause: Box<SysfsError>,
        /// A failure while taking the array apart, if any.
        rollback: Option<String>,
    },
    /// A sysfs failure outside the step list (e.g. while stopping).
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// The md device did not go away after stopping.
    #[error("{0}: still present {1:?} after stopping")]
    StillPresent(String, Duration),
}

/// Check the spec and produce the steps in the kernel's order.
pub fn plan(spec: &ArraySpec) -> Result<Vec<Step>, AssemblyError> {
    if spec.raid_disks == 0 {
        return Err(AssemblyError::Spec("raid_disks is 0".into()));
    }
    if spec.members.is_empty() {
        return Err(AssemblyError::Spec("no members".into()));
    }
    if spec.component_size.0 == 0 {
        return Err(AssemblyError::Spec("component size is 0".into()));
    }
    for (i, m) in spec.members.iter().enumerate() {
        if spec.members[..i].iter().any(|o| o.dev == m.dev) {
            return Err(AssemblyError::Spec(format!("device {} given twice", m.dev)));
        }
        if let Some(s) = m.slot {
            if s >= spec.raid_disks {
                return Err(AssemblyError::Spec(format!(
                    "device {} has slot {s}, but the array has {} slots",
                    m.dev, spec.raid_disks
                )));
            }
            if spec.members[..i].iter().any(|o| o.slot == Some(s)) {
                return Err(AssemblyError::Spec(format!("two devices for slot {s}")));
            }
        }
        if m.size.0 < spec.component_size.0 {
            return Err(AssemblyError::Spec(format!(
                "device {} has {} of data, less than the component size {}",
                m.dev, m.size, spec.component_size
            )));
        }
        if let Some(b) = &spec.bitmap {
            // The kernel accepts a bitmap that overlaps the data and then
            // silently writes no bits: check it here.
            // md sizes the bitmap from the array size on raid10.
            let span = crate::meta::Geometry {
                level: spec.level,
                layout: spec.layout,
                chunk_size: spec.chunk_size,
                raid_disks: spec.raid_disks,
                component_size: spec.component_size.sectors(),
            }
            .bitmap_span();
            let chunks = crate::meta::bitmap_chunks(span, b.chunk);
            let end = b.location.bytes().0 + chunks.div_ceil(8);
            if end > m.data_offset.bytes().0 {
                return Err(AssemblyError::Spec(format!(
                    "bitmap at sector {} ({} bytes of bits) runs into the data of {} at sector {}",
                    b.location.0,
                    chunks.div_ceil(8),
                    m.dev,
                    m.data_offset.0
                )));
            }
        }
    }
    if let Some(b) = &spec.bitmap {
        if b.chunk.0 < 512 || !b.chunk.0.is_power_of_two() {
            return Err(AssemblyError::Spec(format!(
                "bitmap chunk {} is not a power of two of at least 512 bytes",
                b.chunk.0
            )));
        }
        if b.location.0 == 0 {
            return Err(AssemblyError::Spec("bitmap location 0".into()));
        }
    }
    if spec.kernel_bitmap && spec.bitmap.is_some() {
        return Err(AssemblyError::Spec(
            "both an external and a kernel-managed bitmap".into(),
        ));
    }
    let mut v = vec![Step::NewArray];
    if spec.kernel_bitmap {
        v.push(Step::SetArrayInfo(
            spec.level,
            spec.raid_disks,
            spec.chunk_size,
            spec.layout,
        ));
    }
    v.push(Step::MetadataVersion(spec.metadata_tag.clone()));
    v.push(Step::Level(spec.level));
    if spec.layout != 0 {
        v.push(Step::Layout(spec.layout));
    }
    if spec.chunk_size.0 != 0 {
        v.push(Step::ChunkSize(spec.chunk_size));
    }
    v.push(Step::RaidDisks(spec.raid_disks));
    v.push(Step::ComponentSize(spec.component_size));
    for m in &spec.members {
        v.push(Step::NewDev(m.dev));
        v.push(Step::Offset(m.dev, m.data_offset));
        v.push(Step::Size(m.dev, m.size));
        if let Some(s) = m.slot {
            v.push(Step::Slot(m.dev, s));
        }
        if m.write_mostly {
            v.push(Step::WriteMostly(m.dev));
        }
    }
    if let Some(b) = &spec.bitmap {
        v.push(Step::BitmapExternal);
        v.push(Step::BitmapChunk(b.chunk));
        v.push(Step::BitmapTimeBase(b.time_base));
        v.push(Step::BitmapLocation(b.location));
    }
    v.push(Step::ResyncStart(spec.resync_start));
    if spec.start == StartMode::Readonly {
        v.push(Step::ArrayState(ArrayState::Readonly));
        if spec.kernel_bitmap {
            // Never `active` before the bitmap is attached: a write held
            // in write-pending while `location` is written hangs it.
            v.push(Step::FenceWrites);
            v.push(Step::ArrayState(ArrayState::Clean));
            v.push(Step::BitmapLocation(crate::format::KERNEL_BITMAP_SECTOR));
        }
    }
    Ok(v)
}

fn run_step(sysfs: &Sysfs, md: &MdDev, step: &Step) -> Result<(), SysfsError> {
    let member = |d: &DevNum| sysfs.block_name(*d);
    match step {
        Step::NewArray => sysfs.new_array(md.name()).map(|_| ()),
        Step::MetadataVersion(t) => md.set_external_metadata(t),
        Step::Level(l) => md.set_level(*l),
        Step::Layout(l) => md.set_layout(*l),
        Step::ChunkSize(c) => md.set_chunk_size(*c),
        Step::RaidDisks(n) => md.set_raid_disks(*n),
        Step::ComponentSize(k) => md.set_component_size(*k),
        Step::NewDev(d) => md.add_member(*d).map(|_| ()),
        Step::Offset(d, s) => md.member(&member(d)?).set_offset(*s),
        Step::Size(d, k) => md.member(&member(d)?).set_size(*k),
        Step::Slot(d, s) => md.member(&member(d)?).set_slot(Some(*s)),
        Step::WriteMostly(d) => md
            .member(&member(d)?)
            .command(crate::md::MemberCommand::WriteMostly),
        Step::BitmapExternal if !md.has_attr("bitmap/metadata") => Err(SysfsError::Invalid {
            attr: "bitmap/metadata".into(),
            value: "external".into(),
            why: "this kernel offers no bitmap/metadata before the array starts (md from 6.18 on, \
                  upstream fb8cc3b0d9db): it cannot attach an external bitmap to an external-metadata \
                  array, and mdext does not run arrays without the bitmap their metadata promises"
                .into(),
        }),
        Step::BitmapExternal => md.set_bitmap_external(),
        Step::BitmapChunk(c) => md.set_bitmap_chunksize(*c),
        Step::BitmapTimeBase(t) => md.set_bitmap_time_base(*t),
        Step::BitmapLocation(s) => md.set_bitmap_location(*s),
        Step::ResyncStart(c) => md.set_resync_start(*c),
        Step::ArrayState(s) => md.set_array_state(*s),
        Step::SetArrayInfo(l, n, c, lay) => md.set_array_info(l.number(), *n, *c, *lay),
        Step::FenceWrites => md.fence_all(),
    }
}

/// Run the steps against `sysfs` on md device `md_name` (or a free one).
/// On failure the array is stopped and cleared, so no half-built array is
/// left, and the error names the failing step and the kernel's errno.
pub fn execute(
    sysfs: &Sysfs,
    md_name: Option<&str>,
    steps: &[Step],
) -> Result<MdDev, AssemblyError> {
    let name = match md_name {
        Some(n) => n.to_string(),
        None => sysfs.free_md_name().ok_or(AssemblyError::NoFreeName)?,
    };
    execute_on(sysfs, sysfs.md(&name), steps, false)
}

/// [`execute`] on `md`; `created`: the caller already created it with
/// `new_array` (and `steps` do not), so a failure takes it apart too.
pub fn execute_on(
    sysfs: &Sysfs,
    md: MdDev,
    steps: &[Step],
    created: bool,
) -> Result<MdDev, AssemblyError> {
    let name = md.name().to_string();
    let mut created = created;
    for step in steps {
        if let Err(cause) = run_step(sysfs, &md, step) {
            let rollback = if created || *step != Step::NewArray {
                teardown(sysfs, &md).err().map(|e| e.to_string())
            } else {
                None
            };
            return Err(AssemblyError::Step {
                md: name,
                step: step.clone(),
                cause: Box::new(cause),
                rollback,
            });
        }
        if *step == Step::NewArray {
            created = true;
        }
    }
    Ok(md)
}

/// Build and (per `spec.start`) start an array: [`plan`] then [`execute`].
pub fn activate(sysfs: &Sysfs, spec: &ArraySpec) -> Result<MdDev, AssemblyError> {
    let steps = plan(spec)?;
    execute(sysfs, spec.md_name.as_deref(), &steps)
}

/// Take an array apart: `inactive` (stops it) then `clear`, and wait for the
/// md device to disappear from sysfs.
pub fn teardown(sysfs: &Sysfs, md: &MdDev) -> Result<(), AssemblyError> {
    if !sysfs.md_exists(md.name()) {
        return Ok(());
    }
    let state = md.array_state().ok();
    if state.is_some_and(|s| s.is_running()) {
        md.set_array_state(ArrayState::Inactive)?;
    }
    if state != Some(ArrayState::Clear) {
        md.set_array_state(ArrayState::Clear)?;
    }
    wait_gone(sysfs, md.name(), Duration::from_secs(5))
}

fn wait_gone(sysfs: &Sysfs, name: &str, limit: Duration) -> Result<(), AssemblyError> {
    let t0 = Instant::now();
    // The kernel deletes the gendisk asynchronously after the last close
    // (the md/ directory goes first, the block device after it); there is
    // no notification for it, so check a few times.
    let dev = sysfs.root().join("block").join(name);
    while dev.exists() {
        if t0.elapsed() > limit {
            return Err(AssemblyError::StillPresent(name.to_string(), limit));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ArraySpec {
        ArraySpec {
            md_name: Some("md127".into()),
            metadata_tag: "mdext:test".into(),
            level: Level::Raid1,
            layout: 0,
            chunk_size: Bytes(0),
            raid_disks: 2,
            component_size: KiB(62 * 1024),
            members: vec![
                MemberSpec {
                    dev: DevNum { major: 7, minor: 0 },
                    data_offset: Sectors(2048),
                    size: KiB(63 * 1024),
                    slot: Some(0),
                    write_mostly: false,
                },
                MemberSpec {
                    dev: DevNum { major: 7, minor: 1 },
                    data_offset: Sectors(2048),
                    size: KiB(63 * 1024),
                    slot: Some(1),
                    write_mostly: false,
                },
            ],
            bitmap: Some(BitmapSpec {
                chunk: Bytes(65536),
                time_base: 5,
                location: Sectors(16),
            }),
            kernel_bitmap: false,
            resync_start: Checkpoint::None,
            start: StartMode::Readonly,
        }
    }

    fn pos(v: &[Step], f: impl Fn(&Step) -> bool) -> usize {
        v.iter().position(f).expect("step present")
    }

    /// Device `me` of a 2-member raid1 whose own copy is at `events` and
    /// records the members in `states`.
    fn sb(events: u64, me: u8, states: [crate::meta::MemberState; 2]) -> Candidate {
        use crate::meta::*;
        let mut array = test_raid1(2, Sectors(1 << 17), Bytes(65536), events);
        array.bitmap.offset = Sectors(16);
        array.bitmap.events_cleared = 1;
        for (e, s) in array.members.iter_mut().zip(states) {
            e.state = s;
        }
        let device = DeviceMeta {
            uuid: array.members[me as usize].uuid,
            data_offset: Sectors(2048),
            data_size: Sectors(1 << 17),
        };
        Candidate {
            path: format!("/dev/loop{me}").into(),
            dev: DevNum {
                major: 7,
                minor: me as u32,
            },
            sb: Superblock { array, device },
            size: Bytes((2048 + (1 << 17)) * 512),
        }
    }

    #[test]
    fn choose_uses_newest_and_leaves_stale_out() {
        use crate::meta::MemberState::*;
        // Both current and in sync.
        let c = choose(
            vec![sb(5, 0, [InSync, InSync]), sb(5, 1, [InSync, InSync])],
            false,
        )
        .expect("choose");
        assert_eq!(c.members.len(), 2);
        assert!(!c.degraded());
        assert_eq!(c.resync_start(), Checkpoint::None);
        // Member 1 failed at event 7 and stayed behind at event 6: left out,
        // and the array needs --run.
        let found = || vec![sb(6, 1, [InSync, InSync]), sb(7, 0, [InSync, Failed])];
        let e = choose(found(), false).expect_err("degraded without --run");
        assert!(e.to_string().contains("--run"), "{e}");
        let c = choose(found(), true).expect("run degraded");
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.members[0].0, 0);
        assert_eq!(c.missing_slots, vec![1]);
        assert!(c.left_out[0].reason.contains("stale"), "{:?}", c.left_out);
        // A member one event behind but recorded in sync by the newest copy
        // (a crash between member writes) is used.
        let c = choose(
            vec![sb(8, 0, [InSync, InSync]), sb(7, 1, [InSync, InSync])],
            false,
        )
        .expect("choose");
        assert_eq!(c.members.len(), 2);
        // Two events behind, and behind the array's last whole record
        // (events_cleared 8), yet recorded in sync by the newest copy: a
        // stale copy of the member put back in its place (it missed
        // records, and data whose bits md may have cleared). Left out; the
        // array needs --run.
        let found = || {
            let mut a = sb(9, 0, [InSync, InSync]);
            a.sb.array.bitmap.events_cleared = 8;
            vec![a, sb(7, 1, [InSync, InSync])]
        };
        let e = choose(found(), false).expect_err("a stale copy used as in sync");
        assert!(e.to_string().contains("--run"), "{e}");
        let c = choose(found(), true).expect("run degraded");
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.missing_slots, vec![1]);
        assert!(
            c.left_out[0].reason.contains("stale") && c.left_out[0].reason.contains("event 7"),
            "{:?}",
            c.left_out
        );
        // Two behind but not behind events_cleared (1 here): a member that
        // never left (a record that skipped an event); used.
        let c = choose(
            vec![sb(9, 0, [InSync, InSync]), sb(7, 1, [InSync, InSync])],
            false,
        )
        .expect("choose");
        assert_eq!(c.members.len(), 2);
    }

    #[test]
    fn a_member_recorded_rebuilding_is_resumed_not_missing() {
        use crate::meta::{MemberState::*, RebuildKind};
        let rebuilding = Rebuilding {
            kind: RebuildKind::Full,
            checkpoint: Sectors(4096),
        };
        // The newest record (member 0's) shows member 1 rebuilding.
        let c = choose(
            vec![
                sb(9, 0, [InSync, rebuilding]),
                sb(8, 1, [InSync, rebuilding]),
            ],
            false,
        )
        .expect("no --run needed to resume a rebuild");
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.missing_slots, vec![1]);
        assert!(c.degraded(), "started without it");
        assert_eq!(c.resume.len(), 1);
        assert_eq!(c.resume[0].0, 1);
        // Without the rebuilding device it is a plain degraded start.
        let e = choose(vec![sb(9, 0, [InSync, rebuilding])], false).expect_err("needs --run");
        assert!(e.to_string().contains("--run"), "{e}");
    }

    #[test]
    fn a_device_smaller_than_its_data_area_is_left_out() {
        use crate::meta::MemberState::*;
        // Recorded: data offset 2048 + data size 131072 sectors.
        let mut small = sb(5, 1, [InSync, InSync]);
        small.size = Bytes((2048 + (1 << 17) - 8) * 512);
        let why = device_too_small(&small.sb.device, small.size).expect("too small");
        assert!(
            why.contains("133112 sectors") && why.contains("133120"),
            "{why}"
        );
        assert_eq!(
            device_too_small(&small.sb.device, Bytes(133_120 * 512)),
            None
        );
        assert!(device_too_small(&small.sb.device, Bytes(0)).is_some());
        // Without --run the start is degraded and refused, naming why.
        let found = || vec![sb(5, 0, [InSync, InSync]), small.clone()];
        let e = choose(found(), false).expect_err("degraded");
        let m = e.to_string();
        assert!(
            m.contains("--run") && m.contains("/dev/loop1: the device is"),
            "{m}"
        );
        assert_eq!(m.lines().count(), 1);
        let c = choose(found(), true).expect("--run");
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.members[0].0, 0);
        assert_eq!(c.missing_slots, vec![1]);
        assert_eq!(c.left_out.len(), 1);
        assert!(
            c.left_out[0].reason.contains("smaller than"),
            "{:?}",
            c.left_out
        );
        // A shrunk device recorded rebuilding is not resumed either.
        let rebuilding = Rebuilding {
            kind: crate::meta::RebuildKind::Bitmap,
            checkpoint: Sectors(0),
        };
        let mut r = sb(6, 1, [InSync, rebuilding]);
        r.size = Bytes(4096);
        let c = choose(vec![sb(6, 0, [InSync, rebuilding]), r], true).expect("--run");
        assert!(c.resume.is_empty() && c.left_out.len() == 1);
    }

    /// Two members of a 3-disk parity array; slot 2 missing.
    fn parity(level: Level, clean: bool, resync: Checkpoint) -> Vec<Candidate> {
        use crate::meta::{MemberEntry, MemberState::*};
        (0..2u8)
            .map(|me| {
                let mut c = sb(9, me, [InSync, InSync]);
                let a = &mut c.sb.array;
                a.geometry.level = level;
                a.geometry.layout = level.default_layout();
                a.geometry.chunk_size = Bytes(65536);
                a.geometry.raid_disks = 3;
                a.members.push(MemberEntry {
                    uuid: uuid::Uuid::from_u128(0x1002),
                    state: Failed,
                    events: 8,
                });
                a.clean = clean;
                a.resync = resync;
                c
            })
            .collect()
    }

    #[test]
    fn dirty_degraded_parity_needs_force() {
        use crate::meta::MemberState::*;
        for level in [Level::Raid5, Level::Raid6] {
            let c = choose(parity(level, false, Checkpoint::At(Sectors(0))), true).expect("choose");
            assert!(c.dirty_degraded_parity());
            // Refused before the kernel, one line, naming why and the way.
            let e = c.forced_start(false).expect_err("refused");
            let m = e.to_string();
            for want in [
                "dirty",
                "degraded",
                "write hole",
                "--force",
                "[2]",
                "event 9",
            ] {
                assert!(m.contains(want), "{want}: {m}");
            }
            assert_eq!(m.lines().count(), 1);
            // --force: clean, nothing owed, one event on, marked.
            let r = c.forced_start(true).expect("forced").expect("a record");
            assert_eq!(r.events, 10);
            assert!(r.clean);
            assert_eq!(r.resync, Checkpoint::None);
            assert_eq!(r.forced_start, Some(10));
            assert_eq!(r.members, c.meta.members);
            let mut c2 = c.clone();
            c2.meta = r;
            assert!(!c2.dirty_degraded_parity());
            assert_eq!(
                c2.spec(None, StartMode::Readonly, None, c2.meta.bitmap.mode)
                    .expect("spec")
                    .resync_start,
                Checkpoint::None
            );
            // An interrupted resync on a clean record counts too.
            let c =
                choose(parity(level, true, Checkpoint::At(Sectors(4096))), true).expect("choose");
            let m = c.forced_start(false).expect_err("refused").to_string();
            assert!(m.contains("interrupted at sector 4096"), "{m}");
            // Clean and degraded: nothing to decide.
            let c = choose(parity(level, true, Checkpoint::None), true).expect("choose");
            assert!(c.forced_start(false).expect("plain").is_none());
        }
        // raid1/raid10 start dirty and degraded without help (md resyncs
        // what it can); so does a complete dirty parity array.
        let mut a = sb(5, 0, [InSync, InSync]);
        a.sb.array.clean = false;
        let c = choose(vec![a], true).expect("choose");
        assert!(c.degraded() && !c.dirty_degraded_parity());
        assert!(c.forced_start(false).expect("raid1").is_none());
    }

    #[test]
    fn resync_start_follows_the_metadata() {
        use crate::meta::MemberState::*;
        let mut a = sb(5, 0, [InSync, InSync]);
        a.sb.array.clean = false;
        let mut b = sb(5, 1, [InSync, InSync]);
        b.sb.array.clean = false;
        let c2 = choose(vec![a.clone(), b], false).expect("choose");
        assert_eq!(c2.resync_start(), Checkpoint::At(Sectors(0)));
        a.sb.array.resync = Checkpoint::At(Sectors(4096));
        let c3 = choose(vec![a], true).expect("choose");
        assert_eq!(c3.resync_start(), Checkpoint::At(Sectors(4096)));
        let spec = c3
            .spec(
                None,
                StartMode::Readonly,
                Some(3600),
                crate::meta::BitmapMode::External,
            )
            .expect("spec");
        assert_eq!(spec.bitmap.map(|b| b.time_base), Some(3600));
        assert_eq!(spec.resync_start, Checkpoint::At(Sectors(4096)));
        assert!(plan(&spec).is_ok());
    }

    /// A clean mirror's writes leave its record clean
    /// (`monitor::dirty_may_trail`): set bits make its start unclean; not
    /// a parity level's, whose dirty record is durable first.
    #[test]
    fn a_clean_mirror_with_bits_set_owes_a_resync() {
        use crate::meta::MemberState::*;
        let a = sb(5, 0, [InSync, InSync]);
        let b = sb(5, 1, [InSync, InSync]);
        let mut c = choose(vec![a.clone(), b.clone()], false).expect("choose");
        assert_eq!(c.resync_start(), Checkpoint::None);
        c.bits_set = true;
        assert_eq!(c.resync_start(), Checkpoint::At(Sectors(0)));
        let spec = c
            .spec(
                None,
                StartMode::Readonly,
                None,
                crate::meta::BitmapMode::External,
            )
            .expect("spec");
        assert_eq!(spec.resync_start, Checkpoint::At(Sectors(0)));
        let (mut a5, mut b5) = (a, b);
        for x in [&mut a5, &mut b5] {
            x.sb.array.geometry.level = Level::Raid5;
        }
        let mut c5 = choose(vec![a5.clone(), b5], false).expect("choose");
        c5.bits_set = true;
        assert_eq!(
            c5.resync_start(),
            Checkpoint::None,
            "raid5: the record says"
        );
        // Started degraded, a raid5 with bits kept is not refused as dirty.
        let mut d5 = choose(vec![a5], true).expect("choose");
        d5.bits_set = true;
        assert!(!d5.dirty_degraded_parity());
    }

    #[test]
    fn order_is_the_kernels() {
        let v = plan(&spec()).expect("plan");
        assert_eq!(v[0], Step::NewArray);
        let meta = pos(&v, |s| matches!(s, Step::MetadataVersion(_)));
        let first_dev = pos(&v, |s| matches!(s, Step::NewDev(_)));
        let bm = pos(&v, |s| *s == Step::BitmapExternal);
        let chunk = pos(&v, |s| matches!(s, Step::BitmapChunk(_)));
        let tb = pos(&v, |s| matches!(s, Step::BitmapTimeBase(_)));
        let loc = pos(&v, |s| matches!(s, Step::BitmapLocation(_)));
        let rs = pos(&v, |s| matches!(s, Step::ResyncStart(_)));
        let start = pos(&v, |s| matches!(s, Step::ArrayState(_)));
        assert!(meta < first_dev);
        assert!(bm < chunk && chunk < loc && tb < loc);
        assert!(loc < rs && rs < start);
        assert_eq!(start, v.len() - 1);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.members[1].slot = Some(0);
        assert!(plan(&s).unwrap_err().to_string().contains("slot 0"));
        let mut s = spec();
        s.members[1].dev = s.members[0].dev;
        assert!(plan(&s).unwrap_err().to_string().contains("twice"));
        let mut s = spec();
        s.bitmap = Some(BitmapSpec {
            chunk: Bytes(4096),
            time_base: 5,
            location: Sectors(2046),
        });
        assert!(plan(&s)
            .unwrap_err()
            .to_string()
            .contains("runs into the data"));
        // raid10 n2 on 2 devices of 62 MiB: 62 MiB of array, 3968 bits of
        // 16 KiB = 496 bytes, which the 512 bytes of sector 2047 hold; n2
        // on 4 devices has twice the array and 992 bytes of bits.
        let mut s = spec();
        s.level = Level::Raid10;
        s.layout = 0x102;
        s.chunk_size = Bytes(65536);
        s.bitmap = Some(BitmapSpec {
            chunk: Bytes(16384),
            time_base: 5,
            location: Sectors(2047),
        });
        assert!(plan(&s).is_ok());
        s.raid_disks = 4;
        s.members[1].slot = Some(3);
        assert!(plan(&s)
            .unwrap_err()
            .to_string()
            .contains("runs into the data"));
        let mut s = spec();
        s.members[0].size = KiB(1);
        assert!(plan(&s).is_err());
        let mut s = spec();
        s.members[0].slot = Some(2);
        assert!(plan(&s).is_err());
    }
}

/// A device found with mdext metadata, as read by the caller.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Its path.
    pub path: std::path::PathBuf,
    /// Its device number.
    pub dev: DevNum,
    /// Its newest valid metadata.
    pub sb: crate::meta::Superblock,
    /// The device's size, read when its metadata was.
    pub size: Bytes,
}

/// Why a device cannot hold the data area its own metadata records, if it
/// cannot: it is smaller than `data_offset + data_size` (the device shrank,
/// e.g. a truncated image under a loop device). md does not check: it would
/// run the array with the device in sync and fail it at the first access
/// past its end.
pub fn device_too_small(device: &crate::meta::DeviceMeta, size: Bytes) -> Option<String> {
    let end = device.data_offset.0.saturating_add(device.data_size.0);
    let have = size.0 / 512;
    (have < end).then(|| {
        format!(
            "the device is {have} sectors ({}), smaller than the data area its metadata records (data offset {} + data size {} = {end} sectors): it shrank or was truncated",
            crate::units::human(size),
            device.data_offset.0,
            device.data_size.0
        )
    })
}

/// Why a candidate is not used.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LeftOut {
    /// The device.
    pub path: std::path::PathBuf,
    /// Why.
    pub reason: String,
}

/// The outcome of [`choose`]: what to activate and what was left out.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The newest metadata (the array's truth).
    pub meta: crate::meta::ArrayMeta,
    /// Members to add, with their table index (slot) and metadata.
    pub members: Vec<(usize, Candidate)>,
    /// Devices not used, and why.
    pub left_out: Vec<LeftOut>,
    /// Slots with no usable member.
    pub missing_slots: Vec<u32>,
    /// Devices the newest record shows being rebuilt into a slot (a crash
    /// or stop came mid-rebuild): the array starts without them and they are
    /// handed to mdextmon to be re-added, which decides bitmap or full
    /// rebuild from their own record.
    pub resume: Vec<(usize, Candidate)>,
    /// Devices the newest record lists as spares: the array starts without
    /// them and they are handed to mdextmon as spares.
    pub spares: Vec<(usize, Candidate)>,
    /// Whether the present members' bitmaps have any chunk's bit set (read
    /// by the caller where [`Choice::resync_start`] needs it; `false`
    /// from [`choose`]).
    pub bits_set: bool,
}

impl Choice {
    /// Whether the array runs degraded.
    pub fn degraded(&self) -> bool {
        !self.missing_slots.is_empty()
    }

    /// Whether md would refuse this start: a parity level started degraded
    /// with a resync owed (the record is dirty, or a resync was
    /// interrupted). md's raid5 personality refuses it ("cannot start dirty
    /// degraded array"): stripes written at the crash may hold data and
    /// parity that disagree (the write hole), and with a member missing the
    /// data computed from such a stripe is silently wrong.
    pub fn dirty_degraded_parity(&self) -> bool {
        self.meta.geometry.level.has_parity()
            && self.degraded()
            && self.resync_start() != Checkpoint::None
    }

    /// Decide a start md would refuse ([`Choice::dirty_degraded_parity`]),
    /// before anything touches the kernel. Without `force`: a one-line
    /// refusal that says why and what to do. With `force`, what
    /// `mdadm --assemble --force` does: the record to write on the present
    /// members before the start, clean with no resync owed (md then starts
    /// the array), one event on, and marked force-started at that event.
    /// The stripes of the dirty chunks keep whatever parity they have; the
    /// bitmap keeps those chunks, so the missing member's later rebuild
    /// covers them. `None`: nothing to decide.
    pub fn forced_start(
        &self,
        force: bool,
    ) -> Result<Option<crate::meta::ArrayMeta>, AssemblyError> {
        if !self.dirty_degraded_parity() {
            return Ok(None);
        }
        let m = &self.meta;
        if !force {
            let owed = match (m.clean, m.resync) {
                (false, _) => format!(
                    "its metadata is dirty (not shut down cleanly; event {})",
                    m.events
                ),
                (true, Checkpoint::At(s)) => {
                    format!("a resync was interrupted at sector {}", s.0)
                }
                (true, Checkpoint::None) => "a resync is owed".to_string(),
            };
            return Err(AssemblyError::Refused(format!(
                "array '{}' ({}) cannot start dirty and degraded: {owed} and slots {:?} are missing. \
                 Stripes being written at the crash may hold data and parity that disagree (the {} write hole); \
                 with a member missing, md would compute that member's blocks in those stripes from stale parity and return wrong data without an error, \
                 and a rebuild would write it. md refuses such a start and nothing was changed. \
                 To start it anyway, accepting that risk for the stripes of the chunks dirty in the bitmap, \
                 use --run --force (recorded in the metadata; the bitmap keeps those chunks for the missing member's rebuild)",
                m.name,
                m.geometry.level,
                self.missing_slots,
                m.geometry.level
            )));
        }
        let mut r = m.clone();
        r.events = m.events + 1;
        r.clean = true;
        r.resync = Checkpoint::None;
        r.forced_start = Some(r.events);
        Ok(Some(r))
    }

    /// `resync_start` for the activation: `none` when the array was clean;
    /// the recorded checkpoint after an interrupted resync; 0 after an
    /// unclean shutdown (the bitmap then limits the resync to dirty chunks).
    /// A clean record of an array whose writes leave it clean
    /// ([`crate::monitor::dirty_may_trail`]) is unclean when bits are set
    /// ([`Choice::bits_set`]): the power may have been cut during a write.
    pub fn resync_start(&self) -> Checkpoint {
        match (self.meta.clean, self.meta.resync) {
            (_, Checkpoint::At(s)) => Checkpoint::At(s),
            (true, Checkpoint::None)
                if self.bits_set && crate::monitor::dirty_may_trail(&self.meta) =>
            {
                Checkpoint::At(Sectors(0))
            }
            (true, Checkpoint::None) => Checkpoint::None,
            (false, Checkpoint::None) => Checkpoint::At(Sectors(0)),
        }
    }

    /// The activation spec.
    pub fn spec(
        &self,
        md_name: Option<String>,
        start: StartMode,
        time_base: Option<u32>,
        mode: crate::meta::BitmapMode,
    ) -> Result<ArraySpec, AssemblyError> {
        let g = &self.meta.geometry;
        let members = self
            .members
            .iter()
            .map(|(slot, c)| {
                let s = u32::try_from(*slot)
                    .map_err(|_| AssemblyError::Spec(format!("slot {slot} out of range")))?;
                Ok(MemberSpec {
                    dev: c.dev,
                    data_offset: c.sb.device.data_offset,
                    size: c.sb.device.data_size.kib_floor(),
                    slot: Some(s),
                    write_mostly: self.meta.is_write_mostly(&c.sb.device.uuid),
                })
            })
            .collect::<Result<_, AssemblyError>>()?;
        Ok(ArraySpec {
            md_name,
            metadata_tag: crate::meta::kernel_tag(&self.meta.uuid),
            level: g.level,
            layout: g.layout,
            chunk_size: g.chunk_size,
            raid_disks: g.raid_disks,
            component_size: g.component_size.kib_floor(),
            members,
            // `--bitmap none`: no bitmap, and resync_start 0 after a crash
            // covers the whole array.
            bitmap: (mode == crate::meta::BitmapMode::External).then(|| BitmapSpec {
                chunk: self.meta.bitmap.chunk,
                time_base: time_base.unwrap_or(self.meta.bitmap.time_base),
                location: self.meta.bitmap.offset,
            }),
            kernel_bitmap: mode == crate::meta::BitmapMode::Kernel,
            // Kernel-managed mode: no resync may start before the bitmap is
            // attached (md would answer `location` EBUSY); the re-armed dirty
            // chunks move `resync_start` down once it is
            // (`bitmap_set_bits`), so the resync covers exactly them.
            resync_start: if mode == crate::meta::BitmapMode::Kernel {
                Checkpoint::None
            } else {
                self.resync_start()
            },
            start,
        })
    }
}

/// How far a device's own metadata may lag the newest and the device still
/// be used as the newest record says, whatever else: one event, the record
/// a power cut can leave written on some members and not yet on others
/// (every record goes to all members before the next is made).
pub const EVENT_MARGIN: u64 = 1;

/// Whether a device whose own metadata is at `own_events` missed records of
/// the array `meta` describes, and so possibly data: a copy of a member put
/// back in its place. Further behind than [`EVENT_MARGIN`] (a record that
/// skipped an event to spare a torn copy, a conversion cut half-way, can
/// leave a member that never left the array two or three events behind),
/// it is stale when its record predates the last time the array was
/// recorded whole and its bits allowed to clear (`events_cleared`, renewed
/// at every start of a whole array): since then md may have cleared bits
/// of writes the device never saw. Without a bitmap, any lag beyond the
/// margin is stale.
pub fn is_stale(meta: &crate::meta::ArrayMeta, own_events: u64) -> bool {
    own_events + EVENT_MARGIN < meta.events
        && (meta.bitmap.mode == crate::meta::BitmapMode::None
            || own_events < meta.bitmap.events_cleared)
}

/// Decide which of `found` (all of one array, by UUID) to activate.
///
/// The member with the highest event count carries the array's truth. A
/// device that missed its records ([`is_stale`]) is left out.
/// A device is used when that record lists it as in sync in a slot; a device
/// the record lists as failed, missing or rebuilding, or does not list at
/// all, is left out and reported (never silently used). Degraded assembly
/// needs `run`, like `mdadm --run`.
pub fn choose(found: Vec<Candidate>, run: bool) -> Result<Choice, AssemblyError> {
    let newest = found
        .iter()
        .max_by_key(|c| c.sb.array.events)
        .ok_or_else(|| AssemblyError::Spec("no devices with mdext metadata".into()))?;
    let meta = newest.sb.array.clone();
    if found.iter().any(|c| c.sb.array.uuid != meta.uuid) {
        return Err(AssemblyError::Spec(
            "devices of different arrays given together".into(),
        ));
    }
    let n = meta.geometry.raid_disks as usize;
    let mut members: Vec<(usize, Candidate)> = Vec::new();
    let mut resume: Vec<(usize, Candidate)> = Vec::new();
    let mut spares: Vec<(usize, Candidate)> = Vec::new();
    let mut left_out = Vec::new();
    for c in found {
        if let Some(why) = device_too_small(&c.sb.device, c.size) {
            left_out.push(LeftOut {
                path: c.path,
                reason: why,
            });
            continue;
        }
        let idx = meta.index_of(&c.sb.device.uuid);
        // A spare holds no data of the array: how old its own record is
        // does not matter.
        if let Some(i) =
            idx.filter(|&i| i >= n && meta.members[i].state == crate::meta::MemberState::Spare)
        {
            spares.push((i, c));
            continue;
        }
        if idx.is_some() && is_stale(&meta, c.sb.array.events) {
            left_out.push(LeftOut {
                path: c.path,
                reason: format!(
                    "stale: its own metadata is at event {}, the array's at {}: it missed updates (add it back to rebuild it)",
                    c.sb.array.events, meta.events
                ),
            });
            continue;
        }
        if let Some(i) = idx.filter(|&i| i < n) {
            if matches!(
                meta.members[i].state,
                crate::meta::MemberState::Rebuilding { .. }
            ) && !resume.iter().any(|(j, _)| *j == i)
            {
                resume.push((i, c));
                continue;
            }
        }
        let why = match idx.map(|i| (i, meta.members[i].state)) {
            None => Some("not a member in the newest metadata".to_string()),
            Some((i, _)) if i >= n => Some("a spare".to_string()),
            Some((i, s)) if !s.is_in_sync() => Some(format!(
                "stale: recorded as {} at event {} (its own metadata is at event {}, the array's at {})",
                s.name(),
                meta.members[i].events,
                c.sb.array.events,
                meta.events
            )),
            Some((i, _)) if members.iter().any(|(j, _)| *j == i) => {
                Some(format!("a second device claiming slot {i}"))
            }
            Some(_) => None,
        };
        match (why, idx) {
            (None, Some(i)) => members.push((i, c)),
            (why, _) => left_out.push(LeftOut {
                path: c.path,
                reason: why.unwrap_or_else(|| "not a member".into()),
            }),
        }
    }
    members.sort_by_key(|(i, _)| *i);
    let missing_slots: Vec<u32> = (0..meta.geometry.raid_disks)
        .filter(|s| !members.iter().any(|(i, _)| *i == *s as usize))
        .collect();
    if members.is_empty() {
        return Err(AssemblyError::Spec("no usable member".into()));
    }
    let choice = Choice {
        meta,
        members,
        left_out,
        missing_slots,
        resume,
        spares,
        bits_set: false,
    };
    let absent: Vec<u32> = choice
        .missing_slots
        .iter()
        .copied()
        .filter(|s| !choice.resume.iter().any(|(i, _)| *i == *s as usize))
        .collect();
    if !absent.is_empty() && !run {
        let why: Vec<String> = choice
            .left_out
            .iter()
            .map(|l| format!("{}: {}", l.path.display(), l.reason))
            .collect();
        return Err(AssemblyError::Spec(format!(
            "{} of {} members present (slots {:?} missing); use --run to start degraded{}",
            choice.members.len() + choice.resume.len(),
            n,
            absent,
            if why.is_empty() {
                String::new()
            } else {
                format!(" (left out: {})", why.join("; "))
            }
        )));
    }
    Ok(choice)
}
