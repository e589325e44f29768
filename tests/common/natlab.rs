//! The NAT lab of `tests/nat_lab.rs` and `tests/relay_lab.rs`: the real server and real
//! clients (`--json`) in network namespaces, behind home routers made of nftables
//! (masquerade, and a forward chain that lets in only replies, like a home router;
//! "symmetric" routers masquerade with `random`, a new port for every destination).
//!
//! The "internet" is one bridge in a namespace of its own (198.51.100.0/24); the server is
//! 198.51.100.2; each home is a router namespace with a LAN bridge (192.168.1.0/24 by
//! default). Nothing leaves the namespaces; they are deleted when the [`Lab`] is dropped,
//! after the test's processes (declare them after the lab, so that they drop first).
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them); `P2PCHAT_SKIP_NETNS=1`
//! skips the tests that use it. Shared by file, with `netns.rs` as a sibling.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::{self, Netns};
use super::{JsonClient, Server};
use p2pchat::wire::ClientId;

pub const SERVER_IP: &str = "198.51.100.2";
pub const SERVER: &str = "198.51.100.2:7070";
/// What every connect must take at most.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- the lab

/// How a home router maps ports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Linux masquerade: keeps the source port when it can, for every destination
    /// (endpoint-independent mapping); lets in only replies (address and port dependent
    /// filtering).
    Home,
    /// `masquerade random`: a new random port for every destination ("symmetric").
    Symmetric,
}

/// The namespaces of one test: the internet bridge, the server, routers and hosts. The
/// hosts and routers are dropped (deleted) before the internet namespace.
pub struct Lab {
    /// The test file, for the skip and failure lines (`nat_lab`).
    test: &'static str,
    tag: String,
    pub nets: Vec<Netns>,
    pub inet: Netns,
    links: usize,
}

/// A home: the router's namespace (by index in `Lab::nets`) and its LAN prefix.
#[derive(Clone)]
pub struct Home {
    pub router: usize,
    pub prefix: String,
}

impl Lab {
    /// The internet and the server's namespace (with the server's address), or `None`
    /// when the tests are skipped. For `tests/nat_lab.rs`; see [`Lab::for_test`].
    pub fn new(tag: &str) -> Option<Lab> {
        Lab::for_test("nat_lab", tag)
    }

    /// [`Lab::new`] for the test file `test` (named in the skip and failure lines); `tag`
    /// names the namespaces (`nl-TAG.PID-...`), unique among the tests that run at once.
    pub fn for_test(test: &'static str, tag: &str) -> Option<Lab> {
        if netns::skipped(test) {
            return None;
        }
        let tag = format!("{tag}{}", std::process::id());
        let inet = netns::require(test, Netns::create(&format!("nl-{tag}-inet")));
        let mut lab = Lab {
            test,
            tag,
            nets: Vec::new(),
            inet,
            links: 0,
        };
        netns::require(test, lab.setup_inet());
        Some(lab)
    }

    fn setup_inet(&mut self) -> Result<(), String> {
        self.inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        self.inet.ip(&["link", "set", "br0", "up"])?;
        self.public_host("srv", SERVER_IP)?;
        Ok(())
    }

    /// A new namespace of this lab.
    pub fn netns(&mut self, what: &str) -> Result<usize, String> {
        let ns = Netns::create(&format!("nl-{}-{what}", self.tag))?;
        self.nets.push(ns);
        Ok(self.nets.len() - 1)
    }

    /// A veth from `ns` (as `dev`) to the bridge `bridge` of namespace `on`.
    pub fn plug(
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
    pub fn public_host(&mut self, what: &str, ip: &str) -> Result<usize, String> {
        let ns = self.netns(what)?;
        self.plug(ns, "eth0", None, "br0")?;
        self.nets[ns].ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        Ok(ns)
    }

    /// A home router at `wan_ip` on the internet, with a LAN `prefix`.1/24 behind it.
    pub fn home(
        &mut self,
        what: &str,
        wan_ip: &str,
        prefix: &str,
        nat: Nat,
    ) -> Result<Home, String> {
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
    pub fn home_host(&mut self, what: &str, home: &Home, octet: u8) -> Result<usize, String> {
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
    pub fn udp_timeouts(&self, home: &Home, secs: u32) -> Result<(), String> {
        let router = &self.nets[home.router];
        for key in [
            "netfilter/nf_conntrack_udp_timeout",
            "netfilter/nf_conntrack_udp_timeout_stream",
        ] {
            router.sysctl(key, &secs.to_string())?;
        }
        Ok(())
    }

    pub fn server(&self) -> Server {
        self.server_with(&[])
    }

    /// The server with `extra` flags (`--turn ...`).
    pub fn server_with(&self, extra: &[&str]) -> Server {
        Server::start_via(&self.nets[0].prefix(), SERVER, extra)
    }

    /// A client in namespace `ns`, registered (its id returned with it).
    pub fn client(&self, ns: usize, name: &str, extra: &[&str]) -> (JsonClient, ClientId) {
        client_at(&self.nets[ns], name, SERVER, "0.0.0.0:0", extra)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts and routers first (their veths go with them), the internet last.
        self.nets.clear();
    }
}

/// A `--json` client in `ns`, registered with `server`; `--retry-interval 1` unless
/// `extra` gives another.
pub fn client_at(
    ns: &Netns,
    name: &str,
    server: &str,
    bind: &str,
    extra: &[&str],
) -> (JsonClient, ClientId) {
    let mut args = vec!["--server", server, "--bind", bind, "--no-state"];
    if !extra.contains(&"--retry-interval") {
        args.extend_from_slice(&["--retry-interval", "1"]);
    }
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
pub fn connect(
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
pub fn exchange(a: &mut JsonClient, a_id: ClientId, b: &mut JsonClient, b_id: ClientId) {
    one_way(a, a_id, b, b_id);
    one_way(b, b_id, a, a_id);
}

/// A message from `from` to `to`, shown there and delivered.
pub fn one_way(from: &mut JsonClient, from_id: ClientId, to: &mut JsonClient, to_id: ClientId) {
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
pub fn hang_up(a: &mut JsonClient, b_id: ClientId, b: &mut JsonClient) {
    a.type_line(&format!("terminate {b_id}"));
    let within = Duration::from_secs(5);
    a.wait_event_within(within, "terminated", |v| v["event"] == "terminated");
    b.wait_event_within(within, "terminated", |v| v["event"] == "terminated");
}

pub fn path(v: &Value) -> &str {
    v["path"].as_str().unwrap_or("")
}

pub fn addr_ip(v: &Value) -> String {
    let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    addr.ip().to_string()
}
