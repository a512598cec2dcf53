//! The guest scenarios, one module per area.

use crate::harness::Scenario;

mod lifecycle;
mod rebuild;
mod service;
mod start_limits;
mod sysfs_layer;

pub static ALL: &[&Scenario] = &[
    &sysfs_layer::RAID1_EXTERNAL_BITMAP,
    &sysfs_layer::WRONG_ORDER,
    &lifecycle::CREATE_EXAMINE_ACTIVATE,
    &lifecycle::FOREIGN_SIGNATURES,
    &lifecycle::FILESYSTEM_LIFECYCLE,
    &lifecycle::CRASH_RESYNC,
    &lifecycle::DEGRADED_ASSEMBLY,
    &lifecycle::BAD_INPUT,
    &rebuild::FAIL_READD,
    &rebuild::DEGRADED_CRASH,
    &rebuild::REPLACED_RETURNS,
    &rebuild::KILL_BEFORE_TRUE,
    &rebuild::TAKEOVER_FAILED,
    &rebuild::CRASH_MID_REBUILD,
    &rebuild::OTHER_LEVELS,
    &start_limits::LONG_DIRTY_LIST,
    &start_limits::SHRUNK_MEMBER,
    &start_limits::DIRTY_DEGRADED_RAID5,
    &start_limits::DIRTY_DEGRADED_RAID6,
    &service::RESTART_RELEASES_HELD_WRITE,
    &service::TAKEOVER_UNDER_WRITER,
];
