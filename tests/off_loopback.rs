//! The real binaries off loopback, on small LANs of network namespaces: what a new user
//! gets with default flags, from a server with several addresses, from a dual-stack
//! server, and when a send fails.
//!
//! Each test builds its own LAN: a hub namespace with a bridge, and one namespace per host,
//! joined to the bridge by a veth pair. Hosts have only their LAN addresses (and loopback),
//! no default route; nothing leaves the namespaces. Needs root, iproute2 (and nftables, as
//! every namespace test here); without them a test fails with one line saying why, unless
//! `P2PCHAT_SKIP_NETNS=1` says to skip.

mod common;

use std::time::{Duration, Instant};

use common::netns::{self, Netns};
use common::{JsonClient, Proc, Server};

/// A bridge in a hub namespace, and hosts on it.
struct Lan {
    hosts: Vec<Netns>,
    // Dropped last: the hosts' veth ends go with their namespaces, the bridge with the hub.
    _hub: Netns,
}

/// A host: its namespace's short name and its addresses (with prefix length, IPv6 too).
struct Host<'a> {
    name: &'a str,
    addrs: &'a [&'a str],
}

impl Lan {
    fn build(test: &str, hosts: &[Host]) -> Result<Lan, String> {
        let tag = format!("{}-{}", test, std::process::id());
        let hub = Netns::create(&format!("p2p-{tag}-hub"))?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut made = Vec::new();
        for (k, h) in hosts.iter().enumerate() {
            let ns = Netns::create(&format!("p2p-{tag}-{}", h.name))?;
            // IPv6 addresses are usable at once, without duplicate address detection.
            ns.sysctl("ipv6/conf/default/accept_dad", "0")?;
            let port = format!("h{k}");
            hub.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ])?;
            hub.ip(&["link", "set", &port, "master", "br0", "up"])?;
            for a in h.addrs {
                let mut args = vec!["addr", "add", a, "dev", "eth0"];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", "eth0", "up"])?;
            made.push(ns);
        }
        Ok(Lan {
            hosts: made,
            _hub: hub,
        })
    }

    fn host(&self, k: usize) -> &Netns {
        &self.hosts[k]
    }
}

/// The LAN, or `None` when `P2PCHAT_SKIP_NETNS=1` says to skip.
fn lan(test: &str, hosts: &[Host]) -> Option<Lan> {
    if netns::skipped(test) {
        return None;
    }
    Some(netns::require(test, Lan::build(test, hosts)))
}

const WAIT: Duration = Duration::from_secs(5);

/// A `--json` client in `ns` with short resend periods and `args`.
fn client(ns: &Netns, name: &str, args: &[&str]) -> JsonClient {
    let mut all = vec!["--no-state", "--retry-interval", "1"];
    all.extend_from_slice(args);
    JsonClient::spawn_via(name, &ns.prefix(), &all)
}

/// Waits for the client's registration; returns its id.
fn registered(c: &mut JsonClient) -> u64 {
    let v = c.wait_event_within(WAIT, "registered", |v| {
        v["event"] == "registered" || v["event"] == "error"
    });
    assert_eq!(
        v["event"],
        "registered",
        "{}: {v}; {:?}",
        c.name,
        c.proc.stderr()
    );
    v["id"].as_u64().expect("an id")
}

