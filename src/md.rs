//! md's vocabulary: the values md's sysfs attributes take (array states,
//! sync actions, member flags and commands, checkpoints) and the rules of
//! each RAID level (how many members it needs, its default layout, which
//! layouts exist). Pure: parsing and spelling only, no I/O. The I/O lives in
//! [`crate::sysfs`]; the pure modules ([`crate::meta`], [`crate::format`],
//! [`crate::monitor`]) import this one.

use crate::units::Sectors;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `md/array_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrayState {
    /// No devices, no configuration.
    Clear,
    /// Configured, not running.
    Inactive,
    /// Running, I/O suspended.
    Suspended,
    /// Running read-only.
    Readonly,
    /// Read-only until the first write.
    ReadAuto,
    /// Running, no writes since metadata was marked clean.
    Clean,
    /// Running, writes in flight or recent.
    Active,
    /// A write waits for userspace to record "dirty" and write `active`.
    WritePending,
    /// Active, but idle for `safe_mode_delay`: userspace may mark clean.
    ActiveIdle,
    /// Failed (raid0/linear missing a member).
    Broken,
}

impl ArrayState {
    /// The sysfs spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ArrayState::Clear => "clear",
            ArrayState::Inactive => "inactive",
            ArrayState::Suspended => "suspended",
            ArrayState::Readonly => "readonly",
            ArrayState::ReadAuto => "read-auto",
            ArrayState::Clean => "clean",
            ArrayState::Active => "active",
            ArrayState::WritePending => "write-pending",
            ArrayState::ActiveIdle => "active-idle",
            ArrayState::Broken => "broken",
        }
    }

    /// Whether the array is running (has a personality).
    pub fn is_running(self) -> bool {
        !matches!(self, ArrayState::Clear | ArrayState::Inactive)
    }
}

impl fmt::Display for ArrayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArrayState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.trim() {
            "clear" => ArrayState::Clear,
            "inactive" => ArrayState::Inactive,
            "suspended" => ArrayState::Suspended,
            "readonly" => ArrayState::Readonly,
            "read-auto" => ArrayState::ReadAuto,
            "clean" => ArrayState::Clean,
            "active" => ArrayState::Active,
            "write-pending" => ArrayState::WritePending,
            "active-idle" => ArrayState::ActiveIdle,
            "broken" => ArrayState::Broken,
            _ => return Err(()),
        })
    }
}

/// `md/sync_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncAction {
    /// Nothing running.
    Idle,
    /// Recovery blocked from starting.
    Frozen,
    /// Resync (mirrors made equal) running.
    Resync,
    /// Recovery (a member rebuilt) running.
    Recover,
    /// Scrub that counts mismatches.
    Check,
    /// Scrub that repairs mismatches.
    Repair,
    /// Reshape.
    Reshape,
}

impl SyncAction {
    /// The sysfs spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncAction::Idle => "idle",
            SyncAction::Frozen => "frozen",
            SyncAction::Resync => "resync",
            SyncAction::Recover => "recover",
            SyncAction::Check => "check",
            SyncAction::Repair => "repair",
            SyncAction::Reshape => "reshape",
        }
    }
}

impl fmt::Display for SyncAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncAction {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.trim() {
            "idle" => SyncAction::Idle,
            "frozen" => SyncAction::Frozen,
            "resync" => SyncAction::Resync,
            "recover" => SyncAction::Recover,
            "check" => SyncAction::Check,
            "repair" => SyncAction::Repair,
            "reshape" => SyncAction::Reshape,
            _ => return Err(()),
        })
    }
}

/// `md/sync_completed`: progress of a running resync/recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncCompleted {
    /// Nothing running (`none`).
    None,
    /// Queued behind another array on the same devices (`delayed`).
    Delayed,
    /// `done / total` sectors.
    Progress {
        /// Sectors done.
        done: Sectors,
        /// Sectors in all.
        total: Sectors,
    },
}

impl FromStr for SyncCompleted {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim();
        match s {
            "none" => return Ok(SyncCompleted::None),
            "delayed" => return Ok(SyncCompleted::Delayed),
            _ => {}
        }
        let (a, b) = s.split_once('/').ok_or(())?;
        Ok(SyncCompleted::Progress {
            done: Sectors(a.trim().parse().map_err(|_| ())?),
            total: Sectors(b.trim().parse().map_err(|_| ())?),
        })
    }
}

