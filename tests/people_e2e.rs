//! End-to-end tests of issue 6 through the real binaries in `--json` mode: names, `list`,
//! several sessions (`send @a @b`, `broadcast`, `switch`, `sessions`), the offline queue
//! across a restart of the sender, `history`, and `help`.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::{JsonClient, Proc, Server, TempDir};

/// Short resend periods, so that nothing in these tests waits long.
const RETRY: &str = "0.3";

/// A long wait for things that take a few retry periods.
const LONG: Duration = Duration::from_secs(10);

/// Starts a `--json` client of `server` with `args`, and waits for its registration.
fn client(server: &Server, label: &str, args: &[&str]) -> JsonClient {
    let addr = server.addr.to_string();
    let mut all = vec!["--server", addr.as_str(), "--retry-interval", RETRY];
    all.extend_from_slice(args);
    let mut c = JsonClient::spawn(label, &all);
    c.wait_event("registered", |v| v["event"] == "registered");
    c
}

/// A client with `--name name` (and no state kept), once its name is granted.
fn named(server: &Server, name: &str) -> JsonClient {
    let mut c = client(server, name, &["--name", name, "--no-state"]);
    c.expect(json!({"event": "claimed", "name": name}));
    c
}

/// A client named `name` printing readable lines, with a pipe on stdin (`typing`) or with
/// stdin closed.
fn plain_client(server: &Server, name: &str, typing: bool) -> Proc {
    let addr = server.addr.to_string();
    let args = [
        "client",
        "--server",
        &addr,
        "--retry-interval",
        RETRY,
        "--name",
        name,
        "--no-state",
    ];
    if typing {
        Proc::spawn_with_stdin(&args)
    } else {
        Proc::spawn(&args)
    }
}

fn id_of(c: &JsonClient) -> u64 {
    c.events("registered")[0]["id"]
        .as_u64()
        .expect("a registered event with an id")
}

/// `asker` connects to `to` (by `how`), `to` accepts by name.
fn connect(asker: &mut JsonClient, to: &mut JsonClient, how: &str, asker_name: &str) {
    asker.type_line(&format!("connect {how}"));
    let request = to.wait_event("request", |v| v["event"] == "request");
    assert_eq!(request["name"], asker_name, "{request}");
    to.type_line(&format!("accept {asker_name}"));
    asker.wait_event("connected", |v| v["event"] == "connected");
    to.wait_event("connected", |v| v["event"] == "connected");
}

fn texts_from(c: &JsonClient, from_name: &str) -> Vec<String> {
    c.events("message")
        .iter()
        .filter(|v| v["name"] == from_name)
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_taken_name_is_refused_with_a_clear_error_and_exit_status_1() {
    let server = Server::start(&[]);
    let _alice = named(&server, "alice");
    let mut second = plain_client(&server, "ALICE", false);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(1), "exited with {status}");
    let stderr = second.full_stderr();
    assert!(
        stderr.contains("refused the name") && stderr.contains("taken"),
        "{stderr:?}"
    );
}

#[test]
fn a_bad_name_is_refused_before_anything_is_sent() {
    let mut p = Proc::spawn(&["client", "--name", "../etc", "--no-state"]);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(2), "clap's usage error: {status}");
    assert!(p.full_stderr().contains("--name"), "{}", p.full_stderr());
}

#[test]
fn peers_connect_by_name_and_see_each_others_names() {
    let server = Server::start(&[]);
    let mut alice = client(
        &server,
        "alice",
        &[
            "--name",
            "alice",
            "--display-name",
            "Alice L.",
            "--no-state",
        ],
    );
    alice.expect(json!({"event": "claimed", "name": "alice"}));
    let mut bob = named(&server, "bob");
    alice.type_line("connect Bob");
    let request = bob.wait_event("request", |v| v["event"] == "request");
    assert_eq!(request["name"], "alice");
    assert_eq!(request["display_name"], "Alice L.");
    bob.type_line("accept alice");
    let connected = alice.wait_event("connected", |v| v["event"] == "connected");
    assert_eq!(connected["name"], "bob", "{connected}");
    alice.type_line("hello bob");
    let m = bob.wait_event("message", |v| v["event"] == "message");
    assert_eq!(m["name"], "alice");
    assert_eq!(m["text"], "hello bob");
    // Unknown names are said so, and change nothing.
    alice.type_line("connect nobody");
    alice.expect(json!({"event": "unknown_name", "name": "nobody"}));
    alice.type_line("status");
    let status = alice.wait_event("status", |v| v["event"] == "status");
    assert_eq!(status["name"], "alice");
    assert_eq!(status["connected"], json!([id_of(&bob)]));
}

