//! Unit tests: one snapshot in, the exact batch out.

use super::*;
use crate::units::Bytes;

const TOTAL: u64 = 24000;

fn uuid(i: usize) -> Uuid {
    Uuid::from_u128(0x1000 + i as u128)
}

/// A clean raid1 with 2 members, all in sync, events 10, EC 10 (the
/// members' entries recorded at event 1).
fn meta() -> ArrayMeta {
    let mut m = crate::meta::test_raid1(2, Sectors(TOTAL), Bytes(65536), 10);
    for (i, e) in m.members.iter_mut().enumerate() {
        e.uuid = uuid(i);
        e.events = 1;
    }
    m
}

fn flags(s: &str) -> MemberFlags {
    s.parse().unwrap_or_default()
}

fn km(index: usize, f: &str, slot: Option<u32>) -> KernelMember {
    KernelMember {
        index,
        flags: flags(f),
        slot,
        recovery_start: Checkpoint::None,
    }
}

/// Clean, healthy, can_clear true.
fn view() -> KernelView {
    KernelView {
        array_state: ArrayState::Clean,
        degraded: 0,
        sync_action: SyncAction::Idle,
        sync_completed: SyncCompleted::None,
        resync_start: Checkpoint::None,
        can_clear: Some(true),
        time_base: Some(1),
        members: vec![km(0, "in_sync", Some(0)), km(1, "in_sync", Some(1))],
    }
}

/// A monitor past its start-up write, holding `m` as written.
fn settled(m: ArrayMeta, v: &KernelView) -> Monitor {
    let (mut mon, _) = Monitor::start(m, None, v);
    assert_eq!(mon.observe(v), vec![], "fixture must be settled");
    mon
}

/// The facts of a device for slot 1: `own` events and state recorded on it
/// (a copy of this array's record), or blank; its member UUID `dev_uuid`.
fn facts(dev_uuid: Uuid, own: Option<OwnRecord>) -> DeviceFacts {
    let own = own.map(|o| {
        let mut a = meta();
        a.events = o.events;
        a.members[1].state = o.state;
        Superblock {
            array: a,
            device: DeviceMeta {
                uuid: dev_uuid,
                data_offset: Sectors(2048),
                data_size: Sectors(TOTAL),
            },
        }
    });
    DeviceFacts {
        size: Sectors(2048 + TOTAL),
        own,
        foreign: Vec::new(),
        data_offset: Sectors(2048),
        new_uuid: uuid(9),
        write_mostly: false,
    }
}

