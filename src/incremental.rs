//! Incremental assembly's decisions (`mdextctl incremental`), pure: what
//! to do with one more device of an array, given the devices already seen
//! (the pending set) and whether the array runs.
//!
//! The rule is mdadm's: an array starts when every member its newest
//! record expects (slots recorded in sync or being rebuilt) is present;
//! `--run` (or the last-resort timer) starts it with members missing when
//! enough are there for its level; a device of an array already running is
//! a returning member, re-added through mdextmon (whose admission decides
//! bitmap or full rebuild). The I/O around it (reading superblocks, the
//! pending map under `/run/mdext`, starting the array) is in
//! [`crate::hotplug`].

use crate::assembly::{choose, Candidate, Choice};
use crate::meta::{MemberState, Role};
use crate::sysfs::DevNum;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use uuid::Uuid;

/// One device recorded in an array's pending set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDevice {
    /// The path it was given as (a udev devnode).
    pub path: PathBuf,
    /// Its device number when seen (a path reused by another device is
    /// told apart by it).
    pub dev: DevNum,
    /// Its member UUID.
    pub member_uuid: Uuid,
    /// The event count of its own record when seen.
    pub events: u64,
}

/// The devices of one array seen so far while it is not running: the
/// content of `/run/mdext/incremental/UUID.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingArray {
    /// The array's UUID.
    pub uuid: Uuid,
    /// Its name (from the device seen last).
    pub name: String,
    /// The devices seen, in the order they came.
    pub devices: Vec<SeenDevice>,
}

impl PendingArray {
    /// An empty set for an array.
    pub fn new(uuid: Uuid, name: &str) -> PendingArray {
        PendingArray {
            uuid,
            name: name.to_string(),
            devices: Vec::new(),
        }
    }

    /// Record a device. An entry with the same device number or the same
    /// member UUID (the same member under another name, after it went and
    /// came back) is replaced: a member is in the set once.
    pub fn record(&mut self, d: SeenDevice) {
        self.devices
            .retain(|o| o.dev != d.dev && o.member_uuid != d.member_uuid);
        self.devices.push(d);
    }

    /// Forget the device with this number or kernel name (`sdb`, or its
    /// path `/dev/sdb`); whether it was recorded.
    pub fn forget(&mut self, dev: Option<DevNum>, path: &std::path::Path) -> bool {
        let before = self.devices.len();
        let name = path.file_name();
        self.devices.retain(|o| {
            !(Some(o.dev) == dev
                || o.path == path
                || (name.is_some() && o.path.file_name() == name))
        });
        self.devices.len() != before
    }
}

/// The array of the device, if it is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// Its md device (`md127`).
    pub md: String,
    /// Whether md already holds this device (it is a member now).
    pub holds_device: bool,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The device is already a member of the running array: nothing to do.
    AlreadyIn {
        /// md device.
        md: String,
    },
    /// The array runs without this device: ask mdextmon to add it back
    /// (it decides bitmap or full rebuild from the device's own record).
    ReAdd {
        /// md device.
        md: String,
    },
    /// The device is a spare; incremental assembly does not add spares.
    Spare,
    /// Members the newest record expects are missing: keep waiting.
    Wait {
        /// Members present (usable).
        present: usize,
        /// Slots whose member is expected and missing.
        missing: Vec<u32>,
        /// Whether `--run` could start it now (enough members for the
        /// level, and not a dirty degraded parity array).
        runnable: bool,
    },
    /// Start the array with the present members.
    Start {
        /// Slots that will be missing (empty: whole, or as whole as its
        /// record says it was).
        missing: Vec<u32>,
        /// Devices of the array that its newest record lists as failed
        /// or missing in their slot: returning members, to be re-added
        /// through mdextmon once it runs.
        readd: Vec<PathBuf>,
    },
    /// It cannot start (even with `--run`); the reason, one line.
    CannotStart(String),
}

/// Slots the newest record expects a device in: recorded in sync or
/// being rebuilt.
fn expected(choice: &Choice, slot: u32) -> bool {
    choice.meta.members.get(slot as usize).is_some_and(|m| {
        matches!(
            m.state,
            MemberState::InSync | MemberState::Rebuilding { .. }
        )
    })
}

/// Decide for `device` (one of `cands`, read from its superblock), given
/// every device of its array seen so far (`cands`, `device` included) and
/// the running array, if any. `run`: start with expected members missing
/// if the level allows.
pub fn decide(
    device: &Candidate,
    cands: &[Candidate],
    running: Option<&Running>,
    run: bool,
) -> Decision {
    if let Some(r) = running {
        if r.holds_device {
            return Decision::AlreadyIn { md: r.md.clone() };
        }
        if device.sb.role() == Role::Spare {
            return Decision::Spare;
        }
        return Decision::ReAdd { md: r.md.clone() };
    }
    decide_start(cands, run)
}

