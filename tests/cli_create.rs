//! mdextctl create / examine, run as a process on image files.

use std::path::Path;
use std::process::{Command, Output};

mod common {
    pub mod signatures;
}
use common::signatures::{self, assert_blkid_nothing, assert_blkid_type, image};

const BIN: &str = env!("CARGO_BIN_EXE_mdextctl");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run mdextctl")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}
fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8")
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            (k.trim() == key).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {key} in\n{out}"))
}

#[test]
fn create_then_examine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.img", 64 << 20);
    let b = image(dir.path(), "b.img", 64 << 20);
    let o = run(&[
        "create",
        "--level",
        "1",
        "--raid-devices",
        "2",
        "--name",
        "web",
        "--bitmap-chunk",
        "1M",
        "--time-base",
        "3",
        s(&a),
        s(&b),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("created raid1 array web"),
        "{}",
        stderr(&o)
    );

    // Human.
    let o = run(&["examine", s(&a)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with(&format!("{}:\n", a.display())), "{out}");
    assert_eq!(field(&out, "Name"), "web");
    assert_eq!(field(&out, "Version"), "2");
    assert_eq!(field(&out, "Bitmap Mode"), "external");
    assert_eq!(field(&out, "Raid Level"), "raid1");
    assert_eq!(field(&out, "Raid Devices"), "2");
    assert_eq!(field(&out, "Events"), "2");
    assert_eq!(field(&out, "State"), "dirty");
    assert_eq!(field(&out, "Resync"), "owed from sector 0");
    assert_eq!(field(&out, "Data Offset"), "2048 sectors");
    assert_eq!(field(&out, "Bitmap Offset"), "16 sectors");
    assert_eq!(field(&out, "Bitmap Chunk"), "1.0 MiB (63 chunks)");
    assert_eq!(field(&out, "Bitmap Time Base"), "3 s");
    assert_eq!(field(&out, "Device Role"), "Active device 0");
    assert!(field(&out, "Array State").starts_with("AA "), "{out}");
    assert_eq!(field(&out, "Used Dev Size"), "129024 sectors (63.0 MiB)");
    let array_uuid = field(&out, "Array UUID").to_string();
    let dev_uuid = field(&out, "Device UUID").to_string();

    // JSON.
    let o = run(&["examine", "--json", s(&a), s(&b)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["array_uuid"], array_uuid.as_str());
    assert_eq!(arr[1]["array_uuid"], array_uuid.as_str());
    assert_eq!(arr[0]["device_uuid"], dev_uuid.as_str());
    assert_eq!(arr[1]["slot"], 1);
    assert_eq!(arr[0]["level"], "raid1");
    assert!(arr[0]["members"][0]["events"].is_u64());
    assert_eq!(arr[0]["name"], "web");
    assert_eq!(arr[0]["level"], "raid1");
    assert_eq!(arr[0]["events"], 2);
    assert_eq!(arr[0]["state"], "dirty");
    assert_eq!(arr[0]["resync_sector"], 0);
    assert_eq!(arr[0]["data_offset_sectors"], 2048);
    assert_eq!(arr[0]["bitmap"]["chunk_bytes"], 1 << 20);
    assert_eq!(arr[0]["bitmap"]["chunks"], 63);
    assert_eq!(arr[0]["bitmap"]["time_base"], 3);
    assert_eq!(arr[0]["members"][1]["state"], "in-sync");
    assert_eq!(arr[0]["copy"], 0);
    assert_eq!(arr[0]["copies"][1]["valid"], true);

    // Export.
    let o = run(&["examine", "--export", s(&b)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert!(lines.contains(&format!("MDEXT_UUID={array_uuid}").as_str()));
    assert!(lines.contains(&"MDEXT_NAME=web"));
    assert!(lines.contains(&"MDEXT_LEVEL=raid1"));
    assert!(lines.contains(&"MDEXT_RAID_DISKS=2"));
    assert!(lines.contains(&"MDEXT_MEMBER_ROLE=1"));
    assert!(lines.contains(&"MDEXT_EVENTS=2"));
    assert!(lines.contains(&"MDEXT_STATE=dirty"));
    assert!(lines.iter().any(|l| l.starts_with("MDEXT_MEMBER_UUID=")
        && l.len() == "MDEXT_MEMBER_UUID=".len() + 36
        && !l.ends_with(&dev_uuid)));

    // A corrupted copy is reported and the other one used.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .expect("open");
        f.write_all_at(&[0xff], 100).expect("write");
    }
    let o = run(&["examine", s(&a)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(field(&out, "Events"), "1");
    assert!(
        out.contains("copy 0: checksum mismatch") && out.contains("using copy 1 (events 1)"),
        "{out}"
    );

    // Creating over it again is refused; the message names the array.
    let o = run(&["create", "-l", "1", "-n", "2", s(&a), s(&b)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("mdext array") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = run(&[
        "create",
        "-l",
        "1",
        "-n",
        "2",
        "--force",
        "--assume-clean",
        s(&a),
        s(&b),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&run(&["examine", s(&a)]));
    assert_eq!(field(&out, "State"), "clean");
    assert_eq!(field(&out, "Resync"), "none");
    assert_eq!(field(&out, "Name"), "mdext");
    assert_ne!(field(&out, "Array UUID"), array_uuid);
}

#[test]
fn examine_zero_file_fails_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let z = image(dir.path(), "zero.img", 1 << 20);
    for args in [
        vec!["examine"],
        vec!["examine", "--json"],
        vec!["examine", "--export"],
    ] {
        let mut args = args.clone();
        args.push(s(&z));
        let o = run(&args);
        assert!(!o.status.success());
        assert_eq!(
            stderr(&o),
            format!(
                "mdextctl: {}: no mdext metadata (no magic in either copy)\n",
                z.display()
            )
        );
    }
    let o = run(&["examine", "/nonexistent/dev"]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1);
}

#[test]
fn create_refusals_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = image(dir.path(), "a.img", 64 << 20);
    let small = image(dir.path(), "small.img", 2 << 20);
    let o = run(&["create", "-l", "1", "-n", "2", s(&a), s(&small)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("small.img: too small"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = run(&["create", "-l", "1", "-n", "2", s(&a), s(&a)]);
    assert!(stderr(&o).contains("same device as"), "{}", stderr(&o));
    let o = run(&[
        "create",
        "-l",
        "1",
        "-n",
        "2",
        "--bitmap-chunk",
        "3K",
        s(&a),
        s(&small),
    ]);
    assert!(
        stderr(&o).starts_with("mdextctl: --bitmap-chunk 3072:"),
        "{}",
        stderr(&o)
    );
    // Nothing was written to a.
    assert!(std::fs::read(&a).expect("read").iter().all(|&b| b == 0));
    let o = run(&["create", "--help"]);
    assert!(stdout(&o).contains("--assume-clean"));
}

/// Issue 8, defect 5: `create` overwrote an Intel IMSM member (and DDF,
/// LVM2, ZFS, bcache, LUKS2) without --force, and blkid still reported it
/// afterwards. Through the binary, so it runs against any version.
#[test]
fn create_refuses_every_foreign_signature_and_force_wipes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for sig in signatures::ALL {
        let a = image(dir.path(), &format!("{sig:?}-a.img"), 64 << 20);
        let b = image(dir.path(), &format!("{sig:?}-b.img"), 64 << 20);
        sig.write(&b);
        assert_blkid_type(&b, sig.blkid_type());
        let before = std::fs::read(&b).expect("read");
        let o = run(&["create", "-l", "1", "-n", "2", s(&a), s(&b)]);
        assert!(
            !o.status.success(),
            "{sig:?}: create without --force succeeded"
        );
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!(
                "mdextctl: {}: carries a signature: {} (",
                b.display(),
                sig.blkid_type()
            )) && err.ends_with("; use --force to overwrite\n"),
            "{sig:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            std::fs::read(&b).expect("read") == before,
            "{sig:?}: a refused create wrote"
        );
        let o = run(&["create", "-l", "1", "-n", "2", "--force", s(&a), s(&b)]);
        assert!(o.status.success(), "{sig:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("overwriting {} (", sig.blkid_type())),
            "{}",
            stderr(&o)
        );
        assert_blkid_nothing(&b);
        let out = stdout(&run(&["examine", s(&b)]));
        assert_eq!(field(&out, "Raid Devices"), "2");
    }
}
