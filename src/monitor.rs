//! The monitor's state machine: what `mdextmon` does about what the kernel
//! shows. Pure: no I/O, no clock, no threads. The daemon's I/O loop owns all
//! of those; this module only decides.
//!
//! # The rule everything here serves (the invariant)
//!
//! Whenever the kernel may clear bitmap bits (`bitmap/can_clear` reads
//! `true`), every member's durable metadata records all members in sync with
//! `events_cleared == events`. So `can_clear=false` is written before any
//! member is recorded not in sync, and `true` only after a record with all
//! members in sync and `events_cleared == events` was written to every member
//! in the same batch of actions. A member whose own metadata has
//! `events < events_cleared` may have lost bits it needs, and is rebuilt
//! fully, never from the bitmap.
//!
//! # How the daemon drives it
//!
//! ```text
//! let (mut mon, mut batch) = Monitor::start(meta_read_from_newest_member, &snapshot());
//! loop {
//!     for (i, action) in batch.iter().enumerate() {
//!         if let Err(e) = execute(action) {          // stop at the first failure
//!             log(e); mon.step(Event::ActionFailed(i))?;  // returns nothing
//!             back_off(); // then take a fresh snapshot below
//!             break;
//!         }
//!     }
//!     if batch was empty { wait for POLLPRI on array_state, degraded, sync_action,
//!                          sync_completed, every dev-*/state, or an admin request }
//!     // After a non-empty batch (or a failure) re-snapshot WITHOUT waiting:
//!     // the kernel does not notify everything our actions cause.
//!     batch = mon.step(Event::Observed(snapshot()))?;
//! }
//! ```
//!
//! The machine is level-triggered: every decision is taken from the snapshot
//! and the machine's record (`ArrayMeta`), never from which attribute woke
//! the daemon. Feeding the same snapshot twice is harmless (the second time
//! usually yields nothing); missing a notification is harmless as long as a
//! later snapshot is taken. A stable array yields empty batches: a clean
//! array that stays clean causes zero metadata writes.
//!
//! # Clean and dirty
//!
//! md holds its first write after clean in `write-pending` until `active`
//! is written. For a parity level, an array with a member out or
//! rebuilding, or the kernel bitmap mode, the record that marks the array
//! dirty is durable on every member first. A clean whole mirror whose bits
//! this daemon keeps ([`dirty_may_trail`]) is answered without a record,
//! and its writes never mark it dirty: md sets a chunk's bit durably before
//! any data of a write to it and clears it only after every member has the
//! write, so the bits are its dirty record, and a start that finds the
//! record clean with bits set resyncs their chunks. Such a burst of writes,
//! however long, costs one record, written once md is clean again, that
//! advances the event count (so that a copy of a member taken before the
//! writes reads older than the members, as md's own metadata has it); a
//! record written meanwhile for something else marks the array dirty too.
//!
//! # What the executor must do with each [`Action`]
//!
//! Execute the actions of a batch strictly in order, one at a time, and stop
//! at the first one that fails, feeding its position in the batch back as
//! [`Event::ActionFailed`] (always about the latest batch the machine handed
//! out). Nothing is fed back on success. A daemon that dies mid-batch simply
//! starts again with [`Monitor::start`]: every batch is safe to cut short
//! between any two actions.
//!
//! The machine never reads a clock: stamp `ArrayMeta::utime` when
//! serializing a `WriteMetadata` if wanted; nothing here depends on it.
//!
//! - [`Action::WriteMetadata`]: write `meta` (with each target's own
//!   `DeviceMeta`) to every member listed in `targets` (member table
//!   indices), and make it durable (write + flush/FUA) on all of them before
//!   returning. If any target fails, the action failed (even if others got
//!   it). Never write it to a member that is not listed.
//! - [`Action::SetCanClear`]: `bitmap/can_clear` = `true`/`false`. The
//!   kernel answers EBUSY to `true` while degraded: a failure like any other.
//! - [`Action::SetArrayState`]: `array_state` = the value.
//! - [`Action::Member`]: `dev-X/state` = the command, for the device that
//!   holds member table index `index`.
//! - [`Action::SetSyncAction`]: `sync_action` = the value.
//! - [`Action::AddDevice`]: hot-add the device the admin named for table
//!   index `index` (`sync_action` is already `frozen`): `new_dev`, then
//!   `dev-X/offset` and `dev-X/size` from its `DeviceMeta`, then
//!   `dev-X/state=insync` if and only if `bitmap_based`, then
//!   `dev-X/slot=index`. Any step failing fails the action (leave the
//!   device where it is; the next snapshot shows it and the machine removes
//!   it).
//!
//! # What the daemon must put in a snapshot ([`KernelView`])
//!
//! Every member device md lists (`dev-*`), mapped to its member table index
//! through the UUID in its own metadata (read when it was added); a device
//! whose index is unknown is left out. Read `array_state` LAST, after the
//! members: the kernel moves it to `write-pending` on a member failure and at
//! the end of any resync/recovery without notifying it.
//!
//! # An array stopped under the machine
//!
//! When a snapshot shows the array stopped (`clear`/`inactive`, or the md
//! device deleted: [`KernelView::stopped`]) after the machine saw it running,
//! somebody stopped it (systemd-shutdown's `STOP_ARRAY`, `mdadm --stop`).
//! md drains every write and sync before it stops, so the members agree: the
//! machine records the array clean (member states and checkpoints as
//! recorded) on the members the record counts as holding data, as mdmon does
//! when an array goes inactive, and the daemon then forgets the array. The
//! model checks this ([`model`], property 5).
//!
//! # Contract with assembly (the start protocol)
//!
//! Every start, whole or degraded, follows [`start_plan`]: the array is
//! activated with `bitmap/time_base` = [`HOLD_TIME_BASE`] (the kernel's
//! bitmap daemon cannot clear a bit before the hold ends; on activation
//! `can_clear` reads `true` whatever the record says), and a degraded start
//! re-arms the present members' dirty chunks with `bitmap_set_bits` (md
//! would otherwise clear them although the missing member needs them). The
//! assembler then hands the array to the monitor. The monitor ends the hold
//! ([`Action::ReleaseHold`]) only once it has settled: its record is durable
//! on every member and `can_clear` agrees with it. The model checker
//! ([`model`]) starts its arrays through the same [`start_plan`] and
//! [`crate::assembly::choose`].
//!
//! # The kernel-managed bitmap mode (`BitmapMode::Kernel`, md from 6.18 on)
//!
//! md sets and clears the bits itself, so the rule above has nothing to
//! hold: the machine never writes `can_clear` in that mode (it is inert).
//! What keeps the bits a missing member needs: md keeps the bits of writes
//! made while degraded, and [`start_plan`] re-arms the dirty chunks at every
//! dirty or degraded start, with md's bitmap attached after the start under
//! a write fence (never `active` before). A member's own record and
//! `events_cleared` still decide bitmap versus full rebuild, and no member
//! is re-added `insync` while the kernel shows no bitmap attached.

use crate::md::{ArrayState, Checkpoint, MemberCommand, MemberFlags, SyncAction, SyncCompleted};
use crate::meta::{
    bitmap_chunks, ArrayMeta, BitmapMode, DeviceMeta, MemberEntry, MemberState, RebuildKind,
    Superblock,
};
use crate::units::Sectors;
use uuid::Uuid;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

/// Progress checkpoints are recorded each time progress crosses one of this
/// many equal steps of the total (so at most this many checkpoint writes per
/// resync or rebuild, whatever the notification rate). No clock is needed.
pub const CHECKPOINT_STEPS: u64 = 16;

/// `bitmap/time_base` while an array starts: far above any recorded value
/// (the format allows at most 86400 s), so the kernel cannot clear a bit
/// before the monitor ends the hold, and the hold is told apart from the
/// recorded period by its value alone (a restarted daemon sees it too).
pub const HOLD_TIME_BASE: u32 = 100_000;
const _: () = assert!(HOLD_TIME_BASE > crate::format::MAX_TIME_BASE);

/// How an array is started: the assembler's half of the start protocol
/// (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartPlan {
    /// `bitmap/time_base` to activate with: always [`HOLD_TIME_BASE`] (in
    /// the kernel-managed mode, the `daemon_sleep` of md's bitmap
    /// superblock).
    pub time_base: u32,
    /// Chunk ranges to re-arm with `bitmap_set_bits` right after
    /// activation (inclusive). External mode: on a degraded start, every
    /// chunk dirty on a present member; on a whole start, none (md loads the
    /// bits itself and the resync covers them). Kernel-managed mode: every
    /// chunk dirty on a present member at every dirty or degraded start
    /// (md clears bits by itself, so nothing else keeps them).
    pub rearm: Vec<(u64, u64)>,
    /// Kernel-managed mode: md's bitmap is attached after the start
    /// (`bitmap/location +8`): start `readonly`, fence writes with
    /// `suspend_lo`/`suspend_hi`, go `clean` (never `active` before the
    /// bitmap is attached), attach, re-arm, then lift the fence.
    pub attach_after_start: bool,
}

/// Whether a start owes a resync: the record is dirty or a resync was
/// interrupted.
fn owes_resync(meta: &ArrayMeta) -> bool {
    !meta.clean || meta.resync != Checkpoint::None
}

