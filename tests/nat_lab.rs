//! The NAT lab: the real server and real clients (`--json`) in network namespaces, behind
//! home routers made of nftables (masquerade, and a forward chain that lets in only replies,
//! like a home router; "symmetric" routers masquerade with `random`, a new port for every
//! destination), through the shapes of issue 12:
//!
//! - a flat LAN; one NAT, both directions; two NATs with fresh clients, either side first;
//!   the same NAT without hairpin; two homes with the same private range (and a stranger
//!   at the address of the peer's LAN candidate); a symmetric NAT on one side, both
//!   directions; both sides symmetric (a clear `no_path` within 15 s); an IPv6 LAN; a
//!   session idle for 150 s behind NATs whose conntrack UDP timeouts are 30 s.
//!
//! Every connect must complete within 5 s with `--retry-interval 1`, and a message each
//! way must be delivered. The "internet" is one bridge in a namespace of its own
//! (198.51.100.0/24); the server is 198.51.100.2; each home is a router namespace with a
//! LAN bridge (192.168.1.0/24 by default). Nothing leaves the namespaces; they are deleted
//! when a test ends, after its processes are killed.
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them); `P2PCHAT_SKIP_NETNS=1`
//! skips it. The cases are separate tests, so the harness runs them in parallel; the idle
//! case (150 s) is the floor of the file's wall time.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::netns::{self, Netns};
use common::{JsonClient, Server};
use p2pchat::wire::ClientId;

const SERVER_IP: &str = "198.51.100.2";
const SERVER: &str = "198.51.100.2:7070";
/// What every connect must take at most.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- the lab

/// How a home router maps ports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nat {
    /// Linux masquerade: keeps the source port when it can, for every destination
    /// (endpoint-independent mapping); lets in only replies (address and port dependent
    /// filtering).
    Home,
    /// `masquerade random`: a new random port for every destination ("symmetric").
    Symmetric,
}

/// The namespaces of one test: the internet bridge, the server, routers and hosts. The
/// hosts and routers are dropped (deleted) before the internet namespace.
struct Lab {
    tag: String,
    nets: Vec<Netns>,
    inet: Netns,
    links: usize,
}

/// A home: the router's namespace (by index in `Lab::nets`) and its LAN prefix.
#[derive(Clone)]
struct Home {
    router: usize,
    prefix: String,
}

impl Lab {
    /// The internet and the server's namespace (with the server's address), or `None`
    /// when the tests are skipped.
    fn new(tag: &str) -> Option<Lab> {
        if netns::skipped("nat_lab") {
            return None;
        }
        let tag = format!("{tag}{}", std::process::id());
        let inet = netns::require("nat_lab", Netns::create(&format!("nl-{tag}-inet")));
        let mut lab = Lab {
            tag,
            nets: Vec::new(),
            inet,
            links: 0,
        };
        netns::require("nat_lab", lab.setup_inet());
        Some(lab)
    }

    fn setup_inet(&mut self) -> Result<(), String> {
        self.inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        self.inet.ip(&["link", "set", "br0", "up"])?;
        self.public_host("srv", SERVER_IP)?;
        Ok(())
    }

    /// A new namespace of this lab.
    fn netns(&mut self, what: &str) -> Result<usize, String> {
        let ns = Netns::create(&format!("nl-{}-{what}", self.tag))?;
        self.nets.push(ns);
        Ok(self.nets.len() - 1)
    }