/// The record written by a batch.
fn the_write(acts: &[Action]) -> &ArrayMeta {
    acts.iter()
        .find_map(|a| match a {
            Action::WriteMetadata { meta, .. } => Some(meta),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no WriteMetadata in {acts:?}"))
}

fn written(a: &Action) -> &ArrayMeta {
    match a {
        Action::WriteMetadata { meta, .. } => meta,
        other => panic!("expected WriteMetadata, got {other:?}"),
    }
}

fn with_state(mut m: ArrayMeta, i: usize, st: MemberState, events: u64) -> ArrayMeta {
    m.members[i].state = st;
    m.members[i].events = events;
    m
}

#[test]
fn start_rewrites_once_then_a_clean_array_costs_nothing() {
    let (mut mon, acts) = Monitor::start(meta(), None, &view());
    let mut want = meta();
    want.events = 11;
    want.bitmap.events_cleared = 11;
    assert_eq!(
        acts,
        vec![Action::WriteMetadata {
            meta: want,
            targets: vec![0, 1]
        }]
    );
    for _ in 0..3 {
        assert_eq!(mon.observe(&view()), vec![]);
    }
}

/// `meta()` as a parity level (raid5 of 2: md accepts it; the machine
/// only asks whether the level has parity).
fn parity_meta() -> ArrayMeta {
    let mut m = meta();
    m.geometry.level = crate::md::Level::Raid5;
    m
}

#[test]
fn write_pending_records_dirty_then_active() {
    let mut mon = settled(parity_meta(), &view());
    let e = mon.meta().events;
    let prev = mon.meta().clone();
    let mut v = view();
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    // The record on md's latency path claims nothing about earlier
    // writes: no flush before it (but with no durable record known, one).
    assert!(!written(&acts[0]).needs_flush_before(Some(&prev)));
    assert!(written(&acts[0]).needs_flush_before(None));
    let mut want = mon.meta().clone();
    assert!(!want.clean);
    want.events = e + 1;
    assert_eq!(
        want.bitmap.events_cleared,
        e + 1,
        "EC tracks E while all in sync"
    );
    assert_eq!(
        acts,
        vec![
            Action::WriteMetadata {
                meta: want,
                targets: vec![0, 1]
            },
            Action::SetArrayState(ArrayState::Active),
        ],
        "a parity level: the dirty record refuses a degraded start after a crash, so it comes first"
    );
    // Active afterwards: nothing more.
    v.array_state = ArrayState::Active;
    assert_eq!(mon.observe(&v), vec![]);
}

#[test]
fn writes_to_a_clean_whole_mirror_leave_its_record_alone() {
    let mut mon = settled(meta(), &view());
    let prev = mon.meta().clone();
    let mut v = view();
    v.array_state = ArrayState::WritePending;
    assert_eq!(
        mon.observe(&v),
        vec![Action::SetArrayState(ArrayState::Active)],
        "md's bits cover the write: answered, nothing recorded"
    );
    v.array_state = ArrayState::Active;
    assert_eq!(mon.observe(&v), vec![]);
    assert_eq!(mon.meta(), &prev, "the record as it was while md writes");
    v.array_state = ArrayState::ActiveIdle;
    let acts = mon.observe(&v);
    assert!(
        matches!(&acts[..], [Action::WriteMetadata { meta, .. }, Action::SetArrayState(ArrayState::Clean)] if meta.clean && meta.events == prev.events + 1),
        "md idle: the events advanced, then clean: {acts:?}"
    );
    v.array_state = ArrayState::Clean;
    assert_eq!(mon.observe(&v), vec![]);
    // A failure while md writes is recorded (and the record marks the
    // array dirty) before md goes on.
    v.array_state = ArrayState::WritePending;
    v.degraded = 1;
    v.members[1] = km(1, "faulty,blocked", Some(1));
    let acts = mon.observe(&v);
    let at = |want: &Action| acts.iter().position(|a| a == want);
    let write = acts
        .iter()
        .position(|a| matches!(a, Action::WriteMetadata { .. }))
        .expect("a failure record");
    assert!(!written(&acts[write]).clean, "{acts:?}");
    assert!(write < at(&Action::SetArrayState(ArrayState::Active)).expect("active"));
}

#[test]
fn a_first_write_with_bits_held_is_answered_before_its_dirty_record() {
    // can_clear still false (a rebuild just ended): the record that lets
    // md clear bits again is owed; the write is answered first all the
    // same, as md's bits cover it.
    let mut mon = settled(meta(), &view());
    let mut v = view();
    v.can_clear = Some(false);
    let prev = mon.meta().clone();
    let e = prev.events;
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    let mut want = prev.clone();
    want.clean = false;
    want.events = e + 1;
    want.bitmap.events_cleared = e + 1;
    assert_eq!(
        acts,
        vec![
            Action::SetArrayState(ArrayState::Active),
            Action::WriteMetadata {
                meta: want.clone(),
                targets: vec![0, 1]
            },
            Action::SetCanClear(true),
        ]
    );
    assert!(want.marks_dirty_only(&prev) && !want.needs_flush_before(Some(&prev)));
}

#[test]
fn dirty_may_trail_only_for_a_clean_whole_mirror_with_external_bits() {
    assert!(dirty_may_trail(&meta()));
    let mut raid10 = meta();
    raid10.geometry.level = crate::md::Level::Raid10;
    assert!(dirty_may_trail(&raid10));
    assert!(!dirty_may_trail(&parity_meta()), "parity");
    let mut dirty = meta();
    dirty.clean = false;
    assert!(!dirty_may_trail(&dirty), "already dirty");
    let out = with_state(meta(), 1, MemberState::Failed, 5);
    assert!(!dirty_may_trail(&out), "a member out");
    for mode in [BitmapMode::Kernel, BitmapMode::None] {
        let mut m = meta();
        m.bitmap.mode = mode;
        assert!(!dirty_may_trail(&m), "{mode:?}");
    }
}

#[test]
fn after_a_failed_record_the_rewrite_comes_before_active() {
    let mut mon = settled(meta(), &view());
    let mut v = view();
    v.can_clear = Some(false);
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    assert_eq!(acts[0], Action::SetArrayState(ArrayState::Active));
    // The record failed: what the members hold is not known, so nothing
    // is answered ahead of the rewrite.
    mon.step(Event::ActionFailed(1)).expect("ok");
    let acts = mon.observe(&v);
    assert!(matches!(acts[0], Action::WriteMetadata { .. }), "{acts:?}");
    assert_eq!(acts[1], Action::SetArrayState(ArrayState::Active));
}

#[test]
fn active_idle_goes_clean_then_records_clean() {
    // A mirror recorded dirty (a record that changed more than the flag
    // marks it dirty too: a member that came back, a checkpoint).
    let mut dirty = meta();
    dirty.clean = false;
    let mut v = view();
    v.array_state = ArrayState::Active;
    let mut mon = settled(dirty.clone(), &v);
    v.array_state = ArrayState::ActiveIdle;
    assert_eq!(
        mon.observe(&v),
        vec![Action::SetArrayState(ArrayState::Clean)],
        "no write before the kernel reads clean"
    );
    v.array_state = ArrayState::Clean;
    let acts = mon.observe(&v);
    assert_eq!(acts.len(), 1);
    let clean = written(&acts[0]).clone();
    assert!(clean.clean && clean.marks_clean_only(&dirty));
    // A clean record claims md's writes; on a whole mirror with external
    // bits, md's bits cover them until they are durable: no flush first.
    assert!(!clean.needs_flush_before(Some(&dirty)));
    assert_eq!(mon.observe(&v), vec![]);
}

#[test]
fn a_parity_clean_record_waits_for_a_flush() {
    let mut v = view();
    v.array_state = ArrayState::Active;
    let mut dirty = parity_meta();
    dirty.clean = false;
    let mut mon = settled(dirty.clone(), &v);
    v.array_state = ArrayState::ActiveIdle;
    assert_eq!(
        mon.observe(&v),
        vec![Action::SetArrayState(ArrayState::Clean)]
    );
    v.array_state = ArrayState::Clean;
    let acts = mon.observe(&v);
    let clean = written(&acts[0]);
    assert!(clean.clean && clean.marks_clean_only(&dirty));
    assert!(
        clean.needs_flush_before(Some(&dirty)),
        "parity: the clean record claims the stripes agree"
    );
    // A clean record that changes more than the flag claims more.
    let mut more = with_state(meta(), 1, MemberState::Failed, dirty.events + 1);
    more.clean = true;
    let mut prev = meta();
    prev.clean = false;
    assert!(more.needs_flush_before(Some(&prev)));
}

#[test]
fn a_burst_of_writes_ends_with_one_record_that_advances_the_events() {
    // md's first write was answered at once (the machine never saw
    // write-pending) and md went idle.
    let mut mon = settled(meta(), &view());
    let before = mon.meta().clone();
    let mut v = view();
    v.array_state = ArrayState::Active;
    assert_eq!(mon.observe(&v), vec![], "nothing recorded while md writes");
    // md idle: one record, the same but for a later event count (a copy of
    // a member taken before the writes reads older), no flush before it
    // (md's bits cover the writes until they are durable), then `clean`:
    // md showing clean means the record is done.
    v.array_state = ArrayState::ActiveIdle;
    let acts = mon.observe(&v);
    let mut want = before.clone();
    want.events += 1;
    want.bitmap.events_cleared = want.events;
    assert_eq!(
        acts,
        vec![
            Action::WriteMetadata {
                meta: want.clone(),
                targets: vec![0, 1]
            },
            Action::SetArrayState(ArrayState::Clean)
        ]
    );
    assert!(want.marks_clean_only(&before) && !want.needs_flush_before(Some(&before)));
    v.array_state = ArrayState::Clean;
    assert_eq!(mon.observe(&v), vec![]);
    assert!(mon.may_answer_at_once(), "settled clean again");
    // Not for parity: its dirty record is what refuses a degraded start.
    let mut mon = settled(parity_meta(), &view());
    let mut v = view();
    v.array_state = ArrayState::ActiveIdle;
    let acts = mon.observe(&v);
    assert!(
        matches!(&acts[0], Action::WriteMetadata { meta, .. } if !meta.clean),
        "{acts:?}"
    );
    assert_eq!(acts[1], Action::SetArrayState(ArrayState::Clean));
    // Nor with a member out.
    let out = with_state(meta(), 1, MemberState::Failed, 5);
    let mut v = view();
    v.degraded = 1;
    v.can_clear = Some(false);
    v.members.pop();
    let mut mon = settled(out, &v);
    v.array_state = ArrayState::ActiveIdle;
    let acts = mon.observe(&v);
    assert!(
        matches!(&acts[0], Action::WriteMetadata { meta, .. } if !meta.clean),
        "{acts:?}"
    );
}

#[test]
fn blocked_failure_full_sequence() {
    let mut dirty = meta();
    dirty.clean = false;
    let mut v = view();
    v.array_state = ArrayState::Active;
    let mut mon = settled(dirty, &v);
    let e = mon.meta().events;
    let ec = mon.meta().bitmap.events_cleared;
    v.array_state = ArrayState::WritePending;
    v.degraded = 1;
    v.members[1] = km(1, "faulty,blocked", Some(1));
    let prev = mon.meta().clone();
    let acts = mon.observe(&v);
    let want = with_state(mon.meta().clone(), 1, MemberState::Failed, e + 1);
    assert!(want.needs_flush_before(Some(&prev)), "a failure record");
    assert_eq!(want.events, e + 1);
    assert_eq!(want.bitmap.events_cleared, ec, "EC must not move");
    assert_eq!(
        acts,
        vec![
            Action::SetCanClear(false),
            Action::WriteMetadata {
                meta: want,
                targets: vec![0]
            },
            Action::Member(1, MemberCommand::Unblock),
            Action::SetArrayState(ArrayState::Active),
            Action::Member(1, MemberCommand::Remove),
        ]
    );
    // Twice-notified dev state, now `faulty` and the array active: only
    // the remove is retried, no second write.
    v.array_state = ArrayState::Active;
    v.can_clear = Some(false);
    v.members[1] = km(1, "faulty", None);
    assert_eq!(
        mon.observe(&v),
        vec![Action::Member(1, MemberCommand::Remove)]
    );
    v.members.truncate(1);
    assert_eq!(mon.observe(&v), vec![]);
}

#[test]
fn failure_of_an_idle_clean_array_without_write_pending() {
    let mut mon = settled(meta(), &view());
    let mut v = view();
    v.degraded = 1;
    v.members[1] = km(1, "faulty", None);
    let acts = mon.observe(&v);
    assert_eq!(acts[0], Action::SetCanClear(false));
    assert_eq!(written(&acts[1]).members[1].state, MemberState::Failed);
    assert_eq!(acts[2], Action::Member(1, MemberCommand::Remove));
    assert_eq!(acts.len(), 3);
}

#[test]
fn missing_member_at_start_is_recorded_after_can_clear_false() {
    let mut v = view();
    v.degraded = 1;
    v.members.truncate(1);
    let (_, acts) = Monitor::start(meta(), None, &v);
    assert_eq!(acts[0], Action::SetCanClear(false));
    let m = written(&acts[1]);
    assert_eq!(m.members[1].state, MemberState::Missing);
    assert_eq!(acts.len(), 2);
}

fn degraded_meta(e: u64) -> ArrayMeta {
    let mut m = with_state(meta(), 1, MemberState::Failed, e);
    m.events = e;
    m
}

fn degraded_view() -> KernelView {
    let mut v = view();
    v.degraded = 1;
    v.can_clear = Some(false);
    v.members.truncate(1);
    v
}

#[test]
fn readd_bitmap_when_own_events_cover_events_cleared() {
    let mut mon = settled(degraded_meta(12), &degraded_view());
    let e = mon.meta().events;
    let dev = facts(
        uuid(1),
        Some(OwnRecord {
            events: 10,
            state: MemberState::InSync,
        }),
    );
    let acts = mon
        .step(Event::Admin(
            AdminRequest::Add(Box::new(dev)),
            degraded_view(),
        ))
        .expect("accepted");
    let want = with_state(
        mon.meta().clone(),
        1,
        MemberState::Rebuilding {
            kind: RebuildKind::Bitmap,
            checkpoint: Sectors(0),
        },
        e + 1,
    );
    assert_eq!(
        acts,
        vec![
            Action::SetSyncAction(SyncAction::Frozen),
            Action::WriteMetadata {
                meta: want,
                targets: vec![0, 1]
            },
            Action::AddDevice {
                index: 1,
                bitmap_based: true,
                device: DeviceMeta {
                    uuid: uuid(1),
                    data_offset: Sectors(2048),
                    data_size: Sectors(TOTAL),
                },
            },
            Action::SetSyncAction(SyncAction::Recover),
        ]
    );
}

/// `add --write-mostly`: the record names the device write-mostly and md's
/// flag is set once it is in; a returning member recorded so keeps it.
#[test]
fn readd_write_mostly_records_and_sets_the_flag() {
    let own = Some(OwnRecord {
        events: 10,
        state: MemberState::InSync,
    });
    let mut mon = settled(degraded_meta(12), &degraded_view());
    let mut dev = facts(uuid(1), own);
    dev.write_mostly = true;
    let acts = mon
        .admin(&AdminRequest::Add(Box::new(dev)), &degraded_view())
        .expect("accepted");
    assert_eq!(the_write(&acts).write_mostly, vec![uuid(1)]);
    let add = acts
        .iter()
        .position(|a| matches!(a, Action::AddDevice { .. }))
        .expect("add");
    assert_eq!(
        acts.get(add + 1),
        Some(&Action::Member(1, MemberCommand::WriteMostly))
    );
    // Recorded, added again without the option: kept and set.
    let mut m = degraded_meta(12);
    m.write_mostly = vec![uuid(1)];
    let mut mon = settled(m, &degraded_view());
    let acts = mon
        .admin(
            &AdminRequest::Add(Box::new(facts(uuid(1), own))),
            &degraded_view(),
        )
        .expect("accepted");
    assert_eq!(the_write(&acts).write_mostly, vec![uuid(1)]);
    assert!(acts.contains(&Action::Member(1, MemberCommand::WriteMostly)));
    // Not on raid1: refused.
    let mut m = degraded_meta(12);
    m.geometry.level = crate::md::Level::Raid10;
    let mut mon = settled(m, &degraded_view());
    let mut dev = facts(uuid(1), own);
    dev.write_mostly = true;
    assert_eq!(
        mon.admin(&AdminRequest::Add(Box::new(dev)), &degraded_view()),
        Err(Refusal::NotRaid1(crate::md::Level::Raid10))
    );
}

fn readd_kind(own: Option<OwnRecord>, same_uuid: bool) -> RebuildKind {
    readd_kind_in(degraded_meta(12), own, same_uuid)
}

fn readd_kind_in(meta: ArrayMeta, own: Option<OwnRecord>, same_uuid: bool) -> RebuildKind {
    let mut mon = settled(meta, &degraded_view());
    let dev_uuid = if same_uuid { uuid(1) } else { uuid(8) };
    let acts = mon
        .admin(
            &AdminRequest::Add(Box::new(facts(dev_uuid, own))),
            &degraded_view(),
        )
        .expect("accepted");
    let holds = if same_uuid && own.is_some() {
        dev_uuid
    } else {
        uuid(9)
    };
    match the_write(&acts).members[1] {
        MemberEntry {
            state: MemberState::Rebuilding { kind, .. },
            uuid: u,
            ..
        } => {
            assert_eq!(u, holds, "the slot records the device it now holds");
            kind
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn readd_full_unless_every_condition_holds() {
    let own = |events, state| Some(OwnRecord { events, state });
    // The record is degraded, so the settle write left EC at 10.
    assert_eq!(
        readd_kind(own(10, MemberState::InSync), true),
        RebuildKind::Bitmap
    );
    assert_eq!(
        readd_kind(own(9, MemberState::InSync), true),
        RebuildKind::Full,
        "own events below events_cleared"
    );
    assert_eq!(
        readd_kind(own(10, MemberState::InSync), false),
        RebuildKind::Full,
        "not the slot's device"
    );
    assert_eq!(readd_kind(None, true), RebuildKind::Full, "blank device");
    let full = MemberState::Rebuilding {
        kind: RebuildKind::Full,
        checkpoint: Sectors(100),
    };
    assert_eq!(
        readd_kind(own(12, full), true),
        RebuildKind::Full,
        "its copy was stamped during an unfinished full rebuild"
    );
    let bm = MemberState::Rebuilding {
        kind: RebuildKind::Bitmap,
        checkpoint: Sectors(100),
    };
    assert_eq!(readd_kind(own(12, bm), true), RebuildKind::Bitmap);
    // No bitmap (`--bitmap none`): always full.
    let mut none = degraded_meta(12);
    none.bitmap.mode = crate::meta::BitmapMode::None;
    assert_eq!(
        readd_kind_in(none, own(10, MemberState::InSync), true),
        RebuildKind::Full,
        "no bitmap behind insync"
    );
}

#[test]
fn readd_writes_can_clear_false_first_if_it_reads_true() {
    let mut v = degraded_view();
    let mut mon = settled(degraded_meta(12), &v);
    v.can_clear = Some(true);
    // Not settled: the machine itself wants `false` first.
    let r = AdminRequest::Add(Box::new(facts(uuid(1), None)));
    assert_eq!(mon.admin(&r, &v), Err(Refusal::Unsettled));
    assert_eq!(mon.observe(&v)[0], Action::SetCanClear(false));
}

#[test]
fn readd_refusals() {
    let mut mon = settled(degraded_meta(12), &degraded_view());
    let newer = AdminRequest::Add(Box::new(facts(
        uuid(1),
        Some(OwnRecord {
            events: 99,
            state: MemberState::InSync,
        }),
    )));
    assert!(matches!(
        mon.admin(&newer, &degraded_view()),
        Err(Refusal::Diverged { .. })
    ));
    // Slot 0's own device, while md holds slot 0.
    let mut zero = facts(
        uuid(0),
        Some(OwnRecord {
            events: 12,
            state: MemberState::InSync,
        }),
    );
    if let Some(sb) = zero.own.as_mut() {
        sb.device.uuid = uuid(0);
    }
    assert_eq!(
        mon.admin(&AdminRequest::Add(Box::new(zero)), &degraded_view()),
        Err(Refusal::SlotInUse(0))
    );
    assert_eq!(
        mon.admin(&AdminRequest::Fail(0), &degraded_view()),
        Err(Refusal::LastInSync(0))
    );
    assert_eq!(
        mon.admin(&AdminRequest::Remove(0), &degraded_view()),
        Err(Refusal::Active(0))
    );
}

fn rebuilding_meta(checkpoint: u64, kind: RebuildKind) -> ArrayMeta {
    let mut m = with_state(
        meta(),
        1,
        MemberState::Rebuilding {
            kind,
            checkpoint: Sectors(checkpoint),
        },
        13,
    );
    m.events = 13;
    m
}

fn recovering_view(done: u64) -> KernelView {
    let mut v = view();
    v.degraded = 1;
    v.can_clear = Some(false);
    v.sync_action = SyncAction::Recover;
    v.sync_completed = SyncCompleted::Progress {
        done: Sectors(done),
        total: Sectors(TOTAL),
    };
    v.members[1] = KernelMember {
        index: 1,
        flags: flags("spare"),
        slot: Some(1),
        recovery_start: Checkpoint::At(Sectors(done)),
    };
    v
}

#[test]
fn recovery_checkpoints_every_sixteenth() {
    let mut mon = settled(rebuilding_meta(0, RebuildKind::Bitmap), &recovering_view(0));
    let step = TOTAL / CHECKPOINT_STEPS; // 1500
    assert_eq!(mon.observe(&recovering_view(step - 1)), vec![]);
    let acts = mon.observe(&recovering_view(step + 7));
    assert_eq!(acts.len(), 1);
    assert_eq!(
        written(&acts[0]).members[1].state,
        MemberState::Rebuilding {
            kind: RebuildKind::Bitmap,
            checkpoint: Sectors(step + 7)
        },
        "the recorded checkpoint is the real progress, never rounded up"
    );
    assert_eq!(mon.observe(&recovering_view(2 * step - 1)), vec![]);
    // Progress going backwards (a restarted recovery) is recorded at once.
    let acts = mon.observe(&recovering_view(10));
    assert_eq!(acts.len(), 1);
    let mut writes = 1;
    for d in (0..=TOTAL).step_by(100) {
        writes += mon.observe(&recovering_view(d)).len();
    }
    assert!(writes as u64 <= CHECKPOINT_STEPS + 2, "{writes} writes");
}

#[test]
fn recovery_end_records_then_can_clear_true_and_answers_write_pending() {
    let mut v = recovering_view(TOTAL);
    let mut mon = settled(rebuilding_meta(TOTAL, RebuildKind::Bitmap), &v);
    let e = mon.meta().events;
    v.degraded = 0;
    v.sync_action = SyncAction::Idle;
    v.sync_completed = SyncCompleted::None;
    v.members[1] = km(1, "in_sync", Some(1));
    v.array_state = ArrayState::WritePending; // not notified; same snapshot
    let acts = mon.observe(&v);
    let mut want = with_state(mon.meta().clone(), 1, MemberState::InSync, e + 1);
    want.events = e + 1;
    want.bitmap.events_cleared = e + 1;
    want.clean = false;
    assert_eq!(
        acts,
        vec![
            Action::WriteMetadata {
                meta: want,
                targets: vec![0, 1]
            },
            Action::SetArrayState(ArrayState::Active),
            Action::SetCanClear(true),
        ]
    );
    v.can_clear = Some(true);
    v.array_state = ArrayState::Active;
    assert_eq!(mon.observe(&v), vec![]);
}

#[test]
fn can_clear_false_with_everything_in_sync_writes_before_true() {
    // E.g. a daemon restart between "record all in sync" and "true".
    let mut v = view();
    v.can_clear = Some(false);
    let (_, acts) = Monitor::start(meta(), None, &v);
    let m = written(&acts[0]);
    assert_eq!(m.bitmap.events_cleared, m.events);
    assert_eq!(acts[1..], [Action::SetCanClear(true)]);
}

#[test]
fn resync_progress_and_end() {
    let mut v = view();
    v.array_state = ArrayState::Active;
    v.sync_action = SyncAction::Resync;
    v.resync_start = Checkpoint::At(Sectors(0));
    v.sync_completed = SyncCompleted::Progress {
        done: Sectors(0),
        total: Sectors(TOTAL),
    };
    let mut m = meta();
    m.clean = false;
    m.resync = Checkpoint::At(Sectors(0));
    let mut mon = settled(m, &v);
    v.sync_completed = SyncCompleted::Progress {
        done: Sectors(3100),
        total: Sectors(TOTAL),
    };
    let acts = mon.observe(&v);
    assert_eq!(written(&acts[0]).resync, Checkpoint::At(Sectors(3100)));
    assert_eq!(acts.len(), 1);
    // End: idle, resync_start none, and write-pending (not notified).
    v.sync_action = SyncAction::Idle;
    v.sync_completed = SyncCompleted::None;
    v.resync_start = Checkpoint::None;
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    assert_eq!(written(&acts[0]).resync, Checkpoint::None);
    assert_eq!(acts[1..], [Action::SetArrayState(ArrayState::Active)]);
}

#[test]
fn stop_of_a_read_only_array_stops_it_at_once() {
    let mut v = view();
    v.array_state = ArrayState::Readonly;
    let mut mon = settled(meta(), &v);
    assert_eq!(
        mon.step(Event::Admin(AdminRequest::Stop, v.clone())),
        Ok(vec![Action::SetArrayState(ArrayState::Inactive)])
    );
}

#[test]
fn stop_waits_for_clean_then_records_and_stops() {
    let mut v = view();
    v.array_state = ArrayState::Active;
    let mut m = meta();
    m.clean = false;
    let mut mon = settled(m, &v);
    assert_eq!(
        mon.step(Event::Admin(AdminRequest::Stop, v.clone())),
        Ok(vec![])
    );
    v.array_state = ArrayState::ActiveIdle;
    assert_eq!(
        mon.observe(&v),
        vec![Action::SetArrayState(ArrayState::Clean)]
    );
    v.array_state = ArrayState::Clean;
    let acts = mon.observe(&v);
    assert!(written(&acts[0]).clean);
    assert_eq!(acts[1..], [Action::SetArrayState(ArrayState::Inactive)]);
    // A write that slips in is still answered.
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    assert_eq!(acts[1..], [Action::SetArrayState(ArrayState::Active)]);
    v.array_state = ArrayState::Inactive;
    assert!(mon.finished(&v));
    // md's stop drained that write: the record is made clean once more.
    let acts = mon.observe(&v);
    assert_eq!(acts.len(), 1);
    assert!(written(&acts[0]).clean);
    assert_eq!(mon.observe(&v), vec![]);
}

/// A stop md refused (the array held open) leaves no stop behind: the
/// clean array is not stopped on a later look, and admin requests are
/// taken again.
#[test]
fn a_refused_stop_is_cancelled() {
    let v = view();
    let mut mon = settled(meta(), &v);
    let acts = mon
        .step(Event::Admin(AdminRequest::Stop, v.clone()))
        .expect("stop");
    assert_eq!(acts, vec![Action::SetArrayState(ArrayState::Inactive)]);
    mon.step(Event::ActionFailed(0)).expect("fed back");
    mon.cancel_stop();
    assert!(!mon.stopping());
    assert!(!mon
        .observe(&v)
        .contains(&Action::SetArrayState(ArrayState::Inactive)));
    assert_ne!(
        mon.step(Event::Admin(AdminRequest::Stop, v.clone())),
        Err(Refusal::Stopping)
    );
}

#[test]
fn failed_action_forces_a_rewrite_before_active() {
    let mut mon = settled(parity_meta(), &view());
    let mut v = view();
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    let e = written(&acts[0]).events;
    mon.step(Event::ActionFailed(0)).expect("ok");
    let acts = mon.observe(&v);
    assert_eq!(
        written(&acts[0]).events,
        e + 2,
        "strictly newer than any partial copy, and aimed at the same copy"
    );
    assert_eq!(
        crate::format::copy_for_events(e + 2),
        crate::format::copy_for_events(e),
        "never at the copy holding a member's last good state"
    );
    assert_eq!(acts[1], Action::SetArrayState(ArrayState::Active));
    // Once a write went through, the next one alternates again.
    let acts = mon.observe(&view());
    assert_eq!(written(&acts[0]).events, e + 3);
}

#[test]
fn start_aims_at_a_copy_read_invalid() {
    // Read at events 10; copy 1 (odd events) torn on some member: the first
    // write goes to copy 1 (events 11). Copy 0 torn: events 12.
    let mut v = view();
    v.array_state = ArrayState::WritePending;
    for (bad, want) in [(None, 11), (Some(1), 11), (Some(0), 12)] {
        let (_, acts) = Monitor::start(meta(), bad, &v);
        assert_eq!(written(&acts[0]).events, want, "copy {bad:?} damaged");
    }
}

#[test]
fn start_hold_ends_only_once_settled() {
    // Activated with the hold; can_clear reads true (md's default) and the
    // record is degraded: false, record, then (next batch) the release.
    let mut v = degraded_view();
    v.can_clear = Some(true);
    v.time_base = Some(HOLD_TIME_BASE);
    v.array_state = ArrayState::Readonly;
    let (mut mon, acts) = Monitor::start(degraded_meta(12), None, &v);
    assert_eq!(acts[0], Action::SetCanClear(false));
    assert!(matches!(acts[1], Action::WriteMetadata { .. }));
    assert!(!acts.iter().any(|a| matches!(a, Action::ReleaseHold(_))));
    v.can_clear = Some(false);
    assert_eq!(mon.observe(&v), vec![Action::ReleaseHold(1)]);
    v.time_base = Some(1);
    assert_eq!(mon.observe(&v), vec![]);
    // A failed batch keeps the hold until the rewrite went through.
    let mut v = view();
    v.time_base = Some(HOLD_TIME_BASE);
    let (mut mon, acts) = Monitor::start(meta(), None, &v);
    assert!(matches!(acts[..], [Action::WriteMetadata { .. }]));
    mon.step(Event::ActionFailed(0)).expect("ok");
    let acts = mon.observe(&v);
    assert!(matches!(acts[..], [Action::WriteMetadata { .. }]));
    assert_eq!(mon.observe(&v), vec![Action::ReleaseHold(1)]);
}

#[test]
fn start_plan_holds_every_start_and_rearms_degraded() {
    let m = meta();
    let bits = [0b1010_0001u8];
    let ext = BitmapMode::External;
    let whole = start_plan(&m, ext, false, &bits);
    assert_eq!(whole.time_base, HOLD_TIME_BASE);
    assert!(whole.rearm.is_empty());
    assert!(!whole.attach_after_start);
    let degraded = start_plan(&m, ext, true, &bits);
    assert_eq!(degraded.time_base, HOLD_TIME_BASE);
    assert_eq!(degraded.rearm, vec![(0, 0), (5, 5), (7, 7)]);
    // External mode: a dirty whole start leaves the bits to md's resync.
    let mut dirty = meta();
    dirty.clean = false;
    assert!(start_plan(&dirty, ext, false, &bits).rearm.is_empty());
    // No bitmap: nothing to re-arm, nothing to attach.
    let none = start_plan(&m, BitmapMode::None, true, &bits);
    assert!(none.rearm.is_empty() && !none.attach_after_start);
}

#[test]
fn start_plan_kernel_mode_attaches_after_start_and_rearms_dirty_or_degraded() {
    let k = BitmapMode::Kernel;
    let bits = [0b1010_0001u8];
    let want = vec![(0, 0), (5, 5), (7, 7)];
    // Clean and whole: md may clear the (stale) bits; nothing owed.
    let clean = start_plan(&meta(), k, false, &bits);
    assert!(clean.attach_after_start);
    assert_eq!(clean.time_base, HOLD_TIME_BASE);
    assert!(clean.rearm.is_empty());
    // Degraded: re-armed (the missing member needs them).
    assert_eq!(start_plan(&meta(), k, true, &bits).rearm, want);
    // Dirty, whole: re-armed (md clears bits by itself).
    let mut dirty = meta();
    dirty.clean = false;
    assert_eq!(start_plan(&dirty, k, false, &bits).rearm, want);
    // An interrupted resync counts as dirty.
    let mut resync = meta();
    resync.resync = Checkpoint::At(Sectors(100));
    assert_eq!(start_plan(&resync, k, false, &bits).rearm, want);
}

fn kernel_meta(m: ArrayMeta) -> ArrayMeta {
    let mut m = m;
    m.bitmap.mode = BitmapMode::Kernel;
    m
}

#[test]
fn kernel_mode_never_writes_can_clear() {
    // Degraded with can_clear reading true: the external mode writes false
    // first; the kernel-managed mode leaves it (inert).
    let mut v = degraded_view();
    v.can_clear = Some(true);
    let (mut mon, acts) = Monitor::start(kernel_meta(degraded_meta(12)), None, &v);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::SetCanClear(_))),
        "{acts:?}"
    );
    assert_eq!(mon.observe(&v), vec![]);
    // Whole again with can_clear false: never set true either.
    let mut w = view();
    w.can_clear = Some(false);
    let (mut mon, acts) = Monitor::start(kernel_meta(meta()), None, &w);
    assert!(!acts.iter().any(|a| matches!(a, Action::SetCanClear(_))));
    assert_eq!(mon.observe(&w), vec![]);
    // A re-add: no can_clear write, a bitmap rebuild of the slot's own
    // device.
    let mut mon = settled(kernel_meta(degraded_meta(12)), &v);
    let own = Some(OwnRecord {
        events: 10,
        state: MemberState::InSync,
    });
    let acts = mon
        .admin(&AdminRequest::Add(Box::new(facts(uuid(1), own))), &v)
        .expect("admitted");
    assert_eq!(acts[0], Action::SetSyncAction(SyncAction::Frozen));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::AddDevice {
            bitmap_based: true,
            ..
        }
    )));
}