/// Whether md's writes may go on over a clean record, for an array whose
/// durable record is `meta`: md's first write after clean is released
/// without a record, and writes alone never mark the array dirty
/// ([`Monitor::observe`]; a record written for another reason, such as a
/// member's failure, does). The record written once md is clean again
/// advances the event count.
///
/// md writes a chunk's bitmap bit durably before any data of a write to
/// that chunk, and clears it only after the write reached every member; so
/// after a power cut the bits cover every chunk whose copies may disagree,
/// whatever the record says, and a start that finds such an array's record
/// clean with bits set resyncs those chunks all the same
/// ([`crate::assembly::Choice::resync_start`]). That holds for a clean
/// record of a mirror (raid1, raid10) whose bits this daemon keeps
/// (external mode) with every member recorded in sync. Not for parity
/// levels: their dirty record is what refuses a degraded start after a
/// crash (the write hole, [`crate::assembly::Choice::dirty_degraded_parity`]),
/// and it must be durable before the first write. Not with a member out:
/// its bits are kept for it, so every start would resync them.
pub fn dirty_may_trail(meta: &ArrayMeta) -> bool {
    meta.clean && meta.bits_cover_writes()
}

/// The start of an array whose record is `meta`, run in bitmap mode
/// `mode` (the one [`crate::kmode::decide`] chose for the running
/// kernel), degraded or not, whose present members' bits (of the region
/// the mode runs from, after any merge) OR together to `present_bits`.
pub fn start_plan(
    meta: &ArrayMeta,
    mode: BitmapMode,
    degraded: bool,
    present_bits: &[u8],
) -> StartPlan {
    let rearm_needed = match mode {
        BitmapMode::None => false,
        BitmapMode::External => degraded,
        BitmapMode::Kernel => degraded || owes_resync(meta),
    };
    let rearm = if rearm_needed {
        crate::bitmap::dirty_ranges(present_bits, meta.bitmap_chunks())
    } else {
        Vec::new()
    };
    StartPlan {
        time_base: HOLD_TIME_BASE,
        rearm,
        attach_after_start: mode == BitmapMode::Kernel,
    }
}

/// One member device as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelMember {
    /// Its member table index (the daemon maps the kernel's `dev-X` to it).
    pub index: usize,
    /// `dev-X/state`.
    pub flags: MemberFlags,
    /// `dev-X/slot` (`None` for `none`).
    pub slot: Option<u32>,
    /// `dev-X/recovery_start`: how far a rebuild of this device has got.
    pub recovery_start: Checkpoint,
}

/// A snapshot of the array's sysfs state, read after a wake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelView {
    /// `array_state` (read it last).
    pub array_state: ArrayState,
    /// `degraded`.
    pub degraded: u32,
    /// `sync_action`.
    pub sync_action: SyncAction,
    /// `sync_completed`.
    pub sync_completed: SyncCompleted,
    /// `resync_start`: `None` when no resync is owed.
    pub resync_start: Checkpoint,
    /// `bitmap/can_clear` (`None` when the array has no bitmap).
    pub can_clear: Option<bool>,
    /// `bitmap/time_base` in seconds (`None` when the array has no bitmap).
    /// Anything but the recorded value is the start hold
    /// ([`HOLD_TIME_BASE`]): the kernel's bitmap daemon cannot clear bits.
    pub time_base: Option<u32>,
    /// Every member device md lists whose table index is known.
    pub members: Vec<KernelMember>,
}

impl KernelView {
    /// What the daemon knows of an array whose `array_state` reads `state`
    /// (`clear` or `inactive`) or whose md device is gone (pass `clear`),
    /// when the rest cannot be read: no member, nothing syncing.
    pub fn stopped(state: ArrayState) -> KernelView {
        KernelView {
            array_state: state,
            degraded: 0,
            sync_action: SyncAction::Idle,
            sync_completed: SyncCompleted::None,
            resync_start: Checkpoint::None,
            can_clear: None,
            time_base: None,
            members: Vec::new(),
        }
    }
}

/// What a returning device's own metadata says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnRecord {
    /// The `events` of the device's own copy of the array metadata.
    pub events: u64,
    /// The state that copy records for the device's own table entry.
    pub state: MemberState,
}

/// A device the admin wants to (re-)add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReturningDevice {
    /// The device's UUID (from its own metadata; a blank device gets a new
    /// one from the caller).
    pub uuid: Uuid,
    /// Its own metadata, if it carries a copy of this array's metadata
    /// (same array UUID). `None` for a blank or foreign device.
    pub own: Option<OwnRecord>,
}

/// What the daemon read from a device the admin wants to add: facts only,
/// every decision is [`admit`]'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The device's size.
    pub size: Sectors,
    /// Its newest valid mdext metadata, if it has any.
    pub own: Option<Superblock>,
    /// Signatures of anything else on it (libblkid's names), empty if none.
    pub foreign: Vec<String>,
    /// The data offset the array's members use (a new member gets it).
    pub data_offset: Sectors,
    /// A fresh UUID, used if the device becomes a new member.
    pub new_uuid: Uuid,
    /// Asked to be write-mostly (raid1 only).
    pub write_mostly: bool,
}

/// The outcome of [`admit`]: where the device goes and as what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The slot (member table index) it takes.
    pub index: usize,
    /// What the rebuild decision needs to know of it.
    pub device: ReturningDevice,
    /// Its own part of the record (UUID, data offset and size).
    pub meta: DeviceMeta,
    /// A device new to the slot (blank, or an old member whose place was
    /// taken): its metadata area is cleared and its bitmap area copied from
    /// the members before its record is written.
    pub fresh: bool,
}

/// Re-add admission: whether `dev` may join the array recorded in `meta`
/// (whose devices md holds in `occupied` slots), into which slot, and as a
/// returning member or a new one. Pure; the daemon and the model call it.
pub fn admit(
    meta: &ArrayMeta,
    occupied: &[usize],
    dev: &DeviceFacts,
) -> Result<Admission, Refusal> {
    let n = (meta.geometry.raid_disks as usize).min(meta.members.len());
    let need = meta.geometry.component_size;
    if let Some(sb) = &dev.own {
        if sb.array.uuid != meta.uuid {
            return Err(Refusal::OtherArray {
                name: sb.array.name.clone(),
                uuid: sb.array.uuid,
            });
        }
        if let Some(index) = meta.index_of(&sb.device.uuid).filter(|&i| i < n) {
            let end = sb
                .device
                .data_offset
                .0
                .saturating_add(sb.device.data_size.0);
            if dev.size.0 < end || sb.device.data_size < need {
                return Err(Refusal::TooSmall {
                    have: Sectors(dev.size.0.saturating_sub(sb.device.data_offset.0)),
                    need,
                });
            }
            let state = sb
                .array
                .members
                .get(index)
                .map(|e| e.state)
                .unwrap_or(MemberState::Missing);
            return Ok(Admission {
                index,
                device: ReturningDevice {
                    uuid: sb.device.uuid,
                    own: Some(OwnRecord {
                        events: sb.array.events,
                        state,
                    }),
                },
                meta: sb.device,
                fresh: false,
            });
        }
        // An old member of this array whose place was taken: a new member.
    } else if let Some(f) = dev.foreign.first() {
        return Err(Refusal::ForeignSignature(f.clone()));
    }
    let index = (0..n)
        .find(|&i| {
            matches!(
                meta.members[i].state,
                MemberState::Failed | MemberState::Missing
            ) && !occupied.contains(&i)
        })
        .ok_or(Refusal::NoFreeSlot)?;
    fresh_admission(index, dev, need)
}

/// A device without a record of this array takes slot `index` as a new
/// member (full rebuild), if its data area holds `need`.
fn fresh_admission(index: usize, dev: &DeviceFacts, need: Sectors) -> Result<Admission, Refusal> {
    let data_size = Sectors(dev.size.0.saturating_sub(dev.data_offset.0));
    if data_size < need {
        return Err(Refusal::TooSmall {
            have: data_size,
            need,
        });
    }
    Ok(Admission {
        index,
        device: ReturningDevice {
            uuid: dev.new_uuid,
            own: None,
        },
        meta: DeviceMeta {
            uuid: dev.new_uuid,
            data_offset: dev.data_offset,
            data_size,
        },
        fresh: true,
    })
}

/// Spare admission: whether `dev` may join the array recorded in `meta` as
/// a spare, and at which table entry (from `raid_disks` on). A device this
/// record already lists as a spare keeps its entry and its own data area
/// (an assembly hands the spares it found back this way); any other device
/// (blank, or an old member of this array whose place was taken) is a new
/// spare with a fresh UUID, at the first empty entry or a new one. Pure;
/// the daemon calls it.
pub fn admit_spare(meta: &ArrayMeta, dev: &DeviceFacts) -> Result<Admission, Refusal> {
    let n = (meta.geometry.raid_disks as usize).min(meta.members.len());
    let need = meta.geometry.component_size;
    if let Some(sb) = &dev.own {
        if sb.array.uuid != meta.uuid {
            return Err(Refusal::OtherArray {
                name: sb.array.name.clone(),
                uuid: sb.array.uuid,
            });
        }
        match meta.index_of(&sb.device.uuid) {
            Some(i)
                if i < n
                    && matches!(
                        meta.members[i].state,
                        MemberState::InSync | MemberState::Rebuilding { .. }
                    ) =>
            {
                return Err(Refusal::ActiveMember(i));
            }
            Some(i) if i >= n && meta.members[i].state == MemberState::Spare => {
                let end = sb
                    .device
                    .data_offset
                    .0
                    .saturating_add(sb.device.data_size.0);
                if dev.size.0 < end || sb.device.data_size < need {
                    return Err(Refusal::TooSmall {
                        have: Sectors(dev.size.0.saturating_sub(sb.device.data_offset.0)),
                        need,
                    });
                }
                return Ok(Admission {
                    index: i,
                    device: ReturningDevice {
                        uuid: sb.device.uuid,
                        own: None,
                    },
                    meta: sb.device,
                    fresh: false,
                });
            }
            _ => {}
        }
    } else if let Some(f) = dev.foreign.first() {
        return Err(Refusal::ForeignSignature(f.clone()));
    }
    let index = (n..meta.members.len())
        .find(|&i| meta.members[i].state == MemberState::Empty)
        .unwrap_or(meta.members.len());
    if index >= crate::meta::MAX_MEMBERS {
        return Err(Refusal::TableFull(crate::meta::MAX_MEMBERS));
    }
    fresh_admission(index, dev, need)
}