    /// A veth from `ns` (as `dev`) to the bridge `bridge` of namespace `on`.
    fn plug(
        &mut self,
        ns: usize,
        dev: &str,
        on: Option<usize>,
        bridge: &str,
    ) -> Result<(), String> {
        self.links += 1;
        let outer = format!("v{}", self.links);
        let peer_ns = self.nets[ns].name.clone();
        let host = match on {
            Some(i) => &self.nets[i],
            None => &self.inet,
        };
        host.ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", dev, "netns", &peer_ns,
        ])?;
        host.ip(&["link", "set", &outer, "master", bridge, "up"])?;
        self.nets[ns].ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// A host on the internet at `ip` (/24).
    fn public_host(&mut self, what: &str, ip: &str) -> Result<usize, String> {
        let ns = self.netns(what)?;
        self.plug(ns, "eth0", None, "br0")?;
        self.nets[ns].ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        Ok(ns)
    }

    /// A home router at `wan_ip` on the internet, with a LAN `prefix`.1/24 behind it.
    fn home(&mut self, what: &str, wan_ip: &str, prefix: &str, nat: Nat) -> Result<Home, String> {
        let r = self.netns(what)?;
        self.plug(r, "wan", None, "br0")?;
        let router = &self.nets[r];
        router.ip(&["addr", "add", &format!("{wan_ip}/24"), "dev", "wan"])?;
        router.ip(&["link", "add", "lan", "type", "bridge"])?;
        router.ip(&["link", "set", "lan", "up"])?;
        router.ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", "lan"])?;
        router.sysctl("ipv4/ip_forward", "1")?;
        let masquerade = match nat {
            Nat::Home => "masquerade",
            Nat::Symmetric => "masquerade random",
        };
        let rules = format!(
            "table ip natlab {{
  chain nat_post {{ type nat hook postrouting priority srcnat; oifname \"wan\" {masquerade}; }}
  chain filter_forward {{
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
    iifname \"wan\" drop
  }}
  chain filter_input {{
    type filter hook input priority 0; policy accept;
    iifname \"wan\" ct state new drop
  }}
}}
"
        );
        router.nft(&["-f", "-"], Some(&rules))?;
        Ok(Home {
            router: r,
            prefix: prefix.to_string(),
        })
    }

    /// A host at `home.prefix`.`octet` behind `home`'s router.
    fn home_host(&mut self, what: &str, home: &Home, octet: u8) -> Result<usize, String> {
        let ns = self.netns(what)?;
        self.plug(ns, "eth0", Some(home.router), "lan")?;
        let host = &self.nets[ns];
        host.ip(&[
            "addr",
            "add",
            &format!("{}.{octet}/24", home.prefix),
            "dev",
            "eth0",
        ])?;
        host.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("{}.1", home.prefix),
        ])?;
        Ok(ns)
    }

    /// Sets the conntrack UDP timeouts of a router (both kinds) to `secs`.
    fn udp_timeouts(&self, home: &Home, secs: u32) -> Result<(), String> {
        let router = &self.nets[home.router];
        for key in [
            "netfilter/nf_conntrack_udp_timeout",
            "netfilter/nf_conntrack_udp_timeout_stream",
        ] {
            router.sysctl(key, &secs.to_string())?;
        }
        Ok(())
    }

    fn server(&self) -> Server {
        Server::start_via(&self.nets[0].prefix(), SERVER, &[])
    }

    /// A client in namespace `ns`, registered (its id returned with it).
    fn client(&self, ns: usize, name: &str, extra: &[&str]) -> (JsonClient, ClientId) {
        client_at(&self.nets[ns], name, SERVER, "0.0.0.0:0", extra)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts and routers first (their veths go with them), the internet last.
        self.nets.clear();
    }
}

/// A `--json` client in `ns`, registered with `server`.
fn client_at(
    ns: &Netns,
    name: &str,
    server: &str,
    bind: &str,
    extra: &[&str],
) -> (JsonClient, ClientId) {
    let mut args = vec![
        "--server",
        server,
        "--bind",
        bind,
        "--retry-interval",
        "1",
        "--no-state",
    ];
    args.extend_from_slice(extra);
    let mut c = JsonClient::spawn_via(name, &ns.prefix(), &args);
    let v = c.wait_event_within(Duration::from_secs(10), "registered", |v| {
        v["event"] == "registered" || v["event"] == "error"
    });
    assert_eq!(
        v["event"],
        "registered",
        "{name}: {v}; {:?}",
        c.proc.stderr()
    );
    let id = v["id"].as_u64().expect("an id") as ClientId;
    (c, id)
}

// ---------------------------------------------------------------- what every case checks