#[test]
fn never_insync_without_a_bitmap_attached() {
    // The kernel shows no bitmap (not attached yet, or lost): a full
    // rebuild, in either mode.
    for m in [degraded_meta(12), kernel_meta(degraded_meta(12))] {
        let mut v = degraded_view();
        v.time_base = None;
        v.can_clear = None;
        let mut mon = settled(m, &v);
        let own = Some(OwnRecord {
            events: 10,
            state: MemberState::InSync,
        });
        let acts = mon
            .admin(&AdminRequest::Add(Box::new(facts(uuid(1), own))), &v)
            .expect("admitted");
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::AddDevice {
                    bitmap_based: false,
                    ..
                }
            )),
            "{acts:?}"
        );
    }
}

#[test]
fn admission_decides_slot_kind_and_refusals() {
    let meta = degraded_meta(12);
    // The slot's own device returns to its slot.
    let own = Some(OwnRecord {
        events: 10,
        state: MemberState::InSync,
    });
    let a = admit(&meta, &[0], &facts(uuid(1), own)).expect("admitted");
    assert_eq!((a.index, a.fresh, a.meta.uuid), (1, false, uuid(1)));
    // A blank device takes the failed slot as a new member.
    let a = admit(&meta, &[0], &facts(uuid(1), None)).expect("admitted");
    assert_eq!((a.index, a.fresh, a.meta.uuid), (1, true, uuid(9)));
    assert_eq!(a.meta.data_size, Sectors(TOTAL));
    // Refusals.
    let mut f = facts(uuid(1), None);
    f.foreign = vec!["isw_raid_member".into()];
    assert_eq!(
        admit(&meta, &[0], &f),
        Err(Refusal::ForeignSignature("isw_raid_member".into()))
    );
    let mut f = facts(uuid(1), None);
    f.size = Sectors(2048 + TOTAL - 1);
    assert!(matches!(
        admit(&meta, &[0], &f),
        Err(Refusal::TooSmall { .. })
    ));
    let mut f = facts(uuid(1), own);
    f.size = Sectors(2048 + TOTAL - 8);
    assert!(
        matches!(admit(&meta, &[0], &f), Err(Refusal::TooSmall { .. })),
        "a returning member that shrank"
    );
    let mut f = facts(uuid(1), own);
    if let Some(sb) = f.own.as_mut() {
        sb.array.uuid = Uuid::from_u128(99);
    }
    assert!(matches!(
        admit(&meta, &[0], &f),
        Err(Refusal::OtherArray { .. })
    ));
    assert_eq!(
        admit(&meta, &[0, 1], &facts(uuid(1), None)),
        Err(Refusal::NoFreeSlot)
    );
    assert_eq!(
        admit(&super::tests::meta(), &[0], &facts(uuid(1), None)),
        Err(Refusal::NoFreeSlot),
        "every slot recorded in sync"
    );
}