/// A resync checkpoint: `resync_start` and `recovery_start` take a sector or
/// `none` (nothing owed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checkpoint {
    /// Nothing owed.
    None,
    /// Everything from this sector on is owed.
    At(Sectors),
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::None => f.write_str("none"),
            Checkpoint::At(s) => write!(f, "{}", s.0),
        }
    }
}

impl FromStr for Checkpoint {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim();
        if s == "none" {
            Ok(Checkpoint::None)
        } else {
            s.parse()
                .map(|n| Checkpoint::At(Sectors(n)))
                .map_err(|_| ())
        }
    }
}

/// RAID level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Mirror.
    Raid1,
    /// Striped mirrors.
    Raid10,
    /// Single parity.
    Raid5,
    /// Double parity.
    Raid6,
}

impl Level {
    /// The sysfs spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Raid1 => "raid1",
            Level::Raid10 => "raid10",
            Level::Raid5 => "raid5",
            Level::Raid6 => "raid6",
        }
    }
    /// The number (1, 10, 5, 6).
    pub fn number(self) -> u32 {
        match self {
            Level::Raid1 => 1,
            Level::Raid10 => 10,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
        }
    }
    /// The fewest devices `create` accepts for this level (mdadm's
    /// minimum: a raid5 of 2 is a mirror in disguise, so 3).
    pub fn min_create_devices(self) -> u32 {
        match self {
            Level::Raid1 | Level::Raid10 => 2,
            Level::Raid5 => 3,
            Level::Raid6 => 4,
        }
    }

    /// The fewest devices the metadata format accepts for this level (md's
    /// own minimum: raid5 runs on 2).
    pub fn min_format_devices(self) -> u32 {
        match self {
            Level::Raid1 => 1,
            Level::Raid10 | Level::Raid5 => 2,
            Level::Raid6 => 4,
        }
    }

    /// How many of `raid_disks` members must be present for md to run the
    /// array (degraded). For raid10 this is the lower bound that the layout
    /// may raise (adjacent near copies both missing stop it; md checks that
    /// itself at start).
    pub fn min_working(self, raid_disks: u32) -> u32 {
        match self {
            Level::Raid1 => 1,
            Level::Raid5 => raid_disks.saturating_sub(1),
            Level::Raid6 => raid_disks.saturating_sub(2),
            Level::Raid10 => raid_disks / 2,
        }
    }

    /// Whether the level stripes data in chunks (`chunk_size` must be set).
    pub fn has_chunk(self) -> bool {
        !matches!(self, Level::Raid1)
    }

    /// Whether the level keeps parity (a dirty degraded start risks the
    /// write hole).
    pub fn has_parity(self) -> bool {
        matches!(self, Level::Raid5 | Level::Raid6)
    }

    /// md's default layout for the level: raid10 near=2 (`0x102`), raid5 and
    /// raid6 left-symmetric (2), none for raid1.
    pub fn default_layout(self) -> u32 {
        match self {
            Level::Raid1 => 0,
            Level::Raid10 => 0x102,
            Level::Raid5 | Level::Raid6 => 2,
        }
    }

    /// Whether md knows `layout` for this level with `raid_disks` members.
    pub fn layout_valid(self, layout: u32, raid_disks: u32) -> bool {
        match self {
            Level::Raid1 => layout == 0,
            Level::Raid10 => {
                let near = layout & 0xff;
                let far = (layout >> 8) & 0xff;
                layout & !0x1ffff == 0 && near >= 1 && far >= 1 && near * far <= raid_disks
            }
            Level::Raid5 => layout <= 5,
            Level::Raid6 => matches!(layout, 0..=5 | 8..=10 | 16..=20),
        }
    }

    /// From the number.
    pub fn from_number(n: u32) -> Option<Level> {
        Some(match n {
            1 => Level::Raid1,
            10 => Level::Raid10,
            5 => Level::Raid5,
            6 => Level::Raid6,
            _ => return None,
        })
    }
}

