//! What mdextmon reports to an administrator: events derived from state
//! TRANSITIONS, so that a level-triggered daemon, which looks at the same
//! state again on every wake, reports each change once. Pure: [`events`]
//! compares two [`Facts`] (what the record and the kernel showed at two
//! looks) and returns what changed; sending them is [`crate::report`]'s.
//!
//! Names follow `mdadm --monitor` where mdadm has the event (`Fail`,
//! `DegradedArray`, `RebuildStarted`, `RebuildFinished`, `SpareActive`);
//! the others are mdext's own. Clean/dirty is deliberately not an event
//! (it changes with every burst of writes). Each kind has a fixed journald
//! `MESSAGE_ID` and syslog priority, documented in mdextmon(8), EVENTS.

use crate::meta::{ArrayMeta, MemberState};
use crate::monitor::KernelView;
use uuid::Uuid;

/// The kinds of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A member was recorded failed (or gone).
    Fail,
    /// The array became degraded (a slot without an in-sync member).
    DegradedArray,
    /// A member rebuild, or a resync, started.
    RebuildStarted,
    /// A member rebuild, or a resync, ended (finished or interrupted).
    RebuildFinished,
    /// A spare took a slot (recorded in it, to be rebuilt).
    SpareActive,
    /// `bitmap/can_clear` went false: the kernel keeps every write-intent
    /// bit until the array is recorded whole again.
    CanClearHeld,
    /// `bitmap/can_clear` went true again: the array is recorded whole.
    CanClearReleased,
    /// Writing the metadata to a member failed.
    MetadataWriteFailed,
}

impl Kind {
    /// Every kind, in documentation order.
    pub const ALL: [Kind; 8] = [
        Kind::Fail,
        Kind::DegradedArray,
        Kind::RebuildStarted,
        Kind::RebuildFinished,
        Kind::SpareActive,
        Kind::CanClearHeld,
        Kind::CanClearReleased,
        Kind::MetadataWriteFailed,
    ];

    /// The event's name (the PROGRAM's first argument, `MDEXT_EVENT`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fail => "Fail",
            Kind::DegradedArray => "DegradedArray",
            Kind::RebuildStarted => "RebuildStarted",
            Kind::RebuildFinished => "RebuildFinished",
            Kind::SpareActive => "SpareActive",
            Kind::CanClearHeld => "CanClearHeld",
            Kind::CanClearReleased => "CanClearReleased",
            Kind::MetadataWriteFailed => "MetadataWriteFailed",
        }
    }

    /// syslog priority (2 crit, 3 err, 4 warning, 5 notice, 6 info), as
    /// mdadm gives its events where it has them.
    pub fn priority(self) -> u8 {
        match self {
            Kind::Fail | Kind::DegradedArray => 2,
            Kind::MetadataWriteFailed => 3,
            Kind::RebuildStarted | Kind::RebuildFinished => 4,
            Kind::CanClearHeld => 5,
            Kind::SpareActive | Kind::CanClearReleased => 6,
        }
    }

    /// The journald `MESSAGE_ID` (fixed forever; 128 bits, lowercase hex).
    pub fn message_id(self) -> &'static str {
        match self {
            Kind::Fail => "777d512f280f4d9598c3057dafa08e0d",
            Kind::DegradedArray => "63f4cf7cb96f49e5bcb722bf2e873d67",
            Kind::RebuildStarted => "3df09c450f6f410c83d6beb3c5700a06",
            Kind::RebuildFinished => "14e70ce25cd14f79948001b77f82a5d6",
            Kind::SpareActive => "60e3a908607343b0b5279d0ed96339a1",
            Kind::CanClearHeld => "589a7f86ae524eefa81a0b40087a74e3",
            Kind::CanClearReleased => "0bc733ad7c374ea6913853c69d2696ed",
            Kind::MetadataWriteFailed => "c3e98188166e4b0cb14778fbbba78947",
        }
    }
}

/// One member table entry as seen at one look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFact {
    /// The entry's member UUID.
    pub uuid: Uuid,
    /// Its recorded state.
    pub state: MemberState,
    /// The device md holds for it (`/dev/loop1`), if any.
    pub device: Option<String>,
}

/// What one look at an array showed (record and kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// md device (`md127`).
    pub md: String,
    /// Array UUID.
    pub uuid: Uuid,
    /// Array name.
    pub name: String,
    /// Number of slots (entries from here on are spares).
    pub raid_disks: usize,
    /// The member table, by index.
    pub members: Vec<MemberFact>,
    /// A slot without an in-sync member, as recorded (the record, not the
    /// kernel's transient view: a failure is reported as `Fail` and then
    /// `DegradedArray` once it is recorded).
    pub degraded: bool,
    /// The kernel runs a resync (`sync_action` resync).
    pub resyncing: bool,
    /// `bitmap/can_clear` (`None`: unknown).
    pub can_clear: Option<bool>,
    /// Members whose last metadata write failed, with the error.
    pub write_failed: Vec<(String, String)>,
}