#[test]
fn a_new_member_gets_its_record_before_it_joins() {
    let mut mon = settled(degraded_meta(12), &degraded_view());
    let acts = mon
        .admin(
            &AdminRequest::Add(Box::new(facts(uuid(1), None))),
            &degraded_view(),
        )
        .expect("accepted");
    let pos = |f: &dyn Fn(&Action) -> bool| acts.iter().position(f).expect("present");
    let prep = pos(&|a| matches!(a, Action::PrepareDevice { index: 1 }));
    let write =
        pos(&|a| matches!(a, Action::WriteMetadata { targets, .. } if targets.contains(&1)));
    let add = pos(&|a| matches!(a, Action::AddDevice { index: 1, .. }));
    assert!(prep < write && write < add, "{acts:?}");
}

#[test]
fn interrupted_readd_is_finished_or_undone() {
    // Frozen, record Rebuilding, device in its slot: finish with recover.
    let mut v = recovering_view(0);
    v.sync_action = SyncAction::Frozen;
    v.sync_completed = SyncCompleted::None;
    let (_, acts) = Monitor::start(rebuilding_meta(0, RebuildKind::Bitmap), None, &v);
    assert_eq!(
        acts.last(),
        Some(&Action::SetSyncAction(SyncAction::Recover))
    );
    // Frozen, device added without a slot: remove it, record missing, idle.
    v.members[1] = km(1, "in_sync", None);
    let (_, acts) = Monitor::start(rebuilding_meta(0, RebuildKind::Bitmap), None, &v);
    assert_eq!(written(&acts[0]).members[1].state, MemberState::Missing);
    assert_eq!(
        acts[1..],
        [
            Action::Member(1, MemberCommand::Remove),
            Action::SetSyncAction(SyncAction::Idle)
        ]
    );
}

