//! Through the real binaries: every datagram between two clients (and with the server) is
//! captured on the loopback interface while they chat and send a file, and no marker of
//! the chat or of the file (its name or its bytes) appears in any of them.
//!
//! The capture is a packet socket (`AF_PACKET`) on `lo`, which needs root (CAP_NET_RAW);
//! like the namespace tests it says how to run it, or is skipped with
//! `P2PCHAT_SKIP_NETNS=1`. Only datagrams to or from the three processes' ports are kept,
//! so that other traffic on the loopback does not count.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{free_udp_port, netns, JsonClient, Server, TempDir};

/// A packet socket on the loopback interface, reading every frame (non-blocking).
struct Capture {
    fd: libc::c_int,
}

impl Capture {
    fn open() -> Result<Capture, String> {
        if !netns::is_root() {
            return Err("not root (a packet socket needs CAP_NET_RAW)".into());
        }
        // SAFETY: plain system calls on a descriptor we own; the structures are zeroed
        // and filled as packet(7) describes.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let lo = libc::if_nametoindex(c"lo".as_ptr());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = lo as i32;
            let bound = libc::bind(
                fd,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if bound < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(format!("bind to lo: {e}"));
            }
            Ok(Capture { fd })
        }
    }

    /// The UDP payloads read so far whose source or destination port is in `ports`.
    fn drain(&self, ports: &HashSet<u16>, into: &mut Vec<Vec<u8>>) {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: reading into a buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                return;
            }
            if let Some(payload) = udp_payload(&buf[..n as usize], ports) {
                into.push(payload.to_vec());
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we opened.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// The payload of an IPv4 UDP datagram in a loopback frame (a zeroed Ethernet header),
/// if either port is in `ports`.
fn udp_payload<'a>(frame: &'a [u8], ports: &HashSet<u16>) -> Option<&'a [u8]> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    let (src, dst) = (
        u16::from_be_bytes([*udp.first()?, *udp.get(1)?]),
        u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]),
    );
    if !ports.contains(&src) && !ports.contains(&dst) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    udp.get(8..len.max(8))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_marker_of_a_chat_or_a_file_is_in_any_captured_datagram() {
    if netns::skipped("capture_e2e") {
        return;
    }
    let capture = netns::require("capture_e2e", Capture::open());
    let server = Server::start(&[]);
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let ports: HashSet<u16> = [server.addr.port(), pa, pb].into_iter().collect();
    let marker = format!("MARKER{}x", std::process::id());
    let (chat_marker, file_marker, name_marker) = (
        format!("chat-{marker}"),
        format!("file-bytes-{marker}"),
        format!("name-{marker}"),
    );
    let (da, db) = (TempDir::new("capture-a"), TempDir::new("capture-b"));
    let start = |name: &str, port: u16, dir: &TempDir| {
        let (server, bind) = (server.addr.to_string(), format!("127.0.0.1:{port}"));
        let dir = dir.0.display().to_string();
        let args = [
            "--server",
            &server,
            "--bind",
            &bind,
            "--no-state",
            "--retry-interval",
            "0.3",
            "--downloads",
            &dir,
        ];
        let mut c = JsonClient::spawn(name, &args);
        let id = c.wait_event("registered", |v| v["event"] == "registered")["id"].clone();
        (c, id)
    };
    let (mut a, ida) = start("A", pa, &da);
    let (mut b, idb) = start("B", pb, &db);
    a.type_line(&format!("connect {idb}"));
    b.wait_event("request", |v| v["event"] == "request");
    b.type_line(&format!("accept {ida}"));
    a.wait_event("connected", |v| v["event"] == "connected");
    for k in 0..3 {
        a.type_line(&format!("{chat_marker} {k}"));
        b.type_line(&format!("{chat_marker} back {k}"));
    }
    b.wait_until(Duration::from_secs(5), "shown the chat", |log| {
        log.iter().filter(|v| v["event"] == "message").count() == 3
    });
    // A file of several chunks whose name and bytes hold the marker.
    let path = da.0.join(format!("{name_marker}.txt"));
    let bytes: Vec<u8> = file_marker.repeat(200).into_bytes();
    std::fs::write(&path, &bytes).unwrap();
    a.type_line(&format!("sendfile {}", path.display()));
    let offer = b.wait_event("file_offer", |v| v["event"] == "file_offer");
    assert!(offer["name"].as_str().unwrap().contains(&name_marker));
    b.type_line(&format!("getfile {}", offer["n"]));
    let got = b.wait_event("file_received", |v| v["event"] == "file_received");
    let received = std::fs::read(got["path"].as_str().unwrap()).unwrap();
    assert_eq!(received, bytes);
    a.type_line("leave");
    b.type_line("leave");
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut datagrams = Vec::new();
    while Instant::now() < deadline {
        capture.drain(&ports, &mut datagrams);
        std::thread::sleep(Duration::from_millis(20));
    }
    capture.drain(&ports, &mut datagrams);
    // The capture sees payloads: the requests to the server are readable in it.
    assert!(
        datagrams.iter().any(|d| contains(d, b"Register")),
        "the capture saw no Register: {} datagrams",
        datagrams.len()
    );
    let sealed = datagrams.iter().filter(|d| contains(d, b"Sealed")).count();
    assert!(
        sealed >= 10,
        "{sealed} sealed datagrams of {}",
        datagrams.len()
    );
    for (k, d) in datagrams.iter().enumerate() {
        for m in [&marker, &chat_marker, &file_marker, &name_marker] {
            assert!(
                !contains(d, m.as_bytes()),
                "datagram {k} holds {m}: {d:02x?}"
            );
        }
        assert!(!contains(d, b"Chat") && !contains(d, b"FileOffer") && !contains(d, b"Chunk"));
    }
    println!(
        "{} datagrams captured ({sealed} sealed), no marker in any",
        datagrams.len()
    );
}
