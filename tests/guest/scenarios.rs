//! The guest scenarios, one module per area.

use crate::harness::{Scenario, SystemScenario};

mod bad_input;
mod events;
mod format;
mod found_by_torture;
mod held;
mod incremental;
mod kmode;
mod levels;
mod lifecycle;
mod many;
mod rebuild;
mod service;
mod spares;
mod start_limits;
mod sysfs_layer;
mod system;
mod system_dracut;

pub static ALL: &[&Scenario] = &[
    &sysfs_layer::RAID1_EXTERNAL_BITMAP,
    &sysfs_layer::WRONG_ORDER,
    &lifecycle::CREATE_EXAMINE_ACTIVATE,
    &lifecycle::FOREIGN_SIGNATURES,
    &lifecycle::FILESYSTEM_LIFECYCLE,
    &lifecycle::CRASH_RESYNC,
    &lifecycle::TRAILING_DIRTY_RECORD,
    &lifecycle::DEGRADED_ASSEMBLY,
    &lifecycle::BAD_INPUT,
    &bad_input::RUNNING_ARRAYS,
    &rebuild::FAIL_READD,
    &rebuild::FAIL_READD_THREADS,
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
    &events::EVENTS_WAIT_METRICS,
    &incremental::ONE_BY_ONE,
    &incremental::RUN_READD_REMOVE,
    &incremental::SCAN_SEVERAL,
    &incremental::RACE,
    &incremental::UDEV_RULES,
    &service::RESTART_RELEASES_HELD_WRITE,
    &service::TAKEOVER_UNDER_WRITER,
    &service::STATUS_UNDER_WRITES,
    &held::BLIND_DAEMON,
    &held::STOPPED_BY_OTHERS,
    &format::CONVERT_CRASH,
    &kmode::ANY_KERNEL_READD,
    &kmode::MODE_MOVE,
    &found_by_torture::STALE_COPY,
    &levels::LEVELS_READD,
    &levels::LEVELS_CRASH,
    &spares::SPARE_TAKES_FAILED_SLOT,
    &spares::SPARE_GROUP,
    &spares::REPLACE,
    &spares::GROW,
    &many::SIXTY_FOUR,
    &many::SLOW_MEMBER,
];

/// Scenarios in the systemd guest (root on mdext, `scripts/sysguest`).
pub static SYSTEM: &[&SystemScenario] = &[&system::ROOT_BOOT, &system::HOTPLUG];

/// Scenarios in the systemd guest whose initrd is made by dracut
/// (`scripts/sysguest build ... dracut`).
pub static SYSTEM_DRACUT: &[&SystemScenario] = &[&system_dracut::ROOT_BOOT_DRACUT];

pub use system::writer_service;
