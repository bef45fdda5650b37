//! `tunl route`, `tunl status`, `tunl stats`: clients of the control socket.
//!
//! Exit codes as [`crate::exit`]: 0 done, 1 a runtime error (no daemon, the
//! daemon refused the request), 2 a usage error (a routes file that does
//! not parse).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnetwork::Ipv4Network;

use tunl::config::DEFAULT_CONTROL_SOCKET;
use tunl::control::{Client, ClientError, Request, Route, RouteChange, RouteList, Stats, Status};

use crate::exit::{Exit, report};

/// Refused sources `tunl status` lists; the rest are summed in one line.
pub const STATUS_REFUSED_LINES: usize = 8;

/// `--socket PATH`.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// The daemon's control socket (`[control] socket` in its config).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET, global = true)]
    pub socket: PathBuf,
}

/// `tunl route` actions.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Add a route, or move a block to another node: `route add PREFIX via NODE`.
    Add {
        /// The remote block with its length, e.g. 10.20.105.192/26.
        #[arg(value_parser = prefix_arg)]
        prefix: Ipv4Network,
        /// The word `via`.
        #[arg(value_parser = ["via"], hide_possible_values = true)]
        via_word: String,
        /// The node owning it (its underlay address).
        node: Ipv4Addr,
    },
    /// Remove a route (removing an absent one succeeds).
    Del {
        /// The block, with its length.
        #[arg(value_parser = prefix_arg)]
        prefix: Ipv4Network,
    },
    /// List the routes.
    List,
    /// Replace the whole route set in one step; unchanged routes keep
    /// carrying packets.
    ///
    /// The file holds either JSON (`[{"prefix": "...", "via": "..."}]`, or
    /// `{"routes": [...]}`) or lines `PREFIX via NODE` (`#` starts a
    /// comment), as `tunl route list` prints them. `-` reads stdin.
    ///
    /// An empty set removes every route, the config's too, so it is refused
    /// (exit 2) unless `--allow-empty` is given.
    Replace {
        /// The routes file.
        #[arg(long, value_name = "ROUTES")]
        file: PathBuf,
        /// Accept an empty set: remove every route.
        #[arg(long)]
        allow_empty: bool,
    },
}

/// A prefix argument: with its length (`10.20.105.192/26`), as the config
/// wants it.
fn prefix_arg(text: &str) -> Result<Ipv4Network, String> {
    tunl::config::parse_prefix(text).map_err(|e| e.to_string())
}

/// Output of `status`/`stats`.
#[derive(Debug, Clone, Args)]
pub struct JsonArg {
    /// Print the daemon's JSON reply instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why `tunl route replace --file` could not use its file.
#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The path given (`-` for stdin).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither routes JSON nor `PREFIX via NODE` lines.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The path given.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// The file names no route, and `--allow-empty` was not given.
    #[error(
        "{}: no routes: replacing the route set with an empty one removes every route, \
         the config's too; pass --allow-empty to mean it",
        path.display()
    )]
    Empty {
        /// The path given.
        path: PathBuf,
    },
}

fn fail(e: &ClientError) -> ExitCode {
    report("tunl", e)
}

/// Reads and parses a routes file; `-` reads stdin.
fn read_routes(file: &Path) -> Result<Vec<Route>, RoutesFileError> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let text = text.map_err(|source| RoutesFileError::Read {
        path: file.to_owned(),
        source,
    })?;
    parse_routes(&text).map_err(|message| RoutesFileError::Parse {
        path: file.to_owned(),
        message,
    })
}

fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &Request,
) -> Result<T, ClientError> {
    Client::connect(socket)?.call(request)
}

/// Parses a routes file (JSON or `PREFIX via NODE` lines).
pub fn parse_routes(text: &str) -> Result<Vec<Route>, String> {
    let t = text.trim_start();
    if t.starts_with('[') {
        return serde_json::from_str(t).map_err(|e| format!("bad JSON: {e}"));
    }
    if t.starts_with('{') {
        let l: RouteList = serde_json::from_str(t).map_err(|e| format!("bad JSON: {e}"))?;
        return Ok(l.routes);
    }
    let mut routes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(prefix), Some(&"via"), Some(via), None) =
            (words.first(), words.get(1), words.get(2), words.get(3))
        else {
            return Err(format!(
                "line {}: expected `PREFIX via NODE`: {line:?}",
                i + 1
            ));
        };
        let prefix =
            tunl::config::parse_prefix(prefix).map_err(|e| format!("line {}: {e}", i + 1))?;
        let via = via
            .parse()
            .map_err(|e| format!("line {}: node {via:?}: {e}", i + 1))?;
        routes.push(Route { prefix, via });
    }
    Ok(routes)
}

