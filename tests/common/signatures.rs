//! Test fixtures: foreign signatures written into image files as the bytes
//! libblkid's probers check (util-linux libblkid/src/superblocks/*.c), and
//! `blkid -p` (the real one, util-linux) as the witness that each fixture
//! is what it claims to be.
//!
//! Included with `#[path]` by src/probe.rs (as `probe::test_signatures`,
//! for the unit tests) and as a module by tests/cli_create.rs and
//! tests/cli_habits.rs.

#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A sparse image file of `size` bytes named `name` in `dir`.
pub fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .expect("create")
        .set_len(size)
        .expect("set_len");
    p
}

/// A foreign signature the tests write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// Intel IMSM: "Intel Raid ISM Cfg Sig. " in the second-to-last sector.
    Imsm,
    /// SNIA DDF: the anchor header (0xDE11DE11, big-endian) in the last
    /// sector.
    Ddf,
    /// LVM2 PV: the "LABELONE" label in sector 1, with its CRC.
    Lvm2,
    /// ZFS: uberblocks (0x00bab10c) in all four vdev labels, two at the
    /// start and two at the end.
    Zfs,
    /// bcache backing device: the superblock at 4 KiB, with its CRC64.
    Bcache,
    /// LUKS2: the primary header at 0 and the secondary at 16 KiB.
    Luks2,
}

/// Every fixture the issue asks for.
pub const ALL: [Sig; 6] = [
    Sig::Imsm,
    Sig::Ddf,
    Sig::Lvm2,
    Sig::Zfs,
    Sig::Bcache,
    Sig::Luks2,
];

