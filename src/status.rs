//! One typed status of a running array: what the control socket's `status`
//! and `detail` replies carry, and what `mdextctl detail` and `mdextctl
//! status` print (as text, or as JSON with `--json`). Pure: built from the
//! record and a reading of the kernel's attributes that the caller made
//! ([`KernelState`]); no I/O here.
//!
//! The JSON spelling of every field is part of mdextctl's interface and is
//! documented in mdextctl(8), JSON OUTPUT.

use crate::md::{ArrayState, Checkpoint, Level, SyncAction, SyncCompleted};
use crate::meta::{ArrayMeta, MemberEntry, MemberState, RebuildKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Exit status of `mdextctl detail` when the array cannot be found or read
/// (mdadm's `--detail --test` uses 4 too).
pub const EXIT_ERROR: u8 = 4;

/// A running array: its record (the newest metadata among its members) and
/// the kernel's view of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayStatus {
    /// The md device (`md127`).
    pub md: String,
    /// The array's name.
    pub name: String,
    /// The array's UUID.
    pub uuid: Uuid,
    /// RAID level.
    pub level: Level,
    /// md `layout`.
    pub layout: u32,
    /// Stripe chunk in bytes (0 for raid1).
    pub chunk_size_bytes: u64,
    /// Number of slots.
    pub raid_disks: u32,
    /// Data per member, in sectors.
    pub component_size_sectors: u64,
    /// The kernel's `array_state` (`None`: unreadable).
    pub array_state: Option<ArrayState>,
    /// The kernel's `degraded`: slots without an in-sync member.
    pub degraded: Option<u32>,
    /// The kernel's `sync_action`.
    pub sync_action: Option<SyncAction>,
    /// Progress of a running resync or rebuild (`None` when nothing runs,
    /// when it is delayed, or unreadable).
    pub sync_completed: Option<Progress>,
    /// The kernel's `bitmap/can_clear` (`None`: no bitmap, or unreadable).
    pub can_clear: Option<bool>,
    /// The record's event count.
    pub events: u64,
    /// Whether the record says clean.
    pub clean: bool,
    /// The sector from which the record owes a resync (`None`: none owed).
    pub resync_sector: Option<u64>,
    /// The event at which the array was last started dirty and degraded
    /// with `--force` (its parity may be stale in the chunks the bitmap
    /// marks); `None`: never.
    pub forced_start_events: Option<u64>,
    /// The bitmap settings.
    pub bitmap: BitmapStatus,
    /// Every member table entry.
    pub members: Vec<MemberStatus>,
    /// Whole, degraded or unusable (what `detail`'s exit status says).
    pub health: Health,
    /// Whether mdextmon manages the array (writes hang otherwise).
    pub managed: bool,
    /// The running mdextmon's process ID, if one runs.
    pub mdextmon_pid: Option<u32>,
}

/// `sync_completed` of a running resync or rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Sectors done.
    pub done_sectors: u64,
    /// Sectors in all.
    pub total_sectors: u64,
}

/// The bitmap settings in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapStatus {
    /// Where the bits start on each member, in sectors.
    pub offset_sectors: u64,
    /// Bytes of data per bit.
    pub chunk_bytes: u64,
    /// Number of chunks (bits in use).
    pub chunks: u64,
    /// md's `bitmap/time_base`, seconds.
    pub time_base: u32,
    /// The event count at which md was last allowed to clear bits.
    pub events_cleared: u64,
    /// The bitmap mode the array last ran in: none, external or kernel.
    pub mode: crate::meta::BitmapMode,
}

/// A member table entry's state, as `examine` and `detail` spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// An unused entry.
    Empty,
    /// Holds good data for its slot.
    InSync,
    /// Being rebuilt.
    Rebuilding,
    /// Failed.
    Failed,
    /// A spare.
    Spare,
    /// The slot has no device.
    Missing,
}

impl From<MemberState> for EntryState {
    fn from(s: MemberState) -> EntryState {
        match s {
            MemberState::Empty => EntryState::Empty,
            MemberState::InSync => EntryState::InSync,
            MemberState::Rebuilding { .. } => EntryState::Rebuilding,
            MemberState::Failed => EntryState::Failed,
            MemberState::Spare => EntryState::Spare,
            MemberState::Missing => EntryState::Missing,
        }
    }
}