fn describe(change: &RouteChange) -> String {
    let mut s = String::new();
    for r in &change.added {
        let _ = writeln!(s, "+ {} via {}", r.prefix, r.via);
    }
    for p in &change.removed {
        let _ = writeln!(s, "- {p}");
    }
    let _ = write!(
        s,
        "{} added or changed, {} removed, {} unchanged",
        change.added.len(),
        change.removed.len(),
        change.unchanged
    );
    s
}

/// `tunl route ...`.
pub fn route(socket: &Path, command: RouteCommand) -> ExitCode {
    let request = match command {
        RouteCommand::Add { prefix, node, .. } => Request::RouteAdd { prefix, via: node },
        RouteCommand::Del { prefix } => Request::RouteDel { prefix },
        RouteCommand::List => {
            return match call::<RouteList>(socket, &Request::RouteList {}) {
                Ok(list) => {
                    for r in list.routes {
                        println!("{} via {}", r.prefix, r.via);
                    }
                    Exit::Ok.into()
                }
                Err(e) => fail(&e),
            };
        }
        RouteCommand::Replace { file, allow_empty } => match read_routes(&file) {
            Ok(routes) if routes.is_empty() && !allow_empty => {
                return report("tunl", &RoutesFileError::Empty { path: file });
            }
            Ok(routes) => Request::RouteReplace {
                routes,
                allow_empty,
            },
            Err(e) => return report("tunl", &e),
        },
    };
    match call::<RouteChange>(socket, &request) {
        Ok(change) => {
            println!("{}", describe(&change));
            Exit::Ok.into()
        }
        Err(e) => fail(&e),
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let d = Duration::from_millis(now_ms.saturating_sub(then_ms));
    match d.as_secs() {
        0 => "just now".to_owned(),
        1 => "1 second ago".to_owned(),
        s if s < 120 => format!("{s} seconds ago"),
        s if s < 7200 => format!("{} minutes ago", s / 60),
        s => format!("{} hours ago", s / 3600),
    }
}

/// The text `tunl status` prints.
pub fn format_status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "device: {}", s.device);
    let _ = writeln!(o, "  mtu: {}", s.mtu);
    let _ = writeln!(o, "  local: {}", s.local);
    if let Some(a) = s.address {
        let _ = writeln!(o, "  address: {a}");
    }
    if !s.blocks.is_empty() {
        let b: Vec<String> = s.blocks.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "  blocks: {}", b.join(", "));
    }
    let _ = writeln!(o, "  workers: {}", s.workers);
    let _ = writeln!(o, "  routes: {}", s.routes);
    for n in &s.nodes {
        let b: Vec<String> = n.blocks.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "\nnode: {}", n.node);
        let _ = writeln!(o, "  blocks: {}", b.join(", "));
        let _ = writeln!(o, "  path mtu: {}", n.path_mtu);
        let _ = writeln!(o, "  rx: {} packets, {} bytes", n.rx_packets, n.rx_bytes);
        let _ = writeln!(o, "  tx: {} packets, {} bytes", n.tx_packets, n.tx_bytes);
        let seen = n
            .last_seen_unix_ms
            .map_or_else(|| "never".to_owned(), |t| ago(s.now_unix_ms, t));
        let _ = writeln!(o, "  last seen: {seen}");
    }
    let mut refused = s.refused.clone();
    // Sources still refused first, the busiest first.
    refused.sort_by(|a, b| {
        a.accepted_now
            .cmp(&b.accepted_now)
            .then(b.packets.cmp(&a.packets))
            .then(a.source.cmp(&b.source))
    });
    for r in refused.iter().take(STATUS_REFUSED_LINES) {
        let why = if r.accepted_now {
            "accepted now: it became a node or was allowed after these packets"
        } else {
            "not a node, not allowed"
        };
        let _ = writeln!(
            o,
            "\nrefused source: {} ({why})\n  packets: {}\n  last seen: {}",
            r.source,
            r.packets,
            ago(s.now_unix_ms, r.last_seen_unix_ms)
        );
    }
    let rest: u64 = refused
        .iter()
        .skip(STATUS_REFUSED_LINES)
        .map(|r| r.packets)
        .sum::<u64>()
        + s.refused_other_packets;
    if rest > 0 {
        let more = refused.len().saturating_sub(STATUS_REFUSED_LINES);
        let _ = writeln!(
            o,
            "\nrefused from other sources: {rest} packets ({more} more listed in --json{})",
            if s.refused_other_packets > 0 {
                ", and sources past the table"
            } else {
                ""
            }
        );
    }
    o
}

