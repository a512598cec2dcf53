//! Exhaustive explicit-state model check of [`Monitor`] against a small
//! abstract kernel, disks and daemon executor (breadth-first search over a
//! hashable state; no external crate).
//!
//! # The model
//! - **Kernel**: raid1 with `n` slots (2 by default), `CH` bitmap chunks.
//!   `array_state` clean/active/write-pending/active-idle; `can_clear`; a
//!   `hold` flag (the assembler's long `time_base`: no bit clearing); per
//!   slot a device status (absent, in sync, faulty+blocked, faulty, added
//!   without slot, spare in slot waiting for `recover`, rebuilding at a chunk
//!   position, bitmap-based or full); `sync_action` idle/frozen/recover; the
//!   bitmap's set bits and their NEEDED marks; one held write; and a
//!   "notified" flag (the daemon wakes only on changes md notifies: NOT the
//!   write-pending set by a member failure or at the end of a recovery,
//!   which come with other notifications, and not a write held on an
//!   already write-pending array).
//! - **Bits** are cleared one at a time when `can_clear` is true, there is
//!   no hold, and the chunk is not NEEDED while degraded. Writes made while
//!   degraded mark their chunk NEEDED; when the array becomes non-degraded
//!   NEEDED marks are forgotten (pessimistic). A bitmap-based rebuild syncs
//!   only NEEDED chunks (kernel 6.1/6.12 behaviour, the root of the
//!   degraded-restart trap); a full rebuild syncs all.
//! - **Data**: per device, the set of chunks it missed (writes made while it
//!   was not in sync, or everything for a blank replacement device).
//! - **Disks**: both durable copies of every device's metadata. A record
//!   with events `e` goes to copy [`crate::format::copy_for_events`]`(e)`,
//!   only by `WriteMetadata`, only to its targets; a device reads as its
//!   newest valid copy. A failed `WriteMetadata` reaches its first target
//!   and TEARS the copy it aimed at on every other target (the worst case).
//!   `PrepareDevice` clears both copies of the device being added.
//! - **Crash**: kernel state lost; reassembly by the shipped code: the
//!   devices with a valid copy are the candidates of
//!   [`crate::assembly::choose`] (`--run`), which decides who joins; the
//!   array is started by [`super::start_plan`]: its `time_base` (the hold)
//!   and its re-armed chunks (loaded as NEEDED) are applied; the array
//!   comes up write-pending if dirty or degraded (the instant resync), with
//!   `can_clear` true (md's default). Daemon memory is lost.
//! - **Daemon**: `Monitor` + a queue of actions executed one at a time, so a
//!   crash, a daemon restart or an action failure can fall between any two.
//!   At start it reads every member md holds: the newest valid copy, and
//!   [`crate::format::damaged_copy`] of their copies' validity. A failed
//!   `AddDevice` leaves the device added without a slot. The daemon
//!   observes when notified, after every completed batch, and after a
//!   failure; between batches it may answer a `write-pending` with
//!   `active` before it looks, where [`Monitor::may_answer_at_once`] says
//!   so. The hold ends only by the monitor's `ReleaseHold`.
//! - **Environment**: writes to any chunk, idleness, member failures (never
//!   the last in-sync one), admin `add` of the slot's own device or of a
//!   blank replacement, decided by the shipped [`super::admit`] from the
//!   device's facts, recovery progress and end, crashes, daemon restarts,
//!   and a stop by somebody else (systemd-shutdown's `STOP_ARRAY`: md
//!   drains, releases every member and the md device goes away; it cannot
//!   finish while a write is held or a failure waits for the metadata
//!   handler), after which the array is assembled again by the shipped code
//!   once the daemon is done with it.
//!
//! # Properties
//! 1. The invariant: `can_clear` true and no hold ⇒ every present device's
//!    durable copy records all slots in sync with `events_cleared == events`.
//! 2. Data: a device the kernel has in sync missed no chunk (so no member is
//!    ever rebuilt from a bitmap that lost bits it needs).
//! 4. Copies: every device md holds keeps at least one valid metadata copy
//!    (two failed writes in a row never tear both).
//! 5. Stop: once the daemon has handled a stop of an array it saw running,
//!    its record is clean and is the newest copy on every device it counts
//!    as holding data (and properties 1, 2 and 4 hold through the stop and
//!    the assembly after it).
//! 6. Torn writes: a power cut while a write is on its way to the members
//!    (its chunk's copies may disagree) is followed by a start that owes a
//!    resync whenever two copies of the chunk come up (md's writes to a
//!    clean whole mirror leave its record clean, its bits being the dirty
//!    record: [`super::dirty_may_trail`]; the start then finds the bits
//!    set).
//! 3. No write waits forever: from every reachable state with a held write,
//!    a state with no held write is reachable without further crashes,
//!    restarts, failures, action failures, writes or admin requests.
//!
//! The kernel-managed bitmap mode ([`Bounds::kernel_mode`]): the kernel
//! clears bits whatever `can_clear` says; the record names mode `kernel`,
//! so the shipped start plan re-arms at every dirty or degraded start;
//! properties 2 to 5 are checked, property 1 does not apply.
//!
//! # Search-space reductions (sound for the properties above)
//! - Bits are cleared as soon as the kernel may clear them (earliest
//!   clearing is the worst case: bits only ever help a rebuild).
//! - Fields that can no longer matter are reset (the batch position and the
//!   monitor's `write_at` between batches).
//! - One chunk (`CH`); each extra chunk multiplies the state space.
//! - States are stored once and found by a 64-bit hash, with an exact
//!   comparison (collisions go to a second map, so the search stays exact).
//!
//! # Results (release build)
//! - `cargo test` bounds ([`Bounds::default`]): 2 slots, 1 chunk, at most 1
//!   write, 1 member failure, 1 crash, 1 daemon restart, 1 action failure,
//!   1 re-add (same device or blank replacement): **3 433 562 states**,
//!   6 484 293 transitions, no violation.
//! - `model_check_large` (`#[ignore]`): the same with 2 re-adds (a blank
//!   replacement, then the old member again): **10 643 905 states**,
//!   20 467 190 transitions, no violation. (2 writes with 2 member failures
//!   no longer fit in this machine's memory since the model keeps both
//!   copies of every member: the search passed 33 million states with no
//!   violation before running out of 20 GB.)
//! - `model_check_stop`: a stop by somebody else with 1 write, 1 member
//!   failure, 1 daemon restart and 1 action failure around it (no crash, no
//!   re-add): **185 784 states**, no violation. (With a re-add too: 3 360 583
//!   states, also clean, before property 6; left out of `cargo test` for
//!   time.)
//! - The broken variants ([`Fault`]) and the kernel without
//!   `bitmap_set_bits` are each caught with a printed trace.
//!
//! Any bound can be overridden by hand with `MDEXT_MODEL_<FIELD>` (see
//! [`Bounds::from_env`]), e.g. `MDEXT_MODEL_CRASHES=2`.

use super::*;
use crate::units::Bytes;
use std::collections::HashMap;
use std::fmt;

/// Bitmap chunks in the model (one is enough for every property checked;
/// each extra chunk multiplies the state space).
const CH: u8 = 1;
/// Sectors per chunk.
const SECT: u64 = 128;
/// The recorded `bitmap/time_base` of the model's array.
const TIME_BASE: u32 = 1;
/// Data offset of every device, in sectors.
const DATA_OFFSET: u64 = 2048;
/// Most slots the state arrays hold.
const MAXN: usize = 3;
const ALL: u8 = (1 << CH) - 1;