/// What one array of a spare group has and needs, as [`Monitor::spare_need`]
/// sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpareNeed {
    /// A slot is failed or missing and the array holds no spare of its own.
    pub wants: bool,
    /// The table index of a spare md holds that no slot of its own array
    /// needs (it may go to another array of the group).
    pub spare: Option<usize>,
}

/// Spare moves within spare groups (mdadm's `spare-group`): for each array
/// that wants a spare, in order, the first other array of the same group
/// with a spare to give; each donor gives at most one per call. `arrays`
/// lists each array's group (if any) and need; the result pairs
/// `(donor, recipient)` positions in `arrays`. Pure; the daemon calls it
/// after its arrays settled.
pub fn spare_moves(arrays: &[(Option<&str>, SpareNeed)]) -> Vec<(usize, usize)> {
    let mut moves = Vec::new();
    let mut given = vec![false; arrays.len()];
    for (to, (group, need)) in arrays.iter().enumerate() {
        let Some(group) = group else { continue };
        if !need.wants {
            continue;
        }
        let donor = arrays.iter().enumerate().position(|(from, (g, n))| {
            from != to && !given[from] && *g == Some(*group) && !n.wants && n.spare.is_some()
        });
        if let Some(from) = donor {
            given[from] = true;
            moves.push((from, to));
        }
    }
    moves
}

/// raid1 component sizes are multiples of this (as `create` rounds them).
const RAID1_ROUND: Sectors = Sectors(128);

/// The new component size for `mdextctl grow --size`: `want` (rounded
/// down to 64 KiB) or, for `None`, the largest every device allows
/// (`member_data`, its smallest data area). Refused when a device cannot
/// hold it, when it is below 4 MiB, for levels other than raid1, or when
/// the bitmap region reserved at create has no room for its bits (in the
/// external region and, in format version 2, md's region at sector 8).
pub fn grow_size(
    meta: &ArrayMeta,
    want: Option<Sectors>,
    member_data: Sectors,
) -> Result<Sectors, Refusal> {
    if meta.geometry.level != crate::md::Level::Raid1 {
        return Err(Refusal::GrowLevel(meta.geometry.level.as_str()));
    }
    let round = |s: Sectors| Sectors(s.0 / RAID1_ROUND.0 * RAID1_ROUND.0);
    let size = round(want.unwrap_or(member_data));
    let asked = want.unwrap_or(size);
    if size > member_data {
        return Err(Refusal::BadSize {
            want: asked,
            why: format!("a device holds only {member_data} of data"),
        });
    }
    let min = Sectors(8192);
    if size < min {
        return Err(Refusal::BadSize {
            want: asked,
            why: format!("below the smallest component size ({min})"),
        });
    }
    let mut g = meta.geometry;
    g.component_size = size;
    let chunks = bitmap_chunks(g.bitmap_span(), meta.bitmap.chunk);
    if meta.bitmap.mode != BitmapMode::None {
        let external = meta.bitmap.size.0.saturating_mul(8);
        // md's own region: from sector 8, its 256-byte superblock first, up
        // to the external region or copy 1 (sector 2040), whichever is first.
        let kernel = if meta.version >= 2 {
            let end = meta
                .bitmap
                .offset
                .0
                .min(crate::format::COPY1_V2_OFFSET / 512);
            (end.saturating_sub(8) * 512).saturating_sub(256) * 8
        } else {
            u64::MAX
        };
        let room = external.min(kernel);
        if chunks > room {
            return Err(Refusal::BitmapFull {
                want: asked,
                chunks,
                chunk: meta.bitmap.chunk.0,
                room,
            });
        }
    }
    Ok(size)
}

/// An administrator's request (from `mdextctl` over the control socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Fail the member at this table index.
    Fail(usize),
    /// Detach the member at this index (it must be faulty or an unused spare).
    Remove(usize),
    /// Add a device: [`admit`] decides the slot and whether it returns or
    /// is new; the machine then chooses a bitmap-based or full rebuild.
    Add(Box<DeviceFacts>),
    /// Add a device as a spare ([`admit_spare`] decides its table entry):
    /// recorded as a spare, then added to md without a slot. The machine
    /// activates it when a slot is failed or missing.
    AddSpare(Box<DeviceFacts>),
    /// Replace the in-sync member at this slot with a spare md holds, with
    /// md's `want_replacement` (md copies it onto the spare, then fails it;
    /// the array never runs degraded).
    Replace(usize),
    /// Change the component size ([`grow_size`] decides the new size).
    GrowSize {
        /// The size asked for (`None`: as large as every member allows).
        want: Option<Sectors>,
        /// The smallest data area among the array's devices, spares
        /// included.
        member_data: Sectors,
    },
    /// raid1: change the number of mirrors (more take spares md holds,
    /// fewer drop failed or missing slots).
    GrowDisks(u32),
    /// Stop: wait until the array is clean, record it clean, then stop it.
    Stop,
}

/// What the machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A fresh snapshot of the kernel's state.
    Observed(KernelView),
    /// The action at this position of the last batch failed; the rest of
    /// the batch was not executed.
    ActionFailed(usize),
    /// An admin request, with a snapshot taken just before it.
    Admin(AdminRequest, KernelView),
}

/// What the daemon must do (see the module documentation for how).
// WriteMetadata carries a whole record; actions are few and short-lived, so
// boxing it would only add an allocation per metadata write.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this metadata to the members at these table indices and make it
    /// durable on all of them before the next action.
    WriteMetadata {
        /// The record.
        meta: ArrayMeta,
        /// Member table indices to write it to.
        targets: Vec<usize>,
    },
    /// `bitmap/can_clear`.
    SetCanClear(bool),
    /// `array_state`.
    SetArrayState(ArrayState),
    /// `dev-X/state` of the member with this table index.
    Member(usize, MemberCommand),
    /// `sync_action`.
    SetSyncAction(SyncAction),
    /// `bitmap/time_base` = the recorded value: the start hold ends and the
    /// kernel may clear bits again (when `can_clear` allows).
    ReleaseHold(u32),
    /// Clear the metadata area of the admin's device (a new member) and
    /// copy the members' bitmap area onto it, durably.
    PrepareDevice {
        /// The table index it is being added for.
        index: usize,
    },
    /// Hot-add the admin's device for this table index (see module docs).
    AddDevice {
        /// Table index (= slot).
        index: usize,
        /// Write `insync` before `slot` (bitmap-based rebuild).
        bitmap_based: bool,
        /// Its own part of the record (data offset and size for md).
        device: DeviceMeta,
    },
    /// Hot-add the admin's device as a spare for table index `index`
    /// (`new_dev`, `dev-X/offset`, `dev-X/size`; no slot).
    AddSpare {
        /// Its table index (from `raid_disks` on).
        index: usize,
        /// Its own part of the record.
        device: DeviceMeta,
    },
    /// `component_size` = this (written in KiB; the record already holds
    /// it).
    SetComponentSize(Sectors),
    /// `raid_disks` = this (raid1; the record already holds it, dirty).
    /// md waits inside the write for `write-pending` to be answered:
    /// write it from another thread and answer `active` meanwhile.
    SetRaidDisks(u32),
    /// Activate the spare md holds whose UUID is `uuid` (the record already
    /// names it rebuilding in slot `index`; `sync_action` is `frozen`): copy
    /// the members' bitmap area onto it, durably, then `dev-X/slot=index`.
    ActivateSpare {
        /// The slot it takes.
        index: usize,
        /// The spare's UUID.
        uuid: Uuid,
    },
}

