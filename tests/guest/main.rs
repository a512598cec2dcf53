//! Guest tests: scenarios that need the kernel's md driver, run inside a QEMU
//! guest booted with Debian's kernel (the host kernel has no md).
//!
//! One binary, two modes:
//! - on the host (`cargo test --test guest [FILTER...]`): builds an initramfs
//!   holding this binary, mdextctl, mdextmon, busybox, mdadm and the kernel's
//!   md modules, then boots one guest per scenario phase (`scripts/guest`)
//!   and reports each scenario as a test;
//! - in the guest (`guest --in-guest SCENARIO PHASE`): runs one phase.
//!
//! `Cargo.toml` marks this target `test = false`: plain `cargo test` never
//! builds or runs it, so a guest test cannot "pass" by being skipped.

mod harness;
mod paths;
mod scenarios;
#[path = "../common/signatures.rs"]
mod signatures;
mod torture;
mod util;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--in-guest") {
        let (Some(s), Some(p)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: guest --in-guest SCENARIO PHASE");
            std::process::exit(2);
        };
        std::process::exit(harness::run_in_guest(s, p));
    }
    if args.get(1).map(String::as_str) == Some("--in-guest-torture") {
        std::process::exit(torture::guest_main(&args[2..]));
    }
    if args.iter().any(|a| a == "--torture") {
        std::process::exit(torture::host_main(&args[1..]));
    }
    if args.get(1).map(String::as_str) == Some("--writer") {
        // The systemd guest's early writer unit (scenarios/system.rs).
        let Some(dir) = args.get(2) else {
            eprintln!("usage: guest --writer DIR");
            std::process::exit(2);
        };
        std::process::exit(scenarios::writer_service(std::path::Path::new(dir)));
    }
    std::process::exit(harness::run_on_host(&args[1..]));
}