/// A slot index (< [`MAXN`]) as the model's states hold it.
fn slot8(i: usize) -> u8 {
    u8::try_from(i).expect("slot < MAXN")
}

/// A state's index as a state id (ids are u32 to keep the tables small).
fn state_id(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 states")
}

/// Search bounds and model switches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub n: usize,
    pub writes: u8,
    pub fails: u8,
    pub crashes: u8,
    pub restarts: u8,
    pub action_failures: u8,
    pub readds: u8,
    /// Stops by somebody else (systemd-shutdown's `STOP_ARRAY`).
    pub stops: u8,
    /// Allow re-adding a blank replacement device.
    pub fresh: bool,
    /// The assembler writes the on-disk bits to `bitmap_set_bits` on a
    /// degraded assembly (the fix for the degraded-restart trap).
    pub set_bits: bool,
    /// The assembler reads the bits to decide a clean record's resync
    /// ([`crate::assembly::Choice::bits_set`]).
    pub bits_at_start: bool,
    /// The monitor variant under test.
    pub fault: Fault,
    /// The kernel-managed bitmap mode (md from 6.18 on): the kernel clears
    /// bits whatever `can_clear` says (only the hold and NEEDED marks stop
    /// it), the array's record names mode `kernel` (so the shipped
    /// [`super::start_plan`] re-arms at every dirty or degraded start), and
    /// property 1 does not apply (nothing is promised about `can_clear`).
    pub kernel_mode: bool,
}