/// The text `tunl stats` prints.
pub fn format_stats(s: &Stats) -> String {
    let mut o = String::new();
    for (name, v) in &s.counters {
        let _ = writeln!(o, "{name}: {v}");
    }
    let _ = writeln!(o, "drops: {}", s.drops_total);
    for (reason, v) in &s.drops {
        let _ = writeln!(o, "  {reason}: {v}");
    }
    o
}

fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
    socket: &Path,
    request: Request,
    json: bool,
    text: fn(&T) -> String,
) -> ExitCode {
    match call::<T>(socket, &request) {
        Ok(v) => {
            if json {
                if !print_json(&v) {
                    return Exit::Runtime.into();
                }
            } else {
                print!("{}", text(&v));
            }
            Exit::Ok.into()
        }
        Err(e) => fail(&e),
    }
}

/// Prints `value` as pretty JSON on stdout; `false` (after saying why on
/// stderr) when it cannot be encoded.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> bool {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            println!("{s}");
            true
        }
        Err(e) => {
            eprintln!("tunl: cannot encode the output as JSON: {e}");
            false
        }
    }
}

/// `tunl status`.
pub fn status(socket: &Path, json: bool) -> ExitCode {
    show(socket, Request::Status {}, json, format_status)
}

/// `tunl stats`.
pub fn stats(socket: &Path, json: bool) -> ExitCode {
    show(socket, Request::Stats {}, json, format_stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_files() {
        let want = vec![Route {
            prefix: "10.20.105.192/26".parse().unwrap(),
            via: Ipv4Addr::new(172, 16, 36, 5),
        }];
        assert_eq!(
            parse_routes("# comment\n10.20.105.192/26 via 172.16.36.5  # b\n\n").unwrap(),
            want
        );
        assert_eq!(
            parse_routes(r#"[{"prefix":"10.20.105.192/26","via":"172.16.36.5"}]"#).unwrap(),
            want
        );
        assert_eq!(
            parse_routes(r#"{"routes":[{"prefix":"10.20.105.192/26","via":"172.16.36.5"}]}"#)
                .unwrap(),
            want
        );
        assert!(parse_routes("").unwrap().is_empty());
        assert!(
            parse_routes("10.20.105.192/26 172.16.36.5")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_routes("10.20.105.192/33 via 172.16.36.5").is_err());
        assert_eq!(
            parse_routes("10.20.105.192/26 via 172.16.36.5\n10.20.106.0 via 172.16.36.5")
                .unwrap_err(),
            "line 2: \"10.20.106.0\" has no prefix length: write 10.20.106.0/32 for one \
             address, or the block's length (e.g. 10.20.106.0/26)"
        );
        assert!(
            parse_routes(r#"[{"prefix":"10.20.106.0","via":"172.16.36.5"}]"#)
                .unwrap_err()
                .contains("has no prefix length")
        );
    }

    #[test]
    fn route_add_wants_the_prefix_length() {
        use clap::CommandFactory;
        let e = crate::args::Cli::command()
            .try_get_matches_from([
                "tunl",
                "route",
                "add",
                "10.20.105.192",
                "via",
                "172.16.36.5",
            ])
            .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("has no prefix length"), "{e}");
        assert!(
            crate::args::Cli::command()
                .try_get_matches_from([
                    "tunl",
                    "route",
                    "add",
                    "10.20.105.192/26",
                    "via",
                    "172.16.36.5"
                ])
                .is_ok()
        );
    }

    fn refused(last: u8, packets: u64, accepted_now: bool) -> tunl::control::RefusedStatus {
        tunl::control::RefusedStatus {
            source: Ipv4Addr::new(172, 16, 200, last),
            packets,
            last_seen_unix_ms: 1_000,
            accepted_now,
        }
    }

    fn status_with_refused(refused: Vec<tunl::control::RefusedStatus>) -> Status {
        Status {
            device: "tunl0".to_owned(),
            mtu: 1480,
            local: Ipv4Addr::new(172, 16, 35, 4),
            address: None,
            blocks: vec![],
            workers: 1,
            routes: 0,
            now_unix_ms: 2_000,
            nodes: vec![],
            refused,
            refused_other_packets: 0,
        }
    }

    #[test]
    fn a_refused_source_accepted_now_says_so_and_comes_after_the_others() {
        let text = format_status(&status_with_refused(vec![
            refused(1, 500, true),
            refused(2, 3, false),
        ]));
        let still = text
            .find("refused source: 172.16.200.2 (not a node, not allowed)")
            .expect(&text);
        let now = text
            .find("refused source: 172.16.200.1 (accepted now: it became a node or was allowed after these packets)")
            .expect(&text);
        assert!(still < now, "{text}");
    }
}