/// raid5/raid6 layout names as mdadm spells them (`mdadm/maps.c`
/// `r5layout`, `r6layout`), with md's algorithm numbers
/// (`include/linux/raid/pq.h`, `drivers/md/raid5.h`). Both levels take the
/// first table; raid6 also takes the second. The first name of a number is
/// the one `examine` and `detail` print.
const R5_LAYOUTS: &[(&str, u32)] = &[
    ("left-asymmetric", 0),
    ("right-asymmetric", 1),
    ("left-symmetric", 2),
    ("right-symmetric", 3),
    ("parity-first", 4),
    ("parity-last", 5),
    ("default", 2),
    ("la", 0),
    ("ra", 1),
    ("ls", 2),
    ("rs", 3),
];
/// raid5 only: mdadm maps the ddf names onto the plain algorithms.
const R5_DDF: &[(&str, u32)] = &[
    ("ddf-zero-restart", 1),
    ("ddf-N-restart", 0),
    ("ddf-N-continue", 2),
];
/// raid6 only: md's rotating (DDF) algorithms and the raid5-compatible
/// layouts with Q on the last device (the `-6` names).
const R6_ONLY: &[(&str, u32)] = &[
    ("ddf-zero-restart", 8),
    ("ddf-N-restart", 9),
    ("ddf-N-continue", 10),
    ("left-asymmetric-6", 16),
    ("right-asymmetric-6", 17),
    ("left-symmetric-6", 18),
    ("right-symmetric-6", 19),
    ("parity-first-6", 20),
];

impl Level {
    /// Parse a `--layout` value the way mdadm does: raid10 `n2`, `f2`, `o2`
    /// (near, far, offset copies: md's layout has near copies in bits 0-7,
    /// far copies in bits 8-15 and the offset flag in bit 16; see
    /// `setup_geo` in md's raid10.c), raid5/raid6 the names of mdadm's
    /// `r5layout`/`r6layout` tables. Checked against `raid_disks`: md
    /// refuses fewer than 2 copies or more copies than devices. The error
    /// is one line naming what is wrong.
    pub fn parse_layout(self, s: &str, raid_disks: u32) -> Result<u32, String> {
        match self {
            Level::Raid1 => Err("raid1 has no layout".into()),
            Level::Raid10 => {
                let t = s.trim();
                let mut chars = t.chars();
                let kind = chars.next().map(|c| c.to_ascii_lowercase());
                let n: Option<u32> = chars.as_str().parse().ok();
                let (kind, n) = match (kind, n) {
                    (Some(k @ ('n' | 'f' | 'o')), Some(n)) if (1..=255).contains(&n) => (k, n),
                    _ => {
                        return Err(format!(
                            "unknown raid10 layout '{s}' (n2, f2, o2... : near, far or offset, then the number of copies)"
                        ))
                    }
                };
                let layout = match kind {
                    'n' => 0x100 | n,
                    'f' => (n << 8) | 1,
                    _ => 0x10000 | (n << 8) | 1,
                };
                if n < 2 {
                    return Err(format!("raid10 layout '{s}': md needs at least 2 copies"));
                }
                if n > raid_disks {
                    return Err(format!(
                        "raid10 layout '{s}': {n} copies need at least {n} devices, the array has {raid_disks}"
                    ));
                }
                Ok(layout)
            }
            Level::Raid5 | Level::Raid6 => {
                let t = s.trim();
                let extra = if self == Level::Raid5 {
                    R5_DDF
                } else {
                    R6_ONLY
                };
                R5_LAYOUTS
                    .iter()
                    .chain(extra)
                    .find(|(name, _)| name.eq_ignore_ascii_case(t))
                    .map(|&(_, v)| v)
                    .ok_or_else(|| {
                        let names: Vec<&str> = R5_LAYOUTS
                            .iter()
                            .take(6)
                            .chain(extra)
                            .map(|(n, _)| *n)
                            .collect();
                        format!(
                            "unknown {} layout '{s}' (one of {})",
                            self.as_str(),
                            names.join(", ")
                        )
                    })
            }
        }
    }

    /// The layout as mdadm names it (`n2`, `f2`, `o2`, `left-symmetric`,
    /// ...); the number itself if it has no name; empty for raid1.
    pub fn layout_name(self, layout: u32) -> String {
        match self {
            Level::Raid1 => String::new(),
            Level::Raid10 => {
                let near = layout & 0xff;
                let far = (layout >> 8) & 0xff;
                let offset = layout & 0x10000 != 0;
                match (near, far, offset, layout >> 17) {
                    (n, 1, false, 0) => format!("n{n}"),
                    (1, f, false, 0) => format!("f{f}"),
                    (1, f, true, 0) => format!("o{f}"),
                    (n, f, o, 0) => format!("n{n}{}{f}", if o { "o" } else { "f" }),
                    _ => layout.to_string(),
                }
            }
            Level::Raid5 | Level::Raid6 => {
                let extra = if self == Level::Raid5 {
                    &[][..]
                } else {
                    R6_ONLY
                };
                R5_LAYOUTS
                    .iter()
                    .take(6)
                    .chain(extra)
                    .find(|&&(_, v)| v == layout)
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_else(|| layout.to_string())
            }
        }
    }