impl Bounds {
    /// The defaults, with `MDEXT_MODEL_<FIELD>` environment overrides for
    /// exploring larger or smaller bounds by hand.
    pub fn from_env() -> Bounds {
        let mut b = Bounds::default();
        let get = |k: &str, d: u8| {
            std::env::var(format!("MDEXT_MODEL_{k}"))
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        b.n = get("N", u8::try_from(b.n).expect("default n < MAXN")) as usize;
        b.writes = get("WRITES", b.writes);
        b.fails = get("FAILS", b.fails);
        b.crashes = get("CRASHES", b.crashes);
        b.restarts = get("RESTARTS", b.restarts);
        b.action_failures = get("AFAILS", b.action_failures);
        b.readds = get("READDS", b.readds);
        b.stops = get("STOPS", b.stops);
        b
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            n: 2,
            writes: 1,
            fails: 1,
            crashes: 1,
            restarts: 1,
            action_failures: 1,
            readds: 1,
            stops: 0,
            fresh: true,
            set_bits: true,
            bits_at_start: true,
            fault: Fault::None,
            kernel_mode: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Arr {
    Clean,
    Active,
    WritePending,
    ActiveIdle,
    /// Stopped by somebody else: md released every member (`clear`).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Km {
    Absent,
    InSync,
    FaultyBlocked,
    Faulty,
    /// Added, `insync` maybe written, no slot.
    Unslotted {
        bitmap: bool,
    },
    /// In its slot, waiting for `recover`.
    Spare {
        bitmap: bool,
    },
    /// Rebuilding; chunks below `pos` are done.
    Rebuild {
        bitmap: bool,
        pos: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Sync {
    Idle,
    Frozen,
    Recover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Kernel {
    arr: Arr,
    can_clear: bool,
    hold: bool,
    sync: Sync,
    m: [Km; MAXN],
    bits: u8,
    needed: u8,
    pending: Option<u8>,
    notified: bool,
}

/// A member entry's state, abstracted (checkpoint in sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum St {
    Empty,
    InSync,
    Reb { full: bool, cp: u16 },
    Failed,
    Spare,
    Missing,
}

/// One durable copy of the metadata, abstracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Disk {
    events: u16,
    ec: u16,
    clean: bool,
    resync: Option<u16>,
    st: [St; MAXN],
    /// Device generation recorded for each slot (0 = nil uuid).
    gen: [u8; MAXN],
    mev: [u16; MAXN],
}

/// A device's newest valid copy.
fn newest(copies: &[Option<Disk>; 2]) -> Option<Disk> {
    copies.iter().flatten().max_by_key(|d| d.events).copied()
}

/// Model values are tiny; anything else is a bug in the model.
fn small(x: u64) -> u16 {
    u16::try_from(x).expect("model counters fit in u16")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MonKey {
    meta: Disk,
    needs_write: bool,
    write_at: Option<u8>,
    rewrite: Option<u8>,
    stopping: bool,
    seen_running: bool,
    settled_clean: bool,
    written: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cmd {
    Faulty,
    Unblock,
    Remove,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AAct {
    Write(Disk, u8),
    CanClear(bool),
    ArrActive,
    ArrClean,
    ArrOther,
    Mem(u8, Cmd),
    SyncA(Sync),
    SyncOther,
    Add(u8, bool),
    Prepare(u8),
    Release,
    /// Spares (`AddSpare`, `ActivateSpare`) and grow
    /// (`SetComponentSize`): the model's tables hold no spare entry and it
    /// makes no admin grow request, so the machine never hands these out.
    Unmodelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
struct Counters {
    writes: u8,
    fails: u8,
    crashes: u8,
    restarts: u8,
    afails: u8,
    readds: u8,
    stops: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct S {
    k: Kernel,
    /// Both metadata copies of each device (`None`: blank or torn).
    disk: [[Option<Disk>; 2]; MAXN],
    gen: [u8; MAXN],
    missed: [u8; MAXN],
    mon: Option<MonKey>,
    queue: Vec<AAct>,
    /// Actions of the current batch already executed.
    done: u8,
    c: Counters,
    /// Chunks a write is on its way to the members of: a power cut now may
    /// leave their copies disagreeing.
    torn: u8,
    /// A crash left chunks whose copies may disagree and the start that
    /// followed owed no resync (property 6).
    lost: bool,
}

/// A transition, for traces.
#[derive(Clone, Debug)]
enum Tr {
    WriteArrives(u8),
    WriteCompletes(u8),
    WriteLands(u8),
    Idle,
    MemberFails(usize),
    RecoveryStep(usize, u8),
    RecoveryEnd(usize),
    Crash,
    DaemonStart,
    DaemonRestart,
    Observe,
    AnswerAtOnce,
    Exec(AAct),
    ExecRefused(AAct),
    ExecFails(AAct),
    ReAdd { slot: usize, fresh: bool },
    Stop,
    Reassemble,
}

impl Tr {
    /// Transitions allowed when checking "no write waits forever".
    fn quiet(&self) -> bool {
        !matches!(
            self,
            Tr::WriteArrives(_)
                | Tr::MemberFails(_)
                | Tr::Crash
                | Tr::DaemonRestart
                | Tr::ExecFails(_)
                | Tr::ReAdd { .. }
                | Tr::Stop
                | Tr::Reassemble
        )
    }
}

fn uuid_of(slot: usize, gen: u8) -> Uuid {
    if gen == 0 {
        Uuid::nil()
    } else {
        Uuid::from_u128((((slot as u128) + 1) << 8) | gen as u128)
    }
}

fn gen_of(u: &Uuid) -> u8 {
    (u.as_u128() & 0xff) as u8
}

fn st_to_state(s: St) -> MemberState {
    match s {
        St::Empty => MemberState::Empty,
        St::InSync => MemberState::InSync,
        St::Reb { full, cp } => MemberState::Rebuilding {
            kind: if full {
                RebuildKind::Full
            } else {
                RebuildKind::Bitmap
            },
            checkpoint: Sectors(u64::from(cp)),
        },
        St::Failed => MemberState::Failed,
        St::Spare => MemberState::Spare,
        St::Missing => MemberState::Missing,
    }
}

fn state_to_st(s: MemberState) -> St {
    match s {
        MemberState::Empty => St::Empty,
        MemberState::InSync => St::InSync,
        MemberState::Rebuilding { kind, checkpoint } => St::Reb {
            full: kind == RebuildKind::Full,
            cp: small(checkpoint.0),
        },
        MemberState::Failed => St::Failed,
        MemberState::Spare => St::Spare,
        MemberState::Missing => St::Missing,
    }
}

fn to_meta(d: &Disk, n: usize) -> ArrayMeta {
    let mut m = crate::meta::test_raid1(
        u32::try_from(n).expect("n <= MAXN"),
        Sectors(CH as u64 * SECT),
        Bytes(SECT * 512),
        u64::from(d.events),
    );
    m.uuid = Uuid::from_u128(0xa);
    m.name = "m".into();
    m.clean = d.clean;
    m.resync = match d.resync {
        None => Checkpoint::None,
        Some(s) => Checkpoint::At(Sectors(u64::from(s))),
    };
    m.bitmap.events_cleared = u64::from(d.ec);
    for (j, e) in m.members.iter_mut().enumerate() {
        *e = MemberEntry {
            uuid: uuid_of(j, d.gen[j]),
            state: st_to_state(d.st[j]),
            events: u64::from(d.mev[j]),
        };
    }
    m
}

fn from_meta(m: &ArrayMeta) -> Disk {
    let mut d = Disk {
        events: small(m.events),
        ec: small(m.bitmap.events_cleared),
        clean: m.clean,
        resync: match m.resync {
            Checkpoint::None => None,
            Checkpoint::At(s) => Some(small(s.0)),
        },
        st: [St::Empty; MAXN],
        gen: [0; MAXN],
        mev: [0; MAXN],
    };
    for (j, e) in m.members.iter().enumerate().take(MAXN) {
        d.st[j] = state_to_st(e.state);
        d.gen[j] = gen_of(&e.uuid);
        d.mev[j] = small(e.events);
    }
    d
}

fn abstract_actions(acts: &[Action]) -> Vec<AAct> {
    acts.iter()
        .map(|a| match a {
            Action::WriteMetadata { meta, targets } => AAct::Write(
                from_meta(meta),
                targets.iter().fold(0u8, |m, &t| m | (1 << t)),
            ),
            Action::SetCanClear(b) => AAct::CanClear(*b),
            Action::SetArrayState(ArrayState::Active) => AAct::ArrActive,
            Action::SetArrayState(ArrayState::Clean) => AAct::ArrClean,
            Action::SetArrayState(_) => AAct::ArrOther,
            Action::Member(i, c) => AAct::Mem(
                slot8(*i),
                match c {
                    MemberCommand::Faulty => Cmd::Faulty,
                    MemberCommand::Unblock => Cmd::Unblock,
                    MemberCommand::Remove => Cmd::Remove,
                    _ => Cmd::Other,
                },
            ),
            Action::SetSyncAction(SyncAction::Idle) => AAct::SyncA(Sync::Idle),
            Action::SetSyncAction(SyncAction::Frozen) => AAct::SyncA(Sync::Frozen),
            Action::SetSyncAction(SyncAction::Recover) => AAct::SyncA(Sync::Recover),
            Action::SetSyncAction(_) => AAct::SyncOther,
            Action::AddDevice {
                index,
                bitmap_based,
                ..
            } => AAct::Add(slot8(*index), *bitmap_based),
            Action::PrepareDevice { index } => AAct::Prepare(slot8(*index)),
            Action::ReleaseHold(_) => AAct::Release,
            Action::AddSpare { .. }
            | Action::ActivateSpare { .. }
            | Action::SetComponentSize(_)
            | Action::SetRaidDisks(_) => AAct::Unmodelled,
        })
        .collect()
}

struct Model {
    b: Bounds,
}

impl Model {
    fn n(&self) -> usize {
        self.b.n
    }

    fn degraded(&self, k: &Kernel) -> u32 {
        let d = (0..self.n()).filter(|&j| k.m[j] != Km::InSync).count();
        u32::try_from(d).expect("d <= MAXN")
    }

    fn blocked(&self, k: &Kernel) -> bool {
        (0..self.n()).any(|j| k.m[j] == Km::FaultyBlocked)
    }

    fn view(&self, k: &Kernel) -> KernelView {
        let f = |s: &str| s.parse::<MemberFlags>().unwrap_or_default();
        let mut members = Vec::new();
        let mut progress = None;
        for j in 0..self.n() {
            let slot = Some(u32::try_from(j).expect("j < MAXN"));
            let (flags, slot, rs) = match k.m[j] {
                Km::Absent => continue,
                Km::InSync => (f("in_sync"), slot, Checkpoint::None),
                Km::FaultyBlocked => (f("faulty,blocked"), None, Checkpoint::None),
                Km::Faulty => (f("faulty"), None, Checkpoint::None),
                Km::Unslotted { bitmap } => (
                    f(if bitmap { "in_sync" } else { "spare" }),
                    None,
                    Checkpoint::At(Sectors(0)),
                ),
                Km::Spare { .. } => (f("spare"), slot, Checkpoint::At(Sectors(0))),
                Km::Rebuild { pos, .. } => {
                    progress = Some(pos as u64 * SECT);
                    (f("spare"), slot, Checkpoint::At(Sectors(pos as u64 * SECT)))
                }
            };
            members.push(KernelMember {
                index: j,
                flags,
                slot,
                recovery_start: rs,
            });
        }
        KernelView {
            array_state: match k.arr {
                Arr::Clean => ArrayState::Clean,
                Arr::Active => ArrayState::Active,
                Arr::WritePending => ArrayState::WritePending,
                Arr::ActiveIdle => ArrayState::ActiveIdle,
                Arr::Stopped => ArrayState::Clear,
            },
            degraded: self.degraded(k),
            sync_action: match k.sync {
                Sync::Idle => SyncAction::Idle,
                Sync::Frozen => SyncAction::Frozen,
                Sync::Recover => SyncAction::Recover,
            },
            sync_completed: match (k.sync, progress) {
                (Sync::Recover, Some(p)) => SyncCompleted::Progress {
                    done: Sectors(p),
                    total: Sectors(CH as u64 * SECT),
                },
                _ => SyncCompleted::None,
            },
            resync_start: Checkpoint::None,
            can_clear: Some(k.can_clear),
            time_base: Some(if k.hold { HOLD_TIME_BASE } else { TIME_BASE }),
            members,
        }
    }

    /// The record a [`Disk`] abstracts, in the model's bitmap mode.
    fn meta_of(&self, d: &Disk) -> ArrayMeta {
        let mut m = to_meta(d, self.n());
        if self.b.kernel_mode {
            m.bitmap.mode = crate::meta::BitmapMode::Kernel;
        }
        m
    }

    fn monitor(&self, key: &MonKey) -> Monitor {
        Monitor {
            meta: self.meta_of(&key.meta),
            needs_write: key.needs_write,
            write_at: key.write_at.map(usize::from),
            rewrite: key.rewrite.map(usize::from),
            stopping: key.stopping,
            seen_running: key.seen_running,
            settled_clean: key.settled_clean,
            written: key.written,
            fault: self.b.fault,
        }
    }

    fn key(&self, m: &Monitor) -> MonKey {
        let meta = from_meta(&m.meta);
        debug_assert_eq!(self.meta_of(&meta), m.meta, "lossy abstraction");
        MonKey {
            meta,
            needs_write: m.needs_write,
            write_at: m.write_at.map(slot8),
            rewrite: m.rewrite.map(slot8),
            stopping: m.stopping,
            seen_running: m.seen_running,
            settled_clean: m.settled_clean,
            written: m.written,
        }
    }

    fn initial(&self) -> S {
        let n = self.n();
        let mut st = [St::Empty; MAXN];
        let mut gen = [0u8; MAXN];
        let mut mev = [0u16; MAXN];
        let mut km = [Km::Absent; MAXN];
        for j in 0..n {
            st[j] = St::InSync;
            gen[j] = 1;
            mev[j] = 1;
            km[j] = Km::InSync;
        }
        let d = Disk {
            events: 1,
            ec: 1,
            clean: true,
            resync: None,
            st,
            gen,
            mev,
        };
        let mut disk = [[None; 2]; MAXN];
        for x in disk.iter_mut().take(n) {
            x[crate::format::copy_for_events(1)] = Some(d);
        }
        S {
            k: Kernel {
                arr: Arr::Clean,
                can_clear: true,
                hold: false,
                sync: Sync::Idle,
                m: km,
                bits: 0,
                needed: 0,
                pending: None,
                notified: false,
            },
            disk,
            gen,
            missed: [0; MAXN],
            mon: None,
            queue: Vec::new(),
            done: 0,
            c: Counters::default(),
            torn: 0,
            lost: false,
        }
    }

    /// Complete a write to chunk `c`.
    fn do_write(&self, s: &mut S, c: u8) {
        let bit = 1u8 << c;
        s.k.bits |= bit;
        s.torn |= bit;
        if self.degraded(&s.k) > 0 {
            s.k.needed |= bit;
        }
        for j in 0..self.n() {
            match s.k.m[j] {
                Km::InSync => {}
                Km::Rebuild { pos, .. } if c < pos => {}
                _ => s.missed[j] |= bit,
            }
        }
    }

    fn fail_member(&self, s: &mut S, j: usize) -> bool {
        let n = self.n();
        let can = matches!(s.k.m[j], Km::InSync | Km::Rebuild { .. } | Km::Spare { .. })
            && (0..n).any(|o| o != j && s.k.m[o] == Km::InSync);
        if !can {
            return false;
        }
        s.k.m[j] = Km::FaultyBlocked;
        if !(0..n).any(|o| matches!(s.k.m[o], Km::Rebuild { .. })) && s.k.sync == Sync::Recover {
            s.k.sync = Sync::Idle;
        }
        if matches!(s.k.arr, Arr::Clean | Arr::Active | Arr::ActiveIdle) {
            s.k.arr = Arr::WritePending;
        }
        s.k.notified = true; // dev-X/state and degraded notify
        true
    }

    fn start_recovery(&self, s: &mut S) {
        let mut any = false;
        for j in 0..self.n() {
            match s.k.m[j] {
                Km::Spare { bitmap } => {
                    s.k.m[j] = Km::Rebuild { bitmap, pos: 0 };
                    any = true;
                }
                Km::Rebuild { .. } => any = true,
                _ => {}
            }
        }
        s.k.sync = if any { Sync::Recover } else { Sync::Idle };
        s.k.notified = true;
    }

    /// Apply one action to the kernel/disks. `Err` = the kernel refused it.
    fn apply(&self, s: &mut S, a: &AAct) -> Result<(), ()> {
        if s.k.arr == Arr::Stopped && !matches!(a, AAct::Write(..) | AAct::Prepare(_)) {
            // The md device is gone: every sysfs write fails (ENODEV). The
            // daemon still holds the member devices open.
            return Err(());
        }
        match *a {
            AAct::Write(d, mask) => {
                let c = crate::format::copy_for_events(u64::from(d.events));
                for j in 0..self.n() {
                    if mask & (1 << j) != 0 {
                        s.disk[j][c] = Some(d);
                    }
                }
            }
            AAct::Prepare(j) => {
                let j = j as usize;
                if j >= self.n() || s.k.m[j] != Km::Absent {
                    return Err(());
                }
                s.disk[j] = [None, None];
            }
            AAct::Release => s.k.hold = false,
            AAct::CanClear(true) => {
                if self.degraded(&s.k) > 0 {
                    return Err(());
                }
                s.k.can_clear = true;
            }
            AAct::CanClear(false) => s.k.can_clear = false,
            AAct::ArrActive => s.k.arr = Arr::Active,
            AAct::ArrClean => {
                // md answers EBUSY while a write is in flight.
                if s.k.pending.is_some() || s.k.arr == Arr::WritePending || s.torn != 0 {
                    return Err(());
                }
                s.k.arr = Arr::Clean;
            }
            AAct::ArrOther | AAct::SyncOther | AAct::Unmodelled => return Err(()),
            AAct::Mem(j, cmd) => {
                let j = j as usize;
                if j >= self.n() {
                    return Err(());
                }
                match (cmd, s.k.m[j]) {
                    (Cmd::Unblock, Km::FaultyBlocked) => s.k.m[j] = Km::Faulty,
                    (Cmd::Unblock, Km::Absent) => return Err(()),
                    (Cmd::Unblock, _) => {}
                    (Cmd::Remove, Km::Faulty | Km::Unslotted { .. }) => s.k.m[j] = Km::Absent,
                    (Cmd::Remove, _) => return Err(()),
                    (Cmd::Faulty, _) => {
                        if !self.fail_member(s, j) {
                            return Err(());
                        }
                    }
                    (Cmd::Other, _) => return Err(()),
                }
            }
            AAct::SyncA(Sync::Frozen) => s.k.sync = Sync::Frozen,
            AAct::SyncA(_) => self.start_recovery(s),
            AAct::Add(j, bitmap) => {
                let j = j as usize;
                if j >= self.n() || s.k.m[j] != Km::Absent {
                    return Err(());
                }
                if s.k.sync == Sync::Frozen {
                    s.k.m[j] = Km::Spare { bitmap };
                } else {
                    // 6.12: a device added while not frozen starts a full
                    // recovery at once.
                    s.k.m[j] = Km::Rebuild {
                        bitmap: false,
                        pos: 0,
                    };
                    s.k.sync = Sync::Recover;
                }
            }
        }
        Ok(())
    }

    /// The device in slot `j` as the shipped code sees it: its newest
    /// valid copy, as a superblock.
    fn superblock(&self, s: &S, j: usize) -> Option<Superblock> {
        newest(&s.disk[j]).map(|d| Superblock {
            array: self.meta_of(&d),
            device: DeviceMeta {
                uuid: uuid_of(j, s.gen[j]),
                data_offset: Sectors(DATA_OFFSET),
                data_size: Sectors(u64::from(CH) * SECT),
            },
        })
    }

    fn crash(&self, s: &S) -> Option<S> {
        let mut t = self.reassemble(s)?;
        t.c.crashes += 1;
        Some(t)
    }

    /// The array assembled again from its disks (after a crash, or after a
    /// stop); the daemon's memory of it is lost.
    fn reassemble(&self, s: &S) -> Option<S> {
        let n = self.n();
        // Reassembly by the shipped code: `assemble --run` over every device
        // with a valid copy.
        let found: Vec<crate::assembly::Candidate> = (0..n)
            .filter_map(|j| {
                self.superblock(s, j).map(|sb| crate::assembly::Candidate {
                    path: std::path::PathBuf::from(format!("d{j}")),
                    dev: crate::sysfs::DevNum::from_raw(j as u64),
                    sb,
                    size: Sectors(DATA_OFFSET + u64::from(CH) * SECT).bytes(),
                })
            })
            .collect();
        let mut choice = crate::assembly::choose(found, true).ok()?;
        // The assembler reads the present members' bits.
        choice.bits_set = self.b.bits_at_start && s.k.bits != 0;
        let mut t = s.clone();
        // Property 6: chunks whose copies may disagree (a write on its way
        // at the crash) are resynced when two copies of them come up.
        if s.torn != 0 && choice.members.len() >= 2 && choice.resync_start() == Checkpoint::None {
            t.lost = true;
        }
        t.torn = 0;
        for j in 0..n {
            let joins = choice
                .members
                .iter()
                .any(|(i, c)| *i == j && c.dev == crate::sysfs::DevNum::from_raw(j as u64));
            t.k.m[j] = if joins { Km::InSync } else { Km::Absent };
        }
        // Started by the shipped start plan.
        let plan = super::start_plan(
            &choice.meta,
            choice.meta.bitmap.mode,
            choice.degraded(),
            &[s.k.bits],
        );
        let rearmed = plan
            .rearm
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .fold(0u8, |m, c| m | (1 << c));
        let degraded = self.degraded(&t.k) > 0;
        t.k.needed = if self.b.set_bits { rearmed } else { 0 };
        t.k.arr = if choice.resync_start() != Checkpoint::None || degraded {
            Arr::WritePending
        } else {
            Arr::Clean
        };
        t.k.can_clear = true;
        t.k.hold = plan.time_base != TIME_BASE;
        t.k.sync = Sync::Idle;
        t.k.pending = None;
        t.k.notified = false;
        t.mon = None;
        t.queue.clear();
        t.done = 0;
        Some(t)
    }

    fn successors(&self, s: &S) -> Vec<(Tr, S)> {
        let n = self.n();
        let b = &self.b;
        let mut out = Vec::new();
        let k = &s.k;

        // --- Environment and kernel ---
        if s.c.writes < b.writes && k.pending.is_none() && k.arr != Arr::Stopped {
            for c in 0..CH {
                let mut t = s.clone();
                t.c.writes += 1;
                match k.arr {
                    Arr::Clean => {
                        t.k.arr = Arr::WritePending;
                        t.k.pending = Some(c);
                        t.k.notified = true;
                    }
                    Arr::WritePending => t.k.pending = Some(c),
                    Arr::Stopped => unreachable!("no write reaches a stopped array"),
                    Arr::Active | Arr::ActiveIdle => {
                        // active-idle goes back to active at once, no block;
                        // the write itself then waits for a blocked member.
                        if k.arr == Arr::ActiveIdle {
                            t.k.arr = Arr::Active;
                            t.k.notified = true;
                        }
                        if self.blocked(k) {
                            t.k.pending = Some(c);
                        } else {
                            self.do_write(&mut t, c);
                        }
                    }
                }
                out.push((Tr::WriteArrives(c), t));
            }
        }
        if let Some(c) = k.pending {
            if k.arr == Arr::Active && !self.blocked(k) {
                let mut t = s.clone();
                t.k.pending = None;
                self.do_write(&mut t, c);
                out.push((Tr::WriteCompletes(c), t));
            }
        }
        for c in 0..CH {
            if s.torn & (1 << c) != 0 {
                let mut t = s.clone();
                t.torn &= !(1 << c);
                out.push((Tr::WriteLands(c), t));
            }
        }
        // (md shows active-idle, and can stop, only with no write in flight.)
        if k.arr == Arr::Active && k.pending.is_none() && s.torn == 0 {
            let mut t = s.clone();
            t.k.arr = Arr::ActiveIdle;
            t.k.notified = true;
            out.push((Tr::Idle, t));
        }
        if s.c.fails < b.fails {
            for j in 0..n {
                let mut t = s.clone();
                if self.fail_member(&mut t, j) {
                    t.c.fails += 1;
                    out.push((Tr::MemberFails(j), t));
                }
            }
        }
        if k.sync == Sync::Recover {
            for j in 0..n {
                if let Km::Rebuild { bitmap, pos } = k.m[j] {
                    let mut t = s.clone();
                    if pos < CH {
                        let bit = 1 << pos;
                        if !bitmap || k.needed & bit != 0 {
                            t.missed[j] &= !bit;
                        }
                        t.k.m[j] = Km::Rebuild {
                            bitmap,
                            pos: pos + 1,
                        };
                        t.k.notified = true;
                        out.push((Tr::RecoveryStep(j, pos), t));
                    } else {
                        t.k.m[j] = Km::InSync;
                        if !(0..n).any(|o| matches!(t.k.m[o], Km::Rebuild { .. })) {
                            t.k.sync = Sync::Idle;
                        }
                        if self.degraded(&t.k) == 0 {
                            t.k.needed = 0;
                        }
                        if matches!(t.k.arr, Arr::Clean | Arr::Active | Arr::ActiveIdle) {
                            t.k.arr = Arr::WritePending; // not notified itself
                        }
                        t.k.notified = true; // degraded and sync_action are
                        out.push((Tr::RecoveryEnd(j), t));
                    }
                }
            }
        }
        if s.c.crashes < b.crashes {
            if let Some(t) = self.crash(s) {
                out.push((Tr::Crash, t));
            }
        }
        // Somebody else stops the array (systemd-shutdown's STOP_ARRAY): md
        // drains every write and sync first. It cannot finish while a write
        // is held, or while a failure waits for the metadata handler
        // (write-pending, a blocked member): those wait for the daemon.
        if s.c.stops < b.stops
            && k.pending.is_none()
            && s.torn == 0
            && !self.blocked(k)
            && matches!(k.arr, Arr::Clean | Arr::Active | Arr::ActiveIdle)
        {
            let mut t = s.clone();
            t.k.arr = Arr::Stopped;
            t.k.m = [Km::Absent; MAXN];
            t.k.sync = Sync::Idle;
            // The bitmap stays on the members; nothing clears bits of a
            // stopped array.
            t.k.can_clear = false;
            t.k.hold = false;
            t.k.notified = true;
            t.c.stops += 1;
            out.push((Tr::Stop, t));
        }
        // Assembled again once the daemon is done with it (or gone).
        if k.arr == Arr::Stopped && s.queue.is_empty() {
            if let Some(t) = self.reassemble(s) {
                out.push((Tr::Reassemble, t));
            }
        }

        // --- Daemon ---
        match &s.mon {
            None => {
                // What the daemon reads of the members md holds: the newest
                // valid copy, and which copies are invalid.
                let held: Vec<usize> = (0..n).filter(|&j| k.m[j] != Km::Absent).collect();
                let newest = held
                    .iter()
                    .filter_map(|&j| newest(&s.disk[j]))
                    .max_by_key(|d| d.events);
                let rewrite = crate::format::damaged_copy(
                    held.iter()
                        .map(|&j| [s.disk[j][0].is_some(), s.disk[j][1].is_some()]),
                );
                if let Some(d) = newest {
                    let (m, acts) = Monitor::start_with_fault(
                        self.meta_of(&d),
                        rewrite,
                        &self.view(k),
                        b.fault,
                    );
                    let mut t = s.clone();
                    t.mon = Some(self.key(&m));
                    t.queue = abstract_actions(&acts);
                    t.done = 0;
                    t.k.notified = false;
                    out.push((Tr::DaemonStart, t));
                }
            }
            Some(key) => {
                if s.c.restarts < b.restarts {
                    let mut t = s.clone();
                    t.mon = None;
                    t.queue.clear();
                    t.done = 0;
                    t.c.restarts += 1;
                    out.push((Tr::DaemonRestart, t));
                }
                if let Some(a) = s.queue.first() {
                    let mut t = s.clone();
                    t.queue.remove(0);
                    t.done += 1;
                    match self.apply(&mut t, a) {
                        Ok(()) => {
                            if t.queue.is_empty() {
                                t.done = 0;
                                t.k.notified = true;
                            }
                            out.push((Tr::Exec(*a), t));
                        }
                        Err(()) => {
                            let mut t = s.clone();
                            self.feed_failure(&mut t, key);
                            out.push((Tr::ExecRefused(*a), t));
                        }
                    }
                    if s.c.afails < b.action_failures {
                        let mut t = s.clone();
                        t.c.afails += 1;
                        match *a {
                            AAct::Write(d, mask) => {
                                // The first target gets it; on every other
                                // target the copy it aimed at is torn.
                                let c = crate::format::copy_for_events(u64::from(d.events));
                                let mut first = true;
                                for j in (0..n).filter(|j| mask & (1 << j) != 0) {
                                    t.disk[j][c] = if first { Some(d) } else { None };
                                    first = false;
                                }
                            }
                            AAct::Add(j, bitmap) => {
                                let j = j as usize;
                                if j < n && t.k.m[j] == Km::Absent {
                                    t.k.m[j] = Km::Unslotted { bitmap };
                                }
                            }
                            _ => {}
                        }
                        self.feed_failure(&mut t, key);
                        out.push((Tr::ExecFails(*a), t));
                    }
                } else {
                    // The executor's answer at once to a `write-pending`
                    // read alone (`Monitor::may_answer_at_once`), before it
                    // looks.
                    if k.arr == Arr::WritePending && self.monitor(key).may_answer_at_once() {
                        let mut t = s.clone();
                        if self.apply(&mut t, &AAct::ArrActive).is_ok() {
                            out.push((Tr::AnswerAtOnce, t));
                        }
                    }
                    if k.notified {
                        let mut m = self.monitor(key);
                        let acts = m.observe(&self.view(k));
                        let mut t = s.clone();
                        t.mon = Some(self.key(&m));
                        t.queue = abstract_actions(&acts);
                        t.done = 0;
                        t.k.notified = false;
                        out.push((Tr::Observe, t));
                    }
                    if s.c.readds < b.readds && k.arr != Arr::Stopped {
                        for j in 0..n {
                            if k.m[j] != Km::Absent {
                                continue;
                            }
                            for fresh in [false, true] {
                                if fresh && !b.fresh {
                                    continue;
                                }
                                // The admin puts the slot's own device back, or
                                // swaps in a blank one; the shipped admission
                                // decides what it becomes.
                                let mut t = s.clone();
                                if fresh {
                                    t.gen[j] = s.gen[j] + 1;
                                    t.disk[j] = [None, None];
                                    t.missed[j] = ALL;
                                }
                                let facts = DeviceFacts {
                                    size: Sectors(DATA_OFFSET + u64::from(CH) * SECT),
                                    own: self.superblock(&t, j),
                                    foreign: Vec::new(),
                                    data_offset: Sectors(DATA_OFFSET),
                                    new_uuid: uuid_of(j, t.gen[j] + 1),
                                    write_mostly: false,
                                };
                                let mut m = self.monitor(key);
                                let Ok(acts) =
                                    m.admin(&AdminRequest::Add(Box::new(facts)), &self.view(k))
                                else {
                                    continue;
                                };
                                // The model keeps devices in their bays.
                                let placed = acts.iter().find_map(|a| match a {
                                    Action::AddDevice { index, device, .. } => {
                                        Some((*index, device.uuid))
                                    }
                                    _ => None,
                                });
                                let Some((index, uuid)) = placed else {
                                    continue;
                                };
                                if index != j {
                                    continue;
                                }
                                if uuid == uuid_of(j, t.gen[j] + 1) {
                                    t.gen[j] += 1; // a new member identity
                                }
                                t.mon = Some(self.key(&m));
                                t.queue = abstract_actions(&acts);
                                t.done = 0;
                                t.c.readds += 1;
                                out.push((Tr::ReAdd { slot: j, fresh }, t));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn feed_failure(&self, t: &mut S, key: &MonKey) {
        let mut m = self.monitor(key);
        let more = m
            .step(Event::ActionFailed(t.done as usize))
            .unwrap_or_default();
        debug_assert!(more.is_empty());
        t.mon = Some(self.key(&m));
        t.queue.clear();
        t.done = 0;
        t.k.notified = true;
    }

    /// The kernel clears every bit it may, at once. Clearing as early as
    /// allowed is the worst case for every property checked (bits only ever
    /// help a rebuild), so this replaces the interleavings of lazy clearing.
    fn clear_bits(&self, s: &mut S) {
        if (s.k.can_clear || self.b.kernel_mode) && !s.k.hold {
            // md clears a chunk's bit only once its writes reached every
            // member.
            let clearable = if self.degraded(&s.k) > 0 {
                s.k.bits & !s.k.needed & !s.torn
            } else {
                s.k.bits & !s.torn
            };
            s.k.bits &= !clearable;
            s.k.needed &= !clearable;
        }
    }

    /// Properties 4, 1 and 2; `Err` names the violation.
    fn check(&self, s: &S) -> Result<(), String> {
        let n = self.n();
        if s.lost {
            return Err(
                "TORN: a power cut during a write left chunks whose copies may disagree, \
                 and the start after it owed no resync"
                    .into(),
            );
        }
        for j in 0..n {
            if s.k.m[j] != Km::Absent && newest(&s.disk[j]).is_none() {
                return Err(format!(
                    "COPIES: device {j} is held by md but has no valid metadata copy {:?}",
                    s.disk[j]
                ));
            }
        }
        if s.k.can_clear && !s.k.hold && !self.b.kernel_mode {
            for j in 0..n {
                if s.k.m[j] == Km::Absent {
                    continue;
                }
                match newest(&s.disk[j]) {
                    Some(d)
                        if (0..n).all(|i| d.st[i] == St::InSync) && d.ec == d.events => {}
                    other => {
                        return Err(format!(
                            "INVARIANT: can_clear is true but device {j}'s durable metadata is {other:?}"
                        ))
                    }
                }
            }
        }
        // Property 5: once the daemon has handled a stop it saw happen (its
        // batch done, nothing left to observe), the record it holds is
        // clean and is the newest copy on every device it counts as holding
        // data.
        if let (Arr::Stopped, Some(key)) = (s.k.arr, &s.mon) {
            if key.seen_running && s.queue.is_empty() && !s.k.notified {
                let stale: Vec<usize> = (0..n)
                    .filter(|&j| matches!(key.meta.st[j], St::InSync | St::Reb { .. }))
                    .filter(|&j| newest(&s.disk[j]) != Some(key.meta))
                    .collect();
                if !key.meta.clean || key.needs_write || !stale.is_empty() {
                    return Err(format!(
                        "STOP: the array was stopped under the daemon but is not recorded clean \
                         (record {:?}, needs write {}, stale on {stale:?})",
                        key.meta, key.needs_write
                    ));
                }
            }
        }
        for j in 0..n {
            if s.k.m[j] == Km::InSync && s.missed[j] != 0 {
                return Err(format!(
                    "DATA: device {j} is in sync but misses chunks {:#b}",
                    s.missed[j]
                ));
            }
        }
        Ok(())
    }
}

/// The outcome of a search.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub states: usize,
    pub edges: usize,
    /// Edges where the daemon answered `write-pending` at once.
    pub at_once: usize,
    /// A violation and the trace leading to it.
    pub violation: Option<(String, Vec<String>)>,
}

impl fmt::Display for Tr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tr::WriteArrives(c) => write!(f, "kernel: a write to chunk {c} arrives"),
            Tr::WriteCompletes(c) => write!(f, "kernel: the held write to chunk {c} completes"),
            Tr::WriteLands(c) => write!(f, "kernel: the write to chunk {c} reached every member"),
            Tr::Idle => write!(f, "kernel: idle (active -> active-idle)"),
            Tr::MemberFails(j) => write!(f, "kernel: member {j} fails"),
            Tr::RecoveryStep(j, c) => write!(f, "kernel: member {j} recovers chunk {c}"),
            Tr::RecoveryEnd(j) => write!(f, "kernel: recovery of member {j} ends"),
            Tr::Crash => write!(f, "CRASH and reassembly"),
            Tr::DaemonStart => write!(f, "daemon: Monitor::start"),
            Tr::DaemonRestart => write!(f, "daemon: RESTART (memory lost)"),
            Tr::Observe => write!(f, "daemon: observe"),
            Tr::AnswerAtOnce => write!(f, "daemon: write-pending answered active at once"),
            Tr::Exec(a) => write!(f, "daemon: execute {a:?}"),
            Tr::ExecRefused(a) => write!(f, "daemon: kernel refuses {a:?}"),
            Tr::ExecFails(a) => write!(f, "daemon: FAILURE executing {a:?}"),
            Tr::Stop => write!(f, "someone else stops the array (STOP_ARRAY)"),
            Tr::Reassemble => write!(f, "the array is assembled again"),
            Tr::ReAdd { slot, fresh } => write!(
                f,
                "admin: re-add {} device in slot {slot}",
                if *fresh { "a blank" } else { "the same" }
            ),
        }
    }
}

fn describe(s: &S, n: usize) -> String {
    let copy = |c: &Option<Disk>| match c {
        None => "-".to_string(),
        Some(d) => format!(
            "E{}/EC{}{} {:?}",
            d.events,
            d.ec,
            if d.clean { " clean" } else { "" },
            &d.st[..n]
        ),
    };
    let disks: Vec<String> = (0..n)
        .map(|j| format!("d{j}=[{} | {}]", copy(&s.disk[j][0]), copy(&s.disk[j][1])))
        .collect();
    format!(
        "kernel {:?} cc={} hold={} sync={:?} members={:?} bits={:#b} needed={:#b} pending={:?} torn={:#b} | missed={:?} | {} | daemon {} queue={:?}",
        s.k.arr,
        s.k.can_clear,
        s.k.hold,
        s.k.sync,
        &s.k.m[..n],
        s.k.bits,
        s.k.needed,
        s.k.pending,
        s.torn,
        &s.missed[..n],
        disks.join(" "),
        if s.mon.is_some() { "up" } else { "down" },
        s.queue
    )
}

fn hash_of(s: &S) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(s)
}

/// The visited set: each state stored once (in `states`), found by its
/// 64-bit hash; the rare hash collision goes to a map of full states.
struct Visited {
    states: Vec<S>,
    by_hash: HashMap<u64, u32>,
    collided: HashMap<S, u32>,
}

impl Visited {
    fn get(&self, s: &S, h: u64) -> Option<u32> {
        match self.by_hash.get(&h) {
            Some(&id) if self.states[id as usize] == *s => Some(id),
            Some(_) => self.collided.get(s).copied(),
            None => None,
        }
    }

    fn insert(&mut self, s: S, h: u64) -> u32 {
        let id = state_id(self.states.len());
        match self.by_hash.entry(h) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(s.clone(), id);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
        }
        self.states.push(s);
        id
    }
}

impl Model {
    /// Canonical form: fields that can no longer influence anything are
    /// reset, so equivalent states are counted once.
    fn normalize(&self, s: &mut S) {
        self.clear_bits(s);
        if s.queue.is_empty() {
            s.done = 0;
            if let Some(m) = &mut s.mon {
                m.write_at = None; // only read when the current batch fails
            }
        }
    }

    fn trace(&self, v: &Visited, parent: &[u32], mut id: u32) -> Vec<String> {
        let mut ids = vec![id];
        while id != 0 {
            id = parent[id as usize];
            ids.push(id);
        }
        ids.reverse();
        let mut out = vec![format!(
            "initial state\n      -> {}",
            describe(&v.states[0], self.n())
        )];
        for w in ids.windows(2) {
            let (from, to) = (&v.states[w[0] as usize], &v.states[w[1] as usize]);
            let tr = self
                .successors(from)
                .into_iter()
                .find_map(|(tr, mut t)| {
                    self.normalize(&mut t);
                    (t == *to).then_some(tr)
                })
                .map(|tr| tr.to_string())
                .unwrap_or_else(|| "?".into());
            out.push(format!("{tr}\n      -> {}", describe(to, self.n())));
        }
        out
    }
}

/// Breadth-first search over every reachable state.
pub(crate) fn search(b: Bounds) -> Outcome {
    let model = Model { b };
    let mut init = model.initial();
    model.normalize(&mut init);
    let mut v = Visited {
        states: Vec::new(),
        by_hash: HashMap::new(),
        collided: HashMap::new(),
    };
    let h = hash_of(&init);
    v.insert(init, h);
    let mut parent: Vec<u32> = vec![0];
    // Quiet edges (to, from), for the liveness check.
    let mut quiet: Vec<(u32, u32)> = Vec::new();
    let mut next = 0usize;
    let mut edges = 0usize;
    let mut at_once = 0usize;
    while next < v.states.len() {
        let id = state_id(next);
        next += 1;
        if next % 1_000_000 == 0 && std::env::var_os("MDEXT_MODEL_PROGRESS").is_some() {
            eprintln!("{next} states expanded, {} known", v.states.len());
        }
        let s = v.states[id as usize].clone();
        if let Err(e) = model.check(&s) {
            return Outcome {
                states: v.states.len(),
                edges,
                at_once,
                violation: Some((e, model.trace(&v, &parent, id))),
            };
        }
        for (tr, mut t) in model.successors(&s) {
            model.normalize(&mut t);
            edges += 1;
            at_once += usize::from(matches!(tr, Tr::AnswerAtOnce));
            let h = hash_of(&t);
            let tid = match v.get(&t, h) {
                Some(x) => x,
                None => {
                    parent.push(id);
                    v.insert(t, h)
                }
            };
            if tr.quiet() {
                quiet.push((tid, id));
            }
        }
    }
    // Property 3: backward reachability over quiet edges from the states
    // with no held write.
    quiet.sort_unstable();
    let n = v.states.len();
    let mut start = vec![0usize; n + 1];
    for &(to, _) in &quiet {
        start[to as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut good: Vec<bool> = v.states.iter().map(|s| s.k.pending.is_none()).collect();
    let mut work: Vec<u32> = (0..state_id(n)).filter(|&i| good[i as usize]).collect();
    while let Some(x) = work.pop() {
        for &(_, p) in &quiet[start[x as usize]..start[x as usize + 1]] {
            if !good[p as usize] {
                good[p as usize] = true;
                work.push(p);
            }
        }
    }
    if let Some(bad) = good.iter().position(|g| !g) {
        return Outcome {
            states: n,
            edges,
            at_once,
            violation: Some((
                "LIVENESS: a held write can never complete without outside help".into(),
                model.trace(&v, &parent, state_id(bad)),
            )),
        };
    }
    Outcome {
        states: n,
        edges,
        at_once,
        violation: None,
    }
}

fn report(o: &Outcome) -> String {
    match &o.violation {
        None => format!(
            "{} states, {} transitions ({} answers at once), no violation",
            o.states, o.edges, o.at_once
        ),
        Some((e, tr)) => format!(
            "{e}\nafter {} states; trace ({} steps):\n  {}",
            o.states,
            tr.len(),
            tr.join("\n  ")
        ),
    }
}

/// The bounds `cargo test` checks (see the module documentation).
const STATES_DEFAULT: usize = 3_433_562;
/// The larger bounds of [`model_check_large`].
const STATES_LARGE: usize = 10_643_905;

fn expect_clean(b: Bounds) -> Outcome {
    let o = search(b);
    println!("{b:?}\n{}", report(&o));
    assert!(o.violation.is_none(), "{}", report(&o));
    o
}

fn expect_violation(b: Bounds, kind: &str) {
    let o = search(b);
    let r = report(&o);
    println!("{b:?}\n{r}");
    let (e, trace) = o.violation.expect("the broken variant must be caught");
    assert!(e.starts_with(kind), "{r}");
    assert!(trace.len() > 2, "{r}");
}

/// Only the given event kinds, each at most once (or as given).
fn only(f: impl FnOnce(&mut Bounds)) -> Bounds {
    let mut b = Bounds {
        writes: 0,
        fails: 0,
        crashes: 0,
        restarts: 0,
        action_failures: 0,
        readds: 0,
        stops: 0,
        ..Bounds::default()
    };
    f(&mut b);
    b
}

#[test]
fn model_check_default_bounds() {
    let b = Bounds::from_env();
    let o = expect_clean(b);
    assert!(o.at_once > 0, "the answer at once is never taken");
    if std::env::vars().all(|(k, _)| !k.starts_with("MDEXT_MODEL_")) {
        assert_eq!(o.states, STATES_DEFAULT, "update the documented count");
    }
}

/// `cargo test --release -- --ignored model_check_large` (about a minute
/// and 4 GB of memory).
#[test]
#[ignore]
fn model_check_large() {
    let o = expect_clean(Bounds {
        readds: 2,
        ..Bounds::default()
    });
    assert_eq!(o.states, STATES_LARGE, "update the documented count");
}

#[test]
fn checker_finds_true_written_before_record() {
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.readds = 1;
            b.fault = Fault::TrueBeforeRecord;
        }),
        "INVARIANT",
    );
}

#[test]
fn checker_finds_missing_rewrite_at_start() {
    // A failed (partial) all-in-sync write, then a crash: the stale member
    // joins in sync and still records itself rebuilding when the hold ends.
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.readds = 1;
            b.action_failures = 1;
            b.crashes = 1;
            b.fault = Fault::NoWriteAtStart;
        }),
        "INVARIANT",
    );
}

#[test]
fn checker_finds_bitmap_rebuild_trusting_device_events() {
    // A blank device is stamped "rebuilding (full)" with recent events,
    // then re-added: trusting its events alone rebuilds it from the bitmap.
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.readds = 2;
            b.restarts = 1;
            b.crashes = 1;
            b.fault = Fault::TrustDeviceEvents;
        }),
        "DATA",
    );
}

#[test]
fn checker_finds_a_retry_aimed_at_the_last_good_copy() {
    // Two failed writes in a row, the second aimed at the other copy: the
    // member that got neither keeps no valid copy.
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.action_failures = 2;
            b.fault = Fault::RetryOtherCopy;
        }),
        "COPIES",
    );
}