/// Why an admin request was refused (nothing was done).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The kernel state is not settled yet (the machine has actions of its
    /// own to run first). Retry after the next batch.
    #[error("the array is changing state; retry in a moment")]
    Unsettled,
    /// No such slot or member.
    #[error("no member with table index {0}")]
    NoSuchMember(usize),
    /// The slot has a working device.
    #[error("slot {0} is in use")]
    SlotInUse(usize),
    /// The member is the last one holding good data.
    #[error("member {0} is the last one in sync")]
    LastInSync(usize),
    /// Write-mostly is a raid1 flag.
    #[error("only raid1 members can be write-mostly, not {0}")]
    NotRaid1(crate::md::Level),
    /// Write-mostly is asked for a member in a slot, not for a spare.
    #[error("a spare cannot be write-mostly: add it to a slot with --write-mostly")]
    SpareWriteMostly,
    /// Remove needs a faulty member or an unused spare.
    #[error("member {0} is active: fail it first")]
    Active(usize),
    /// The device's own metadata is newer than the array's: it ran without
    /// the other members. The admin must decide.
    #[error("the device's metadata (events {device}) is newer than the array's ({array})")]
    Diverged {
        /// The device's events.
        device: u64,
        /// The array's.
        array: u64,
    },
    /// A stop was requested.
    #[error("the array is stopping")]
    Stopping,
    /// The device carries another mdext array's metadata.
    #[error("belongs to another mdext array ({name} {uuid}); wipe it first")]
    OtherArray {
        /// That array's name.
        name: String,
        /// Its UUID.
        uuid: Uuid,
    },
    /// A blank device carries a foreign signature.
    #[error("carries a {0} signature; wipe it first")]
    ForeignSignature(String),
    /// No slot is failed or missing.
    #[error("no failed or missing slot to rebuild (add it with --spare to keep it as a spare)")]
    NoFreeSlot,
    /// A replacement on an array with a failed or missing slot.
    #[error("the array is degraded (slot {0} is empty): add the new device instead")]
    Degraded(usize),
    /// A replacement needs a member in sync.
    #[error("member {0} is not in sync: nothing to copy from")]
    NotInSync(usize),
    /// A replacement needs a spare in md.
    #[error("no spare to copy onto")]
    NoSpare,
    /// A size change of a level mdext does not resize.
    #[error("grow --size: {0} arrays cannot be resized yet (raid1 only)")]
    GrowLevel(&'static str),
    /// A size change needs every slot in sync and no sync running.
    #[error("grow --size needs a whole array with no resync or rebuild running")]
    NotWhole,
    /// The size asked for is more than a member holds, or below the
    /// smallest size.
    #[error("grow --size {want}: {why}")]
    BadSize {
        /// What was asked.
        want: Sectors,
        /// Why it cannot be.
        why: String,
    },
    /// The bitmap region has no room for the bits of the new size.
    #[error("grow --size {want}: the bitmap needs {chunks} bits of {chunk} bytes, its region holds {room}; recreate with a larger --bitmap-chunk")]
    BitmapFull {
        /// The size asked for.
        want: Sectors,
        /// Chunks the new size needs.
        chunks: u64,
        /// The bitmap chunk in bytes.
        chunk: u64,
        /// Chunks the region holds.
        room: u64,
    },
    /// A change of the number of devices of a level md reshapes.
    #[error(
        "grow --raid-devices: reshaping {0} is not supported (only raid1 gains or drops mirrors)"
    )]
    Reshape(&'static str),
    /// A number of devices that cannot be.
    #[error("grow --raid-devices {want}: {why}")]
    BadDisks {
        /// What was asked.
        want: u32,
        /// Why it cannot be.
        why: String,
    },
    /// The member table has no room for another spare.
    #[error("the member table is full ({0} entries)")]
    TableFull(usize),
    /// The device is an active member of this array.
    #[error("is an active member of this array (slot {0})")]
    ActiveMember(usize),
    /// The device cannot hold the array's data.
    #[error("too small ({have} of data, the array needs {need})")]
    TooSmall {
        /// Data sectors it offers.
        have: Sectors,
        /// Data sectors each member needs.
        need: Sectors,
    },
}

/// Deliberately wrong behaviours, for showing that the model checker finds
/// the bugs they cause. Never set outside tests.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) enum Fault {
    /// Correct behaviour.
    #[default]
    None,
    /// Write `can_clear=true` before recording all in sync.
    TrueBeforeRecord,
    /// Decide bitmap rebuilds from the returning device's events alone.
    TrustDeviceEvents,
    /// Do not rewrite the record when the daemon starts.
    NoWriteAtStart,
    /// After a failed metadata write, aim the retry at the other copy
    /// (events + 1), as the monitor once did.
    RetryOtherCopy,
    /// End the start hold at once, before the monitor settled.
    EarlyRelease,
    /// Forget an array stopped by somebody else without recording it
    /// clean.
    ForgetAtStop,
}

/// The monitor. Holds the record it last wrote (or read at start) and
/// whether that record must be written again before anything relies on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitor {
    meta: ArrayMeta,
    /// The record in `meta` is not known to be durable on every member (just
    /// started, or an action failed): write it (with events + 1) before any
    /// action that depends on it.
    needs_write: bool,
    /// Position of the `WriteMetadata` in the last batch handed out.
    write_at: Option<usize>,
    /// A metadata copy index that may be torn or stale on some member (a
    /// write to it failed, or it was read invalid): the next write goes to
    /// that copy ([`crate::format::next_events`]).
    rewrite: Option<usize>,
    stopping: bool,
    /// The machine has seen the array running (so a stopped array was
    /// stopped under it, not an array that never started).
    seen_running: bool,
    /// The last look found the array clean and settled, md's writes free to
    /// go on over its clean record ([`Monitor::may_answer_at_once`]).
    settled_clean: bool,
    /// md was seen writing to the array ([`Monitor::writes_unmarked`])
    /// since the last record: the look that finds it clean again writes a
    /// record that advances the event count.
    written: bool,
    #[cfg(test)]
    pub(crate) fault: Fault,
}

/// How the kernel shows one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// No device for this index.
    Absent,
    /// In sync, in its slot.
    InSync,
    /// Failed; `blocked` while writes wait for us.
    Faulty { blocked: bool },
    /// In its slot but not in sync: being (or about to be) rebuilt.
    Recovering { progress: Option<Sectors> },
    /// Added but without a slot: an interrupted hot-add.
    Unslotted,
}

fn classify(v: &KernelView, index: usize) -> Slot {
    let Some(k) = v.members.iter().find(|k| k.index == index) else {
        return Slot::Absent;
    };
    if k.flags.faulty {
        return Slot::Faulty {
            blocked: k.flags.blocked,
        };
    }
    if k.slot != u32::try_from(index).ok() {
        return Slot::Unslotted;
    }
    if k.flags.in_sync {
        return Slot::InSync;
    }
    let progress = match (k.recovery_start, v.sync_action, v.sync_completed) {
        (Checkpoint::At(s), SyncAction::Recover, _) => Some(s),
        (_, SyncAction::Recover, SyncCompleted::Progress { done, .. }) => Some(done),
        _ => None,
    };
    Slot::Recovering { progress }
}

/// Whether progress from `recorded` to `now` crossed a checkpoint step.
fn step_crossed(recorded: Sectors, now: Sectors, total: Sectors) -> bool {
    let step = (total.0 / CHECKPOINT_STEPS).max(1);
    now.0 / step > recorded.0 / step
}

/// The new checkpoint to record for progress `now`, if any: lower at once
/// (never ahead of real progress), higher only at step crossings.
fn next_checkpoint(recorded: Sectors, now: Sectors, total: Sectors) -> Option<Sectors> {
    if now < recorded || step_crossed(recorded, now, total) {
        Some(now)
    } else {
        None
    }
}

/// The spare at table entry `from` takes slot `slot`, rebuilt fully; the
/// slot's old device (if the record knows one) keeps the spare's entry as
/// failed, so a later `remove` or `add` of it is understood.
fn take_slot(m: &mut ArrayMeta, slot: usize, from: usize) {
    let old = m.members[slot].uuid;
    m.members[slot] = MemberEntry {
        uuid: m.members[from].uuid,
        state: MemberState::Rebuilding {
            kind: RebuildKind::Full,
            checkpoint: Sectors(0),
        },
        events: m.members[slot].events,
    };
    m.members[from] = MemberEntry {
        uuid: old,
        state: if old.is_nil() {
            MemberState::Empty
        } else {
            MemberState::Failed
        },
        events: m.members[from].events,
    };
}

impl Monitor {
    /// A monitor for an array whose record is `meta` (read from the member
    /// with the highest events). It will rewrite the record on its first
    /// batch, since it cannot know whether every member holds it.
    pub fn new(meta: ArrayMeta) -> Monitor {
        Monitor::resume(meta, None)
    }

    /// [`Monitor::new`] for members of which some hold an invalid copy
    /// (`rewrite`: its index, from [`crate::format::damaged_copy`]).
    pub fn resume(meta: ArrayMeta, rewrite: Option<usize>) -> Monitor {
        Monitor {
            meta,
            needs_write: true,
            write_at: None,
            rewrite,
            stopping: false,
            seen_running: false,
            settled_clean: false,
            written: false,
            #[cfg(test)]
            fault: Fault::None,
        }
    }

    /// Start or take over: restore the invariant first (`can_clear=false`
    /// if anything is not in sync), then handle whatever the kernel shows.
    /// Works after a crash (fresh kernel state) and after a daemon restart
    /// (kernel state kept, this memory lost) alike.
    pub fn start(
        meta: ArrayMeta,
        rewrite: Option<usize>,
        view: &KernelView,
    ) -> (Monitor, Vec<Action>) {
        let mut m = Monitor::resume(meta, rewrite);
        let acts = m.observe(view);
        (m, acts)
    }

    #[cfg(test)]
    pub(crate) fn start_with_fault(
        meta: ArrayMeta,
        rewrite: Option<usize>,
        view: &KernelView,
        fault: Fault,
    ) -> (Monitor, Vec<Action>) {
        let mut m = Monitor::resume(meta, rewrite);
        m.fault = fault;
        if fault == Fault::NoWriteAtStart {
            m.needs_write = false;
        }
        let acts = m.observe(view);
        (m, acts)
    }

