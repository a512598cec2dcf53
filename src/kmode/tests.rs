use super::*;
use crate::meta::test_raid1;

fn offers(metadata: bool, ty: Option<&str>) -> Offers {
    Offers {
        bitmap_metadata: metadata,
        bitmap_type: ty.map(str::to_string),
    }
}

#[test]
fn decide_follows_what_sysfs_offers() {
    // 6.1 / 6.12: the bitmap group exists with the device (no bitmap_type).
    let old = offers(true, None);
    assert_eq!(decide(BitmapMode::External, &old), Ok(BitmapMode::External));
    // An array last run on a 7.x kernel goes back to the external bitmap.
    assert_eq!(decide(BitmapMode::Kernel, &old), Ok(BitmapMode::External));
    // 6.18+ / 7.x: no bitmap/ before the start, bitmap_type offers md's bitmap.
    let new = offers(false, Some("none [bitmap]\n"));
    assert_eq!(decide(BitmapMode::External, &new), Ok(BitmapMode::Kernel));
    assert_eq!(decide(BitmapMode::Kernel, &new), Ok(BitmapMode::Kernel));
    assert_eq!(
        decide(
            BitmapMode::External,
            &offers(false, Some("[none] bitmap llbitmap"))
        ),
        Ok(BitmapMode::Kernel)
    );
    // --bitmap none stays none everywhere.
    for o in [&old, &new, &offers(false, None)] {
        assert_eq!(decide(BitmapMode::None, o), Ok(BitmapMode::None));
    }
    // Neither route: refused, naming what the kernel offers.
    let e = decide(
        BitmapMode::External,
        &offers(false, Some("none [llbitmap]")),
    )
    .expect_err("no route");
    assert!(e.to_string().contains("none [llbitmap]"), "{e}");
    assert!(decide(BitmapMode::Kernel, &offers(false, None)).is_err());
    // A word merely containing "bitmap" is not md's bitmap backend.
    assert!(decide(BitmapMode::External, &offers(false, Some("none llbitmap"))).is_err());
}

#[test]
fn switch_only_between_the_two_bitmap_modes() {
    use BitmapMode::*;
    assert_eq!(
        switch(External, Kernel),
        Some(Switch {
            from: Region::External,
            to: Region::Kernel
        })
    );
    assert_eq!(
        switch(Kernel, External),
        Some(Switch {
            from: Region::Kernel,
            to: Region::External
        })
    );
    for (a, b) in [(External, External), (Kernel, Kernel), (None, None)] {
        assert_eq!(switch(a, b), Option::None);
    }
    assert_eq!(switch(None, Kernel), Option::None);
}

#[test]
fn merge_keeps_every_dirty_chunk_both_ways() {
    let chunks = 20;
    let ext = vec![0b0000_1001, 0, 0b0000_0100, 0xff];
    let ker = vec![0, 0b1000_0000, 0, 0];
    let into_kernel = merge(&ext, &ker, chunks);
    let into_external = merge(&ker, &ext, chunks);
    for bits in [&into_kernel, &into_external] {
        assert_eq!(
            crate::bitmap::dirty_chunks(bits, 64),
            vec![0, 3, 15, 18],
            "{bits:?}"
        );
    }
    // Bits beyond the last chunk are zero; the length is the target's.
    assert_eq!(into_kernel, vec![0b0000_1001, 0b1000_0000, 0b0000_0100, 0]);
    assert_eq!(merge(&[0xff; 8], &[0; 2], 9), vec![0xff, 0x01]);
    assert_eq!(merge(&[0xff], &[0; 2], 16), vec![0xff, 0]);
}

#[test]
fn superblock_round_trip_and_layout() {
    let meta = test_raid1(2, Sectors(24_000), Bytes(65_536), 5);
    let s = KernelSuper::for_array(&meta, 100_000).expect("fits");
    let b = encode_super(&s).expect("encodes");
    // md's field positions (md-bitmap.h bitmap_super_t).
    assert_eq!(&b[0..4], &[0x62, 0x69, 0x74, 0x6d]);
    assert_eq!(le32(&b, 4), 4);
    assert_eq!(&b[8..24], meta.uuid.as_bytes());
    assert_eq!(le64(&b, 24), 0);
    assert_eq!(le64(&b, 32), 1);
    assert_eq!(le64(&b, 40), 24_000);
    assert_eq!(le32(&b, 52), 65_536);
    assert_eq!(le32(&b, 56), 100_000);
    // 188 chunks: 256 + 24 bytes, one 4 KiB block.
    assert_eq!(le32(&b, 64), 8);
    assert!(b[68..].iter().all(|&x| x == 0));
    assert_eq!(decode_super(&b), Ok(s));
    let mut bad = b;
    bad[0] = 0;
    assert!(matches!(
        decode_super(&bad),
        Err(KmodeError::Super { field: "magic", .. })
    ));
    let mut bad = b;
    bad[4] = 3;
    assert!(decode_super(&bad).is_err());
    assert!(decode_super(&b[..100]).is_err());
}