impl Facts {
    /// The facts of md device `md` whose record is `meta`, whose members
    /// are held by `devices` (`(index, kernel name)`), as the kernel showed
    /// it in `view` (`None`: not read).
    pub fn new(
        md: &str,
        meta: &ArrayMeta,
        devices: &[(usize, &str)],
        view: Option<&KernelView>,
        write_failed: &[(String, String)],
    ) -> Facts {
        let n = meta.geometry.raid_disks as usize;
        let members = meta
            .members
            .iter()
            .enumerate()
            .map(|(i, e)| MemberFact {
                uuid: e.uuid,
                state: e.state,
                device: devices
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, k)| format!("/dev/{k}")),
            })
            .collect();
        Facts {
            md: md.to_string(),
            uuid: meta.uuid,
            name: meta.name.clone(),
            raid_disks: n,
            members,
            degraded: !meta.all_in_sync(),
            resyncing: view.is_some_and(|v| v.sync_action == crate::md::SyncAction::Resync),
            can_clear: view.and_then(|v| v.can_clear),
            write_failed: write_failed.to_vec(),
        }
    }
}

/// One event to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Its kind.
    pub kind: Kind,
    /// md device (`md127`).
    pub md: String,
    /// Array UUID.
    pub uuid: Uuid,
    /// Array name.
    pub name: String,
    /// The member concerned (`/dev/loop1`), if one is.
    pub member: Option<String>,
    /// One line for a person.
    pub message: String,
}

fn out(s: MemberState) -> bool {
    matches!(s, MemberState::Failed | MemberState::Missing)
}

/// Why `can_clear` is held, in words: the slots not in sync.
fn held_why(f: &Facts) -> String {
    let slots: Vec<String> = f
        .members
        .iter()
        .take(f.raid_disks)
        .enumerate()
        .filter(|(_, m)| !m.state.is_in_sync())
        .map(|(i, m)| {
            format!(
                "slot {i}{} {}",
                m.device
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                m.state.name()
            )
        })
        .collect();
    if slots.is_empty() {
        "the array is not yet recorded whole".into()
    } else {
        format!(
            "{}; write-intent bits are kept for the rebuild",
            slots.join(", ")
        )
    }
}