/// `asker` connects to `asked`, which accepts; within [`CONNECT_WITHIN`]. Returns the two
/// `connected` events (asker's, asked's).
fn connect(
    asker: &mut JsonClient,
    asker_id: ClientId,
    asked: &mut JsonClient,
    asked_id: ClientId,
) -> (Value, Value) {
    let started = Instant::now();
    asker.type_line(&format!("connect {asked_id}"));
    asked.wait_event_within(CONNECT_WITHIN, "request", |v| {
        v["event"] == "request" && v["from"] == asker_id
    });
    asked.type_line(&format!("accept {asker_id}"));
    let left = CONNECT_WITHIN.saturating_sub(started.elapsed());
    let theirs = asked.wait_event_within(left, "connected", |v| v["event"] == "connected");
    let left = CONNECT_WITHIN.saturating_sub(started.elapsed());
    let ours = asker.wait_event_within(left, "connected", |v| v["event"] == "connected");
    println!(
        "{} -> {}: connected in {:?}: {ours} / {theirs}",
        asker.name,
        asked.name,
        started.elapsed()
    );
    (ours, theirs)
}

/// One message each way, delivered.
fn exchange(a: &mut JsonClient, a_id: ClientId, b: &mut JsonClient, b_id: ClientId) {
    one_way(a, a_id, b, b_id);
    one_way(b, b_id, a, a_id);
}

/// A message from `from` to `to`, shown there and delivered.
fn one_way(from: &mut JsonClient, from_id: ClientId, to: &mut JsonClient, to_id: ClientId) {
    let within = Duration::from_secs(5);
    let text = format!("hello from {} to {}", from.name, to.name);
    from.type_line(&format!("send @{to_id} {text}"));
    to.wait_event_within(within, "message", |v| {
        v["event"] == "message" && v["from"] == from_id && v["text"] == text
    });
    from.wait_event_within(within, "delivered", |v| {
        v["event"] == "delivered" && v["peer"] == to_id
    });
}

/// Ends the session of `a` with `b`, and waits until both have seen it end.
fn hang_up(a: &mut JsonClient, b_id: ClientId, b: &mut JsonClient) {
    a.type_line(&format!("terminate {b_id}"));
    let within = Duration::from_secs(5);
    a.wait_event_within(within, "terminated", |v| v["event"] == "terminated");
    b.wait_event_within(within, "terminated", |v| v["event"] == "terminated");
}

fn path(v: &Value) -> &str {
    v["path"].as_str().unwrap_or("")
}

fn addr_ip(v: &Value) -> String {
    let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    addr.ip().to_string()
}

// ---------------------------------------------------------------- the cases

#[test]
fn on_a_flat_lan_peers_connect_directly() {
    let Some(mut lab) = Lab::new("flat") else {
        return;
    };
    let ha = netns::require("nat_lab", lab.public_host("a", "198.51.100.10"));
    let hb = netns::require("nat_lab", lab.public_host("b", "198.51.100.11"));
    let _server = lab.server();
    let (mut a, ia) = lab.client(ha, "A", &[]);
    let (mut b, ib) = lab.client(hb, "B", &[]);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("direct", "direct"));
    assert_eq!(addr_ip(&ours), "198.51.100.11");
    assert_eq!(addr_ip(&theirs), "198.51.100.10");
    exchange(&mut a, ia, &mut b, ib);
}

#[test]
fn behind_one_nat_both_directions_connect() {
    let Some(mut lab) = Lab::new("one") else {
        return;
    };
    let home = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Home),
    );
    let ha = netns::require("nat_lab", lab.home_host("a", &home, 2));
    let hb = netns::require("nat_lab", lab.public_host("b", "198.51.100.11"));
    let _server = lab.server();
    let (mut a, ia) = lab.client(ha, "A", &[]);
    let (mut b, ib) = lab.client(hb, "B", &[]);
    // The public side asks the one behind the NAT: the case that failed before.
    let (ours, theirs) = connect(&mut b, ib, &mut a, ia);
    assert_eq!(path(&ours), "punched", "{ours}");
    assert_eq!(addr_ip(&ours), "198.51.100.20");
    assert_eq!(path(&theirs), "direct", "{theirs}");
    exchange(&mut a, ia, &mut b, ib);
    hang_up(&mut b, ia, &mut a);
    // And the other way.
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("direct", "punched"));
    exchange(&mut a, ia, &mut b, ib);
}

