//! The `tunl` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use tunl::config::{DEFAULT_CONFIG, START_ONLY_KEYS};
use tunl::daemon;

use crate::exit::{Exit, ExitStatus, report};
use crate::logging::LogFormat;

/// This build: the release and the git commit (`0.1.0 (commit 1a2b3c4)`),
/// as `tunl version` and `--version` print it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TUNL_GIT_COMMIT"),
    ")"
);

/// The build as the daemon reports it in `tunl status`.
pub const BUILD: daemon::BuildInfo = daemon::BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("TUNL_GIT_COMMIT"),
};

/// tunl: a userspace IPIP tunnel router, a drop-in for Linux's tunl0 as
/// Calico uses it, for hosts whose kernel has no ipip driver.
///
/// Pod packets read from a TUN device are routed by destination block to the
/// node that owns it, wrapped in an outer IPv4 header (protocol 4) and sent
/// on a raw socket; IPIP packets from allowed nodes are unwrapped into the
/// TUN device. The wire format is that of the kernel's ipip driver.
#[derive(Debug, Parser)]
#[command(name = "tunl", version = VERSION, about, long_about)]
pub struct Cli {
    /// Log filter: comma-separated levels (off, error, warn, info, debug,
    /// trace), tunl's own targets alone (tunl, tunl::daemon, tunl_io, ...),
    /// or TARGET=LEVEL for any target (tunl=debug, mio=trace). Any other
    /// bare word is refused (exit 2): a typo must not mute the log. RUST_LOG,
    /// when set, is used instead and checked the same way.
    #[arg(long, global = true, default_value = "info", value_name = "FILTER")]
    pub log: String,
    /// Log format on stderr: text (one line per event) or json (one JSON
    /// object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
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
        /// The TOML config file (see examples/tunl.toml); a file, not `-`,
        /// since SIGHUP re-reads it.
        #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
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
    /// `tunl bench routes` measures following the kernel's routes instead.
    Bench {
        #[command(subcommand)]
        what: Option<tunl_lab::bench::BenchCommand>,
        #[command(flatten)]
        args: tunl_lab::bench::BenchArgs,
    },
    /// Change or list a running daemon's routes (over its control socket).
    ///
    /// Routes changed here last until the daemon stops or reloads its
    /// config (SIGHUP); only the config's routes survive a restart.
    Route {
        #[command(subcommand)]
        action: crate::commands::RouteCommand,
        #[command(flatten)]
        socket: crate::commands::SocketArg,
        #[command(flatten)]
        json: crate::commands::JsonArg,
    },
    /// Show the daemon (version, uptime, device) and every remote node:
    /// blocks, path MTU, traffic both ways, last packet seen; and refused
    /// IPIP sources.
    ///
    /// `--dump` prints the same as tab-separated lines for scripts, one
    /// record per line, the first field naming the record (no header):
    /// `device NAME LOCAL MTU ADDRESS BLOCKS WORKERS ROUTES STARTED VERSION
    /// COMMIT`; `underlay LOCAL_PRESENT DEVICE STATE` (STATE up, down or
    /// gone); `node NODE BLOCKS PATH_MTU RX_PACKETS RX_BYTES TX_PACKETS
    /// TX_BYTES LAST_SEEN`; `refused SOURCE PACKETS LAST_SEEN ACCEPTED_NOW`;
    /// `refused_other PACKETS`. Times are Unix seconds (0: never), lists are
    /// comma-separated, an absent value is `-`, ACCEPTED_NOW and
    /// LOCAL_PRESENT are 0 or 1.
    Status {
        #[command(flatten)]
        json: crate::commands::JsonArg,
        /// Print tab-separated records for scripts (see above).
        #[arg(long, conflicts_with = "json")]
        dump: bool,
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
    ///
    /// Reports every problem of the file, one line each, and checks what it
    /// needs of this host (that `security.user` exists). Exit codes: 0
    /// valid, 2 not.
    Check {
        /// The TOML config file; `-` reads stdin [default: /etc/tunl/tunl.toml].
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The same, as an option (as `tunl run` takes it).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        json: crate::commands::JsonArg,
    },
    /// Print the version and the git commit of this build.
    Version {
        #[command(flatten)]
        json: crate::commands::JsonArg,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// For bash: `tunl completions bash > /etc/bash_completion.d/tunl`; zsh:
    /// into a folder of `$fpath` as `_tunl`; fish:
    /// `~/.config/fish/completions/tunl.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page tunl(1), or write every page into a folder (for
    /// packaging).
    #[command(hide = true)]
    Man {
        /// Write tunl.1 and a page per subcommand (tunl-run.1, tunl-route-add.1, ...) here.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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
    match crate::logging::filter(&cli.log) {
        Ok(filter) => crate::logging::init(filter, cli.log_format),
        Err(e) => {
            eprintln!("tunl: {e}");
            return Exit::Config.into();
        }
    }
    match cli.command {
        Command::Run { config } if config.as_os_str() == "-" => {
            eprintln!(
                "tunl: run --config -: the daemon re-reads its config on SIGHUP, so it needs a file"
            );
            Exit::Config.into()
        }
        Command::Run { config } => match daemon::run(&config, BUILD) {
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
        Command::Bench { what, args } => match std::env::current_exe() {
            Err(e) => report("tunl bench", &e),
            Ok(exe) => {
                let result = match what {
                    Some(tunl_lab::bench::BenchCommand::Routes(routes)) => {
                        tunl_lab::bench::run_routes(&routes, &exe).map(|_| ())
                    }
                    None => tunl_lab::bench::run(&args, &exe).map(|_| ()),
                };
                match result {
                    Ok(()) => Exit::Ok.into(),
                    Err(e) => report("tunl bench", &e),
                }
            }
        },
        Command::Route {
            action,
            socket,
            json,
        } => crate::commands::route(&socket.socket, action, json.json),
        Command::Status { json, dump, socket } => {
            let output = match (json.json, dump) {
                (true, _) => crate::commands::StatusOutput::Json,
                (_, true) => crate::commands::StatusOutput::Dump,
                _ => crate::commands::StatusOutput::Text,
            };
            crate::commands::status(&socket.socket, output)
        }
        Command::Stats { json, socket } => crate::commands::stats(&socket.socket, json.json),
        Command::Version { json } => crate::generate::version(json.json),
        Command::Completions { shell } => crate::generate::completions(shell),
        Command::Man { dir } => crate::generate::man(dir.as_deref()),
        Command::Check { file, config, json } => {
            crate::check::check(&crate::check::config_path(file, config), json.json)
        }
    }
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
