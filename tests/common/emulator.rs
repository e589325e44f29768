//! The user-space link emulator: IP packets between two TUN devices, each in a network
//! namespace of its own, through the link model of the simulated network
//! ([`link`], `tests/sim/link.rs`: one-way delay, rate, drop-tail byte queue, random loss),
//! in real time. Kernel delay emulation (`tc netem`) is not available where the tests run;
//! this needs only `/dev/net/tun`.
//!
//! Packets read from the device of side `a` go through the `up` link and are written to the
//! device of side `b` when the link lets them out; packets read from `b` go through `down`
//! to `a`. A packet's size is its length as read (the whole IP packet, headers included).
//! One thread does it all with mio: it reads both devices when they are readable, holds each
//! packet until it is due, and sleeps on a `timerfd` set to the next due time (nanosecond
//! precision, where a poll timeout would be rounded up to the millisecond). It never spins:
//! with nothing readable and nothing due it blocks.
//!
//! Bounds: at most [`BATCH`] packets are read from one device before the loop turns (so one
//! side cannot starve the other or the writes), and at most [`MAX_HELD_BYTES`] are held per
//! direction (a link without a rate cap and with a long delay holds `rate × delay`);
//! beyond that packets are dropped and counted (`overflow`).
//!
//! Shared by file, not as a crate: the tests reach it as `common::emulator` (with
//! `common::netns` beside it), the examples through `examples/link_common/mod.rs`, which
//! includes this file, `lab.rs` and `netns.rs` by path as sibling modules. It uses std,
//! libc, mio and rand.

// A test crate with both `mod sim;` and `mod common;` (tests/file_e2e.rs) loads the model
// twice: two copies of pure code with no state of its own, harmless.
#[allow(clippy::duplicate_mod)]
#[path = "../sim/link.rs"]
pub mod link;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use link::{Link, LinkConfig, LinkStats, Verdict};

use super::netns::in_netns;

/// Packets read from one device in one turn of the loop, at most.
pub const BATCH: usize = 64;
/// Bytes held (admitted, not yet written) per direction, at most: 64 MiB.
pub const MAX_HELD_BYTES: usize = 64 << 20;

// ---------------------------------------------------------------- a TUN device

/// A TUN device (IP packets, no packet-information header), open and non-blocking.
#[derive(Debug)]
pub struct Tun {
    file: File,
    pub name: String,
}

impl Tun {
    /// Opens the TUN device `dev` in the network namespace `netns` (one of `ip netns`'s):
    /// attaches to it if it exists (`ip tuntap add dev DEV mode tun`, a persistent device
    /// that outlives this process), creates it otherwise (a device that lives as long as it
    /// is open). The calling thread stays in its own namespace.
    pub fn open_in(netns: &str, dev: &str) -> io::Result<Tun> {
        let dev = dev.to_string();
        in_netns(netns, move || Tun::open(&dev))
            .map_err(|e| io::Error::new(e.kind(), format!("{netns}: {e}")))
    }

    /// [`Tun::open_in`] the calling thread's namespace.
    pub fn open(dev: &str) -> io::Result<Tun> {
        if dev.is_empty() || dev.len() >= libc::IFNAMSIZ || dev.bytes().any(|b| b == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{dev:?} is not a device name (1 to 15 bytes)"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
        // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may write back the name into) the ifreq, which lives
        // for the call; the descriptor is open.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot attach to TUN device {dev}: {e}"),
            ));
        }
        Ok(Tun {
            file,
            name: dev.to_string(),
        })
    }
}

// ---------------------------------------------------------------- a timerfd