/// Two homes, a fresh pair of clients in each direction (nothing was sent between them
/// before the connect).
#[test]
fn behind_two_nats_fresh_clients_connect_whoever_asks_first() {
    let Some(mut lab) = Lab::new("two") else {
        return;
    };
    let h1 = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Home),
    );
    let h2 = netns::require(
        "nat_lab",
        lab.home("r2", "198.51.100.21", "10.0.7", Nat::Home),
    );
    let hosts: Vec<usize> = [(&h1, 2), (&h2, 2), (&h1, 3), (&h2, 3)]
        .into_iter()
        .enumerate()
        .map(|(i, (h, o))| netns::require("nat_lab", lab.home_host(&format!("h{i}"), h, o)))
        .collect();
    let _server = lab.server();
    for (first, (x, y)) in [(hosts[0], hosts[1]), (hosts[3], hosts[2])]
        .into_iter()
        .enumerate()
    {
        let (mut a, ia) = lab.client(x, &format!("A{first}"), &[]);
        let (mut b, ib) = lab.client(y, &format!("B{first}"), &[]);
        let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
        assert_eq!((path(&ours), path(&theirs)), ("punched", "punched"));
        exchange(&mut a, ia, &mut b, ib);
    }
}

#[test]
fn behind_the_same_nat_without_hairpin_peers_connect_on_the_lan() {
    let Some(mut lab) = Lab::new("same") else {
        return;
    };
    let home = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Home),
    );
    let ha = netns::require("nat_lab", lab.home_host("a", &home, 2));
    let hb = netns::require("nat_lab", lab.home_host("b", &home, 3));
    let _server = lab.server();
    let (mut a, ia) = lab.client(ha, "A", &[]);
    let (mut b, ib) = lab.client(hb, "B", &[]);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("lan", "lan"));
    assert_eq!(addr_ip(&ours), "192.168.1.3");
    assert_eq!(addr_ip(&theirs), "192.168.1.2");
    exchange(&mut a, ia, &mut b, ib);
}

/// Both homes use 192.168.1.0/24. B (192.168.1.3:40000 in home 2) tells its LAN address;
/// in A's home, a stranger running p2pchat is at that very address. A must reach B
/// through the NATs, and the stranger must get no request.
#[test]
fn two_homes_with_the_same_private_range_never_reach_a_stranger() {
    let Some(mut lab) = Lab::new("range") else {
        return;
    };
    let h1 = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Home),
    );
    let h2 = netns::require(
        "nat_lab",
        lab.home("r2", "198.51.100.21", "192.168.1", Nat::Home),
    );
    let ha = netns::require("nat_lab", lab.home_host("a", &h1, 2));
    let hs = netns::require("nat_lab", lab.home_host("s", &h1, 3));
    let hb = netns::require("nat_lab", lab.home_host("b", &h2, 3));
    let _server = lab.server();
    let (mut a, ia) = lab.client(ha, "A", &[]);
    let (mut s, _) = client_at(&lab.nets[hs], "stranger", SERVER, "0.0.0.0:40000", &[]);
    let (mut b, ib) = client_at(&lab.nets[hb], "B", SERVER, "0.0.0.0:40000", &[]);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("punched", "punched"));
    assert_eq!(addr_ip(&ours), "198.51.100.21");
    exchange(&mut a, ia, &mut b, ib);
    s.read_for(Duration::from_millis(500));
    assert!(
        s.log.iter().all(|v| v["event"] == "registered"),
        "the stranger heard of it: {:#?}",
        s.log
    );
}

#[test]
fn a_symmetric_nat_on_one_side_connects_both_directions() {
    let Some(mut lab) = Lab::new("sym") else {
        return;
    };
    let home = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Symmetric),
    );
    let ha = netns::require("nat_lab", lab.home_host("a", &home, 2));
    let hb = netns::require("nat_lab", lab.public_host("b", "198.51.100.11"));
    let server = lab.server();
    let (mut a, ia) = lab.client(ha, "A", &[]);
    let registered = server.expect_join(ia);
    let (mut b, ib) = lab.client(hb, "B", &[]);
    let (ours, theirs) = connect(&mut b, ib, &mut a, ia);
    assert_eq!((path(&ours), path(&theirs)), ("punched", "direct"));
    // The NAT changed ports: B reaches A at another port than the server sees.
    assert_ne!(ours["addr"], registered.to_string(), "not a symmetric NAT");
    exchange(&mut a, ia, &mut b, ib);
    hang_up(&mut a, ib, &mut b);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("direct", "punched"));
    assert_ne!(
        theirs["addr"],
        registered.to_string(),
        "not a symmetric NAT"
    );
    exchange(&mut a, ia, &mut b, ib);
}