impl EntryState {
    /// The spelling (as in the JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Empty => "empty",
            EntryState::InSync => "in-sync",
            EntryState::Rebuilding => "rebuilding",
            EntryState::Failed => "failed",
            EntryState::Spare => "spare",
            EntryState::Missing => "missing",
        }
    }
}

/// One member table entry as the record holds it (what `examine` prints
/// for each entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStatus {
    /// Table index: the slot for an index below `raid_disks`.
    pub index: usize,
    /// The member's UUID (nil for an unknown device).
    pub uuid: Uuid,
    /// Its state.
    pub state: EntryState,
    /// For a rebuilding member: bitmap-based or full.
    pub rebuild_kind: Option<RebuildKind>,
    /// For a rebuilding member: sectors already rebuilt.
    pub rebuild_checkpoint_sectors: Option<u64>,
    /// The event count at which this state was recorded.
    pub events: u64,
    /// raid1: md reads from this member only when no other can serve the
    /// read (md's `writemostly`).
    #[serde(default)]
    pub write_mostly: bool,
}

impl EntryStatus {
    /// Entry `index` of a member table.
    pub fn new(index: usize, e: &MemberEntry) -> EntryStatus {
        let (kind, cp) = match e.state {
            MemberState::Rebuilding { kind, checkpoint } => (Some(kind), Some(checkpoint.0)),
            _ => (None, None),
        };
        EntryStatus {
            index,
            uuid: e.uuid,
            state: e.state.into(),
            rebuild_kind: kind,
            rebuild_checkpoint_sectors: cp,
            events: e.events,
            write_mostly: false,
        }
    }

    /// Entry `index` of `meta`'s member table, with its flags.
    pub fn of(meta: &ArrayMeta, index: usize, e: &MemberEntry) -> EntryStatus {
        EntryStatus {
            write_mostly: meta.is_write_mostly(&e.uuid),
            ..EntryStatus::new(index, e)
        }
    }
}

/// A member table entry of a running array, with the device holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The entry as recorded.
    #[serde(flatten)]
    pub entry: EntryStatus,
    /// The device md holds for it (`/dev/loop0`), if any.
    pub device: Option<String>,
}

/// How usable a running array is; `mdextctl detail` exits with
/// [`Health::exit_code`], as `mdadm --detail --test` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Every slot holds an in-sync member.
    Whole,
    /// Runs, but a member is missing, failed or being rebuilt.
    Degraded,
    /// Cannot run: not running, or fewer working members than the level
    /// needs.
    Unusable,
    /// The kernel's state could not be read.
    Unknown,
}

impl Health {
    /// Judge an array from the kernel's state and the record's member
    /// table. The kernel's `degraded` counts a member being rebuilt as
    /// missing until its rebuild ends; the record is consulted too, so that
    /// a failure recorded but not (yet) seen by the kernel, or the other way
    /// round, counts.
    pub fn judge(
        level: Level,
        raid_disks: u32,
        array_state: Option<ArrayState>,
        degraded: Option<u32>,
        members: &[MemberEntry],
    ) -> Health {
        let Some(state) = array_state else {
            return Health::Unknown;
        };
        if !state.is_running() || state == ArrayState::Broken {
            return Health::Unusable;
        }
        let n = raid_disks as usize;
        let recorded_out = (0..n)
            .filter(|&i| !members.get(i).is_some_and(|m| m.state.is_in_sync()))
            .count();
        // At most n = raid_disks.
        let recorded_out = u32::try_from(recorded_out).unwrap_or(raid_disks);
        let missing = degraded.unwrap_or(recorded_out);
        if raid_disks.saturating_sub(missing) < level.min_working(raid_disks) {
            Health::Unusable
        } else if missing > 0 || recorded_out > 0 {
            Health::Degraded
        } else {
            Health::Whole
        }
    }

    /// `mdextctl detail`'s exit status: 0 whole, 1 degraded, 2 unusable,
    /// 4 unknown ([`EXIT_ERROR`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Whole => 0,
            Health::Degraded => 1,
            Health::Unusable => 2,
            Health::Unknown => EXIT_ERROR,
        }
    }

    /// The spelling (as in the JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Whole => "whole",
            Health::Degraded => "degraded",
            Health::Unusable => "unusable",
            Health::Unknown => "unknown",
        }
    }
}