#[test]
fn checker_finds_the_hold_ended_before_the_monitor_settled() {
    // A partial all-in-sync write, a crash, and the hold released first in
    // the restarted monitor's batch: can_clear reads true while a member
    // still records a rebuild.
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.readds = 1;
            b.action_failures = 1;
            b.crashes = 1;
            b.fault = Fault::EarlyRelease;
        }),
        "INVARIANT",
    );
}

#[test]
fn checker_finds_the_degraded_restart_trap_without_set_bits() {
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.writes = 1;
            b.crashes = 1;
            b.readds = 1;
            b.set_bits = false;
        }),
        "DATA",
    );
}

/// A write to a clean whole mirror, which leaves its record clean
/// ([`super::dirty_may_trail`]), and a power cut during it: a start that
/// did not read the bits would owe no resync.
#[test]
fn checker_finds_a_torn_write_left_unsynced_without_bits_at_start() {
    expect_violation(
        only(|b| {
            b.writes = 1;
            b.crashes = 1;
            b.bits_at_start = false;
        }),
        "TORN",
    );
}

/// The bounds of [`model_check_stop`].
const STATES_STOP: usize = 185_784;

/// A stop by somebody else (systemd-shutdown's `STOP_ARRAY`) at any point,
/// with a write, a member failure, a daemon restart and an action failure
/// around it, and the array assembled again afterwards.
#[test]
fn model_check_stop() {
    let o = expect_clean(Bounds {
        stops: 1,
        crashes: 0,
        readds: 0,
        ..Bounds::default()
    });
    assert_eq!(o.states, STATES_STOP, "update the documented count");
}