#[test]
fn both_symmetric_says_there_is_no_direct_path_within_15_s() {
    let Some(mut lab) = Lab::new("both") else {
        return;
    };
    let h1 = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Symmetric),
    );
    let h2 = netns::require(
        "nat_lab",
        lab.home("r2", "198.51.100.21", "10.0.7", Nat::Symmetric),
    );
    let ha = netns::require("nat_lab", lab.home_host("a", &h1, 2));
    let hb = netns::require("nat_lab", lab.home_host("b", &h2, 2));
    let _server = lab.server();
    let (mut a, _) = lab.client(ha, "A", &[]);
    let (mut b, ib) = lab.client(hb, "B", &[]);
    let started = Instant::now();
    a.type_line(&format!("connect {ib}"));
    let v = a.wait_event_within(Duration::from_secs(15), "no_path", |v| {
        v["event"] == "no_path" || v["event"] == "connected" || v["event"] == "no_answer"
    });
    assert_eq!(v["event"], "no_path", "{v}");
    assert_eq!(v["peer"], ib);
    println!("no_path after {:?}", started.elapsed());
    b.read_for(Duration::from_millis(200));
    assert!(b.events("request").is_empty(), "{:#?}", b.log);
}

#[test]
fn on_an_ipv6_lan_peers_connect_directly() {
    let Some(mut lab) = Lab::new("six") else {
        return;
    };
    let ha = netns::require("nat_lab", lab.public_host("a", "198.51.100.10"));
    let hb = netns::require("nat_lab", lab.public_host("b", "198.51.100.11"));
    for (ns, ip) in [(0, "fd00:7::2"), (ha, "fd00:7::10"), (hb, "fd00:7::11")] {
        netns::require(
            "nat_lab",
            lab.nets[ns].ip(&["addr", "add", &format!("{ip}/64"), "dev", "eth0", "nodad"]),
        );
    }
    let server = Server::start_via(&lab.nets[0].prefix(), "[fd00:7::2]:7070", &[]);
    let (mut a, ia) = client_at(&lab.nets[ha], "A", "[fd00:7::2]:7070", "[::]:0", &[]);
    let (mut b, ib) = client_at(&lab.nets[hb], "B", "[fd00:7::2]:7070", "[::]:0", &[]);
    let (ours, theirs) = connect(&mut a, ia, &mut b, ib);
    assert_eq!((path(&ours), path(&theirs)), ("direct", "direct"));
    assert_eq!(addr_ip(&ours), "fd00:7::11");
    exchange(&mut a, ia, &mut b, ib);
    drop(server);
}

/// NATs that forget an idle UDP mapping after 30 s: a session left idle for 150 s still
/// delivers, each way (its keepalives keep the mappings).
#[test]
fn a_session_idle_for_150_s_behind_nats_that_forget_after_30_s_still_delivers() {
    let Some(mut lab) = Lab::new("idle") else {
        return;
    };
    let h1 = netns::require(
        "nat_lab",
        lab.home("r1", "198.51.100.20", "192.168.1", Nat::Home),
    );
    let h2 = netns::require(
        "nat_lab",
        lab.home("r2", "198.51.100.21", "10.0.7", Nat::Home),
    );
    for h in [&h1, &h2] {
        netns::require("nat_lab", lab.udp_timeouts(h, 30));
    }
    let ha = netns::require("nat_lab", lab.home_host("a", &h1, 2));
    let hb = netns::require("nat_lab", lab.home_host("b", &h2, 2));
    let _server = lab.server();
    let (mut a, ia) = lab.client(ha, "A", &[]);
    let (mut b, ib) = lab.client(hb, "B", &[]);
    connect(&mut a, ia, &mut b, ib);
    exchange(&mut a, ia, &mut b, ib);
    std::thread::sleep(Duration::from_secs(150));
    exchange(&mut a, ia, &mut b, ib);
    for c in [&a, &b] {
        assert!(
            c.events("terminated").is_empty(),
            "{}: {:#?}",
            c.name,
            c.log
        );
    }
}
