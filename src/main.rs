//! The `p2pchat` command: `p2pchat server` and `p2pchat client`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use p2pchat::app::profile::StateChoice;
use p2pchat::app::render::Style;
use p2pchat::driver::{self, ClientOptions, ServerOptions, UiMode};
use p2pchat::peer::PeerConfig;
use p2pchat::registry::{Limits, RegistryConfig};
use p2pchat::wire;

#[derive(Parser, Debug)]
#[command(
    name = "p2pchat",
    version,
    about = "Peer-to-peer terminal chat over UDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the rendezvous (lookup) server: the table of active clients.
    Server {
        /// Address and UDP port to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        bind: SocketAddr,
        /// Seconds after which a client that has sent nothing is dropped from the table.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
        /// Most clients registered at once; past it, registrations are refused ("server full").
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        max_clients: u64,
        /// New registrations allowed per second from one network (IPv4 /24, IPv6 /56), on
        /// average; addresses that retry are served first (0: no limit per network, nor
        /// --max-per-prefix).
        #[arg(long, default_value_t = 20.0)]
        register_rate: f64,
        /// New registrations one network may make at once before --register-rate applies.
        #[arg(long, default_value_t = 200)]
        register_burst: u32,
        /// Most clients registered at once from one network (IPv4 /24, IPv6 /56) [default:
        /// the larger of 16 and --max-clients / 8].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_per_prefix: Option<u64>,
        /// List pages one client may ask for per second, on average; a page beyond it gets
        /// no answer, and the client asks again (0: no limit).
        #[arg(long, default_value_t = 16.0)]
        list_rate: f64,
        /// List pages one client may ask for at once before --list-rate applies.
        #[arg(long, default_value_t = 64)]
        list_burst: u32,
        /// Above this many clients, the printed table shows the count instead of every row.
        #[arg(long, default_value_t = 100)]
        table_rows: usize,
        /// Do not tell clients who is online: `list` is answered "this server does not list
        /// its clients" (names can still be claimed and resolved).
        #[arg(long)]
        no_list: bool,
        /// A TURN server (coturn) for clients that cannot reach each other directly,
        /// `turn:IP:PORT`: each registered client is given short-lived credentials for it
        /// (needs --turn-secret-file).
        #[arg(long, value_parser = parse_turn, requires = "turn_secret_file")]
        turn: Option<SocketAddr>,
        /// A file holding the secret shared with the TURN server (coturn's
        /// static-auth-secret, with use-auth-secret).
        #[arg(long, requires = "turn")]
        turn_secret_file: Option<std::path::PathBuf>,
    },
    /// Run a chat client: register with the server, then connect to peers and chat.
    Client {
        /// The rendezvous server (host:port).
        #[arg(long, default_value = "127.0.0.1:7070", value_parser = parse_server)]
        server: SocketAddr,
        /// Local address and UDP port to chat from (port 0: any free port) [default:
        /// 0.0.0.0:0 (or [::]:0 for an IPv6 server), so that peers on other machines reach
        /// you; 127.0.0.1:0 for a server on this machine].
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Ask the server for this id (refused if another client has it).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        id: Option<u32>,
        /// Seconds between connection requests; no resend ever waits longer (decimals allowed).
        #[arg(long, default_value = "10", value_parser = parse_seconds)]
        retry_interval: Duration,
        /// Connection requests sent before giving up on an answer.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
        connect_tries: u32,
        /// Sends of one chat message before it is reported undelivered.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        message_tries: u32,
        /// One JSON object per event on stdout, for scripts and bots.
        #[arg(long)]
        json: bool,
        /// A unique name to be known by (letters, digits, _ - .; starting with a letter).
        /// Kept in the state directory: later runs use it without the flag.
        #[arg(long, value_parser = parse_name)]
        name: Option<String>,
        /// A free-form name shown beside yours, e.g. "Alice L.".
        #[arg(long, value_parser = parse_display_name)]
        display_name: Option<String>,
        /// Where your name, queued messages and history are kept [default: one directory
        /// per --name in the platform's data directory, e.g. ~/.local/share/p2pchat/alice,
        /// or .../p2pchat/anonymous].
        #[arg(long, conflicts_with = "no_state")]
        state_dir: Option<PathBuf>,
        /// Keep nothing between runs.
        #[arg(long)]
        no_state: bool,
        /// Seconds between attempts to reach a peer that messages are queued for
        /// [default: 3 x --retry-interval].
        #[arg(long, value_parser = parse_seconds)]
        queue_retry: Option<Duration>,
        /// Directory where received files are written (default: the platform's downloads
        /// directory, else the current directory).
        #[arg(long, value_name = "DIR")]
        downloads: Option<std::path::PathBuf>,
        /// Your own addresses, told to the server so that peers behind the same NAT reach
        /// you on the LAN: "auto" (the addresses of this host's interfaces, only when the
        /// server is not on loopback), "none", or IP addresses separated by commas.
        #[arg(long, default_value = "auto", value_parser = parse_candidates)]
        candidates: Candidates,
        /// A TURN server to relay through when no direct path to a peer exists,
        /// `turn:HOST:PORT` (with --turn-user and --turn-pass) [default: the one the
        /// rendezvous server hands out, if it was started with --turn].
        #[arg(long, value_parser = parse_client_turn, requires_all = ["turn_user", "turn_pass"])]
        turn: Option<SocketAddr>,
        /// The user name for --turn.
        #[arg(long, requires = "turn")]
        turn_user: Option<String>,
        /// The password for --turn.
        #[arg(long, requires = "turn")]
        turn_pass: Option<String>,
    },
}