/// What the caller read from the kernel (each `None` when unreadable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    /// `array_state`.
    pub array_state: Option<ArrayState>,
    /// `degraded`.
    pub degraded: Option<u32>,
    /// `sync_action`.
    pub sync_action: Option<SyncAction>,
    /// `sync_completed`.
    pub sync_completed: Option<SyncCompleted>,
    /// `bitmap/can_clear` (`None` also when there is no bitmap).
    pub can_clear: Option<bool>,
}

impl ArrayStatus {
    /// The status of md device `md` running the array `meta` records;
    /// `devices` says which device holds each table entry (`(index, kernel
    /// name)`). `managed` and `mdextmon_pid` start false and empty: the
    /// caller knows them.
    pub fn new(md: &str, meta: &ArrayMeta, devices: &[(usize, &str)], k: &KernelState) -> Self {
        let g = &meta.geometry;
        let members = meta
            .members
            .iter()
            .enumerate()
            .map(|(i, e)| MemberStatus {
                entry: EntryStatus::of(meta, i, e),
                device: devices
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, k)| format!("/dev/{k}")),
            })
            .collect();
        ArrayStatus {
            md: md.to_string(),
            name: meta.name.clone(),
            uuid: meta.uuid,
            level: g.level,
            layout: g.layout,
            chunk_size_bytes: g.chunk_size.0,
            raid_disks: g.raid_disks,
            component_size_sectors: g.component_size.0,
            health: Health::judge(
                g.level,
                g.raid_disks,
                k.array_state,
                k.degraded,
                &meta.members,
            ),
            array_state: k.array_state,
            degraded: k.degraded,
            sync_action: k.sync_action,
            sync_completed: match k.sync_completed {
                Some(SyncCompleted::Progress { done, total }) => Some(Progress {
                    done_sectors: done.0,
                    total_sectors: total.0,
                }),
                _ => None,
            },
            can_clear: k.can_clear,
            events: meta.events,
            clean: meta.clean,
            resync_sector: match meta.resync {
                Checkpoint::None => None,
                Checkpoint::At(s) => Some(s.0),
            },
            forced_start_events: meta.forced_start,
            bitmap: BitmapStatus {
                offset_sectors: meta.bitmap.offset.0,
                chunk_bytes: meta.bitmap.chunk.0,
                chunks: meta.bitmap_chunks(),
                time_base: meta.bitmap.time_base,
                events_cleared: meta.bitmap.events_cleared,
                mode: meta.bitmap.mode,
            },
            members,
            managed: false,
            mdextmon_pid: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{BitmapInfo, Geometry};
    use crate::units::{Bytes, Sectors};

    fn entry(state: MemberState) -> MemberEntry {
        MemberEntry {
            uuid: Uuid::from_u128(7),
            state,
            events: 3,
        }
    }

    fn meta(level: Level, states: &[MemberState]) -> ArrayMeta {
        ArrayMeta {
            version: crate::format::VERSION,
            uuid: Uuid::from_u128(1),
            name: "t".into(),
            ctime: 0,
            utime: 0,
            forced_start: None,
            write_mostly: Vec::new(),
            geometry: Geometry {
                level,
                layout: level.default_layout(),
                chunk_size: Bytes(if level.has_chunk() { 512 << 10 } else { 0 }),
                raid_disks: u32::try_from(states.len()).expect("few states"),
                component_size: Sectors(2048),
            },
            events: 9,
            clean: true,
            resync: Checkpoint::None,
            bitmap: BitmapInfo {
                offset: Sectors(16),
                size: Bytes(4096),
                chunk: Bytes(64 << 10),
                time_base: 5,
                events_cleared: 9,
                mode: crate::meta::BitmapMode::External,
            },
            members: states.iter().copied().map(entry).collect(),
        }
    }

    fn kernel(state: &str, degraded: u32) -> KernelState {
        KernelState {
            array_state: state.parse().ok(),
            degraded: Some(degraded),
            sync_action: Some(SyncAction::Idle),
            sync_completed: Some(SyncCompleted::None),
            can_clear: Some(true),
        }
    }

    const IN: MemberState = MemberState::InSync;
    const OUT: MemberState = MemberState::Missing;

    /// `detail`'s exit status, as `mdadm --detail --test` gives it.
    #[test]
    fn exit_status_follows_health() {
        let code = |level, states: &[MemberState], k: KernelState| {
            ArrayStatus::new("md127", &meta(level, states), &[], &k)
                .health
                .exit_code()
        };
        assert_eq!(code(Level::Raid1, &[IN, IN], kernel("clean", 0)), 0);
        assert_eq!(code(Level::Raid1, &[IN, IN], kernel("readonly", 0)), 0);
        // One of two mirrors missing: degraded, still usable.
        assert_eq!(code(Level::Raid1, &[IN, OUT], kernel("active", 1)), 1);
        // A member being rebuilt counts as degraded in the record alone...
        let rebuilding = MemberState::Rebuilding {
            kind: RebuildKind::Bitmap,
            checkpoint: Sectors(8),
        };
        assert_eq!(code(Level::Raid1, &[IN, rebuilding], kernel("clean", 0)), 1);
        // ...and a failure the kernel shows before it is recorded too.
        assert_eq!(code(Level::Raid5, &[IN, IN, IN], kernel("clean", 1)), 1);
        // Fewer members than the level needs: unusable.
        assert_eq!(code(Level::Raid5, &[IN, OUT, OUT], kernel("clean", 2)), 2);
        assert_eq!(
            code(Level::Raid6, &[IN, IN, OUT, OUT, OUT], kernel("clean", 3)),
            2
        );
        assert_eq!(
            code(Level::Raid6, &[IN, IN, IN, OUT, OUT], kernel("clean", 2)),
            1
        );
        // Not running, or broken: unusable.
        assert_eq!(code(Level::Raid1, &[IN, IN], kernel("inactive", 0)), 2);
        assert_eq!(code(Level::Raid1, &[IN, IN], kernel("broken", 0)), 2);
        // Unreadable kernel state: an error.
        assert_eq!(code(Level::Raid1, &[IN, IN], KernelState::default()), 4);
        // Without `degraded`, the record decides.
        let k = KernelState {
            degraded: None,
            ..kernel("clean", 0)
        };
        assert_eq!(code(Level::Raid5, &[IN, OUT, OUT], k), 2);
    }

    #[test]
    fn json_values_are_typed() {
        let mut k = kernel("active", 1);
        k.sync_action = Some(SyncAction::Recover);
        k.sync_completed = Some(SyncCompleted::Progress {
            done: Sectors(10),
            total: Sectors(20),
        });
        let rebuilding = MemberState::Rebuilding {
            kind: RebuildKind::Full,
            checkpoint: Sectors(10),
        };
        let s = ArrayStatus::new(
            "md127",
            &meta(Level::Raid1, &[IN, rebuilding]),
            &[(0, "loop0"), (1, "loop1")],
            &k,
        );
        let v = serde_json::to_value(&s).expect("ser");
        assert_eq!(v["md"], "md127");
        assert_eq!(v["uuid"], "00000000-0000-0000-0000-000000000001");
        assert_eq!(v["level"], "raid1");
        assert_eq!(v["raid_disks"], 2);
        assert_eq!(v["array_state"], "active");
        assert_eq!(v["degraded"], 1);
        assert_eq!(v["sync_action"], "recover");
        assert_eq!(v["sync_completed"]["done_sectors"], 10);
        assert_eq!(v["can_clear"], true);
        assert_eq!(v["clean"], true);
        assert_eq!(v["resync_sector"], serde_json::Value::Null);
        assert_eq!(v["bitmap"]["chunks"], 16);
        assert_eq!(v["health"], "degraded");
        assert_eq!(v["managed"], false);
        let m1 = &v["members"][1];
        assert_eq!(m1["index"], 1);
        assert_eq!(m1["state"], "rebuilding");
        assert_eq!(m1["rebuild_kind"], "full");
        assert_eq!(m1["rebuild_checkpoint_sectors"], 10);
        assert_eq!(m1["device"], "/dev/loop1");
        // And back: the socket's replies are read with the same type.
        let back: ArrayStatus = serde_json::from_value(v).expect("de");
        assert_eq!(back, s);
    }
}
