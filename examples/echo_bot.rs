//! A bot built on the p2pchat library: it registers, accepts every connection request and
//! echoes every message back. It drives the sans-IO `Peer` state machine with a plain
//! blocking `std::net::UdpSocket`, to show that the protocol logic needs no particular
//! event loop.
//!
//! ```sh
//! cargo run --release -- server &
//! cargo run --release --example echo_bot -- --id 99
//! cargo run --release -- client      # then: connect 99, and say something
//! ```

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use clap::Parser;
use p2pchat::peer::{Event, Peer, PeerConfig};
use p2pchat::wire;

#[derive(Parser)]
struct Args {
    /// The rendezvous server.
    #[arg(long, default_value = "127.0.0.1:7070")]
    server: SocketAddr,
    /// The id to ask for.
    #[arg(long)]
    id: Option<u32>,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    seconds: Option<u64>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut config = PeerConfig::new(args.server, Duration::from_secs(10));
    config.want_id = args.id;
    let started = Instant::now();
    let mut peer = Peer::new(config, started);
    let mut stop_at = args.seconds.map(|s| started + Duration::from_secs(s));
    let mut buf = [0u8; 65_536];
    loop {
        // 1. React to events (answering them may queue datagrams).
        let now = Instant::now();
        while let Some(event) = peer.poll_event() {
            println!("{event:?}");
            match event {
                Event::Request { from } => {
                    let _ = peer.accept(now, Some(from));
                }
                Event::Message { from, text, .. } => {
                    let _ = peer.send(now, Some(from), &format!("echo: {text}"));
                }
                Event::Fatal { message } => {
                    eprintln!("echo_bot: {message}");
                    std::process::exit(1);
                }
                _ => {}
            }
        }
        if stop_at.is_some_and(|t| now >= t) {
            stop_at = None;
            peer.leave(now);
        }
        // 2. Send what the state machine wants sent.
        while let Some(t) = peer.poll_transmit() {
            socket.send_to(&wire::encode(&t.message), t.to)?;
        }
        if peer.is_finished() {
            return Ok(());
        }
        // 3. Wait for a datagram, but no longer than the next deadline.
        let wait = peer
            .poll_timeout()
            .into_iter()
            .chain(stop_at)
            .min()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => peer.handle_datagram(Instant::now(), from, &buf[..len]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
        // 4. Let the timers run.
        let now = Instant::now();
        if peer.poll_timeout().is_some_and(|t| t <= now) {
            peer.handle_timeout(now);
        }
    }
}