#[test]
fn list_shows_who_is_online_and_a_no_list_server_refuses() {
    let server = Server::start(&[]);
    let mut alice = named(&server, "alice");
    let _bob = named(&server, "bob");
    let _anon = client(&server, "anon", &["--no-state"]);
    alice.type_line("list");
    let online = alice.wait_event("online", |v| v["event"] == "online");
    assert_eq!(online["total"], 3, "{online}");
    let clients = online["clients"].as_array().unwrap();
    let names: Vec<&Value> = clients.iter().map(|c| &c["name"]).collect();
    assert_eq!(names, vec![&json!("alice"), &json!("bob"), &Value::Null]);
    assert!(clients.iter().all(|c| c["online_secs"].as_u64().is_some()));

    let quiet = Server::start(&["--no-list"]);
    let mut carol = named(&quiet, "carol");
    carol.type_line("list");
    let failed = carol.wait_event("list_failed", |v| v["event"] == "list_failed");
    assert!(
        failed["reason"].as_str().unwrap().contains("list"),
        "{failed}"
    );
}

#[test]
fn one_client_holds_several_sessions_with_targets_broadcast_and_switch() {
    let server = Server::start(&[]);
    let mut hub = named(&server, "hub");
    let mut peers: Vec<JsonClient> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| named(&server, n))
        .collect();
    for (i, p) in peers.iter_mut().enumerate() {
        connect(&mut hub, p, &format!("b{}", i + 1), "hub");
    }
    hub.type_line("broadcast to all");
    hub.type_line("send @b1 @b3 to two");
    hub.type_line("switch b2");
    hub.wait_event("switched", |v| {
        v["event"] == "switched" && v["name"] == "b2"
    });
    hub.type_line("to the current one");
    hub.type_line("sessions");
    let sessions = hub.wait_event("sessions", |v| v["event"] == "sessions");
    let listed = sessions["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{sessions}");
    let current: Vec<&Value> = listed
        .iter()
        .filter(|s| s["current"] == true)
        .map(|s| &s["name"])
        .collect();
    assert_eq!(current, vec![&json!("b2")]);
    hub.wait_until(LONG, "every copy delivered", |log| {
        common::events_named(log, "delivered").len() == 6
    });
    for (p, want) in peers.iter_mut().zip([
        vec!["to all", "to two"],
        vec!["to all", "to the current one"],
        vec!["to all", "to two"],
    ]) {
        p.wait_until(LONG, "both messages", |log| {
            common::events_named(log, "message").len() == 2
        });
        p.read_for(Duration::from_millis(300));
        assert_eq!(texts_from(p, "hub"), want, "{}", p.name);
    }
}