    /// The record as last written (or to be written).
    pub fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Whether the daemon may exit: a stop was requested and the array is
    /// no longer running.
    pub fn finished(&self, view: &KernelView) -> bool {
        self.stopping && !view.array_state.is_running()
    }

    /// Feed one event; get the actions to execute, in order.
    pub fn step(&mut self, ev: Event) -> Result<Vec<Action>, Refusal> {
        match ev {
            Event::Observed(v) => Ok(self.observe(&v)),
            Event::ActionFailed(i) => {
                self.action_failed(i);
                Ok(Vec::new())
            }
            Event::Admin(r, v) => self.admin(&r, &v),
        }
    }

    /// A new snapshot.
    pub fn observe(&mut self, v: &KernelView) -> Vec<Action> {
        let (meta, wrote, acts) = self.plan(v);
        self.seen_running |= v.array_state.is_running();
        self.meta = meta;
        if wrote {
            self.needs_write = false;
            self.written = false;
        } else if dirty_may_trail(&self.meta)
            && matches!(
                v.array_state,
                ArrayState::WritePending | ArrayState::Active | ArrayState::ActiveIdle
            )
        {
            self.written = true;
        }
        self.handed_out(&acts);
        // Clean and settled: nothing to do, nothing in flight, the record
        // durable (no write owed), md able to clear bits, no hold, every
        // slot in sync.
        self.settled_clean = acts.is_empty()
            && v.array_state == ArrayState::Clean
            && !self.needs_write
            && self.rewrite.is_none()
            && !self.stopping
            && v.degraded == 0
            && v.sync_action == SyncAction::Idle
            && v.can_clear == Some(true)
            && v.time_base == Some(self.meta.bitmap.time_base)
            && (0..self.slots()).all(|i| classify(v, i) == Slot::InSync)
            && dirty_may_trail(&self.meta);
        acts
    }

    /// Whether the daemon may answer a `write-pending` it read (alone) with
    /// `active` at once, and look at the array after: md's first write
    /// after clean then waits for one read and one write of `array_state`,
    /// not for a whole look. Only when the last look found the array clean
    /// and settled ([`dirty_may_trail`]: md's bits cover the write, and
    /// the record stays as it is). A `write-pending` that
    /// came from a member failure is answered too: md keeps that member's
    /// writes blocked until the look that follows records the failure and
    /// unblocks it, and nothing else waits on `active`.
    pub fn may_answer_at_once(&self) -> bool {
        self.settled_clean && self.write_at.is_none()
    }

    /// Whether md's writes in `v` (`write-pending`, `active`,
    /// `active-idle`) leave the record as it is: a clean record of a whole
    /// mirror whose bits this daemon keeps ([`dirty_may_trail`]), nothing
    /// else to record, md able to clear bits. md writes a chunk's bit
    /// durably before any data of a write to that chunk and clears it only
    /// after the write reached every member and the members were flushed
    /// (its bitmap pages are written with a flush before them); a start
    /// that finds such a record clean with bits set resyncs those chunks
    /// ([`crate::assembly::Choice::resync_start`]). The bits are then the
    /// array's dirty record, kept per chunk by md: a burst of writes costs
    /// no record of ours while it runs, however long, and one that advances
    /// the event count once md is clean again. `write-pending` is answered
    /// with `active` alone and `active-idle` with `clean` alone (md refuses
    /// `clean` while a write is in flight).
    fn writes_unmarked(&self, v: &KernelView, slots: &[Slot]) -> bool {
        matches!(
            v.array_state,
            ArrayState::WritePending | ArrayState::Active | ArrayState::ActiveIdle
        ) && dirty_may_trail(&self.meta)
            && !self.needs_write
            && self.rewrite.is_none()
            && !self.stopping
            && v.degraded == 0
            && v.can_clear == Some(true)
            && self.meta.bitmap.events_cleared == self.meta.events
            && slots.iter().all(|s| *s == Slot::InSync)
    }

    fn handed_out(&mut self, acts: &[Action]) {
        self.write_at = acts
            .iter()
            .position(|a| matches!(a, Action::WriteMetadata { .. }));
        if self.write_at.is_some() {
            // Taken as done unless its failure is fed back.
            self.rewrite = None;
        }
    }

    /// The action at position `index` of the last batch failed (the rest
    /// of the batch was not executed). If that batch's metadata write failed
    /// or never ran, the record may be on some members only, or on none, so
    /// the machine rewrites it (events + 1) before anything relies on it.
    /// Other failures cost no write (a refusal the kernel keeps repeating
    /// must not become a write storm). Take a fresh snapshot next (after a
    /// short back-off): the machine re-derives everything else from it.
    pub fn action_failed(&mut self, index: usize) {
        self.settled_clean = false;
        if self.write_at.is_some_and(|w| w >= index) {
            self.needs_write = true;
            // The write may have torn the copy it aimed at on some member:
            // the retry aims at the same copy, never at the last good one.
            #[cfg(test)]
            let retry_rule = self.fault != Fault::RetryOtherCopy;
            #[cfg(not(test))]
            let retry_rule = true;
            if retry_rule {
                self.rewrite = Some(crate::format::copy_for_events(self.meta.events));
            }
        }
        self.write_at = None;
    }

    /// md refused the stop (a program has the array open): the array runs
    /// on and is managed as before (admin requests, spares, writes).
    pub fn cancel_stop(&mut self) {
        self.stopping = false;
    }

    /// An admin request, with a fresh snapshot.
    pub fn admin(&mut self, r: &AdminRequest, v: &KernelView) -> Result<Vec<Action>, Refusal> {
        self.settled_clean = false;
        if let AdminRequest::Stop = r {
            self.stopping = true;
            return Ok(self.observe(v));
        }
        if self.stopping {
            return Err(Refusal::Stopping);
        }
        let (_, _, pending) = self.plan(v);
        if !pending.is_empty() {
            return Err(Refusal::Unsettled);
        }
        let n = self.slots();
        self.write_at = None;
        match *r {
            AdminRequest::Stop => Ok(Vec::new()),
            AdminRequest::Fail(i) => {
                if !v.members.iter().any(|k| k.index == i) {
                    return Err(Refusal::NoSuchMember(i));
                }
                let others_in_sync = (0..n)
                    .filter(|&j| j != i && classify(v, j) == Slot::InSync)
                    .count();
                if i < n && classify(v, i) == Slot::InSync && others_in_sync == 0 {
                    return Err(Refusal::LastInSync(i));
                }
                Ok(vec![Action::Member(i, MemberCommand::Faulty)])
            }
            AdminRequest::Remove(i) => match classify(v, i) {
                Slot::Absent => Err(Refusal::NoSuchMember(i)),
                Slot::Faulty { .. } | Slot::Unslotted => {
                    let mut acts = vec![Action::Member(i, MemberCommand::Remove)];
                    if i >= n
                        && self.meta.members.get(i).map(|e| e.state) == Some(MemberState::Spare)
                    {
                        // A spare leaves md first, then the record: a
                        // device md holds is never unknown to the record.
                        let mut meta = self.meta.clone();
                        self.next_record(&mut meta);
                        meta.members[i] = MemberEntry {
                            uuid: Uuid::nil(),
                            state: MemberState::Empty,
                            events: meta.events,
                        };
                        let targets = self.targets(v, &meta);
                        acts.push(Action::WriteMetadata {
                            meta: meta.clone(),
                            targets,
                        });
                        self.meta = meta;
                        self.needs_write = false;
                        self.handed_out(&acts);
                    }
                    Ok(acts)
                }
                _ => Err(Refusal::Active(i)),
            },
            AdminRequest::Add(ref facts) => {
                if facts.write_mostly && self.meta.geometry.level != crate::md::Level::Raid1 {
                    return Err(Refusal::NotRaid1(self.meta.geometry.level));
                }
                let occupied: Vec<usize> = v.members.iter().map(|k| k.index).collect();
                let a = admit(&self.meta, &occupied, facts)?;
                self.readd(&a, v, facts.write_mostly)
            }
            AdminRequest::Replace(i) => {
                self.replaceable(i, v)?;
                let spare = v.members.iter().any(|k| {
                    k.index >= n
                        && !k.flags.faulty
                        && k.slot.is_none()
                        && self.meta.members.get(k.index).map(|e| e.state)
                            == Some(MemberState::Spare)
                });
                if !spare {
                    return Err(Refusal::NoSpare);
                }
                Ok(vec![Action::Member(i, MemberCommand::WantReplacement)])
            }
            AdminRequest::GrowSize { want, member_data } => {
                let size = grow_size(&self.meta, want, member_data)?;
                let whole = (0..n).all(|i| classify(v, i) == Slot::InSync)
                    && self.meta.all_in_sync()
                    && v.degraded == 0
                    && matches!(v.sync_action, SyncAction::Idle)
                    && self.meta.resync == Checkpoint::None;
                if !whole {
                    return Err(Refusal::NotWhole);
                }
                let old = self.meta.geometry.component_size;
                let mut meta = self.meta.clone();
                self.next_record(&mut meta);
                meta.geometry.component_size = size;
                // md resyncs what the array gains (from the old size on).
                if size > old {
                    meta.resync = Checkpoint::At(old);
                }
                let acts = vec![
                    Action::WriteMetadata {
                        meta: meta.clone(),
                        targets: self.targets(v, &meta),
                    },
                    Action::SetComponentSize(size),
                ];
                self.meta = meta;
                self.needs_write = false;
                self.handed_out(&acts);
                Ok(acts)
            }
            AdminRequest::GrowDisks(want) => self.grow_disks(want, v),
            AdminRequest::AddSpare(ref facts) => {
                if facts.write_mostly {
                    return Err(Refusal::SpareWriteMostly);
                }
                let a = admit_spare(&self.meta, facts)?;
                Ok(self.add_spare(&a, v))
            }
        }
    }

