//! The guest scenarios, one module per area.

use crate::harness::Scenario;

mod sysfs_layer;

pub static ALL: &[&Scenario] = &[
    &sysfs_layer::RAID1_EXTERNAL_BITMAP,
    &sysfs_layer::WRONG_ORDER,
];
