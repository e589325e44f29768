//! A user-space link emulator: one-way delay, rate cap, drop-tail queue limited in bytes and
//! random loss, each direction on its own, between two TUN devices in two network
//! namespaces. For trying p2pchat (or anything over IP) on a slow or distant link by hand;
//! the tests use the same code (`tests/common/emulator.rs`, on the model of
//! `tests/sim/link.rs`).
//!
//! Two ways to run it (as root):
//!
//! ```sh
//! # the lab of tests/common/lab.rs: home - emulator - router (NAT) - world, until Ctrl-C
//! cargo run --release --example link_emulator -- --lab --delay 20ms --rate 20mbit --queue 64KiB
//!
//! # between TUN devices of your own (attached if they exist, created otherwise)
//! ip netns add a; ip netns add b
//! ip -n a tuntap add dev tun0 mode tun; ip -n b tuntap add dev tun0 mode tun
//! ip -n a addr add 10.1.0.1 peer 10.1.0.2 dev tun0; ip -n a link set tun0 up
//! ip -n b addr add 10.1.0.2 peer 10.1.0.1 dev tun0; ip -n b link set tun0 up
//! cargo run --release --example link_emulator -- --a a:tun0 --b b:tun0 \
//!     --up-delay 30ms --down-delay 10ms --rate 10mbit --loss 1%
//! ```
//!
//! `up` is what side `a` (the lab's home) sends, `down` what it receives. `--delay`,
//! `--rate`, `--queue` and `--loss` set both directions; `--up-…` and `--down-…` set one and
//! take precedence. It prints its counters at the end (and every `--report` seconds), and
//! stops on Ctrl-C, SIGTERM, or after `--seconds`.

mod link_common;

/// `println!` that ignores a closed stdout (`| head`), instead of panicking: the program
/// goes on to stop the emulator and remove its lab.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use link_common::emulator::{Emulator, EmulatorStats, LinkConfig, Tun, WayStats};
use link_common::lab;