/// A monotonic `timerfd`: readable when it expires.
struct Timer(OwnedFd);

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a descriptor we just opened and own.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Expires once, `after` from now (at least a nanosecond, since zero would disarm it).
    fn set(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the spec lives for the call; the old value is not asked for.
        if unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes the expiry count, so that the descriptor is no longer readable.
    fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8; a failure (nothing to read) is
        // harmless.
        unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

// ---------------------------------------------------------------- the counters

/// The counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WayStats {
    /// The link model's counters (sizes are IP packet lengths).
    pub link: LinkStats,
    /// Packets written to the far device.
    pub forwarded: u64,
    /// Packets the far device refused (counted, dropped).
    pub write_errors: u64,
    /// Packets dropped because [`MAX_HELD_BYTES`] were held already (not offered to the link).
    pub overflow: u64,
    /// How late packets were written, after their due time: the most, and the sum.
    pub late_max: Duration,
    pub late_total: Duration,
}

impl WayStats {
    /// The mean lateness of the packets written.
    pub fn late_mean(&self) -> Duration {
        self.late_total
            .checked_div(u32::try_from(self.forwarded.max(1)).unwrap_or(u32::MAX))
            .unwrap_or_default()
    }
}

/// The counters of both directions: `up` is `a` to `b`, `down` is `b` to `a`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    pub up: WayStats,
    pub down: WayStats,
}

// ---------------------------------------------------------------- one direction

/// One direction: its link, and the packets it lets through, in due order.
struct Way {
    link: Link,
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
    stats: WayStats,
}

impl Way {
    fn new(config: LinkConfig) -> Way {
        Way {
            link: Link::new(config),
            held: VecDeque::new(),
            held_bytes: 0,
            stats: WayStats::default(),
        }
    }

    /// Reads up to [`BATCH`] packets from `from` into the link. Returns whether more may be
    /// waiting (the batch ran out before the device did).
    fn read(&mut self, from: &Tun, buf: &mut [u8], rng: &mut StdRng) -> io::Result<bool> {
        for _ in 0..BATCH {
            let n = match (&from.file).read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading {}: {e}", from.name),
                    ))
                }
            };
            if self.held_bytes + n > MAX_HELD_BYTES {
                self.stats.overflow += 1;
                continue;
            }
            if let Verdict::Arrives(at) = self.link.offer(Instant::now(), n, rng) {
                self.held.push_back((at, buf[..n].to_vec()));
                self.held_bytes += n;
            }
        }
        Ok(true)
    }

    /// Writes to `to` every packet due by `now`.
    fn write_due(&mut self, now: Instant, to: &Tun) {
        while self.held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((due, packet)) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= packet.len();
            // A TUN device takes a packet whole or not at all.
            match (&to.file).write(&packet) {
                Ok(n) if n == packet.len() => {
                    self.stats.forwarded += 1;
                    let late = now - due;
                    self.stats.late_max = self.stats.late_max.max(late);
                    self.stats.late_total += late;
                }
                Ok(_) | Err(_) => self.stats.write_errors += 1,
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    fn snapshot(&self) -> WayStats {
        WayStats {
            link: self.link.stats().clone(),
            ..self.stats.clone()
        }
    }
}

// ---------------------------------------------------------------- the emulator

const TUN_A: Token = Token(0);
const TUN_B: Token = Token(1);
const TIMER: Token = Token(2);
const WAKER: Token = Token(3);

/// A running emulator (a thread of its own). Stopped, and its thread joined, on drop.
pub struct Emulator {
    thread: Option<JoinHandle<io::Result<[Tun; 2]>>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    stats: Arc<Mutex<EmulatorStats>>,
    pub seed: u64,
}

impl Emulator {
    /// Starts forwarding between `a` and `b`: what is read from `a` goes through `up` to `b`,
    /// what is read from `b` through `down` to `a`. Random loss is drawn from a generator
    /// seeded with `seed` (the same seed draws the same sequence; which packets it strikes
    /// also depends on what arrives, in real time).
    pub fn start(
        a: Tun,
        b: Tun,
        up: LinkConfig,
        down: LinkConfig,
        seed: u64,
    ) -> io::Result<Emulator> {
        for (way, config) in [("up", &up), ("down", &down)] {
            config.check().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{way} link: {e}"))
            })?;
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EmulatorStats::default()));
        let (stop2, stats2) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("link-emulator".into())
            .spawn(move || {
                let ways = [Way::new(up), Way::new(down)];
                forward(poll, [a, b], ways, seed, &stop2, &stats2)
            })?;
        Ok(Emulator {
            thread: Some(thread),
            stop,
            waker,
            stats,
            seed,
        })
    }

    /// The counters now.
    pub fn stats(&self) -> EmulatorStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the forwarding thread is still running (it ends on an error of a device).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops forwarding (packets still held are dropped) and returns the last counters, or
    /// the error that ended the thread. The devices are closed.
    pub fn stop(self) -> io::Result<EmulatorStats> {
        self.into_parts().map(|(stats, _)| stats)
    }

    /// Stops forwarding, like [`Emulator::stop`], and gives the devices back still open, so
    /// that another emulator can take over without the devices losing their carrier (which
    /// makes the kernel drop what is sent through them until it notices they are back).
    pub fn into_parts(mut self) -> io::Result<(EmulatorStats, [Tun; 2])> {
        let tuns = self.halt()?;
        let tuns = tuns.ok_or_else(|| io::Error::other("the emulator was stopped already"))?;
        Ok((self.stats(), tuns))
    }

    fn halt(&mut self) -> io::Result<Option<[Tun; 2]>> {
        self.stop.store(true, Ordering::Release);
        let woken = self.waker.wake();
        match self.thread.take() {
            Some(t) => {
                woken?;
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("the emulator thread panicked")))
                    .map(Some)
            }
            None => Ok(None),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("link emulator: {e}");
        }
    }
}