    /// The next event count for a record that changes spares only: a
    /// record whose slots are all in sync with `events_cleared == events`
    /// keeps it so (`can_clear` may stay true through the write: every
    /// member's copy, old or new, records the array whole).
    fn next_record(&self, meta: &mut ArrayMeta) -> u64 {
        let whole = meta.all_in_sync() && meta.bitmap.events_cleared == meta.events;
        meta.events = crate::format::next_events(meta.events, self.rewrite);
        if whole {
            meta.bitmap.events_cleared = meta.events;
        }
        meta.events
    }

    /// raid1 with `want` mirrors. More: the new slots are recorded missing
    /// (spare entries move up), recovery is frozen and md gets the new
    /// count; the machine then activates spares into them, record first.
    /// Fewer: the slots held by a device (every one in sync) are packed
    /// down in order, as md packs them, and failed or missing slots are
    /// dropped. md waits for a write-pending answer inside the count's
    /// write on a clean array, so the record says dirty: the executor may
    /// answer it while the write runs (see [`Action::SetRaidDisks`]).
    fn grow_disks(&mut self, want: u32, v: &KernelView) -> Result<Vec<Action>, Refusal> {
        let g = self.meta.geometry;
        if g.level != crate::md::Level::Raid1 {
            return Err(Refusal::Reshape(g.level.as_str()));
        }
        let n = self.slots();
        let bad = |why: String| Refusal::BadDisks { want, why };
        let want_n = want as usize;
        if want_n == n {
            return Err(bad(format!("the array has {n} already")));
        }
        if want == 0 {
            return Err(bad("a mirror needs at least one device".into()));
        }
        if !matches!(v.sync_action, SyncAction::Idle) || self.meta.resync != Checkpoint::None {
            return Err(bad(
                "a resync or rebuild is running or owed; wait for it".into()
            ));
        }
        let slots: Vec<Slot> = (0..n).map(|i| classify(v, i)).collect();
        if let Some(i) = slots
            .iter()
            .position(|s| !matches!(s, Slot::InSync | Slot::Absent))
        {
            return Err(bad(format!("slot {i} is not settled; wait")));
        }
        let mut meta = self.meta.clone();
        self.next_record(&mut meta);
        let e = meta.events;
        meta.clean = false;
        meta.geometry.raid_disks = want;
        let rest: Vec<MemberEntry> = self.meta.members[n..].to_vec();
        let mut acts = Vec::new();
        let targets = self.targets(v, &self.meta);
        if want_n > n {
            let spares = v
                .members
                .iter()
                .filter(|k| k.index >= n && !k.flags.faulty && k.slot.is_none())
                .filter(|k| {
                    self.meta.members.get(k.index).map(|e| e.state) == Some(MemberState::Spare)
                })
                .count();
            if spares < want_n - n {
                return Err(bad(format!(
                    "{} new mirror(s) need as many spares, the array has {spares}; add them with add --spare",
                    want_n - n
                )));
            }
            if n + rest.len() + (want_n - n) > crate::meta::MAX_MEMBERS {
                return Err(Refusal::TableFull(crate::meta::MAX_MEMBERS));
            }
            let missing = MemberEntry {
                uuid: Uuid::nil(),
                state: MemberState::Missing,
                events: e,
            };
            meta.members.truncate(n);
            meta.members
                .extend(std::iter::repeat_n(missing, want_n - n));
            meta.members.extend(rest);
            meta.bitmap.events_cleared = self.meta.bitmap.events_cleared;
            if self.can_clear(v) == Some(true) {
                acts.push(Action::SetCanClear(false));
            }
            acts.push(Action::SetSyncAction(SyncAction::Frozen));
        } else {
            let held: Vec<MemberEntry> = (0..n)
                .filter(|&i| slots[i] == Slot::InSync)
                .map(|i| self.meta.members[i])
                .collect();
            if held.len() > want_n {
                return Err(bad(format!(
                    "{} mirrors hold a device; fail and remove the ones to drop first",
                    held.len()
                )));
            }
            let missing = MemberEntry {
                uuid: Uuid::nil(),
                state: MemberState::Missing,
                events: e,
            };
            let fill = want_n - held.len();
            meta.members = held;
            meta.members.extend(std::iter::repeat_n(missing, fill));
            meta.members.extend(rest);
        }
        acts.push(Action::WriteMetadata {
            meta: meta.clone(),
            targets,
        });
        acts.push(Action::SetRaidDisks(want));
        self.meta = meta;
        self.needs_write = false;
        self.handed_out(&acts);
        Ok(acts)
    }

    /// Record `a`'s device as a spare, then add it to md without a slot.
    /// When a slot is free, `sync_action` is frozen first so md does not
    /// put the spare in by itself: the machine activates it on its next
    /// look, record first ([`Monitor::observe`]).
    fn add_spare(&mut self, a: &Admission, v: &KernelView) -> Vec<Action> {
        let index = a.index;
        let mut acts = Vec::new();
        let n = self.slots();
        let free = (0..n).any(|i| classify(v, i) == Slot::Absent);
        if free && v.sync_action != SyncAction::Frozen {
            acts.push(Action::SetSyncAction(SyncAction::Frozen));
        }
        if a.fresh {
            acts.push(Action::PrepareDevice { index });
        }
        let mut meta = self.meta.clone();
        let events = self.next_record(&mut meta);
        let entry = MemberEntry {
            uuid: a.meta.uuid,
            state: MemberState::Spare,
            events,
        };
        match meta.members.get_mut(index) {
            Some(e) => *e = entry,
            None => meta.members.push(entry),
        }
        let mut targets = self.targets(v, &meta);
        if !targets.contains(&index) {
            targets.push(index);
            targets.sort_unstable();
        }
        acts.push(Action::WriteMetadata {
            meta: meta.clone(),
            targets,
        });
        acts.push(Action::AddSpare {
            index,
            device: a.meta,
        });
        self.meta = meta;
        self.needs_write = false;
        self.handed_out(&acts);
        acts
    }

    /// Whether slot `i` may be replaced ([`AdminRequest::Replace`]) as `v`
    /// shows the array, a spare aside: every slot is held and `i` is in
    /// sync.
    pub fn replaceable(&self, i: usize, v: &KernelView) -> Result<(), Refusal> {
        let n = self.slots();
        if let Some(f) = (0..n).find(|&j| classify(v, j) == Slot::Absent) {
            return Err(Refusal::Degraded(f));
        }
        if i >= n {
            return Err(Refusal::NoSuchMember(i));
        }
        if classify(v, i) != Slot::InSync {
            return Err(Refusal::NotInSync(i));
        }
        Ok(())
    }

    /// Whether the array wants a spare from its spare group, and which
    /// spare it could give (see [`SpareNeed`]), as `v` shows it. Only a
    /// settled machine (an empty batch for `v`) is asked.
    pub fn spare_need(&self, v: &KernelView) -> SpareNeed {
        let n = self.slots();
        if self.stopping || !v.array_state.is_running() {
            return SpareNeed::default();
        }
        let spare = v
            .members
            .iter()
            .filter(|k| k.index >= n && !k.flags.faulty && k.slot.is_none())
            .filter(|k| self.meta.members.get(k.index).map(|e| e.state) == Some(MemberState::Spare))
            .map(|k| k.index)
            .min();
        let free = (0..n).any(|i| {
            classify(v, i) == Slot::Absent
                && matches!(
                    self.meta.members[i].state,
                    MemberState::Failed | MemberState::Missing
                )
        });
        SpareNeed {
            wants: free && spare.is_none(),
            spare: if free { None } else { spare },
        }
    }

    /// `bitmap/can_clear` as the machine takes it: inert (`None`) in the
    /// kernel-managed mode, where md clears bits by itself whatever it
    /// reads, so the machine never writes it there.
    fn can_clear(&self, v: &KernelView) -> Option<bool> {
        match self.meta.bitmap.mode {
            BitmapMode::Kernel => None,
            _ => v.can_clear,
        }
    }

    fn slots(&self) -> usize {
        (self.meta.geometry.raid_disks as usize).min(self.meta.members.len())
    }

