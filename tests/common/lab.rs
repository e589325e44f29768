//! A lab of three network namespaces in which a client reaches the rest of the lab only
//! through the link emulator and a NAT, as a computer at home reaches the Internet through
//! its access link and its router:
//!
//! ```text
//!   home                         router                                 world
//!   tun0 192.168.77.2 <= emulator => tun0 192.168.77.1
//!   default route: tun0          wan0 10.77.0.2/24 <---- veth ----> eth0 10.77.0.1/24
//!                                forwards, masquerades out of wan0      server, other peers
//! ```
//!
//! The emulator ([`super::emulator`]) joins the two `tun0` devices: `up` is what the home
//! sends (home to router), `down` what it receives. The router forwards and masquerades
//! (nftables), so the world sees the home's traffic as coming from 10.77.0.2, and packets
//! from the world reach the home only as answers to what the home sent first (a client at
//! home must speak first, as behind any NAT). IPv6 is off in all three namespaces, so the
//! only packets through the emulator are the ones the test sends.
//!
//! The TUN devices are persistent (`ip tuntap add`): the emulator attaches to them and can
//! be stopped and started again with other settings ([`Lab::start_emulator`], which hands
//! the open devices over) without touching the addresses or routes. Everything is removed on drop: the emulator first,
//! then the three namespaces (and with them every device, address, route and rule).
//!
//! Shared by file, with `netns.rs` and `emulator.rs` as siblings (see `emulator.rs`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::emulator::{Emulator, EmulatorStats, LinkConfig, Tun};
use super::netns::Netns;

/// The home's address (its only one besides loopback).
pub const HOME: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// The router's address toward the home.
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The router's address toward the world: the address the world sees the home at.
pub const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The world's address, for the server and other peers.
pub const WORLD: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The TUN device's name, in the home and in the router.
pub const TUN: &str = "tun0";
/// The TUN devices' queue of packets waiting for the emulator to read them (the kernel's
/// default for a TUN device is 500; 1,000, its default for Ethernet, absorbs a few more
/// milliseconds of the emulator thread not being scheduled at high packet rates). A packet
/// dropped there never reaches the link model; `bench_link` shows when that happens.
pub const TXQUEUELEN: &str = "1000";

/// The router's rules: masquerade what leaves toward the world.
const NAT: &str = "table ip p2plab {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan0\" masquerade
  }
}
";

/// The lab; see the module documentation. Dropping it removes everything.
pub struct Lab {
    emulator: Option<Emulator>,
    pub home: Netns,
    pub router: Netns,
    pub world: Netns,
}

impl Lab {
    /// Builds the lab, named after `tag` and the process id (so that tests running at once
    /// do not collide), and starts the emulator with `up`, `down` and `seed`. Returns once a
    /// datagram has gone both ways through it, with the emulator's counters at zero.
    pub fn start(tag: &str, up: LinkConfig, down: LinkConfig, seed: u64) -> Result<Lab, String> {
        let mut lab = Lab::build(tag)?;
        lab.start_emulator(LinkConfig::default(), LinkConfig::default(), seed)?;
        lab.probe()?;
        lab.start_emulator(up, down, seed)?;
        Ok(lab)
    }