#[test]
fn admin_fail_and_remove() {
    let mut mon = settled(meta(), &view());
    assert_eq!(
        mon.admin(&AdminRequest::Fail(1), &view()),
        Ok(vec![Action::Member(1, MemberCommand::Faulty)])
    );
    assert_eq!(
        mon.admin(&AdminRequest::Remove(1), &view()),
        Err(Refusal::Active(1))
    );
}

#[test]
fn malformed_record_does_not_panic() {
    let mut m = meta();
    m.members.truncate(1); // fewer entries than raid_disks
    let mut v = view();
    v.members.push(km(7, "faulty", None)); // unknown index
    let (mut mon, _) = Monitor::start(m, None, &v);
    let _ = mon.observe(&v);
    let _ = mon.admin(&AdminRequest::Remove(7), &v);
    let _ = mon.admin(&AdminRequest::Add(Box::new(facts(uuid(1), None))), &v);
}

#[test]
fn failure_after_the_write_costs_no_rewrite() {
    let mut mon = settled(parity_meta(), &view());
    let mut v = view();
    v.array_state = ArrayState::WritePending;
    let acts = mon.observe(&v);
    assert!(matches!(acts[0], Action::WriteMetadata { .. }));
    // `active` refused: the write is durable, so the retry only re-sends
    // `active` (a kernel that keeps refusing must not cause a write storm).
    mon.step(Event::ActionFailed(1)).expect("ok");
    assert_eq!(
        mon.observe(&v),
        vec![Action::SetArrayState(ArrayState::Active)]
    );
}

