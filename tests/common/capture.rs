//! A packet capture inside a network namespace: an `AF_PACKET` socket opened there (so it
//! sees every interface of that namespace, loopback included, and nothing of the host),
//! read on a thread until stopped. It keeps no packets, only what the tests ask about: how
//! many IPv4 UDP datagrams passed, per interface, how many of them were TURN ChannelData
//! (the relayed datagrams) and their bytes, and in which datagrams any of a list of marker
//! byte strings appeared.
//!
//! Needs root (as the namespaces do). Uses nothing but std and libc.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::netns::Netns;

/// A UDP datagram in which a marker was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Which marker (index into the list given to [`Capture::start`]).
    pub marker: usize,
    /// The interface's name in the captured namespace.
    pub interface: String,
    pub src: std::net::SocketAddrV4,
    pub dst: std::net::SocketAddrV4,
}

/// What a capture saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Every frame read (any protocol, any interface).
    pub frames: u64,
    /// IPv4 UDP datagrams, per interface name.
    pub udp: std::collections::BTreeMap<String, u64>,
    /// Of those, TURN ChannelData messages (first byte 0x40..=0x4f, from or to the TURN
    /// port): the relayed datagrams, per interface.
    pub channel_data: std::collections::BTreeMap<String, u64>,
    /// Their UDP payload bytes, per interface.
    pub channel_bytes: std::collections::BTreeMap<String, u64>,
    pub hits: Vec<Hit>,
    /// Frames the kernel dropped because the reader was behind (`PACKET_STATISTICS`).
    pub dropped: u64,
}

/// A running capture; [`Capture::stop`] ends it and returns what it saw.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Report>>,
    fd: Arc<OwnedFd>,
}

impl Capture {
    /// Opens an `AF_PACKET` socket in `ns` and starts reading. `turn_port` is the TURN
    /// server's port (3478): a datagram from or to it whose payload starts with a byte
    /// 0x40..=0x4f is counted as ChannelData. `markers` are searched for in every UDP
    /// datagram (headers included).
    pub fn start(ns: &Netns, turn_port: u16, markers: Vec<Vec<u8>>) -> Result<Capture, String> {
        let fd = ns
            .enter(|| {
                // SOCK_DGRAM: the link-layer header taken off (veth and lo alike); every
                // protocol, to see IPv4 on any interface.
                let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
                // SAFETY: a plain socket(2) call; the descriptor is owned at once.
                let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `raw` is a fresh descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            })
            .map_err(|e| format!("cannot open a packet socket in {}: {e}", ns.name))?;
        set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20)?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: setsockopt reads a timeval that lives for the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
        }
        let names = interface_names(ns)?;
        let fd = Arc::new(fd);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (fd, stop) = (Arc::clone(&fd), Arc::clone(&stop));
            std::thread::spawn(move || read_loop(&fd, &stop, turn_port, &markers, &names))
        };
        Ok(Capture {
            stop,
            thread: Some(thread),
            fd,
        })
    }

    /// Stops reading (after what is queued has been read) and returns the report.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = self
            .thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the capture thread panicked");
        report.dropped = dropped(&self.fd);
        report
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<(), String> {
    // SAFETY: setsockopt reads an int that lives for the call, on an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!("setsockopt: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Frames dropped by the kernel on this socket (and resets the count).
fn dropped(fd: &OwnedFd) -> u64 {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `stats`, which lives for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if r == 0 {
        u64::from(stats.tp_drops)
    } else {
        0
    }
}

/// Interface index to name, in `ns` (`ip -o link`).
fn interface_names(ns: &Netns) -> Result<Vec<(i32, String)>, String> {
    let out = ns.ip(&["-o", "link"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(": ");
            let index = parts.next()?.trim().parse().ok()?;
            let name = parts.next()?.split('@').next()?.to_string();
            Some((index, name))
        })
        .collect())
}

fn read_loop(
    fd: &OwnedFd,
    stop: &AtomicBool,
    turn_port: u16,
    markers: &[Vec<u8>],
    names: &[(i32, String)],
) -> Report {
    let mut report = Report::default();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: an all-zero sockaddr_ll is a valid value to be overwritten.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom writes at most buf.len() bytes into buf and at most from_len
        // bytes into `from`, both alive for the call.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            // The read timeout: stop once asked and nothing more is queued.
            if stop.load(Ordering::Relaxed) {
                return report;
            }
            continue;
        }
        report.frames += 1;
        if u16::from_be(from.sll_protocol) != libc::ETH_P_IP as u16 {
            continue;
        }
        let interface = names
            .iter()
            .find(|(i, _)| *i == from.sll_ifindex)
            .map_or_else(|| format!("if{}", from.sll_ifindex), |(_, n)| n.clone());
        look_at(
            &buf[..n as usize],
            &interface,
            turn_port,
            markers,
            &mut report,
        );
    }
}

/// Counts one IPv4 packet (a UDP datagram, or nothing).
fn look_at(ip: &[u8], interface: &str, turn_port: u16, markers: &[Vec<u8>], report: &mut Report) {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip.len() < ihl + 8 {
        return;
    }
    let addr = |a: &[u8]| std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    let udp = &ip[ihl..];
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    let src = std::net::SocketAddrV4::new(addr(&ip[12..16]), src_port);
    let dst = std::net::SocketAddrV4::new(addr(&ip[16..20]), dst_port);
    let payload = &udp[8..];
    *report.udp.entry(interface.to_string()).or_default() += 1;
    if (src_port == turn_port || dst_port == turn_port)
        && matches!(payload.first(), Some(0x40..=0x4f))
    {
        *report
            .channel_data
            .entry(interface.to_string())
            .or_default() += 1;
        *report
            .channel_bytes
            .entry(interface.to_string())
            .or_default() += payload.len() as u64;
    }
    for (i, marker) in markers.iter().enumerate() {
        if !marker.is_empty() && ip.windows(marker.len()).any(|w| w == marker.as_slice()) {
            report.hits.push(Hit {
                marker: i,
                interface: interface.to_string(),
                src,
                dst,
            });
        }
    }
}

/// How long a test should wait after its last packet before stopping a capture: the
/// reader may be behind.
pub const DRAIN: Duration = Duration::from_millis(200);