#[test]
fn a_queue_survives_a_restart_of_the_sender_and_reaches_the_peer_when_it_comes() {
    let server = Server::start(&[]);
    let state = TempDir::new("alice-state");
    let addr = server.addr.to_string();
    let alice_args = |name: bool| {
        let mut v = vec![
            "--server".to_string(),
            addr.clone(),
            "--retry-interval".into(),
            RETRY.into(),
            "--queue-retry".into(),
            "0.5".into(),
            "--state-dir".into(),
            state.arg().to_string(),
        ];
        if name {
            v.extend(["--name".to_string(), "alice".into()]);
        }
        v
    };
    let args: Vec<String> = alice_args(true);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut alice = JsonClient::spawn("alice", &refs);
    alice.expect(json!({"event": "claimed", "name": "alice"}));
    alice.type_line("send @bob first");
    alice.type_line("@bob second");
    alice.expect(json!({"event": "queued", "to": "bob", "text": "first"}));
    alice.expect(json!({"event": "queued", "to": "bob", "text": "second"}));
    alice.type_line("sessions");
    let s = alice.wait_event("sessions", |v| v["event"] == "sessions");
    assert_eq!(s["queued"], json!([{"to": "bob", "count": 2}]));
    alice.type_line("leave");
    let kept = alice.wait_event("the queue is kept", |v| {
        v["event"] == "notice" && v["message"].as_str().unwrap().contains("stay queued")
    });
    assert!(kept["message"]
        .as_str()
        .unwrap()
        .contains("2 messages for bob"));
    assert!(alice.wait_exit().success());

    // A second run, without --name: the state directory knows who it is.
    let args: Vec<String> = alice_args(false);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut alice = JsonClient::spawn("alice again", &refs);
    alice.wait_event("the queue restored", |v| {
        v["event"] == "notice"
            && v["message"]
                .as_str()
                .unwrap()
                .contains("2 messages queued for bob by your last run")
    });
    alice.expect(json!({"event": "claimed", "name": "alice"}));
    // Bob comes online later; the queue finds him on its own.
    std::thread::sleep(Duration::from_millis(700));
    let mut bob = named(&server, "bob");
    let request = bob.wait_event_within(LONG, "the queue's request", |v| v["event"] == "request");
    assert_eq!(request["name"], "alice");
    bob.type_line("accept");
    bob.wait_until(LONG, "both queued messages", |log| {
        common::events_named(log, "message").len() == 2
    });
    assert_eq!(texts_from(&bob, "alice"), vec!["first", "second"]);
    alice.wait_until(LONG, "both delivered", |log| {
        common::events_named(log, "delivered").len() == 2
    });
    let dequeued = alice.events("dequeued");
    assert_eq!(dequeued.len(), 1);
    assert_eq!(dequeued[0]["to"], "bob");
    // The history has both, delivered, and a reply.
    bob.type_line("thanks");
    alice.wait_event("the reply", |v| v["event"] == "message");
    alice.type_line("history bob");
    let h = alice.wait_event("history", |v| v["event"] == "history");
    let entries: Vec<(String, String, String)> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["direction"].as_str().unwrap().to_string(),
                e["text"].as_str().unwrap().to_string(),
                e["delivery"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let own = |d: &str, t: &str, s: &str| (d.to_string(), t.to_string(), s.to_string());
    assert_eq!(
        entries,
        vec![
            own("out", "first", "delivered"),
            own("out", "second", "delivered"),
            own("in", "thanks", "received"),
        ]
    );
    // And it is on disk for the next run.
    alice.type_line("leave");
    assert!(alice.wait_exit().success());
    let file = state.path().join("history").join("bob.json");
    let saved = std::fs::read_to_string(&file).expect("the history file");
    assert!(saved.contains("\"thanks\""), "{saved}");
    let outbox = std::fs::read_to_string(state.path().join("outbox.json")).unwrap();
    let outbox: Value = serde_json::from_str(&outbox).unwrap();
    assert_eq!(outbox["queued"], json!([]), "the queue is empty on disk");
}

#[test]
fn a_second_client_on_the_same_state_dir_refuses_to_start() {
    let server = Server::start(&[]);
    let state = TempDir::new("shared");
    let _first = client(&server, "first", &["--state-dir", state.arg()]);
    let addr = server.addr.to_string();
    let mut second = Proc::spawn(&["client", "--server", &addr, "--state-dir", state.arg()]);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        second.full_stderr().contains("another p2pchat client"),
        "{}",
        second.full_stderr()
    );
}

#[test]
fn help_lists_every_command_with_an_example() {
    let server = Server::start(&[]);
    let mut c = client(&server, "c", &["--no-state"]);
    c.type_line("help");
    let help = c.wait_event("help", |v| v["event"] == "help");
    // The same text as the library's (whose unit test checks an example per command).
    assert_eq!(help["text"], p2pchat::app::command::HELP);
}

