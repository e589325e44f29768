//! The real binaries against a hostile network: what an attacker on the same network sends
//! straight at a client or at the server, from raw UDP sockets on loopback, and what comes
//! back (bytes on the wire, lines on the screen).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Proc;
use p2pchat::wire::{self, ErrorCode, Message};

/// Short resend periods, so that nothing waits long.
const RETRY: &str = "0.3";

/// A socket posing as the rendezvous server.
fn fake_server() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The next datagram that decodes as `Register`, within `limit`: its source and message.
fn next_register(socket: &UdpSocket, limit: Duration) -> (SocketAddr, Message) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 65_536];
    while Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(msg @ Message::Register { .. }) = wire::decode(&buf[..n]) {
            return (from, msg);
        }
    }
    panic!("no Register within {limit:?}");
}

/// Characters that must never reach a terminal from the network: escape sequences start
/// with ESC (or a C1 control), BEL ends a title change, U+202E reverses what follows.
fn assert_no_raw_controls(what: &str, text: &str) {
    for c in [
        '\u{1b}', '\u{7}', '\u{9b}', '\u{202E}', '\u{2066}', '\u{200B}',
    ] {
        assert!(
            !text.contains(c),
            "{what} shows U+{:04X} raw: {text:?}",
            c as u32
        );
    }
}

#[test]
fn text_the_server_sends_reaches_the_terminal_made_harmless() {
    let (server, addr) = fake_server();
    let addr = addr.to_string();
    let mut client = Proc::spawn(&[
        "client",
        "--server",
        &addr,
        "--no-state",
        "--retry-interval",
        RETRY,
    ]);
    let hostile = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{1b}[31mred\u{202E}txt.exe\u{200B}";
    // A refusal to wait ("the server says: ...; retrying"), then one that ends the client.
    let (from, register) = next_register(&server, Duration::from_secs(5));
    // Each answer echoes the nonce of the Register it answers, as the server does.
    let refuse = |register: &Message, code, detail: &str| {
        wire::encode(&Message::Error {
            code,
            detail: detail.into(),
            nonce: register.nonce().unwrap(),
        })
    };
    server
        .send_to(&refuse(&register, ErrorCode::RateLimited, hostile), from)
        .unwrap();
    let notice = client.wait_for_line("the rate-limit notice", |l| l.contains("the server says"));
    assert_no_raw_controls("the notice", &notice);
    assert!(notice.contains("<U+202E>"), "{notice:?}");
    let (from, register) = next_register(&server, Duration::from_secs(5));
    server
        .send_to(&refuse(&register, ErrorCode::BadName, hostile), from)
        .unwrap();
    let status = client.wait_exit();
    assert!(!status.success());
    let stderr = client.full_stderr();
    assert!(stderr.contains("refused to register us"), "{stderr:?}");
    assert_no_raw_controls("the fatal error on stderr", &stderr);
    for line in client.rest_of_stdout() {
        assert_no_raw_controls("stdout", &line);
    }
}