    fn readd(
        &mut self,
        a: &Admission,
        v: &KernelView,
        write_mostly: bool,
    ) -> Result<Vec<Action>, Refusal> {
        let index = a.index;
        let dev = a.device;
        if index >= self.slots() {
            return Err(Refusal::NoSuchMember(index));
        }
        // Settled, so a faulty device would already have been removed.
        if classify(v, index) != Slot::Absent {
            return Err(Refusal::SlotInUse(index));
        }
        let entry = self.meta.members[index];
        if !matches!(entry.state, MemberState::Failed | MemberState::Missing) {
            return Err(Refusal::SlotInUse(index));
        }
        if let Some(own) = dev.own {
            if own.events > self.meta.events {
                return Err(Refusal::Diverged {
                    device: own.events,
                    array: self.meta.events,
                });
            }
        }
        let kind = if self.bitmap_rebuild_ok(&entry, &dev, v) {
            RebuildKind::Bitmap
        } else {
            RebuildKind::Full
        };
        let mut acts = Vec::new();
        if self.can_clear(v) == Some(true) {
            acts.push(Action::SetCanClear(false));
        }
        acts.push(Action::SetSyncAction(SyncAction::Frozen));
        if a.fresh {
            acts.push(Action::PrepareDevice { index });
        }
        let mut meta = self.meta.clone();
        let events = crate::format::next_events(meta.events, self.rewrite);
        meta.events = events;
        meta.members[index] = MemberEntry {
            uuid: dev.uuid,
            state: MemberState::Rebuilding {
                kind,
                checkpoint: Sectors(0),
            },
            events,
        };
        // Write-mostly when asked, or when recorded so for a returning
        // member; the flag is md's, set once the device is in.
        let write_mostly = write_mostly || meta.is_write_mostly(&dev.uuid);
        if write_mostly && !meta.write_mostly.contains(&dev.uuid) {
            meta.write_mostly.push(dev.uuid);
        }
        // The device's own record is durable before it becomes a member: a
        // crash before its rebuild ends finds it recorded as rebuilding.
        let mut targets = self.targets(v, &meta);
        if !targets.contains(&index) {
            targets.push(index);
            targets.sort_unstable();
        }
        acts.push(Action::WriteMetadata {
            meta: meta.clone(),
            targets,
        });
        acts.push(Action::AddDevice {
            index,
            bitmap_based: kind == RebuildKind::Bitmap,
            device: a.meta,
        });
        if write_mostly {
            acts.push(Action::Member(index, MemberCommand::WriteMostly));
        }
        acts.push(Action::SetSyncAction(SyncAction::Recover));
        self.meta = meta;
        self.needs_write = false;
        self.handed_out(&acts);
        Ok(acts)
    }

    /// A bitmap rebuild is allowed only for the slot's own device, whose own
    /// copy was last written while it held complete data (in sync, or in a
    /// bitmap rebuild that itself started from complete data), at or after
    /// the last time the kernel was allowed to clear bits.
    /// Never for an array without a bitmap (`--bitmap none`), nor while
    /// the kernel shows no bitmap attached (no `bitmap/time_base`: in the
    /// kernel-managed mode the bitmap is attached after the start):
    /// `insync` with no bitmap behind it rebuilds nothing (measured: 0
    /// sectors) and leaves the member stale.
    fn bitmap_rebuild_ok(
        &self,
        entry: &MemberEntry,
        dev: &ReturningDevice,
        v: &KernelView,
    ) -> bool {
        if self.meta.bitmap.mode == BitmapMode::None || v.time_base.is_none() {
            return false;
        }
        let Some(own) = dev.own else { return false };
        if entry.uuid.is_nil() || entry.uuid != dev.uuid {
            return false;
        }
        if own.events < self.meta.bitmap.events_cleared {
            return false;
        }
        #[cfg(test)]
        if self.fault == Fault::TrustDeviceEvents {
            return true;
        }
        matches!(
            own.state,
            MemberState::InSync
                | MemberState::Rebuilding {
                    kind: RebuildKind::Bitmap,
                    ..
                }
        )
    }

