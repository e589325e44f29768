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
//! way must be delivered. The lab (shared with tests/relay_lab.rs) is in
//! tests/common/natlab.rs. The "internet" is one bridge in a namespace of its own
//! (198.51.100.0/24); the server is 198.51.100.2; each home is a router namespace with a
//! LAN bridge (192.168.1.0/24 by default). Nothing leaves the namespaces; they are deleted
//! when a test ends, after its processes are killed.
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them); `P2PCHAT_SKIP_NETNS=1`
//! skips it. The cases are separate tests, so the harness runs them in parallel; the idle
//! case (150 s) is the floor of the file's wall time.

mod common;

use std::time::{Duration, Instant};

use common::natlab::*;
use common::netns;
use common::Server;

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