#[test]
fn failure_before_the_write_forces_it_again() {
    let mut mon = settled(meta(), &view());
    let mut v = view();
    v.degraded = 1;
    v.array_state = ArrayState::WritePending;
    v.members[1] = km(1, "faulty,blocked", None);
    let acts = mon.observe(&v);
    assert_eq!(acts[0], Action::SetCanClear(false));
    // `can_clear=false` failed: nothing after it ran, including the record
    // of the failure, which the machine already holds in memory.
    mon.step(Event::ActionFailed(0)).expect("ok");
    let again = mon.observe(&v);
    assert_eq!(again[0], Action::SetCanClear(false));
    assert_eq!(written(&again[1]).members[1].state, MemberState::Failed);
    assert_eq!(again[2], Action::Member(1, MemberCommand::Unblock));
}

/// A healthy raid1 of 2 with a spare (entry 2, UUID `uuid(2)`) that md
/// holds without a slot.
fn spare_meta() -> ArrayMeta {
    let mut m = meta();
    m.members.push(MemberEntry {
        uuid: uuid(2),
        state: MemberState::Spare,
        events: 1,
    });
    m
}

fn spare_view() -> KernelView {
    let mut v = view();
    v.members.push(km(2, "spare", None));
    v
}

#[test]
fn a_healthy_array_with_a_spare_costs_nothing_and_writes_to_the_spare() {
    let (mut mon, acts) = Monitor::start(spare_meta(), None, &spare_view());
    assert!(
        matches!(&acts[..], [Action::WriteMetadata { targets, .. }] if *targets == vec![0, 1, 2])
    );
    assert_eq!(mon.observe(&spare_view()), vec![]);
}