/// `--turn` of the client: `turn:HOST:PORT`, the host resolved once at start.
fn parse_client_turn(text: &str) -> Result<SocketAddr, String> {
    let rest = text
        .strip_prefix("turn:")
        .ok_or_else(|| format!("{text:?}: expected turn:HOST:PORT"))?;
    if rest.contains('?') || rest.contains("transport=") {
        return Err(format!(
            "{text:?}: only UDP TURN (turn:HOST:PORT) is supported"
        ));
    }
    parse_server(rest)
}

/// `--candidates`: `None` gathers them.
#[derive(Debug, Clone)]
struct Candidates(Option<Vec<SocketAddr>>);

fn parse_candidates(text: &str) -> Result<Candidates, String> {
    match text {
        "auto" => Ok(Candidates(None)),
        "none" => Ok(Candidates(Some(Vec::new()))),
        list => list
            .split(',')
            .map(|ip| {
                ip.trim()
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .map_err(|_| format!("{ip:?} is not an IP address (or use auto, none)"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Candidates(Some(v))),
    }
}

/// A server address: `host:port`, resolved once at start.
fn parse_server(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?}: {e} (expected host:port)"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn parse_name(text: &str) -> Result<String, String> {
    wire::check_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_string())
}

fn parse_display_name(text: &str) -> Result<String, String> {
    wire::check_display_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_string())
}

/// Seconds, decimals allowed ("10", "0.2"); at least a millisecond.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err("must be between 0.001 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_turn(s: &str) -> Result<SocketAddr, String> {
    p2pchat::registry::turn::parse_turn_url(s)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server {
            bind,
            ttl,
            max_clients,
            register_rate,
            register_burst,
            max_per_prefix,
            list_rate,
            list_burst,
            table_rows,
            no_list,
            turn,
            turn_secret_file,
        } => {
            let turn = match (turn, turn_secret_file) {
                (Some(server), Some(file)) => {
                    match p2pchat::registry::turn::read_secret_file(&file) {
                        Ok(secret) => Some(p2pchat::registry::turn::TurnSecret {
                            server,
                            secret,
                            lifetime: p2pchat::registry::turn::CREDENTIAL_LIFETIME,
                            clock: (
                                std::time::Instant::now(),
                                std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map(|d| d.as_secs())
                                    .unwrap_or(0),
                            ),
                        }),
                        Err(e) => {
                            eprintln!("p2pchat: --turn-secret-file {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
                _ => None,
            };
            let opts = ServerOptions {
                bind,
                registry: RegistryConfig {
                    ttl: Duration::from_secs(ttl),
                    max_clients: usize::try_from(max_clients).unwrap_or(usize::MAX),
                    register_rate: register_rate.max(0.0),
                    register_burst: register_burst.max(1),
                    list: !no_list,
                    turn,
                },
                table_rows,
            };
            let limits = Limits {
                max_per_prefix: max_per_prefix.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                list_rate: list_rate.max(0.0),
                list_burst: list_burst.max(1),
            };
            driver::run_server(&opts, limits, std::io::stdout())
        }
        Command::Client {
            server,
            bind,
            id,
            retry_interval,
            connect_tries,
            message_tries,
            json,
            name,
            display_name,
            state_dir,
            no_state,
            queue_retry,
            downloads,
            candidates,
            turn,
            turn_user,
            turn_pass,
        } => {
            use std::io::IsTerminal;
            let bind = match driver::client_bind(bind, server) {
                Ok(bind) => bind,
                Err(e) => {
                    eprintln!("p2pchat: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut peer = PeerConfig::new(server, retry_interval);
            peer.want_id = id;
            peer.name = name;
            peer.display_name = display_name;
            peer.candidates = candidates.0;
            if let (Some(addr), Some(username), Some(password)) = (turn, turn_user, turn_pass) {
                peer.turn = Some(p2pchat::peer::relay::TurnServer {
                    addr,
                    username,
                    password,
                });
            }
            if let Some(q) = queue_retry {
                peer.queue_retry = q;
            }
            let state = match (no_state, state_dir) {
                (true, _) => StateChoice::Off,
                (false, Some(dir)) => StateChoice::Dir(dir),
                (false, None) => StateChoice::Default,
            };
            let style = Style::for_terminal(std::io::stdout().is_terminal());
            peer.connect_tries = connect_tries;
            peer.chat.max_tries = message_tries;
            let mut peer = peer.with_file_defaults();
            let (dir, why) = p2pchat::app::downloads::downloads_dir(downloads);
            if !dir.is_dir() {
                eprintln!(
                    "p2pchat: the downloads directory {} ({why}) is not a directory",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
            // Said at `getfile` too, when it matters, not at every start.
            log::info!("received files go to {} ({why})", dir.display());
            peer.files.downloads = dir;
            let ui = if json {
                UiMode::Json
            } else if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
                UiMode::Terminal
            } else {
                UiMode::Plain
            };
            if ui != UiMode::Json {
                // A person reads each progress line: fewer of them than a script gets.
                peer.files.progress_interval = Duration::from_secs(2);
            }
            driver::run_client(&ClientOptions {
                bind,
                peer,
                ui,
                state,
                style,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A fatal error can quote the server (a refused registration): never raw.
            eprintln!("p2pchat: {}", p2pchat::text::sanitize(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