#[test]
fn plain_output_has_times_and_names_but_no_colour() {
    let server = Server::start(&[]);
    let mut bob = named(&server, "bob");
    let mut alice = plain_client(&server, "alice", true);
    alice.wait_for_line("the name", |l| l == "your name is alice");
    alice.write_line("connect bob");
    bob.wait_event("request", |v| v["event"] == "request");
    bob.type_line("accept");
    alice.wait_for_line("connected", |l| l.starts_with("connected to bob ("));
    bob.type_line("hi alice");
    let line = alice.wait_for_line("the message", |l| l.contains("hi alice"));
    // [HH:MM:SS bob (2) #1] hi alice
    let (head, text) = line.split_once("] ").expect("a bracketed head");
    assert_eq!(text, "hi alice");
    let parts: Vec<&str> = head.trim_start_matches('[').split(' ').collect();
    assert_eq!(parts.len(), 4, "{line}");
    assert_eq!(parts[0].len(), 8, "a time: {line}");
    assert_eq!(parts[0].matches(':').count(), 2, "a time: {line}");
    let bob_id = format!("({})", id_of(&bob));
    assert_eq!(&parts[1..], ["bob", bob_id.as_str(), "#1"], "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour when not a terminal: {line:?}"
    );
}

/// Runs a client on a pseudo-terminal (with `script`), types a bad command and `leave`,
/// and returns everything it printed.
fn on_a_terminal(server: &Server, no_color: bool) -> Option<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_p2pchat");
    let data = TempDir::new("pty");
    let cmd = format!(
        "{bin} client --server {} --retry-interval {RETRY} --no-state",
        server.addr
    );
    let mut command = Command::new("script");
    command
        .args(["-qfec", &cmd, "/dev/null"])
        .env("XDG_DATA_HOME", data.path())
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: cannot run script(1): {e}");
            return None;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    stdin.write_all(b"/dance\r").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"leave\r").unwrap();
    let out = child.wait_with_output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn colour_on_a_terminal_unless_no_color_is_set() {
    let server = Server::start(&[]);
    let Some(coloured) = on_a_terminal(&server, false) else {
        return;
    };
    assert!(
        coloured.contains("\u{1b}[31merror: unknown command /dance"),
        "{coloured:?}"
    );
    let plain = on_a_terminal(&server, true).unwrap();
    assert!(plain.contains("error: unknown command /dance"), "{plain:?}");
    assert!(!plain.contains("\u{1b}[31m"), "{plain:?}");
}

#[test]
fn a_client_killed_and_restarted_takes_its_name_back_at_once() {
    let server = Server::start(&[]);
    let state = TempDir::new("crashy");
    let addr = server.addr.to_string();
    let args = [
        "--server",
        addr.as_str(),
        "--retry-interval",
        RETRY,
        "--name",
        "alice",
        "--state-dir",
        state.arg(),
    ];
    let mut first = JsonClient::spawn("alice", &args);
    first.expect(json!({"event": "claimed", "name": "alice"}));
    let old_id = id_of(&first);
    // No Leave: the server still holds the name (for its 30 s time to live).
    first.proc.kill();
    let mut again = JsonClient::spawn("alice again", &args);
    again.expect(json!({"event": "claimed", "name": "alice"}));
    assert_ne!(id_of(&again), old_id, "a new registration");
    // The old entry is gone: one alice, and bob finds the new one.
    let mut bob = named(&server, "bob");
    bob.type_line("list");
    let online = bob.wait_event("online", |v| v["event"] == "online");
    assert_eq!(online["total"], 2, "{online}");
    bob.type_line("connect alice");
    let request = again.wait_event("request", |v| v["event"] == "request");
    assert_eq!(request["name"], "bob");
}

#[test]
fn terminate_drops_a_queue_for_a_peer_without_a_session() {
    let server = Server::start(&[]);
    let mut alice = named(&server, "alice");
    alice.type_line("send @nobody are you there");
    alice.expect(json!({"event": "queued", "to": "nobody", "text": "are you there"}));
    alice.type_line("terminate nobody");
    alice.expect(json!({
        "event": "queue_dropped", "to": "nobody", "count": 1, "reason": "you cancelled them"
    }));
    alice.type_line("terminate nobody");
    let e = alice.wait_event("an error", |v| v["event"] == "error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no session or request with nobody"),
        "{e}"
    );
    alice.type_line("sessions");
    let s = alice.wait_event("sessions", |v| v["event"] == "sessions");
    assert_eq!(s["queued"], json!([]));
}