impl Sig {
    /// The TYPE `blkid -p` reports for it.
    pub fn blkid_type(self) -> &'static str {
        match self {
            Sig::Imsm => "isw_raid_member",
            Sig::Ddf => "ddf_raid_member",
            Sig::Lvm2 => "LVM2_member",
            Sig::Zfs => "zfs_member",
            Sig::Bcache => "bcache",
            Sig::Luks2 => "crypto_LUKS",
        }
    }

    /// The writes (offset, bytes) that put it on a device of `size` bytes.
    pub fn writes(self, size: u64) -> Vec<(u64, Vec<u8>)> {
        match self {
            Sig::Imsm => imsm(size),
            Sig::Ddf => ddf(size),
            Sig::Lvm2 => lvm2(),
            Sig::Zfs => zfs(size),
            Sig::Bcache => bcache(),
            Sig::Luks2 => luks2(),
        }
    }

    /// Write it into the image file `path` (its size unchanged).
    pub fn write(self, path: &Path) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open image");
        let size = f.metadata().expect("metadata").len();
        for (off, bytes) in self.writes(size) {
            assert!(off + bytes.len() as u64 <= size, "{self:?} does not fit");
            f.write_all_at(&bytes, off).expect("write fixture");
        }
        f.sync_all().expect("sync");
    }
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn imsm(size: u64) -> Vec<(u64, Vec<u8>)> {
    // struct isw_metadata / mdadm's imsm_super: sig[32], check_sum,
    // mpb_size, family_num, generation_num, ...
    let mut mpb = vec![0u8; 512];
    put(&mut mpb, 0, b"Intel Raid ISM Cfg Sig. 1.3.00");
    put(&mut mpb, 36, &512u32.to_le_bytes()); // mpb_size
    put(&mut mpb, 40, &0x1234_5678u32.to_le_bytes()); // family_num
    put(&mut mpb, 44, &1u32.to_le_bytes()); // generation_num

    // mdadm's checksum: the sum of every other 32-bit word.
    let sum = mpb
        .chunks(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .fold(0u32, u32::wrapping_add);
    put(&mut mpb, 32, &sum.to_le_bytes());
    vec![((size / 512 - 2) * 512, mpb)]
}

fn ddf_header(kind: u8, primary_lba: u64) -> Vec<u8> {
    let mut h = vec![0xffu8; 512];
    put(&mut h, 0, &0xDE11_DE11u32.to_be_bytes()); // signature
    put(&mut h, 4, &0u32.to_be_bytes()); // crc (not checked by blkid)
    put(&mut h, 8, b"Linux-MD mdext-test-0001"); // guid[24]
    put(&mut h, 32, b"01.02.00"); // ddf_rev
    put(&mut h, 40, &1u32.to_be_bytes()); // seq
    put(&mut h, 44, &0u32.to_be_bytes()); // timestamp
    put(&mut h, 48, &[0, 0, 0]); // openflag, foreignflag, enforcegroups
    put(&mut h, 96, &primary_lba.to_be_bytes());
    put(&mut h, 104, &u64::MAX.to_be_bytes()); // secondary_lba: none
    h[112] = kind; // 0 anchor, 1 primary
    h
}

fn ddf(size: u64) -> Vec<(u64, Vec<u8>)> {
    // The anchor in the last sector points at the primary header 32
    // sectors before it (as mdadm lays it out, much closer).
    let last = size / 512 - 1;
    let primary = last - 32;
    vec![
        (primary * 512, ddf_header(1, primary)),
        (last * 512, ddf_header(0, primary)),
    ]
}

/// LVM2's label CRC (lvm2 lib/misc/crc.c, as libblkid computes it).
fn lvm2_crc(data: &[u8]) -> u32 {
    const TAB: [u32; 16] = [
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158,
        0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4,
        0xa00ae278, 0xbdbdf21c,
    ];
    let mut crc: u32 = 0xf597a6cf;
    for &b in data {
        crc ^= u32::from(b);
        crc = (crc >> 4) ^ TAB[(crc & 0xf) as usize];
        crc = (crc >> 4) ^ TAB[(crc & 0xf) as usize];
    }
    crc
}

fn lvm2() -> Vec<(u64, Vec<u8>)> {
    // Sector 1: label_header (id, sector_xl, crc_xl, offset_xl, type),
    // then pv_header (pv_uuid, device_size_xl, ...).
    let mut s = vec![0u8; 512];
    put(&mut s, 0, b"LABELONE");
    put(&mut s, 8, &1u64.to_le_bytes()); // sector_xl
    put(&mut s, 20, &32u32.to_le_bytes()); // offset_xl
    put(&mut s, 24, b"LVM2 001");
    put(&mut s, 32, b"mdextTESTpv0uuid0123456789abcdef"); // pv_uuid[32]
    put(&mut s, 64, &(64u64 << 20).to_le_bytes()); // device_size_xl
    let crc = lvm2_crc(&s[20..]);
    put(&mut s, 16, &crc.to_le_bytes());
    vec![(512, s)]
}

fn zfs(size: u64) -> Vec<(u64, Vec<u8>)> {
    // Four 256 KiB labels: L0 at 0, L1 at 256 KiB, L2 and L3 in the last
    // 512 KiB (aligned down to 256 KiB); uberblocks from 128 KiB into each.
    const LABEL: u64 = 256 << 10;
    let align = size % LABEL;
    let labels = [0, LABEL, size - 2 * LABEL - align, size - LABEL - align];
    let mut w = Vec::new();
    for (l, base) in labels.iter().enumerate() {
        for i in 0..4u64 {
            let mut ub = vec![0u8; 1024];
            put(&mut ub, 0, &0x00ba_b10cu64.to_le_bytes()); // ub_magic
            put(&mut ub, 8, &5000u64.to_le_bytes()); // ub_version
            put(&mut ub, 16, &(i + 1).to_le_bytes()); // ub_txg
            put(&mut ub, 24, &(0x1000 + l as u64).to_le_bytes()); // guid_sum
            w.push((base + (128 << 10) + i * 1024, ub));
        }
    }
    w
}

/// CRC-64/WE (ECMA-182 polynomial, init and xorout all ones, not
/// reflected): bcache's bch_crc64 and libblkid's ul_crc64_we.
pub fn crc64_we(data: &[u8]) -> u64 {
    const POLY: u64 = 0x42F0_E1EB_A9EA_3693;
    let mut crc = u64::MAX;
    for &b in data {
        crc ^= u64::from(b) << 56;
        for _ in 0..8 {
            crc = if crc & (1 << 63) != 0 {
                (crc << 1) ^ POLY
            } else {
                crc << 1
            };
        }
    }
    crc ^ u64::MAX
}

fn bcache() -> Vec<(u64, Vec<u8>)> {
    // struct cache_sb at 4 KiB: csum, offset, version, magic[16], uuid[16],
    // set_info[16], label[32], ... data_offset at 184, keys at 206,
    // d[] from 208. The checksum covers bytes 8..208 (no journal keys).
    let mut sb = vec![0u8; 512];
    put(&mut sb, 8, &8u64.to_le_bytes()); // offset: sector 8
    put(&mut sb, 16, &1u64.to_le_bytes()); // version: backing device
    put(
        &mut sb,
        24,
        b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81",
    );
    put(&mut sb, 40, b"mdext-bcache-uid"); // uuid
    put(&mut sb, 56, b"mdext-bcache-set"); // set_info
    put(&mut sb, 184, &16u64.to_le_bytes()); // data_offset
    let csum = crc64_we(&sb[8..208]);
    put(&mut sb, 0, &csum.to_le_bytes());
    vec![(4096, sb)]
}

fn luks2_header(magic: &[u8; 6], offset: u64) -> Vec<u8> {
    // struct luks2_phdr (big-endian): magic, version, hdr_size, seqid,
    // label[48], checksum_alg[32], salt[64], uuid[40], subsystem[48],
    // hdr_offset, ...
    let mut h = vec![0u8; 4096];
    put(&mut h, 0, magic);
    put(&mut h, 6, &2u16.to_be_bytes());
    put(&mut h, 8, &16384u64.to_be_bytes());
    put(&mut h, 16, &1u64.to_be_bytes());
    put(&mut h, 72, b"sha256");
    put(&mut h, 168, b"6f2b3c1e-9a4d-4f6b-8e2a-1c5d7e9f0a1b");
    put(&mut h, 256, &offset.to_be_bytes());
    h
}

fn luks2() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, luks2_header(b"LUKS\xba\xbe", 0)),
        (0x4000, luks2_header(b"SKUL\xba\xbe", 0x4000)),
    ]
}

/// The `blkid` binary (util-linux), or a panic saying it is needed.
pub fn blkid_bin() -> PathBuf {
    for p in ["/usr/sbin/blkid", "/sbin/blkid", "/usr/bin/blkid"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("blkid (util-linux) is needed by this test");
}

/// `blkid -p -o export PATH`: exit status and stdout.
pub fn blkid_p(path: &Path) -> (i32, String) {
    let o = Command::new(blkid_bin())
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .expect("run blkid");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// Assert that `blkid -p` reports `TYPE=ty` on `path` (so that a fixture
/// that stops being a signature fails the test instead of passing it).
pub fn assert_blkid_type(path: &Path, ty: &str) {
    let (rc, out) = blkid_p(path);
    assert!(
        rc == 0 && out.lines().any(|l| l == format!("TYPE={ty}")),
        "blkid -p {}: expected TYPE={ty}, got status {rc}:\n{out}",
        path.display()
    );
}

/// Assert that `blkid -p` finds nothing on `path` (status 2).
pub fn assert_blkid_nothing(path: &Path) {
    let (rc, out) = blkid_p(path);
    assert!(
        rc == 2 && out.trim().is_empty(),
        "blkid -p {}: expected nothing, got status {rc}:\n{out}",
        path.display()
    );
}
