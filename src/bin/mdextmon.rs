//! mdextmon: the daemon that owns the metadata of mdext arrays.

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Keep mdext arrays' external metadata true while they run.
///
/// mdextmon answers the md driver's requests for arrays with external
/// metadata: it lets the first write after clean through and records the
/// array "dirty" (first for parity levels and degraded arrays; within a
/// second, while writes go on, for a whole mirror, whose bitmap covers them)
/// and "clean" when the array goes idle, records member failures and rebuilds,
/// resync checkpoints, and allows the kernel to clear write-intent bitmap bits
/// only after every member's metadata records the array whole. Without it,
/// writes to an mdext array block forever.
///
/// Normally started by systemd (mdextmon.service, `Type=notify`), or by
/// `mdextctl assemble` where systemd does not run (an initramfs, with
/// argv[0] "@mdextmon" so that no final killing spree ends it). It stays in
/// the foreground and logs to stderr, one line per message, with
/// sd-daemon(3) priority prefixes when stderr is the journal. SIGTERM
/// releases every array not in use, recorded clean, and exits once no array
/// is left; arrays in use (mounted) stay managed.
#[derive(Parser, Debug)]
#[command(name = "mdextmon", bin_name = "mdextmon", version, about, long_about)]
struct Args {
    /// md devices to manage from the start (e.g. md127); more can be added
    /// over the control socket.
    arrays: Vec<String>,
    /// Replace the running mdextmon (the initramfs's, or an older
    /// version): it hands every array over and exits, and this one adopts
    /// them. With none running, just start.
    #[arg(long)]
    takeover: bool,
    /// Directory for the control socket and pid file.
    #[arg(long, default_value = mdext::control::RUN_DIR)]
    run_dir: PathBuf,
    /// sysfs mount point.
    #[arg(long, default_value = "/sys", hide = true)]
    sysfs: PathBuf,
    /// Configuration file (mdext.conf(5)): the event PROGRAM. Missing:
    /// no program.
    #[arg(long, default_value = mdext::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

// SIGPIPE stays ignored (Rust's default): a control client that hangs up
// must make the daemon's answer fail with EPIPE, never kill the daemon
// (writes to its arrays would then block). Its only stdout output is clap's
// help and version, which tolerate a closed pipe.
fn main() -> ExitCode {
    // First, while this is the only thread: take NOTIFY_SOCKET and the
    // watchdog variables out of the environment, so that no child inherits
    // them.
    let notifier = mdext::service::Notifier::from_env();
    let args = Args::parse();
    let journal = mdext::cli::stderr_is_journal();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format(move |buf, rec| {
            let line = mdext::cli::log_line("mdextmon", rec.level(), journal, *rec.args());
            writeln!(buf, "{line}")
        })
        // Never blocks the daemon on a full journal stream (logsink).
        .target(env_logger::Target::Pipe(Box::new(
            mdext::logsink::Stderr::default(),
        )))
        .init();
    let cfg = mdext::daemon::Config {
        sysfs: mdext::sysfs::Sysfs::new(args.sysfs),
        run_dir: args.run_dir,
        arrays: args.arrays,
        config: args.config,
        journal_socket: PathBuf::from(mdext::journal::SOCKET),
        takeover: args.takeover,
        notifier,
    };
    match mdext::daemon::Daemon::new(cfg).and_then(|d| d.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Written directly, not through the logger: a startup error is
            // shown whatever --log-level says.
            let msg = mdext::cli::error_line(&e);
            let line = mdext::cli::log_line(
                "mdextmon",
                log::Level::Error,
                journal,
                format_args!("{msg}"),
            );
            mdext::logsink::write_line(&line);
            ExitCode::FAILURE
        }
    }
}