#[test]
fn checker_finds_a_stopped_array_left_dirty() {
    expect_violation(
        only(|b| {
            b.writes = 1;
            b.stops = 1;
            b.fault = Fault::ForgetAtStop;
        }),
        "STOP",
    );
}

/// The bounds of [`model_check_kernel_mode`].
const STATES_KERNEL: usize = 3_326_402;

/// The kernel-managed bitmap mode (md from 6.18 on) at the default
/// bounds: the kernel clears bits whatever `can_clear` says, the monitor
/// never writes it, and no member is ever in sync with a chunk it missed.
#[test]
fn model_check_kernel_mode() {
    let o = expect_clean(Bounds {
        kernel_mode: true,
        ..Bounds::default()
    });
    assert_eq!(o.states, STATES_KERNEL, "update the documented count");
}

/// Kernel mode without the re-arm at a degraded start: md clears the bits
/// the missing member needs and its bitmap rebuild skips them.
#[test]
fn checker_finds_the_kernel_mode_trap_without_rearm() {
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.writes = 1;
            b.crashes = 1;
            b.readds = 1;
            b.set_bits = false;
            b.kernel_mode = true;
        }),
        "DATA",
    );
}

/// Kernel mode with the monitor trusting a returning device's events:
/// caught as in the external mode.
#[test]
fn checker_finds_kernel_mode_bitmap_rebuild_trusting_device_events() {
    expect_violation(
        only(|b| {
            b.fails = 1;
            b.readds = 2;
            b.restarts = 1;
            b.crashes = 1;
            b.kernel_mode = true;
            b.fault = Fault::TrustDeviceEvents;
        }),
        "DATA",
    );
}
