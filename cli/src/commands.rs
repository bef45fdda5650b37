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
        /// The remote block, e.g. 10.20.105.192/26.
        prefix: Ipv4Network,
        /// The word `via`.
        #[arg(value_parser = ["via"], hide_possible_values = true)]
        via_word: String,
        /// The node owning it (its underlay address).
        node: Ipv4Addr,
    },
    /// Remove a route (removing an absent one succeeds).
    Del {
        /// The block.
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
    Replace {
        /// The routes file.
        #[arg(long, value_name = "ROUTES")]
        file: PathBuf,
    },
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
        return l
            .routes
            .iter()
            .map(|r| match r.via {
                Some(via) if r.nexthops.is_empty() => Ok(Route {
                    prefix: r.prefix,
                    via,
                }),
                _ => Err(format!(
                    "{}: a route without one gateway (multipath or none) cannot be one of tunl's",
                    r.prefix
                )),
            })
            .collect();
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
        let prefix = prefix
            .parse()
            .map_err(|e| format!("line {}: prefix {prefix:?}: {e}", i + 1))?;
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
                    print!("{}", format_route_list(&list));
                    Exit::Ok.into()
                }
                Err(e) => fail(&e),
            };
        }
        RouteCommand::Replace { file } => match read_routes(&file) {
            Ok(routes) => Request::RouteReplace { routes },
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

/// The text `tunl route list` prints: `PREFIX via NODE` (what `route
/// replace` reads back), the origin and metric in a comment; a multipath
/// route lists its next hops, a route without a gateway says `direct`.
pub fn format_route_list(list: &RouteList) -> String {
    let mut o = String::new();
    for r in &list.routes {
        let _ = write!(o, "{}", r.prefix);
        match r.via {
            Some(via) => {
                let _ = write!(o, " via {via}");
            }
            None if r.nexthops.is_empty() => o.push_str(" direct"),
            None => {
                for h in &r.nexthops {
                    match h.via {
                        Some(via) => {
                            let _ = write!(o, " nexthop via {via} weight {}", h.weight);
                        }
                        None => {
                            let _ = write!(o, " nexthop direct weight {}", h.weight);
                        }
                    }
                }
            }
        }
        let _ = write!(o, "  # {}", r.origin);
        if r.metric != 0 {
            let _ = write!(o, ", metric {}", r.metric);
        }
        o.push('\n');
    }
    o
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
    let by_origin: Vec<String> = s
        .routes_by_origin
        .iter()
        .map(|(origin, n)| format!("{origin} {n}"))
        .collect();
    if by_origin.is_empty() {
        let _ = writeln!(o, "  routes: {}", s.routes);
    } else {
        let _ = writeln!(o, "  routes: {} ({})", s.routes, by_origin.join(", "));
    }
    if s.route_resyncs > 0 {
        let _ = writeln!(o, "  route resyncs: {}", s.route_resyncs);
    }
    for n in &s.nodes {
        let b: Vec<String> = n
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| match n.origins.get(i) {
                Some(origin) => format!("{b} ({origin})"),
                None => b.to_string(),
            })
            .collect();
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
    refused.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.source.cmp(&b.source)));
    for r in refused.iter().take(STATUS_REFUSED_LINES) {
        let _ = writeln!(
            o,
            "\nrefused source: {} (not a node, not allowed)\n  packets: {}\n  last seen: {}",
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
                match serde_json::to_string_pretty(&v) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("tunl: cannot encode the reply: {e}");
                        return Exit::Runtime.into();
                    }
                }
            } else {
                print!("{}", text(&v));
            }
            Exit::Ok.into()
        }
        Err(e) => fail(&e),
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
    }
}