/// `a` connects to `b` (id `b_id`), `b` accepts, and a message goes each way; every step
/// within [`WAIT`].
fn connect_and_chat(a: &mut JsonClient, b: &mut JsonClient, a_id: u64, b_id: u64) {
    let started = Instant::now();
    a.type_line(&format!("connect {b_id}"));
    b.wait_event_within(WAIT, "the request", |v| {
        v["event"] == "request" && v["from"] == a_id
    });
    b.type_line(&format!("accept {a_id}"));
    for (c, peer) in [(&mut *a, b_id), (&mut *b, a_id)] {
        c.wait_event_within(WAIT, "connected", |v| {
            v["event"] == "connected" && v["peer"] == peer
        });
    }
    println!("connected in {:?}", started.elapsed());
    a.type_line("send hello from a");
    b.wait_event_within(WAIT, "a's message", |v| {
        v["event"] == "message" && v["text"] == "hello from a"
    });
    b.type_line("send hello from b");
    a.wait_event_within(WAIT, "b's message", |v| {
        v["event"] == "message" && v["text"] == "hello from b"
    });
    for c in [&mut *a, &mut *b] {
        c.wait_until(WAIT, "delivered", |log| {
            common::events_named(log, "delivered").len() == 1
        });
        for bad in ["send_failed", "error", "no_answer"] {
            assert!(
                c.events(bad).is_empty(),
                "{}: {bad} in {:#?}",
                c.name,
                c.log
            );
        }
    }
}

fn leave(c: &mut JsonClient) {
    c.type_line("leave");
    assert!(c.wait_exit().success(), "{}: {:#?}", c.name, c.log);
}

/// The addresses of the server's printed table.
fn table_addrs(server: &Server, clients: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = server.expect_table();
        if rows.len() == clients {
            return rows.iter().map(|(_, a)| a.to_string()).collect();
        }
        assert!(Instant::now() < deadline, "no table of {clients} clients");
    }
}

#[test]
fn default_flags_on_a_lan() {
    let Some(lan) = lan(
        "lan-defaults",
        &[
            Host {
                name: "srv",
                addrs: &["10.81.0.1/24"],
            },
            Host {
                name: "a",
                addrs: &["10.81.0.2/24"],
            },
            Host {
                name: "b",
                addrs: &["10.81.0.3/24"],
            },
        ],
    ) else {
        return;
    };
    let server = Server::start_via(&lan.host(0).prefix(), "10.81.0.1:7070", &[]);
    // No --bind: the clients bind 0.0.0.0 and reach the server and each other.
    let mut a = client(lan.host(1), "A", &["--server", "10.81.0.1:7070"]);
    let a_id = registered(&mut a);
    let mut b = client(lan.host(2), "B", &["--server", "10.81.0.1:7070"]);
    let b_id = registered(&mut b);
    let addrs = table_addrs(&server, 2);
    assert!(
        addrs.iter().any(|a| a.starts_with("10.81.0.2:"))
            && addrs.iter().any(|a| a.starts_with("10.81.0.3:")),
        "{addrs:?}"
    );
    connect_and_chat(&mut a, &mut b, a_id, b_id);
    leave(&mut a);
    leave(&mut b);
}

#[test]
fn a_loopback_bind_with_a_lan_server_is_refused_at_start_with_what_to_use() {
    let Some(lan) = lan(
        "lan-loopbind",
        &[Host {
            name: "a",
            addrs: &["10.82.0.2/24"],
        }],
    ) else {
        return;
    };
    let mut p = Proc::spawn_via(
        &lan.host(0).prefix(),
        &[
            "client",
            "--no-state",
            "--server",
            "10.82.0.1:7070",
            "--bind",
            "127.0.0.1:0",
        ],
        true,
    );
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(2), "{}", p.full_stderr());
    let err = p.full_stderr();
    assert!(
        err.contains("--bind 127.0.0.1:0 is a loopback address") && err.contains("omit --bind"),
        "{err}"
    );
}

#[test]
fn a_server_on_an_unspecified_address_answers_from_the_address_it_was_reached_at() {
    // The server's host has two addresses; the clients use the second. Without answers from
    // the address reached, the kernel answers from the first, and the clients (which match
    // the server by exact address) ignore every answer: "no rendezvous server".
    let Some(lan) = lan(
        "lan-second",
        &[
            Host {
                name: "srv",
                addrs: &["10.83.0.1/24", "10.83.0.100/24"],
            },
            Host {
                name: "a",
                addrs: &["10.83.0.2/24"],
            },
            Host {
                name: "b",
                addrs: &["10.83.0.3/24"],
            },
        ],
    ) else {
        return;
    };
    let server = Server::start_via(&lan.host(0).prefix(), "0.0.0.0:7070", &[]);
    let mut a = client(lan.host(1), "A", &["--server", "10.83.0.100:7070"]);
    let a_id = registered(&mut a);
    let mut b = client(lan.host(2), "B", &["--server", "10.83.0.100:7070"]);
    let b_id = registered(&mut b);
    assert_eq!(table_addrs(&server, 2).len(), 2);
    connect_and_chat(&mut a, &mut b, a_id, b_id);
    leave(&mut a);
    leave(&mut b);
}

