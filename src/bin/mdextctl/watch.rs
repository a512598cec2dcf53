//! `wait` and `metrics`: watching running arrays.

use anyhow::Result;
use clap::Args;
use mdext::sysfs::Sysfs;
use mdext::wait::{self, Outcome, Update};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::ops::DaemonArgs;

#[derive(Args, Debug)]
#[command(
    long_about = "Wait until each ARRAY's resync, rebuild or scrub has finished (like mdadm \
    --wait), or with --clean until the metadata of every member records the array clean and md \
    is not writing to it (like mdadm --wait-clean; a running resync or rebuild is not waited for then: its checkpoint is \
    recorded and it goes on at the next start). Woken by md's sysfs notifications and by \
    mdextmon's metadata writes, not by polling. A progress bar with rate and ETA on a \
    terminal, a line per tenth otherwise. Exit status: 0 every array finished what it was \
    doing (or is recorded clean), 1 some array had nothing running (plain wait only, as mdadm), \
    2 some array did not get there (timed out, stopped, or cannot become clean: no mdextmon, \
    or read-only with a dirty record), 4 an array cannot be found."
)]
pub struct WaitArgs {
    /// The arrays: md device (md127, /dev/md127), name or UUID.
    #[arg(
        value_name = "ARRAY",
        required_unless_present = "scan",
        conflicts_with = "scan"
    )]
    arrays: Vec<String>,
    /// Every running mdext array.
    #[arg(short, long)]
    scan: bool,
    /// Wait until every member records the array clean and md is not
    /// writing to it (the shutdown hook's `wait --clean --scan`).
    #[arg(long)]
    clean: bool,
    /// Give up after this many seconds (0: never). Default: never for a
    /// resync or rebuild, 30 with --clean.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// Progress display: a bar on a terminal, plain lines otherwise.
struct Shown {
    bar: Option<indicatif::ProgressBar>,
    plain_step: Option<u64>,
    first: Option<(Instant, u64)>,
}

impl Shown {
    fn new() -> Shown {
        Shown {
            bar: None,
            plain_step: None,
            first: None,
        }
    }

    fn update(&mut self, u: &Update) {
        let Some(action) = u.action else {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            return;
        };
        let (done, total) = u.progress.unwrap_or((0, 0));
        let (done_b, total_b) = (done * 512, total * 512);
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total_b);
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                b.set_style(style);
                b
            });
            bar.set_prefix(format!("{} {action}", u.md));
            bar.set_length(total_b);
            bar.set_position(done_b);
            return;
        }
        // Plain lines: the start, then each tenth crossed.
        let step = (done * 10).checked_div(total).unwrap_or(0);
        if self.plain_step == Some(step) {
            return;
        }
        self.plain_step = Some(step);
        let now = Instant::now();
        let (t0, d0) = *self.first.get_or_insert((now, done));
        let ms = u64::try_from(now.duration_since(t0).as_millis()).unwrap_or(u64::MAX);
        // Bytes per second since the first look (none before half a second).
        let rate = if ms >= 500 {
            (done.saturating_sub(d0) * 512).saturating_mul(1000) / ms
        } else {
            0
        };
        let pct = (done * 100).checked_div(total).unwrap_or(0);
        let mut line = format!(
            "mdextctl: {}: {action} {pct}% ({} of {})",
            u.md,
            mdext::units::human(mdext::units::Bytes(done_b)),
            mdext::units::human(mdext::units::Bytes(total_b)),
        );
        if let Some(eta) = total_b.saturating_sub(done_b).checked_div(rate) {
            line.push_str(&format!(
                ", {}/s, eta {eta} s",
                mdext::units::human(mdext::units::Bytes(rate))
            ));
        }
        println!("{line}");
    }
}

pub fn wait(a: &WaitArgs) -> Result<ExitCode> {
    let sysfs = Sysfs::default();
    let mut code = 0u8;
    let mut names = Vec::new();
    if a.scan {
        names = mdext::managed::running_arrays(&sysfs);
        if names.is_empty() {
            println!("mdextctl: no mdext arrays are running");
            return Ok(ExitCode::from(
                Outcome::Done { waited: false }.exit_code(a.clean),
            ));
        }
    } else {
        for arg in &a.arrays {
            match mdext::ctl::resolve_md(&sysfs, arg) {
                Ok(md) => names.push(md),
                Err(e) => {
                    eprintln!("mdextctl: {e}");
                    code = code.max(mdext::status::EXIT_ERROR);
                }
            }
        }
    }
    let timeout = match a.timeout {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => a.clean.then_some(wait::CLEAN_TIMEOUT),
    };
    let o = wait::Options {
        clean: a.clean,
        timeout,
        run_dir: a.daemon.run_dir.clone(),
    };
    for md in names {
        let mut shown = Shown::new();
        let t0 = Instant::now();
        let (out, recs) = wait::wait_one(&sysfs, &md, &o, &mut |u| shown.update(u));
        shown.update(&Update {
            md: md.clone(),
            action: None,
            progress: None,
        });
        let secs = t0.elapsed().as_secs();
        match &out {
            Outcome::Done { .. } if a.clean => {
                let devs: Vec<String> = recs
                    .iter()
                    .map(|r| format!("{} (events {})", r.device, r.events))
                    .collect();
                println!("mdextctl: {md}: recorded clean on {}", devs.join(", "));
            }
            Outcome::Done { waited: true } => {
                println!("mdextctl: {md}: finished after {secs} s")
            }
            Outcome::Done { waited: false } => {
                println!("mdextctl: {md}: no resync, rebuild or scrub running")
            }
            Outcome::Impossible(why) => {
                eprintln!("mdextctl: {md}: cannot become clean: {why}")
            }
            Outcome::TimedOut => eprintln!(
                "mdextctl: {md}: not {} after {secs} s; giving up",
                if a.clean {
                    "recorded clean"
                } else {
                    "finished"
                }
            ),
            Outcome::Stopped => eprintln!("mdextctl: {md}: stopped while waited for"),
        }
        code = code.max(out.exit_code(a.clean));
    }
    Ok(ExitCode::from(code))
}

#[derive(Args, Debug)]
#[command(
    long_about = "Print every running mdext array's state in Prometheus' text format, for \
    node_exporter's textfile collector: health, degraded slots, members per recorded state, \
    bitmap chunks and dirty chunks, can_clear and the protocol state, sync action and \
    progress, the metadata's event counts, clean, managed. The names are listed in \
    mdextctl(8), METRICS. With --output the file is replaced atomically."
)]
pub struct MetricsArgs {
    /// Write to FILE (atomically: a temporary file renamed over it)
    /// instead of stdout, e.g.
    /// /var/lib/prometheus/node-exporter/mdext.prom.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

pub fn metrics(a: &MetricsArgs) -> Result<ExitCode> {
    let m = mdext::metrics::gather(&Sysfs::default(), &a.daemon.run_dir)?;
    let text = mdext::metrics::render(&m);
    match &a.output {
        Some(p) => mdext::metrics::write_atomic(p, &text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