#[test]
fn a_failure_with_a_spare_freezes_before_removing_then_activates_record_first() {
    let mut mon = settled(spare_meta(), &spare_view());
    // Member 1 fails: md blocks it.
    let mut v = spare_view();
    v.degraded = 1;
    v.array_state = ArrayState::WritePending;
    v.members[1] = km(1, "faulty,blocked", Some(1));
    let acts = mon.observe(&v);
    let frozen = acts
        .iter()
        .position(|a| *a == Action::SetSyncAction(SyncAction::Frozen))
        .expect("frozen");
    let removed = acts
        .iter()
        .position(|a| *a == Action::Member(1, MemberCommand::Remove))
        .expect("removed");
    let unblocked = acts
        .iter()
        .position(|a| *a == Action::Member(1, MemberCommand::Unblock))
        .expect("unblocked");
    assert!(frozen < unblocked && unblocked < removed, "{acts:?}");
    assert_eq!(acts[0], Action::SetCanClear(false));
    assert_eq!(the_write(&acts).members[1].state, MemberState::Failed);
    // Removed, frozen: the spare is recorded in slot 1 (full rebuild), the
    // old member keeps the spare's entry as failed; then md gets the slot.
    let mut v = spare_view();
    v.degraded = 1;
    v.can_clear = Some(false);
    v.sync_action = SyncAction::Frozen;
    v.members.remove(1);
    let acts = mon.observe(&v);
    let m = the_write(&acts).clone();
    assert_eq!(m.members[1].uuid, uuid(2));
    assert_eq!(
        m.members[1].state,
        MemberState::Rebuilding {
            kind: RebuildKind::Full,
            checkpoint: Sectors(0)
        }
    );
    assert_eq!(m.members[2].uuid, uuid(1));
    assert_eq!(m.members[2].state, MemberState::Failed);
    assert_eq!(
        acts,
        vec![
            Action::WriteMetadata {
                meta: m.clone(),
                targets: vec![0, 2]
            },
            Action::ActivateSpare {
                index: 1,
                uuid: uuid(2)
            },
            Action::SetSyncAction(SyncAction::Recover),
        ]
    );
    // Rebuilding (the daemon now maps the spare to index 1): can_clear
    // stays false, no write until a checkpoint step.
    let mut v = view();
    v.degraded = 1;
    v.can_clear = Some(false);
    v.sync_action = SyncAction::Recover;
    v.members[1] = km(1, "", Some(1));
    assert_eq!(mon.observe(&v), vec![]);
    // Done: record all in sync, then can_clear=true.
    let mut v = view();
    v.can_clear = Some(false);
    let acts = mon.observe(&v);
    let m = written(&acts[0]);
    assert!(m.all_in_sync());
    assert_eq!(m.bitmap.events_cleared, m.events);
    assert_eq!(acts[1], Action::SetCanClear(true));
    assert_eq!(acts.len(), 2);
}

#[test]
fn a_spare_md_put_in_by_itself_is_recorded_rebuilding() {
    let mut mon = settled(
        {
            let mut m = spare_meta();
            m.members[1].state = MemberState::Failed;
            m
        },
        &{
            let mut v = spare_view();
            v.degraded = 1;
            v.can_clear = Some(false);
            v.sync_action = SyncAction::Recover;
            v.members.remove(1);
            v.members[1] = km(2, "spare", None);
            v
        },
    );
    let mut v = spare_view();
    v.degraded = 1;
    v.can_clear = Some(false);
    v.sync_action = SyncAction::Recover;
    v.members.remove(1);
    v.members[1] = km(2, "", Some(1));
    let acts = mon.observe(&v);
    let m = the_write(&acts);
    assert_eq!(m.members[1].uuid, uuid(2));
    assert!(matches!(
        m.members[1].state,
        MemberState::Rebuilding {
            kind: RebuildKind::Full,
            ..
        }
    ));
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Action::ActivateSpare { .. } | Action::SetSyncAction(_))));
}

#[test]
fn add_spare_records_then_adds_without_a_slot() {
    let mut mon = settled(meta(), &view());
    let mut f = facts(uuid(9), None);
    f.new_uuid = uuid(5);
    let acts = mon
        .admin(&AdminRequest::AddSpare(Box::new(f)), &view())
        .expect("accepted");
    let m = the_write(&acts).clone();
    assert_eq!(m.bitmap.events_cleared, m.events, "still recorded whole");
    assert_eq!(mon.observe(&spare_view()), vec![], "can_clear stays true");
    assert_eq!(m.members.len(), 3);
    assert_eq!(m.members[2].uuid, uuid(5));
    assert_eq!(m.members[2].state, MemberState::Spare);
    assert_eq!(acts[0], Action::PrepareDevice { index: 2 });
    assert!(matches!(&acts[1], Action::WriteMetadata { targets, .. } if *targets == vec![0, 1, 2]));
    assert!(matches!(acts[2], Action::AddSpare { index: 2, .. }));
    assert_eq!(acts.len(), 3);
    // Onto a degraded array: recovery frozen first.
    let mut mon = settled(degraded_meta(12), &degraded_view());
    let acts = mon
        .admin(
            &AdminRequest::AddSpare(Box::new(facts(uuid(9), None))),
            &degraded_view(),
        )
        .expect("accepted");
    assert_eq!(acts[0], Action::SetSyncAction(SyncAction::Frozen));
    // An active member is refused.
    let mut mon = settled(meta(), &view());
    let own = Some(OwnRecord {
        events: 10,
        state: MemberState::InSync,
    });
    assert_eq!(
        mon.admin(
            &AdminRequest::AddSpare(Box::new(facts(uuid(1), own))),
            &view()
        ),
        Err(Refusal::ActiveMember(1))
    );
}

/// `add --spare --write-mostly` over the socket: a spare cannot be
/// write-mostly (the flag would not be set when md activates it).
#[test]
fn add_spare_write_mostly_is_refused() {
    let mut mon = settled(meta(), &view());
    let mut f = facts(uuid(9), None);
    f.write_mostly = true;
    assert_eq!(
        mon.admin(&AdminRequest::AddSpare(Box::new(f)), &view()),
        Err(Refusal::SpareWriteMostly)
    );
}

#[test]
fn removing_a_spare_takes_it_out_of_md_then_the_record() {
    let mut mon = settled(spare_meta(), &spare_view());
    let acts = mon
        .admin(&AdminRequest::Remove(2), &spare_view())
        .expect("accepted");
    assert_eq!(acts[0], Action::Member(2, MemberCommand::Remove));
    let m = written(&acts[1]);
    assert_eq!(m.members[2].state, MemberState::Empty);
    assert!(m.members[2].uuid.is_nil());
}