#[test]
fn a_dual_stack_server_hands_out_ipv4_addresses_to_ipv4_clients() {
    let Some(lan) = lan(
        "lan-dual",
        &[
            Host {
                name: "srv",
                addrs: &["10.84.0.1/24", "fd84::1/64"],
            },
            Host {
                name: "a",
                addrs: &["10.84.0.2/24"],
            },
            Host {
                name: "b",
                addrs: &["10.84.0.3/24"],
            },
            Host {
                name: "c",
                addrs: &["fd84::4/64"],
            },
        ],
    ) else {
        return;
    };
    let server = Server::start_via(&lan.host(0).prefix(), "[::]:7070", &[]);
    let mut a = client(lan.host(1), "A", &["--server", "10.84.0.1:7070"]);
    let a_id = registered(&mut a);
    let mut b = client(lan.host(2), "B", &["--server", "10.84.0.1:7070"]);
    let b_id = registered(&mut b);
    // The table (and so every Found) holds the IPv4 clients as IPv4, not [::ffff:a.b.c.d].
    let addrs = table_addrs(&server, 2);
    assert!(
        addrs.iter().all(|a| a.starts_with("10.84.0.")),
        "mapped addresses in the table: {addrs:?}"
    );
    connect_and_chat(&mut a, &mut b, a_id, b_id);
    // An IPv6 client registers with the same server, on its IPv6 address.
    let mut c = client(lan.host(3), "C", &["--server", "[fd84::1]:7070"]);
    registered(&mut c);
    let addrs = table_addrs(&server, 3);
    assert!(
        addrs.iter().any(|a| a.starts_with("[fd84::4]:")),
        "{addrs:?}"
    );
    for c in [&mut a, &mut b, &mut c] {
        leave(c);
    }
}

#[test]
fn a_send_the_system_refuses_is_one_clear_line_not_only_the_debug_log() {
    // A host on a LAN with no route elsewhere, told of a server on another network.
    let Some(lan) = lan(
        "lan-noroute",
        &[Host {
            name: "a",
            addrs: &["10.85.0.2/24"],
        }],
    ) else {
        return;
    };
    let mut a = client(lan.host(0), "A", &["--server", "10.99.0.1:7070"]);
    let v = a.wait_event_within(Duration::from_secs(3), "send_failed", |v| {
        v["event"] == "send_failed"
    });
    assert_eq!(v["target"], "server", "{v}");
    assert_eq!(v["to"], "10.99.0.1:7070", "{v}");
    assert_eq!(v["error"], "no_route", "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot send to the server at 10.99.0.1:7070")
            && message.contains("network connection"),
        "{message}"
    );
    // Once, not at every resend: the client goes on to give up on the server.
    let end = a.wait_event_within(Duration::from_secs(15), "the fatal error", |v| {
        v["event"] == "error"
    });
    assert!(
        end["message"]
            .as_str()
            .is_some_and(|m| m.contains("no rendezvous server")),
        "{end}"
    );
    a.wait_exit();
    assert_eq!(a.events("send_failed").len(), 1, "{:#?}", a.log);
    // And the same in a person's words, without --json.
    let mut p = Proc::spawn_via(
        &lan.host(0).prefix(),
        &["client", "--no-state", "--server", "10.99.0.1:7070"],
        true,
    );
    let line = p.wait_for_line("the send failure", |l| l.contains("cannot send"));
    assert!(line.contains("no route to it"), "{line}");
    p.kill();
}