    /// raid10: the number of copies of each chunk (near x far); 1 for the
    /// other levels.
    pub fn copies(self, layout: u32) -> u32 {
        match self {
            Level::Raid10 => (layout & 0xff).max(1) * ((layout >> 8) & 0xff).max(1),
            _ => 1,
        }
    }

    /// Whether md can run the array with only the slots in `present`
    /// (`present[i]`: slot `i` has a working member). raid10 follows md's
    /// `_enough()` in raid10.c: every run of `copies` consecutive slots
    /// starting at a multiple of the near copies keeps one member.
    pub fn can_run(self, layout: u32, present: &[bool]) -> bool {
        let n = present.len();
        let have = present.iter().filter(|p| **p).count();
        if n == 0 {
            return false;
        }
        match self {
            Level::Raid10 => {
                let near = ((layout & 0xff).max(1)) as usize;
                let copies = self.copies(layout) as usize;
                let mut first = 0usize;
                loop {
                    if !(0..copies).any(|k| present[(first + k) % n]) {
                        return false;
                    }
                    first = (first + near) % n;
                    if first == 0 {
                        return true;
                    }
                }
            }
            _ => {
                let need = self
                    .min_working(u32::try_from(n).unwrap_or(u32::MAX))
                    .max(1);
                u32::try_from(have).is_ok_and(|h| h >= need)
            }
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("raid").unwrap_or(&t);
        t.parse::<u32>()
            .ok()
            .and_then(Level::from_number)
            .ok_or_else(|| {
                format!("unknown RAID level '{s}' (mdext knows raid1, raid10, raid5, raid6)")
            })
    }
}

/// Flags in `md/dev-X/state` (a comma-separated list).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFlags {
    /// `faulty`.
    pub faulty: bool,
    /// `in_sync`.
    pub in_sync: bool,
    /// `spare`.
    pub spare: bool,
    /// `blocked`: writes held until userspace acknowledges the failure.
    pub blocked: bool,
    /// `write_mostly`.
    pub write_mostly: bool,
    /// `want_replacement`.
    pub want_replacement: bool,
    /// `replacement`.
    pub replacement: bool,
    /// Anything else the kernel printed.
    pub other: Vec<String>,
}

impl FromStr for MemberFlags {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut f = MemberFlags::default();
        for w in s.trim().split(',').filter(|w| !w.is_empty()) {
            match w {
                "faulty" => f.faulty = true,
                "in_sync" => f.in_sync = true,
                "spare" => f.spare = true,
                "blocked" => f.blocked = true,
                "write_mostly" => f.write_mostly = true,
                "want_replacement" => f.want_replacement = true,
                "replacement" => f.replacement = true,
                o => f.other.push(o.to_string()),
            }
        }
        Ok(f)
    }
}

/// A command written to `md/dev-X/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberCommand {
    /// `faulty`: fail the member.
    Faulty,
    /// `-blocked`: acknowledge a failure; writes may proceed.
    Unblock,
    /// `remove`: detach a faulty or spare member.
    Remove,
    /// `insync`: before `slot`, makes a hot-add bitmap-based.
    InSync,
    /// `re-add`: put a faulty member back, bitmap-based.
    ReAdd,
    /// `writemostly`.
    WriteMostly,
    /// `-writemostly`.
    NotWriteMostly,
    /// `want_replacement`: md copies the member onto a spare, then fails it.
    WantReplacement,
}

impl MemberCommand {
    /// The sysfs spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberCommand::Faulty => "faulty",
            MemberCommand::Unblock => "-blocked",
            MemberCommand::Remove => "remove",
            MemberCommand::InSync => "insync",
            MemberCommand::ReAdd => "re-add",
            MemberCommand::WriteMostly => "writemostly",
            MemberCommand::NotWriteMostly => "-writemostly",
            MemberCommand::WantReplacement => "want_replacement",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_rules() {
        assert_eq!(Level::Raid5.min_working(4), 3);
        assert_eq!(Level::Raid6.min_working(5), 3);
        assert_eq!(Level::Raid10.min_working(4), 2);
        assert_eq!(Level::Raid1.min_working(3), 1);
        assert!(Level::Raid10.layout_valid(0x102, 4));
        assert!(!Level::Raid10.layout_valid(0x103, 2));
        assert!(Level::Raid6.layout_valid(18, 4));
        assert!(!Level::Raid5.layout_valid(8, 4));
        for l in [Level::Raid1, Level::Raid10, Level::Raid5, Level::Raid6] {
            assert!(l.layout_valid(l.default_layout(), l.min_create_devices()));
            assert!(l.min_format_devices() <= l.min_create_devices());
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
        }
    }