#[test]
fn spare_groups_move_one_spare_per_donor_within_the_group() {
    let wants = SpareNeed {
        wants: true,
        spare: None,
    };
    let gives = SpareNeed {
        wants: false,
        spare: Some(2),
    };
    let idle = SpareNeed::default();
    assert_eq!(
        spare_moves(&[(Some("g"), wants), (Some("h"), gives), (Some("g"), gives)]),
        vec![(2, 0)]
    );
    assert_eq!(spare_moves(&[(None, wants), (None, gives)]), vec![]);
    assert_eq!(
        spare_moves(&[(Some("g"), wants), (Some("g"), wants), (Some("g"), gives)]),
        vec![(2, 0)]
    );
    assert_eq!(
        spare_moves(&[(Some("g"), wants), (Some("g"), idle)]),
        vec![]
    );
    // What the machine reports: a degraded array without a spare wants one;
    // a healthy one with a spare can give it.
    let mon = settled(degraded_meta(12), &degraded_view());
    assert_eq!(mon.spare_need(&degraded_view()), wants);
    let mon = settled(spare_meta(), &spare_view());
    assert_eq!(mon.spare_need(&spare_view()), gives);
}

#[test]
fn replace_asks_md_then_records_the_spare_in_the_slot_without_degrading() {
    let mut mon = settled(spare_meta(), &spare_view());
    assert_eq!(
        mon.admin(&AdminRequest::Replace(1), &spare_view()),
        Ok(vec![Action::Member(1, MemberCommand::WantReplacement)])
    );
    assert_eq!(
        mon.admin(&AdminRequest::Replace(1), &view()),
        Err(Refusal::NoSpare)
    );
    // md copies onto the spare (a replacement in slot 1): nothing changes.
    let mut v = spare_view();
    v.sync_action = SyncAction::Recover;
    v.members[1] = km(1, "in_sync,want_replacement", Some(1));
    v.members[2] = km(2, "replacement", Some(1));
    assert_eq!(mon.observe(&v), vec![]);
    // Done: the spare in sync in slot 1, the old member failed by md.
    let mut v = spare_view();
    v.members[1] = km(1, "faulty", Some(1));
    v.members[2] = km(2, "in_sync,replacement", Some(1));
    let acts = mon.observe(&v);
    let m = the_write(&acts).clone();
    assert_eq!(m.members[1].uuid, uuid(2));
    assert_eq!(m.members[1].state, MemberState::InSync);
    assert_eq!(m.members[2].uuid, uuid(1));
    assert_eq!(m.members[2].state, MemberState::Failed);
    assert_eq!(m.bitmap.events_cleared, m.events);
    assert_eq!(
        acts,
        vec![
            Action::WriteMetadata {
                meta: m.clone(),
                targets: vec![0, 2]
            },
            Action::Member(1, MemberCommand::Remove),
        ],
        "can_clear stays true: every slot stays in sync"
    );
}

#[test]
fn grow_size_bounds_and_the_bitmap_region() {
    let mut m = meta();
    m.bitmap.offset = Sectors(16);
    m.bitmap.size = Bytes(4096);
    // 4096 bytes of bits (32768 chunks of 64 KiB = 2 GiB); md's region
    // from sector 8 to 16 holds 4096 - 256 bytes: 30720 chunks.
    assert_eq!(
        grow_size(&m, Some(Sectors(20000)), Sectors(30000)),
        Ok(Sectors(19968))
    );
    assert_eq!(grow_size(&m, None, Sectors(30000)), Ok(Sectors(29952)));
    assert!(matches!(
        grow_size(&m, Some(Sectors(40000)), Sectors(30000)),
        Err(Refusal::BadSize { .. })
    ));
    let big = Sectors(30720 * 128 + 128);
    let e = grow_size(&m, Some(big), Sectors(1 << 40)).expect_err("no room");
    assert!(
        matches!(
            e,
            Refusal::BitmapFull {
                chunks: 30721,
                room: 30720,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--bitmap-chunk"), "{e}");
    m.geometry.level = crate::md::Level::Raid5;
    assert_eq!(
        grow_size(&m, None, Sectors(30000)),
        Err(Refusal::GrowLevel("raid5"))
    );
}

#[test]
fn grow_disks_adds_missing_slots_then_a_spare_is_activated() {
    let mut mon = settled(spare_meta(), &spare_view());
    let acts = mon
        .admin(&AdminRequest::GrowDisks(3), &spare_view())
        .expect("accepted");
    let m = the_write(&acts).clone();
    assert_eq!(m.geometry.raid_disks, 3);
    assert_eq!(m.members[2].state, MemberState::Missing);
    assert_eq!(m.members[3].uuid, uuid(2));
    assert_eq!(m.members[3].state, MemberState::Spare);
    assert_eq!(acts[0], Action::SetCanClear(false));
    assert_eq!(acts[1], Action::SetSyncAction(SyncAction::Frozen));
    assert_eq!(acts[acts.len() - 1], Action::SetRaidDisks(3));
    // Fewer mirrors than devices held: refused.
    let mut mon = settled(meta(), &view());
    assert!(matches!(
        mon.admin(&AdminRequest::GrowDisks(1), &view()),
        Err(Refusal::BadDisks { .. })
    ));
    // No spare for a new mirror: refused.
    assert!(matches!(
        mon.admin(&AdminRequest::GrowDisks(3), &view()),
        Err(Refusal::BadDisks { .. })
    ));
    // A failed leg dropped: the record keeps the held slot.
    let mut mon = settled(degraded_meta(12), &degraded_view());
    let acts = mon
        .admin(&AdminRequest::GrowDisks(1), &degraded_view())
        .expect("accepted");
    let m = the_write(&acts);
    assert_eq!(m.geometry.raid_disks, 1);
    assert_eq!(m.members.len(), 1);
    assert_eq!(m.members[0].uuid, uuid(0));
    let mut m5 = meta();
    m5.geometry.level = crate::md::Level::Raid5;
    let mut mon = settled(m5, &view());
    assert_eq!(
        mon.admin(&AdminRequest::GrowDisks(3), &view()),
        Err(Refusal::Reshape("raid5"))
    );
}

#[test]
fn write_pending_is_answered_at_once_only_after_a_settled_clean_look() {
    let mut mon = settled(meta(), &view());
    assert!(mon.may_answer_at_once(), "clean, whole, settled raid1");
    // The look after the answer: active, nothing to record.
    let mut v = view();
    v.array_state = ArrayState::Active;
    assert_eq!(mon.observe(&v), vec![]);
    assert!(!mon.may_answer_at_once(), "active");
    v.array_state = ArrayState::ActiveIdle;
    let _ = mon.observe(&v);
    assert!(!mon.may_answer_at_once(), "active-idle");
    v.array_state = ArrayState::Clean;
    assert_eq!(mon.observe(&v), vec![]);
    assert!(mon.may_answer_at_once(), "clean again");
    let parity = settled(parity_meta(), &view());
    assert!(!parity.may_answer_at_once(), "parity: record first");
    let mut held = view();
    held.time_base = Some(crate::monitor::HOLD_TIME_BASE);
    let mut mon = settled(meta(), &view());
    let _ = mon.observe(&held);
    assert!(!mon.may_answer_at_once(), "start hold");
    let mut mon = settled(meta(), &view());
    mon.action_failed(0);
    assert!(!mon.may_answer_at_once(), "after a failure");
}
