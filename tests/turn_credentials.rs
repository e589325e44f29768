//! The rendezvous server hands each registered client short-lived TURN credentials
//! (`p2pchat server --turn ... --turn-secret-file ...`, coturn's use-auth-secret), and
//! none when it has no TURN server. On the registry state machine, clock injected.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pchat::registry::turn::{rest_credentials, TurnSecret};
use p2pchat::registry::{Registry, RegistryConfig};
use p2pchat::wire::{self, encode, Message, TurnGrant};

fn register(r: &mut Registry, now: Instant, from: SocketAddr) -> Message {
    let mut msg = Message::register(None, [0; 32]);
    wire::pad_request(&mut msg);
    let request = encode(&msg);
    r.handle_datagram(now, from, &request);
    let t = r.poll_transmit().expect("an answer");
    assert_eq!(t.to, from);
    // What goes on the wire decodes to the same message, and is no larger than the request.
    let bytes = encode(&t.message);
    assert!(
        bytes.len() <= request.len(),
        "{} > {}",
        bytes.len(),
        request.len()
    );
    assert_eq!(wire::decode(&bytes).unwrap(), t.message);
    t.message
}

#[test]
fn registered_carries_rest_credentials_for_the_clients_id() {
    let t0 = Instant::now();
    let turn: SocketAddr = "192.0.2.7:3478".parse().unwrap();
    let config = RegistryConfig {
        turn: Some(TurnSecret {
            server: turn,
            secret: b"shared".to_vec(),
            lifetime: Duration::from_secs(3600),
            clock: (t0, 1_800_000_000),
        }),
        ..RegistryConfig::default()
    };
    let mut r = Registry::with_seed(config, 1);
    let later = t0 + Duration::from_secs(10);
    let Message::Registered {
        id, turn: grant, ..
    } = register(&mut r, later, "127.0.0.1:4000".parse().unwrap())
    else {
        panic!("not Registered");
    };
    let grant: TurnGrant = grant.expect("a TURN grant");
    assert_eq!(grant.server, turn);
    // Expiry: Unix time at registration (1_800_000_010) plus the lifetime.
    assert_eq!(grant.user, format!("1800003610:{id}"));
    assert_eq!(
        grant.pass,
        rest_credentials(b"shared", &id.to_string(), 1_800_003_610).password
    );
    assert!(!format!("{grant:?}").contains(&grant.pass));

    // Another client gets other credentials.
    let Message::Registered {
        id: id2,
        turn: Some(g2),
        ..
    } = register(&mut r, later, "127.0.0.1:4001".parse().unwrap())
    else {
        panic!("no grant for the second client");
    };
    assert_ne!(id2, id);
    assert_ne!(g2.pass, grant.pass);
}

#[test]
fn no_turn_server_no_grant_and_the_old_encoding() {
    let mut r = Registry::with_seed(RegistryConfig::default(), 1);
    let answer = register(&mut r, Instant::now(), "127.0.0.1:4000".parse().unwrap());
    let Message::Registered { turn, .. } = &answer else {
        panic!("not Registered: {answer:?}");
    };
    assert!(turn.is_none());
    // Without a grant the encoding has no "turn" key: older clients read it as before.
    let bytes = encode(&answer);
    assert!(!bytes.windows(4).any(|w| w == b"turn"));
}