/// Whether the devices seen (`cands`, all of one array, none running)
/// make the array start now.
pub fn decide_start(cands: &[Candidate], run: bool) -> Decision {
    if cands.is_empty() {
        return Decision::CannotStart("no devices of the array are present".into());
    }
    // Every usable member now; `choose` with run=true never refuses for
    // missing members, only for what no more devices can mend.
    let choice = match choose(cands.to_vec(), true) {
        Ok(c) => c,
        Err(e) => return Decision::CannotStart(e.to_string()),
    };
    let resumed = |s: u32| choice.resume.iter().any(|(i, _)| *i == s as usize);
    let missing: Vec<u32> = choice
        .missing_slots
        .iter()
        .copied()
        .filter(|&s| !resumed(s) && expected(&choice, s))
        .collect();
    let g = &choice.meta.geometry;
    let need = g.level.min_working(g.raid_disks) as usize;
    let present = choice.members.len();
    let parity_refused = choice.forced_start(false).err().map(|e| e.to_string());
    let runnable = present >= need && parity_refused.is_none();
    if !missing.is_empty() && !run {
        return Decision::Wait {
            present: present + choice.resume.len(),
            missing,
            runnable,
        };
    }
    if present < need {
        return Decision::CannotStart(format!(
            "only {present} of {} members usable; {} needs {need} to run",
            g.raid_disks, g.level
        ));
    }
    if let Some(why) = parity_refused {
        return Decision::CannotStart(why);
    }
    let n = g.raid_disks as usize;
    let readd = choice
        .left_out
        .iter()
        .filter(|l| {
            cands.iter().any(|c| {
                c.path == l.path
                    && crate::assembly::device_too_small(&c.sb.device, c.size).is_none()
                    && choice
                        .meta
                        .index_of(&c.sb.device.uuid)
                        .filter(|&i| i < n)
                        .is_some_and(|i| {
                            matches!(
                                choice.meta.members[i].state,
                                MemberState::Failed | MemberState::Missing
                            )
                        })
            })
        })
        .map(|l| l.path.clone())
        .collect();
    Decision::Start {
        missing: choice.missing_slots.clone(),
        readd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md::{Checkpoint, Level};
    use crate::meta::{test_raid1, DeviceMeta, MemberState::*, Superblock};
    use crate::units::{Bytes, Sectors};

    /// Member `me` of an `n`-slot raid1 whose record is at `events` with
    /// the given slot states.
    fn dev(n: u32, me: u32, events: u64, states: &[MemberState]) -> Candidate {
        let mut array = test_raid1(n, Sectors(1 << 17), Bytes(65536), events);
        array.bitmap.offset = Sectors(16);
        for (e, s) in array.members.iter_mut().zip(states) {
            e.state = *s;
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
                minor: me,
            },
            sb: Superblock { array, device },
            size: Bytes((2048 + (1 << 17)) * 512),
        }
    }

    fn seen(c: &Candidate) -> SeenDevice {
        SeenDevice {
            path: c.path.clone(),
            dev: c.dev,
            member_uuid: c.sb.device.uuid,
            events: c.sb.array.events,
        }
    }

    #[test]
    fn starts_only_when_every_expected_member_is_there() {
        let all = [InSync, InSync, InSync];
        let a = dev(3, 0, 5, &all);
        let b = dev(3, 1, 5, &all);
        let c = dev(3, 2, 5, &all);
        assert_eq!(
            decide(&a, std::slice::from_ref(&a), None, false),
            Decision::Wait {
                present: 1,
                missing: vec![1, 2],
                runnable: true
            }
        );
        assert_eq!(
            decide(&b, &[a.clone(), b.clone()], None, false),
            Decision::Wait {
                present: 2,
                missing: vec![2],
                runnable: true
            }
        );
        assert_eq!(
            decide(&c, &[a.clone(), c.clone(), b.clone()], None, false),
            Decision::Start {
                missing: vec![],
                readd: vec![]
            }
        );
    }

    #[test]
    fn run_starts_degraded_within_the_levels_minimum() {
        let all = [InSync, InSync, InSync];
        let a = dev(3, 0, 5, &all);
        let b = dev(3, 1, 5, &all);
        assert_eq!(
            decide_start(std::slice::from_ref(&a), true),
            Decision::Start {
                missing: vec![1, 2],
                readd: vec![]
            }
        );
        // raid5 of three needs two.
        let r5 = |c: &Candidate| {
            let mut c = c.clone();
            c.sb.array.geometry.level = Level::Raid5;
            c.sb.array.geometry.layout = 2;
            c.sb.array.geometry.chunk_size = Bytes(65536);
            c
        };
        let d = decide_start(&[r5(&a)], false);
        assert_eq!(
            d,
            Decision::Wait {
                present: 1,
                missing: vec![1, 2],
                runnable: false
            }
        );
        let Decision::CannotStart(why) = decide_start(&[r5(&a)], true) else {
            panic!("raid5 with one of three started");
        };
        assert!(
            why.contains("only 1 of 3") && why.contains("needs 2"),
            "{why}"
        );
        assert_eq!(
            decide_start(&[r5(&a), r5(&b)], true),
            Decision::Start {
                missing: vec![2],
                readd: vec![]
            }
        );
        // Dirty and degraded parity: --run is not enough (assemble --force is).
        let dirty = |c: &Candidate| {
            let mut c = r5(c);
            c.sb.array.clean = false;
            c
        };
        assert!(matches!(
            decide_start(&[dirty(&a), dirty(&b)], false),
            Decision::Wait {
                runnable: false,
                ..
            }
        ));
        let Decision::CannotStart(why) = decide_start(&[dirty(&a), dirty(&b)], true) else {
            panic!("dirty degraded raid5 started");
        };
        assert!(
            why.contains("write hole") && why.contains("--force"),
            "{why}"
        );
        // Whole, dirty parity is fine (a resync runs).
        let c = dev(3, 2, 5, &all);
        let mut cs = [dirty(&a), dirty(&b), dirty(&c)];
        cs[0].sb.array.resync = Checkpoint::At(Sectors(0));
        assert!(matches!(decide_start(&cs, false), Decision::Start { .. }));
    }

    #[test]
    fn a_member_recorded_failed_is_not_waited_for_and_comes_back_as_readd() {
        // The array ran degraded: slot 1 failed at event 9; the old member
        // still records itself in sync at event 8.
        let a = dev(2, 0, 9, &[InSync, Failed]);
        let old_b = dev(2, 1, 8, &[InSync, InSync]);
        // B first: its own (older) record expects A.
        assert_eq!(
            decide_start(std::slice::from_ref(&old_b), false),
            Decision::Wait {
                present: 1,
                missing: vec![0],
                runnable: true
            }
        );
        // A comes: the newest record expects only A; B is re-added after.
        assert_eq!(
            decide_start(&[old_b.clone(), a.clone()], false),
            Decision::Start {
                missing: vec![1],
                readd: vec![old_b.path.clone()]
            }
        );
        // A alone: as whole as its record says.
        assert_eq!(
            decide_start(std::slice::from_ref(&a), false),
            Decision::Start {
                missing: vec![1],
                readd: vec![]
            }
        );
    }

    #[test]
    fn a_rebuilding_member_counts_as_present() {
        let r = Rebuilding {
            kind: crate::meta::RebuildKind::Bitmap,
            checkpoint: Sectors(0),
        };
        let a = dev(2, 0, 9, &[InSync, r]);
        let b = dev(2, 1, 9, &[InSync, r]);
        assert!(matches!(
            decide_start(std::slice::from_ref(&a), false),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide_start(&[a, b], false),
            Decision::Start {
                missing: vec![1],
                readd: vec![]
            }
        );
    }

    #[test]
    fn a_running_array_takes_its_device_back_once() {
        let a = dev(2, 0, 5, &[InSync, InSync]);
        let run = |holds| Running {
            md: "md127".into(),
            holds_device: holds,
        };
        assert_eq!(
            decide(&a, &[], Some(&run(true)), false),
            Decision::AlreadyIn { md: "md127".into() }
        );
        assert_eq!(
            decide(&a, &[], Some(&run(false)), false),
            Decision::ReAdd { md: "md127".into() }
        );
        let mut spare = dev(2, 0, 5, &[InSync, InSync]);
        spare.sb.device.uuid = Uuid::from_u128(0xdead);
        assert_eq!(
            decide(&spare, &[], Some(&run(false)), false),
            Decision::Spare
        );
    }

    #[test]
    fn too_small_and_foreign_devices_cannot_start_it() {
        let mut a = dev(2, 0, 5, &[InSync, InSync]);
        a.size = Bytes(4096);
        assert!(matches!(decide_start(&[a], true), Decision::CannotStart(_)));
        assert!(matches!(decide_start(&[], true), Decision::CannotStart(_)));
    }

    #[test]
    fn the_pending_set_holds_each_member_once() {
        let a = dev(2, 0, 5, &[InSync, InSync]);
        let b = dev(2, 1, 5, &[InSync, InSync]);
        let mut p = PendingArray::new(a.sb.array.uuid, "t");
        p.record(seen(&a));
        p.record(seen(&a));
        assert_eq!(p.devices.len(), 1);
        // The same member back under another name and number.
        let mut a2 = seen(&a);
        a2.path = "/dev/sdq".into();
        a2.dev = DevNum { major: 8, minor: 5 };
        p.record(seen(&b));
        p.record(a2.clone());
        assert_eq!(p.devices, vec![seen(&b), a2]);
        assert!(p.forget(None, std::path::Path::new("sdq")));
        assert!(!p.forget(None, std::path::Path::new("/dev/sdq")));
        assert!(p.forget(Some(b.dev), std::path::Path::new("/nothing")));
        assert!(p.devices.is_empty());
    }
}