    /// The kernel shows the array stopped (`clear` or `inactive`, or the md
    /// device deleted). Stopped after running under this machine by
    /// somebody else (systemd-shutdown's `STOP_ARRAY`, `mdadm --stop`):
    /// md's stop drained every write and sync first, so the members hold
    /// the same data and the record is made clean (member states, rebuild
    /// and resync checkpoints as recorded), as mdmon does when an array goes
    /// inactive; the daemon then forgets the array. Written to the members
    /// the record counts as holding data (in sync, rebuilding, spare): md no
    /// longer lists any, the daemon still holds them open. A stop this
    /// machine was asked for ([`AdminRequest::Stop`]) normally recorded
    /// clean before stopping (a write that slipped in is covered by the
    /// same rule). An array never seen running (not yet started, or stopped
    /// before this daemon looked) is left as recorded: nothing is known of
    /// how it stopped.
    fn plan_stopped(&self, mut m: ArrayMeta) -> (ArrayMeta, bool, Vec<Action>) {
        #[cfg(test)]
        if self.fault == Fault::ForgetAtStop {
            return (m, false, Vec::new());
        }
        // A clean record is written again after writes that left it clean
        // (its event count advances, as after any burst).
        if !self.seen_running || (m.clean && !self.needs_write && !self.written) {
            return (m, false, Vec::new());
        }
        m.clean = true;
        m.events = crate::format::next_events(self.meta.events, self.rewrite);
        let n = self.slots();
        let targets: Vec<usize> = m
            .members
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                if *i < n {
                    matches!(
                        e.state,
                        MemberState::InSync | MemberState::Rebuilding { .. }
                    )
                } else {
                    e.state == MemberState::Spare
                }
            })
            .map(|(i, _)| i)
            .collect();
        let acts = vec![Action::WriteMetadata {
            meta: m.clone(),
            targets,
        }];
        (m, true, acts)
    }

    /// Members to write a record to: every device present in the kernel,
    /// not faulty, that the record counts as in sync, rebuilding or spare.
    fn targets(&self, v: &KernelView, meta: &ArrayMeta) -> Vec<usize> {
        let n = self.slots();
        let mut t: Vec<usize> = v
            .members
            .iter()
            .filter(|k| !k.flags.faulty)
            .filter(|k| {
                if k.index < n {
                    matches!(classify(v, k.index), Slot::InSync | Slot::Recovering { .. })
                        && matches!(
                            meta.members.get(k.index).map(|e| e.state),
                            Some(MemberState::InSync | MemberState::Rebuilding { .. })
                        )
                } else {
                    matches!(
                        meta.members.get(k.index).map(|e| e.state),
                        Some(MemberState::Spare)
                    )
                }
            })
            .map(|k| k.index)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The whole decision: the record to hold afterwards, whether the batch
    /// writes it, and the batch.
    fn plan(&self, v: &KernelView) -> (ArrayMeta, bool, Vec<Action>) {
        let mut m = self.meta.clone();
        if !v.array_state.is_running() {
            return self.plan_stopped(m);
        }
        let n = self.slots();
        let mut changed = self.needs_write;
        let mut unblock = Vec::new();
        let mut remove = Vec::new();
        let mut any_recovering = false;
        let slots: Vec<Slot> = (0..n).map(|i| classify(v, i)).collect();

        // A replacement md finished (`want_replacement`): the spare holds
        // the slot in sync and the old member is failed (or gone). The
        // spare is recorded in the slot, in sync, and the old member keeps
        // the spare's entry as failed; the slot never counted as degraded.
        let replaced: Vec<(usize, usize)> = v
            .members
            .iter()
            .filter_map(|k| {
                let s = k.slot.and_then(|s| usize::try_from(s).ok())?;
                (k.index >= n
                    && s < n
                    // (md clears `replacement` only once the old member
                    // is out of the slot.)
                    && k.flags.in_sync
                    && !k.flags.faulty
                    && m.members.get(k.index).map(|e| e.state) == Some(MemberState::Spare)
                    && matches!(slots[s], Slot::Faulty { .. } | Slot::Absent))
                .then_some((s, k.index))
            })
            .collect();
        let mut slots = slots;
        let mut changed_entries: Vec<usize> = Vec::new();
        for &(slot, from) in &replaced {
            if let Slot::Faulty { .. } = slots[slot] {
                remove.push(slot);
            }
            slots[slot] = Slot::InSync;
            take_slot(&mut m, slot, from);
            m.members[slot].state = MemberState::InSync;
            changed_entries.extend([slot, from]);
        }

        let total = m.geometry.component_size;
        for (i, &s) in slots.iter().enumerate() {
            if replaced.iter().any(|&(slot, _)| slot == i) {
                continue;
            }
            let rec = m.members[i].state;
            let new_state = match s {
                Slot::Faulty { blocked } => {
                    if blocked {
                        unblock.push(i);
                    }
                    remove.push(i);
                    match rec {
                        MemberState::Failed | MemberState::Missing | MemberState::Empty => None,
                        _ => Some(MemberState::Failed),
                    }
                }
                Slot::Absent => match rec {
                    MemberState::InSync | MemberState::Rebuilding { .. } => {
                        Some(MemberState::Missing)
                    }
                    _ => None,
                },
                Slot::Unslotted => {
                    // An interrupted hot-add: take the device out again; the
                    // admin retries the re-add.
                    remove.push(i);
                    match rec {
                        MemberState::InSync | MemberState::Rebuilding { .. } => {
                            Some(MemberState::Missing)
                        }
                        _ => None,
                    }
                }
                // The kernel marks a device in_sync only once its rebuild
                // completed. A device in sync that the record calls
                // failed/missing is not ours to promote: it stays so, and
                // can_clear stays false.
                Slot::InSync => match rec {
                    MemberState::Rebuilding { .. } => Some(MemberState::InSync),
                    _ => None,
                },
                Slot::Recovering { progress } => {
                    any_recovering = true;
                    match rec {
                        MemberState::Rebuilding { kind, checkpoint } => progress
                            .and_then(|p| next_checkpoint(checkpoint, p, total))
                            .map(|c| MemberState::Rebuilding {
                                kind,
                                checkpoint: c,
                            }),
                        // Being rebuilt without our record: assume the worst.
                        _ => Some(MemberState::Rebuilding {
                            kind: RebuildKind::Full,
                            checkpoint: Sectors(0),
                        }),
                    }
                }
            };
            if let Some(st) = new_state {
                if st != rec {
                    m.members[i].state = st;
                    changed_entries.push(i);
                }
            }
        }
        // Spares: md holds them without a slot (entries from n on). When a
        // slot is failed or missing, the machine freezes recovery (so md
        // does not put a spare in by itself), records the spare rebuilding
        // fully in that slot, and only then gives it the slot.
        let spare = v
            .members
            .iter()
            .filter(|k| k.index >= n && !k.flags.faulty && k.slot.is_none())
            .filter(|k| m.members.get(k.index).map(|e| e.state) == Some(MemberState::Spare))
            .map(|k| k.index)
            .min();
        let free = (0..n).find(|&i| {
            slots[i] == Slot::Absent
                && matches!(
                    m.members[i].state,
                    MemberState::Failed | MemberState::Missing
                )
        });
        // A spare md put in a free slot by itself (recovery was not
        // frozen): recorded as if the machine had activated it.
        let adopted = v.members.iter().find_map(|k| {
            let s = k.slot.and_then(|s| usize::try_from(s).ok())?;
            (k.index >= n
                && !k.flags.faulty
                && s < n
                && slots[s] == Slot::Absent
                && m.members.get(k.index).map(|e| e.state) == Some(MemberState::Spare))
            .then_some((s, k.index))
        });
        let mut activate = None;
        if let Some((slot, from)) = adopted {
            take_slot(&mut m, slot, from);
            changed_entries.extend([slot, from]);
            any_recovering = true;
        } else if let (Some(from), Some(slot), false) = (spare, free, self.stopping) {
            if v.sync_action == SyncAction::Frozen {
                activate = Some((slot, from, m.members[from].uuid));
                take_slot(&mut m, slot, from);
                changed_entries.extend([slot, from]);
            }
        }
        let any_faulty = slots.iter().any(|s| matches!(s, Slot::Faulty { .. }));
        let spare_wanted = adopted.is_none()
            && spare.is_some()
            && (free.is_some() || any_faulty)
            && !self.stopping;
        changed |= !changed_entries.is_empty();

        // Resync checkpoint.
        let resync = match (v.sync_action, v.sync_completed) {
            (SyncAction::Resync, sc) => {
                let now = match (sc, v.resync_start) {
                    (SyncCompleted::Progress { done, .. }, _) => Some(done),
                    (_, Checkpoint::At(s)) => Some(s),
                    _ => None,
                };
                let total = match sc {
                    SyncCompleted::Progress { total, .. } => total,
                    _ => m.geometry.component_size,
                };
                match (m.resync, now) {
                    (Checkpoint::None, Some(now)) => Some(Checkpoint::At(now)),
                    (Checkpoint::None, None) => Some(Checkpoint::At(Sectors(0))),
                    (Checkpoint::At(r), Some(now)) => {
                        next_checkpoint(r, now, total).map(Checkpoint::At)
                    }
                    (Checkpoint::At(_), None) => None,
                }
            }
            (SyncAction::Idle | SyncAction::Frozen, _) if v.resync_start != m.resync => {
                Some(v.resync_start)
            }
            _ => None,
        };
        if let Some(r) = resync {
            m.resync = r;
            changed = true;
        }

        // Clean / dirty. A whole mirror whose bits cover md's writes
        // ([`Monitor::writes_unmarked`]) is not marked dirty by them.
        let unmarked = !changed && self.writes_unmarked(v, &slots);
        let want_clean = match v.array_state {
            ArrayState::Clean => Some(true),
            _ if unmarked => None,
            ArrayState::Active | ArrayState::WritePending | ArrayState::ActiveIdle => Some(false),
            _ => None,
        };
        if let Some(c) = want_clean {
            if m.clean != c {
                m.clean = c;
                changed = true;
            }
        }
        // A burst of writes that left the record clean ends with a record
        // all the same, one that advances the event count (as md's own
        // metadata does twice per burst): a copy of a member taken before
        // the writes then reads older than the members, and is left out
        // and rebuilt whole instead of serving its old blocks. It comes
        // before `clean` (md idle, the record still clean: nothing it
        // claims changes), so that md showing `clean` means the record is
        // done; at `clean` only if that was missed (a daemon restarted in
        // between).
        let burst_over = match v.array_state {
            ArrayState::ActiveIdle => unmarked,
            ArrayState::Clean => self.written,
            _ => false,
        };
        if burst_over {
            changed = true;
        }

        // The clearing regime: the kernel and the record agree that every
        // slot is in sync.
        let kernel_all = v.degraded == 0 && slots.iter().all(|s| *s == Slot::InSync);
        let rec_all = n > 0 && m.members[..n].iter().all(|e| e.state.is_in_sync());
        let regime = kernel_all && rec_all;
        let can_clear = self.can_clear(v);
        let want_true = can_clear == Some(false) && regime;
        if want_true {
            // `true` must follow a write of all-in-sync with EC == E.
            changed = true;
        }
        if changed {
            m.events = crate::format::next_events(self.meta.events, self.rewrite);
            for &i in &changed_entries {
                m.members[i].events = m.events;
            }
            if regime {
                m.bitmap.events_cleared = m.events;
            }
        }
        let need_false = can_clear == Some(true)
            && !(regime && m.bitmap.events_cleared == m.events && m.all_in_sync());

        // md's first write after clean waits for `active`; where the bits
        // already cover it and a record is owed all the same (can_clear to
        // set again), `active` comes before the record ([`dirty_may_trail`]).
        let answer_first = v.array_state == ArrayState::WritePending
            && changed
            && !self.needs_write
            && self.rewrite.is_none()
            && !self.stopping
            && regime
            && !need_false
            && unblock.is_empty()
            && remove.is_empty()
            && dirty_may_trail(&self.meta)
            && m.marks_dirty_only(&self.meta);
        let mut acts = Vec::new();
        if answer_first {
            acts.push(Action::SetArrayState(ArrayState::Active));
        }
        #[cfg(test)]
        let early_true = self.fault == Fault::TrueBeforeRecord && want_true;
        #[cfg(not(test))]
        let early_true = false;
        if need_false {
            acts.push(Action::SetCanClear(false));
        }
        if early_true {
            acts.push(Action::SetCanClear(true));
        }
        if changed {
            let mut targets = self.targets(v, &m);
            // A spare that took a slot is still listed at its spare entry:
            // its own record names it in the slot.
            let moved = activate
                .map(|(_, from, _)| from)
                .into_iter()
                .chain(replaced.iter().map(|&(_, from)| from));
            for from in moved {
                targets.push(from);
            }
            targets.sort_unstable();
            targets.dedup();
            acts.push(Action::WriteMetadata {
                meta: m.clone(),
                targets,
            });
        }
        if spare_wanted && activate.is_none() && v.sync_action == SyncAction::Idle {
            // Before the failed member is unblocked: md would otherwise
            // remove it and put the spare in at once (measured on 6.1),
            // before anything is recorded.
            acts.push(Action::SetSyncAction(SyncAction::Frozen));
        }
        for &i in &unblock {
            acts.push(Action::Member(i, MemberCommand::Unblock));
        }
        if v.array_state == ArrayState::WritePending && !answer_first {
            acts.push(Action::SetArrayState(ArrayState::Active));
        }
        for &i in &remove {
            acts.push(Action::Member(i, MemberCommand::Remove));
        }
        if let Some((index, _, uuid)) = activate {
            acts.push(Action::ActivateSpare { index, uuid });
            acts.push(Action::SetSyncAction(SyncAction::Recover));
        } else if v.sync_action == SyncAction::Frozen
            && !spare_wanted
            && !matches!(v.sync_completed, SyncCompleted::Progress { .. })
        {
            // (A recovery md started just before `frozen` was written runs
            // on with `frozen` shown: md refuses `recover` then, and `idle`
            // would interrupt it. Left alone; it ends by itself.)
            // Left frozen by an interrupted re-add: finish it or undo it.
            acts.push(Action::SetSyncAction(if any_recovering {
                SyncAction::Recover
            } else {
                SyncAction::Idle
            }));
        }
        if want_true && !early_true {
            acts.push(Action::SetCanClear(true));
        }
        match v.array_state {
            ArrayState::ActiveIdle => acts.push(Action::SetArrayState(ArrayState::Clean)),
            // A read-only array has nothing in flight and its record was
            // not made dirty: it stops like a clean one.
            ArrayState::Clean | ArrayState::Readonly | ArrayState::ReadAuto if self.stopping => {
                acts.push(Action::SetArrayState(ArrayState::Inactive))
            }
            _ => {}
        }
        // The start hold ends once nothing else is left to do: the record is
        // durable on every member and can_clear agrees with it.
        if v.time_base.is_some_and(|t| t != m.bitmap.time_base) {
            #[cfg(test)]
            if self.fault == Fault::EarlyRelease {
                acts.insert(0, Action::ReleaseHold(m.bitmap.time_base));
            }
            if acts.is_empty() {
                acts.push(Action::ReleaseHold(m.bitmap.time_base));
            }
        }
        (m, changed, acts)
    }
}
