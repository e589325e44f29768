//! The `p2pchat` command: `p2pchat server` and `p2pchat client`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use p2pchat::driver::{self, ServerOptions};
use p2pchat::registry::RegistryConfig;

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
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server {
            bind,
            ttl,
            max_clients,
        } => {
            let opts = ServerOptions {
                bind,
                registry: RegistryConfig {
                    ttl: Duration::from_secs(ttl),
                    max_clients: usize::try_from(max_clients).unwrap_or(usize::MAX),
                },
            };
            driver::run_server(&opts, &mut std::io::stdout())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pchat: {e}");
            ExitCode::FAILURE
        }
    }
}