#[derive(Parser, Debug)]
#[command(
    name = "link_emulator",
    about = "Emulate a link (delay, rate, drop-tail byte queue, loss; per direction) between two TUN devices in two network namespaces"
)]
struct Cli {
    /// Side a, as NETNS:DEV: TUN device DEV in network namespace NETNS (one of `ip netns list`).
    /// What a sends goes through the up link.
    #[arg(long, value_parser = parse_side, required_unless_present = "lab", conflicts_with = "lab")]
    a: Option<Side>,
    /// Side b, as NETNS:DEV. What b sends goes through the down link.
    #[arg(long, value_parser = parse_side, required_unless_present = "lab", conflicts_with = "lab")]
    b: Option<Side>,
    /// Build the lab of tests/common/lab.rs instead (home 192.168.77.2 - emulator - router
    /// with NAT - world 10.77.0.1) and emulate between home and router; removed at the end
    #[arg(long)]
    lab: bool,
    /// One-way delay, both directions (e.g. 20ms, 0.5s, 300us)
    #[arg(long, value_parser = parse_delay)]
    delay: Option<Duration>,
    /// Rate cap, both directions (e.g. 20mbit, 512kbit, 1gbit, 2.5MB/s, 300kB/s)
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// Queue limit in bytes, both directions (e.g. 65536, 64KiB, 1MiB, 100kB); needs a rate
    #[arg(long, value_parser = parse_bytes)]
    queue: Option<usize>,
    /// Random loss, both directions (e.g. 0.01 or 1%)
    #[arg(long, value_parser = parse_loss)]
    loss: Option<f64>,
    #[arg(long, value_parser = parse_delay, help = "One-way delay of the up link")]
    up_delay: Option<Duration>,
    #[arg(long, value_parser = parse_rate, help = "Rate cap of the up link")]
    up_rate: Option<u64>,
    #[arg(long, value_parser = parse_bytes, help = "Queue limit of the up link")]
    up_queue: Option<usize>,
    #[arg(long, value_parser = parse_loss, help = "Random loss of the up link")]
    up_loss: Option<f64>,
    #[arg(long, value_parser = parse_delay, help = "One-way delay of the down link")]
    down_delay: Option<Duration>,
    #[arg(long, value_parser = parse_rate, help = "Rate cap of the down link")]
    down_rate: Option<u64>,
    #[arg(long, value_parser = parse_bytes, help = "Queue limit of the down link")]
    down_queue: Option<usize>,
    #[arg(long, value_parser = parse_loss, help = "Random loss of the down link")]
    down_loss: Option<f64>,
    /// Seed of the random loss (printed)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds (default: at Ctrl-C or SIGTERM)
    #[arg(long, value_parser = parse_seconds)]
    seconds: Option<Duration>,
    /// Also print the counters every this many seconds
    #[arg(long, value_parser = parse_seconds)]
    report: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Side {
    netns: String,
    dev: String,
}

impl Cli {
    /// The up and down links: the direction's own option, else the shared one, else none.
    fn links(&self) -> (LinkConfig, LinkConfig) {
        let link = |delay: Option<Duration>,
                    rate: Option<u64>,
                    queue: Option<usize>,
                    loss: Option<f64>| LinkConfig {
            delay: delay.or(self.delay).unwrap_or_default(),
            rate: rate.or(self.rate),
            queue: queue.or(self.queue),
            loss: loss.or(self.loss).unwrap_or(0.0),
        };
        (
            link(self.up_delay, self.up_rate, self.up_queue, self.up_loss),
            link(
                self.down_delay,
                self.down_rate,
                self.down_queue,
                self.down_loss,
            ),
        )
    }
}

// ---------------------------------------------------------------- parsing

fn parse_side(s: &str) -> Result<Side, String> {
    match s.split_once(':') {
        Some((netns, dev)) if !netns.is_empty() && !dev.is_empty() => Ok(Side {
            netns: netns.to_string(),
            dev: dev.to_string(),
        }),
        _ => Err("write it NETNS:DEV, e.g. a:tun0".into()),
    }
}

/// A number followed by one of `units` (compared ignoring ASCII case where `fold`), scaled
/// by the unit's factor; `help` names the units in the error.
fn number_with_unit(s: &str, units: &[(&str, f64)], fold: bool, help: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number; {help}"))?;
    let unit = unit.trim();
    let factor = units
        .iter()
        .find(|(u, _)| {
            if fold {
                u.eq_ignore_ascii_case(unit)
            } else {
                *u == unit
            }
        })
        .map(|(_, f)| *f)
        .ok_or_else(|| format!("unknown unit {unit:?} in {s:?}; {help}"))?;
    let scaled = value * factor;
    if scaled.is_finite() {
        Ok(scaled)
    } else {
        Err(format!("{s:?} is out of range"))
    }
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    let units = [("s", 1.0), ("ms", 1e-3), ("us", 1e-6)];
    let secs = number_with_unit(s, &units, true, "units: s, ms, us (e.g. 20ms)")?;
    if secs > 3600.0 {
        return Err(format!("{s:?}: at most an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Bytes per second, from bits per second (tc's units, any case) or bytes per second (as
/// written: `MB/s` is not `Mb/s`).
fn parse_rate(s: &str) -> Result<u64, String> {
    let help = "units: bit, kbit, mbit, gbit (per second; e.g. 20mbit) or B/s, kB/s, MB/s, GB/s";
    let bits = [
        ("bit", 1.0 / 8.0),
        ("kbit", 1e3 / 8.0),
        ("mbit", 1e6 / 8.0),
        ("gbit", 1e9 / 8.0),
    ];
    let bytes = [("B/s", 1.0), ("kB/s", 1e3), ("MB/s", 1e6), ("GB/s", 1e9)];
    let rate = number_with_unit(s, &bytes, false, help)
        .or_else(|_| number_with_unit(s, &bits, true, help))?;
    if !(1.0..=1e12).contains(&rate) {
        return Err(format!(
            "{s:?}: the rate must be between 1 byte per second and 1 TB/s"
        ));
    }
    Ok(rate.round() as u64)
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let units = [
        ("", 1.0),
        ("B", 1.0),
        ("kB", 1e3),
        ("KiB", 1024.0),
        ("MB", 1e6),
        ("MiB", 1024.0 * 1024.0),
    ];
    let help = "bytes, or with a unit: B, kB, KiB, MB, MiB (e.g. 64KiB)";
    let bytes = number_with_unit(s, &units, false, help)?;
    if bytes > 1e12 {
        return Err(format!("{s:?} is too big"));
    }
    Ok(bytes.round() as usize)
}

fn parse_loss(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (t, 1.0),
    };
    let p: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a loss (e.g. 0.01 or 1%)"))?;
    let p = p * scale;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!(
            "{s:?}: the loss must be between 0 and 1 (0% and 100%)"
        ))
    }
}

// ---------------------------------------------------------------- running

fn describe(config: &LinkConfig) -> String {
    let rate = config.rate.map_or("no rate cap".into(), |r| {
        format!("{:.3} Mbit/s", r as f64 * 8.0 / 1e6)
    });
    let queue = match (config.rate, config.queue) {
        (None, _) => "no queue".into(),
        (Some(_), None) => "unlimited queue".into(),
        (Some(_), Some(q)) => format!("queue {q} bytes"),
    };
    format!(
        "delay {:?}, {rate}, {queue}, loss {}",
        config.delay, config.loss
    )
}

fn report(way: &str, s: &WayStats) {
    say!(
        "{way}: {} packets read ({} bytes), {} passed, {} dropped by the queue, {} lost at random, \
         peak queue {} bytes; {} written (late by {:.1?} on average, {:.1?} at most), \
         {} refused by the device, {} over the emulator's buffer",
        s.link.sent,
        s.link.sent_bytes,
        s.link.passed,
        s.link.dropped_queue,
        s.link.dropped_loss,
        s.link.peak_queue_bytes,
        s.forwarded,
        s.late_mean(),
        s.late_max,
        s.write_errors,
        s.overflow
    );
}

fn report_both(s: &EmulatorStats) {
    report("up  ", &s.up);
    report("down", &s.down);
}

/// Waits until a signal, the end of `--seconds`, or the emulator's end, reporting every
/// `--report`.
fn wait(cli: &Cli, emulator: &Emulator, stop: &AtomicBool) {
    let started = Instant::now();
    let mut next_report = cli
        .report
        .map(|r| started + r.max(Duration::from_millis(100)));
    while !stop.load(Ordering::Relaxed) && emulator.is_running() {
        let now = Instant::now();
        if cli.seconds.is_some_and(|s| now - started >= s) {
            break;
        }
        if let (Some(at), Some(every)) = (next_report, cli.report) {
            if now >= at {
                say!("after {:.1?}:", now - started);
                report_both(&emulator.stats());
                next_report = Some(at + every.max(Duration::from_millis(100)));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (up, down) = cli.links();
    for (way, config) in [("up", &up), ("down", &down)] {
        if let Err(e) = config.check() {
            eprintln!("link_emulator: {way} link: {e}");
            return ExitCode::from(2);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("link_emulator: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    say!("up:   {}", describe(&up));
    say!("down: {}", describe(&down));
    say!("seed {}", cli.seed);
    let result = if cli.lab {
        run_lab(&cli, up, down, &stop)
    } else {
        run_between(&cli, up, down, &stop)
    };
    match result {
        Ok(stats) => {
            say!("stopped; counters:");
            report_both(&stats);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("link_emulator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_between(
    cli: &Cli,
    up: LinkConfig,
    down: LinkConfig,
    stop: &AtomicBool,
) -> Result<EmulatorStats, String> {
    let (Some(a), Some(b)) = (&cli.a, &cli.b) else {
        return Err("give --a and --b, or --lab".into());
    };
    let open = |side: &Side| Tun::open_in(&side.netns, &side.dev).map_err(|e| e.to_string());
    let emulator = Emulator::start(open(a)?, open(b)?, up, down, cli.seed)
        .map_err(|e| format!("cannot start: {e}"))?;
    say!(
        "forwarding between {}:{} (a) and {}:{} (b); Ctrl-C stops",
        a.netns,
        a.dev,
        b.netns,
        b.dev
    );
    wait(cli, &emulator, stop);
    emulator
        .stop()
        .map_err(|e| format!("the emulator failed: {e}"))
}

fn run_lab(
    cli: &Cli,
    up: LinkConfig,
    down: LinkConfig,
    stop: &AtomicBool,
) -> Result<EmulatorStats, String> {
    let mut lab = lab::Lab::start("cli", up, down, cli.seed)?;
    let p2pchat = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("p2pchat")))
        .filter(|p| p.is_file())
        .map_or("p2pchat".into(), |p| p.display().to_string());
    say!(
        "lab ready: home {} ({}), router {} ({} toward the world, masquerading), world {} ({})",
        lab.home.name,
        lab::HOME,
        lab.router.name,
        lab::ROUTER_WAN,
        lab.world.name,
        lab::WORLD
    );
    say!("for example, in three terminals:");
    say!(
        "  ip netns exec {} {p2pchat} server --bind {}:7070",
        lab.world.name,
        lab::WORLD
    );
    say!(
        "  ip netns exec {} {p2pchat} client --server {}:7070 --bind {}:0 --name bob",
        lab.world.name,
        lab::WORLD,
        lab::WORLD
    );
    say!(
        "  ip netns exec {} {p2pchat} client --server {}:7070 --bind {}:0 --name alice   (then: connect bob; behind the NAT, alice asks)",
        lab.home.name,
        lab::WORLD,
        lab::HOME
    );
    say!("Ctrl-C stops the emulator and removes the lab");
    let Some(emulator) = lab.emulator() else {
        return Err("the emulator did not start".into());
    };
    wait(cli, emulator, stop);
    lab.stop_emulator()
}