/// The events between two looks at one array. `before` is `None` for the
/// first look (a daemon that starts or takes the array over): then the
/// state found is reported (degraded, a rebuild or resync running,
/// `can_clear` held), never what may have happened before.
pub fn events(before: Option<&Facts>, after: &Facts) -> Vec<Event> {
    let mut v = Vec::new();
    let mut push = |kind: Kind, member: Option<&str>, message: String| {
        v.push(Event {
            kind,
            md: after.md.clone(),
            uuid: after.uuid,
            name: after.name.clone(),
            member: member.map(str::to_string),
            message: format!("{} ({}): {message}", after.md, after.name),
        })
    };
    let slots = after.raid_disks.min(after.members.len());
    let Some(b) = before else {
        if after.degraded {
            push(Kind::DegradedArray, None, "running degraded".into());
        }
        for m in &after.members[..slots] {
            if matches!(m.state, MemberState::Rebuilding { .. }) {
                let d = m.device.as_deref().unwrap_or("a device");
                push(
                    Kind::RebuildStarted,
                    m.device.as_deref(),
                    format!("{d} is being rebuilt"),
                );
            }
        }
        if after.resyncing {
            push(Kind::RebuildStarted, None, "resync running".into());
        }
        if after.can_clear == Some(false) {
            push(
                Kind::CanClearHeld,
                None,
                format!("can_clear held: {}", held_why(after)),
            );
        }
        for (m, e) in &after.write_failed {
            push(
                Kind::MetadataWriteFailed,
                Some(m),
                format!("metadata write to {m} failed: {e}"),
            );
        }
        return v;
    };
    // Member transitions, slot by slot.
    for (i, a) in after.members[..slots].iter().enumerate() {
        let Some(p) = b.members.get(i) else { continue };
        let dev = a.device.as_deref().or(p.device.as_deref());
        let d = dev.unwrap_or("a device").to_string();
        let was_rebuilding = matches!(p.state, MemberState::Rebuilding { .. });
        let rebuilding = matches!(a.state, MemberState::Rebuilding { .. });
        if !out(p.state) && out(a.state) && p.state != MemberState::Empty {
            push(
                Kind::Fail,
                dev,
                format!("{d} in slot {i} recorded {}", a.state.name()),
            );
        }
        if rebuilding && !was_rebuilding {
            push(
                Kind::RebuildStarted,
                dev,
                format!("rebuild of {d} in slot {i} started"),
            );
        }
        if was_rebuilding && !rebuilding {
            let how = if a.state.is_in_sync() {
                "finished, in sync"
            } else {
                "interrupted"
            };
            push(
                Kind::RebuildFinished,
                dev,
                format!("rebuild of {d} in slot {i} {how}"),
            );
        }
        if a.state.is_in_sync() && !p.state.is_in_sync() && !was_rebuilding {
            let was_spare = b
                .members
                .iter()
                .skip(b.raid_disks)
                .any(|s| s.uuid == a.uuid && s.state == MemberState::Spare && !a.uuid.is_nil());
            if was_spare {
                push(
                    Kind::SpareActive,
                    dev,
                    format!("spare {d} is active in slot {i}"),
                );
            } else {
                // Started and finished between two looks.
                push(
                    Kind::RebuildStarted,
                    dev,
                    format!("rebuild of {d} in slot {i} started"),
                );
                push(
                    Kind::RebuildFinished,
                    dev,
                    format!("rebuild of {d} in slot {i} finished, in sync"),
                );
            }
        }
    }
    if after.degraded && !b.degraded {
        push(Kind::DegradedArray, None, "running degraded".into());
    }
    if after.resyncing && !b.resyncing {
        push(Kind::RebuildStarted, None, "resync started".into());
    }
    if !after.resyncing && b.resyncing {
        push(Kind::RebuildFinished, None, "resync ended".into());
    }
    match (b.can_clear, after.can_clear) {
        (Some(true) | None, Some(false)) => push(
            Kind::CanClearHeld,
            None,
            format!("can_clear held: {}", held_why(after)),
        ),
        (Some(false), Some(true)) => push(
            Kind::CanClearReleased,
            None,
            "can_clear released: recorded whole on every member, bits may be cleared".into(),
        ),
        _ => {}
    }
    for (m, e) in &after.write_failed {
        if !b.write_failed.iter().any(|(x, _)| x == m) {
            push(
                Kind::MetadataWriteFailed,
                Some(m),
                format!("metadata write to {m} failed: {e}"),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::RebuildKind;
    use crate::units::Sectors;

    const IN: MemberState = MemberState::InSync;
    const FAILED: MemberState = MemberState::Failed;
    const REB: MemberState = MemberState::Rebuilding {
        kind: RebuildKind::Bitmap,
        checkpoint: Sectors(0),
    };

    fn facts(states: &[(MemberState, Option<&str>)], can_clear: Option<bool>) -> Facts {
        Facts {
            md: "md127".into(),
            uuid: Uuid::from_u128(1),
            name: "re".into(),
            raid_disks: 2,
            members: states
                .iter()
                .enumerate()
                .map(|(i, (s, d))| MemberFact {
                    uuid: Uuid::from_u128(10 + i as u128),
                    state: *s,
                    device: d.map(str::to_string),
                })
                .collect(),
            degraded: states.iter().take(2).any(|(s, _)| !s.is_in_sync()),
            resyncing: false,
            can_clear,
            write_failed: Vec::new(),
        }
    }

    fn kinds(v: &[Event]) -> Vec<(Kind, Option<&str>)> {
        v.iter().map(|e| (e.kind, e.member.as_deref())).collect()
    }

    const L0: Option<&str> = Some("/dev/loop0");
    const L1: Option<&str> = Some("/dev/loop1");

    #[test]
    fn the_same_state_twice_reports_nothing() {
        let whole = facts(&[(IN, L0), (IN, L1)], Some(true));
        assert!(events(Some(&whole), &whole).is_empty());
        let degraded = facts(&[(IN, L0), (FAILED, None)], Some(false));
        assert!(events(Some(&degraded), &degraded).is_empty());
        let rebuilding = facts(&[(IN, L0), (REB, L1)], Some(false));
        assert!(events(Some(&rebuilding), &rebuilding).is_empty());
    }

    #[test]
    fn fail_then_readd_then_rebuilt() {
        let whole = facts(&[(IN, L0), (IN, L1)], Some(true));
        // can_clear goes false before the failure is recorded.
        let held = facts(&[(IN, L0), (IN, L1)], Some(false));
        let e = events(Some(&whole), &held);
        assert_eq!(kinds(&e), vec![(Kind::CanClearHeld, None)]);
        // Recorded failed; the device is already detached.
        let failed = facts(&[(IN, L0), (FAILED, None)], Some(false));
        let e = events(Some(&held), &failed);
        assert_eq!(
            kinds(&e),
            vec![(Kind::Fail, L1), (Kind::DegradedArray, None)]
        );
        assert_eq!(
            e[0].message,
            "md127 (re): /dev/loop1 in slot 1 recorded failed"
        );
        let rebuilding = facts(&[(IN, L0), (REB, L1)], Some(false));
        assert_eq!(
            kinds(&events(Some(&failed), &rebuilding)),
            vec![(Kind::RebuildStarted, L1)]
        );
        let done = facts(&[(IN, L0), (IN, L1)], Some(false));
        assert_eq!(
            kinds(&events(Some(&rebuilding), &done)),
            vec![(Kind::RebuildFinished, L1)]
        );
        assert_eq!(
            kinds(&events(Some(&done), &whole)),
            vec![(Kind::CanClearReleased, None)]
        );
    }

    #[test]
    fn a_rebuild_seen_only_at_its_ends_reports_both() {
        let failed = facts(&[(IN, L0), (FAILED, None)], Some(false));
        let done = facts(&[(IN, L0), (IN, L1)], Some(false));
        assert_eq!(
            kinds(&events(Some(&failed), &done)),
            vec![(Kind::RebuildStarted, L1), (Kind::RebuildFinished, L1)]
        );
    }

    #[test]
    fn a_failed_rebuild_is_a_fail_and_an_interrupted_rebuild() {
        let rebuilding = facts(&[(IN, L0), (REB, L1)], Some(false));
        let failed = facts(&[(IN, L0), (FAILED, None)], Some(false));
        let e = events(Some(&rebuilding), &failed);
        assert_eq!(
            kinds(&e),
            vec![(Kind::Fail, L1), (Kind::RebuildFinished, L1)]
        );
        assert!(e[1].message.ends_with("interrupted"), "{}", e[1].message);
    }

    #[test]
    fn first_look_reports_the_state_found() {
        let whole = facts(&[(IN, L0), (IN, L1)], Some(true));
        assert!(events(None, &whole).is_empty());
        let f = facts(&[(IN, L0), (REB, L1)], Some(false));
        let e = events(None, &f);
        assert_eq!(
            kinds(&e),
            vec![
                (Kind::DegradedArray, None),
                (Kind::RebuildStarted, L1),
                (Kind::CanClearHeld, None)
            ]
        );
        assert_eq!(
            e[2].message,
            "md127 (re): can_clear held: slot 1 (/dev/loop1) rebuilding; write-intent bits are kept for the rebuild"
        );
    }

    #[test]
    fn resync_start_and_end() {
        let a = facts(&[(IN, L0), (IN, L1)], Some(true));
        let mut b = a.clone();
        b.resyncing = true;
        assert_eq!(
            kinds(&events(Some(&a), &b)),
            vec![(Kind::RebuildStarted, None)]
        );
        assert_eq!(
            kinds(&events(Some(&b), &a)),
            vec![(Kind::RebuildFinished, None)]
        );
    }

    #[test]
    fn metadata_write_failures_once_per_member() {
        let a = facts(&[(IN, L0), (IN, L1)], Some(true));
        let mut b = a.clone();
        b.write_failed = vec![("/dev/loop1".into(), "EIO".into())];
        let e = events(Some(&a), &b);
        assert_eq!(kinds(&e), vec![(Kind::MetadataWriteFailed, L1)]);
        // Failing again is not news; recovering and failing again is.
        assert!(events(Some(&b), &b).is_empty());
        assert_eq!(events(Some(&a), &b).len(), 1);
    }

    #[test]
    fn a_spare_taking_a_slot_is_spare_active() {
        let mut a = facts(
            &[(IN, L0), (FAILED, None), (MemberState::Spare, L1)],
            Some(false),
        );
        a.members[2].uuid = Uuid::from_u128(99);
        let mut b = facts(
            &[(IN, L0), (IN, L1), (MemberState::Empty, None)],
            Some(false),
        );
        b.members[1].uuid = Uuid::from_u128(99);
        assert_eq!(kinds(&events(Some(&a), &b)), vec![(Kind::SpareActive, L1)]);
    }

    #[test]
    fn ids_and_names_are_distinct_and_well_formed() {
        let mut ids: Vec<&str> = Kind::ALL.iter().map(|k| k.message_id()).collect();
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        ids.sort_unstable();
        ids.dedup();
        names.sort_unstable();
        names.dedup();
        assert_eq!(ids.len(), Kind::ALL.len());
        assert_eq!(names.len(), Kind::ALL.len());
    }
}