    /// Waits until the path through the emulator works both ways: a datagram from the home
    /// to a port of the router where nobody listens, and the router's answer (ICMP port
    /// unreachable), each seen by the emulator. A TUN device that has just got its carrier
    /// drops what is sent through it until the kernel has noticed (asynchronously), so the
    /// first packets of a test could otherwise be lost before the link.
    fn probe(&self) -> Result<(), String> {
        let socket = self.home.bind_udp(std::net::SocketAddrV4::new(HOME, 0))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            socket
                .send_to(b"probe", (ROUTER_LAN, 9))
                .map_err(|e| format!("cannot send the probe: {e}"))?;
            std::thread::sleep(Duration::from_millis(20));
            let s = self.stats();
            if s.up.forwarded > 0 && s.down.forwarded > 0 {
                return Ok(());
            }
        }
        Err(format!(
            "nothing went both ways through the emulator within 3 s: {:?}",
            self.stats()
        ))
    }

    /// Builds the lab with no emulator running yet (the home is cut off until
    /// [`Lab::start_emulator`]).
    pub fn build(tag: &str) -> Result<Lab, String> {
        let pid = std::process::id();
        let name = |role: &str| format!("p2plink-{tag}-{role}-{pid}");
        // Each is deleted on drop if a later step fails.
        let lab = Lab {
            emulator: None,
            home: Netns::create(&name("home"))?,
            router: Netns::create(&name("router"))?,
            world: Netns::create(&name("world"))?,
        };
        for ns in [&lab.home, &lab.router, &lab.world] {
            ns.sysctl("ipv6/conf/all/disable_ipv6", "1")?;
            ns.sysctl("ipv6/conf/default/disable_ipv6", "1")?;
        }
        let (home, router, world) = (&lab.home, &lab.router, &lab.world);
        let host = |a: Ipv4Addr| a.to_string();
        let prefix = |a: Ipv4Addr| format!("{a}/24");

        home.ip(&["tuntap", "add", "dev", TUN, "mode", "tun"])?;
        home.ip(&[
            "addr",
            "add",
            &host(HOME),
            "peer",
            &host(ROUTER_LAN),
            "dev",
            TUN,
        ])?;
        home.ip(&["link", "set", TUN, "txqueuelen", TXQUEUELEN, "up"])?;
        home.ip(&["route", "add", "default", "dev", TUN])?;

        router.ip(&["tuntap", "add", "dev", TUN, "mode", "tun"])?;
        router.ip(&[
            "addr",
            "add",
            &host(ROUTER_LAN),
            "peer",
            &host(HOME),
            "dev",
            TUN,
        ])?;
        router.ip(&["link", "set", TUN, "txqueuelen", TXQUEUELEN, "up"])?;
        router.ip(&[
            "link",
            "add",
            "wan0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &world.name,
        ])?;
        router.ip(&["addr", "add", &prefix(ROUTER_WAN), "dev", "wan0"])?;
        router.ip(&["link", "set", "wan0", "up"])?;
        router.sysctl("ipv4/ip_forward", "1")?;
        router.nft(&["-f", "-"], Some(NAT))?;

        world.ip(&["addr", "add", &prefix(WORLD), "dev", "eth0"])?;
        world.ip(&["link", "set", "eth0", "up"])?;
        Ok(lab)
    }

    /// Starts the emulator between the home's and the router's `tun0` (`up`: home to router),
    /// with fresh counters. A running one is stopped first (what it held is dropped) and its
    /// devices are handed over open, so that they never lose their carrier.
    pub fn start_emulator(
        &mut self,
        up: LinkConfig,
        down: LinkConfig,
        seed: u64,
    ) -> Result<(), String> {
        let [home, router] = match self.emulator.take() {
            Some(old) => {
                old.into_parts()
                    .map_err(|e| format!("the emulator failed: {e}"))?
                    .1
            }
            None => {
                let open = |ns: &Netns| Tun::open_in(&ns.name, TUN).map_err(|e| e.to_string());
                [open(&self.home)?, open(&self.router)?]
            }
        };
        let emulator = Emulator::start(home, router, up, down, seed)
            .map_err(|e| format!("cannot start the emulator: {e}"))?;
        self.emulator = Some(emulator);
        Ok(())
    }

    /// The running emulator, if any.
    pub fn emulator(&self) -> Option<&Emulator> {
        self.emulator.as_ref()
    }

    /// The running emulator's counters; panics if none runs, or if it stopped on an error.
    pub fn stats(&self) -> EmulatorStats {
        let emulator = self.emulator.as_ref().expect("no emulator is running");
        assert!(emulator.is_running(), "the emulator thread has stopped");
        emulator.stats()
    }

    /// Stops the emulator and returns its last counters, or why it failed.
    pub fn stop_emulator(&mut self) -> Result<EmulatorStats, String> {
        let emulator = self.emulator.take().ok_or("no emulator is running")?;
        emulator
            .stop()
            .map_err(|e| format!("the emulator failed: {e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Before the namespaces go (the fields are dropped after this, in order).
        drop(self.emulator.take());
    }
}
