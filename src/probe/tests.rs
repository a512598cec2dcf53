use super::*;
use crate::device::Access;
use crate::probe::test_signatures as signatures;
use signatures::{assert_blkid_nothing, assert_blkid_type, image, Sig};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn probe_path(p: &Path) -> Vec<Found> {
    probe(&Device::open(p, Access::Read).expect("open")).expect("probe")
}

#[test]
fn crc64_we_check_value() {
    // The catalogue's check value for CRC-64/WE over "123456789".
    assert_eq!(signatures::crc64_we(b"123456789"), 0x62EC_59E3_F1A4_F00A);
}

#[test]
fn blank_and_tiny_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    for size in [0u64, 1, 511, 4096, 65536, 64 * MIB] {
        let p = image(dir.path(), &format!("b{size}"), size);
        assert_eq!(probe_path(&p), vec![], "size {size}");
    }
}

#[test]
fn every_fixture_is_found_and_named_as_blkid_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for sig in signatures::ALL {
        let p = image(dir.path(), &format!("{sig:?}"), 64 * MIB);
        sig.write(&p);
        assert_blkid_type(&p, sig.blkid_type());
        let found = probe_path(&p);
        assert_eq!(found.len(), 1, "{sig:?}: {found:?}");
        assert_eq!(found[0].name, sig.blkid_type(), "{sig:?}");
        assert!(found[0].offset.is_some(), "{sig:?}: {found:?}");
        assert!(!found[0].what.is_empty(), "{sig:?}: {found:?}");
    }
}

#[test]
fn imsm_is_named_with_its_place_at_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 64 * MIB + 3 * 512;
    let p = image(dir.path(), "imsm", size);
    Sig::Imsm.write(&p);
    let found = probe_path(&p);
    assert_eq!(
        found[0].to_string(),
        format!(
            "isw_raid_member (Intel IMSM RAID member, at byte {})",
            size - 1024
        )
    );
}

fn changed_bytes(a: &[u8], b: &[u8]) -> usize {
    // Whole blocks compared with memcmp first: byte by byte over 64 MiB
    // is slow in a debug build.
    a.chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .map(|(x, y)| x.iter().zip(y.iter()).filter(|(p, q)| p != q).count())
        .sum()
}

#[test]
fn wipe_erases_every_fixture_and_only_its_magics() {
    let dir = tempfile::tempdir().expect("tempdir");
    for sig in signatures::ALL {
        let p = image(dir.path(), &format!("{sig:?}"), 64 * MIB);
        sig.write(&p);
        let before = std::fs::read(&p).expect("read");
        let d = Device::open(&p, Access::ExclusiveWrite).expect("open");
        let wiped = wipe(&d).expect("wipe");
        assert!(
            !wiped.is_empty() && wiped.iter().all(|f| f.name == sig.blkid_type()),
            "{sig:?}: {wiped:?}"
        );
        assert_blkid_nothing(&p);
        assert_eq!(probe(&d).expect("probe"), vec![], "{sig:?}");
        // wipefs-like: magics only, not whole sectors.
        let after = std::fs::read(&p).expect("read");
        let magic_bytes: usize = wiped.len() * 32;
        assert!(
            changed_bytes(&before, &after) <= magic_bytes,
            "{sig:?}: {} bytes changed for {} wipes",
            changed_bytes(&before, &after),
            wiped.len()
        );
    }
}

#[test]
fn every_signature_is_reported_where_blkid_p_names_one_or_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two RAID members: blkid -p stops at the first (IMSM) and never
    // mentions the LVM2 label. LUKS2 and bcache: blkid -p calls the result
    // ambivalent and names neither. probe names them all; wipe erases them
    // all.
    for (sigs, blkid_says) in [
        ([Sig::Imsm, Sig::Lvm2], Some("isw_raid_member")),
        ([Sig::Luks2, Sig::Bcache], None),
    ] {
        let p = image(dir.path(), &format!("{sigs:?}"), 64 * MIB);
        for s in sigs {
            s.write(&p);
        }
        match blkid_says {
            Some(ty) => {
                assert_blkid_type(&p, ty);
                let (_, out) = signatures::blkid_p(&p);
                assert_eq!(out.matches("TYPE=").count(), 1, "{out}");
            }
            None => {
                let (rc, out) = signatures::blkid_p(&p);
                assert!(
                    rc != 0 && rc != 2 && out.contains("ambivalent"),
                    "{rc} {out}"
                );
            }
        }
        let names: Vec<String> = probe_path(&p).into_iter().map(|f| f.name).collect();
        let want: Vec<String> = sigs.iter().map(|s| s.blkid_type().to_string()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(sorted, want_sorted, "{sigs:?}");
        let d = Device::open(&p, Access::ExclusiveWrite).expect("open");
        wipe(&d).expect("wipe");
        assert_blkid_nothing(&p);
        assert_eq!(probe(&d).expect("probe"), vec![]);
    }
}

/// Signatures made by the real tools, where they work on a plain file.
#[test]
fn real_tool_signatures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tools: [(&str, &[&str], &str); 2] = [
        ("mkswap", &[], "swap"),
        ("mke2fs", &["-q", "-F", "-t", "ext4", "-L", "old"], "ext4"),
    ];
    for (tool, args, ty) in tools {
        let p = image(dir.path(), tool, 64 * MIB);
        let bin = ["/usr/sbin/", "/sbin/", "/usr/bin/"]
            .iter()
            .map(|d| PathBuf::from(format!("{d}{tool}")))
            .find(|b| b.exists())
            .unwrap_or_else(|| panic!("{tool} is needed by this test"));
        let o = Command::new(bin)
            .args(args)
            .arg(&p)
            .output()
            .expect("run tool");
        assert!(o.status.success(), "{tool}: {o:?}");
        assert_blkid_type(&p, ty);
        let found = probe_path(&p);
        assert!(found.iter().any(|f| f.name == ty), "{tool}: {found:?}");
        let d = Device::open(&p, Access::ExclusiveWrite).expect("open");
        wipe(&d).expect("wipe");
        assert_blkid_nothing(&p);
    }
}

#[test]
fn own_metadata_is_not_blkids() {
    assert_eq!(probe_own(&[]), None);
    assert_eq!(probe_own(&vec![0u8; META_AREA]), None);
}
