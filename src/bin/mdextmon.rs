//! mdextmon: the daemon that owns the metadata of mdext arrays.

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

/// Keep mdext arrays' external metadata true while they run.
///
/// mdextmon answers the md driver's requests for arrays with external
/// metadata: it records "dirty" before the first write is let through and
/// "clean" when the array goes idle, records member failures and rebuilds,
/// resync checkpoints, and allows the kernel to clear write-intent bitmap bits
/// only after every member's metadata records the array whole. Without it,
/// writes to an mdext array block forever.
///
/// Normally started by `mdextctl assemble`, or by systemd. It stays in the
/// foreground and logs to stderr with syslog priority prefixes (journald
/// reads them). SIGTERM leaves every array clean, then exits.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// md devices to manage from the start (e.g. md127); more can be added
    /// over the control socket.
    arrays: Vec<String>,
    /// Directory for the control socket and pid file.
    #[arg(long, default_value = mdext::control::RUN_DIR)]
    run_dir: PathBuf,
    /// sysfs mount point.
    #[arg(long, default_value = "/sys", hide = true)]
    sysfs: PathBuf,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format(|buf, rec| {
            // sd-daemon(3) priority prefixes: journald maps them to levels.
            let prio = match rec.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>mdextmon: {}", rec.args())
        })
        .init();
    let cfg = mdext::daemon::Config {
        sysfs: mdext::sysfs::Sysfs::new(args.sysfs),
        run_dir: args.run_dir,
        arrays: args.arrays,
    };
    mdext::daemon::Daemon::new(cfg)?.run()?;
    Ok(())
}