    #[test]
    fn layouts_parse_as_mdadm_spells_them() {
        let r10 = |s: &str, n| Level::Raid10.parse_layout(s, n);
        assert_eq!(r10("n2", 4), Ok(0x102));
        assert_eq!(r10("f2", 4), Ok(0x201));
        assert_eq!(r10("o2", 4), Ok(0x10201));
        assert_eq!(r10("n3", 3), Ok(0x103));
        assert_eq!(r10("F2", 2), Ok(0x201));
        assert!(r10("n3", 2)
            .unwrap_err()
            .contains("3 copies need at least 3 devices"));
        assert!(r10("n1", 4).unwrap_err().contains("at least 2 copies"));
        for bad in ["", "n", "x2", "n2x", "n256", "n-1", "left-symmetric"] {
            assert!(r10(bad, 4).is_err(), "{bad}");
            assert!(!r10(bad, 4).unwrap_err().contains('\n'));
        }
        for (s, v) in [("n2", 0x102), ("f2", 0x201), ("o2", 0x10201), ("n3", 0x103)] {
            assert_eq!(Level::Raid10.layout_name(v), s);
            assert!(Level::Raid10.layout_valid(v, 4));
        }
        let r5 = |s: &str| Level::Raid5.parse_layout(s, 4);
        let r6 = |s: &str| Level::Raid6.parse_layout(s, 4);
        assert_eq!(r5("left-asymmetric"), Ok(0));
        assert_eq!(r5("ra"), Ok(1));
        assert_eq!(r5("default"), Ok(2));
        assert_eq!(r5("parity-first"), Ok(4));
        assert_eq!(r5("parity-last"), Ok(5));
        assert_eq!(r5("ddf-zero-restart"), Ok(1));
        assert_eq!(r5("ddf-N-continue"), Ok(2));
        assert!(r5("left-symmetric-6").is_err());
        assert_eq!(r6("ddf-zero-restart"), Ok(8));
        assert_eq!(r6("ddf-n-restart"), Ok(9));
        assert_eq!(r6("ddf-N-continue"), Ok(10));
        assert_eq!(r6("left-symmetric-6"), Ok(18));
        assert_eq!(r6("parity-first-6"), Ok(20));
        assert!(r6("n2")
            .unwrap_err()
            .starts_with("unknown raid6 layout 'n2'"));
        assert!(Level::Raid1.parse_layout("n2", 2).is_err());
        for l in [Level::Raid5, Level::Raid6] {
            for v in 0..=24 {
                if l.layout_valid(v, 4) {
                    let name = l.layout_name(v);
                    assert_eq!(l.parse_layout(&name, 4), Ok(v), "{l} {name}");
                }
            }
        }
    }

    #[test]
    fn raid10_runs_with_one_copy_of_every_chunk() {
        let n2 = 0x102;
        assert!(Level::Raid10.can_run(n2, &[true, false, true, false]));
        assert!(Level::Raid10.can_run(n2, &[false, true, true, false]));
        assert!(!Level::Raid10.can_run(n2, &[false, false, true, true]));
        // far 2 on 4: copies of slot 0's chunks live on slot 1.
        assert!(!Level::Raid10.can_run(0x201, &[true, true, false, false]));
        assert!(Level::Raid10.can_run(0x201, &[true, false, true, false]));
        // n2 on 3 devices: runs of 2 from 0, 2, 1.
        assert!(!Level::Raid10.can_run(n2, &[true, false, false]));
        assert!(Level::Raid5.can_run(2, &[true, false, true]));
        assert!(!Level::Raid5.can_run(2, &[true, false, false]));
        assert!(Level::Raid6.can_run(2, &[true, false, false, true]));
        assert!(Level::Raid1.can_run(0, &[false, true]));
        assert!(!Level::Raid1.can_run(0, &[false, false]));
    }
}