/// The emulator's loop: write what is due, read what is there, sleep until the next thing.
/// Returns the devices when told to stop.
fn forward(
    mut poll: Poll,
    tuns: [Tun; 2],
    mut ways: [Way; 2],
    seed: u64,
    stop: &AtomicBool,
    shared: &Mutex<EmulatorStats>,
) -> io::Result<[Tun; 2]> {
    let timer = Timer::new()?;
    let registry = poll.registry();
    for (tun, token) in tuns.iter().zip([TUN_A, TUN_B]) {
        registry.register(
            &mut SourceFd(&tun.file.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
    }
    registry.register(
        &mut SourceFd(&timer.0.as_raw_fd()),
        TIMER,
        Interest::READABLE,
    )?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 65_536];
    let mut events = Events::with_capacity(16);
    // Readiness is edge-triggered: a device stays "readable" until a read says WouldBlock.
    let mut readable = [true, true];
    let mut timer_set_for: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        ways[0].write_due(now, &tuns[1]);
        ways[1].write_due(now, &tuns[0]);
        for (i, way) in ways.iter_mut().enumerate() {
            if readable[i] {
                readable[i] = way.read(&tuns[i], &mut buf, &mut rng)?;
            }
        }
        if let Ok(mut s) = shared.lock() {
            *s = EmulatorStats {
                up: ways[0].snapshot(),
                down: ways[1].snapshot(),
            };
        }
        let next = ways.iter().filter_map(Way::next_due).min();
        let timeout = if readable.contains(&true) {
            Some(Duration::ZERO)
        } else {
            match next {
                Some(due) => {
                    let now = Instant::now();
                    if due <= now {
                        Some(Duration::ZERO)
                    } else {
                        if timer_set_for != Some(due) {
                            timer.set(due - now)?;
                            timer_set_for = Some(due);
                        }
                        None
                    }
                }
                None => None,
            }
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            match event.token() {
                TUN_A => readable[0] = true,
                TUN_B => readable[1] = true,
                TIMER => {
                    timer.clear();
                    timer_set_for = None;
                }
                _ => {}
            }
        }
    }
    Ok(tuns)
}
