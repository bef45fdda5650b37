//! The `tunl` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use tunl::config::{Config, START_ONLY_KEYS};
use tunl::daemon;

use crate::exit::{Exit, ExitStatus, report};

/// tunl: a userspace IPIP tunnel router, a drop-in for Linux's tunl0 as
/// Calico uses it, for hosts whose kernel has no ipip driver.
///
/// Pod packets read from a TUN device are routed by destination block to the
/// node that owns it, wrapped in an outer IPv4 header (protocol 4) and sent
/// on a raw socket; IPIP packets from allowed nodes are unwrapped into the
/// TUN device. The wire format is that of the kernel's ipip driver.
#[derive(Debug, Parser)]
#[command(name = "tunl", version, about, long_about)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing
    /// EnvFilter directive); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the tunnel daemon (needs root, or CAP_NET_ADMIN and CAP_NET_RAW).
    ///
    /// Creates the TUN device, installs `BLOCK via NODE dev tunl0 onlink`
    /// routes tagged `proto 116`, and forwards until SIGINT/SIGTERM, which
    /// remove both. SIGHUP re-reads the config and applies it, except the
    /// keys listed below; an invalid new config is logged and the old one
    /// kept. Exit codes: 0 stopped by a signal, 1 a runtime error, 2 an
    /// invalid config (also a key that does not fit this host).
    Run {
        /// The TOML config file (see examples/tunl.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The seed article's Calico IPIP cluster, live (needs root).
    ///
    /// Builds two nodes and two pods in network namespaces, runs tunl on
    /// each node in place of the kernel's tunl0, and shows the routing
    /// tables, a ping between pods (ttl=62), a decoded capture of the
    /// underlay with both IP layers (also saved as a pcap file), a
    /// throughput figure and the daemons' counters. Then tears down.
    ///
    /// With --bgp, the seed's control plane instead: BIRD 2 on every node
    /// (and on route reflectors, or in a full --mesh) installs the routes
    /// tunl forwards on; it shows the BGP sessions, the routes, an
    /// all-to-all ping, a timed block move and, with --subnets 2,
    /// CrossSubnet routing.
    Lab {
        #[command(subcommand)]
        action: Option<LabAction>,
        #[command(flatten)]
        args: tunl_lab::lab::LabArgs,
    },
    /// Measure tunl against plain veth and kernel VXLAN, in one run (needs root).
    ///
    /// Builds the two-node topology with pods three times over (no tunnel,
    /// kernel VXLAN, tunl), alternating the paths each round, and reports
    /// iperf3 TCP (1 and 4 streams), UDP packet rates, latency, CPU per
    /// Gbit/s and daemon memory, with the ratio tunl / VXLAN.
    Bench(tunl_lab::bench::BenchArgs),
    /// Change or list a running daemon's routes (over its control socket).
    ///
    /// Routes changed here last until the daemon stops or reloads its
    /// config (SIGHUP); only the config's routes survive a restart.
    Route {
        #[command(subcommand)]
        action: crate::commands::RouteCommand,
        #[command(flatten)]
        socket: crate::commands::SocketArg,
    },
    /// Show the device and every remote node: blocks, path MTU, traffic
    /// both ways, last packet seen; and refused IPIP sources.
    Status {
        #[command(flatten)]
        json: crate::commands::JsonArg,
        #[command(flatten)]
        socket: crate::commands::SocketArg,
    },
    /// Show every counter of a running daemon, with drops by reason.
    Stats {
        #[command(flatten)]
        json: crate::commands::JsonArg,
        #[command(flatten)]
        socket: crate::commands::SocketArg,
    },
    /// Validate a config file and print what it would set up.
    Check {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// `tunl lab` actions.
#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Remove a cluster left running by `tunl lab --keep`.
    Down,
}

/// The command line's definition, with `tunl run --help` naming the keys a
/// reload does not apply (from [`START_ONLY_KEYS`]).
pub fn command() -> clap::Command {
    let keys: Vec<&str> = START_ONLY_KEYS.iter().map(|k| k.name).collect();
    let text = format!(
        "Keys a SIGHUP does not apply (they take effect at the next start): {}.",
        keys.join(", ")
    );
    Cli::command().mut_subcommand("run", |run| run.after_long_help(text))
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exits_with().into();
        }
    };
    init_logging(&cli.log);
    match cli.command {
        Command::Run { config } => match daemon::run(&config) {
            Ok(()) => Exit::Ok.into(),
            Err(e) => {
                tracing::error!("{e}");
                report("tunl", &e)
            }
        },
        Command::Lab { action, args } => {
            let mut out = std::io::stdout();
            let result = match action {
                Some(LabAction::Down) => tunl_lab::lab::down(&args.tag, &mut out).map(|_| ()),
                None => std::env::current_exe()
                    .map_err(tunl_lab::lab::LabError::Output)
                    .and_then(|exe| tunl_lab::lab::run(&args, &exe, &mut out).map(|_| ())),
            };
            match result {
                Ok(()) => Exit::Ok.into(),
                Err(e) => report("tunl lab", &e),
            }
        }
        Command::Bench(args) => match std::env::current_exe() {
            Err(e) => report("tunl bench", &e),
            Ok(exe) => match tunl_lab::bench::run(&args, &exe) {
                Ok(_) => Exit::Ok.into(),
                Err(e) => report("tunl bench", &e),
            },
        },
        Command::Route { action, socket } => crate::commands::route(&socket.socket, action),
        Command::Status { json, socket } => crate::commands::status(&socket.socket, json.json),
        Command::Stats { json, socket } => crate::commands::stats(&socket.socket, json.json),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok: device {}, local {}, {} route(s), {} local block(s), ttl {}",
                    config.display(),
                    c.tunnel.name,
                    c.tunnel.local,
                    c.routes.len(),
                    c.tunnel.blocks.len(),
                    c.tunnel.ttl
                );
                for r in &c.routes {
                    println!("  {} via {} dev {} onlink", r.prefix, r.via, c.tunnel.name);
                }
                Exit::Ok.into()
            }
            Err(e) => report("tunl", &e),
        },
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn run_help_names_every_start_only_key() {
        let mut cmd = command();
        let help = cmd
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        for key in START_ONLY_KEYS {
            assert!(help.contains(key.name), "{} not in:\n{help}", key.name);
        }
    }
}
